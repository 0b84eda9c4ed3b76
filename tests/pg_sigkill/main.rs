//! The real crash test on PostgreSQL: three worker processes (`tests/src/bin/pg_child.rs`)
//! share one database; one of them, picked at random, is SIGKILLed at a random moment every
//! round and started again with more work, while the other two go on (and take the dead
//! one's runs over once its lease passed). After every kill the parent reads the database and
//! the side files and checks what must hold at any instant (`annal_tests::verify::check`:
//! every acknowledged start, signal and decision recorded, one run per job, no duplicate
//! irreversible effect, no run waiting for what its history holds). At the end all three run
//! to completion: every run completed once, every irreversible step once with one effect.
//!
//! Environment: `ANNAL_PG_URL` (required where `CI` is set), `ANNAL_PG_SIGKILL_ROUNDS`
//! (default [`DEFAULT_ROUNDS`]), `ANNAL_PG_SIGKILL_SEED` (default: from the clock; printed).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use annal_postgres::{testing, PgConfig, PgStore};
use annal_tests::verify::{self, Rng};

/// Kill rounds when `ANNAL_PG_SIGKILL_ROUNDS` is unset.
const DEFAULT_ROUNDS: u32 = 8;

/// Worker processes on the database.
const WORKERS: u32 = 3;

/// New jobs each round adds.
const JOBS_PER_ROUND: u32 = 6;

/// Longest wait for a worker to be ready or done: turns a hang into a failure.
const HANG_LIMIT: Duration = Duration::from_secs(120);

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

fn spawn(config: &PgConfig, dir: &Path, index: u32, jobs: u32) -> Worker {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("worker-{index}.log")))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg_child"))
        .args([
            config.url.as_str(),
            config.schema.as_str(),
            &dir.display().to_string(),
            &index.to_string(),
            &WORKERS.to_string(),
            &jobs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn pg_child");
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Worker {
        child,
        stdin,
        lines,
    }
}

fn wait_for(worker: &Worker, what: &str, dir: &Path, index: u32) {
    loop {
        match worker.lines.recv_timeout(HANG_LIMIT) {
            Ok(line) if line == what => return,
            Ok(_) => {}
            Err(e) => panic!(
                "worker {index} never said {what} ({e}); see {}",
                dir.join(format!("worker-{index}.log")).display()
            ),
        }
    }
}

fn check(config: &PgConfig, dir: &Path, context: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The side files first: what they acknowledge was durable before they said so.
    let files = verify::SideFiles::read(dir);
    let (runs, histories) = runtime.block_on(async {
        let store = PgStore::connect(config.clone()).await.unwrap();
        verify::read_store(&store, context, true).await
    });
    verify::check(&files, context, &runs, &histories);
}

#[test]
fn three_workers_on_one_database_lose_and_duplicate_nothing_when_one_is_killed() {
    let Some(url) = testing::url_from_env() else {
        return;
    };
    let config = testing::fresh(&url);
    let rounds: u32 = std::env::var("ANNAL_PG_SIGKILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let seed = annal_tests::seed_from_env("ANNAL_PG_SIGKILL_SEED");
    eprintln!("pg_sigkill: {rounds} rounds, {WORKERS} workers, ANNAL_PG_SIGKILL_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = Rng(seed);
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|i| spawn(&config, dir, i, JOBS_PER_ROUND))
        .collect();
    for (i, w) in workers.iter().enumerate() {
        wait_for(w, "ready", dir, i as u32);
    }
    for round in 0..rounds {
        let jobs = JOBS_PER_ROUND * (round + 2);
        let victim = rng.below(u64::from(WORKERS)) as usize;
        let delay_ms = rng.below(400);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = workers[victim].child.kill();
        let status = workers[victim].child.wait().unwrap();
        eprintln!("round {round}: killed worker {victim} after {delay_ms} ms: {status}");
        let context = format!("after round {round} (seed {seed})");
        check(&config, dir, &context);
        workers[victim] = spawn(&config, dir, victim as u32, jobs);
        wait_for(&workers[victim], "ready", dir, victim as u32);
    }
    // The last round: every worker gets the whole workload and runs it to the end.
    let jobs = JOBS_PER_ROUND * (rounds + 2);
    for (i, mut w) in workers.drain(..).enumerate() {
        let _ = w.child.kill();
        let _ = w.child.wait();
        drop(w.stdin);
        eprintln!("final: restarting worker {i}");
    }
    let mut workers: Vec<Worker> = (0..WORKERS).map(|i| spawn(&config, dir, i, jobs)).collect();
    for (i, w) in workers.iter().enumerate() {
        wait_for(w, "done", dir, i as u32);
    }
    for w in &mut workers {
        let _ = writeln!(w.stdin);
    }
    for (i, w) in workers.iter_mut().enumerate() {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "worker {i} exited with {status}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let files = verify::SideFiles::read(dir);
    let (runs, histories) = runtime.block_on(async {
        let store = PgStore::connect(config.clone()).await.unwrap();
        verify::read_store(&store, "at the end", false).await
    });
    verify::check(
        &files,
        &format!("at the end (seed {seed})"),
        &runs,
        &histories,
    );
    verify::check_finished(dir, &histories, jobs);
    eprintln!(
        "pg_sigkill: {} runs verified over {rounds} kills",
        histories.len()
    );
    runtime.block_on(PgStore::drop_schema(&config)).unwrap();
}
