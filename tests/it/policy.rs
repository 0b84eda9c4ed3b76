//! Reliability policy: classes, failure classes, retries, budgets, idempotency keys,
//! breakers and fallbacks.

use std::sync::Arc;
use std::time::Duration;

use annal::breaker::{BreakerConfig, BreakerState};
use annal::testing::{Behavior, FakeTool, Tools};
use annal::{
    Backoff, Ctx, Engine, EventKind, FailureClass, Policy, RetryPolicy, RunStatus, StepClass,
    StepError, WorkflowError,
};
use annal_storage::SimStore;
use serde_json::{json, Value};

use crate::support::{kinds, on};

fn calls(tool: &FakeTool) -> u64 {
    tool.executions()
}

async fn call(
    ctx: &Ctx,
    name: &str,
    tool: &FakeTool,
    tool_name: &str,
    class: StepClass,
) -> Result<Value, StepError> {
    let tool = tool.clone();
    ctx.step(name)
        .tool(tool_name)
        .class(class)
        .run(move |a| {
            let tool = tool.clone();
            async move { tool.call(&a, "x").await }
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn terminal_errors_fail_fast_and_transient_ones_are_retried() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools.tool("bad").fail_times(5, FailureClass::Terminal);
    tools.tool("flaky").fail_times(2, FailureClass::Transient);
    let t = tools.clone();
    let engine = on(&store)
        .register("w", 1, move |ctx: Ctx, ()| {
            let t = t.clone();
            async move {
                let bad = call(&ctx, "bad", &t.tool("bad"), "bad", StepClass::Read).await;
                let flaky = call(&ctx, "flaky", &t.tool("flaky"), "flaky", StepClass::Read).await?;
                Ok::<_, WorkflowError>((bad.is_err(), flaky))
            }
        })
        .open()
        .await
        .unwrap();
    let out = engine
        .start::<_, (bool, Value)>("w", &())
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(out, (true, json!("x")));
    assert_eq!(calls(&tools.tool("bad")), 1, "terminal: one attempt");
    assert_eq!(
        calls(&tools.tool("flaky")),
        3,
        "transient: retried until it worked"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_backoff_resumes_with_only_the_remaining_delay() {
    let store = Arc::new(SimStore::new());
    let clock = Arc::new(annal::clock::TokioClock::starting_at(1_700_000_000_000));
    let tools = Tools::new();
    tools.tool("api").fail_times(1, FailureClass::Transient);
    let open = |tools: Tools| {
        Engine::builder()
            .store(Arc::clone(&store) as Arc<dyn annal_storage::LogStore>)
            .clock(Arc::clone(&clock) as Arc<dyn annal::clock::Clock>)
            .register("w", 1, move |ctx: Ctx, ()| {
                let api = tools.tool("api");
                async move {
                    let v: Value = ctx
                        .step("call")
                        .retry(RetryPolicy {
                            backoff: Backoff::Fixed {
                                delay_ms: 3_600_000,
                            },
                            jitter: false,
                            ..RetryPolicy::default()
                        })
                        .run(move |a| {
                            let api = api.clone();
                            async move { api.call(&a, 1).await }
                        })
                        .await?;
                    Ok::<_, WorkflowError>(v)
                }
            })
            .open()
    };
    let engine = open(tools.clone()).await.unwrap();
    let run = engine.start::<_, Value>("w", &()).await.unwrap().run_id();
    tokio::time::sleep(Duration::from_secs(600)).await;
    engine.shutdown().await;
    drop(engine);
    let restarted = tokio::time::Instant::now();
    let engine = open(tools.clone()).await.unwrap();
    engine.handle::<Value>(run).result().await.unwrap();
    let waited = restarted.elapsed();
    assert!(
        waited >= Duration::from_secs(2_999) && waited <= Duration::from_secs(3_060),
        "{waited:?}"
    );
    assert_eq!(tools.tool("api").executions(), 2);
    let history = engine.history(run).await.unwrap();
    let keys: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptFailed { retry_at_ms, .. } => *retry_at_ms,
            _ => None,
        })
        .collect();
    assert_eq!(
        keys,
        [history[0].at_ms + 3_600_000],
        "the retry instant is recorded, not recomputed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_retried_after_a_crash_uses_the_same_idempotency_key() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools.tool("crm").script([Behavior::ApplyThenLose]);
    let setup = |tools: Tools| {
        on(&store).register("w", 1, move |ctx: Ctx, ()| {
            let crm = tools.tool("crm");
            async move {
                let v: Value = ctx
                    .step("create_lead")
                    .class(StepClass::Write)
                    .retry(RetryPolicy {
                        backoff: Backoff::Fixed { delay_ms: 60_000 },
                        jitter: false,
                        ..RetryPolicy::default()
                    })
                    .run(move |a| {
                        let crm = crm.clone();
                        async move { crm.call(&a, "lead").await }
                    })
                    .await?;
                Ok::<_, WorkflowError>(v)
            }
        })
    };
    let engine = setup(tools.clone()).open().await.unwrap();
    let run = engine.start::<_, Value>("w", &()).await.unwrap().run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.shutdown().await;
    store.crash();
    let engine = setup(tools.clone()).open().await.unwrap();
    engine.handle::<Value>(run).result().await.unwrap();
    let crm = tools.tool("crm");
    assert_eq!(crm.executions(), 2);
    assert_eq!(crm.applied().len(), 1, "one key, one lead");
    let key = crm.applied().into_keys().next().unwrap();
    assert_eq!(
        crm.executions_for(&key),
        2,
        "both attempts carried the same key"
    );
}

const POLICY: &str = r#"
    version = "support-2026-11"
    [run]
    max_iterations = 20
    [tools.search_api]
    max_retries = 3
    backoff = "fixed"
    backoff_initial_ms = 100
    on_exhaust = "degrade"
    degrade_to = { results = [] }
    [tools.crm_write]
    max_retries = 1
    on_exhaust = "escalate"
"#;

async fn support(ctx: Ctx, tools: Tools) -> Result<Vec<Value>, WorkflowError> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(
            call(
                &ctx,
                &format!("search_{i}"),
                &tools.tool("search_api"),
                "search_api",
                StepClass::Read,
            )
            .await?,
        );
    }
    out.push(
        call(
            &ctx,
            "crm_update",
            &tools.tool("crm_write"),
            "crm_write",
            StepClass::Write,
        )
        .await?,
    );
    Ok(out)
}

fn exhausted_budgets(history: &[annal::Event]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepExhausted { budget, .. } => Some(budget.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_flaky_tool_exhausts_its_own_budget_and_leaves_others_intact() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools
        .tool("search_api")
        .fail_times(100, FailureClass::Transient);
    tools
        .tool("crm_write")
        .fail_times(1, FailureClass::Transient);
    let t = tools.clone();
    let engine = on(&store)
        .policy(Policy::from_toml(POLICY).unwrap())
        .register("support", 1, move |ctx, ()| support(ctx, t.clone()))
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Vec<Value>>("support", &()).await.unwrap();
    let out = handle.result().await.unwrap();
    assert_eq!(
        out[..3],
        [
            json!({ "results": [] }),
            json!({ "results": [] }),
            json!({ "results": [] })
        ]
    );
    assert_eq!(out[3], json!("x"), "the CRM write still had its retry");
    // 4 attempts for the first search (3 retries), then one each: the tool budget is spent.
    assert_eq!(tools.tool("search_api").executions(), 6);
    assert_eq!(tools.tool("crm_write").executions(), 2);
    let history = engine.history(handle.run_id()).await.unwrap();
    assert_eq!(
        exhausted_budgets(&history),
        [
            "step attempts (4)",
            "tool search_api max_retries (3) across the run",
            "tool search_api max_retries (3) across the run"
        ]
    );
    assert!(
        matches!(&history[0].kind, EventKind::RunStarted { policy_version: Some(v), .. } if v == "support-2026-11")
    );
}

#[tokio::test(start_paused = true)]
async fn exhausting_an_escalating_tool_escalates_the_run_with_context() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools
        .tool("crm_write")
        .fail_times(10, FailureClass::Timeout);
    let t = tools.clone();
    let engine = on(&store)
        .policy(Policy::from_toml(POLICY).unwrap())
        .register("support", 1, move |ctx, ()| support(ctx, t.clone()))
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Vec<Value>>("support", &()).await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(annal::Error::Escalated { .. })
    ));
    assert_eq!(
        engine.status(handle.run_id()).await.unwrap().status,
        RunStatus::Escalated
    );
    let history = engine.history(handle.run_id()).await.unwrap();
    let context = history
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Escalated { context, .. } => Some(context.clone()),
            _ => None,
        })
        .expect("an Escalated event");
    assert_eq!(context.last_successful_step.as_deref(), Some("search_2"));
    assert_eq!(context.failing_step.as_deref(), Some("crm_update"));
    assert_eq!(context.errors.len(), 2);
    assert!(context
        .errors
        .iter()
        .all(|(_, class, _)| class == "timeout"));
    assert_eq!(
        context.attempts_per_tool,
        [("crm_write".to_string(), 2), ("search_api".to_string(), 3)]
    );
    assert!(!context.suggested_next.is_empty());
}

