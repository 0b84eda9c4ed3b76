//! A full disk: a child process (`tests/src/bin/full_disk_child.rs`) runs workflows on a real
//! sled store in `PowerSafe` mode under a file-size limit (`ulimit -f`, with `SIGXFSZ`
//! ignored, so a write past it fails with `EFBIG` as a full disk fails with `ENOSPC`). The
//! first failed write must come back as a typed error, not a panic or a hang, also when the
//! child opens the full store again; and once the limit is gone, every run the child saw
//! finish is intact, and every other run resumes and finishes.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use annal::{Engine, RunId, RunStatus};
use annal_tests::full_disk::{fill, RESULT, STEPS};

/// How long the child may take; it needs well under a second.
const HANG_LIMIT: Duration = Duration::from_secs(60);

/// The child's file-size limit in `ulimit -f` blocks (512 bytes for dash, 1,024 for bash):
/// 8 or 16 MiB, a few hundred runs.
const LIMIT_BLOCKS: u32 = 16_384;

/// Runs the child under the limit until a write fails; returns the runs it saw finish.
/// Asserts that it stopped on a typed storage error, without a panic or a hang.
fn run_child_under_the_limit(dir: &std::path::Path) -> BTreeSet<RunId> {
    // `trap "" XFSZ` leaves the signal ignored across `exec`, so the write fails instead of
    // the signal killing the child.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {LIMIT_BLOCKS}; exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_full_disk_child"))
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn full_disk_child");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).ok();
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    // A hang (a waiter nobody wakes after the failure) fails the test instead of stalling it.
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "the child hung after the failure: {}",
                stdout.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success() && !stderr.contains("panicked"),
        "the child failed ({status}): {stderr}"
    );
    let error = stdout
        .lines()
        .find_map(|l| l.strip_prefix("error "))
        .unwrap_or_else(|| panic!("no write failed under the limit: {stdout}"));
    assert!(
        error.contains("Storage(Poisoned") || error.contains("Storage(Io"),
        "not a typed storage error: {error}"
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|id| RunId(*uuid::Uuid::parse_str(id).expect("run id").as_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_typed_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let acked = run_child_under_the_limit(dir.path());
    assert!(!acked.is_empty(), "nothing finished before the limit");
    // Opened again on the full disk: recovery and new work fail the same way, and what
    // finishes is kept too.
    let acked: BTreeSet<RunId> = acked
        .into_iter()
        .chain(run_child_under_the_limit(dir.path()))
        .collect();

    // The limit is gone: the store opens, what was acknowledged is there, the rest resumes.
    let engine = Engine::builder()
        .path(dir.path().join("db"))
        .register("fill", 1, fill)
        .open()
        .await
        .expect("the store opens after the failure");
    for run in &acked {
        let info = engine.status(*run).await.unwrap();
        assert_eq!(info.status, RunStatus::Completed, "acknowledged run {run}");
        let history = engine.history(*run).await.unwrap();
        assert_eq!(
            history.len(),
            STEPS as usize + 2,
            "run {run}: start, steps, end"
        );
    }
    let runs = engine.runs().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for info in &runs {
        let result = tokio::time::timeout(
            deadline.saturating_duration_since(std::time::Instant::now()),
            engine.handle::<u32>(info.run).result(),
        )
        .await
        .unwrap_or_else(|_| panic!("run {} did not finish after the reopen", info.run));
        assert_eq!(result.unwrap(), RESULT, "run {}", info.run);
    }
    // And new work goes on.
    let run = engine.start::<_, u32>("fill", &7u32).await.unwrap();
    assert_eq!(run.result().await.unwrap(), RESULT);
    engine.shutdown().await;
}
