//! The conformance suite (`annal_storage::conformance`) over `SimStore` and `SledStore`, plus: a differential proptest that runs the
//! same operations on both and compares answers and bytes; the on-disk format pinned byte for
//! byte; and the tests only one backend can run (crash simulation for `SimStore`; reopen,
//! locking, blob files, real concurrency and a real `kill -9` for `SledStore`).
//!
//! Each conformance test is a plain async fn taking a [`Backend`]; the `conformance!` macro
//! turns it into one `#[tokio::test]` per backend and durability mode, so a backend cannot pass
//! a test the other fails without it showing up as a named failure.

use std::collections::BTreeMap;
use std::sync::Arc;

use annal_storage::conformance::Backend as _;
use annal_storage::conformance::*;
use annal_storage::frame::FrameError;
use annal_storage::{
    keys, read_all, AppendBatch, CorruptReason, Durability, Error, GateId, IndexOp, LogStore,
    Position, RunId, RunMeta, SimStore, SledConfig, SledStore, Tear,
};
use proptest::prelude::*;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Backends

/// A store under test, with the back doors the tests need to damage it.
enum Backend {
    Sim(SimStore),
    Sled {
        store: SledStore,
        // Held so the directory outlives the store.
        _dir: TempDir,
    },
}

impl Backend {
    fn sim() -> Self {
        Backend::Sim(SimStore::new())
    }

    fn sled(durability: Durability) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path()).durability(durability)).unwrap();
        Backend::Sled { store, _dir: dir }
    }
}

impl annal_storage::conformance::Backend for Backend {
    fn store(&self) -> &dyn LogStore {
        match self {
            Backend::Sim(store) => store,
            Backend::Sled { store, .. } => store,
        }
    }

    fn corrupt(&self, run: RunId, seq: u64, f: &mut dyn FnMut(&mut Vec<u8>)) -> bool {
        match self {
            Backend::Sim(store) => store.corrupt_record(run, seq, f),
            Backend::Sled { store, .. } => {
                let tree = store.raw_tree();
                let key = keys::event(run, seq);
                let Some(bytes) = tree.get(&key).unwrap() else {
                    return false;
                };
                let mut bytes = bytes.to_vec();
                f(&mut bytes);
                tree.insert(key, bytes).unwrap();
                true
            }
        }
    }

    fn remove(&self, run: RunId, seq: u64) -> bool {
        match self {
            Backend::Sim(store) => store.remove_record(run, seq),
            Backend::Sled { store, .. } => store
                .raw_tree()
                .remove(keys::event(run, seq))
                .unwrap()
                .is_some(),
        }
    }

    fn fail_next_sync(&self, cause: &str) {
        match self {
            Backend::Sim(store) => store.fail_next_sync(cause),
            Backend::Sled { store, .. } => store.fail_next_sync(cause),
        }
    }

    fn raw(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        match self {
            Backend::Sim(store) => store.durable_snapshot(),
            Backend::Sled { store, .. } => store
                .raw_tree()
                .iter()
                .map(|item| {
                    let (k, v) = item.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect(),
        }
    }
}

/// Runs each named `async fn(Backend)` against `SimStore` and `SledStore` in every mode.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sim {
            $( #[tokio::test] async fn $name() { annal_storage::conformance::$name(super::Backend::sim()).await; } )*
        }
        mod sled_power_safe {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                annal_storage::conformance::$name(super::Backend::sled(Durability::PowerSafe)).await;
            } )*
        }
        mod sled_process_safe {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                annal_storage::conformance::$name(super::Backend::sled(Durability::ProcessSafe)).await;
            } )*
        }
        mod sled_buffered {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                annal_storage::conformance::$name(super::Backend::sled(Durability::Buffered)).await;
            } )*
        }
    };
}

