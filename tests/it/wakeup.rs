//! Lost wake-ups (issue 21): an event from outside that a parked run waits for, acknowledged
//! just before a crash, must leave the run runnable; and a run whose history already holds
//! what it waits for is resumed at open and by the periodic sweep.

use std::sync::Arc;
use std::time::Duration;

use annal::{
    Actor, ApprovalFilter, ApprovalRequest, Ctx, Decision, Engine, EngineBuilder, Event, EventKind,
    GateId, OnExpiry, RiskTier, RunId, RunStatus, Verdict, WorkflowError,
};
use annal_storage::{AppendBatch, IndexOp, LogStore, SimStore};

use crate::support::kinds;

fn request() -> ApprovalRequest {
    ApprovalRequest {
        action: "ship order 2703".into(),
        evidence: vec![],
        risk: RiskTier::Low,
        cost: None,
        checks: vec![],
        rollback: None,
        deadline_ms: None,
        approvers: vec!["role:ops".into()],
        on_expiry: OnExpiry::Escalate,
    }
}

/// The soak's workflow, cut to what matters: a timer, then a gate, then the effect.
async fn ship(ctx: Ctx, order: u32) -> Result<String, WorkflowError> {
    ctx.sleep(Duration::from_millis(435)).await?;
    let verdict = match ctx.approval(request()).await? {
        Decision::Approved { actor, .. } => format!("approved by {actor}"),
        Decision::Rejected { actor, .. } => format!("rejected by {actor}"),
        Decision::Expired => "expired".into(),
    };
    let shipped: String = ctx
        .step("ship")
        .run(move |_| async move { Ok(format!("order {order} shipped")) })
        .await?;
    Ok(format!("{shipped}, {verdict}"))
}

async fn wait_go(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    let go: String = ctx.signal("go").await?;
    Ok(format!("went: {go}"))
}

async fn nap(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok("rested".into())
}

fn builder(store: &Arc<SimStore>, clock: &Arc<annal::clock::TokioClock>) -> EngineBuilder {
    Engine::builder()
        .store(Arc::clone(store) as Arc<dyn LogStore>)
        .clock(Arc::clone(clock) as Arc<dyn annal::clock::Clock>)
        .park_after_ms(1_000)
        .register("ship", 1, ship)
        .register("wait_go", 1, wait_go)
        .register("nap", 1, nap)
}

fn world() -> (Arc<SimStore>, Arc<annal::clock::TokioClock>) {
    (
        Arc::new(SimStore::new()),
        Arc::new(annal::clock::TokioClock::starting_at(1_700_000_000_000)),
    )
}

fn dana() -> Actor {
    Actor::new("dana", &["ops"])
}

/// Starts a run and waits until it parked.
async fn parked_run(engine: &Engine, workflow: &str, input: serde_json::Value) -> RunId {
    let run = engine
        .start::<_, String>(workflow, &input)
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(engine.status(run).await.unwrap().status, RunStatus::Parked);
    assert_eq!(engine.runs_in_memory(), 0);
    run
}

async fn only_gate(engine: &Engine) -> GateId {
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending[0].gate
}

/// Freezes the store right after the next durable commit, runs `act` (which must be
/// acknowledged), then crashes: what the act was told is durable is all that is left.
async fn act_then_crash<F: std::future::Future<Output = annal::Result<()>>>(
    store: &SimStore,
    engine: Engine,
    act: F,
) {
    store.crash_after_syncs(1);
    act.await.expect("the act is acknowledged");
    assert!(store.is_frozen(), "the act's commit was the last one");
    engine.shutdown().await;
    drop(engine);
    store.crash();
}

/// What the crash left: the run's status and its history's last event.
async fn left(store: &SimStore, run: RunId) -> (RunStatus, &'static str) {
    let meta = store.meta(run).await.unwrap().unwrap();
    let history = annal::read_history(store, run).await.unwrap();
    (
        RunStatus::from_code(meta.status).unwrap(),
        history.last().unwrap().kind.name(),
    )
}

/// Issue 21's history: timer fired, gate asked, decision recorded and acknowledged, crash.
/// The decision and the status that makes the run runnable are durable together, so the
/// run is `Running` after the crash and the reopened engine finishes it.
#[tokio::test(start_paused = true)]
async fn a_decision_acknowledged_just_before_a_crash_leaves_the_run_runnable() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = parked_run(&engine, "ship", 2703.into()).await;
    let gate = only_gate(&engine).await;
    let decider = engine.clone();
    act_then_crash(&store, engine, async move {
        decider
            .decide(gate, &dana(), Verdict::Approve { edits: None }, "ok")
            .await
    })
    .await;
    assert_eq!(
        left(&store, run).await,
        (RunStatus::Running, "ApprovalDecided"),
        "the decision is durable, and so is the status that lets recovery resume the run"
    );
    let engine = builder(&store, &clock)
        .config(annal::EngineConfig {
            park_after_ms: 1_000,
            // The fix alone must do it: no sweep after the open's.
            sweep_ms: u64::MAX,
            ..annal::EngineConfig::default()
        })
        .open()
        .await
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        engine.handle::<String>(run).result(),
    )
    .await
    .expect("the run finishes")
    .unwrap();
    assert_eq!(out, "order 2703 shipped, approved by dana");
}

