//! Acts on a run from outside — decisions, signals, cancel requests, terminations, operator
//! actions — wherever the run executes.
//!
//! On a store one process owns, an act is carried out here, under the run's writer lock. On
//! a shared store (several engines on one database) only the worker holding the run's lease
//! may append to it: an act on a run another live worker executes is posted as a request to
//! that worker, which carries it out exactly as it would its own — same checks, same typed
//! refusals — and answers in the same append as the events the act causes, so a request is
//! carried out once even if a worker dies. If the worker dies first, whoever takes the run
//! over carries the request out (the poster, too, tries to take the run while it waits).

use std::sync::Arc;

use annal_storage::{GateId, Hint, IndexOp, Request, RunId};
use serde::{Deserialize, Serialize};

use super::decisions::{DecideRequest, Decided, Rules};
use super::inner::{AppendReq, EngineInner};
use super::slot::Halt;
use super::Engine;
use crate::approval::{ActionDigest, Actor};
use crate::error::{Error, Result};
use crate::event::{EventKind, OperatorActionKind, Payload};
use crate::status::RunStatus;

/// An act from outside, as forwarded between workers (JSON, so that every field — verdict
/// edits are JSON values — travels as it is).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Act {
    Decide {
        gate: GateId,
        actor: Actor,
        request: DecideRequest,
        rules: Rules,
    },
    Signal {
        run: RunId,
        name: String,
        payload: Payload,
    },
    Cancel {
        run: RunId,
        actor: String,
        reason: String,
    },
    Terminate {
        run: RunId,
        actor: String,
        reason: String,
    },
    Operate {
        run: RunId,
        actor: String,
        action: OperatorActionKind,
        reason: String,
    },
}

/// An act's answer as it travels back to the worker that forwarded it: done, or the typed
/// refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Answer {
    Done,
    UnknownRun(RunId),
    RunEnded {
        run: RunId,
        status: RunStatus,
    },
    UnknownGate(GateId),
    AlreadyDecided {
        gate: GateId,
        actor: String,
        role: Option<String>,
        approved: bool,
        decided_ms: u64,
    },
    AgentMayNotDecide {
        gate: GateId,
        actor: String,
    },
    ActionChanged {
        gate: GateId,
        expected: ActionDigest,
        found: ActionDigest,
    },
    ReasonRequired {
        gate: GateId,
    },
    EditNotAllowed {
        gate: GateId,
        reason: String,
    },
    GateExpired {
        gate: GateId,
    },
    NotAllowed {
        gate: GateId,
        actor: String,
    },
    NotWaiting {
        run: RunId,
        status: RunStatus,
    },
    ActionRefused {
        run: RunId,
        reason: String,
    },
    Payload(String),
    /// Anything else, in words.
    Other(String),
}

impl Answer {
    fn of<T>(result: &Result<T>) -> Self {
        let Err(error) = result else {
            return Answer::Done;
        };
        match error {
            Error::UnknownRun(run) => Answer::UnknownRun(*run),
            Error::RunEnded { run, status } => Answer::RunEnded {
                run: *run,
                status: *status,
            },
            Error::UnknownGate(gate) => Answer::UnknownGate(*gate),
            Error::AlreadyDecided {
                gate,
                actor,
                role,
                approved,
                decided_ms,
            } => Answer::AlreadyDecided {
                gate: *gate,
                actor: actor.clone(),
                role: role.clone(),
                approved: *approved,
                decided_ms: *decided_ms,
            },
            Error::AgentMayNotDecide { gate, actor } => Answer::AgentMayNotDecide {
                gate: *gate,
                actor: actor.clone(),
            },
            Error::ActionChanged {
                gate,
                expected,
                found,
            } => Answer::ActionChanged {
                gate: *gate,
                expected: *expected,
                found: *found,
            },
            Error::ReasonRequired { gate } => Answer::ReasonRequired { gate: *gate },
            Error::EditNotAllowed { gate, reason } => Answer::EditNotAllowed {
                gate: *gate,
                reason: reason.clone(),
            },
            Error::GateExpired { gate } => Answer::GateExpired { gate: *gate },
            Error::NotAllowed { gate, actor } => Answer::NotAllowed {
                gate: *gate,
                actor: actor.clone(),
            },
            Error::NotWaiting { run, status } => Answer::NotWaiting {
                run: *run,
                status: *status,
            },
            Error::ActionRefused { run, reason } => Answer::ActionRefused {
                run: *run,
                reason: reason.clone(),
            },
            Error::Payload(why) => Answer::Payload(why.clone()),
            other => Answer::Other(other.to_string()),
        }
    }

