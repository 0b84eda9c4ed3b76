//! Test support for users and for annal itself (feature `testing`): fake tools with scripted
//! behaviour, and a crash harness that crashes a workflow at every durable commit and checks
//! that it resumes exactly.
//!
//! A crash-scenario test for your own workflow:
//!
//! ```no_run
//! use annal::testing::{CrashHarness, Tools};
//! use annal::{Ctx, StepClass, WorkflowError};
//!
//! async fn pay(ctx: Ctx, tools: Tools, amount: u64) -> Result<u64, WorkflowError> {
//!     let charge = tools.tool("payments");
//!     let paid: serde_json::Value = ctx.step("charge").class(StepClass::Irreversible)
//!         .reconcile(|key| { let charge = charge.clone(); async move { charge.reconcile(&key) } })
//!         .run(|attempt| { let charge = charge.clone(); async move { charge.call(&attempt, amount).await } })
//!         .await?;
//!     Ok(paid.as_u64().unwrap_or(0))
//! }
//!
//! # async fn test() {
//! let report = CrashHarness::new("pay", &42u64, |builder, tools| {
//!     let tools = tools.clone();
//!     builder.register("pay", 1, move |ctx, amount| pay(ctx, tools.clone(), amount))
//! })
//! .run()
//! .await
//! .unwrap_or_else(|failure| panic!("{failure}"));
//! assert!(report.crash_points > 0);
//! # }
//! ```

pub mod program;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal_storage::{LogStore, RunId, SimStore, Tear};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::clock::TokioClock;
use crate::error::Error;
use crate::event::{EventKind, Payload};
use crate::policy::{FailureClass, StepFailure};
use crate::runtime::step::{Attempt, Reconciled};
use crate::{Engine, EngineBuilder, ObservedAttempt, RunStatus, StepClass};

/// One scripted behaviour of a [`FakeTool`] call.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// Fail with this class.
    Fail(FailureClass),
    /// Succeed, returning this value (instead of echoing the input).
    Return(serde_json::Value),
    /// Never answer (exercise attempt timeouts).
    Hang,
    /// Apply the effect, then report an ambiguous failure (the response was lost).
    ApplyThenLose,
}

#[derive(Default, Debug)]
struct ToolState {
    script: VecDeque<Behavior>,
    executions: u64,
    executions_by_key: BTreeMap<String, u64>,
    repeats_by_key: BTreeMap<String, u64>,
    applied: BTreeMap<String, serde_json::Value>,
}

/// A tool with scripted behaviour that records its effects by idempotency key, as a
/// well-behaved API would: a repeated key returns the first result and applies nothing new.
#[derive(Clone, Default, Debug)]
pub struct FakeTool {
    state: Arc<Mutex<ToolState>>,
}

