//! Selective retry for an agent turn: retry what time can fix, fail fast on what it cannot,
//! and retry a flaky tool at the tool boundary instead of re-running the whole turn.
//!
//! Model calls fail in different ways, and a blanket "retry three times" treats them all
//! alike. Rate limits and timeouts pass with time: retry them with exponential backoff and
//! jitter (so that many agents failing together do not retry together), and honour the
//! provider's `retry-after`. An expired API key or a request the provider rejects as invalid
//! will fail the same way every time: retrying only burns time and quota, so they fail fast
//! after one attempt (`StepFailure::terminal`).
//!
//! Wrapping the whole agent turn in a retry loop has a second cost: when the tool the agent
//! calls fails, the model call that planned it runs again too. Here each model call and the
//! tool call are their own steps, with their own policies; a tool failure retries the tool
//! call alone, and the recorded plan is kept.
//!
//! Three turns run:
//! - A: the model is rate limited, then times out, then answers; the policy tool resets the
//!   connection twice. Everything recovers, each call retried at its own boundary.
//! - B: the API key has expired: one attempt, no retry, the run fails at once.
//! - C: the request is invalid (the prompt is over the context limit): one attempt, no retry.
//!
//! ```text
//! cargo run --example agent_retry
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal::audit::StepEnd;
use annal::{
    Backoff, Ctx, Engine, Error, FailureClass, RetryPolicy, RunId, StepClass, StepFailure,
    WorkflowError,
};
use annal_examples::{count, print_history, record, section, step};
use serde::{Deserialize, Serialize};

/// The model client's errors, as an SDK would report them.
#[derive(Debug, Clone)]
enum ModelError {
    /// HTTP 429 with a `retry-after` header.
    RateLimited { retry_after: Duration },
    /// HTTP 401.
    Unauthorized,
    /// HTTP 400.
    InvalidRequest(String),
}

/// The selective-retry rule, in one place: which model errors are worth another attempt.
/// Timeouts need no arm: the step's `attempt_timeout_ms` turns a hung call into `Timeout`.
fn classify(error: ModelError) -> StepFailure {
    match error {
        ModelError::RateLimited { retry_after } => {
            StepFailure::rate_limited("429 rate limited", Some(retry_after))
        }
        ModelError::Unauthorized => StepFailure::terminal("401 invalid or expired API key"),
        ModelError::InvalidRequest(why) => {
            StepFailure::terminal(format!("400 invalid request: {why}"))
        }
    }
}

/// The model calls: exponential backoff from 40 ms, doubling, capped at 320 ms, each delay
/// jittered within [d/2, d]; at most 4 attempts and 2 s in all; 150 ms per attempt.
fn model_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        backoff: Backoff::Exponential {
            initial_ms: 40,
            factor: 2,
            max_ms: 320,
        },
        jitter: true,
        attempt_timeout_ms: Some(150),
        max_total_ms: Some(2_000),
    }
}

/// What one scripted call of a fake does.
#[derive(Debug, Clone)]
enum Script {
    Answer,
    Hang,
    Fail(ModelError),
}

/// A model provider that follows a script, then answers.
#[derive(Default)]
struct Model {
    script: Mutex<VecDeque<Script>>,
    calls: AtomicU32,
    call_times: Mutex<Vec<Instant>>,
}

impl Model {
    async fn complete(&self, prompt: &str) -> Result<String, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_times.lock().unwrap().push(Instant::now());
        let next = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Script::Answer);
        match next {
            Script::Answer => Ok(format!("<completion for {prompt:?}>")),
            Script::Hang => std::future::pending().await,
            Script::Fail(e) => Err(e),
        }
    }
}

/// The tool the agent calls: an internal policy database behind a flaky proxy that resets
/// the next `resets` connections.
#[derive(Default)]
struct PolicyDb {
    resets: AtomicU32,
    calls: AtomicU32,
}

