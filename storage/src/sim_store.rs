//! In-memory [`LogStore`] that keeps what is durable apart from what is only applied, so tests
//! can crash it at any instant and see exactly what a real crash would have left.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::store::{
    check_record, decode_checkpoint, decode_meta, meta_with_log_end, plan_append, AppendBatch,
    Durability, GateId, LogStore, Position, Record, RunId, RunMeta, TimerEntry, Write,
};
use crate::{frame, keys};

/// How [`SimStore::tear_tail`] damages the last record of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Keep only the first half of the record's bytes (a torn write).
    Cut,
    /// Flip one bit in the middle of the payload (a bad sector).
    FlipBit,
}

#[derive(Default)]
struct Inner {
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    live: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Writes applied to `live` but not yet to `durable`, in order, each with the position of
    /// its append: a commit makes a prefix of them durable, as a group commit does.
    pending: std::collections::VecDeque<(u64, Write)>,
    applied: u64,
    durable_pos: u64,
    syncs: u64,
    crash_after_syncs: Option<u64>,
    fail_next_sync: Option<String>,
    crashed: bool,
    poisoned: Option<String>,
}

impl Inner {
    fn check_usable(&self) -> Result<()> {
        if self.crashed {
            return Err(Error::Crashed);
        }
        if let Some(cause) = &self.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        Ok(())
    }
}

/// The in-memory twin of [`crate::SledStore`].
///
/// An append is applied at once (visible to reads) and becomes durable, with every append
/// before it and none after it, when someone waits for it with [`LogStore::wait_durable`]:
/// a group commit that ends exactly there. So a crash can keep an append and lose the one
/// the same caller made right after it, which a real group commit allows too. [`SimStore::crash`] throws away
/// every write that was not durable; [`SimStore::crash_after_syncs`] freezes the store right
/// after a chosen durable commit, which lets a harness crash a workflow at every point.
#[derive(Default)]
pub struct SimStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStore").finish_non_exhaustive()
    }
}