impl FakeTool {
    /// A tool that succeeds by echoing its input.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ToolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues behaviours for the next calls; once they run out, calls succeed.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) -> &Self {
        self.lock().script.extend(behaviors);
        self
    }

    /// Queues `n` failures of `class`.
    pub fn fail_times(&self, n: usize, class: FailureClass) -> &Self {
        self.script(std::iter::repeat_n(Behavior::Fail(class), n))
    }

    /// Calls the tool for a step attempt.
    pub async fn call<T: Serialize>(
        &self,
        attempt: &Attempt,
        input: T,
    ) -> Result<serde_json::Value, StepFailure> {
        let input = serde_json::to_value(input).map_err(StepFailure::from)?;
        let key = attempt.idempotency_key.clone();
        let behavior = {
            let mut state = self.lock();
            state.executions += 1;
            *state.executions_by_key.entry(key.clone()).or_default() += 1;
            if state.applied.contains_key(&key) {
                *state.repeats_by_key.entry(key.clone()).or_default() += 1;
            }
            state.script.pop_front()
        };
        match behavior {
            Some(Behavior::Fail(class)) => Err(StepFailure {
                class,
                message: "scripted failure".into(),
            }),
            Some(Behavior::Hang) => std::future::pending().await,
            Some(Behavior::ApplyThenLose) => {
                self.lock().applied.entry(key).or_insert(input);
                Err(StepFailure::ambiguous(
                    "scripted: response lost after the effect",
                ))
            }
            Some(Behavior::Return(value)) => {
                Ok(self.lock().applied.entry(key).or_insert(value).clone())
            }
            None => Ok(self.lock().applied.entry(key).or_insert(input).clone()),
        }
    }

    /// Answers a reconcile hook from the effect ledger.
    pub fn reconcile(&self, key: &str) -> Reconciled<serde_json::Value> {
        match self.lock().applied.get(key) {
            Some(value) => Reconciled::Done(value.clone()),
            None => Reconciled::NotDone,
        }
    }

    /// Calls made, all keys together.
    pub fn executions(&self) -> u64 {
        self.lock().executions
    }

    /// Calls made with one idempotency key.
    pub fn executions_for(&self, key: &str) -> u64 {
        self.lock().executions_by_key.get(key).copied().unwrap_or(0)
    }

    /// Calls made with a key whose effect had already been applied: for a target that
    /// cannot deduplicate (an irreversible step), each one is the effect happening again.
    pub fn repeats_for(&self, key: &str) -> u64 {
        self.lock().repeats_by_key.get(key).copied().unwrap_or(0)
    }

    /// Effects applied, by idempotency key.
    pub fn applied(&self) -> BTreeMap<String, serde_json::Value> {
        self.lock().applied.clone()
    }
}

/// A set of named [`FakeTool`]s: the outside world of one scenario.
#[derive(Clone, Default, Debug)]
pub struct Tools {
    tools: Arc<Mutex<BTreeMap<String, FakeTool>>>,
}

impl Tools {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tool named `name`, created on first use.
    pub fn tool(&self, name: &str) -> FakeTool {
        self.tools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Every applied effect as `tool/key`, for comparing worlds.
    pub fn effects(&self) -> Vec<(String, String)> {
        let tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        tools
            .iter()
            .flat_map(|(name, tool)| tool.applied().into_keys().map(move |k| (name.clone(), k)))
            .collect()
    }
}

type Setup = Arc<dyn Fn(EngineBuilder, &Tools) -> EngineBuilder + Send + Sync>;
type Script = Arc<dyn Fn(Tools) + Send + Sync>;
type Driver = Arc<dyn Fn(Engine, RunId) -> BoxFuture<'static, ()> + Send + Sync>;

impl Tools {
    /// Every call made with an already applied key, as `(tool, key, calls)`.
    pub fn repeats(&self) -> Vec<(String, String, u64)> {
        let tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        tools
            .iter()
            .flat_map(|(name, tool)| {
                let repeats = tool.lock().repeats_by_key.clone();
                repeats.into_iter().map(move |(k, n)| (name.clone(), k, n))
            })
            .collect()
    }
}

/// Runs a workflow once without crashes, then once per durable commit k with a crash right
/// after commit k (and, optionally, with the last durable record torn), and checks each
/// crashed run against the crash-free one.
///
/// Checked at every crash point:
/// - the run ends with the same outcome as the crash-free run (or escalates, when an
///   irreversible effect's outcome was lost and no reconcile hook could tell);
/// - no step whose outcome was durable before the crash ran again after it;
/// - every effect was applied under the same idempotency keys as in the crash-free run;
/// - no irreversible step body ran more often than in the crash-free run;
/// - a torn last record is detected (the run is blocked with a corruption reason) rather
///   than silently decoded;
/// - what the crash left is never a run waiting for what its history already holds (a
///   parked run with a decision or signal behind its status: [`crate::overdue`]).
pub struct CrashHarness {
    workflow: String,
    input: Payload,
    setup: Setup,
    script: Option<Script>,
    driver: Option<Driver>,
    operator: Option<Driver>,
    torn_tails: bool,
    time_limit: Duration,
}

/// What a passing harness run covered.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashReport {
    /// Durable commits of the crash-free run, each one a crash point tested.
    pub crash_points: u64,
    /// Outcome of the crash-free run.
    pub outcome: Outcome,
    /// Crash points where the run escalated instead (an irreversible outcome was lost).
    pub escalated_at: Vec<u64>,
}

