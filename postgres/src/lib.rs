//! # annal-postgres
//!
//! annal's log on PostgreSQL, for services that run as several replicas. [`PgStore`]
//! implements [`LogStore`] with the same CRC-framed records as the embedded sled store (so
//! `annal verify`, the audit record and the replayer read them unchanged), and lets several
//! engines share one database:
//!
//! - **Leases.** A run is executed by one worker at a time. A worker claims a run (`FOR
//!   UPDATE SKIP LOCKED`, bumping the run's epoch) before it loads it, and gives it up when
//!   the run parks or ends. A worker's leases live as long as its heartbeat row
//!   (`workers.expires_at`, renewed every third of [`PgConfig::lease_ms`]); once that has
//!   passed, any worker may take its runs over. There is no coordinator.
//! - **Fencing.** Every append is one call of the schema's `append` function, which inserts
//!   only while the run's owner and epoch are still the caller's, and only at the seq that
//!   follows the log's last event (with `(run, seq)` as primary key behind it): a worker whose
//!   run was taken over writes nothing ([`Error::Fenced`]) and drops the run.
//! - **Group commit.** The appends of many runs of one worker go to PostgreSQL in one
//!   transaction (pipelined calls, then one `COMMIT`); with `synchronous_commit = on` an
//!   append is durable when it returns.
//! - **Wake-ups.** Due times are rows; a worker polls the ones whose run it may take.
//!   Acts on a run another worker executes (decisions, signals, cancel requests, operator
//!   actions) are posted as request rows and `NOTIFY` that worker; LISTEN/NOTIFY is only a
//!   hint, behind it every worker polls (requests, runs whose worker died, runs waiting for
//!   one) every [`PgConfig::poll_ms`], and re-polls everything after its listening
//!   connection is re-established, so no wake-up is lost.
//! - **Dedupe.** Start-dedupe keys are unique rows: two replicas starting the same key get
//!   one run.
//!
//! ```no_run
//! # async fn demo() -> Result<(), annal_storage::Error> {
//! use std::sync::Arc;
//! let store = annal_postgres::PgStore::connect(
//!     annal_postgres::PgConfig::new("postgresql://annal@127.0.0.1:5432/annal"),
//! )
//! .await?;
//! // Engine::builder().store(Arc::new(store)) ... .open().await
//! # let _ = Arc::new(store); Ok(()) }
//! ```

mod schema;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal_storage::{
    chain, check_record, decode_checkpoint, decode_meta, encode_meta, frame, keys,
    meta_with_log_end, AppendBatch, Durability, Error, GateId, Hint, IndexOp, LogStore, Position,
    Record, Request, Result, RunId, RunMeta, TimerEntry,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use annal_storage::chain::Link;

pub use schema::VERSION as SCHEMA_VERSION;

/// Where the database is and how leases behave.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style connection string or URL (`postgresql://user@host:port/db`).
    pub url: String,
    /// The schema annal's tables live in (created if missing). Several stores — several
    /// applications, or test cases — can share a database in different schemas.
    pub schema: String,
    /// How long a worker's leases outlive its last heartbeat. A dead worker's runs are taken
    /// over within about this plus [`PgConfig::poll_ms`]; a worker stalled longer than this
    /// (a long GC pause, a suspended VM) finds its runs taken and its appends fenced.
    pub lease_ms: u64,
    /// How often a worker looks for work it may not have been told of: runs whose worker
    /// died, runs waiting for a worker, requests for its own runs.
    pub poll_ms: u64,
    /// Connections in the pool (the group committer, readers, the poller; the listener has
    /// its own).
    pub pool_size: usize,
    /// Most appends in one group-commit transaction.
    pub group_max: usize,
    /// Group committers, each with its own connection and its share of the runs: the
    /// server executes one connection's statements one at a time, so more than one lets it
    /// use more than one core. With one (the default) every append is ordered after those
    /// queued before it; with more, only a run's own appends are ordered, and of two runs
    /// claiming one dedupe key at once either may win.
    pub committers: usize,
}

impl PgConfig {
    /// Defaults: schema `annal`, 5 s leases, 250 ms polls, 8 connections, 1 committer.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "annal".into(),
            lease_ms: 5_000,
            poll_ms: 250,
            pool_size: 8,
            group_max: 512,
            committers: 1,
        }
    }

    /// The same with another schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The same with another lease duration.
    pub fn lease_ms(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms;
        self
    }

    /// The same with another poll interval.
    pub fn poll_ms(mut self, poll_ms: u64) -> Self {
        self.poll_ms = poll_ms;
        self
    }

    /// Where the database is, for people and logs: hosts, ports and database name, never
    /// the user or password the URL may carry (`db.internal:5432/annal`).
    pub fn target(&self) -> String {
        let Ok(pg) = tokio_postgres::Config::from_str(&self.url) else {
            return "(unparseable PostgreSQL URL)".into();
        };
        let ports = pg.get_ports();
        let hosts: Vec<String> = pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let host = match host {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                // One port for all hosts, or one each; libpq's default otherwise.
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                format!("{host}:{port}")
            })
            .collect();
        let hosts = if hosts.is_empty() {
            "localhost:5432".to_string()
        } else {
            hosts.join(",")
        };
        // libpq connects to the database named like the user when none is given.
        let db = pg.get_dbname().or(pg.get_user()).unwrap_or("postgres");
        format!("{hosts}/{db}")
    }
}

/// Maps a driver or pool error: the database is unreachable or the statement's outcome is
/// unknown, which the engine treats as transient. A server error keeps its message and its
/// SQLSTATE in the cause (`tokio_postgres::Error`'s own text is only "db error").
pub(crate) fn unavailable(e: impl std::fmt::Display + 'static) -> Error {
    let any: &dyn std::any::Any = &e;
    let pg = any.downcast_ref::<tokio_postgres::Error>();
    // A failed connection says why only in its source ("connection refused"); other
    // sources are left out, since a URL parse error may quote a character of it.
    let io = pg
        .and_then(std::error::Error::source)
        .and_then(|source| source.downcast_ref::<std::io::Error>());
    let cause = match (pg.and_then(tokio_postgres::Error::as_db_error), io) {
        (Some(db), _) => format!("{}: {} (SQLSTATE {})", e, db.message(), db.code().code()),
        (None, Some(io)) => format!("{e}: {io}"),
        (None, None) => e.to_string(),
    };
    Error::Unavailable { cause }
}

fn uuid(run: RunId) -> Uuid {
    Uuid::from_bytes(run.0)
}

fn run_id(id: Uuid) -> RunId {
    RunId(*id.as_bytes())
}

/// Due times and ids go into signed columns; a due time past `i64::MAX` ms (never, in
/// practice) is stored as that, and ids keep their bits.
fn due_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// One append, encoded for the schema's `append` function.
struct Encoded {
    run: Uuid,
    epoch: i64,
    /// This append took the lease of the run it creates: given back if the run was not
    /// created after all.
    leases_new_run: bool,
    expected: i64,
    events: Vec<Vec<u8>>,
    meta: Option<Vec<u8>>,
    status: Option<i16>,
    timer_put_at: Vec<i64>,
    timer_put_id: Vec<i32>,
    timer_del_at: Vec<i64>,
    timer_del_id: Vec<i32>,
    dedupe: Vec<Vec<u8>>,
    gate_put: Vec<Uuid>,
    gate_put_pos: Vec<i32>,
    gate_del: Vec<Uuid>,
    checkpoint: Option<Vec<u8>>,
    answer_id: Vec<i64>,
    answer: Vec<Vec<u8>>,
}

/// The result code of a set-based append that gave the run a final status: its lease was
/// given up in the same row update.
const RELEASED_WITH_END: &str = "ok:released";

impl Encoded {
    /// Whether this append gives its run a final status (the run never changes again).
    fn ends_run(&self) -> bool {
        self.status
            .is_some_and(|status| status >= i16::from(annal_storage::keys::FINAL_STATUS_MIN))
    }

    /// How this append may go in a group's set-based statement, if it may: events and at
    /// most a metadata change, no index changes. Steps, the start of a run without a dedupe
    /// key, and the end of a run without timers are such appends, and they are most appends.
    fn set_kind(&self) -> Option<SetKind> {
        let index_free = self.timer_put_at.is_empty()
            && self.timer_del_at.is_empty()
            && self.dedupe.is_empty()
            && self.gate_put.is_empty()
            && self.gate_del.is_empty()
            && self.checkpoint.is_none()
            && self.answer_id.is_empty();
        if !index_free || self.events.is_empty() {
            return None;
        }
        match (self.expected, &self.meta) {
            (0, Some(_)) => Some(SetKind::Create),
            (0, None) => None,
            (_, None) => Some(SetKind::Events),
            (_, Some(_)) => Some(SetKind::Meta),
        }
    }

