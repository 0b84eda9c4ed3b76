//! Tamper evidence: a store-wide Merkle tree over every run's head, signed checkpoints of it,
//! inclusion proofs, and the checks that tell whether the history as stored now extends
//! what a checkpoint committed to.
//!
//! **Pure: no I/O, no clock, no randomness.** Times and keys are inputs; the engine
//! (`Engine::write_tree_head`) and the `annal` CLI (`digest`, `verify`, `prove`,
//! `check-proof`) read the store and call these functions.
//!
//! What each piece catches:
//!
//! - **The chain** (`crate::chain`, checked by [`ChainCheck`]): every event record
//!   links to the hash of the record before it, so an edited, replaced or reordered record
//!   breaks the link of its successor, even if its CRC was fixed. Alone it cannot see an edit
//!   of a run's last record, a truncated tail, a dropped run, or a log rewritten
//!   consistently (every link recomputed).
//! - **The tree head**: one [`Leaf`] per run that has events, `(run, events, head)`, sorted
//!   by run id, under a Merkle tree ([`merkle`], RFC 6962 shape, BLAKE3). Its root, signed as
//!   a [`Checkpoint`] note (C2SP signed-note) with an Ed25519 key ([`SigningKey`]), is a few
//!   hundred bytes an auditor keeps outside the database. Against it, [`compare`] finds every
//!   run that was dropped, truncated or altered in the part the checkpoint covered.
//! - **Inclusion proofs** ([`InclusionProof`]): that one run had `events` events with a given
//!   head under a checkpoint, checked with the public key alone.
//!
//! The tree is not an append-only log: a run's leaf changes as the run grows, so two
//! checkpoints are not related by RFC 9162 consistency proofs. A later history *extends* a
//! checkpoint when every run it committed to still exists, still has at least the events it
//! had, and its first `events` records still hash, link by link, to the committed head.
//!
//! The bytes of everything here are in `docs/checkpoints.md`.

mod chain;
mod key;
pub mod merkle;
mod note;
mod proof;

use crate::chain::Link;
use crate::ids::RunId;
use base64::Engine as _;

pub use chain::{compare, locate, ChainBreak, ChainCheck, Divergence, RunChain};
pub use key::{key_id, KeyError, SigningKey, VerifierKey};
pub use merkle::PathError;
pub use note::{Checkpoint, NoteError, NoteSignature, SignedCheckpoint, NOTE_BYTES_MAX};
pub use proof::{InclusionProof, ProofError, PROOF_HEADER};

/// A 32-byte BLAKE3 hash: a tree node or root.
pub type Hash = [u8; 32];

/// Standard base64 (RFC 4648 §4, padded), as C2SP notes use.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes of an encoded [`Leaf`].
pub const LEAF_LEN: usize = 56;

/// What the tree holds of one run: its id, how many events it had, and the hash of its last
/// record (`Record::hash`), which commits to all of them through the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leaf {
    /// The run.
    pub run: RunId,
    /// Events in its log (its next seq).
    pub events: u64,
    /// The hash of its record `events - 1`.
    pub head: Link,
}

impl Leaf {
    /// `run (16) || events (u64 BE) || head (32)`: the bytes the tree hashes.
    pub fn encode(&self) -> [u8; LEAF_LEN] {
        let mut out = [0u8; LEAF_LEN];
        out[..16].copy_from_slice(&self.run.0);
        out[16..24].copy_from_slice(&self.events.to_be_bytes());
        out[24..].copy_from_slice(&self.head);
        out
    }

    /// Reads [`Leaf::encode`]'s bytes; `None` unless exactly [`LEAF_LEN`] of them.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; LEAF_LEN] = bytes.try_into().ok()?;
        let (run, rest) = bytes.split_first_chunk::<16>()?;
        let (events, head) = rest.split_first_chunk::<8>()?;
        Some(Self {
            run: RunId(*run),
            events: u64::from_be_bytes(*events),
            head: head.try_into().ok()?,
        })
    }

    /// The leaf's hash in the tree: `BLAKE3(0x00 || encode())`.
    pub fn hash(&self) -> Hash {
        merkle::leaf_hash(&self.encode())
    }
}

