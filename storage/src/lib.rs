//! # annal-storage
//!
//! The durable event log under the annal workflow engine. It knows bytes, runs and sequence
//! numbers, and nothing of workflows.
//!
//! - [`frame`]: every stored record is CRC-framed; damage is reported, never decoded.
//! - [`chain`]: every event record links to the one before it in its run (BLAKE3), so a
//!   run's last hash commits to its whole history.
//! - [`keys`]: one ordered keyspace; big-endian integers so scans come back in numeric order.
//! - [`LogStore`]: atomic, seq-checked appends with their index updates; CRC-checked reads.
//! - [`SledStore`]: sled 0.34.7 with a group committer and real fsync in `PowerSafe` mode.
//! - [`SimStore`]: in-memory twin that separates durable from volatile bytes and can crash.

pub mod chain;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod frame;
pub mod keys;
mod sim_store;
mod sled_store;
mod store;

pub use error::{CorruptReason, Error, Result};
pub use sim_store::{SimStore, Tear};
pub use sled_store::{SledConfig, SledStore};
pub use store::{
    check_payload, check_record, decode_checkpoint, decode_meta, encode_meta, log_end_from,
    meta_with_log_end, plan_append, plan_append_at, plan_append_linked, read_all, AppendBatch,
    Durability, GateId, Hint, IndexOp, KnownLog, LogStore, Planned, Position, Record, Request,
    RunId, RunMeta, TimerEntry, Write,
};
