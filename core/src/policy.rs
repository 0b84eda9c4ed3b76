//! Retry classes, failure classes and retry policies. Everything here is pure: the engine
//! asks these functions what to do and records the answer, so replay never asks again.

use serde::{Deserialize, Serialize};

use crate::payload::Payload;

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
        Backoff::Exponential {
            initial_ms: 200,
            factor: 2,
            max_ms: 30_000,
        }
    }
}

impl Backoff {
    /// Delay after failed attempt number `attempt` (from 1), before jitter.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        match self {
            Backoff::None => 0,
            Backoff::Fixed { delay_ms } => *delay_ms,
            Backoff::Exponential {
                initial_ms,
                factor,
                max_ms,
            } => {
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
        Self {
            max_attempts: 1,
            backoff: Backoff::None,
            ..Self::default()
        }
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
    let may_have_happened = matches!(
        failed.failure,
        FailureClass::Ambiguous | FailureClass::Timeout
    );
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
    if let FailureClass::RateLimited {
        retry_after_ms: Some(after),
    } = failed.failure
    {
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
        FailedAttempt {
            class,
            failure,
            attempt,
            now_ms: 1_000,
            scheduled_ms: 0,
            random: 7,
        }
    }

    #[test]
    fn terminal_errors_are_never_retried() {
        let policy = RetryPolicy::default();
        for class in [
            StepClass::Read,
            StepClass::Draft,
            StepClass::Write,
            StepClass::Irreversible,
        ] {
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
        let d = decide_retry(
            &policy,
            &failed(StepClass::Irreversible, &FailureClass::Transient, 1),
        );
        assert!(matches!(d, RetryDecision::RetryAt(_)));
    }

    #[test]
    fn attempts_are_capped_and_backoff_grows_to_its_cap() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential {
                initial_ms: 100,
                factor: 2,
                max_ms: 250,
            },
            jitter: false,
            ..RetryPolicy::default()
        };
        let t = FailureClass::Transient;
        assert_eq!(
            decide_retry(&policy, &failed(StepClass::Read, &t, 1)),
            RetryDecision::RetryAt(1_100)
        );
        assert_eq!(
            decide_retry(&policy, &failed(StepClass::Read, &t, 2)),
            RetryDecision::RetryAt(1_200)
        );
        assert!(matches!(
            decide_retry(&policy, &failed(StepClass::Read, &t, 3)),
            RetryDecision::GiveUp(_)
        ));
        assert_eq!(
            Backoff::Exponential {
                initial_ms: 100,
                factor: 2,
                max_ms: 250
            }
            .delay_ms(5),
            250
        );
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay_and_rate_limits_are_honoured() {
        let policy = RetryPolicy {
            backoff: Backoff::Fixed { delay_ms: 1_000 },
            ..RetryPolicy::default()
        };
        for random in [0, 1, 499, 500, 501, u64::MAX] {
            let mut f = failed(StepClass::Read, &FailureClass::Transient, 1);
            f.random = random;
            let RetryDecision::RetryAt(at) = decide_retry(&policy, &f) else {
                panic!()
            };
            assert!((1_500..=2_000).contains(&at), "{at}");
        }
        let limited = FailureClass::RateLimited {
            retry_after_ms: Some(5_000),
        };
        assert_eq!(
            decide_retry(&policy, &failed(StepClass::Read, &limited, 1)),
            RetryDecision::RetryAt(6_000)
        );
    }

    #[test]
    fn total_duration_caps_retries() {
        let policy = RetryPolicy {
            backoff: Backoff::Fixed { delay_ms: 600 },
            jitter: false,
            max_total_ms: Some(1_500),
            ..RetryPolicy::default()
        };
        let d = decide_retry(
            &policy,
            &failed(StepClass::Read, &FailureClass::Transient, 1),
        );
        assert!(matches!(d, RetryDecision::GiveUp(ref why) if why.contains("duration")));
    }
}

/// Backoff shape as written in a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffKind {
    /// No wait.
    None,
    /// A fixed wait of `backoff_initial_ms`.
    Fixed,
    /// Doubling from `backoff_initial_ms` up to `backoff_max_ms`.
    Exponential,
}

/// What to do when a tool's budget runs out, as written in a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExhaustKind {
    /// Return the error to the workflow.
    Fail,
    /// Return the step's degrade value (`degrade_to` in the file, or the step's own).
    Degrade,
    /// Return no value.
    Skip,
    /// Stop the run for an operator.
    Escalate,
}

