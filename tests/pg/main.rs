//! Several engines on one PostgreSQL database: they share the runs, a dead worker's runs are
//! taken over, a stale worker is fenced, starts are deduplicated across replicas, and a
//! decision made through one replica reaches the run another executes. Against a real
//! server (`ANNAL_PG_URL`; see `annal_postgres::testing::url_from_env`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal::{
    Actor, ApprovalFilter, ApprovalRequest, Ctx, Decision, Engine, EngineBuilder, Error, EventKind,
    Reconciled, RunId, RunStatus, StartOptions, StepClass, Verdict, WorkflowError,
};
use annal_postgres::{testing, PgConfig, PgStore};
use annal_storage::LogStore;
use serde_json::{json, Value};

/// What the outside world saw: effects by idempotency key, and step bodies that ran.
struct World {
    effects: Mutex<Vec<String>>,
    bodies: AtomicU32,
    /// Holds step bodies of `slow` runs until opened.
    gate: tokio::sync::Semaphore,
}

/// Three steps: a read, a write, an irreversible charge (reconciled against the effects).
async fn order(ctx: Ctx, world: Arc<World>, n: u32) -> Result<Value, WorkflowError> {
    let looked: u32 = ctx
        .step("lookup")
        .class(StepClass::Read)
        .run(move |_| async move { Ok(n * 2) })
        .await?;
    let reserved: String = ctx
        .step("reserve")
        .class(StepClass::Write)
        .run(|a| async move { Ok(format!("reserved {}", a.idempotency_key)) })
        .await?;
    let ledger = Arc::clone(&world);
    let charged: String = ctx
        .step("charge")
        .class(StepClass::Irreversible)
        .reconcile(move |key: String| {
            let ledger = Arc::clone(&ledger);
            async move {
                if lock(&ledger.effects).contains(&key) {
                    Reconciled::Done(key)
                } else {
                    Reconciled::NotDone
                }
            }
        })
        .run(|a| {
            let world = Arc::clone(&world);
            async move {
                lock(&world.effects).push(a.idempotency_key.clone());
                Ok(a.idempotency_key)
            }
        })
        .await?;
    Ok(json!({ "looked": looked, "reserved": reserved, "charged": charged }))
}

/// A read step whose body waits for the test; its output names the replica that ran it.
async fn slow(ctx: Ctx, world: Arc<World>, tag: &'static str) -> Result<String, WorkflowError> {
    let w = Arc::clone(&world);
    let read: String = ctx
        .step("slow_read")
        .class(StepClass::Read)
        .run(move |_| {
            let w = Arc::clone(&w);
            async move {
                w.bodies.fetch_add(1, Ordering::SeqCst);
                let _permit = w.gate.acquire().await;
                Ok(format!("read by {tag}"))
            }
        })
        .await?;
    Ok(read)
}

/// A gate, then a step.
async fn refund(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let mut request = ApprovalRequest::new(format!("refund {amount}"));
    request.approvers = vec!["role:finance".into()];
    let who = match ctx.approval(request).await? {
        Decision::Approved { actor, .. } => actor,
        Decision::Rejected { actor, .. } => return Ok(format!("rejected by {actor}")),
        Decision::Expired => return Ok("expired".into()),
    };
    let done: String = ctx
        .step("refund")
        .class(StepClass::Write)
        .run(move |_| async move { Ok(format!("refunded {amount}")) })
        .await?;
    Ok(format!("{done}, approved by {who}"))
}

