//! Engine workloads next to the physical limit of the disk, measured in the same run.
//!
//! ```text
//! cargo bench -p annal                                              # this and parked_memory
//! cargo bench -p annal --bench workloads
//! ANNAL_BENCH_SCALE=0.1 cargo bench -p annal --bench workloads     # a quick smoke run
//! ANNAL_BENCH_ONLY=chain,replay cargo bench -p annal --bench workloads
//! ANNAL_BENCH_DIR=/mnt/nvme cargo bench -p annal --bench workloads  # another disk
//! ANNAL_BENCH_WORKERS=1 cargo bench -p annal --bench workloads     # tokio worker threads
//! ```
//!
//! Workloads (`PowerSafe` unless stated):
//! - `chain`: one run of 1000 sequential `Write` steps: steps/s and mean step latency, against
//!   one raw power-safe commit (sled `apply_batch` of one record + flush + fsync of the `db`
//!   file and the directory; half the raw commits measured before the chain, half after).
//! - `fan_in`: 256 concurrent runs of 10 `Write` steps: steps/s, runs/s, p50/p99 run latency,
//!   against the raw group-commit limit at the same concurrency (256 ascending records per
//!   commit; also printed: 256 records spread over 256 runs' keys, as the engine writes).
//!   `ANNAL_BENCH_ROUNDS` (default 8) rounds on one engine, each after a slice of the raw
//!   loops. Three more rows: the same rounds on an engine whose store is `Buffered` (nothing
//!   synced: what the engine's CPU allows); the ceiling of annal's key layout (the same sled
//!   writes the engine's runs make, in lockstep commits on one thread with no workflow code);
//!   and that loop with the event records alone (the ceiling of any layout with a start and
//!   end record per run). The note gives each thread kind's CPU time per step during the
//!   rounds (Linux).
//! - `read_chain`: one run of 1000 sequential `Read` steps, `PowerSafe`: steps/s against the
//!   same chain on a `Buffered` store (nothing synced; median of 3 alternating runs each); and
//!   a chain alternating `Read` and `Write` steps with the group commits it took.
//! - `replay`: resume a run with a 10,000-event history on a freshly opened engine: events/s
//!   and time to resume (median of 7 copies of the store).
//! - `recovery`: 10,000 runs parked on timers and approvals: time to open the engine, and
//!   time until all resumed and finished once due. The heap each parked run keeps is
//!   measured by `cargo bench -p annal --bench parked_memory`, under a counting allocator
//!   that would slow the workloads here: they run on the plain system allocator.
//! - `disk`: bytes on disk per event against encoded bytes per event, for one long chain and
//!   for 256 runs at once.
//! - `chaining`: what linking every event record into its run's hash chain costs: the
//!   `chain` and `fan_in` workloads on one engine, in alternating slices with linked records
//!   (format 2, as always) and unlinked ones (format 1, as before chaining, through the
//!   storage crate's hidden `chain::set_unlinked_for_bench` switch, used nowhere else), so a
//!   change of the disk's speed during the run hits both alike. Also the CPU of one record
//!   hash. Not part of the default run (`ANNAL_BENCH_ONLY=chaining`).
//!
//! Prints a table, then one JSON line per row (`{"bench":"engine",...}`).

#![allow(missing_docs)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use annal::{Ctx, Durability, Engine, StepClass, WorkflowError};

mod support;
use support::{
    bench_dir, chain, open, open_with_cache, park_runs, scaled, shared_runtime, wall_ms, wanted,
    Row,
};

/// A sled database written raw, with the files a power-safe commit fsyncs.
struct RawDb {
    db: sled::Db,
    db_file: File,
    dir_file: File,
}

impl RawDb {
    fn open(dir: &Path) -> Self {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .open()
            .expect("raw sled");
        Self {
            db_file: File::open(dir.join("db")).expect("db file"),
            dir_file: File::open(dir).expect("dir"),
            db,
        }
    }