conformance!(
    reads_come_back_in_seq_order,
    paging_with_from_seq_and_max,
    dedupe_conflict_writes_nothing,
    wrong_expected_seq_is_a_conflict_and_writes_nothing,
    appending_without_meta_to_a_new_run_is_unknown_run,
    status_index_follows_meta,
    final_statuses_leave_the_status_index,
    appends_that_keep_the_status_write_only_their_events,
    a_conflict_reports_where_a_long_log_ends,
    a_lost_tail_shows_in_the_recorded_next_seq,
    due_timers_come_earliest_first_and_bounded,
    dedupe_claims,
    a_dedupe_holder_is_returned_once_its_claim_is_durable,
    waiting_for_everything_applied_covers_every_run,
    gates,
    checkpoints_are_replaced_read_back_and_purged,
    purge_removes_every_trace,
    flipped_byte_is_reported_with_run_and_seq,
    removed_record_is_a_gap,
    read_each_visits_what_read_returns_and_stops_at_damage,
    failed_sync_poisons_the_store,
    failed_sync_poisons_concurrent_writers,
    pipelined_appends_to_one_run_see_each_other,
    pipelined_claims_of_one_key_see_each_other,
    pipelined_purge_sees_the_appends_before_it,
    records_link_into_a_hash_chain,
    tree_heads_are_numbered_kept_and_read_back,
);

// ---------------------------------------------------------------------------------------------
// The on-disk format, byte for byte as docs/format.md draws it: changing either must be a
// deliberate act (a new frame format version), never an accident.

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn on_disk_format_matches_docs_format_md() {
    let run = RunId([
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ]);
    let run_hex = "00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff";
    let gate = GateId([0x0a; 16]);
    let gate_hex = "0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a";

    assert_eq!(
        hex(&annal_storage::frame::encode(b"hi")),
        "01 92 4d 99 ef 02 00 00 00 68 69"
    );
    let meta = RunMeta {
        workflow: "order".into(),
        version: 3,
        status: 1,
        next_seq: 2,
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_000,
        wake_ms: None,
        note: String::new(),
        status_seq: 0,
    };
    assert_eq!(
        hex(&annal_storage::encode_meta(&meta)),
        "01 80 25 61 13 33 00 00 00 \
         05 00 00 00 00 00 00 00 6f 72 64 65 72 \
         03 00 00 00 \
         01 \
         02 00 00 00 00 00 00 00 \
         00 68 e5 cf 8b 01 00 00 \
         00 68 e5 cf 8b 01 00 00 \
         00 \
         00 00 00 00 00 00 00 00"
    );

    assert_eq!(
        hex(&keys::event(run, 258)),
        format!("45 {run_hex} 00 00 00 00 00 00 01 02")
    );
    assert_eq!(hex(&keys::meta(run)), format!("52 {run_hex}"));
    assert_eq!(hex(&keys::status(2, run)), format!("53 02 {run_hex}"));
    assert_eq!(
        hex(&keys::timer(1_700_000_000_000, run, 7)),
        format!("54 00 00 01 8b cf e5 68 00 {run_hex} 00 00 00 07")
    );
    assert_eq!(
        hex(&keys::dedupe(b"order-42")),
        "44 6f 72 64 65 72 2d 34 32"
    );
    assert_eq!(hex(&keys::gate(gate)), format!("41 {gate_hex}"));
    assert_eq!(
        hex(&keys::gate_value(run, 4)),
        format!("{run_hex} 00 00 00 04")
    );
}

// ---------------------------------------------------------------------------------------------
// SimStore only: crashes

/// A torn last record (cut short, or with a flipped bit) is reported, not read as a shorter
/// log, and a crash does not heal it.
#[tokio::test]
async fn sim_torn_tail_is_detected() {
    let run = run_id(1);
    let store = SimStore::new();
    create(&store, run, 1, 4).await;
    assert_eq!(store.tear_tail(run, Tear::Cut), Some(3));
    let err = read_all(&store, run).await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { run: r, seq: 3, reason: CorruptReason::Frame(FrameError::Truncated { .. }) } if r == run),
        "{err:?}"
    );
    assert_eq!(seqs(&store.read(run, 0, 3).await.unwrap()), vec![0, 1, 2]);

    let store = SimStore::new();
    create(&store, run, 1, 4).await;
    assert_eq!(store.tear_tail(run, Tear::FlipBit), Some(3));
    let err = read_all(&store, run).await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { run: r, seq: 3, reason: CorruptReason::Frame(FrameError::BadCrc { .. }) } if r == run),
        "{err:?}"
    );
    store.crash();
    assert!(matches!(
        read_all(&store, run).await,
        Err(Error::Corrupt { seq: 3, .. })
    ));
    assert_eq!(
        store.tear_tail(run_id(2), Tear::Cut),
        None,
        "no events, nothing to tear"
    );
}