    fn into_result(self) -> Result<()> {
        Err(match self {
            Answer::Done => return Ok(()),
            Answer::UnknownRun(run) => Error::UnknownRun(run),
            Answer::RunEnded { run, status } => Error::RunEnded { run, status },
            Answer::UnknownGate(gate) => Error::UnknownGate(gate),
            Answer::AlreadyDecided {
                gate,
                actor,
                role,
                approved,
                decided_ms,
            } => Error::AlreadyDecided {
                gate,
                actor,
                role,
                approved,
                decided_ms,
            },
            Answer::AgentMayNotDecide { gate, actor } => Error::AgentMayNotDecide { gate, actor },
            Answer::ActionChanged {
                gate,
                expected,
                found,
            } => Error::ActionChanged {
                gate,
                expected,
                found,
            },
            Answer::ReasonRequired { gate } => Error::ReasonRequired { gate },
            Answer::EditNotAllowed { gate, reason } => Error::EditNotAllowed { gate, reason },
            Answer::GateExpired { gate } => Error::GateExpired { gate },
            Answer::NotAllowed { gate, actor } => Error::NotAllowed { gate, actor },
            Answer::NotWaiting { run, status } => Error::NotWaiting { run, status },
            Answer::ActionRefused { run, reason } => Error::ActionRefused { run, reason },
            Answer::Payload(why) => Error::Payload(why),
            Answer::Other(message) => Error::Forwarded { message },
        })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"Other\":\"unencodable answer\"}".to_vec())
    }
}

/// The index change that answers forwarded request `answer`, if the act carries one out:
/// part of the act's own append, so the answer and the act land together.
pub(crate) fn answered(answer: Option<u64>) -> Option<IndexOp> {
    answer.map(|id| IndexOp::AnswerRequest {
        id,
        answer: Answer::Done.encode(),
    })
}

impl Engine {
    /// Carries an act out here, or — when another live worker executes the run — forwards
    /// it to that worker and waits for its answer. A decision carried out here returns what
    /// was recorded; one carried out elsewhere returns `None` (read it back from the store).
    pub(crate) async fn act(&self, act: Act) -> Result<Option<Decided>> {
        let inner = &self.inner;
        let result = inner.act_local(&act, None).await;
        inner.evict_if_idle(act_run(inner, &act).await.ok()).await;
        match result {
            Err(Error::Storage(annal_storage::Error::LeaseHeld { .. })) => {}
            other => return other,
        }
        let run = act_run(inner, &act).await?;
        let body = serde_json::to_vec(&act).map_err(|e| Error::Payload(e.to_string()))?;
        let id = inner.store.post_request(run, body).await?;
        tracing::debug!(%run, request = id, "act forwarded to the worker that executes the run");
        loop {
            if let Some(answer) = inner.store.request_answer(id, 1_000).await? {
                let answer: Answer = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                    Answer::Other(format!("undecodable answer to request {id}: {e}"))
                });
                return answer.into_result().map(|()| None);
            }
            if inner.shut_down.load(std::sync::atomic::Ordering::Acquire) {
                // The request stays: whoever executes the run carries it out.
                return Err(Error::Shutdown);
            }
            // The worker may have given the run up (it parked) or died: take it and carry
            // the request out here.
            if let Err(e) = inner.process_requests(run).await {
                if !inner.loses_run(&e) {
                    return Err(e);
                }
            }
        }
    }
}

