//! A PostgreSQL schema, read through `LogStore` (`PgStore`) while services may be writing
//! it.
//!
//! Events are read in batches; a batch that fails (a damaged record, a hole) is read again
//! one record at a time (`read(run, seq, 1)`), so each damaged record and each hole is
//! reported with run and seq and the scan goes on past it. A run's events are read only up
//! to the log's end as its metadata read just before saw it, so that metadata and history
//! agree although the run may be moving on meanwhile.
//!
//! Runs, due times and dedupe keys are listed by `PgStore`'s auditor reads
//! (`run_ids`, `due_entries`, `dedupe_entries`): the trait's `runs` fails at the first
//! damaged metadata row, and its `due_timers` lists only what this process may wake.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal_postgres::{PgConfig, PgStore};
use annal_storage::{keys, CorruptReason, Error, LogStore, RunId, RunMeta};
use anyhow::bail;

use super::{corrupt_meta, hex_bytes, GateEntry, IndexEntry, MetaRead, RunScan, Unreachable};

/// Events asked for per read while nothing is wrong.
const BATCH: u64 = 512;

/// How long connecting may take before the CLI gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// An open PostgreSQL database.
pub struct PgView {
    store: Arc<PgStore>,
    /// Host, port, database and schema: what messages name (the URL may hold a password).
    location: String,
    /// The status and due-time indexes, read once for the per-run lookups of `verify`.
    indexes: Mutex<Option<Indexes>>,
}

/// How long index reads are kept for lookups: runs read later than this after the indexes
/// may have changed status since, and would be re-checked for nothing.
const INDEXES_KEPT: Duration = Duration::from_secs(1);

/// What connecting found.
enum Opened {
    Store(PgStore),
    /// No annal schema of that name.
    Missing,
    /// An annal schema of this older version.
    Older(i32),
}

/// The status and due-time indexes as read at one moment.
struct Indexes {
    read_at: std::time::Instant,
    status: HashSet<(u8, RunId)>,
    due: HashSet<(u64, RunId)>,
}

