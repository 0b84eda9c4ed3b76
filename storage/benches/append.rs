//! Append throughput of `SledStore` against the raw sled limit, per durability mode and number
//! of concurrent writers.
//!
//! Each annal writer owns one run and repeatedly appends one 100-byte event and waits until it
//! is durable, as the engine does after every step. Next to it, measured in the same process on
//! the same disk, are the raw sled limits for a group of N, each a loop on one thread of one
//! `apply_batch` followed by the syncs the mode makes (`PowerSafe`: flush + fsync of the `db`
//! file; `ProcessSafe`: flush; `Buffered`: none):
//!
//! - `raw`: N framed 100-byte records per batch — the best any group commit of N could do.
//!   `ratio` = annal / raw.
//! - `raw+r`: N records per batch, one for each of N runs — the same sled writes N annal appends
//!   make (each writer's next event, keys spread over the runs instead of ascending), so
//!   annal / raw+r is the committer's own efficiency.
//! - `raw+dir` (`PowerSafe` only): `raw` plus a directory fsync per batch, as design.md §3
//!   first planned. annal fsyncs the directory only when its entries change (see `SledStore`);
//!   this column shows what that saves.
//!
//! The annal and raw loops of one row run in alternating slices, so that the disk's changing
//! fsync latency (it varies several-fold from minute to minute on a cloud VM) hits both alike.
//!
//! ```text
//! cargo bench -p annal-storage --bench append
//! ANNAL_BENCH_SECS=5 cargo bench -p annal-storage --bench append        # seconds per loop
//! ANNAL_BENCH_APPENDS=20000 cargo bench -p annal-storage --bench append  # appends per loop
//! ANNAL_BENCH_DIR=/mnt/nvme cargo bench -p annal-storage --bench append  # another disk
//! ANNAL_BENCH_MODES=PowerSafe ANNAL_BENCH_WRITERS=16,256 cargo bench …   # some rows only
//! ```
//!
//! Prints a table, then one JSON line per row (each starts with `{"bench":"storage_append"`).

#![allow(missing_docs)]

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_storage::{
    keys, AppendBatch, Durability, LogStore, RunId, RunMeta, SledConfig, SledStore,
};

const WRITERS: [usize; 3] = [1, 16, 256];
const MODES: [Durability; 3] = [
    Durability::PowerSafe,
    Durability::ProcessSafe,
    Durability::Buffered,
];
const PAYLOAD_BYTES: usize = 100;
const DEFAULT_SECS: f64 = 1.2;
/// Each loop's time (or appends) is split over this many alternating slices.
const SLICES: u32 = 3;

/// How much work one loop (annal or raw) of one row does.
#[derive(Clone, Copy, Debug)]
enum Sizing {
    /// Run for this long.
    Time(Duration),
    /// Make this many appends (annal) or records (raw).
    Appends(u64),
}

impl Sizing {
    fn from_env() -> Self {
        if let Some(n) = std::env::var("ANNAL_BENCH_APPENDS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return Sizing::Appends(n);
        }
        let secs = std::env::var("ANNAL_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(DEFAULT_SECS);
        Sizing::Time(Duration::from_secs_f64(secs))
    }

    fn slice(self) -> Self {
        match self {
            Sizing::Time(d) => Sizing::Time(d / SLICES),
            Sizing::Appends(n) => Sizing::Appends(n.div_ceil(u64::from(SLICES))),
        }
    }
}

/// Work done and time taken, summed over slices.
#[derive(Default, Clone, Copy)]
struct Tally {
    count: u64,
    elapsed: Duration,
}

impl Tally {
    fn add(&mut self, count: u64, elapsed: Duration) {
        self.count += count;
        self.elapsed += elapsed;
    }

