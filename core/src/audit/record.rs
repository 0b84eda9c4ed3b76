//! [`RunRecord`]: one run summarised from its history.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::ids::{GateId, RunId, RunMeta};
use serde::Serialize;

use super::{
    duration_ms, exhaust_action, operator_action_label, quote, relative_ms, ser_display,
    ser_opt_display, short, short_payload, utc, write_table, MESSAGE_CHARS_MAX,
};
use crate::event::{EscalationContext, Event, EventKind, OperatorActionKind, Payload};
use crate::policy::{FailureClass, OnExhaust, StepClass};
use crate::status::RunStatus;

/// Everything an auditor asks about one run, from its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The run.
    #[serde(serialize_with = "ser_display")]
    pub run: RunId,
    /// Who owns it (from `RunStarted`).
    pub owner: Option<String>,
    /// Workflow name.
    pub workflow: String,
    /// Workflow version the run is pinned to.
    pub version: u32,
    /// Version label of the reliability policy the run started under, if one was recorded.
    pub policy_version: Option<String>,
    /// Start-dedupe key, if the caller gave one.
    pub dedupe_key: Option<String>,
    /// The run this one continues (after `continue_as_new`).
    #[serde(serialize_with = "ser_opt_display")]
    pub continued_from: Option<RunId>,
    /// Status: from the stored metadata when given, else derived from history.
    #[serde(serialize_with = "ser_display")]
    pub status: RunStatus,
    /// Why the run is in its status (blocked, escalated), from the stored metadata.
    pub note: String,
    /// The step the run stands at: the escalated step, or the latest one without an outcome.
    pub current_step: Option<StepRef>,
    /// When the run was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it last changed: its last event or its last status change, whichever is later.
    pub updated_ms: u64,
    /// When it ended, if it did.
    pub ended_ms: Option<u64>,
    /// When a parked run wants to be woken (from the stored metadata).
    pub wake_ms: Option<u64>,
    /// Events in its history.
    pub events: u64,
    /// Tools its steps named.
    pub tools: BTreeSet<String>,
    /// Its steps, by command position.
    pub steps: Vec<StepRecord>,
    /// Approval rounds, in request order (a gate an operator reopened has one per round).
    pub approvals: Vec<ApprovalRecord>,
    /// Guardrail and policy checks, in log order.
    pub checks: Vec<CheckRecord>,
    /// Escalations to an operator, in log order.
    pub escalations: Vec<EscalationRecord>,
    /// What people did to the run from outside (cancel, terminate, retry, skip, resolve,
    /// abort), in log order.
    pub operator_actions: Vec<OperatorAction>,
    /// Run ceilings the run reached, in log order.
    pub ceilings: Vec<CeilingRecord>,
    /// How the run ended, or that it has not.
    pub outcome: Outcome,
}

/// A run ceiling the run reached (`RunCeilingReached`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CeilingRecord {
    /// Seq of the event.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// The step that would have gone past it.
    pub step: StepRef,
    /// The ceiling as the history names it: `run max_iterations (12)`.
    pub ceiling: String,
    /// What was spent, in words: `12 attempts spent, 8 of them by tool search_api`.
    pub spent: String,
    /// The tool that spent most of it, and how much.
    pub top_tool: Option<(String, u64)>,
    /// What the run did: `escalate` or `fail`.
    pub action: String,
}

/// A step named by position and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRef {
    /// Command position.
    pub position: u32,
    /// Step name.
    pub name: String,
}

/// One step: what it called, how often, how each attempt failed, how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Command position.
    pub position: u32,
    /// Seq of its `StepScheduled` (or `StepRan`).
    pub seq: u64,
    /// Step name.
    pub name: String,
    /// Tool it called, if named.
    pub tool: Option<String>,
    /// Retry class.
    pub class: StepClass,
    /// Idempotency key.
    pub idem_key: String,
    /// When it was scheduled.
    pub scheduled_ms: u64,
    /// Attempts made (the highest attempt number recorded).
    pub attempts: u32,
    /// Failed attempts, in order.
    pub failures: Vec<FailureRecord>,
    /// How it ended (or, after an operator's retry, that it is running again).
    pub outcome: StepEnd,
    /// Every time it ran out of attempts or budget, in order (an operator may have retried
    /// it since).
    pub exhaustions: Vec<BudgetExhaustion>,
    /// Cost units its attempts reported, failed ones included.
    pub cost: u64,
    /// When it ended, if it did.
    pub ended_ms: Option<u64>,
    /// The tool of the fallback alternative in use (the primary until a `FallbackUsed`).
    pub current_tool: Option<String>,
}