/// Per-tool rules, applied to every step that names the tool.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolPolicy {
    /// Retries of this tool allowed across the whole run (all its steps together).
    pub max_retries: Option<u32>,
    /// Deadline of one call.
    pub timeout_ms: Option<u64>,
    /// Spacing of retries.
    pub backoff: Option<BackoffKind>,
    /// First delay (default 200 ms).
    pub backoff_initial_ms: Option<u64>,
    /// Delay cap (default 30 s).
    pub backoff_max_ms: Option<u64>,
    /// Randomise delays within [delay/2, delay] (default true).
    pub jitter: Option<bool>,
    /// What happens when the tool gives up.
    pub on_exhaust: Option<ExhaustKind>,
    /// Value returned on `degrade` (JSON), unless the step gives its own.
    pub degrade_to: Option<serde_json::Value>,
    /// Circuit breaker for this tool, shared by all runs of the engine.
    pub breaker: Option<crate::breaker::BreakerConfig>,
}

/// Ceilings for a whole run: the final cap behind the per-tool budgets. Reaching one ends
/// the run's progress whatever the step's own on-exhaust rule says: the step that would
/// have made one attempt too many escalates the run (`on_ceiling = "escalate"`, the
/// default) or fails it (`"fail"`), so a loop that degrades or skips its steps cannot go on
/// writing events for ever.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCeilings {
    /// Attempts of all steps together.
    pub max_iterations: Option<u32>,
    /// Wall time from the run's start.
    pub max_duration_seconds: Option<u64>,
    /// Calls to named tools.
    pub max_tool_calls: Option<u32>,
    /// Cost units reported by attempts (failed ones included).
    pub max_cost_units: Option<u64>,
    /// What reaching a ceiling does to the run (default: escalate).
    pub on_ceiling: Option<OnCeiling>,
}

/// What a run does when it reaches one of its ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCeiling {
    /// Stop the run in `Escalated` for an operator, with the spent budget and the tool that
    /// spent most of it.
    #[default]
    Escalate,
    /// End the run as `Failed`, without handing control back to the workflow.
    Fail,
}

impl OnCeiling {
    /// The policy file's word for it: `escalate` or `fail`.
    pub fn label(self) -> &'static str {
        match self {
            OnCeiling::Escalate => "escalate",
            OnCeiling::Fail => "fail",
        }
    }
}

/// Which run ceiling was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ceiling {
    /// `max_iterations`: attempts of all steps.
    Iterations,
    /// `max_duration_seconds`: wall time since the run started.
    Duration,
    /// `max_tool_calls`: calls to named tools.
    ToolCalls,
    /// `max_cost_units`: reported cost.
    Cost,
}

impl Ceiling {
    /// The policy file's name for it.
    pub fn key(self) -> &'static str {
        match self {
            Ceiling::Iterations => "max_iterations",
            Ceiling::Duration => "max_duration_seconds",
            Ceiling::ToolCalls => "max_tool_calls",
            Ceiling::Cost => "max_cost_units",
        }
    }
}

/// A run ceiling that forbids another attempt, with what the run had spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeilingHit {
    /// Which ceiling.
    pub ceiling: Ceiling,
    /// Its limit as the policy sets it (attempts, seconds, calls or cost units).
    pub limit: u64,
    /// What the run had spent of it.
    pub spent: u64,
    /// The tool that spent most of it, and how much: attempts for the iteration, call and
    /// duration ceilings, cost units for the cost ceiling. `None` if no named tool spent any.
    pub top_tool: Option<(String, u64)>,
}

impl std::fmt::Display for CeilingHit {
    /// `run max_iterations (12)`: the budget name histories record.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run {} ({})", self.ceiling.key(), self.limit)
    }
}

impl CeilingHit {
    /// What was spent, in words, for the history and the operator: `12 attempts spent, 8 of
    /// them by tool search_api`.
    pub fn spent_text(&self) -> String {
        let (unit, of_it) = match self.ceiling {
            Ceiling::Iterations => ("attempts", "of them"),
            Ceiling::ToolCalls => ("tool calls", "of them"),
            Ceiling::Cost => ("cost units", "of them"),
            Ceiling::Duration => ("ms since the run started", "attempts"),
        };
        let mut text = format!("{} {unit} spent", self.spent);
        if let Some((tool, n)) = &self.top_tool {
            text.push_str(&format!(", {n} {of_it} by tool {tool}"));
            if self.ceiling == Ceiling::Duration {
                text.push_str(" (the most)");
            }
        }
        text
    }
}

/// The reliability policy of an engine: run ceilings and per-tool rules. Serde data, so it
/// can live in a file next to the service's other configuration.
///
/// ```toml
/// version = "2026-11-support"
/// [run]
/// max_iterations = 12
/// max_duration_seconds = 300
/// [tools.search_api]
/// max_retries = 3
/// timeout_ms = 3000
/// backoff = "exponential"
/// on_exhaust = "degrade"
/// [tools.crm_write]
/// max_retries = 1
/// timeout_ms = 10000
/// on_exhaust = "escalate"
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// A label recorded in every run started under this policy, for auditors.
    pub version: Option<String>,
    /// Run ceilings.
    #[serde(default)]
    pub run: RunCeilings,
    /// Per-tool rules by tool name.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, ToolPolicy>,
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid policy.
    #[error("invalid policy: {0}")]
    Parse(String),
}

