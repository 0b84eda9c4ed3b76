//! Property tests: the crash harness over generated interpreter programs, replay of their
//! histories, and the fuzz targets' bodies (`fuzz/src/lib.rs`) over random and mutated
//! inputs on stable Rust.
//!
//! Environment:
//! - `ANNAL_PROP_CASES`: programs per crash property (default [`DEFAULT_CASES`]); the fuzz
//!   smoke loops run a multiple of it.
//! - `ANNAL_PROP_SEED`: the proptest RNG seed (default: from the clock). Every test prints
//!   the seed it used; proptest prints the minimal failing program. Keep a failing program
//!   as a `regression_*` test below.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal::testing::program::{
    arb_program, program_driver, program_harness, register_program, Op, Program, StepSpec,
    PROGRAM_WORKFLOW,
};
use annal::testing::{CrashReport, HarnessFailure, Outcome, Replayer, Tools};
use annal::{Event, EventKind, FailureClass, StepClass};
use annal_storage::SimStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_bodies;

/// Programs per crash property when `ANNAL_PROP_CASES` is unset: about 15 s for the crash
/// property in a debug build on two cores.
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("ANNAL_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A runner with `cases` cases and a printed seed.
fn runner(test: &str, cases: u32) -> TestRunner {
    let seed = annal_tests::seed_from_env("ANNAL_PROP_SEED");
    eprintln!("{test}: {cases} cases, ANNAL_PROP_SEED={seed}");
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Failing programs are printed, then kept as regression tests by hand.
        failure_persistence: None,
        max_global_rejects: cases.saturating_mul(4),
        ..Config::default()
    })
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn harness(program: &Program) -> Result<CrashReport, HarnessFailure> {
    paused_runtime().block_on(program_harness(program).with_torn_tails().run())
}

fn check<T: std::fmt::Debug>(result: Result<(), proptest::test_runner::TestError<T>>, test: &str) {
    if let Err(e) = result {
        panic!("{test} failed: {e}");
    }
}

#[test]
fn crash_harness_passes_for_generated_programs() {
    let mut runner = runner("crash_harness_passes_for_generated_programs", cases());
    let result = runner.run(&arb_program(), |program| {
        if let Err(failure) = harness(&program) {
            let json = serde_json::to_string(&program).unwrap();
            return Err(TestCaseError::fail(format!(
                "{failure}\nprogram (JSON): {json}"
            )));
        }
        Ok(())
    });
    check(result, "crash property");
}

/// Runs `program` once, crash-free, and returns its history and output.
async fn run_once(program: &Program) -> (Vec<Event>, Value) {
    let store = Arc::new(SimStore::new());
    let engine = register_program(crate::support::on(&store), &Tools::new())
        .open()
        .await
        .unwrap();
    let handle = engine
        .start::<_, Value>(PROGRAM_WORKFLOW, program)
        .await
        .unwrap();
    program_driver(program)(engine.clone(), handle.run_id()).await;
    let output = handle.result().await.unwrap();
    let history = engine.history(handle.run_id()).await.unwrap();
    engine.shutdown().await;
    (history, output)
}

