//! The storage conformance suite (`annal_storage::conformance`) against a real PostgreSQL
//! server, each test in a schema of its own. The server comes from `ANNAL_PG_URL` (see
//! `annal_postgres::testing::url_from_env`).

use std::collections::BTreeMap;
use std::sync::Arc;

use annal_postgres::{testing, PgConfig, PgStore};
use annal_storage::{keys, GateId, LogStore, RunId};

/// `PgStore` with back doors: a connection of its own that reads and damages the tables
/// behind the store's back.
struct Pg {
    store: PgStore,
    config: PgConfig,
    client: Arc<tokio_postgres::Client>,
}

impl Pg {
    async fn new() -> Option<Self> {
        let url = testing::url_from_env()?;
        let config = testing::fresh(&url);
        let store = PgStore::connect(config.clone()).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        Some(Self {
            store,
            config,
            client: Arc::new(client),
        })
    }

    fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.config.schema)
    }

    /// Runs a query on the back-door connection from a synchronous trait method.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }
}

fn run_of(id: uuid::Uuid) -> RunId {
    RunId(*id.as_bytes())
}

impl annal_storage::conformance::Backend for Pg {
    fn store(&self) -> &dyn LogStore {
        &self.store
    }

    fn corrupt(&self, run: RunId, seq: u64, f: &mut dyn FnMut(&mut Vec<u8>)) -> bool {
        let id = uuid::Uuid::from_bytes(run.0);
        let seq = seq as i64;
        self.block(async {
            let row = self
                .client
                .query_opt(
                    &format!(
                        "SELECT record FROM {} WHERE run = $1 AND seq = $2",
                        self.table("events")
                    ),
                    &[&id, &seq],
                )
                .await
                .unwrap();
            let Some(row) = row else { return false };
            let mut bytes: Vec<u8> = row.get(0);
            f(&mut bytes);
            self.client
                .execute(
                    &format!(
                        "UPDATE {} SET record = $3 WHERE run = $1 AND seq = $2",
                        self.table("events")
                    ),
                    &[&id, &seq, &bytes],
                )
                .await
                .unwrap();
            true
        })
    }

    fn remove(&self, run: RunId, seq: u64) -> bool {
        let id = uuid::Uuid::from_bytes(run.0);
        self.block(async {
            self.client
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE run = $1 AND seq = $2",
                        self.table("events")
                    ),
                    &[&id, &(seq as i64)],
                )
                .await
                .unwrap()
                == 1
        })
    }

    fn fail_next_sync(&self, _cause: &str) {
        unreachable!("a PostgreSQL commit cannot be made to fail from here: the suite's failed-sync tests are not run on it");
    }

    fn raw(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.block(async {
            let mut out = BTreeMap::new();
            let q = |sql: String| {
                let client = Arc::clone(&self.client);
                async move { client.query(&sql, &[]).await.unwrap() }
            };
            for row in q(format!(
                "SELECT run, seq, record FROM {}",
                self.table("events")
            ))
            .await
            {
                let seq: i64 = row.get(1);
                out.insert(keys::event(run_of(row.get(0)), seq as u64), row.get(2));
            }
            for row in q(format!(
                "SELECT run, meta, status FROM {}",
                self.table("runs")
            ))
            .await
            {
                let run = run_of(row.get(0));
                out.insert(keys::meta(run), row.get(1));
                let status = row.get::<_, i16>(2) as u8;
                if keys::status_is_indexed(status) {
                    out.insert(keys::status(status, run), Vec::new());
                }
            }
            for row in q(format!(
                "SELECT fire_at_ms, run, id FROM {}",
                self.table("due")
            ))
            .await
            {
                let at: i64 = row.get(0);
                let id: i32 = row.get(2);
                out.insert(
                    keys::timer(at as u64, run_of(row.get(1)), id as u32),
                    Vec::new(),
                );
            }
            for row in q(format!("SELECT key, run FROM {}", self.table("dedupe"))).await {
                let key: Vec<u8> = row.get(0);
                out.insert(keys::dedupe(&key), run_of(row.get(1)).0.to_vec());
            }
            for row in q(format!(
                "SELECT gate, run, position FROM {}",
                self.table("gates")
            ))
            .await
            {
                let gate: uuid::Uuid = row.get(0);
                let position: i32 = row.get(2);
                out.insert(
                    keys::gate(GateId(*gate.as_bytes())),
                    keys::gate_value(run_of(row.get(1)), position as u32),
                );
            }
            for row in q(format!(
                "SELECT run, record FROM {}",
                self.table("checkpoints")
            ))
            .await
            {
                out.insert(keys::checkpoint(run_of(row.get(0))), row.get(1));
            }
            for row in q(format!("SELECT n, body FROM {}", self.table("tree_heads"))).await {
                let n: i64 = row.get(0);
                out.insert(keys::tree_head(n as u64), row.get(1));
            }
            out
        })
    }
}

/// Runs each named suite test against a fresh schema.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = Pg::new().await else { return };
                annal_storage::conformance::$name(backend).await;
            }
        )*
    };
}

// Every test of the suite but the two that make a local fsync fail.
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
    pipelined_appends_to_one_run_see_each_other,
    pipelined_claims_of_one_key_see_each_other,
    pipelined_purge_sees_the_appends_before_it,
    records_link_into_a_hash_chain,
    tree_heads_are_numbered_kept_and_read_back,
);
