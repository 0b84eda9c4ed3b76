//! The sled backend: one sled `Tree`, and a committer thread that applies each group of
//! appends with one `apply_batch` and makes it durable with one flush (and fsync). The design
//! is documented on [`SledStore`], where users of the crate can read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::error::{CorruptReason, Error, Result};
use crate::keys;
use crate::store::{
    check_payload, check_record, decode_checkpoint, decode_meta, log_end_from, plan_append_linked,
    plan_purge, AppendBatch, Durability, GateId, KnownLog, LogStore, Planned, Position, Record,
    RunId, RunMeta, TimerEntry,
};

/// Default size of sled's page cache: 64 MiB. sled's own default (1 GiB) is far more than an
/// embedded workflow log needs and would compete with the host application for memory.
const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// The most requests one group takes, so that under a flood of writers the first append of a
/// group does not wait behind an unbounded number of others.
const MAX_GROUP_APPENDS: usize = 1024;

/// The longest the committer waits for more appends before a sync (see `Committer::gather`).
const MAX_GATHER: Duration = Duration::from_millis(2);

/// How long an append nobody waits on (a `Read` or `Draft` step's completion) may stay
/// applied but not durable when no durable append follows it: the syncer then makes it
/// durable on its own. A crash in that window loses only such appends, which are safe to
/// redo; an append somebody waits for is synced at once, with everything applied before it.
const UNWAITED_SYNC_DELAY: Duration = Duration::from_millis(5);

/// Reads of at most this many records use point reads (see `read`).
const SHORT_READ_MAX: usize = 4;

/// The file sled keeps its log and pages in, inside the database directory (sled 0.34 layout).
const SLED_DATA_FILE: &str = "db";

/// The directory sled keeps oversized values in, inside the database directory (sled 0.34).
const SLED_BLOBS_DIR: &str = "blobs";

/// How to open a [`SledStore`].
///
/// Build it with [`SledConfig::new`] and the chained setters; the struct is `non_exhaustive`
/// so new settings can be added without breaking callers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledConfig {
    /// The database directory; created if missing.
    pub path: PathBuf,
    /// When an append counts as durable. Defaults to [`Durability::PowerSafe`].
    pub durability: Durability,
    /// Size of sled's page cache in bytes. Defaults to 64 MiB.
    pub cache_capacity_bytes: u64,
}

impl SledConfig {
    /// A configuration for the database directory `path`, power-safe, with a 64 MiB cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            cache_capacity_bytes: DEFAULT_CACHE_CAPACITY_BYTES,
        }
    }

    /// Sets the durability mode.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the size of sled's page cache, in bytes.
    pub fn cache_capacity_bytes(mut self, bytes: u64) -> Self {
        self.cache_capacity_bytes = bytes;
        self
    }

    /// Opens the store; same as [`SledStore::open`].
    pub fn open(self) -> Result<SledStore> {
        SledStore::open(self)
    }
}

/// What the committer publishes: how far the log is durable, or why it can no longer be.
#[derive(Debug, Clone, Default)]
struct DurableState {
    /// Every append with a position at or below this is durable in the store's mode.
    position: u64,
    /// Set once, when a write or sync fails; never cleared.
    poisoned: Option<String>,
}

/// A write for the committer, with the channel its answer goes back on.
enum Request {
    Append {
        batch: AppendBatch,
        reply: oneshot::Sender<Result<Position>>,
    },
    Purge {
        run: RunId,
        reply: oneshot::Sender<Result<Position>>,
    },
    TreeHead {
        body: Vec<u8>,
        reply: oneshot::Sender<Result<(u64, Position)>>,
    },
}

/// State the store and its committer share.
struct Shared {
    /// The durable position and the poison, watched by every `wait_durable`.
    publish: watch::Sender<DurableState>,
    /// Durability points reached (group commits).
    commits: AtomicU64,
    /// Position of the last append or purge planned: every write a read can see is at or
    /// below it.
    planned: AtomicU64,
    /// A failure to report instead of the next sync (tests).
    fail_next_sync: Mutex<Option<String>>,
}

impl Shared {
    fn poisoned(&self) -> Option<String> {
        self.publish.borrow().poisoned.clone()
    }

    /// Marks the store unusable and wakes every waiter with the cause. The first cause wins:
    /// later failures are consequences of it.
    fn poison(&self, cause: String) {
        tracing::error!(%cause, "annal store poisoned; reopen it to recover");
        self.publish.send_modify(|state| {
            state.poisoned.get_or_insert(cause);
        });
    }

    /// Declares everything up to `position` durable, waking the waiters at or below it.
    fn publish_durable(&self, position: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.publish
            .send_modify(|state| state.position = state.position.max(position));
    }

    fn take_injected_failure(&self) -> Option<String> {
        lock(&self.fail_next_sync).take()
    }
}

