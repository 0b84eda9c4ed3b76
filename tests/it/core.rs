//! Engine core: steps, drift, timers, signals, dedupe, recovery, versioning, cancellation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal::{
    Ctx, Engine, EngineBuilder, Error, RunId, RunStatus, StartOptions, StepClass, WorkflowError,
};
use annal_storage::SimStore;
use futures::future::BoxFuture;

use crate::support::{completed_steps, kinds, on};

type Workflow<I, O> =
    Arc<dyn Fn(Ctx, I) -> BoxFuture<'static, Result<O, WorkflowError>> + Send + Sync>;

/// A workflow shaped by a list of calls: a name runs a step, `?name` waits for a signal.
fn shaped(calls: &[&'static str], runs: Arc<AtomicU32>) -> Workflow<(), Vec<String>> {
    let calls: Vec<&'static str> = calls.to_vec();
    Arc::new(move |ctx: Ctx, ()| {
        let calls = calls.clone();
        let runs = Arc::clone(&runs);
        Box::pin(async move {
            let mut out = Vec::new();
            for call in calls {
                if let Some(signal) = call.strip_prefix('?') {
                    let value: String = ctx.signal(signal).await?;
                    out.push(value);
                } else {
                    let runs = Arc::clone(&runs);
                    let value: String = ctx
                        .step(call)
                        .class(StepClass::Read)
                        .run(move |_| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            async move { Ok(call.to_uppercase()) }
                        })
                        .await?;
                    out.push(value);
                }
            }
            Ok(out)
        })
    })
}

fn register(
    builder: EngineBuilder,
    name: &str,
    version: u32,
    wf: Workflow<(), Vec<String>>,
) -> EngineBuilder {
    builder.register(name, version, move |ctx, input| wf(ctx, input))
}

