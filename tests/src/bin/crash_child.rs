//! The child process of the real-crash test (`tests/sigkill/main.rs`): runs a mixed workload on
//! a real sled store in `PowerSafe` mode until the parent SIGKILLs it, or until every job
//! has finished.
//!
//! Usage: `crash_child <dir> <jobs>`. In `<dir>`:
//! - `db/`: the engine's sled database;
//! - `effects.log`: one line `<run> <idempotency key>` per irreversible effect, appended and
//!   fsynced by the step body *before* it reports success (the effect "happened"); it is
//!   also what the reconcile hook consults after a crash;
//! - `acks.log`: `start <job> <run>` once a start was acknowledged (durable), `signal <job>
//!   <run>` once a signal was; fsynced.
//!
//! Prints `ready` once the engine is open (recovery done) and `done` once every job's run
//! completed; exits 0 then, non-zero on any failure.

use std::path::Path;
use std::sync::Arc;

use annal::{Durability, Engine};
use annal_tests::workload::{drive_job, mixed, LineFile};

async fn run(dir: &Path, jobs: u32) -> Result<(), String> {
    let effects = Arc::new(LineFile::new(dir.join("effects.log")));
    let acks = Arc::new(LineFile::new(dir.join("acks.log")));
    let ledger = Arc::clone(&effects);
    let engine = Engine::builder()
        .path(dir.join("db"))
        .durability(Durability::PowerSafe)
        .cache_capacity_bytes(8 * 1024 * 1024)
        // Runs park at their gate almost at once, so decisions wake parked runs.
        .park_after_ms(5)
        .register("mixed", 1, move |ctx, job| {
            mixed(ctx, Arc::clone(&ledger), job)
        })
        .open()
        .await
        .map_err(|e| format!("open: {e}"))?;
    let _ = annal_tests::workload::WATCH.set((
        Arc::clone(engine.store()),
        LineFile::new(dir.join("reran.log")),
    ));
    println!("ready");
    let starts = (0..jobs).map(|job| {
        let (engine, acks) = (engine.clone(), Arc::clone(&acks));
        async move { drive_job(&engine, &acks, job).await }
    });
    let results = futures::future::join_all(starts).await;
    engine.shutdown().await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failures.is_empty() {
        println!("done");
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(jobs)) = (args.get(1), args.get(2).and_then(|j| j.parse().ok())) else {
        eprintln!("usage: crash_child <dir> <jobs>");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(Path::new(dir), jobs)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("crash_child failed: {e}");
            std::process::exit(3);
        }
    }
}
