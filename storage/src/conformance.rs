//! The storage conformance suite (feature `conformance`): every [`LogStore`] backend must
//! pass each of these tests, whatever it is built on. annal runs them against
//! [`crate::SimStore`], [`crate::SledStore`] in every durability mode, and the PostgreSQL
//! backend; a third-party backend can run them too, through [`Backend`].
//!
//! Each test is an `async fn` taking a fresh, empty backend and panicking on a failure, so a
//! test file turns it into one `#[tokio::test]` per backend.

// Each item is a test or a helper named by what it does; the suite is not an API to learn.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::frame::{FrameError, HEADER_LEN};
use crate::{
    keys, read_all, AppendBatch, CorruptReason, Error, GateId, IndexOp, LogStore, Position, RunId,
    RunMeta, TimerEntry,
};

/// A store under test, with the back doors the tests need to look at and damage it.
pub trait Backend: Send + Sync + 'static {
    /// The store.
    fn store(&self) -> &dyn LogStore;

    /// Rewrites the stored bytes of one event record in place; false if there is none.
    fn corrupt(&self, run: RunId, seq: u64, f: &mut dyn FnMut(&mut Vec<u8>)) -> bool;

    /// Deletes one event record behind the store's back; false if there was none.
    fn remove(&self, run: RunId, seq: u64) -> bool;

    /// Makes the next durable commit fail (a failed fsync). Backends without a local
    /// commit to fail do not run the tests that need it.
    fn fail_next_sync(&self, cause: &str);

    /// Every stored entry as the sled key layout (`docs/format.md`) names it: events,
    /// metadata, the status index, due times, dedupe keys, gates and checkpoints. What a
    /// crash would keep, so callers make their writes durable before comparing.
    fn raw(&self) -> BTreeMap<Vec<u8>, Vec<u8>>;
}

// Helpers

pub fn run_id(n: u8) -> RunId {
    // Neighbouring ids, so a scan that overruns its run's prefix would pick up the next run.
    let mut bytes = [0xA0; 16];
    bytes[15] = n;
    RunId(bytes)
}

pub fn gate_id(n: u8) -> GateId {
    let mut bytes = [0x6A; 16];
    bytes[15] = n;
    GateId(bytes)
}