impl PgView {
    /// Connects to the schema `schema`, which must exist at this code's version: a mistyped
    /// `--pg-schema` must not create an empty one, nor an older schema be migrated under
    /// the services that use it (`PgStore::connect` would do either).
    pub fn open(
        runtime: &tokio::runtime::Runtime,
        url: &str,
        schema: &str,
    ) -> anyhow::Result<Self> {
        let config = PgConfig::new(url).schema(schema);
        let target = config.target();
        let location = format!("PostgreSQL {target} (schema {schema})");
        let unreachable = |cause: String| {
            anyhow::Error::new(Unreachable(format!(
                "cannot use the PostgreSQL database at {target}: {cause}"
            )))
        };
        let connected = runtime.block_on(async {
            tokio::time::timeout(CONNECT_TIMEOUT, async {
                match PgStore::schema_version(&config).await? {
                    // Connecting would migrate it, and the services' older code would then
                    // refuse the schema: a tool must not upgrade it behind their back.
                    Some(version) if version < annal_postgres::SCHEMA_VERSION => {
                        Ok(Opened::Older(version))
                    }
                    Some(_) => PgStore::connect(config).await.map(Opened::Store),
                    None => Ok(Opened::Missing),
                }
            })
            .await
        });
        let store = match connected {
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(Error::Unavailable { cause })) => return Err(unreachable(cause)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Opened::Older(version))) => bail!(
                "the annal schema '{schema}' at {target} is version {version}, older than this CLI's ({}); upgrade the services first (they migrate it at start), or use the CLI of their annal version",
                annal_postgres::SCHEMA_VERSION
            ),
            Ok(Ok(Opened::Missing)) => bail!(
                "no annal schema '{schema}' in the PostgreSQL database at {target}; pass --pg-schema with the schema the services use (default: annal)"
            ),
            Ok(Ok(Opened::Store(store))) => store,
        };
        // Nothing here acts on hints of work to take over: dropping the receiver lets the
        // store's poller drop them instead of queueing them.
        drop(store.hints());
        Ok(Self {
            store: Arc::new(store),
            location,
            indexes: Mutex::new(None),
        })
    }

    /// Where the database is, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The store, for writes and the operator engine.
    pub fn store(&self) -> Arc<dyn LogStore> {
        self.store.clone()
    }

    /// A storage error as the CLI reports it: an unreachable server as [`Unreachable`].
    pub fn error(&self, e: Error) -> anyhow::Error {
        match e {
            Error::Unavailable { cause } => Unreachable(format!(
                "the database at {} stopped answering: {cause}",
                self.location
            ))
            .into(),
            other => other.into(),
        }
    }

    /// Every run that has metadata or events, in id order.
    pub async fn run_ids(&self) -> anyhow::Result<BTreeSet<RunId>> {
        let runs = self.store.run_ids().await.map_err(|e| self.error(e))?;
        Ok(runs.into_iter().collect())
    }

    /// Every run with its metadata, in id order: in one read when every metadata record is
    /// intact, else run by run, so that one damaged record is reported for its run alone.
    pub async fn metas(&self) -> anyhow::Result<Vec<(RunId, MetaRead)>> {
        let ids = self.run_ids().await?;
        let mut listed: std::collections::HashMap<RunId, RunMeta> = match self.store.runs().await {
            Ok(runs) => runs.into_iter().collect(),
            Err(Error::CorruptMeta { .. }) => std::collections::HashMap::new(),
            Err(e) => return Err(self.error(e)),
        };
        let mut out = Vec::with_capacity(ids.len());
        for run in ids {
            let meta = match listed.remove(&run) {
                Some(meta) => Ok(Some(meta)),
                // Damaged, lost, or the run was created or purged between the two reads:
                // asked again on its own.
                None => match self.meta(run).await? {
                    Ok(None) if !self.has_events(run).await? => continue,
                    other => other,
                },
            };
            out.push((run, meta));
        }
        Ok(out)
    }

    /// Whether the run has any event record (damaged ones included).
    async fn has_events(&self, run: RunId) -> anyhow::Result<bool> {
        match self.store.read(run, 0, 1).await {
            Ok(records) => Ok(!records.is_empty()),
            Err(Error::Corrupt { .. }) => Ok(true),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The run's metadata, checked: `Ok(None)` if it has none.
    pub async fn meta(&self, run: RunId) -> anyhow::Result<MetaRead> {
        match self.store.meta(run).await {
            Ok(meta) => Ok(Ok(meta)),
            Err(e @ Error::CorruptMeta { .. }) => Ok(Err(corrupt_meta(run, e))),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The run's checkpoint with its frame removed, or why it cannot be; `None` if none.
    pub async fn checkpoint(&self, run: RunId) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        match self.store.checkpoint(run).await {
            Ok(checkpoint) => Ok(checkpoint.map(Ok)),
            Err(e @ Error::CorruptIndex { .. }) => Ok(Some(Err(e.to_string()))),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Reads the run's events up to `end` (the log's end as its metadata said; everything
    /// without metadata): in batches while they are intact, one record at a time through a
    /// batch that is not.
    pub async fn scan_events(&self, run: RunId, end: Option<u64>) -> anyhow::Result<RunScan> {
        let end = end.unwrap_or(u64::MAX);
        let mut scan = RunScan::new(run);
        let mut seq = 0u64;
        'log: while seq < end {
            let want = (end - seq).min(BATCH);
            match self.store.read(run, seq, want as usize).await {
                Ok(records) => {
                    let got = records.len() as u64;
                    for record in records {
                        scan.found(run, record.seq, Ok((record.link.as_ref(), &record.payload)));
                    }
                    seq += got;
                    if got < want {
                        break;
                    }
                }
                Err(Error::Corrupt { .. }) => {
                    // Through this stretch record by record, each problem on its own.
                    let stretch_end = (seq + want).min(end);
                    while seq < stretch_end {
                        match self.store.read(run, seq, 1).await {
                            Ok(records) => match records.first() {
                                None => break 'log,
                                Some(record) => {
                                    scan.found(
                                        run,
                                        record.seq,
                                        Ok((record.link.as_ref(), &record.payload)),
                                    );
                                    seq = record.seq + 1;
                                }
                            },
                            Err(Error::Corrupt {
                                reason:
                                    CorruptReason::Gap {
                                        found_seq: next, ..
                                    },
                                ..
                            }) => {
                                // A hole: the record after it is read next, and reported as
                                // the jump (`RunScan::found`). A record past the end the
                                // metadata saw was appended since: not this look's.
                                if next >= end {
                                    break 'log;
                                }
                                seq = next;
                            }
                            Err(Error::Corrupt {
                                seq: at,
                                reason: CorruptReason::Frame(e),
                                ..
                            }) => {
                                scan.found(run, at, Err(format!("corrupt frame: {e}")));
                                seq = at + 1;
                            }
                            Err(Error::Corrupt {
                                seq: at, reason, ..
                            }) => {
                                scan.found(run, at, Err(reason.to_string()));
                                seq = at + 1;
                            }
                            Err(e) => return Err(self.error(e)),
                        }
                    }
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(scan)
    }

    /// The index of every stored tree head, in order.
    pub async fn tree_head_indexes(&self) -> anyhow::Result<Vec<u64>> {
        self.store
            .tree_head_indexes()
            .await
            .map_err(|e| self.error(e))
    }

    /// Tree head `index` with its frame removed, or why it cannot be; `None` if none.
    pub async fn tree_head(&self, index: u64) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        match self.store.tree_heads(index, 1).await {
            Ok(heads) => Ok(heads
                .into_iter()
                .find(|(n, _)| *n == index)
                .map(|(_, body)| Ok(body))),
            Err(e @ Error::CorruptIndex { .. }) => Ok(Some(Err(e.to_string()))),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Every entry of the status index (statuses below 10), the due-time index, the gate
    /// index and the dedupe keys.
    pub async fn index_entries(&self) -> anyhow::Result<Vec<IndexEntry>> {
        let mut entries: Vec<IndexEntry> = self
            .status_index()
            .await?
            .into_iter()
            .map(|(code, run)| IndexEntry::Status { code, run })
            .collect();
        let due = self.store.due_entries().await.map_err(|e| self.error(e))?;
        entries.extend(due.into_iter().map(IndexEntry::Due));
        let gates = self.store.gates().await.map_err(|e| self.error(e))?;
        entries.extend(gates.into_iter().map(|(gate, run, _)| IndexEntry::Gate {
            gate: hex_bytes(&gate.0),
            run,
        }));
        let dedupe = self
            .store
            .dedupe_entries()
            .await
            .map_err(|e| self.error(e))?;
        entries.extend(dedupe.into_iter().map(|(key, run)| IndexEntry::Dedupe {
            key: String::from_utf8_lossy(&key).into_owned(),
            run,
        }));
        Ok(entries)
    }

    /// The status index: every run of each status that is indexed (below 10).
    async fn status_index(&self) -> anyhow::Result<Vec<(u8, RunId)>> {
        let mut entries = Vec::new();
        for code in 0..keys::FINAL_STATUS_MIN {
            let runs = self
                .store
                .runs_with_status(code)
                .await
                .map_err(|e| self.error(e))?;
            entries.extend(runs.into_iter().map(|run| (code, run)));
        }
        Ok(entries)
    }

    /// The status and due-time indexes, read now unless read less than [`INDEXES_KEPT`]
    /// ago and since the last `refresh`.
    async fn with_indexes<T>(&self, look: impl FnOnce(&Indexes) -> T) -> anyhow::Result<T> {
        if let Some(indexes) = lock(&self.indexes)
            .as_ref()
            .filter(|i| i.read_at.elapsed() < INDEXES_KEPT)
        {
            return Ok(look(indexes));
        }
        let read_at = std::time::Instant::now();
        let status = self.status_index().await?.into_iter().collect();
        let due = self.store.due_entries().await.map_err(|e| self.error(e))?;
        let indexes = Indexes {
            read_at,
            status,
            due: due.into_iter().map(|t| (t.fire_at_ms, t.run)).collect(),
        };
        let answer = look(&indexes);
        *lock(&self.indexes) = Some(indexes);
        Ok(answer)
    }

    /// Whether the status index lists `run` under `code`.
    pub async fn status_indexed(&self, code: u8, run: RunId) -> anyhow::Result<bool> {
        self.with_indexes(|i| i.status.contains(&(code, run))).await
    }

    /// Whether the due-time index has an entry for `run` at `fire_at_ms`.
    pub async fn due_indexed(&self, fire_at_ms: u64, run: RunId) -> anyhow::Result<bool> {
        self.with_indexes(|i| i.due.contains(&(fire_at_ms, run)))
            .await
    }

    /// Forgets the indexes read for lookups.
    pub fn refresh(&self) {
        *lock(&self.indexes) = None;
    }

    /// Every gate, in gate id order.
    pub async fn gates(&self) -> anyhow::Result<Vec<GateEntry>> {
        let gates = self.store.gates().await.map_err(|e| self.error(e))?;
        Ok(gates
            .into_iter()
            .map(|(gate, run, position)| GateEntry {
                gate,
                target: Some((run, position)),
            })
            .collect())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