    /// One power-safe commit: `apply_batch`, flush, fsync of the `db` file and the directory.
    fn commit(&self, tree: &sled::Tree, batch: sled::Batch) {
        tree.apply_batch(batch).expect("apply");
        self.db.flush().expect("flush");
        self.db_file.sync_all().expect("fsync db");
        self.dir_file.sync_all().expect("fsync dir");
    }
}

/// The raw limit: sled `apply_batch` of `batch` records, then flush, fsync of the `db` file
/// and of the directory, in a loop on one thread. Kept open so that its slices can alternate
/// with the engine's, and a change in the machine's speed hits both alike.
struct RawLimit {
    raw: RawDb,
    tree: sled::Tree,
    payload: Vec<u8>,
    /// Each record under its own key among `batch` runs (as an engine's runs write), rather
    /// than one ascending key sequence.
    spread: bool,
    key: u64,
    commits: u64,
    elapsed: Duration,
}

impl RawLimit {
    fn open(dir: &Path, bytes: usize, spread: bool) -> Self {
        let raw = RawDb::open(dir);
        Self {
            tree: raw.db.open_tree("raw").expect("tree"),
            raw,
            payload: vec![7u8; bytes],
            spread,
            key: 0,
            commits: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Runs `commits` commits of `batch` records.
    fn run(&mut self, batch: usize, commits: usize) {
        let started = Instant::now();
        for _ in 0..commits {
            let mut b = sled::Batch::default();
            for i in 0..batch {
                if self.spread {
                    // A 16-byte run id, then the record's seq: one key per run and commit.
                    let mut key = [0u8; 24];
                    key[..8].copy_from_slice(
                        &(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes(),
                    );
                    key[16..].copy_from_slice(&self.key.to_be_bytes());
                    b.insert(&key, self.payload.as_slice());
                } else {
                    b.insert(
                        &(self.key * batch as u64 + i as u64).to_be_bytes(),
                        self.payload.as_slice(),
                    );
                }
            }
            self.key += 1;
            self.raw.commit(&self.tree, b);
        }
        self.commits += commits as u64;
        self.elapsed += started.elapsed();
    }

    fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    fn commit_latency(&self) -> Duration {
        self.elapsed / self.commits.max(1) as u32
    }
}

/// The sled writes annal's runs make, by a perfect committer: `runs` runs in lockstep, each
/// commit carrying one append of every run, on one thread with no workflow code. A run writes
/// what the engine's `chain` run writes (`RunStarted` with its metadata and status entry, one
/// record per step, then `RunEnded` with the status change) in as many commits as a run waits
/// for (start, then one per step, the last step riding with the end). This is the ceiling of
/// annal's key layout on sled: what separates it from [`RawLimit`] is the layout, what
/// separates the engine from it is everything else. With `events_only`, the runs write their
/// event records and nothing else (no metadata, no status index): the ceiling of any layout
/// that records a run's start and end and makes each step durable before the next.
struct RawRuns {
    raw: RawDb,
    events_only: bool,
    next_run: u128,
    steps: u64,
    elapsed: Duration,
}

impl RawRuns {
    fn open(dir: &Path, events_only: bool) -> Self {
        Self {
            raw: RawDb::open(dir),
            events_only,
            next_run: 1 << 100,
            steps: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// One round of `runs` runs of `steps` steps, with event payloads of the engine's size.
    fn round(&mut self, runs: usize, steps: u32) {
        use annal_storage::{encode_meta, frame, keys, RunId, RunMeta};
        const RUNNING: u8 = 1;
        const COMPLETED: u8 = 10;
        let started = Instant::now();
        // Time-ordered ids, as the engine's UUID v7 ids are.
        let ids: Vec<RunId> = (0..runs as u128)
            .map(|i| RunId((self.next_run + i).to_be_bytes()))
            .collect();
        self.next_run += runs as u128;
        let meta = |status| RunMeta {
            workflow: "chain".into(),
            version: 1,
            status,
            next_seq: 0,
            created_ms: 1_763_800_000_000,
            updated_ms: 1_763_800_000_000,
            wake_ms: None,
            note: String::new(),
            status_seq: 0,
        };
        let event = frame::encode(&[7u8; 60]);
        // The engine writes sled's default tree.
        let tree: &sled::Tree = &self.raw.db;
        let mut batch = sled::Batch::default();
        for &run in &ids {
            batch.insert(keys::event(run, 0), event.as_slice());
            if !self.events_only {
                batch.insert(keys::status(RUNNING, run), &[]);
                batch.insert(keys::meta(run), encode_meta(&meta(RUNNING)));
            }
        }
        self.raw.commit(tree, batch);
        for seq in 1..=u64::from(steps) {
            let mut batch = sled::Batch::default();
            for &run in &ids {
                batch.insert(keys::event(run, seq), event.as_slice());
                if seq == u64::from(steps) {
                    batch.insert(keys::event(run, seq + 1), event.as_slice());
                    if !self.events_only {
                        // A final status leaves the status index (`keys::FINAL_STATUS_MIN`).
                        batch.remove(keys::status(RUNNING, run));
                        batch.insert(keys::meta(run), encode_meta(&meta(COMPLETED)));
                    }
                }
            }
            self.raw.commit(tree, batch);
        }
        self.steps += (runs as u64) * u64::from(steps);
        self.elapsed += started.elapsed();
    }

    fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.elapsed.as_secs_f64()
    }
}

/// On-CPU time of this process's threads so far, summed by thread name (Linux
/// `/proc/self/task/*/schedstat`; empty elsewhere). Threads that ended are not counted.
fn cpu_by_thread() -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat.split_whitespace().next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // sled's I/O pool names its threads `sled-io-N`.
        let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        *out.entry(name.to_string()).or_default() += Duration::from_nanos(ns);
    }
    out
}

async fn bench_chain(rows: &mut Vec<Row>) {
    let steps = scaled(1000) as u32;
    let dir = bench_dir();
    let raw_dir = bench_dir();
    // Half the raw commits before the chain and half after.
    let mut raw = RawLimit::open(raw_dir.path(), 120, false);
    raw.run(1, scaled(150));
    let engine = open(dir.path()).await;
    let started = Instant::now();
    let out = engine
        .start::<_, u32>("chain", &steps)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(out, (0..steps).sum::<u32>());
    engine.shutdown().await;
    raw.run(1, scaled(150));
    let raw_latency = raw.commit_latency();
    let per_step = elapsed / steps;
    rows.push(Row {
        workload: "chain",
        metric: "step latency",
        value: per_step.as_secs_f64() * 1e6,
        unit: "us",
        limit: Some(raw_latency.as_secs_f64() * 1e6),
        note: format!(
            "{steps} steps, {:.0} steps/s; limit = one raw power-safe commit",
            steps as f64 / elapsed.as_secs_f64()
        ),
    });
}

/// Starts `runs` runs of `steps` steps at once and waits for all; returns their latencies.
async fn fan_in_round(engine: &Engine, runs: usize, steps: u32) -> Vec<Duration> {
    let tasks: Vec<_> = (0..runs)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                engine
                    .start::<_, u32>("chain", &steps)
                    .await
                    .unwrap()
                    .result()
                    .await
                    .unwrap();
                t.elapsed()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(runs);
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies
}

async fn bench_fan_in(rows: &mut Vec<Row>) {
    let runs = scaled(256);
    let steps = 10u32;
    let dir = bench_dir();
    let (raw_dir, spread_dir) = (bench_dir(), bench_dir());
    let (runs_dir, events_dir) = (bench_dir(), bench_dir());
    // One round lasts tens of milliseconds: several rounds steady the number, each after a
    // slice of both raw loops.
    let rounds = std::env::var("ANNAL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8usize);
    let raw_commits_per_round = (scaled(64) / rounds).max(2);
    let mut raw = RawLimit::open(raw_dir.path(), 120, false);
    let mut raw_spread = RawLimit::open(spread_dir.path(), 120, true);
    let mut raw_runs = RawRuns::open(runs_dir.path(), false);
    let mut raw_events = RawRuns::open(events_dir.path(), true);
    // The store is opened here so that its group commits can be counted.
    let store = std::sync::Arc::new(
        annal_storage::SledStore::open(
            annal_storage::SledConfig::new(dir.path())
                .durability(Durability::PowerSafe)
                .cache_capacity_bytes(64 << 20),
        )
        .expect("store"),
    );
    let engine = Engine::builder()
        .store(store.clone())
        .park_after_ms(200)
        .register("chain", 1, chain)
        .open()
        .await
        .expect("engine");
    // The same rounds with nothing synced: what the engine's CPU alone allows.
    let unsynced_dir = bench_dir();
    let unsynced = Engine::builder()
        .path(unsynced_dir.path())
        .durability(Durability::Buffered)
        .park_after_ms(200)
        .register("chain", 1, chain)
        .open()
        .await
        .expect("engine");
    let mut latencies = Vec::with_capacity(runs * rounds);
    let mut elapsed = Duration::ZERO;
    let mut unsynced_elapsed = Duration::ZERO;
    let mut cpu = std::collections::BTreeMap::<String, Duration>::new();
    for _ in 0..rounds {
        raw.run(runs, raw_commits_per_round);
        raw_spread.run(runs, raw_commits_per_round);
        raw_runs.round(runs, steps);
        raw_events.round(runs, steps);
        let cpu_before = cpu_by_thread();
        let started = Instant::now();
        latencies.extend(fan_in_round(&engine, runs, steps).await);
        elapsed += started.elapsed();
        for (name, after) in cpu_by_thread() {
            let before = cpu_before.get(&name).copied().unwrap_or_default();
            *cpu.entry(name).or_default() += after.saturating_sub(before);
        }
        let started = Instant::now();
        fan_in_round(&unsynced, runs, steps).await;
        unsynced_elapsed += started.elapsed();
    }
    engine.shutdown().await;
    unsynced.shutdown().await;
    let commits = store.commits();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let steps_total = (runs * rounds) as f64 * f64::from(steps);
    // Where the CPU went during the rounds, per step: on-CPU time of each kind of thread.
    let cpu_us = |name: &str| {
        cpu.get(name)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6 / steps_total)
    };
    let cpu_note = format!(
        "CPU per step: committer {:.1} us, tokio workers {:.1} us, sled I/O {:.1} us, over {:.0} ms of rounds",
        cpu_us("annal-committer"),
        // tokio names its workers `tokio-rt-worker` (older: `tokio-runtime-worker`, which
        // the kernel's 15-byte thread names cut).
        cpu_us("tokio-rt-worker") + cpu_us("tokio-runtime-w"),
        cpu_us("sled-io-"),
        elapsed.as_secs_f64() * 1e3
    );
    rows.push(Row {
        workload: "fan_in",
        metric: "steps/s",
        value: steps_total / elapsed.as_secs_f64(),
        unit: "steps/s",
        limit: Some(raw.commits_per_s() * runs as f64),
        note: format!(
            "{rounds} rounds of {runs} runs x {steps} steps; {:.0} runs/s; run latency p50 {:.1} ms p99 {:.1} ms; {commits} group commits ({:.1} steps each); limit = raw commits of {runs} ascending records, alternating with the rounds; with one record per run instead {:.0} records/s (ratio {:.2}); {:.2} of the ceiling below; {cpu_note}",
            (runs * rounds) as f64 / elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            steps_total / commits.max(1) as f64,
            raw_spread.commits_per_s() * runs as f64,
            steps_total / elapsed.as_secs_f64() / (raw_spread.commits_per_s() * runs as f64),
            steps_total / elapsed.as_secs_f64() / raw_runs.steps_per_s()
        ),
    });
    rows.push(Row {
        workload: "fan_in",
        metric: "engine, nothing synced",
        value: steps_total / unsynced_elapsed.as_secs_f64(),
        unit: "steps/s",
        limit: Some(raw.commits_per_s() * runs as f64),
        note: format!(
            "the same {rounds} rounds on a second engine whose store is Buffered (no flush, no fsync), alternating with the rounds above: what the engine's CPU per step allows on this machine before any durability cost"
        ),
    });
    rows.push(Row {
        workload: "fan_in",
        metric: "ceiling: annal's writes, raw",
        value: raw_runs.steps_per_s(),
        unit: "steps/s",
        limit: Some(raw.commits_per_s() * runs as f64),
        note: format!(
            "the sled writes of {runs} runs x {steps} steps as annal lays them out (start: event, metadata, status entry; a record per step; end: event, metadata, status entry removed), {} commits per round of {runs} runs in lockstep, on one thread with no workflow code: the most a committer that syncs each commit before the next reaches with annal's key layout on sled; alternating with the rounds",
            steps + 1
        ),
    });
    rows.push(Row {
        workload: "fan_in",
        metric: "ceiling: events only, raw",
        value: raw_events.steps_per_s(),
        unit: "steps/s",
        limit: Some(raw.commits_per_s() * runs as f64),
        note: format!(
            "as the row above with the event records alone (no metadata, no status index): the ceiling of any key layout that records a run's start, each step and its end, durably before the next, in {} commits per round",
            steps + 1
        ),
    });
}

async fn bench_replay(rows: &mut Vec<Row>) {
    // 10,000 events: RunStarted, 9,998 steps of one `StepRan` each, the signal; Read steps ride
    // on group commits.
    let steps = (scaled(10_000).max(3) - 2) as u32;
    let dir = bench_dir();
    let replay_engine = |path: PathBuf| {
        Engine::builder()
            .path(path)
            .durability(Durability::Buffered)
            .park_after_ms(200)
            .register("reads", 1, reads)
    };
    let engine = replay_engine(dir.path().join("parked"))
        .open()
        .await
        .unwrap();
    let run = engine
        .start::<_, u32>("reads", &steps)
        .await
        .unwrap()
        .run_id();
    while engine.status(run).await.unwrap().status != annal::RunStatus::Parked {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = engine.status(run).await.unwrap().events;
    engine.shutdown().await;
    drop(engine);
    // Each repetition resumes its own copy of the parked store on a freshly opened engine
    // (nothing of the run in memory or in sled's cache, as after a restart); the median is
    // reported.
    let repetitions = 7;
    let mut resumes = Vec::with_capacity(repetitions);
    for i in 0..repetitions {
        let copy = dir.path().join(format!("copy-{i}"));
        copy_dir(&dir.path().join("parked"), &copy);
        let engine = replay_engine(copy).open().await.unwrap();
        let started = Instant::now();
        engine.signal(run, "go", &()).await.unwrap();
        engine.handle::<u32>(run).result().await.unwrap();
        resumes.push(started.elapsed());
        engine.shutdown().await;
    }
    resumes.sort();
    let median = resumes[repetitions / 2];
    // Where the time goes, warm, on the last copy: reading + CRC + decoding, then the fold.
    let engine = replay_engine(dir.path().join(format!("copy-{}", repetitions - 1)))
        .open()
        .await
        .unwrap();
    let mut read_decode = Vec::new();
    let mut fold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let history = engine.history(run).await.unwrap();
        read_decode.push(t.elapsed());
        let t = Instant::now();
        let _ = annal::replay::ReplayState::from_events(&history).unwrap();
        fold.push(t.elapsed());
    }
    engine.shutdown().await;
    read_decode.sort();
    fold.sort();
    rows.push(Row {
        workload: "replay",
        metric: "events/s",
        value: events as f64 / median.as_secs_f64(),
        unit: "events/s",
        limit: Some(1_000_000.0),
        note: format!(
            "{events} events resumed in {:.1} ms (median of {repetitions} fresh opens, min {:.1}, max {:.1}: load, decode, fold, re-run code); warm, read+CRC+decode {:.1} ms, fold {:.1} ms; target >= 1M/s, < 20 ms",
            median.as_secs_f64() * 1e3,
            resumes[0].as_secs_f64() * 1e3,
            resumes[repetitions - 1].as_secs_f64() * 1e3,
            read_decode[2].as_secs_f64() * 1e3,
            fold[2].as_secs_f64() * 1e3
        ),
    });
}

/// Copies a directory tree of plain files (a closed sled store).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy target");
    for entry in std::fs::read_dir(from).expect("read store dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// `steps` sequential steps, each `Read` or, when `every_write` divides its index plus one,
/// `Write`; returns the sum of their outputs.
async fn mixed_chain(ctx: Ctx, (steps, every_write): (u32, u32)) -> Result<u32, WorkflowError> {
    let mut total = 0;
    for i in 0..steps {
        let class = if every_write > 0 && (i + 1) % every_write == 0 {
            StepClass::Write
        } else {
            StepClass::Read
        };
        total += ctx
            .step("step")
            .class(class)
            .run(move |_| async move { Ok(i % 7) })
            .await?;
    }
    Ok(total)
}

/// One run of `steps` steps on a store in `durability`; returns steps/s and group commits.
async fn read_chain_on(durability: Durability, steps: u32, every_write: u32) -> (f64, u64) {
    let dir = bench_dir();
    let store = std::sync::Arc::new(
        annal_storage::SledStore::open(
            annal_storage::SledConfig::new(dir.path())
                .durability(durability)
                .cache_capacity_bytes(64 << 20),
        )
        .expect("store"),
    );
    let engine = Engine::builder()
        .store(store.clone())
        .register("mixed_chain", 1, mixed_chain)
        .open()
        .await
        .unwrap();
    let commits_before = store.commits();
    let t = Instant::now();
    engine
        .start::<_, u32>("mixed_chain", &(steps, every_write))
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    let elapsed = t.elapsed();
    let commits = store.commits() - commits_before;
    engine.shutdown().await;
    (f64::from(steps) / elapsed.as_secs_f64(), commits)
}

async fn bench_read_chain(rows: &mut Vec<Row>) {
    let steps = scaled(1000) as u32;
    // Alternating runs, so that the disk's and the machine's moods hit both alike.
    let (mut safe, mut buffered) = (Vec::new(), Vec::new());
    // A chain of 1,000 reads takes 15-40 ms: short enough for the machine's moods to move
    // one run by 2x, so seven alternating pairs, and the spread printed.
    const ROUNDS: usize = 7;
    for _ in 0..ROUNDS {
        safe.push(read_chain_on(Durability::PowerSafe, steps, 0).await.0);
        buffered.push(read_chain_on(Durability::Buffered, steps, 0).await.0);
    }
    let spread = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let ((safe, safe_min, safe_max), (buffered, buffered_min, buffered_max)) =
        (spread(&mut safe), spread(&mut buffered));
    rows.push(Row {
        workload: "read_chain",
        metric: "Read steps/s, PowerSafe",
        value: safe,
        unit: "/s",
        limit: Some(buffered),
        note: format!(
            "one run of {steps} Read steps, median of {ROUNDS} (min {safe_min:.0}, max {safe_max:.0}); limit = the same chain on a Buffered store (nothing synced), alternating, median {buffered:.0} (min {buffered_min:.0}, max {buffered_max:.0})"
        ),
    });
    let (mixed, commits) = read_chain_on(Durability::PowerSafe, steps, 2).await;
    rows.push(Row {
        workload: "read_chain",
        metric: "Read+Write steps/s",
        value: mixed,
        unit: "/s",
        limit: None,
        note: format!(
            "one run of {steps} steps alternating Read and Write, PowerSafe: {commits} group commits for {} Write steps (a Write body waits for one commit; Reads ride along)",
            steps / 2
        ),
    });
}

async fn reads(ctx: Ctx, steps: u32) -> Result<u32, WorkflowError> {
    let mut total = 0;
    for i in 0..steps {
        total += ctx
            .step("read")
            .class(StepClass::Read)
            .run(move |_| async move { Ok(i % 7) })
            .await?;
    }
    let () = ctx.signal("go").await?;
    Ok(total)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

async fn bench_recovery(rows: &mut Vec<Row>) {
    let runs = scaled(10_000);
    let dir = bench_dir();
    let path: PathBuf = dir.path().to_path_buf();
    // A 1 MiB sled cache, as in the memory bench (`parked_memory`).
    let engine = open_with_cache(&path, 1 << 20).await;
    let before = rss_bytes();
    // Far enough ahead that every run is started and parked before any is due.
    let due_at_ms = wall_ms() + 30_000 + runs as u64 * 4;
    let ids = park_runs(&engine, 0, runs, due_at_ms).await;
    let parked_rss = rss_bytes().saturating_sub(before);
    engine.shutdown().await;
    drop(engine);
    let started = Instant::now();
    let engine = open_with_cache(&path, 1 << 20).await;
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(due_at_ms.saturating_sub(wall_ms()))).await;
    let due = Instant::now();
    for run in &ids {
        engine.handle::<u32>(*run).result().await.unwrap();
    }
    let all_done = due.elapsed();
    engine.shutdown().await;
    rows.push(Row {
        workload: "recovery",
        metric: "open",
        value: opened.as_secs_f64() * 1e3,
        unit: "ms",
        limit: Some(2_000.0),
        note: format!(
            "{runs} parked runs (half on timers, half on approval deadlines); once due, all were woken, replayed and finished in {:.0} ms; resident-set growth while parking them {:.0} B per run (with the allocator's high-water mark of starting them; the heap each parked run keeps: `cargo bench -p annal --bench parked_memory`)",
            all_done.as_secs_f64() * 1e3,
            parked_rss as f64 / runs as f64
        ),
    });
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

async fn bench_disk(rows: &mut Vec<Row>) {
    // Two shapes: one long chain (a commit per step, as the log of one busy run grows) and
    // many runs at once (a commit per group of steps).
    for (metric, runs, steps) in [
        ("bytes per event, chain", 1, scaled(2_000) as u32),
        ("bytes per event, fan-in", scaled(256), 40),
    ] {
        let dir = bench_dir();
        let engine = open(dir.path()).await;
        let starts = (0..runs).map(|_| engine.start::<_, u32>("chain", &steps));
        let handles: Vec<_> = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let (mut events, mut encoded) = (0usize, 0usize);
        for handle in &handles {
            handle.result().await.unwrap();
            let history = engine.history(handle.run_id()).await.unwrap();
            events += history.len();
            encoded += history
                .iter()
                .map(|e| annal::codec::encode_event(e).len())
                .sum::<usize>();
        }
        engine.shutdown().await;
        drop(handles);
        drop(engine);
        let on_disk = dir_bytes(dir.path());
        rows.push(Row {
            workload: "disk",
            metric,
            value: on_disk as f64 / events as f64,
            unit: "B",
            limit: Some(encoded as f64 / events as f64),
            note: format!(
                "{runs} runs x {steps} steps, {events} events, {on_disk} bytes in the store directory; limit = encoded bytes per event (before framing and sled)"
            ),
        });
    }
}

/// One slice of `chaining`: `runs` runs of `steps` steps at once; returns the elapsed time.
async fn chaining_slice(engine: &Engine, runs: usize, steps: u32, unlinked: bool) -> Duration {
    annal_storage::chain::set_unlinked_for_bench(unlinked);
    let started = Instant::now();
    fan_in_round(engine, runs, steps).await;
    let elapsed = started.elapsed();
    annal_storage::chain::set_unlinked_for_bench(false);
    elapsed
}

async fn bench_chaining(rows: &mut Vec<Row>) {
    let slices = std::env::var("ANNAL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6usize);
    let dir = bench_dir();
    let engine = open(dir.path()).await;
    for (workload, runs, steps) in [
        ("chain", 1, scaled(300) as u32),
        ("fan_in", scaled(256), 10u32),
    ] {
        // Warm up once each way, then alternate, starting with each mode in turn.
        chaining_slice(&engine, runs, steps, false).await;
        chaining_slice(&engine, runs, steps, true).await;
        let (mut linked, mut unlinked) = (Duration::ZERO, Duration::ZERO);
        for slice in 0..slices {
            let first_unlinked = slice % 2 == 1;
            let a = chaining_slice(&engine, runs, steps, first_unlinked).await;
            let b = chaining_slice(&engine, runs, steps, !first_unlinked).await;
            let (l, u) = if first_unlinked { (b, a) } else { (a, b) };
            linked += l;
            unlinked += u;
        }
        let total_steps = (slices * runs) as f64 * f64::from(steps);
        let (per_step_linked, per_step_unlinked) = (
            linked.as_secs_f64() * 1e6 / total_steps,
            unlinked.as_secs_f64() * 1e6 / total_steps,
        );
        rows.push(Row {
            workload: "chaining",
            metric: if workload == "chain" { "chain: step latency, linked" } else { "fan_in: steps/s, linked" },
            value: if workload == "chain" { per_step_linked } else { total_steps / linked.as_secs_f64() },
            unit: if workload == "chain" { "us" } else { "steps/s" },
            limit: Some(if workload == "chain" { per_step_unlinked } else { total_steps / unlinked.as_secs_f64() }),
            note: format!(
                "{slices} alternating slices each way of {runs} runs x {steps} Write steps, PowerSafe, one engine; limit = the same with unlinked (format-1) records; linked/unlinked time {:.3}",
                linked.as_secs_f64() / unlinked.as_secs_f64()
            ),
        });
    }
    engine.shutdown().await;
    // The CPU of chaining itself: one record hash of a typical step record.
    let run = annal_storage::RunId([7; 16]);
    let payload = vec![0x5a_u8; 70];
    let mut link = annal_storage::chain::genesis(run);
    let hashes = 200_000u64;
    let started = Instant::now();
    for seq in 0..hashes {
        link = annal_storage::chain::record_hash(run, seq, Some(&link), &payload);
    }
    let elapsed = started.elapsed();
    std::hint::black_box(link);
    rows.push(Row {
        workload: "chaining",
        metric: "record hash",
        value: elapsed.as_secs_f64() * 1e9 / hashes as f64,
        unit: "ns",
        limit: None,
        note: format!(
            "BLAKE3 over run, seq, link and a 70-byte payload, {hashes} times on one thread"
        ),
    });
}

fn main() {
    let runtime = shared_runtime();
    let mut rows = Vec::new();
    runtime.block_on(async {
        if wanted("chain") {
            bench_chain(&mut rows).await;
        }
        if wanted("read_chain") {
            bench_read_chain(&mut rows).await;
        }
        if wanted("fan_in") {
            bench_fan_in(&mut rows).await;
        }
        if wanted("replay") {
            bench_replay(&mut rows).await;
        }
        if wanted("recovery") {
            bench_recovery(&mut rows).await;
        }
        if wanted("disk") {
            bench_disk(&mut rows).await;
        }
        // Not in the default run: it measures one design decision, not the engine.
        if std::env::var("ANNAL_BENCH_ONLY").is_ok_and(|only| only.contains("chaining")) {
            bench_chaining(&mut rows).await;
        }
    });
    support::print(&rows);
}