    fn per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

struct Row {
    mode: Durability,
    writers: usize,
    annal: Tally,
    commits: u64,
    p50_us: u64,
    p99_us: u64,
    /// N records per batch.
    raw: Tally,
    /// N events per batch, one per run.
    raw_runs: Tally,
    /// As `raw`, plus a directory fsync per batch (`PowerSafe` only).
    raw_dir: Option<Tally>,
}

impl Row {
    fn mean_group(&self) -> f64 {
        self.annal.count as f64 / self.commits.max(1) as f64
    }
}

fn main() {
    let sizing = Sizing::from_env();
    let base = std::env::var_os("ANNAL_BENCH_DIR").map(std::path::PathBuf::from);
    let tempdir = || match &base {
        Some(dir) => tempfile::tempdir_in(dir).expect("create bench dir"),
        None => tempfile::tempdir().expect("create bench dir"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let modes = std::env::var("ANNAL_BENCH_MODES").unwrap_or_default();
    let writer_counts = std::env::var("ANNAL_BENCH_WRITERS").unwrap_or_default();
    let selected =
        |list: &str, item: &str| list.is_empty() || list.split(',').any(|x| x.trim() == item);

    println!(
        "storage appends: {sizing:?} per loop in {SLICES} slices, {PAYLOAD_BYTES}-byte events, \
         each writer waits durable after every append"
    );
    println!(
        "{:<12} {:>7} {:>9} {:>6} {:>7} {:>7} {:>9} {:>6} {:>9} {:>6} {:>9}",
        "mode",
        "writers",
        "annal/s",
        "group",
        "p50 us",
        "p99 us",
        "raw/s",
        "ratio",
        "raw+r/s",
        "ratio",
        "raw+dir/s"
    );
    let mut rows = Vec::new();
    for mode in MODES
        .into_iter()
        .filter(|m| selected(&modes, &format!("{m:?}")))
    {
        for writers in WRITERS
            .into_iter()
            .filter(|w| selected(&writer_counts, &w.to_string()))
        {
            let dirs = [tempdir(), tempdir(), tempdir(), tempdir()];
            let mut annal = rt.block_on(AnnalLoop::open(dirs[0].path(), mode, writers));
            let mut raw = RawLoop::open(dirs[1].path(), mode, false, false);
            let mut raw_runs = RawLoop::open(dirs[2].path(), mode, false, true);
            let mut raw_dir = (mode == Durability::PowerSafe)
                .then(|| RawLoop::open(dirs[3].path(), mode, true, false));
            let commits_before = annal.store.commits();
            let mut latencies_us = Vec::new();
            let mut row = Row {
                mode,
                writers,
                annal: Tally::default(),
                commits: 0,
                p50_us: 0,
                p99_us: 0,
                raw: Tally::default(),
                raw_runs: Tally::default(),
                raw_dir: raw_dir.as_ref().map(|_| Tally::default()),
            };
            // Alternate the loops, so a change in the disk's speed hits them alike.
            for _ in 0..SLICES {
                let (count, elapsed) = rt.block_on(annal.run(sizing.slice(), &mut latencies_us));
                row.annal.add(count, elapsed);
                let (count, elapsed) = raw.run(writers, sizing.slice());
                row.raw.add(count, elapsed);
                let (count, elapsed) = raw_runs.run(writers, sizing.slice());
                row.raw_runs.add(count, elapsed);
                if let (Some(raw_dir), Some(tally)) = (&mut raw_dir, &mut row.raw_dir) {
                    let (count, elapsed) = raw_dir.run(writers, sizing.slice());
                    tally.add(count, elapsed);
                }
            }
            row.commits = annal.store.commits() - commits_before;
            latencies_us.sort_unstable();
            row.p50_us = percentile(&latencies_us, 0.50);
            row.p99_us = percentile(&latencies_us, 0.99);
            println!(
                "{:<12} {:>7} {:>9.0} {:>6.1} {:>7} {:>7} {:>9.0} {:>6.2} {:>9.0} {:>6.2} {:>9}",
                format!("{:?}", row.mode),
                row.writers,
                row.annal.per_s(),
                row.mean_group(),
                row.p50_us,
                row.p99_us,
                row.raw.per_s(),
                row.annal.per_s() / row.raw.per_s(),
                row.raw_runs.per_s(),
                row.annal.per_s() / row.raw_runs.per_s(),
                row.raw_dir
                    .map_or("-".to_string(), |t| format!("{:.0}", t.per_s())),
            );
            rows.push(row);
        }
    }
    for row in &rows {
        println!(
            "{{\"bench\":\"storage_append\",\"mode\":\"{:?}\",\"writers\":{},\
             \"annal_appends_per_s\":{:.0},\"mean_group\":{:.2},\"p50_us\":{},\"p99_us\":{},\
             \"raw_records_per_s\":{:.0},\"ratio\":{:.3},\"raw_run_records_per_s\":{:.0},\
             \"ratio_runs\":{:.3},\"raw_dir_records_per_s\":{}}}",
            row.mode,
            row.writers,
            row.annal.per_s(),
            row.mean_group(),
            row.p50_us,
            row.p99_us,
            row.raw.per_s(),
            row.annal.per_s() / row.raw.per_s(),
            row.raw_runs.per_s(),
            row.annal.per_s() / row.raw_runs.per_s(),
            row.raw_dir
                .map_or("null".to_string(), |t| format!("{:.0}", t.per_s())),
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let at = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(at).copied().unwrap_or(0)
}

fn run_id(n: usize) -> RunId {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&(n as u64).to_be_bytes());
    RunId(bytes)
}

fn meta() -> RunMeta {
    RunMeta {
        workflow: "bench".into(),
        version: 1,
        status: 1,
        next_seq: 0,
        created_ms: 0,
        updated_ms: 0,
        wake_ms: None,
        note: String::new(),
        status_seq: 0,
    }
}

/// N writers, each appending to its own run and waiting durable after every append.
struct AnnalLoop {
    store: Arc<SledStore>,
    /// Next seq of each writer's run.
    next_seqs: Vec<u64>,
}

impl AnnalLoop {
    async fn open(dir: &Path, mode: Durability, writers: usize) -> Self {
        let store = SledStore::open(SledConfig::new(dir).durability(mode)).expect("open");
        // Create every run first, so the measured slices are steady-state appends only.
        for n in 0..writers {
            store
                .append_durable(AppendBatch {
                    run: run_id(n),
                    expected_next_seq: 0,
                    events: vec![vec![0u8; PAYLOAD_BYTES]],
                    meta: Some(meta()),
                    index: vec![],
                })
                .await
                .expect("create run");
        }
        Self {
            store: Arc::new(store),
            next_seqs: vec![1; writers],
        }
    }

    /// Runs one slice; returns appends made and time taken, and adds each append's latency.
    async fn run(&mut self, sizing: Sizing, latencies_us: &mut Vec<u64>) -> (u64, Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let tickets = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (n, &first_seq) in self.next_seqs.iter().enumerate() {
            let (store, stop, tickets) = (
                Arc::clone(&self.store),
                Arc::clone(&stop),
                Arc::clone(&tickets),
            );
            tasks.spawn(async move {
                let mut latencies_us = Vec::new();
                let mut next_seq = first_seq;
                loop {
                    let more = match sizing {
                        Sizing::Time(_) => !stop.load(Ordering::Relaxed),
                        Sizing::Appends(total) => tickets.fetch_add(1, Ordering::Relaxed) < total,
                    };
                    if !more {
                        break;
                    }
                    let began = Instant::now();
                    store
                        .append_durable(AppendBatch {
                            run: run_id(n),
                            expected_next_seq: next_seq,
                            events: vec![vec![next_seq as u8; PAYLOAD_BYTES]],
                            meta: None,
                            index: vec![],
                        })
                        .await
                        .expect("append");
                    latencies_us.push(began.elapsed().as_micros() as u64);
                    next_seq += 1;
                }
                (n, next_seq, latencies_us)
            });
        }
        if let Sizing::Time(duration) = sizing {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        }
        let mut appends = 0;
        while let Some(result) = tasks.join_next().await {
            let (n, next_seq, latencies) = result.expect("writer");
            self.next_seqs[n] = next_seq;
            appends += latencies.len() as u64;
            latencies_us.extend(latencies);
        }
        (appends, start.elapsed())
    }
}

/// The raw sled limit for a group of N: one `apply_batch` of N records, then the mode's syncs,
/// in a loop on one thread.
struct RawLoop {
    db: sled::Db,
    db_file: File,
    dir: File,
    mode: Durability,
    /// Also fsync the directory after every batch.
    fsync_dir: bool,
    /// Spread each batch's records over `writers` runs, as annal's appends are.
    spread_runs: bool,
    value: Vec<u8>,
    next_key: u64,
}

impl RawLoop {
    fn open(path: &Path, mode: Durability, fsync_dir: bool, spread_runs: bool) -> Self {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(SledConfig::new(path).cache_capacity_bytes)
            .open()
            .expect("open raw sled");
        Self {
            db,
            db_file: File::open(path.join("db")).expect("open db file"),
            dir: File::open(path).expect("open dir"),
            mode,
            fsync_dir,
            spread_runs,
            value: annal_storage::frame::encode(&[7u8; PAYLOAD_BYTES]),
            next_key: 0,
        }
    }

    /// Runs one slice; returns records written and time taken.
    fn run(&mut self, writers: usize, sizing: Sizing) -> (u64, Duration) {
        let start = Instant::now();
        let mut written = 0u64;
        loop {
            let done = match sizing {
                Sizing::Time(duration) => start.elapsed() >= duration,
                Sizing::Appends(total) => written >= total,
            };
            if done {
                break;
            }
            let mut batch = sled::Batch::default();
            for writer in 0..writers {
                if self.spread_runs {
                    // What an append writes: its run's next event.
                    batch.insert(
                        keys::event(run_id(writer), self.next_key),
                        self.value.clone(),
                    );
                } else {
                    // Same key shape as an event, every key new and in ascending order.
                    batch.insert(keys::event(run_id(0), self.next_key), self.value.clone());
                    self.next_key += 1;
                }
            }
            if self.spread_runs {
                self.next_key += 1;
            }
            self.db.apply_batch(batch).expect("apply");
            match self.mode {
                Durability::PowerSafe => {
                    self.db.flush().expect("flush");
                    self.db_file.sync_all().expect("fsync db");
                    if self.fsync_dir {
                        self.dir.sync_all().expect("fsync dir");
                    }
                }
                Durability::ProcessSafe => {
                    self.db.flush().expect("flush");
                }
                Durability::Buffered => {}
            }
            written += writers as u64;
        }
        (written, start.elapsed())
    }
}