    /// Encodes an append whose first record links to `link` (see `annal_storage::chain`);
    /// also returns the run's head after it (`None`: no events).
    fn new(batch: AppendBatch, epoch: i64, link: Link) -> (Self, Option<Link>) {
        let expected = batch.expected_next_seq;
        let mut head = None;
        let mut events = Vec::with_capacity(batch.events.len());
        if !batch.events.is_empty() {
            let mut link = link;
            for (i, payload) in batch.events.iter().enumerate() {
                events.push(frame::encode_linked(&link, payload));
                link = chain::record_hash(batch.run, expected + i as u64, Some(&link), payload);
            }
            head = Some(link);
        }
        let next_seq = expected + batch.events.len() as u64;
        let (meta, status) = match batch.meta {
            Some(mut meta) => {
                meta.next_seq = next_seq;
                (Some(encode_meta(&meta)), Some(i16::from(meta.status)))
            }
            None => (None, None),
        };
        let mut out = Self {
            run: uuid(batch.run),
            epoch,
            leases_new_run: false,
            expected: i64::try_from(expected).unwrap_or(i64::MAX),
            events,
            meta,
            status,
            timer_put_at: Vec::new(),
            timer_put_id: Vec::new(),
            timer_del_at: Vec::new(),
            timer_del_id: Vec::new(),
            dedupe: Vec::new(),
            gate_put: Vec::new(),
            gate_put_pos: Vec::new(),
            gate_del: Vec::new(),
            checkpoint: None,
            answer_id: Vec::new(),
            answer: Vec::new(),
        };
        for op in batch.index {
            match op {
                IndexOp::PutTimer { fire_at_ms, id } => {
                    out.timer_put_at.push(due_ms(fire_at_ms));
                    out.timer_put_id.push(id as i32);
                }
                IndexOp::DeleteTimer { fire_at_ms, id } => {
                    out.timer_del_at.push(due_ms(fire_at_ms));
                    out.timer_del_id.push(id as i32);
                }
                IndexOp::ClaimDedupe { key } => out.dedupe.push(key),
                IndexOp::PutGate { gate, step } => {
                    out.gate_put.push(Uuid::from_bytes(gate.0));
                    out.gate_put_pos.push(step as i32);
                }
                IndexOp::DeleteGate { gate } => out.gate_del.push(Uuid::from_bytes(gate.0)),
                IndexOp::PutCheckpoint { bytes } => out.checkpoint = Some(frame::encode(&bytes)),
                IndexOp::AnswerRequest { id, answer } => {
                    out.answer_id.push(i64::try_from(id).unwrap_or(i64::MAX));
                    out.answer.push(answer);
                }
                // A new kind of index change this backend does not know: refuse loudly
                // rather than drop it (the enum is non-exhaustive).
                #[allow(unreachable_patterns)]
                other => unreachable!("index change {other:?} has no PostgreSQL form"),
            }
        }
        (out, head)
    }
}

/// A group's answer to one job, delivered on the runtime that asked.
enum Answer {
    Append(oneshot::Sender<Result<Position>>, Result<Position>),
    Purge(oneshot::Sender<Result<()>>, Result<()>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Append(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Purge(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// A group's answers, and the appends they answer, to be freed once they are sent.
struct Answers {
    answers: Vec<Answer>,
    // The jobs' own boxes, freed by the thread that allocated them rather than moved out.
    #[allow(clippy::vec_box)]
    spent: Vec<Box<Encoded>>,
}

impl Answers {
    fn deliver(self) {
        for answer in self.answers {
            answer.send();
        }
        drop(self.spent);
    }
}

/// Work for the group committer, done in the order it was queued.
enum Job {
    Append {
        append: Box<Encoded>,
        reply: oneshot::Sender<Result<Position>>,
    },
    /// Give a lease up in the next group.
    Release { run: Uuid, epoch: i64 },
    /// Delete a run and everything that points at it.
    Purge {
        run: Uuid,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// What a set-based append writes besides its events.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SetKind {
    /// Events to a run that exists.
    Events = 0,
    /// A run's first events and its row.
    Create = 1,
    /// Events and a new metadata record (and status).
    Meta = 2,
}

/// The columns of a group's set-based statement: a row per event, and a row per run whose
/// row it creates or whose metadata it changes.
#[derive(Default)]
struct SetRows<'a> {
    runs: Vec<Uuid>,
    seqs: Vec<i64>,
    records: Vec<&'a [u8]>,
    epochs: Vec<i64>,
    priors: Vec<i64>,
    checked: Vec<bool>,
    kinds: Vec<i16>,
    new_runs: Vec<Uuid>,
    new_metas: Vec<&'a [u8]>,
    new_statuses: Vec<i16>,
    new_epochs: Vec<i64>,
    meta_runs: Vec<Uuid>,
    meta_metas: Vec<&'a [u8]>,
    meta_statuses: Vec<i16>,
    meta_epochs: Vec<i64>,
    meta_priors: Vec<i64>,
    meta_checked: Vec<bool>,
}

impl<'a> SetRows<'a> {
    fn push(&mut self, a: &'a Encoded, kind: SetKind, checked: bool) {
        for (i, record) in a.events.iter().enumerate() {
            self.runs.push(a.run);
            self.seqs.push(a.expected + i as i64);
            self.records.push(record.as_slice());
            self.epochs.push(a.epoch);
            self.priors.push(a.expected - 1);
            self.checked.push(checked);
            self.kinds.push(kind as i16);
        }
        let (meta, status) = match (&a.meta, a.status) {
            (Some(meta), Some(status)) => (meta.as_slice(), status),
            _ => return,
        };
        match kind {
            SetKind::Create => {
                self.new_runs.push(a.run);
                self.new_metas.push(meta);
                self.new_statuses.push(status);
                self.new_epochs.push(a.epoch);
            }
            SetKind::Meta => {
                self.meta_runs.push(a.run);
                self.meta_metas.push(meta);
                self.meta_statuses.push(status);
                self.meta_epochs.push(a.epoch);
                self.meta_priors.push(a.expected - 1);
                self.meta_checked.push(checked);
            }
            SetKind::Events => {}
        }
    }
}

/// How a group failed.
enum Failure {
    /// Before its commit: rolled back, nothing written.
    BeforeCommit(Error),
    /// In its commit: the outcome is unknown.
    Commit(Error),
}

impl Failure {
    fn error(self) -> Error {
        match self {
            Failure::BeforeCommit(e) | Failure::Commit(e) => e,
        }
    }
}

/// A statement of the group met a row another writer had inserted (a stale worker's
/// statement racing a takeover).
fn conflicted(e: &Error) -> bool {
    matches!(e, Error::Unavailable { cause } if cause.contains("(SQLSTATE 23505)"))
}

/// A group rolled back for a reason that trying again cures: a deadlock between two
/// workers' groups, or a serialization failure.
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { cause } if cause.contains("(SQLSTATE 40P01)") || cause.contains("(SQLSTATE 40001)"))
}

/// The SQL of one schema.
struct Sql {
    /// The quoted schema name.
    s: String,
    /// The NOTIFY channel.
    channel: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        // A channel is an identifier of at most 63 bytes.
        let mut channel = format!("annal_{schema}");
        channel.truncate(63);
        Self {
            s: schema::quote(schema),
            channel,
        }
    }

    fn append(&self) -> String {
        format!(
            "SELECT {}.append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            self.s
        )
    }

    /// The set-based appends of a group in one statement (see [`SetKind`]): one row per
    /// event, `($1 run, $2 seq, $3 record, $4 epoch, $5 prior, $6 check, $18 kind)` for
    /// worker `$7`; the rows of runs it creates `($8 run, $9 meta, $10 status, $11 epoch)`;
    /// the metadata changes `($12 run, $13 meta, $14 status, $15 epoch, $16 prior, $17 check)`.
    ///
    /// An event of a run that exists is inserted only while the worker holds the run with
    /// that epoch and, where `check` is set, the event `prior` (the one before its append's
    /// first) is there; a metadata change is made on the same two conditions, and the events
    /// of its append go in only if it was; a created run's events go in only if its row did
    /// (`ON CONFLICT DO NOTHING`: a run that exists already is the function's case). Every
    /// condition is read from the one snapshot the statement starts from, so an append lands
    /// whole or not at all. `(run, seq)` is the check that no event is already at an
    /// expected seq (such a row fails the statement, and the group goes again through the
    /// function, which names the conflict). `check` is off where this worker knows the log
    /// ends at the expected seq (it wrote the end itself since it took the lease), which saves
    /// an index probe a step. A metadata change to a final status also gives the lease up
    /// (the run's row names no owner): one row version per run fewer than a release of its
    /// own, and no release to send later. Returns the runs whose events it did not insert
    /// (an append lands whole or not at all).
    ///
    /// Lookups are scalar subqueries and the owner test of the join is `IS NOT DISTINCT
    /// FROM`: each is then a probe of a primary key whatever the planner knows of the tables.
    /// The planner turned `EXISTS` against `runs` into a join that scanned every run this
    /// worker holds once per event (a fresh schema has no statistics), which made a group's
    /// cost grow with the square of its size.
    fn append_set(&self) -> String {
        format!(
            "WITH created AS (
                 INSERT INTO {s}.runs (run, meta, status, owner, epoch)
                 SELECT n.run, n.meta, n.status, $7, n.epoch
                 FROM unnest($8::uuid[], $9::bytea[], $10::smallint[], $11::bigint[]) AS n(run, meta, status, epoch)
                 ON CONFLICT (run) DO NOTHING
                 RETURNING run),
             changed AS (
                 UPDATE {s}.runs r SET meta = m.meta, status = m.status,
                     owner = CASE WHEN m.status >= {final_min} THEN NULL ELSE r.owner END
                 FROM unnest($12::uuid[], $13::bytea[], $14::smallint[], $15::bigint[], $16::bigint[], $17::bool[])
                     AS m(run, meta, status, epoch, prior, checked)
                 WHERE r.run = m.run AND r.owner IS NOT DISTINCT FROM $7 AND r.epoch = m.epoch
                   AND (NOT m.checked OR (SELECT true FROM {s}.events e WHERE e.run = m.run AND e.seq = m.prior))
                 RETURNING r.run),
             inserted AS (
                 INSERT INTO {s}.events (run, seq, record)
                 SELECT ev.run, ev.seq, ev.record
                 FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bigint[], $5::bigint[], $6::bool[], $18::smallint[])
                     AS ev(run, seq, record, epoch, prior, checked, kind)
                 WHERE CASE ev.kind
                     WHEN 0 THEN (SELECT r.owner = $7 AND r.epoch = ev.epoch FROM {s}.runs r WHERE r.run = ev.run)
                         AND (NOT ev.checked OR (SELECT true FROM {s}.events e WHERE e.run = ev.run AND e.seq = ev.prior))
                     WHEN 1 THEN ev.run IN (SELECT run FROM created)
                     ELSE ev.run IN (SELECT run FROM changed)
                 END
                 RETURNING run)
             SELECT COALESCE(array_agg(DISTINCT ev.run), '{{}}')
             FROM unnest($1::uuid[]) AS ev(run)
             WHERE ev.run NOT IN (SELECT run FROM inserted)",
            s = self.s,
            final_min = annal_storage::keys::FINAL_STATUS_MIN,
        )
    }

    /// Deletes run `$1` and everything that points at it.
    fn purge(&self) -> String {
        format!(
            "WITH e AS (DELETE FROM {s}.events WHERE run = $1),
                  d AS (DELETE FROM {s}.due WHERE run = $1),
                  k AS (DELETE FROM {s}.dedupe WHERE run = $1),
                  g AS (DELETE FROM {s}.gates WHERE run = $1),
                  c AS (DELETE FROM {s}.checkpoints WHERE run = $1),
                  q AS (DELETE FROM {s}.requests WHERE run = $1)
             DELETE FROM {s}.runs WHERE run = $1",
            s = self.s
        )
    }

    /// Gives up the leases `($1 run, $2 epoch)` of worker `$3` that it still holds.
    fn release_set(&self) -> String {
        format!(
            "UPDATE {s}.runs r SET owner = NULL
             FROM unnest($1::uuid[], $2::bigint[]) AS l(run, epoch)
             WHERE r.run = l.run AND r.owner IS NOT DISTINCT FROM $3 AND r.epoch = l.epoch",
            s = self.s
        )
    }

    /// A run is claimable when no live worker other than `$2` holds it.
    fn claimable(&self, alias: &str) -> String {
        format!(
            "({alias}.owner IS NULL OR {alias}.owner = $2 OR NOT EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id = {alias}.owner AND w.expires_at > now()))",
            s = self.s
        )
    }
}