/// A run's outcome, with run ids replaced so outcomes of different runs compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Completed with this output (JSON).
    Completed(String),
    /// Ended otherwise.
    Ended(RunStatus, String),
}

/// A crash point where the workflow did not resume exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct HarnessFailure {
    /// The durable commit after which the crash happened (0: the crash-free run).
    pub crash_point: u64,
    /// Whether the last durable record was torn too.
    pub torn: bool,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for HarnessFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crash after durable commit {}{}: {}",
            self.crash_point,
            if self.torn { " (torn tail)" } else { "" },
            self.message
        )
    }
}

impl std::error::Error for HarnessFailure {}

struct World {
    store: Arc<SimStore>,
    tools: Tools,
    log: Arc<Mutex<Vec<(u8, ObservedAttempt)>>>,
    clock: Arc<TokioClock>,
}

struct Scenario {
    outcome: Outcome,
    run: RunId,
    syncs: u64,
    tools: Tools,
    attempts: Vec<(u8, ObservedAttempt)>,
    durable_before_crash: Vec<crate::event::Event>,
    /// Per position: attempts the reconcile hook found had not taken effect after a crash.
    reconciled_not_done: BTreeMap<u32, usize>,
    /// The run's history at the end.
    history: Vec<crate::event::Event>,
}

impl std::fmt::Debug for CrashHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashHarness")
            .field("workflow", &self.workflow)
            .field("scripted", &self.script.is_some())
            .field("driven", &self.driver.is_some())
            .field("operated", &self.operator.is_some())
            .field("torn_tails", &self.torn_tails)
            .field("time_limit", &self.time_limit)
            .finish_non_exhaustive()
    }
}

impl CrashHarness {
    /// A harness for `workflow` started with `input`; `setup` registers the workflows on
    /// each engine the harness opens, with the scenario's fake tools.
    pub fn new<I: Serialize>(
        workflow: &str,
        input: &I,
        setup: impl Fn(EngineBuilder, &Tools) -> EngineBuilder + Send + Sync + 'static,
    ) -> Self {
        Self {
            workflow: workflow.to_string(),
            input: Payload::encode(input).unwrap_or_default(),
            setup: Arc::new(setup),
            script: None,
            driver: None,
            operator: None,
            torn_tails: false,
            time_limit: Duration::from_secs(366 * 24 * 3600),
        }
    }

    /// Scripts the fake tools of each scenario before it starts (e.g. failures).
    pub fn script(mut self, script: impl Fn(Tools) + Send + Sync + 'static) -> Self {
        self.script = Some(Arc::new(script));
        self
    }