/// The run an act is for.
async fn act_run(inner: &EngineInner, act: &Act) -> Result<RunId> {
    match act {
        Act::Decide { gate, .. } => inner
            .store
            .gate(*gate)
            .await?
            .map(|(run, _)| run)
            .ok_or(Error::UnknownGate(*gate)),
        Act::Signal { run, .. }
        | Act::Cancel { run, .. }
        | Act::Terminate { run, .. }
        | Act::Operate { run, .. } => Ok(*run),
    }
}

impl EngineInner {
    /// Carries an act out in this process; with `answer`, the forwarded request it answers.
    pub(crate) async fn act_local(
        self: &Arc<Self>,
        act: &Act,
        answer: Option<u64>,
    ) -> Result<Option<Decided>> {
        let done = match act.clone() {
            Act::Decide {
                gate,
                actor,
                request,
                rules,
            } => {
                return self
                    .decide_local(gate, &actor, &request, rules, answer)
                    .await
                    .map(Some)
            }
            Act::Signal { run, name, payload } => {
                let kind = EventKind::SignalReceived { name, payload };
                self.append_external(run, kind, false, answer).await
            }
            Act::Cancel { run, actor, reason } => {
                let kind = EventKind::CancelRequested { actor, reason };
                self.append_external(run, kind, false, answer).await
            }
            Act::Terminate { run, actor, reason } => {
                let kind = EventKind::RunTerminated { actor, reason };
                self.append_external(run, kind, true, answer).await
            }
            Act::Operate {
                run,
                actor,
                action,
                reason,
            } => {
                self.operate_local(run, &actor, action, &reason, answer)
                    .await
            }
        };
        done.map(|()| None)
    }

    /// A decision of `gate` as its run's history records it (for one another worker
    /// recorded: the answer said only that it did).
    pub(crate) async fn decided(&self, gate: GateId) -> Result<Decided> {
        let (run, _) = self
            .store
            .gate(gate)
            .await?
            .ok_or(Error::UnknownGate(gate))?;
        let history = super::read_history(self.store.as_ref(), run).await?;
        let decided = history.iter().rev().find_map(|event| {
            let decision = event.kind.decision()?;
            (*decision.gate == gate.0).then(|| {
                Decided::recorded(
                    gate,
                    run,
                    decision.actor.to_string(),
                    decision.role.unwrap_or_default().to_string(),
                    decision.approved,
                    event.at_ms,
                    decision
                        .action_digest
                        .map_or(ActionDigest([0; 32]), |d| ActionDigest(*d)),
                )
            })
        });
        decided.ok_or_else(|| Error::Inconsistent {
            run,
            seq: history.len() as u64,
            reason: format!(
                "the worker that executes the run recorded a decision of gate {gate} that its history does not hold"
            ),
        })
    }

    /// Carries out the requests other workers posted for `run`, oldest first, if this
    /// process holds the run or may take it; a refusal is answered as such. Stops at a lost
    /// lease: the run's next owner carries out the rest.
    pub(crate) async fn process_requests(self: &Arc<Self>, run: RunId) -> Result<()> {
        let pending = self.store.pending_requests(run).await?;
        if pending.is_empty() {
            return Ok(());
        }
        // Take the run (or find it held here) before anything is decided for it.
        drop(self.lock_run(run).await?);
        let result = self.carry_out(&pending).await;
        self.evict_if_idle(Some(run)).await;
        result
    }

    async fn carry_out(self: &Arc<Self>, pending: &[Request]) -> Result<()> {
        for request in pending {
            let result = match serde_json::from_slice::<Act>(&request.body) {
                Ok(act) => self.act_local(&act, Some(request.id)).await,
                Err(e) => Err(Error::Payload(format!("undecodable request: {e}"))),
            };
            if let Err(e) = result {
                if self.loses_run(&e) {
                    return Err(e);
                }
                self.store
                    .answer_request(request, Answer::of::<()>(&Err(e)).encode())
                    .await?;
                continue;
            }
            // Already answered in the act's append when it succeeded; a refusal is
            // answered here.
            self.store
                .answer_request(request, Answer::of(&result).encode())
                .await?;
        }
        Ok(())
    }