struct Shared {
    pool: Pool,
    /// The group committers' connections, made and driven on the committers' own thread.
    commit_pool: Pool,
    sql: Sql,
    config: PgConfig,
    worker: Uuid,
    /// Runs this process holds, with the epoch of its lease.
    held: Mutex<HashMap<RunId, i64>>,
    /// Where the log of a held run ends, when this process wrote that end itself since it
    /// took the lease: no other writer can have moved it, so a step's append needs no check
    /// for a hole before it.
    ends: Mutex<HashMap<RunId, i64>>,
    /// The seq after each run's last record this process appended, and that record's hash:
    /// what its next append links to. Set when an append is queued (so pipelined appends
    /// link up), dropped when one fails.
    heads: Mutex<HashMap<RunId, (u64, Link)>>,
    /// One queue per group committer; a run's jobs always go to the same one, so that they
    /// stay in order.
    commits: Vec<mpsc::UnboundedSender<Job>>,
    positions: AtomicU64,
    /// The dispatcher's queue: a group's answers, delivered on the engine's runtime.
    answers: mpsc::UnboundedSender<Answers>,
    /// What the group committers did, for [`PgStore::commit_stats`].
    stats: CommitCounters,
    hints: mpsc::UnboundedSender<Hint>,
    hints_rx: Mutex<Option<mpsc::UnboundedReceiver<Hint>>>,
    /// Notified whenever a request may have been answered.
    answered: Notify,
    heartbeat_paused: AtomicBool,
    /// When the last heartbeat that succeeded was sent (this process's clock, taken before
    /// the statement, so no later than the database's `now()` of the renewal).
    renewed_at: Mutex<std::time::Instant>,
}

/// What this store's group committers did since it connected: how well appends of many runs
/// share a transaction. A group is one transaction; appends per group near the number of
/// runs that append at once mean each commit is shared by all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitStats {
    /// Transactions committed (or tried: a failed group counts).
    pub groups: u64,
    /// Appends in those groups.
    pub appends: u64,
    /// Appends that went through the schema's `append` function one by one (index changes,
    /// several appends of one run in a group, or what the set-based statement refused)
    /// rather than the group's set-based statement.
    pub function_calls: u64,
}

#[derive(Default)]
struct CommitCounters {
    groups: AtomicU64,
    appends: AtomicU64,
    function_calls: AtomicU64,
}

/// annal's log in PostgreSQL. See the crate documentation.
pub struct PgStore {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::AbortHandle>,
    /// Stops the group committers' threads.
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: not shown.
        f.debug_struct("PgStore")
            .field("schema", &self.shared.config.schema)
            .field("worker", &self.shared.worker)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.stop.send(true);
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema (refusing one newer than this code), and
    /// registers this process as a worker. Must be called inside a tokio runtime.
    pub async fn connect(config: PgConfig) -> Result<Self> {
        let pg = tokio_postgres::Config::from_str(&config.url)
            .map_err(|e| unavailable(format!("bad PostgreSQL URL: {e}")))?;
        let pool = connection_pool(pg.clone(), config.pool_size.max(2))?;
        let mut commit_pg = pg.clone();
        // A group's statements touch at most the group's rows, each by its key: a plan that
        // scans a table is never right for them, and the planner picks one while its
        // statistics lag a young, fast-growing table (seen: a hash join that read every run
        // once per group, so that each group cost more as history grew).
        commit_pg.options("-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off");
        let commit_pool = connection_pool(commit_pg, config.committers.max(1))?;
        {
            let mut client = pool.get().await.map_err(unavailable)?;
            schema::migrate(&mut client, &config.schema).await?;
        }
        let (commits, commit_rxs): (Vec<_>, Vec<_>) = (0..config.committers.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let (hints, hints_rx) = mpsc::unbounded_channel();
        let (answers, mut answers_rx) = mpsc::unbounded_channel::<Answers>();
        let dispatcher = tokio::spawn(async move {
            while let Some(batch) = answers_rx.recv().await {
                batch.deliver();
            }
        });
        let shared = Arc::new(Shared {
            pool,
            commit_pool,
            sql: Sql::new(&config.schema),
            config,
            worker: Uuid::new_v4(),
            held: Mutex::new(HashMap::new()),
            ends: Mutex::new(HashMap::new()),
            heads: Mutex::new(HashMap::new()),
            commits,
            positions: AtomicU64::new(0),
            stats: CommitCounters::default(),
            answers,
            hints,
            hints_rx: Mutex::new(Some(hints_rx)),
            answered: Notify::new(),
            heartbeat_paused: AtomicBool::new(false),
            renewed_at: Mutex::new(std::time::Instant::now()),
        });
        shared.heartbeat().await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        for rx in commit_rxs {
            let (shared, mut stopped) = (Arc::clone(&shared), stopped.clone());
            std::thread::Builder::new()
                .name("annal-pg-commit".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the group committer");
                    runtime.block_on(async move {
                        tokio::select! {
                            () = shared.committer(rx) => {}
                            _ = stopped.wait_for(|s| *s) => {}
                        }
                    });
                })
                .map_err(unavailable)?;
        }
        let mut tasks = vec![dispatcher.abort_handle()];
        tasks.push(tokio::spawn(Arc::clone(&shared).listener(pg)).abort_handle());
        tasks.push(tokio::spawn(Arc::clone(&shared).poller()).abort_handle());
        Ok(Self {
            shared,
            tasks,
            stop,
        })
    }

