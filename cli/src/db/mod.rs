//! The database as the CLI sees it, wherever it lives: a sled directory no process holds
//! (`sled.rs`) or a PostgreSQL schema that services may be using at the same moment
//! (`pg.rs`). Commands ask this module and do not care which.
//!
//! Both read record by record, so that damage to one record is reported precisely (run and
//! seq) and hides nothing else: an auditor needs every problem and everything still
//! readable, while `LogStore::read` stops at the first bad record with one error. sled is
//! read from its raw tree (which also finds malformed keys); PostgreSQL through `LogStore`,
//! falling back to one record per read wherever a read fails. Writes (purge) and acts
//! (decisions, operator actions, through an operator-only engine) go through the
//! `LogStore` API on both.

mod pg;
mod sled;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use annal_core::audit::transparency::ChainCheck;
use annal_core::event::Event;
use annal_storage::chain::Link;
use annal_storage::{GateId, LogStore, RunId, RunMeta, TimerEntry};
use anyhow::bail;

/// How the CLI will use the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading only: no group commit or fsync machinery needed.
    Read,
    /// Writing (purge, decisions): every change is made power-safe before it is reported.
    Write,
}

/// Where the database is.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A sled directory (the engine's `path`).
    Sled(&'a Path),
    /// A PostgreSQL database: a libpq URL (it may carry a password: never shown) and the
    /// schema annal's tables live in.
    Pg {
        /// The connection URL.
        url: &'a str,
        /// The schema.
        schema: &'a str,
    },
}

/// An open annal database.
pub struct Database {
    backend: Backend,
    /// The stores' API is async; one thread is plenty for a command-line tool.
    runtime: tokio::runtime::Runtime,
}

enum Backend {
    Sled(sled::SledView),
    Pg(pg::PgView),
}

/// What was found at one place in the database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// An event record.
    Event {
        /// Its run.
        run: RunId,
        /// Its seq.
        seq: u64,
    },
    /// A run's metadata record.
    Meta {
        /// The run.
        run: RunId,
    },
    /// A run as a whole.
    Run {
        /// The run.
        run: RunId,
    },
    /// An index entry not tied to one readable run.
    Index,
    /// A stored tree head or a checkpoint as a whole (`label` names it).
    Checkpoint {
        /// "tree head #3", "the checkpoint".
        label: String,
    },
}

/// One thing wrong with the stored data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Where.
    pub subject: Subject,
    /// What, in words.
    pub reason: String,
    /// The run an index entry points at, for [`Subject::Index`] problems that have one.
    pub index_run: Option<RunId>,
}

impl Problem {
    /// A problem of one event record.
    pub fn event(run: RunId, seq: u64, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Event { run, seq },
            reason: reason.into(),
            index_run: None,
        }
    }

    /// A problem of a run's metadata.
    pub fn meta(run: RunId, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Meta { run },
            reason: reason.into(),
            index_run: None,
        }
    }

    /// A problem of a run as a whole.
    pub fn run(run: RunId, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Run { run },
            reason: reason.into(),
            index_run: None,
        }
    }

    /// A problem of an index entry, with the run it points at if it names one.
    pub fn index(reason: impl Into<String>, run: Option<RunId>) -> Self {
        Self {
            subject: Subject::Index,
            reason: reason.into(),
            index_run: run,
        }
    }

    /// A problem of a stored tree head or a checkpoint as a whole.
    pub fn checkpoint(label: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Checkpoint {
                label: label.into(),
            },
            reason: reason.into(),
            index_run: None,
        }
    }

    /// The run the problem concerns, if any.
    pub fn concerns(&self) -> Option<RunId> {
        match self.subject {
            Subject::Event { run, .. } | Subject::Meta { run } | Subject::Run { run } => Some(run),
            Subject::Index => self.index_run,
            Subject::Checkpoint { .. } => None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Event { run, seq } => write!(f, "run {run} seq {seq}: {}", self.reason),
            Subject::Meta { run } => write!(f, "run {run} meta: {}", self.reason),
            Subject::Run { run } => write!(f, "run {run}: {}", self.reason),
            Subject::Index => write!(f, "index: {}", self.reason),
            Subject::Checkpoint { label } => write!(f, "{label}: {}", self.reason),
        }
    }
}

