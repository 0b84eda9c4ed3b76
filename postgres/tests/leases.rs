//! What only a shared store has: versioned schema, leases, fencing, takeover, dedupe across
//! workers, forwarded requests. Against a real server (`ANNAL_PG_URL`).

use std::time::Duration;

use annal_postgres::{testing, PgConfig, PgStore};
use annal_storage::{AppendBatch, Error, Hint, IndexOp, LogStore, RunId, RunMeta};

fn meta(status: u8) -> RunMeta {
    RunMeta {
        workflow: "order".into(),
        version: 1,
        status,
        next_seq: 0,
        created_ms: 0,
        updated_ms: 0,
        wake_ms: None,
        note: String::new(),
        status_seq: 0,
    }
}

fn run(n: u8) -> RunId {
    RunId([n; 16])
}

fn batch(run: RunId, expected: u64, meta: Option<RunMeta>) -> AppendBatch {
    AppendBatch {
        run,
        expected_next_seq: expected,
        events: vec![format!("event {expected}").into_bytes()],
        meta,
        index: vec![],
    }
}

async fn two_workers() -> Option<(PgConfig, PgStore, PgStore)> {
    let url = testing::url_from_env()?;
    let config = testing::fresh(&url).lease_ms(300).poll_ms(20);
    let a = PgStore::connect(config.clone()).await.unwrap();
    let b = PgStore::connect(config.clone()).await.unwrap();
    Some((config, a, b))
}

/// A schema written by a newer annal is refused, and nothing in it changes; the same
/// version opens again (migrations are idempotent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_code_is_refused() {
    let Some(url) = testing::url_from_env() else {
        return;
    };
    let config = testing::fresh(&url);
    drop(PgStore::connect(config.clone()).await.unwrap());
    drop(PgStore::connect(config.clone()).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions = format!("\"{}\".schema_version", config.schema);
    async fn count(client: &tokio_postgres::Client, versions: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {versions}");
        client.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
    }
    let migrations = i64::from(annal_postgres::SCHEMA_VERSION);
    assert_eq!(count(&client, &versions).await, migrations, "migrated once");
    client
        .execute(
            &format!("INSERT INTO {versions} (version) VALUES ($1)"),
            &[&(annal_postgres::SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let err = PgStore::connect(config.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found, supported } if found == annal_postgres::SCHEMA_VERSION + 1 && supported == annal_postgres::SCHEMA_VERSION),
        "{err:?}"
    );
    assert_eq!(
        count(&client, &versions).await,
        migrations + 1,
        "nothing changed"
    );
    PgStore::drop_schema(&config).await.unwrap();
}

/// A run is executed by one worker at a time: a second worker cannot claim it while the
/// first lives, takes it once the first's heartbeat lapses, and from then on the first
/// worker's appends are fenced and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_is_fenced_once_its_run_was_taken_over() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let r = run(1);
    a.append(batch(r, 0, Some(meta(1)))).await.unwrap();
    let held = b.claim(r).await.unwrap_err();
    assert!(
        matches!(&held, Error::LeaseHeld { owner, .. } if *owner == a.worker().to_string()),
        "{held:?}"
    );

    // Worker a stalls: its heartbeat stops, its lease expires, b takes the run over.
    a.pause_heartbeat(true);
    take_over(&b, r).await;
    // a wakes up and writes as if nothing happened: fenced, nothing written.
    let err = a.append(batch(r, 1, None)).await.unwrap_err();
    assert!(matches!(err, Error::Fenced { run } if run == r), "{err:?}");
    let err = a.append(batch(r, 1, Some(meta(2)))).await.unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
    assert_eq!(b.meta(r).await.unwrap().unwrap().next_seq, 1);
    assert_eq!(b.meta(r).await.unwrap().unwrap().status, 1);
    // The new owner goes on.
    b.append(batch(r, 1, None)).await.unwrap();
    assert_eq!(a.read(r, 0, 10).await.unwrap().len(), 2);
}