impl PolicyDb {
    async fn status(&self, policy: &str) -> Result<PolicyStatus, StepFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .resets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StepFailure::transient(
                "connection reset by the policy-db proxy",
            ));
        }
        Ok(PolicyStatus {
            policy: policy.to_string(),
            active: true,
            cover: "accidental damage".into(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PolicyStatus {
    policy: String,
    active: bool,
    cover: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Turn {
    plan: String,
    status: PolicyStatus,
    answer: String,
}

struct Services {
    model: Model,
    db: PolicyDb,
}

/// One agent turn: plan (model), look the policy up (tool), answer (model).
async fn support_turn(
    ctx: Ctx,
    question: String,
    services: Arc<Services>,
) -> Result<Turn, WorkflowError> {
    let (s, question) = (&*services, &question);
    let plan: String = ctx
        .step("plan")
        .tool("model")
        .class(StepClass::Draft)
        .retry(model_policy())
        .run(move |_| async move {
            s.model
                .complete(&format!("plan: {question}"))
                .await
                .map_err(classify)
        })
        .await?;

    // The tool call is its own step: its failures are retried here, with its own policy,
    // and never re-run the plan above.
    let status: PolicyStatus = ctx
        .step("lookup_policy_status")
        .tool("policy_db")
        .class(StepClass::Read)
        .retry(RetryPolicy {
            max_attempts: 4,
            backoff: Backoff::Fixed { delay_ms: 25 },
            jitter: false,
            attempt_timeout_ms: Some(500),
            max_total_ms: None,
        })
        .run(move |_| async move { s.db.status("POL-7731").await })
        .await?;

    let answer: String = ctx
        .step("answer")
        .tool("model")
        .class(StepClass::Draft)
        .retry(model_policy())
        .run(move |_| async move {
            s.model
                .complete("answer with the policy status")
                .await
                .map_err(classify)
        })
        .await?;

    Ok(Turn {
        plan,
        status,
        answer,
    })
}

/// The recorded delay before each retry of a step: `retry_at_ms - at_ms` of its failures.
fn recorded_delays(history: &[annal::Event], name: &str, run: RunId) -> Vec<(String, u64)> {
    let rec = record(run, history);
    step(&rec, name)
        .failures
        .iter()
        .filter_map(|f| {
            f.retry_at_ms
                .map(|at| (f.class.label().to_string(), at.saturating_sub(f.at_ms)))
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let services = Arc::new(Services {
        model: Model::default(),
        db: PolicyDb::default(),
    });
    let s = Arc::clone(&services);
    let engine = Engine::builder()
        .path(dir.path())
        .register("support_turn", 1, move |ctx, question| {
            support_turn(ctx, question, Arc::clone(&s))
        })
        .open()
        .await?;
    let question = "Is my phone screen covered by policy POL-7731?".to_string();
    let script = |model: Vec<Script>, db_resets: u32| {
        *services.model.script.lock().unwrap() = model.into();
        services.db.resets.store(db_resets, Ordering::SeqCst);
        services.model.call_times.lock().unwrap().clear();
        (
            services.model.calls.load(Ordering::SeqCst),
            services.db.calls.load(Ordering::SeqCst),
        )
    };

    section("A. Rate limit, timeout and a flaky tool: retried where they happen");
    let retry_after = Duration::from_millis(100);
    let (model_before, db_before) = script(
        vec![
            Script::Fail(ModelError::RateLimited { retry_after }),
            Script::Hang,
            Script::Answer,
            Script::Answer,
        ],
        2,
    );
    let turn_a = engine.start::<_, Turn>("support_turn", &question).await?;
    let t = turn_a.result().await?;
    println!(
        "  answered: {} (policy {} active: {})",
        t.answer, t.status.policy, t.status.active
    );
    let history = engine.history(turn_a.run_id()).await?;
    let rec = record(turn_a.run_id(), &history);
    let plan_delays = recorded_delays(&history, "plan", turn_a.run_id());
    for (i, (class, delay)) in plan_delays.iter().enumerate() {
        println!(
            "  plan attempt {} failed ({class}); next attempt {delay} ms later",
            i + 1
        );
    }
    let model_calls = services.model.calls.load(Ordering::SeqCst) - model_before;
    let db_calls = services.db.calls.load(Ordering::SeqCst) - db_before;
    println!(
        "  model calls: {model_calls} (plan 3, answer 1); policy_db calls: {db_calls}; \
         retrying the whole turn would have re-run the plan for each tool failure"
    );
    assert_eq!(step(&rec, "plan").attempts, 3);
    assert_eq!(
        plan_delays
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>(),
        ["rate-limited", "timeout"]
    );
    // The provider asked for 100 ms: the recorded delay honours it (the jittered backoff
    // alone would have been 20..40 ms), and so did the real gap between the calls.
    let times = services.model.call_times.lock().unwrap().clone();
    let gap = times[1] - times[0];
    println!("  the provider asked to wait {retry_after:?}; the second call came {gap:.0?} after the first");
    assert!(gap >= retry_after - Duration::from_millis(2), "{gap:?}");
    assert!(plan_delays[0].1 >= 95, "{plan_delays:?}");
    // After the timeout, the backoff is the second exponential step, 80 ms, jittered within
    // [40, 80] (a few ms less as recorded: the failure event is stamped after the decision).
    assert!((35..=80).contains(&plan_delays[1].1), "{plan_delays:?}");
    assert_eq!(
        step(&rec, "lookup_policy_status").attempts,
        3,
        "the tool retried at its own boundary"
    );
    assert_eq!(
        (model_calls, db_calls),
        (4, 3),
        "the plan was not re-run for the tool's failures"
    );
    assert_eq!(step(&rec, "answer").attempts, 1);

    section("B. Expired API key: terminal, one attempt, fail fast");
    let (model_before, db_before) = script(vec![Script::Fail(ModelError::Unauthorized)], 0);
    let t0 = Instant::now();
    let turn_b = engine.start::<_, Turn>("support_turn", &question).await?;
    let err = turn_b.result().await.expect_err("the turn fails");
    println!("  failed after {:.0?}: {err}", t0.elapsed());
    assert!(
        matches!(&err, Error::WorkflowFailed { error, .. } if error.contains("401")),
        "{err}"
    );
    assert_eq!(
        services.model.calls.load(Ordering::SeqCst) - model_before,
        1,
        "one attempt, no retry"
    );
    assert_eq!(
        services.db.calls.load(Ordering::SeqCst) - db_before,
        0,
        "the tool was never called"
    );

    section("C. Invalid request: terminal, one attempt, fail fast");
    let (model_before, _) = script(
        vec![Script::Fail(ModelError::InvalidRequest(
            "prompt is 210k tokens, limit 200k".into(),
        ))],
        0,
    );
    let turn_c = engine.start::<_, Turn>("support_turn", &question).await?;
    let err = turn_c.result().await.expect_err("the turn fails");
    println!("  failed: {err}");
    assert!(
        matches!(&err, Error::WorkflowFailed { error, .. } if error.contains("400")),
        "{err}"
    );
    assert_eq!(
        services.model.calls.load(Ordering::SeqCst) - model_before,
        1,
        "one attempt, no retry"
    );

    section("Histories");
    for (label, run) in [
        ("A", turn_a.run_id()),
        ("B", turn_b.run_id()),
        ("C", turn_c.run_id()),
    ] {
        println!("\nturn {label}");
        let history = print_history(&engine, run).await?;
        if label != "A" {
            let rec = record(run, &history);
            let plan = step(&rec, "plan");
            assert_eq!(plan.attempts, 1);
            assert_eq!(plan.failures[0].class, FailureClass::Terminal);
            assert_eq!(plan.failures[0].retry_at_ms, None, "no retry was scheduled");
            assert!(
                matches!(&plan.outcome, StepEnd::Exhausted { budget, .. } if budget == "terminal error")
            );
            assert_eq!(count(&history, "RunFailed"), 1);
        }
    }

    drop((turn_a, turn_b, turn_c));
    engine.shutdown().await;
    println!("\ndone in {:.2?}", started.elapsed());
    Ok(())
}