/// A run's metadata as read: present, absent (`Ok(None)`), or damaged (the problem).
pub type MetaRead = Result<Option<RunMeta>, Problem>;

/// The metadata problem a damaged metadata record is reported as.
fn corrupt_meta(run: RunId, e: annal_storage::Error) -> Problem {
    Problem::meta(
        run,
        match e {
            annal_storage::Error::CorruptMeta { reason, .. } => {
                format!("corrupt metadata: {reason}")
            }
            other => other.to_string(),
        },
    )
}

/// A run's event records as read from the store.
#[derive(Debug)]
pub struct RunScan {
    /// The intact events from seq 0 up to the first problem.
    pub events: Vec<Event>,
    /// Every damaged or missing record, and every break of the run's hash chain.
    pub problems: Vec<Problem>,
    /// Event records found (damaged ones included).
    pub records: u64,
    /// The highest seq present.
    pub last_seq: Option<u64>,
    /// The run's hash chain, link by link.
    pub chain: ChainCheck,
    /// The seq the next record should have.
    expected: u64,
    /// A problem was found: later events are not handed out as history.
    broken: bool,
}

/// A stored record as a backend hands it to [`RunScan::found`]: its link (`None`: format 1)
/// and payload, or why its frame is damaged.
pub type Found<'a> = Result<(Option<&'a Link>, &'a [u8]), String>;

impl RunScan {
    /// Nothing read yet of `run`.
    pub fn new(run: RunId) -> Self {
        Self {
            events: Vec::new(),
            problems: Vec::new(),
            records: 0,
            last_seq: None,
            chain: ChainCheck::new(run),
            expected: 0,
            broken: false,
        }
    }

    /// A record found at `seq`, in seq order. Seqs skipped since the last record are
    /// reported as missing; the record must link to the one before it (a break is reported
    /// at the earlier record of the two, see `ChainBreak`), and its event must decode and
    /// carry its own seq.
    fn found(&mut self, run: RunId, seq: u64, frame: Found<'_>) {
        self.records += 1;
        self.last_seq = Some(seq);
        let expected = self.expected;
        if seq > expected {
            let reason = match (expected, seq - expected) {
                (0, 1) => "missing: the log starts at seq 1".to_string(),
                (0, _) => format!(
                    "missing: the log starts at seq {seq} (seqs 0..={} absent)",
                    seq - 1
                ),
                (_, 1) => format!(
                    "missing: the log jumps from seq {} to seq {seq}",
                    expected - 1
                ),
                (_, _) => format!(
                    "missing: the log jumps from seq {} to seq {seq} (seqs {expected}..={} absent)",
                    expected - 1,
                    seq - 1
                ),
            };
            self.problems.push(Problem::event(run, expected, reason));
            self.broken = true;
        }
        self.expected = seq.saturating_add(1);
        let breaks = self.chain.chain().breaks.len();
        match &frame {
            Ok((link, payload)) => self.chain.record(seq, *link, payload),
            Err(_) => self.chain.unreadable(seq),
        }
        for broken in &self.chain.chain().breaks[breaks..] {
            self.problems
                .push(Problem::event(run, broken.seq(), broken.to_string()));
            self.broken = true;
        }
        let event = frame.and_then(
            |(_, payload)| match annal_core::codec::decode_event(payload) {
                Err(e) => Err(e.to_string()),
                Ok(event) if event.seq != seq => {
                    Err(format!("the event inside says seq {}", event.seq))
                }
                Ok(event) => Ok(event),
            },
        );
        match event {
            Ok(event) if !self.broken => self.events.push(event),
            Ok(_) => {}
            Err(reason) => {
                self.problems.push(Problem::event(run, seq, reason));
                self.broken = true;
            }
        }
    }

    /// A key in the run's event range that does not parse as an event key.
    fn malformed(&mut self, problem: Problem) {
        self.problems.push(problem);
        self.broken = true;
    }
}

