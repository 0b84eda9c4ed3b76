//! The child process of the full-disk test (`tests/full_disk/main.rs`): runs workflows on a
//! real sled store in `PowerSafe` mode, under a file-size limit its parent set, until a write
//! fails.
//!
//! Usage: `full_disk_child <dir>`. Prints `ready` once the engine is open, `ack <run>` for
//! each run whose result came back (its end is durable), and `error <run?> <error>` for the
//! first failure (`-` when no run was started); then stops starting runs, waits for those in
//! flight, shuts the engine down and exits 0. A panic exits non-zero.

use std::path::Path;

use annal::{Durability, Engine};
use annal_tests::full_disk::fill;

/// Runs in flight at once.
const WIDTH: usize = 16;
/// Gives up after this many runs if no write failed (the limit was not applied).
const RUNS_MAX: usize = 20_000;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: full_disk_child <dir>");
    let engine = match Engine::builder()
        .path(Path::new(&dir).join("db"))
        .durability(Durability::PowerSafe)
        .register("fill", 1, fill)
        .open()
        .await
    {
        Ok(engine) => engine,
        Err(e) => {
            println!("error - {e:?}");
            return;
        }
    };
    println!("ready");
    let mut seed = 0u32;
    let mut failed = false;
    while !failed && (seed as usize) < RUNS_MAX {
        let mut batch = Vec::with_capacity(WIDTH);
        for _ in 0..WIDTH {
            seed += 1;
            let engine = engine.clone();
            batch.push(tokio::spawn(async move {
                let handle = engine.start::<_, u32>("fill", &seed).await;
                match handle {
                    Ok(handle) => {
                        let run = handle.run_id();
                        (Some(run), handle.result().await)
                    }
                    Err(e) => (None, Err(e)),
                }
            }));
        }
        for task in batch {
            match task.await.expect("run task") {
                (Some(run), Ok(_)) => println!("ack {run}"),
                (run, Err(e)) => {
                    if !failed {
                        let run = run.map_or("-".to_string(), |r| r.to_string());
                        println!("error {run} {e:?}");
                    }
                    failed = true;
                }
                (None, Ok(_)) => unreachable!("a result without a run"),
            }
        }
    }
    if !failed {
        println!("no-error");
    }
    engine.shutdown().await;
}
