//! The [`LogStore`] trait, its data types, and the translation of one append into key writes
//! that both backends share (so they cannot disagree on layout or checks).

use serde::{Deserialize, Serialize};

use crate::error::{CorruptReason, Error, Result};
use crate::{frame, keys};

pub use annal_core::ids::{GateId, RunId, RunMeta};

/// One change to an index, applied atomically with the events of its append. The run is the
/// append's run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexOp {
    /// Register a due time (timer, backoff wake-up, approval deadline).
    PutTimer {
        /// Due time, ms since the Unix epoch.
        fire_at_ms: u64,
        /// Engine-chosen id, unique within the run.
        id: u32,
    },
    /// Remove a due time registered earlier (absent entries are ignored).
    DeleteTimer {
        /// Due time it was registered with.
        fire_at_ms: u64,
        /// Its id.
        id: u32,
    },
    /// Claim a start-dedupe key for this run. Fails the whole append with
    /// [`Error::DedupeTaken`] when another run holds it.
    ClaimDedupe {
        /// The caller's key, stored verbatim.
        key: Vec<u8>,
    },
    /// Register an approval gate of this run.
    PutGate {
        /// The gate.
        gate: GateId,
        /// Command position of the approval in the run.
        step: u32,
    },
    /// Remove an approval gate (absent entries are ignored).
    DeleteGate {
        /// The gate.
        gate: GateId,
    },
    /// Replace the run's checkpoint: bytes the engine can rebuild from the log, kept so that
    /// loading a long history need not read all of it. Storage frames them and nothing more.
    PutCheckpoint {
        /// The engine's encoding.
        bytes: Vec<u8>,
    },
    /// Answer a forwarded request (see [`LogStore::post_request`]) in the same atomic append
    /// as the events it caused, so a request is carried out exactly once even if the worker
    /// dies right after. Stores that are not shared ignore it (nothing is ever forwarded to
    /// them).
    AnswerRequest {
        /// The request.
        id: u64,
        /// The engine's encoding of the answer.
        answer: Vec<u8>,
    },
}

/// A request from another process to act on a run this process executes: a decision, a
/// signal, a cancel request, an operator action (see [`LogStore::post_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id, in posting order.
    pub id: u64,
    /// The run it is for.
    pub run: RunId,
    /// The engine's encoding of the act.
    pub body: Vec<u8>,
}

/// What a shared store asks the engine to look at (see [`LogStore::hints`]). Hints may be
/// late, repeated or lost; the polls behind them are what guarantees progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Try to take this run over: its worker died, or it waits for a worker (a request for
    /// it is pending, or it is `Running` with no owner).
    TakeOver(RunId),
    /// Requests are pending for this run, which this process executes.
    Requests(RunId),
    /// Hints may have been missed (the store's notification connection was re-established):
    /// look at everything again.
    Rescan,
}

/// One atomic append: the events, the run's metadata and the index changes land together or
/// not at all.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// Run appended to.
    pub run: RunId,
    /// The seq the first event gets; must equal the log's next seq (0 for a new run), else
    /// [`Error::Conflict`] and nothing is written.
    pub expected_next_seq: u64,
    /// Encoded events (unframed; the store frames them), seqs `expected_next_seq..`.
    pub events: Vec<Vec<u8>>,
    /// New metadata (its `next_seq` is overwritten). Required when the run is new; `None`
    /// keeps the stored metadata and writes no metadata at all.
    pub meta: Option<RunMeta>,
    /// Index changes.
    pub index: Vec<IndexOp>,
}

/// Ticket of an applied append, in commit order; pass it to [`LogStore::wait_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// One stored event, CRC-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number within the run.
    pub seq: u64,
    /// The event payload (frame removed).
    pub payload: Vec<u8>,
    /// The hash of the run's previous record this one links to (`None`: written before
    /// chaining). See [`crate::chain`].
    pub link: Option<crate::chain::Link>,
}

impl Record {
    /// This record's hash: what the next record of its run links to.
    pub fn hash(&self, run: RunId) -> crate::chain::Link {
        crate::chain::record_hash(run, self.seq, self.link.as_ref(), &self.payload)
    }
}