/// A run loaded for display.
pub struct Loaded {
    /// The run.
    pub run: RunId,
    /// Its metadata, if present and intact.
    pub meta: Option<RunMeta>,
    /// Why the metadata could not be read, if it could not.
    pub meta_problem: Option<Problem>,
    /// Its events.
    pub scan: RunScan,
}

impl Loaded {
    /// Every problem found while loading.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.meta_problem.iter().chain(&self.scan.problems)
    }

    /// When the run was created: from its metadata, else its first event.
    pub fn created_ms(&self) -> Option<u64> {
        self.meta
            .as_ref()
            .map(|m| m.created_ms)
            .or_else(|| self.scan.events.first().map(|e| e.at_ms))
    }

    /// The audit record of what could be read.
    pub fn record(&self) -> annal_core::audit::RunRecord {
        annal_core::audit::RunRecord::from_history(self.run, self.meta.as_ref(), &self.scan.events)
    }
}

/// One entry of an index, as stored.
#[derive(Debug, Clone)]
pub enum IndexEntry {
    /// The status index lists `run` under status `code`.
    Status {
        /// The status code.
        code: u8,
        /// The run.
        run: RunId,
    },
    /// A due time.
    Due(TimerEntry),
    /// An approval gate of `run`.
    Gate {
        /// The gate id as 32 hex digits.
        gate: String,
        /// The run.
        run: RunId,
    },
    /// A start-dedupe key claimed by `run`.
    Dedupe {
        /// The key, as text.
        key: String,
        /// The run.
        run: RunId,
    },
    /// An entry that does not parse: what is wrong with it.
    Malformed(String),
}

/// One entry of the gate index.
#[derive(Debug, Clone)]
pub struct GateEntry {
    /// The gate.
    pub gate: GateId,
    /// The run and command position it belongs to; `None` if the entry is malformed.
    pub target: Option<(RunId, u32)>,
}

/// The database could not be reached, or refused the login: exit code 2, like a locked
/// directory. Whatever was being done may or may not have been carried out.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

