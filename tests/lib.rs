//! Support code for the integration tests.

/// The seed in environment variable `var` (to replay a printed run), else one from the
/// clock; the caller prints it.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// The workflow of the full-disk test, shared by its child process
/// (`src/bin/full_disk_child.rs`) and the test that resumes the child's runs
/// (`full_disk/main.rs`).
pub mod full_disk {
    use annal::{Ctx, StepClass, WorkflowError};

    /// Steps per run, each recording an output of [`OUTPUT_BYTES`].
    pub const STEPS: u32 = 8;
    /// Bytes each step records: large, so that the store fills in a few hundred runs.
    pub const OUTPUT_BYTES: usize = 4096;
    /// What every run of [`fill`] returns.
    pub const RESULT: u32 = STEPS * OUTPUT_BYTES as u32 + STEPS * (STEPS - 1) / 2;

    /// `STEPS` `Write` steps, each recording `OUTPUT_BYTES` bytes; returns [`RESULT`].
    pub async fn fill(ctx: Ctx, seed: u32) -> Result<u32, WorkflowError> {
        let mut total = 0u32;
        for i in 0..STEPS {
            let out: String = ctx
                .step("fill")
                .class(StepClass::Write)
                .run(move |_| async move {
                    let c = char::from(b'a' + ((seed + i) % 26) as u8);
                    Ok(std::iter::repeat_n(c, OUTPUT_BYTES).collect::<String>())
                })
                .await?;
            total = total.wrapping_add(out.len() as u32 + i);
        }
        Ok(total)
    }
}

/// The mixed workload of the real-crash tests, shared by their child processes
/// (`src/bin/crash_child.rs` on sled, `src/bin/pg_child.rs` on PostgreSQL): the workflow,
/// its side files, and how a service drives one job.
pub mod workload {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use annal::{
        Backoff, Ctx, Engine, EventKind, Reconciled, RetryPolicy, StartOptions, StepClass,
        StepFailure, WorkflowError,
    };
    use serde_json::{json, Value};

    /// An append-only, fsynced line file.
    #[derive(Debug)]
    pub struct LineFile {
        path: PathBuf,
        lock: Mutex<()>,
    }

    impl LineFile {
        /// A line file at `path` (created on first append).
        pub fn new(path: PathBuf) -> Self {
            Self {
                path,
                lock: Mutex::new(()),
            }
        }

        /// Appends `line` and fsyncs it.
        pub fn append(&self, line: &str) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .expect("open line file");
            // One write per line: a kill cannot leave half of it behind.
            file.write_all(format!("{line}\n").as_bytes())
                .expect("append line");
            file.sync_all().expect("fsync line file");
        }