    /// What the group committers did since this store connected.
    pub fn commit_stats(&self) -> CommitStats {
        let c = &self.shared.stats;
        CommitStats {
            groups: c.groups.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            function_calls: c.function_calls.load(Ordering::Relaxed),
        }
    }

    /// This process's worker id (the `owner` of the runs it executes).
    pub fn worker(&self) -> Uuid {
        self.shared.worker
    }

    /// Stops (or resumes) renewing this worker's heartbeat, so that its leases expire while
    /// it goes on as if it held them: a stalled worker, for tests of fencing and takeover.
    #[doc(hidden)]
    pub fn pause_heartbeat(&self, paused: bool) {
        self.shared
            .heartbeat_paused
            .store(paused, Ordering::Release);
    }

    /// Deletes the schema and everything in it. For tests and tools: there is no undo.
    pub async fn drop_schema(config: &PgConfig) -> Result<()> {
        let (client, connection) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
            .await
            .map_err(unavailable)?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                schema::quote(&config.schema)
            ))
            .await
            .map_err(unavailable);
        drop(client);
        let _ = driver.await;
        result
    }

    /// What the record at `expected` links to: the head this process gave the run (its own
    /// last append, possibly still in flight), else the hash of the stored record before it.
    async fn link_before(&self, run: RunId, expected: u64) -> Result<Link> {
        if let Some((end, head)) = lock(&self.shared.heads).get(&run).copied() {
            if end == expected {
                return Ok(head);
            }
        }
        let previous = self.read(run, expected - 1, 1).await?;
        match previous.first() {
            Some(record) if record.seq == expected - 1 => Ok(record.hash(run)),
            // No record before the expected seq: the append is refused as a conflict (its
            // link does not matter).
            _ => Ok([0; 32]),
        }
    }

    /// The version of the schema `config.schema` holds, or `None` if there is no annal
    /// schema of that name; creates and changes nothing (unlike [`PgStore::connect`]), so a
    /// tool can refuse a mistyped schema instead of creating an empty one.
    pub async fn schema_version(config: &PgConfig) -> Result<Option<i32>> {
        let (client, connection) = tokio_postgres::connect(&config.url, tokio_postgres::NoTls)
            .await
            .map_err(unavailable)?;
        let driver = tokio::spawn(connection);
        let result = async {
            let table = format!("{}.schema_version", schema::quote(&config.schema));
            let exists = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .map_err(unavailable)?;
            if !exists.get::<_, bool>(0) {
                return Ok(None);
            }
            let row = client
                .query_one(&format!("SELECT max(version) FROM {table}"), &[])
                .await
                .map_err(unavailable)?;
            Ok(row.get::<_, Option<i32>>(0))
        }
        .await;
        drop(client);
        let _ = driver.await;
        result
    }

    /// Every run that has metadata or events, in id order, without decoding anything. For
    /// auditors: [`LogStore::runs`] fails at the first damaged metadata record and knows
    /// nothing of events whose metadata row is gone, while an audit must name both.
    pub async fn run_ids(&self) -> Result<Vec<RunId>> {
        let client = self.client().await?;
        let s = &self.shared.sql.s;
        // The runs of the log found by skipping from one run to the next along the primary
        // key, instead of reading every event.
        let rows = client
            .query(
                &format!(
                    "WITH RECURSIVE logs(run) AS (
                         (SELECT run FROM {s}.events ORDER BY run LIMIT 1)
                         UNION ALL
                         SELECT (SELECT e.run FROM {s}.events e WHERE e.run > logs.run ORDER BY e.run LIMIT 1)
                         FROM logs WHERE logs.run IS NOT NULL
                     )
                     SELECT run FROM logs WHERE run IS NOT NULL
                     UNION
                     SELECT run FROM {s}.runs
                     ORDER BY 1"
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| run_id(r.get(0))).collect())
    }

    /// Every due-time entry, earliest first, whichever worker holds its run, and entries
    /// whose run does not exist. For auditors: [`LogStore::due_timers`] lists only what
    /// this worker may wake.
    pub async fn due_entries(&self) -> Result<Vec<TimerEntry>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT fire_at_ms, run, id FROM {}.due ORDER BY fire_at_ms, run, id",
                    self.shared.sql.s
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(timer_entry).collect())
    }

    /// Every start-dedupe key with the run holding it, in key order. For auditors.
    pub async fn dedupe_entries(&self) -> Result<Vec<(Vec<u8>, RunId)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT key, run FROM {}.dedupe ORDER BY key",
                    self.shared.sql.s
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| (r.get(0), run_id(r.get(1)))).collect())
    }

    /// The index of every stored tree head, in order, without reading them. For auditors:
    /// [`LogStore::tree_heads`] fails a whole batch at the first damaged row, while an audit
    /// reads them one by one and names the damaged or missing ones.
    pub async fn tree_head_indexes(&self) -> Result<Vec<u64>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT n FROM {}.tree_heads ORDER BY n", self.shared.sql.s),
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0))
            .collect())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.shared.pool.get().await.map_err(unavailable)
    }

    fn epoch(&self, run: RunId) -> Option<i64> {
        lock(&self.shared.held).get(&run).copied()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Registers or renews this worker's heartbeat row.
    async fn heartbeat(&self) -> Result<()> {
        let sent = std::time::Instant::now();
        let client = self.pool.get().await.map_err(unavailable)?;
        let lease_s = self.config.lease_ms as f64 / 1000.0;
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.workers (id, expires_at) VALUES ($1, now() + make_interval(secs => $2))
                     ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
                    s = self.sql.s
                ),
                &[&self.worker, &lease_s],
            )
            .await
            .map_err(unavailable)?;
        *lock(&self.renewed_at) = sent;
        Ok(())
    }

    /// Whether no other worker can have taken this worker's runs: its row expires a lease
    /// after the last renewal's `now()`, which came after `renewed_at`; with a third of the
    /// lease to spare against clock drift and scheduling.
    fn heartbeat_fresh(&self) -> bool {
        let lease = Duration::from_millis(self.config.lease_ms);
        lock(&self.renewed_at).elapsed() + lease / 3 < lease
    }

    /// Applies the jobs of many runs in one transaction, in the order they came: one
    /// pipelined `append` call per append, the lease releases and purges between them, then
    /// one commit. A call that is refused (fenced, conflict, dedupe) writes nothing and
    /// fails alone. A group that fails before its commit (a deadlock on dedupe keys between
    /// two workers' groups) wrote nothing and is tried again; a failed commit fails the whole
    /// group as `Unavailable`, since its outcome is unknown (the runs concerned are reloaded
    /// from the database).
    async fn committer(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let mut group = vec![first];
            while group.len() < self.config.group_max {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let appends = group
                .iter()
                .filter(|job| matches!(job, Job::Append { .. }))
                .count();
            self.stats.groups.fetch_add(1, Ordering::Relaxed);
            self.stats
                .appends
                .fetch_add(appends as u64, Ordering::Relaxed);
            let mut attempt = 0;
            let mut set_based = true;
            let outcome = loop {
                attempt += 1;
                match self.commit_group(&group, set_based).await {
                    Err(Failure::BeforeCommit(e)) if attempt < 5 && retryable(&e) => {
                        tracing::debug!(error = %e, attempt, "group rolled back; trying again");
                    }
                    // The set-based statement met a row another writer inserted: the
                    // function tells each append apart.
                    Err(Failure::BeforeCommit(e)) if set_based && conflicted(&e) => {
                        set_based = false;
                    }
                    other => break other,
                }
            };
            match outcome {
                Ok(codes) => {
                    let mut answers = Answers {
                        answers: Vec::with_capacity(group.len()),
                        spent: Vec::with_capacity(group.len()),
                    };
                    for (job, code) in group.into_iter().zip(codes) {
                        match job {
                            Job::Append { append, reply } => {
                                let result = self.outcome(&append, code).await;
                                answers.answers.push(Answer::Append(reply, result));
                                answers.spent.push(append);
                            }
                            Job::Purge { reply, .. } => {
                                answers.answers.push(Answer::Purge(reply, Ok(())));
                            }
                            Job::Release { .. } => {}
                        }
                    }
                    // One wake-up of the dispatcher on the engine's runtime, which wakes each
                    // waiting append from there (cheaply) and frees the appends where they
                    // were made, rather than this thread doing both, between two groups.
                    // Should that runtime be gone, from here.
                    if let Err(mpsc::error::SendError(answers)) = self.answers.send(answers) {
                        answers.deliver();
                    }
                }
                Err(failure) => {
                    let e = failure.error();
                    tracing::warn!(error = %e, jobs = group.len(), "group commit failed");
                    for job in group {
                        let failed = Error::Unavailable {
                            cause: e.to_string(),
                        };
                        match job {
                            Job::Append { reply, .. } => {
                                let _ = reply.send(Err(failed));
                            }
                            Job::Purge { reply, .. } => {
                                let _ = reply.send(Err(failed));
                            }
                            Job::Release { .. } => {}
                        }
                    }
                }
            }
        }
    }

    /// One group in one transaction; a result code per job (empty for non-appends).
    ///
    /// A connection whose group failed is not given back to the pool: it may still be inside
    /// the transaction (the server rolls it back when the connection closes).
    async fn commit_group(
        &self,
        group: &[Job],
        set_based: bool,
    ) -> std::result::Result<Vec<String>, Failure> {
        let client = self.commit_pool.get().await.map_err(|e| {
            Failure::BeforeCommit(unavailable(format!(
                "no connection for the group commit: {e}"
            )))
        })?;
        let result = self.commit_group_on(&client, group, set_based).await;
        if result.is_err() {
            drop(deadpool_postgres::Object::take(client));
        }
        result
    }

    /// [`Shared::commit_group`] on `client`.
    ///
    /// The appends that need no index change (see [`SetKind`]: steps, most starts and ends)
    /// of runs with no other job in the group go in one statement, fenced and seq-checked
    /// row by row against the runs table: calling the append function once each costs the
    /// server several statements and a subtransaction per append. Whatever that statement
    /// does not insert (a fenced run, a conflict) is then sent through the function, which
    /// says why. Leases given up go in one statement after every append of the group. With
    /// `set_based` off every append goes through the function (the retry after that
    /// statement met a concurrent writer).
    ///
    /// One round trip in the common case: `BEGIN`, the set-based statement, the function
    /// calls, the lease releases and `COMMIT` are sent at once (the server runs them in that
    /// order). A group that answers requests takes two, since a request's notification
    /// goes out only if its append landed: the statements, then the notifications and
    /// `COMMIT`. Each round trip waits for both this thread and the server's backend to be
    /// scheduled, which on a busy machine costs more than many statements.
    async fn commit_group_on(
        &self,
        client: &deadpool_postgres::Object,
        group: &[Job],
        set_based: bool,
    ) -> std::result::Result<Vec<String>, Failure> {
        let before = Failure::BeforeCommit;
        let sql = &self.sql;
        // Prepared before the transaction (once per connection): a statement prepared inside
        // the pipeline would be sent after the ones behind it.
        let ((append, purge, set), (release, notify)) = futures::future::try_join(
            futures::future::try_join3(
                client.prepare_cached(&sql.append()),
                client.prepare_cached(&sql.purge()),
                client.prepare_cached(&sql.append_set()),
            ),
            futures::future::try_join(
                client.prepare_cached(&sql.release_set()),
                client.prepare_cached("SELECT pg_notify($1, $2)"),
            ),
        )
        .await
        .map_err(|e| before(unavailable(e)))?;
        // Which appends take the set-based path: those of runs with no other job in the
        // group (another append, a purge, or a release that must follow it).
        let mut jobs_per_run: HashMap<Uuid, usize> = HashMap::new();
        for job in group {
            let run = match job {
                Job::Append { append, .. } => append.run,
                Job::Purge { run, .. } | Job::Release { run, .. } => *run,
            };
            *jobs_per_run.entry(run).or_default() += 1;
        }
        let in_set: Vec<Option<SetKind>> = group
            .iter()
            .map(|job| match job {
                Job::Append { append, .. } if set_based && jobs_per_run[&append.run] == 1 => {
                    append.set_kind()
                }
                _ => None,
            })
            .collect();
        let mut rows = SetRows::default();
        {
            // Read under the lock, not copied: the guard is gone before the first await.
            let known_ends = lock(&self.ends);
            for (job, kind) in group.iter().zip(&in_set) {
                let (Job::Append { append: a, .. }, Some(kind)) = (job, kind) else {
                    continue;
                };
                let checked = known_ends.get(&run_id(a.run)) != Some(&a.expected);
                rows.push(a, *kind, checked);
            }
        }
        let (released, released_epochs): (Vec<Uuid>, Vec<i64>) = group
            .iter()
            .filter_map(|job| match job {
                Job::Release { run, epoch } => Some((*run, *epoch)),
                _ => None,
            })
            .unzip();
        // Sent together in this order (each future sends its request when first polled,
        // and `join` polls them in order), answered in order.
        let begin = client.batch_execute("BEGIN");
        let set_statement = async {
            if rows.runs.is_empty() {
                return Ok(Vec::new());
            }
            let inserted = client
                .query(
                    &set,
                    &[
                        &rows.runs,
                        &rows.seqs,
                        &rows.records,
                        &rows.epochs,
                        &rows.priors,
                        &rows.checked,
                        &self.worker,
                        &rows.new_runs,
                        &rows.new_metas,
                        &rows.new_statuses,
                        &rows.new_epochs,
                        &rows.meta_runs,
                        &rows.meta_metas,
                        &rows.meta_statuses,
                        &rows.meta_epochs,
                        &rows.meta_priors,
                        &rows.meta_checked,
                        &rows.kinds,
                    ],
                )
                .await?;
            Ok::<Vec<Uuid>, tokio_postgres::Error>(
                inserted.first().map_or_else(Vec::new, |row| row.get(0)),
            )
        };
        let calls = group.iter().zip(&in_set).map(|(job, kind)| {
            let (append, purge) = (&append, &purge);
            async move {
                match job {
                    Job::Append { .. } if kind.is_some() => Ok(String::new()),
                    Job::Append { append: a, .. } => {
                        self.stats.function_calls.fetch_add(1, Ordering::Relaxed);
                        call_append(client, append, &self.worker, a).await
                    }
                    Job::Release { .. } => Ok(String::new()),
                    Job::Purge { run, .. } => {
                        client.execute(purge, &[run]).await?;
                        Ok(String::new())
                    }
                }
            }
        });
        let releases = async {
            if released.is_empty() {
                return Ok(0);
            }
            client
                .execute(&release, &[&released, &released_epochs, &self.worker])
                .await
        };
        // A group with no request to notify of commits in the same round trip: `COMMIT`
        // goes behind its statements. (After an error among them the transaction is aborted,
        // and that `COMMIT` rolls it back.) What the set-based statement refused is then
        // asked of the function on its own, after the commit: nothing was written for it,
        // and the function decides it whole, in a transaction of its own.
        let one_trip = !group
            .iter()
            .any(|job| matches!(job, Job::Append { append, .. } if !append.answer_id.is_empty()));
        let commit_behind = async {
            if one_trip {
                client.batch_execute("COMMIT").await
            } else {
                Ok(())
            }
        };
        let (begun, refused, results, released, committed_behind) = futures::future::join5(
            begin,
            set_statement,
            futures::future::join_all(calls),
            releases,
            commit_behind,
        )
        .await;
        // The first error in the order sent is the cause; those after it only say that the
        // transaction was aborted.
        begun.map_err(|e| before(unavailable(e)))?;
        let refused: HashSet<Uuid> = refused
            .map_err(|e| before(unavailable(e)))?
            .into_iter()
            .collect();
        let results: Vec<String> = results
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| before(unavailable(e)))?;
        released.map_err(|e| before(unavailable(e)))?;
        committed_behind.map_err(|e| Failure::Commit(unavailable(e)))?;
        let mut codes = Vec::with_capacity(group.len());
        let mut answered = Vec::new();
        for ((mut code, job), kind) in results.into_iter().zip(group).zip(&in_set) {
            if let (Job::Append { append: a, .. }, Some(_)) = (job, kind) {
                code = if !refused.contains(&a.run) {
                    if a.ends_run() {
                        RELEASED_WITH_END.to_string()
                    } else {
                        "ok".to_string()
                    }
                } else {
                    // Nothing was inserted for it: the function says why. (Its run has no
                    // release in this group, so the release before this call is not its.)
                    self.stats.function_calls.fetch_add(1, Ordering::Relaxed);
                    match call_append(client, &append, &self.worker, a).await {
                        Ok(code) => code,
                        // On its own after the commit: only this append's outcome is unknown.
                        Err(e) if one_trip => {
                            tracing::warn!(error = %e, "append after a group commit failed");
                            "unavailable".to_string()
                        }
                        Err(e) => return Err(before(unavailable(e))),
                    }
                };
            }
            if let (Job::Append { append, .. }, "ok" | RELEASED_WITH_END) = (job, code.as_str()) {
                answered.extend(append.answer_id.iter().copied());
            }
            codes.push(code);
        }
        if one_trip {
            return Ok(codes);
        }
        let notified = futures::future::join_all(answered.iter().map(|id| {
            let (notify, channel) = (&notify, &self.sql.channel);
            async move {
                client
                    .execute(notify, &[channel, &format!("ans:{id}")])
                    .await
            }
        }));
        let (notified, committed) =
            futures::future::join(notified, client.batch_execute("COMMIT")).await;
        // A failed notification aborted the transaction, and the `COMMIT` behind it rolled
        // it back without an error of its own.
        for result in notified {
            result.map_err(|e| before(unavailable(e)))?;
        }
        committed.map_err(|e| Failure::Commit(unavailable(e)))?;
        Ok(codes)
    }

    /// The position of an append that landed.
    fn position(&self) -> Position {
        Position(self.positions.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// What one append's result code means for its caller.
    async fn outcome(&self, append: &Encoded, code: String) -> Result<Position> {
        let run = run_id(append.run);
        match code.as_str() {
            "ok" => {
                lock(&self.ends).insert(run, append.expected + append.events.len() as i64);
                Ok(self.position())
            }
            RELEASED_WITH_END => {
                // The run's row no longer names this worker: the engine's release that
                // follows has nothing left to give up.
                self.forget(run, append.epoch);
                Ok(self.position())
            }
            "fenced" => {
                self.forget(run, append.epoch);
                Err(Error::Fenced { run })
            }
            "unknown" => Err(Error::UnknownRun(run)),
            other if other.starts_with("dedupe:") && append.leases_new_run => {
                self.forget(run, append.epoch);
                dedupe_taken(run, other)
            }
            "unavailable" => Err(Error::Unavailable {
                cause: "no database connection".into(),
            }),
            "conflict" => {
                // The log is not where this process thought: check it on the next append.
                lock(&self.ends).remove(&run);
                if append.leases_new_run {
                    // Not created here after all: the lease taken for it is not ours.
                    self.forget(run, append.epoch);
                }
                let found = self.log_end(run).await.unwrap_or(0);
                Err(Error::Conflict {
                    run,
                    expected: u64::try_from(append.expected).unwrap_or(0),
                    found,
                })
            }
            other => dedupe_taken(run, other),
        }
    }

    /// Queues a job with the committer of its run.
    fn commit(&self, run: RunId, job: Job) -> Result<()> {
        // Run ids end in random bits (UUID v7): they spread runs evenly.
        let shard = usize::from(run.0[15]) % self.commits.len();
        self.commits[shard].send(job).map_err(|_| Error::Closed)
    }

    /// Drops the lease `epoch` of `run` from what this process holds (fenced, or never won).
    fn forget(&self, run: RunId, epoch: i64) {
        let mut held = lock(&self.held);
        if held.get(&run) == Some(&epoch) {
            held.remove(&run);
            lock(&self.ends).remove(&run);
            lock(&self.heads).remove(&run);
        }
    }

    async fn log_end(&self, run: RunId) -> Result<u64> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let row = client
            .query_one(
                &format!(
                    "SELECT COALESCE(max(seq) + 1, 0) FROM {}.events WHERE run = $1",
                    self.sql.s
                ),
                &[&uuid(run)],
            )
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Listens for notifications on its own connection: requests for runs this process
    /// holds become hints, answers wake whoever waits for them. After the connection is
    /// re-established everything is looked at again (`Hint::Rescan`), since notifications
    /// sent meanwhile are lost.
    async fn listener(self: Arc<Self>, pg: tokio_postgres::Config) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            match self.listen_once(&pg, &mut first).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection lost; polling until it is back")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn listen_once(&self, pg: &tokio_postgres::Config, first: &mut bool) -> Result<()> {
        let (client, mut connection) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(unavailable)?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        client
            .batch_execute(&format!("LISTEN \"{}\"", self.sql.channel))
            .await
            .map_err(unavailable)?;
        if !std::mem::take(first) {
            let _ = self.hints.send(Hint::Rescan);
        }
        self.answered.notify_waiters();
        while let Some(payload) = rx.recv().await {
            if payload.starts_with("ans:") {
                self.answered.notify_waiters();
            } else if let Some(run) = payload
                .strip_prefix("req:")
                .and_then(|r| Uuid::from_str(r).ok())
                .map(run_id)
            {
                if lock(&self.held).contains_key(&run) {
                    let _ = self.hints.send(Hint::Requests(run));
                }
            }
        }
        drop(client);
        match driver.await {
            Ok(Ok(())) => Err(unavailable("notification connection closed")),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Renews the heartbeat, and looks for work no notification announced: runs whose
    /// worker died or that wait for one, and requests for runs this process holds.
    async fn poller(self: Arc<Self>) {
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        let renew = Duration::from_millis((self.config.lease_ms / 3).max(10));
        let mut last_renewal = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::time::sleep(poll).await;
            let mut result = Ok(());
            if last_renewal.elapsed() >= renew && !self.heartbeat_paused.load(Ordering::Acquire) {
                result = self.heartbeat().await;
                if result.is_ok() {
                    last_renewal = tokio::time::Instant::now();
                }
            }
            if result.is_ok() {
                result = self.poll_work().await;
            }
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("database reachable again");
                    let _ = self.hints.send(Hint::Rescan);
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "worker poll failed; retrying");
                }
                Err(_) => {}
            }
        }
    }

    async fn poll_work(&self) -> Result<()> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let s = &self.sql.s;
        let claimable = self.sql.claimable("r");
        let rows = client
            .query(
                &format!(
                    "SELECT r.run FROM {s}.runs r
                     WHERE r.status < 10 AND {claimable}
                       AND (r.status = 1 OR EXISTS (
                           SELECT 1 FROM {s}.requests q WHERE q.run = r.run AND q.answer IS NULL))
                     LIMIT $1"
                ),
                &[&256i64, &self.worker],
            )
            .await
            .map_err(unavailable)?;
        let held: Vec<Uuid> = lock(&self.held).keys().map(|r| uuid(*r)).collect();
        for row in rows {
            // Runs this process holds are in memory here; one it owns in the database but
            // no longer holds (a release or a commit that did not land) is taken again.
            let run: Uuid = row.get(0);
            if !held.contains(&run) {
                let _ = self.hints.send(Hint::TakeOver(run_id(run)));
            }
        }
        if !held.is_empty() {
            let rows = client
                .query(
                    &format!(
                        "SELECT DISTINCT run FROM {s}.requests WHERE answer IS NULL AND run = ANY($1)"
                    ),
                    &[&held],
                )
                .await
                .map_err(unavailable)?;
            for row in rows {
                let _ = self.hints.send(Hint::Requests(run_id(row.get(0))));
            }
        }
        Ok(())
    }
}