/// Starts `calls` and leaves the run waiting for its signal `go`; returns the run.
async fn in_flight(store: &Arc<SimStore>, calls: &[&'static str]) -> RunId {
    let engine = register(on(store), "w", 1, shaped(calls, Arc::default()))
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Vec<String>>("w", &()).await.unwrap();
    // Let the run reach its wait.
    tokio::time::sleep(Duration::from_millis(10)).await;
    engine.shutdown().await;
    handle.run_id()
}

async fn drift_of(original: &[&'static str], changed: &[&'static str]) -> annal::DriftError {
    let store = Arc::new(SimStore::new());
    let run = in_flight(&store, original).await;
    let before = annal::read_history(store.as_ref(), run).await.unwrap();
    let engine = register(on(&store), "w", 1, shaped(changed, Arc::default()))
        .open()
        .await
        .unwrap();
    engine.signal(run, "go", &"went").await.unwrap();
    let err = engine
        .handle::<Vec<String>>(run)
        .result()
        .await
        .unwrap_err();
    let info = engine.status(run).await.unwrap();
    assert_eq!(info.status, RunStatus::Blocked);
    assert!(info.note.contains("drift"), "{}", info.note);
    // Nothing but the signal was written: the history is intact.
    let after = annal::read_history(store.as_ref(), run).await.unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    assert_eq!(kinds(&after[before.len()..]), ["SignalReceived"]);
    match err {
        Error::Drift(drift) => {
            assert_eq!(drift.run, run);
            drift
        }
        other => panic!("expected drift, got {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_three_step_workflow_completes_and_records_each_step() {
    let store = Arc::new(SimStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let engine = register(
        on(&store),
        "w",
        1,
        shaped(&["a", "b", "c"], Arc::clone(&runs)),
    )
    .open()
    .await
    .unwrap();
    let handle = engine.start::<_, Vec<String>>("w", &()).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), ["A", "B", "C"]);
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(completed_steps(&history), ["a", "b", "c"]);
    assert_eq!(kinds(&history).first(), Some(&"RunStarted"));
    assert_eq!(kinds(&history).last(), Some(&"RunCompleted"));
    assert_eq!(
        engine.status(handle.run_id()).await.unwrap().status,
        RunStatus::Completed
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn drift_renamed_step() {
    let d = drift_of(&["a", "b", "?go", "c"], &["a", "b2", "?go", "c"]).await;
    assert_eq!((d.position, d.seq), (1, Some(2)));
    assert_eq!(d.expected, "step 'b' (Read)");
    assert_eq!(d.got, "step 'b2' (Read)");
    assert_eq!(d.fields, ["name"]);
}

#[tokio::test(start_paused = true)]
async fn drift_reordered_steps() {
    let d = drift_of(&["a", "b", "?go", "c"], &["b", "a", "?go", "c"]).await;
    assert_eq!((d.position, d.seq), (0, Some(1)));
    assert_eq!(
        (d.expected.as_str(), d.got.as_str()),
        ("step 'a' (Read)", "step 'b' (Read)")
    );
    assert_eq!(d.fields, ["name"]);
}

#[tokio::test(start_paused = true)]
async fn drift_removed_step() {
    let d = drift_of(&["a", "b", "?go", "c"], &["a", "?go", "c"]).await;
    assert_eq!((d.position, d.seq), (1, Some(2)));
    assert_eq!(
        (d.expected.as_str(), d.got.as_str()),
        ("step 'b' (Read)", "signal 'go'")
    );
    assert_eq!(d.fields, ["kind"]);
}

#[tokio::test(start_paused = true)]
async fn drift_inserted_step() {
    let d = drift_of(&["a", "b", "?go", "c"], &["a", "x", "b", "?go", "c"]).await;
    assert_eq!((d.position, d.seq), (1, Some(2)));
    assert_eq!(
        (d.expected.as_str(), d.got.as_str()),
        ("step 'b' (Read)", "step 'x' (Read)")
    );
    assert_eq!(d.fields, ["name"]);
}

#[tokio::test(start_paused = true)]
async fn drift_code_that_returns_before_recorded_steps() {
    let d = drift_of(&["a", "b", "?go", "c"], &["a"]).await;
    assert_eq!((d.position, d.seq), (1, Some(2)));
    assert_eq!(d.expected, "step 'b' (Read)");
    assert_eq!(d.got, "workflow returned before reaching it");
}

#[tokio::test(start_paused = true)]
async fn a_blocked_run_resumes_when_matching_code_is_deployed() {
    let store = Arc::new(SimStore::new());
    let run = in_flight(&store, &["a", "b", "?go", "c"]).await;
    let drifted = register(on(&store), "w", 1, shaped(&["z", "?go"], Arc::default()))
        .open()
        .await
        .unwrap();
    drifted.signal(run, "go", &"went").await.unwrap();
    assert!(matches!(
        drifted.handle::<Vec<String>>(run).result().await,
        Err(Error::Drift(_))
    ));
    drifted.shutdown().await;

    let runs = Arc::new(AtomicU32::new(0));
    let fixed = register(
        on(&store),
        "w",
        1,
        shaped(&["a", "b", "?go", "c"], Arc::clone(&runs)),
    )
    .open()
    .await
    .unwrap();
    let out = fixed.handle::<Vec<String>>(run).result().await.unwrap();
    assert_eq!(out, ["A", "B", "went", "C"]);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only step c runs; a and b are replayed"
    );
}

#[tokio::test(start_paused = true)]
async fn steps_added_after_the_recorded_history_run_live() {
    let store = Arc::new(SimStore::new());
    let run = in_flight(&store, &["a", "?go"]).await;
    let engine = register(
        on(&store),
        "w",
        1,
        shaped(&["a", "?go", "extra"], Arc::default()),
    )
    .open()
    .await
    .unwrap();
    engine.signal(run, "go", &"went").await.unwrap();
    assert_eq!(
        engine.handle::<Vec<String>>(run).result().await.unwrap(),
        ["A", "went", "EXTRA"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_workflow_blocks_on_recovery_and_keeps_its_history() {
    let store = Arc::new(SimStore::new());
    let run = in_flight(&store, &["a", "?go"]).await;
    let before = annal::read_history(store.as_ref(), run).await.unwrap();
    // The next deploy registers only version 2 of "w", and "w" v1 runs are still in flight.
    let engine = register(on(&store), "w", 2, shaped(&["a", "?go"], Arc::default()))
        .open()
        .await
        .unwrap();
    assert!(matches!(
        engine.handle::<Vec<String>>(run).result().await,
        Err(Error::Blocked { .. })
    ));
    let info = engine.status(run).await.unwrap();
    assert_eq!(info.status, RunStatus::Blocked);
    assert_eq!(
        info.note,
        "workflow 'w' version 1 is not registered in this engine"
    );
    assert_eq!(
        annal::read_history(store.as_ref(), run).await.unwrap(),
        before
    );
    assert!(matches!(
        engine.start::<_, Vec<String>>("nope", &()).await,
        Err(Error::UnknownWorkflow { ref name, version: None }) if name == "nope"
    ));
}

#[tokio::test(start_paused = true)]
async fn runs_stay_pinned_to_the_version_they_started_on() {
    let store = Arc::new(SimStore::new());
    let run = in_flight(&store, &["a", "?go"]).await;
    let engine = register(
        register(on(&store), "w", 1, shaped(&["a", "?go"], Arc::default())),
        "w",
        2,
        shaped(&["new", "?go"], Arc::default()),
    )
    .open()
    .await
    .unwrap();
    engine.signal(run, "go", &"old").await.unwrap();
    assert_eq!(
        engine.handle::<Vec<String>>(run).result().await.unwrap(),
        ["A", "old"]
    );
    let fresh = engine.start::<_, Vec<String>>("w", &()).await.unwrap();
    assert_eq!(engine.status(fresh.run_id()).await.unwrap().version, 2);
    engine.signal(fresh.run_id(), "go", &"new").await.unwrap();
    assert_eq!(fresh.result().await.unwrap(), ["NEW", "new"]);
}

#[tokio::test(start_paused = true)]
async fn a_dedupe_key_joins_the_existing_run() {
    let store = Arc::new(SimStore::new());
    let engine = register(on(&store), "w", 1, shaped(&["a", "?go"], Arc::default()))
        .open()
        .await
        .unwrap();
    let options = StartOptions {
        dedupe_key: Some("lead-42".into()),
        ..StartOptions::default()
    };
    let first = engine
        .start_with::<_, Vec<String>>("w", &(), options.clone())
        .await
        .unwrap();
    let second = engine
        .start_with::<_, Vec<String>>("w", &(), options.clone())
        .await
        .unwrap();
    assert_eq!(first.run_id(), second.run_id());
    assert_eq!(engine.runs().await.unwrap().len(), 1);
    engine.signal(first.run_id(), "go", &"x").await.unwrap();
    assert_eq!(second.result().await.unwrap(), ["A", "x"]);
    // Still the same run after it ended, and after a restart.
    engine.shutdown().await;
    let engine = register(on(&store), "w", 1, shaped(&["a", "?go"], Arc::default()))
        .open()
        .await
        .unwrap();
    let third = engine
        .start_with::<_, Vec<String>>("w", &(), options)
        .await
        .unwrap();
    assert_eq!(third.run_id(), first.run_id());
}

#[tokio::test(start_paused = true)]
async fn concurrent_starts_with_one_dedupe_key_make_one_run() {
    let store = Arc::new(SimStore::new());
    let engine = register(on(&store), "w", 1, shaped(&["a"], Arc::default()))
        .open()
        .await
        .unwrap();
    let options = StartOptions {
        dedupe_key: Some("k".into()),
        ..StartOptions::default()
    };
    let starts = (0..8).map(|_| engine.start_with::<_, Vec<String>>("w", &(), options.clone()));
    let handles = futures::future::join_all(starts).await;
    let ids: std::collections::BTreeSet<_> =
        handles.into_iter().map(|h| h.unwrap().run_id()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(engine.runs().await.unwrap().len(), 1);
}

/// On sled, concurrent starts claim the key in the committer's groups, so most of them meet
/// the claim there (`DedupeTaken`) rather than in the read before: they all get the one run,
/// and it is there after the store is closed and opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_with_one_dedupe_key_on_sled_make_one_run_that_stays() {
    let dir = tempfile::tempdir().unwrap();
    // Through `open_sled`: another test's child process may briefly hold sled's lock.
    let open = || {
        let store = Arc::new(crate::support::open_sled(dir.path()));
        register(
            Engine::builder().store(store as Arc<dyn annal_storage::LogStore>),
            "w",
            1,
            shaped(&["?go"], Arc::default()),
        )
        .open()
    };
    let engine = open().await.unwrap();
    let options = StartOptions {
        dedupe_key: Some("lead-42".into()),
        ..StartOptions::default()
    };
    let starts = (0..16).map(|_| {
        let (engine, options) = (engine.clone(), options.clone());
        tokio::spawn(async move {
            engine
                .start_with::<_, Vec<String>>("w", &(), options)
                .await
                .map(|h| h.run_id())
        })
    });
    let mut ids = std::collections::BTreeSet::new();
    for start in futures::future::join_all(starts).await {
        ids.insert(start.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let run = *ids.first().unwrap();
    engine.shutdown().await;
    drop(engine);

    let engine = open().await.unwrap();
    assert_eq!(engine.runs().await.unwrap().len(), 1);
    engine.signal(run, "go", &"now").await.unwrap();
    let again = engine
        .start_with::<_, Vec<String>>("w", &(), options)
        .await
        .unwrap();
    assert_eq!(again.run_id(), run);
    assert_eq!(again.result().await.unwrap(), ["now"]);
}

/// A run stopped by a failed write (a full disk, a failed fsync) does not leave its waiters
/// hanging: `result()` reports the storage failure, and so does a later handle.
#[tokio::test(start_paused = true)]
async fn result_reports_a_store_failure_that_stopped_the_run() {
    let store = Arc::new(SimStore::new());
    let engine = register(on(&store), "w", 1, shaped(&["a", "b"], Arc::default()))
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Vec<String>>("w", &()).await.unwrap();
    // The run's first wait for durability (before step b's effect) fails.
    store.fail_next_sync("No space left on device");
    let result = tokio::time::timeout(Duration::from_secs(60), handle.result())
        .await
        .expect("result() hung after the store failed");
    assert!(
        matches!(&result, Err(Error::Storage(annal_storage::Error::Poisoned { cause })) if cause.contains("No space")),
        "{result:?}"
    );
    let later = engine.handle::<Vec<String>>(handle.run_id());
    let result = tokio::time::timeout(Duration::from_secs(60), later.result())
        .await
        .expect("a later result() hung");
    assert!(
        matches!(
            result,
            Err(Error::Storage(annal_storage::Error::Poisoned { .. }))
        ),
        "{result:?}"
    );
}

/// A signal refused because the run ended is refused only once that end is durable: a
/// crash in between would take the end back and leave the run waiting for the signal its
/// sender was told it could not deliver.
#[tokio::test(start_paused = true)]
async fn a_signal_is_refused_for_an_end_only_once_the_end_is_durable() {
    let store = Arc::new(crate::support::HeldStore::new());
    let engine = register(
        Engine::builder().store(Arc::clone(&store) as Arc<dyn annal_storage::LogStore>),
        "w",
        1,
        shaped(&["?go"], Arc::default()),
    )
    .open()
    .await
    .unwrap();
    let run = engine
        .start::<_, Vec<String>>("w", &())
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_millis(10)).await;

    store.hold(true);
    let terminate = tokio::spawn({
        let engine = engine.clone();
        async move { engine.terminate(run, "ops", "duplicate lead").await }
    });
    while engine.status(run).await.unwrap().status != RunStatus::Terminated {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let signal = tokio::spawn({
        let engine = engine.clone();
        async move { engine.signal(run, "go", &"late").await }
    });
    let refused = store.answer_once_durable(signal, "an end").await;
    assert!(
        matches!(
            refused,
            Err(Error::RunEnded {
                status: RunStatus::Terminated,
                ..
            })
        ),
        "{refused:?}"
    );
    terminate.await.unwrap().unwrap();
}

async fn sleeper(ctx: Ctx, days: u64) -> Result<u64, WorkflowError> {
    let before = ctx.now_ms().await;
    ctx.sleep(Duration::from_secs(days * 86_400)).await?;
    let after = ctx.now_ms().await;
    Ok((after - before) / 86_400_000)
}

#[tokio::test(start_paused = true)]
async fn a_timer_survives_an_engine_restart_and_waits_only_the_remainder() {
    let store = Arc::new(SimStore::new());
    let clock = Arc::new(annal::clock::TokioClock::starting_at(1_700_000_000_000));
    let open = || {
        Engine::builder()
            .store(Arc::clone(&store) as Arc<dyn annal_storage::LogStore>)
            .clock(Arc::clone(&clock) as Arc<dyn annal::clock::Clock>)
            .register("sleeper", 1, sleeper)
            .open()
    };
    let engine = open().await.unwrap();
    let run = engine
        .start::<_, u64>("sleeper", &3u64)
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Parked,
        "a long wait parks the run"
    );
    engine.shutdown().await;
    drop(engine);

    let started = tokio::time::Instant::now();
    let engine = open().await.unwrap();
    assert_eq!(engine.handle::<u64>(run).result().await.unwrap(), 3);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2 * 86_400 - 1)
            && waited < Duration::from_secs(2 * 86_400 + 120),
        "{waited:?}"
    );
    let history = engine.history(run).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "RunStarted",
            "ValueRecorded",
            "TimerStarted",
            "TimerFired",
            "ValueRecorded",
            "RunCompleted"
        ]
    );
}

/// More parked runs fall due at once than the timer service wakes per scan (1,024): the
/// rest are woken as the first ones settle, not at the next poll, even though every run ends
/// (an ended run registers no new wake-up time of its own).
#[tokio::test(start_paused = true)]
async fn more_runs_due_at_once_than_one_timer_scan_wakes_all_finish_promptly() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .config(annal::EngineConfig {
            park_after_ms: 1_000,
            timer_poll_ms: 30 * 86_400_000,
            ..annal::EngineConfig::default()
        })
        .register("sleeper", 1, sleeper)
        .open()
        .await
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..1_300 {
        runs.push(engine.start::<_, u64>("sleeper", &1u64).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.runs_in_memory(), 0, "every run parked on its timer");

    let started = tokio::time::Instant::now();
    for run in &runs {
        assert_eq!(run.result().await.unwrap(), 1);
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(86_400 + 3_600),
        "the last runs waited for a poll: {waited:?}"
    );
}

/// After the store failed, every due run fails to wake for the same reason: the timer
/// service says so once per scan, not once for each of up to 1,024 due runs at every poll.
#[tokio::test(start_paused = true)]
async fn a_failed_store_is_reported_once_per_timer_scan_not_once_per_due_run() {
    use tracing_subscriber::util::SubscriberInitExt;
    let log = crate::support::CapturedLog::default();
    let _capture = log.subscriber().set_default();
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .config(annal::EngineConfig {
            park_after_ms: 1_000,
            timer_poll_ms: 3_600_000,
            ..annal::EngineConfig::default()
        })
        .register("sleeper", 1, sleeper)
        .open()
        .await
        .unwrap();
    for _ in 0..20 {
        engine.start::<_, u64>("sleeper", &1u64).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.runs_in_memory(), 0, "every run parked on its timer");
    store.fail_next_sync("No space left on device");
    let failed = engine.start::<_, u64>("sleeper", &1u64).await;
    assert!(failed.is_err(), "{failed:?}");
    // Due, and three polls after that.
    tokio::time::sleep(Duration::from_secs(86_400 + 3 * 3_600)).await;
    let text = log.text();
    assert_eq!(text.matches("could not be woken").count(), 0, "{text}");
    let reports = text
        .matches("timer service could not wake due runs")
        .count();
    assert!((1..=5).contains(&reports), "{reports} reports:\n{text}");
    assert!(text.contains("No space left on device"), "{text}");
}

async fn waiter(ctx: Ctx, (): ()) -> Result<Vec<String>, WorkflowError> {
    let first: String = ctx.signal("note").await?;
    let second: String = ctx.signal("note").await?;
    Ok(vec![first, second])
}

#[tokio::test(start_paused = true)]
async fn signals_sent_while_parked_or_before_the_wait_are_not_lost() {
    let store = Arc::new(SimStore::new());
    let open = || {
        on(&store)
            .park_after_ms(1_000)
            .register("waiter", 1, waiter)
            .open()
    };
    let engine = open().await.unwrap();
    let run = engine
        .start::<_, Vec<String>>("waiter", &())
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.status(run).await.unwrap().status, RunStatus::Parked);
    // Two signals arrive while the engine is down... (written by a second engine on the store)
    engine.shutdown().await;
    let engine = open().await.unwrap();
    engine.signal(run, "note", &"one").await.unwrap();
    engine.signal(run, "note", &"two").await.unwrap();
    assert_eq!(
        engine.handle::<Vec<String>>(run).result().await.unwrap(),
        ["one", "two"]
    );
    assert!(matches!(
        engine.signal(run, "note", &"late").await,
        Err(Error::RunEnded {
            status: RunStatus::Completed,
            ..
        })
    ));
    assert!(matches!(
        engine.signal(RunId([7; 16]), "note", &"x").await,
        Err(Error::UnknownRun(_))
    ));
}

async fn joined(ctx: Ctx, (): ()) -> Result<(u64, u64), WorkflowError> {
    let slow = ctx.step("slow").class(StepClass::Read).run(|_| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(1u64)
    });
    let fast = ctx
        .step("fast")
        .class(StepClass::Read)
        .run(|_| async { Ok(2u64) });
    let (a, b) = futures::future::try_join(slow, fast).await?;
    let _: String = ctx.signal("go").await?;
    Ok((a, b))
}

#[tokio::test(start_paused = true)]
async fn joined_steps_replay_by_call_order_not_completion_order() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("joined", 1, joined)
        .open()
        .await
        .unwrap();
    let run = engine
        .start::<_, (u64, u64)>("joined", &())
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.shutdown().await;
    let history = annal::read_history(store.as_ref(), run).await.unwrap();
    assert_eq!(
        completed_steps(&history),
        ["fast", "slow"],
        "fast finished first"
    );
    let engine = on(&store)
        .register("joined", 1, joined)
        .open()
        .await
        .unwrap();
    engine.signal(run, "go", &"x").await.unwrap();
    assert_eq!(
        engine.handle::<(u64, u64)>(run).result().await.unwrap(),
        (1, 2)
    );
}