/// A due-time index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerEntry {
    /// Due time, ms since the Unix epoch.
    pub fire_at_ms: u64,
    /// The run to wake.
    pub run: RunId,
    /// The engine's id for it.
    pub id: u32,
}

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Durability {
    /// Survives power loss: sled flush, then fsync of the `db` file and its directory, once per
    /// group commit. The default. An append is synced as soon as somebody waits for it
    /// ([`LogStore::wait_durable`]), with everything applied before it; one nobody waits for
    /// rides along, or is synced on its own a few milliseconds later.
    #[default]
    PowerSafe,
    /// Survives a process crash, not a power cut: sled flush only.
    ProcessSafe,
    /// Acknowledged once applied; sled flushes in the background. Tests and demos.
    Buffered,
}

/// The durable, per-run, append-only event log with the indexes the engine needs.
///
/// Writers are serialised per run by `expected_next_seq`; the store enforces it rather than
/// trusting callers. All reads check frames and report damage as [`Error::Corrupt`].
#[async_trait::async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Applies one batch atomically and returns its position once applied (visible to reads,
    /// not yet necessarily durable).
    async fn append(&self, batch: AppendBatch) -> Result<Position>;

    /// Resolves once everything up to `position` is durable in the store's mode.
    async fn wait_durable(&self, position: Position) -> Result<()>;

    /// Resolves once every append applied so far, every write a read can see, is durable. A
    /// caller that answers from what it read (a dedupe holder, a decided gate, an ended run)
    /// waits for this first, so that a crash cannot take back what the answer rested on.
    async fn wait_applied_durable(&self) -> Result<()>;

    /// [`append`](Self::append) then [`wait_durable`](Self::wait_durable).
    async fn append_durable(&self, batch: AppendBatch) -> Result<Position> {
        let position = self.append(batch).await?;
        self.wait_durable(position).await?;
        Ok(position)
    }

    /// Up to `max` events of `run` from `from_seq` on, in seq order, each CRC-checked; a hole
    /// in the sequence is reported as corruption.
    async fn read(&self, run: RunId, from_seq: u64, max: usize) -> Result<Vec<Record>>;

    /// Hands every event of `run` from `from_seq` on to `visit`, in seq order, each
    /// CRC-checked and gap-checked as [`read`](Self::read) does, without copying payloads
    /// where the backend can avoid it (loading a run visits its whole history). Stops early
    /// when `visit` returns `false`.
    async fn read_each(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut (dyn for<'p> FnMut(u64, &'p [u8]) -> bool + Send),
    ) -> Result<()> {
        for record in self.read(run, from_seq, usize::MAX).await? {
            if !visit(record.seq, &record.payload) {
                break;
            }
        }
        Ok(())
    }

    /// The run's metadata, if the run exists.
    async fn meta(&self, run: RunId) -> Result<Option<RunMeta>>;

    /// All runs with their metadata, in run id order.
    async fn runs(&self) -> Result<Vec<(RunId, RunMeta)>>;

    /// Runs whose status is `status`, from the status index. Only statuses below
    /// [`keys::FINAL_STATUS_MIN`] are indexed: for a final status this lists nothing (or
    /// entries left by stores written before that rule); [`LogStore::runs`] has every run.
    async fn runs_with_status(&self, status: u8) -> Result<Vec<RunId>>;

    /// Up to `max` index entries due at or before `up_to_ms`, earliest first.
    async fn due_timers(&self, up_to_ms: u64, max: usize) -> Result<Vec<TimerEntry>>;

    /// The earliest due-time entry, if any.
    async fn next_timer(&self) -> Result<Option<TimerEntry>>;

    /// The run holding a start-dedupe key. Returns a holder only once its claim is durable
    /// (waiting as [`wait_applied_durable`](Self::wait_applied_durable) does), so a caller may
    /// hand the run out as started.
    async fn dedupe(&self, key: &[u8]) -> Result<Option<RunId>>;

    /// The run and command position of an approval gate.
    async fn gate(&self, gate: GateId) -> Result<Option<(RunId, u32)>>;

    /// Every approval gate: its id, run and command position, in gate id order.
    async fn gates(&self) -> Result<Vec<(GateId, RunId, u32)>>;

    /// The run's checkpoint bytes (see [`IndexOp::PutCheckpoint`]), frame-checked: damage is
    /// [`Error::CorruptIndex`].
    async fn checkpoint(&self, run: RunId) -> Result<Option<Vec<u8>>>;

    /// Deletes a run: its events, metadata and every index entry pointing at it, atomically.
    async fn purge(&self, run: RunId) -> Result<()>;

    /// The store's durability mode.
    fn durability(&self) -> Durability;

    /// Adds a tree head (a store-wide checkpoint of history: the engine's encoding, opaque
    /// here) to the store's list of them, durably; returns its index, counting from 0.
    async fn put_tree_head(&self, body: Vec<u8>) -> Result<u64>;

    /// Up to `max` tree heads from index `from` on, oldest first, each frame-checked
    /// ([`Error::CorruptIndex`] if damaged).
    async fn tree_heads(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>>;

    /// The newest tree head, if any.
    async fn latest_tree_head(&self) -> Result<Option<(u64, Vec<u8>)>>;

    // Several processes on one store. A store that one process owns (sled, which locks its
    // directory, and the simulator) has nothing to share, and the defaults say so.

    /// Whether several processes share this store, each executing the runs it holds a lease
    /// on. The engine then claims a run before it loads it, forwards acts on runs another
    /// worker executes, and polls for results it cannot be notified of.
    fn shared(&self) -> bool {
        false
    }

    /// Takes the run's lease for this process before the engine loads it or appends to it:
    /// refused with [`Error::LeaseHeld`] while another live worker holds it. Appends to a run
    /// whose lease was taken over are fenced ([`Error::Fenced`]).
    async fn claim(&self, run: RunId) -> Result<()> {
        let _ = run;
        Ok(())
    }

    /// Confirms that this process still holds the run's lease and its heartbeat is fresh,
    /// right before an effect that a stale worker must not start (a `Write` body): refused
    /// with [`Error::Fenced`] otherwise. Appends are fenced anyway; a step body writes nothing
    /// before it runs, so this is what keeps a worker that stalled past its lease from
    /// starting one.
    async fn check_lease(&self, run: RunId) -> Result<()> {
        let _ = run;
        Ok(())
    }

    /// Gives the run's lease up (the run parked, ended or was dropped from memory), so that
    /// any worker may take it. Best effort and without waiting: a lease not given up expires.
    fn release(&self, run: RunId) {
        let _ = run;
    }

    /// Gives every lease this process holds up (the engine shuts down).
    async fn release_all(&self) -> Result<()> {
        Ok(())
    }

    /// Hands a request to act on `run` to the worker that executes it; returns its id.
    /// Durable once this returns: if that worker dies, the next one to take the run carries
    /// it out.
    async fn post_request(&self, run: RunId, body: Vec<u8>) -> Result<u64> {
        let _ = (run, body);
        Err(Error::Unsupported(
            "acts are forwarded only on a shared store",
        ))
    }

    /// The answer to a request, once it has one; waits up to about `wait_ms` for it.
    async fn request_answer(&self, id: u64, wait_ms: u64) -> Result<Option<Vec<u8>>> {
        let _ = (id, wait_ms);
        Err(Error::Unsupported(
            "acts are forwarded only on a shared store",
        ))
    }

    /// Requests not yet answered for `run`, oldest first.
    async fn pending_requests(&self, run: RunId) -> Result<Vec<Request>> {
        let _ = run;
        Ok(Vec::new())
    }

    /// Answers a request without appending (a refusal), if this process still holds the run.
    async fn answer_request(&self, request: &Request, answer: Vec<u8>) -> Result<()> {
        let _ = (request, answer);
        Ok(())
    }

    /// A stream of hints (taken once; later calls get `None`). `None` for stores that are
    /// not shared.
    fn hints(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Hint>> {
        None
    }
}

/// Unframes a stored checkpoint.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Vec<u8>> {
    frame::decode(bytes)
        .map(<[u8]>::to_vec)
        .map_err(|e| Error::CorruptIndex {
            reason: CorruptReason::Frame(e),
        })
}