#[tokio::test(start_paused = true)]
async fn run_ceilings_stop_a_run_that_would_loop() {
    let store = Arc::new(SimStore::new());
    let policy = Policy::from_toml("[run]\nmax_iterations = 3\n").unwrap();
    let engine = on(&store)
        .policy(policy)
        .register("loop", 1, |ctx: Ctx, ()| async move {
            for i in 0.. {
                // Even a loop that swallows step errors stops: the ceiling escalates the run.
                let _: Result<u32, _> = ctx
                    .step(&format!("s{i}"))
                    .class(StepClass::Read)
                    .run(|_| async { Ok(1u32) })
                    .await;
            }
            Ok::<_, WorkflowError>(())
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, ()>("loop", &()).await.unwrap();
    match handle.result().await {
        Err(annal::Error::Escalated { reason, .. }) => {
            assert_eq!(
                reason,
                "step 's3' gave up (run max_iterations (3)): run ceiling reached: 3 attempts spent"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn reported_cost_is_recorded_and_capped() {
    let store = Arc::new(SimStore::new());
    let policy = Policy::from_toml("[run]\nmax_cost_units = 250\n").unwrap();
    let engine = on(&store)
        .policy(policy)
        .register("spend", 1, |ctx: Ctx, ()| async move {
            let mut done = 0;
            while ctx
                .step("model_call")
                .class(StepClass::Draft)
                .run(|a| async move {
                    a.report_cost(100);
                    Ok(())
                })
                .await
                .is_ok()
            {
                done += 1;
            }
            Ok::<_, WorkflowError>(done)
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, u32>("spend", &()).await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(annal::Error::Escalated { reason, .. }) if reason.contains("run max_cost_units (250)")
    ));
    let costs: Vec<u64> = engine
        .history(handle.run_id())
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StepCompleted { cost, .. } | EventKind::StepRan { cost, .. } => Some(cost),
            _ => None,
        })
        .collect();
    assert_eq!(costs, [100, 100, 100]);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_call_times_out_per_attempt() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools.tool("slow").script([Behavior::Hang]);
    let t = tools.clone();
    let policy =
        Policy::from_toml("[tools.slow]\ntimeout_ms = 2000\nbackoff = \"none\"\n").unwrap();
    let engine = on(&store)
        .policy(policy)
        .register("w", 1, move |ctx: Ctx, ()| {
            let t = t.clone();
            async move {
                Ok::<_, WorkflowError>(
                    call(&ctx, "slow", &t.tool("slow"), "slow", StepClass::Read).await?,
                )
            }
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, Value>("w", &()).await.unwrap();
    assert_eq!(handle.result().await.unwrap(), json!("x"));
    let history = engine.history(handle.run_id()).await.unwrap();
    assert!(history.iter().any(|e| matches!(
        &e.kind,
        EventKind::AttemptFailed {
            class: FailureClass::Timeout,
            ..
        }
    )));
}

async fn summarize(ctx: Ctx, tools: Tools) -> Result<String, WorkflowError> {
    let primary = tools.tool("primary_model");
    let secondary = tools.tool("cheap_model");
    let out: Value = ctx
        .step("summarize")
        .class(StepClass::Draft)
        .tool("primary_model")
        .retry(RetryPolicy {
            max_attempts: 2,
            backoff: Backoff::None,
            ..RetryPolicy::default()
        })
        .fallback("cheap_model", move |a| {
            let secondary = secondary.clone();
            async move { secondary.call(&a, "cheap").await }
        })
        .run(move |a| {
            let primary = primary.clone();
            async move { primary.call(&a, "primary").await }
        })
        .await?;
    Ok(out.as_str().unwrap_or_default().to_string())
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fallback_serves_and_replay_is_identical() {
    let store = Arc::new(SimStore::new());
    let tools = Tools::new();
    tools
        .tool("primary_model")
        .fail_times(3, FailureClass::Transient);
    let t = tools.clone();
    let builder = on(&store)
        .breaker(
            "primary_model",
            BreakerConfig {
                failure_threshold: 3,
                cool_down_ms: 60_000,
                probes: 1,
            },
        )
        .register("summarize", 1, move |ctx, ()| summarize(ctx, t.clone()));
    let engine = builder.clone().open().await.unwrap();
    // Run 1: two failures exhaust the primary's attempts; the cheap model serves.
    let first = engine.start::<_, String>("summarize", &()).await.unwrap();
    assert_eq!(first.result().await.unwrap(), "cheap");
    // Run 2: the third failure opens the breaker; again the fallback serves.
    let second = engine.start::<_, String>("summarize", &()).await.unwrap();
    assert_eq!(second.result().await.unwrap(), "cheap");
    assert!(matches!(
        engine.breaker_state("primary_model"),
        Some((BreakerState::Open { .. }, 1))
    ));
    // Run 3: rejected by the open breaker without a call.
    let before = tools.tool("primary_model").executions();
    let third = engine.start::<_, String>("summarize", &()).await.unwrap();
    assert_eq!(third.result().await.unwrap(), "cheap");
    assert_eq!(
        tools.tool("primary_model").executions(),
        before,
        "an open breaker sends nothing"
    );
    let history = engine.history(third.run_id()).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "RunStarted",
            "StepScheduled",
            "AttemptFailed",
            "FallbackUsed",
            "StepCompleted",
            "RunCompleted"
        ]
    );
    assert!(matches!(
        &history[2].kind,
        EventKind::AttemptFailed {
            class: FailureClass::BreakerOpen,
            ..
        }
    ));
    assert!(
        matches!(&history[3].kind, EventKind::FallbackUsed { to, reason, .. } if to == "cheap_model" && reason.contains("breaker"))
    );
    assert!(
        matches!(&history[4].kind, EventKind::StepCompleted { served_by: Some(s), .. } if s == "cheap_model")
    );
    // After the cool-down a probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let fourth = engine.start::<_, String>("summarize", &()).await.unwrap();
    assert_eq!(fourth.result().await.unwrap(), "primary");
    assert!(matches!(
        engine.breaker_state("primary_model"),
        Some((BreakerState::Closed { failures: 0 }, 1))
    ));
    // Replay of the breaker-rejected history never consults a breaker: same result, no drift.
    let replayer = annal::testing::Replayer::new(builder);
    replayer.replay(&history).await.unwrap();
}
