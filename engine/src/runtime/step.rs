//! Steps: a unit of work whose outcome is recorded once and handed back on every replay.
//!
//! The live path of one step, as the history records it:
//!
//! | situation                              | recorded                                         | then                 |
//! |----------------------------------------|--------------------------------------------------|----------------------|
//! | run ceiling reached                    | `StepExhausted { budget: "run …" }`, `RunCeilingReached` | escalate or fail the run (`on_ceiling`), whatever the step's on-exhaust rule |
//! | breaker of the tool open               | `AttemptFailed { class: BreakerOpen, retry_at }` | fallback, or wait    |
//! | `Irreversible` attempt                 | `AttemptStarted` (durable **before** the body)   | run the body         |
//! | body succeeded                         | `StepCompleted { served_by, cost }` (`StepRan` if first write) | return the output |
//! | body failed, policy retries            | `AttemptFailed { retry_at_ms }` (+ `AttemptCost` if it reported cost) + due-time index | durable wait, retry  |
//! | body failed, policy gives up, fallback | `AttemptFailed`, `FallbackUsed { from, to, reason }` | next alternative |
//! | body failed, nothing left              | `AttemptFailed`, `StepExhausted { action, budget }` | on-exhaust action |
//! | irreversible outcome lost in a crash   | reconcile → `StepCompleted` / `AttemptFailed`, or `Escalated` | —     |

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal_storage::{IndexOp, RunId};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::breaker::Admission;
use crate::error::StepError;
use crate::event::{EventKind, Payload};
use crate::policy::{
    ceiling_reached, decide_retry, tool_retry_exhausted, CeilingHit, FailedAttempt, FailureClass,
    OnCeiling, OnExhaust, RetryDecision, RetryPolicy, StepClass, StepFailure,
};
use crate::replay::{Command, Recorded, StepOutcome, StepRecord};
use crate::runtime::context::{ActiveStep, Begin, Ctx};
use crate::runtime::inner::AppendReq;
use crate::telemetry::{self, AttemptRef};

/// What an operator can do with a step that gave up.
const FIX_THEN_RETRY: &str = "fix the cause, then retry the step, or skip it with a value";

/// What an operator can do with a run that reached a ceiling.
const CEILING_REACHED: &str = "the run reached a ceiling of its policy: abort it, or raise the ceiling (the policy's [run] section) and retry the step";

/// Why a run escalated when a step gave up.
fn gave_up(step: &str, budget: &impl std::fmt::Display, message: &str) -> String {
    format!("step '{step}' gave up ({budget}): {message}")
}

/// What the current attempt of a step knows about itself.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Attempt number within the step, from 1.
    pub number: u32,
    /// Idempotency key of the step: the same for every attempt and every alternative,
    /// across crashes and resumes. Pass it to the target so it can deduplicate.
    pub idempotency_key: String,
    /// The run.
    pub run: RunId,
    /// The step's name.
    pub step: String,
    /// The tool this attempt calls (the alternative in use, for a fallback chain).
    pub tool: Option<String>,
    cost: Arc<AtomicU64>,
}

impl Attempt {
    /// Reports cost units spent by this attempt (tokens, cents): recorded with the step and
    /// counted against the run's `max_cost_units`.
    pub fn report_cost(&self, units: u64) {
        self.cost.fetch_add(units, Ordering::Relaxed);
    }
}

/// What a reconcile hook found out about an irreversible effect whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled<T> {
    /// The effect happened; this is its output.
    Done(T),
    /// The effect did not happen; it is safe to run the step again.
    NotDone,
    /// Nobody can tell: the run escalates to an operator.
    Unknown,
}

type ReconcileHook<'c> =
    Box<dyn Fn(String) -> BoxFuture<'c, Reconciled<Payload>> + Send + Sync + 'c>;
type ErasedBody<'c> =
    Box<dyn Fn(Attempt) -> BoxFuture<'c, Result<Payload, StepFailure>> + Send + Sync + 'c>;

/// A step being described. Defaults: class `Write`, the retry policy of its tool (or
/// [`RetryPolicy::default`]), the on-exhaust rule of its tool (or `Fail`).
#[must_use = "a step does nothing until .run(...) is awaited"]
pub struct StepBuilder<'c> {
    ctx: &'c Ctx,
    name: String,
    tool: Option<String>,
    class: StepClass,
    retry: Option<RetryPolicy>,
    on_exhaust: Option<OnExhaust>,
    degrade_to: Option<Payload>,
    input_hash: u64,
    reconcile: Option<ReconcileHook<'c>>,
    fallbacks: Vec<(Option<String>, ErasedBody<'c>)>,
}

