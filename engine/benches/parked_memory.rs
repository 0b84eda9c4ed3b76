//! The heap each parked run keeps, measured exactly by a counting allocator.
//!
//! ```text
//! cargo bench -p annal --bench parked_memory
//! ANNAL_BENCH_SCALE=0.1 cargo bench -p annal --bench parked_memory     # a quick smoke run
//! ```
//!
//! Parks 10,000 runs (half on timers, half on approval deadlines) on an engine with a 1 MiB
//! sled cache, then 20,000 more: the slope between the two is what each further parked run
//! keeps (target: <= 256 B). sled's memory has a large fixed part (a few MB beyond its
//! cache), which an average spreads thinner the more runs there are; the averages are in the
//! note. It grows in steps (tables that double), so the slope is taken over a wide span.
//!
//! A bench of its own because the counting allocator (`cap`: an atomic add on one shared
//! counter for every allocation and free) slows the multi-threaded workloads of
//! `workloads` (fan-in by ~5 % in alternating pairs), which must measure the engine as a
//! service runs it: on the plain system allocator.
//!
//! Prints a table, then one JSON line per row (`{"bench":"engine",...}`).

#![allow(missing_docs)]

mod support;
use support::{bench_dir, open_with_cache, park_runs, scaled, shared_runtime, wall_ms, Row};

/// The system allocator, counting the bytes live on the heap, so that what parked runs keep
/// is measured exactly rather than through the resident set (which also holds the
/// allocator's high-water mark).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn heap_live_bytes() -> usize {
    ALLOCATOR.allocated()
}

async fn bench_parked_memory(rows: &mut Vec<Row>) {
    let runs = scaled(10_000);
    let dir = bench_dir();
    let engine = open_with_cache(dir.path(), 1 << 20).await;
    // Never due while the bench looks.
    let due_at_ms = wall_ms() + 3_600_000;
    let heap_before = heap_live_bytes();
    park_runs(&engine, 0, runs, due_at_ms).await;
    let first = heap_live_bytes().saturating_sub(heap_before);
    let in_memory = engine.runs_in_memory();
    park_runs(&engine, runs, 2 * runs, due_at_ms).await;
    let second = heap_live_bytes().saturating_sub(heap_before);
    // What of it the store (sled) holds: the engine dropped, its store kept open.
    let store = engine.store().clone();
    engine.shutdown().await;
    drop(engine);
    let store_heap = heap_live_bytes().saturating_sub(heap_before);
    drop(store);
    let total = 3 * runs;
    rows.push(Row {
        workload: "recovery",
        metric: "memory per parked run",
        value: (second as f64 - first as f64) / (2 * runs) as f64,
        unit: "B",
        limit: Some(256.0),
        note: format!(
            "heap bytes each further parked run keeps (from {runs} to {total} parked, 1 MiB sled cache); averages including sled's fixed part: {:.0} B per run at {runs} parked, {:.0} B at {total} (the store (sled) {:.0} B, the engine {:.0} B; runs it holds in memory at {runs}: {in_memory})",
            first as f64 / runs as f64,
            second as f64 / total as f64,
            store_heap as f64 / total as f64,
            (second as f64 - store_heap as f64) / total as f64,
        ),
    });
}

fn main() {
    let runtime = shared_runtime();
    let mut rows = Vec::new();
    runtime.block_on(bench_parked_memory(&mut rows));
    support::print(&rows);
}