/// Reads all events of a run, CRC-checked and gap-checked.
pub async fn read_all(store: &dyn LogStore, run: RunId) -> Result<Vec<Record>> {
    store.read(run, 0, usize::MAX).await
}

/// Encodes metadata in a frame.
pub fn encode_meta(meta: &RunMeta) -> Vec<u8> {
    let payload = bincode::serialize(meta).expect("RunMeta always serialises");
    frame::encode(&payload)
}

/// Decodes framed metadata.
pub fn decode_meta(run: RunId, bytes: &[u8]) -> Result<RunMeta> {
    let payload = frame::decode(bytes).map_err(|e| Error::CorruptMeta {
        run,
        reason: CorruptReason::Frame(e),
    })?;
    bincode::deserialize(payload).map_err(|e| Error::CorruptMeta {
        run,
        reason: CorruptReason::Undecodable(e.to_string()),
    })
}

/// Checks one stored event record: its key must carry `expected_seq` and its frame must be
/// intact.
pub fn check_record(run: RunId, expected_seq: u64, found_seq: u64, bytes: &[u8]) -> Result<Record> {
    if found_seq != expected_seq {
        check_payload(run, expected_seq, found_seq, bytes)?;
    }
    let (link, payload) = frame::decode_linked(bytes).map_err(|e| Error::Corrupt {
        run,
        seq: found_seq,
        reason: CorruptReason::Frame(e),
    })?;
    Ok(Record {
        seq: found_seq,
        payload: payload.to_vec(),
        link: link.copied(),
    })
}