        /// Whether a line's second word is `key`.
        pub fn contains_key(&self, key: &str) -> bool {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            text.lines().any(|l| l.split(' ').nth(1) == Some(key))
        }
    }

    fn fast_retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed { delay_ms: 10 },
            jitter: false,
            ..RetryPolicy::default()
        }
    }

    /// An irreversible step: the body records the effect in the side file, then reports
    /// success (or, with `lose_first`, loses the first attempt's response).
    async fn irreversible(
        ctx: &Ctx,
        effects: &Arc<LineFile>,
        name: &str,
        lose_first: bool,
    ) -> Result<Value, WorkflowError> {
        let ledger = Arc::clone(effects);
        let value: Value = ctx
            .step(name)
            .class(StepClass::Irreversible)
            .tool("payments")
            .retry(fast_retry())
            .reconcile(move |key: String| {
                let ledger = Arc::clone(&ledger);
                async move {
                    if ledger.contains_key(&key) {
                        Reconciled::Done(json!(key))
                    } else {
                        Reconciled::NotDone
                    }
                }
            })
            .run(|attempt| {
                let effects = Arc::clone(effects);
                async move {
                    check_not_completed(&attempt.idempotency_key).await;
                    effects.append(&format!("{} {}", attempt.run, attempt.idempotency_key));
                    if lose_first && attempt.number == 1 {
                        return Err(StepFailure::ambiguous("response lost after the effect"));
                    }
                    Ok(json!(attempt.idempotency_key))
                }
            })
            .await?;
        Ok(value)
    }

    /// The store the workload's process runs on and a file for what must never happen, set
    /// once the engine is open: every write body checks that its step has no recorded
    /// completion yet (a body that runs again after its completion was durable is a step
    /// re-run, which no crash or takeover may cause).
    pub static WATCH: std::sync::OnceLock<(Arc<dyn annal_storage::LogStore>, LineFile)> =
        std::sync::OnceLock::new();

    /// Records a re-run if the step at `key` (`run/position`) already completed.
    async fn check_not_completed(key: &str) {
        let Some((store, reran)) = WATCH.get() else {
            return;
        };
        let Some((run, position)) = key.split_once('/') else {
            return;
        };
        let (Ok(run), Ok(position)) = (run.parse::<uuid::Uuid>(), position.parse::<u32>()) else {
            return;
        };
        let run = annal::RunId(*run.as_bytes());
        if let Ok(history) = annal::read_history(store.as_ref(), run).await {
            let done = history.iter().any(|e| {
                matches!(&e.kind, EventKind::StepCompleted { position: p, .. } | EventKind::StepRan { position: p, .. } if *p == position)
            });
            if done {
                reran.append(&format!("{run} {key}"));
            }
        }
    }

    async fn write(ctx: &Ctx, name: &str) -> Result<Value, WorkflowError> {
        Ok(ctx
            .step(name)
            .class(StepClass::Write)
            .tool("inventory")
            .retry(fast_retry())
            .run(|attempt| async move {
                check_not_completed(&attempt.idempotency_key).await;
                Ok(json!(format!(
                    "{}:{}",
                    attempt.step, attempt.idempotency_key
                )))
            })
            .await?)
    }

    /// The workload: a flaky read, a sleep, a write, a signal, an approval gate (decided while
    /// the run is parked on it), an irreversible charge (whose
    /// response is lost once for some jobs), a sleep, then an irreversible notification joined
    /// with a write, then six steps alternating reads and writes.
    pub async fn mixed(ctx: Ctx, effects: Arc<LineFile>, job: u32) -> Result<Value, WorkflowError> {
        let found: u32 = ctx
            .step("lookup")
            .class(StepClass::Read)
            .tool("crm")
            .retry(fast_retry())
            .run(move |attempt| async move {
                if job % 3 == 0 && attempt.number == 1 {
                    return Err(StepFailure::transient("flaky lookup"));
                }
                Ok(job * 2)
            })
            .await?;
        ctx.sleep(Duration::from_millis(20 + u64::from(job % 5) * 10))
            .await?;
        let reserved = write(&ctx, "reserve").await?;
        let go: u32 = ctx.signal("go").await?;
        let mut gate = annal::ApprovalRequest::new(format!("charge job {job}"));
        gate.approvers = vec!["role:ops".into()];
        let approved = match ctx.approval(gate).await? {
            annal::Decision::Approved { actor, .. } => actor,
            other => return Err(WorkflowError::failed(format!("not approved: {other:?}"))),
        };
        let charged = irreversible(&ctx, &effects, "charge", job % 4 == 1).await?;
        ctx.sleep(Duration::from_millis(15)).await?;
        let (notified, audited) = futures::future::join(
            irreversible(&ctx, &effects, "notify", false),
            write(&ctx, "audit"),
        )
        .await;
        // A chain alternating reads and writes: a read's completion rides on the next commit
        // (a crash may take it back, and the read runs again), a write's body runs only once
        // everything before it is durable, and never again once it completed.
        let mut tally = 0u32;
        for i in 0..6u32 {
            let class = if i % 2 == 0 {
                StepClass::Read
            } else {
                StepClass::Write
            };
            let step: u32 = ctx
                .step(&format!("tally_{i}"))
                .class(class)
                .run(move |attempt| async move {
                    if class == StepClass::Write {
                        check_not_completed(&attempt.idempotency_key).await;
                    }
                    Ok(i)
                })
                .await?;
            tally += step;
        }
        Ok(
            json!({ "found": found, "reserved": reserved, "go": go, "approved": approved, "charged": charged, "notified": notified?, "audited": audited?, "tally": tally }),
        )
    }

    /// Plays the reviewer: once the run has asked for approval and parked on it, approves it
    /// (unless it was decided already, in an earlier life or by the parent between rounds).
    /// Returns once the decision is durable.
    pub async fn decide_when_parked(engine: &Engine, run: annal::RunId) -> annal::Result<()> {
        loop {
            let history = engine.history(run).await?;
            let mut gates = history.iter().filter_map(|e| match &e.kind {
                EventKind::ApprovalRequested { gate, .. } => Some(annal::GateId(*gate)),
                _ => None,
            });
            let decided = history.iter().any(|e| e.kind.decision().is_some());
            if decided || history.last().is_some_and(|e| e.kind.is_terminal()) {
                return Ok(());
            }
            if let Some(gate) = gates.next() {
                if engine.status(run).await?.status == annal::RunStatus::Parked {
                    let dana = annal::Actor::new("dana", &["ops"]);
                    let verdict = annal::Verdict::Approve { edits: None };
                    return match engine.decide(gate, &dana, verdict, "in stock").await {
                        Ok(()) | Err(annal::Error::AlreadyDecided { .. }) => Ok(()),
                        Err(e) => Err(e),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// One job, as a service drives it: start it (deduplicated by job), send its signal unless
    /// its history has it, decide its gate once it parked there, and wait for its result;
    /// every acknowledged act is written to `acks` (`start|signal|decide <job> <run>`).
    pub async fn drive_job(engine: &Engine, acks: &LineFile, job: u32) -> Result<(), String> {
        let options = StartOptions {
            dedupe_key: Some(format!("job-{job}")),
            ..StartOptions::default()
        };
        let handle = engine
            .start_with::<_, Value>("mixed", &job, options)
            .await
            .map_err(|e| format!("start {job}: {e}"))?;
        let run = handle.run_id();
        acks.append(&format!("start {job} {run}"));
        let history = engine
            .history(run)
            .await
            .map_err(|e| format!("history {job}: {e}"))?;
        let signalled = history
            .iter()
            .any(|e| matches!(&e.kind, EventKind::SignalReceived { name, .. } if name == "go"));
        if !signalled {
            engine
                .signal(run, "go", &job)
                .await
                .map_err(|e| format!("signal {job}: {e}"))?;
            acks.append(&format!("signal {job} {run}"));
        }
        decide_when_parked(engine, run)
            .await
            .map_err(|e| format!("decide {job}: {e}"))?;
        acks.append(&format!("decide {job} {run}"));
        handle
            .result()
            .await
            .map_err(|e| format!("job {job} (run {run}): {e}"))?;
        Ok(())
    }
}

/// The checks of the real-crash tests (`tests/sigkill`, `tests/pg_sigkill`), over what a store
/// and the workload's side files (`workload`) say.
pub mod verify {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use annal::{Event, EventKind, RunId, RunStatus, StepClass};
    use annal_storage::{LogStore, RunMeta};

    /// splitmix64: a seeded, dependency-free source of kill times.
    #[derive(Debug)]
    pub struct Rng(pub u64);

    impl Rng {
        /// The next number.
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// A number below `n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// Lines of a side file; a last line without its newline was cut by the kill and is left
    /// out (it was never acknowledged).
    pub fn lines(path: &Path) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        complete
            .lines()
            .map(|l| l.split(' ').map(str::to_string).collect())
            .collect()
    }

    /// Every run of `store` with its whole history, each checked: no hole, no CRC error, no
    /// undecodable event, and the metadata's end agreeing with the log's.
    ///
    /// With `live`, workers may append while it reads: a history read after the metadata may
    /// be longer than the metadata said, never shorter.
    pub async fn read_store(
        store: &dyn LogStore,
        context: &str,
        live: bool,
    ) -> (Vec<(RunId, RunMeta)>, BTreeMap<RunId, Vec<Event>>) {
        let runs = store
            .runs()
            .await
            .unwrap_or_else(|e| panic!("{context}: runs: {e}"));
        let mut histories = BTreeMap::new();
        for (run, meta) in &runs {
            let history = annal::read_history(store, *run)
                .await
                .unwrap_or_else(|e| panic!("{context}: history of run {run}: {e}"));
            let ok = if live {
                history.len() as u64 >= meta.next_seq
            } else {
                history.len() as u64 == meta.next_seq
            };
            assert!(
                ok,
                "{context}: run {run}: metadata says {} events, the log holds {}",
                meta.next_seq,
                history.len()
            );
            histories.insert(*run, history);
        }
        (runs, histories)
    }

    /// The workload's side files, read before the store: whatever they acknowledge was
    /// durable in the store before it was written to them, so a store read after them must
    /// hold it even while workers go on.
    #[derive(Debug)]
    pub struct SideFiles {
        /// `acks.log`, a line of words each.
        pub acks: Vec<Vec<String>>,
        /// `effects.log`, a line of words each.
        pub effects: Vec<Vec<String>>,
        /// `reran.log`: step bodies that ran after their step's completion was recorded.
        pub reran: Vec<Vec<String>>,
    }

    impl SideFiles {
        /// Reads both from `dir`.
        pub fn read(dir: &Path) -> Self {
            Self {
                acks: lines(&dir.join("acks.log")),
                effects: lines(&dir.join("effects.log")),
                reran: lines(&dir.join("reran.log")),
            }
        }
    }

    /// Everything that must hold at any instant of a crash test over the mixed workload, for
    /// the runs and histories of a store and the side files read before it: one run per job
    /// (start dedupe held across kills), every acknowledged start, signal and decision
    /// recorded, no irreversible effect twice (unless a reconcile found it had not happened),
    /// no run left waiting for what its history holds, none escalated or blocked.
    pub fn check(
        files: &SideFiles,
        context: &str,
        runs: &[(RunId, RunMeta)],
        histories: &BTreeMap<RunId, Vec<Event>>,
    ) {
        assert!(
            files.reran.is_empty(),
            "{context}: step bodies ran after their completion was recorded: {:?}",
            files.reran
        );
        // One run per job: start dedupe held across kills.
        let mut by_job: BTreeMap<String, RunId> = BTreeMap::new();
        for (run, history) in histories {
            let Some(EventKind::RunStarted {
                dedupe_key: Some(key),
                ..
            }) = history.first().map(|e| &e.kind)
            else {
                panic!("{context}: run {run} does not start with a deduplicated RunStarted");
            };
            if let Some(other) = by_job.insert(key.clone(), *run) {
                panic!("{context}: {key} has two runs, {other} and {run}");
            }
        }
        // Every acknowledged start and signal is there.
        for ack in &files.acks {
            let [what, job, run] = &ack[..] else {
                panic!("{context}: bad ack line {ack:?}")
            };
            let key = format!("job-{job}");
            let found = by_job.get(&key).map(ToString::to_string);
            assert_eq!(
                found.as_deref(),
                Some(run.as_str()),
                "{context}: acknowledged {what} of {key} (run {run}) is missing"
            );
            if what == "decide" || what == "cli-decide" {
                let history = histories
                    .iter()
                    .find(|(r, _)| r.to_string() == *run)
                    .map(|(_, h)| h)
                    .unwrap();
                assert!(
                    history.iter().any(|e| e.kind.decision().is_some()),
                    "{context}: acknowledged decision ({what}) of run {run} is missing"
                );
            }
            if what == "signal" {
                let history = histories
                    .iter()
                    .find(|(r, _)| r.to_string() == *run)
                    .map(|(_, h)| h)
                    .unwrap();
                let received = history.iter().any(
                    |e| matches!(&e.kind, EventKind::SignalReceived { name, .. } if name == "go"),
                );
                assert!(
                    received,
                    "{context}: acknowledged signal to run {run} is missing"
                );
            }
        }
        // No irreversible effect twice, unless a reconcile found the earlier attempt had not
        // taken effect (it cannot here: the reconcile hook reads this same file).
        let mut effects: BTreeMap<String, usize> = BTreeMap::new();
        for line in &files.effects {
            let [_, key] = &line[..] else {
                panic!("{context}: bad effect line {line:?}")
            };
            *effects.entry(key.clone()).or_default() += 1;
        }
        for (key, count) in &effects {
            let (run, position) = key.split_once('/').unwrap();
            let history = histories
                .iter()
                .find(|(r, _)| r.to_string() == run)
                .map(|(_, h)| h);
            let history = history
                .unwrap_or_else(|| panic!("{context}: effect {key} of a run that does not exist"));
            let position: u32 = position.parse().unwrap();
            let not_done = history
                .iter()
                .filter(|e| {
                    matches!(&e.kind, EventKind::AttemptFailed { position: p, message, .. }
                        if *p == position && message.contains("reconciled: the effect did not happen"))
                })
                .count();
            assert!(
                *count <= 1 + not_done,
                "{context}: irreversible effect {key} happened {count} times"
            );
        }
        for (run, meta) in runs {
            // No kill may leave a run waiting for what its own history holds (issue 21): the
            // engine's sweep would resume it, but nothing else would.
            // Only the events that were there when the metadata was read: a history read
            // after it may hold what a worker appended since (after waking the run).
            let seen = &histories[run];
            let seen = &seen[..seen.len().min(meta.next_seq as usize)];
            let lost = RunStatus::from_code(meta.status).and_then(|status| {
                annal::overdue(status, meta.status_seq, seen, meta.wake_ms, None)
            });
            assert_eq!(lost, None, "{context}: run {run}");
            assert_ne!(
                RunStatus::from_code(meta.status),
                Some(RunStatus::Escalated),
                "{context}: run {run} escalated: {}",
                meta.note
            );
            assert_ne!(
                RunStatus::from_code(meta.status),
                Some(RunStatus::Blocked),
                "{context}: run {run} blocked: {}",
                meta.note
            );
        }
    }

    /// At the end: every job's run completed, and every irreversible step completed exactly
    /// once with exactly one effect.
    pub fn check_finished(dir: &Path, histories: &BTreeMap<RunId, Vec<Event>>, jobs: u32) {
        assert_eq!(histories.len(), jobs as usize, "one run per job");
        let effects: BTreeSet<String> = lines(&dir.join("effects.log"))
            .into_iter()
            .map(|l| l[1].clone())
            .collect();
        let mut completed_irreversible = BTreeSet::new();
        for (run, history) in histories {
            assert!(
                matches!(
                    history.last().map(|e| &e.kind),
                    Some(EventKind::RunCompleted { .. })
                ),
                "run {run} did not complete"
            );
            let mut keys = BTreeMap::new();
            for e in history {
                match &e.kind {
                    EventKind::StepScheduled {
                        position,
                        class: StepClass::Irreversible,
                        idem_key,
                        ..
                    } => {
                        keys.insert(*position, idem_key.clone());
                    }
                    EventKind::StepCompleted { position, .. } => {
                        if let Some(key) = keys.get(position) {
                            completed_irreversible.insert(key.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(
            completed_irreversible.len(),
            2 * jobs as usize,
            "two irreversible steps per job"
        );
        assert_eq!(
            effects, completed_irreversible,
            "every effect belongs to a completed irreversible step and back"
        );
    }
}