#[test]
fn completed_programs_replay_without_drift_and_export_faithfully() {
    let mut runner = runner(
        "completed_programs_replay_without_drift_and_export_faithfully",
        cases(),
    );
    let result = runner.run(&arb_program(), |program| {
        let (history, output) = paused_runtime().block_on(run_once(&program));
        prop_assert_eq!(output.as_array().map(Vec::len), Some(program.ops.len()));
        let ended = matches!(
            history.last().map(|e| &e.kind),
            Some(EventKind::RunCompleted { .. })
        );
        prop_assert!(ended, "the run did not complete");
        // JSON Lines export and binary encoding both give back the same events. (JSON
        // re-serialises payloads, with object keys sorted: equal as JSON, not as bytes.)
        let lines: String = history
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        let parsed: Vec<Event> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let as_json = |events: &[Event]| {
            events
                .iter()
                .map(|e| serde_json::to_value(e).unwrap())
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(as_json(&parsed), as_json(&history));
        for e in &history {
            let decoded = annal::codec::decode_event(&annal::codec::encode_event(e));
            prop_assert_eq!(decoded.as_ref(), Ok(e));
        }
        let replayed = paused_runtime().block_on(async {
            Replayer::new(register_program(annal::Engine::builder(), &Tools::new()))
                .replay_json_lines(&lines)
                .await
        });
        prop_assert!(
            replayed.is_ok(),
            "{:?}\nprogram (JSON): {}",
            replayed,
            serde_json::to_string(&program).unwrap()
        );
        Ok(())
    });
    check(result, "replay property");
}

// ---------------------------------------------------------------------------------------
// What a user writes for a workflow of their own: a crash property in under 20 lines.

async fn refund(ctx: annal::Ctx, tools: Tools, cents: u64) -> Result<Value, annal::WorkflowError> {
    let bank = tools.tool("bank");
    let ledger = bank.clone();
    let paid = ctx
        .step("refund")
        .class(StepClass::Irreversible)
        .tool("bank")
        .reconcile(move |key| {
            let ledger = ledger.clone();
            async move { ledger.reconcile(&key) }
        })
        .run(|attempt| {
            let bank = bank.clone();
            async move { bank.call(&attempt, cents).await }
        })
        .await?;
    Ok(paid)
}

proptest! {
    #![proptest_config(Config { cases: 16, failure_persistence: None, ..Config::default() })]
    #[test]
    fn a_users_refund_survives_every_crash(cents in 1u64..100_000, flaky in 0usize..3) {
        let harness = annal::testing::CrashHarness::new("refund", &cents, |builder, tools| {
            let tools = tools.clone();
            builder.register("refund", 1, move |ctx, cents| refund(ctx, tools.clone(), cents))
        })
        .script(move |tools| {
            tools.tool("bank").fail_times(flaky, FailureClass::Transient);
        });
        let report = paused_runtime().block_on(harness.with_torn_tails().run());
        prop_assert!(report.is_ok(), "{}", report.unwrap_err());
        prop_assert_eq!(report.unwrap().outcome, Outcome::Completed(cents.to_string()));
    }
}

/// The harness must catch an irreversible effect applied twice: here a reconcile hook that
/// always answers "not done" lets the engine run an effect again after a crash.
#[test]
fn the_harness_catches_a_repeated_irreversible_effect() {
    async fn pay(ctx: annal::Ctx, tools: Tools) -> Result<Value, annal::WorkflowError> {
        let bank = tools.tool("bank");
        let paid = ctx
            .step("pay")
            .class(StepClass::Irreversible)
            .tool("bank")
            .reconcile(|_key| async { annal::Reconciled::<Value>::NotDone })
            .run(|attempt| {
                let bank = bank.clone();
                async move { bank.call(&attempt, 10).await }
            })
            .await?;
        Ok(paid)
    }
    let harness = annal::testing::CrashHarness::new("pay", &(), |builder, tools| {
        let tools = tools.clone();
        builder.register("pay", 1, move |ctx, ()| pay(ctx, tools.clone()))
    });
    let failure = paused_runtime()
        .block_on(harness.run())
        .expect_err("a lying reconcile hook goes unnoticed");
    assert!(
        failure
            .message
            .contains("was requested again after it had been applied"),
        "{failure}"
    );
}

// ---------------------------------------------------------------------------------------
// Programs the properties found, kept as they were found.

fn one_step(spec: StepSpec) -> Program {
    Program::new([Op::Step(spec)])
}

fn assert_passes(program: &Program) -> CrashReport {
    harness(program).unwrap_or_else(|failure| panic!("{failure}"))
}

/// Found first: a torn last record of a run that had already completed is not read again by
/// recovery; the harness now accepts the damage being reported when the history is read.
#[test]
fn regression_torn_tail_of_a_finished_run() {
    let report = assert_passes(&one_step(StepSpec::new("s0", StepClass::Read, "crm")));
    assert_eq!(
        report.outcome,
        Outcome::Completed(r#"[{"ok":{"step":"s0","tool":"crm"}}]"#.into())
    );
}

/// Issue 21, found by the SIGKILL soak and then by `crash_harness_passes_for_generated_programs`
/// once the simulated group commit could end between two appends: a signal (or a decision)
/// to a parked run was durable, the `Running` status appended right after it was not, and
/// the crash left the run parked with what it waited for already in its history.
#[test]
fn regression_a_signal_or_decision_to_a_parked_run_is_durable_with_its_wake_up() {
    for program in [
        Program::new([Op::Signal { name: "go".into() }]),
        Program::new([
            Op::Approval { approve: true },
            Op::Approval { approve: false },
        ]),
        Program::new([
            Op::Sleep { secs: 3600 },
            Op::Signal { name: "go".into() },
            Op::Approval { approve: true },
        ]),
    ] {
        let report = assert_passes(&program);
        assert!(report.crash_points >= 3, "{report:?}");
    }
}

/// An irreversible attempt fails `Terminal`, and the crash loses that outcome: the reconcile
/// hook finds nothing applied, the step runs again (legitimately) and fails the same way.
#[test]
fn regression_irreversible_terminal_failure_lost_in_a_crash() {
    let spec = StepSpec::new("s0", StepClass::Irreversible, "crm")
        .failing([FailureClass::Terminal])
        .reconciled();
    let report = assert_passes(&one_step(spec));
    assert_eq!(
        report.outcome,
        Outcome::Completed(r#"[{"failed":"s0"}]"#.into())
    );
}

/// Engine bug, found by `crash_harness_passes_for_generated_programs`: an irreversible step
/// with a reconcile hook fails three times (its `max_attempts`); the crash lands after the
/// third `AttemptStarted` is durable. On restart the hook says "not done", the engine records
/// the attempt as failed and then runs a fourth attempt instead of giving up, so the step
/// completes where the crash-free run exhausted it.
#[test]
fn regression_no_attempt_beyond_max_after_reconciling_the_last_one() {
    let spec = StepSpec::new("s0", StepClass::Irreversible, "crm")
        .failing(vec![FailureClass::Transient; 3])
        .reconciled();
    assert_passes(&one_step(spec));
}

// ---------------------------------------------------------------------------------------
// The fuzz targets' bodies on stable: random bytes, and mutations of real data.

/// A history from the stored corpus (`tests/histories`), for mutation.
fn stored_histories() -> Vec<Vec<Event>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("histories");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

/// One change to a history, at an event index (taken modulo the length).
#[derive(Debug, Clone)]
enum Mutation {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize),
    Position(usize, u32),
    Attempt(usize, u32),
    Rename(usize, String),
    Class(usize, StepClass),
    SignalSeq(usize, u64),
    Input(Program),
    FlipByte(usize, usize, u8),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let i = || any::<usize>();
    prop_oneof![
        i().prop_map(Mutation::Drop),
        i().prop_map(Mutation::Duplicate),
        (i(), i()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        i().prop_map(Mutation::Truncate),
        (i(), 0u32..12).prop_map(|(a, p)| Mutation::Position(a, p)),
        (i(), 0u32..5).prop_map(|(a, n)| Mutation::Attempt(a, n)),
        (i(), "[a-z0-9]{1,3}").prop_map(|(a, n)| Mutation::Rename(a, n)),
        (i(), annal::testing::program::arb_class()).prop_map(|(a, c)| Mutation::Class(a, c)),
        (i(), 0u64..20).prop_map(|(a, s)| Mutation::SignalSeq(a, s)),
        annal::testing::program::arb_program_of(1..=4).prop_map(Mutation::Input),
        (i(), i(), any::<u8>()).prop_map(|(a, b, x)| Mutation::FlipByte(a, b, x)),
    ]
}

fn mutate(events: &mut Vec<Event>, mutation: &Mutation) {
    if events.is_empty() {
        return;
    }
    let n = events.len();
    match mutation {
        Mutation::Drop(i) => {
            events.remove(i % n);
        }
        Mutation::Duplicate(i) => events.insert(i % n, events[i % n].clone()),
        Mutation::Swap(a, b) => events.swap(a % n, b % n),
        Mutation::Truncate(i) => events.truncate(i % n + 1),
        Mutation::Position(i, p) => match &mut events[i % n].kind {
            EventKind::StepScheduled { position, .. }
            | EventKind::StepRan { position, .. }
            | EventKind::AttemptStarted { position, .. }
            | EventKind::AttemptFailed { position, .. }
            | EventKind::StepCompleted { position, .. }
            | EventKind::StepExhausted { position, .. }
            | EventKind::TimerStarted { position, .. }
            | EventKind::TimerFired { position }
            | EventKind::SignalConsumed { position, .. }
            | EventKind::ValueRecorded { position, .. } => *position = *p,
            _ => {}
        },
        Mutation::Attempt(i, a) => match &mut events[i % n].kind {
            EventKind::AttemptStarted { attempt, .. }
            | EventKind::AttemptFailed { attempt, .. }
            | EventKind::StepCompleted { attempt, .. }
            | EventKind::StepRan { attempt, .. } => *attempt = *a,
            _ => {}
        },
        Mutation::Rename(i, new) => match &mut events[i % n].kind {
            EventKind::StepScheduled { name, .. }
            | EventKind::StepRan { name, .. }
            | EventKind::SignalConsumed { name, .. }
            | EventKind::SignalReceived { name, .. } => *name = new.clone(),
            _ => {}
        },
        Mutation::Class(i, c) => {
            if let EventKind::StepScheduled { class, .. } | EventKind::StepRan { class, .. } =
                &mut events[i % n].kind
            {
                *class = *c;
            }
        }
        Mutation::SignalSeq(i, s) => {
            if let EventKind::SignalConsumed { signal_seq, .. } = &mut events[i % n].kind {
                *signal_seq = *s;
            }
        }
        Mutation::Input(program) => {
            if let EventKind::RunStarted { input, .. } = &mut events[0].kind {
                *input = annal::Payload::encode(program).unwrap();
            }
        }
        Mutation::FlipByte(i, at, x) => {
            let mut bytes = annal::codec::encode_event(&events[i % n]);
            let at = at % bytes.len();
            bytes[at] ^= x | 1;
            if let Ok(event) = annal::codec::decode_event(&bytes) {
                events[i % n] = event;
            }
        }
    }
}

fn renumber(events: &mut [Event]) {
    for (seq, e) in events.iter_mut().enumerate() {
        e.seq = seq as u64;
    }
}

#[test]
fn fuzz_frame_decode_on_random_and_damaged_frames() {
    let mut runner = runner("fuzz_frame_decode", cases() * 20);
    let frames = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            proptest::collection::vec(any::<u8>(), 0..48),
            any::<usize>(),
            any::<u8>(),
            0usize..3
        )
            .prop_map(|(payload, at, x, cut)| {
                let mut framed = annal_storage::frame::encode(&payload);
                let at = at % framed.len();
                framed[at] ^= x;
                framed.truncate(framed.len() - cut.min(framed.len()));
                framed
            }),
    ];
    check(
        runner.run(&frames, |bytes| {
            fuzz_bodies::frame_decode(&bytes);
            Ok(())
        }),
        "frame_decode",
    );
}

#[test]
fn fuzz_event_decode_on_random_and_damaged_events() {
    let corpus: Vec<Vec<u8>> = stored_histories()
        .iter()
        .flatten()
        .map(annal::codec::encode_event)
        .collect();
    let mut runner = runner("fuzz_event_decode", cases() * 20);
    let inputs = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (
            proptest::sample::select(corpus),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            any::<usize>()
        )
            .prop_map(|(mut bytes, flips, cut)| {
                for (at, x) in flips {
                    let at = at % bytes.len();
                    bytes[at] ^= x;
                }
                if cut % 4 == 0 {
                    bytes.truncate(cut % (bytes.len() + 1));
                }
                bytes
            }),
    ];
    check(
        runner.run(&inputs, |bytes| {
            fuzz_bodies::event_decode(&bytes);
            Ok(())
        }),
        "event_decode",
    );
}

