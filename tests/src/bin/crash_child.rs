//! The child process of the real-crash test (`tests/sigkill/main.rs`): runs a mixed workload on
//! a real sled store in `PowerSafe` mode until the parent SIGKILLs it, or until every job
//! has finished.
//!
//! Usage: `crash_child <dir> <jobs>`. In `<dir>`:
//! - `db/`: the engine's sled database;
//! - `effects.log`: one line `<run> <idempotency key>` per irreversible effect, appended and
//!   fsynced by the step body *before* it reports success (the effect "happened"); it is
//!   also what the reconcile hook consults after a crash;
//! - `acks.log`: `start <job> <run>` once a start was acknowledged (durable), `signal <job>
//!   <run>` once a signal was; fsynced.
//!
//! Prints `ready` once the engine is open (recovery done) and `done` once every job's run
//! completed; exits 0 then, non-zero on any failure.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annal::{
    Backoff, Ctx, Durability, Engine, EventKind, Reconciled, RetryPolicy, StartOptions, StepClass,
    StepFailure, WorkflowError,
};
use serde_json::{json, Value};

/// An append-only, fsynced line file.
struct LineFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl LineFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Mutex::new(()),
        }
    }

    fn append(&self, line: &str) {
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

    fn contains_key(&self, key: &str) -> bool {
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

async fn write(ctx: &Ctx, name: &str) -> Result<Value, WorkflowError> {
    Ok(ctx
        .step(name)
        .class(StepClass::Write)
        .tool("inventory")
        .retry(fast_retry())
        .run(|attempt| async move {
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
/// with a write.
async fn mixed(ctx: Ctx, effects: Arc<LineFile>, job: u32) -> Result<Value, WorkflowError> {
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
    Ok(
        json!({ "found": found, "reserved": reserved, "go": go, "approved": approved, "charged": charged, "notified": notified?, "audited": audited? }),
    )
}

/// Plays the reviewer: once the run has asked for approval and parked on it, approves it
/// (unless it was decided already, in an earlier life or by the parent between rounds).
/// Returns once the decision is durable.
async fn decide_when_parked(engine: &Engine, run: annal::RunId) -> annal::Result<()> {
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

async fn run(dir: &Path, jobs: u32) -> Result<(), String> {
    let effects = Arc::new(LineFile::new(dir.join("effects.log")));
    let acks = Arc::new(LineFile::new(dir.join("acks.log")));
    let ledger = Arc::clone(&effects);
    let engine = Engine::builder()
        .path(dir.join("db"))
        .durability(Durability::PowerSafe)
        .cache_capacity_bytes(8 * 1024 * 1024)
        // Runs park at their gate almost at once, so decisions wake parked runs.
        .park_after_ms(5)
        .register("mixed", 1, move |ctx, job| {
            mixed(ctx, Arc::clone(&ledger), job)
        })
        .open()
        .await
        .map_err(|e| format!("open: {e}"))?;
    println!("ready");
    let starts = (0..jobs).map(|job| {
        let (engine, acks) = (engine.clone(), Arc::clone(&acks));
        async move {
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
            decide_when_parked(&engine, run)
                .await
                .map_err(|e| format!("decide {job}: {e}"))?;
            acks.append(&format!("decide {job} {run}"));
            handle
                .result()
                .await
                .map_err(|e| format!("job {job} (run {run}): {e}"))?;
            Ok::<(), String>(())
        }
    });
    let results = futures::future::join_all(starts).await;
    engine.shutdown().await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failures.is_empty() {
        println!("done");
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(jobs)) = (args.get(1), args.get(2).and_then(|j| j.parse().ok())) else {
        eprintln!("usage: crash_child <dir> <jobs>");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(Path::new(dir), jobs)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("crash_child failed: {e}");
            std::process::exit(3);
        }
    }
}
