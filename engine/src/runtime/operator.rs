//! What people do to runs from outside: decide approvals, list the inbox, act on escalated
//! runs. Every refusal is a typed error and writes nothing; every accepted act is recorded
//! with its actor and reason before it is acknowledged.

use annal_storage::{GateId, IndexOp, RunId};

use std::sync::Arc;

use super::acts::{answered, Act};
use super::inner::{AppendReq, EngineInner};
use super::Engine;
use crate::approval::{Actor, RiskTier, Verdict};
use crate::error::{Error, Result};
use crate::event::{EventKind, OperatorActionKind};
use crate::replay::{CommandRecord, GateState, Recorded};
use crate::status::RunStatus;

/// One approval waiting for a decision, as a reviewer's inbox shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingApproval {
    /// The gate to decide.
    pub gate: GateId,
    /// The run waiting.
    pub run: RunId,
    /// Its workflow.
    pub workflow: String,
    /// The proposed action.
    pub action: String,
    /// Risk tier.
    pub risk: RiskTier,
    /// Expected cost.
    pub cost: Option<u64>,
    /// Evidence references.
    pub evidence: Vec<String>,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// When it expires (ms since the Unix epoch), if it does.
    pub deadline_ms: Option<u64>,
    /// How long it has waited.
    pub age_ms: u64,
    /// Reminders sent so far.
    pub reminders: u32,
}

/// Which approvals to list.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    /// Only gates this actor may decide.
    pub approver: Option<Actor>,
    /// Only gates at or above this risk.
    pub min_risk: Option<RiskTier>,
}

impl ApprovalFilter {
    fn admits(&self, pending: &PendingApproval) -> bool {
        self.approver
            .as_ref()
            .is_none_or(|a| a.may_decide(&pending.approvers))
            && self.min_risk.is_none_or(|min| pending.risk >= min)
    }
}

impl Engine {
    /// Decides an approval gate. Refused with a typed error, writing nothing, when the gate
    /// is unknown, already decided, expired, closed, or the actor is not an approver; a
    /// refusal for the gate's or run's state comes once that state is durable, so a crash
    /// cannot reopen a gate someone was turned away from. Of two concurrent decisions exactly
    /// one wins: both are checked under the run's writer lock.
    /// Returns once the decision is durable; the run resumes.
    pub async fn decide(
        &self,
        gate: GateId,
        actor: &Actor,
        verdict: Verdict,
        reason: &str,
    ) -> Result<()> {
        let act = Act::Decide {
            gate,
            actor: actor.clone(),
            verdict,
            reason: reason.to_string(),
        };
        self.act(act).await
    }