#[test]
fn fuzz_replay_history_on_random_bytes() {
    let mut runner = runner("fuzz_replay_history_on_random_bytes", cases() * 10);
    check(
        runner.run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            fuzz_bodies::replay_history(&bytes);
            Ok(())
        }),
        "replay_history",
    );
}

#[test]
fn fuzz_replay_of_mutated_stored_histories() {
    let corpus = stored_histories();
    let mut runner = runner("fuzz_replay_of_mutated_stored_histories", cases() * 4);
    let inputs = (
        proptest::sample::select(corpus),
        proptest::collection::vec(arb_mutation(), 1..4),
        proptest::bool::weighted(0.8),
    );
    let replayed = AtomicU32::new(0);
    check(
        runner.run(&inputs, |(mut events, mutations, renumbered)| {
            for m in &mutations {
                mutate(&mut events, m);
            }
            if renumbered {
                renumber(&mut events);
            }
            // Through the byte format the fuzzer uses, so the target's decoding is covered too.
            let events = fuzz_bodies::split_events(&fuzz_bodies::join_events(&events));
            if fuzz_bodies::replay_events_with(
                || crate::histories::current(annal::Engine::builder(), &Tools::new()),
                &events,
            )
            .is_some()
            {
                replayed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }),
        "replay of mutated stored histories",
    );
    // Mutations must leave enough histories consistent for the replayer to see them.
    assert!(
        replayed.into_inner() > 0,
        "no mutated history reached the replayer"
    );
}

#[test]
fn fuzz_replay_of_mutated_program_histories() {
    let mut runner = runner("fuzz_replay_of_mutated_program_histories", cases());
    let inputs = (
        arb_program(),
        proptest::collection::vec(arb_mutation(), 0..4),
    );
    check(
        runner.run(&inputs, |(program, mutations)| {
            let (mut events, _) = paused_runtime().block_on(run_once(&program));
            for m in &mutations {
                mutate(&mut events, m);
            }
            renumber(&mut events);
            if let Some(result) = fuzz_bodies::replay_events(&events) {
                if mutations.is_empty() {
                    prop_assert!(result.is_ok(), "{result:?}");
                }
            }
            Ok(())
        }),
        "replay of mutated program histories",
    );
}

/// Replay waits nothing out: a long history replays in virtual time at once.
#[test]
fn replay_of_a_parked_program_history_settles() {
    let program = Program::new([
        Op::Sleep {
            secs: 7 * 24 * 3600,
        },
        Op::Signal { name: "go".into() },
    ]);
    let events = paused_runtime().block_on(async {
        let store = Arc::new(SimStore::new());
        let engine = register_program(crate::support::on(&store), &Tools::new())
            .open()
            .await
            .unwrap();
        let run = engine
            .start::<_, Value>(PROGRAM_WORKFLOW, &program)
            .await
            .unwrap()
            .run_id();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        engine.shutdown().await;
        annal::read_history(store.as_ref(), run).await.unwrap()
    });
    assert_eq!(
        crate::support::kinds(&events),
        ["RunStarted", "TimerStarted"]
    );
    assert!(matches!(fuzz_bodies::replay_events(&events), Some(Ok(()))));
}
