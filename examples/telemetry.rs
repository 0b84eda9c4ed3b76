//! Telemetry: what annal reports while runs execute, as tracing events and as metrics.
//!
//! annal emits a `tracing` event for every lifecycle transition (run started, resumed,
//! parking, escalated, ended; attempt started and failed; step completed, degraded, skipped,
//! exhausted; run ceiling reached; approval requested, decided, expired; operator action) and
//! records counters and histograms through the `metrics` facade. A service installs the
//! exporter it uses (`metrics-exporter-prometheus`, an OpenTelemetry bridge); this example
//! installs `metrics-util`'s debugging recorder and prints what it holds after a few runs.
//!
//! ```text
//! cargo run --example telemetry
//! RUST_LOG=annal=debug cargo run --example telemetry   # every transition as it happens
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use annal::{
    Actor, ApprovalRequest, Ctx, Engine, Policy, RiskTier, StepClass, StepFailure, Verdict,
    WorkflowError,
};
use annal_examples::section;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const POLICY: &str = r#"
[run]
max_iterations = 8

[tools.search_api]
max_retries = 2
backoff = "fixed"
backoff_initial_ms = 10
on_exhaust = "degrade"
degrade_to = []

[tools.payments]
max_retries = 1
backoff = "none"
on_exhaust = "escalate"
"#;

/// A refund: search (flaky: fails twice, then degrades), a human approval, the payment.
async fn refund(ctx: Ctx, amount: u64, searches: Arc<AtomicU32>) -> Result<String, WorkflowError> {
    let hits: Vec<String> = ctx
        .step("search_orders")
        .tool("search_api")
        .class(StepClass::Read)
        .run(|_| {
            let searches = Arc::clone(&searches);
            async move {
                if searches.fetch_add(1, Ordering::SeqCst) % 4 < 3 {
                    return Err(StepFailure::transient("503 from search"));
                }
                Ok(vec!["order A-1".to_string()])
            }
        })
        .await?;
    let decision = ctx
        .approval(ApprovalRequest {
            risk: RiskTier::Medium,
            cost: Some(amount),
            approvers: vec!["role:finance".into()],
            ..ApprovalRequest::new(format!("refund {amount} cents"))
        })
        .await?;
    if !matches!(decision, annal::Decision::Approved { .. }) {
        return Ok("refund refused".into());
    }
    let paid: String = ctx
        .step("pay")
        .tool("payments")
        .class(StepClass::Irreversible)
        .run(move |a| {
            let found = hits.len();
            async move {
                a.report_cost(3);
                Ok(format!("paid {amount} ({found} orders found)"))
            }
        })
        .await?;
    Ok(paid)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;
    let dir = tempfile::tempdir()?;
    let searches = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&searches);
    let engine = Engine::builder()
        .path(dir.path())
        .durability(annal::Durability::Buffered)
        .policy(Policy::from_toml(POLICY)?)
        .register("refund", 1, move |ctx, amount| {
            refund(ctx, amount, Arc::clone(&s))
        })
        .open()
        .await?;

    section("1. Two refunds, decided by finance");
    let mut handles = Vec::new();
    for amount in [4_200u64, 900] {
        handles.push(engine.start::<_, String>("refund", &amount).await?);
    }
    let finance = Actor::new("dana", &["finance"]);
    let mut decided = 0;
    while decided < handles.len() {
        for pending in engine.pending_approvals(&Default::default()).await? {
            let verdict = Verdict::Approve { edits: None };
            engine
                .decide(pending.gate, &finance, verdict, "within policy")
                .await?;
            decided += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for handle in &handles {
        println!("  {}: {}", handle.run_id(), handle.result().await?);
    }

    section("2. What the metrics recorder holds");
    let mut lines = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let value = match value {
            DebugValue::Counter(n) => n.to_string(),
            DebugValue::Gauge(g) => g.to_string(),
            DebugValue::Histogram(values) => {
                let max = values.iter().map(|v| v.into_inner()).fold(0.0, f64::max);
                format!("{} values, max {max:.3}s", values.len())
            }
        };
        lines.push(format!("  {}{{{}}} {value}", key.name(), labels.join(",")));
    }
    lines.sort();
    for line in &lines {
        println!("{line}");
    }
    let has = |prefix: &str| lines.iter().any(|l| l.trim_start().starts_with(prefix));
    for expected in [
        "annal_attempts_total{tool=search_api}",
        "annal_retries_total{tool=search_api}",
        "annal_exhaustions_total{tool=search_api,action=degrade}",
        "annal_step_duration_seconds{tool=payments}",
        "annal_approvals_decided_total{decision=approved} 2",
        "annal_approval_latency_seconds{decision=approved}",
        "annal_runs_total{workflow=refund,status=completed} 2",
    ] {
        assert!(has(expected), "missing {expected}");
    }
    engine.shutdown().await;
    Ok(())
}
