//! Fallback chain and circuit breaker: a failing model provider is cut off, a cheaper model
//! serves meanwhile, and the primary is let back in by a probe once it has recovered.
//!
//! Agents in production see their primary model provider go down or degrade for minutes at a
//! time. Retrying it from every run piles onto the outage and makes every run slow; failing
//! the runs loses the work. The usual answer is a fallback chain (primary, then a cheaper
//! model) behind a circuit breaker shared by all runs: after a few consecutive failures the
//! breaker opens and runs go straight to the fallback without calling the primary at all;
//! after a cool-down one probe call is let through (half-open), and its success closes the
//! breaker again.
//!
//! The example runs six summarize runs one after another against a primary provider that
//! fails for a while and then recovers, prints the breaker's state along the way
//! (`engine.breaker_state`), and ends with each run's history: `FallbackUsed` says why the
//! primary was passed over, `served by` says which alternative answered, and breaker
//! rejections are recorded as `breaker-open` attempts, so replay never asks a live breaker.
//!
//! ```text
//! cargo run --example fallback_breaker
//! ```

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal::audit::StepEnd;
use annal::breaker::{BreakerConfig, BreakerState};
use annal::{
    Backoff, Ctx, Engine, EventKind, FailureClass, RetryPolicy, RunId, StepClass, StepFailure,
    WorkflowError,
};
use annal_examples::{count, print_history, record, section, step, wait_for};
use serde::{Deserialize, Serialize};

const PRIMARY: &str = "primary_model";
const FALLBACK: &str = "cheap_model";
const COOL_DOWN_MS: u64 = 300;

/// A model provider: answers after a short latency, or fails with a 503 while unhealthy.
struct Provider {
    name: &'static str,
    latency_ms: u64,
    healthy: AtomicBool,
    calls: AtomicU32,
    in_flight: AtomicU32,
}