    /// Drops `run` from memory if it is loaded but nothing drives it (an act was refused, or
    /// loaded it only to be recorded): on a shared store its lease is then given up.
    pub(crate) async fn evict_if_idle(&self, run: Option<RunId>) {
        let Some(slot) = run.and_then(|run| {
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&run)
                .cloned()
        }) else {
            return;
        };
        let mut writer = slot.writer.lock().await;
        if !writer.evicted && !slot.state().driver_running {
            self.evict(&slot, &mut writer);
        }
    }

    /// A run another worker died holding, or one waiting for a worker: carry out its
    /// requests and drive it if it runs.
    async fn take_over(self: &Arc<Self>, run: RunId) {
        if let Err(e) = self.process_requests(run).await {
            if !self.loses_run(&e) {
                tracing::warn!(%run, error = %e, "requests for the run could not be carried out");
            }
            return;
        }
        let status = match self.store.meta(run).await {
            Ok(Some(meta)) => RunStatus::from_code(meta.status),
            _ => None,
        };
        if matches!(status, Some(RunStatus::Running | RunStatus::Blocked)) {
            match self.wake(run).await {
                Ok(()) => tracing::info!(%run, "run taken over"),
                Err(e) if self.loses_run(&e) => {}
                Err(e) => tracing::warn!(%run, error = %e, "run could not be taken over"),
            }
        }
    }

    /// Follows a shared store's hints: runs to take over, requests to carry out, and a full
    /// look after the store may have missed some (its notification connection came back).
    pub(crate) async fn hint_service(
        self: Arc<Self>,
        mut hints: tokio::sync::mpsc::UnboundedReceiver<Hint>,
    ) {
        while let Some(hint) = hints.recv().await {
            if self.store_failed().is_some() {
                continue;
            }
            match hint {
                Hint::TakeOver(run) => self.take_over(run).await,
                Hint::Requests(run) => {
                    if let Err(e) = self.process_requests(run).await {
                        if !self.loses_run(&e) {
                            tracing::warn!(%run, error = %e, "requests for the run could not be carried out");
                        }
                    }
                }
                Hint::Rescan => {
                    if let Err(e) = self.sweep(true).await {
                        tracing::warn!(error = %e, "rescan after a reconnect failed");
                    }
                }
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }

    /// A signal, cancel request or termination in this process (see
    /// [`EngineInner::decide_local`]).
    pub(crate) async fn append_external(
        self: &Arc<Self>,
        run: RunId,
        kind: EventKind,
        terminate: bool,
        answer: Option<u64>,
    ) -> Result<()> {
        let inner = self;
        let (slot, mut writer) = inner.lock_run(run).await?;
        let status = writer
            .meta
            .as_ref()
            .and_then(|m| RunStatus::from_code(m.status))
            .ok_or(Error::UnknownRun(run))?;
        if status.is_terminal() {
            return inner.refuse(writer, Error::RunEnded { run, status }).await;
        }
        let mut req = AppendReq::events(vec![kind]).index(answered(answer));
        if !terminate {
            req = req.waking(status);
        }
        if terminate {
            let deletes = {
                let state = slot.state();
                super::driver::timer_deletes(&state.replay)
            };
            req = req.status(RunStatus::Terminated, "").index(deletes);
        }
        let position = inner.append_locked(&slot, &mut writer, req).await?;
        if terminate {
            slot.halt(Halt::Terminated);
            if !slot.state().driver_running {
                inner.evict(&slot, &mut writer);
            }
            drop(writer);
            inner.store.wait_durable(position).await?;
            inner.notify_run_settled(run);
            return Ok(());
        }
        // Wake the run (it may be parked) before waiting: the group commit covers both.
        let wake = match status {
            RunStatus::Running | RunStatus::Parked => inner.ensure_driver(&slot, &mut writer).await,
            _ => Ok(()),
        };
        drop(writer);
        inner.store.wait_durable(position).await?;
        wake
    }
}
