//! What tamper evidence costs an auditor on a store of 10,000 runs: `annal digest` (compute
//! every run's head, sign, store) and `annal verify --against` (every chain, every run
//! against the checkpoint), next to a plain `annal verify`, each as the process an auditor
//! runs.
//!
//! ```text
//! cargo bench -p annal-cli --bench tamper
//! ANNAL_BENCH_RUNS=1000 cargo bench -p annal-cli --bench tamper
//! ```
//!
//! The store holds the fixture's completed refund run (12 events) under 10,000 run ids,
//! written through `SledStore` as the engine writes (linked records). Each command runs 3
//! times; the median is printed, then one JSON line per row.

#![allow(missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use annal::Event;
use annal_storage::{AppendBatch, Durability, LogStore, RunId, RunMeta, SledConfig, SledStore};

/// The fixture's first run (a completed refund), its events in order.
fn refund_events() -> Vec<Event> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cli/runs.jsonl"),
    )
    .expect("fixture");
    let first = text
        .lines()
        .next()
        .and_then(|l| l.get(8..46))
        .expect("a run")
        .to_string();
    text.lines()
        .filter(|l| l.contains(&first))
        .map(|l| serde_json::from_str(l).expect("an event"))
        .collect()
}

fn build(dir: &Path, runs: u32) {
    let store =
        SledStore::open(SledConfig::new(dir).durability(Durability::Buffered)).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events: Vec<Vec<u8>> = refund_events()
        .iter()
        .map(annal::codec::encode_event)
        .collect();
    rt.block_on(async {
        for i in 0..runs {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let meta = RunMeta {
                workflow: "refund".into(),
                version: 2,
                status: annal::RunStatus::Completed.code(),
                next_seq: 0,
                created_ms: 1_700_000_000_000,
                updated_ms: 1_700_000_000_000,
                wake_ms: None,
                note: String::new(),
                status_seq: 0,
            };
            store
                .append(AppendBatch {
                    run: RunId(id),
                    expected_next_seq: 0,
                    events: events.clone(),
                    meta: Some(meta),
                    index: Vec::new(),
                })
                .await
                .expect("append");
        }
        store.wait_applied_durable().await.expect("durable");
    });
    store.close().expect("close");
}

/// Runs `annal --db DIR ARGS…` and returns its wall time; panics unless it exits `code`.
fn annal(db: &Path, args: &[&str], code: i32) -> (Duration, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_annal"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("annal");
    let elapsed = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(code),
        "annal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, String::from_utf8(out.stdout).expect("utf-8"))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let runs: u32 = std::env::var("ANNAL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("dir");
    let keys = tempfile::tempdir().expect("keys");
    let db = dir.path();
    let started = Instant::now();
    build(db, runs);
    eprintln!(
        "built {runs} runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let key = keys.path().join("k");
    let (key, public, note) = (
        key.to_str().expect("path").to_string(),
        format!("{}.pub", key.display()),
        keys.path().join("cp").to_str().expect("path").to_string(),
    );
    annal(db, &["keygen", "--out", &key], 0);
    let mut rows = Vec::new();
    let mut digest = Vec::new();
    for _ in 0..3 {
        let (time, printed) = annal(db, &["digest", "--key", &key], 0);
        std::fs::write(&note, printed).expect("note");
        digest.push(time);
    }
    rows.push(("annal digest", median(digest), "every run's last record read, hashed into the tree, signed, stored with its leaf list (the latest of 3 is the checkpoint below)"));
    let plain: Vec<Duration> = (0..3).map(|_| annal(db, &["verify"], 0).0).collect();
    rows.push(("annal verify", median(plain), "every record's CRC, chain link and decoding, every history folded, the indexes, and the latest tree head (its leaf list against its root, every run against it)"));
    let against: Vec<Duration> = (0..3)
        .map(|_| {
            annal(
                db,
                &["verify", "--against", &note, "--public-key", &public],
                0,
            )
            .0
        })
        .collect();
    rows.push(("annal verify --against", median(against), "the same, and the checkpoint's signature, its leaf list found among the stored tree heads, every run against it"));
    let events = u64::from(runs) * refund_events().len() as u64;
    println!("{:<24} {:>10}  note", "command", "wall ms");
    for (command, time, note) in &rows {
        println!(
            "{command:<24} {:>10.0}  {runs} runs, {events} events: {note}",
            time.as_secs_f64() * 1e3
        );
    }
    for (command, time, note) in &rows {
        println!(
            "{}",
            serde_json::json!({"bench": "tamper", "command": command, "runs": runs, "events": events, "wall_ms": time.as_secs_f64() * 1e3, "note": note})
        );
    }
}