async fn patched_flow(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    let _: String = ctx.signal("go").await?;
    if ctx.patched("use-v2-pricing").await {
        Ok("v2".into())
    } else {
        Ok("v1".into())
    }
}

async fn unpatched_flow(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    let _: String = ctx.signal("go").await?;
    Ok("v1".into())
}

#[tokio::test(start_paused = true)]
async fn patched_is_true_live_and_false_for_histories_without_the_marker() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("p", 1, unpatched_flow)
        .open()
        .await
        .unwrap();
    let old = engine.start::<_, String>("p", &()).await.unwrap();
    engine.signal(old.run_id(), "go", &"x").await.unwrap();
    assert_eq!(old.result().await.unwrap(), "v1");
    let in_flight = engine.start::<_, String>("p", &()).await.unwrap().run_id();
    engine.shutdown().await;

    let engine = on(&store)
        .register("p", 1, patched_flow)
        .open()
        .await
        .unwrap();
    let fresh = engine.start::<_, String>("p", &()).await.unwrap();
    engine.signal(fresh.run_id(), "go", &"x").await.unwrap();
    assert_eq!(fresh.result().await.unwrap(), "v2", "live: patched");
    assert!(kinds(&engine.history(fresh.run_id()).await.unwrap()).contains(&"PatchMarker"));
    engine.signal(in_flight, "go", &"x").await.unwrap();
    assert_eq!(
        engine.handle::<String>(in_flight).result().await.unwrap(),
        "v2",
        "in flight, the patch point is reached live"
    );
    // A finished history without the marker replays the old branch, without drift.
    let replayed = annal::testing::Replayer::new(on(&store).register("p", 1, patched_flow));
    replayed
        .replay(&engine.history(old.run_id()).await.unwrap())
        .await
        .unwrap();
}

