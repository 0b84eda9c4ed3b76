//! One test suite for every [`LogStore`] backend, plus: a differential proptest that runs the
//! same operations on both and compares answers and bytes; the on-disk format pinned byte for
//! byte; and the tests only one backend can run (crash simulation for `SimStore`; reopen,
//! locking, blob files, real concurrency and a real `kill -9` for `SledStore`).
//!
//! Each conformance test is a plain async fn taking a [`Backend`]; the `conformance!` macro
//! turns it into one `#[tokio::test]` per backend and durability mode, so a backend cannot pass
//! a test the other fails without it showing up as a named failure.

use std::collections::BTreeMap;
use std::sync::Arc;

use annal_storage::frame::{FrameError, HEADER_LEN};
use annal_storage::{
    keys, read_all, AppendBatch, CorruptReason, Durability, Error, GateId, IndexOp, LogStore,
    Position, RunId, RunMeta, SimStore, SledConfig, SledStore, Tear, TimerEntry,
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

    fn store(&self) -> &dyn LogStore {
        match self {
            Backend::Sim(store) => store,
            Backend::Sled { store, .. } => store,
        }
    }

    /// Rewrites the stored bytes of one event record in place.
    fn corrupt(&self, run: RunId, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> bool {
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

    /// Deletes one event record behind the store's back.
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

    /// Every stored key and value. For `SimStore` only the durable part, so callers make
    /// their writes durable before comparing.
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
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::sim()).await; } )*
        }
        mod sled_power_safe {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                super::$name(super::Backend::sled(Durability::PowerSafe)).await;
            } )*
        }
        mod sled_process_safe {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                super::$name(super::Backend::sled(Durability::ProcessSafe)).await;
            } )*
        }
        mod sled_buffered {
            use annal_storage::Durability;
            $( #[tokio::test] async fn $name() {
                super::$name(super::Backend::sled(Durability::Buffered)).await;
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
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn run_id(n: u8) -> RunId {
    // Neighbouring ids, so a scan that overruns its run's prefix would pick up the next run.
    let mut bytes = [0xA0; 16];
    bytes[15] = n;
    RunId(bytes)
}

fn gate_id(n: u8) -> GateId {
    let mut bytes = [0x6A; 16];
    bytes[15] = n;
    GateId(bytes)
}

fn meta(status: u8) -> RunMeta {
    RunMeta {
        workflow: "order".into(),
        version: 3,
        status,
        next_seq: 0,
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_000,
        wake_ms: None,
        note: String::new(),
        status_seq: 0,
    }
}

fn payload(run: RunId, seq: u64) -> Vec<u8> {
    format!("{run} event {seq}").into_bytes()
}

/// A batch of `count` events for `run` starting at `from`, with the canonical payloads.
fn events(run: RunId, from: u64, count: u64) -> Vec<Vec<u8>> {
    (from..from + count).map(|seq| payload(run, seq)).collect()
}

/// Creates `run` with `count` events and status `status`, durably.
async fn create(store: &dyn LogStore, run: RunId, status: u8, count: u64) {
    store
        .append_durable(AppendBatch {
            run,
            expected_next_seq: 0,
            events: events(run, 0, count),
            meta: Some(meta(status)),
            index: vec![],
        })
        .await
        .unwrap();
}

/// Appends `count` more events to an existing run, keeping its metadata, durably.
async fn extend(store: &dyn LogStore, run: RunId, from: u64, count: u64) {
    store
        .append_durable(AppendBatch {
            run,
            expected_next_seq: from,
            events: events(run, from, count),
            meta: None,
            index: vec![],
        })
        .await
        .unwrap();
}

/// Appends only index changes (no events, metadata kept) to an existing run, durably.
async fn index(store: &dyn LogStore, run: RunId, index: Vec<IndexOp>) -> Result<(), Error> {
    let next = store.meta(run).await?.map_or(0, |m| m.next_seq);
    store
        .append_durable(AppendBatch {
            run,
            expected_next_seq: next,
            events: vec![],
            meta: None,
            index,
        })
        .await
        .map(drop)
}

fn seqs(records: &[annal_storage::Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Conformance tests

async fn reads_come_back_in_seq_order(b: Backend) {
    let s = b.store();
    let (run, neighbour) = (run_id(1), run_id(2));
    // 300 events cross seq 256, where keys with little-endian seqs would sort out of order.
    create(s, run, 1, 100).await;
    create(s, neighbour, 1, 3).await;
    for from in [100, 150, 200, 250] {
        extend(s, run, from, 50).await;
    }

    let records = read_all(s, run).await.unwrap();
    assert_eq!(seqs(&records), (0..300).collect::<Vec<_>>());
    for r in &records {
        assert_eq!(r.payload, payload(run, r.seq));
    }
    assert_eq!(seqs(&read_all(s, neighbour).await.unwrap()), vec![0, 1, 2]);
    assert_eq!(s.meta(run).await.unwrap().unwrap().next_seq, 300);
    assert_eq!(s.meta(neighbour).await.unwrap().unwrap().next_seq, 3);
}

async fn paging_with_from_seq_and_max(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 20).await;
    create(s, run_id(2), 1, 5).await;

    assert_eq!(
        seqs(&s.read(run, 0, 7).await.unwrap()),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&s.read(run, 7, 7).await.unwrap()),
        (7..14).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&s.read(run, 14, 7).await.unwrap()),
        (14..20).collect::<Vec<_>>()
    );
    assert!(s.read(run, 20, 7).await.unwrap().is_empty());
    assert!(s.read(run, 1_000, 7).await.unwrap().is_empty());
    assert!(s.read(run, 5, 0).await.unwrap().is_empty());
    assert!(s.read(run_id(9), 0, 10).await.unwrap().is_empty());

    let mut paged = Vec::new();
    loop {
        let page = s.read(run, paged.len() as u64, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        paged.extend(page);
    }
    assert_eq!(paged, read_all(s, run).await.unwrap());
    assert_eq!(paged.len(), 20);
}

async fn dedupe_conflict_writes_nothing(b: Backend) {
    let s = b.store();
    let (holder, newcomer, existing) = (run_id(1), run_id(2), run_id(3));
    s.append_durable(AppendBatch {
        run: holder,
        expected_next_seq: 0,
        events: events(holder, 0, 1),
        meta: Some(meta(1)),
        index: vec![IndexOp::ClaimDedupe {
            key: b"order-42".to_vec(),
        }],
    })
    .await
    .unwrap();
    create(s, existing, 1, 1).await;
    let before = b.raw();

    // A new run whose claim fails: none of its events, metadata or index entries may land,
    // even those listed before the failing claim.
    let err = s
        .append(AppendBatch {
            run: newcomer,
            expected_next_seq: 0,
            events: events(newcomer, 0, 2),
            meta: Some(meta(7)),
            index: vec![
                IndexOp::PutTimer {
                    fire_at_ms: 10,
                    id: 1,
                },
                IndexOp::PutGate {
                    gate: gate_id(1),
                    step: 4,
                },
                IndexOp::ClaimDedupe {
                    key: b"order-42".to_vec(),
                },
            ],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DedupeTaken { existing } if existing == holder),
        "{err:?}"
    );

    // The same for an existing run: its seq, status and indexes stay as they were.
    let err = s
        .append(AppendBatch {
            run: existing,
            expected_next_seq: 1,
            events: events(existing, 1, 2),
            meta: Some(meta(7)),
            index: vec![
                IndexOp::PutTimer {
                    fire_at_ms: 10,
                    id: 1,
                },
                IndexOp::ClaimDedupe {
                    key: b"order-42".to_vec(),
                },
            ],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DedupeTaken { existing } if existing == holder),
        "{err:?}"
    );

    assert_eq!(b.raw(), before, "a failed append changed stored bytes");
    assert_eq!(s.meta(newcomer).await.unwrap(), None);
    assert!(read_all(s, newcomer).await.unwrap().is_empty());
    assert_eq!(s.meta(existing).await.unwrap().unwrap().next_seq, 1);
    assert_eq!(seqs(&read_all(s, existing).await.unwrap()), vec![0]);
    assert!(s.runs_with_status(7).await.unwrap().is_empty());
    assert_eq!(s.runs_with_status(1).await.unwrap(), vec![holder, existing]);
    assert!(s.due_timers(u64::MAX, 10).await.unwrap().is_empty());
    assert_eq!(s.gate(gate_id(1)).await.unwrap(), None);
    assert_eq!(s.dedupe(b"order-42").await.unwrap(), Some(holder));
    let runs: Vec<RunId> = s
        .runs()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(runs, vec![holder, existing]);
}

async fn wrong_expected_seq_is_a_conflict_and_writes_nothing(b: Backend) {
    let s = b.store();
    let run = run_id(1);

    let err = s
        .append(AppendBatch {
            run,
            expected_next_seq: 1,
            events: events(run, 1, 1),
            meta: Some(meta(1)),
            index: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { run: r, expected: 1, found: 0 } if r == run),
        "{err:?}"
    );
    assert!(b.raw().is_empty());

    create(s, run, 1, 3).await;
    let before = b.raw();
    for expected in [0, 2, 4] {
        let err = s
            .append(AppendBatch {
                run,
                expected_next_seq: expected,
                events: events(run, expected, 1),
                meta: Some(meta(5)),
                index: vec![IndexOp::PutTimer {
                    fire_at_ms: 1,
                    id: 1,
                }],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { run: r, expected: e, found: 3 } if r == run && e == expected),
            "{err:?}"
        );
    }
    assert_eq!(b.raw(), before);
    assert_eq!(s.meta(run).await.unwrap().unwrap().status, 1);
    // The right seq still works afterwards.
    extend(s, run, 3, 1).await;
    assert_eq!(seqs(&read_all(s, run).await.unwrap()), vec![0, 1, 2, 3]);
}

async fn appending_without_meta_to_a_new_run_is_unknown_run(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    let err = s
        .append(AppendBatch {
            run,
            expected_next_seq: 0,
            events: events(run, 0, 1),
            meta: None,
            index: vec![IndexOp::PutTimer {
                fire_at_ms: 1,
                id: 1,
            }],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownRun(r) if r == run), "{err:?}");
    assert!(b.raw().is_empty());
    assert_eq!(s.meta(run).await.unwrap(), None);
}

async fn status_index_follows_meta(b: Backend) {
    let s = b.store();
    let (a, c) = (run_id(1), run_id(2));
    create(s, c, 1, 1).await;
    create(s, a, 1, 1).await;
    // In run id order, whatever the order of creation.
    assert_eq!(s.runs_with_status(1).await.unwrap(), vec![a, c]);

    let mut parked = meta(2);
    parked.wake_ms = Some(99);
    parked.note = "waiting for approval".into();
    s.append_durable(AppendBatch {
        run: a,
        expected_next_seq: 1,
        events: events(a, 1, 1),
        meta: Some(parked.clone()),
        index: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.runs_with_status(1).await.unwrap(), vec![c]);
    assert_eq!(s.runs_with_status(2).await.unwrap(), vec![a]);
    let stored = s.meta(a).await.unwrap().unwrap();
    assert_eq!(
        stored,
        RunMeta {
            next_seq: 2,
            status_seq: 2,
            ..parked.clone()
        }
    );

    // No metadata in the batch: status kept, next_seq still advanced by the store, and
    // `status_seq` still says where the run took its status (events 2 and 3 came after).
    extend(s, a, 2, 2).await;
    assert_eq!(
        s.meta(a).await.unwrap().unwrap(),
        RunMeta {
            next_seq: 4,
            status_seq: 2,
            ..parked
        }
    );
    assert_eq!(s.runs_with_status(2).await.unwrap(), vec![a]);
    assert_eq!(s.runs_with_status(1).await.unwrap(), vec![c]);

    let runs = s.runs().await.unwrap();
    let summary: Vec<(RunId, u8, u64)> = runs
        .iter()
        .map(|(r, m)| (*r, m.status, m.next_seq))
        .collect();
    assert_eq!(summary, vec![(a, 2, 4), (c, 1, 1)]);
}

/// The raw status index: (status, run) of every `S` key.
fn status_entries(b: &Backend) -> Vec<(u8, RunId)> {
    b.raw()
        .keys()
        .filter_map(|key| keys::parse_status(key))
        .collect()
}

async fn final_statuses_leave_the_status_index(b: Backend) {
    let s = b.store();
    let (a, c) = (run_id(1), run_id(2));
    create(s, a, 1, 1).await;
    create(s, c, 1, 1).await;
    let completed = keys::FINAL_STATUS_MIN;
    // Ending writes the event and the metadata, and removes the run's entry: nothing is
    // left in the index for a run that can never change again.
    s.append_durable(AppendBatch {
        run: a,
        expected_next_seq: 1,
        events: events(a, 1, 1),
        meta: Some(meta(completed)),
        index: vec![],
    })
    .await
    .unwrap();
    assert_eq!(status_entries(&b), vec![(1, c)]);
    assert_eq!(s.meta(a).await.unwrap().unwrap().status, completed);
    assert!(s.runs_with_status(completed).await.unwrap().is_empty());
    assert_eq!(s.runs_with_status(1).await.unwrap(), vec![c]);
    // A run created in a final status is not indexed either.
    let d = run_id(3);
    s.append_durable(AppendBatch {
        run: d,
        expected_next_seq: 0,
        events: events(d, 0, 1),
        meta: Some(meta(completed + 1)),
        index: vec![],
    })
    .await
    .unwrap();
    assert_eq!(status_entries(&b), vec![(1, c)]);
    // Every run is still listed, with its status, by `runs`.
    let statuses: Vec<(RunId, u8)> = s
        .runs()
        .await
        .unwrap()
        .into_iter()
        .map(|(run, meta)| (run, meta.status))
        .collect();
    assert_eq!(statuses, vec![(a, completed), (c, 1), (d, completed + 1)]);
    // Purging a finished run leaves the other runs' entries alone.
    s.purge(a).await.unwrap();
    assert_eq!(status_entries(&b), vec![(1, c)]);
}

async fn appends_that_keep_the_status_write_only_their_events(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 1).await;
    let before = b.raw();
    extend(s, run, 1, 2).await;
    let after = b.raw();
    // Exactly the two new event records were added; the metadata bytes did not change.
    let added: Vec<&Vec<u8>> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(added, vec![&keys::event(run, 1), &keys::event(run, 2)]);
    assert_eq!(after.get(&keys::meta(run)), before.get(&keys::meta(run)));
    // Reads still report where the log ends.
    assert_eq!(s.meta(run).await.unwrap().unwrap().next_seq, 3);
    assert_eq!(s.runs().await.unwrap()[0].1.next_seq, 3);
    // And the next append must start there.
    let err = s
        .append(AppendBatch {
            run,
            expected_next_seq: 1,
            events: events(run, 1, 1),
            meta: None,
            index: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 1,
                found: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

async fn a_conflict_reports_where_a_long_log_ends(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 1).await;
    extend(s, run, 1, 299).await;
    for expected in [0, 1, 255, 256, 299, 301, 512, 100_000] {
        let err = s
            .append(AppendBatch {
                run,
                expected_next_seq: expected,
                events: events(run, expected, 1),
                meta: None,
                index: vec![],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { expected: e, found: 300, .. } if e == expected),
            "{err:?}"
        );
    }
}

async fn a_lost_tail_shows_in_the_recorded_next_seq(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 4).await;
    // Records lost behind the store's back after the metadata recorded the log's end.
    assert!(b.remove(run, 3));
    assert!(b.remove(run, 2));
    let meta = s.meta(run).await.unwrap().unwrap();
    assert_eq!(
        meta.next_seq, 4,
        "the recorded end stays, so readers see the loss"
    );
    assert_eq!(s.read(run, 0, usize::MAX).await.unwrap().len(), 2);
}

async fn due_timers_come_earliest_first_and_bounded(b: Backend) {
    let s = b.store();
    let (a, c) = (run_id(1), run_id(2));
    create(s, a, 1, 0).await;
    create(s, c, 1, 0).await;
    assert_eq!(s.next_timer().await.unwrap(), None);

    // Due times above 2^32 and 2^8 check that keys sort numerically, not by low bytes.
    let big = 5_000_000_000u64;
    index(
        s,
        a,
        vec![
            IndexOp::PutTimer {
                fire_at_ms: big,
                id: 1,
            },
            IndexOp::PutTimer {
                fire_at_ms: 300,
                id: 2,
            },
            IndexOp::PutTimer {
                fire_at_ms: 20,
                id: 3,
            },
        ],
    )
    .await
    .unwrap();
    index(
        s,
        c,
        vec![
            IndexOp::PutTimer {
                fire_at_ms: 300,
                id: 1,
            },
            IndexOp::PutTimer {
                fire_at_ms: 256,
                id: 2,
            },
        ],
    )
    .await
    .unwrap();

    let t = |fire_at_ms, run, id| TimerEntry {
        fire_at_ms,
        run,
        id,
    };
    let all = vec![
        t(20, a, 3),
        t(256, c, 2),
        t(300, a, 2),
        t(300, c, 1),
        t(big, a, 1),
    ];
    assert_eq!(s.due_timers(u64::MAX, 100).await.unwrap(), all);
    assert_eq!(
        s.due_timers(300, 100).await.unwrap(),
        all[..4].to_vec(),
        "bound is inclusive"
    );
    assert_eq!(s.due_timers(299, 100).await.unwrap(), all[..2].to_vec());
    assert_eq!(s.due_timers(u64::MAX, 3).await.unwrap(), all[..3].to_vec());
    assert!(s.due_timers(19, 100).await.unwrap().is_empty());
    assert!(s.due_timers(u64::MAX, 0).await.unwrap().is_empty());
    assert_eq!(s.next_timer().await.unwrap(), Some(all[0]));

    index(
        s,
        a,
        vec![
            IndexOp::DeleteTimer {
                fire_at_ms: 20,
                id: 3,
            },
            IndexOp::DeleteTimer {
                fire_at_ms: 300,
                id: 2,
            },
            // Absent entries are ignored, including one that differs only in the id.
            IndexOp::DeleteTimer {
                fire_at_ms: big,
                id: 7,
            },
            IndexOp::DeleteTimer {
                fire_at_ms: 1,
                id: 1,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        s.due_timers(u64::MAX, 100).await.unwrap(),
        vec![t(256, c, 2), t(300, c, 1), t(big, a, 1)]
    );
    assert_eq!(s.next_timer().await.unwrap(), Some(t(256, c, 2)));
}

/// A second trigger that finds a claim from a start still in flight gets the holder only
/// once the claim is durable: a crash cannot take back a run it was handed.
async fn a_dedupe_holder_is_returned_once_its_claim_is_durable(b: Backend) {
    let s = b.store();
    let holder = run_id(1);
    let position = s
        .append(AppendBatch {
            run: holder,
            expected_next_seq: 0,
            events: events(holder, 0, 1),
            meta: Some(meta(1)),
            index: vec![IndexOp::ClaimDedupe {
                key: b"lead-7".to_vec(),
            }],
        })
        .await
        .unwrap();
    assert_eq!(s.dedupe(b"lead-7").await.unwrap(), Some(holder));
    // Durable by now: in what a crash keeps (`SimStore`'s raw view), and the wait for it
    // resolves on its first poll.
    assert!(b.raw().contains_key(&keys::dedupe(b"lead-7")));
    let mut wait = s.wait_durable(position);
    let polled = wait
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(
        matches!(polled, std::task::Poll::Ready(Ok(()))),
        "the claim was not durable when its holder was returned: {polled:?}"
    );
    assert_eq!(s.dedupe(b"nobody").await.unwrap(), None);
}

/// `wait_applied_durable` makes durable every append applied before it, whichever run.
async fn waiting_for_everything_applied_covers_every_run(b: Backend) {
    let s = b.store();
    s.wait_applied_durable().await.unwrap();
    let mut positions = Vec::new();
    for n in 1..=3 {
        let run = run_id(n);
        let position = s
            .append(AppendBatch {
                run,
                expected_next_seq: 0,
                events: events(run, 0, 2),
                meta: Some(meta(1)),
                index: vec![],
            })
            .await
            .unwrap();
        positions.push(position);
    }
    s.wait_applied_durable().await.unwrap();
    // In what a crash keeps (`SimStore`'s raw view is its durable state), and each wait
    // resolves on its first poll.
    assert!(b.raw().contains_key(&keys::event(run_id(3), 1)));
    for position in positions {
        let mut wait = s.wait_durable(position);
        let polled = wait
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        assert!(
            matches!(polled, std::task::Poll::Ready(Ok(()))),
            "{position:?}: {polled:?}"
        );
    }
}

async fn dedupe_claims(b: Backend) {
    let s = b.store();
    let (a, c) = (run_id(1), run_id(2));
    create(s, a, 1, 0).await;
    create(s, c, 1, 0).await;
    index(
        s,
        a,
        vec![IndexOp::ClaimDedupe {
            key: b"abc".to_vec(),
        }],
    )
    .await
    .unwrap();
    // Claiming again from the same run is idempotent.
    index(
        s,
        a,
        vec![IndexOp::ClaimDedupe {
            key: b"abc".to_vec(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(s.dedupe(b"abc").await.unwrap(), Some(a));

    let err = index(
        s,
        c,
        vec![IndexOp::ClaimDedupe {
            key: b"abc".to_vec(),
        }],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::DedupeTaken { existing } if existing == a),
        "{err:?}"
    );
    assert_eq!(s.dedupe(b"abc").await.unwrap(), Some(a));

    // Keys are stored verbatim: a prefix or an extension of a key is a different key.
    assert_eq!(s.dedupe(b"ab").await.unwrap(), None);
    assert_eq!(s.dedupe(b"abcd").await.unwrap(), None);
    index(
        s,
        c,
        vec![IndexOp::ClaimDedupe {
            key: b"ab".to_vec(),
        }],
    )
    .await
    .unwrap();
    index(s, c, vec![IndexOp::ClaimDedupe { key: b"".to_vec() }])
        .await
        .unwrap();
    assert_eq!(s.dedupe(b"ab").await.unwrap(), Some(c));
    assert_eq!(s.dedupe(b"").await.unwrap(), Some(c));
    assert_eq!(s.dedupe(b"abc").await.unwrap(), Some(a));
}

async fn gates(b: Backend) {
    let s = b.store();
    let (a, c) = (run_id(1), run_id(2));
    create(s, a, 1, 0).await;
    create(s, c, 1, 0).await;
    assert_eq!(s.gate(gate_id(1)).await.unwrap(), None);
    index(
        s,
        a,
        vec![IndexOp::PutGate {
            gate: gate_id(1),
            step: 7,
        }],
    )
    .await
    .unwrap();
    index(
        s,
        c,
        vec![IndexOp::PutGate {
            gate: gate_id(2),
            step: u32::MAX,
        }],
    )
    .await
    .unwrap();
    assert_eq!(s.gate(gate_id(1)).await.unwrap(), Some((a, 7)));
    assert_eq!(s.gate(gate_id(2)).await.unwrap(), Some((c, u32::MAX)));
    assert_eq!(
        s.gates().await.unwrap(),
        vec![(gate_id(1), a, 7), (gate_id(2), c, u32::MAX)]
    );

    index(
        s,
        a,
        vec![
            IndexOp::DeleteGate { gate: gate_id(1) },
            IndexOp::DeleteGate { gate: gate_id(3) },
        ],
    )
    .await
    .unwrap();
    assert_eq!(s.gate(gate_id(1)).await.unwrap(), None);
    assert_eq!(s.gate(gate_id(2)).await.unwrap(), Some((c, u32::MAX)));
    assert_eq!(s.gates().await.unwrap(), vec![(gate_id(2), c, u32::MAX)]);
}

async fn purge_removes_every_trace(b: Backend) {
    let s = b.store();
    let (doomed, kept) = (run_id(1), run_id(2));
    for (run, n) in [(doomed, 1u8), (kept, 2u8)] {
        s.append_durable(AppendBatch {
            run,
            expected_next_seq: 0,
            events: events(run, 0, 4),
            meta: Some(meta(3)),
            index: vec![
                IndexOp::PutTimer {
                    fire_at_ms: 100,
                    id: 1,
                },
                IndexOp::PutTimer {
                    fire_at_ms: 200 + u64::from(n),
                    id: 2,
                },
                IndexOp::ClaimDedupe { key: vec![b'k', n] },
                IndexOp::PutGate {
                    gate: gate_id(n),
                    step: 1,
                },
            ],
        })
        .await
        .unwrap();
    }
    let kept_before: BTreeMap<_, _> = b
        .raw()
        .into_iter()
        .filter(|(k, v)| !mentions(k, &doomed.0) && !mentions(v, &doomed.0))
        .collect();

    s.purge(doomed).await.unwrap();

    // Nothing that names the run is left, in any keyspace, and nothing else was touched.
    assert_eq!(b.raw(), kept_before);
    assert_eq!(s.meta(doomed).await.unwrap(), None);
    assert!(read_all(s, doomed).await.unwrap().is_empty());
    assert_eq!(s.runs_with_status(3).await.unwrap(), vec![kept]);
    assert!(s
        .due_timers(u64::MAX, 100)
        .await
        .unwrap()
        .iter()
        .all(|t| t.run == kept));
    assert_eq!(s.dedupe(&[b'k', 1]).await.unwrap(), None);
    assert_eq!(s.gate(gate_id(1)).await.unwrap(), None);
    assert_eq!(s.dedupe(&[b'k', 2]).await.unwrap(), Some(kept));
    assert_eq!(s.gate(gate_id(2)).await.unwrap(), Some((kept, 1)));
    assert_eq!(s.gates().await.unwrap(), vec![(gate_id(2), kept, 1)]);
    assert_eq!(read_all(s, kept).await.unwrap().len(), 4);

    // Purging an unknown run is a no-op, and the id can be used again.
    s.purge(run_id(9)).await.unwrap();
    create(s, doomed, 1, 1).await;
    assert_eq!(seqs(&read_all(s, doomed).await.unwrap()), vec![0]);
}

fn mentions(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn read_each_visits_what_read_returns_and_stops_at_damage(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 6).await;
    create(s, run_id(2), 1, 3).await;
    let mut visited: Vec<(u64, Vec<u8>)> = Vec::new();
    s.read_each(run, 1, &mut |seq, payload| {
        visited.push((seq, payload.to_vec()));
        true
    })
    .await
    .unwrap();
    let read: Vec<(u64, Vec<u8>)> = s
        .read(run, 1, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.payload))
        .collect();
    assert_eq!(
        visited, read,
        "same records, same payloads, nothing of the next run"
    );
    // The visitor can stop the walk.
    let mut seen = 0;
    s.read_each(run, 0, &mut |_, _| {
        seen += 1;
        seen < 2
    })
    .await
    .unwrap();
    assert_eq!(seen, 2);
    // Damage is reported with its seq, and nothing from it on is visited.
    assert!(b.corrupt(run, 3, |bytes| bytes[HEADER_LEN] ^= 0x01));
    let mut visited = Vec::new();
    let err = s
        .read_each(run, 0, &mut |seq, _| {
            visited.push(seq);
            true
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { seq: 3, .. }), "{err:?}");
    assert!(visited.iter().all(|&seq| seq < 3), "{visited:?}");
    assert!(b.remove(run, 3));
    let err = s.read_each(run, 0, &mut |_, _| true).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                seq: 3,
                reason: CorruptReason::Gap { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

async fn checkpoints_are_replaced_read_back_and_purged(b: Backend) {
    let s = b.store();
    let (run, other) = (run_id(1), run_id(2));
    create(s, run, 1, 2).await;
    create(s, other, 1, 1).await;
    assert_eq!(s.checkpoint(run).await.unwrap(), None);
    for (seq, bytes) in [(2u64, vec![1u8, 2, 3]), (3, vec![9u8; 300_000])] {
        s.append_durable(AppendBatch {
            run,
            expected_next_seq: seq,
            events: events(run, seq, 1),
            meta: Some(meta(2)),
            index: vec![IndexOp::PutCheckpoint {
                bytes: bytes.clone(),
            }],
        })
        .await
        .unwrap();
        assert_eq!(s.checkpoint(run).await.unwrap(), Some(bytes), "replaced");
    }
    assert_eq!(s.checkpoint(other).await.unwrap(), None);
    s.purge(run).await.unwrap();
    assert_eq!(s.checkpoint(run).await.unwrap(), None);
    assert!(
        b.raw()
            .keys()
            .all(|k| !k.ends_with(&run.0) || k[0] != keys::CHECKPOINT),
        "nothing of the purged run's checkpoint is left"
    );
}

async fn flipped_byte_is_reported_with_run_and_seq(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 5).await;
    create(s, run_id(2), 1, 5).await;
    assert!(b.corrupt(run, 2, |bytes| bytes[HEADER_LEN + 1] ^= 0x01));

    let err = read_all(s, run).await.unwrap_err();
    match err {
        Error::Corrupt {
            run: r,
            seq: 2,
            reason: CorruptReason::Frame(FrameError::BadCrc { .. }),
        } if r == run => {}
        other => panic!("expected BadCrc at seq 2, got {other:?}"),
    }
    // Records before and after the damaged one are still readable on their own, and the other
    // run is untouched.
    assert_eq!(seqs(&s.read(run, 0, 2).await.unwrap()), vec![0, 1]);
    assert_eq!(seqs(&s.read(run, 3, 10).await.unwrap()), vec![3, 4]);
    assert_eq!(read_all(s, run_id(2)).await.unwrap().len(), 5);

    // Damage to the header is caught too: the CRC covers the length.
    assert!(b.corrupt(run, 4, |bytes| bytes[5] ^= 0x01));
    assert!(matches!(
        s.read(run, 3, 10).await,
        Err(Error::Corrupt { seq: 4, .. })
    ));
    assert!(b.corrupt(run, 3, |bytes| bytes[0] = 9));
    let err = s.read(run, 3, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                seq: 3,
                reason: CorruptReason::Frame(FrameError::UnknownFormat(9)),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(b.corrupt(run, 0, |bytes| bytes.truncate(3)));
    let err = s.read(run, 0, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                seq: 0,
                reason: CorruptReason::Frame(FrameError::Truncated { .. }),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!b.corrupt(run, 99, |_| {}), "no such record");
}

async fn removed_record_is_a_gap(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 5).await;
    assert!(b.remove(run, 2));
    let err = read_all(s, run).await.unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { run: r, seq: 2, reason: CorruptReason::Gap { expected_seq: 2, found_seq: 3 } } if r == run),
        "{err:?}"
    );
    // Reading from the hole itself reports it too: seq 2 was asked for, 3 came back. Short
    // reads (which the sled backend serves by point reads) tell the hole from the log's end.
    for (from, max) in [(2, 10), (2, 1), (1, 2), (0, 4)] {
        let err = s.read(run, from, max).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    seq: 2,
                    reason: CorruptReason::Gap { .. },
                    ..
                }
            ),
            "from {from} max {max}: {err:?}"
        );
    }
    assert_eq!(seqs(&s.read(run, 4, 1).await.unwrap()), vec![4]);
    assert_eq!(seqs(&s.read(run, 4, 3).await.unwrap()), vec![4]);
    assert_eq!(seqs(&s.read(run, 5, 1).await.unwrap()), Vec::<u64>::new());

    assert!(b.remove(run, 0));
    let err = read_all(s, run).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corrupt {
                seq: 0,
                reason: CorruptReason::Gap {
                    expected_seq: 0,
                    found_seq: 1
                },
                ..
            }
        ),
        "{err:?}"
    );
}

async fn failed_sync_poisons_the_store(b: Backend) {
    let s = b.store();
    let (run, other) = (run_id(1), run_id(2));
    create(s, run, 1, 1).await;
    let durable_before = Position(1);

    b.fail_next_sync("disk on fire");
    let position = s
        .append(AppendBatch {
            run,
            expected_next_seq: 1,
            events: events(run, 1, 1),
            meta: None,
            index: vec![],
        })
        .await
        .unwrap();
    let err = s.wait_durable(position).await.unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { cause } if cause.contains("disk on fire")),
        "{err:?}"
    );

    // Every later write and wait is refused, whatever run it is for.
    for _ in 0..2 {
        let err = s
            .append(AppendBatch {
                run: other,
                expected_next_seq: 0,
                events: events(other, 0, 1),
                meta: Some(meta(1)),
                index: vec![],
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Poisoned { cause } if cause.contains("disk on fire")),
            "{err:?}"
        );
        assert!(matches!(
            s.wait_durable(position).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            s.wait_durable(durable_before).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(s.purge(run).await, Err(Error::Poisoned { .. })));
    }
    // Reads still work: the log that was durable can be inspected.
    assert_eq!(read_all(s, run).await.unwrap()[0].payload, payload(run, 0));
}