/// [`check_record`] without the copy: the payload inside the stored frame.
pub fn check_payload(run: RunId, expected_seq: u64, found_seq: u64, bytes: &[u8]) -> Result<&[u8]> {
    if found_seq != expected_seq {
        return Err(Error::Corrupt {
            run,
            seq: expected_seq,
            reason: CorruptReason::Gap {
                expected_seq,
                found_seq,
            },
        });
    }
    frame::decode(bytes).map_err(|e| Error::Corrupt {
        run,
        seq: found_seq,
        reason: CorruptReason::Frame(e),
    })
}

/// One key write of a planned append: `Some(value)` inserts, `None` removes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// Reads the current value of a key, as a backend sees it while planning.
pub type Get<'a> = &'a dyn Fn(&[u8]) -> Result<Option<Vec<u8>>>;

/// Turns an append into the exact key writes both backends apply, after checking the
/// expected seq and dedupe claims against the current state read through `get`.
///
/// Backends must call this and apply its result with no other write to the same run in
/// between (both do so from a single committer).
pub fn plan_append(batch: AppendBatch, get: Get<'_>) -> Result<Vec<Write>> {
    plan_append_at(batch, get, None)
}

/// What a backend that is a run's only writer remembers of it from its own appends, so that
/// planning the next append needs no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownLog {
    /// The seq after the run's last event.
    pub end: u64,
    /// The status its metadata holds, if the backend wrote it.
    pub status: Option<u8>,
    /// The hash of the run's last record (what the next one links to), if the backend
    /// knows it.
    pub head: Option<crate::chain::Link>,
}

/// The writes of a planned append, and the hash of the run's last record after it (what the
/// next append's first record links to; `None` when the append adds no events).
#[derive(Debug)]
pub struct Planned {
    /// The key writes, applied atomically.
    pub writes: Vec<Write>,
    /// The run's head after the append, if it added events.
    pub head: Option<crate::chain::Link>,
}

/// [`plan_append`] for a backend that remembers what it wrote: with `known.end ==
/// batch.expected_next_seq` the two reads that check the seq are skipped, and with a known
/// status the read of the metadata too. The backend must be the only writer of the run since
/// it learnt `known`.
pub fn plan_append_at(
    batch: AppendBatch,
    get: Get<'_>,
    known: Option<KnownLog>,
) -> Result<Vec<Write>> {
    plan_append_linked(batch, get, known).map(|planned| planned.writes)
}

