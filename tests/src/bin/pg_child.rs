//! A worker process of the PostgreSQL crash test (`tests/pg_sigkill/main.rs`): one of three
//! engines on one database, running the mixed workload of `annal_tests::workload` until the
//! parent SIGKILLs it, or until every job of its share has finished.
//!
//! Usage: `pg_child <url> <schema> <dir> <index> <workers> <jobs>`. It drives the jobs `j <
//! jobs` with `j % workers == index` (starts, signals and decisions; acknowledged acts go to
//! `<dir>/acks.log`), and executes whatever runs it holds or takes over, any worker's. The
//! irreversible effects of every worker go to `<dir>/effects.log`.
//!
//! Prints `ready` once the engine is open and `done` once its share completed.

use std::path::PathBuf;
use std::sync::Arc;

use annal::Engine;
use annal_postgres::{PgConfig, PgStore};
use annal_tests::workload::{drive_job, mixed, LineFile};

async fn run(args: &[String]) -> Result<(), String> {
    let [url, schema, dir, index, workers, jobs] = args else {
        return Err("usage: pg_child <url> <schema> <dir> <index> <workers> <jobs>".into());
    };
    let number = |s: &str| s.parse::<u32>().map_err(|e| format!("{s}: {e}"));
    let (index, workers, jobs) = (number(index)?, number(workers)?, number(jobs)?);
    let dir = PathBuf::from(dir);
    let effects = Arc::new(LineFile::new(dir.join("effects.log")));
    let acks = Arc::new(LineFile::new(dir.join("acks.log")));
    let config = PgConfig::new(url.clone())
        .schema(schema.clone())
        .lease_ms(1_000)
        .poll_ms(50);
    let store = PgStore::connect(config)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let engine = Engine::builder()
        .store(Arc::new(store))
        .config(annal::EngineConfig {
            // Runs park at their gate almost at once, so decisions wake parked runs.
            park_after_ms: 5,
            sweep_ms: 1_000,
            ..annal::EngineConfig::default()
        })
        .register("mixed", 1, move |ctx, job| {
            mixed(ctx, Arc::clone(&effects), job)
        })
        .open()
        .await
        .map_err(|e| format!("open: {e}"))?;
    let _ = annal_tests::workload::WATCH.set((
        Arc::clone(engine.store()),
        LineFile::new(dir.join("reran.log")),
    ));
    println!("ready");
    let share = (0..jobs).filter(|job| job % workers == index).map(|job| {
        let (engine, acks) = (engine.clone(), Arc::clone(&acks));
        async move { drive_job(&engine, &acks, job).await }
    });
    let results = futures::future::join_all(share).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !failures.is_empty() {
        return Err(failures.join("\n"));
    }
    println!("done");
    // Stay a worker until told to go: the others' runs may need this one.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    engine.shutdown().await;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(run(&args)) {
        eprintln!("pg_child failed: {e}");
        std::process::exit(3);
    }
}