// Steps are built on the context, not the other way round: `Ctx::step` lives here so that
// `context` never imports `step`.
impl Ctx {
    /// Starts describing a step named `name`. Finish with [`StepBuilder::run`].
    pub fn step(&self, name: &str) -> StepBuilder<'_> {
        StepBuilder::new(self, name)
    }
}

impl std::fmt::Debug for StepBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBuilder")
            .field("name", &self.name)
            .field("tool", &self.tool)
            .field("class", &self.class)
            .field("retry", &self.retry)
            .field("on_exhaust", &self.on_exhaust)
            .field("fallbacks", &self.fallbacks.len())
            .finish_non_exhaustive()
    }
}

fn erase<'c, T, F, Fut>(body: F) -> ErasedBody<'c>
where
    T: Serialize + Send + 'c,
    F: Fn(Attempt) -> Fut + Send + Sync + 'c,
    Fut: Future<Output = Result<T, StepFailure>> + Send + 'c,
{
    Box::new(move |attempt| {
        let running = body(attempt);
        Box::pin(async move {
            let value = running.await?;
            Payload::encode(&value)
                .map_err(|e| StepFailure::terminal(format!("step output does not encode: {e}")))
        })
    })
}

impl<'c> StepBuilder<'c> {
    pub(crate) fn new(ctx: &'c Ctx, name: &str) -> Self {
        Self {
            ctx,
            name: name.to_string(),
            tool: None,
            class: StepClass::default(),
            retry: None,
            on_exhaust: None,
            degrade_to: None,
            input_hash: 0,
            reconcile: None,
            fallbacks: Vec::new(),
        }
    }

    /// The tool this step calls: its per-tool policy, budget and breaker apply.
    pub fn tool(mut self, tool: &str) -> Self {
        self.tool = Some(tool.to_string());
        self
    }

    /// The step's retry class.
    pub fn class(mut self, class: StepClass) -> Self {
        self.class = class;
        self
    }

    /// The step's retry policy (overrides its tool's).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// What happens when the step gives up (overrides its tool's rule).
    pub fn on_exhaust(mut self, on_exhaust: OnExhaust) -> Self {
        self.on_exhaust = Some(on_exhaust);
        self
    }

    /// The value returned when the step gives up under a `degrade` rule.
    pub fn degrade_to<T: Serialize>(mut self, value: &T) -> Self {
        self.degrade_to = Payload::encode(value).ok();
        self
    }

    /// Declares the step's input: its hash is recorded, and replay reports drift when the
    /// code later passes a different input at this point.
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Self {
        self.input_hash = serde_json::to_vec(input).map_or(0, |bytes| fnv1a(&bytes));
        self
    }

    /// For `Irreversible` steps: how to find out whether an attempt whose outcome is unknown
    /// (a lost response, a crash) took effect — usually by looking the idempotency key up at
    /// the target. Without a hook, such a step is never run again: it fails (live) or
    /// escalates (after a crash).
    pub fn reconcile<T, F, Fut>(mut self, hook: F) -> Self
    where
        T: Serialize,
        F: Fn(String) -> Fut + Send + Sync + 'c,
        Fut: Future<Output = Reconciled<T>> + Send + 'c,
    {
        self.reconcile = Some(Box::new(move |key| {
            let found = hook(key);
            Box::pin(async move {
                match found.await {
                    Reconciled::Done(value) => {
                        Payload::encode(&value).map_or(Reconciled::Unknown, Reconciled::Done)
                    }
                    Reconciled::NotDone => Reconciled::NotDone,
                    Reconciled::Unknown => Reconciled::Unknown,
                }
            })
        }));
        self
    }

    /// Adds an alternative to a fallback chain: when the tool before it gives up (attempts,
    /// budget, open breaker), this tool is tried. The history records which one served and
    /// why the others were passed over.
    pub fn fallback<T, F, Fut>(mut self, tool: &str, body: F) -> Self
    where
        T: Serialize + Send + 'c,
        F: Fn(Attempt) -> Fut + Send + Sync + 'c,
        Fut: Future<Output = Result<T, StepFailure>> + Send + 'c,
    {
        self.fallbacks.push((Some(tool.to_string()), erase(body)));
        self
    }