async fn failed_sync_poisons_concurrent_writers(b: Backend) {
    let b = Arc::new(b);
    b.fail_next_sync("disk on fire");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let b = Arc::clone(&b);
        tasks.spawn(async move {
            let run = run_id(n);
            b.store()
                .append_durable(AppendBatch {
                    run,
                    expected_next_seq: 0,
                    events: events(run, 0, 1),
                    meta: Some(meta(1)),
                    index: vec![],
                })
                .await
        });
    }
    // Whichever group the failure hit, no writer may be told its append is durable.
    while let Some(result) = tasks.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{err:?}");
    }
}

/// Many appends to one run sent back to back, before any is answered: a group-committing
/// backend plans later ones against the earlier ones of the same group, so each must see the
/// seq the previous one left.
async fn pipelined_appends_to_one_run_see_each_other(b: Backend) {
    let s = b.store();
    let run = run_id(1);
    let appends = (0..64u64).map(|seq| {
        s.append(AppendBatch {
            run,
            expected_next_seq: seq,
            events: events(run, seq, 1),
            meta: (seq == 0).then(|| meta(1)),
            index: vec![IndexOp::PutTimer {
                fire_at_ms: seq,
                id: 0,
            }],
        })
    });
    let positions: Vec<Position> = futures::future::join_all(appends)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions follow submission order"
    );
    s.wait_durable(*positions.last().unwrap()).await.unwrap();
    assert_eq!(
        seqs(&read_all(s, run).await.unwrap()),
        (0..64).collect::<Vec<_>>()
    );
    assert_eq!(s.meta(run).await.unwrap().unwrap().next_seq, 64);
    assert_eq!(s.due_timers(u64::MAX, 100).await.unwrap().len(), 64);
}

