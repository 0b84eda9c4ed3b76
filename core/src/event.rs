//! The event schema: the only types written to the log.
//!
//! # Evolution rules (schema v1)
//! - Events are bincode 1.3.3 encoded ([`crate::codec`]); bincode is not self-describing, so
//!   the enum variant index *is* the format. New variants go at the **end** of [`EventKind`];
//!   never reorder, rename-by-reorder or remove a variant.
//! - A variant's fields never change. A new field means a new variant (e.g. `StepCompletedV2`)
//!   and decoding keeps accepting the old one.
//! - Only externally tagged enums and no `skip_serializing_if`: bincode cannot decode either.
//! - User values (inputs, outputs, signal payloads) are [`Payload`]s: JSON bytes, so an
//!   auditor can read them without the workflow's types, and a workflow's output struct can
//!   gain `#[serde(default)]` fields without breaking old histories.

use serde::{Deserialize, Serialize};

use crate::policy::{FailureClass, OnExhaust, StepClass};

/// One entry of a run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the run's log, from 0, without holes.
    pub seq: u64,
    /// Engine clock when the event was written (ms since the Unix epoch). Replay reads time
    /// only from here and from recorded values, never from a clock.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

pub use crate::payload::Payload;

/// Kinds of deterministic values a workflow records through `annal::Ctx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueKind {
    /// `ctx.now()`.
    Now,
    /// `ctx.random_u64()`.
    Random,
    /// `ctx.uuid()`.
    Uuid,
}