impl StepRecord {
    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    /// Whether it completed with an output its tool produced (an operator's resolution of
    /// an effect of unknown outcome as done included; an operator's skip is not a success).
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, StepEnd::Completed { .. })
    }

    /// Cost units reported by the attempt that succeeded (its failed attempts' cost apart).
    pub fn success_cost(&self) -> u64 {
        let failed: u64 = self.failures.iter().map(|f| f.cost).sum();
        self.cost.saturating_sub(failed)
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureRecord {
    /// Seq of the `AttemptFailed`.
    pub seq: u64,
    /// When it failed.
    pub at_ms: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Failure class.
    pub class: FailureClass,
    /// What went wrong.
    pub message: String,
    /// When the next attempt was allowed; `None` when none followed.
    pub retry_at_ms: Option<u64>,
    /// The tool this attempt called (the fallback alternative in use, if not the primary).
    pub tool: Option<String>,
    /// Cost units it reported before failing (`AttemptCost`).
    pub cost: u64,
}

/// A step running out of attempts or budget (`StepExhausted`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetExhaustion {
    /// Seq of the event.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// Which budget ran out.
    pub budget: String,
    /// What the policy did about it.
    pub action: OnExhaust,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StepEnd {
    /// No outcome recorded yet.
    Pending,
    /// Produced an output (`served_by: Some("operator")`: an operator resolved an effect of
    /// unknown outcome as done, with this output).
    Completed {
        /// The attempt that succeeded.
        attempt: u32,
        /// Fallback alternative that served, if not the primary.
        served_by: Option<String>,
        /// The output.
        output: Payload,
    },
    /// An operator skipped the step with a value: the workflow went on with it, but the
    /// step's tool did not produce it.
    OperatorSkipped {
        /// Who.
        actor: String,
        /// The value the workflow received.
        output: Payload,
    },
    /// Ran out of attempts or budget.
    Exhausted {
        /// What the policy did about it.
        action: OnExhaust,
        /// Which budget ran out.
        budget: String,
        /// The last error.
        message: String,
    },
}

/// One round of an approval gate: what an auditor asks ("who approved this refund, when,
/// why, how long did it wait").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    /// The gate id.
    pub gate: String,
    /// Command position of the approval in the run.
    pub position: Option<u32>,
    /// Seq of the request.
    pub seq: u64,
    /// The proposed action, as the request put it.
    pub action: Option<String>,
    /// When it was requested (or reopened by an operator).
    pub requested_ms: u64,
    /// Reminders sent to the approvers.
    pub reminders: u32,
    /// When it was decided or expired.
    pub decided_ms: Option<u64>,
    /// `approved`, `rejected`, `expired` or `withdrawn`; `None` while pending.
    pub decision: Option<String>,
    /// Who decided.
    pub actor: Option<String>,
    /// The role they decided under (`role:NAME`, `named`, `any`); `None` for decisions
    /// recorded before roles were, and for rounds nobody decided.
    pub role: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The digest of the action decided on (hex), when the decision recorded one.
    pub action_digest: Option<String>,
}

impl ApprovalRecord {
    /// A round that just opened: requested (or reopened) at `requested_ms`, undecided.
    fn opened(
        gate: String,
        position: Option<u32>,
        seq: u64,
        action: Option<String>,
        requested_ms: u64,
    ) -> Self {
        Self {
            gate,
            position,
            seq,
            action,
            requested_ms,
            reminders: 0,
            decided_ms: None,
            decision: None,
            actor: None,
            role: None,
            reason: None,
            action_digest: None,
        }
    }

    /// How long the gate waited for its decision.
    pub fn latency_ms(&self) -> Option<u64> {
        self.decided_ms.map(|d| d.saturating_sub(self.requested_ms))
    }
}