#[derive(Debug, Clone)]
enum SimOp {
    /// Append `events` events (0 = index-only) to run `run`.
    Append {
        run: u8,
        events: u8,
    },
    /// Wait for the position of the `back`-th most recent append.
    Wait {
        back: usize,
    },
    Crash,
}

/// Per run: `None` if it does not exist, else the payloads of its log.
type Model = Vec<Option<Vec<Vec<u8>>>>;

fn sim_op() -> impl Strategy<Value = SimOp> {
    prop_oneof![
        4 => (0u8..3, 0u8..4).prop_map(|(run, events)| SimOp::Append { run, events }),
        2 => (0usize..4).prop_map(|back| SimOp::Wait { back }),
        1 => Just(SimOp::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After any sequence of appends, waits and crashes, each run's readable log is exactly
    /// what had been made durable: nothing durable is lost, nothing un-synced survives.
    #[test]
    fn sim_crash_leaves_exactly_the_durable_prefix(ops in proptest::collection::vec(sim_op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = SimStore::new();
            // The model: per run, `None` if it does not exist, else the payloads of its log;
            // what is live (applied) and what is durable.
            let mut live: Model = vec![None; 3];
            let mut durable = live.clone();
            // Each append's position, with the live state right after it.
            let mut positions: Vec<(Position, Model)> = Vec::new();
            let mut durable_pos = Position(0);
            let mut generation = 0u32;
            for op in ops {
                match op {
                    SimOp::Append { run, events } => {
                        let id = run_id(run);
                        let log = live[usize::from(run)].get_or_insert_with(Vec::new);
                        generation += 1;
                        // Payloads name their generation, so an event lost in a crash and
                        // re-appended at the same seq is told apart from the lost one.
                        let new: Vec<Vec<u8>> = (0..events)
                            .map(|i| {
                                format!("{run}/{}/g{generation}", log.len() + usize::from(i))
                                    .into_bytes()
                            })
                            .collect();
                        let position = store
                            .append(AppendBatch {
                                run: id,
                                expected_next_seq: log.len() as u64,
                                events: new.clone(),
                                meta: Some(meta(1)),
                                index: vec![],
                            })
                            .await
                            .unwrap();
                        log.extend(new);
                        positions.push((position, live.clone()));
                    }
                    SimOp::Wait { back } => {
                        let Some((position, state)) = positions.iter().rev().nth(back) else {
                            continue;
                        };
                        store.wait_durable(*position).await.unwrap();
                        // A group commit makes everything up to that append durable, and
                        // nothing applied after it.
                        if *position > durable_pos {
                            durable = state.clone();
                            durable_pos = *position;
                        }
                    }
                    SimOp::Crash => {
                        store.crash();
                        live = durable.clone();
                        // Positions handed out before the crash mean nothing after it.
                        positions.clear();
                    }
                }
                for (run, log) in live.iter().enumerate() {
                    let id = run_id(run as u8);
                    let records = read_all(&store, id).await.unwrap();
                    let payloads: Vec<Vec<u8>> = records.into_iter().map(|r| r.payload).collect();
                    prop_assert_eq!(&payloads, log.as_deref().unwrap_or_default());
                    // The run exists exactly when the model says so, with the right next seq.
                    let next_seq = store.meta(id).await.unwrap().map(|m| m.next_seq);
                    prop_assert_eq!(next_seq, log.as_ref().map(|l| l.len() as u64));
                }
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// SledStore only: the real disk

fn open(dir: &std::path::Path, durability: Durability) -> SledStore {
    // A test of this binary that spawns a child process (the kill -9 test) makes the child
    // hold copies of every open file, sled's lock included, between fork and exec: a store
    // just closed by another test can look locked for that instant. Retry briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStore::open(SledConfig::new(dir).durability(durability)) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn sled_persists_across_close_and_reopen() {
    for durability in [
        Durability::PowerSafe,
        Durability::ProcessSafe,
        Durability::Buffered,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = run_id(1);
        {
            let store = open(dir.path(), durability);
            assert_eq!(store.durability(), durability);
            store
                .append_durable(AppendBatch {
                    run,
                    expected_next_seq: 0,
                    events: events(run, 0, 3),
                    meta: Some(meta(4)),
                    index: vec![
                        IndexOp::PutTimer {
                            fire_at_ms: 50,
                            id: 1,
                        },
                        IndexOp::ClaimDedupe { key: b"k".to_vec() },
                        IndexOp::PutGate {
                            gate: gate_id(1),
                            step: 2,
                        },
                    ],
                })
                .await
                .unwrap();
            extend(&store, run, 3, 2).await;
            store.close().unwrap();
        }
        {
            // Dropping without close must also keep everything.
            let store = open(dir.path(), durability);
            let records = read_all(&store, run).await.unwrap();
            assert_eq!(seqs(&records), vec![0, 1, 2, 3, 4], "{durability:?}");
            assert_eq!(records[4].payload, payload(run, 4));
            extend(&store, run, 5, 1).await;
        }
        let store = open(dir.path(), durability);
        assert_eq!(
            seqs(&read_all(&store, run).await.unwrap()),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(store.meta(run).await.unwrap().unwrap().next_seq, 6);
        assert_eq!(store.runs_with_status(4).await.unwrap(), vec![run]);
        assert_eq!(store.next_timer().await.unwrap().map(|t| t.run), Some(run));
        assert_eq!(store.dedupe(b"k").await.unwrap(), Some(run));
        assert_eq!(store.gate(gate_id(1)).await.unwrap(), Some((run, 2)));
    }
}

/// Large events make sled store tree nodes as separate blob files (which its own flush does not
/// sync; `PowerSafe` fsyncs them). They must read back, also after a reopen.
#[tokio::test]
async fn sled_large_events_in_blob_files_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_id(1);
    let big = |seq: u64| vec![seq as u8; 48 * 1024];
    {
        let store = open(dir.path(), Durability::PowerSafe);
        create(&store, run, 1, 0).await;
        for seq in 0..8 {
            store
                .append_durable(AppendBatch {
                    run,
                    expected_next_seq: seq,
                    events: vec![big(seq)],
                    meta: None,
                    index: vec![],
                })
                .await
                .unwrap();
        }
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs > 0, "the test no longer makes sled write blob files");
    }
    let store = open(dir.path(), Durability::PowerSafe);
    let records = read_all(&store, run).await.unwrap();
    assert_eq!(seqs(&records), (0..8).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.payload == big(r.seq)));
}

#[tokio::test]
async fn sled_refuses_a_directory_that_is_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), Durability::Buffered);
    let err = SledStore::open(SledConfig::new(dir.path())).unwrap_err();
    assert!(
        matches!(&err, Error::Locked { path } if path == dir.path()),
        "{err:?}"
    );
    drop(first);
    // Closing releases the lock.
    open(dir.path(), Durability::Buffered);
}

#[tokio::test]
async fn sled_open_on_a_file_is_an_io_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = SledStore::open(SledConfig::new(file.path())).unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
}

