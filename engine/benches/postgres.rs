//! annal on PostgreSQL next to the raw limit of the same server, measured in the same run.
//!
//! ```text
//! bash .ci/pg start                                    # a local server, synchronous_commit=on
//! ANNAL_PG_URL=postgresql://annal@127.0.0.1:55432/annal cargo bench -p annal --bench postgres
//! ANNAL_BENCH_ONLY=fan_in ANNAL_PG_URL=... cargo bench -p annal --bench postgres
//! ```
//!
//! Workloads, each in a fresh schema:
//! - `chain`: one run of 1000 sequential `Write` steps on one engine: steps/s, against one
//!   raw commit (one event row `INSERT` + `COMMIT`, the floor of any durable step).
//! - `fan_in`: 200 concurrent runs of 10 `Write` steps spread over 1, 2 and 3 engines (one
//!   worker each): event rows/s and steps/s, against the raw limit at the same concurrency
//!   (the same number of event rows in batched `INSERT`s of 200 rows, one `COMMIT` each).
//!   Two more rows: the same appends straight to a `PgStore`, without the engine; and the
//!   same runs on one engine whose store is in memory (`SimStore`), the engine's own ceiling.
//!   Each row's note gives the CPU per event row of this process and of the server's
//!   processes (Linux `schedstat`) and, for annal's rows, the transactions per round. Each
//!   fan-in row is the median of `ANNAL_BENCH_REPEATS` rounds (default 5) after an untimed
//!   one, raw and annal's rounds alternating.
//! - `takeover`: a worker process holding 50 runs is SIGKILLed; the time until another
//!   worker has finished all of them, against the lease plus one second.
//!
//! Without `ANNAL_PG_URL` it says how to start a server and measures nothing.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal::{Ctx, Engine, StepClass, WorkflowError};
use annal_postgres::{PgConfig, PgStore};
use annal_storage::LogStore;

mod support;
use support::{chain, scaled, shared_runtime, wanted, Row};

/// A fresh schema on the bench server.
fn config(url: &str) -> PgConfig {
    PgConfig::new(url).schema(format!("annal_bench_{}", uuid::Uuid::new_v4().simple()))
}

async fn engine(config: &PgConfig) -> Engine {
    engine_and_store(config).await.0
}

/// An engine and its store, whose commit statistics the fan-in prints.
async fn engine_and_store(config: &PgConfig) -> (Engine, Arc<PgStore>) {
    let store = Arc::new(PgStore::connect(config.clone()).await.expect("connect"));
    let engine = Engine::builder()
        .store(Arc::clone(&store) as Arc<dyn LogStore>)
        .register("chain", 1, chain)
        .open()
        .await
        .expect("engine");
    (engine, store)
}

/// Transactions and appends per transaction since `before`, over `stores`.
fn groups_since(stores: &[Arc<PgStore>], before: &[annal_postgres::CommitStats]) -> (u64, f64) {
    let (mut groups, mut appends) = (0, 0);
    for (store, before) in stores.iter().zip(before) {
        let now = store.commit_stats();
        groups += now.groups - before.groups;
        appends += now.appends - before.appends;
    }
    (groups, appends as f64 / groups.max(1) as f64)
}

/// A client of the same server, and a table shaped like annal's events, for the raw loops.
async fn raw_client(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE \"{schema}\".raw_events (run uuid NOT NULL, seq bigint NOT NULL, record bytea NOT NULL, PRIMARY KEY (run, seq));"
        ))
        .await
        .expect("raw table");
    client
}