impl SimStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still consistent per write.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a crash and restart: every write not yet durable is lost, and the store is
    /// usable again (un-poisoned, un-frozen).
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.live = inner.durable.clone();
        inner.pending.clear();
        inner.applied = inner.durable_pos;
        inner.crashed = false;
        inner.poisoned = None;
        inner.crash_after_syncs = None;
    }

    /// After `n` more durable commits, freeze: the `n`-th commit is durable and acknowledged,
    /// then every append and wait fails with [`Error::Crashed`] until [`SimStore::crash`].
    /// With `n == 0` the store freezes at once.
    pub fn crash_after_syncs(&self, n: u64) {
        let mut inner = self.lock();
        if n == 0 {
            inner.crashed = true;
        } else {
            inner.crash_after_syncs = Some(inner.syncs + n);
        }
    }

    /// Whether the store is frozen by [`SimStore::crash_after_syncs`] and waits for
    /// [`SimStore::crash`].
    pub fn is_frozen(&self) -> bool {
        self.lock().crashed
    }

    /// Durable commits made since the store was created.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Makes the next durable commit fail, which poisons the store (like a failed fsync).
    pub fn fail_next_sync(&self, cause: impl Into<String>) {
        self.lock().fail_next_sync = Some(cause.into());
    }

    /// Damages the last durable event record of `run` (and its live copy), as a crash in the
    /// middle of writing it would. Returns the seq damaged, or `None` if the run has no events.
    pub fn tear_tail(&self, run: RunId, tear: Tear) -> Option<u64> {
        let mut inner = self.lock();
        let prefix = keys::event_prefix(run);
        let (key, value) = inner
            .durable
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone()))?;
        let (_, seq) = keys::parse_event(&key)?;
        let damaged = damage(value, tear);
        inner.durable.insert(key.clone(), damaged.clone());
        inner.live.insert(key, damaged);
        Some(seq)
    }

    /// Overwrites the stored bytes of one event record (durable and live), for tests of
    /// corruption handling. Returns false if there is no such record.
    pub fn corrupt_record(&self, run: RunId, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut inner = self.lock();
        let key = keys::event(run, seq);
        let Some(mut bytes) = inner.durable.get(&key).cloned() else {
            return false;
        };
        f(&mut bytes);
        inner.durable.insert(key.clone(), bytes.clone());
        inner.live.insert(key, bytes);
        true
    }

    /// Removes one event record (durable and live), for tests of hole detection.
    pub fn remove_record(&self, run: RunId, seq: u64) -> bool {
        let mut inner = self.lock();
        let key = keys::event(run, seq);
        inner.live.remove(&key);
        inner.durable.remove(&key).is_some()
    }

    /// A copy of every durable key and value, for tests that check raw bytes.
    pub fn durable_snapshot(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().durable.clone()
    }

    /// The seq of a run's last event record, if it has any.
    fn last_event_seq(&self, run: RunId) -> Result<Option<u64>> {
        let inner = self.lock();
        let last = inner
            .live
            .range(keys::event(run, 0)..=keys::event(run, u64::MAX))
            .next_back();
        match last {
            None => Ok(None),
            Some((k, _)) => keys::parse_event(k)
                .map(|(_, seq)| Some(seq))
                .ok_or_else(|| crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(k.clone()),
                }),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let inner = self.lock();
        inner
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn damage(mut value: Vec<u8>, tear: Tear) -> Vec<u8> {
    match tear {
        Tear::Cut => value.truncate(value.len() / 2),
        Tear::FlipBit => {
            let len = value.len();
            let at = frame::HEADER_LEN + len.saturating_sub(frame::HEADER_LEN) / 2;
            if let Some(b) = value.get_mut(at.min(len.saturating_sub(1))) {
                *b ^= 0x04;
            }
        }
    }
    value
}

#[async_trait::async_trait]
impl LogStore for SimStore {
    async fn append(&self, batch: AppendBatch) -> Result<Position> {
        let mut inner = self.lock();
        inner.check_usable()?;
        let writes = {
            let live = &inner.live;
            plan_append(batch, &|k| Ok(live.get(k).cloned()))?
        };
        for (k, v) in &writes {
            match v {
                Some(v) => inner.live.insert(k.clone(), v.clone()),
                None => inner.live.remove(k),
            };
        }
        inner.applied += 1;
        let position = inner.applied;
        inner
            .pending
            .extend(writes.into_iter().map(|w| (position, w)));
        Ok(Position(position))
    }

    async fn wait_durable(&self, position: Position) -> Result<()> {
        let mut inner = self.lock();
        inner.check_usable()?;
        if position.0 <= inner.durable_pos {
            return Ok(());
        }
        if let Some(cause) = inner.fail_next_sync.take() {
            inner.poisoned = Some(cause.clone());
            return Err(Error::Poisoned { cause });
        }
        // Up to `position` and no further: appends applied after it may land in a later
        // commit, which a crash can take away while this one stays (a real group commit ends
        // where its group ends, and the next append may have missed it).
        while inner
            .pending
            .front()
            .is_some_and(|(at, _)| *at <= position.0)
        {
            let Some((_, (k, v))) = inner.pending.pop_front() else {
                break;
            };
            match v {
                Some(v) => inner.durable.insert(k, v),
                None => inner.durable.remove(&k),
            };
        }
        inner.durable_pos = position.0.min(inner.applied);
        inner.syncs += 1;
        if inner.crash_after_syncs == Some(inner.syncs) {
            inner.crashed = true;
        }
        Ok(())
    }

    async fn wait_applied_durable(&self) -> Result<()> {
        let applied = self.lock().applied;
        self.wait_durable(Position(applied)).await
    }

    async fn read(&self, run: RunId, from_seq: u64, max: usize) -> Result<Vec<Record>> {
        let inner = self.lock();
        let prefix = keys::event_prefix(run);
        let mut out = Vec::new();
        for (expected, (k, v)) in (from_seq..).zip(inner.live.range(keys::event(run, from_seq)..)) {
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let (_, seq) = keys::parse_event(k).ok_or_else(|| crate::Error::CorruptIndex {
                reason: crate::CorruptReason::BadKey(k.clone()),
            })?;
            out.push(check_record(run, expected, seq, v)?);
        }
        Ok(out)
    }

    async fn meta(&self, run: RunId) -> Result<Option<RunMeta>> {
        let bytes = self.lock().live.get(&keys::meta(run)).cloned();
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let meta = decode_meta(run, &bytes)?;
        Ok(Some(meta_with_log_end(meta, self.last_event_seq(run)?)))
    }

    async fn runs(&self) -> Result<Vec<(RunId, RunMeta)>> {
        self.scan_prefix(&[keys::META])
            .into_iter()
            .map(|(k, v)| {
                let run = keys::parse_meta(&k).ok_or(crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(k.clone()),
                })?;
                let meta = decode_meta(run, &v)?;
                Ok((run, meta_with_log_end(meta, self.last_event_seq(run)?)))
            })
            .collect()
    }

    async fn runs_with_status(&self, status: u8) -> Result<Vec<RunId>> {
        self.scan_prefix(&keys::status_prefix(status))
            .into_iter()
            .map(|(k, _)| {
                keys::parse_status(&k)
                    .map(|(_, run)| run)
                    .ok_or(crate::Error::CorruptIndex {
                        reason: crate::CorruptReason::BadKey(k.clone()),
                    })
            })
            .collect()
    }

    async fn due_timers(&self, up_to_ms: u64, max: usize) -> Result<Vec<TimerEntry>> {
        let mut out = Vec::new();
        for (k, _) in self.scan_prefix(&[keys::TIMER]) {
            let entry = keys::parse_timer(&k).ok_or(crate::Error::CorruptIndex {
                reason: crate::CorruptReason::BadKey(k.clone()),
            })?;
            if entry.fire_at_ms > up_to_ms || out.len() >= max {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn next_timer(&self) -> Result<Option<TimerEntry>> {
        Ok(self.due_timers(u64::MAX, 1).await?.into_iter().next())
    }

    async fn dedupe(&self, key: &[u8]) -> Result<Option<RunId>> {
        let value = self.lock().live.get(&keys::dedupe(key)).cloned();
        let holder = value
            .map(|v| {
                keys::parse_run_value(&v).ok_or(crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(keys::dedupe(key)),
                })
            })
            .transpose()?;
        if holder.is_some() {
            // The claim may not be durable yet; it is a promise once returned.
            self.wait_applied_durable().await?;
        }
        Ok(holder)
    }

    async fn gate(&self, gate: GateId) -> Result<Option<(RunId, u32)>> {
        let value = self.lock().live.get(&keys::gate(gate)).cloned();
        value
            .map(|v| {
                keys::parse_gate_value(&v).ok_or(crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(keys::gate(gate)),
                })
            })
            .transpose()
    }

    async fn checkpoint(&self, run: RunId) -> Result<Option<Vec<u8>>> {
        let bytes = self.lock().live.get(&keys::checkpoint(run)).cloned();
        bytes.map(|b| decode_checkpoint(&b)).transpose()
    }

    async fn gates(&self) -> Result<Vec<(GateId, RunId, u32)>> {
        self.scan_prefix(&[keys::GATE])
            .into_iter()
            .map(|(k, v)| {
                let bad = || crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(k.clone()),
                };
                let gate = keys::parse_gate(&k).ok_or_else(bad)?;
                let (run, step) = keys::parse_gate_value(&v).ok_or_else(bad)?;
                Ok((gate, run, step))
            })
            .collect()
    }

    async fn purge(&self, run: RunId) -> Result<()> {
        let writes = {
            let inner = self.lock();
            inner.check_usable()?;
            crate::store::plan_purge(run, &|prefix| {
                Ok(inner
                    .live
                    .range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
            })?
        };
        let position = {
            let mut inner = self.lock();
            for (k, _) in &writes {
                inner.live.remove(k);
            }
            inner.applied += 1;
            let position = inner.applied;
            inner
                .pending
                .extend(writes.into_iter().map(|w| (position, w)));
            Position(position)
        };
        self.wait_durable(position).await
    }

    async fn put_tree_head(&self, body: Vec<u8>) -> Result<u64> {
        let position = {
            let mut inner = self.lock();
            inner.check_usable()?;
            let index = inner
                .live
                .range(keys::tree_head(0)..=keys::tree_head(u64::MAX))
                .next_back()
                .and_then(|(k, _)| keys::parse_tree_head(k))
                .map_or(0, |i| i + 1);
            let write = (keys::tree_head(index), Some(frame::encode(&body)));
            inner.live.insert(write.0.clone(), frame::encode(&body));
            inner.applied += 1;
            let position = inner.applied;
            inner.pending.push_back((position, write));
            (index, Position(position))
        };
        self.wait_durable(position.1).await?;
        Ok(position.0)
    }

    async fn tree_heads(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let inner = self.lock();
        inner
            .live
            .range(keys::tree_head(from)..=keys::tree_head(u64::MAX))
            .take(max)
            .map(|(k, v)| {
                let index = keys::parse_tree_head(k).ok_or(crate::Error::CorruptIndex {
                    reason: crate::CorruptReason::BadKey(k.clone()),
                })?;
                Ok((index, decode_checkpoint(v)?))
            })
            .collect()
    }

    async fn latest_tree_head(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let last = {
            let inner = self.lock();
            inner
                .live
                .range(keys::tree_head(0)..=keys::tree_head(u64::MAX))
                .next_back()
                .and_then(|(k, _)| keys::parse_tree_head(k))
        };
        match last {
            Some(index) => Ok(self.tree_heads(index, 1).await?.into_iter().next()),
            None => Ok(None),
        }
    }

    fn durability(&self) -> Durability {
        Durability::PowerSafe
    }
}
