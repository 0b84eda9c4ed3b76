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

use super::inner::{AppendReq, EngineInner};
use super::slot::Halt;
use super::Engine;
use crate::approval::{Actor, Verdict};
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
        verdict: Verdict,
        reason: String,
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

/// A refusal as it travels back to the worker that forwarded the act.
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
    fn of(result: &Result<()>) -> Self {
        match result {
            Ok(()) => Answer::Done,
            Err(Error::UnknownRun(run)) => Answer::UnknownRun(*run),
            Err(Error::RunEnded { run, status }) => Answer::RunEnded {
                run: *run,
                status: *status,
            },
            Err(Error::UnknownGate(gate)) => Answer::UnknownGate(*gate),
            Err(Error::AlreadyDecided { gate, actor }) => Answer::AlreadyDecided {
                gate: *gate,
                actor: actor.clone(),
            },
            Err(Error::GateExpired { gate }) => Answer::GateExpired { gate: *gate },
            Err(Error::NotAllowed { gate, actor }) => Answer::NotAllowed {
                gate: *gate,
                actor: actor.clone(),
            },
            Err(Error::NotWaiting { run, status }) => Answer::NotWaiting {
                run: *run,
                status: *status,
            },
            Err(Error::ActionRefused { run, reason }) => Answer::ActionRefused {
                run: *run,
                reason: reason.clone(),
            },
            Err(Error::Payload(why)) => Answer::Payload(why.clone()),
            Err(e) => Answer::Other(e.to_string()),
        }
    }

    fn into_result(self) -> Result<()> {
        Err(match self {
            Answer::Done => return Ok(()),
            Answer::UnknownRun(run) => Error::UnknownRun(run),
            Answer::RunEnded { run, status } => Error::RunEnded { run, status },
            Answer::UnknownGate(gate) => Error::UnknownGate(gate),
            Answer::AlreadyDecided { gate, actor } => Error::AlreadyDecided { gate, actor },
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
    /// it to that worker and waits for its answer.
    pub(crate) async fn act(&self, act: Act) -> Result<()> {
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
                return answer.into_result();
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
    pub(crate) async fn act_local(self: &Arc<Self>, act: &Act, answer: Option<u64>) -> Result<()> {
        match act.clone() {
            Act::Decide {
                gate,
                actor,
                verdict,
                reason,
            } => {
                self.decide_local(gate, &actor, verdict, &reason, answer)
                    .await
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
        }
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
            if let Err(e) = &result {
                if self.loses_run(e) {
                    return result;
                }
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
