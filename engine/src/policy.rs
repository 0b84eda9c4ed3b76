//! Retry classes, failure classes and retry policies. Everything here is pure: the engine
//! asks these functions what to do and records the answer, so replay never asks again.

use serde::{Deserialize, Serialize};

use crate::event::Payload;

/// What kind of effect a step has, which decides what may be retried automatically.
///
/// | class          | auto-retry                     | before the body runs                 |
/// |----------------|--------------------------------|--------------------------------------|
/// | `Read`         | yes                            | nothing                              |
/// | `Draft`        | yes                            | nothing                              |
/// | `Write`        | yes, always with the same idempotency key | earlier history made durable |
/// | `Irreversible` | only after a definite failure; never after `Ambiguous` or `Timeout` | `AttemptStarted` made durable |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum StepClass {
    /// Lookups and fetches: safe to run again.
    Read,
    /// Produces a draft (a model output, a document); safe to redo, each output versioned by
    /// its attempt.
    Draft,
    /// Changes state elsewhere; retried only with its idempotency key so the target can
    /// deduplicate. The default: when unsure, assume a step writes.
    #[default]
    Write,
    /// Cannot be taken back or deduplicated (a payment, an outbound message).
    Irreversible,
}

/// Why an attempt failed, as the step body reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureClass {
    /// Worth retrying (a 503, a reset connection).
    Transient,
    /// The target asked us to slow down; `retry_after_ms` if it said how long.
    RateLimited {
        /// Delay the target asked for.
        retry_after_ms: Option<u64>,
    },
    /// The attempt ran past its deadline; for writes the effect may or may not have happened.
    Timeout,
    /// Retrying cannot help (bad input, auth failure, validation error): fail fast.
    Terminal,
    /// The effect may have happened (the connection dropped after the request was sent).
    Ambiguous,
    /// A circuit breaker refused the call without running it.
    BreakerOpen,
}

impl FailureClass {
    /// Short label for timelines and reports.
    pub fn label(&self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::RateLimited { .. } => "rate-limited",
            FailureClass::Timeout => "timeout",
            FailureClass::Terminal => "terminal",
            FailureClass::Ambiguous => "ambiguous",
            FailureClass::BreakerOpen => "breaker-open",
        }
    }
}

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
        Self { class: FailureClass::Transient, message: message.into() }
    }
    /// A failure retrying cannot fix.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Terminal, message: message.into() }
    }
    /// The attempt timed out.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Timeout, message: message.into() }
    }
    /// The effect may have happened.
    pub fn ambiguous(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Ambiguous, message: message.into() }
    }
    /// The target is rate limiting; `retry_after` is the delay it asked for, if any.
    pub fn rate_limited(message: impl Into<String>, retry_after: Option<std::time::Duration>) -> Self {
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
            K::InvalidInput | K::InvalidData | K::PermissionDenied | K::NotFound | K::Unsupported => {
                FailureClass::Terminal
            }
            _ => FailureClass::Transient,
        };
        Self { class, message: e.to_string() }
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

/// How long to wait between attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backoff {
    /// Retry at once.
    None,
    /// The same delay each time.
    Fixed {
        /// Delay between attempts.
        delay_ms: u64,
    },
    /// `initial_ms * factor^(attempt-1)`, capped at `max_ms`.
    Exponential {
        /// Delay after the first failure.
        initial_ms: u64,
        /// Growth per attempt.
        factor: u32,
        /// Cap.
        max_ms: u64,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential { initial_ms: 200, factor: 2, max_ms: 30_000 }
    }
}

impl Backoff {
    /// Delay after failed attempt number `attempt` (from 1), before jitter.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        match self {
            Backoff::None => 0,
            Backoff::Fixed { delay_ms } => *delay_ms,
            Backoff::Exponential { initial_ms, factor, max_ms } => {
                let exp = attempt.saturating_sub(1).min(63);
                let growth = u64::from(*factor).saturating_pow(exp);
                initial_ms.saturating_mul(growth).min(*max_ms)
            }
        }
    }
}

/// Retry rules of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Spacing of attempts.
    pub backoff: Backoff,
    /// Randomise each delay within [delay/2, delay], so that many runs failing together do
    /// not retry together. The chosen instant is recorded, never recomputed.
    pub jitter: bool,
    /// Deadline of one attempt; past it the attempt fails with `Timeout`.
    pub attempt_timeout_ms: Option<u64>,
    /// Give up once this long has passed since the step was scheduled.
    pub max_total_ms: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            jitter: true,
            attempt_timeout_ms: None,
            max_total_ms: None,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn never() -> Self {
        Self { max_attempts: 1, backoff: Backoff::None, ..Self::default() }
    }
}

/// What a policy does when a step runs out of attempts or budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum OnExhaust {
    /// The step returns its error to the workflow.
    #[default]
    Fail,
    /// The step returns this fallback value instead.
    Degrade(Payload),
    /// The step returns no value (`None` for `Option` outputs, JSON null).
    Skip,
    /// The run stops in `Escalated` for an operator.
    Escalate,
}

/// The retry decision for one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again at this instant.
    RetryAt(u64),
    /// Stop; the reason names the rule or budget that said so.
    GiveUp(String),
}