    /// Acts from outside after every (re)open: send signals, decide approvals.
    pub fn drive<F>(mut self, driver: F) -> Self
    where
        F: Fn(Engine, RunId) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        self.driver = Some(Arc::new(driver));
        self
    }

    /// Plays the operator: called whenever the run is escalated (`Engine::operate` from
    /// `operator`), so that the commits of operator actions are crash points too and the run
    /// goes on to its outcome. Without one, an escalated run is an outcome.
    pub fn operate<F>(mut self, operator: F) -> Self
    where
        F: Fn(Engine, RunId) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        self.operator = Some(Arc::new(operator));
        self
    }

    /// Also test each crash point with the last durable record torn.
    pub fn with_torn_tails(mut self) -> Self {
        self.torn_tails = true;
        self
    }

    /// Runs every scenario. Call from a `#[tokio::test(start_paused = true)]` test so
    /// timers and backoffs take no real time.
    pub async fn run(&self) -> Result<CrashReport, HarnessFailure> {
        let baseline = self.scenario(None, false).await?;
        let mut escalated_at = Vec::new();
        for k in 1..=baseline.syncs {
            for torn in [false, true] {
                if torn && !self.torn_tails {
                    continue;
                }
                if std::env::var_os("ANNAL_HARNESS_TRACE").is_some() {
                    eprintln!("crash point {k} torn={torn}");
                }
                let crashed = self.scenario(Some(k), torn).await?;
                if torn {
                    continue;
                }
                if let Some(()) = self.compare(&baseline, &crashed, k)? {
                    escalated_at.push(k);
                }
            }
        }
        Ok(CrashReport {
            crash_points: baseline.syncs,
            outcome: baseline.outcome,
            escalated_at,
        })
    }

    fn fail(crash_point: u64, torn: bool, message: String) -> HarnessFailure {
        HarnessFailure {
            crash_point,
            torn,
            message,
        }
    }

    fn open(&self, world: &World, phase: u8) -> EngineBuilder {
        let log = Arc::clone(&world.log);
        let builder = Engine::builder()
            .store(Arc::clone(&world.store) as Arc<dyn LogStore>)
            .clock(Arc::clone(&world.clock) as Arc<dyn crate::clock::Clock>)
            .observe_attempts(Arc::new(move |a: &ObservedAttempt| {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((phase, a.clone()));
            }));
        (self.setup)(builder, &world.tools)
    }

    async fn scenario(
        &self,
        crash_after: Option<u64>,
        torn: bool,
    ) -> Result<Scenario, HarnessFailure> {
        // Drivers act from outside (signals, decisions) while the run goes on; they are
        // stopped with the engine they act on.
        let mut drivers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let k = crash_after.unwrap_or(0);
        let fail = |m: String| Self::fail(k, torn, m);
        let world = World {
            store: Arc::new(SimStore::new()),
            tools: Tools::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            // One clock for the whole scenario: a restart must not turn time back.
            clock: Arc::new(TokioClock::starting_at(1_700_000_000_000)),
        };
        let (store, tools, log) = (&world.store, world.tools.clone(), &world.log);
        if let Some(script) = &self.script {
            script(tools.clone());
        }
        if let Some(k) = crash_after {
            store.crash_after_syncs(k);
        }
        let engine = self
            .open(&world, 0)
            .open()
            .await
            .map_err(|e| fail(format!("open: {e}")))?;
        let started = engine
            .start_with::<_, serde_json::Value>(
                &self.workflow,
                &self.input_value(),
                crate::StartOptions::default(),
            )
            .await;
        let run = match (&started, store.runs().await) {
            (Ok(handle), _) => handle.run_id(),
            (Err(_), Ok(runs)) if !runs.is_empty() => runs[0].0,
            (Err(e), _) => return Err(fail(format!("start failed before the run existed: {e}"))),
        };
        if let Some(driver) = &self.driver {
            drivers.push(tokio::spawn(driver(engine.clone(), run)));
        }
        let mut durable_before_crash = Vec::new();
        let engine = if crash_after.is_some() {
            // Wait for the freeze (or for the run to finish before reaching commit k).
            let frozen = tokio::time::timeout(self.time_limit, async {
                // Virtual time is free, but each poll is not: back off up to a minute.
                let mut poll = Duration::from_millis(1);
                while !store.is_frozen() && !self.settled_or_operated(&engine, run).await {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(Duration::from_secs(60));
                }
            })
            .await;
            if frozen.is_err() {
                return Err(fail(
                    "the run neither finished nor reached the crash point".into(),
                ));
            }
            drivers.drain(..).for_each(|d| d.abort());
            engine.shutdown().await;
            drop(engine);
            store.crash();
            durable_before_crash = crate::read_history(store.as_ref(), run)
                .await
                .unwrap_or_default();
            // What the crash left must never be a run waiting for what its own history
            // holds: the engine would have to find it (its sweep does), not merely wake it.
            if let Ok(Some(meta)) = store.meta(run).await {
                let lost = RunStatus::from_code(meta.status).and_then(|status| {
                    crate::overdue(
                        status,
                        meta.status_seq,
                        &durable_before_crash,
                        meta.wake_ms,
                        None,
                    )
                });
                if let Some(why) = lost {
                    return Err(fail(format!("the crash left a lost wake-up: {why}")));
                }
            }
            if torn {
                let seq = store.tear_tail(run, Tear::Cut);
                let engine = self
                    .open(&world, 1)
                    .open()
                    .await
                    .map_err(|e| fail(format!("reopen: {e}")))?;
                if let Some(driver) = &self.driver {
                    drivers.push(tokio::spawn(driver(engine.clone(), run)));
                }
                // A parked run meets its damaged log only when it wakes.
                let _ = tokio::time::timeout(
                    self.time_limit,
                    engine.handle::<serde_json::Value>(run).result(),
                )
                .await;
                let info = engine
                    .status(run)
                    .await
                    .map_err(|e| fail(format!("status: {e}")))?;
                drivers.drain(..).for_each(|d| d.abort());
                engine.shutdown().await;
                // A run that had ended before the crash is not woken again: there the damage
                // must show when its history is read.
                let blocked = info.status == RunStatus::Blocked && info.note.contains("corrupt");
                let ended_and_reported = info.status.is_terminal()
                    && matches!(
                        crate::read_history(store.as_ref(), run).await,
                        Err(Error::Storage(annal_storage::Error::Corrupt { .. }))
                    );
                if !blocked && !ended_and_reported {
                    return Err(fail(format!(
                        "torn record at seq {seq:?} not reported: status {}, note '{}'",
                        info.status, info.note
                    )));
                }
                return Ok(Scenario {
                    outcome: Outcome::Ended(RunStatus::Blocked, info.note),
                    run,
                    syncs: 0,
                    tools,
                    attempts: Vec::new(),
                    durable_before_crash,
                    reconciled_not_done: BTreeMap::new(),
                    history: Vec::new(),
                });
            }
            let engine = self
                .open(&world, 1)
                .open()
                .await
                .map_err(|e| fail(format!("reopen: {e}")))?;
            if let Some(driver) = &self.driver {
                drivers.push(tokio::spawn(driver(engine.clone(), run)));
            }
            engine
        } else {
            engine
        };
        let outcome = tokio::time::timeout(self.time_limit, self.outcome(&engine, run))
            .await
            .map_err(|_| fail("the run did not finish within the time limit".into()))?
            .map_err(|e| fail(format!("result: {e}")))?;
        let syncs = store.syncs();
        drivers.drain(..).for_each(|d| d.abort());
        engine.shutdown().await;
        let attempts = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut reconciled_not_done: BTreeMap<u32, usize> = BTreeMap::new();
        let history = crate::read_history(store.as_ref(), run)
            .await
            .unwrap_or_default();
        for e in &history {
            if let EventKind::AttemptFailed {
                position, message, ..
            } = &e.kind
            {
                if message.contains("reconciled: the effect did not happen") {
                    *reconciled_not_done.entry(*position).or_default() += 1;
                }
            }
        }
        Ok(Scenario {
            outcome,
            run,
            syncs,
            tools,
            attempts,
            durable_before_crash,
            reconciled_not_done,
            history,
        })
    }

    fn input_value(&self) -> serde_json::Value {
        self.input.decode().unwrap_or(serde_json::Value::Null)
    }

    /// Whether the run stopped moving; an escalated run is handed to the operator, if there
    /// is one, and counts as moving on.
    async fn settled_or_operated(&self, engine: &Engine, run: RunId) -> bool {
        let status = match engine.status(run).await {
            Ok(info) => info.status,
            Err(_) => return false,
        };
        match (status, &self.operator) {
            (RunStatus::Running | RunStatus::Parked, _) => false,
            (RunStatus::Escalated, Some(operator)) => {
                operator(engine.clone(), run).await;
                false
            }
            _ => true,
        }
    }

    async fn outcome(&self, engine: &Engine, run: RunId) -> Result<Outcome, Error> {
        let handle = engine.handle::<serde_json::Value>(run);
        let id = run.to_string();
        // An operator may act on a run many times (it escalates again); a bound turns an
        // operator that never resolves anything into an outcome instead of a hang.
        let mut acts = 0;
        loop {
            match handle.result().await {
                Ok(value) => {
                    return Ok(Outcome::Completed(value.to_string().replace(&id, "<run>")))
                }
                Err(Error::Escalated { .. }) if self.operator.is_some() && acts < 16 => {
                    acts += 1;
                    if let Some(operator) = &self.operator {
                        operator(engine.clone(), run).await;
                    }
                }
                Err(e) => {
                    let status = engine.status(run).await?.status;
                    return Ok(Outcome::Ended(status, e.to_string().replace(&id, "<run>")));
                }
            }
        }
    }

    /// Returns `Some(())` when the crashed run legitimately escalated.
    fn compare(
        &self,
        base: &Scenario,
        crashed: &Scenario,
        k: u64,
    ) -> Result<Option<()>, HarnessFailure> {
        let fail = |m: String| Err(Self::fail(k, false, m));
        // Steps whose outcome was durable before the crash must not run after it, unless an
        // operator sent a step that gave up back to be run again.
        let reopened: std::collections::BTreeSet<u32> =
            crashed
                .history
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::OperatorAction {
                        position: Some(position),
                        action:
                            crate::OperatorActionKind::RetryStep
                            | crate::OperatorActionKind::ResolveNotDone,
                        ..
                    } => Some(*position),
                    _ => None,
                })
                .collect();
        let mut done_before: HashMap<u32, String> = HashMap::new();
        for e in &crashed.durable_before_crash {
            match &e.kind {
                EventKind::StepCompleted { position, .. } | EventKind::StepRan { position, .. } => {
                    done_before.insert(*position, String::new());
                }
                EventKind::StepExhausted { position, .. } if !reopened.contains(position) => {
                    done_before.insert(*position, String::new());
                }
                _ => {}
            }
        }
        for (phase, a) in &crashed.attempts {
            if *phase == 1 && done_before.contains_key(&a.position) {
                return fail(format!(
                    "step '{}' (position {}) had a durable outcome but ran again after the restart",
                    a.step, a.position
                ));
            }
        }
        // Irreversible bodies run no more often than without crashes, except once more for
        // each attempt a reconcile hook found had not taken effect (running it again is safe).
        let irreversible = |s: &Scenario| {
            let mut n: BTreeMap<u32, usize> = BTreeMap::new();
            for (_, a) in s
                .attempts
                .iter()
                .filter(|(_, a)| a.class == StepClass::Irreversible)
            {
                *n.entry(a.position).or_default() += 1;
            }
            n
        };
        let (base_irr, crash_irr) = (irreversible(base), irreversible(crashed));
        for (position, count) in &crash_irr {
            let allowed = base_irr.get(position).copied().unwrap_or(0);
            let reconciled = crashed
                .reconciled_not_done
                .get(position)
                .copied()
                .unwrap_or(0);
            if *count > allowed + reconciled {
                return fail(format!(
                    "irreversible step at position {position} ran {count} times (crash-free: {allowed}, reconciled as not done: {reconciled})"
                ));
            }
        }
        // No irreversible effect reached its tool again once it had been applied.
        let irreversible_keys: std::collections::BTreeSet<&str> = crashed
            .attempts
            .iter()
            .filter(|(_, a)| a.class == StepClass::Irreversible)
            .map(|(_, a)| a.idempotency_key.as_str())
            .collect();
        let base_repeats: BTreeMap<(String, String), u64> = base
            .tools
            .repeats()
            .into_iter()
            .map(|(t, k, n)| ((t, k.replace(&base.run.to_string(), "<run>")), n))
            .collect();
        for (tool, key, n) in crashed.tools.repeats() {
            if !irreversible_keys.contains(key.as_str()) {
                continue;
            }
            let normal = (tool, key.replace(&crashed.run.to_string(), "<run>"));
            let allowed = base_repeats.get(&normal).copied().unwrap_or(0);
            if n > allowed {
                return fail(format!(
                    "irreversible effect {}/{} was requested again after it had been applied ({n} times, crash-free: {allowed})",
                    normal.0, normal.1
                ));
            }
        }
        if let Outcome::Ended(RunStatus::Escalated, why) = &crashed.outcome {
            // Legitimate (an irreversible outcome lost in the crash) unless an operator was
            // there to resolve it: then the run must go on to the crash-free outcome, and an
            // escalation no operator action fits is a run stuck for good.
            if self.operator.is_none() {
                return Ok(Some(()));
            }
            return fail(format!(
                "the run stayed escalated although the operator acted on it: {why}"
            ));
        }
        if crashed.outcome != base.outcome {
            return fail(format!(
                "outcome differs: crash-free {:?}, crashed {:?}",
                base.outcome, crashed.outcome
            ));
        }
        // Same effects under the same keys (keys embed the run id).
        let normalise = |s: &Scenario| {
            let id = s.run.to_string();
            let mut v: Vec<_> = s
                .tools
                .effects()
                .into_iter()
                .map(|(t, k)| (t, k.replace(&id, "<run>")))
                .collect();
            v.sort();
            v
        };
        if normalise(base) != normalise(crashed) {
            return fail(format!(
                "effects differ: crash-free {:?}, crashed {:?}",
                normalise(base),
                normalise(crashed)
            ));
        }
        Ok(None)
    }
}