impl Provider {
    fn new(name: &'static str, latency_ms: u64, healthy: bool) -> Self {
        Self {
            name,
            latency_ms,
            healthy: AtomicBool::new(healthy),
            calls: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    async fn summarize(&self, text: &str) -> Result<Summary, StepFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(StepFailure::transient(format!(
                "503 {} overloaded",
                self.name
            )));
        }
        let words = text.split_whitespace().count();
        Ok(Summary {
            model: self.name.to_string(),
            text: format!("{words}-word ticket summarised by {}", self.name),
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    model: String,
    text: String,
}

/// One step with a two-model fallback chain. The primary gets two attempts per run (its
/// retry policy); when they are spent, or its breaker is open, the cheap model serves.
async fn summarize(
    ctx: Ctx,
    text: String,
    primary: Arc<Provider>,
    fallback: Arc<Provider>,
) -> Result<Summary, WorkflowError> {
    let (primary, fallback, text) = (&*primary, &*fallback, &text);
    let summary = ctx
        .step("summarize")
        .tool(PRIMARY)
        .class(StepClass::Draft)
        .retry(RetryPolicy {
            max_attempts: 2,
            backoff: Backoff::Fixed { delay_ms: 20 },
            jitter: false,
            ..RetryPolicy::default()
        })
        .fallback(
            FALLBACK,
            move |_| async move { fallback.summarize(text).await },
        )
        .run(move |_| async move { primary.summarize(text).await })
        .await?;
    Ok(summary)
}

fn describe(state: Option<(BreakerState, u64)>) -> String {
    match state {
        Some((BreakerState::Closed { failures }, opened)) => {
            format!("closed ({failures} consecutive failures; opened {opened}x so far)")
        }
        Some((BreakerState::Open { .. }, opened)) => {
            format!("OPEN (calls refused until the cool-down ends; opened {opened}x so far)")
        }
        Some((BreakerState::HalfOpen { in_flight }, opened)) => {
            format!("half-open ({in_flight} probe in flight; opened {opened}x so far)")
        }
        None => "no breaker".into(),
    }
}

struct Demo {
    engine: Engine,
    primary: Arc<Provider>,
    runs: Vec<(String, RunId)>,
}

impl Demo {
    /// Runs one summarize run to its end and prints who served it and the breaker's state.
    async fn run(&mut self, label: &str) -> Result<Summary, annal::Error> {
        let before = self.primary.calls();
        let handle = self
            .engine
            .start::<_, Summary>(
                "summarize",
                &"customer says the parcel arrived crushed".to_string(),
            )
            .await?;
        let summary = handle.result().await?;
        println!(
            "  {label}: served by {:<13} primary called {}x   breaker: {}",
            summary.model,
            self.primary.calls() - before,
            describe(self.engine.breaker_state(PRIMARY))
        );
        self.runs.push((label.to_string(), handle.run_id()));
        Ok(summary)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let primary = Arc::new(Provider::new(PRIMARY, 60, false));
    let cheap = Arc::new(Provider::new(FALLBACK, 5, true));
    let (p, c) = (Arc::clone(&primary), Arc::clone(&cheap));
    let engine = Engine::builder()
        .path(dir.path())
        .breaker(
            PRIMARY,
            BreakerConfig {
                failure_threshold: 3,
                cool_down_ms: COOL_DOWN_MS,
                probes: 1,
            },
        )
        .register("summarize", 1, move |ctx, text| {
            summarize(ctx, text, Arc::clone(&p), Arc::clone(&c))
        })
        .open()
        .await?;
    let mut demo = Demo {
        engine: engine.clone(),
        primary: Arc::clone(&primary),
        runs: Vec::new(),
    };

    section("1. The primary provider is failing");
    println!("  breaker on {PRIMARY}: opens after 3 consecutive failures, cool-down {COOL_DOWN_MS} ms, 1 probe");
    println!("  breaker: {}", describe(engine.breaker_state(PRIMARY)));
    let a = demo.run("run A").await?;
    assert_eq!(a.model, FALLBACK);
    assert!(matches!(
        engine.breaker_state(PRIMARY),
        Some((BreakerState::Closed { failures: 2 }, 0))
    ));
    let b = demo.run("run B").await?;
    assert_eq!(b.model, FALLBACK);
    assert!(
        matches!(
            engine.breaker_state(PRIMARY),
            Some((BreakerState::Open { .. }, 1))
        ),
        "the third failure opens it"
    );
    assert_eq!(
        primary.calls(),
        3,
        "A tried twice, B once; B's retry was refused by the open breaker"
    );
    let opened_at = Instant::now();

    section("2. While the breaker is open, runs go straight to the fallback");
    let calls = primary.calls();
    let c1 = demo.run("run C").await?;
    assert_eq!(c1.model, FALLBACK);
    assert_eq!(
        primary.calls(),
        calls,
        "an open breaker sends nothing to the primary"
    );

    section("3. The provider recovers, but the breaker does not know yet");
    primary.healthy.store(true, Ordering::SeqCst);
    let d = demo.run("run D").await?;
    assert_eq!(
        d.model, FALLBACK,
        "still within the cool-down: no call to find out"
    );
    assert_eq!(primary.calls(), calls);

    section("4. After the cool-down one probe is let through and closes the breaker");
    tokio::time::sleep(
        Duration::from_millis(COOL_DOWN_MS + 50).saturating_sub(opened_at.elapsed()),
    )
    .await;
    let calls = primary.calls();
    let probe = engine
        .start::<_, Summary>("summarize", &"the probe".to_string())
        .await?;
    // Look at the breaker while the probe call is inside the primary.
    let p = Arc::clone(&primary);
    wait_for("the probe call", Duration::from_secs(5), || {
        let p = Arc::clone(&p);
        async move { (p.in_flight.load(Ordering::SeqCst) > 0).then_some(()) }
    })
    .await;
    let during = engine.breaker_state(PRIMARY);
    println!("  run E: probe in flight, breaker: {}", describe(during));
    assert!(
        matches!(during, Some((BreakerState::HalfOpen { in_flight: 1 }, 1))),
        "{during:?}"
    );
    let e = probe.result().await?;
    assert_eq!(e.model, PRIMARY);
    println!(
        "  run E: served by {:<13} primary called {}x   breaker: {}",
        e.model,
        primary.calls() - calls,
        describe(engine.breaker_state(PRIMARY))
    );
    assert!(matches!(
        engine.breaker_state(PRIMARY),
        Some((BreakerState::Closed { failures: 0 }, 1))
    ));
    demo.runs.push(("run E".into(), probe.run_id()));
    let f = demo.run("run F").await?;
    assert_eq!(f.model, PRIMARY, "traffic is back on the primary");

    section("5. What the histories recorded");
    let mut records = Vec::new();
    for (label, run) in &demo.runs {
        println!("\n{label}");
        let history = print_history(&engine, *run).await?;
        let rec = record(*run, &history);
        let served_by = match &step(&rec, "summarize").outcome {
            StepEnd::Completed { served_by, .. } => served_by.clone(),
            other => panic!("{label}: summarize did not complete: {other:?}"),
        };
        let refused = history
            .iter()
            .filter(|e| {
                matches!(
                    &e.kind,
                    EventKind::AttemptFailed {
                        class: FailureClass::BreakerOpen,
                        ..
                    }
                )
            })
            .count();
        let fallback_reason = history.iter().find_map(|e| match &e.kind {
            EventKind::FallbackUsed { to, reason, .. } => Some((to.clone(), reason.clone())),
            _ => None,
        });
        match label.as_str() {
            "run A" => {
                assert_eq!(served_by.as_deref(), Some(FALLBACK));
                let (to, reason) = fallback_reason.expect("run A fell back");
                assert!(
                    to == FALLBACK && reason.starts_with("step attempts (2)"),
                    "{reason}"
                );
                assert_eq!(refused, 0);
            }
            "run B" | "run C" | "run D" => {
                assert_eq!(served_by.as_deref(), Some(FALLBACK));
                let (_, reason) = fallback_reason.expect("fell back");
                assert!(reason.contains("breaker"), "{label}: {reason}");
                assert_eq!(refused, 1, "{label}: one refused attempt recorded");
            }
            _ => {
                assert_eq!(served_by, None, "{label}: the primary served");
                assert_eq!(count(&history, "FallbackUsed"), 0);
            }
        }
        records.push(rec);
    }

    assert_eq!(cheap.calls(), 4, "the fallback served A, B, C and D");
    let refused: usize = records
        .iter()
        .flat_map(|r| &r.steps)
        .flat_map(|s| &s.failures)
        .filter(|f| f.class == FailureClass::BreakerOpen)
        .count();
    println!("\nthe breaker opened once and refused {refused} calls (runs B, C, D) that would have gone to a failing provider");
    assert_eq!(refused, 3);

    engine.shutdown().await;
    drop(demo);
    println!("\ndone in {:.2?}", started.elapsed());
    Ok(())
}