    /// Runs the step: returns its recorded output on replay, or executes `body` (with
    /// retries, budgets, breaker and fallbacks as the policy says) and records the output.
    pub fn run<T, F, Fut>(
        mut self,
        body: F,
    ) -> impl Future<Output = Result<T, StepError>> + Send + 'c
    where
        T: Serialize + DeserializeOwned + Send + 'c,
        F: Fn(Attempt) -> Fut + Send + Sync + 'c,
        Fut: Future<Output = Result<T, StepFailure>> + Send + 'c,
    {
        let position = self.ctx.take_position();
        let span = tracing::info_span!(
            "step",
            step = %self.name,
            position,
            tool = self.tool.as_deref().unwrap_or(""),
            class = ?self.class
        );
        let decode = |step: String, payload: Payload| {
            payload.decode().map_err(|e| StepError::Output {
                step,
                reason: e.to_string(),
            })
        };
        async move {
            match self.begin(position).await {
                // A step that finished before hands back its output without building its
                // body chain: replaying a long history does this for every step.
                Err(settled) => decode(self.name, settled?),
                Ok(record) => {
                    let name = self.name.clone();
                    let mut chain = vec![(self.tool.clone(), erase(body))];
                    chain.append(&mut self.fallbacks);
                    // Boxed: inline, the live path's state machine made every step's future
                    // ~2.7 kB, which the workflow's own future copies at each call, replayed
                    // steps included (a quarter of a 10,000-step resume was that copy).
                    let live = Box::pin(self.execute(position, record, chain));
                    decode(name, live.await?)
                }
            }
        }
        .instrument(span)
    }

    /// Matches the call with history: `Err` with the result when the step is settled
    /// (its recorded output, or a cancellation), else `Ok` with what was recorded so far.
    async fn begin(
        &self,
        position: u32,
    ) -> Result<Option<Box<StepRecord>>, Result<Payload, StepError>> {
        let command = Command::Step {
            name: &self.name,
            tool: self.tool.as_deref(),
            class: self.class,
            input_hash: self.input_hash,
        };
        // On replay a finished step copies only its output, not its whole record.
        match self
            .ctx
            .begin_map(position, command, |record| match &record.recorded {
                Recorded::Step(step) => match &step.outcome {
                    Some(StepOutcome::Completed { output, .. }) => Err(output.clone()),
                    _ => Ok(step.clone()),
                },
                _ => unreachable!("the matcher only returns a step for a step"),
            })
            .await
        {
            Begin::Cancelled(reason) => Err(Err(StepError::Cancelled { reason })),
            Begin::Live => Ok(None),
            Begin::Recorded(Err(output)) => Err(Ok(output)),
            Begin::Recorded(Ok(step)) => Ok(Some(step)),
        }
    }

