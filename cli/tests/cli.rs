//! The `annal` binary, run as a child process against real sled databases.
//!
//! Most tests use a FIXED database: the events in `tests/fixtures/cli/runs.jsonl` (three runs:
//! a completed refund, an escalated and then terminated refund, a parked CRM lead) written
//! straight into a `SledStore`, so no clock or random id enters and the output can be compared
//! with checked-in snapshots in `tests/fixtures/cli/`. After an intended change of output,
//! regenerate them with `UPDATE_SNAPSHOTS=1 cargo test -p annal-cli` and review the diff.
//!
//! The binary must run as a separate process: sled's directory lock is per process, which is
//! also what the locked-database test relies on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use annal::secret::Secret;
use annal::{Ctx, Engine, Event, RunStatus, StepClass, StepFailure};
use annal_storage::{
    keys, AppendBatch, Durability, GateId, IndexOp, LogStore, RunId, RunMeta, SledConfig, SledStore,
};
use serde::{Deserialize, Serialize};

/// Tamper evidence: chains, checkpoints and proofs against every kind of edit.
#[path = "cli/tamper.rs"]
mod tamper;

const RUN_COMPLETED: &str = "a1a1a1a1-a1a1-a1a1-a1a1-a1a1a1a1a1a1";
const RUN_ESCALATED: &str = "b2b2b2b2-b2b2-b2b2-b2b2-b2b2b2b2b2b2";
const RUN_PARKED: &str = "a1a1a1a1-c3c3-c3c3-c3c3-c3c3c3c3c3c3";
/// When the fixture's first run starts (2023-11-14T22:13:20Z).
const T0_MS: u64 = 1_700_000_000_000;
/// What `verify` says of a database without tree heads, before its summary line.
const NO_TREE_HEAD: &str = "note: no tree head stored: a dropped run, a truncated tail or an edit of a run's last record shows only against a checkpoint (annal digest)\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/cli")
        .join(name)
}

fn run_id(text: &str) -> RunId {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    RunId(id)
}

/// The fixture's runs: id and events, in file order.
fn fixture_runs() -> Vec<(RunId, Vec<Event>)> {
    let text = std::fs::read_to_string(fixture("runs.jsonl")).unwrap();
    let mut runs: Vec<(RunId, Vec<Event>)> = Vec::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let run = run_id(value["run"].as_str().unwrap());
        // The line is an `Event` with a `run` field beside it, as `annal export` writes it.
        let event: Event = serde_json::from_value(value).unwrap();
        match runs.last_mut() {
            Some((last, events)) if *last == run => events.push(event),
            _ => runs.push((run, vec![event])),
        }
    }
    runs
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens the store in this process, waiting out the brief locks explained at [`annal`].
fn open_store(dir: &Path) -> SledStore {
    for _ in 0..100 {
        match SledStore::open(SledConfig::new(dir).durability(Durability::Buffered)) {
            Err(annal_storage::Error::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            opened => return opened.unwrap(),
        }
    }
    panic!("{} stayed locked", dir.display())
}

/// Writes the fixture into a new database in `dir`, as the engine would have: the first
/// event creates the run (claiming its dedupe key), the rest follow in one append that sets
/// the final status (and the parked run's wake-up timer).
fn build_fixture_db(dir: &Path) {
    build_fixture_db_with(dir, None);
}

/// [`build_fixture_db`]; with `tree_heads`, every event in an append of its own, each
/// followed by a tree head signed with that key (a service writing tree heads densely).
fn build_fixture_db_with(dir: &Path, tree_heads: Option<&annal::audit::transparency::SigningKey>) {
    let store = open_store(dir);
    let rt = runtime();
    let mut time_ms = T0_MS;
    let mut tree_head = |store: &SledStore| {
        if let Some(key) = tree_heads {
            time_ms += 1;
            rt.block_on(annal::write_tree_head(store, key, key.name(), time_ms))
                .unwrap();
        }
    };
    for (run, events) in fixture_runs() {
        let (status, wake_ms) = match run.to_string().as_str() {
            RUN_COMPLETED => (RunStatus::Completed, None),
            RUN_ESCALATED => (RunStatus::Terminated, None),
            RUN_PARKED => (
                RunStatus::Parked,
                Some(events.last().unwrap().at_ms + 86_400_000),
            ),
            other => panic!("unexpected run {other} in the fixture"),
        };
        let annal::EventKind::RunStarted {
            workflow,
            version,
            dedupe_key,
            ..
        } = &events[0].kind
        else {
            panic!("fixture run {run} does not start with RunStarted")
        };
        let meta = |status: RunStatus, updated_ms: u64| RunMeta {
            workflow: workflow.clone(),
            version: *version,
            status: status.code(),
            next_seq: 0,
            created_ms: events[0].at_ms,
            updated_ms,
            wake_ms: None,
            note: String::new(),
            status_seq: 0,
        };
        let encode = |events: &[Event]| {
            events
                .iter()
                .map(annal::codec::encode_event)
                .collect::<Vec<_>>()
        };
        let claim = dedupe_key
            .iter()
            .map(|k| IndexOp::ClaimDedupe {
                key: k.as_bytes().to_vec(),
            })
            .collect();
        rt.block_on(store.append_durable(AppendBatch {
            run,
            expected_next_seq: 0,
            events: encode(&events[..1]),
            meta: Some(meta(RunStatus::Running, events[0].at_ms)),
            index: claim,
        }))
        .unwrap();
        tree_head(&store);
        let mut from = 1;
        if tree_heads.is_some() {
            // One event per append, all but the last.
            while from + 1 < events.len() {
                rt.block_on(store.append_durable(AppendBatch {
                    run,
                    expected_next_seq: from as u64,
                    events: encode(&events[from..=from]),
                    meta: None,
                    index: Vec::new(),
                }))
                .unwrap();
                tree_head(&store);
                from += 1;
            }
        }
        let mut last = meta(status, events.last().unwrap().at_ms);
        last.wake_ms = wake_ms;
        let timers = wake_ms
            .iter()
            .map(|&fire_at_ms| IndexOp::PutTimer { fire_at_ms, id: 4 })
            .collect();
        rt.block_on(store.append_durable(AppendBatch {
            run,
            expected_next_seq: from as u64,
            events: encode(&events[from..]),
            meta: Some(last),
            index: timers,
        }))
        .unwrap();
        tree_head(&store);
    }
    store.close().unwrap();
}

fn fixture_db() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    build_fixture_db(dir.path());
    dir
}