/// Appends that share a transaction stand or fall alone: a stale worker's append to a run
/// it lost, sent together with appends to runs it still holds, is fenced and writes nothing,
/// while the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_append_in_a_group_leaves_the_others_standing() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let lost = run(40);
    let kept: Vec<RunId> = (41..49).map(run).collect();
    for r in std::iter::once(&lost).chain(&kept) {
        a.append(batch(*r, 0, Some(meta(1)))).await.unwrap();
    }
    a.pause_heartbeat(true);
    take_over(&b, lost).await;
    // a still holds the others in the database: nobody claimed them.
    let before = a.commit_stats();
    let appends = std::iter::once(&lost)
        .chain(&kept)
        .map(|r| a.append(batch(*r, 1, None)));
    let results = futures::future::join_all(appends).await;
    let after = a.commit_stats();
    assert!(
        matches!(&results[0], Err(Error::Fenced { run }) if *run == lost),
        "{:?}",
        results[0]
    );
    for (r, result) in kept.iter().zip(&results[1..]) {
        assert!(result.is_ok(), "{r:?}: {result:?}");
        assert_eq!(b.read(*r, 0, 10).await.unwrap().len(), 2);
    }
    assert_eq!(
        b.read(lost, 0, 10).await.unwrap().len(),
        1,
        "nothing written"
    );
    assert_eq!(after.appends - before.appends, 9);
    assert!(after.groups - before.groups < 9, "{before:?} {after:?}");
}

/// A run's final append gives its lease up in the same row update: another worker may
/// claim it at once, without a release, and the finishing worker writes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_append_gives_the_lease_up() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let r = run(50);
    a.append(batch(r, 0, Some(meta(1)))).await.unwrap();
    assert!(matches!(b.claim(r).await, Err(Error::LeaseHeld { .. })));
    let completed = annal_storage::keys::FINAL_STATUS_MIN;
    a.append(batch(r, 1, Some(meta(completed)))).await.unwrap();
    b.claim(r).await.unwrap();
    // The engine's release after the end has nothing left to give up.
    a.release(r);
    let err = a.append(batch(r, 2, None)).await.unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
    let stored = b.meta(r).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.next_seq), (completed, 2));
}

/// A lease given up (the run parked) can be claimed by any worker at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_run_is_claimed_at_once() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let r = run(2);
    a.append(batch(r, 0, Some(meta(2)))).await.unwrap();
    a.release(r);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while b.claim(r).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the release did not land"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.append(batch(r, 1, None)).await.unwrap();
    let err = a.append(batch(r, 2, None)).await.unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err:?}");
}

/// Two workers starting runs with the same dedupe key at the same time: one run exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_claiming_one_dedupe_key_create_one_run() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    for round in 0..20u8 {
        let key = format!("order-{round}").into_bytes();
        let start = |r: RunId| {
            let mut batch = batch(r, 0, Some(meta(1)));
            batch.index.push(IndexOp::ClaimDedupe { key: key.clone() });
            batch
        };
        let (ra, rb) = (RunId([round; 16]), RunId([round | 0x80; 16]));
        let (x, y) = futures::future::join(a.append(start(ra)), b.append(start(rb))).await;
        let holder = a.dedupe(&key).await.unwrap().unwrap();
        match (x, y) {
            (Ok(_), Err(Error::DedupeTaken { existing })) => {
                assert_eq!((holder, existing), (ra, ra))
            }
            (Err(Error::DedupeTaken { existing }), Ok(_)) => {
                assert_eq!((holder, existing), (rb, rb))
            }
            other => panic!("round {round}: {other:?}"),
        }
        let loser = if holder == ra { rb } else { ra };
        assert!(
            a.meta(loser).await.unwrap().is_none(),
            "the loser wrote nothing"
        );
    }
}

/// A request to a worker's run reaches it as a hint and by its poll; answered in the same
/// append as the events it caused, it is answered exactly once, and the poster sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_with_the_append_it_caused() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let mut hints = a.hints().expect("a shared store hints");
    assert!(a.hints().is_none(), "taken once");
    let r = run(3);
    a.append(batch(r, 0, Some(meta(1)))).await.unwrap();
    let id = b.post_request(r, b"decide gate 7".to_vec()).await.unwrap();
    assert_eq!(b.request_answer(id, 0).await.unwrap(), None);
    let hint = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Hint::Requests(run)) = hints.recv().await {
                break run;
            }
        }
    })
    .await
    .expect("the owner hears of the request");
    assert_eq!(hint, r);
    let pending = a.pending_requests(r).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, b"decide gate 7");
    let mut answer = batch(r, 1, None);
    answer.index.push(IndexOp::AnswerRequest {
        id,
        answer: b"ok".to_vec(),
    });
    a.append(answer).await.unwrap();
    assert_eq!(
        b.request_answer(id, 5_000).await.unwrap(),
        Some(b"ok".to_vec())
    );
    assert!(a.pending_requests(r).await.unwrap().is_empty());
    // A second answer (a takeover that redid the work) changes nothing.
    a.answer_request(&pending[0], b"again".to_vec())
        .await
        .unwrap();
    assert_eq!(b.request_answer(id, 0).await.unwrap(), Some(b"ok".to_vec()));
}