impl Policy {
    /// Parses a policy from TOML.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))
    }

    /// Reads a TOML policy file (feature `files`, which `annal` enables).
    #[cfg(feature = "files")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// The retry policy for a step: what the step set explicitly wins, then its tool's rules,
    /// then the defaults.
    pub fn retry_for(&self, tool: Option<&str>, explicit: Option<&RetryPolicy>) -> RetryPolicy {
        if let Some(explicit) = explicit {
            return explicit.clone();
        }
        let mut retry = RetryPolicy::default();
        let Some(tool) = tool.and_then(|t| self.tools.get(t)) else {
            return retry;
        };
        if let Some(max_retries) = tool.max_retries {
            retry.max_attempts = max_retries.saturating_add(1);
        }
        retry.attempt_timeout_ms = tool.timeout_ms.or(retry.attempt_timeout_ms);
        retry.jitter = tool.jitter.unwrap_or(retry.jitter);
        let initial_ms = tool.backoff_initial_ms.unwrap_or(200);
        let max_ms = tool.backoff_max_ms.unwrap_or(30_000);
        retry.backoff = match tool.backoff {
            None => Backoff::Exponential {
                initial_ms,
                factor: 2,
                max_ms,
            },
            Some(BackoffKind::None) => Backoff::None,
            Some(BackoffKind::Fixed) => Backoff::Fixed {
                delay_ms: initial_ms,
            },
            Some(BackoffKind::Exponential) => Backoff::Exponential {
                initial_ms,
                factor: 2,
                max_ms,
            },
        };
        retry
    }

    /// What a step does when it gives up: explicit setting, then the tool's rule, then `Fail`.
    /// `degrade_to` is the step's own degrade value, used when the tool rule says degrade.
    pub fn exhaust_for(
        &self,
        tool: Option<&str>,
        explicit: Option<&OnExhaust>,
        degrade_to: Option<&Payload>,
    ) -> OnExhaust {
        if let Some(explicit) = explicit {
            return explicit.clone();
        }
        let Some(rule) = tool.and_then(|t| self.tools.get(t)) else {
            return OnExhaust::Fail;
        };
        match rule.on_exhaust {
            None | Some(ExhaustKind::Fail) => OnExhaust::Fail,
            Some(ExhaustKind::Skip) => OnExhaust::Skip,
            Some(ExhaustKind::Escalate) => OnExhaust::Escalate,
            Some(ExhaustKind::Degrade) => {
                let value = degrade_to.cloned().or_else(|| {
                    rule.degrade_to
                        .as_ref()
                        .and_then(|v| Payload::encode(v).ok())
                });
                match value {
                    Some(value) => OnExhaust::Degrade(value),
                    None => OnExhaust::Skip,
                }
            }
        }
    }
}

/// Budget use of a run so far, folded from its history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetUse {
    /// Attempts of all steps.
    pub attempts: u32,
    /// Calls to named tools.
    pub tool_calls: u32,
    /// Retries per tool.
    pub tool_retries: std::collections::BTreeMap<String, u32>,
    /// Cost units reported (by failed attempts too).
    pub cost_units: u64,
    /// When the run started.
    pub started_ms: u64,
    /// Attempts per named tool (the alternative each attempt called).
    pub tool_attempts: std::collections::BTreeMap<String, u32>,
    /// Cost units per named tool.
    pub tool_cost: std::collections::BTreeMap<String, u64>,
}

impl BudgetUse {
    /// The tool with the most of `spent` (ties: the first name), if any tool has some.
    fn top<V: Copy + Into<u64>>(
        spent: &std::collections::BTreeMap<String, V>,
    ) -> Option<(String, u64)> {
        spent
            .iter()
            .map(|(tool, n)| (tool, (*n).into()))
            .filter(|(_, n)| *n > 0)
            .fold(None::<(&String, u64)>, |best, (tool, n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((tool, n)),
            })
            .map(|(tool, n)| (tool.clone(), n))
    }
}