/// [`plan_append_at`], also returning the run's head after the append. Each event record is
/// framed with the link to the record before it ([`crate::chain`]): the genesis for record 0,
/// `known.head` when the backend remembers it, else the hash of the stored previous record.
pub fn plan_append_linked(
    batch: AppendBatch,
    get: Get<'_>,
    known: Option<KnownLog>,
) -> Result<Planned> {
    let run = batch.run;
    let expected = batch.expected_next_seq;
    let known = known.filter(|k| k.end == expected);
    let read_meta = || -> Result<Option<RunMeta>> {
        match get(&keys::meta(run))? {
            Some(bytes) => Ok(Some(decode_meta(run, &bytes)?)),
            None => Ok(None),
        }
    };
    // The metadata, once read.
    let mut stored: Option<Option<RunMeta>> = None;
    // The log's end is its last event key: two point reads check it, so an append that
    // changes no status writes its events and nothing else.
    let ends_at_expected = if known.is_some() {
        true
    } else if expected == 0 {
        // A run's metadata is written with its first event and removed only with its whole
        // log, so a run without metadata has no events: a new run costs one read.
        let meta = read_meta()?;
        let empty = meta.is_none() || get(&keys::event(run, 0))?.is_none();
        stored = Some(meta);
        empty
    } else {
        get(&keys::event(run, expected - 1))?.is_some()
            && get(&keys::event(run, expected))?.is_none()
    };
    if !ends_at_expected {
        return Err(Error::Conflict {
            run,
            expected,
            found: log_end(run, get)?,
        });
    }
    let stored_status = if batch.meta.is_some() || expected == 0 {
        match (known.and_then(|k| k.status), stored) {
            (Some(status), _) => Some(status),
            (None, Some(meta)) => meta.map(|m| m.status),
            (None, None) => read_meta()?.map(|m| m.status),
        }
    } else {
        None
    };
    let next_seq = expected + batch.events.len() as u64;
    let meta = match batch.meta {
        Some(mut meta) => {
            meta.next_seq = next_seq;
            Some(meta)
        }
        None if expected == 0 && stored_status.is_none() => return Err(Error::UnknownRun(run)),
        None => None,
    };
    let mut writes: Vec<Write> = Vec::with_capacity(batch.events.len() + batch.index.len() + 3);
    let mut head = None;
    if !batch.events.is_empty() && crate::chain::unlinked_for_bench() {
        for (i, payload) in batch.events.iter().enumerate() {
            writes.push((
                keys::event(run, expected + i as u64),
                Some(frame::encode(payload)),
            ));
        }
    } else if !batch.events.is_empty() {
        let mut link = match (expected, known.and_then(|k| k.head)) {
            (0, _) => crate::chain::genesis(run),
            (_, Some(head)) => head,
            _ => previous_hash(run, expected - 1, get)?,
        };
        for (i, payload) in batch.events.iter().enumerate() {
            let seq = expected + i as u64;
            writes.push((
                keys::event(run, seq),
                Some(frame::encode_linked(&link, payload)),
            ));
            link = crate::chain::record_hash(run, seq, Some(&link), payload);
        }
        head = Some(link);
    }
    if let Some(meta) = &meta {
        if stored_status != Some(meta.status) {
            if let Some(old) = stored_status {
                // Whatever the old status: a store written before final statuses went
                // unindexed may hold an entry for one.
                writes.push((keys::status(old, run), None));
            }
            if keys::status_is_indexed(meta.status) {
                writes.push((keys::status(meta.status, run), Some(Vec::new())));
            }
        }
        writes.push((keys::meta(run), Some(encode_meta(meta))));
    }
    for op in batch.index {
        match op {
            IndexOp::PutTimer { fire_at_ms, id } => {
                writes.push((keys::timer(fire_at_ms, run, id), Some(Vec::new())));
            }
            IndexOp::DeleteTimer { fire_at_ms, id } => {
                writes.push((keys::timer(fire_at_ms, run, id), None));
            }
            IndexOp::ClaimDedupe { key } => {
                let key = keys::dedupe(&key);
                if let Some(holder) = get(&key)? {
                    let existing =
                        keys::parse_run_value(&holder).ok_or_else(|| Error::CorruptIndex {
                            reason: CorruptReason::BadKey(key.clone()),
                        })?;
                    if existing != run {
                        return Err(Error::DedupeTaken { existing });
                    }
                }
                writes.push((key, Some(run.0.to_vec())));
            }
            IndexOp::PutGate { gate, step } => {
                writes.push((keys::gate(gate), Some(keys::gate_value(run, step))));
            }
            IndexOp::DeleteGate { gate } => writes.push((keys::gate(gate), None)),
            IndexOp::PutCheckpoint { bytes } => {
                writes.push((keys::checkpoint(run), Some(frame::encode(&bytes))));
            }
            // Nothing is forwarded to a store that one process owns.
            IndexOp::AnswerRequest { .. } => {}
        }
    }
    Ok(Planned { writes, head })
}