/// Everything the engine records. See the module docs for the evolution rules.
///
/// "Command" events carry the `position` of the workflow call that created them (its order of
/// creation); replay matches calls to history by that position, not by log order, so
/// concurrent steps replay deterministically whatever order they finished in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// The run was created.
    RunStarted {
        /// Registered workflow name.
        workflow: String,
        /// Version the run is pinned to.
        version: u32,
        /// The workflow input.
        input: Payload,
        /// Start-dedupe key, if the caller gave one.
        dedupe_key: Option<String>,
        /// Who owns the run (a service, a team, a user).
        owner: Option<String>,
        /// The run this one continues, after `continue_as_new`.
        continued_from: Option<[u8; 16]>,
        /// Version label of the reliability policy the run started under.
        policy_version: Option<String>,
    },
    /// A step was scheduled (command).
    StepScheduled {
        /// Command position.
        position: u32,
        /// Step name.
        name: String,
        /// Tool the step calls, if named.
        tool: Option<String>,
        /// Retry class.
        class: StepClass,
        /// Idempotency key handed to every attempt.
        idem_key: String,
        /// Hash of the step's declared input (0 when none was declared).
        input_hash: u64,
    },
    /// An attempt began. Written and made durable before an irreversible body runs.
    AttemptStarted {
        /// Command position of the step.
        position: u32,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// An attempt failed.
    AttemptFailed {
        /// Command position of the step.
        position: u32,
        /// Attempt number, from 1.
        attempt: u32,
        /// Failure class the body (or the engine) reported.
        class: FailureClass,
        /// What went wrong.
        message: String,
        /// When the next attempt may start; `None` when no retry follows.
        retry_at_ms: Option<u64>,
    },
    /// The step produced its output.
    StepCompleted {
        /// Command position of the step.
        position: u32,
        /// The step output.
        output: Payload,
        /// Attempt that succeeded.
        attempt: u32,
        /// Which alternative of a fallback chain served, if not the primary.
        served_by: Option<String>,
        /// Cost units the step reported.
        cost: u64,
    },
    /// The step ran out of attempts or budget, and what the policy did about it.
    StepExhausted {
        /// Command position of the step.
        position: u32,
        /// The policy's action.
        action: OnExhaust,
        /// Which budget ran out (e.g. `step attempts`, `tool search_api retries`).
        budget: String,
        /// The last error.
        message: String,
    },
    /// A durable timer started (command).
    TimerStarted {
        /// Command position.
        position: u32,
        /// When it fires.
        fire_at_ms: u64,
    },
    /// A durable timer fired.
    TimerFired {
        /// Command position of the timer.
        position: u32,
    },
    /// A timer was cancelled before it fired.
    TimerCancelled {
        /// Command position of the timer.
        position: u32,
    },
    /// A signal arrived from outside.
    SignalReceived {
        /// Signal name.
        name: String,
        /// Its payload.
        payload: Payload,
    },
    /// The workflow took a signal (command): which received signal it got.
    SignalConsumed {
        /// Command position.
        position: u32,
        /// Signal name.
        name: String,
        /// Seq of the `SignalReceived` event consumed.
        signal_seq: u64,
    },
    /// A deterministic value was recorded (command).
    ValueRecorded {
        /// Command position.
        position: u32,
        /// Which kind of value.
        kind: ValueKind,
        /// The value.
        value: Payload,
    },
    /// A `ctx.patched(id)` marker (command).
    PatchMarker {
        /// Command position.
        position: u32,
        /// Patch id.
        id: String,
    },
    /// Someone asked the run to cancel.
    CancelRequested {
        /// Who asked.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The cancellation was delivered to the workflow at this command.
    CancelDelivered {
        /// Command position that returned `Cancelled`.
        position: u32,
    },
    /// The run finished with an output.
    RunCompleted {
        /// The workflow output.
        output: Payload,
    },
    /// The run failed.
    RunFailed {
        /// The workflow's error.
        error: String,
    },
    /// The run ended after a cancellation.
    RunCancelled {
        /// The reason given with the cancel request.
        reason: String,
    },
    /// The run was stopped from outside without running any more workflow code.
    RunTerminated {
        /// Who stopped it.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The run ended and continues as a new run with a fresh history.
    ContinuedAsNew {
        /// The new run.
        next_run: [u8; 16],
        /// The new run's input.
        input: Payload,
    },
    /// The run stopped for an operator, with what the operator needs to act.
    Escalated {
        /// Command position of the step that escalated, if a step did.
        position: Option<u32>,
        /// Why.
        reason: String,
        /// Context for the operator.
        context: EscalationContext,
    },
    /// A step moved to the next alternative of its fallback chain.
    FallbackUsed {
        /// Command position of the step.
        position: u32,
        /// Tool given up on.
        from: Option<String>,
        /// Tool tried next.
        to: String,
        /// Why the previous one was given up.
        reason: String,
    },
    /// The workflow asked for a human decision (command).
    ApprovalRequested {
        /// Command position.
        position: u32,
        /// The gate reviewers decide on.
        gate: [u8; 16],
        /// What the reviewer sees.
        request: crate::approval::ApprovalRequest,
    },
    /// A reviewer decided.
    ApprovalDecided {
        /// The gate.
        gate: [u8; 16],
        /// Approved or rejected.
        approved: bool,
        /// Who decided.
        actor: String,
        /// Why.
        reason: String,
        /// The reviewer's edits to the proposal (JSON).
        edits: Option<Payload>,
    },
    /// The approvers were reminded.
    ApprovalReminded {
        /// The gate.
        gate: [u8; 16],
        /// Which reminder (from 1).
        reminder: u32,
    },
    /// The deadline passed without a decision.
    ApprovalExpired {
        /// The gate.
        gate: [u8; 16],
    },
    /// The run was cancelled while waiting; the gate is closed.
    ApprovalWithdrawn {
        /// The gate.
        gate: [u8; 16],
    },
    /// A guardrail or policy check result (command).
    CheckRecorded {
        /// Command position.
        position: u32,
        /// Check name.
        name: String,
        /// Whether it passed.
        passed: bool,
        /// What it found.
        detail: String,
    },
    /// An operator acted on an escalated run.
    OperatorAction {
        /// Command position the action applies to.
        position: Option<u32>,
        /// The action.
        action: OperatorActionKind,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// A step scheduled and completed in one record: the same facts as `StepScheduled`
    /// followed by `StepCompleted` at one seq. Written when a step's first append is its
    /// success (a `Read` or `Write` step, or an `Idempotent` one, whose first attempt served),
    /// so such a step costs one stored record instead of two. Replay and audit treat the two
    /// forms alike.
    StepRan {
        /// Command position.
        position: u32,
        /// Step name.
        name: String,
        /// Tool the step calls, if named.
        tool: Option<String>,
        /// Retry class.
        class: StepClass,
        /// Idempotency key handed to the attempt.
        idem_key: String,
        /// Hash of the step's declared input (0 when none was declared).
        input_hash: u64,
        /// The step output.
        output: Payload,
        /// Attempt that succeeded.
        attempt: u32,
        /// Cost units the step reported.
        cost: u64,
    },
    /// A reviewer decided, recorded with the role they decided under and the digest of the
    /// action they decided on. Written by `Engine::decide` from this version on; histories
    /// keep their older `ApprovalDecided` events, and replay and audit read both.
    ApprovalDecidedAs {
        /// The gate.
        gate: [u8; 16],
        /// Approved or rejected.
        approved: bool,
        /// Who decided.
        actor: String,
        /// The entry of the gate's approvers that let them: `role:NAME`, `named` (their id
        /// was listed) or `any` (the gate let anyone decide).
        role: String,
        /// Why.
        reason: String,
        /// The reviewer's edits to the proposal (JSON).
        edits: Option<Payload>,
        /// [`crate::approval::ActionDigest`] of the request decided on.
        action_digest: [u8; 32],
    },
    /// The workflow asked for a human decision on a proposal whose `editable` fields the
    /// reviewer may change (command). Otherwise as `ApprovalRequested`.
    ApprovalRequestedEditable {
        /// Command position.
        position: u32,
        /// The gate reviewers decide on.
        gate: [u8; 16],
        /// What the reviewer sees.
        request: crate::approval::ApprovalRequest,
        /// A JSON object: field -> proposed value, the fields a reviewer may edit.
        editable: Payload,
    },
    /// Cost units a failed attempt reported, written right after its `AttemptFailed` (only
    /// when it reported any): counted against the run's `max_cost_units` and in reports, like
    /// the cost a successful attempt records in its `StepCompleted`.
    AttemptCost {
        /// Command position of the step.
        position: u32,
        /// The failed attempt.
        attempt: u32,
        /// Cost units it reported.
        cost: u64,
    },
    /// A run ceiling stopped the run at a step (after that step's `StepExhausted`): the run
    /// escalates (an `Escalated` event follows) or fails (`RunFailed` follows), whatever the
    /// step's own on-exhaust rule, so that a loop cannot go on past the cap.
    RunCeilingReached {
        /// Command position of the step that would have gone past the ceiling.
        position: u32,
        /// Which ceiling.
        ceiling: crate::policy::Ceiling,
        /// Its limit (attempts, seconds, calls or cost units).
        limit: u64,
        /// What the run had spent of it (for the duration ceiling: ms since it started).
        spent: u64,
        /// The tool that spent most of it and how much (attempts; cost units for the cost
        /// ceiling).
        top_tool: Option<(String, u64)>,
        /// What the run does about it.
        action: crate::policy::OnCeiling,
    },
}

/// A decision as either form of the event records it (see [`EventKind::decision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionRef<'a> {
    /// The gate.
    pub gate: &'a [u8; 16],
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub actor: &'a str,
    /// The role they decided under; `None` for decisions recorded before roles were.
    pub role: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// Their edits.
    pub edits: Option<&'a Payload>,
    /// The digest of the action decided on; `None` before digests were recorded.
    pub action_digest: Option<&'a [u8; 32]>,
}

/// What an operator can do with an escalated run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorActionKind {
    /// Run the failed step again with fresh attempts (or reopen an expired approval).
    RetryStep,
    /// Treat the step as done with this output (JSON).
    SkipStep {
        /// The output the workflow receives.
        value: Payload,
    },
    /// An irreversible effect whose outcome was unknown did happen; this is its output.
    ResolveDone {
        /// The effect's output.
        output: Payload,
    },
    /// An irreversible effect whose outcome was unknown did not happen; run it again.
    ResolveNotDone,
    /// End the run as failed.
    Abort,
}

/// What an operator needs to act on an escalated run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EscalationContext {
    /// Name of the last step that completed.
    pub last_successful_step: Option<String>,
    /// Name of the step that could not go on.
    pub failing_step: Option<String>,
    /// Idempotency key of that step.
    pub idempotency_key: Option<String>,
    /// Its failed attempts: (attempt, class, message).
    pub errors: Vec<(u32, String, String)>,
    /// Attempts made per tool in this run.
    pub attempts_per_tool: Vec<(String, u32)>,
    /// What the engine suggests doing next.
    pub suggested_next: String,
}