    /// The live path of a step. Its future is allocated and moved once per live step, so the
    /// rare paths (reconcile, backoff waits, giving up, failure records, halts) are boxed
    /// where they are awaited instead of sizing every step's future.
    async fn execute(
        self,
        position: u32,
        record: Option<Box<StepRecord>>,
        chain: Vec<(Option<String>, ErasedBody<'c>)>,
    ) -> Result<Payload, StepError> {
        let ctx = self.ctx;
        let engine = &ctx.engine;
        let idem_key = idempotency_key(ctx.slot.run, position);
        // The open attempt of an irreversible step that reconcile found not done.
        let mut not_done: Option<StepFailure> = None;
        let mut live = match record {
            None => Live {
                scheduled: false,
                scheduled_ms: engine.clock.now_ms(),
                attempt: 0,
                alternative: 0,
                alternative_attempts: 0,
                retry_at_ms: None,
            },
            Some(step) => {
                if let Some(outcome) = step.outcome.clone() {
                    let ceiling = ctx.slot.state().replay.ceiling_at(position);
                    if let StepOutcome::Exhausted {
                        action: OnExhaust::Escalate,
                        budget,
                        message,
                    } = &outcome
                    {
                        // Still waiting for an operator.
                        let reason = gave_up(&self.name, budget, message);
                        let next = match ceiling {
                            Some(_) => CEILING_REACHED,
                            None => FIX_THEN_RETRY,
                        };
                        Box::pin(ctx.escalate_replayed(Some(position), reason, next)).await
                    }
                    if ceiling == Some(OnCeiling::Fail) {
                        // The run failed here at its ceiling: the code never goes past it.
                        Box::pin(ctx.halt(crate::runtime::slot::Halt::Terminated)).await
                    }
                    return self.outcome(outcome, step.failures.last().map(|f| f.class.clone()));
                }
                if step.attempt_open && step.class == StepClass::Irreversible {
                    match Box::pin(self.reconcile_after_crash(position, &idem_key, &step)).await {
                        Ok(output) => return Ok(output),
                        Err(failure) => not_done = Some(failure),
                    }
                }
                Live {
                    scheduled: true,
                    scheduled_ms: step.scheduled_ms,
                    attempt: step.attempts,
                    alternative: step.alternative as usize,
                    alternative_attempts: step.alternative_attempts,
                    retry_at_ms: step
                        .failures
                        .last()
                        .filter(|f| f.attempt == step.attempts)
                        .and_then(|f| f.retry_at_ms),
                }
            }
        };
        let mut index: Vec<IndexOp> = Vec::new();
        let mut pending: Option<StepFailure> = None;
        loop {
            let (tool, body) = match chain.get(live.alternative) {
                Some((tool, body)) => (tool.clone(), body),
                None => {
                    return Err(self.exhausted(
                        "fallback chain".into(),
                        None,
                        "no alternative left".into(),
                    ))
                }
            };
            let retry = engine
                .policy
                .retry_for(tool.as_deref(), self.retry.as_ref());
            if let Some(failure) = not_done.take() {
                // No new attempt: the open one failed; decide on it below.
                pending = Some(failure);
            } else if let Some(due) = live.retry_at_ms.take() {
                // Backoff is a durable wait: after a crash only the remaining delay is waited.
                let _ = Box::pin(ctx.wait(Some(due), |_| None::<()>)).await;
                index.push(IndexOp::DeleteTimer {
                    fire_at_ms: due,
                    id: position,
                });
            }
            let now_ms = engine.clock.now_ms();
            let ceiling = if pending.is_some() {
                None
            } else {
                let state = ctx.slot.state();
                ceiling_reached(
                    &engine.policy.run,
                    state.replay.budget(),
                    tool.as_deref(),
                    now_ms,
                )
            };
            if let Some(hit) = ceiling {
                let mut events = live.schedule(&self, position, &idem_key);
                return Box::pin(self.stop_at_ceiling(position, &mut events, &mut index, hit))
                    .await;
            }
            if pending.is_none() {
                live.attempt += 1;
                live.alternative_attempts += 1;
            }
            let attempt = live.attempt;
            let admission = match &pending {
                Some(_) => Admission::Allowed,
                None => tool
                    .as_deref()
                    .map_or(Admission::Allowed, |t| engine.admit(t, now_ms)),
            };
            let (result, cost, forced_retry_at) = match (pending.take(), admission) {
                (Some(failure), _) => (Err(failure), 0, None),
                (None, admission) => match admission {
                    Admission::Rejected { retry_at_ms } => {
                        let tool = tool.as_deref().unwrap_or_default();
                        let failure = StepFailure {
                            class: FailureClass::BreakerOpen,
                            message: format!("circuit breaker for tool {tool} is open"),
                        };
                        (Err(failure), 0, Some(retry_at_ms))
                    }
                    Admission::Allowed | Admission::Probe => {
                        let (result, cost) = self
                            .attempt(
                                position,
                                &idem_key,
                                &mut live,
                                &mut index,
                                tool.clone(),
                                &retry,
                                body,
                            )
                            .await;
                        if let Some(t) = tool.as_deref() {
                            let counts =
                                !matches!(&result, Err(f) if f.class == FailureClass::Terminal);
                            engine.record_call(t, result.is_ok(), counts, engine.clock.now_ms());
                        }
                        (result, cost, None)
                    }
                },
            };
            let mut events = live.schedule(&self, position, &idem_key);
            let failure = match result {
                Ok(output) => {
                    let served_by = if live.alternative > 0 {
                        tool.clone()
                    } else {
                        None
                    };
                    let completed = EventKind::StepCompleted {
                        position,
                        output: output.clone(),
                        attempt,
                        served_by,
                        cost,
                    };
                    let events = match events.pop() {
                        // Nothing recorded before this success: one record says it all.
                        Some(scheduled) if events.is_empty() => ran(scheduled, completed),
                        scheduled => events
                            .into_iter()
                            .chain(scheduled)
                            .chain([completed])
                            .collect(),
                    };
                    ctx.append(AppendReq::events(events).index(index.drain(..)))
                        .await;
                    telemetry::step_completed(
                        &AttemptRef {
                            run: ctx.slot.run,
                            step: &self.name,
                            tool: tool.as_deref(),
                            attempt,
                        },
                        cost,
                        engine.clock.now_ms().saturating_sub(live.scheduled_ms),
                    );
                    return Ok(output);
                }
                Err(failure) => failure,
            };
            let failure = match Box::pin(self.reconcile_ambiguous(&idem_key, failure)).await {
                Ok(output) => {
                    let lost = "outcome unknown; reconciled: the effect happened".to_string();
                    events.push(EventKind::AttemptFailed {
                        position,
                        attempt,
                        class: FailureClass::Ambiguous,
                        message: lost,
                        retry_at_ms: None,
                    });
                    events.push(EventKind::StepCompleted {
                        position,
                        output: output.clone(),
                        attempt,
                        served_by: None,
                        cost,
                    });
                    Box::pin(ctx.append(AppendReq::events(events).index(index.drain(..)))).await;
                    return Ok(output);
                }
                Err(failure) => failure,
            };
            let now_ms = engine.clock.now_ms();
            let mut decision = match forced_retry_at {
                Some(_) if live.alternative_attempts >= retry.max_attempts => {
                    RetryDecision::GiveUp(format!("step attempts ({})", retry.max_attempts))
                }
                Some(at) => RetryDecision::RetryAt(at),
                None => decide_retry(
                    &retry,
                    &FailedAttempt {
                        class: self.class,
                        failure: &failure.class,
                        attempt: live.alternative_attempts,
                        now_ms,
                        scheduled_ms: live.scheduled_ms,
                        random: uuid::Uuid::new_v4().as_u64_pair().0,
                    },
                ),
            };
            if matches!(decision, RetryDecision::RetryAt(_))
                && failure.class != FailureClass::BreakerOpen
            {
                let state = ctx.slot.state();
                if let Some(budget) =
                    tool_retry_exhausted(&engine.policy, tool.as_deref(), state.replay.budget())
                {
                    decision = RetryDecision::GiveUp(budget);
                }
            }
            // A breaker rejection with an alternative left falls back at once.
            if failure.class == FailureClass::BreakerOpen && live.alternative + 1 < chain.len() {
                decision = RetryDecision::GiveUp(format!(
                    "breaker of tool {} open",
                    tool.as_deref().unwrap_or_default()
                ));
            }
            let retry_at_ms = match &decision {
                RetryDecision::RetryAt(at) => Some(*at),
                RetryDecision::GiveUp(_) => None,
            };
            telemetry::attempt_failed(
                &AttemptRef {
                    run: ctx.slot.run,
                    step: &self.name,
                    tool: tool.as_deref(),
                    attempt,
                },
                &failure.class,
                &failure.message,
                retry_at_ms,
            );
            match decision {
                RetryDecision::RetryAt(at) => {
                    events.push(EventKind::AttemptFailed {
                        position,
                        attempt,
                        class: failure.class,
                        message: failure.message,
                        retry_at_ms: Some(at),
                    });
                    events.extend(attempt_cost(position, attempt, cost));
                    index.push(IndexOp::PutTimer {
                        fire_at_ms: at,
                        id: position,
                    });
                    Box::pin(
                        ctx.append(AppendReq::events(events).index(index.drain(..)).durable()),
                    )
                    .await;
                    live.retry_at_ms = Some(at);
                }
                RetryDecision::GiveUp(budget) if live.alternative + 1 < chain.len() => {
                    let next = chain[live.alternative + 1].0.clone().unwrap_or_default();
                    let reason = format!("{budget}: {}", failure.message);
                    events.push(EventKind::AttemptFailed {
                        position,
                        attempt,
                        class: failure.class,
                        message: failure.message,
                        retry_at_ms: None,
                    });
                    events.extend(attempt_cost(position, attempt, cost));
                    events.push(EventKind::FallbackUsed {
                        position,
                        from: tool.clone(),
                        to: next,
                        reason,
                    });
                    Box::pin(
                        ctx.append(AppendReq::events(events).index(index.drain(..)).durable()),
                    )
                    .await;
                    live.alternative += 1;
                    live.alternative_attempts = 0;
                }
                RetryDecision::GiveUp(budget) => {
                    let message = failure.message.clone();
                    let class = failure.class.clone();
                    events.push(EventKind::AttemptFailed {
                        position,
                        attempt,
                        class: failure.class,
                        message: failure.message,
                        retry_at_ms: None,
                    });
                    events.extend(attempt_cost(position, attempt, cost));
                    return Box::pin(self.give_up(
                        position,
                        &mut events,
                        &mut index,
                        budget,
                        Some(class),
                        message,
                    ))
                    .await;
                }
            }
        }
    }

    /// Runs one attempt of `body`: durability before the effect, the observer, the timeout.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        position: u32,
        idem_key: &str,
        live: &mut Live,
        index: &mut Vec<IndexOp>,
        tool: Option<String>,
        retry: &RetryPolicy,
        body: &ErasedBody<'c>,
    ) -> (Result<Payload, StepFailure>, u64) {
        let ctx = self.ctx;
        let attempt = live.attempt;
        if self.class == StepClass::Irreversible {
            let mut before = live.schedule(self, position, idem_key);
            before.push(EventKind::AttemptStarted { position, attempt });
            Box::pin(ctx.append(AppendReq::events(before).index(index.drain(..)).durable())).await;
        } else if self.class != StepClass::Read {
            // Whatever the workflow observed before this effect must survive a crash.
            if let Err(e) = ctx.engine.barrier(&ctx.slot).await {
                Box::pin(ctx.store_failed(e)).await
            }
        }
        if ctx.engine.config.replay_only {
            Box::pin(ctx.stop_if_replay_only()).await;
        }
        if let Some(observer) = &ctx.engine.observer {
            observer(&crate::runtime::ObservedAttempt {
                run: ctx.slot.run,
                position,
                step: self.name.clone(),
                class: self.class,
                attempt,
                idempotency_key: idem_key.to_string(),
            });
        }
        let cost = Arc::new(AtomicU64::new(0));
        let span = tracing::info_span!(
            "attempt",
            run = %ctx.slot.run,
            step = %self.name,
            tool = tool.as_deref().unwrap_or(""),
            attempt,
            class = ?self.class
        );
        telemetry::attempt_started(
            &AttemptRef {
                run: ctx.slot.run,
                step: &self.name,
                tool: tool.as_deref(),
                attempt,
            },
            self.class,
        );
        let info = Attempt {
            number: attempt,
            idempotency_key: idem_key.to_string(),
            run: ctx.slot.run,
            step: self.name.clone(),
            tool,
            cost: Arc::clone(&cost),
        };
        ctx.slot.state().active_steps += 1;
        let _active = ActiveStep(&ctx.slot);
        let running = body(info).instrument(span);
        let result = match retry.attempt_timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), running)
                .await
                .unwrap_or_else(|e| Err(e.into())),
            None => running.await,
        };
        (result, cost.load(Ordering::Relaxed))
    }

    /// Records that the step gives up and applies its on-exhaust action.
    async fn give_up(
        &self,
        position: u32,
        events: &mut Vec<EventKind>,
        index: &mut Vec<IndexOp>,
        budget: String,
        class: Option<FailureClass>,
        message: String,
    ) -> Result<Payload, StepError> {
        let ctx = self.ctx;
        let action = ctx.engine.policy.exhaust_for(
            self.tool.as_deref(),
            self.on_exhaust.as_ref(),
            self.degrade_to.as_ref(),
        );
        events.push(EventKind::StepExhausted {
            position,
            action: action.clone(),
            budget: budget.clone(),
            message: message.clone(),
        });
        ctx.append(
            AppendReq::events(std::mem::take(events))
                .index(index.drain(..))
                .durable(),
        )
        .await;
        self.report_exhausted(position, &budget, &action);
        if action == OnExhaust::Escalate {
            let reason = gave_up(&self.name, &budget, &message);
            ctx.escalate(Some(position), reason, FIX_THEN_RETRY).await
        }
        self.outcome(
            StepOutcome::Exhausted {
                action,
                budget,
                message,
            },
            class,
        )
    }

    /// A run ceiling forbids another attempt: the step gives up, and the run escalates or
    /// fails as the policy's `on_ceiling` says, whatever the step's on-exhaust rule (a
    /// degrading or skipping step must not let a loop go on past the cap).
    async fn stop_at_ceiling(
        &self,
        position: u32,
        events: &mut Vec<EventKind>,
        index: &mut Vec<IndexOp>,
        hit: CeilingHit,
    ) -> Result<Payload, StepError> {
        let ctx = self.ctx;
        let action = ctx.engine.policy.run.on_ceiling.unwrap_or_default();
        let budget = hit.to_string();
        let message = format!("run ceiling reached: {}", hit.spent_text());
        events.push(EventKind::StepExhausted {
            position,
            action: match action {
                OnCeiling::Escalate => OnExhaust::Escalate,
                OnCeiling::Fail => OnExhaust::Fail,
            },
            budget: budget.clone(),
            message: message.clone(),
        });
        events.push(EventKind::RunCeilingReached {
            position,
            ceiling: hit.ceiling,
            limit: hit.limit,
            spent: hit.spent,
            top_tool: hit.top_tool.clone(),
            action,
        });
        let reason = gave_up(&self.name, &budget, &message);
        let exhausted = match action {
            OnCeiling::Escalate => OnExhaust::Escalate,
            OnCeiling::Fail => OnExhaust::Fail,
        };
        let report = |this: &Self| {
            this.report_exhausted(position, &budget, &exhausted);
            telemetry::ceiling_reached(
                &AttemptRef {
                    run: ctx.slot.run,
                    step: &this.name,
                    tool: this.tool.as_deref(),
                    attempt: 0,
                },
                &hit,
                action,
            );
        };
        match action {
            OnCeiling::Escalate => {
                ctx.append(
                    AppendReq::events(std::mem::take(events))
                        .index(index.drain(..))
                        .durable(),
                )
                .await;
                report(self);
                ctx.escalate(Some(position), reason, CEILING_REACHED).await
            }
            OnCeiling::Fail => {
                let deletes = crate::runtime::timer_deletes(&ctx.slot.state().replay);
                events.push(EventKind::RunFailed {
                    error: reason.clone(),
                });
                ctx.append(
                    AppendReq::events(std::mem::take(events))
                        .index(index.drain(..))
                        .index(deletes)
                        .status(crate::RunStatus::Failed, reason)
                        .durable(),
                )
                .await;
                report(self);
                telemetry::run_ended(ctx.slot.run, &ctx.workflow_name(), crate::RunStatus::Failed);
                ctx.halt(crate::runtime::slot::Halt::Terminated).await
            }
        }
    }

    /// Reports a recorded exhaustion of the step at `position` (tracing and metrics).
    fn report_exhausted(&self, position: u32, budget: &str, action: &OnExhaust) {
        let ctx = self.ctx;
        let scheduled_ms = match ctx.slot.state().replay.command(position) {
            Some(crate::replay::CommandRecord {
                recorded: Recorded::Step(step),
                ..
            }) => step.scheduled_ms,
            _ => ctx.engine.clock.now_ms(),
        };
        telemetry::step_exhausted(
            &AttemptRef {
                run: ctx.slot.run,
                step: &self.name,
                tool: self.tool.as_deref(),
                attempt: 0,
            },
            budget,
            action,
            ctx.engine.clock.now_ms().saturating_sub(scheduled_ms),
        );
    }

    /// After a crash with an irreversible attempt open: ask the reconcile hook, never run the
    /// body blindly. `Ok(output)` if the effect happened (recorded here); `Err(failure)` if it
    /// did not: the open attempt then failed, and the caller decides on it like any other
    /// failure (retry, fall back or give up), so recovery never grants an extra attempt.
    async fn reconcile_after_crash(
        &self,
        position: u32,
        idem_key: &str,
        step: &StepRecord,
    ) -> Result<Payload, StepFailure> {
        let ctx = self.ctx;
        let found = match &self.reconcile {
            Some(hook) => hook(idem_key.to_string()).await,
            None => Reconciled::Unknown,
        };
        match found {
            Reconciled::Done(output) => {
                let done = EventKind::StepCompleted {
                    position,
                    output: output.clone(),
                    attempt: step.attempts,
                    served_by: None,
                    cost: 0,
                };
                ctx.append(AppendReq::events(vec![done])).await;
                Ok(output)
            }
            Reconciled::NotDone => Err(StepFailure::transient(
                "outcome lost in a crash; reconciled: the effect did not happen",
            )),
            Reconciled::Unknown => {
                let reason = format!(
                    "irreversible step '{}' (key {idem_key}) may have taken effect before a crash; its outcome is unknown",
                    self.name
                );
                ctx.escalate(
                    Some(position),
                    reason,
                    "check the target for the idempotency key, then resolve the step as done (with its output) or not done",
                )
                .await
            }
        }
    }

    /// An irreversible attempt that may have taken effect asks the reconcile hook, if any:
    /// `Ok(output)` when it did, a definite (retryable) failure when it did not, and the
    /// original failure when nobody can tell.
    async fn reconcile_ambiguous(
        &self,
        idem_key: &str,
        failure: StepFailure,
    ) -> Result<Payload, StepFailure> {
        let ambiguous = matches!(
            failure.class,
            FailureClass::Ambiguous | FailureClass::Timeout
        );
        let Some(hook) = self
            .reconcile
            .as_ref()
            .filter(|_| ambiguous && self.class == StepClass::Irreversible)
        else {
            return Err(failure);
        };
        match hook(idem_key.to_string()).await {
            Reconciled::Done(output) => Ok(output),
            Reconciled::NotDone => Err(StepFailure::transient(format!(
                "{}; reconciled: the effect did not happen",
                failure.message
            ))),
            Reconciled::Unknown => Err(failure),
        }
    }

    fn exhausted(&self, budget: String, class: Option<FailureClass>, message: String) -> StepError {
        StepError::Exhausted {
            step: self.name.clone(),
            budget,
            class,
            message,
        }
    }

    fn outcome(
        &self,
        outcome: StepOutcome,
        class: Option<FailureClass>,
    ) -> Result<Payload, StepError> {
        match outcome {
            StepOutcome::Completed { output, .. } => Ok(output),
            StepOutcome::Exhausted {
                action,
                budget,
                message,
            } => match action {
                OnExhaust::Degrade(value) => Ok(value),
                OnExhaust::Skip => Ok(Payload(b"null".to_vec())),
                OnExhaust::Fail | OnExhaust::Escalate => {
                    Err(self.exhausted(budget, class, message))
                }
            },
        }
    }
}