/// Everything [`decide_retry`] looks at.
#[derive(Debug, Clone)]
pub struct FailedAttempt<'a> {
    /// The step's class.
    pub class: StepClass,
    /// How the attempt failed.
    pub failure: &'a FailureClass,
    /// Which attempt failed, from 1.
    pub attempt: u32,
    /// When it failed.
    pub now_ms: u64,
    /// When the step was scheduled.
    pub scheduled_ms: u64,
    /// 64 random bits for jitter (drawn live, never during replay).
    pub random: u64,
}

/// Decides whether and when to retry. Pure: same inputs, same answer.
pub fn decide_retry(policy: &RetryPolicy, failed: &FailedAttempt<'_>) -> RetryDecision {
    let may_have_happened =
        matches!(failed.failure, FailureClass::Ambiguous | FailureClass::Timeout);
    match failed.failure {
        FailureClass::Terminal => return RetryDecision::GiveUp("terminal error".into()),
        _ if failed.class == StepClass::Irreversible && may_have_happened => {
            return RetryDecision::GiveUp(
                "irreversible effect may have happened; not retried automatically".into(),
            )
        }
        _ => {}
    }
    if failed.attempt >= policy.max_attempts {
        return RetryDecision::GiveUp(format!("step attempts ({})", policy.max_attempts));
    }
    let mut delay_ms = policy.backoff.delay_ms(failed.attempt);
    if policy.jitter && delay_ms > 1 {
        let half = delay_ms / 2;
        delay_ms = half + failed.random % (delay_ms - half + 1);
    }
    if let FailureClass::RateLimited { retry_after_ms: Some(after) } = failed.failure {
        delay_ms = delay_ms.max(*after);
    }
    let retry_at_ms = failed.now_ms.saturating_add(delay_ms);
    if let Some(max_total_ms) = policy.max_total_ms {
        if retry_at_ms.saturating_sub(failed.scheduled_ms) > max_total_ms {
            return RetryDecision::GiveUp(format!("step duration ({max_total_ms} ms)"));
        }
    }
    RetryDecision::RetryAt(retry_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(class: StepClass, failure: &FailureClass, attempt: u32) -> FailedAttempt<'_> {
        FailedAttempt { class, failure, attempt, now_ms: 1_000, scheduled_ms: 0, random: 7 }
    }

    #[test]
    fn terminal_errors_are_never_retried() {
        let policy = RetryPolicy::default();
        for class in [StepClass::Read, StepClass::Draft, StepClass::Write, StepClass::Irreversible] {
            let d = decide_retry(&policy, &failed(class, &FailureClass::Terminal, 1));
            assert_eq!(d, RetryDecision::GiveUp("terminal error".into()));
        }
    }

    #[test]
    fn irreversible_is_not_retried_when_the_effect_may_have_happened() {
        let policy = RetryPolicy::default();
        for f in [FailureClass::Ambiguous, FailureClass::Timeout] {
            let d = decide_retry(&policy, &failed(StepClass::Irreversible, &f, 1));
            assert!(matches!(d, RetryDecision::GiveUp(_)), "{f:?}");
            let d = decide_retry(&policy, &failed(StepClass::Write, &f, 1));
            assert!(matches!(d, RetryDecision::RetryAt(_)), "{f:?}");
        }
        let d = decide_retry(&policy, &failed(StepClass::Irreversible, &FailureClass::Transient, 1));
        assert!(matches!(d, RetryDecision::RetryAt(_)));
    }

    #[test]
    fn attempts_are_capped_and_backoff_grows_to_its_cap() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential { initial_ms: 100, factor: 2, max_ms: 250 },
            jitter: false,
            ..RetryPolicy::default()
        };
        let t = FailureClass::Transient;
        assert_eq!(decide_retry(&policy, &failed(StepClass::Read, &t, 1)), RetryDecision::RetryAt(1_100));
        assert_eq!(decide_retry(&policy, &failed(StepClass::Read, &t, 2)), RetryDecision::RetryAt(1_200));
        assert!(matches!(decide_retry(&policy, &failed(StepClass::Read, &t, 3)), RetryDecision::GiveUp(_)));
        assert_eq!(Backoff::Exponential { initial_ms: 100, factor: 2, max_ms: 250 }.delay_ms(5), 250);
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay_and_rate_limits_are_honoured() {
        let policy = RetryPolicy { backoff: Backoff::Fixed { delay_ms: 1_000 }, ..RetryPolicy::default() };
        for random in [0, 1, 499, 500, 501, u64::MAX] {
            let mut f = failed(StepClass::Read, &FailureClass::Transient, 1);
            f.random = random;
            let RetryDecision::RetryAt(at) = decide_retry(&policy, &f) else { panic!() };
            assert!((1_500..=2_000).contains(&at), "{at}");
        }
        let limited = FailureClass::RateLimited { retry_after_ms: Some(5_000) };
        assert_eq!(decide_retry(&policy, &failed(StepClass::Read, &limited, 1)), RetryDecision::RetryAt(6_000));
    }

    #[test]
    fn total_duration_caps_retries() {
        let policy = RetryPolicy {
            backoff: Backoff::Fixed { delay_ms: 600 },
            jitter: false,
            max_total_ms: Some(1_500),
            ..RetryPolicy::default()
        };
        let d = decide_retry(&policy, &failed(StepClass::Read, &FailureClass::Transient, 1));
        assert!(matches!(d, RetryDecision::GiveUp(ref why) if why.contains("duration")));
    }
}
