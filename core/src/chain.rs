//! Per-run hash chains: every event record links to the record before it in its run, so the
//! hash of a run's last record commits to its whole history.
//!
//! ```text
//! genesis(run)            = BLAKE3-derive-key("annal chain genesis v1")(run)
//! record_hash(run, seq, r) = BLAKE3-derive-key("annal chain record v1")(
//!                                run (16) ++ seq (u64 BE) ++ link flag (1) ++ link (32, if any) ++ payload)
//! ```
//!
//! Record 0 of a run links to `genesis(run)`, record `n` to `record_hash` of record `n - 1`
//! (format-2 frames of `annal-storage`). The run id and the seq are inside every hash, so a
//! record cannot be moved to another run or another place and still link. Records written
//! before chaining (format 1) have no link: a chain may start after them, and verification
//! reports them as unchained.
//!
//! The CRC of a frame catches accidents; the chain catches edits made by someone who also
//! fixed the CRC: the record after an edited one no longer links to it. The last record of a
//! run has no successor; a run's head (the hash of its last record) committed outside the
//! store (a signed checkpoint) is what exposes an edit of it, or a truncated tail.

use crate::ids::RunId;

/// Bytes in a link (a BLAKE3 hash).
pub const LINK_LEN: usize = 32;

/// The hash one record links to, and a run's head.
pub type Link = [u8; LINK_LEN];
/// What record 0 of `run` links to.
pub fn genesis(run: RunId) -> Link {
    let mut hasher = blake3::Hasher::new_derive_key("annal chain genesis v1");
    hasher.update(&run.0);
    *hasher.finalize().as_bytes()
}

/// The hash of record `seq` of `run` with `link` (what it links to, `None` for a format-1
/// record) and `payload`: what record `seq + 1` links to.
pub fn record_hash(run: RunId, seq: u64, link: Option<&Link>, payload: &[u8]) -> Link {
    let mut hasher = blake3::Hasher::new_derive_key("annal chain record v1");
    hasher.update(&run.0);
    hasher.update(&seq.to_be_bytes());
    match link {
        Some(link) => {
            hasher.update(&[1]);
            hasher.update(link);
        }
        None => {
            hasher.update(&[0]);
        }
    }
    hasher.update(payload);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_of_a_record_changes_its_hash() {
        let (a, b) = (RunId([1; 16]), RunId([2; 16]));
        let base = record_hash(a, 3, Some(&[9; 32]), b"payload");
        assert_ne!(base, record_hash(b, 3, Some(&[9; 32]), b"payload"), "run");
        assert_ne!(base, record_hash(a, 4, Some(&[9; 32]), b"payload"), "seq");
        assert_ne!(base, record_hash(a, 3, Some(&[8; 32]), b"payload"), "link");
        assert_ne!(base, record_hash(a, 3, None, b"payload"), "unchained");
        assert_ne!(
            base,
            record_hash(a, 3, Some(&[9; 32]), b"payloaD"),
            "payload"
        );
        assert_ne!(genesis(a), genesis(b));
    }
}