async fn cancellable(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    match ctx.sleep(Duration::from_secs(3600)).await {
        Ok(()) => Ok("slept".into()),
        Err(cancelled) => {
            let undo: String = ctx
                .step("undo")
                .run(|_| async { Ok("undone".to_string()) })
                .await?;
            Err(WorkflowError::Cancelled(format!(
                "{} after {undo}",
                cancelled.reason
            )))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_reaches_the_workflow_which_cleans_up() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("c", 1, cancellable)
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, String>("c", &()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    engine
        .cancel(handle.run_id(), "ops", "customer withdrew")
        .await
        .unwrap();
    match handle.result().await {
        Err(Error::Cancelled { reason, .. }) => {
            assert_eq!(reason, "customer withdrew after undone")
        }
        other => panic!("expected cancellation, got {other:?}"),
    }
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "RunStarted",
            "TimerStarted",
            "CancelRequested",
            "TimerCancelled",
            "StepRan",
            "RunCancelled"
        ]
    );
    assert_eq!(
        engine.status(handle.run_id()).await.unwrap().status,
        RunStatus::Cancelled
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_stops_a_parked_run_without_running_its_code() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .park_after_ms(1_000)
        .register("c", 1, cancellable)
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, String>("c", &()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        engine.status(handle.run_id()).await.unwrap().status,
        RunStatus::Parked
    );
    engine
        .terminate(handle.run_id(), "ops", "duplicate order")
        .await
        .unwrap();
    assert!(
        matches!(handle.result().await, Err(Error::Terminated { ref actor, .. }) if actor == "ops")
    );
    tokio::time::sleep(Duration::from_secs(7200)).await;
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(
        kinds(&history),
        ["RunStarted", "TimerStarted", "RunTerminated"]
    );
    assert!(
        engine
            .store()
            .due_timers(u64::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "its timer is gone"
    );
}

async fn counter(ctx: Ctx, n: u32) -> Result<u32, WorkflowError> {
    let next: u32 = ctx
        .step("inc")
        .class(StepClass::Read)
        .run(move |_| async move { Ok(n + 1) })
        .await?;
    if next < 3 {
        return Err(ctx.continue_as_new(&next));
    }
    Ok(next)
}

#[tokio::test(start_paused = true)]
async fn continue_as_new_chains_runs_with_fresh_histories() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("counter", 1, counter)
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, u32>("counter", &0u32).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), 3);
    let runs = engine.runs().await.unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::ContinuedAsNew)
            .count(),
        2
    );
    assert!(
        runs.iter().all(|r| r.events <= 4),
        "each history stays short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_can_be_reopened_right_after_shutdown() {
    // The store is released once shutdown returned and the last handle is dropped: no task
    // of the engine still holds it.
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let engine = Engine::builder()
            .path(dir.path())
            .register("sleeper", 1, sleeper)
            .open()
            .await
            .unwrap();
        let handle = engine.start::<_, u64>("sleeper", &1u64).await.unwrap();
        engine.shutdown().await;
        drop(handle);
        drop(engine);
        drop(crate::support::open_sled(dir.path()));
    }
}

