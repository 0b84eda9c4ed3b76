//! Run statuses as the engine stores them (storage indexes the code, the engine owns the
//! meaning).

use serde::{Deserialize, Serialize};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    /// In memory and making progress (or about to, after a restart).
    Running,
    /// Waiting on a timer, signal or approval; not in memory until woken.
    Parked,
    /// Stopped because the code drifted from history or its workflow is not registered. Kept
    /// intact; retried when the engine opens with matching code.
    Blocked,
    /// Waiting for an operator.
    Escalated,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Ended after a cancellation.
    Cancelled,
    /// Stopped from outside.
    Terminated,
    /// Ended and handed over to a new run.
    ContinuedAsNew,
}

impl RunStatus {
    /// Every status, in code order.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Running,
        RunStatus::Parked,
        RunStatus::Blocked,
        RunStatus::Escalated,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Terminated,
        RunStatus::ContinuedAsNew,
    ];

    /// The stored code. Stable: part of the on-disk format.
    pub fn code(self) -> u8 {
        match self {
            RunStatus::Running => 1,
            RunStatus::Parked => 2,
            RunStatus::Blocked => 3,
            RunStatus::Escalated => 4,
            RunStatus::Completed => 10,
            RunStatus::Failed => 11,
            RunStatus::Cancelled => 12,
            RunStatus::Terminated => 13,
            RunStatus::ContinuedAsNew => 14,
        }
    }

    /// The status of a stored code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// True once the run can never change again.
    pub fn is_terminal(self) -> bool {
        self.code() >= 10
    }

    /// Lower-case name, as the CLI prints and parses it.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Parked => "parked",
            RunStatus::Blocked => "blocked",
            RunStatus::Escalated => "escalated",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Terminated => "terminated",
            RunStatus::ContinuedAsNew => "continued-as-new",
        }
    }

    /// Parses [`RunStatus::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