impl EventKind {
    /// Command position, for command events.
    pub fn command_position(&self) -> Option<u32> {
        match self {
            EventKind::StepScheduled { position, .. }
            | EventKind::StepRan { position, .. }
            | EventKind::TimerStarted { position, .. }
            | EventKind::SignalConsumed { position, .. }
            | EventKind::ValueRecorded { position, .. }
            | EventKind::PatchMarker { position, .. }
            | EventKind::CancelDelivered { position }
            | EventKind::ApprovalRequested { position, .. }
            | EventKind::ApprovalRequestedEditable { position, .. }
            | EventKind::CheckRecorded { position, .. } => Some(*position),
            _ => None,
        }
    }

    /// True for events that end a run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::RunCompleted { .. }
                | EventKind::RunFailed { .. }
                | EventKind::RunCancelled { .. }
                | EventKind::RunTerminated { .. }
                | EventKind::ContinuedAsNew { .. }
        )
    }

    /// The decision this event records, whichever form (`ApprovalDecided`, or
    /// `ApprovalDecidedAs` with role and digest) it has.
    pub fn decision(&self) -> Option<DecisionRef<'_>> {
        match self {
            EventKind::ApprovalDecided {
                gate,
                approved,
                actor,
                reason,
                edits,
            } => Some(DecisionRef {
                gate,
                approved: *approved,
                actor,
                role: None,
                reason,
                edits: edits.as_ref(),
                action_digest: None,
            }),
            EventKind::ApprovalDecidedAs {
                gate,
                approved,
                actor,
                role,
                reason,
                edits,
                action_digest,
            } => Some(DecisionRef {
                gate,
                approved: *approved,
                actor,
                role: Some(role),
                reason,
                edits: edits.as_ref(),
                action_digest: Some(action_digest),
            }),
            _ => None,
        }
    }

    /// The gate and request of an approval request, whichever form it has, with the
    /// editable fields if the gate has them.
    pub fn approval_request(
        &self,
    ) -> Option<(
        &[u8; 16],
        &crate::approval::ApprovalRequest,
        Option<&Payload>,
    )> {
        match self {
            EventKind::ApprovalRequested { gate, request, .. } => Some((gate, request, None)),
            EventKind::ApprovalRequestedEditable {
                gate,
                request,
                editable,
                ..
            } => Some((gate, request, Some(editable))),
            _ => None,
        }
    }

    /// The run ceiling a `RunCeilingReached` records: the step's position, the ceiling with
    /// what was spent, and what the run did about it.
    pub fn ceiling(&self) -> Option<(u32, crate::policy::CeilingHit, crate::policy::OnCeiling)> {
        match self {
            EventKind::RunCeilingReached {
                position,
                ceiling,
                limit,
                spent,
                top_tool,
                action,
            } => Some((
                *position,
                crate::policy::CeilingHit {
                    ceiling: *ceiling,
                    limit: *limit,
                    spent: *spent,
                    top_tool: top_tool.clone(),
                },
                *action,
            )),
            _ => None,
        }
    }

    /// Short name of the event, for timelines and logs. The forms of one fact share a name:
    /// both forms of a decision are `ApprovalDecided`, both forms of a request
    /// `ApprovalRequested` (the details say role and editable fields).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "RunStarted",
            EventKind::StepScheduled { .. } => "StepScheduled",
            EventKind::AttemptStarted { .. } => "AttemptStarted",
            EventKind::AttemptFailed { .. } => "AttemptFailed",
            EventKind::StepCompleted { .. } => "StepCompleted",
            EventKind::StepExhausted { .. } => "StepExhausted",
            EventKind::TimerStarted { .. } => "TimerStarted",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::TimerCancelled { .. } => "TimerCancelled",
            EventKind::SignalReceived { .. } => "SignalReceived",
            EventKind::SignalConsumed { .. } => "SignalConsumed",
            EventKind::ValueRecorded { .. } => "ValueRecorded",
            EventKind::PatchMarker { .. } => "PatchMarker",
            EventKind::CancelRequested { .. } => "CancelRequested",
            EventKind::CancelDelivered { .. } => "CancelDelivered",
            EventKind::RunCompleted { .. } => "RunCompleted",
            EventKind::RunFailed { .. } => "RunFailed",
            EventKind::RunCancelled { .. } => "RunCancelled",
            EventKind::RunTerminated { .. } => "RunTerminated",
            EventKind::ContinuedAsNew { .. } => "ContinuedAsNew",
            EventKind::Escalated { .. } => "Escalated",
            EventKind::FallbackUsed { .. } => "FallbackUsed",
            EventKind::ApprovalRequested { .. } => "ApprovalRequested",
            EventKind::ApprovalDecided { .. } => "ApprovalDecided",
            EventKind::ApprovalReminded { .. } => "ApprovalReminded",
            EventKind::ApprovalExpired { .. } => "ApprovalExpired",
            EventKind::ApprovalWithdrawn { .. } => "ApprovalWithdrawn",
            EventKind::CheckRecorded { .. } => "CheckRecorded",
            EventKind::OperatorAction { .. } => "OperatorAction",
            EventKind::StepRan { .. } => "StepRan",
            EventKind::ApprovalDecidedAs { .. } => "ApprovalDecided",
            EventKind::ApprovalRequestedEditable { .. } => "ApprovalRequested",
            EventKind::AttemptCost { .. } => "AttemptCost",
            EventKind::RunCeilingReached { .. } => "RunCeilingReached",
        }
    }
}
