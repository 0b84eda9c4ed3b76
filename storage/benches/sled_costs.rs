//! Where the time of one sled group commit goes, and why `SledStore` is built the way it is.
//!
//! Each variant runs a loop of: write one group of N appends, `flush`, then the fsyncs named,
//! and prints appends/s and the mean time per group of each step. The variants compare:
//!
//! - one `apply_batch` for the whole group against one per append (sled 0.34 seals and writes
//!   its IO buffer on every `apply_batch`, so the flush after N small batches does N writes);
//! - fsync of the `db` file alone against fsync of the file and its directory (which is why
//!   `SledStore` fsyncs the directory only when its entries change).
//!
//! ```text
//! cargo bench -p annal-storage --bench sled_costs
//! ANNAL_BENCH_SECS=3 ANNAL_BENCH_WRITERS=1,256 cargo bench -p annal-storage --bench sled_costs
//! ```

#![allow(missing_docs)]

use std::fs::File;
use std::time::{Duration, Instant};

use annal_storage::{frame, keys, RunId};

#[derive(Clone, Copy, PartialEq)]
enum Batches {
    /// One `apply_batch` with every write of the group.
    OnePerGroup,
    /// One `apply_batch` per append, as a committer without an overlay would do.
    OnePerAppend,
}

#[derive(Clone, Copy, PartialEq)]
enum Fsync {
    File,
    FileAndDir,
}

struct Variant {
    name: &'static str,
    batches: Batches,
    fsync: Fsync,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "1 batch/group, fsync file",
        batches: Batches::OnePerGroup,
        fsync: Fsync::File,
    },
    Variant {
        name: "1 batch/append, fsync file",
        batches: Batches::OnePerAppend,
        fsync: Fsync::File,
    },
    Variant {
        name: "1 batch/group, fsync file+dir",
        batches: Batches::OnePerGroup,
        fsync: Fsync::FileAndDir,
    },
];

fn main() {
    let secs = std::env::var("ANNAL_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.5);
    let writers: Vec<u64> = std::env::var("ANNAL_BENCH_WRITERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    println!(
        "{:>7}  {:<30} {:>10} {:>10} {:>10} {:>10}",
        "writers", "variant", "appends/s", "apply us", "flush us", "fsync us"
    );
    for &n in &writers {
        for variant in &VARIANTS {
            run(n, variant, Duration::from_secs_f64(secs));
        }
    }
}

fn run(writers: u64, variant: &Variant, duration: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 << 20)
        .open()
        .expect("open sled");
    let db_file = File::open(dir.path().join("db")).expect("open db file");
    let dir_file = File::open(dir.path()).expect("open dir");
    let event = frame::encode(&[7u8; 100]);
    let meta = frame::encode(&[1u8; 40]);
    let run_id = |n: u64| {
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        RunId(bytes)
    };

    let (mut apply, mut flush, mut fsync) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut groups = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        // Every append writes its run's next event and the run's metadata.
        let began = Instant::now();
        let mut batch = sled::Batch::default();
        for n in 0..writers {
            let run = run_id(n);
            if variant.batches == Batches::OnePerAppend {
                // What planning reads before each append.
                let _ = db.get(keys::meta(run)).expect("get");
            }
            batch.insert(keys::event(run, groups), event.clone());
            batch.insert(keys::meta(run), meta.clone());
            if variant.batches == Batches::OnePerAppend {
                db.apply_batch(std::mem::take(&mut batch)).expect("apply");
            }
        }
        if variant.batches == Batches::OnePerGroup {
            db.apply_batch(batch).expect("apply");
        }
        apply += began.elapsed();

        let began = Instant::now();
        db.flush().expect("flush");
        flush += began.elapsed();

        let began = Instant::now();
        db_file.sync_all().expect("fsync file");
        if variant.fsync == Fsync::FileAndDir {
            dir_file.sync_all().expect("fsync dir");
        }
        fsync += began.elapsed();
        groups += 1;
    }
    let per_group_us = |d: Duration| d.as_micros() as f64 / groups as f64;
    println!(
        "{:>7}  {:<30} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
        writers,
        variant.name,
        (groups * writers) as f64 / start.elapsed().as_secs_f64(),
        per_group_us(apply),
        per_group_us(flush),
        per_group_us(fsync),
    );
}
