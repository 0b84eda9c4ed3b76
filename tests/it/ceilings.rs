//! Run ceilings are caps: reaching one ends the run's progress whatever the step's own
//! on-exhaust rule, by `on_ceiling` (escalate, the default, or fail).
//!
//! These tests use only what the engine offered before ceilings were caps (event names, not
//! the new variants), so that each one also runs, and fails, against the old engine.

use std::sync::Arc;
use std::time::Duration;

use annal::{
    Ctx, Error, EventKind, OperatorActionKind, Policy, RunStatus, StepClass, StepFailure,
    WorkflowError,
};
use annal_storage::SimStore;

use crate::support::{kinds, on};

/// An agent loop: `while !done` calls a tool whose on-exhaust rule is `skip` (or degrade),
/// up to `steps` times, each call taking `step_ms`; a step that does not produce a page is
/// skipped, the loop goes on.
async fn agent_loop(ctx: Ctx, (steps, step_ms): (u32, u64)) -> Result<u32, WorkflowError> {
    let mut pages = 0;
    for i in 0..steps {
        let page: Option<String> = ctx
            .step(&format!("fetch_{i}"))
            .tool("web_fetch")
            .class(StepClass::Read)
            .run(|a| async move {
                a.report_cost(10);
                tokio::time::sleep(Duration::from_millis(step_ms)).await;
                Ok(Some(format!("page {}", a.number)))
            })
            .await?;
        pages += u32::from(page.is_some());
    }
    Ok(pages)
}

fn engine(store: &Arc<SimStore>, policy: &str) -> annal::EngineBuilder {
    on(store)
        .policy(Policy::from_toml(policy).unwrap())
        .register("agent_loop", 1, agent_loop)
}

/// Command positions of the steps that ran (scheduled or ran in one record).
fn steps_written(history: &[annal::Event]) -> Vec<u32> {
    history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepScheduled { position, .. } | EventKind::StepRan { position, .. } => {
                Some(*position)
            }
            _ => None,
        })
        .collect()
}

fn escalation(history: &[annal::Event]) -> (Option<u32>, String, annal::event::EscalationContext) {
    history
        .iter()
        .rev()
        .find_map(|e| match &e.kind {
            EventKind::Escalated {
                position,
                reason,
                context,
            } => Some((*position, reason.clone(), context.clone())),
            _ => None,
        })
        .expect("an Escalated event")
}

/// Runs the loop to where it stops and checks it escalated at `position` (the step that would
/// have gone past the ceiling), wrote nothing after it, and said what was spent.
async fn escalates_at(policy: &str, steps: u32, position: u32, spent: &str) {
    let store = Arc::new(SimStore::new());
    let engine = engine(&store, policy).open().await.unwrap();
    let handle = engine
        .start::<_, u32>("agent_loop", &(steps, 10_000u64))
        .await
        .unwrap();
    let result = handle.result().await;
    assert!(
        matches!(result, Err(Error::Escalated { .. })),
        "the ceiling is a cap, not a skip: {result:?}"
    );
    let run = handle.run_id();
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Escalated
    );
    let history = engine.history(run).await.unwrap();
    assert_eq!(
        steps_written(&history),
        (0..=position).collect::<Vec<_>>(),
        "no step after the one that met the ceiling"
    );
    let names = kinds(&history);
    assert_eq!(
        names[names.len() - 3..],
        ["StepExhausted", "RunCeilingReached", "Escalated"],
        "{names:?}"
    );
    let (at, reason, context) = escalation(&history);
    assert_eq!(at, Some(position));
    assert!(reason.contains(spent), "{reason}");
    assert!(!context.suggested_next.is_empty());
    assert_eq!(
        context.failing_step.as_deref(),
        Some(format!("fetch_{position}").as_str())
    );
    engine.shutdown().await;
}

const SKIP: &str = "[tools.web_fetch]\nmax_retries = 2\non_exhaust = \"skip\"\n";

