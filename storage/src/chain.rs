//! Per-run hash chains over stored records: the hashes are the core's
//! ([`annal_core::chain`], re-exported here); this module adds the hash of a stored frame.

pub use annal_core::chain::{genesis, record_hash, Link};

use crate::RunId;
/// Benchmarks only: when set, appends write format-1 (unlinked) event records, as before
/// chaining, so that the cost of chaining can be measured against the same code in the same
/// process (`cargo bench -p annal --bench workloads`, workload `chaining`). Never set
/// otherwise: the records it writes verify as unchained and nothing commits to them.
static UNLINKED_FOR_BENCH: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Sets the benchmark switch `UNLINKED_FOR_BENCH`. Not part of the API.
#[doc(hidden)]
pub fn set_unlinked_for_bench(unlinked: bool) {
    UNLINKED_FOR_BENCH.store(unlinked, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the benchmark switch is set.
pub(crate) fn unlinked_for_bench() -> bool {
    UNLINKED_FOR_BENCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// The hash of a stored record (its frame, either format), or `None` if the frame is damaged.
pub fn frame_hash(run: RunId, seq: u64, frame: &[u8]) -> Option<Link> {
    let (link, payload) = crate::frame::decode_linked(frame).ok()?;
    Some(record_hash(run, seq, link, payload))
}
