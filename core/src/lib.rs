//! # annal-core
//!
//! The pure core of annal: what a run's history is and what follows from it, with no I/O,
//! no clock, no randomness and no runtime. The engine (`annal`) records events and runs
//! workflows; everything it decides from a history — the fold and the matcher of replay,
//! retry and budget decisions, breaker states, approval rules, run records, timelines and
//! reports — is a function here, so "replay is pure" holds by construction: this crate
//! depends on no async runtime, no store and no network.
//!
//! Modules, leaves first (arrows point one way, no module imports one that imports it):
//!
//! - [`ids`]: run and gate ids, run metadata, idempotency keys;
//! - [`chain`]: per-run hash chains (record hashes, genesis);
//! - [`encoding`]: schema v1's bincode options;
//! - [`payload`]: user values as JSON bytes;
//! - [`breaker`], [`policy`] (classes, failure classes, retry decisions, per-tool rules,
//!   ceilings), [`approval`] (requests, actors, digests);
//! - [`event`]: the schema, the only types written to a log;
//! - [`replay`]: the fold of a history and the matcher;
//! - [`codec`]: events and fold checkpoints to bytes and back;
//! - [`status`]: run statuses and the rule that finds a lost wake-up;
//! - [`secret`]: values recorded as keyed hashes;
//! - [`audit`]: run records, timelines, per-tool reports, and tamper evidence
//!   ([`audit::transparency`]: the tree over the runs' heads, signed checkpoints, proofs).
//!
//! Users depend on `annal`, which re-exports all of this under the same paths.

pub mod approval;
pub mod audit;
pub mod breaker;
pub mod chain;
pub mod codec;
pub mod encoding;
pub mod event;
pub mod ids;
pub mod payload;
pub mod policy;
pub mod replay;
pub mod secret;
pub mod status;

pub use ids::{GateId, RunId, RunMeta};