/// The hash of the stored record `seq` of `run`, which the seq check found present.
fn previous_hash(run: RunId, seq: u64, get: Get<'_>) -> Result<crate::chain::Link> {
    let bytes = get(&keys::event(run, seq))?.ok_or(Error::Conflict {
        run,
        expected: seq + 1,
        found: seq,
    })?;
    crate::chain::frame_hash(run, seq, &bytes).ok_or_else(|| Error::Corrupt {
        run,
        seq,
        reason: CorruptReason::Frame(
            frame::decode(&bytes)
                .err()
                .unwrap_or(frame::FrameError::UnknownFormat(0)),
        ),
    })
}

/// The seq after a run's last event, found with point reads (a gallop, then a binary search):
/// only a conflicting append needs it, to say where the log really ends.
fn log_end(run: RunId, get: Get<'_>) -> Result<u64> {
    log_end_from(run, 0, get)
}

/// The seq after a run's last event, for a log known to reach at least `from` unless it lost
/// its tail: point reads from `from` on (one when `from` is the end, a gallop and a binary
/// search otherwise). Returns `from` when the event at `from` is absent, so a log shorter
/// than recorded reads as ending where it was recorded to end, and its reader finds the
/// hole. A backend whose reverse lookups are slow (sled's `get_lt` iterates backwards) finds
/// a run's end this way from the `next_seq` its metadata recorded.
pub fn log_end_from(run: RunId, from: u64, get: Get<'_>) -> Result<u64> {
    let present = |seq: u64| -> Result<bool> { Ok(get(&keys::event(run, seq))?.is_some()) };
    if !present(from)? {
        return Ok(from);
    }
    // Invariant: `low` is present, `high` is absent (a log has no holes).
    let (mut low, mut step) = (from, 1u64);
    let mut high = from.saturating_add(step);
    while high < u64::MAX / 2 && present(high)? {
        low = high;
        step *= 2;
        high = from.saturating_add(step);
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if present(mid)? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(high)
}

/// Completes stored metadata with the log's end: `next_seq` as recorded at the last metadata
/// write, or the seq after `last_event_seq` when the log has grown since; `status_seq` is the
/// recorded value. Both backends read metadata through this.
pub fn meta_with_log_end(mut meta: RunMeta, last_event_seq: Option<u64>) -> RunMeta {
    let end = last_event_seq.map_or(0, |s| s.saturating_add(1));
    meta.status_seq = meta.next_seq;
    meta.next_seq = meta.next_seq.max(end);
    meta
}

/// Key/value pairs under a prefix, as a backend scans them.
pub type Scan<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

/// Plans the deletion of a run: its events, metadata, status entry, and every timer, dedupe
/// and gate entry that points at it. Retention is rare, so scanning the small index
/// keyspaces is acceptable.
pub fn plan_purge(run: RunId, scan: Scan<'_>) -> Result<Vec<Write>> {
    let mut writes: Vec<Write> = Vec::new();
    for (k, _) in scan(&keys::event_prefix(run))? {
        writes.push((k, None));
    }
    for (k, v) in scan(&keys::meta(run))? {
        if k.len() == 17 {
            let meta = decode_meta(run, &v)?;
            writes.push((keys::status(meta.status, run), None));
            writes.push((k, None));
        }
    }
    writes.push((keys::checkpoint(run), None));
    for (k, _) in scan(&[keys::TIMER])? {
        if keys::parse_timer(&k).is_some_and(|t| t.run == run) {
            writes.push((k, None));
        }
    }
    for (k, v) in scan(&[keys::DEDUPE])? {
        if keys::parse_run_value(&v) == Some(run) {
            writes.push((k, None));
        }
    }
    for (k, v) in scan(&[keys::GATE])? {
        if keys::parse_gate_value(&v).is_some_and(|(r, _)| r == run) {
            writes.push((k, None));
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's end is found from any starting point: below the end (metadata recorded
    /// before later steps), at it, and past it (a lost tail reads as the recorded end).
    #[test]
    fn log_end_from_finds_the_end_from_any_recorded_seq() {
        let run = RunId([7; 16]);
        for len in [0u64, 1, 2, 3, 5, 8, 13, 100, 1000] {
            let get = |key: &[u8]| -> Result<Option<Vec<u8>>> {
                let (_, seq) = keys::parse_event(key).expect("event key");
                Ok((seq < len).then(Vec::new))
            };
            assert_eq!(log_end(run, &get).unwrap(), len, "from 0, len {len}");
            for from in 0..len {
                assert_eq!(log_end_from(run, from, &get).unwrap(), len, "from {from}");
            }
            assert_eq!(log_end_from(run, len + 4, &get).unwrap(), len + 4);
        }
    }

    /// A committer that remembers a run's end and status plans its steps and its end without
    /// reading; whatever it does not remember, it reads.
    #[test]
    fn a_known_log_and_status_plan_without_reads() {
        let run = RunId([9; 16]);
        let meta = |status| RunMeta {
            workflow: "w".into(),
            version: 1,
            status,
            next_seq: 0,
            created_ms: 0,
            updated_ms: 0,
            wake_ms: None,
            note: String::new(),
            status_seq: 0,
        };
        let batch = |expected, meta: Option<RunMeta>| AppendBatch {
            run,
            expected_next_seq: expected,
            events: vec![b"e".to_vec()],
            meta,
            index: vec![],
        };
        // The store holds events 0..3 and metadata with status 2.
        let reads = std::cell::Cell::new(0);
        let get = |key: &[u8]| -> Result<Option<Vec<u8>>> {
            reads.set(reads.get() + 1);
            if key == keys::meta(run).as_slice() {
                return Ok(Some(encode_meta(&meta(2))));
            }
            let (_, seq) = keys::parse_event(key).expect("event or meta key");
            Ok((seq < 3).then(Vec::new))
        };
        let status_writes = |writes: &[Write]| -> Vec<(u8, bool)> {
            writes
                .iter()
                .filter(|(k, _)| k[0] == keys::STATUS)
                .map(|(k, v)| (k[1], v.is_some()))
                .collect()
        };
        let known = |end, status| {
            Some(KnownLog {
                end,
                status,
                head: Some([5; 32]),
            })
        };

        let writes = plan_append_at(batch(3, None), &get, known(3, Some(1))).unwrap();
        assert_eq!((writes.len(), reads.get()), (1, 0));
        let writes = plan_append_at(batch(3, Some(meta(10))), &get, known(3, Some(1))).unwrap();
        assert_eq!(reads.get(), 0, "an end with the status known reads nothing");
        assert_eq!(status_writes(&writes), vec![(1, false)]);

        // Status unknown: the metadata is read for it.
        let writes = plan_append_at(batch(3, Some(meta(1))), &get, known(3, None)).unwrap();
        assert_eq!(reads.get(), 1);
        assert_eq!(status_writes(&writes), vec![(2, false), (1, true)]);
        // An append that expects another end than remembered is checked against the log.
        reads.set(0);
        let err = plan_append_at(batch(5, None), &get, known(3, Some(1))).unwrap_err();
        assert!(matches!(err, Error::Conflict { found: 3, .. }), "{err:?}");
        let err = plan_append_at(batch(0, Some(meta(1))), &get, known(3, Some(1))).unwrap_err();
        assert!(matches!(err, Error::Conflict { found: 3, .. }), "{err:?}");

        // A new run costs one read: no metadata means no events.
        let none = |key: &[u8]| -> Result<Option<Vec<u8>>> {
            reads.set(reads.get() + 1);
            assert_eq!(key, keys::meta(run).as_slice(), "only the metadata is read");
            Ok(None)
        };
        reads.set(0);
        let writes = plan_append_at(batch(0, Some(meta(1))), &none, None).unwrap();
        assert_eq!(reads.get(), 1);
        assert_eq!(status_writes(&writes), vec![(1, true)]);
    }
}