    /// The reviewers' inbox: approvals waiting for a decision, highest risk first, then
    /// nearest deadline.
    ///
    /// A gated run whose log cannot be read (damaged records, a history that does not fold)
    /// is left out and logged, so one damaged run does not hide every other reviewer's work;
    /// its gate cannot be decided until the log is repaired, and `annal verify` reports it.
    /// A failure of the store itself is returned.
    pub async fn pending_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<PendingApproval>> {
        let now_ms = self.inner.clock.now_ms();
        let mut out = Vec::new();
        for (gate, run, position) in self.inner.store.gates().await? {
            match self.pending_approval(gate, run, position, now_ms).await {
                Ok(Some(pending)) if filter.admits(&pending) => out.push(pending),
                Ok(_) => {}
                Err(e)
                    if super::driver::is_unreadable(&e)
                        || matches!(
                            e,
                            Error::Storage(annal_storage::Error::CorruptMeta { .. })
                        ) =>
                {
                    tracing::error!(%run, %gate, error = %e, "gated run unreadable; left out of the inbox");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|p| (std::cmp::Reverse(p.risk), p.deadline_ms.unwrap_or(u64::MAX)));
        Ok(out)
    }

    /// The gate at `position` of `run` as the inbox shows it, if it still waits.
    async fn pending_approval(
        &self,
        gate: GateId,
        run: RunId,
        position: u32,
        now_ms: u64,
    ) -> Result<Option<PendingApproval>> {
        let inner = &self.inner;
        let Some(meta) = inner.store.meta(run).await? else {
            return Ok(None);
        };
        if RunStatus::from_code(meta.status).is_none_or(RunStatus::is_terminal) {
            return Ok(None);
        }
        let history = super::read_history(inner.store.as_ref(), run).await?;
        let replay =
            crate::replay::ReplayState::from_events(&history).map_err(|c| Error::Inconsistent {
                run,
                seq: c.seq,
                reason: c.reason,
            })?;
        let Some(CommandRecord {
            recorded: Recorded::Approval(record),
            ..
        }) = replay.command(position)
        else {
            return Ok(None);
        };
        if record.state != GateState::Pending {
            return Ok(None);
        }
        let request = &record.request;
        Ok(Some(PendingApproval {
            gate,
            run,
            workflow: meta.workflow,
            action: request.action.clone(),
            risk: request.risk,
            cost: request.cost,
            evidence: request.evidence.clone(),
            approvers: request.approvers.clone(),
            deadline_ms: request
                .deadline_ms
                .map(|d| record.requested_ms.saturating_add(d)),
            age_ms: now_ms.saturating_sub(record.requested_ms),
            reminders: record.reminders,
        }))
    }

    /// Acts on an escalated run: retry the step (or reopen an expired approval), skip it with
    /// a value, resolve an unknown irreversible outcome as done or not done, or abort the
    /// run. Recorded with actor and reason; refused (nothing written, once the state the
    /// refusal rests on is durable) when the run is not escalated or the action does not fit
    /// the call that escalated.
    pub async fn operate(
        &self,
        run: RunId,
        actor: &str,
        action: OperatorActionKind,
        reason: &str,
    ) -> Result<()> {
        let act = Act::Operate {
            run,
            actor: actor.to_string(),
            action,
            reason: reason.to_string(),
        };
        self.act(act).await
    }
}

impl EngineInner {
    /// [`Engine::decide`] in this process, which holds (or may take) the run; with `answer`,
    /// the forwarded request it carries out is answered in the decision's own append.
    pub(crate) async fn decide_local(
        self: &Arc<Self>,
        gate: GateId,
        actor: &Actor,
        verdict: Verdict,
        reason: &str,
        answer: Option<u64>,
    ) -> Result<()> {
        let inner = self;
        let (run, position) = inner
            .store
            .gate(gate)
            .await?
            .ok_or(Error::UnknownGate(gate))?;
        let (slot, mut writer) = inner.lock_run(run).await?;
        let status = writer
            .meta
            .as_ref()
            .and_then(|m| RunStatus::from_code(m.status))
            .unwrap_or(RunStatus::Failed);
        let record = match slot.state().replay.command(position) {
            Some(CommandRecord {
                recorded: Recorded::Approval(record),
                ..
            }) => record.clone(),
            _ => return Err(Error::UnknownGate(gate)),
        };
        let refusal = match &record.state {
            GateState::Decided { actor, .. } => Some(Error::AlreadyDecided {
                gate,
                actor: actor.clone(),
            }),
            GateState::Expired => Some(Error::GateExpired { gate }),
            GateState::Withdrawn => Some(Error::NotWaiting { run, status }),
            GateState::Pending if status.is_terminal() => Some(Error::NotWaiting { run, status }),
            GateState::Pending => None,
        };
        if let Some(error) = refusal {
            return inner.refuse(writer, error).await;
        }
        let deadline = record
            .request
            .deadline_ms
            .map(|d| record.requested_ms.saturating_add(d));
        if deadline.is_some_and(|d| inner.clock.now_ms() >= d) {
            // The run records the expiry when it wakes; a late decision must not win.
            return Err(Error::GateExpired { gate });
        }
        if !actor.may_decide(&record.request.approvers) {
            return Err(Error::NotAllowed {
                gate,
                actor: actor.id.clone(),
            });
        }
        let (approved, edits) = match verdict {
            Verdict::Approve { edits } => (true, edits),
            Verdict::Reject => (false, None),
        };
        let edits = edits
            .as_ref()
            .map(crate::event::Payload::encode)
            .transpose()
            .map_err(|e| Error::Payload(e.to_string()))?;
        let event = EventKind::ApprovalDecided {
            gate: gate.0,
            approved,
            actor: actor.id.clone(),
            reason: reason.to_string(),
            edits,
        };
        let wake =
            crate::approval::next_wake(&record.request, record.requested_ms, record.reminders);
        let index = wake.map(|at| IndexOp::DeleteTimer {
            fire_at_ms: at,
            id: position,
        });
        let position = inner
            .append_locked(
                &slot,
                &mut writer,
                AppendReq::events(vec![event])
                    .index(index)
                    .index(answered(answer))
                    .waking(status),
            )
            .await?;
        let woken = match status {
            RunStatus::Running | RunStatus::Parked => inner.ensure_driver(&slot, &mut writer).await,
            _ => Ok(()),
        };
        drop(writer);
        inner.store.wait_durable(position).await?;
        woken
    }

    /// [`Engine::operate`] in this process (see [`EngineInner::decide_local`]).
    pub(crate) async fn operate_local(
        self: &Arc<Self>,
        run: RunId,
        actor: &str,
        action: OperatorActionKind,
        reason: &str,
        answer: Option<u64>,
    ) -> Result<()> {
        let inner = self;
        let (slot, mut writer) = inner.lock_run(run).await?;
        let status = writer
            .meta
            .as_ref()
            .and_then(|m| RunStatus::from_code(m.status))
            .unwrap_or(RunStatus::Failed);
        if status != RunStatus::Escalated {
            let reason = format!("the run is {status}, not escalated");
            return inner
                .refuse(writer, Error::ActionRefused { run, reason })
                .await;
        }
        let (escalated_at, fits) = {
            let state = slot.state();
            let at = state.replay.escalated().flatten();
            let fits = match (
                at.and_then(|p| state.replay.command(p))
                    .map(|r| &r.recorded),
                &action,
            ) {
                (_, OperatorActionKind::Abort) => Ok(()),
                (
                    Some(Recorded::Step(_)),
                    OperatorActionKind::RetryStep | OperatorActionKind::SkipStep { .. },
                ) => Ok(()),
                (
                    Some(Recorded::Step(step)),
                    OperatorActionKind::ResolveDone { .. } | OperatorActionKind::ResolveNotDone,
                ) => {
                    if step.attempt_open {
                        Ok(())
                    } else {
                        Err("the step has no effect of unknown outcome to resolve".to_string())
                    }
                }
                (Some(Recorded::Approval(_)), OperatorActionKind::RetryStep) => Ok(()),
                (Some(Recorded::Approval(_)), _) => Err(
                    "an expired approval can only be reopened (retry) or the run aborted"
                        .to_string(),
                ),
                _ => Err("nothing to act on at the escalated position".to_string()),
            };
            (at, fits)
        };
        if let Err(reason) = fits {
            return inner
                .refuse(writer, Error::ActionRefused { run, reason })
                .await;
        }
        let abort = action == OperatorActionKind::Abort;
        let recorded = EventKind::OperatorAction {
            position: escalated_at,
            action,
            actor: actor.to_string(),
            reason: reason.to_string(),
        };
        let req = if abort {
            let deletes = super::driver::timer_deletes(&slot.state().replay);
            let failed = EventKind::RunFailed {
                error: format!("aborted by {actor}: {reason}"),
            };
            AppendReq::events(vec![recorded, failed])
                .status(RunStatus::Failed, format!("aborted by {actor}"))
                .index(deletes)
                .index(answered(answer))
        } else {
            AppendReq::events(vec![recorded])
                .status(RunStatus::Running, "")
                .index(answered(answer))
        };
        let position = inner.append_locked(&slot, &mut writer, req).await?;
        let woken = if abort {
            inner.evict(&slot, &mut writer);
            Ok(())
        } else {
            inner.ensure_driver(&slot, &mut writer).await
        };
        drop(writer);
        inner.store.wait_durable(position).await?;
        inner.notify_run_settled(run);
        woken
    }
}