#[tokio::test]
async fn sled_reports_damaged_metadata_and_index_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Buffered);
    let run = run_id(1);
    create(&store, run, 1, 1).await;
    let key = keys::meta(run);
    let mut bytes = store.raw_tree().get(&key).unwrap().unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    store.raw_tree().insert(&key, bytes).unwrap();
    // Found damaged on opening: the store that wrote the run remembers its status and would
    // not read the metadata back before changing it.
    drop(store);
    let store = open(dir.path(), Durability::Buffered);

    assert!(matches!(store.meta(run).await, Err(Error::CorruptMeta { run: r, .. }) if r == run));
    assert!(matches!(store.runs().await, Err(Error::CorruptMeta { .. })));
    // Changing the run's status needs its stored metadata: refused, and the store stays
    // usable. (Events alone do not read the metadata; the engine reads it before any append.)
    let err = store
        .append(AppendBatch {
            run,
            expected_next_seq: 1,
            events: vec![],
            meta: Some(meta(2)),
            index: vec![],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CorruptMeta { .. }), "{err:?}");
    create(&store, run_id(2), 1, 1).await;

    // A key of the wrong shape in an index keyspace is reported, not parsed or skipped.
    store
        .raw_tree()
        .insert([keys::TIMER, 1, 2, 3], &[])
        .unwrap();
    assert!(matches!(
        store.due_timers(u64::MAX, 10).await,
        Err(Error::CorruptIndex { .. })
    ));
    store.raw_tree().insert([keys::STATUS, 1, 9], &[]).unwrap();
    assert!(matches!(
        store.runs_with_status(1).await,
        Err(Error::CorruptIndex { .. })
    ));
    store
        .raw_tree()
        .insert(keys::gate(gate_id(1)), &[1, 2])
        .unwrap();
    assert!(matches!(
        store.gate(gate_id(1)).await,
        Err(Error::CorruptIndex { .. })
    ));
    assert!(matches!(
        store.gates().await,
        Err(Error::CorruptIndex { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_concurrent_writers_are_all_acknowledged_and_readable() {
    const WRITERS: u8 = 64;
    const APPENDS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), Durability::PowerSafe));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let run = run_id(n);
            create(&*store, run, 1, 1).await;
            for seq in 1..APPENDS {
                extend(&*store, run, seq, 1).await;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    for n in 0..WRITERS {
        let run = run_id(n);
        let records = read_all(&*store, run).await.unwrap();
        assert_eq!(seqs(&records), (0..APPENDS).collect::<Vec<_>>());
        assert!(records.iter().all(|r| r.payload == payload(run, r.seq)));
    }
    assert_eq!(
        store.runs_with_status(1).await.unwrap().len(),
        usize::from(WRITERS)
    );
    let appends = u64::from(WRITERS) * APPENDS;
    assert!(store.commits() >= 1 && store.commits() <= appends);
}

// ---------------------------------------------------------------------------------------------
// Both backends, side by side: same operations, same answers, same bytes

#[derive(Debug, Clone)]
enum DiffOp {
    Append {
        run: u8,
        /// Added to the right expected seq; non-zero provokes a conflict.
        seq_skew: u8,
        events: u8,
        status: Option<u8>,
        index: Vec<DiffIndex>,
    },
    Purge {
        run: u8,
    },
}

#[derive(Debug, Clone)]
enum DiffIndex {
    PutTimer(u8, u8),
    DeleteTimer(u8, u8),
    Claim(u8),
    PutGate(u8, u8),
    DeleteGate(u8),
}

impl DiffIndex {
    fn op(&self) -> IndexOp {
        match *self {
            DiffIndex::PutTimer(at, id) => IndexOp::PutTimer {
                fire_at_ms: u64::from(at),
                id: u32::from(id),
            },
            DiffIndex::DeleteTimer(at, id) => IndexOp::DeleteTimer {
                fire_at_ms: u64::from(at),
                id: u32::from(id),
            },
            DiffIndex::Claim(k) => IndexOp::ClaimDedupe { key: vec![k] },
            DiffIndex::PutGate(g, step) => IndexOp::PutGate {
                gate: gate_id(g),
                step: u32::from(step),
            },
            DiffIndex::DeleteGate(g) => IndexOp::DeleteGate { gate: gate_id(g) },
        }
    }
}

fn diff_op() -> impl Strategy<Value = DiffOp> {
    let index = prop_oneof![
        (0u8..4, 0u8..2).prop_map(|(a, i)| DiffIndex::PutTimer(a, i)),
        (0u8..4, 0u8..2).prop_map(|(a, i)| DiffIndex::DeleteTimer(a, i)),
        (0u8..3).prop_map(DiffIndex::Claim),
        (0u8..3, 0u8..3).prop_map(|(g, s)| DiffIndex::PutGate(g, s)),
        (0u8..3).prop_map(DiffIndex::DeleteGate),
    ];
    prop_oneof![
        8 => (
            0u8..3,
            prop_oneof![6 => Just(0u8), 1 => 1u8..3],
            0u8..3,
            proptest::option::of(0u8..3),
            proptest::collection::vec(index, 0..3),
        )
            .prop_map(|(run, seq_skew, events, status, index)| DiffOp::Append { run, seq_skew, events, status, index }),
        1 => (0u8..3).prop_map(|run| DiffOp::Purge { run }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `SimStore` and `SledStore` give the same answer to every operation and end up holding
    /// byte-identical keys and values, so tests run against the simulator speak for sled.
    #[test]
    fn sim_and_sled_agree(ops in proptest::collection::vec(diff_op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let sim = Backend::sim();
            let sled = Backend::sled(Durability::Buffered);
            for op in &ops {
                let mut answers = Vec::new();
                for b in [&sim, &sled] {
                    let s = b.store();
                    let answer = match op {
                        DiffOp::Append { run, seq_skew, events: count, status, index } => {
                            let id = run_id(*run);
                            let next = s.meta(id).await.unwrap().map_or(0, |m| m.next_seq);
                            let expected = next + u64::from(*seq_skew);
                            s.append_durable(AppendBatch {
                                run: id,
                                expected_next_seq: expected,
                                events: events(id, expected, u64::from(*count)),
                                meta: status.map(meta),
                                index: index.iter().map(DiffIndex::op).collect(),
                            })
                            .await
                            .map(drop)
                        }
                        DiffOp::Purge { run } => s.purge(run_id(*run)).await,
                    };
                    answers.push(format!("{answer:?}"));
                }
                prop_assert_eq!(&answers[0], &answers[1], "op {:?}", op);
            }
            prop_assert_eq!(sim.raw(), sled.raw());
            for b in [&sim, &sled] {
                let s = b.store();
                prop_assert_eq!(s.runs().await.unwrap().len(), s.runs_with_status(0).await.unwrap().len()
                    + s.runs_with_status(1).await.unwrap().len()
                    + s.runs_with_status(2).await.unwrap().len());
                for run in 0..3 {
                    read_all(s, run_id(run)).await.unwrap();
                }
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// SledStore only: a real crash (SIGKILL of a child process), as sled's own tests do. Dropping a
// store flushes, so only killing a process shows what an acknowledgement is worth.

const KILL_CHILD_DIR: &str = "ANNAL_KILL_CHILD_DIR";
const KILL_CHILD_MODE: &str = "ANNAL_KILL_CHILD_MODE";
const KILL_CHILD_WRITERS: u8 = 4;

/// The child half of `sled_acknowledged_appends_survive_kill_9`: appends durably from several
/// writers until killed, printing `ack <run> <seq>` after each acknowledgement.
#[test]
#[ignore = "child process of sled_acknowledged_appends_survive_kill_9; runs only when it spawns it"]
fn sled_kill_9_child() {
    use std::io::Write as _;
    let Ok(dir) = std::env::var(KILL_CHILD_DIR) else {
        return;
    };
    let durability = match std::env::var(KILL_CHILD_MODE).as_deref() {
        Ok("ProcessSafe") => Durability::ProcessSafe,
        _ => Durability::PowerSafe,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(open(std::path::Path::new(&dir), durability));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..KILL_CHILD_WRITERS {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let run = run_id(n);
                create(&*store, run, 1, 1).await;
                ack(n, 0);
                for seq in 1.. {
                    extend(&*store, run, seq, 1).await;
                    ack(n, seq);
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    });

    fn ack(run: u8, seq: u64) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack {run} {seq}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sled_acknowledged_appends_survive_kill_9() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    const ACKS_BEFORE_KILL: usize = 200;

    for mode in ["PowerSafe", "ProcessSafe"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "sled_kill_9_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL_CHILD_DIR, dir.path())
            .env(KILL_CHILD_MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = stdout.lines();
        // Highest acknowledged seq of each run.
        let mut acked: BTreeMap<u8, u64> = BTreeMap::new();
        let mut record = |line: &str| {
            let mut words = line.split_whitespace();
            if words.next() != Some("ack") {
                return false;
            }
            let run: u8 = words.next().unwrap().parse().unwrap();
            let seq: u64 = words.next().unwrap().parse().unwrap();
            let highest = acked.entry(run).or_default();
            *highest = (*highest).max(seq);
            true
        };
        let mut seen = 0;
        while seen < ACKS_BEFORE_KILL {
            let line = lines
                .next()
                .expect("child exited before acknowledging enough appends")
                .unwrap();
            seen += usize::from(record(&line));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements printed before the kill count too.
        for line in lines {
            record(&line.unwrap());
        }

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = open(dir.path(), Durability::Buffered);
            for (&n, &highest) in &acked {
                let run = run_id(n);
                let records = read_all(&store, run).await.unwrap();
                assert!(
                    records.len() as u64 > highest,
                    "{mode}: run {n} acknowledged seq {highest} but only {} records survived",
                    records.len()
                );
                assert!(records.iter().all(|r| r.payload == payload(run, r.seq)));
                let meta = store.meta(run).await.unwrap().unwrap();
                assert_eq!(
                    meta.next_seq,
                    records.len() as u64,
                    "{mode}: meta and log disagree"
                );
            }
        });
    }
}