/// `commits` commits of `rows` event rows each (one multi-row INSERT + COMMIT), over `rows`
/// runs; returns rows/s.
async fn raw_batched(
    client: &mut tokio_postgres::Client,
    schema: &str,
    rows: usize,
    commits: usize,
) -> f64 {
    let runs: Vec<uuid::Uuid> = (0..rows).map(|_| uuid::Uuid::now_v7()).collect();
    let record = vec![0x5a_u8; 64];
    let records: Vec<&[u8]> = vec![&record; rows];
    let sql = format!(
        "INSERT INTO \"{schema}\".raw_events (run, seq, record) SELECT r, $2, b FROM unnest($1::uuid[], $3::bytea[]) AS t(r, b)"
    );
    let t = Instant::now();
    for seq in 0..commits as i64 {
        let tx = client.transaction().await.unwrap();
        tx.execute(&sql, &[&runs, &seq, &records]).await.unwrap();
        tx.commit().await.unwrap();
    }
    (rows * commits) as f64 / t.elapsed().as_secs_f64()
}

async fn bench_chain(url: &str, rows: &mut Vec<Row>) {
    let steps = scaled(1000) as u32;
    let config = config(url);
    let engine = engine(&config).await;
    let mut raw = raw_client(url, &config.schema).await;
    let raw_commit = 1.0 / raw_batched(&mut raw, &config.schema, 1, 200).await;
    let t = Instant::now();
    engine
        .start::<_, u32>("chain", &steps)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let elapsed = t.elapsed();
    engine.shutdown().await;
    rows.push(Row {
        workload: "chain",
        metric: "mean step latency",
        value: elapsed.as_secs_f64() * 1e6 / f64::from(steps),
        unit: "us",
        limit: Some(raw_commit * 1e6),
        note: format!(
            "{steps} Write steps, {:.0} steps/s; limit = one raw INSERT + COMMIT",
            f64::from(steps) / elapsed.as_secs_f64()
        ),
    });
    let _ = PgStore::drop_schema(&config).await;
}

/// On-CPU time so far of this process's threads and of each of the database server's
/// processes (every process named `postgres`: backends, WAL writer, checkpointer), from
/// Linux `schedstat`; empty elsewhere. Threads that ended are not counted, and a server
/// process counts only for what it used while it was seen (a backend that ended between two
/// readings is left out of their difference, instead of taking its time away).
#[derive(Clone, Default)]
struct Cpu {
    bench: Duration,
    server: HashMap<u32, Duration>,
}

impl Cpu {
    fn now() -> Self {
        fn on_cpu(path: &std::path::Path) -> Duration {
            std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .map(Duration::from_nanos)
                .unwrap_or_default()
        }
        let mut cpu = Cpu::default();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            cpu.bench = tasks.flatten().map(|t| on_cpu(&t.path())).sum();
        }
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let path = p.path();
                let is_server = std::fs::read_to_string(path.join("comm"))
                    .is_ok_and(|name| name.trim() == "postgres");
                if is_server {
                    cpu.server.insert(pid, on_cpu(&path));
                }
            }
        }
        cpu
    }

    /// Microseconds of each side per `rows` since `before`, for a note.
    fn per_row_since(&self, before: &Cpu, rows: usize) -> (f64, f64) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / rows as f64;
        let server: Duration = self
            .server
            .iter()
            .map(|(pid, after)| {
                after.saturating_sub(before.server.get(pid).copied().unwrap_or_default())
            })
            .sum();
        (us(self.bench.saturating_sub(before.bench)), us(server))
    }
}

