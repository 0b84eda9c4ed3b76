//! What both engine benches share: the rows they print, sizing from the environment, the
//! workflows and the engine they run on.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use annal::{ApprovalRequest, Ctx, Durability, Engine, StepClass, WorkflowError};

/// One line of the table (and one JSON line).
pub struct Row {
    pub workload: &'static str,
    pub metric: &'static str,
    pub value: f64,
    pub unit: &'static str,
    pub limit: Option<f64>,
    pub note: String,
}

pub fn scale() -> f64 {
    std::env::var("ANNAL_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

pub fn scaled(n: usize) -> usize {
    ((n as f64 * scale()).round() as usize).max(1)
}

pub fn wanted(name: &str) -> bool {
    std::env::var("ANNAL_BENCH_ONLY").map_or(true, |only| only.split(',').any(|w| w.trim() == name))
}

pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("ANNAL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("bench dir"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

pub async fn chain(ctx: Ctx, steps: u32) -> Result<u32, WorkflowError> {
    let mut total = 0;
    for i in 0..steps {
        total += ctx
            .step("step")
            .class(StepClass::Write)
            .run(move |_| async move { Ok(i) })
            .await?;
    }
    Ok(total)
}

pub async fn open(path: &Path) -> Engine {
    open_with_cache(path, 64 << 20).await
}

pub async fn open_with_cache(path: &Path, cache_bytes: u64) -> Engine {
    Engine::builder()
        .path(path)
        .cache_capacity_bytes(cache_bytes)
        .durability(Durability::PowerSafe)
        .park_after_ms(200)
        .register("chain", 1, chain)
        .register("parked", 1, parked)
        .open()
        .await
        .expect("engine")
}

/// Parks until an absolute wall time (ms): on a timer for even `i`, on an approval whose
/// deadline falls then (and which nobody decides) for odd `i`.
pub async fn parked(ctx: Ctx, (i, due_at_ms): (u32, u64)) -> Result<u32, WorkflowError> {
    if i % 2 == 0 {
        ctx.sleep_until(due_at_ms).await?;
    } else {
        let now = ctx.now_ms().await;
        let mut request = ApprovalRequest::new("bench");
        request.deadline_ms = Some(due_at_ms.saturating_sub(now));
        request.on_expiry = annal::OnExpiry::Reject;
        ctx.approval(request).await?;
    }
    Ok(i)
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts `count` runs of `parked` (numbered from `first`), due at `due_at_ms`, and waits
/// until every run of the engine has parked. Starts go out 64 at a time so that they share
/// group commits.
pub async fn park_runs(
    engine: &Engine,
    first: usize,
    count: usize,
    due_at_ms: u64,
) -> Vec<annal::RunId> {
    let mut ids = Vec::with_capacity(count);
    let all: Vec<u32> = (first as u32..(first + count) as u32).collect();
    for chunk in all.chunks(64) {
        let inputs: Vec<(u32, u64)> = chunk.iter().map(|i| (*i, due_at_ms)).collect();
        let starts = inputs
            .iter()
            .map(|input| engine.start::<_, u32>("parked", input));
        for handle in futures::future::join_all(starts).await {
            ids.push(handle.unwrap().run_id());
        }
    }
    // A started run stays in memory until it parks; listing every run's status on each poll
    // would cost more than the wait as the runs pile up.
    while engine.runs_in_memory() > 0 {
        assert!(
            wall_ms() < due_at_ms,
            "runs did not all park before they were due"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs_now = engine.runs().await.unwrap();
    assert!(runs_now
        .iter()
        .all(|r| r.status == annal::RunStatus::Parked));
    ids
}

/// A multi-thread tokio runtime with `ANNAL_BENCH_WORKERS` worker threads (default: one
/// per core).
pub fn shared_runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("ANNAL_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        builder.worker_threads(n);
    }
    builder.enable_all().build().unwrap()
}

/// Prints the rows as a table, then one JSON line each (`{"bench":"engine",...}`).
pub fn print(rows: &[Row]) {
    println!(
        "{:<10} {:<24} {:>14} {:>14} {:>8}  note",
        "workload", "metric", "value", "limit", "ratio"
    );
    for r in rows {
        let ratio = r
            .limit
            .map_or(String::from("-"), |l| format!("{:.2}", r.value / l));
        let limit = r.limit.map_or(String::from("-"), |l| format!("{l:.1}"));
        println!(
            "{:<10} {:<24} {:>11.1} {:<2} {:>14} {:>8}  {}",
            r.workload, r.metric, r.value, r.unit, limit, ratio, r.note
        );
    }
    for r in rows {
        println!(
        "{{\"bench\":\"engine\",\"workload\":\"{}\",\"metric\":\"{}\",\"value\":{:.3},\"unit\":\"{}\",\"limit\":{},\"ratio\":{},\"note\":{:?}}}",
        r.workload,
        r.metric,
        r.value,
        r.unit,
        r.limit.map_or("null".into(), |l| format!("{l:.3}")),
        r.limit.map_or("null".into(), |l| format!("{:.4}", r.value / l)),
        r.note
    );
    }
}