#[tokio::test(start_paused = true)]
async fn the_replayer_reports_code_that_goes_past_or_ends_differently_from_a_finished_history() {
    let store = Arc::new(SimStore::new());
    let engine = register(on(&store), "w", 1, shaped(&["a", "b"], Arc::default()))
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Vec<String>>("w", &()).await.unwrap();
    handle.result().await.unwrap();
    let history = engine.history(handle.run_id()).await.unwrap();
    let replay = |calls: &'static [&'static str]| {
        annal::testing::Replayer::new(register(
            on(&Arc::new(SimStore::new())),
            "w",
            1,
            shaped(calls, Arc::default()),
        ))
    };
    replay(&["a", "b"]).replay(&history).await.unwrap();
    match replay(&["a", "b", "c"]).replay(&history).await {
        Err(Error::Drift(d)) => {
            assert_eq!((d.position, d.seq), (2, Some(3)));
            assert_eq!(d.expected, "the end of the run (RunCompleted)");
            assert_eq!(d.got, "step 'c' (Read)");
        }
        other => panic!("expected drift, got {other:?}"),
    }
    // Same calls, different output: the uppercase step now lowercases.
    let lower: Workflow<(), Vec<String>> = Arc::new(|ctx: Ctx, ()| {
        Box::pin(async move {
            let mut out = Vec::new();
            for call in ["a", "b"] {
                let _: String = ctx
                    .step(call)
                    .class(StepClass::Read)
                    .run(move |_| async move { Ok(call.to_string()) })
                    .await?;
                out.push(call.to_string());
            }
            Ok(out)
        })
    });
    match annal::testing::Replayer::new(register(on(&Arc::new(SimStore::new())), "w", 1, lower))
        .replay(&history)
        .await
    {
        Err(Error::Drift(d)) => {
            assert_eq!(d.fields, ["output"]);
            assert_eq!(d.expected, r#"output ["A","B"]"#);
            assert_eq!(d.got, r#"output ["a","b"]"#);
        }
        other => panic!("expected drift, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_engine_handle_stops_its_runs_and_releases_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .path(dir.path())
        .register("sleeper", 1, sleeper)
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, u64>("sleeper", &1u64).await.unwrap();
    let run = handle.run_id();
    let clone = engine.clone();
    drop(engine);
    assert_eq!(
        clone.status(run).await.unwrap().status,
        RunStatus::Running,
        "a clone keeps it running"
    );
    drop(clone);
    assert!(matches!(handle.result().await, Err(Error::Shutdown)));
    drop(handle);
    // The aborted tasks let go of the store shortly after.
    let mut reopened = None;
    for _ in 0..200 {
        match Engine::builder()
            .path(dir.path())
            .register("sleeper", 1, sleeper)
            .open()
            .await
        {
            Ok(engine) => {
                reopened = Some(engine);
                break;
            }
            Err(Error::Storage(annal_storage::Error::Locked { .. })) => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let engine = reopened.expect("the store was released");
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Running,
        "resumed from its log"
    );
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_parked_run_records_when_it_wants_to_be_woken() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .park_after_ms(1_000)
        .register("sleeper", 1, sleeper)
        .open()
        .await
        .unwrap();
    let run = engine
        .start::<_, u64>("sleeper", &2u64)
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let meta = engine.store().meta(run).await.unwrap().unwrap();
    assert_eq!(meta.status, RunStatus::Parked.code());
    let history = engine.history(run).await.unwrap();
    let fire_at = history.iter().find_map(|e| match e.kind {
        annal::EventKind::TimerStarted { fire_at_ms, .. } => Some(fire_at_ms),
        _ => None,
    });
    assert_eq!(meta.wake_ms, fire_at);
    assert_eq!(engine.handle::<u64>(run).result().await.unwrap(), 2);
    assert_eq!(
        engine.store().meta(run).await.unwrap().unwrap().wake_ms,
        None,
        "cleared once it runs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_parked_run_whose_log_lost_its_tail_is_blocked_at_open_not_resumed() {
    // Without a checkpoint, and with one that covers the lost record: neither masks the loss.
    for checkpoint_after_events in [u64::MAX, 2] {
        let store = Arc::new(SimStore::new());
        let runs = Arc::new(AtomicU32::new(0));
        let calls = ["a", "b", "?go", "c"];
        let run = parked(&store, &calls, &runs, checkpoint_after_events).await;
        // The last record disappears behind the engine's back (a disk that lied about a
        // flush); the metadata written when the run parked still says where the log ended.
        let history = annal::read_history(store.as_ref(), run).await.unwrap();
        let last = history.len() as u64 - 1;
        assert!(store.remove_record(run, last));

        let engine = register(on(&store), "w", 1, shaped(&calls, Arc::clone(&runs)))
            .open()
            .await
            .unwrap();
        let info = engine.status(run).await.unwrap();
        assert_eq!(info.status, RunStatus::Blocked, "{}", info.note);
        assert!(info.note.contains("missing"), "{}", info.note);
        // Nothing ran again and nothing was appended: the damage is left for an operator.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let after = annal::read_history(store.as_ref(), run).await.unwrap();
        assert_eq!(after[..], history[..history.len() - 1]);
        assert!(matches!(
            engine.handle::<Vec<String>>(run).result().await,
            Err(Error::Blocked { .. })
        ));
    }
}

/// Parks a run of `calls` with checkpoints after every 3 events; returns it.
async fn parked_with_checkpoint(store: &Arc<SimStore>, calls: &[&'static str]) -> RunId {
    parked(store, calls, &Arc::default(), 3).await
}

/// Starts a run of `calls`, lets it park on its signal, and shuts the engine down.
async fn parked(
    store: &Arc<SimStore>,
    calls: &[&'static str],
    runs: &Arc<AtomicU32>,
    checkpoint_after_events: u64,
) -> RunId {
    let engine = register(
        on(store)
            .park_after_ms(1_000)
            .checkpoint_after_events(checkpoint_after_events),
        "w",
        1,
        shaped(calls, Arc::clone(runs)),
    )
    .open()
    .await
    .unwrap();
    let run = engine
        .start::<_, Vec<String>>("w", &())
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.status(run).await.unwrap().status, RunStatus::Parked);
    engine.shutdown().await;
    run
}

/// Replaces a run's checkpoint through the store, as the engine writes it.
async fn put_checkpoint(store: &Arc<SimStore>, run: RunId, bytes: Vec<u8>) {
    use annal_storage::LogStore;
    let end = store.meta(run).await.unwrap().unwrap().next_seq;
    store
        .append_durable(annal_storage::AppendBatch {
            run,
            expected_next_seq: end,
            events: Vec::new(),
            meta: None,
            index: vec![annal_storage::IndexOp::PutCheckpoint { bytes }],
        })
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parked_run_wakes_from_its_checkpoint() {
    use annal_storage::LogStore;
    let store = Arc::new(SimStore::new());
    let calls = ["a", "b", "c", "d", "?go", "e"];
    let run = parked_with_checkpoint(&store, &calls).await;
    let history = annal::read_history(store.as_ref(), run).await.unwrap();
    let checkpoint = store
        .checkpoint(run)
        .await
        .unwrap()
        .expect("written when parking");
    let folded = annal::codec::decode_checkpoint(&checkpoint).unwrap();
    assert_eq!(folded.next_seq(), history.len() as u64);

    // What the woken run replays comes from the checkpoint, not from re-reading the log:
    // swap in one whose step `b` recorded another output, and the run hands that back.
    let mut altered = history.clone();
    for e in &mut altered {
        if let annal::EventKind::StepRan { name, output, .. } = &mut e.kind {
            if name == "b" {
                *output = annal::Payload::encode(&"B from the checkpoint").unwrap();
            }
        }
    }
    let altered = annal::replay::ReplayState::from_events(&altered).unwrap();
    put_checkpoint(&store, run, annal::codec::encode_checkpoint(&altered)).await;

    let runs = Arc::new(AtomicU32::new(0));
    let engine = register(on(&store), "w", 1, shaped(&calls, Arc::clone(&runs)))
        .open()
        .await
        .unwrap();
    engine.signal(run, "go", &"went").await.unwrap();
    let out = engine.handle::<Vec<String>>(run).result().await.unwrap();
    assert_eq!(out, ["A", "B from the checkpoint", "C", "D", "went", "E"]);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only the step after the wait ran"
    );
}

#[tokio::test(start_paused = true)]
async fn a_damaged_or_stale_checkpoint_is_ignored_and_the_log_folded() {
    let calls = ["a", "b", "c", "d", "?go", "e"];
    for bad in ["garbage", "ahead of the log"] {
        let store = Arc::new(SimStore::new());
        let run = parked_with_checkpoint(&store, &calls).await;
        let bytes = match bad {
            "garbage" => vec![1, 2, 3],
            _ => {
                // A fold of more events than the log holds (as if the log lost its tail).
                let mut longer = annal::read_history(store.as_ref(), run).await.unwrap();
                let next = longer.len() as u64;
                longer.push(annal::Event {
                    seq: next,
                    at_ms: longer[0].at_ms,
                    kind: annal::EventKind::SignalReceived {
                        name: "other".into(),
                        payload: annal::Payload::encode(&1).unwrap(),
                    },
                });
                let state = annal::replay::ReplayState::from_events(&longer).unwrap();
                annal::codec::encode_checkpoint(&state)
            }
        };
        put_checkpoint(&store, run, bytes).await;
        let runs = Arc::new(AtomicU32::new(0));
        let engine = register(on(&store), "w", 1, shaped(&calls, Arc::clone(&runs)))
            .open()
            .await
            .unwrap();
        engine.signal(run, "go", &"went").await.unwrap();
        let out = engine.handle::<Vec<String>>(run).result().await.unwrap();
        assert_eq!(out, ["A", "B", "C", "D", "went", "E"], "{bad}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{bad}");
    }
}

#[tokio::test(start_paused = true)]
async fn drift_is_found_when_waking_from_a_checkpoint() {
    let store = Arc::new(SimStore::new());
    let run = parked_with_checkpoint(&store, &["a", "b", "c", "?go", "d"]).await;
    let engine = register(
        on(&store),
        "w",
        1,
        shaped(&["a", "x", "c", "?go", "d"], Arc::default()),
    )
    .open()
    .await
    .unwrap();
    engine.signal(run, "go", &"went").await.unwrap();
    match engine.handle::<Vec<String>>(run).result().await {
        Err(Error::Drift(d)) => {
            assert_eq!((d.position, d.seq), (1, Some(2)));
            assert_eq!(d.fields, ["name"]);
        }
        other => panic!("expected drift, got {other:?}"),
    }
}

/// Waits for a signal, then ends as its payload says: with an output, or failed.
async fn ends_on_signal(ctx: Ctx, (): ()) -> Result<Vec<String>, WorkflowError> {
    let first: String = ctx
        .step("a")
        .class(StepClass::Write)
        .run(|_| async { Ok("A".to_string()) })
        .await?;
    let how: String = ctx.signal("end").await?;
    match how.as_str() {
        "fail" => Err(WorkflowError::failed("customer left")),
        _ => Ok(vec![first, how]),
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_handed_over_at_the_end_matches_the_one_read_back() {
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("ends_on_signal", 1, ends_on_signal)
        .open()
        .await
        .unwrap();
    for how in ["done", "fail"] {
        let handle = engine
            .start::<_, Vec<String>>("ends_on_signal", &())
            .await
            .unwrap();
        let run = handle.run_id();
        // The waiter is registered before the run ends, so its driver hands the outcome
        // over; a handle made afterwards reads it back from the store, here and after a
        // restart. All three must agree.
        let (handed_over, signalled) =
            tokio::join!(handle.result(), engine.signal(run, "end", &how));
        signalled.unwrap();
        let read_back = engine.handle::<Vec<String>>(run).result().await;
        let reopened = on(&store)
            .register("ends_on_signal", 1, ends_on_signal)
            .open()
            .await
            .unwrap();
        let after_restart = reopened.handle::<Vec<String>>(run).result().await;
        reopened.shutdown().await;
        match how {
            "done" => {
                let expected = vec!["A".to_string(), "done".to_string()];
                assert_eq!(handed_over.unwrap(), expected);
                assert_eq!(read_back.unwrap(), expected);
                assert_eq!(after_restart.unwrap(), expected);
            }
            _ => {
                for result in [handed_over, read_back, after_restart] {
                    match result {
                        Err(Error::WorkflowFailed { run: r, error }) => {
                            assert_eq!((r, error.as_str()), (run, "customer left"));
                        }
                        other => panic!("expected the failure, got {other:?}"),
                    }
                }
            }
        }
    }
}
