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

use crate::error::{Cancelled, StepError, WorkflowError};
use crate::event::{EventKind, Payload, ValueKind};
use crate::replay::{Command, CommandRecord, Match, Recorded};
use crate::runtime::inner::{AppendReq, EngineInner};
use crate::runtime::slot::{Halt, RunSlot};

/// What an operator can do with a run whose approval expired.
const REOPEN_OR_ABORT: &str = "retry to reopen the approval, or abort the run";

/// The workflow's handle on the engine. Cheap to clone; clones share the run.
#[derive(Clone)]
pub struct Ctx {
    pub(crate) engine: Arc<EngineInner>,
    pub(crate) slot: Arc<RunSlot>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("run", &self.slot.run)
            .finish_non_exhaustive()
    }
}

/// How a call starts: live, from its record (mapped under the state lock, so replay copies
/// only what the call needs), or cancelled.
// Lives for one match on the stack; boxing the common variant would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Begin<R = CommandRecord> {
    Live,
    Recorded(R),
    Cancelled(String),
}

/// Decrements the count of running step bodies even if the body's future is dropped.
pub(crate) struct ActiveStep<'a>(pub(crate) &'a RunSlot);

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

    /// The workflow name the run recorded, for telemetry.
    pub(crate) fn workflow_name(&self) -> String {
        let state = self.slot.state();
        state
            .replay
            .started()
            .map(|(workflow, _, _)| workflow.clone())
            .unwrap_or_default()
    }

    pub(crate) fn take_position(&self) -> u32 {
        let mut state = self.slot.state();
        let position = state.next_position;
        state.next_position += 1;
        position
    }

    /// Stops the run's code for good (until resolved from outside). Never returns.
    pub(crate) async fn halt(&self, halt: Halt) -> ! {
        self.slot.halt(halt);
        std::future::pending().await
    }

    pub(crate) async fn store_failed(&self, error: crate::Error) -> ! {
        let halt = if self.engine.loses_run(&error) {
            Halt::Lost(error.to_string())
        } else {
            Halt::Store(error.to_string())
        };
        self.halt(halt).await
    }

    /// Replay met a call whose recorded outcome escalates (a step that gave up, an approval
    /// that expired): stops the run for an operator, recording the escalation first unless
    /// history holds it. The escalation is its own append after the outcome, and a crash
    /// between the two left a run `Escalated` with no `Escalated` event, which no operator
    /// action could fit.
    pub(crate) async fn escalate_replayed(
        &self,
        position: Option<u32>,
        reason: String,
        suggested_next: &str,
    ) -> ! {
        let recorded = self.slot.state().replay.escalated() == Some(position);
        if recorded {
            self.halt(Halt::Escalate(reason)).await
        }
        self.escalate(position, reason, suggested_next).await
    }

    /// Records an escalation with its context and stops the run for an operator.
    pub(crate) async fn escalate(
        &self,
        position: Option<u32>,
        reason: String,
        suggested_next: &str,
    ) -> ! {
        let context = {
            let state = self.slot.state();
            crate::replay::escalation_context(
                &state.replay,
                self.slot.run,
                position,
                suggested_next,
            )
        };
        let event = EventKind::Escalated {
            position,
            reason: reason.clone(),
            context,
        };
        self.append(
            AppendReq::events(vec![event])
                .status(crate::RunStatus::Escalated, reason.clone())
                .durable(),
        )
        .await;
        let step = {
            let state = self.slot.state();
            match position
                .and_then(|p| state.replay.command(p))
                .map(|r| &r.recorded)
            {
                Some(Recorded::Step(step)) => Some(step.name.clone()),
                _ => None,
            }
        };
        crate::telemetry::run_escalated(
            self.slot.run,
            &self.workflow_name(),
            step.as_deref(),
            &reason,
        );
        self.halt(Halt::Escalate(reason)).await
    }

    pub(crate) fn block(&self, reason: String) {
        crate::telemetry::run_status(&self.workflow_name(), crate::RunStatus::Blocked);
        self.slot.halt(Halt::Blocked(reason));
    }

    pub(crate) async fn append(&self, req: AppendReq) {
        // The rare halts are boxed: every live step holds this future inline.
        if self.engine.config.replay_only {
            Box::pin(self.halt(Halt::ReplayEnd)).await
        }
        if let Err(e) = self.engine.append(&self.slot, req).await {
            Box::pin(self.store_failed(e)).await
        }
    }

    /// In replay-only mode nothing runs live: the first live action ends the replay.
    pub(crate) async fn stop_if_replay_only(&self) {
        if self.engine.config.replay_only {
            self.halt(Halt::ReplayEnd).await
        }
    }

    /// Matches the call at `position` against history.
    pub(crate) async fn begin(&self, position: u32, command: Command<'_>) -> Begin {
        self.begin_map(position, command, CommandRecord::clone)
            .await
    }

    /// [`Ctx::begin`], mapping the matched record under the state lock instead of cloning it.
    pub(crate) async fn begin_map<R>(
        &self,
        position: u32,
        command: Command<'_>,
        map: impl FnOnce(&CommandRecord) -> R,
    ) -> Begin<R> {
        let (matched, pending_cancel) = {
            let mut state = self.slot.state();
            state.visited.insert(position);
            let matched = match state.replay.check(position, &command) {
                Match::Live => Ok(None),
                Match::Recorded(CommandRecord {
                    recorded: Recorded::CancelDelivered,
                    ..
                }) => Ok(Some(None)),
                Match::Recorded(record) => Ok(Some(Some(map(record)))),
                Match::Drift(mismatch) => Err(mismatch),
            };
            (matched, state.replay.pending_cancel().map(str::to_string))
        };
        // The rare paths are boxed so that this future, which every step's future holds
        // inline, stays small (see `StepBuilder::run`).
        match matched {
            Err(mismatch) => {
                if !self.engine.config.replay_only {
                    crate::telemetry::run_status(&self.workflow_name(), crate::RunStatus::Blocked);
                }
                Box::pin(self.halt(Halt::Drift(mismatch))).await
            }
            Ok(Some(None)) => {
                let reason = self
                    .slot
                    .state()
                    .replay
                    .cancel_reason()
                    .unwrap_or_default()
                    .to_string();
                Begin::Cancelled(reason)
            }
            Ok(Some(Some(record))) => Begin::Recorded(record),
            Ok(None) => {
                match pending_cancel {
                    Some(reason) => {
                        Box::pin(self.append(AppendReq::events(vec![
                            EventKind::CancelDelivered { position },
                        ])))
                        .await;
                        Begin::Cancelled(reason)
                    }
                    None => Begin::Live,
                }
            }
        }
    }

    /// Waits until `ready` holds, `due_ms` passes or a cancellation arrives; parks the run if
    /// the wait outlasts the engine's `park_after_ms` while no step body runs.
    pub(crate) async fn wait<T>(
        &self,
        due_ms: Option<u64>,
        mut ready: impl FnMut(&crate::runtime::slot::RunState) -> Option<T>,
    ) -> Waited<T> {
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
            state.park_requested_at_len = state.replay.next_seq();
            drop(state);
            crate::telemetry::run_parking(self.slot.run, &self.workflow_name());
            self.slot.halt(Halt::Park);
        }
    }

    /// A durable sleep: survives restarts, resumes with only the remaining time.
    pub fn sleep(
        &self,
        duration: Duration,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send + '_ {
        let position = self.take_position();
        async move {
            let due = self
                .engine
                .clock
                .now_ms()
                .saturating_add(duration.as_millis() as u64);
            self.timer(position, due).await
        }
    }

    /// A durable sleep until a wall time (ms since the Unix epoch).
    pub fn sleep_until(
        &self,
        at_ms: u64,
    ) -> impl Future<Output = Result<(), Cancelled>> + Send + '_ {
        let position = self.take_position();
        self.timer(position, at_ms)
    }

    async fn timer(&self, position: u32, live_due_ms: u64) -> Result<(), Cancelled> {
        let fire_at_ms = match self.begin(position, Command::Timer).await {
            Begin::Cancelled(reason) => return Err(Cancelled { reason }),
            Begin::Recorded(CommandRecord {
                recorded: Recorded::Timer { fire_at_ms, done },
                ..
            }) => {
                if done {
                    return self.timer_result(position);
                }
                fire_at_ms
            }
            Begin::Recorded(_) => unreachable!("the matcher only returns a timer for a timer"),
            Begin::Live => {
                self.append(
                    AppendReq::events(vec![EventKind::TimerStarted {
                        position,
                        fire_at_ms: live_due_ms,
                    }])
                    .index([IndexOp::PutTimer {
                        fire_at_ms: live_due_ms,
                        id: position,
                    }])
                    .durable(),
                )
                .await;
                self.engine.timers_changed.notify_one();
                live_due_ms
            }
        };
        let delete = IndexOp::DeleteTimer {
            fire_at_ms,
            id: position,
        };
        match self.wait(Some(fire_at_ms), |_| None::<()>).await {
            Waited::Ready(()) | Waited::Due => {
                self.append(
                    AppendReq::events(vec![EventKind::TimerFired { position }]).index([delete]),
                )
                .await;
                Ok(())
            }
            Waited::Cancelled(reason) => {
                self.append(
                    AppendReq::events(vec![EventKind::TimerCancelled { position }]).index([delete]),
                )
                .await;
                Err(Cancelled { reason })
            }
        }
    }

    fn timer_result(&self, position: u32) -> Result<(), Cancelled> {
        let state = self.slot.state();
        if state.replay.timer_cancelled(position) {
            Err(Cancelled {
                reason: state.replay.cancel_reason().unwrap_or_default().to_string(),
            })
        } else {
            Ok(())
        }
    }

    /// Waits for the next signal named `name` (signals sent before the wait are kept, in
    /// order). Each signal is taken by exactly one call.
    pub fn signal<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<T, StepError>> + Send + '_ {
        let position = self.take_position();
        let name = name.to_string();
        async move {
            let signal_seq = match self.begin(position, Command::Signal { name: &name }).await {
                Begin::Cancelled(reason) => return Err(StepError::Cancelled { reason }),
                Begin::Recorded(CommandRecord {
                    recorded: Recorded::Signal { signal_seq, .. },
                    ..
                }) => signal_seq,
                Begin::Recorded(_) => {
                    unreachable!("the matcher only returns a signal for a signal")
                }
                Begin::Live => loop {
                    match self
                        .wait(None, |state| state.replay.next_signal(&name))
                        .await
                    {
                        Waited::Cancelled(reason) => {
                            self.append(AppendReq::events(vec![EventKind::CancelDelivered {
                                position,
                            }]))
                            .await;
                            return Err(StepError::Cancelled { reason });
                        }
                        Waited::Due => unreachable!("a signal wait has no due time"),
                        Waited::Ready(_) => {}
                    }
                    // Take it under the writer lock, so two waits never take the same signal.
                    let mut writer = self.slot.writer.lock().await;
                    let Some(seq) = self.slot.state().replay.next_signal(&name) else {
                        continue;
                    };
                    let consumed = EventKind::SignalConsumed {
                        position,
                        name: name.clone(),
                        signal_seq: seq,
                    };
                    if let Err(e) = self
                        .engine
                        .append_locked(&self.slot, &mut writer, AppendReq::events(vec![consumed]))
                        .await
                    {
                        drop(writer);
                        self.store_failed(e).await
                    }
                    break seq;
                },
            };
            let payload = {
                let state = self.slot.state();
                state.replay.signal_payload(signal_seq).cloned()
            };
            let payload = payload.ok_or_else(|| StepError::Output {
                step: format!("signal '{name}'"),
                reason: format!("seq {signal_seq} is not a received signal"),
            })?;
            payload.decode().map_err(|e| StepError::Output {
                step: format!("signal '{name}'"),
                reason: e.to_string(),
            })
        }
    }

    async fn value(
        &self,
        position: u32,
        kind: ValueKind,
        live: impl FnOnce() -> Payload,
    ) -> Payload {
        match self.begin(position, Command::Value { kind }).await {
            Begin::Recorded(CommandRecord {
                recorded: Recorded::Value { value, .. },
                ..
            }) => value,
            // A value call cannot be cancelled meaningfully: hand back a fresh value; the
            // cancellation stays recorded and the next wait or step reports it.
            Begin::Recorded(_) | Begin::Cancelled(_) | Begin::Live => {
                let value = live();
                let recorded = self.slot.state().replay.command(position).is_some();
                if !recorded {
                    self.append(AppendReq::events(vec![EventKind::ValueRecorded {
                        position,
                        kind,
                        value: value.clone(),
                    }]))
                    .await;
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
            let value = self
                .value(position, ValueKind::Now, || {
                    Payload::encode(&now).unwrap_or_default()
                })
                .await;
            value.decode().unwrap_or(now)
        }
    }

    /// A random number, recorded on first execution and replayed after.
    pub fn random_u64(&self) -> impl Future<Output = u64> + Send + '_ {
        let position = self.take_position();
        async move {
            let fresh = uuid::Uuid::new_v4().as_u64_pair().0;
            let value = self
                .value(position, ValueKind::Random, || {
                    Payload::encode(&fresh).unwrap_or_default()
                })
                .await;
            value.decode().unwrap_or(fresh)
        }
    }

    /// A random UUID, recorded on first execution and replayed after.
    pub fn uuid(&self) -> impl Future<Output = uuid::Uuid> + Send + '_ {
        let position = self.take_position();
        async move {
            let fresh = uuid::Uuid::new_v4();
            let value = self
                .value(position, ValueKind::Uuid, || {
                    Payload::encode(&fresh).unwrap_or_default()
                })
                .await;
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
                    self.append(AppendReq::events(vec![EventKind::PatchMarker {
                        position,
                        id,
                    }]))
                    .await;
                    true
                }
            }
        }
    }

    /// Records a guardrail or policy check result in history, for reviewers and auditors;
    /// returns `passed` (as recorded, on replay).
    pub fn check(
        &self,
        name: &str,
        passed: bool,
        detail: &str,
    ) -> impl Future<Output = bool> + Send + '_ {
        let position = self.take_position();
        let (name, detail) = (name.to_string(), detail.to_string());
        async move {
            match self.begin(position, Command::Check { name: &name }).await {
                Begin::Recorded(CommandRecord {
                    recorded: Recorded::Check { passed, .. },
                    ..
                }) => passed,
                // A check is a record, not a wait: a pending cancellation is reported by the
                // next wait or step.
                Begin::Recorded(_) | Begin::Cancelled(_) | Begin::Live => {
                    if self.slot.state().replay.command(position).is_none() {
                        let event = EventKind::CheckRecorded {
                            position,
                            name,
                            passed,
                            detail,
                        };
                        self.append(AppendReq::events(vec![event])).await;
                    }
                    passed
                }
            }
        }
    }

    /// Asks humans to decide, and waits (durably, parked, across restarts) for the
    /// decision, a reminder schedule and the deadline as the request says. The gate id is
    /// derived from the run and the call's position, so it is stable across replays.
    pub fn approval(
        &self,
        request: crate::approval::ApprovalRequest,
    ) -> impl Future<Output = Result<crate::approval::Decision, StepError>> + Send + '_ {
        self.approval_gate(request, None)
    }

    /// Like [`Ctx::approval`], for a proposal a reviewer may adjust: `editable` names the
    /// fields they may change, with the proposed values (`{"amount": 42000}`). An approval
    /// then carries the reviewer's edits (`Decision::Approved { edits }`), which
    /// `Engine::decide_bound` limits to these fields, each keeping its JSON type.
    pub fn approval_editable(
        &self,
        request: crate::approval::ApprovalRequest,
        editable: serde_json::Map<String, serde_json::Value>,
    ) -> impl Future<Output = Result<crate::approval::Decision, StepError>> + Send + '_ {
        let editable = Payload::encode(&editable).unwrap_or_default();
        self.approval_gate(request, Some(editable))
    }

    fn approval_gate(
        &self,
        request: crate::approval::ApprovalRequest,
        editable: Option<Payload>,
    ) -> impl Future<Output = Result<crate::approval::Decision, StepError>> + Send + '_ {
        let position = self.take_position();
        async move {
            use crate::replay::{ApprovalRecord, GateState};
            let gate = gate_id(self.slot.run, position);
            match self.begin(position, Command::Approval).await {
                Begin::Cancelled(reason) => return Err(StepError::Cancelled { reason }),
                Begin::Recorded(_) => {}
                Begin::Live => {
                    let first_wake =
                        crate::approval::next_wake(&request, self.engine.clock.now_ms(), 0);
                    let mut index = vec![IndexOp::PutGate {
                        gate: annal_storage::GateId(gate),
                        step: position,
                    }];
                    index.extend(first_wake.map(|at| IndexOp::PutTimer {
                        fire_at_ms: at,
                        id: position,
                    }));
                    let (action, risk) = (request.action.clone(), format!("{:?}", request.risk));
                    let event = match editable {
                        None => EventKind::ApprovalRequested {
                            position,
                            gate,
                            request,
                        },
                        Some(editable) => EventKind::ApprovalRequestedEditable {
                            position,
                            gate,
                            request,
                            editable,
                        },
                    };
                    self.append(AppendReq::events(vec![event]).index(index).durable())
                        .await;
                    crate::telemetry::approval_requested(self.slot.run, gate, &action, &risk);
                    self.engine.timers_changed.notify_one();
                }
            }
            loop {
                let record = match self.slot.state().replay.command(position) {
                    Some(CommandRecord {
                        recorded: Recorded::Approval(record),
                        ..
                    }) => record.clone(),
                    _ => unreachable!(
                        "position {position} holds the approval just matched or recorded"
                    ),
                };
                let ApprovalRecord {
                    request,
                    requested_ms,
                    reminders,
                    state,
                    ..
                } = *record;
                let action = request.action.clone();
                match state {
                    GateState::Decided {
                        approved: true,
                        actor,
                        reason,
                        edits,
                        ..
                    } => {
                        let edits = edits.and_then(|e| e.decode().ok());
                        return Ok(crate::approval::Decision::Approved {
                            actor,
                            reason,
                            edits,
                        });
                    }
                    GateState::Decided {
                        approved: false,
                        actor,
                        reason,
                        ..
                    } => return Ok(crate::approval::Decision::Rejected { actor, reason }),
                    GateState::Withdrawn => {
                        let reason = self
                            .slot
                            .state()
                            .replay
                            .cancel_reason()
                            .unwrap_or_default()
                            .to_string();
                        return Err(StepError::Cancelled { reason });
                    }
                    GateState::Expired => match request.on_expiry {
                        crate::approval::OnExpiry::Reject => {
                            return Ok(crate::approval::Decision::Expired)
                        }
                        _ => {
                            let reason = format!("approval '{action}' expired without a decision");
                            self.escalate_replayed(Some(position), reason, REOPEN_OR_ABORT)
                                .await
                        }
                    },
                    GateState::Pending => {}
                }
                let wake = crate::approval::next_wake(&request, requested_ms, reminders);
                let decided =
                    |state: &crate::runtime::slot::RunState| match state.replay.command(position) {
                        Some(CommandRecord {
                            recorded: Recorded::Approval(a),
                            ..
                        }) if a.state != GateState::Pending => Some(()),
                        _ => None,
                    };
                let done_timer = wake.map(|at| IndexOp::DeleteTimer {
                    fire_at_ms: at,
                    id: position,
                });
                match self.wait(wake, decided).await {
                    Waited::Ready(()) => {}
                    Waited::Cancelled(_) => {
                        let event = EventKind::ApprovalWithdrawn { gate };
                        self.append(AppendReq::events(vec![event]).index(done_timer))
                            .await;
                    }
                    Waited::Due => {
                        let now_ms = self.engine.clock.now_ms();
                        if crate::approval::is_reminder(&request, requested_ms, reminders, now_ms) {
                            tracing::info!(gate = %annal_storage::GateId(gate), reminder = reminders + 1, action = %action, "approval reminder");
                            let next =
                                crate::approval::next_wake(&request, requested_ms, reminders + 1);
                            let event = EventKind::ApprovalReminded {
                                gate,
                                reminder: reminders + 1,
                            };
                            let index =
                                done_timer
                                    .into_iter()
                                    .chain(next.map(|at| IndexOp::PutTimer {
                                        fire_at_ms: at,
                                        id: position,
                                    }));
                            self.append(AppendReq::events(vec![event]).index(index).durable())
                                .await;
                        } else {
                            let event = EventKind::ApprovalExpired { gate };
                            self.append(AppendReq::events(vec![event]).index(done_timer).durable())
                                .await;
                            crate::telemetry::approval_expired(self.slot.run, gate, &action);
                            if request.on_expiry != crate::approval::OnExpiry::Reject {
                                let reason =
                                    format!("approval '{action}' expired without a decision");
                                self.escalate(Some(position), reason, REOPEN_OR_ABORT).await
                            }
                        }
                    }
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

/// The gate id of the approval at `position` of `run`: stable across replays.
pub(crate) fn gate_id(run: RunId, position: u32) -> [u8; 16] {
    let namespace = uuid::Uuid::from_bytes(run.0);
    *uuid::Uuid::new_v5(&namespace, format!("approval/{position}").as_bytes()).as_bytes()
}

pub(crate) enum Waited<T> {
    Ready(T),
    Due,
    Cancelled(String),
}