/// A recorded guardrail or policy check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRecord {
    /// Seq of the event.
    pub seq: u64,
    /// When it was recorded.
    pub at_ms: u64,
    /// Check name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Details.
    pub detail: String,
}

/// An escalation to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscalationRecord {
    /// Seq of the `Escalated` event.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// The step that escalated, if a step did.
    pub step: Option<StepRef>,
    /// Why.
    pub reason: String,
    /// What the operator was given.
    pub context: EscalationContext,
}

/// Something a person did to the run from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorAction {
    /// Seq of the event.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// What (`cancel`, `terminate`, …).
    pub action: String,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Outcome {
    /// It has not ended.
    InProgress,
    /// Finished with an output.
    Completed {
        /// The output.
        output: Payload,
    },
    /// Failed.
    Failed {
        /// The workflow's error.
        error: String,
    },
    /// Ended after a cancellation.
    Cancelled {
        /// The reason given.
        reason: String,
    },
    /// Stopped from outside.
    Terminated {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Handed over to a new run.
    ContinuedAsNew {
        /// The new run.
        #[serde(serialize_with = "ser_display")]
        next_run: RunId,
    },
}

impl Outcome {
    /// One line for a reader; payloads shortened and secrets redacted.
    pub fn summary(&self) -> String {
        match self {
            Outcome::InProgress => "in progress".into(),
            Outcome::Completed { output } => format!("completed -> {}", short_payload(output)),
            Outcome::Failed { error } => format!("failed: {}", quote(error)),
            Outcome::Cancelled { reason } => format!("cancelled: {}", quote(reason)),
            Outcome::Terminated { actor, reason } => {
                format!("terminated by {actor}: {}", quote(reason))
            }
            Outcome::ContinuedAsNew { next_run } => format!("continued as new run {next_run}"),
        }
    }

    fn status(&self) -> Option<RunStatus> {
        match self {
            Outcome::InProgress => None,
            Outcome::Completed { .. } => Some(RunStatus::Completed),
            Outcome::Failed { .. } => Some(RunStatus::Failed),
            Outcome::Cancelled { .. } => Some(RunStatus::Cancelled),
            Outcome::Terminated { .. } => Some(RunStatus::Terminated),
            Outcome::ContinuedAsNew { .. } => Some(RunStatus::ContinuedAsNew),
        }
    }
}

/// The fold behind [`RunRecord::from_history`]. Tolerant: a history that contradicts itself
/// (that is `annal verify`'s business) still yields a record of what it says.
#[derive(Default)]
struct Fold {
    owner: Option<String>,
    workflow: String,
    version: u32,
    policy_version: Option<String>,
    dedupe_key: Option<String>,
    continued_from: Option<RunId>,
    steps: BTreeMap<u32, StepRecord>,
    approvals: Vec<ApprovalRecord>,
    checks: Vec<CheckRecord>,
    escalations: Vec<EscalationRecord>,
    operator_actions: Vec<OperatorAction>,
    ceilings: Vec<CeilingRecord>,
    outcome: Option<(Outcome, u64)>,
    last_is_escalation: bool,
}

impl Fold {
    /// The step at `position`, created as a placeholder if its `StepScheduled` is missing.
    fn step(&mut self, position: u32, event: &Event) -> &mut StepRecord {
        self.steps.entry(position).or_insert_with(|| StepRecord {
            position,
            seq: event.seq,
            name: format!("#{position}"),
            tool: None,
            class: StepClass::default(),
            idem_key: String::new(),
            scheduled_ms: event.at_ms,
            attempts: 0,
            failures: Vec::new(),
            outcome: StepEnd::Pending,
            exhaustions: Vec::new(),
            cost: 0,
            ended_ms: None,
            current_tool: None,
        })
    }

    fn step_ref(&self, position: u32) -> StepRef {
        let name = self
            .steps
            .get(&position)
            .map_or_else(|| format!("#{position}"), |s| s.name.clone());
        StepRef { position, name }
    }

    fn end(&mut self, outcome: Outcome, at_ms: u64) {
        if self.outcome.is_none() {
            self.outcome = Some((outcome, at_ms));
        }
    }

    fn apply(&mut self, event: &Event) {
        let (seq, at_ms) = (event.seq, event.at_ms);
        self.last_is_escalation = matches!(event.kind, EventKind::Escalated { .. });
        match &event.kind {
            EventKind::RunStarted {
                workflow,
                version,
                dedupe_key,
                owner,
                continued_from,
                policy_version,
                ..
            } => {
                self.workflow = workflow.clone();
                self.version = *version;
                self.policy_version = policy_version.clone();
                self.owner = owner.clone();
                self.dedupe_key = dedupe_key.clone();
                self.continued_from = continued_from.map(RunId);
            }
            EventKind::StepScheduled {
                position,
                name,
                tool,
                class,
                idem_key,
                ..
            } => {
                let step = self.step(*position, event);
                scheduled(step, event, name, tool, *class, idem_key);
            }
            EventKind::StepRan {
                position,
                name,
                tool,
                class,
                idem_key,
                output,
                attempt,
                cost,
                ..
            } => {
                let step = self.step(*position, event);
                scheduled(step, event, name, tool, *class, idem_key);
                completed(step, at_ms, output, *attempt, &None, *cost);
            }
            EventKind::FallbackUsed { position, to, .. } => {
                let step = self.step(*position, event);
                step.current_tool = Some(to.clone());
            }
            EventKind::AttemptStarted {
                position, attempt, ..
            } => {
                let step = self.step(*position, event);
                step.attempts = step.attempts.max(*attempt);
            }
            EventKind::AttemptFailed {
                position,
                attempt,
                class,
                message,
                retry_at_ms,
                ..
            } => {
                let step = self.step(*position, event);
                step.attempts = step.attempts.max(*attempt);
                let tool = step.current_tool.clone();
                step.failures.push(FailureRecord {
                    seq,
                    at_ms,
                    attempt: *attempt,
                    class: class.clone(),
                    message: message.clone(),
                    retry_at_ms: *retry_at_ms,
                    tool,
                    cost: 0,
                });
            }
            EventKind::AttemptCost {
                position,
                attempt,
                cost,
            } => {
                let step = self.step(*position, event);
                step.cost = step.cost.saturating_add(*cost);
                if let Some(failure) = step
                    .failures
                    .iter_mut()
                    .rev()
                    .find(|f| f.attempt == *attempt)
                {
                    failure.cost = failure.cost.saturating_add(*cost);
                }
            }
            kind @ EventKind::RunCeilingReached { .. } => {
                if let Some((position, hit, action)) = kind.ceiling() {
                    let step = self.step_ref(position);
                    self.ceilings.push(CeilingRecord {
                        seq,
                        at_ms,
                        step,
                        ceiling: hit.to_string(),
                        spent: hit.spent_text(),
                        top_tool: hit.top_tool,
                        action: action.label().to_string(),
                    });
                }
            }
            EventKind::StepCompleted {
                position,
                output,
                attempt,
                served_by,
                cost,
                ..
            } => {
                let step = self.step(*position, event);
                completed(step, at_ms, output, *attempt, served_by, *cost);
            }
            EventKind::StepExhausted {
                position,
                action,
                budget,
                message,
                ..
            } => {
                let step = self.step(*position, event);
                step.ended_ms = Some(at_ms);
                step.exhaustions.push(BudgetExhaustion {
                    seq,
                    at_ms,
                    budget: budget.clone(),
                    action: action.clone(),
                });
                step.outcome = StepEnd::Exhausted {
                    action: action.clone(),
                    budget: budget.clone(),
                    message: message.clone(),
                };
            }
            EventKind::Escalated {
                position,
                reason,
                context,
                ..
            } => {
                let step = position.map(|p| self.step_ref(p));
                self.escalations.push(EscalationRecord {
                    seq,
                    at_ms,
                    step,
                    reason: reason.clone(),
                    context: context.clone(),
                });
            }
            EventKind::CancelRequested { actor, reason, .. } => {
                self.operator_actions.push(OperatorAction {
                    seq,
                    at_ms,
                    action: "cancel".into(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                })
            }
            EventKind::RunTerminated { actor, reason, .. } => {
                self.operator_actions.push(OperatorAction {
                    seq,
                    at_ms,
                    action: "terminate".into(),
                    actor: actor.clone(),
                    reason: reason.clone(),
                });
                self.end(
                    Outcome::Terminated {
                        actor: actor.clone(),
                        reason: reason.clone(),
                    },
                    at_ms,
                );
            }
            EventKind::RunCompleted { output, .. } => self.end(
                Outcome::Completed {
                    output: output.clone(),
                },
                at_ms,
            ),
            EventKind::RunFailed { error, .. } => self.end(
                Outcome::Failed {
                    error: error.clone(),
                },
                at_ms,
            ),
            EventKind::RunCancelled { reason, .. } => self.end(
                Outcome::Cancelled {
                    reason: reason.clone(),
                },
                at_ms,
            ),
            EventKind::ContinuedAsNew { next_run, .. } => self.end(
                Outcome::ContinuedAsNew {
                    next_run: RunId(*next_run),
                },
                at_ms,
            ),
            EventKind::ApprovalRequested { .. } | EventKind::ApprovalRequestedEditable { .. } => {
                if let Some((gate, request, _)) = event.kind.approval_request() {
                    self.approvals.push(ApprovalRecord::opened(
                        GateId(*gate).to_string(),
                        event.kind.command_position(),
                        seq,
                        Some(request.action.clone()),
                        at_ms,
                    ));
                }
            }
            EventKind::ApprovalDecided { .. } | EventKind::ApprovalDecidedAs { .. } => {
                if let Some(d) = event.kind.decision() {
                    let verdict = if d.approved { "approved" } else { "rejected" };
                    let by = Decider {
                        actor: d.actor,
                        role: d.role,
                        reason: d.reason,
                        digest: d.action_digest,
                    };
                    self.close_gate(d.gate, verdict, Some(by), at_ms);
                }
            }
            EventKind::ApprovalReminded { gate, .. } => {
                if let Some(approval) = self.open_gate(gate) {
                    approval.reminders += 1;
                }
            }
            EventKind::ApprovalExpired { gate, .. } => {
                self.close_gate(gate, "expired", None, at_ms)
            }
            EventKind::ApprovalWithdrawn { gate, .. } => {
                self.close_gate(gate, "withdrawn", None, at_ms)
            }
            EventKind::CheckRecorded {
                name,
                passed,
                detail,
                ..
            } => self.checks.push(CheckRecord {
                seq,
                at_ms,
                name: name.clone(),
                passed: *passed,
                detail: detail.clone(),
            }),
            EventKind::OperatorAction {
                position,
                action,
                actor,
                reason,
                ..
            } => {
                let label = self.operate(*position, action, actor, seq, at_ms);
                self.operator_actions.push(OperatorAction {
                    seq,
                    at_ms,
                    action: label,
                    actor: actor.clone(),
                    reason: reason.clone(),
                });
            }
            // Timers, signals, values, patch markers, fallbacks and event kinds added after
            // this was written say nothing a summary needs; the timeline shows them all.
            _ => {}
        }
    }

    /// The latest still-open round of an approval gate.
    fn open_gate(&mut self, gate: &[u8; 16]) -> Option<&mut ApprovalRecord> {
        let gate = GateId(*gate).to_string();
        self.approvals
            .iter_mut()
            .rev()
            .find(|a| a.gate == gate && a.decision.is_none())
    }

    /// Closes a gate's open round. The first decision wins, as in the engine: an event
    /// for a gate that is not open changes nothing here (verify reports it).
    fn close_gate(&mut self, gate: &[u8; 16], decision: &str, by: Option<Decider<'_>>, at_ms: u64) {
        if let Some(approval) = self.open_gate(gate) {
            approval.decided_ms = Some(at_ms);
            approval.decision = Some(decision.to_string());
            if let Some(by) = by {
                approval.actor = Some(by.actor.to_string());
                approval.role = by.role.map(str::to_string);
                approval.reason = Some(by.reason.to_string());
                approval.action_digest = by
                    .digest
                    .map(|d| crate::approval::ActionDigest(*d).to_string());
            }
        }
    }

    /// Applies an operator action to the call it targets, as replay does, so the record
    /// shows the step or approval as the operator left it; returns the action's label.
    fn operate(
        &mut self,
        position: Option<u32>,
        action: &OperatorActionKind,
        actor: &str,
        seq: u64,
        at_ms: u64,
    ) -> String {
        let label = operator_action_label(action);
        let Some(position) = position else {
            return label.to_string();
        };
        if let Some(step) = self.steps.get_mut(&position) {
            match action {
                OperatorActionKind::RetryStep => {
                    step.outcome = StepEnd::Pending;
                    step.ended_ms = None;
                }
                OperatorActionKind::SkipStep { value: output } => {
                    step.ended_ms = Some(at_ms);
                    step.outcome = StepEnd::OperatorSkipped {
                        actor: actor.to_string(),
                        output: output.clone(),
                    };
                }
                OperatorActionKind::ResolveDone { output } => {
                    step.ended_ms = Some(at_ms);
                    step.outcome = StepEnd::Completed {
                        attempt: step.attempts,
                        served_by: Some("operator".into()),
                        output: output.clone(),
                    };
                }
                OperatorActionKind::ResolveNotDone => step.failures.push(FailureRecord {
                    seq,
                    at_ms,
                    attempt: step.attempts,
                    class: FailureClass::Transient,
                    message: "operator: the effect did not happen".into(),
                    retry_at_ms: None,
                    tool: step.current_tool.clone(),
                    cost: 0,
                }),
                OperatorActionKind::Abort => {}
            }
        } else if matches!(action, OperatorActionKind::RetryStep) {
            // Reopening an expired approval starts a new round, with its own latency.
            let last = self
                .approvals
                .iter()
                .rev()
                .find(|a| a.position == Some(position))
                .cloned();
            if let Some(last) = last {
                self.approvals.push(ApprovalRecord::opened(
                    last.gate,
                    last.position,
                    seq,
                    last.action,
                    at_ms,
                ));
            }
        }
        format!("{label} [{position}]")
    }
}

/// Who closed an approval round, as the decision recorded it.
struct Decider<'a> {
    actor: &'a str,
    role: Option<&'a str>,
    reason: &'a str,
    digest: Option<&'a [u8; 32]>,
}

/// What `StepScheduled` (or the first half of `StepRan`) records about a step.
fn scheduled(
    step: &mut StepRecord,
    event: &Event,
    name: &str,
    tool: &Option<String>,
    class: StepClass,
    idem_key: &str,
) {
    step.seq = event.seq;
    step.name = name.to_string();
    step.tool = tool.clone();
    step.current_tool = tool.clone();
    step.class = class;
    step.idem_key = idem_key.to_string();
    step.scheduled_ms = event.at_ms;
}

/// What `StepCompleted` (or the second half of `StepRan`) records about a step.
fn completed(
    step: &mut StepRecord,
    at_ms: u64,
    output: &Payload,
    attempt: u32,
    served_by: &Option<String>,
    cost: u64,
) {
    step.attempts = step.attempts.max(attempt);
    step.cost = step.cost.saturating_add(cost);
    step.ended_ms = Some(at_ms);
    step.outcome = StepEnd::Completed {
        attempt,
        served_by: served_by.clone(),
        output: output.clone(),
    };
}

impl RunRecord {
    /// Summarises a run from its history. `meta`, when the caller has the stored metadata,
    /// supplies what history does not hold (the status of a parked or blocked run, its note,
    /// the last update time); without it those are derived from the events.
    pub fn from_history(run: RunId, meta: Option<&RunMeta>, events: &[Event]) -> Self {
        let mut fold = Fold::default();
        for event in events {
            fold.apply(event);
        }
        let first_ms = events.first().map_or(0, |e| e.at_ms);
        let last_ms = events.last().map_or(0, |e| e.at_ms);
        let (outcome, ended_ms) = match fold.outcome.take() {
            Some((outcome, at_ms)) => (outcome, Some(at_ms)),
            None => (Outcome::InProgress, None),
        };
        let derived_status = outcome.status().unwrap_or(if fold.last_is_escalation {
            RunStatus::Escalated
        } else {
            RunStatus::Running
        });
        let status = meta
            .and_then(|m| RunStatus::from_code(m.status))
            .unwrap_or(derived_status);
        let current_step = match (status, fold.escalations.last()) {
            (
                RunStatus::Escalated,
                Some(EscalationRecord {
                    step: Some(step), ..
                }),
            ) => Some(step.clone()),
            _ if status.is_terminal() => None,
            _ => fold
                .steps
                .values()
                .filter(|s| s.outcome == StepEnd::Pending)
                .max_by_key(|s| s.seq)
                .map(|s| StepRef {
                    position: s.position,
                    name: s.name.clone(),
                }),
        };
        let (workflow, version) = match meta {
            Some(m) if fold.workflow.is_empty() => (m.workflow.clone(), m.version),
            _ => (fold.workflow, fold.version),
        };
        RunRecord {
            run,
            owner: fold.owner,
            workflow,
            version,
            policy_version: fold.policy_version,
            dedupe_key: fold.dedupe_key,
            continued_from: fold.continued_from,
            status,
            note: meta.map(|m| m.note.clone()).unwrap_or_default(),
            current_step,
            created_ms: meta.map_or(first_ms, |m| m.created_ms),
            // The metadata changes with the status; the last event may be later.
            updated_ms: meta.map_or(last_ms, |m| m.updated_ms.max(last_ms)),
            ended_ms,
            wake_ms: meta.and_then(|m| m.wake_ms),
            events: events.len() as u64,
            tools: fold.steps.values().filter_map(|s| s.tool.clone()).collect(),
            steps: fold.steps.into_values().collect(),
            approvals: fold.approvals,
            checks: fold.checks,
            escalations: fold.escalations,
            operator_actions: fold.operator_actions,
            ceilings: fold.ceilings,
            outcome,
        }
    }

    /// Total cost units the run's attempts reported, failed ones included.
    pub fn cost(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| s.cost)
            .fold(0, u64::saturating_add)
    }

    /// A readable summary: who, what, status, steps, escalations, operator actions,
    /// approvals, checks, outcome. Times are UTC or relative to the run's creation.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rel = |ms: u64| relative_ms(ms as i128 - self.created_ms as i128);
        let mut field = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<10} {value}");
        };
        field("run", self.run.to_string());
        field("workflow", format!("{} v{}", self.workflow, self.version));
        field("owner", self.owner.clone().unwrap_or_else(|| "-".into()));
        if let Some(policy) = &self.policy_version {
            field("policy", policy.clone());
        }
        if let Some(key) = &self.dedupe_key {
            field("dedupe", key.clone());
        }
        if let Some(from) = &self.continued_from {
            field("continues", from.to_string());
        }
        let status = if self.note.is_empty() {
            self.status.to_string()
        } else {
            format!("{} ({})", self.status, short(&self.note, MESSAGE_CHARS_MAX))
        };
        field("status", status);
        field("created", utc(self.created_ms));
        field(
            "updated",
            format!("{} ({})", utc(self.updated_ms), rel(self.updated_ms)),
        );
        if let Some(wake_ms) = self.wake_ms {
            field("wakes", format!("{} ({})", utc(wake_ms), rel(wake_ms)));
        }
        field("events", self.events.to_string());
        let tools: Vec<&str> = self.tools.iter().map(String::as_str).collect();
        field(
            "tools",
            if tools.is_empty() {
                "-".into()
            } else {
                tools.join(", ")
            },
        );
        field(
            "current",
            self.current_step
                .as_ref()
                .map_or_else(|| "-".into(), |s| format!("[{}] {}", s.position, s.name)),
        );
        field("cost", self.cost().to_string());
        field("outcome", self.outcome.summary());

        let _ = writeln!(out, "\nsteps");
        if self.steps.is_empty() {
            let _ = writeln!(out, "  none");
        }
        let rows: Vec<[String; 5]> = self
            .steps
            .iter()
            .map(|s| {
                [
                    format!("[{}] {}", s.position, s.name),
                    format!("tool={}", s.tool.as_deref().unwrap_or("-")),
                    format!("{:?}", s.class),
                    format!("attempts={}", s.attempts),
                    step_summary(s),
                ]
            })
            .collect();
        write_table(&mut out, "  ", &rows);

        let _ = writeln!(out, "\nescalations");
        if self.escalations.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for e in &self.escalations {
            let step = e
                .step
                .as_ref()
                .map_or_else(String::new, |s| format!(" [{}] {}", s.position, s.name));
            let _ = writeln!(
                out,
                "  #{} {}{step}: {}",
                e.seq,
                rel(e.at_ms),
                quote(&e.reason)
            );
            if !e.context.suggested_next.is_empty() {
                let _ = writeln!(out, "      suggested: {}", quote(&e.context.suggested_next));
            }
        }

        if !self.ceilings.is_empty() {
            let _ = writeln!(out, "\nceilings");
            for c in &self.ceilings {
                let _ = writeln!(
                    out,
                    "  #{} {} [{}] {}: {}: {} -> {}",
                    c.seq,
                    rel(c.at_ms),
                    c.step.position,
                    c.step.name,
                    c.ceiling,
                    c.spent,
                    c.action
                );
            }
        }

        let _ = writeln!(out, "\noperator actions");
        if self.operator_actions.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for a in &self.operator_actions {
            let _ = writeln!(
                out,
                "  #{} {} {} by {}: {}",
                a.seq,
                rel(a.at_ms),
                a.action,
                a.actor,
                quote(&a.reason)
            );
        }

        let _ = writeln!(out, "\napprovals");
        if self.approvals.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for a in &self.approvals {
            let decision = match (&a.decision, a.latency_ms()) {
                (Some(d), Some(latency)) => {
                    let mut s = format!("{d} after {}", duration_ms(latency));
                    if let Some(actor) = &a.actor {
                        let _ = write!(s, " by {actor}");
                    }
                    if let Some(role) = &a.role {
                        let _ = write!(s, " as {role}");
                    }
                    if let Some(reason) = &a.reason {
                        let _ = write!(s, ": {}", quote(reason));
                    }
                    s
                }
                _ => "pending".into(),
            };
            let action = a
                .action
                .as_deref()
                .map_or_else(String::new, |x| format!(" {}", quote(x)));
            let _ = writeln!(
                out,
                "  #{} {} gate {}{action}: {decision}",
                a.seq,
                rel(a.requested_ms),
                a.gate
            );
        }

        let _ = writeln!(out, "\nchecks");
        if self.checks.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for c in &self.checks {
            let verdict = if c.passed { "passed" } else { "FAILED" };
            let _ = writeln!(
                out,
                "  #{} {} {} {verdict}: {}",
                c.seq,
                rel(c.at_ms),
                c.name,
                quote(&c.detail)
            );
        }
        out
    }
}

