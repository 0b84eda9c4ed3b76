//! Tree heads: computing the leaves of every run from the store, signing a checkpoint over
//! them and storing it (`Engine::write_tree_head`), and the service that does so at
//! intervals (`EngineBuilder::tree_heads`).
//!
//! The tree-head service is a task of its own rather than a part of the timer service: on
//! PostgreSQL, 10,000 runs take 10,000 reads, seconds that must not delay due timers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use annal_storage::{LogStore, RunId};

use super::inner::EngineInner;
use crate::audit::transparency::{Leaf, SignedTreeHead, SigningKey, StoredTreeHead};
use crate::error::{Error, Result};

/// A tree head the store now holds.
#[derive(Debug, Clone)]
pub struct WrittenTreeHead {
    /// Its index in the store (`LogStore::tree_heads`), counting from 0.
    pub index: u64,
    /// What was signed, and the signed note: what an auditor keeps.
    pub head: SignedTreeHead,
}

/// Every run's leaf as the store holds it now: one per run with events, its event count and
/// the hash of its last record (one read of that record per run).
///
/// On a store services write meanwhile, each leaf is the run as one read saw it: a prefix of
/// its history, which is all a checkpoint needs.
pub async fn current_leaves(store: &dyn LogStore) -> Result<Vec<Leaf>> {
    let mut leaves = Vec::new();
    for (run, meta) in store.runs().await? {
        if meta.next_seq == 0 {
            continue;
        }
        leaves.push(leaf_at(store, run, meta.next_seq).await?);
    }
    Ok(leaves)
}

/// The leaf of `run`'s first `events` records.
async fn leaf_at(store: &dyn LogStore, run: RunId, events: u64) -> Result<Leaf> {
    let last = events - 1;
    match store.read(run, last, 1).await?.first() {
        Some(record) if record.seq == last => Ok(Leaf {
            run,
            events,
            head: record.hash(run),
        }),
        _ => Err(Error::Inconsistent {
            run,
            seq: last,
            reason: format!(
                "the log ends before seq {last}, which its metadata recorded (a lost tail)"
            ),
        }),
    }
}

/// Computes every run's leaf, signs a checkpoint of them named `origin` at `time_ms` with
/// `key`, and stores it with its leaf list (durably). Returns what was stored.
pub async fn write_tree_head(
    store: &dyn LogStore,
    key: &SigningKey,
    origin: &str,
    time_ms: u64,
) -> Result<WrittenTreeHead> {
    let leaves = current_leaves(store).await?;
    store_tree_head(store, key, origin, time_ms, leaves).await
}

async fn store_tree_head(
    store: &dyn LogStore,
    key: &SigningKey,
    origin: &str,
    time_ms: u64,
    leaves: Vec<Leaf>,
) -> Result<WrittenTreeHead> {
    let head = SignedTreeHead::sign(origin, leaves, time_ms, key)?;
    let index = store.put_tree_head(head.stored().encode()).await?;
    Ok(WrittenTreeHead { index, head })
}

impl EngineInner {
    /// Writes a tree head unless the latest stored one already has this tree (same size
    /// and root): nothing changed since.
    async fn write_tree_head_if_changed(
        &self,
        key: &SigningKey,
    ) -> Result<Option<WrittenTreeHead>> {
        let time_ms = self.clock.now_ms();
        let leaves = current_leaves(self.store.as_ref()).await?;
        if let Some((_, body)) = self.store.latest_tree_head().await? {
            let same = StoredTreeHead::decode(&body)
                .ok()
                .and_then(|stored| {
                    crate::audit::transparency::SignedCheckpoint::parse(&stored.note).ok()
                })
                .is_some_and(|latest| {
                    let tree = crate::audit::transparency::Tree::new(leaves.clone());
                    tree.is_ok_and(|tree| {
                        latest.checkpoint.size == tree.size()
                            && latest.checkpoint.root == tree.root()
                            && latest.checkpoint.origin == key.name()
                    })
                });
            if same {
                return Ok(None);
            }
        }
        store_tree_head(self.store.as_ref(), key, key.name(), time_ms, leaves)
            .await
            .map(Some)
    }

    /// Writes a tree head every `every_ms` when the history changed since the last one.
    pub(crate) async fn tree_head_service(self: Arc<Self>, key: SigningKey, every_ms: u64) {
        loop {
            let at_ms = self.clock.now_ms().saturating_add(every_ms);
            self.clock.sleep_until_ms(at_ms).await;
            if self.shut_down.load(Ordering::Acquire) {
                return;
            }
            match self.write_tree_head_if_changed(&key).await {
                Ok(Some(written)) => tracing::debug!(
                    index = written.index,
                    runs = written.head.checkpoint.size,
                    "tree head written"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "tree head not written"),
            }
        }
    }
}
