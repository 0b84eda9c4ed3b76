//! Inclusion proofs: one run's leaf under a signed checkpoint, checkable with the public key
//! alone. The layout is C2SP `tlog-proof@v1`'s, under a first line of its own because the
//! hashes are BLAKE3 (that spec's are SHA-256):
//!
//! ```text
//! annal/tlog-proof-blake3@v1\n
//! extra <base64(leaf: run (16) || events (u64 BE) || head (32))>\n
//! index <leaf index, decimal>\n
//! <base64 hash>\n              the audit path, from the leaf's sibling up (zero or more)
//! \n
//! <the signed checkpoint, verbatim>
//! ```

use base64::Engine as _;

use super::merkle::{self, PathError};
use super::note::{Checkpoint, NoteError, SignedCheckpoint};
use super::{b64, Hash, Leaf, LEAF_LEN};
use crate::audit::transparency::key::VerifierKey;

/// The first line of a proof.
pub const PROOF_HEADER: &str = "annal/tlog-proof-blake3@v1";

/// Longest audit path accepted: a tree of 2^64 leaves has 64 levels.
const PATH_HASHES_MAX: usize = 64;

/// That `leaf` is leaf `index` of the tree the checkpoint `note` signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The run's leaf.
    pub leaf: Leaf,
    /// Its index in the tree (the runs' order by id).
    pub index: u64,
    /// The audit path.
    pub path: Vec<Hash>,
    /// The signed checkpoint.
    pub note: String,
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Not a proof in this format.
    #[error("not an annal inclusion proof: {0}")]
    Malformed(String),
    /// The checkpoint in it is malformed or its signature does not verify.
    #[error("the proof's checkpoint: {0}")]
    Note(#[from] NoteError),
    /// The leaf is not in the signed tree at that index.
    #[error("the run's leaf is not in the signed tree: {0}")]
    Path(#[from] PathError),
}

impl InclusionProof {
    /// The proof's text.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "{PROOF_HEADER}\nextra {}\nindex {}\n",
            b64(&self.leaf.encode()),
            self.index
        );
        for hash in &self.path {
            text.push_str(&b64(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.note);
        text
    }

    /// Reads a proof's text. Nothing is verified: see [`InclusionProof::verify`].
    pub fn parse(text: &str) -> Result<Self, ProofError> {
        let bad = |why: String| ProofError::Malformed(why);
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint".into()))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(PROOF_HEADER) {
            return Err(bad(format!("the first line is not {PROOF_HEADER}")));
        }
        let leaf = lines
            .next()
            .and_then(|l| l.strip_prefix("extra "))
            .ok_or_else(|| bad("no `extra` line with the run's leaf".into()))?;
        let leaf = base64::engine::general_purpose::STANDARD
            .decode(leaf)
            .ok()
            .and_then(|bytes| Leaf::decode(&bytes))
            .ok_or_else(|| bad(format!("the leaf is not {LEAF_LEN} bytes in base64")))?;
        let index = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| bad("no `index` line".into()))?;
        if index.is_empty()
            || !index.bytes().all(|b| b.is_ascii_digit())
            || (index.len() > 1 && index.starts_with('0'))
        {
            return Err(bad(format!("the index {index:?} is not a decimal number")));
        }
        let index: u64 = index
            .parse()
            .map_err(|_| bad(format!("the index {index:?} is too large")))?;
        let mut path = Vec::new();
        for line in lines {
            if path.len() == PATH_HASHES_MAX {
                return Err(bad(format!("more than {PATH_HASHES_MAX} path hashes")));
            }
            let hash = base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| bad(format!("path line {line:?} is not a 32-byte hash")))?;
            path.push(hash);
        }
        Ok(Self {
            leaf,
            index,
            path,
            note: note.to_string(),
        })
    }

    /// Verifies the proof with the checkpoint's public key alone: the checkpoint's signature,
    /// then the leaf's audit path to its root. Returns the checkpoint.
    pub fn verify(&self, key: &VerifierKey) -> Result<Checkpoint, ProofError> {
        let signed = SignedCheckpoint::parse(&self.note)?;
        let checkpoint = signed.verify(key)?;
        merkle::verify_inclusion(
            &self.leaf.hash(),
            self.index,
            checkpoint.size,
            &self.path,
            &checkpoint.root,
        )?;
        Ok(checkpoint.clone())
    }
}