/// [`LogStore`] on sled 0.34.7: one sled `Tree`, group commit, and real fsync in `PowerSafe`
/// mode.
///
/// # Why group commit, and how
///
/// sled 0.34.7's `flush()` ends in `sync_file_range`, which writes the pages but neither the
/// file's metadata nor the disk's write cache, so it does not survive a power cut
/// (spacejam/sled#1452). A real fsync costs from a few hundred microseconds to several
/// milliseconds; paying it once per append would cap the store at a few hundred to a few
/// thousand appends a second. So every write goes through one dedicated committer thread,
/// which loops:
///
/// 1. It blocks for the first request, then drains whatever else is queued (up to 1024).
/// 2. It plans each append with [`plan_append`](crate::plan_append), reading current values
///    from the tree as the group's earlier appends have changed it (and skipping the seq
///    check's reads for runs whose log end it remembers). A failed plan (conflict, taken dedupe key) is answered at
///    once and writes nothing. An append that is one event record and nothing else, for a run
///    with no writes waiting in the group, is inserted into sled right away (a single insert
///    is atomic) and answered, so sled's work overlaps the gathering.
/// 3. It applies the rest of the group with one `apply_batch` and answers those appends with
///    their [`Position`]s: the appends are now visible to reads, not yet durable.
/// 4. It hands the group's last position to the syncer thread and goes on with the next
///    group. The syncer makes durable everything applied when it starts (`PowerSafe`: flush,
///    then fsync of the `db` file, of new blob files, and of the directory when its entries
///    changed; `ProcessSafe`: flush; `Buffered` has no syncer: the committer publishes at
///    once) and publishes that position, which wakes every [`LogStore::wait_durable`]
///    caller at or below it. It starts a sync as soon as a `wait_durable` caller waits for
///    something applied, and otherwise 5 ms after the oldest unsynced apply: an append
///    nobody waits on (a `Read` step's completion) rides along with the next one somebody
///    waits for, so a chain alternating `Read` and `Write` steps pays one sync per `Write`.
///    If the store is busy, it first waits briefly for the writers its last sync
///    acknowledged (see `gather` in the source: at most half a sync, at most 2 ms).
///    Applying and syncing overlap, so an append is applied at once even while a sync
///    runs, and a sync covers every group applied while the one before it ran.
///
/// One `apply_batch` per group rather than per append because sled 0.34 seals and writes its
/// IO buffer on every `apply_batch` (`PageCache::pin_log`): 256 single-append batches cost 256
/// `pwrite` + `sync_file_range` pairs at the next flush, measured at 28–44 ms against 1–2.5 ms
/// for one batch with the same writes (BENCHMARKS.md). Each append stays all-or-nothing,
/// because its batch (or single insert) is, and a run's appends reach sled's log in order, so
/// a crash leaves every run's log a prefix.
///
/// Being the only writer is also what makes `plan_append` sound: nothing can change a run
/// between the read of its metadata and the batch that depends on it.
///
/// # Poisoning
///
/// If a flush, fsync or `apply_batch` fails, what is on disk is no longer known (Linux may even
/// drop the dirty pages and report success on the next fsync). The store then refuses all
/// further appends and waits with [`Error::Poisoned`]; reopening it recovers from what sled
/// finds on disk.
///
/// # Reads and shutdown
///
/// Reads go straight to the sled tree from the calling task; they see every append that has
/// been answered, durable or not. Dropping the store stops the committer after every queued
/// request has been answered and made durable, then closes sled (which flushes again).
pub struct SledStore {
    db: sled::Db,
    config: SledConfig,
    /// `None` only while stopping, so the committer sees the channel close.
    requests: Option<mpsc::Sender<Request>>,
    durable: watch::Receiver<DurableState>,
    shared: Arc<Shared>,
    /// Where `wait_durable` says what it waits for (`None` in `Buffered` mode: no syncer).
    syncs: Option<Arc<SyncQueue>>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the database in `config.path` and starts its committer thread.
    ///
    /// Fails with [`Error::Locked`] when another process (or another open `SledStore` in this
    /// one) holds the directory, and with [`Error::Io`] when the directory cannot be created or
    /// read.
    pub fn open(config: SledConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.path)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .open()
            .map_err(|e| open_error(&config.path, e))?;

        let (publish, durable) = watch::channel(DurableState::default());
        let shared = Arc::new(Shared {
            publish,
            commits: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            fail_next_sync: Mutex::new(None),
        });

        let handles = match config.durability {
            Durability::PowerSafe => Some(SyncHandles::open(&config.path)?),
            Durability::ProcessSafe | Durability::Buffered => None,
        };
        let (requests, inbox) = mpsc::channel();
        let syncs = Arc::new(SyncQueue::new(UNWAITED_SYNC_DELAY));
        let syncer = match config.durability {
            Durability::Buffered => None,
            Durability::PowerSafe | Durability::ProcessSafe => {
                let syncer = Syncer {
                    db: db.clone(),
                    shared: Arc::clone(&shared),
                    handles,
                    queue: Arc::clone(&syncs),
                };
                Some(
                    std::thread::Builder::new()
                        .name("annal-syncer".into())
                        .spawn(move || syncer.run())?,
                )
            }
        };
        let waits = syncer.is_some().then(|| Arc::clone(&syncs));
        let committer = Committer {
            db: db.clone(),
            inbox,
            shared: Arc::clone(&shared),
            durability: config.durability,
            syncs,
            syncer,
            applied: 0,
            log_ends: HashMap::new(),
        };
        let committer = std::thread::Builder::new()
            .name("annal-committer".into())
            .spawn(move || committer.run())?;

        Ok(Self {
            db,
            config,
            requests: Some(requests),
            durable,
            shared,
            syncs: waits,
            committer: Some(committer),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SledConfig {
        &self.config
    }

    /// Group commits made since the store was opened: in `PowerSafe` mode each is one flush
    /// and fsync. Appends divided by commits is the mean group size, which shows how
    /// well concurrent writers share syncs.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Stops the committer (after it has answered and synced everything queued) and flushes
    /// sled. Dropping the store does the same but cannot report a failure.
    ///
    /// Returns [`Error::Poisoned`] if the store was poisoned, since then the final state on
    /// disk is unknown.
    pub fn close(mut self) -> Result<()> {
        self.stop_committer();
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        self.db.flush().map_err(sled_error)?;
        Ok(())
    }

    /// The sled tree that holds everything, for tools and tests that need raw bytes: the
    /// auditor CLI scans it, a corruption test flips a byte of a stored record through it.
    /// The layout is in `docs/format.md`.
    ///
    /// Writing through it bypasses the committer, the frame checks and durability (and the
    /// committer's memory of where each log ends): only do so to damage a store on purpose.
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.db
    }

    /// Makes the next durability point fail as if its flush or fsync had failed with `cause`,
    /// which poisons the store. For tests: a real disk error is hard to provoke. Works in every
    /// durability mode (in `Buffered` the "sync" is the point where a group is declared
    /// durable).
    #[doc(hidden)]
    pub fn fail_next_sync(&self, cause: impl Into<String>) {
        *lock(&self.shared.fail_next_sync) = Some(cause.into());
    }

    /// Sends a request to the committer and waits for its answer.
    async fn submit(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Position>>) -> Request,
    ) -> Result<Position> {
        // Refuse early rather than queue behind a failure the committer already knows about.
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(Error::Closed)?;
        requests.send(make(reply)).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }

    fn stop_committer(&mut self) {
        // Closing the channel is the stop signal: the committer answers what is still queued,
        // commits it, and returns when `recv` reports the disconnect.
        drop(self.requests.take());
        if let Some(committer) = self.committer.take() {
            if committer.join().is_err() {
                tracing::error!("annal committer thread panicked");
            }
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        self.db.get(key).map_err(sled_error)
    }

    /// Stored metadata completed with the log's end: point reads of event keys from the
    /// `next_seq` it recorded (one read when no step was appended since the last status
    /// change). sled 0.34's `get_lt` walks a reverse iterator, which cost a `result()` call
    /// more than the rest of its work.
    fn with_log_end(&self, mut meta: RunMeta, run: RunId) -> Result<RunMeta> {
        meta.status_seq = meta.next_seq;
        meta.next_seq = log_end_from(run, meta.next_seq, &|key| {
            Ok(self.get(key)?.map(|value| value.to_vec()))
        })?;
        Ok(meta)
    }

    /// Every key (and value) under `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> {
        self.db
            .scan_prefix(prefix)
            .map(|item| item.map_err(sled_error))
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.stop_committer();
    }
}

/// The appends of one group, planned but not yet applied.
#[derive(Default)]
struct Group {
    /// Every key the group writes, with its final value (`None` removes). Later appends of the
    /// group plan against it, so two appends to one run, or two claims of one dedupe key, in
    /// the same group see each other.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Who to answer once the writes are applied, with the position each append got.
    answers: Vec<(oneshot::Sender<Result<Position>>, Position)>,
    /// Requests taken into the group, failed ones and purges included.
    taken: usize,
    /// Runs with writes waiting in `writes`: their later appends must wait too, so that sled's
    /// log (which a crash cuts to a prefix) never holds a run's later events without its
    /// earlier ones.
    waiting_runs: HashSet<RunId>,
}

/// The single writer: plans and applies groups of requests, and hands what it applied to the
/// syncer, which makes it durable while the next groups are applied.
struct Committer {
    db: sled::Db,
    inbox: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    durability: Durability,
    /// Where applied positions go to be made durable (`PowerSafe` and `ProcessSafe`).
    syncs: Arc<SyncQueue>,
    /// The syncer thread, joined once it has made the last groups durable.
    syncer: Option<JoinHandle<()>>,
    /// Position of the last planned append or purge.
    applied: u64,
    /// Where the logs this committer appended to end (the seq of their next event) and the
    /// status it wrote, so that an append's seq check and status change need no reads. Only
    /// this thread writes through the store, and a purge forgets its run. Holds the runs it
    /// wrote that have not ended, bounded: cleared when it reaches `LOG_ENDS_MAX` runs.
    log_ends: HashMap<RunId, KnownLog>,
}

/// Runs whose log end and status the committer remembers (about 48 bytes each): more than
/// the runs that append at once in any realistic service.
const LOG_ENDS_MAX: usize = 4096;

impl Committer {
    fn run(mut self) {
        while let Ok(first) = self.inbox.recv() {
            let mut group = Group::default();
            self.take(&mut group, first);
            while group.taken < MAX_GROUP_APPENDS {
                let Ok(next) = self.inbox.try_recv() else {
                    break;
                };
                self.take(&mut group, next);
            }
            self.apply_group(&mut group);
            self.commit();
        }
        // The inbox closed: the syncer makes the last groups durable, then stops.
        self.syncs.close();
        if let Some(syncer) = self.syncer.take() {
            if syncer.join().is_err() {
                tracing::error!("annal syncer thread panicked");
            }
        }
    }

    /// Plans one request into the group. A purge plans by scanning key ranges, which cannot
    /// see the group's not-yet-applied writes; those are applied first, then the purge alone.
    fn take(&mut self, group: &mut Group, request: Request) {
        group.taken += 1;
        match request {
            Request::Append { batch, reply } => self.plan_into(group, batch, reply),
            Request::Purge { run, reply } => {
                self.log_ends.remove(&run);
                self.apply_group(group);
                let result = self.purge(run);
                let _ = reply.send(result);
            }
            Request::TreeHead { body, reply } => {
                let _ = reply.send(self.plan_tree_head(group, body));
            }
        }
    }