/// Runs `annal --db DIR ARGS…` once.
fn annal_once(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annal"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `annal --db DIR ARGS…`, retrying for a while if the database looks locked.
///
/// Why: sled's lock is an `flock` on its `db` file, and an flock belongs to the open file,
/// not the descriptor. When another test of this binary spawns a child, the child starts as
/// a copy of this process, open files included, and keeps them until it execs; a store a
/// test has just closed can stay locked through such a copy for that instant. Nothing forks
/// around an open store outside this harness, so the CLI itself does not retry.
fn annal(db: &Path, args: &[&str]) -> Output {
    for _ in 0..100 {
        let output = annal_once(db, args);
        let locked = output.status.code() == Some(2)
            && stderr(&output).contains("is locked by another process");
        if !locked {
            return output;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    annal_once(db, args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Runs the command, expects `code`, returns stdout.
fn expect(db: &Path, args: &[&str], code: i32) -> String {
    let output = annal(db, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "annal {args:?}\n--- stdout\n{}--- stderr\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Compares with a checked-in snapshot exactly, or rewrites it under `UPDATE_SNAPSHOTS=1`.
fn snapshot(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} unreadable ({e}); create it with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or(actual.lines().count().min(expected.lines().count()));
        panic!(
            "output differs from snapshot {} at line {}:\n  actual:   {:?}\n  expected: {:?}\n--- full output\n{actual}\n(rerun with UPDATE_SNAPSHOTS=1 if the change is intended)",
            path.display(),
            line + 1,
            actual.lines().nth(line),
            expected.lines().nth(line)
        );
    }
}

/// The record `event` at `seq` of `run`, framed as the store frames it (format 2, CRC
/// recomputed) with the link the stored record there has: an edit only the chain can catch.
fn relinked(tree: &sled::Tree, run: RunId, seq: u64, event: &Event) -> Vec<u8> {
    let stored = tree.get(keys::event(run, seq)).unwrap().unwrap();
    let (link, _) = annal_storage::frame::decode_linked(&stored).unwrap();
    annal_storage::frame::encode_linked(link.unwrap(), &annal::codec::encode_event(event))
}

/// Rewrites one stored value through the raw tree (which bypasses every check).
fn tamper(dir: &Path, change: impl FnOnce(&sled::Tree)) {
    let store = open_store(dir);
    change(store.raw_tree());
    store.close().unwrap();
}

#[test]
fn history_of_fixed_runs_matches_snapshots() {
    let db = fixture_db();
    let completed = expect(db.path(), &["history", "a1a1a1a1-a1"], 0);
    snapshot("history-completed.txt", &completed);
    snapshot(
        "history-escalated.txt",
        &expect(db.path(), &["history", "b2"], 0),
    );
    snapshot(
        "history-parked.txt",
        &expect(db.path(), &["history", "A1A1A1A1C3"], 0),
    );
    // Secrets recorded in step outputs show as redacted, never as the reference.
    assert!(completed.contains(r#""card":"<redacted>""#), "{completed}");
    assert!(!completed.contains("00197efebd"), "{completed}");

    let json: serde_json::Value =
        serde_json::from_str(&expect(db.path(), &["history", RUN_ESCALATED, "--json"], 0)).unwrap();
    assert_eq!(json["record"]["status"], "terminated");
    assert_eq!(json["record"]["steps"][1]["attempts"], 3);
    assert_eq!(
        json["record"]["escalations"][0]["step"]["name"],
        "issue_refund"
    );
    assert_eq!(json["record"]["operator_actions"][0]["actor"], "alice");
    assert_eq!(json["events"].as_array().unwrap().len(), 13);
    assert_eq!(json["problems"], serde_json::json!([]));
}

#[test]
fn report_over_fixed_runs_matches_snapshots() {
    let db = fixture_db();
    snapshot("report.txt", &expect(db.path(), &["report"], 0));
    let json = expect(db.path(), &["report", "--json"], 0);
    snapshot("report.json", &json);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["runs"], 3);
    assert_eq!(report["total_cost"], 9);
    assert_eq!(report["tools"]["payments"]["breaker_refusals"], 1);
    assert_eq!(
        report["tools"]["payments"]["exhausted"]["step attempts (3)"],
        1
    );
    // Everything was created in 2023: nothing is younger than a day.
    assert!(expect(db.path(), &["report", "--since", "1d"], 0).contains("runs         0 (none)"));
    let since = expect(db.path(), &["report", "--since", "2023-11-14T23:00:00Z"], 0);
    assert!(
        since.starts_with(
            "since        2023-11-14T23:00:00.000Z\nruns         2 (parked 1, terminated 1)"
        ),
        "{since}"
    );
}

#[test]
fn runs_are_listed_and_filtered() {
    let db = fixture_db();
    let path = db.path();
    snapshot("runs.txt", &expect(path, &["runs"], 0));
    let parked = expect(path, &["runs", "--status", "parked"], 0);
    assert_eq!(parked.lines().count(), 2, "{parked}");
    assert!(parked.contains(RUN_PARKED));
    let refunds = expect(path, &["runs", "--workflow", "refund"], 0);
    assert_eq!(refunds.lines().count(), 3, "{refunds}");
    let since = expect(path, &["runs", "--since", "2023-11-14T23:00Z"], 0);
    assert!(
        !since.contains(RUN_COMPLETED)
            && since.contains(RUN_ESCALATED)
            && since.contains(RUN_PARKED),
        "{since}"
    );
    assert_eq!(
        expect(path, &["runs", "--since", "24h"], 0),
        "no runs match\n"
    );

    let bad = annal(path, &["runs", "--status", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("unknown status 'sleeping'; one of: running, parked"),
        "{}",
        stderr(&bad)
    );
    let bad = annal(path, &["runs", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("neither a duration"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn run_prefixes_must_name_exactly_one_run() {
    let db = fixture_db();
    let ambiguous = annal(db.path(), &["history", "a1a1"]);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(
        stderr(&ambiguous).contains("'a1a1' is ambiguous: it matches 2 runs"),
        "{}",
        stderr(&ambiguous)
    );
    let unknown = annal(db.path(), &["history", "ffff"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no run matches 'ffff'"),
        "{}",
        stderr(&unknown)
    );
    let garbage = annal(db.path(), &["export", "not-hex"]);
    assert_eq!(garbage.status.code(), Some(1));
    assert!(
        stderr(&garbage).contains("is not a run id"),
        "{}",
        stderr(&garbage)
    );
}

#[test]
fn export_writes_every_event_as_a_json_line() {
    let db = fixture_db();
    let all = expect(db.path(), &["export", "--all"], 0);
    let mut exported: Vec<(String, Event)> = Vec::new();
    for line in all.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let run = value["run"].as_str().unwrap().to_string();
        exported.push((run, serde_json::from_value(value).unwrap()));
    }
    // Runs in id order, each complete and identical to what was written.
    let mut expected: Vec<(String, Event)> = fixture_runs()
        .into_iter()
        .flat_map(|(run, events)| events.into_iter().map(move |e| (run.to_string(), e)))
        .collect();
    expected.sort_by(|a, b| (&a.0, a.1.seq).cmp(&(&b.0, b.1.seq)));
    assert_eq!(exported, expected);

    let one = expect(db.path(), &["export", "b2b2"], 0);
    assert_eq!(one.lines().count(), 13);
    assert!(
        one.lines()
            .all(|l| l.starts_with(&format!("{{\"run\":\"{RUN_ESCALATED}\",\"seq\":"))),
        "{one}"
    );
    let neither = annal(db.path(), &["export"]);
    assert_eq!(
        neither.status.code(),
        Some(2),
        "one of RUN or --all is required"
    );
}

#[test]
fn verify_passes_on_an_intact_database() {
    let db = fixture_db();
    assert_eq!(
        expect(db.path(), &["verify"], 0),
        format!(
            "{NO_TREE_HEAD}ok: verified 3 runs, 36 event records, 3 index entries; no problems\n"
        )
    );
    assert_eq!(
        expect(db.path(), &["verify", "b2"], 0),
        format!(
            "{NO_TREE_HEAD}ok: verified 1 runs, 13 event records, 0 index entries; no problems\n"
        )
    );
    // Stores written before final statuses went unindexed list finished runs too: valid.
    tamper(db.path(), |tree| {
        let completed = RunStatus::Completed.code();
        tree.insert(keys::status(completed, run_id(RUN_COMPLETED)), Vec::new())
            .unwrap();
    });
    assert_eq!(
        expect(db.path(), &["verify"], 0),
        format!(
            "{NO_TREE_HEAD}ok: verified 3 runs, 36 event records, 4 index entries; no problems\n"
        )
    );
}

#[test]
fn verify_names_a_flipped_byte_and_keeps_checking() {
    let db = fixture_db();
    let escalated = run_id(RUN_ESCALATED);
    tamper(db.path(), |tree| {
        let key = keys::event(escalated, 5);
        let mut value = tree.get(&key).unwrap().unwrap().to_vec();
        value[annal_storage::frame::HEADER_LEN + 3] ^= 0x04;
        tree.insert(key, value).unwrap();
    });
    let out = expect(db.path(), &["verify"], 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "one problem, the note and the summary:\n{out}"
    );
    assert!(
        lines[0].starts_with(&format!(
            "run {RUN_ESCALATED} seq 5: corrupt frame: bad crc: stored 0x"
        )),
        "{out}"
    );
    assert!(
        lines[2]
            .starts_with("FAILED: 1 problems, 1 runs affected; verified 3 runs, 36 event records"),
        "{out}"
    );
    // The other runs are unaffected.
    expect(db.path(), &["verify", RUN_COMPLETED], 0);

    // history shows what is intact and says where it stops; export refuses the run.
    let history = expect(db.path(), &["history", "b2"], 1);
    assert!(history.contains("#4    AttemptStarted"), "{history}");
    assert!(!history.contains("#6 "), "{history}");
    assert!(
        history.contains(&format!(
            "  run {RUN_ESCALATED} seq 5: corrupt frame: bad crc"
        )),
        "{history}"
    );
    let export = annal(db.path(), &["export", "b2"]);
    assert_eq!(export.status.code(), Some(1));
    assert!(stdout(&export).is_empty());
    assert!(
        stderr(&export).contains(&format!(
            "not exported: run {RUN_ESCALATED} seq 5: corrupt frame"
        )),
        "{}",
        stderr(&export)
    );
}

#[test]
fn verify_names_missing_seqs_stale_metadata_and_dangling_indexes() {
    let db = fixture_db();
    let ghost = RunId([0xff; 16]);
    tamper(db.path(), |tree| {
        // A hole in the middle of one run, the tail of another gone, and a due time left for
        // a run that does not exist.
        tree.remove(keys::event(run_id(RUN_COMPLETED), 3)).unwrap();
        tree.remove(keys::event(run_id(RUN_PARKED), 10)).unwrap();
        tree.insert(keys::timer(T0_MS, ghost, 7), Vec::new())
            .unwrap();
    });
    let out = expect(db.path(), &["verify"], 1);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("run {RUN_COMPLETED} seq 3: missing: the log jumps from seq 2 to seq 4"),
            format!("run {RUN_PARKED} meta: next_seq is 11 but the log ends at seq 9"),
            format!("index: due time 2023-11-14T22:13:20.000Z (id 7) points at run {ghost}, which does not exist"),
            NO_TREE_HEAD.trim_end().to_string(),
            "FAILED: 3 problems, 2 runs affected; verified 3 runs, 34 event records, 4 index entries".to_string(),
        ],
        "{out}"
    );
}

#[test]
fn verify_replays_each_history_through_the_fold() {
    let db = fixture_db();
    let parked = run_id(RUN_PARKED);
    tamper(db.path(), |tree| {
        // A well-framed event that contradicts the history: it consumes a signal that was
        // never received.
        let mut events = fixture_runs()
            .into_iter()
            .find(|(run, _)| *run == parked)
            .unwrap()
            .1;
        let annal::EventKind::SignalConsumed { signal_seq, .. } = &mut events[9].kind else {
            panic!("fixture changed")
        };
        *signal_seq = 7;
        tree.insert(
            keys::event(parked, 9),
            relinked(tree, parked, 9, &events[9]),
        )
        .unwrap();
    });
    let out = expect(db.path(), &["verify"], 1);
    // The fold names the contradiction; the chain names the edit (seq 10 was written after
    // another record 9).
    assert_eq!(
        out.lines().take(2).collect::<Vec<_>>(),
        [
            format!("run {RUN_PARKED} seq 9: history contradicts itself: signal seq 7 not received or consumed twice"),
            format!("run {RUN_PARKED} seq 9: not the record seq 10 was written after (altered, replaced or reordered)"),
        ],
        "{out}"
    );
}

#[test]
fn a_locked_database_is_explained() {
    let db = fixture_db();
    // This process holds sled's lock; the child cannot take it.
    let holder = open_store(db.path());
    // Once: here the lock is real and must be reported at once.
    let output = annal_once(db.path(), &["runs"]);
    drop(holder);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "the database at {} is locked by another process",
            db.path().display()
        )),
        "{message}"
    );
    assert!(
        message.contains("stop that service") && message.contains("cp -r"),
        "{message}"
    );
    // Once released, the same command works.
    expect(db.path(), &["runs"], 0);
}

#[test]
fn a_missing_database_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let output = annal(&missing, &["runs"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no annal database at"),
        "{}",
        stderr(&output)
    );
    assert!(!missing.exists());
}

#[test]
fn approvals_without_gates_and_with_an_unknown_gate() {
    let db = fixture_db();
    assert_eq!(
        expect(db.path(), &["approvals"], 0),
        "no approval gates in this database\n"
    );
    let approve = annal(
        db.path(),
        &["approve", "0123", "--by", "dana", "--reason", "ok"],
    );
    assert_eq!(approve.status.code(), Some(1));
    assert!(
        stderr(&approve).contains("no approval gates in this database"),
        "{}",
        stderr(&approve)
    );

    // Register gates as the engine does when a workflow asks: the completed run's gate
    // (decided in its history) and a pending one on the parked run.
    let decided = GateId([0x5e; 16]);
    let pending = GateId([0x9a; 16]);
    let store = open_store(db.path());
    for (run, next_seq, gate, step) in [
        (RUN_COMPLETED, 12, decided, 3),
        (RUN_PARKED, 11, pending, 5),
    ] {
        let batch = AppendBatch {
            run: run_id(run),
            expected_next_seq: next_seq,
            events: Vec::new(),
            meta: None,
            index: vec![IndexOp::PutGate { gate, step }],
        };
        runtime().block_on(store.append_durable(batch)).unwrap();
    }
    store.close().unwrap();
    let listed = expect(db.path(), &["approvals"], 0);
    let rows: Vec<&str> = listed.lines().collect();
    assert_eq!(rows.len(), 3, "{listed}");
    let cells = |row: &str| -> Vec<String> {
        row.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    assert_eq!(
        cells(rows[0]),
        [
            "GATE",
            "RUN",
            "STEP",
            "WORKFLOW",
            "STATUS",
            "DECISION",
            "RISK",
            "COST",
            "APPROVERS",
            "DEADLINE",
            "AGE",
            "ACTION"
        ]
    );
    // What the reviewer decided on: risk, cost, who may decide, the deadline, how long it took.
    assert_eq!(
        cells(rows[1]),
        [
            decided.to_string().as_str(),
            RUN_COMPLETED,
            "3",
            "refund v2",
            "completed",
            "approved by dana",
            "medium",
            "4200",
            "role:finance",
            "2023-11-15T22:13:20.273Z",
            "decided after 4m12s",
            "refund 42.00 EUR to order A-1001"
        ],
        "{listed}"
    );
    // A gate the index knows but the run's history does not: nothing to show but that.
    assert_eq!(
        cells(rows[2]),
        [
            pending.to_string().as_str(),
            RUN_PARKED,
            "5",
            "crm_lead v1",
            "parked",
            "pending",
            "?",
            "-",
            "?",
            "none",
            "-"
        ],
        "{listed}"
    );
    // History says the gate is closed: the first decision wins, nothing is written.
    let again = annal(
        db.path(),
        &["reject", "5e5e", "--by", "lee", "--reason", "no"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains(&format!(
            "gate {decided} (run {RUN_COMPLETED}) was already approved by dana at 2023-11-14T22:17:32.273Z; nothing was written"
        )),
        "{}",
        stderr(&again)
    );
    let unknown = annal(
        db.path(),
        &["reject", "0123", "--by", "dana", "--reason", "no"],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown approval gate '0123'"),
        "{}",
        stderr(&unknown)
    );
    // A gate registered at a position that holds no approval is refused; nothing is written.
    let known = annal(
        db.path(),
        &["approve", "9a9a", "--by", "dana", "--reason", "fine"],
    );
    assert_eq!(known.status.code(), Some(1));
    assert!(
        stderr(&known).contains("nothing was written"),
        "{}",
        stderr(&known)
    );
    expect(db.path(), &["verify"], 0);
}

#[test]
fn purge_removes_old_ended_runs_with_their_indexes() {
    let db = fixture_db();
    let dry = expect(db.path(), &["purge", "--older-than", "30d", "--dry-run"], 0);
    assert!(
        dry.contains(&format!(
            "would purge run {RUN_COMPLETED} (refund v2, completed, 12 events"
        )),
        "{dry}"
    );
    assert!(
        dry.contains(&format!(
            "would purge run {RUN_ESCALATED} (refund v2, terminated, 13 events"
        )),
        "{dry}"
    );
    assert!(dry.contains("would purge 2 runs (25 events)"), "{dry}");
    assert_eq!(
        expect(db.path(), &["runs"], 0).lines().count(),
        4,
        "a dry run changes nothing"
    );

    let done = expect(db.path(), &["purge", "--older-than", "30d"], 0);
    assert!(done.contains("purged 2 runs (25 events)"), "{done}");
    let runs = expect(db.path(), &["runs"], 0);
    assert_eq!(runs.lines().count(), 2, "{runs}");
    assert!(
        runs.contains(RUN_PARKED),
        "the parked run has not ended and stays"
    );
    // Events, metadata, status and dedupe entries went together: nothing dangles.
    assert_eq!(
        expect(db.path(), &["verify"], 0),
        format!(
            "{NO_TREE_HEAD}ok: verified 1 runs, 11 event records, 2 index entries; no problems\n"
        )
    );
    // A retention longer than the runs' age purges nothing.
    assert!(expect(db.path(), &["purge", "--older-than", "100000d"], 0).contains("purged 0 runs"));
}

/// A user type with a secret in it, as a workflow would return it.
#[derive(Debug, Serialize, Deserialize)]
struct Login {
    greeting: String,
    token: Secret<String>,
}

const CLEAR_TOKEN: &str = "sk_live_CLEAR_TOKEN_51f0e7";
const VISIBLE_MARKER: &str = "visible-marker-9c2d";

/// Runs a workflow whose step output contains a secret on a real engine in `dir`, then shuts
/// the engine down and drops its runtime so the directory is free.
fn engine_db(dir: &Path) -> RunId {
    let rt = runtime();
    let run = rt.block_on(async {
        let engine = Engine::builder()
            .path(dir)
            .register("login", 1, |ctx: Ctx, user: String| async move {
                let token: Secret<String> = ctx
                    .step("fetch_token")
                    .tool("vault")
                    .class(StepClass::Read)
                    .run(|_| async { Ok::<_, StepFailure>(Secret::new(CLEAR_TOKEN.to_string())) })
                    .await?;
                let greeting: String = ctx
                    .step("greet")
                    .tool("mailer")
                    .run(move |_| {
                        let user = user.clone();
                        async move { Ok::<_, StepFailure>(format!("{VISIBLE_MARKER} {user}")) }
                    })
                    .await?;
                Ok(Login { greeting, token })
            })
            .open()
            .await
            .unwrap();
        let handle = engine
            .start::<_, Login>("login", &"ada".to_string())
            .await
            .unwrap();
        // Bounded: a run that never ends must fail this test, not hang it.
        let login = tokio::time::timeout(std::time::Duration::from_secs(10), handle.result())
            .await
            .unwrap()
            .unwrap();
        // The output came through history: only the reference survived.
        assert!(login.token.is_redacted());
        assert!(login.greeting.starts_with(VISIBLE_MARKER));
        engine.shutdown().await;
        handle.run_id()
    });
    drop(rt);
    run
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn an_engine_database_is_readable_and_never_holds_a_secret_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("annal-data");
    let run = engine_db(&db);

    // The raw database files: the marker proves the scan sees stored values, the secret is
    // not among them.
    let raw: Vec<u8> = files(&db)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert!(
        contains(&raw, VISIBLE_MARKER),
        "the scan must see recorded outputs"
    );
    assert!(
        !contains(&raw, CLEAR_TOKEN),
        "the secret reached the database files in clear"
    );

    let runs = expect(&db, &["runs"], 0);
    assert!(
        runs.contains(&format!("{run}  login v1  completed")),
        "{runs}"
    );
    let history = expect(&db, &["history", &run.to_string()], 0);
    assert!(
        history.contains("[0] fetch_token tool=vault class=Read"),
        "{history}"
    );
    assert!(history.contains(r#""token":"<redacted>""#), "{history}");
    let verify = expect(&db, &["verify"], 0);
    assert!(verify.contains("\nok: verified 1 runs"), "{verify}");
    let report = expect(&db, &["report"], 0);
    assert!(report.contains("vault"), "{report}");
    let outputs = [
        runs,
        history,
        verify,
        report,
        expect(&db, &["history", &run.to_string(), "--json"], 0),
        expect(&db, &["export", "--all"], 0),
        expect(&db, &["report", "--json"], 0),
    ];
    for output in &outputs {
        assert!(
            !output.contains(CLEAR_TOKEN),
            "the secret reached CLI output:\n{output}"
        );
    }
    // The export keeps the reference, so it still decodes into a (redacted) Secret.
    assert!(
        outputs[5].contains(r#""token":{"$secret":""#),
        "{}",
        outputs[5]
    );
}

async fn awaits_refund_approval(ctx: Ctx, amount: u64) -> Result<String, annal::WorkflowError> {
    let mut request = annal::ApprovalRequest::new(format!("refund {amount} cents"));
    request.approvers = vec!["role:finance".into()];
    match ctx.approval(request).await? {
        annal::Decision::Approved { actor, .. } => Ok(format!("refunded by {actor}")),
        annal::Decision::Rejected { actor, reason } => Ok(format!("rejected by {actor}: {reason}")),
        annal::Decision::Expired => Ok("expired".into()),
    }
}

/// Starts a refund of `amount` that waits for an approval and returns it once parked.
async fn start_parked_refund(engine: &Engine, amount: u64) -> RunId {
    let run = engine
        .start::<_, String>("refund", &amount)
        .await
        .unwrap()
        .run_id();
    while engine.status(run).await.unwrap().status != RunStatus::Parked {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    run
}

#[test]
fn approve_from_the_cli_is_recorded_and_the_service_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine_at = || {
        Engine::builder()
            .path(dir.path())
            .park_after_ms(50)
            .register("refund", 1, awaits_refund_approval)
    };
    let rt = runtime();
    let run = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let run = start_parked_refund(&engine, 4_200).await;
        engine.shutdown().await;
        run
    });
    let listed = expect(dir.path(), &["approvals"], 0);
    let gate = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let history_before = expect(dir.path(), &["history", &run.to_string()], 0);
    // Not an approver: refused, nothing written.
    let refused = annal(
        dir.path(),
        &[
            "approve", &gate, "--by", "sam", "--role", "support", "--reason", "lgtm",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    // The refusal names what the gate requires.
    assert!(
        stderr(&refused)
            .contains("sam (roles support) may not decide it; it needs one of: role:finance"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("nothing was written"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        expect(dir.path(), &["history", &run.to_string()], 0),
        history_before
    );
    // Finance approves.
    let approved = expect(
        dir.path(),
        &[
            "approve",
            &gate,
            "--by",
            "dana",
            "--role",
            "finance",
            "--reason",
            "within policy",
        ],
        0,
    );
    assert!(approved.contains("approved by dana"), "{approved}");
    // A second decision is refused by the first-decision-wins rule.
    let again = annal(
        dir.path(),
        &[
            "reject", &gate, "--by", "lee", "--role", "finance", "--reason", "no",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    // No process holds the database: the decided run is not "running" but waits for the
    // service, and the list says so.
    let listed = expect(dir.path(), &["approvals"], 0);
    let row = listed.lines().nth(1).unwrap();
    assert!(
        row.contains("waiting for the service") && row.contains("approved by dana as role:finance"),
        "{listed}"
    );
    assert!(!row.contains("running"), "{listed}");
    assert!(
        listed.contains("the service resumes it when it next opens the database"),
        "{listed}"
    );
    // The service, reopened with its workflows, resumes the run from the decision.
    let out = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let out = engine.handle::<String>(run).result().await.unwrap();
        engine.shutdown().await;
        out
    });
    assert_eq!(out, "refunded by dana");
    expect(dir.path(), &["verify"], 0);
}

#[test]
fn verify_checks_a_checkpoint_against_the_events_it_covers() {
    let db = fixture_db();
    let parked = run_id(RUN_PARKED);
    let events = fixture_runs()
        .into_iter()
        .find(|(run, _)| *run == parked)
        .unwrap()
        .1;
    let put = |dir: &Path, bytes: Vec<u8>| {
        tamper(dir, |tree| {
            tree.insert(
                keys::checkpoint(parked),
                annal_storage::frame::encode(&bytes),
            )
            .unwrap();
        })
    };
    let fold = |events: &[Event]| annal::replay::ReplayState::from_events(events).unwrap();

    // The fold of the first 6 events, as the engine writes it when the run parks: fine.
    put(
        db.path(),
        annal::codec::encode_checkpoint(&fold(&events[..6])),
    );
    expect(db.path(), &["verify"], 0);

    // One that says something the log does not.
    let mut other = events[..6].to_vec();
    other.truncate(5);
    other.push(Event {
        seq: 5,
        at_ms: events[5].at_ms,
        kind: annal::EventKind::SignalReceived {
            name: "forged".into(),
            payload: annal::Payload::encode(&1).unwrap(),
        },
    });
    put(db.path(), annal::codec::encode_checkpoint(&fold(&other)));
    let out = expect(db.path(), &["verify"], 1);
    assert!(
        out.contains(&format!(
            "run {RUN_PARKED}: checkpoint disagrees with the fold of the log's first 6 events"
        )),
        "{out}"
    );

    // One that covers more than the log holds, and one that does not decode.
    let mut longer = events.clone();
    longer.push(Event {
        seq: events.len() as u64,
        at_ms: events[0].at_ms,
        kind: annal::EventKind::SignalReceived {
            name: "later".into(),
            payload: annal::Payload::encode(&2).unwrap(),
        },
    });
    put(db.path(), annal::codec::encode_checkpoint(&fold(&longer)));
    let out = expect(db.path(), &["verify"], 1);
    assert!(
        out.contains(&format!(
            "checkpoint covers {} events but the log holds {}",
            longer.len(),
            events.len()
        )),
        "{out}"
    );
    put(db.path(), vec![1, 2, 3]);
    let out = expect(db.path(), &["verify"], 1);
    assert!(out.contains("checkpoint unreadable"), "{out}");
}

/// Issue 21: a parked run whose log holds its decision behind the parked status (a crash
/// took the wake-up an older engine appended separately) waits for ever. `verify` names it,
/// with the seq of the decision; the service's open resumes it, and `verify` is clean again.
#[test]
fn verify_names_a_parked_run_whose_decision_arrived_behind_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let engine_at = || {
        Engine::builder()
            .path(dir.path())
            .park_after_ms(50)
            .register("refund", 1, awaits_refund_approval)
    };
    let rt = runtime();
    let (run, gate) = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let run = engine
            .start::<_, String>("refund", &4_200u64)
            .await
            .unwrap()
            .run_id();
        while engine.status(run).await.unwrap().status != RunStatus::Parked {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let pending = engine
            .pending_approvals(&annal::ApprovalFilter::default())
            .await
            .unwrap();
        engine.shutdown().await;
        (run, pending[0].gate)
    });
    {
        // The decision, appended without the status change, as the old engine left it.
        let store = open_store(dir.path());
        rt.block_on(async {
            let seq = store.meta(run).await.unwrap().unwrap().next_seq;
            let decided = Event {
                seq,
                at_ms: T0_MS,
                kind: annal::EventKind::ApprovalDecided {
                    gate: gate.0,
                    approved: true,
                    actor: "dana".into(),
                    reason: "ok".into(),
                    edits: None,
                },
            };
            store
                .append_durable(AppendBatch {
                    run,
                    expected_next_seq: seq,
                    events: vec![annal::codec::encode_event(&decided)],
                    meta: None,
                    index: vec![],
                })
                .await
                .unwrap();
        });
        store.close().unwrap();
    }
    let report = expect(dir.path(), &["verify"], 1);
    assert!(
        report.contains(&format!(
            "run {run}: parked since seq 2, but ApprovalDecided arrived at seq 2 and no driver has seen it (a lost wake-up)"
        )),
        "{report}"
    );
    let out = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let out = engine.handle::<String>(run).result().await.unwrap();
        engine.shutdown().await;
        out
    });
    assert_eq!(out, "refunded by dana");
    expect(dir.path(), &["verify"], 0);
}

/// A refund whose approval expires at once and escalates, for operator actions.
async fn refund_that_escalates(ctx: Ctx, amount: u64) -> Result<String, annal::WorkflowError> {
    let mut request = annal::ApprovalRequest::new(format!("refund {amount} cents"));
    request.approvers = vec!["role:finance".into()];
    request.deadline_ms = Some(if amount == 0 { 1 } else { 3_600_000 });
    match ctx.approval(request).await? {
        annal::Decision::Approved { actor, .. } => Ok(format!("refunded by {actor}")),
        annal::Decision::Rejected { actor, reason } => Ok(format!("rejected by {actor}: {reason}")),
        annal::Decision::Expired => Ok("expired".into()),
    }
}

async fn wait_for_status(engine: &Engine, run: RunId, status: RunStatus) {
    for _ in 0..1_000 {
        if engine.status(run).await.unwrap().status == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run {run} never became {status}");
}

#[test]
fn operate_on_a_database_acts_on_an_escalated_run_and_refuses_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let engine_at = || {
        Engine::builder()
            .path(dir.path())
            .park_after_ms(50)
            .register("refund", 1, refund_that_escalates)
    };
    let rt = runtime();
    let run = rt.block_on(async {
        let engine = engine_at().open().await.unwrap();
        let run = engine
            .start::<_, String>("refund", &0u64)
            .await
            .unwrap()
            .run_id();
        wait_for_status(&engine, run, RunStatus::Escalated).await;
        engine.shutdown().await;
        run
    });
    let id = run.to_string();
    let before = expect(dir.path(), &["history", &id], 0);
    let no_by = annal(dir.path(), &["operate", &id, "retry", "--reason", "x"]);
    assert_eq!(no_by.status.code(), Some(1));
    assert!(
        stderr(&no_by).contains("--by ACTOR is required"),
        "{}",
        stderr(&no_by)
    );
    let misfit = annal(
        dir.path(),
        &[
            "operate", &id, "resolve", "done", "--output", "\"x\"", "--by", "olga", "--reason", "x",
        ],
    );
    assert_eq!(misfit.status.code(), Some(1));
    assert!(
        stderr(&misfit).contains("nothing was written"),
        "{}",
        stderr(&misfit)
    );
    assert_eq!(expect(dir.path(), &["history", &id], 0), before);
    let done = expect(
        dir.path(),
        &[
            "operate",
            &id[..8],
            "retry",
            "--by",
            "olga",
            "--reason",
            "reviewer back from leave",
        ],
        0,
    );
    assert!(done.contains("retry by olga"), "{done}");
    let history = expect(dir.path(), &["history", &id], 0);
    assert!(
        history.contains("retry-step [0] by olga: \"reviewer back from leave\""),
        "{history}"
    );
    // No longer escalated: a second action is refused.
    let again = annal(
        dir.path(),
        &["operate", &id, "abort", "--by", "omar", "--reason", "x"],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("not escalated"),
        "{}",
        stderr(&again)
    );
    expect(dir.path(), &["verify"], 0);
}

/// Runs `annal --url URL --token-file FILE ARGS…` against a running service.
fn annal_remote(url: &str, token_file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annal"))
        .arg("--url")
        .arg(url)
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .unwrap()
}

fn expect_remote(url: &str, token_file: &Path, args: &[&str], code: i32) -> (String, String) {
    let output = annal_remote(url, token_file, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "annal --url {args:?}\n--- stdout\n{}--- stderr\n{}",
        stdout(&output),
        stderr(&output)
    );
    (stdout(&output), stderr(&output))
}

#[test]
fn the_cli_decides_and_operates_through_a_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let token = |name: &str, value: &str| {
        let path = tokens.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path
    };
    let (dana, lee, olga) = (
        token("dana", "dana-token-0123456789abcdef0123"),
        token("lee", "lee-token-0123456789abcdef01234"),
        token("olga", "olga-token-0123456789abcdef0123"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (engine, served, run, stuck) = rt.block_on(async {
        let engine = Engine::builder()
            .path(dir.path())
            .durability(Durability::Buffered)
            .register("refund", 1, refund_that_escalates)
            .open()
            .await
            .unwrap();
        let run = engine
            .start::<_, String>("refund", &4_200u64)
            .await
            .unwrap()
            .run_id();
        let stuck = engine
            .start::<_, String>("refund", &0u64)
            .await
            .unwrap()
            .run_id();
        wait_for_status(&engine, stuck, RunStatus::Escalated).await;
        let config = annal_admin::AdminConfig::default()
            .with_principal(
                "dana",
                &["finance"],
                annal_admin::PrincipalKind::Human,
                "dana-token-0123456789abcdef0123",
            )
            .with_principal(
                "lee",
                &["support"],
                annal_admin::PrincipalKind::Human,
                "lee-token-0123456789abcdef01234",
            )
            .with_principal(
                "olga",
                &["operator"],
                annal_admin::PrincipalKind::Human,
                "olga-token-0123456789abcdef0123",
            );
        let served = annal_admin::serve(engine.clone(), config).await.unwrap();
        (engine, served, run, stuck)
    });
    let url = served.url();
    let (listed, _) = expect_remote(&url, &dana, &["approvals"], 0);
    assert!(
        listed.contains("refund 4200 cents") && listed.contains("role:finance"),
        "{listed}"
    );
    let gate = listed
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    // Lee may not decide it; --by must match the token; nothing is written.
    let (_, refused) = expect_remote(&url, &lee, &["approve", &gate[..8], "--reason", "lgtm"], 1);
    assert!(
        refused.contains("not_allowed") && refused.contains("nothing was written"),
        "{refused}"
    );
    let (_, impostor) = expect_remote(
        &url,
        &lee,
        &["approve", &gate, "--by", "dana", "--reason", "x"],
        1,
    );
    assert!(impostor.contains("does not match the token"), "{impostor}");
    let history = |who: &Path| expect_remote(&url, who, &["history", &run.to_string()], 0).0;
    assert!(!history(&lee).contains("ApprovalDecided"));
    // Dana approves; the service wakes the run at once.
    let (approved, _) = expect_remote(
        &url,
        &dana,
        &["approve", &gate[..8], "--reason", "within policy"],
        0,
    );
    assert!(
        approved.contains("approved by dana as role:finance"),
        "{approved}"
    );
    let out = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            engine.handle::<String>(run).result(),
        )
        .await
        .unwrap()
        .unwrap()
    });
    assert_eq!(out, "refunded by dana");
    assert!(history(&lee).contains("approved by dana as role:finance: \"within policy\""));
    let (_, again) = expect_remote(&url, &dana, &["reject", &gate, "--reason", "no"], 1);
    assert!(
        again.contains("already_decided") && again.contains("dana"),
        "{again}"
    );
    let (runs, _) = expect_remote(&url, &lee, &["runs", "--status", "completed"], 0);
    assert!(runs.contains(&run.to_string()), "{runs}");
    let (report, _) = expect_remote(&url, &lee, &["report"], 0);
    assert!(report.contains("approved"), "{report}");
    // Operator actions: only an operator; the escalated run is reopened.
    let (_, not_operator) = expect_remote(
        &url,
        &dana,
        &["operate", &stuck.to_string(), "retry", "--reason", "x"],
        1,
    );
    assert!(not_operator.contains("forbidden"), "{not_operator}");
    let (done, _) = expect_remote(
        &url,
        &olga,
        &[
            "operate",
            &stuck.to_string(),
            "retry",
            "--reason",
            "reviewer back",
        ],
        0,
    );
    assert!(done.contains("retry by olga"), "{done}");
    let (_, local_only) = expect_remote(&url, &olga, &["verify"], 1);
    assert!(local_only.contains("database directory"), "{local_only}");
    rt.block_on(async {
        served.shutdown().await.unwrap();
        engine.shutdown().await;
    });
}