/// The same for a signal to a parked run, and for a decision recorded by an operator-only
/// engine (the CLI's), which leaves the run for the service to resume.
#[tokio::test(start_paused = true)]
async fn a_signal_or_an_operator_decision_before_a_crash_leaves_the_run_runnable() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = parked_run(&engine, "wait_go", serde_json::Value::Null).await;
    let sender = engine.clone();
    act_then_crash(&store, engine, async move {
        sender.signal(run, "go", &"now").await
    })
    .await;
    assert_eq!(
        left(&store, run).await,
        (RunStatus::Running, "SignalReceived")
    );
    let engine = builder(&store, &clock).open().await.unwrap();
    assert_eq!(
        engine.handle::<String>(run).result().await.unwrap(),
        "went: now"
    );

    let gated = parked_run(&engine, "ship", 7.into()).await;
    let gate = only_gate(&engine).await;
    engine.shutdown().await;
    drop(engine);
    let operator = builder(&store, &clock)
        .operator_only()
        .open()
        .await
        .unwrap();
    let decider = operator.clone();
    act_then_crash(&store, operator, async move {
        decider
            .decide(
                gate,
                &dana(),
                Verdict::Approve { edits: None },
                "from the CLI",
            )
            .await
    })
    .await;
    assert_eq!(
        left(&store, gated).await,
        (RunStatus::Running, "ApprovalDecided")
    );
    let engine = builder(&store, &clock).open().await.unwrap();
    assert_eq!(
        engine.handle::<String>(gated).result().await.unwrap(),
        "order 7 shipped, approved by dana"
    );
}

/// Appends one event to a run behind the engine's back, as an engine without the fix left
/// it: the event recorded, the run's status untouched.
async fn append_behind(store: &SimStore, run: RunId, kind: EventKind) {
    let seq = store.meta(run).await.unwrap().unwrap().next_seq;
    let event = Event {
        seq,
        at_ms: 1_700_000_000_000,
        kind,
    };
    store
        .append_durable(AppendBatch {
            run,
            expected_next_seq: seq,
            events: vec![annal::codec::encode_event(&event)],
            meta: None,
            index: vec![],
        })
        .await
        .unwrap();
}

fn decided(gate: GateId) -> EventKind {
    EventKind::ApprovalDecided {
        gate: gate.0,
        approved: true,
        actor: "dana".into(),
        reason: "ok".into(),
        edits: None,
    }
}

/// Defence in depth: a store left with a parked run whose history ends with its decision
/// (exactly the state of issue 21) is repaired at open, and a live engine finds such a run
/// at its next sweep.
#[tokio::test(start_paused = true)]
async fn a_parked_run_whose_history_holds_its_decision_is_resumed_at_open_and_by_the_sweep() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = parked_run(&engine, "ship", 2703.into()).await;
    let gate = only_gate(&engine).await;
    engine.shutdown().await;
    drop(engine);
    append_behind(&store, run, decided(gate)).await;
    assert_eq!(
        left(&store, run).await,
        (RunStatus::Parked, "ApprovalDecided"),
        "the state the soak found"
    );
    let engine = builder(&store, &clock).open().await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        engine.handle::<String>(run).result(),
    )
    .await
    .expect("the open resumes it")
    .unwrap();
    assert_eq!(out, "order 2703 shipped, approved by dana");

    // A live engine: the event lands behind its back (another process, an older tool).
    let run = parked_run(&engine, "ship", 2704.into()).await;
    let gate = only_gate(&engine).await;
    append_behind(&store, run, decided(gate)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Parked,
        "not yet swept"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(61),
        engine.handle::<String>(run).result(),
    )
    .await
    .expect("the sweep resumes it within sweep_ms")
    .unwrap();
    assert_eq!(out, "order 2704 shipped, approved by dana");
    let history = engine.history(run).await.unwrap();
    assert_eq!(kinds(&history).last(), Some(&"RunCompleted"));
}

/// A parked run whose due time passed but whose due-time entry is gone (nothing would wake
/// it) is resumed by the sweep.
#[tokio::test(start_paused = true)]
async fn a_parked_run_past_its_due_time_with_no_index_entry_is_resumed_by_the_sweep() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = parked_run(&engine, "nap", serde_json::Value::Null).await;
    let wake_ms = store.meta(run).await.unwrap().unwrap().wake_ms.unwrap();
    store
        .append_durable(AppendBatch {
            run,
            expected_next_seq: store.meta(run).await.unwrap().unwrap().next_seq,
            events: vec![],
            meta: None,
            index: vec![IndexOp::DeleteTimer {
                fire_at_ms: wake_ms,
                id: 0,
            }],
        })
        .await
        .unwrap();
    assert!(store.due_timers(u64::MAX, 10).await.unwrap().is_empty());
    let out = tokio::time::timeout(
        Duration::from_secs(3600 + 61),
        engine.handle::<String>(run).result(),
    )
    .await
    .expect("the sweep resumes it after its due time")
    .unwrap();
    assert_eq!(out, "rested");
}
