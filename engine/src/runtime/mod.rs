//! The engine: registry, run drivers, the timer service, recovery and the public API.
//!
//! Submodules, leaves first (no two import each other; `tests/layering` checks it):
//!
//! - `registry`: workflows by (name, version);
//! - `slot`: one run in memory, its history and the writer lock of its log;
//! - `inner`: loading and appending through a slot;
//! - `context`: `Ctx`, what a workflow body calls (timers, signals, values, approvals);
//! - `step`: `StepBuilder`, a step's attempts, retries, budgets, breakers and fallbacks;
//! - `driver`: replaying a workflow and settling the run when it returns or halts;
//! - `timer`: waking parked runs when their due time comes;
//! - `sweep`: resuming runs whose history holds what they wait for (a lost wake-up);
//! - `tree_head`: signed checkpoints of every run's head, on demand and at intervals.
//! - `decisions`: what reviewers see and send (pending approvals, decision requests);
//! - `acts`: acts from outside, carried out here or forwarded to the run's worker;
//! - `operator`: deciding approvals, the inbox, operator actions on escalated runs.

mod acts;
pub(crate) mod context;
mod decisions;
mod driver;
pub(crate) mod inner;
mod operator;
mod registry;
pub(crate) mod slot;
pub(crate) mod step;
mod sweep;
mod timer;
mod tree_head;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use annal_storage::{Durability, IndexOp, LogStore, RunId, SledConfig, SledStore};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

pub use self::decisions::{ApprovalFilter, DecideRequest, Decided, PastDecision, PendingApproval};
pub(crate) use self::driver::timer_deletes;
use self::inner::{EngineInner, Settled, Workflows};
use self::registry::Registry;
pub use self::tree_head::{current_leaves, write_tree_head, WrittenTreeHead};
use crate::clock::{Clock, TokioClock};
use crate::error::{Error, Result, WorkflowError};
use crate::event::{Event, EventKind, Payload};
use crate::runtime::context::Ctx;
use crate::status::RunStatus;

/// Tunables of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A run whose every pending call has waited this long is dropped from memory (parked)
    /// and rehydrated by replay when woken.
    pub park_after_ms: u64,
    /// Log a warning once a run's history reaches this many events.
    pub history_warn_events: u64,
    /// Longest the timer service sleeps without looking at the due-time index.
    pub timer_poll_ms: u64,
    /// How often the engine sweeps its waiting runs for one whose history already holds
    /// what it waits for (a decision, a signal, an operator action, a due time), and
    /// `Running` runs no driver holds, and resumes them. Every event from outside wakes its
    /// run in the same append, so the sweep finds nothing unless something else went wrong;
    /// it also runs at open. `u64::MAX` sweeps only at open.
    pub sweep_ms: u64,
    /// On a store several engines share: how often `RunHandle::result` looks at a run that
    /// another engine may be driving (nothing here is told when it ends).
    pub result_poll_ms: u64,
    /// Replay histories without executing anything live or writing (see
    /// `testing::Replayer`): a run stops where its history ends.
    pub replay_only: bool,
    /// A run that parks writes a checkpoint of its fold (with the parking append) once it has
    /// folded this many events since its last one, so that waking it reads one checkpoint and
    /// the events after it instead of its whole history. `u64::MAX` turns checkpoints off.
    pub checkpoint_after_events: u64,
    /// Record decisions, signals and operator actions without running any workflow: no
    /// recovery, no timer service, no drivers. A run woken by such an act is marked
    /// `Running`, so the service resumes it when it next opens the store. For tools (the
    /// `annal` CLI) that work on a database without the service's workflow code.
    pub operator_only: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            park_after_ms: 30_000,
            history_warn_events: 10_000,
            checkpoint_after_events: 1_000,
            timer_poll_ms: 60_000,
            sweep_ms: 60_000,
            result_poll_ms: 100,
            replay_only: false,
            operator_only: false,
        }
    }
}

