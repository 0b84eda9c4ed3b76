//! `Ctx`: everything a workflow does goes through it, so that it can be recorded live and
//! handed back on replay.
//!
//! Each call takes a **position** (its order of creation) synchronously, when the call is
//! made, not when its future is first polled; two steps joined concurrently therefore get
//! the same positions on every replay, whichever finished first.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use annal_storage::{IndexOp, RunId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::error::{Cancelled, StepError, WorkflowError};
use crate::event::{EventKind, Payload, ValueKind};
use crate::policy::{decide_retry, FailedAttempt, OnExhaust, RetryDecision, RetryPolicy, StepClass, StepFailure};
use crate::replay::{Command, CommandRecord, Match, Recorded, StepOutcome};
use crate::runtime::inner::{AppendReq, EngineInner};
use crate::runtime::slot::{Halt, RunSlot};

/// The workflow's handle on the engine. Cheap to clone; clones share the run.
#[derive(Clone)]
pub struct Ctx {
    engine: Arc<EngineInner>,
    slot: Arc<RunSlot>,
}

/// What the current attempt of a step knows about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Attempt number, from 1.
    pub number: u32,
    /// Idempotency key of the step: the same for every attempt, across crashes and resumes.
    /// Pass it to the target so it can deduplicate.
    pub idempotency_key: String,
    /// The run.
    pub run: RunId,
    /// The step's name.
    pub step: String,
}

enum Begin {
    Live,
    Recorded(CommandRecord),
    Cancelled(String),
}

/// Decrements the count of running step bodies even if the body's future is dropped.
struct ActiveStep<'a>(&'a RunSlot);

impl Drop for ActiveStep<'_> {
    fn drop(&mut self) {
        self.0.state().active_steps -= 1;
    }
}

impl Ctx {
    pub(crate) fn new(engine: Arc<EngineInner>, slot: Arc<RunSlot>) -> Self {
        Self { engine, slot }
    }

    /// The run this workflow executes.
    pub fn run_id(&self) -> RunId {
        self.slot.run
    }

    fn take_position(&self) -> u32 {
        let mut state = self.slot.state();
        let position = state.next_position;
        state.next_position += 1;
        position
    }

    /// Stops the run's code for good (until resolved from outside). Never returns.
    async fn halt(&self, halt: Halt) -> ! {
        self.slot.halt(halt);
        std::future::pending().await
    }

    async fn store_failed(&self, error: crate::Error) -> ! {
        self.halt(Halt::Store(error.to_string())).await
    }

    /// Records an escalation with its context and stops the run for an operator.
    pub(crate) async fn escalate(&self, position: Option<u32>, reason: String, suggested_next: &str) -> ! {
        let context = {
            let state = self.slot.state();
            crate::replay::escalation_context(&state.replay, position, suggested_next)
        };
        let event = EventKind::Escalated { position, reason: reason.clone(), context };
        self.append(AppendReq::events(vec![event]).status(crate::RunStatus::Escalated, reason.clone()).durable()).await;
        self.halt(Halt::Escalate(reason)).await
    }

    pub(crate) fn block(&self, reason: String) {
        self.slot.halt(Halt::Blocked(reason));
    }

    async fn append(&self, req: AppendReq) {
        self.stop_if_replay_only().await;
        if let Err(e) = self.engine.append(&self.slot, req).await {
            self.store_failed(e).await
        }
    }

    /// In replay-only mode nothing runs live: the first live action ends the replay.
    async fn stop_if_replay_only(&self) {
        if self.engine.config.replay_only {
            self.halt(Halt::ReplayEnd).await
        }
    }

