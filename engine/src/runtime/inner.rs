//! The engine's shared state and the operations on a run's log: load, append, evict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use annal_storage::{AppendBatch, IndexOp, LogStore, Position, RunId, RunMeta};
use futures::future::BoxFuture;
use tokio::sync::{watch, Notify};

use super::slot::{RunSlot, Writer};
use super::EngineConfig;
use crate::clock::Clock;
use crate::codec;
use crate::error::{DriftError, Error, Result, WorkflowError};
use crate::event::{Event, EventKind, Payload};
use crate::replay::ReplayState;
use crate::status::RunStatus;

/// One append a run asks for.
#[derive(Default)]
pub(crate) struct AppendReq {
    pub(crate) events: Vec<EventKind>,
    pub(crate) index: Vec<IndexOp>,
    /// New status and note.
    pub(crate) status: Option<(RunStatus, String)>,
    /// With a status change: when the run wants to be woken (a parked run's next due time).
    pub(crate) wake_ms: Option<u64>,
    /// Wait until durable before returning.
    pub(crate) durable: bool,
}

impl AppendReq {
    pub(crate) fn events(events: Vec<EventKind>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
    pub(crate) fn index(mut self, index: impl IntoIterator<Item = IndexOp>) -> Self {
        self.index.extend(index);
        self
    }
    pub(crate) fn status(mut self, status: RunStatus, note: impl Into<String>) -> Self {
        self.status = Some((status, note.into()));
        self
    }
    /// For an event from outside (a decision, a signal, a cancel request) to a run whose
    /// status is `status`: a parked run is made `Running` in the same append, so the event it
    /// waits for and the status that makes it runnable are durable together. Appended
    /// separately, a crash between the two commits left a run `Parked` for good with its
    /// decision recorded: nothing resumes a parked run at open, and its wake-up had been
    /// handed to a driver that died with the process.
    pub(crate) fn waking(self, status: RunStatus) -> Self {
        if status == RunStatus::Parked {
            self.status(RunStatus::Running, "")
        } else {
            self
        }
    }
    pub(crate) fn durable(mut self) -> Self {
        self.durable = true;
        self
    }
}

/// A registered workflow as the engine runs it: given the engine and the run's slot, the
/// run's output (JSON). The registry builds these around typed workflow functions and the
/// `Ctx` they take; the engine's core only calls them, so it never names the context.
pub(crate) type WorkflowCode = Arc<
    dyn Fn(
            Arc<EngineInner>,
            Arc<RunSlot>,
            Payload,
        ) -> BoxFuture<'static, Result<Payload, WorkflowError>>
        + Send
        + Sync,
>;

/// The workflows an engine knows, by name and version (implemented by `registry::Registry`).
pub(crate) trait Workflows: Send + Sync {
    /// Names of the registered workflows ("name@version").
    fn names(&self) -> Vec<String>;
    /// The code of `name` at `version`.
    fn get(&self, name: &str, version: u32) -> Option<WorkflowCode>;
    /// Whether `input` decodes into the input type of `name` at `version` (`Err` says why
    /// not, naming the type), or `None` if no such workflow is registered.
    fn check_input(
        &self,
        name: &str,
        version: u32,
        input: &Payload,
    ) -> Option<std::result::Result<(), (&'static str, String)>>;
    /// The output type `name` was registered with at `version`, for error hints.
    fn output_type(&self, name: &str, version: u32) -> Option<&'static str>;
    /// The newest registered version of `name`.
    fn latest(&self, name: &str) -> Option<u32>;
}

pub(crate) struct EngineInner {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) registry: Arc<dyn Workflows>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: EngineConfig,
    pub(crate) slots: Mutex<HashMap<RunId, Arc<RunSlot>>>,
    /// Bumped whenever a run settles (ends, blocks, escalates, parks).
    pub(crate) settled: watch::Sender<u64>,
    /// Per-run settle notifications, for runs someone awaits (`RunHandle::result`).
    pub(crate) run_waiters: Mutex<HashMap<RunId, watch::Sender<Settled>>>,
    /// Wakes the timer service when a new wake-up time was registered.
    pub(crate) timers_changed: Notify,
    /// The timer service's last scan left due entries it did not wake (a full batch, or runs
    /// that were in memory): every settling run must then wake it, ended ones included.
    pub(crate) timers_left_due: std::sync::atomic::AtomicBool,
    pub(crate) drifts: Mutex<HashMap<RunId, DriftError>>,
    pub(crate) tasks: Mutex<HashMap<RunId, tokio::task::AbortHandle>>,
    /// Tasks of this engine still alive (drivers, the timer service, wake-ups), so shutdown
    /// can wait until none holds the store any more.
    pub(crate) live_tasks: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) shut_down: std::sync::atomic::AtomicBool,
    pub(crate) observer: Option<super::AttemptObserver>,
    /// Set when the store failed under a run: no run is woken again until the store is
    /// reopened, since every write would fail the same way.
    pub(crate) store_failure: Mutex<Option<String>>,
    /// Reliability policy: run ceilings and per-tool rules.
    pub(crate) policy: crate::policy::Policy,
    /// Circuit breakers by tool, shared by all runs.
    pub(crate) breakers: Mutex<HashMap<String, crate::breaker::Breaker>>,
    /// Results of replay-only runs.
    pub(crate) replayed: Mutex<HashMap<RunId, std::result::Result<(), DriftError>>>,
}