/// Builds an [`Engine`]: where its log lives, how durable it is, which workflows it runs.
#[derive(Clone)]
pub struct EngineBuilder {
    path: Option<PathBuf>,
    store: Option<Arc<dyn LogStore>>,
    durability: Durability,
    cache_capacity_bytes: Option<u64>,
    clock: Option<Arc<dyn Clock>>,
    registry: Registry,
    config: EngineConfig,
    observer: Option<AttemptObserver>,
    policy: crate::policy::Policy,
    breakers: HashMap<String, crate::breaker::BreakerConfig>,
    /// Sign and store a tree head this often, with this key (`tree_heads`).
    tree_heads: Option<(crate::audit::transparency::SigningKey, u64)>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut workflows = self.registry.names();
        workflows.sort_unstable();
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field("custom_store", &self.store.is_some())
            .field("durability", &self.durability)
            .field("workflows", &workflows)
            .field("config", &self.config)
            .field("policy", &self.policy)
            .field("breakers", &self.breakers)
            .field("tree_heads", &self.tree_heads)
            .finish_non_exhaustive()
    }
}

/// Called right before every live attempt of a step body, with what is about to run. Meant
/// for harnesses that check that nothing ran twice; keep it cheap.
pub type AttemptObserver = Arc<dyn Fn(&ObservedAttempt) + Send + Sync>;

/// What an [`AttemptObserver`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAttempt {
    /// The run.
    pub run: RunId,
    /// Command position of the step.
    pub position: u32,
    /// Step name.
    pub step: String,
    /// Step class.
    pub class: crate::StepClass,
    /// Attempt number.
    pub attempt: u32,
    /// The step's idempotency key.
    pub idempotency_key: String,
}

impl EngineBuilder {
    /// The reliability policy: run ceilings and per-tool rules (retries, timeouts, backoff,
    /// on-exhaust, breakers). Often loaded with [`crate::Policy::load`].
    pub fn policy(mut self, policy: crate::policy::Policy) -> Self {
        for (tool, rule) in &policy.tools {
            if let Some(config) = rule.breaker {
                self.breakers.insert(tool.clone(), config);
            }
        }
        self.policy = policy;
        self
    }

    /// A circuit breaker for `tool`, shared by all runs of the engine.
    pub fn breaker(mut self, tool: &str, config: crate::breaker::BreakerConfig) -> Self {
        self.breakers.insert(tool.to_string(), config);
        self
    }