/// Which run ceiling, if any, forbids another attempt now, with what was spent and by whom.
/// Pure: `used` is folded from history and `now_ms` is the instant the caller records.
pub fn ceiling_reached(
    ceilings: &RunCeilings,
    used: &BudgetUse,
    tool: Option<&str>,
    now_ms: u64,
) -> Option<CeilingHit> {
    let by_attempts = || BudgetUse::top(&used.tool_attempts);
    if let Some(max) = ceilings.max_iterations {
        if used.attempts >= max {
            return Some(CeilingHit {
                ceiling: Ceiling::Iterations,
                limit: u64::from(max),
                spent: u64::from(used.attempts),
                top_tool: by_attempts(),
            });
        }
    }
    if let Some(max) = ceilings.max_tool_calls {
        if tool.is_some() && used.tool_calls >= max {
            return Some(CeilingHit {
                ceiling: Ceiling::ToolCalls,
                limit: u64::from(max),
                spent: u64::from(used.tool_calls),
                top_tool: by_attempts(),
            });
        }
    }
    if let Some(max) = ceilings.max_cost_units {
        if used.cost_units >= max {
            return Some(CeilingHit {
                ceiling: Ceiling::Cost,
                limit: max,
                spent: used.cost_units,
                top_tool: BudgetUse::top(&used.tool_cost),
            });
        }
    }
    if let Some(max) = ceilings.max_duration_seconds {
        let elapsed_ms = now_ms.saturating_sub(used.started_ms);
        if elapsed_ms > max.saturating_mul(1_000) {
            return Some(CeilingHit {
                ceiling: Ceiling::Duration,
                limit: max,
                spent: elapsed_ms,
                top_tool: by_attempts(),
            });
        }
    }
    None
}

/// Which run ceiling, if any, forbids another attempt now (`run max_iterations (12)`). Pure.
pub fn run_ceiling_reached(
    ceilings: &RunCeilings,
    used: &BudgetUse,
    tool: Option<&str>,
    now_ms: u64,
) -> Option<String> {
    ceiling_reached(ceilings, used, tool, now_ms).map(|hit| hit.to_string())
}

/// Whether the tool's run-wide retry budget allows one more retry. Pure.
pub fn tool_retry_exhausted(
    policy: &Policy,
    tool: Option<&str>,
    used: &BudgetUse,
) -> Option<String> {
    let tool = tool?;
    let max = policy.tools.get(tool)?.max_retries?;
    let spent = used.tool_retries.get(tool).copied().unwrap_or(0);
    (spent >= max).then(|| format!("tool {tool} max_retries ({max}) across the run"))
}

#[cfg(all(test, feature = "files"))]
mod policy_file_tests {
    use super::*;

    const FILE: &str = r#"
        version = "v7"
        [run]
        max_iterations = 12
        max_duration_seconds = 300
        [tools.search_api]
        max_retries = 3
        timeout_ms = 3000
        backoff = "exponential"
        on_exhaust = "degrade"
        degrade_to = { results = [] }
        [tools.crm_write]
        max_retries = 1
        timeout_ms = 10000
        on_exhaust = "escalate"
    "#;

    #[test]
    fn a_policy_file_resolves_per_tool_rules() {
        let policy = Policy::from_toml(FILE).unwrap();
        assert_eq!(policy.version.as_deref(), Some("v7"));
        assert_eq!(policy.run.max_iterations, Some(12));
        let search = policy.retry_for(Some("search_api"), None);
        assert_eq!(
            (search.max_attempts, search.attempt_timeout_ms),
            (4, Some(3_000))
        );
        let crm = policy.retry_for(Some("crm_write"), None);
        assert_eq!(crm.max_attempts, 2);
        assert_eq!(
            policy.exhaust_for(Some("crm_write"), None, None),
            OnExhaust::Escalate
        );
        assert_eq!(
            policy.exhaust_for(Some("search_api"), None, None),
            OnExhaust::Degrade(Payload(br#"{"results":[]}"#.to_vec()))
        );
        let explicit = RetryPolicy::never();
        assert_eq!(
            policy.retry_for(Some("search_api"), Some(&explicit)),
            explicit
        );
        assert_eq!(
            policy.retry_for(Some("unknown"), None),
            RetryPolicy::default()
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Policy::from_toml("[tools.x]\nmax_retrys = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_retrys"), "{err}");
    }

    #[test]
    fn ceilings_and_tool_budgets() {
        let policy = Policy::from_toml(FILE).unwrap();
        let mut used = BudgetUse {
            started_ms: 1_000,
            ..BudgetUse::default()
        };
        assert_eq!(run_ceiling_reached(&policy.run, &used, None, 2_000), None);
        used.attempts = 12;
        assert_eq!(
            run_ceiling_reached(&policy.run, &used, None, 2_000).as_deref(),
            Some("run max_iterations (12)")
        );
        used.attempts = 0;
        assert!(run_ceiling_reached(&policy.run, &used, None, 302_000)
            .unwrap()
            .contains("max_duration"));
        used.tool_retries.insert("search_api".into(), 3);
        assert!(tool_retry_exhausted(&policy, Some("search_api"), &used).is_some());
        assert!(tool_retry_exhausted(&policy, Some("crm_write"), &used).is_none());
    }
}