/// A pool of at most `max_size` connections to `pg`.
fn connection_pool(pg: tokio_postgres::Config, max_size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(unavailable)
}

/// One call of the schema's append function; its result code.
async fn call_append(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    worker: &Uuid,
    a: &Encoded,
) -> std::result::Result<String, tokio_postgres::Error> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 18] = [
        &a.run,
        worker,
        &a.epoch,
        &a.expected,
        &a.events,
        &a.meta,
        &a.status,
        &a.timer_put_at,
        &a.timer_put_id,
        &a.timer_del_at,
        &a.timer_del_id,
        &a.dedupe,
        &a.gate_put,
        &a.gate_put_pos,
        &a.gate_del,
        &a.checkpoint,
        &a.answer_id,
        &a.answer,
    ];
    let row = client.query_one(statement, &params).await?;
    Ok(row.get(0))
}

/// The error of a `dedupe:<holder>` result code.
fn dedupe_taken(run: RunId, code: &str) -> Result<Position> {
    match code
        .strip_prefix("dedupe:")
        .and_then(|id| Uuid::from_str(id).ok())
    {
        Some(existing) => Err(Error::DedupeTaken {
            existing: run_id(existing),
        }),
        None => Err(unavailable(format!(
            "unexpected append result {code:?} for run {run}"
        ))),
    }
}