    /// Observe every live attempt (see [`AttemptObserver`]).
    pub fn observe_attempts(mut self, observer: AttemptObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Keep the log in an embedded sled database in this directory (the default is
    /// `./annal-data`).
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Use this store instead of an embedded sled database (e.g. [`annal_storage::SimStore`]
    /// in tests).
    pub fn store(mut self, store: Arc<dyn LogStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Durability of the embedded sled store (default `PowerSafe`).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// sled page cache size of the embedded store.
    pub fn cache_capacity_bytes(mut self, bytes: u64) -> Self {
        self.cache_capacity_bytes = Some(bytes);
        self
    }

    /// The clock (default: [`TokioClock`], which follows tokio's paused time in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Engine tunables.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Open for operator acts only (see [`EngineConfig::operator_only`]).
    pub fn operator_only(mut self) -> Self {
        self.config.operator_only = true;
        self
    }

    /// Shorthand for `config.park_after_ms`.
    pub fn park_after_ms(mut self, ms: u64) -> Self {
        self.config.park_after_ms = ms;
        self
    }

    /// How many events a parking run must have folded since its last checkpoint to write a new
    /// one (default 1,000; `u64::MAX` never). See [`EngineConfig::checkpoint_after_events`].
    pub fn checkpoint_after_events(mut self, events: u64) -> Self {
        self.config.checkpoint_after_events = events;
        self
    }

    /// Every `every_ms`, if the history changed since the last tree head, compute every run's
    /// head, sign a checkpoint of them with `key` (its name as the origin) and store it with
    /// its leaf list (`Engine::write_tree_head` does one on demand). A separate task, so a
    /// large store does not delay timers. On a store several engines share, configure it on
    /// one of them.
    pub fn tree_heads(
        mut self,
        key: crate::audit::transparency::SigningKey,
        every_ms: u64,
    ) -> Self {
        self.tree_heads = Some((key, every_ms.max(1)));
        self
    }

    /// Registers `workflow` under `name` and `version`. Several versions of one name may be
    /// registered; new runs start on the highest, and every run replays on the version it
    /// started with.
    pub fn register<F, Fut, In, Out>(mut self, name: &str, version: u32, workflow: F) -> Self
    where
        F: Fn(Ctx, In) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Out, WorkflowError>> + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
    {
        self.registry.register(name, version, workflow);
        self
    }

    /// Registers a typed [`Workflow`](crate::Workflow) under its `NAME` and `VERSION`; start
    /// it with [`Engine::start_workflow`], which the compiler checks against its input and
    /// output types.
    pub fn workflow<W: crate::Workflow>(self, workflow: W) -> Self {
        let workflow = Arc::new(workflow);
        self.register(W::NAME, W::VERSION, move |ctx, input: W::Input| {
            let workflow = Arc::clone(&workflow);
            async move { workflow.run(ctx, input).await }
        })
    }

    /// Opens the store and resumes every run that was in flight: `Running` runs and
    /// `Blocked` ones (the code may match now) are replayed; parked runs wait for their
    /// wake-up. Must be called inside a tokio runtime.
    pub async fn open(self) -> Result<Engine> {
        let store: Arc<dyn LogStore> = match self.store {
            Some(store) => store,
            None => {
                let path = self.path.unwrap_or_else(|| PathBuf::from("annal-data"));
                let mut config = SledConfig::new(path);
                config.durability = self.durability;
                if let Some(bytes) = self.cache_capacity_bytes {
                    config.cache_capacity_bytes = bytes;
                }
                Arc::new(SledStore::open(config)?)
            }
        };
        let (settled, _) = watch::channel(0);
        let inner = Arc::new(EngineInner {
            store,
            registry: Arc::new(self.registry),
            clock: self.clock.unwrap_or_else(|| Arc::new(TokioClock::new())),
            config: self.config,
            slots: Mutex::new(HashMap::new()),
            settled,
            run_waiters: Mutex::new(HashMap::new()),
            timers_changed: Notify::new(),
            timers_left_due: false.into(),
            drifts: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            live_tasks: Arc::default(),
            shut_down: false.into(),
            observer: self.observer,
            store_failure: Mutex::new(None),
            policy: self.policy,
            breakers: Mutex::new(
                self.breakers
                    .into_iter()
                    .map(|(t, c)| (t, crate::breaker::Breaker::new(c)))
                    .collect(),
            ),
            replayed: Mutex::new(HashMap::new()),
        });
        let operator_only = inner.config.operator_only;
        let mut services = Vec::new();
        if !operator_only {
            services.push(
                inner
                    .spawn(Arc::clone(&inner).timer_service())
                    .abort_handle(),
            );
            if let Some((key, every_ms)) = self.tree_heads {
                services.push(
                    inner
                        .spawn(Arc::clone(&inner).tree_head_service(key, every_ms))
                        .abort_handle(),
                );
            }
            // On a shared store: runs to take over and requests from other workers.
            if let Some(hints) = inner.store.hints() {
                services.push(
                    inner
                        .spawn(Arc::clone(&inner).hint_service(hints))
                        .abort_handle(),
                );
            }
        }
        let last = Arc::new(LastHandle {
            inner: Arc::clone(&inner),
            services: services.clone(),
        });
        let engine = Engine {
            inner,
            services,
            _last: last,
        };
        if !operator_only {
            engine.recover().await?;
        }
        Ok(engine)
    }
}

/// How to start a run.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Version to start on (default: the highest registered).
    pub version: Option<u32>,
    /// Start-dedupe key: a second start with the same key returns the first run instead of
    /// creating another.
    pub dedupe_key: Option<String>,
    /// Owner recorded in the run (a service, a team, a user).
    pub owner: Option<String>,
}

/// Status and metadata of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// The run.
    pub run: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Pinned version.
    pub version: u32,
    /// Status.
    pub status: RunStatus,
    /// Why it is in this status (blocked, escalated), if there is a reason.
    pub note: String,
    /// Created at (ms since the Unix epoch).
    pub created_ms: u64,
    /// Its last status change (ms since the Unix epoch): the metadata is not rewritten by
    /// appends that keep the status.
    pub updated_ms: u64,
    /// Events in its history.
    pub events: u64,
}

/// An embedded durable workflow engine. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
    /// The timer service and, on a shared store, the hint service.
    services: Vec<tokio::task::AbortHandle>,
    _last: Arc<LastHandle>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No locks taken here: a Debug impl must not wait on the engine it describes.
        f.debug_struct("Engine")
            .field("durability", &self.inner.store.durability())
            .finish_non_exhaustive()
    }
}