fn step_summary(step: &StepRecord) -> String {
    let mut out = match &step.outcome {
        StepEnd::Pending => "pending".to_string(),
        StepEnd::Completed {
            attempt, served_by, ..
        } => {
            let mut s = match served_by.as_deref() {
                Some("operator") => {
                    format!("resolved as done by an operator after attempt {attempt}")
                }
                Some(by) => format!("completed at attempt {attempt} by {by}"),
                None => format!("completed at attempt {attempt}"),
            };
            if step.cost > 0 {
                let _ = write!(s, ", cost {}", step.cost);
            }
            s
        }
        StepEnd::OperatorSkipped { actor, .. } => {
            let mut s = format!(
                "skipped by operator {actor} after {} attempts",
                step.attempts
            );
            if step.cost > 0 {
                let _ = write!(s, ", cost {}", step.cost);
            }
            s
        }
        StepEnd::Exhausted { action, budget, .. } => {
            let mut s = format!("exhausted ({budget}) -> {}", exhaust_action(action));
            if step.cost > 0 {
                let _ = write!(s, ", cost {}", step.cost);
            }
            s
        }
    };
    if !step.failures.is_empty() {
        let mut by_class: BTreeMap<&str, u32> = BTreeMap::new();
        for f in &step.failures {
            *by_class.entry(f.class.label()).or_default() += 1;
        }
        let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        let _ = write!(out, "; failures: {}", classes.join(", "));
    }
    out
}
