//! The identities and the per-run metadata every layer shares: storage keys runs by them,
//! the engine and the auditor's tools name them.

use serde::{Deserialize, Serialize};

/// A run's identity: 16 bytes (the engine uses UUIDs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub [u8; 16]);

/// An approval gate's identity: 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GateId(pub [u8; 16]);

fn fmt_uuid(bytes: &[u8; 16], f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    // Every step formats its run id into its idempotency key: one write, not 20.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
    f.write_str(std::str::from_utf8(&out).expect("hex digits and dashes are ASCII"))
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_uuid(&self.0, f)
    }
}
impl std::fmt::Debug for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_uuid(&self.0, f)
    }
}
impl std::fmt::Display for GateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_uuid(&self.0, f)
    }
}
impl std::fmt::Debug for GateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fmt_uuid(&self.0, f)
    }
}

/// Per-run metadata kept beside the log. Storage interprets only `next_seq` (which it owns)
/// and `status` (which it indexes); the meaning of status codes belongs to the engine.
///
/// The metadata is written when a run starts and whenever the engine changes its status, not
/// on every append: the end of the log is its last event key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Registered workflow name.
    pub workflow: String,
    /// Workflow version the run is pinned to.
    pub version: u32,
    /// Engine-defined status code, indexed under `S`.
    pub status: u8,
    /// The seq the next appended event gets. The store records it whenever it writes the
    /// metadata, and on reads fills in the end of the log when the log has grown since. A log
    /// that ends before the recorded value lost its tail (the engine reports that).
    pub next_seq: u64,
    /// When the run was created (engine clock, ms since the Unix epoch).
    pub created_ms: u64,
    /// When the metadata was last written: the run's start or its last status change.
    pub updated_ms: u64,
    /// When a parked run wants to be woken, if it waits on time.
    pub wake_ms: Option<u64>,
    /// Human-readable reason for the status (why it is blocked, escalated, …).
    pub note: String,
    /// The log's end when the metadata was last written, that is when the run took its
    /// status: events from this seq on were appended after it. Not stored (it is the
    /// `next_seq` the store recorded); reads fill it in, writes ignore it. A parked run whose
    /// log holds events from here on received something (a decision, a signal) that no
    /// driver has seen, so nothing will wake it: the engine resumes such a run at open and
    /// `annal verify` reports it.
    #[serde(skip)]
    pub status_seq: u64,
}

/// The idempotency key every attempt of the step at `position` of `run` gets: the same
/// across attempts, crashes and restarts, different for every step.
pub fn idempotency_key(run: RunId, position: u32) -> String {
    format!("{run}/{position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_hyphenated_lowercase_uuids() {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8) * 17;
        }
        let text = "00112233-4455-6677-8899-aabbccddeeff";
        assert_eq!(RunId(bytes).to_string(), text);
        assert_eq!(format!("{:?}", GateId(bytes)), text);
        assert_eq!(uuid::Uuid::from_bytes(bytes).to_string(), text);
    }
}