/// Why leaves do not make a tree, or a stored tree head does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeHeadError {
    /// Two leaves for one run, or leaves out of run id order.
    #[error("leaf {index} (run {run}) is not after the one before it in run id order")]
    Unsorted {
        /// Its position.
        index: u64,
        /// Its run.
        run: RunId,
    },
    /// A leaf of a run with no events.
    #[error("leaf {index} (run {run}) has no events")]
    EmptyRun {
        /// Its position.
        index: u64,
        /// Its run.
        run: RunId,
    },
    /// The origin is empty or holds a control character.
    #[error("invalid origin {0:?}: it must be one non-empty line")]
    BadOrigin(String),
    /// The stored bytes are not a tree head.
    #[error("the stored tree head is malformed: {0}")]
    Malformed(String),
    /// The stored note is not a signed checkpoint.
    #[error("the stored note: {0}")]
    Note(#[from] NoteError),
    /// The stored leaves do not hash to the root the note signs: the leaf list (or the note)
    /// was altered.
    #[error("its {leaves} leaves hash to root {computed}, but its checkpoint says {size} leaves with root {root}")]
    LeavesDoNotMatch {
        /// Leaves stored.
        leaves: u64,
        /// Their root, base64.
        computed: String,
        /// The checkpoint's size.
        size: u64,
        /// The checkpoint's root, base64.
        root: String,
    },
}

/// The tree over the runs' leaves, in run id order.
#[derive(Debug, Clone)]
pub struct Tree {
    leaves: Vec<Leaf>,
    hashes: Vec<Hash>,
    root: Hash,
}

impl Tree {
    /// The tree over `leaves` (any order; one per run, each with events).
    pub fn new(mut leaves: Vec<Leaf>) -> Result<Self, TreeHeadError> {
        leaves.sort_unstable_by_key(|l| l.run);
        Self::sorted(leaves)
    }

    /// The tree over leaves that must already be in strictly increasing run id order.
    pub fn sorted(leaves: Vec<Leaf>) -> Result<Self, TreeHeadError> {
        for (i, leaf) in leaves.iter().enumerate() {
            if leaf.events == 0 {
                return Err(TreeHeadError::EmptyRun {
                    index: i as u64,
                    run: leaf.run,
                });
            }
            if i > 0 && leaves[i - 1].run >= leaf.run {
                return Err(TreeHeadError::Unsorted {
                    index: i as u64,
                    run: leaf.run,
                });
            }
        }
        let hashes: Vec<Hash> = leaves.iter().map(Leaf::hash).collect();
        let root = merkle::root(&hashes);
        Ok(Self {
            leaves,
            hashes,
            root,
        })
    }

    /// The root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The leaves, in run id order.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// The leaf of `run` and its index.
    pub fn find(&self, run: RunId) -> Option<(u64, &Leaf)> {
        let i = self.leaves.binary_search_by_key(&run, |l| l.run).ok()?;
        Some((i as u64, &self.leaves[i]))
    }

    /// The inclusion proof of `run`'s leaf under the checkpoint `note` (the signed note of
    /// this tree); `None` if the run has no leaf.
    pub fn prove(&self, run: RunId, note: &str) -> Option<InclusionProof> {
        let (index, leaf) = self.find(run)?;
        let path = merkle::inclusion_path(&self.hashes, usize::try_from(index).ok()?)?;
        Some(InclusionProof {
            leaf: *leaf,
            index,
            path,
            note: note.to_string(),
        })
    }
}

/// A tree head as the store keeps it: the signed checkpoint and the leaves under it, so that
/// a later check can name the run (and seq) that no longer matches.
///
/// ```text
/// 01                    format
/// note length (u32 LE) | note (UTF-8, the signed note as printed)
/// leaf count (u64 LE)  | leaves, 56 bytes each (Leaf::encode), in run id order
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTreeHead {
    /// The signed note.
    pub note: String,
    /// The leaves its root was computed over.
    pub leaves: Vec<Leaf>,
}

/// The format byte of [`StoredTreeHead`]'s encoding.
pub const TREE_HEAD_FORMAT: u8 = 1;

