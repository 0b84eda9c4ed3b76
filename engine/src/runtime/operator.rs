//! What people do to runs from outside: decide approvals, list the inbox, act on escalated
//! runs. Every refusal is a typed error and writes nothing; every accepted act is recorded
//! with its actor and reason before it is acknowledged.

use annal_storage::{GateId, IndexOp, RunId};

use std::sync::Arc;

use super::acts::{answered, Act};
use super::decisions::{
    ApprovalFilter, DecideRequest, Decided, PastDecision, PendingApproval, Rules,
};
use super::inner::{AppendReq, EngineInner};
use super::Engine;
use crate::approval::{Actor, Verdict};
use crate::error::{Error, Result};
use crate::event::{EventKind, OperatorActionKind};
use crate::replay::{CommandRecord, GateState, Recorded};
use crate::status::RunStatus;

impl Engine {
    /// Decides an approval gate. Refused with a typed error, writing nothing, when the actor
    /// is an agent, the gate is unknown, already decided, expired, closed, or the actor is
    /// not an approver; a refusal for the gate's or run's state comes once that state is
    /// durable, so a crash cannot reopen a gate someone was turned away from. Of two
    /// concurrent decisions exactly one wins: both are checked under the run's writer lock.
    /// Returns once the decision is durable; the run resumes.
    ///
    /// Reviewers' surfaces use [`Engine::decide_bound`], which also binds the decision to the
    /// action's digest, requires a reason to reject and allows edits only where the gate
    /// declared them.
    pub async fn decide(
        &self,
        gate: GateId,
        actor: &Actor,
        verdict: Verdict,
        reason: &str,
    ) -> Result<()> {
        let request = DecideRequest {
            verdict,
            reason: reason.to_string(),
            expected_digest: None,
        };
        self.decide_via_act(gate, actor, request, Rules::Compatible)
            .await
            .map(drop)
    }

    /// Decides an approval gate as a reviewer: everything [`Engine::decide`] checks, and
    /// also that the gate still asks for the action whose digest the request names
    /// ([`Error::ActionChanged`]), that a rejection gives a reason
    /// ([`Error::ReasonRequired`]) and that edits change only the fields the gate declared
    /// editable ([`Error::EditNotAllowed`]). Nothing is written on refusal. Returns once the
    /// decision is durable, with the role it was recorded under.
    pub async fn decide_bound(
        &self,
        gate: GateId,
        actor: &Actor,
        request: &DecideRequest,
    ) -> Result<Decided> {
        self.decide_via_act(gate, actor, request.clone(), Rules::Reviewer)
            .await
    }