/// Two runs claiming one dedupe key back to back: the first wins, whether or not both land
/// in the same group.
async fn pipelined_claims_of_one_key_see_each_other(b: Backend) {
    let s = b.store();
    let claim = |n: u8| {
        s.append_durable(AppendBatch {
            run: run_id(n),
            expected_next_seq: 0,
            events: events(run_id(n), 0, 1),
            meta: Some(meta(1)),
            index: vec![IndexOp::ClaimDedupe {
                key: b"once".to_vec(),
            }],
        })
    };
    let results = futures::future::join_all((0..16).map(claim)).await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    for result in &results[1..] {
        assert!(
            matches!(result, Err(Error::DedupeTaken { existing }) if *existing == run_id(0)),
            "{result:?}"
        );
    }
    assert_eq!(s.dedupe(b"once").await.unwrap(), Some(run_id(0)));
    let runs: Vec<RunId> = s
        .runs()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(runs, vec![run_id(0)], "losers wrote nothing");
}

/// Appends, a purge of their run and a re-creation, all sent before any is answered: the
/// purge must remove the appends queued before it, and the re-created run starts at seq 0.
async fn pipelined_purge_sees_the_appends_before_it(b: Backend) {
    use futures::future::BoxFuture;
    let s = b.store();
    let run = run_id(1);
    let append = |seq: u64, create: bool| -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            s.append(AppendBatch {
                run,
                expected_next_seq: seq,
                events: vec![format!("{seq} {create}").into_bytes()],
                meta: create.then(|| meta(1)),
                index: vec![IndexOp::ClaimDedupe { key: b"k".to_vec() }],
            })
            .await
            .map(drop)
        })
    };
    let mut ops: Vec<BoxFuture<'_, Result<(), Error>>> = vec![append(0, true)];
    ops.extend((1..8).map(|seq| append(seq, false)));
    ops.push(Box::pin(s.purge(run)));
    ops.push(append(0, true));
    for result in futures::future::join_all(ops).await {
        result.unwrap();
    }
    let records = read_all(s, run).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"0 true".to_vec());
    assert_eq!(s.meta(run).await.unwrap().unwrap().next_seq, 1);
    assert_eq!(s.dedupe(b"k").await.unwrap(), Some(run));
}

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