impl StoredTreeHead {
    /// The bytes handed to `LogStore::put_tree_head` (which frames them).
    pub fn encode(&self) -> Vec<u8> {
        let note_len = u32::try_from(self.note.len()).expect("a note is far below 4 GiB");
        let mut out = Vec::with_capacity(13 + self.note.len() + self.leaves.len() * LEAF_LEN);
        out.push(TREE_HEAD_FORMAT);
        out.extend_from_slice(&note_len.to_le_bytes());
        out.extend_from_slice(self.note.as_bytes());
        out.extend_from_slice(&(self.leaves.len() as u64).to_le_bytes());
        for leaf in &self.leaves {
            out.extend_from_slice(&leaf.encode());
        }
        out
    }

    /// Reads [`StoredTreeHead::encode`]'s bytes. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeHeadError> {
        let bad = |why: String| TreeHeadError::Malformed(why);
        let (&format, rest) = bytes.split_first().ok_or_else(|| bad("no bytes".into()))?;
        if format != TREE_HEAD_FORMAT {
            return Err(bad(format!("unknown format {format}")));
        }
        let (note_len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("shorter than its note length".into()))?;
        let note_len = u32::from_le_bytes(*note_len) as usize;
        let (note, rest) = rest
            .split_at_checked(note_len)
            .ok_or_else(|| bad(format!("shorter than its {note_len}-byte note")))?;
        let note = std::str::from_utf8(note)
            .map_err(|e| bad(format!("the note is not UTF-8: {e}")))?
            .to_string();
        let (count, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("shorter than its leaf count".into()))?;
        let count = u64::from_le_bytes(*count);
        if count.checked_mul(LEAF_LEN as u64) != Some(rest.len() as u64) {
            return Err(bad(format!(
                "{count} leaves take {} bytes; {} are there",
                u128::from(count) * LEAF_LEN as u128,
                rest.len()
            )));
        }
        let leaves = rest
            .chunks_exact(LEAF_LEN)
            .map(|chunk| Leaf::decode(chunk).expect("chunks are LEAF_LEN bytes"))
            .collect();
        Ok(Self { note, leaves })
    }

    /// Checks that the leaves are the tree the note's checkpoint names (their root and
    /// count), and returns the note as read and the tree. The signature is not checked here:
    /// see [`SignedCheckpoint::verify`].
    pub fn authenticate(&self) -> Result<(SignedCheckpoint, Tree), TreeHeadError> {
        let signed = SignedCheckpoint::parse(&self.note)?;
        let tree = Tree::sorted(self.leaves.clone())?;
        let checkpoint = &signed.checkpoint;
        if tree.size() != checkpoint.size || tree.root() != checkpoint.root {
            return Err(TreeHeadError::LeavesDoNotMatch {
                leaves: tree.size(),
                computed: b64(&tree.root()),
                size: checkpoint.size,
                root: b64(&checkpoint.root),
            });
        }
        Ok((signed, tree))
    }
}

/// A tree head just computed and signed.
#[derive(Debug, Clone)]
pub struct SignedTreeHead {
    /// What it says.
    pub checkpoint: Checkpoint,
    /// The signed note: what an auditor keeps.
    pub note: String,
    /// The tree.
    pub tree: Tree,
}

impl SignedTreeHead {
    /// Builds the tree over `leaves`, and the checkpoint of it named `origin`, computed at
    /// `time_ms`, signed with `key`.
    pub fn sign(
        origin: &str,
        leaves: Vec<Leaf>,
        time_ms: u64,
        key: &SigningKey,
    ) -> Result<Self, TreeHeadError> {
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(TreeHeadError::BadOrigin(origin.to_string()));
        }
        let tree = Tree::new(leaves)?;
        let checkpoint = Checkpoint {
            origin: origin.to_string(),
            size: tree.size(),
            root: tree.root(),
            time_ms: Some(time_ms),
            extensions: Vec::new(),
        };
        let note = checkpoint.sign(key);
        Ok(Self {
            checkpoint,
            note,
            tree,
        })
    }

    /// What the store keeps of it.
    pub fn stored(&self) -> StoredTreeHead {
        StoredTreeHead {
            note: self.note.clone(),
            leaves: self.tree.leaves().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests;