/// A due-time row: `(fire_at_ms, run, id)`.
fn timer_entry(row: &tokio_postgres::Row) -> TimerEntry {
    TimerEntry {
        fire_at_ms: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        run: run_id(row.get(1)),
        id: row.get::<_, i32>(2) as u32,
    }
}

fn record_run(row: &tokio_postgres::Row) -> Result<(RunId, RunMeta)> {
    let run = run_id(row.get(0));
    let bytes: Vec<u8> = row.get(1);
    let last: Option<i64> = row.get(2);
    let meta = decode_meta(run, &bytes)?;
    Ok((
        run,
        meta_with_log_end(meta, last.and_then(|s| u64::try_from(s).ok())),
    ))
}

#[async_trait::async_trait]
impl LogStore for PgStore {
    async fn append(&self, batch: AppendBatch) -> Result<Position> {
        let run = batch.run;
        // A run this process creates is its own from the first append: pipelined appends
        // after it carry its epoch. Without a lease the append is sent anyway, so that the
        // database says what is wrong (fenced, no such run, wrong seq).
        let creates = batch.expected_next_seq == 0 && batch.meta.is_some();
        let (epoch, took_lease) = {
            let mut held = lock(&self.shared.held);
            match held.get(&run) {
                Some(epoch) => (*epoch, false),
                None if creates => {
                    held.insert(run, 1);
                    (1, true)
                }
                None => (0, false),
            }
        };
        let expected = batch.expected_next_seq;
        let link = if batch.events.is_empty() {
            [0; 32]
        } else if expected == 0 {
            chain::genesis(run)
        } else {
            self.link_before(run, expected).await?
        };
        let (reply, answer) = oneshot::channel();
        let (append, head) = Encoded::new(batch, epoch, link);
        let mut append = Box::new(append);
        append.leases_new_run = took_lease;
        if let Some(head) = head {
            // Taken as the run's head at once, for appends pipelined behind this one; dropped
            // if this one fails.
            lock(&self.shared.heads).insert(run, (expected + append.events.len() as u64, head));
        }
        let job = Job::Append { append, reply };
        self.shared.commit(run, job)?;
        let result = answer.await.map_err(|_| Error::Closed)?;
        if result.is_err() {
            lock(&self.shared.heads).remove(&run);
        }
        result
    }