/// Shared by all clones of one `Engine`: when the last clone is dropped without
/// `shutdown`, the engine's tasks are aborted, so they stop holding the store.
struct LastHandle {
    inner: Arc<EngineInner>,
    services: Vec<tokio::task::AbortHandle>,
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.inner.shut_down.store(true, Ordering::Release);
        for service in &self.services {
            service.abort();
        }
        for (_, task) in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
        // Wake result() waiters so they see the engine is gone.
        self.inner.notify_settled();
    }
}

impl Engine {
    /// A builder with defaults: sled in `./annal-data`, `PowerSafe`.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            path: None,
            store: None,
            durability: Durability::PowerSafe,
            cache_capacity_bytes: None,
            clock: None,
            registry: Registry::default(),
            config: EngineConfig::default(),
            observer: None,
            policy: crate::policy::Policy::default(),
            breakers: HashMap::new(),
            tree_heads: None,
        }
    }

    async fn recover(&self) -> Result<()> {
        for status in [RunStatus::Running, RunStatus::Blocked] {
            for run in self.inner.store.runs_with_status(status.code()).await? {
                match self.inner.wake(run).await {
                    Ok(()) => {}
                    // Another worker executes it (a shared store).
                    Err(e) if self.inner.loses_run(&e) => {}
                    Err(e) => tracing::error!(%run, error = %e, "run could not be resumed"),
                }
            }
        }
        // Runs that wait stay on disk, but each is checked now: a torn or damaged last record
        // (a crash in the middle of a write) is found at open, not when a decision arrives,
        // and a run whose history already holds what it waits for is resumed.
        self.inner.sweep(false).await
    }

    /// Starts a run of a typed [`Workflow`](crate::Workflow) (registered with
    /// [`EngineBuilder::workflow`]): its input and its handle's output are checked by the
    /// compiler. Starts the highest registered version of `W::NAME`.
    pub async fn start_workflow<W: crate::Workflow>(
        &self,
        input: &W::Input,
    ) -> Result<RunHandle<W::Output>> {
        self.start_with(W::NAME, input, StartOptions::default())
            .await
    }

    /// [`Engine::start_workflow`] with options (version, dedupe key, owner).
    pub async fn start_workflow_with<W: crate::Workflow>(
        &self,
        input: &W::Input,
        options: StartOptions,
    ) -> Result<RunHandle<W::Output>> {
        self.start_with(W::NAME, input, options).await
    }

    /// Starts a run of the highest registered version of `workflow`. The input must decode
    /// into the type the workflow was registered with: otherwise [`Error::InputType`] and no
    /// run is written. The output type `Out` is checked when the handle decodes the result
    /// ([`Error::OutputType`]); [`Engine::start_workflow`] checks both at compile time.
    pub async fn start<In: Serialize, Out: DeserializeOwned>(
        &self,
        workflow: &str,
        input: &In,
    ) -> Result<RunHandle<Out>> {
        self.start_with(workflow, input, StartOptions::default())
            .await
    }

    /// Starts a run with options. Returns once the start is durable. With a dedupe key
    /// already used, returns a handle to the existing run and starts nothing, once that run's
    /// start is durable.
    pub async fn start_with<In: Serialize, Out: DeserializeOwned>(
        &self,
        workflow: &str,
        input: &In,
        options: StartOptions,
    ) -> Result<RunHandle<Out>> {
        let inner = &self.inner;
        let version = match options.version {
            Some(v) if inner.registry.get(workflow, v).is_some() => v,
            Some(v) => {
                return Err(Error::UnknownWorkflow {
                    name: workflow.into(),
                    version: Some(v),
                })
            }
            None => inner
                .registry
                .latest(workflow)
                .ok_or_else(|| Error::UnknownWorkflow {
                    name: workflow.into(),
                    version: None,
                })?,
        };
        if let Some(key) = &options.dedupe_key {
            if let Some(existing) = inner.store.dedupe(key.as_bytes()).await? {
                return Ok(self.handle(existing));
            }
        }
        let input = Payload::encode(input).map_err(|e| Error::Payload(e.to_string()))?;
        // A wrong input type would leave the run Blocked for good: refuse it, writing nothing.
        if let Some(Err((expected, reason))) = inner.registry.check_input(workflow, version, &input)
        {
            return Err(Error::InputType {
                workflow: workflow.to_string(),
                version,
                expected,
                reason,
            });
        }
        let run = RunId(*uuid::Uuid::now_v7().as_bytes());
        let index: Vec<IndexOp> = options
            .dedupe_key
            .iter()
            .map(|k| IndexOp::ClaimDedupe {
                key: k.as_bytes().to_vec(),
            })
            .collect();
        let started = EventKind::RunStarted {
            workflow: workflow.to_string(),
            version,
            input,
            dedupe_key: options.dedupe_key.clone(),
            owner: options.owner,
            continued_from: None,
            policy_version: inner.policy.version.clone(),
        };
        match inner.create_run(run, started, index).await {
            Ok(()) => crate::telemetry::run_started(run, workflow, version),
            Err(Error::Storage(annal_storage::Error::DedupeTaken { existing })) => {
                // Claimed by a start still in flight: its handle is handed out once that start
                // is durable, as this one's would have been.
                let key = options.dedupe_key.as_deref().unwrap_or_default();
                let holder = inner.store.dedupe(key.as_bytes()).await?;
                return Ok(self.handle(holder.unwrap_or(existing)));
            }
            Err(e) => return Err(e),
        }
        inner.wake(run).await?;
        Ok(self.handle(run))
    }

    /// A typed handle to an existing run.
    pub fn handle<Out: DeserializeOwned>(&self, run: RunId) -> RunHandle<Out> {
        RunHandle {
            inner: Arc::clone(&self.inner),
            run,
            _out: PhantomData,
        }
    }

    /// Status and metadata of a run, as the store holds them now: like [`Engine::history`],
    /// this includes the latest appends, which may still be on their way to disk.
    pub async fn status(&self, run: RunId) -> Result<RunInfo> {
        let meta = self.inner.meta(run).await?;
        Ok(info(run, meta))
    }

    /// Every run the store holds.
    pub async fn runs(&self) -> Result<Vec<RunInfo>> {
        Ok(self
            .inner
            .store
            .runs()
            .await?
            .into_iter()
            .map(|(run, meta)| info(run, meta))
            .collect())
    }

    /// The recorded history of a run, up to its latest append. The last events may not be
    /// durable yet (they are within one group commit); a crash then loses them, and the
    /// resumed run redoes what they recorded (no effect runs before the history that led to it
    /// is durable).
    pub async fn history(&self, run: RunId) -> Result<Vec<Event>> {
        read_history(self.inner.store.as_ref(), run).await
    }

    /// The drift that blocked a run, if this engine saw it.
    pub fn drift(&self, run: RunId) -> Option<crate::DriftError> {
        self.inner
            .drifts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .cloned()
    }

    /// Sends a signal to a run. Returns once it is durable; a parked run is woken for it. A
    /// run that ended refuses it with [`Error::RunEnded`], once its end is durable.
    pub async fn signal<T: Serialize>(&self, run: RunId, name: &str, payload: &T) -> Result<()> {
        let payload = Payload::encode(payload).map_err(|e| Error::Payload(e.to_string()))?;
        self.act(acts::Act::Signal {
            run,
            name: name.to_string(),
            payload,
        })
        .await
        .map(drop)
    }

    /// Asks a run to cancel. The workflow sees `Cancelled` at its next call (or in the wait it
    /// is in) and may clean up before it returns. Returns once the request is durable.
    pub async fn cancel(&self, run: RunId, actor: &str, reason: &str) -> Result<()> {
        self.act(acts::Act::Cancel {
            run,
            actor: actor.into(),
            reason: reason.into(),
        })
        .await
        .map(drop)
    }

    /// Stops a run at once, without running any more of its code.
    pub async fn terminate(&self, run: RunId, actor: &str, reason: &str) -> Result<()> {
        self.act(acts::Act::Terminate {
            run,
            actor: actor.into(),
            reason: reason.into(),
        })
        .await?;
        let workflow = self.inner.meta(run).await.map(|m| m.workflow);
        crate::telemetry::run_ended(run, &workflow.unwrap_or_default(), RunStatus::Terminated);
        Ok(())
    }

    /// Stops every run driver and the timer service and waits until they are gone. Runs stay
    /// as their logs say and resume when an engine opens the store again (on a shared store,
    /// the leases this engine held are given up, so other workers take its runs at once). The store closes
    /// when the last `Engine` clone and `RunHandle` is dropped.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        for service in &self.services {
            service.abort();
        }
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, task) in &tasks {
            task.abort();
        }
        // Wait until every task of this engine is gone, so that once the caller drops its
        // Engine clones and handles, nothing holds the store and it can be reopened.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.inner.live_tasks.load(Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            for task in self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
            {
                task.1.abort();
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // On a shared store the runs this engine held can be taken at once, not only once
        // its leases expire (a rolling deploy).
        if let Err(e) = self.inner.store.release_all().await {
            tracing::warn!(error = %e, "leases not given up; they expire instead");
        }
        self.inner.notify_settled();
    }

    /// Replay-only result of a run, once its replay ended (see `testing::Replayer`).
    #[cfg(feature = "testing")]
    pub(crate) fn replayed(
        &self,
        run: RunId,
    ) -> Option<std::result::Result<(), crate::DriftError>> {
        self.inner
            .replayed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .cloned()
    }

    /// Waits until something settles (a run ends, blocks, parks or escalates).
    #[cfg(feature = "testing")]
    pub(crate) async fn settled(&self) {
        let mut rx = self.inner.settled.subscribe();
        let _ = rx.changed().await;
    }

    /// How many runs are held in memory right now (running, or being loaded). Parked runs are
    /// not: they cost only their index entries until woken.
    pub fn runs_in_memory(&self) -> usize {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// State of a tool's circuit breaker and how often it opened, if it has one.
    pub fn breaker_state(&self, tool: &str) -> Option<(crate::breaker::BreakerState, u64)> {
        let breakers = self
            .inner
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        breakers.get(tool).map(|b| (b.state(), b.times_opened()))
    }

    /// Computes every run's head now, signs a checkpoint of them with `key` (its name as the
    /// origin, the engine's clock as its time) and stores it with its leaf list; returns it
    /// once durable. The signed note (`WrittenTreeHead::head.note`) is what an auditor keeps.
    pub async fn write_tree_head(
        &self,
        key: &crate::audit::transparency::SigningKey,
    ) -> Result<WrittenTreeHead> {
        let time_ms = self.inner.clock.now_ms();
        write_tree_head(self.inner.store.as_ref(), key, key.name(), time_ms).await
    }

    /// The underlying store (for tools and tests).
    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.inner.store
    }
}