    /// Matches the call at `position` against history.
    async fn begin(&self, position: u32, command: Command<'_>) -> Begin {
        let (matched, pending_cancel) = {
            let mut state = self.slot.state();
            state.visited.insert(position);
            let matched = match state.replay.check(position, &command) {
                Match::Live => Ok(None),
                Match::Recorded(record) => Ok(Some(record.clone())),
                Match::Drift(mismatch) => Err(mismatch),
            };
            (matched, state.replay.pending_cancel().map(str::to_string))
        };
        match matched {
            Err(mismatch) => self.halt(Halt::Drift(mismatch)).await,
            Ok(Some(CommandRecord { recorded: Recorded::CancelDelivered, .. })) => {
                let reason = self.slot.state().replay.cancel_reason().unwrap_or_default().to_string();
                Begin::Cancelled(reason)
            }
            Ok(Some(record)) => Begin::Recorded(record),
            Ok(None) => match pending_cancel {
                Some(reason) => {
                    self.append(AppendReq::events(vec![EventKind::CancelDelivered { position }])).await;
                    Begin::Cancelled(reason)
                }
                None => Begin::Live,
            },
        }
    }

    /// Waits until `ready` holds, `due_ms` passes or a cancellation arrives; parks the run if
    /// the wait outlasts the engine's `park_after_ms` while no step body runs.
    async fn wait<T>(&self, due_ms: Option<u64>, mut ready: impl FnMut(&crate::runtime::slot::RunState) -> Option<T>) -> Waited<T> {
        let clock = &self.engine.clock;
        let park_after_ms = self.engine.config.park_after_ms;
        if self.engine.config.replay_only {
            if let Some(value) = ready(&self.slot.state()) {
                return Waited::Ready(value);
            }
            self.stop_if_replay_only().await;
        }
        let mut park_at_ms = clock.now_ms().saturating_add(park_after_ms);
        loop {
            let changed = self.slot.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.slot.state();
                if let Some(value) = ready(&state) {
                    return Waited::Ready(value);
                }
                if let Some(reason) = state.replay.pending_cancel() {
                    return Waited::Cancelled(reason.to_string());
                }
            }
            let now_ms = clock.now_ms();
            if due_ms.is_some_and(|due| now_ms >= due) {
                return Waited::Due;
            }
            if now_ms >= park_at_ms {
                self.request_park();
                park_at_ms = now_ms.saturating_add(park_after_ms);
            }
            let wake_ms = due_ms.map_or(park_at_ms, |due| due.min(park_at_ms));
            tokio::select! {
                () = &mut changed => {}
                () = clock.sleep_until_ms(wake_ms) => {}
            }
        }
    }

    fn request_park(&self) {
        let mut state = self.slot.state();
        if state.active_steps == 0 && state.halt.is_none() {
            state.park_requested_at_len = state.events.len();
            drop(state);
            self.slot.halt(Halt::Park);
        }
    }

    /// Starts describing a step named `name`. Finish with [`StepBuilder::run`].
    pub fn step(&self, name: &str) -> StepBuilder<'_> {
        StepBuilder {
            ctx: self,
            name: name.to_string(),
            tool: None,
            class: StepClass::default(),
            retry: RetryPolicy::default(),
            input_hash: 0,
            on_exhaust: OnExhaust::Fail,
            reconcile: None,
        }
    }

    /// A durable sleep: survives restarts, resumes with only the remaining time.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = Result<(), Cancelled>> + Send + '_ {
        let position = self.take_position();
        async move {
            let due = self.engine.clock.now_ms().saturating_add(duration.as_millis() as u64);
            self.timer(position, due).await
        }
    }

    /// A durable sleep until a wall time (ms since the Unix epoch).
    pub fn sleep_until(&self, at_ms: u64) -> impl Future<Output = Result<(), Cancelled>> + Send + '_ {
        let position = self.take_position();
        self.timer(position, at_ms)
    }

    async fn timer(&self, position: u32, live_due_ms: u64) -> Result<(), Cancelled> {
        let fire_at_ms = match self.begin(position, Command::Timer).await {
            Begin::Cancelled(reason) => return Err(Cancelled { reason }),
            Begin::Recorded(CommandRecord { recorded: Recorded::Timer { fire_at_ms, done }, .. }) => {
                if done {
                    return self.timer_result(position);
                }
                fire_at_ms
            }
            Begin::Recorded(_) => unreachable!("the matcher only returns a timer for a timer"),
            Begin::Live => {
                self.append(
                    AppendReq::events(vec![EventKind::TimerStarted { position, fire_at_ms: live_due_ms }])
                        .index([IndexOp::PutTimer { fire_at_ms: live_due_ms, id: position }])
                        .durable(),
                )
                .await;
                self.engine.timers_changed.notify_one();
                live_due_ms
            }
        };
        let delete = IndexOp::DeleteTimer { fire_at_ms, id: position };
        match self.wait(Some(fire_at_ms), |_| None::<()>).await {
            Waited::Ready(()) | Waited::Due => {
                self.append(AppendReq::events(vec![EventKind::TimerFired { position }]).index([delete])).await;
                Ok(())
            }
            Waited::Cancelled(reason) => {
                self.append(AppendReq::events(vec![EventKind::TimerCancelled { position }]).index([delete])).await;
                Err(Cancelled { reason })
            }
        }
    }

    fn timer_result(&self, position: u32) -> Result<(), Cancelled> {
        let state = self.slot.state();
        let cancelled = state.events.iter().any(|e| matches!(e.kind, EventKind::TimerCancelled { position: p } if p == position));
        if cancelled {
            Err(Cancelled { reason: state.replay.cancel_reason().unwrap_or_default().to_string() })
        } else {
            Ok(())
        }
    }

    /// Waits for the next signal named `name` (signals sent before the wait are kept, in
    /// order). Each signal is taken by exactly one call.
    pub fn signal<T: DeserializeOwned>(&self, name: &str) -> impl Future<Output = Result<T, StepError>> + Send + '_ {
        let position = self.take_position();
        let name = name.to_string();
        async move {
            let signal_seq = match self.begin(position, Command::Signal { name: &name }).await {
                Begin::Cancelled(reason) => return Err(StepError::Cancelled { reason }),
                Begin::Recorded(CommandRecord { recorded: Recorded::Signal { signal_seq, .. }, .. }) => signal_seq,
                Begin::Recorded(_) => unreachable!("the matcher only returns a signal for a signal"),
                Begin::Live => loop {
                    match self.wait(None, |state| state.replay.next_signal(&name)).await {
                        Waited::Cancelled(reason) => {
                            self.append(AppendReq::events(vec![EventKind::CancelDelivered { position }])).await;
                            return Err(StepError::Cancelled { reason });
                        }
                        Waited::Due => unreachable!("a signal wait has no due time"),
                        Waited::Ready(_) => {}
                    }
                    // Take it under the writer lock, so two waits never take the same signal.
                    let mut writer = self.slot.writer.lock().await;
                    let Some(seq) = self.slot.state().replay.next_signal(&name) else { continue };
                    let consumed = EventKind::SignalConsumed { position, name: name.clone(), signal_seq: seq };
                    if let Err(e) = self.engine.append_locked(&self.slot, &mut writer, AppendReq::events(vec![consumed])).await {
                        drop(writer);
                        self.store_failed(e).await
                    }
                    break seq;
                },
            };
            let payload = {
                let state = self.slot.state();
                state.events.get(signal_seq as usize).and_then(|e| match &e.kind {
                    EventKind::SignalReceived { payload, .. } => Some(payload.clone()),
                    _ => None,
                })
            };
            let payload = payload.ok_or_else(|| StepError::Output {
                step: format!("signal '{name}'"),
                reason: format!("seq {signal_seq} is not a received signal"),
            })?;
            payload.decode().map_err(|e| StepError::Output { step: format!("signal '{name}'"), reason: e.to_string() })
        }
    }

    async fn value(&self, position: u32, kind: ValueKind, live: impl FnOnce() -> Payload) -> Payload {
        match self.begin(position, Command::Value { kind }).await {
            Begin::Recorded(CommandRecord { recorded: Recorded::Value { value, .. }, .. }) => value,
            // A value call cannot be cancelled meaningfully: hand back a fresh value; the
            // cancellation stays recorded and the next wait or step reports it.
            Begin::Recorded(_) | Begin::Cancelled(_) | Begin::Live => {
                let value = live();
                let recorded = matches!(self.slot.state().replay.command(position), Some(_));
                if !recorded {
                    self.append(AppendReq::events(vec![EventKind::ValueRecorded { position, kind, value: value.clone() }])).await;
                }
                value
            }
        }
    }

    /// The current time (ms since the Unix epoch), recorded on first execution and replayed
    /// after.
    pub fn now_ms(&self) -> impl Future<Output = u64> + Send + '_ {
        let position = self.take_position();
        async move {
            let now = self.engine.clock.now_ms();
            let value = self.value(position, ValueKind::Now, || Payload::encode(&now).unwrap_or_default()).await;
            value.decode().unwrap_or(now)
        }
    }

    /// A random number, recorded on first execution and replayed after.
    pub fn random_u64(&self) -> impl Future<Output = u64> + Send + '_ {
        let position = self.take_position();
        async move {
            let fresh = uuid::Uuid::new_v4().as_u64_pair().0;
            let value = self.value(position, ValueKind::Random, || Payload::encode(&fresh).unwrap_or_default()).await;
            value.decode().unwrap_or(fresh)
        }
    }

    /// A random UUID, recorded on first execution and replayed after.
    pub fn uuid(&self) -> impl Future<Output = uuid::Uuid> + Send + '_ {
        let position = self.take_position();
        async move {
            let fresh = uuid::Uuid::new_v4();
            let value = self.value(position, ValueKind::Uuid, || Payload::encode(&fresh).unwrap_or_default()).await;
            value.decode().unwrap_or(fresh)
        }
    }

    /// Whether the code path guarded by patch `id` applies to this run: true when running
    /// live or when the run's history has the marker; false when replaying a history written
    /// before the patch existed. Lets a fix ship without breaking runs in flight.
    pub fn patched(&self, id: &str) -> impl Future<Output = bool> + Send + '_ {
        let mut state = self.slot.state();
        let position = state.next_position;
        let recorded = state.replay.check_patch(position, id);
        if recorded != Some(false) {
            state.next_position += 1;
            state.visited.insert(position);
        }
        drop(state);
        let id = id.to_string();
        async move {
            match recorded {
                Some(present) => present,
                None => {
                    self.append(AppendReq::events(vec![EventKind::PatchMarker { position, id }])).await;
                    true
                }
            }
        }
    }

    /// Ends this run and continues the same workflow as a new run with `input` and an empty
    /// history: `return Err(ctx.continue_as_new(&next))`. Keeps long-lived runs' histories
    /// bounded.
    pub fn continue_as_new<I: Serialize>(&self, input: &I) -> WorkflowError {
        match Payload::encode(input) {
            Ok(payload) => WorkflowError::ContinueAsNew(payload),
            Err(e) => WorkflowError::failed(format!("continue_as_new input does not encode: {e}")),
        }
    }
}