/// A worker that died holding a `Running` run: the others are hinted to take it over once
/// its lease passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_running_run_is_offered_for_takeover() {
    let Some((_, a, b)) = two_workers().await else {
        return;
    };
    let mut hints = b.hints().unwrap();
    let r = run(4);
    a.append(batch(r, 0, Some(meta(1)))).await.unwrap();
    drop(a);
    let offered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Hint::TakeOver(run)) = hints.recv().await {
                if run == r {
                    break;
                }
            }
        }
    })
    .await;
    assert!(offered.is_ok(), "no takeover hint");
    b.claim(r).await.unwrap();
}

/// What an auditor reads: the schema's version without creating it, every run (also one
/// whose metadata is damaged or gone), and every due-time and dedupe entry whichever worker
/// holds its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditor_reads_see_every_run_and_entry_whoever_holds_it() {
    let Some(url) = testing::url_from_env() else {
        return;
    };
    let config = testing::fresh(&url).lease_ms(5_000);
    assert_eq!(PgStore::schema_version(&config).await.unwrap(), None);
    assert_eq!(
        PgStore::schema_version(&config).await.unwrap(),
        None,
        "asking created nothing"
    );
    let a = PgStore::connect(config.clone()).await.unwrap();
    let b = PgStore::connect(config.clone()).await.unwrap();
    assert_eq!(
        PgStore::schema_version(&config).await.unwrap(),
        Some(annal_postgres::SCHEMA_VERSION)
    );
    // a holds run 1 with a due time and a dedupe key; runs 2 and 3 lose their metadata.
    let mut first = batch(run(1), 0, Some(meta(2)));
    first.index = vec![
        IndexOp::PutTimer {
            fire_at_ms: 42,
            id: 7,
        },
        IndexOp::ClaimDedupe {
            key: b"order-1".to_vec(),
        },
    ];
    a.append(first).await.unwrap();
    for n in [2, 3] {
        a.append(batch(run(n), 0, Some(meta(1)))).await.unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let s = format!("\"{}\"", config.schema);
    client
        .execute(
            &format!("DELETE FROM {s}.runs WHERE run = $1"),
            &[&uuid::Uuid::from_bytes(run(2).0)],
        )
        .await
        .unwrap();
    client
        .execute(
            &format!("UPDATE {s}.runs SET meta = '\\x00'::bytea WHERE run = $1"),
            &[&uuid::Uuid::from_bytes(run(3).0)],
        )
        .await
        .unwrap();
    assert!(b.runs().await.is_err(), "runs() stops at the damaged row");
    assert_eq!(b.run_ids().await.unwrap(), vec![run(1), run(2), run(3)]);
    assert!(
        b.due_timers(u64::MAX, 10).await.unwrap().is_empty(),
        "a live worker holds run 1"
    );
    let due = b.due_entries().await.unwrap();
    assert_eq!(
        due.iter()
            .map(|t| (t.fire_at_ms, t.run, t.id))
            .collect::<Vec<_>>(),
        vec![(42, run(1), 7)]
    );
    assert_eq!(
        b.dedupe_entries().await.unwrap(),
        vec![(b"order-1".to_vec(), run(1))]
    );
    drop((a, b));
    PgStore::drop_schema(&config).await.unwrap();
}

/// Shutting down gives up every run the worker owns in the database, also one whose
/// release had not landed (still queued when the process exits, or lost with a commit):
/// another worker claims it at once instead of after the heartbeat expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_frees_every_run_the_worker_owns() {
    let Some((config, a, b)) = two_workers().await else {
        return;
    };
    let (held, lost) = (run(7), run(8));
    a.append(batch(held, 0, Some(meta(1)))).await.unwrap();
    b.append(batch(lost, 0, Some(meta(1)))).await.unwrap();
    // a owns `lost` in the database without holding it in memory.
    let (client, connection) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            &format!(
                "UPDATE \"{}\".runs SET owner = $1 WHERE run = $2",
                config.schema
            ),
            &[&a.worker(), &uuid::Uuid::from_bytes(lost.0)],
        )
        .await
        .unwrap();
    a.release_all().await.unwrap();
    // a's heartbeat is still fresh: only the release lets b in.
    b.claim(held).await.unwrap();
    b.claim(lost).await.unwrap();
}

/// Waits until `worker` claims `r` from a worker whose heartbeat stopped; fails the test on
/// any error but a lease still held, or after ten seconds.
async fn take_over(worker: &PgStore, r: RunId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match worker.claim(r).await {
            Ok(()) => return,
            Err(Error::LeaseHeld { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("takeover of {r:?} failed: {e}"),
        }
    }
}