fn info(run: RunId, meta: annal_storage::RunMeta) -> RunInfo {
    RunInfo {
        run,
        status: RunStatus::from_code(meta.status).unwrap_or(RunStatus::Blocked),
        workflow: meta.workflow,
        version: meta.version,
        note: meta.note,
        created_ms: meta.created_ms,
        updated_ms: meta.updated_ms,
        events: meta.next_seq,
    }
}

/// Reads and decodes a run's whole history.
pub async fn read_history(store: &dyn LogStore, run: RunId) -> Result<Vec<Event>> {
    annal_storage::read_all(store, run)
        .await?
        .into_iter()
        .map(|r| {
            crate::codec::decode_event(&r.payload).map_err(|reason| Error::Codec {
                run,
                seq: r.seq,
                reason,
            })
        })
        .collect()
}

/// The result a run's terminal event gives its waiters; `None` if `kind` is not terminal.
fn ended<Out: DeserializeOwned>(run: RunId, kind: &EventKind) -> Option<Result<Step<Out>>> {
    Some(match kind {
        EventKind::RunCompleted { output } => {
            output
                .decode()
                .map(Step::Done)
                .map_err(|e| Error::OutputType {
                    run,
                    workflow: String::new(),
                    requested: std::any::type_name::<Out>(),
                    registered: None,
                    reason: e.to_string(),
                })
        }
        EventKind::RunFailed { error } => Err(Error::WorkflowFailed {
            run,
            error: error.clone(),
        }),
        EventKind::RunCancelled { reason } => Err(Error::Cancelled {
            run,
            reason: reason.clone(),
        }),
        EventKind::RunTerminated { actor, reason } => Err(Error::Terminated {
            run,
            actor: actor.clone(),
            reason: reason.clone(),
        }),
        EventKind::ContinuedAsNew { next_run, .. } => Ok(Step::Next(RunId(*next_run))),
        _ => return None,
    })
}