    async fn wait_durable(&self, _position: Position) -> Result<()> {
        // An append returns once its transaction committed, with synchronous_commit on.
        Ok(())
    }

    async fn wait_applied_durable(&self) -> Result<()> {
        Ok(())
    }

    async fn read(&self, run: RunId, from_seq: u64, max: usize) -> Result<Vec<Record>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT seq, record FROM {}.events WHERE run = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                    self.shared.sql.s
                ),
                &[
                    &uuid(run),
                    &i64::try_from(from_seq).unwrap_or(i64::MAX),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .zip(from_seq..)
            .map(|(row, expected)| {
                let seq = u64::try_from(row.get::<_, i64>(0)).unwrap_or(u64::MAX);
                let bytes: &[u8] = row.get(1);
                check_record(run, expected, seq, bytes)
            })
            .collect()
    }

    async fn meta(&self, run: RunId) -> Result<Option<RunMeta>> {
        let client = self.client().await?;
        let s = &self.shared.sql.s;
        let row = client
            .query_opt(
                &format!(
                    "SELECT r.run, r.meta, (SELECT max(seq) FROM {s}.events e WHERE e.run = r.run)
                     FROM {s}.runs r WHERE r.run = $1"
                ),
                &[&uuid(run)],
            )
            .await
            .map_err(unavailable)?;
        row.map(|row| record_run(&row).map(|(_, meta)| meta))
            .transpose()
    }

    async fn runs(&self) -> Result<Vec<(RunId, RunMeta)>> {
        let client = self.client().await?;
        let s = &self.shared.sql.s;
        let rows = client
            .query(
                &format!(
                    "SELECT r.run, r.meta, (SELECT max(seq) FROM {s}.events e WHERE e.run = r.run)
                     FROM {s}.runs r ORDER BY r.run"
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(record_run).collect()
    }

    async fn runs_with_status(&self, status: u8) -> Result<Vec<RunId>> {
        if !keys::status_is_indexed(status) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT run FROM {}.runs WHERE status = $1 ORDER BY run",
                    self.shared.sql.s
                ),
                &[&i16::from(status)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(|r| run_id(r.get(0))).collect())
    }

    async fn due_timers(&self, up_to_ms: u64, max: usize) -> Result<Vec<TimerEntry>> {
        let client = self.client().await?;
        let s = &self.shared.sql.s;
        // Only runs this worker may take: another live worker wakes its own.
        let claimable = self.shared.sql.claimable("r");
        let rows = client
            .query(
                &format!(
                    "SELECT d.fire_at_ms, d.run, d.id FROM {s}.due d JOIN {s}.runs r ON r.run = d.run
                     WHERE d.fire_at_ms <= $1 AND {claimable}
                     ORDER BY d.fire_at_ms, d.run, d.id LIMIT $3"
                ),
                &[
                    &due_ms(up_to_ms),
                    &self.shared.worker,
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(timer_entry).collect())
    }

    async fn next_timer(&self) -> Result<Option<TimerEntry>> {
        Ok(self.due_timers(u64::MAX, 1).await?.into_iter().next())
    }

    async fn dedupe(&self, key: &[u8]) -> Result<Option<RunId>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT run FROM {}.dedupe WHERE key = $1",
                    self.shared.sql.s
                ),
                &[&key],
            )
            .await
            .map_err(unavailable)?;
        // A committed claim is durable: the holder can be handed out at once.
        Ok(row.map(|r| run_id(r.get(0))))
    }

    async fn gate(&self, gate: GateId) -> Result<Option<(RunId, u32)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT run, position FROM {}.gates WHERE gate = $1",
                    self.shared.sql.s
                ),
                &[&Uuid::from_bytes(gate.0)],
            )
            .await
            .map_err(unavailable)?;
        Ok(row.map(|r| (run_id(r.get(0)), r.get::<_, i32>(1) as u32)))
    }

    async fn gates(&self) -> Result<Vec<(GateId, RunId, u32)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT gate, run, position FROM {}.gates ORDER BY gate",
                    self.shared.sql.s
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| {
                let gate: Uuid = r.get(0);
                (
                    GateId(*gate.as_bytes()),
                    run_id(r.get(1)),
                    r.get::<_, i32>(2) as u32,
                )
            })
            .collect())
    }

    async fn checkpoint(&self, run: RunId) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT record FROM {}.checkpoints WHERE run = $1",
                    self.shared.sql.s
                ),
                &[&uuid(run)],
            )
            .await
            .map_err(unavailable)?;
        row.map(|r| decode_checkpoint(r.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn purge(&self, run: RunId) -> Result<()> {
        // Through the committer, so that it comes after the appends queued before it.
        let (reply, answer) = oneshot::channel();
        self.shared.commit(
            run,
            Job::Purge {
                run: uuid(run),
                reply,
            },
        )?;
        answer.await.map_err(|_| Error::Closed)??;
        lock(&self.shared.held).remove(&run);
        lock(&self.shared.ends).remove(&run);
        lock(&self.shared.heads).remove(&run);
        Ok(())
    }

    async fn put_tree_head(&self, body: Vec<u8>) -> Result<u64> {
        let framed = frame::encode(&body);
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {s}.tree_heads (n, body)
             SELECT COALESCE(max(n) + 1, 0), $1 FROM {s}.tree_heads RETURNING n",
            s = self.shared.sql.s
        );
        // Two workers writing at once pick the same index: the second tries again.
        for _ in 0..8 {
            match client.query_one(&sql, &[&framed]).await {
                Ok(row) => return Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable("tree head: too many concurrent writers"))
    }

    async fn tree_heads(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT n, body FROM {}.tree_heads WHERE n >= $1 ORDER BY n LIMIT $2",
                    self.shared.sql.s
                ),
                &[
                    &i64::try_from(from).unwrap_or(i64::MAX),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let n = u64::try_from(r.get::<_, i64>(0)).unwrap_or(0);
                Ok((n, decode_checkpoint(r.get::<_, &[u8]>(1))?))
            })
            .collect()
    }

    async fn latest_tree_head(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT n, body FROM {}.tree_heads ORDER BY n DESC LIMIT 1",
                    self.shared.sql.s
                ),
                &[],
            )
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            let n = u64::try_from(r.get::<_, i64>(0)).unwrap_or(0);
            Ok((n, decode_checkpoint(r.get::<_, &[u8]>(1))?))
        })
        .transpose()
    }

    fn durability(&self) -> Durability {
        // As durable as the server's commits (synchronous_commit = on, fsync = on).
        Durability::PowerSafe
    }

    fn shared(&self) -> bool {
        true
    }

    async fn claim(&self, run: RunId) -> Result<()> {
        if self.epoch(run).is_some() {
            return Ok(());
        }
        let client = self.client().await?;
        let s = &self.shared.sql.s;
        let claimable = self.shared.sql.claimable("x");
        let row = client
            .query_opt(
                &format!(
                    "UPDATE {s}.runs r SET owner = $2, epoch = r.epoch + 1
                     WHERE r.run = (SELECT x.run FROM {s}.runs x WHERE x.run = $1 AND {claimable}
                                    FOR UPDATE SKIP LOCKED)
                     RETURNING r.epoch"
                ),
                &[&uuid(run), &self.shared.worker],
            )
            .await
            .map_err(unavailable)?;
        if let Some(row) = row {
            lock(&self.shared.held).insert(run, row.get(0));
            // Whatever this process knew of the log's end is from an earlier lease.
            lock(&self.shared.ends).remove(&run);
            lock(&self.shared.heads).remove(&run);
            return Ok(());
        }
        let owner = client
            .query_opt(
                &format!("SELECT owner FROM {s}.runs WHERE run = $1"),
                &[&uuid(run)],
            )
            .await
            .map_err(unavailable)?;
        match owner {
            None => Err(Error::UnknownRun(run)),
            Some(row) => Err(Error::LeaseHeld {
                run,
                owner: row
                    .get::<_, Option<Uuid>>(0)
                    .map_or_else(|| "(being claimed)".to_string(), |o| o.to_string()),
            }),
        }
    }

    async fn check_lease(&self, run: RunId) -> Result<()> {
        // No round trip: another worker can take a run of this one only once this one gave
        // it up (it is then not held here) or its heartbeat row expired, which this process
        // knows before the database does.
        match self.epoch(run) {
            Some(_) if self.shared.heartbeat_fresh() => Ok(()),
            Some(epoch) => {
                self.shared.forget(run, epoch);
                Err(Error::Fenced { run })
            }
            None => Err(Error::Fenced { run }),
        }
    }

    fn release(&self, run: RunId) {
        let epoch = lock(&self.shared.held).remove(&run);
        lock(&self.shared.ends).remove(&run);
        lock(&self.shared.heads).remove(&run);
        if let Some(epoch) = epoch {
            let _ = self.shared.commit(
                run,
                Job::Release {
                    run: uuid(run),
                    epoch,
                },
            );
        }
    }

    async fn release_all(&self) -> Result<()> {
        // Every run this worker owns in the database, not only those it holds in memory: a
        // release still queued for the committer (a run that just parked, or an operator
        // engine's run) would be lost when the process exits, and a release that did not
        // land would leave the run owned until the heartbeat expires.
        lock(&self.shared.held).clear();
        lock(&self.shared.ends).clear();
        lock(&self.shared.heads).clear();
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE {}.runs SET owner = NULL WHERE owner = $1",
                    self.shared.sql.s
                ),
                &[&self.shared.worker],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn post_request(&self, run: RunId, body: Vec<u8>) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO {}.requests (run, body) VALUES ($1, $2) RETURNING id",
                    self.shared.sql.s
                ),
                &[&uuid(run), &body],
            )
            .await
            .map_err(unavailable)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.shared.sql.channel, &format!("req:{}", uuid(run))],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn request_answer(&self, id: u64, wait_ms: u64) -> Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let id = i64::try_from(id).unwrap_or(i64::MAX);
        loop {
            // Registered before the read, so an answer between the two is not missed.
            let answered = self.shared.answered.notified();
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT answer FROM {}.requests WHERE id = $1",
                        self.shared.sql.s
                    ),
                    &[&id],
                )
                .await
                .map_err(unavailable)?;
            drop(client);
            match row.map(|r| r.get::<_, Option<Vec<u8>>>(0)) {
                None => return Err(unavailable(format!("request {id} vanished"))),
                Some(Some(answer)) => return Ok(Some(answer)),
                Some(None) => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // The notification is a hint: poll too.
            let poll = Duration::from_millis(self.shared.config.poll_ms.max(10));
            let _ = tokio::time::timeout((deadline - now).min(poll), answered).await;
        }
    }

    async fn pending_requests(&self, run: RunId) -> Result<Vec<Request>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, body FROM {}.requests WHERE run = $1 AND answer IS NULL ORDER BY id",
                    self.shared.sql.s
                ),
                &[&uuid(run)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| Request {
                id: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                run,
                body: r.get(1),
            })
            .collect())
    }

    async fn answer_request(&self, request: &Request, answer: Vec<u8>) -> Result<()> {
        let run = request.run;
        let epoch = self.epoch(run).ok_or(Error::Fenced { run })?;
        let mut client = self.client().await?;
        let s = &self.shared.sql.s;
        let tx = client.transaction().await.map_err(unavailable)?;
        let updated = tx
            .execute(
                &format!(
                    "UPDATE {s}.requests SET answer = $2 WHERE id = $1 AND answer IS NULL
                     AND EXISTS (SELECT 1 FROM {s}.runs WHERE run = $3 AND owner = $4 AND epoch = $5)"
                ),
                &[
                    &i64::try_from(request.id).unwrap_or(i64::MAX),
                    &answer,
                    &uuid(run),
                    &self.shared.worker,
                    &epoch,
                ],
            )
            .await
            .map_err(unavailable)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.shared.sql.channel, &format!("ans:{}", request.id)],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        if updated == 0 {
            // Answered already (by this worker's own append, or before a takeover), or the
            // lease is gone: either way not this call's to answer.
            tracing::debug!(%run, request = request.id, "request not answered here");
        }
        Ok(())
    }

    fn hints(&self) -> Option<mpsc::UnboundedReceiver<Hint>> {
        lock(&self.shared.hints_rx).take()
    }
}