/// `runs` runs of `steps` Write steps spread over `replicas`, all at once; the seconds until
/// every one has finished.
async fn fan_in_round(replicas: &[Engine], runs: usize, steps: u32) -> f64 {
    let t = Instant::now();
    let tasks: Vec<_> = (0..runs)
        .map(|i| {
            let engine = replicas[i % replicas.len()].clone();
            tokio::spawn(async move {
                engine
                    .start::<_, u32>("chain", &steps)
                    .await
                    .unwrap()
                    .result()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    t.elapsed().as_secs_f64()
}

/// How many times each fan-in measurement is repeated (raw limit and annal alternating, so
/// both see the same machine): a round is tens of milliseconds, and one alone is noise.
fn repeats() -> usize {
    std::env::var("ANNAL_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// The median of `values`, and their range.
fn median(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mid = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (mid, values[0], values[n - 1])
}

async fn bench_fan_in(url: &str, rows: &mut Vec<Row>) {
    let runs = scaled(200);
    let steps = 10u32;
    let repeats = repeats();
    // A run of 10 Write steps writes its start, ten steps and its end: 12 event rows.
    let events_per_run = 2 + steps as usize;
    let event_rows = runs * events_per_run;
    for engines in 1..=3usize {
        let config = config(url);
        let mut replicas = Vec::new();
        let mut stores = Vec::new();
        for _ in 0..engines {
            let (engine, store) = engine_and_store(&config).await;
            replicas.push(engine);
            stores.push(store);
        }
        let mut raw = raw_client(url, &config.schema).await;
        // One untimed pass of each, so that neither pays for a cold table.
        raw_batched(&mut raw, &config.schema, runs, events_per_run).await;
        fan_in_round(&replicas, runs, steps).await;
        let (mut raw_rates, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut raw_cpu, mut cpu) = ((0.0, 0.0), (0.0, 0.0));
        let stats_before: Vec<_> = stores.iter().map(|s| s.commit_stats()).collect();
        for _ in 0..repeats {
            let before = Cpu::now();
            let raw_rate = raw_batched(&mut raw, &config.schema, runs, events_per_run).await;
            let (client_us, server_us) = Cpu::now().per_row_since(&before, event_rows);
            raw_cpu = (raw_cpu.0 + client_us, raw_cpu.1 + server_us);
            let before = Cpu::now();
            let rate = event_rows as f64 / fan_in_round(&replicas, runs, steps).await;
            let (engine_us, server_us) = Cpu::now().per_row_since(&before, event_rows);
            cpu = (cpu.0 + engine_us, cpu.1 + server_us);
            raw_rates.push(raw_rate);
            rates.push(rate);
            ratios.push(rate / raw_rate);
        }
        let (groups, per_group) = groups_since(&stores, &stats_before);
        let groups = groups / repeats as u64;
        let n = repeats as f64;
        let (raw_rate, _, _) = median(&mut raw_rates);
        let (rate, _, _) = median(&mut rates);
        let (_, ratio_min, ratio_max) = median(&mut ratios);
        if engines == 1 {
            // The store without the engine: the same appends, one after another per run.
            let mut store_rates = Vec::new();
            let (mut store_cpu, mut per_group) = ((0.0, 0.0), 0.0);
            for _ in 0..repeats {
                let (rate, bench_us, server_us, group) =
                    store_only(&config, runs, events_per_run).await;
                store_rates.push(rate);
                store_cpu = (store_cpu.0 + bench_us, store_cpu.1 + server_us);
                per_group += group;
            }
            let (store_rate, low, high) = median(&mut store_rates);
            rows.push(Row {
                workload: "fan_in",
                metric: "event rows/s, store only",
                value: store_rate,
                unit: "/s",
                limit: Some(raw_rate),
                note: format!(
                    "{runs} runs x {events_per_run} appends straight to one PgStore (no workflow code), {:.1} appends per transaction; {low:.0}-{high:.0} rows/s in {repeats} rounds; CPU per row: bench {:.1} us, server {:.1} us; limit as below",
                    per_group / n,
                    store_cpu.0 / n,
                    store_cpu.1 / n
                ),
            });
        }
        for engine in &replicas {
            engine.shutdown().await;
        }
        rows.push(Row {
            workload: "fan_in",
            metric: match engines {
                1 => "event rows/s, 1 engine",
                2 => "event rows/s, 2 engines",
                _ => "event rows/s, 3 engines",
            },
            value: rate,
            unit: "/s",
            limit: Some(raw_rate),
            note: format!(
                "{runs} runs x {steps} Write steps, median of {repeats} rounds (ratio per round {ratio_min:.2}-{ratio_max:.2}), {:.0} steps/s; {groups} transactions a round, {per_group:.1} appends each; CPU per row: engines {:.1} us, server {:.1} us; limit = the same rows, {runs} per INSERT + COMMIT, median of {repeats} rounds alternating with annal's (CPU per row: client {:.1} us, server {:.1} us)",
                rate / events_per_run as f64 * steps as f64,
                cpu.0 / n,
                cpu.1 / n,
                raw_cpu.0 / n,
                raw_cpu.1 / n
            ),
        });
        if engines == 1 {
            // The same rounds on a store that does no I/O at all: the most the engine's CPU
            // per step allows on this machine, whatever the database does.
            let memory = Engine::builder()
                .store(Arc::new(annal_storage::SimStore::new()) as Arc<dyn LogStore>)
                .register("chain", 1, chain)
                .open()
                .await
                .expect("engine");
            let mut memory_rates = Vec::new();
            let mut memory_us = 0.0;
            for _ in 0..repeats {
                let before = Cpu::now();
                let elapsed = fan_in_round(std::slice::from_ref(&memory), runs, steps).await;
                memory_us += Cpu::now().per_row_since(&before, event_rows).0;
                memory_rates.push(event_rows as f64 / elapsed);
            }
            memory.shutdown().await;
            let (memory_rate, _, _) = median(&mut memory_rates);
            rows.push(Row {
                workload: "fan_in",
                metric: "event rows/s, in-memory store",
                value: memory_rate,
                unit: "/s",
                limit: Some(raw_rate),
                note: format!(
                    "the same {runs} runs on one engine whose store is in memory (SimStore: no database, no I/O), median of {repeats} rounds: the engine's own ceiling on this machine; CPU per row {:.1} us; limit as above",
                    memory_us / n
                ),
            });
        }
        let _ = PgStore::drop_schema(&config).await;
    }
}

/// `runs` runs appending `appends` one-event appends each, all runs at once, each append
/// waiting for the one before it: what the engine asks of the store in `fan_in`, without
/// the engine. Returns event rows/s and the CPU per row of this process and of the server
/// (read before the store's connections close), and the appends per transaction.
async fn store_only(config: &PgConfig, runs: usize, appends: usize) -> (f64, f64, f64, f64) {
    use annal_storage::{AppendBatch, RunId, RunMeta};
    let store = Arc::new(PgStore::connect(config.clone()).await.expect("connect"));
    let meta = RunMeta {
        workflow: "chain".into(),
        version: 1,
        status: 1,
        next_seq: 0,
        created_ms: 0,
        updated_ms: 0,
        wake_ms: None,
        note: String::new(),
        status_seq: 0,
    };
    let before = Cpu::now();
    let t = Instant::now();
    let tasks: Vec<_> = (0..runs)
        .map(|_| {
            let (store, meta) = (Arc::clone(&store), meta.clone());
            tokio::spawn(async move {
                let run = RunId(*uuid::Uuid::now_v7().as_bytes());
                for seq in 0..appends as u64 {
                    let batch = AppendBatch {
                        run,
                        expected_next_seq: seq,
                        events: vec![vec![0x5a; 64]],
                        meta: (seq == 0).then(|| meta.clone()),
                        index: vec![],
                    };
                    store.append(batch).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rows_per_s = (runs * appends) as f64 / t.elapsed().as_secs_f64();
    let (bench_us, server_us) = Cpu::now().per_row_since(&before, runs * appends);
    let (_, per_group) = groups_since(&[store], &[annal_postgres::CommitStats::default()]);
    (rows_per_s, bench_us, server_us, per_group)
}

/// The workflow of the takeover bench: a read that never returns in the worker that is
/// killed, and returns at once in the one that takes over.
async fn held(ctx: Ctx, hang: bool, started: Arc<AtomicU32>) -> Result<u32, WorkflowError> {
    let held: u32 = ctx
        .step("hold")
        .class(StepClass::Read)
        .run(move |_| {
            let started = Arc::clone(&started);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(1u32)
            }
        })
        .await?;
    Ok(held)
}

const TAKEOVER_RUNS: usize = 50;
const TAKEOVER_LEASE_MS: u64 = 2_000;

fn takeover_config(url: &str, schema: &str) -> PgConfig {
    PgConfig::new(url)
        .schema(schema)
        .lease_ms(TAKEOVER_LEASE_MS)
        .poll_ms(250)
}

async fn takeover_engine(config: &PgConfig, hang: bool) -> (Engine, Arc<AtomicU32>) {
    let store = Arc::new(PgStore::connect(config.clone()).await.expect("connect"));
    let started = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&started);
    let engine = Engine::builder()
        .store(store as Arc<dyn LogStore>)
        .register("held", 1, move |ctx, ()| {
            held(ctx, hang, Arc::clone(&counter))
        })
        .open()
        .await
        .expect("engine");
    (engine, started)
}

/// The killed worker: starts the runs, says `ready` once all are inside their step, waits.
async fn takeover_child(url: &str, schema: &str) {
    let (engine, started) = takeover_engine(&takeover_config(url, schema), true).await;
    for _ in 0..TAKEOVER_RUNS {
        engine.start::<_, u32>("held", &()).await.unwrap();
    }
    while (started.load(Ordering::SeqCst) as usize) < TAKEOVER_RUNS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

async fn bench_takeover(url: &str, rows: &mut Vec<Row>) {
    use std::io::BufRead;
    let schema = format!("annal_bench_{}", uuid::Uuid::new_v4().simple());
    let config = takeover_config(url, &schema);
    // The schema exists before the child and the survivor race to create it.
    drop(PgStore::connect(config.clone()).await.expect("connect"));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("ANNAL_PG_BENCH_CHILD", &schema)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the worker to kill");
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l == "ready")
    });
    assert!(ready.await.unwrap(), "the worker never got ready");
    let (survivor, _) = takeover_engine(&config, false).await;
    let runs: Vec<_> = survivor
        .runs()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.run)
        .collect();
    assert_eq!(runs.len(), TAKEOVER_RUNS);
    child.kill().unwrap();
    let killed = Instant::now();
    let _ = child.wait();
    for run in runs {
        survivor.handle::<u32>(run).result().await.unwrap();
    }
    let takeover = killed.elapsed();
    survivor.shutdown().await;
    rows.push(Row {
        workload: "takeover",
        metric: "all runs finished after",
        value: takeover.as_secs_f64() * 1e3,
        unit: "ms",
        limit: Some((TAKEOVER_LEASE_MS + 1_000) as f64),
        note: format!(
            "{TAKEOVER_RUNS} runs of a SIGKILLed worker, lease {TAKEOVER_LEASE_MS} ms, poll 250 ms; limit = lease + 1 s"
        ),
    });
    let _ = PgStore::drop_schema(&config).await;
}

fn main() {
    let Ok(url) = std::env::var("ANNAL_PG_URL") else {
        println!(
            "postgres bench: set ANNAL_PG_URL (`bash .ci/pg start` prints one); nothing measured"
        );
        return;
    };
    let runtime = shared_runtime();
    if let Ok(schema) = std::env::var("ANNAL_PG_BENCH_CHILD") {
        runtime.block_on(takeover_child(&url, &schema));
        return;
    }
    let mut rows = Vec::new();
    runtime.block_on(async {
        if wanted("chain") {
            bench_chain(&url, &mut rows).await;
        }
        if wanted("fan_in") {
            bench_fan_in(&url, &mut rows).await;
        }
        if wanted("takeover") {
            bench_takeover(&url, &mut rows).await;
        }
    });
    support::print(&rows);
}
