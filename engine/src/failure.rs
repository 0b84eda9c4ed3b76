//! What a step body reports when an attempt fails. Lives with the runtime, not in the pure
//! core: it converts from the runtime's errors (a timed-out attempt is tokio's `Elapsed`).

use annal_core::policy::FailureClass;

/// What a step reports when an attempt fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// How to treat it.
    pub class: FailureClass,
    /// What went wrong, for the history.
    pub message: String,
}

impl StepFailure {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Transient,
            message: message.into(),
        }
    }
    /// A failure retrying cannot fix.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Terminal,
            message: message.into(),
        }
    }
    /// The attempt timed out.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Timeout,
            message: message.into(),
        }
    }
    /// The effect may have happened.
    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self {
            class: FailureClass::Ambiguous,
            message: message.into(),
        }
    }
    /// The target is rate limiting; `retry_after` is the delay it asked for, if any.
    pub fn rate_limited(
        message: impl Into<String>,
        retry_after: Option<std::time::Duration>,
    ) -> Self {
        Self {
            class: FailureClass::RateLimited {
                retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
            },
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.label(), self.message)
    }
}

impl std::error::Error for StepFailure {}

impl From<std::io::Error> for StepFailure {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let class = match e.kind() {
            K::TimedOut => FailureClass::Timeout,
            K::InvalidInput
            | K::InvalidData
            | K::PermissionDenied
            | K::NotFound
            | K::Unsupported => FailureClass::Terminal,
            _ => FailureClass::Transient,
        };
        Self {
            class,
            message: e.to_string(),
        }
    }
}

impl From<serde_json::Error> for StepFailure {
    fn from(e: serde_json::Error) -> Self {
        Self::terminal(format!("invalid data: {e}"))
    }
}

impl From<tokio::time::error::Elapsed> for StepFailure {
    fn from(e: tokio::time::error::Elapsed) -> Self {
        Self::timeout(e.to_string())
    }
}

impl From<String> for StepFailure {
    fn from(message: String) -> Self {
        Self::transient(message)
    }
}

impl From<&str> for StepFailure {
    fn from(message: &str) -> Self {
        Self::transient(message)
    }
}