/// For tests that need a real PostgreSQL server (annal's own, and a service's): where it is,
/// and a fresh schema per test so tests can share one database.
pub mod testing {
    use super::PgConfig;

    /// The environment variable that names the server.
    pub const URL_VAR: &str = "ANNAL_PG_URL";

    /// The server named by `ANNAL_PG_URL`. Without it, a test on a developer's machine is
    /// told how to start one and skipped (`None`); where `CI` or `ANNAL_REQUIRE_PG` is set,
    /// a missing server is a failure, never a silent skip.
    pub fn url_from_env() -> Option<String> {
        if let Ok(url) = std::env::var(URL_VAR) {
            if !url.is_empty() {
                return Some(url);
            }
        }
        let hint = "no PostgreSQL server for this test: run `bash .ci/pg start` (it prints the URL) and export ANNAL_PG_URL=<that URL>; Debian: apt-get install -y postgresql";
        if std::env::var_os("CI").is_some() || std::env::var_os("ANNAL_REQUIRE_PG").is_some() {
            panic!("{URL_VAR} is not set, and CI needs a real server: {hint}");
        }
        eprintln!("skipped: {hint}");
        None
    }

    /// A configuration for `url` in a schema no other test uses, with short leases and
    /// polls so that takeovers happen within a test's patience.
    pub fn fresh(url: &str) -> PgConfig {
        let schema = format!("annal_test_{}", uuid::Uuid::new_v4().simple());
        PgConfig::new(url)
            .schema(schema)
            .lease_ms(2_000)
            .poll_ms(50)
    }
}

#[cfg(test)]
mod tests {
    use super::PgConfig;

    #[test]
    fn a_target_names_hosts_and_database_and_never_the_password() {
        let target = |url: &str| PgConfig::new(url).target();
        assert_eq!(
            target("postgresql://annal:s3cret-pw@db.internal:6543/ledger"),
            "db.internal:6543/ledger"
        );
        assert_eq!(
            target("postgresql://annal@127.0.0.1/annal"),
            "127.0.0.1:5432/annal"
        );
        assert_eq!(
            target("host=a,b port=1,2 user=ops password=s3cret-pw"),
            "a:1,b:2/ops"
        );
        assert_eq!(
            target("postgresql://annal:s3cret-pw@[::1"),
            "(unparseable PostgreSQL URL)"
        );
        for url in [
            "postgresql://annal:s3cret-pw@db/x",
            "user=u password=s3cret-pw host=h",
        ] {
            assert!(!target(url).contains("s3cret"), "{url}");
        }
    }
}