    /// A decision, carried out here or by the worker that executes the gate's run.
    async fn decide_via_act(
        &self,
        gate: GateId,
        actor: &Actor,
        request: DecideRequest,
        rules: Rules,
    ) -> Result<Decided> {
        let act = Act::Decide {
            gate,
            actor: actor.clone(),
            request,
            rules,
        };
        match self.act(act).await? {
            Some(decided) => Ok(decided),
            None => self.inner.decided(gate).await,
        }
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
                Err(e) if unreadable(&e) => {
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
        let Some(status) = RunStatus::from_code(meta.status).filter(|s| !s.is_terminal()) else {
            return Ok(None);
        };
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
        // The engine writes the editable fields from a JSON object, so they decode; if they
        // ever did not, the card offers no edits (and `decide_bound` refuses any) rather
        // than hiding every gate of the inbox.
        let editable = record.editable.as_ref().and_then(|p| {
            p.decode::<serde_json::Value>()
                .inspect_err(|e| tracing::warn!(%run, %gate, error = %e, "editable fields do not decode; no edits offered"))
                .ok()
        });
        Ok(Some(PendingApproval {
            gate,
            run,
            position,
            workflow: meta.workflow,
            status,
            action: request.action.clone(),
            risk: request.risk,
            cost: request.cost,
            evidence: request.evidence.clone(),
            checks: request.checks.clone(),
            rollback: request.rollback.clone(),
            approvers: request.approvers.clone(),
            on_expiry: request.on_expiry.clone(),
            requested_ms: record.requested_ms,
            deadline_ms: request
                .deadline_ms
                .map(|d| record.requested_ms.saturating_add(d)),
            age_ms: now_ms.saturating_sub(record.requested_ms),
            reminders: record.reminders,
            editable,
            digest: record.action_digest(),
        }))
    }

    /// The reviewers' history: closed approval rounds (decided, expired, withdrawn), latest
    /// first, at most `limit`. Reads the history of every run that ever asked for an
    /// approval (the gate index keeps decided gates), so its cost grows with them; a run
    /// whose log cannot be read is left out and logged, as in the inbox.
    pub async fn past_decisions(&self, limit: usize) -> Result<Vec<PastDecision>> {
        let inner = &self.inner;
        let mut runs: Vec<RunId> = inner
            .store
            .gates()
            .await?
            .into_iter()
            .map(|(_, run, _)| run)
            .collect();
        runs.sort_unstable();
        runs.dedup();
        let mut out = Vec::new();
        for run in runs {
            let (meta, history) = match async {
                let meta = inner.store.meta(run).await?;
                let history = super::read_history(inner.store.as_ref(), run).await?;
                Ok::<_, Error>((meta, history))
            }
            .await
            {
                Ok(loaded) => loaded,
                Err(e) if unreadable(&e) => {
                    tracing::error!(%run, error = %e, "gated run unreadable; left out of the decision history");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let record = crate::audit::RunRecord::from_history(run, meta.as_ref(), &history);
            for round in record.approvals {
                let (Some(decision), Some(decided_ms)) = (round.decision, round.decided_ms) else {
                    continue;
                };
                let Some(gate) = parse_gate(&round.gate) else {
                    continue;
                };
                out.push(PastDecision {
                    gate,
                    run,
                    workflow: record.workflow.clone(),
                    action: round.action.unwrap_or_default(),
                    decision,
                    actor: round.actor,
                    role: round.role,
                    reason: round.reason,
                    requested_ms: round.requested_ms,
                    decided_ms,
                });
            }
        }
        out.sort_by(|a, b| {
            b.decided_ms
                .cmp(&a.decided_ms)
                .then(a.gate.0.cmp(&b.gate.0))
        });
        out.truncate(limit);
        Ok(out)
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
        self.act(act).await.map(drop)
    }
}

impl EngineInner {
    /// [`Engine::decide`] and [`Engine::decide_bound`] in this process, which holds (or
    /// may take) the run; with `answer`, the forwarded request it carries out is answered in
    /// the decision's own append.
    pub(crate) async fn decide_local(
        self: &Arc<Self>,
        gate: GateId,
        actor: &Actor,
        request: &DecideRequest,
        rules: Rules,
        answer: Option<u64>,
    ) -> Result<Decided> {
        if actor.is_agent() {
            return Err(Error::AgentMayNotDecide {
                gate,
                actor: actor.id.clone(),
            });
        }
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
        // An actor the gate does not admit learns nothing about the gate's state.
        let Some(role) = actor.decides_as(&record.request.approvers) else {
            return Err(Error::NotAllowed {
                gate,
                actor: actor.id.clone(),
            });
        };
        let refusal = match &record.state {
            GateState::Decided {
                actor,
                role,
                approved,
                at_ms,
                ..
            } => Some(Error::AlreadyDecided {
                gate,
                actor: actor.clone(),
                role: role.clone(),
                approved: *approved,
                decided_ms: *at_ms,
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
        let digest = record.action_digest();
        if let Some(expected) = request.expected_digest {
            if expected != digest {
                let error = Error::ActionChanged {
                    gate,
                    expected,
                    found: digest,
                };
                return inner.refuse(writer, error).await;
            }
        }
        let (approved, edits) = match &request.verdict {
            Verdict::Approve { edits } => (true, edits.clone()),
            Verdict::Reject => (false, None),
        };
        if rules == Rules::Reviewer {
            if !approved && request.reason.trim().is_empty() {
                return Err(Error::ReasonRequired { gate });
            }
            if let Some(edits) = &edits {
                let editable = record
                    .editable
                    .as_ref()
                    .map(|p| p.decode::<serde_json::Value>())
                    .transpose()
                    .map_err(|e| Error::Payload(e.to_string()))?;
                crate::approval::check_edits(editable.as_ref(), edits)
                    .map_err(|reason| Error::EditNotAllowed { gate, reason })?;
            }
        }
        let edits = edits
            .as_ref()
            .map(crate::event::Payload::encode)
            .transpose()
            .map_err(|e| Error::Payload(e.to_string()))?;
        let event = EventKind::ApprovalDecidedAs {
            gate: gate.0,
            approved,
            actor: actor.id.clone(),
            role: role.clone(),
            reason: request.reason.clone(),
            edits,
            action_digest: digest.0,
        };
        let wake =
            crate::approval::next_wake(&record.request, record.requested_ms, record.reminders);
        let index = wake.map(|at| IndexOp::DeleteTimer {
            fire_at_ms: at,
            id: position,
        });
        let appended = inner
            .append_locked(
                &slot,
                &mut writer,
                AppendReq::events(vec![event])
                    .index(index)
                    .index(answered(answer))
                    .waking(status),
            )
            .await?;
        let decided_ms = match slot.state().replay.command(position) {
            Some(CommandRecord {
                recorded: Recorded::Approval(record),
                ..
            }) => match record.state {
                GateState::Decided { at_ms, .. } => at_ms,
                _ => inner.clock.now_ms(),
            },
            _ => inner.clock.now_ms(),
        };
        let woken = match status {
            RunStatus::Running | RunStatus::Parked => inner.ensure_driver(&slot, &mut writer).await,
            _ => Ok(()),
        };
        drop(writer);
        inner.store.wait_durable(appended).await?;
        crate::telemetry::approval_decided(
            run,
            gate,
            approved,
            &actor.id,
            &role,
            decided_ms.saturating_sub(record.requested_ms),
        );
        woken?;
        Ok(Decided {
            gate,
            run,
            actor: actor.id.clone(),
            role,
            approved,
            decided_ms,
            action_digest: digest,
        })
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
        let label = crate::audit::operator_action_name(&action);
        let workflow = writer
            .meta
            .as_ref()
            .map(|m| m.workflow.clone())
            .unwrap_or_default();
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
        crate::telemetry::operator_action(run, escalated_at, label, actor);
        if abort {
            crate::telemetry::run_ended(run, &workflow, RunStatus::Failed);
        } else {
            crate::telemetry::run_status(&workflow, RunStatus::Running);
        }
        inner.notify_run_settled(run);
        woken
    }
}

/// Whether `e` says one run's log cannot be read (left out of lists, not fatal to them).
fn unreadable(e: &Error) -> bool {
    super::inner::is_unreadable(e)
        || matches!(e, Error::Storage(annal_storage::Error::CorruptMeta { .. }))
}

/// A gate id as the audit record writes it (a UUID) back to its bytes.
fn parse_gate(text: &str) -> Option<GateId> {
    uuid::Uuid::parse_str(text)
        .ok()
        .map(|u| GateId(*u.as_bytes()))
}
