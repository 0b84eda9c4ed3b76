//! Run statuses as the engine stores them (storage indexes the code, the engine owns the
//! meaning).

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};

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

/// Why a run whose status says it waits must run now, read from its own history: it holds
/// what the run waits for, and nothing will deliver it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overdue {
    /// An event arrived after the run took its status and no driver has seen it: a
    /// decision, a signal or a cancel request for a parked run, an operator action for an
    /// escalated one. Whoever appended it was told it was recorded; the wake-up that should
    /// have come with it was lost (a crash between the two).
    Arrived {
        /// The run's status.
        status: RunStatus,
        /// The log's end when the run took that status.
        status_seq: u64,
        /// The first event that arrived after it.
        seq: u64,
        /// Its kind, as [`EventKind::name`] spells it.
        kind: &'static str,
    },
    /// A parked run's next due time (timer, backoff, approval reminder or deadline) has
    /// passed.
    Due {
        /// The due time, ms since the Unix epoch.
        wake_ms: u64,
    },
}

impl std::fmt::Display for Overdue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overdue::Arrived {
                status,
                status_seq,
                seq,
                kind,
            } => write!(
                f,
                "{status} since seq {status_seq}, but {kind} arrived at seq {seq} and no driver has seen it (a lost wake-up)"
            ),
            Overdue::Due { wake_ms } => write!(f, "parked, and its due time {wake_ms} ms has passed"),
        }
    }
}

/// The pure rule behind the engine's recovery sweep and `annal verify`: given a run's
/// status, the seq at which it took it (`RunMeta::status_seq`), the events from that seq
/// on, its recorded wake-up time and, for a live engine, the current time, says whether the
/// run should be running. Only parked and escalated runs can be overdue: every other status
/// is either resumed at open or final.
///
/// A parked run is overdue once anything was appended after it parked: every event from
/// outside wakes a parked run in the same append (it becomes `Running`), so an event
/// behind a `Parked` status is one whose wake-up was lost. An escalated run waits only for
/// an operator: signals and decisions may pile up behind it, an operator action may not.
pub fn overdue(
    status: RunStatus,
    status_seq: u64,
    arrived: &[Event],
    wake_ms: Option<u64>,
    now_ms: Option<u64>,
) -> Option<Overdue> {
    let waits_for = |kind: &EventKind| match status {
        RunStatus::Parked => true,
        RunStatus::Escalated => matches!(kind, EventKind::OperatorAction { .. }),
        _ => false,
    };
    if let Some(event) = arrived
        .iter()
        .find(|e| e.seq >= status_seq && waits_for(&e.kind))
    {
        return Some(Overdue::Arrived {
            status,
            status_seq,
            seq: event.seq,
            kind: event.kind.name(),
        });
    }
    match (status, wake_ms, now_ms) {
        (RunStatus::Parked, Some(wake_ms), Some(now_ms)) if wake_ms <= now_ms => {
            Some(Overdue::Due { wake_ms })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: 0,
            kind,
        }
    }

    fn decided(seq: u64) -> Event {
        event(
            seq,
            EventKind::ApprovalDecided {
                gate: [1; 16],
                approved: true,
                actor: "dana".into(),
                reason: "ok".into(),
                edits: None,
            },
        )
    }

    fn signal(seq: u64) -> Event {
        event(
            seq,
            EventKind::SignalReceived {
                name: "go".into(),
                payload: crate::payload::Payload::default(),
            },
        )
    }

    /// The history of issue 21: parked at seq 6 (after `ApprovalRequested` at 5), the
    /// decision at seq 6 behind it.
    #[test]
    fn a_parked_run_with_an_event_after_its_status_is_overdue() {
        let found = overdue(RunStatus::Parked, 6, &[decided(6)], None, None);
        assert_eq!(
            found,
            Some(Overdue::Arrived {
                status: RunStatus::Parked,
                status_seq: 6,
                seq: 6,
                kind: "ApprovalDecided"
            })
        );
        assert!(found.unwrap().to_string().contains("lost wake-up"));
        // Events the run had seen when it parked are not.
        assert_eq!(
            overdue(RunStatus::Parked, 7, &[decided(6)], None, None),
            None
        );
        assert_eq!(overdue(RunStatus::Parked, 7, &[], None, None), None);
        assert!(overdue(RunStatus::Parked, 3, &[signal(3)], None, None).is_some());
    }

    #[test]
    fn an_escalated_run_waits_only_for_an_operator() {
        let acted = event(
            4,
            EventKind::OperatorAction {
                position: Some(1),
                action: crate::event::OperatorActionKind::RetryStep,
                actor: "ops".into(),
                reason: "retry".into(),
            },
        );
        assert_eq!(
            overdue(RunStatus::Escalated, 4, &[signal(4)], None, None),
            None
        );
        assert!(matches!(
            overdue(
                RunStatus::Escalated,
                4,
                &[signal(4), acted.clone()],
                None,
                None
            ),
            Some(Overdue::Arrived {
                seq: 4,
                kind: "OperatorAction",
                ..
            })
        ));
        for status in [RunStatus::Running, RunStatus::Blocked, RunStatus::Completed] {
            assert_eq!(
                overdue(status, 4, std::slice::from_ref(&acted), Some(0), Some(1)),
                None
            );
        }
    }

    #[test]
    fn a_parked_run_past_its_due_time_is_overdue_only_to_a_live_engine() {
        assert_eq!(
            overdue(RunStatus::Parked, 2, &[], Some(100), Some(100)),
            Some(Overdue::Due { wake_ms: 100 })
        );
        assert_eq!(
            overdue(RunStatus::Parked, 2, &[], Some(101), Some(100)),
            None
        );
        assert_eq!(overdue(RunStatus::Parked, 2, &[], Some(100), None), None);
    }
}