impl EngineInner {
    /// Spawns a task of this engine, counted in `live_tasks` until it ends or is aborted.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        struct Alive(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.live_tasks
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let alive = Alive(Arc::clone(&self.live_tasks));
        tokio::spawn(async move {
            let _alive = alive;
            task.await;
        })
    }

    pub(crate) fn slot(&self, run: RunId) -> Arc<RunSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            slots
                .entry(run)
                .or_insert_with(|| Arc::new(RunSlot::new(run))),
        )
    }

    pub(crate) fn is_active(&self, run: RunId) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(&run).is_some_and(|s| s.state().driver_running)
    }

    /// Locks the writer of a live slot for `run`, loading it from the store if needed. Slots
    /// evicted while we waited for the lock are skipped; a fresh one is made.
    pub(crate) async fn lock_run(
        &self,
        run: RunId,
    ) -> Result<(Arc<RunSlot>, tokio::sync::OwnedMutexGuard<Writer>)> {
        loop {
            let slot = self.slot(run);
            let mut guard = Arc::clone(&slot.writer).lock_owned().await;
            if guard.evicted {
                continue;
            }
            if !guard.loaded {
                // On a shared store the run must be this process's before it is read: what
                // another worker executes is not loaded here (acts on it are forwarded).
                if let Err(e) = self.store.claim(run).await {
                    guard.evicted = true;
                    self.remove_slot(&slot);
                    return Err(e.into());
                }
                if let Err(e) = self.load(&slot, &mut guard).await {
                    guard.evicted = true;
                    self.remove_slot(&slot);
                    if is_unreadable(&e) {
                        self.block_unreadable(run, &e).await;
                    }
                    self.store.release(run);
                    return Err(e);
                }
            }
            return Ok((slot, guard));
        }
    }

    async fn load(&self, slot: &RunSlot, writer: &mut Writer) -> Result<()> {
        let run = slot.run;
        let meta = self.store.meta(run).await?.ok_or(Error::UnknownRun(run))?;
        // Start from the run's checkpoint when it has a usable one, then fold the rest: each
        // record decoded straight from the store's buffer; the first problem stops the walk.
        let mut replay = self
            .usable_checkpoint(run, meta.next_seq)
            .await
            .unwrap_or_default();
        let checkpoint_seq = replay.next_seq();
        let mut failed: Option<Error> = None;
        self.store
            .read_each(run, checkpoint_seq, &mut |seq, payload| {
                let folded = codec::decode_event(payload)
                    .map_err(|reason| Error::Codec { run, seq, reason })
                    .and_then(|event| {
                        replay.apply_owned(event).map_err(|c| Error::Inconsistent {
                            run,
                            seq: c.seq,
                            reason: c.reason,
                        })
                    });
                match folded {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        if replay.next_seq() != meta.next_seq {
            return Err(Error::Inconsistent {
                run,
                seq: replay.next_seq(),
                reason: format!("metadata says the log ends at seq {}", meta.next_seq),
            });
        }
        let mut state = slot.state();
        state.replay = replay;
        state.checkpoint_seq = checkpoint_seq;
        writer.meta = Some(meta);
        writer.loaded = true;
        Ok(())
    }

    /// The run's checkpoint, if it decodes and the log still holds the event it ends with.
    /// A checkpoint is only ever a shortcut: anything wrong with it means folding the whole
    /// log instead, which reports real damage where it is.
    async fn usable_checkpoint(&self, run: RunId, log_end: u64) -> Option<ReplayState> {
        let bytes = match self.store.checkpoint(run).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%run, %error, "checkpoint unreadable; folding the whole log");
                return None;
            }
        };
        let state = match codec::decode_checkpoint(&bytes) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%run, %error, "checkpoint undecodable; folding the whole log");
                return None;
            }
        };
        let covered = state.next_seq();
        let last = covered.checked_sub(1)?;
        let present = matches!(
            self.store.read(run, last, 1).await.as_deref(),
            Ok([record]) if record.seq == last
        );
        if covered > log_end || !present {
            tracing::warn!(%run, covered, log_end, "checkpoint ahead of the log; folding the whole log");
            return None;
        }
        Some(state)
    }

    /// Makes a run this engine has just created resident without reading it back: the
    /// first event and the metadata are the ones it wrote.
    pub(crate) async fn adopt_created(&self, run: RunId, first: Event, mut meta: RunMeta) {
        let slot = self.slot(run);
        let mut writer = slot.writer.lock().await;
        if writer.loaded || writer.evicted {
            return;
        }
        let mut replay = ReplayState::default();
        if replay.apply(&first).is_err() {
            // Not a valid first event: leave the run to the normal load, which reports it.
            return;
        }
        meta.next_seq = 1;
        meta.status_seq = 1;
        let mut state = slot.state();
        state.replay = replay;
        drop(state);
        writer.meta = Some(meta);
        writer.loaded = true;
    }

    /// Appends with the writer lock held. Returns the store position (not yet durable).
    pub(crate) async fn append_locked(
        &self,
        slot: &RunSlot,
        writer: &mut Writer,
        req: AppendReq,
    ) -> Result<Position> {
        let run = slot.run;
        let meta = writer.meta.as_ref().ok_or(Error::UnknownRun(run))?;
        if !req.events.is_empty() {
            if let Some(end) = slot.state().replay.terminal() {
                let status = RunStatus::from_code(meta.status).unwrap_or(RunStatus::Failed);
                tracing::debug!(%run, ended_by = end.name(), "append refused: run ended");
                return Err(Error::RunEnded { run, status });
            }
        }
        let now_ms = self.clock.now_ms();
        let first_seq = meta.next_seq;
        let events: Vec<Event> = req
            .events
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Event {
                seq: first_seq + i as u64,
                at_ms: now_ms,
                kind,
            })
            .collect();
        // The metadata is written only when the status changes: the store knows the log's end
        // from its last event, so a step writes its events alone (and copies no metadata).
        let status_meta = req.status.map(|(status, note)| RunMeta {
            updated_ms: now_ms,
            status: status.code(),
            note,
            wake_ms: req.wake_ms,
            ..meta.clone()
        });
        let batch = AppendBatch {
            run,
            expected_next_seq: first_seq,
            events: events.iter().map(codec::encode_event).collect(),
            meta: status_meta.clone(),
            index: req.index,
        };
        let position = self.store.append(batch).await?;
        let next_seq = first_seq + events.len() as u64;
        match status_meta {
            Some(new_meta) => {
                writer.meta = Some(RunMeta {
                    next_seq,
                    status_seq: next_seq,
                    ..new_meta
                })
            }
            None => {
                if let Some(meta) = writer.meta.as_mut() {
                    meta.next_seq = next_seq;
                }
            }
        }
        writer.last_position = Some(position);
        {
            let mut state = slot.state();
            for event in events {
                state
                    .replay
                    .apply_owned(event)
                    .map_err(|c| Error::Inconsistent {
                        run,
                        seq: c.seq,
                        reason: c.reason,
                    })?;
            }
            let size = state.replay.next_seq();
            if size >= self.config.history_warn_events && !state.history_warned {
                state.history_warned = true;
                tracing::warn!(%run, events = size, "run history is large; consider ctx.continue_as_new");
            }
        }
        slot.changed.notify_waiters();
        Ok(position)
    }

    /// Locks, appends, unlocks, and waits for durability if asked: the lock is not held
    /// during the wait, so other appends join the same group commit.
    pub(crate) async fn append(&self, slot: &RunSlot, req: AppendReq) -> Result<Position> {
        let durable = req.durable;
        let position = {
            let mut writer = slot.writer.lock().await;
            if writer.evicted {
                return Err(Error::Shutdown);
            }
            self.append_locked(slot, &mut writer, req).await?
        };
        if durable {
            self.store.wait_durable(position).await?;
        }
        Ok(position)
    }

    /// Refuses an operation for what the run's state says (already decided, ended, not
    /// escalated), once that state is durable: a caller told "already decided" must not find
    /// the gate open again after a crash took back the decision it was refused for. The
    /// state may come from this slot's appends or from a fresh load of the store's (a run
    /// evicted right after its end), so the wait covers every append applied so far.
    pub(crate) async fn refuse<T>(
        &self,
        writer: tokio::sync::OwnedMutexGuard<Writer>,
        error: Error,
    ) -> Result<T> {
        drop(writer);
        self.store.wait_applied_durable().await?;
        Err(error)
    }

    /// Makes everything this run appended so far durable, and on a shared store confirms
    /// that this process still holds the run: what follows is an effect.
    pub(crate) async fn barrier(&self, slot: &RunSlot) -> Result<()> {
        let last = slot.writer.lock().await.last_position;
        if let Some(position) = last {
            self.store.wait_durable(position).await?;
        }
        if self.store.shared() {
            self.store.check_lease(slot.run).await?;
        }
        Ok(())
    }

    pub(crate) fn remove_slot(&self, slot: &Arc<RunSlot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.get(&slot.run).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.run);
            shrink_when_sparse(&mut slots);
        }
    }

    /// Drops a run from memory. The caller holds its writer lock.
    pub(crate) fn evict(&self, slot: &Arc<RunSlot>, writer: &mut Writer) {
        writer.evicted = true;
        slot.state().driver_running = false;
        self.remove_slot(slot);
        // Not in memory, not executed here: on a shared store any worker may take it.
        self.store.release(slot.run);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.remove(&slot.run);
        shrink_when_sparse(&mut tasks);
        drop(tasks);
        slot.changed.notify_waiters();
    }

    /// Asks the tool's breaker (if it has one) whether a call may go out now.
    pub(crate) fn admit(&self, tool: &str, now_ms: u64) -> crate::breaker::Admission {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .get_mut(tool)
            .map_or(crate::breaker::Admission::Allowed, |b| b.admit(now_ms))
    }

    /// Tells the tool's breaker (if any) how a call went.
    pub(crate) fn record_call(&self, tool: &str, success: bool, counts: bool, now_ms: u64) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(breaker) = breakers.get_mut(tool) {
            let before = breaker.state();
            breaker.record(success, counts, now_ms);
            if before != breaker.state() {
                tracing::info!(tool, from = ?before, to = ?breaker.state(), "circuit breaker changed state");
            }
        }
    }

    /// Whether a store error means this process lost the run (its lease, or the knowledge of
    /// whether its last write landed) rather than that the store failed: the run is then
    /// dropped and resumed from the store, and the engine goes on. On a shared store an
    /// append that finds the log moved on (a conflict) means another worker wrote it.
    pub(crate) fn loses_run(&self, error: &Error) -> bool {
        match error {
            Error::Storage(e) if e.drops_run() => true,
            Error::Storage(annal_storage::Error::Conflict { .. }) => self.store.shared(),
            _ => false,
        }
    }

    pub(crate) fn store_failed(&self) -> Option<String> {
        self.store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Something about every run may have changed (shutdown): wake every waiter.
    pub(crate) fn notify_settled(&self) {
        self.settled.send_modify(|n| *n += 1);
        for waiters in self
            .run_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            // Notifies even though nothing changed.
            waiters.send_modify(|_| ());
        }
    }

    /// `run` settled (ended, blocked, escalated, parked): wake only those waiting for it, so
    /// a thousand runs ending do not wake a thousand waiters each.
    pub(crate) fn notify_run_settled(&self, run: RunId) {
        self.notify_run(run, None);
    }

    /// `run` ended with `terminal`, durable: its waiters take the outcome from here instead of
    /// reading the run's metadata and last record back from the store.
    pub(crate) fn notify_run_ended(&self, run: RunId, terminal: EventKind) {
        self.notify_run(run, Some(terminal));
    }

    fn notify_run(&self, run: RunId, terminal: Option<EventKind>) {
        self.settled.send_modify(|n| *n += 1);
        if let Some(waiters) = self
            .run_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
        {
            waiters.send_modify(|s| {
                if let Some(terminal) = terminal {
                    s.terminal = Some(Arc::new(terminal));
                }
            });
        }
    }

    /// Subscribes to `run`'s settle notifications.
    pub(crate) fn watch_run(&self, run: RunId) -> watch::Receiver<Settled> {
        let mut waiters = self.run_waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters
            .entry(run)
            .or_insert_with(|| watch::channel(Settled::default()).0)
            .subscribe()
    }

    /// Forgets `run`'s watcher once nobody waits for it any more.
    pub(crate) fn unwatch_run(&self, run: RunId) {
        let mut waiters = self.run_waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters.get(&run).is_some_and(|w| w.receiver_count() == 0) {
            waiters.remove(&run);
            shrink_when_sparse(&mut waiters);
        }
    }

    /// Current metadata of a run, from the store.
    pub(crate) async fn meta(&self, run: RunId) -> Result<RunMeta> {
        self.store.meta(run).await?.ok_or(Error::UnknownRun(run))
    }
}

/// What a run's waiters see; every settle (and shutdown) notifies them, changed or not.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// The run's terminal event, once it ended in this engine and that was durable.
    pub(crate) terminal: Option<Arc<EventKind>>,
}

/// Gives back a per-run map's memory once most of it is empty: a burst of ten thousand
/// runs that then park must not leave ten thousand buckets behind.
fn shrink_when_sparse<V>(map: &mut HashMap<RunId, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Whether `e` says a run's log cannot be decoded or contradicts itself: the run is reported
/// (or left alone), never retried.
pub(crate) fn is_unreadable(e: &crate::Error) -> bool {
    matches!(
        e,
        crate::Error::Codec { .. }
            | crate::Error::Inconsistent { .. }
            | crate::Error::Storage(
                annal_storage::Error::Corrupt { .. } | annal_storage::Error::CorruptIndex { .. }
            )
    )
}