/// Where waiting for a run's result got to.
enum Step<Out> {
    /// The run's output.
    Done(Out),
    /// The run continued as this one.
    Next(RunId),
}

/// A typed handle to a run: its id and its eventual result.
pub struct RunHandle<Out> {
    inner: Arc<EngineInner>,
    run: RunId,
    _out: PhantomData<fn() -> Out>,
}

impl<Out> std::fmt::Debug for RunHandle<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle").field("run", &self.run).finish()
    }
}

impl<Out> Clone for RunHandle<Out> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            run: self.run,
            _out: PhantomData,
        }
    }
}

impl<Out: DeserializeOwned> RunHandle<Out> {
    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.run
    }

    /// Waits until the run ends (following `continue_as_new` to its successor) and returns
    /// its output, once its end is durable. A run that blocks or escalates returns that as an
    /// error at once; call again after it was resolved. If the store failed (a full disk, a
    /// failed fsync), returns [`annal_storage::Error::Poisoned`]: reopen the engine to go on.
    pub async fn result(&self) -> Result<Out> {
        let mut run = self.run;
        let result = loop {
            let mut settled = self.inner.watch_run(run);
            match self.wait_settled(run, &mut settled).await {
                Ok(Step::Done(out)) => break Ok(out),
                Ok(Step::Next(next)) => {
                    drop(settled);
                    self.inner.unwatch_run(run);
                    run = next;
                }
                Err(e) => break Err(e),
            }
        };
        self.inner.unwatch_run(run);
        match result {
            Err(Error::OutputType {
                run,
                requested,
                reason,
                ..
            }) => Err(self.output_type_error(run, requested, reason).await),
            other => other,
        }
    }

    /// A wrong output type, with the workflow and the output type it is registered with.
    async fn output_type_error(
        &self,
        run: RunId,
        requested: &'static str,
        reason: String,
    ) -> Error {
        let (workflow, registered) = match self.inner.meta(run).await {
            Ok(meta) => {
                let registered = self
                    .inner
                    .registry
                    .output_type(&meta.workflow, meta.version);
                (meta.workflow, registered)
            }
            Err(_) => (String::new(), None),
        };
        Error::OutputType {
            run,
            workflow,
            requested,
            registered,
            reason,
        }
    }

    async fn wait_settled(
        &self,
        run: RunId,
        settled: &mut watch::Receiver<Settled>,
    ) -> Result<Step<Out>> {
        loop {
            let terminal = settled.borrow_and_update().terminal.clone();
            // A run driven here is not settled until its driver stops, which notifies:
            // no need to read its metadata until then.
            if self.inner.is_active(run) && !self.inner.shut_down.load(Ordering::Acquire) {
                if settled.changed().await.is_err() {
                    return Err(Error::Shutdown);
                }
                continue;
            }
            // Ended in this engine: its driver handed the (durable) terminal event over.
            if let Some(result) = terminal.and_then(|kind| ended(run, &kind)) {
                return result;
            }
            // What the store answers from here must be durable before it is reported; and a
            // store that failed (a full disk, a failed fsync) reports that instead, for a run
            // it stopped would otherwise be waited for forever.
            self.inner.store.wait_applied_durable().await?;
            let meta = self.inner.meta(run).await?;
            let status = RunStatus::from_code(meta.status);
            match status {
                Some(RunStatus::Blocked) => {
                    if let Some(drift) = self
                        .inner
                        .drifts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&run)
                    {
                        return Err(Error::Drift(drift.clone()));
                    }
                    return Err(Error::Blocked {
                        run,
                        reason: meta.note,
                    });
                }
                Some(RunStatus::Escalated) => {
                    return Err(Error::Escalated {
                        run,
                        reason: meta.note,
                    })
                }
                Some(s) if s.is_terminal() => {
                    // The terminal event is the last one: read only the tail.
                    let tail = self
                        .inner
                        .store
                        .read(run, meta.next_seq.saturating_sub(1), 1)
                        .await?;
                    let last = tail
                        .first()
                        .map(|r| {
                            crate::codec::decode_event(&r.payload).map_err(|reason| Error::Codec {
                                run,
                                seq: r.seq,
                                reason,
                            })
                        })
                        .transpose()?;
                    return last
                        .and_then(|event| ended(run, &event.kind))
                        .unwrap_or_else(|| {
                            Err(Error::Inconsistent {
                                run,
                                seq: meta.next_seq,
                                reason: "status is terminal but no terminal event is recorded"
                                    .into(),
                            })
                        });
                }
                _ => {}
            }
            if self.inner.shut_down.load(Ordering::Acquire) {
                // No driver will move this run any more in this engine.
                return Err(Error::Shutdown);
            }
            if self.inner.store.shared() {
                // Another worker may drive it, and its settling notifies nobody here.
                let poll = std::time::Duration::from_millis(self.inner.config.result_poll_ms);
                if let Ok(Err(_)) = tokio::time::timeout(poll, settled.changed()).await {
                    return Err(Error::Shutdown);
                }
            } else if settled.changed().await.is_err() {
                return Err(Error::Shutdown);
            }
        }
    }
}
