//! The one error type of the storage layer.

use crate::frame::FrameError;
use crate::RunId;

/// Why stored bytes could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The frame around the record is damaged.
    Frame(FrameError),
    /// A sequence number is missing: the log has a hole.
    Gap {
        /// The seq that should have come next.
        expected_seq: u64,
        /// The seq that was found instead.
        found_seq: u64,
    },
    /// The frame is intact but its payload does not decode.
    Undecodable(String),
    /// A key in an index keyspace has the wrong shape.
    BadKey(Vec<u8>),
}

impl std::fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptReason::Frame(e) => write!(f, "{e}"),
            CorruptReason::Gap {
                expected_seq,
                found_seq,
            } => {
                write!(
                    f,
                    "missing seq {expected_seq} (next present is {found_seq})"
                )
            }
            CorruptReason::Undecodable(why) => write!(f, "undecodable payload: {why}"),
            CorruptReason::BadKey(key) => write!(f, "malformed index key {key:02x?}"),
        }
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation (full disk, permissions, …).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// sled reported an error that is not plain I/O.
    #[error("sled error: {0}")]
    Sled(String),
    /// An event record failed its integrity checks.
    #[error("corrupt record: run {run} seq {seq}: {reason}")]
    Corrupt {
        /// Run the record belongs to.
        run: RunId,
        /// Sequence number of the record.
        seq: u64,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// A run's metadata record failed its integrity checks.
    #[error("corrupt run metadata: run {run}: {reason}")]
    CorruptMeta {
        /// Run the metadata belongs to.
        run: RunId,
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// An index entry is malformed.
    #[error("corrupt index entry: {reason}")]
    CorruptIndex {
        /// What is wrong with it.
        reason: CorruptReason,
    },
    /// The append expected a different next sequence number: another writer got there first.
    /// Nothing was written.
    #[error("append conflict on run {run}: expected next seq {expected}, log is at {found}")]
    Conflict {
        /// Run appended to.
        run: RunId,
        /// The next seq the caller expected.
        expected: u64,
        /// The next seq the log actually has.
        found: u64,
    },
    /// The start-dedupe key is already held by another run. Nothing was written.
    #[error("dedupe key already claimed by run {existing}")]
    DedupeTaken {
        /// The run that holds the key.
        existing: RunId,
    },
    /// An append without metadata was made to a run that does not exist.
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// A previous flush or fsync failed; the store refuses all further writes because what is
    /// on disk can no longer be known. Reopen the store to recover.
    #[error("store poisoned by an earlier durability failure: {cause}")]
    Poisoned {
        /// The failure that poisoned the store.
        cause: String,
    },
    /// Another process holds the database directory.
    #[error("database at {path} is locked by another process (stop the service using it, or point at a copy)")]
    Locked {
        /// The database directory.
        path: std::path::PathBuf,
    },
    /// A simulated crash happened ([`crate::SimStore`] only); the store accepts nothing more
    /// until [`crate::SimStore::crash`] is called.
    #[error("simulated crash")]
    Crashed,
    /// The store has been closed.
    #[error("store closed")]
    Closed,
    /// Another live process executes the run (it holds the run's lease): this one may not
    /// append to it. Acts from outside are forwarded to that process instead.
    #[error("run {run} is executed by worker {owner}")]
    LeaseHeld {
        /// The run.
        run: RunId,
        /// The worker that holds it.
        owner: String,
    },
    /// The append was fenced: this process no longer holds the run's lease (it expired and
    /// another worker took the run over). Nothing was written; the run must be dropped at
    /// once and left to its new owner.
    #[error("run {run}: lease lost (another worker took the run over); nothing was written")]
    Fenced {
        /// The run.
        run: RunId,
    },
    /// The database could not be reached, or a commit's outcome is unknown (the connection
    /// broke during it). A transient condition, unlike [`Error::Poisoned`]: the runs
    /// concerned are reloaded from what the database holds.
    #[error("database unavailable: {cause}")]
    Unavailable {
        /// What failed.
        cause: String,
    },
    /// The store was created by a newer version of annal than this one, or its schema is
    /// otherwise not one this code knows. Nothing was changed.
    #[error("store schema version {found} is newer than this code supports ({supported}); upgrade annal")]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The newest version this code knows.
        supported: i32,
    },
    /// The operation needs a store that several processes share (forwarding acts to the
    /// worker that executes a run).
    #[error("this store is not shared between processes: {0}")]
    Unsupported(&'static str),
}

impl Error {
    /// Whether the error means this process lost (or never had) the right to write the run,
    /// or cannot know whether its last write landed: the run is dropped from memory and
    /// resumed from what the store holds, by this process or another, rather than the store
    /// being treated as failed.
    pub fn drops_run(&self) -> bool {
        matches!(
            self,
            Error::LeaseHeld { .. } | Error::Fenced { .. } | Error::Unavailable { .. }
        )
    }
}

/// Result alias of the storage layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