    /// Adds a tree head after the last one, in the group's batch.
    fn plan_tree_head(&mut self, group: &mut Group, body: Vec<u8>) -> Result<(u64, Position)> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let last = group
            .writes
            .keys()
            .rev()
            .find_map(|k| keys::parse_tree_head(k))
            .map(Ok)
            .or_else(|| {
                self.db
                    .scan_prefix([keys::TREE_HEAD])
                    .keys()
                    .next_back()
                    .map(|k| {
                        let k = k.map_err(sled_error)?;
                        keys::parse_tree_head(&k).ok_or_else(|| bad_key(&k))
                    })
            })
            .transpose()?;
        let index = last.map_or(0, |i| i + 1);
        group
            .writes
            .insert(keys::tree_head(index), Some(crate::frame::encode(&body)));
        Ok((index, self.next_position()))
    }

    /// Plans one append against the tree as the group has changed it so far, and adds its
    /// writes to the group. A planning error is answered at once and adds nothing.
    fn plan_into(
        &mut self,
        group: &mut Group,
        batch: AppendBatch,
        reply: oneshot::Sender<Result<Position>>,
    ) {
        if let Some(cause) = self.shared.poisoned() {
            let _ = reply.send(Err(Error::Poisoned { cause }));
            return;
        }
        let run = batch.run;
        let end = batch.expected_next_seq + batch.events.len() as u64;
        let known = self.log_ends.get(&run).copied();
        let status = batch.meta.as_ref().map(|meta| meta.status);
        let planned = plan_append_linked(
            batch,
            &|key| match group.writes.get(key) {
                Some(pending) => Ok(pending.clone()),
                None => Ok(self.db.get(key).map_err(sled_error)?.map(|v| v.to_vec())),
            },
            known,
        );
        match planned {
            Ok(Planned { writes, head }) => {
                let status = status.or(known.and_then(|k| k.status));
                // The head moves with the events; an append of index changes alone keeps it.
                let head = head.or(known.filter(|k| k.end == end).and_then(|k| k.head));
                if status.is_some_and(|s| !keys::status_is_indexed(s)) {
                    // Ended: the run appends nothing more, so it gives its place up.
                    self.log_ends.remove(&run);
                } else {
                    if self.log_ends.len() >= LOG_ENDS_MAX {
                        self.log_ends.clear();
                    }
                    self.log_ends.insert(run, KnownLog { end, status, head });
                }
                if !group.waiting_runs.contains(&run) && writes.len() == 1 {
                    if let [(key, Some(value))] = writes.as_slice() {
                        // One event record and nothing else (a step): sled inserts one key
                        // atomically, so it goes in now, while the rest of the group gathers,
                        // instead of in the group's batch after it.
                        let answer = match self.db.insert(key.as_slice(), value.as_slice()) {
                            Ok(_) => Ok(self.next_position()),
                            Err(e) => {
                                let cause = format!("sled insert failed: {}", sled_error(e));
                                self.shared.poison(cause.clone());
                                Err(Error::Poisoned { cause })
                            }
                        };
                        let _ = reply.send(answer);
                        return;
                    }
                }
                group.waiting_runs.insert(run);
                group.writes.extend(writes);
                let position = self.next_position();
                group.answers.push((reply, position));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The position of the append or purge just planned, published before its writes reach
    /// sled so that a reader who sees them can wait for them to be durable.
    fn next_position(&mut self) -> Position {
        self.applied += 1;
        self.shared.planned.store(self.applied, Ordering::Release);
        Position(self.applied)
    }

    /// Applies every planned write of the group with one `apply_batch`, then answers the
    /// appends with their positions: visible to reads now, durable after the commit.
    fn apply_group(&mut self, group: &mut Group) {
        let writes = std::mem::take(&mut group.writes);
        let answers = std::mem::take(&mut group.answers);
        group.waiting_runs.clear();
        let result = if writes.is_empty() {
            Ok(())
        } else {
            self.apply_writes(writes)
        };
        for (reply, position) in answers {
            // The caller may have stopped waiting; the append stands either way.
            let _ = reply.send(match &result {
                Ok(()) => Ok(position),
                Err(cause) => Err(Error::Poisoned {
                    cause: cause.clone(),
                }),
            });
        }
    }

    /// Plans and applies the deletion of a run as its own batch.
    fn purge(&mut self, run: RunId) -> Result<Position> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let writes = plan_purge(run, &|prefix| {
            self.db
                .scan_prefix(prefix)
                .map(|item| {
                    let (k, v) = item.map_err(sled_error)?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect()
        })?;
        self.apply_writes(writes.into_iter().collect())
            .map_err(|cause| Error::Poisoned { cause })?;
        Ok(self.next_position())
    }

    /// Applies writes atomically; a failure poisons the store and returns its cause.
    fn apply_writes(
        &mut self,
        writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> std::result::Result<(), String> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.db.apply_batch(batch).map_err(|e| {
            // sled may have half-written its log; trust nothing from here on.
            let cause = format!("sled apply_batch failed: {}", sled_error(e));
            self.shared.poison(cause.clone());
            cause
        })
    }

    /// Makes everything applied so far durable: at once in `Buffered` mode (nothing to sync),
    /// else by handing the position to the syncer, so that the next group is applied while
    /// this one's flush and fsync run.
    fn commit(&mut self) {
        if self.shared.poisoned().is_some() {
            return;
        }
        if self.durability == Durability::Buffered {
            match self.shared.take_injected_failure() {
                None => self.shared.publish_durable(self.applied),
                Some(cause) => self.shared.poison(cause),
            }
            return;
        }
        self.syncs.request(self.applied);
    }
}

/// Positions applied and waiting to be made durable. The committer raises `applied`; a
/// [`LogStore::wait_durable`] caller raises `wanted`; the syncer syncs as soon as something
/// applied is wanted, and otherwise [`UNWAITED_SYNC_DELAY`] after the oldest unsynced apply,
/// so appends nobody waits on never cost a sync of their own (the latest sync covers all
/// before it).
struct SyncQueue {
    state: Mutex<SyncWanted>,
    changed: std::sync::Condvar,
    /// [`UNWAITED_SYNC_DELAY`] (tests set another).
    unwaited_delay: Duration,
}

#[derive(Default)]
struct SyncWanted {
    applied: u64,
    /// The highest position a caller waits to be durable.
    wanted: u64,
    /// The highest position the syncer has made durable.
    synced: u64,
    /// Since when something applied has not been synced (`None`: everything applied was).
    unsynced_since: Option<Instant>,
    closed: bool,
}

impl SyncQueue {
    fn new(unwaited_delay: Duration) -> Self {
        Self {
            state: Mutex::default(),
            changed: std::sync::Condvar::new(),
            unwaited_delay,
        }
    }

    fn request(&self, applied: u64) {
        let mut state = lock(&self.state);
        if applied <= state.applied {
            return;
        }
        state.applied = applied;
        // The syncer needs waking only to arm its delay, or when a waiter is already there.
        let first = state.unsynced_since.is_none();
        if first {
            state.unsynced_since = Some(Instant::now());
        }
        if first || state.wanted > state.synced {
            self.changed.notify_one();
        }
    }

    /// A caller waits for `position` to be durable.
    fn want(&self, position: u64) {
        let mut state = lock(&self.state);
        if position > state.wanted {
            state.wanted = position;
            if position > state.synced {
                self.changed.notify_one();
            }
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_one();
    }

    /// Waits until there is something to sync now (`true`): an applied append that somebody
    /// waits for, one that has waited [`UNWAITED_SYNC_DELAY`], or anything left at close;
    /// `false` once the store closes with nothing left.
    fn next(&self) -> bool {
        let mut state = lock(&self.state);
        loop {
            let pending = state.applied > state.synced;
            if pending && (state.closed || state.wanted > state.synced) {
                return true;
            }
            if !pending && state.closed {
                return false;
            }
            let due = state
                .unsynced_since
                .filter(|_| pending)
                .map(|since| since + self.unwaited_delay);
            state = match due {
                Some(due) => {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return true;
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Everything up to `target` is durable; what was applied while the sync ran has waited
    /// since `began` at most.
    fn synced(&self, target: u64, began: Instant) {
        let mut state = lock(&self.state);
        state.synced = state.synced.max(target);
        state.unsynced_since = (state.applied > state.synced).then_some(began);
    }

    fn applied(&self) -> u64 {
        lock(&self.state).applied
    }

    fn wanted(&self) -> u64 {
        lock(&self.state).wanted
    }
}

/// The durable half of the committer: one flush (and fsync) at a time, each covering every
/// append applied when it starts, while the committer applies the next ones. A `Read` step's
/// append, which nobody waits to be durable, is therefore never held up by a sync, and costs
/// none of its own: it rides along with the next append somebody waits for, or is synced
/// [`UNWAITED_SYNC_DELAY`] later.
struct Syncer {
    db: sled::Db,
    shared: Arc<Shared>,
    /// What to fsync; `Some` in `PowerSafe` mode only (`ProcessSafe` flushes only).
    handles: Option<SyncHandles>,
    queue: Arc<SyncQueue>,
}

impl Syncer {
    fn run(mut self) {
        let mut synced = 0;
        // How many appends the last sync covered, when it ended and how long it took; see
        // `gather`.
        let (mut covered, mut last_end, mut last_sync) = (0, Instant::now(), Duration::ZERO);
        loop {
            if !self.queue.next() {
                return;
            }
            // Writers that wait for their appends (a fan-in) come back right after a sync:
            // on a busy store, give them a moment to share the next one.
            if last_end.elapsed() < last_sync && self.queue.wanted() > synced {
                self.gather(synced + covered, last_sync / 2);
            }
            if self.shared.poisoned().is_some() {
                return;
            }
            let target = self.queue.applied();
            let began = Instant::now();
            match self.sync() {
                Ok(()) => self.shared.publish_durable(target),
                Err(cause) => {
                    self.shared.poison(cause);
                    return;
                }
            }
            self.queue.synced(target, began);
            last_end = Instant::now();
            last_sync = (last_end - began).min(MAX_GATHER * 2);
            covered = target - synced;
            synced = target;
        }
    }

    /// Waits up to `patience` for the writers the last sync acknowledged to come back (until
    /// `target` was applied), so that they share this sync instead of starting another right
    /// after it.
    ///
    /// Without this, writers that each wait for their append to be durable before making the
    /// next split into two cohorts that alternate syncs: those that were quick to come back
    /// after a sync, and the rest, which arrive during the next sync and must wait for the
    /// one after. Each sync then carries half the writers. Only done when appends arrived
    /// within one sync's time of the last (a busy store); `patience` is half a sync, so an
    /// idle writer never waits more than half of what a second sync would cost.
    fn gather(&self, target: u64, patience: Duration) {
        let deadline = Instant::now() + patience;
        // Short naps: a condition variable would have every arriving writer wake this
        // thread, one context switch per append.
        let nap = (patience / 8).max(Duration::from_micros(50));
        while self.queue.applied() < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(nap.min(left));
        }
    }

    fn sync(&mut self) -> std::result::Result<(), String> {
        if let Some(cause) = self.shared.take_injected_failure() {
            return Err(cause);
        }
        self.db
            .flush()
            .map_err(|e| format!("sled flush failed: {}", sled_error(e)))?;
        if let Some(handles) = &mut self.handles {
            handles.sync()?;
        }
        Ok(())
    }
}

/// What `PowerSafe` mode fsyncs after each group, with the handles kept open so the hot path
/// does not reopen them.
///
/// Directories are fsynced only when their entries changed since the last fsync. That gives
/// the same guarantee as fsyncing them every time (after a commit, every entry that exists is
/// durable) at the cost of a `readdir` instead of a directory fsync: on the benchmark machine
/// (ext4 on a virtio disk) the fsync of file and directory took 1–6 ms, of the file alone
/// 0.15–1 ms (BENCHMARKS.md). sled changes the directory rarely: at creation, and when it replaces
/// a snapshot (every million operations by default).
struct SyncHandles {
    db_file: File,
    dir: File,
    path: PathBuf,
    blobs_dir: PathBuf,
    /// The database directory's entries when it was last fsynced.
    synced_entries: BTreeMap<OsString, EntryId>,
    /// The blob files when they were last fsynced.
    synced_blobs: BTreeMap<OsString, EntryId>,
}

/// What identifies a directory entry closely enough to notice a change: its inode (a rename
/// over an existing name changes it) and, for blob files only, its length (a blob still being
/// written grows). The `db` file's length is left out: it grows with the log, which the
/// file's own fsync covers, and does not touch the directory.
type EntryId = (u64, u64);

impl SyncHandles {
    fn open(path: &Path) -> std::io::Result<Self> {
        // The database directory's own entry in its parent, in case it was just created: a
        // power cut must not take the whole store with it.
        let parent = match path.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Some(Path::new(".")),
            parent => parent,
        };
        if let Some(parent) = parent {
            File::open(parent)?.sync_all()?;
        }
        let mut handles = Self {
            db_file: File::open(path.join(SLED_DATA_FILE))?,
            dir: File::open(path)?,
            path: path.to_path_buf(),
            blobs_dir: path.join(SLED_BLOBS_DIR),
            synced_entries: BTreeMap::new(),
            // Empty: blobs left by an earlier, less durable session get synced on first use.
            synced_blobs: BTreeMap::new(),
        };
        // The entries of `db` and `conf`, before the first append relies on them.
        handles
            .sync_dir_if_changed()
            .map_err(std::io::Error::other)?;
        Ok(handles)
    }

    /// Makes everything sled's `flush` wrote durable: the data file, blob files, and the
    /// directory entries of both.
    fn sync(&mut self) -> std::result::Result<(), String> {
        // `flush` wrote the pages with sync_file_range; fsync also persists the file's
        // metadata and empties the disk's write cache.
        self.db_file
            .sync_all()
            .map_err(|e| format!("fsync of sled db file failed: {e}"))?;
        self.sync_blobs()?;
        self.sync_dir_if_changed()?;
        Ok(())
    }

    /// Fsyncs the database directory if its entries changed; says whether it did.
    fn sync_dir_if_changed(&mut self) -> std::result::Result<bool, String> {
        let failed = |e: std::io::Error| format!("fsync of database directory failed: {e}");
        // Listed before the fsync: a change made in between is covered by this fsync and, as
        // the listing lacks it, synced once more next time; never missed.
        let entries = list_dir(&self.path, false).map_err(failed)?;
        if entries == self.synced_entries {
            return Ok(false);
        }
        self.dir.sync_all().map_err(failed)?;
        self.synced_entries = entries;
        Ok(true)
    }

    /// sled 0.34.7 stores a value too large for its log (a page over a quarter of a 512 KiB
    /// segment, e.g. a leaf node holding sixteen 10 KiB events) in its own file under
    /// `blobs/`, written without any fsync (`blob_io::write_blob`), and its `flush` does not
    /// cover it. Power-safe means those files and their directory entries must be durable
    /// too. The directory is usually empty, so this costs one `readdir` per group.
    ///
    /// Says how many blob files it fsynced.
    fn sync_blobs(&mut self) -> std::result::Result<usize, String> {
        let failed = |e: std::io::Error| format!("fsync of sled blob files failed: {e}");
        let blobs = match list_dir(&self.blobs_dir, true) {
            Ok(blobs) => blobs,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(failed(e)),
        };
        if blobs == self.synced_blobs {
            return Ok(0);
        }
        let mut synced = 0;
        for (name, id) in &blobs {
            if self.synced_blobs.get(name) != Some(id) {
                File::open(self.blobs_dir.join(name))
                    .and_then(|f| f.sync_all())
                    .map_err(failed)?;
                synced += 1;
            }
        }
        File::open(&self.blobs_dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
        self.synced_blobs = blobs;
        Ok(synced)
    }
}

/// The entries of a directory with what identifies them, lengths included if `with_len`.
fn list_dir(path: &Path, with_len: bool) -> std::io::Result<BTreeMap<OsString, EntryId>> {
    let mut entries = BTreeMap::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let len = if with_len { entry.metadata()?.len() } else { 0 };
        // From the directory listing itself: no stat per entry.
        #[cfg(unix)]
        let inode = std::os::unix::fs::DirEntryExt::ino(&entry);
        #[cfg(not(unix))]
        let inode = 0;
        entries.insert(entry.file_name(), (inode, len));
    }
    Ok(entries)
}

/// Locks a mutex that guards plain data; a panic elsewhere cannot leave it inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Maps a sled error: plain I/O stays I/O so callers can match on the `io::ErrorKind`.
fn sled_error(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => Error::Io(io),
        other => Error::Sled(other.to_string()),
    }
}

/// Maps an error from opening sled. sled 0.34.7 reports a held file lock as an
/// `io::ErrorKind::Other` whose message starts "could not acquire lock on" (config.rs,
/// `try_lock`); that message is the only way to tell it from other I/O failures.
fn open_error(path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => Error::Locked {
            path: path.to_path_buf(),
        },
        other => sled_error(other),
    }
}

fn bad_key(key: &[u8]) -> Error {
    Error::CorruptIndex {
        reason: CorruptReason::BadKey(key.to_vec()),
    }
}

#[async_trait::async_trait]
impl LogStore for SledStore {
    async fn append(&self, batch: AppendBatch) -> Result<Position> {
        self.submit(|reply| Request::Append { batch, reply }).await
    }

    async fn wait_durable(&self, position: Position) -> Result<()> {
        let mut durable = self.durable.clone();
        if let Some(syncs) = &self.syncs {
            if durable.borrow().position < position.0 {
                syncs.want(position.0);
            }
        }
        let state = durable
            .wait_for(|state| state.poisoned.is_some() || state.position >= position.0)
            .await
            .map_err(|_| Error::Closed)?;
        // Like `SimStore`, a poisoned store refuses every wait, even for positions that were
        // durable before the failure: the caller must stop and reopen.
        match &state.poisoned {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn wait_applied_durable(&self) -> Result<()> {
        let planned = self.shared.planned.load(Ordering::Acquire);
        self.wait_durable(Position(planned)).await
    }

    async fn read(&self, run: RunId, from_seq: u64, max: usize) -> Result<Vec<Record>> {
        let prefix = keys::event_prefix(run);
        let mut out = Vec::new();
        let mut from_seq = from_seq;
        // A short read (a run's last record) by point reads: sled 0.34 sets a range iterator
        // up at several times the cost of a `get`. The first miss falls through to the range,
        // which tells the end of the log from a hole.
        if max <= SHORT_READ_MAX {
            while out.len() < max {
                let Some(value) = self.get(&keys::event(run, from_seq))? else {
                    break;
                };
                out.push(check_record(run, from_seq, from_seq, &value)?);
                from_seq += 1;
            }
            if out.len() == max {
                return Ok(out);
            }
        }
        // Records must come back as from_seq, from_seq + 1, …; anything else is a hole.
        for (expected, item) in (from_seq..).zip(self.db.range(keys::event(run, from_seq)..)) {
            let (key, value) = item.map_err(sled_error)?;
            if !key.starts_with(&prefix) || out.len() >= max {
                break;
            }
            let (_, seq) = keys::parse_event(&key).ok_or_else(|| bad_key(&key))?;
            out.push(check_record(run, expected, seq, &value)?);
        }
        Ok(out)
    }

    async fn read_each(
        &self,
        run: RunId,
        from_seq: u64,
        visit: &mut (dyn for<'p> FnMut(u64, &'p [u8]) -> bool + Send),
    ) -> Result<()> {
        let prefix = keys::event_prefix(run);
        for (expected, item) in (from_seq..).zip(self.db.range(keys::event(run, from_seq)..)) {
            let (key, value) = item.map_err(sled_error)?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (_, seq) = keys::parse_event(&key).ok_or_else(|| bad_key(&key))?;
            if !visit(seq, check_payload(run, expected, seq, &value)?) {
                break;
            }
        }
        Ok(())
    }

    async fn meta(&self, run: RunId) -> Result<Option<RunMeta>> {
        let Some(bytes) = self.get(&keys::meta(run))? else {
            return Ok(None);
        };
        let meta = decode_meta(run, &bytes)?;
        self.with_log_end(meta, run).map(Some)
    }

    async fn runs(&self) -> Result<Vec<(RunId, RunMeta)>> {
        self.scan(&[keys::META])
            .map(|item| {
                let (key, value) = item?;
                let run = keys::parse_meta(&key).ok_or_else(|| bad_key(&key))?;
                let meta = decode_meta(run, &value)?;
                Ok((run, self.with_log_end(meta, run)?))
            })
            .collect()
    }

    async fn runs_with_status(&self, status: u8) -> Result<Vec<RunId>> {
        self.scan(&keys::status_prefix(status))
            .map(|item| {
                let (key, _) = item?;
                keys::parse_status(&key)
                    .map(|(_, run)| run)
                    .ok_or_else(|| bad_key(&key))
            })
            .collect()
    }

    async fn due_timers(&self, up_to_ms: u64, max: usize) -> Result<Vec<TimerEntry>> {
        let mut out = Vec::new();
        for item in self.scan(&[keys::TIMER]) {
            let (key, _) = item?;
            let entry = keys::parse_timer(&key).ok_or_else(|| bad_key(&key))?;
            if entry.fire_at_ms > up_to_ms || out.len() >= max {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn next_timer(&self) -> Result<Option<TimerEntry>> {
        Ok(self.due_timers(u64::MAX, 1).await?.into_iter().next())
    }

    async fn dedupe(&self, key: &[u8]) -> Result<Option<RunId>> {
        let stored = keys::dedupe(key);
        let holder = self
            .get(&stored)?
            .map(|value| keys::parse_run_value(&value).ok_or_else(|| bad_key(&stored)))
            .transpose()?;
        if holder.is_some() {
            // The claim may not be durable yet; it is a promise once returned.
            self.wait_applied_durable().await?;
        }
        Ok(holder)
    }

    async fn gate(&self, gate: GateId) -> Result<Option<(RunId, u32)>> {
        let stored = keys::gate(gate);
        self.get(&stored)?
            .map(|value| keys::parse_gate_value(&value).ok_or_else(|| bad_key(&stored)))
            .transpose()
    }

    async fn checkpoint(&self, run: RunId) -> Result<Option<Vec<u8>>> {
        self.get(&keys::checkpoint(run))?
            .map(|bytes| decode_checkpoint(&bytes))
            .transpose()
    }

    async fn gates(&self) -> Result<Vec<(GateId, RunId, u32)>> {
        self.scan(&[keys::GATE])
            .map(|item| {
                let (key, value) = item?;
                let gate = keys::parse_gate(&key).ok_or_else(|| bad_key(&key))?;
                let (run, step) = keys::parse_gate_value(&value).ok_or_else(|| bad_key(&key))?;
                Ok((gate, run, step))
            })
            .collect()
    }

    async fn purge(&self, run: RunId) -> Result<()> {
        let position = self.submit(|reply| Request::Purge { run, reply }).await?;
        self.wait_durable(position).await
    }

    async fn put_tree_head(&self, body: Vec<u8>) -> Result<u64> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(Error::Closed)?;
        requests
            .send(Request::TreeHead { body, reply })
            .map_err(|_| Error::Closed)?;
        let (index, position) = answer.await.map_err(|_| Error::Closed)??;
        self.wait_durable(position).await?;
        Ok(index)
    }

    async fn tree_heads(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.db
            .range(keys::tree_head(from)..=keys::tree_head(u64::MAX))
            .take(max)
            .map(|item| {
                let (key, value) = item.map_err(sled_error)?;
                let index = keys::parse_tree_head(&key).ok_or_else(|| bad_key(&key))?;
                Ok((index, decode_checkpoint(&value)?))
            })
            .collect()
    }

    async fn latest_tree_head(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let last = self.db.scan_prefix([keys::TREE_HEAD]).next_back();
        last.map(|item| {
            let (key, value) = item.map_err(sled_error)?;
            let index = keys::parse_tree_head(&key).ok_or_else(|| bad_key(&key))?;
            Ok((index, decode_checkpoint(&value)?))
        })
        .transpose()
    }

    fn durability(&self) -> Durability {
        self.config.durability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory is fsynced exactly when its entries change, and blob files when they are
    /// new or have grown; a growing `db` file does not count as a directory change.
    #[test]
    fn directories_are_synced_when_their_entries_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::write(path.join(SLED_DATA_FILE), b"log").unwrap();
        std::fs::create_dir(path.join(SLED_BLOBS_DIR)).unwrap();
        let mut handles = SyncHandles::open(path).unwrap();
        assert_eq!(handles.sync_dir_if_changed(), Ok(false));

        std::fs::write(path.join(SLED_DATA_FILE), b"log grew").unwrap();
        assert_eq!(
            handles.sync_dir_if_changed(),
            Ok(false),
            "file length is not an entry"
        );

        std::fs::write(path.join("snap.1.generating"), b"snapshot").unwrap();
        assert_eq!(handles.sync_dir_if_changed(), Ok(true));
        assert_eq!(handles.sync_dir_if_changed(), Ok(false));
        std::fs::write(path.join("snap.0"), b"old").unwrap();
        handles.sync_dir_if_changed().unwrap();
        // A rename over an existing name keeps the set of names but changes the inode.
        std::fs::rename(path.join("snap.1.generating"), path.join("snap.0")).unwrap();
        assert_eq!(handles.sync_dir_if_changed(), Ok(true));

        let blobs = path.join(SLED_BLOBS_DIR);
        assert_eq!(handles.sync_blobs(), Ok(0));
        std::fs::write(blobs.join("17"), b"half").unwrap();
        std::fs::write(blobs.join("18"), b"blob").unwrap();
        assert_eq!(handles.sync_blobs(), Ok(2));
        assert_eq!(handles.sync_blobs(), Ok(0));
        std::fs::write(blobs.join("17"), b"half and the rest").unwrap();
        assert_eq!(
            handles.sync_blobs(),
            Ok(1),
            "a blob that grew is synced again"
        );
        std::fs::remove_file(blobs.join("18")).unwrap();
        assert_eq!(
            handles.sync_blobs(),
            Ok(0),
            "removal syncs the directory only"
        );
        assert_eq!(handles.synced_blobs.len(), 1);
    }

    /// Runs `queue.next()` on a thread; its answer arrives on the receiver.
    fn next_on_thread(queue: &Arc<SyncQueue>) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        let queue = Arc::clone(queue);
        std::thread::spawn(move || tx.send(queue.next()));
        rx
    }

    const NEVER: Duration = Duration::from_secs(3600);
    const PATIENCE: Duration = Duration::from_secs(10);

    /// An append somebody waits for is synced at once, with everything applied before it;
    /// appends nobody waits for do not start a sync (the delay here is an hour).
    #[test]
    fn the_syncer_syncs_what_is_waited_for_and_lets_the_rest_ride_along() {
        let queue = Arc::new(SyncQueue::new(NEVER));
        let answer = next_on_thread(&queue);
        queue.request(1);
        queue.request(2);
        assert_eq!(
            answer.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "nobody waits: no sync yet"
        );
        queue.want(3); // the caller's append is not applied yet: what is, is synced now
        assert_eq!(answer.recv_timeout(PATIENCE), Ok(true));
        assert_eq!(queue.applied(), 2, "the sync covers the unwaited appends");
        queue.synced(2, Instant::now());
        let answer = next_on_thread(&queue);
        assert_eq!(
            answer.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "nothing applied left to sync"
        );
        queue.request(3);
        assert_eq!(answer.recv_timeout(PATIENCE), Ok(true), "the wanted append");
        queue.synced(3, Instant::now());

        // Wanting what is durable already starts nothing.
        let answer = next_on_thread(&queue);
        queue.want(2);
        assert_eq!(
            answer.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        queue.close();
        assert_eq!(
            answer.recv_timeout(PATIENCE),
            Ok(false),
            "closed, nothing left"
        );
    }

    /// Appends nobody waits for are synced on their own once they have waited the delay, and
    /// whatever is applied at close is synced before the syncer stops.
    #[test]
    fn unwaited_appends_are_synced_after_the_delay_and_at_close() {
        let queue = Arc::new(SyncQueue::new(Duration::from_millis(20)));
        let began = Instant::now();
        let answer = next_on_thread(&queue);
        queue.request(1);
        assert_eq!(answer.recv_timeout(PATIENCE), Ok(true));
        assert!(began.elapsed() >= Duration::from_millis(20));
        queue.synced(1, Instant::now());

        let queue = Arc::new(SyncQueue::new(NEVER));
        let answer = next_on_thread(&queue);
        queue.request(5);
        queue.close();
        assert_eq!(
            answer.recv_timeout(PATIENCE),
            Ok(true),
            "closing syncs the rest"
        );
        queue.synced(5, Instant::now());
        assert_eq!(next_on_thread(&queue).recv_timeout(PATIENCE), Ok(false));
    }

    /// On a power-safe store an append nobody waits for becomes durable by itself.
    #[tokio::test]
    async fn an_unwaited_append_becomes_durable_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(SledConfig::new(dir.path())).unwrap();
        let run = RunId([7; 16]);
        let position = store
            .append(AppendBatch {
                run,
                expected_next_seq: 0,
                events: vec![b"started".to_vec()],
                meta: Some(RunMeta {
                    workflow: "w".into(),
                    version: 1,
                    status: 0,
                    next_seq: 0,
                    created_ms: 0,
                    updated_ms: 0,
                    wake_ms: None,
                    note: String::new(),
                    status_seq: 0,
                }),
                index: Vec::new(),
            })
            .await
            .unwrap();
        let mut durable = store.durable.clone();
        tokio::time::timeout(
            PATIENCE,
            durable.wait_for(|state| state.position >= position.0),
        )
        .await
        .expect("synced within the delay")
        .unwrap();
        assert!(store.commits() >= 1);
    }
}