impl Database {
    /// Opens the database at `target`, which must already exist: a mistyped `--db` or
    /// `--pg-schema` must not create an empty database. A sled directory another process
    /// holds fails with `annal_storage::Error::Locked` (kept in the error chain); a
    /// PostgreSQL server that cannot be reached with [`Unreachable`].
    pub fn open(target: Target<'_>, access: Access) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let backend = match target {
            Target::Sled(path) => Backend::Sled(sled::SledView::open(path, access)?),
            Target::Pg { url, schema } => Backend::Pg(pg::PgView::open(&runtime, url, schema)?),
        };
        Ok(Self { backend, runtime })
    }

    /// The runtime the store runs on, for async calls (decisions, purge).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Where the database is, for messages (never a password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sled(db) => db.path().display().to_string(),
            Backend::Pg(db) => db.location().to_string(),
        }
    }

    /// Whether services may be writing the database while the CLI reads it (PostgreSQL).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// When a service resumes a run that a decision or an operator action made `Running`,
    /// to complete "the service resumes the run …".
    pub fn resumes(&self) -> &'static str {
        match self.backend {
            Backend::Sled(_) => "when it next opens the database",
            Backend::Pg(_) => "at once if one runs on the database, else when one starts",
        }
    }

    /// The store, for writes and acts through the `LogStore` API.
    pub fn store(&self) -> Arc<dyn LogStore> {
        match &self.backend {
            Backend::Sled(db) => db.store(),
            Backend::Pg(db) => db.store(),
        }
    }

    /// An operator-only engine on this store (no workflow code, no recovery): records
    /// decisions and operator actions with the service's checks. On sled it leaves the run
    /// `Running` for the service to resume; on PostgreSQL it claims the run if no live
    /// worker holds it, and otherwise forwards the act to the worker that executes it and
    /// waits for its answer. Shut it down after use, so that it gives its leases up at once.
    pub async fn operator_engine(&self) -> annal::Result<annal::Engine> {
        annal::Engine::builder()
            .store(self.store())
            .operator_only()
            .open()
            .await
    }

    /// Awaits an act of the operator engine; on a shared database, says on stderr what it
    /// waits for if that takes a while (a forwarded act waits for the worker executing the
    /// run).
    pub async fn acting<T>(&self, run: RunId, act: impl std::future::Future<Output = T>) -> T {
        if !self.shared() {
            return act.await;
        }
        tokio::pin!(act);
        tokio::select! {
            done = &mut act => return done,
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
        eprintln!(
            "still waiting for run {run}: the worker that executes it carries this out and answers (if interrupted, a request already posted stays: whoever holds the run next carries it out)"
        );
        act.await
    }

    /// Every run that has metadata or events, in id order.
    pub fn run_ids(&self) -> anyhow::Result<BTreeSet<RunId>> {
        match &self.backend {
            Backend::Sled(db) => db.run_ids(),
            Backend::Pg(db) => self.runtime.block_on(db.run_ids()),
        }
    }

    /// Every run with its metadata, checked (`Ok(None)`: it has none), in id order.
    pub fn metas(&self) -> anyhow::Result<Vec<(RunId, MetaRead)>> {
        match &self.backend {
            Backend::Sled(db) => db
                .run_ids()?
                .into_iter()
                .map(|run| Ok((run, db.meta(run)?)))
                .collect(),
            Backend::Pg(db) => self.runtime.block_on(db.metas()),
        }
    }

    /// Finds the run whose id starts with `prefix` (hex digits, dashes ignored, any case).
    pub fn resolve(&self, prefix: &str) -> anyhow::Result<RunId> {
        let wanted: String = prefix
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) || wanted.len() > 32
        {
            bail!("'{prefix}' is not a run id or a prefix of one (hex digits, as `annal runs` prints them)");
        }
        let matches: Vec<RunId> = self
            .run_ids()?
            .into_iter()
            .filter(|run| hex_bytes(&run.0).starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [run] => Ok(*run),
            [] => bail!("no run matches '{prefix}' in {}", self.location()),
            several => {
                let shown: Vec<String> = several.iter().take(5).map(RunId::to_string).collect();
                let more = if several.len() > 5 { ", ..." } else { "" };
                bail!(
                    "'{prefix}' is ambiguous: it matches {} runs ({}{more}); give more digits",
                    several.len(),
                    shown.join(", ")
                )
            }
        }
    }

    /// The run's metadata, checked: `Ok(None)` if it has none.
    pub fn meta(&self, run: RunId) -> anyhow::Result<MetaRead> {
        match &self.backend {
            Backend::Sled(db) => db.meta(run),
            Backend::Pg(db) => self.runtime.block_on(db.meta(run)),
        }
    }

    /// The run's checkpoint (its frame removed), or why it cannot be read; `None` if the run
    /// has none.
    pub fn checkpoint(&self, run: RunId) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        match &self.backend {
            Backend::Sled(db) => db.checkpoint(run),
            Backend::Pg(db) => self.runtime.block_on(db.checkpoint(run)),
        }
    }

    /// Reads a run's event records one by one, checking seq continuity, frames and event
    /// decoding. One bad record is reported and the scan goes on, so every problem is
    /// found. `meta` is the run's metadata as read just before: on a database services
    /// write, the scan stops at the log's end as that read saw it, so that what it returns
    /// is the history the metadata describes (events appended since are left for the next
    /// look).
    pub fn scan_events(&self, run: RunId, meta: Option<&RunMeta>) -> anyhow::Result<RunScan> {
        match &self.backend {
            Backend::Sled(db) => db.scan_events(run),
            Backend::Pg(db) => self
                .runtime
                .block_on(db.scan_events(run, meta.map(|m| m.next_seq))),
        }
    }

    /// Loads a run for display: metadata and events, problems noted rather than fatal.
    pub fn load(&self, run: RunId) -> anyhow::Result<Loaded> {
        let (meta, meta_problem) = match self.meta(run)? {
            Ok(meta) => (meta, None),
            Err(problem) => (None, Some(problem)),
        };
        let scan = self.scan_events(run, meta.as_ref())?;
        Ok(Loaded {
            run,
            meta,
            meta_problem,
            scan,
        })
    }

    /// The index of every stored tree head, in order.
    pub fn tree_head_indexes(&self) -> anyhow::Result<Vec<u64>> {
        match &self.backend {
            Backend::Sled(db) => db.tree_head_indexes(),
            Backend::Pg(db) => self.runtime.block_on(db.tree_head_indexes()),
        }
    }

    /// Stored tree head `index` (its frame removed), or why it cannot be read; `None` if
    /// there is none.
    pub fn tree_head(&self, index: u64) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        match &self.backend {
            Backend::Sled(db) => db.tree_head(index),
            Backend::Pg(db) => self.runtime.block_on(db.tree_head(index)),
        }
    }

    /// Every index entry: status, due times, gates, dedupe keys.
    pub fn index_entries(&self) -> anyhow::Result<Vec<IndexEntry>> {
        match &self.backend {
            Backend::Sled(db) => db.index_entries(),
            Backend::Pg(db) => self.runtime.block_on(db.index_entries()),
        }
    }

    /// Whether the status index lists `run` under status `code`.
    pub fn status_indexed(&self, code: u8, run: RunId) -> anyhow::Result<bool> {
        match &self.backend {
            Backend::Sled(db) => Ok(db.status_indexed(code, run)),
            Backend::Pg(db) => self.runtime.block_on(db.status_indexed(code, run)),
        }
    }

    /// Whether the due-time index has an entry for `run` at `fire_at_ms`.
    pub fn due_indexed(&self, fire_at_ms: u64, run: RunId) -> anyhow::Result<bool> {
        match &self.backend {
            Backend::Sled(db) => Ok(db.due_indexed(fire_at_ms, run)),
            Backend::Pg(db) => self.runtime.block_on(db.due_indexed(fire_at_ms, run)),
        }
    }

    /// Forgets index reads kept for per-run lookups ([`Database::status_indexed`],
    /// [`Database::due_indexed`]), so that the next lookups read the store again.
    pub fn refresh(&self) {
        if let Backend::Pg(db) = &self.backend {
            db.refresh();
        }
    }

    /// Every gate of the index, in gate id order.
    pub fn gates(&self) -> anyhow::Result<Vec<GateEntry>> {
        match &self.backend {
            Backend::Sled(db) => db.gates(),
            Backend::Pg(db) => self.runtime.block_on(db.gates()),
        }
    }

    /// The run and command position of a gate.
    pub fn gate(&self, gate: GateId) -> anyhow::Result<Option<(RunId, u32)>> {
        let store = self.store();
        let found = self.runtime.block_on(store.gate(gate));
        found.map_err(|e| self.storage_error(e))
    }

    /// Deletes a run with its events and index entries, atomically.
    pub fn purge(&self, run: RunId) -> anyhow::Result<()> {
        let store = self.store();
        let purged = self.runtime.block_on(store.purge(run));
        purged.map_err(|e| self.storage_error(e))
    }

    /// A storage error as the CLI reports it: an unreachable PostgreSQL server as
    /// [`Unreachable`].
    fn storage_error(&self, e: annal_storage::Error) -> anyhow::Error {
        match &self.backend {
            Backend::Sled(_) => e.into(),
            Backend::Pg(db) => db.error(e),
        }
    }

    /// What to report when an act of the operator engine failed: `None` for a refusal
    /// (nothing was written, the caller says why); for a database that stopped answering,
    /// an [`Unreachable`] error saying that the outcome is unknown.
    pub fn unconfirmed(&self, what: &str, run: RunId, e: &annal::Error) -> Option<anyhow::Error> {
        match e {
            annal::Error::Storage(annal_storage::Error::Unavailable { cause }) => {
                Some(Unreachable(format!(
                    "{what}: the database at {} stopped answering ({cause}); whether it was recorded is unknown: look at `annal history {run}`",
                    self.location()
                )).into())
            }
            _ => None,
        }
    }
}

/// Bytes as lower-case hex.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
