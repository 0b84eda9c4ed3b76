//! The database as the CLI sees it: the sled store, read record by record so that damage to
//! one record is reported precisely and hides nothing else.
//!
//! The CLI reads the raw tree (`SledStore::raw_tree`) instead of `LogStore::read`, because
//! `read` stops at the first bad record with one error, while an auditor needs every problem
//! and everything still readable. Writes (purge) go through the `LogStore` API.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use annal::Event;
use annal_storage::{frame, keys, Durability, RunId, RunMeta, SledConfig, SledStore};
use anyhow::{bail, Context as _};

/// The file sled keeps its log in; its presence tells a database directory from any other.
const SLED_DATA_FILE: &str = "db";

/// How the CLI will use the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading only: no group commit or fsync machinery needed.
    Read,
    /// Writing (purge, decisions): every change is made power-safe before it is reported.
    Write,
}

/// An open annal database.
pub struct Database {
    store: std::sync::Arc<SledStore>,
    path: PathBuf,
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
}

/// One thing wrong with the stored data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Where.
    pub subject: Subject,
    /// What, in words.
    pub reason: String,
}

impl Problem {
    fn event(run: RunId, seq: u64, reason: impl Into<String>) -> Self {
        Self {
            subject: Subject::Event { run, seq },
            reason: reason.into(),
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
        }
    }
}

/// A run's event records as read from the tree.
#[derive(Debug, Default)]
pub struct RunScan {
    /// The intact events from seq 0 up to the first problem.
    pub events: Vec<Event>,
    /// Every damaged or missing record.
    pub problems: Vec<Problem>,
    /// Event records found (damaged ones included).
    pub records: u64,
    /// The highest seq present.
    pub last_seq: Option<u64>,
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
    pub fn record(&self) -> annal::audit::RunRecord {
        annal::audit::RunRecord::from_history(self.run, self.meta.as_ref(), &self.scan.events)
    }
}

/// The tree's key/value pairs as sled hands them out.
type Entry = (sled::IVec, sled::IVec);

impl Database {
    /// Opens the database in `path`, which must already exist: a mistyped `--db` must not
    /// create an empty database. Fails with `annal_storage::Error::Locked` (kept in the error
    /// chain) when another process holds it.
    pub fn open(path: &Path, access: Access) -> anyhow::Result<Self> {
        if !path.join(SLED_DATA_FILE).is_file() {
            bail!(
                "no annal database at {} (no sled `{SLED_DATA_FILE}` file there); pass --db with the engine's data directory",
                path.display()
            );
        }
        let durability = match access {
            Access::Read => Durability::Buffered,
            Access::Write => Durability::PowerSafe,
        };
        let store = SledStore::open(SledConfig::new(path).durability(durability))?;
        Ok(Self {
            store: std::sync::Arc::new(store),
            path: path.to_path_buf(),
        })
    }

    /// An operator-only engine on this store (no workflow code, no recovery): records
    /// decisions and operator actions with the service's checks, leaving the run `Running`
    /// for the service to resume. Shut it down after use.
    pub async fn operator_engine(&self) -> annal::Result<annal::Engine> {
        annal::Engine::builder()
            .store(self.shared())
            .operator_only()
            .open()
            .await
    }

    /// The store shared, for an operator-only engine (decisions).
    pub fn shared(&self) -> std::sync::Arc<dyn annal_storage::LogStore> {
        self.store.clone()
    }

    /// The store, for writes through the `LogStore` API.
    pub fn store(&self) -> &SledStore {
        &self.store
    }

    fn tree(&self) -> &sled::Tree {
        self.store.raw_tree()
    }

