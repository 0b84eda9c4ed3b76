//! Running a run: replay its workflow from history, then settle it (end, block, park,
//! escalate) when the code returns or halts.

use std::sync::Arc;

use annal_storage::{IndexOp, RunId};
use tracing::Instrument;

use super::inner::{AppendReq, EngineInner};
use super::slot::{Halt, RunSlot, Writer};
use crate::error::{DriftError, Result, WorkflowError};
use crate::event::{EventKind, Payload};
use crate::replay::{Recorded, ReplayState};
use crate::status::RunStatus;

enum Settle {
    Finished(Result<Payload, WorkflowError>),
    Halted(Halt),
}

impl EngineInner {
    /// Makes sure a non-terminal run has a driver, loading it if needed.
    /// Boxed because waking, driving and settling call each other (continue-as-new, a park
    /// that must be undone), and a recursive `async fn` has no nameable `Send` type.
    pub(crate) fn wake(
        self: &Arc<Self>,
        run: RunId,
    ) -> futures::future::BoxFuture<'static, Result<()>> {
        let engine = Arc::clone(self);
        Box::pin(async move {
            let (slot, mut writer) = engine.lock_run(run).await?;
            engine.ensure_driver(&slot, &mut writer).await
        })
    }

    /// A run whose log cannot be read is moved to `Blocked` with the reason, its log left
    /// exactly as it is for an operator (or `annal verify`) to look at.
    pub(crate) async fn block_unreadable(&self, run: RunId, error: &crate::Error) {
        tracing::error!(%run, %error, "run log is unreadable; run blocked");
        let Ok(Some(mut meta)) = self.store.meta(run).await else {
            return;
        };
        meta.status = RunStatus::Blocked.code();
        meta.note = format!("unreadable log: {error}");
        meta.updated_ms = self.clock.now_ms();
        let block = |expected_next_seq: u64| annal_storage::AppendBatch {
            run,
            expected_next_seq,
            events: Vec::new(),
            meta: Some(meta.clone()),
            index: Vec::new(),
        };
        let mut result = self.store.append_durable(block(meta.next_seq)).await;
        if let Err(annal_storage::Error::Conflict { found, .. }) = result {
            // The log ends before the seq its metadata recorded (a lost tail): the status
            // goes on where the log really ends, which is the problem being reported.
            result = self.store.append_durable(block(found)).await;
        }
        if let Err(e) = result {
            tracing::error!(%run, error = %e, "could not record the blocked status");
        }
        self.notify_run_settled(run);
    }

    /// Starts the driver of a loaded slot unless it runs already or the run cannot run.
    pub(crate) async fn ensure_driver(
        self: &Arc<Self>,
        slot: &Arc<RunSlot>,
        writer: &mut Writer,
    ) -> Result<()> {
        if self.shut_down.load(std::sync::atomic::Ordering::Acquire) {
            return Err(crate::Error::Shutdown);
        }
        if let Some(cause) = self.store_failed() {
            return Err(crate::Error::Storage(annal_storage::Error::Poisoned {
                cause,
            }));
        }
        let status = writer
            .meta
            .as_ref()
            .and_then(|m| RunStatus::from_code(m.status));
        if slot.state().driver_running {
            return Ok(());
        }
        match status {
            Some(RunStatus::Running) => {}
            Some(RunStatus::Parked | RunStatus::Blocked) => {
                self.append_locked(
                    slot,
                    writer,
                    AppendReq::default().status(RunStatus::Running, ""),
                )
                .await?;
            }
            _ => {
                // Terminal or escalated: nothing to drive. Drop it from memory again.
                self.evict(slot, writer);
                return Ok(());
            }
        }
        if self.config.operator_only {
            // Leave the run for the service: it is `Running` now, so recovery resumes it.
            self.evict(slot, writer);
            return Ok(());
        }
        slot.state().driver_running = true;
        let engine = Arc::clone(self);
        let driven = Arc::clone(slot);
        let task = self.spawn(async move { engine.drive(driven).await });
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.run, task.abort_handle());
        Ok(())
    }

    async fn drive(self: Arc<Self>, slot: Arc<RunSlot>) {
        let run = slot.run;
        let started = {
            let mut state = slot.state();
            state.reset_drive();
            state.replay.started().cloned()
        };
        let Some((workflow, version, input)) = started else {
            self.settle(
                &slot,
                Settle::Halted(Halt::Store("history has no RunStarted".into())),
            )
            .await;
            return;
        };
        let span = tracing::info_span!("run", run = %run, workflow = %workflow, version);
        let outcome = async {
            let Some(code) = self.registry.get(&workflow, version) else {
                return Settle::Halted(Halt::Blocked(format!(
                    "workflow '{workflow}' version {version} is not registered in this engine"
                )));
            };
            let code = code(Arc::clone(&self), Arc::clone(&slot), input);
            tokio::select! {
                result = code => Settle::Finished(result),
                halt = slot.wait_halt() => Settle::Halted(halt),
            }
        }
        .instrument(span.clone())
        .await;
        self.settle(&slot, outcome).instrument(span).await;
    }

    async fn settle(self: &Arc<Self>, slot: &Arc<RunSlot>, outcome: Settle) {
        let run = slot.run;
        let mut writer = slot.writer.lock().await;
        let result = self.settle_locked(slot, &mut writer, outcome).await;
        // The log moved on under the settling driver: an append of the workflow, dropped
        // with it when a halt won the race, had already reached the store (a timer's
        // `TimerFired`, say). Nothing of the settle was written; the run is reloaded from
        // what the store holds and goes on, instead of waiting for the next sweep or open.
        let moved = matches!(
            result,
            Err(crate::Error::Storage(annal_storage::Error::Conflict { .. }))
        );
        match &result {
            Err(e) if moved => {
                tracing::debug!(%run, error = %e, "the log moved on while the run settled; reloading it")
            }
            Err(e) => {
                tracing::error!(%run, error = %e, "run could not be settled; it resumes from its log on the next open")
            }
            Ok(_) => {}
        }
        let wake_again = matches!(result, Ok(true)) || (moved && !self.store.shared());
        // A run that ended registered no new wake-up time, so unless the timer service left
        // due entries behind (which wait for runs to settle), it need not rescan: doing so
        // after every finished run cost the fan-in bench ~3% of its workers' time.
        let ended = writer
            .meta
            .as_ref()
            .and_then(|meta| RunStatus::from_code(meta.status))
            .is_some_and(RunStatus::is_terminal);
        // Settled without error, the end was appended durably: waiters may take the
        // terminal event from memory.
        let terminal = (ended && result.is_ok())
            .then(|| slot.state().replay.terminal().cloned())
            .flatten();
        self.evict(slot, &mut writer);
        drop(writer);
        match terminal {
            Some(terminal) => self.notify_run_ended(run, terminal),
            None => self.notify_run_settled(run),
        }
        if !ended
            || self
                .timers_left_due
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.timers_changed.notify_one();
        }
        if wake_again {
            // Something arrived while the run was deciding to park: run it again.
            if let Err(e) = self.wake(run).await {
                tracing::error!(%run, error = %e, "run could not be woken");
            }
        }
    }

    /// Returns `Ok(true)` if the run must be woken again right away.
    async fn settle_locked(
        self: &Arc<Self>,
        slot: &Arc<RunSlot>,
        writer: &mut Writer,
        outcome: Settle,
    ) -> Result<bool> {
        let run = slot.run;
        let (timer_deletes, unvisited, cancel_reason, delivered) = {
            let state = slot.state();
            let unvisited = state.replay.unvisited(|p| state.visited.contains(p));
            (
                timer_deletes(&state.replay),
                unvisited,
                state.replay.cancel_reason().map(str::to_string),
                state.replay.pending_cancel().is_none(),
            )
        };
        let end = |kind: EventKind, status: RunStatus| {
            AppendReq::events(vec![kind])
                .status(status, "")
                .index(timer_deletes.clone())
                .durable()
        };
        if self.config.replay_only && !matches!(outcome, Settle::Halted(Halt::Blocked(_))) {
            let drift = match (outcome, unvisited) {
                (Settle::Halted(Halt::Drift(m)), _) | (Settle::Finished(_), Some(m)) => Some(m),
                (Settle::Finished(ended), None) => {
                    let error = ended.as_ref().err().map(ToString::to_string);
                    let ended = match &ended {
                        Ok(output) => Ok(output),
                        Err(_) => Err(error.as_deref().unwrap_or_default()),
                    };
                    slot.state().replay.ending_mismatch(ended)
                }
                _ => None,
            };
            let result = match drift {
                Some(m) => Err(drift_error(run, m)),
                None => Ok(()),
            };
            self.replayed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(run, result);
            return Ok(false);
        }
        let req = match outcome {
            Settle::Finished(result) => {
                if let Some(mismatch) = unvisited {
                    return self
                        .block_for_drift(slot, writer, mismatch)
                        .await
                        .map(|()| false);
                }
                match result {
                    Ok(output) => end(EventKind::RunCompleted { output }, RunStatus::Completed),
                    Err(WorkflowError::Cancelled(reason))
                        if cancel_reason.is_some() && delivered =>
                    {
                        end(EventKind::RunCancelled { reason }, RunStatus::Cancelled)
                    }
                    Err(WorkflowError::ContinueAsNew(input)) => {
                        let next_run = self.continue_as_new(run, input.clone()).await?;
                        end(
                            EventKind::ContinuedAsNew {
                                next_run: next_run.0,
                                input,
                            },
                            RunStatus::ContinuedAsNew,
                        )
                    }
                    Err(e) => end(
                        EventKind::RunFailed {
                            error: e.to_string(),
                        },
                        RunStatus::Failed,
                    ),
                }
            }
            Settle::Halted(Halt::Drift(mismatch)) => {
                return self
                    .block_for_drift(slot, writer, mismatch)
                    .await
                    .map(|()| false)
            }
            Settle::Halted(Halt::Blocked(reason)) => {
                tracing::warn!(%run, %reason, "run blocked");
                AppendReq::default()
                    .status(RunStatus::Blocked, reason)
                    .durable()
            }
            Settle::Halted(Halt::Escalate(reason)) => {
                tracing::warn!(%run, %reason, "run escalated");
                AppendReq::default()
                    .status(RunStatus::Escalated, reason)
                    .durable()
            }
            Settle::Halted(Halt::Park) => {
                let changed = slot.state().halt_generation_changed();
                if changed {
                    return Ok(true);
                }
                let mut req = AppendReq::default().status(RunStatus::Parked, "").durable();
                let state = slot.state();
                req.wake_ms = state.replay.next_wake();
                // A long history parks with a checkpoint of its fold, so that waking it does
                // not read all of it again.
                let folded = state.replay.next_seq();
                if folded.saturating_sub(state.checkpoint_seq)
                    >= self.config.checkpoint_after_events
                {
                    req.index.push(IndexOp::PutCheckpoint {
                        bytes: crate::codec::encode_checkpoint(&state.replay),
                    });
                }
                drop(state);
                req
            }
            Settle::Halted(Halt::Terminated | Halt::ReplayEnd) => return Ok(false),
            Settle::Halted(Halt::Lost(reason)) => {
                // Nothing more is written: the run goes on from what the store holds, with
                // whichever worker takes it (this one too, once it may).
                tracing::warn!(%run, %reason, "run dropped: this worker may not write it any more");
                return Ok(false);
            }
            Settle::Halted(Halt::Store(reason)) => {
                tracing::error!(%run, %reason, "run stopped by a storage failure; no run is woken until the store is reopened");
                *self.store_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                return Ok(false);
            }
        };
        let durable = req.durable;
        let position = self.append_locked(slot, writer, req).await?;
        if durable {
            self.store.wait_durable(position).await?;
        }
        Ok(false)
    }

    async fn block_for_drift(
        &self,
        slot: &Arc<RunSlot>,
        writer: &mut Writer,
        mismatch: crate::replay::Mismatch,
    ) -> Result<()> {
        let drift = drift_error(slot.run, mismatch);
        tracing::warn!(run = %slot.run, error = %drift, "run blocked by drift");
        let note = drift.to_string();
        self.drifts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot.run, drift);
        let position = self
            .append_locked(
                slot,
                writer,
                AppendReq::default().status(RunStatus::Blocked, note),
            )
            .await?;
        self.store.wait_durable(position).await?;
        Ok(())
    }

    /// Creates the successor run (idempotently: its id is derived from this run's id, so a
    /// crash between creating it and ending this run cannot create a second one).
    async fn continue_as_new(self: &Arc<Self>, run: RunId, input: Payload) -> Result<RunId> {
        let next_run = RunId(
            *uuid::Uuid::new_v5(&uuid::Uuid::from_bytes(run.0), b"continue-as-new").as_bytes(),
        );
        if self.store.meta(next_run).await?.is_none() {
            let meta = self.meta(run).await?;
            let started = EventKind::RunStarted {
                workflow: meta.workflow.clone(),
                version: self.registry.latest(&meta.workflow).unwrap_or(meta.version),
                input,
                dedupe_key: None,
                owner: None,
                continued_from: Some(run.0),
                policy_version: self.policy.version.clone(),
            };
            self.create_run(next_run, started, Vec::new()).await?;
        }
        let engine = Arc::clone(self);
        self.spawn(async move {
            if let Err(e) = engine.wake(next_run).await {
                tracing::error!(run = %next_run, error = %e, "continued run could not start");
            }
        });
        Ok(next_run)
    }

    /// Writes a new run's first event and metadata, durably, and keeps them resident so the
    /// run's first wake-up does not read them back.
    pub(crate) async fn create_run(
        &self,
        run: RunId,
        started: EventKind,
        index: Vec<IndexOp>,
    ) -> Result<()> {
        let EventKind::RunStarted {
            workflow, version, ..
        } = &started
        else {
            unreachable!("create_run takes a RunStarted event");
        };
        let now_ms = self.clock.now_ms();
        let meta = annal_storage::RunMeta {
            workflow: workflow.clone(),
            version: *version,
            status: RunStatus::Running.code(),
            next_seq: 0,
            created_ms: now_ms,
            updated_ms: now_ms,
            wake_ms: None,
            note: String::new(),
            status_seq: 0,
        };
        let event = crate::event::Event {
            seq: 0,
            at_ms: now_ms,
            kind: started,
        };
        let batch = annal_storage::AppendBatch {
            run,
            expected_next_seq: 0,
            events: vec![crate::codec::encode_event(&event)],
            meta: Some(meta.clone()),
            index,
        };
        self.store.append_durable(batch).await?;
        self.adopt_created(run, event, meta).await;
        Ok(())
    }
}

/// Every due-time entry a run may have registered, so ending the run removes them all.
pub(crate) fn timer_deletes(replay: &ReplayState) -> Vec<IndexOp> {
    let mut out = Vec::new();
    for (position, record) in replay.commands() {
        match &record.recorded {
            Recorded::Timer { fire_at_ms, .. } => out.push(IndexOp::DeleteTimer {
                fire_at_ms: *fire_at_ms,
                id: position,
            }),
            Recorded::Step(step) => {
                for f in &step.failures {
                    if let Some(at) = f.retry_at_ms {
                        out.push(IndexOp::DeleteTimer {
                            fire_at_ms: at,
                            id: position,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn drift_error(run: RunId, mismatch: crate::replay::Mismatch) -> DriftError {
    DriftError {
        run,
        position: mismatch.position,
        seq: mismatch.seq,
        expected: mismatch.expected,
        got: mismatch.got,
        fields: mismatch.fields,
    }
}