pub fn meta(status: u8) -> RunMeta {
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

pub fn payload(run: RunId, seq: u64) -> Vec<u8> {
    format!("{run} event {seq}").into_bytes()
}

/// A batch of `count` events for `run` starting at `from`, with the canonical payloads.
pub fn events(run: RunId, from: u64, count: u64) -> Vec<Vec<u8>> {
    (from..from + count).map(|seq| payload(run, seq)).collect()
}

/// Creates `run` with `count` events and status `status`, durably.
pub async fn create(store: &dyn LogStore, run: RunId, status: u8, count: u64) {
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
pub async fn extend(store: &dyn LogStore, run: RunId, from: u64, count: u64) {
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
pub async fn index(store: &dyn LogStore, run: RunId, index: Vec<IndexOp>) -> Result<(), Error> {
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

pub fn seqs(records: &[crate::Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Conformance tests

pub async fn reads_come_back_in_seq_order(b: impl Backend) {
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

pub async fn paging_with_from_seq_and_max(b: impl Backend) {
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

pub async fn dedupe_conflict_writes_nothing(b: impl Backend) {
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

pub async fn wrong_expected_seq_is_a_conflict_and_writes_nothing(b: impl Backend) {
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
    // A status change alone (no events) at a seq the log has passed: a writer that has
    // not seen the latest event must not record a status behind it.
    let err = s
        .append(AppendBatch {
            run,
            expected_next_seq: 2,
            events: Vec::new(),
            meta: Some(meta(2)),
            index: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { run: r, expected: 2, found: 3 } if r == run),
        "{err:?}"
    );
    assert_eq!(b.raw(), before);
    assert_eq!(s.meta(run).await.unwrap().unwrap().status, 1);
    // The right seq still works afterwards.
    extend(s, run, 3, 1).await;
    assert_eq!(seqs(&read_all(s, run).await.unwrap()), vec![0, 1, 2, 3]);
}

pub async fn appending_without_meta_to_a_new_run_is_unknown_run(b: impl Backend) {
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

pub async fn status_index_follows_meta(b: impl Backend) {
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
pub fn status_entries(b: &impl Backend) -> Vec<(u8, RunId)> {
    b.raw()
        .keys()
        .filter_map(|key| keys::parse_status(key))
        .collect()
}

pub async fn final_statuses_leave_the_status_index(b: impl Backend) {
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

pub async fn appends_that_keep_the_status_write_only_their_events(b: impl Backend) {
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

pub async fn a_conflict_reports_where_a_long_log_ends(b: impl Backend) {
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

pub async fn a_lost_tail_shows_in_the_recorded_next_seq(b: impl Backend) {
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

pub async fn due_timers_come_earliest_first_and_bounded(b: impl Backend) {
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
pub async fn a_dedupe_holder_is_returned_once_its_claim_is_durable(b: impl Backend) {
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
pub async fn waiting_for_everything_applied_covers_every_run(b: impl Backend) {
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

pub async fn dedupe_claims(b: impl Backend) {
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

pub async fn gates(b: impl Backend) {
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

pub async fn purge_removes_every_trace(b: impl Backend) {
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

pub fn mentions(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub async fn read_each_visits_what_read_returns_and_stops_at_damage(b: impl Backend) {
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
    assert!(b.corrupt(run, 3, &mut |bytes| bytes[HEADER_LEN] ^= 0x01));
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

pub async fn checkpoints_are_replaced_read_back_and_purged(b: impl Backend) {
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

pub async fn flipped_byte_is_reported_with_run_and_seq(b: impl Backend) {
    let s = b.store();
    let run = run_id(1);
    create(s, run, 1, 5).await;
    create(s, run_id(2), 1, 5).await;
    assert!(b.corrupt(run, 2, &mut |bytes| bytes[HEADER_LEN + 1] ^= 0x01));

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
    assert!(b.corrupt(run, 4, &mut |bytes| bytes[5] ^= 0x01));
    assert!(matches!(
        s.read(run, 3, 10).await,
        Err(Error::Corrupt { seq: 4, .. })
    ));
    assert!(b.corrupt(run, 3, &mut |bytes| bytes[0] = 9));
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
    assert!(b.corrupt(run, 0, &mut |bytes| bytes.truncate(3)));
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
    assert!(!b.corrupt(run, 99, &mut |_| {}), "no such record");
}

pub async fn removed_record_is_a_gap(b: impl Backend) {
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

pub async fn failed_sync_poisons_the_store(b: impl Backend) {
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

pub async fn failed_sync_poisons_concurrent_writers(b: impl Backend) {
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
pub async fn pipelined_appends_to_one_run_see_each_other(b: impl Backend) {
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
pub async fn pipelined_claims_of_one_key_see_each_other(b: impl Backend) {
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
pub async fn pipelined_purge_sees_the_appends_before_it(b: impl Backend) {
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

/// Every event record links to the one before it in its run (record 0 to the run's
/// genesis), whether the records came in one append or many, with index changes between
/// them, and whatever the backend remembers of the run.
pub async fn records_link_into_a_hash_chain(b: impl Backend) {
    let s = b.store();
    let (run, other) = (run_id(1), run_id(2));
    create(s, run, 1, 3).await;
    create(s, other, 1, 2).await;
    extend(s, run, 3, 1).await;
    index(
        s,
        run,
        vec![IndexOp::PutTimer {
            fire_at_ms: 5,
            id: 1,
        }],
    )
    .await
    .unwrap();
    extend(s, run, 4, 4).await;
    for (run, len) in [(run, 8), (other, 2)] {
        let records = read_all(s, run).await.unwrap();
        assert_eq!(records.len(), len);
        let mut expected = crate::chain::genesis(run);
        for record in &records {
            assert_eq!(record.link, Some(expected), "run {run} seq {}", record.seq);
            expected = record.hash(run);
        }
    }
}

/// Tree heads are kept in order, durably, numbered from 0, read back whole, and counted
/// apart from everything else the store holds.
pub async fn tree_heads_are_numbered_kept_and_read_back(b: impl Backend) {
    let s = b.store();
    assert_eq!(s.latest_tree_head().await.unwrap(), None);
    assert!(s.tree_heads(0, 10).await.unwrap().is_empty());
    create(s, run_id(1), 1, 2).await;
    for i in 0..5u8 {
        let index = s
            .put_tree_head(vec![i; 1 + usize::from(i) * 100])
            .await
            .unwrap();
        assert_eq!(index, u64::from(i));
    }
    let all = s.tree_heads(0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(all[3].1, vec![3; 301]);
    assert_eq!(s.tree_heads(2, 2).await.unwrap().len(), 2);
    assert_eq!(s.latest_tree_head().await.unwrap(), Some((4, vec![4; 401])));
    assert!(
        b.raw().contains_key(&keys::tree_head(4)),
        "durable once put_tree_head returned"
    );
    // Runs are untouched by them.
    assert_eq!(s.runs().await.unwrap().len(), 1);
}