/// Replays a stored history against the code registered on a builder, executing nothing
/// live and writing nothing: `Ok(())` if the code reproduces the history (up to where it
/// ends), or the precise [`crate::DriftError`]. Use it in a unit test before deploying a
/// change to a workflow, over histories exported from production.
#[derive(Debug)]
pub struct Replayer {
    builder: EngineBuilder,
}

impl Replayer {
    /// A replayer over the workflows registered on `builder`.
    pub fn new(builder: EngineBuilder) -> Self {
        Self { builder }
    }

    /// Replays a history given as events.
    pub async fn replay(&self, history: &[crate::Event]) -> Result<(), Error> {
        let Some(crate::Event {
            kind: EventKind::RunStarted {
                workflow, version, ..
            },
            ..
        }) = history.first()
        else {
            return Err(Error::Inconsistent {
                run: RunId([0; 16]),
                seq: 0,
                reason: "history does not start with RunStarted".into(),
            });
        };
        let store = Arc::new(SimStore::new());
        let run = RunId([0x5e; 16]);
        let meta = annal_storage::RunMeta {
            workflow: workflow.clone(),
            version: *version,
            status: RunStatus::Running.code(),
            next_seq: 0,
            created_ms: history[0].at_ms,
            updated_ms: history[0].at_ms,
            wake_ms: None,
            note: String::new(),
            status_seq: 0,
        };
        let batch = annal_storage::AppendBatch {
            run,
            expected_next_seq: 0,
            events: history.iter().map(crate::codec::encode_event).collect(),
            meta: Some(meta),
            index: Vec::new(),
        };
        store.append_durable(batch).await?;
        let mut config = crate::EngineConfig {
            replay_only: true,
            ..crate::EngineConfig::default()
        };
        config.park_after_ms = u64::MAX / 4;
        let engine = self
            .builder
            .clone()
            .store(store as Arc<dyn LogStore>)
            .config(config)
            .open()
            .await?;
        let result = loop {
            if let Some(result) = engine.replayed(run) {
                break result;
            }
            let info = engine.status(run).await?;
            if info.status == RunStatus::Blocked {
                engine.shutdown().await;
                return Err(Error::Blocked {
                    run,
                    reason: info.note,
                });
            }
            engine.settled().await;
        };
        engine.shutdown().await;
        result.map_err(Error::Drift)
    }

    /// Replays a history stored as JSON Lines (one event per line, as `annal export`
    /// writes).
    pub async fn replay_json_lines(&self, text: &str) -> Result<(), Error> {
        let events = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<crate::Event>(l).map_err(|e| Error::Payload(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.replay(&events).await
    }
}