enum Waited<T> {
    Ready(T),
    Due,
    Cancelled(String),
}

/// A step being described. Defaults: class `Write`, [`RetryPolicy::default`], no tool,
/// `OnExhaust::Fail`.
#[must_use = "a step does nothing until .run(...) is awaited"]
pub struct StepBuilder<'c> {
    ctx: &'c Ctx,
    name: String,
    tool: Option<String>,
    class: StepClass,
    retry: RetryPolicy,
    input_hash: u64,
    on_exhaust: OnExhaust,
    reconcile: Option<ReconcileHook<'c>>,
}

type ReconcileHook<'c> = Box<dyn Fn(String) -> futures::future::BoxFuture<'c, Reconciled<Payload>> + Send + Sync + 'c>;

/// What a reconcile hook found out about an irreversible effect whose outcome was lost in a
/// crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled<T> {
    /// The effect happened; this is its output.
    Done(T),
    /// The effect did not happen; it is safe to run the step again.
    NotDone,
    /// Nobody can tell: the run escalates to an operator.
    Unknown,
}

impl<'c> StepBuilder<'c> {
    /// For `Irreversible` steps: how to find out, after a crash, whether an attempt whose
    /// outcome was not recorded took effect (look the idempotency key up at the target).
    /// Without a hook, such a step escalates instead of running again.
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
                    Reconciled::Done(value) => match Payload::encode(&value) {
                        Ok(payload) => Reconciled::Done(payload),
                        Err(_) => Reconciled::Unknown,
                    },
                    Reconciled::NotDone => Reconciled::NotDone,
                    Reconciled::Unknown => Reconciled::Unknown,
                }
            })
        }));
        self
    }

    /// The tool this step calls (for per-tool policies, breakers and reports).
    pub fn tool(mut self, tool: &str) -> Self {
        self.tool = Some(tool.to_string());
        self
    }

    /// The step's retry class.
    pub fn class(mut self, class: StepClass) -> Self {
        self.class = class;
        self
    }

    /// The step's retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// What happens when the step gives up.
    pub fn on_exhaust(mut self, on_exhaust: OnExhaust) -> Self {
        self.on_exhaust = on_exhaust;
        self
    }

    /// Declares the step's input: its hash is recorded, and replay reports drift when the
    /// code later passes a different input at this point.
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Self {
        self.input_hash = serde_json::to_vec(input).map_or(0, |bytes| fnv1a(&bytes));
        self
    }

    /// Runs the step: returns its recorded output on replay, or executes `body` (with retries
    /// as the policy says) and records the output.
    pub fn run<T, F, Fut>(self, body: F) -> impl Future<Output = Result<T, StepError>> + Send + 'c
    where
        T: Serialize + DeserializeOwned + Send + 'c,
        F: Fn(Attempt) -> Fut + Send + 'c,
        Fut: Future<Output = Result<T, StepFailure>> + Send + 'c,
    {
        let position = self.ctx.take_position();
        let span = tracing::info_span!("step", step = %self.name, position, tool = self.tool.as_deref().unwrap_or(""), class = ?self.class);
        self.execute(position, body).instrument(span)
    }

    async fn execute<T, F, Fut>(self, position: u32, body: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<T, StepFailure>>,
    {
        let ctx = self.ctx;
        let command = Command::Step { name: &self.name, tool: self.tool.as_deref(), class: self.class, input_hash: self.input_hash };
        let record = match ctx.begin(position, command).await {
            Begin::Cancelled(reason) => return Err(StepError::Cancelled { reason }),
            Begin::Live => None,
            Begin::Recorded(record) => Some(record),
        };
        let idem_key = format!("{}/{}", ctx.slot.run, position);
        let (mut attempt, mut scheduled, scheduled_ms, mut retry_at_ms) = match record.map(|r| r.recorded) {
            Some(Recorded::Step { outcome: Some(StepOutcome::Exhausted { action: OnExhaust::Escalate, budget, .. }), .. }) => {
                ctx.halt(Halt::Escalate(format!("step '{}' exhausted ({budget})", self.name))).await
            }
            Some(Recorded::Step { outcome: Some(outcome), failures, .. }) => {
                return self.outcome(outcome, failures.last().map(|f| f.class.clone()))
            }
            Some(Recorded::Step { attempts, attempt_open: true, class: StepClass::Irreversible, .. }) => {
                // The effect may have happened before the crash: never run it blindly again.
                let found = match &self.reconcile {
                    Some(hook) => hook(idem_key.clone()).await,
                    None => Reconciled::Unknown,
                };
                match found {
                    Reconciled::Done(output) => {
                        let done = EventKind::StepCompleted { position, output: output.clone(), attempt: attempts, served_by: None, cost: 0 };
                        ctx.append(AppendReq::events(vec![done])).await;
                        return self.outcome(StepOutcome::Completed { output, attempt: attempts, served_by: None }, None);
                    }
                    Reconciled::NotDone => {
                        let failed = EventKind::AttemptFailed {
                            position,
                            attempt: attempts,
                            class: crate::policy::FailureClass::Transient,
                            message: "outcome lost in a crash; reconciled: the effect did not happen".into(),
                            retry_at_ms: None,
                        };
                        ctx.append(AppendReq::events(vec![failed]).durable()).await;
                        let scheduled_ms = ctx.slot.state().replay.command(position).map_or(0, |r| match &r.recorded {
                            Recorded::Step { scheduled_ms, .. } => *scheduled_ms,
                            _ => 0,
                        });
                        (attempts, true, scheduled_ms, None)
                    }
                    Reconciled::Unknown => {
                        let reason = format!(
                            "irreversible step '{}' (key {idem_key}) may have taken effect before a crash; its outcome is unknown",
                            self.name
                        );
                        ctx.escalate(Some(position), reason, "check the target for the idempotency key, then resolve the step as done (with its output) or not done").await
                    }
                }
            }
            Some(Recorded::Step { attempts, failures, scheduled_ms, .. }) => {
                (attempts, true, scheduled_ms, failures.last().and_then(|f| f.retry_at_ms))
            }
            Some(_) => unreachable!("the matcher only returns a step for a step"),
            None => (0, false, ctx.engine.clock.now_ms(), None),
        };
        let mut index: Vec<IndexOp> = Vec::new();
        loop {
            if let Some(due) = retry_at_ms.take() {
                // Backoff is a durable wait: after a crash only the remaining delay is waited.
                let _ = ctx.wait(Some(due), |_| None::<()>).await;
                index.push(IndexOp::DeleteTimer { fire_at_ms: due, id: position });
            }
            attempt += 1;
            let mut before = Vec::new();
            if self.class == StepClass::Irreversible {
                if !scheduled {
                    before.push(self.scheduled_event(position, &idem_key));
                    scheduled = true;
                }
                before.push(EventKind::AttemptStarted { position, attempt });
            }
            if !before.is_empty() {
                ctx.append(AppendReq::events(before).index(index.drain(..)).durable()).await;
            } else if self.class != StepClass::Read {
                // Whatever the workflow observed before this effect must survive a crash.
                if let Err(e) = ctx.engine.barrier(&ctx.slot).await {
                    ctx.store_failed(e).await
                }
            }
            ctx.stop_if_replay_only().await;
            let result = {
                ctx.slot.state().active_steps += 1;
                let _active = ActiveStep(&ctx.slot);
                let attempt_info = Attempt { number: attempt, idempotency_key: idem_key.clone(), run: ctx.slot.run, step: self.name.clone() };
                if let Some(observer) = &ctx.engine.observer {
                    observer(&crate::runtime::ObservedAttempt {
                        run: ctx.slot.run,
                        position,
                        step: self.name.clone(),
                        class: self.class,
                        attempt,
                        idempotency_key: idem_key.clone(),
                    });
                }
                let run = body(attempt_info).instrument(tracing::info_span!("attempt", attempt));
                match self.retry.attempt_timeout_ms {
                    Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run).await.unwrap_or_else(|e| Err(e.into())),
                    None => run.await,
                }
            };
            let mut events = Vec::new();
            if !scheduled {
                events.push(self.scheduled_event(position, &idem_key));
                scheduled = true;
            }
            let failure = match result.and_then(|v| Payload::encode(&v).map(|p| (v, p)).map_err(StepFailure::from)) {
                Ok((value, output)) => {
                    events.push(EventKind::StepCompleted { position, output, attempt, served_by: None, cost: 0 });
                    ctx.append(AppendReq::events(events).index(index.drain(..))).await;
                    return Ok(value);
                }
                Err(failure) => failure,
            };
            let failure = match self.reconcile_ambiguous(&idem_key, failure).await {
                Ok(output) => {
                    events.push(EventKind::AttemptFailed { position, attempt, class: crate::policy::FailureClass::Ambiguous, message: "outcome unknown; reconciled: the effect happened".into(), retry_at_ms: None });
                    events.push(EventKind::StepCompleted { position, output: output.clone(), attempt, served_by: None, cost: 0 });
                    ctx.append(AppendReq::events(events).index(index.drain(..))).await;
                    return self.outcome(StepOutcome::Completed { output, attempt, served_by: None }, None);
                }
                Err(failure) => failure,
            };
            tracing::info!(attempt, class = failure.class.label(), message = %failure.message, "attempt failed");
            let now_ms = ctx.engine.clock.now_ms();
            let random = uuid::Uuid::new_v4().as_u64_pair().0;
            let decision = decide_retry(
                &self.retry,
                &FailedAttempt { class: self.class, failure: &failure.class, attempt, now_ms, scheduled_ms, random },
            );
            match decision {
                RetryDecision::RetryAt(at) => {
                    events.push(EventKind::AttemptFailed { position, attempt, class: failure.class, message: failure.message, retry_at_ms: Some(at) });
                    index.push(IndexOp::PutTimer { fire_at_ms: at, id: position });
                    ctx.append(AppendReq::events(events).index(index.drain(..)).durable()).await;
                    retry_at_ms = Some(at);
                }
                RetryDecision::GiveUp(budget) => {
                    let message = failure.message.clone();
                    let last_class = failure.class.clone();
                    events.push(EventKind::AttemptFailed { position, attempt, class: failure.class, message: failure.message, retry_at_ms: None });
                    events.push(EventKind::StepExhausted { position, action: self.on_exhaust.clone(), budget: budget.clone(), message: message.clone() });
                    ctx.append(AppendReq::events(events).index(index.drain(..)).durable()).await;
                    if self.on_exhaust == OnExhaust::Escalate {
                        let reason = format!("step '{}' gave up ({budget}): {message}", self.name);
                        ctx.escalate(Some(position), reason, "fix the cause, then retry the step, or skip it with a value").await
                    }
                    return self.outcome(StepOutcome::Exhausted { action: self.on_exhaust.clone(), budget, message }, Some(last_class));
                }
            }
        }
    }

    fn scheduled_event(&self, position: u32, idem_key: &str) -> EventKind {
        EventKind::StepScheduled {
            position,
            name: self.name.clone(),
            tool: self.tool.clone(),
            class: self.class,
            idem_key: idem_key.to_string(),
            input_hash: self.input_hash,
        }
    }

    /// An irreversible attempt that may have taken effect asks the reconcile hook, if any:
    /// `Ok(output)` when it did, a definite (retryable) failure when it did not, and the
    /// original failure when nobody can tell.
    async fn reconcile_ambiguous(&self, idem_key: &str, failure: StepFailure) -> Result<Payload, StepFailure> {
        use crate::policy::FailureClass;
        let ambiguous = matches!(failure.class, FailureClass::Ambiguous | FailureClass::Timeout);
        let Some(hook) = self.reconcile.as_ref().filter(|_| ambiguous && self.class == StepClass::Irreversible) else {
            return Err(failure);
        };
        match hook(idem_key.to_string()).await {
            Reconciled::Done(output) => Ok(output),
            Reconciled::NotDone => Err(StepFailure::transient(format!("{}; reconciled: the effect did not happen", failure.message))),
            Reconciled::Unknown => Err(failure),
        }
    }

    fn outcome<T: DeserializeOwned>(&self, outcome: StepOutcome, class: Option<crate::policy::FailureClass>) -> Result<T, StepError> {
        let decode = |payload: &Payload| {
            payload.decode().map_err(|e| StepError::Output { step: self.name.clone(), reason: e.to_string() })
        };
        match outcome {
            StepOutcome::Completed { output, .. } => decode(&output),
            StepOutcome::Exhausted { action, budget, message } => match action {
                OnExhaust::Degrade(value) => decode(&value),
                OnExhaust::Skip => decode(&Payload(b"null".to_vec())),
                OnExhaust::Fail | OnExhaust::Escalate => {
                    Err(StepError::Exhausted { step: self.name.clone(), budget, class, message })
                }
            },
        }
    }

}

/// FNV-1a: a stable, dependency-free hash for drift detection of step inputs (not security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