impl Default for World {
    fn default() -> Self {
        Self {
            effects: Mutex::default(),
            bodies: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Replica {
    engine: Engine,
    store: Arc<PgStore>,
}

async fn replica(config: &PgConfig, world: &Arc<World>, park_after_ms: u64) -> Replica {
    tagged(config, world, park_after_ms, "a replica").await
}

async fn tagged(
    config: &PgConfig,
    world: &Arc<World>,
    park_after_ms: u64,
    tag: &'static str,
) -> Replica {
    let store = Arc::new(PgStore::connect(config.clone()).await.unwrap());
    let (w1, w2) = (Arc::clone(world), Arc::clone(world));
    let engine = builder(Arc::clone(&store) as Arc<dyn LogStore>, park_after_ms)
        .register("order", 1, move |ctx, n| order(ctx, Arc::clone(&w1), n))
        .register("slow", 1, move |ctx, ()| slow(ctx, Arc::clone(&w2), tag))
        .register("refund", 1, refund)
        .open()
        .await
        .unwrap();
    Replica { engine, store }
}

fn builder(store: Arc<dyn LogStore>, park_after_ms: u64) -> EngineBuilder {
    Engine::builder().store(store).config(annal::EngineConfig {
        park_after_ms,
        sweep_ms: 1_000,
        ..annal::EngineConfig::default()
    })
}

fn config() -> Option<PgConfig> {
    let url = testing::url_from_env()?;
    // Short leases: a dead worker's runs are taken within a test's patience.
    Some(testing::fresh(&url).lease_ms(600).poll_ms(25))
}

async fn within<T>(what: &str, secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

/// Whose steps ran in a history: each completed step exactly once.
fn assert_each_step_completed_once(history: &[annal::Event]) {
    let mut done = std::collections::BTreeMap::new();
    for e in history {
        if let EventKind::StepCompleted { position, .. } | EventKind::StepRan { position, .. } =
            &e.kind
        {
            *done.entry(*position).or_insert(0) += 1;
        }
    }
    assert!(done.values().all(|n| *n == 1), "{done:?}");
}

/// Three replicas start runs; each finishes once, whichever replica it started on, and a
/// handle on another replica sees its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_share_the_runs_of_one_database() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    let replicas = [
        replica(&config, &world, 30_000).await,
        replica(&config, &world, 30_000).await,
        replica(&config, &world, 30_000).await,
    ];
    let mut runs = Vec::new();
    for n in 0..30u32 {
        let on = &replicas[n as usize % 3].engine;
        runs.push(on.start::<_, Value>("order", &n).await.unwrap().run_id());
    }
    for (n, run) in runs.iter().enumerate() {
        // Asked of a replica that did not start it.
        let other = &replicas[(n + 1) % 3].engine;
        let out = within("result", 30, other.handle::<Value>(*run).result())
            .await
            .unwrap();
        assert_eq!(out["looked"], json!(n as u32 * 2));
        assert_each_step_completed_once(&other.history(*run).await.unwrap());
    }
    assert_eq!(lock(&world.effects).len(), 30, "one charge per run");
    for r in &replicas {
        r.engine.shutdown().await;
    }
}

/// A worker dies (its process is gone: no shutdown, no release) holding a run; once its
/// lease passed, another takes the run over and finishes it; nothing ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_run_is_taken_over_after_its_lease() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    let a = replica(&config, &world, 30_000).await;
    let run = a
        .engine
        .start::<_, String>("slow", &())
        .await
        .unwrap()
        .run_id();
    within("the body starts", 10, async {
        while world.bodies.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // a dies with the run in the middle of its step.
    drop(a);
    let b = tagged(&config, &world, 30_000, "b").await;
    world.gate.add_permits(100);
    let started = std::time::Instant::now();
    let out = within("takeover", 20, b.engine.handle::<String>(run).result())
        .await
        .unwrap();
    assert_eq!(out, "read by b");
    assert!(
        started.elapsed() < Duration::from_millis(600 + 1_500),
        "{:?}",
        started.elapsed()
    );
    assert_each_step_completed_once(&b.engine.history(run).await.unwrap());
    b.engine.shutdown().await;
}

/// A worker stalls (its heartbeat stops) in the middle of a step; another takes the run
/// over and finishes it; when the stalled worker wakes, its append is fenced: it writes
/// nothing and drops the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_that_wakes_after_its_lease_is_fenced() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    let a = tagged(&config, &world, 30_000, "a").await;
    let run = a
        .engine
        .start::<_, String>("slow", &())
        .await
        .unwrap()
        .run_id();
    within("the body starts", 10, async {
        while world.bodies.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    a.store.pause_heartbeat(true);
    let b = tagged(&config, &world, 30_000, "b").await;
    // b takes the run and runs the read again (safe, by its class); its body waits too.
    within("b starts the step", 10, async {
        while world.bodies.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Both bodies return; a's completion is fenced, b's is recorded.
    world.gate.add_permits(100);
    let out = within("b finishes", 20, b.engine.handle::<String>(run).result())
        .await
        .unwrap();
    assert_eq!(out, "read by b", "the stale worker's completion was fenced");
    let history = b.engine.history(run).await.unwrap();
    assert_each_step_completed_once(&history);
    assert_eq!(
        history.iter().filter(|e| e.kind.is_terminal()).count(),
        1,
        "{history:?}"
    );
    // a has dropped the run: it is not in memory there any more.
    within("a drops the run", 10, async {
        while a.engine.runs_in_memory() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    a.engine.shutdown().await;
    b.engine.shutdown().await;
}

/// Two replicas start the same dedupe key at once: one run, the same handle for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_one_dedupe_key_get_one_run() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    let (a, b) = (
        replica(&config, &world, 30_000).await,
        replica(&config, &world, 30_000).await,
    );
    for n in 0..10u32 {
        let options = || StartOptions {
            dedupe_key: Some(format!("order-{n}")),
            ..StartOptions::default()
        };
        let (x, y) = futures::future::join(
            a.engine.start_with::<_, Value>("order", &n, options()),
            b.engine.start_with::<_, Value>("order", &n, options()),
        )
        .await;
        let (x, y) = (x.unwrap().run_id(), y.unwrap().run_id());
        assert_eq!(x, y, "one run for key order-{n}");
        within("result", 30, a.engine.handle::<Value>(x).result())
            .await
            .unwrap();
    }
    let runs = a.engine.runs().await.unwrap();
    assert_eq!(runs.len(), 10);
    assert_eq!(lock(&world.effects).len(), 10, "one charge per key");
    a.engine.shutdown().await;
    b.engine.shutdown().await;
}

async fn only_gate(engine: &Engine) -> annal::GateId {
    within("the gate is asked", 10, async {
        loop {
            let pending = engine
                .pending_approvals(&ApprovalFilter::default())
                .await
                .unwrap();
            if let Some(p) = pending.first() {
                break p.gate;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A decision made through one replica reaches the run another replica executes: it is
/// forwarded, recorded by the owner, durable before the answer, and wakes the run at once;
/// a second decision gets the owner's refusal; an unauthorized one is refused with
/// nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_through_one_replica_reaches_the_run_another_executes() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    // Runs stay resident (held by a) while they wait.
    let a = replica(&config, &world, 600_000).await;
    let b = replica(&config, &world, 600_000).await;
    let run = a
        .engine
        .start::<_, String>("refund", &420u64)
        .await
        .unwrap()
        .run_id();
    let gate = only_gate(&b.engine).await;
    assert_eq!(a.engine.runs_in_memory(), 1, "a executes the run");
    let events_before = b.engine.history(run).await.unwrap().len();
    let refused = b
        .engine
        .decide(
            gate,
            &Actor::new("sam", &["support"]),
            Verdict::Approve { edits: None },
            "lgtm",
        )
        .await;
    assert!(
        matches!(&refused, Err(Error::NotAllowed { actor, .. }) if actor == "sam"),
        "{refused:?}"
    );
    assert_eq!(
        b.engine.history(run).await.unwrap().len(),
        events_before,
        "nothing written"
    );

    let dana = Actor::new("dana", &["finance"]);
    within(
        "the decision",
        10,
        b.engine.decide(
            gate,
            &dana,
            Verdict::Approve { edits: None },
            "within policy",
        ),
    )
    .await
    .unwrap();
    // Durable before the answer: b reads it back at once.
    assert!(b
        .engine
        .history(run)
        .await
        .unwrap()
        .iter()
        .any(|e| e.kind.decision().is_some_and(|d| d.actor == "dana")));
    let second = b
        .engine
        .decide(
            gate,
            &Actor::new("lee", &["finance"]),
            Verdict::Reject,
            "no",
        )
        .await;
    assert!(
        matches!(&second, Err(Error::AlreadyDecided { actor, .. }) if actor == "dana"),
        "{second:?}"
    );
    let out = within(
        "the run finishes",
        10,
        b.engine.handle::<String>(run).result(),
    )
    .await
    .unwrap();
    assert_eq!(out, "refunded 420, approved by dana");

    // A parked run (no lease held): the replica that takes the decision executes the run.
    let parked = {
        let c = replica(&config, &world, 50).await;
        let run = c
            .engine
            .start::<_, String>("refund", &7u64)
            .await
            .unwrap()
            .run_id();
        within("the run parks", 10, async {
            while c.engine.status(run).await.unwrap().status != RunStatus::Parked {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        c.engine.shutdown().await;
        run
    };
    let gate = {
        let pending = b
            .engine
            .pending_approvals(&ApprovalFilter::default())
            .await
            .unwrap();
        pending.iter().find(|p| p.run == parked).unwrap().gate
    };
    b.engine
        .decide(gate, &dana, Verdict::Approve { edits: None }, "ok")
        .await
        .unwrap();
    let out = within(
        "the parked run finishes",
        10,
        b.engine.handle::<String>(parked).result(),
    )
    .await
    .unwrap();
    assert_eq!(out, "refunded 7, approved by dana");
    a.engine.shutdown().await;
    b.engine.shutdown().await;
}

/// A worker dies after an irreversible attempt started (its effect happened) and before its
/// outcome was recorded: the new owner reconciles instead of charging again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_reconciles_an_irreversible_attempt_it_finds_open() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    // The dying worker's charge: applies the effect, then never answers.
    async fn hang(ctx: Ctx, world: Arc<World>, (): ()) -> Result<String, WorkflowError> {
        let ledger = Arc::clone(&world);
        let charged: String = ctx
            .step("charge")
            .class(StepClass::Irreversible)
            .reconcile(move |key: String| {
                let ledger = Arc::clone(&ledger);
                async move {
                    if lock(&ledger.effects).contains(&key) {
                        Reconciled::Done(format!("found {key}"))
                    } else {
                        Reconciled::NotDone
                    }
                }
            })
            .run(|a| {
                let world = Arc::clone(&world);
                async move {
                    lock(&world.effects).push(a.idempotency_key.clone());
                    world.bodies.fetch_add(1, Ordering::SeqCst);
                    let _forever = world.gate.acquire().await;
                    Ok(a.idempotency_key)
                }
            })
            .await?;
        Ok(charged)
    }
    let open = |world: &Arc<World>| {
        let config = config.clone();
        let world = Arc::clone(world);
        async move {
            let store = Arc::new(PgStore::connect(config).await.unwrap());
            let engine = builder(Arc::clone(&store) as Arc<dyn LogStore>, 30_000)
                .register("hang", 1, move |ctx, ()| hang(ctx, Arc::clone(&world), ()))
                .open()
                .await
                .unwrap();
            (engine, store)
        }
    };
    let (a, _a_store) = open(&world).await;
    let run: RunId = a.start::<_, String>("hang", &()).await.unwrap().run_id();
    within("the charge happens", 10, async {
        while world.bodies.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(a);
    drop(_a_store);
    let (b, _b_store) = open(&world).await;
    let out = within("takeover", 20, b.handle::<String>(run).result())
        .await
        .unwrap();
    assert!(out.starts_with("found "), "{out}");
    assert_eq!(lock(&world.effects).len(), 1, "charged once");
    assert_eq!(
        world.bodies.load(Ordering::SeqCst),
        1,
        "the body never ran again"
    );
    b.shutdown().await;
}

/// A write whose body must not start on a stalled worker: a read that waits for the test,
/// then a write that counts its bodies.
async fn read_then_write(ctx: Ctx, world: Arc<World>, (): ()) -> Result<String, WorkflowError> {
    let w = Arc::clone(&world);
    ctx.step("read")
        .class(StepClass::Read)
        .run(move |_| {
            let w = Arc::clone(&w);
            async move {
                w.bodies.fetch_add(1, Ordering::SeqCst);
                let _permit = w.gate.acquire().await;
                Ok(())
            }
        })
        .await?;
    let written: String = ctx
        .step("write")
        .class(StepClass::Write)
        .run(|a| {
            let world = Arc::clone(&world);
            async move {
                lock(&world.effects).push(a.idempotency_key.clone());
                Ok(a.idempotency_key)
            }
        })
        .await?;
    Ok(written)
}

/// A worker whose heartbeat lapsed (a stall) while nobody took its run over yet may still
/// append, but may not start a write: the barrier before the body confirms the lease. The
/// run goes on once the worker is alive again, and the write happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_worker_starts_no_write_until_it_holds_the_run_again() {
    let Some(config) = config() else { return };
    let world = Arc::new(World::default());
    let store = Arc::new(PgStore::connect(config.clone()).await.unwrap());
    let w = Arc::clone(&world);
    let engine = builder(Arc::clone(&store) as Arc<dyn LogStore>, 30_000)
        .register("rw", 1, move |ctx, ()| {
            read_then_write(ctx, Arc::clone(&w), ())
        })
        .open()
        .await
        .unwrap();
    let run = engine.start::<_, String>("rw", &()).await.unwrap().run_id();
    within("the read starts", 10, async {
        while world.bodies.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    store.pause_heartbeat(true);
    tokio::time::sleep(Duration::from_millis(600 + 300)).await;
    world.gate.add_permits(100);
    // The read completes (nobody took the run), the write is refused at its barrier.
    within("the run is dropped", 10, async {
        while engine.runs_in_memory() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        lock(&world.effects).is_empty(),
        "no write on a stalled worker"
    );
    store.pause_heartbeat(false);
    let out = within(
        "the worker takes its run again",
        10,
        engine.handle::<String>(run).result(),
    )
    .await
    .unwrap();
    assert_eq!(lock(&world.effects).as_slice(), [out.as_str()], "one write");
    engine.shutdown().await;
}