/// Where the live execution of a step stands.
struct Live {
    scheduled: bool,
    scheduled_ms: u64,
    attempt: u32,
    alternative: usize,
    alternative_attempts: u32,
    retry_at_ms: Option<u64>,
}

impl Live {
    /// The `StepScheduled` event, the first time a step writes anything.
    fn schedule(
        &mut self,
        step: &StepBuilder<'_>,
        position: u32,
        idem_key: &str,
    ) -> Vec<EventKind> {
        if self.scheduled {
            return Vec::new();
        }
        self.scheduled = true;
        vec![EventKind::StepScheduled {
            position,
            name: step.name.clone(),
            tool: step.tool.clone(),
            class: step.class,
            idem_key: idem_key.to_string(),
            input_hash: step.input_hash,
        }]
    }
}

/// The `AttemptCost` record of a failed attempt that reported cost, if it did.
fn attempt_cost(position: u32, attempt: u32, cost: u64) -> Option<EventKind> {
    (cost > 0).then_some(EventKind::AttemptCost {
        position,
        attempt,
        cost,
    })
}

pub(crate) use annal_core::ids::idempotency_key;

/// Merges a step's `StepScheduled` and `StepCompleted` into one `StepRan` (the primary
/// served); anything else stays as the two events.
fn ran(scheduled: EventKind, completed: EventKind) -> Vec<EventKind> {
    match (scheduled, completed) {
        (
            EventKind::StepScheduled {
                position,
                name,
                tool,
                class,
                idem_key,
                input_hash,
            },
            EventKind::StepCompleted {
                output,
                attempt,
                served_by: None,
                cost,
                ..
            },
        ) => vec![EventKind::StepRan {
            position,
            name,
            tool,
            class,
            idem_key,
            input_hash,
            output,
            attempt,
            cost,
        }],
        (scheduled, completed) => vec![scheduled, completed],
    }
}

/// FNV-1a: a stable, dependency-free hash for drift detection of step inputs (not security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