    /// Every key/value pair under `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = anyhow::Result<Entry>> + '_ {
        self.tree()
            .scan_prefix(prefix)
            .map(|item| item.context("reading the sled tree"))
    }

    /// Every run that has metadata or events, in id order.
    pub fn run_ids(&self) -> anyhow::Result<BTreeSet<RunId>> {
        let mut runs = BTreeSet::new();
        for item in self.scan_prefix(&[keys::META]) {
            let (key, _) = item?;
            if let Some(run) = keys::parse_meta(&key) {
                runs.insert(run);
            }
        }
        // Runs whose metadata is lost still have events; jump from run to run instead of
        // reading every event key.
        let mut from = vec![keys::EVENT];
        while let Some(item) = self.tree().range(from.clone()..).next() {
            let (key, _) = item.context("reading the sled tree")?;
            if key.first() != Some(&keys::EVENT) {
                break;
            }
            let Some(id) = key.get(1..17).and_then(|id| <[u8; 16]>::try_from(id).ok()) else {
                // A malformed short key: step over it (verify reports it).
                from = key.to_vec();
                from.push(0);
                continue;
            };
            runs.insert(RunId(id));
            from = keys::event(RunId(id), u64::MAX);
            from.push(0);
        }
        Ok(runs)
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
            .filter(|run| hex(run).starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [run] => Ok(*run),
            [] => bail!("no run matches '{prefix}' in {}", self.path.display()),
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
    pub fn meta(&self, run: RunId) -> anyhow::Result<Result<Option<RunMeta>, Problem>> {
        let Some(bytes) = self
            .tree()
            .get(keys::meta(run))
            .context("reading the sled tree")?
        else {
            return Ok(Ok(None));
        };
        // Metadata is written on status changes only; the log's end is its last event key.
        let last_event_seq = match self.tree().scan_prefix(keys::event_prefix(run)).next_back() {
            Some(item) => {
                let (key, _) = item.context("reading the sled tree")?;
                keys::parse_event(&key).map(|(_, seq)| seq)
            }
            None => None,
        };
        Ok(annal_storage::decode_meta(run, &bytes)
            .map(|meta| Some(annal_storage::meta_with_log_end(meta, last_event_seq)))
            .map_err(|e| Problem {
                subject: Subject::Meta { run },
                reason: match e {
                    annal_storage::Error::CorruptMeta { reason, .. } => {
                        format!("corrupt metadata: {reason}")
                    }
                    other => other.to_string(),
                },
            }))
    }

    /// The run's stored checkpoint value (framed), if it has one.
    pub fn checkpoint(&self, run: RunId) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .tree()
            .get(keys::checkpoint(run))
            .context("reading the sled tree")?
            .map(|v| v.to_vec()))
    }

    /// Reads a run's event records one by one, checking keys, seq continuity, frames and
    /// event decoding. One bad record is reported and the scan goes on, so every problem is
    /// found.
    pub fn scan_events(&self, run: RunId) -> anyhow::Result<RunScan> {
        let mut scan = RunScan::default();
        let mut expected = 0u64;
        let mut intact = true;
        for item in self.scan_prefix(&keys::event_prefix(run)) {
            let (key, value) = item?;
            let Some((_, seq)) = keys::parse_event(&key) else {
                scan.problems.push(Problem {
                    subject: Subject::Run { run },
                    reason: format!("malformed event key {}", hex_bytes(&key)),
                });
                intact = false;
                continue;
            };
            scan.records += 1;
            scan.last_seq = Some(seq);
            if seq > expected {
                let reason = match (expected, seq - expected) {
                    (0, 1) => "missing: the log starts at seq 1".to_string(),
                    (0, _) => format!("missing: the log starts at seq {seq} (seqs 0..={} absent)", seq - 1),
                    (_, 1) => format!("missing: the log jumps from seq {} to seq {seq}", expected - 1),
                    (_, _) => format!(
                        "missing: the log jumps from seq {} to seq {seq} (seqs {expected}..={} absent)",
                        expected - 1,
                        seq - 1
                    ),
                };
                scan.problems.push(Problem::event(run, expected, reason));
                intact = false;
            }
            expected = seq.saturating_add(1);
            let event = match frame::decode(&value) {
                Err(e) => Err(format!("corrupt frame: {e}")),
                Ok(payload) => match annal::codec::decode_event(payload) {
                    Err(e) => Err(e.to_string()),
                    Ok(event) if event.seq != seq => {
                        Err(format!("the event inside says seq {}", event.seq))
                    }
                    Ok(event) => Ok(event),
                },
            };
            match event {
                Ok(event) if intact => scan.events.push(event),
                Ok(_) => {}
                Err(reason) => {
                    scan.problems.push(Problem::event(run, seq, reason));
                    intact = false;
                }
            }
        }
        Ok(scan)
    }

    /// Loads a run for display: metadata and events, problems noted rather than fatal.
    pub fn load(&self, run: RunId) -> anyhow::Result<Loaded> {
        let (meta, meta_problem) = match self.meta(run)? {
            Ok(meta) => (meta, None),
            Err(problem) => (None, Some(problem)),
        };
        Ok(Loaded {
            run,
            meta,
            meta_problem,
            scan: self.scan_events(run)?,
        })
    }
}

/// A run id as 32 hex digits, the form prefixes are matched against.
fn hex(run: &RunId) -> String {
    hex_bytes(&run.0)
}

/// Bytes as lower-case hex.
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