#[tokio::test(start_paused = true)]
async fn a_skipping_loop_escalates_at_the_iteration_ceiling() {
    // Seed 002's scenario: 20 steps against a 12-iteration ceiling stop at step 13.
    let policy = format!("[run]\nmax_iterations = 12\n{SKIP}");
    escalates_at(
        &policy,
        20,
        12,
        "12 attempts spent, 12 of them by tool web_fetch",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_skipping_loop_escalates_at_the_tool_call_ceiling() {
    let policy = format!("[run]\nmax_tool_calls = 5\n{SKIP}");
    escalates_at(
        &policy,
        20,
        5,
        "5 tool calls spent, 5 of them by tool web_fetch",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_degrading_loop_escalates_at_the_duration_ceiling() {
    // Each step takes 10 s: the 8th starts 70 s in, past a 60 s ceiling.
    let policy = "[run]\nmax_duration_seconds = 60\n[tools.web_fetch]\non_exhaust = \"degrade\"\ndegrade_to = \"cached page\"\n";
    escalates_at(
        policy,
        20,
        7,
        "70000 ms since the run started spent, 7 attempts by tool web_fetch",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_skipping_loop_escalates_at_the_cost_ceiling() {
    // 10 units a step: the 26th would start with 250 spent.
    let policy = format!("[run]\nmax_cost_units = 250\n{SKIP}");
    escalates_at(
        &policy,
        40,
        25,
        "250 cost units spent, 250 of them by tool web_fetch",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn on_ceiling_fail_ends_the_run_failed_without_handing_control_back() {
    let store = Arc::new(SimStore::new());
    let policy = format!("[run]\nmax_iterations = 3\non_ceiling = \"fail\"\n{SKIP}");
    // The workflow swallows every step error and would loop for ever if it could.
    let builder = on(&store)
        .policy(Policy::from_toml(&policy).unwrap())
        .register("stubborn", 1, |ctx: Ctx, ()| async move {
            let mut i = 0u32;
            loop {
                let _ = ctx
                    .step(&format!("s{i}"))
                    .tool("web_fetch")
                    .class(StepClass::Read)
                    .run(|_| async { Ok(1u32) })
                    .await;
                i += 1;
                if i == 1_000 {
                    return Ok::<_, WorkflowError>(i);
                }
            }
        });
    let engine = builder.clone().open().await.unwrap();
    let handle = engine.start::<_, u32>("stubborn", &()).await.unwrap();
    let result = handle.result().await;
    match &result {
        Err(Error::WorkflowFailed { error, .. }) => {
            assert!(error.contains("run max_iterations (3)"), "{error}");
        }
        other => panic!("the run fails at its ceiling: {other:?}"),
    }
    let run = handle.run_id();
    assert_eq!(engine.status(run).await.unwrap().status, RunStatus::Failed);
    let history = engine.history(run).await.unwrap();
    assert_eq!(steps_written(&history), [0, 1, 2, 3]);
    let names = kinds(&history);
    assert_eq!(
        names[names.len() - 3..],
        ["StepExhausted", "RunCeilingReached", "RunFailed"]
    );
    engine.shutdown().await;
    // Replay reads the ceiling from the history alone: the same code replays it without drift.
    annal::testing::Replayer::new(builder)
        .replay(&history)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_operator_cannot_retry_past_a_ceiling_but_can_abort() {
    let store = Arc::new(SimStore::new());
    let policy = format!("[run]\nmax_iterations = 2\n{SKIP}");
    let engine = engine(&store, &policy).open().await.unwrap();
    let handle = engine
        .start::<_, u32>("agent_loop", &(5u32, 10u64))
        .await
        .unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    let run = handle.run_id();
    // A retry meets the same ceiling at once: the run escalates again, nothing runs.
    engine
        .operate(run, "olga", OperatorActionKind::RetryStep, "try again")
        .await
        .unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    let history = engine.history(run).await.unwrap();
    let ceilings = kinds(&history)
        .iter()
        .filter(|k| **k == "RunCeilingReached")
        .count();
    assert_eq!(ceilings, 2);
    assert_eq!(steps_written(&history), [0, 1, 2]);
    engine
        .operate(run, "olga", OperatorActionKind::Abort, "loop without end")
        .await
        .unwrap();
    assert_eq!(engine.status(run).await.unwrap().status, RunStatus::Failed);
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_report_cost_that_counts_against_the_cost_ceiling() {
    let store = Arc::new(SimStore::new());
    let policy = "[run]\nmax_cost_units = 250\n[tools.model]\nmax_retries = 9\nbackoff = \"none\"\non_exhaust = \"degrade\"\ndegrade_to = \"\"\n";
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let engine = on(&store)
        .policy(Policy::from_toml(policy).unwrap())
        .register("draft", 1, move |ctx: Ctx, ()| {
            let c = Arc::clone(&c);
            async move {
                let out: String = ctx
                    .step("draft")
                    .tool("model")
                    .class(StepClass::Draft)
                    .run(move |a| {
                        let c = Arc::clone(&c);
                        async move {
                            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            a.report_cost(100);
                            Err::<String, _>(StepFailure::transient("model overloaded"))
                        }
                    })
                    .await?;
                Ok::<_, WorkflowError>(out)
            }
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, String>("draft", &()).await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "300 units spent by failed attempts stop the 4th"
    );
    let history = engine.history(handle.run_id()).await.unwrap();
    let costs = kinds(&history)
        .iter()
        .filter(|k| **k == "AttemptCost")
        .count();
    assert_eq!(costs, 3, "each failed attempt's cost is recorded");
    let record = annal::audit::RunRecord::from_history(handle.run_id(), None, &history);
    assert_eq!(record.cost(), 300);
    let report = annal::audit::Report::from_records([&record]);
    assert_eq!(report.tools["model"].cost, 300);
    let (_, reason, _) = escalation(&history);
    assert!(
        reason.contains("300 cost units spent, 300 of them by tool model"),
        "{reason}"
    );
    engine.shutdown().await;
}

/// The example app's policy file (examples/policies/support.toml): a loop of 20 `web_fetch`
/// steps against its 12-iteration ceiling escalates at step 13.
#[tokio::test(start_paused = true)]
async fn the_support_policy_escalates_a_20_step_loop_at_step_13() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policies/support.toml"
    );
    let policy = std::fs::read_to_string(file).unwrap();
    let store = Arc::new(SimStore::new());
    let engine = engine(&store, &policy).open().await.unwrap();
    let handle = engine
        .start::<_, u32>("agent_loop", &(20u32, 10u64))
        .await
        .unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(
        steps_written(&history).len(),
        13,
        "12 steps ran, the 13th escalated"
    );
    let (at, reason, _) = escalation(&history);
    assert_eq!(at, Some(12));
    assert!(reason.contains("run max_iterations (12)"), "{reason}");
    engine.shutdown().await;
}
