//! The sled directory, read from its raw tree (`SledStore::raw_tree`) record by record:
//! malformed keys and damaged values are reported one by one, where `LogStore::read` would
//! stop at the first with one error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annal_storage::{frame, keys, Durability, GateId, LogStore, RunId, SledConfig, SledStore};
use anyhow::{bail, Context as _};

use super::{corrupt_meta, hex_bytes, Access, GateEntry, IndexEntry, MetaRead, Problem, RunScan};

/// The file sled keeps its log in; its presence tells a database directory from any other.
const SLED_DATA_FILE: &str = "db";

/// An open sled database directory.
pub struct SledView {
    store: Arc<SledStore>,
    path: PathBuf,
}

/// The tree's key/value pairs as sled hands them out.
type Entry = (sled::IVec, sled::IVec);

impl SledView {
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
            store: Arc::new(store),
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store, for writes and the operator engine.
    pub fn store(&self) -> Arc<dyn LogStore> {
        self.store.clone()
    }

    fn tree(&self) -> &sled::Tree {
        self.store.raw_tree()
    }

    /// Every key/value pair under `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = anyhow::Result<Entry>> + '_ {
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

    /// The run's metadata, checked: `Ok(None)` if it has none.
    pub fn meta(&self, run: RunId) -> anyhow::Result<MetaRead> {
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
            .map_err(|e| corrupt_meta(run, e)))
    }

    /// The run's checkpoint with its frame removed, or why it cannot be; `None` if none.
    pub fn checkpoint(&self, run: RunId) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        Ok(self
            .tree()
            .get(keys::checkpoint(run))
            .context("reading the sled tree")?
            .map(|raw| annal_storage::decode_checkpoint(&raw).map_err(|e| e.to_string())))
    }

    /// Reads a run's event records one by one, checking keys, seq continuity, frames and
    /// event decoding. One bad record is reported and the scan goes on, so every problem is
    /// found.
    pub fn scan_events(&self, run: RunId) -> anyhow::Result<RunScan> {
        let mut scan = RunScan::new(run);
        for item in self.scan_prefix(&keys::event_prefix(run)) {
            let (key, value) = item?;
            let Some((_, seq)) = keys::parse_event(&key) else {
                scan.malformed(Problem::run(
                    run,
                    format!("malformed event key {}", hex_bytes(&key)),
                ));
                continue;
            };
            let frame = frame::decode_linked(&value).map_err(|e| format!("corrupt frame: {e}"));
            scan.found(run, seq, frame);
        }
        Ok(scan)
    }

    /// The index of every stored tree head, in order (malformed keys skipped).
    pub fn tree_head_indexes(&self) -> anyhow::Result<Vec<u64>> {
        let mut indexes = Vec::new();
        for item in self.tree().scan_prefix([keys::TREE_HEAD]).keys() {
            let key = item.context("reading the sled tree")?;
            indexes.extend(keys::parse_tree_head(&key));
        }
        Ok(indexes)
    }

    /// Tree head `index` with its frame removed, or why it cannot be; `None` if none.
    pub fn tree_head(&self, index: u64) -> anyhow::Result<Option<Result<Vec<u8>, String>>> {
        Ok(self
            .tree()
            .get(keys::tree_head(index))
            .context("reading the sled tree")?
            .map(|raw| {
                frame::decode(&raw)
                    .map(<[u8]>::to_vec)
                    .map_err(|e| format!("corrupt frame: {e}"))
            }))
    }

    /// Every entry of the status, due-time, gate and dedupe indexes, in key order.
    pub fn index_entries(&self) -> anyhow::Result<Vec<IndexEntry>> {
        let mut entries = Vec::new();
        for item in self.scan_prefix(&[keys::STATUS]) {
            let (key, _) = item?;
            entries.push(match keys::parse_status(&key) {
                Some((code, run)) => IndexEntry::Status { code, run },
                None => IndexEntry::Malformed(format!("malformed status key {}", hex_bytes(&key))),
            });
        }
        for item in self.scan_prefix(&[keys::TIMER]) {
            let (key, _) = item?;
            entries.push(match keys::parse_timer(&key) {
                Some(timer) => IndexEntry::Due(timer),
                None => IndexEntry::Malformed(format!("malformed timer key {}", hex_bytes(&key))),
            });
        }
        for item in self.scan_prefix(&[keys::GATE]) {
            let (key, value) = item?;
            let gate = hex_bytes(key.get(1..).unwrap_or_default());
            entries.push(match keys::parse_gate_value(&value) {
                Some((run, _)) => IndexEntry::Gate { gate, run },
                None => IndexEntry::Malformed(format!("approval gate {gate}: malformed entry")),
            });
        }
        for item in self.scan_prefix(&[keys::DEDUPE]) {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
            entries.push(match keys::parse_run_value(&value) {
                Some(run) => IndexEntry::Dedupe { key, run },
                None => IndexEntry::Malformed(format!("dedupe key {key:?}: malformed entry")),
            });
        }
        Ok(entries)
    }

    /// Whether the status index lists `run` under `code`.
    pub fn status_indexed(&self, code: u8, run: RunId) -> bool {
        self.scan_prefix(&keys::status(code, run))
            .any(|item| item.is_ok())
    }

    /// Whether the due-time index has an entry for `run` at `fire_at_ms` (any id).
    pub fn due_indexed(&self, fire_at_ms: u64, run: RunId) -> bool {
        let mut due = keys::timer(fire_at_ms, run, 0);
        due.truncate(due.len() - 4);
        self.scan_prefix(&due).any(|item| item.is_ok())
    }

    /// Every gate of the index, in gate id order; a malformed entry without a target.
    pub fn gates(&self) -> anyhow::Result<Vec<GateEntry>> {
        let mut gates = Vec::new();
        for item in self.scan_prefix(&[keys::GATE]) {
            let (key, value) = item?;
            let Some(id) = key.get(1..).and_then(|id| <[u8; 16]>::try_from(id).ok()) else {
                continue;
            };
            gates.push(GateEntry {
                gate: GateId(id),
                target: keys::parse_gate_value(&value),
            });
        }
        Ok(gates)
    }
}
