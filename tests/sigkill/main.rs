//! The real crash test: a child process (`tests/src/bin/crash_child.rs`) runs a mixed
//! workload on a real sled store in `PowerSafe` mode and is SIGKILLed at random moments; after
//! every kill the parent reads the database and the child's side files and checks that
//! nothing acknowledged was lost and no run waits for what its history already holds,
//! decides some waiting approval gates from an operator-only engine (as `annal approve`
//! does), then restarts it with more work. Finally the child runs to
//! completion and the parent checks the end state.
//!
//! Environment: `ANNAL_SIGKILL_ROUNDS` (default [`DEFAULT_ROUNDS`]) and `ANNAL_SIGKILL_SEED`
//! (default: from the clock; printed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use annal::{Event, EventKind, RunId};
use annal_storage::{SledConfig, SledStore};
use annal_tests::verify::{self, Rng};

/// Kill-and-restart rounds when `ANNAL_SIGKILL_ROUNDS` is unset.
const DEFAULT_ROUNDS: u32 = 20;

/// New jobs each round adds to the workload.
const JOBS_PER_ROUND: u32 = 4;

/// The longest the parent waits for the child to get ready or to finish before calling it
/// hung. Generous: this only turns a hang into a failure, it measures nothing.
const HANG_LIMIT: Duration = Duration::from_secs(300);

struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn(dir: &Path, jobs: u32) -> Spawned {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("child.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
        .arg(dir)
        .arg(jobs.to_string())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn crash_child");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Spawned { child, lines }
}

/// What the database and the side files say, checked for everything that must hold at any
/// instant (`annal_tests::verify::check`); returns the histories by run.
fn check_invariants(dir: &Path, context: &str) -> BTreeMap<RunId, Vec<Event>> {
    let store = SledStore::open(SledConfig::new(dir.join("db")))
        .unwrap_or_else(|e| panic!("{context}: open: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let files = verify::SideFiles::read(dir);
    let (runs, histories) = runtime.block_on(verify::read_store(&store, context, false));
    store
        .close()
        .unwrap_or_else(|e| panic!("{context}: close: {e}"));
    verify::check(&files, context, &runs, &histories);
    histories
}

/// Between rounds, with no service holding the database, a reviewer decides some waiting
/// gates from an operator-only engine (as `annal approve` does); each acknowledged decision
/// is recorded in `acks.log` as `cli-decide <job> <run>`.
fn decide_from_outside(dir: &Path, rng: &mut Rng) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let acks = dir.join("acks.log");
    runtime.block_on(async {
        let engine = annal::Engine::builder()
            .path(dir.join("db"))
            .operator_only()
            .open()
            .await
            .expect("operator-only engine opens");
        let pending = engine
            .pending_approvals(&annal::ApprovalFilter::default())
            .await
            .expect("pending approvals");
        let mut decided = 0;
        for gate in pending {
            if rng.below(2) == 0 {
                continue;
            }
            let dana = annal::Actor::new("dana", &["ops"]);
            let verdict = annal::Verdict::Approve { edits: None };
            engine
                .decide(gate.gate, &dana, verdict, "from the CLI")
                .await
                .expect("the decision is recorded");
            let history = engine.history(gate.run).await.unwrap();
            let Some(EventKind::RunStarted {
                dedupe_key: Some(key),
                ..
            }) = history.first().map(|e| &e.kind)
            else {
                panic!("run {} has no dedupe key", gate.run);
            };
            let job = key.trim_start_matches("job-");
            let line = format!("cli-decide {job} {}\n", gate.run);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&acks)
                .unwrap();
            std::io::Write::write_all(&mut file, line.as_bytes()).unwrap();
            file.sync_all().unwrap();
            decided += 1;
        }
        engine.shutdown().await;
        decided
    })
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: u32 = std::env::var("ANNAL_SIGKILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let seed = annal_tests::seed_from_env("ANNAL_SIGKILL_SEED");
    eprintln!("sigkill: {rounds} rounds, ANNAL_SIGKILL_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = Rng(seed);
    let mut kills_before_ready = 0;
    let mut decided_outside = 0;
    for round in 0..rounds {
        let jobs = JOBS_PER_ROUND * (round + 1);
        let mut spawned = spawn(dir, jobs);
        // A quarter of the kills land anywhere from the start (often during recovery), the
        // rest at a random instant of the workload.
        let early = rng.below(4) == 0;
        let delay_ms = if early { rng.below(60) } else { rng.below(150) };
        if !early {
            match spawned.lines.recv_timeout(HANG_LIMIT) {
                Ok(line) => assert_eq!(line, "ready", "round {round}: unexpected first line"),
                Err(e) => panic!(
                    "round {round}: the child never got ready ({e}); see {}",
                    dir.join("child.log").display()
                ),
            }
        } else {
            kills_before_ready += 1;
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL on unix; an error means the child already exited (it finished its work).
        let _ = spawned.child.kill();
        let status = spawned.child.wait().unwrap();
        eprintln!(
            "round {round}: {jobs} jobs, killed {delay_ms} ms after {}: {status}",
            if early { "spawn" } else { "ready" }
        );
        check_invariants(dir, &format!("after round {round} (seed {seed})"));
        decided_outside += decide_from_outside(dir, &mut rng);
    }
    // No kill this time: the child must finish everything.
    let jobs = JOBS_PER_ROUND * (rounds + 1);
    let mut spawned = spawn(dir, jobs);
    let mut finished = false;
    while let Ok(line) = spawned.lines.recv_timeout(HANG_LIMIT) {
        if line == "done" {
            finished = true;
            break;
        }
    }
    if !finished {
        let _ = spawned.child.kill();
    }
    let status = spawned.child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
    assert!(
        finished && status.success(),
        "the last child did not finish ({status}); its log:\n{log}"
    );
    let histories = check_invariants(dir, &format!("at the end (seed {seed})"));
    verify::check_finished(dir, &histories, jobs);
    let decided_by = |why: &str| {
        histories
            .values()
            .filter(|h| {
                h.iter()
                    .any(|e| e.kind.decision().is_some_and(|d| d.reason == why))
            })
            .count()
    };
    let decided_inside = decided_by("in stock");
    assert_eq!(decided_by("from the CLI"), decided_outside);
    eprintln!(
        "sigkill: {} runs verified, {kills_before_ready} kills before ready, {decided_inside} gates decided by the service and {decided_outside} from outside",
        histories.len()
    );
}
