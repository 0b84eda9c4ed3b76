//! `annal verify`: every check the stored data must pass, every problem reported.
//!
//! Per run: each event record's key, frame (format, length, CRC) and decoding; seq
//! continuity from 0 with no holes; the metadata's own frame, the `next_seq` it recorded at
//! its last write against the last stored seq (a log that ends before it lost its tail), its status against the status index and the history's end, its workflow
//! against `RunStarted`; a waiting run whose history already holds what it waits for (a
//! decision or signal behind a parked status, an operator action behind an escalated one:
//! [`annal::overdue`]) and a parked run whose due time has no index entry, since nothing
//! would wake either; the intact history folded through the engine's replay fold
//! (`ReplayState::from_events`), which finds contradictions such as an outcome without its
//! command; and the run's checkpoint, if any, against the fold of the events it covers. Over the whole database (when no run is named): status, due-time, gate and
//! dedupe index entries that point at runs that do not exist or disagree with them.
//!
//! Tamper evidence (`tamper.rs`): every record must link to the one before it in its run
//! (a break is named at the earlier record), and every run the latest stored tree head or
//! the auditor's checkpoint (`--against`) committed to must still extend it.
//!
//! On a database services write while it is verified (PostgreSQL), a check that compares
//! two reads (metadata and an index, a gate and its run) could see a run half-way through a
//! change. Every run a problem names is therefore checked again, between two reads of its
//! metadata, until the run held still in between: what that pass finds is reported
//! ([`confirm`]).

use std::collections::BTreeMap;
use std::io::Write;

use annal::{EventKind, RunStatus};
use annal_core::replay::ReplayState;
use annal_storage::{keys, RunId};

use crate::db::{Database, IndexEntry, Problem, Subject};
use crate::tamper::{Commitments, Rewritten};

/// What a verification covered.
#[derive(Debug, Default)]
pub struct Summary {
    /// Runs checked.
    pub runs: u64,
    /// Event records checked.
    pub records: u64,
    /// Index entries checked.
    pub index_entries: u64,
    /// Everything found wrong, in run and seq order.
    pub problems: Vec<Problem>,
    /// Runs that services changed during every re-check of a problem (a shared database):
    /// only their damaged records are reported.
    pub unsettled: u64,
    /// Leading records written before chaining (format 1), not problems.
    pub unchained: u64,
    /// What was checked of tree heads and checkpoints, when it found nothing wrong.
    pub notes: Vec<String>,
}

/// What `verify` compares the history with, beyond its own chains.
#[derive(Debug, Default)]
pub struct Against {
    /// The operator's public key: signatures are checked only with it.
    pub key: Option<annal::audit::transparency::VerifierKey>,
    /// The auditor's checkpoint (`--against`).
    pub checkpoint: Option<annal::audit::transparency::SignedCheckpoint>,
}

/// Checks the named run, or all of them and the indexes; and every run against the latest
/// stored tree head and the auditor's checkpoint.
pub fn verify(db: &Database, run: Option<RunId>, against: Against) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut commitments = Commitments::read(
        db,
        against.key,
        against.checkpoint.as_ref(),
        &mut summary.problems,
        &mut summary.notes,
    )?;
    let runs: std::collections::BTreeSet<RunId> = match run {
        Some(run) => [run].into(),
        None => db
            .run_ids()?
            .into_iter()
            .chain(commitments.runs())
            .collect(),
    };
    let mut rewritten = Vec::new();
    for run in runs {
        let checked = verify_run(db, run, &mut commitments, &mut summary.problems)?;
        if checked.exists {
            summary.runs += 1;
        }
        summary.records += checked.records;
        summary.unchained += checked.unchained;
        rewritten.extend(checked.rewritten);
    }
    if run.is_none() {
        summary.index_entries = verify_indexes(db, None, &mut summary.problems)?;
    }
    if db.shared() {
        let found = std::mem::take(&mut summary.problems);
        summary.problems = confirm(db, found, run.is_none(), &mut commitments, &mut summary)?;
    }
    commitments.locate(db, rewritten, &mut summary.problems)?;
    if run.is_none() {
        commitments.finish(db, &mut summary.problems, &mut summary.notes)?;
    }
    summary.problems.sort();
    summary.problems.dedup();
    Ok(summary)
}

/// Re-checks of one run in [`confirm`] before it counts as moving.
const CONFIRM_ROUNDS: usize = 5;

/// Checks every run a problem names again, on its own — its records, metadata and
/// checkpoint, with fresh index reads, and the index entries that point at it if one of its
/// problems came from them — between two reads of its metadata. If the metadata did not
/// change in between, the run held still (every append moves its metadata's log end, every
/// status change its status): that check's problems are its problems. A run that moved
/// during every re-check is being executed as it is read; of its problems, only damaged
/// records stand (they do not depend on when they were read), and it is counted as
/// unsettled.
fn confirm(
    db: &Database,
    first: Vec<Problem>,
    indexes: bool,
    commitments: &mut Commitments,
    summary: &mut Summary,
) -> anyhow::Result<Vec<Problem>> {
    let (mut confirmed, suspects): (Vec<Problem>, Vec<Problem>) =
        first.into_iter().partition(|p| p.concerns().is_none());
    let mut by_run: BTreeMap<RunId, Vec<Problem>> = BTreeMap::new();
    for problem in suspects {
        if let Some(run) = problem.concerns() {
            by_run.entry(run).or_default().push(problem);
        }
    }
    for (run, found) in by_run {
        let with_indexes = indexes && found.iter().any(|p| p.subject == Subject::Index);
        let mut settled = None;
        for round in 0..CONFIRM_ROUNDS {
            // A run a service executes changes in bursts (a wake-up, a step, parking):
            // later rounds wait a little longer for a quiet moment.
            if round > 0 {
                std::thread::sleep(std::time::Duration::from_millis(10 << round));
            }
            let before = db.meta(run)?;
            db.refresh();
            let mut again = Vec::new();
            // A committed prefix cannot change while services write: its rewrites were
            // collected in the first pass.
            verify_run(db, run, commitments, &mut again)?;
            if with_indexes {
                verify_indexes(db, Some(run), &mut again)?;
            }
            if db.meta(run)? == before {
                settled = Some(again);
                break;
            }
        }
        match settled {
            Some(again) => confirmed.extend(again),
            None => {
                summary.unsettled += 1;
                confirmed.extend(
                    found
                        .into_iter()
                        .filter(|p| matches!(p.subject, Subject::Event { .. })),
                );
            }
        }
    }
    Ok(confirmed)
}

/// What checking one run found besides its problems.
struct Checked {
    /// The run has metadata or events.
    exists: bool,
    /// Event records found.
    records: u64,
    /// Leading records written before chaining.
    unchained: u64,
    /// Committed parts rewritten consistently, to be located.
    rewritten: Vec<Rewritten>,
}

/// Checks one run: its records, chain, metadata and history, and what the checkpoints
/// committed to of it.
fn verify_run(
    db: &Database,
    run: RunId,
    commitments: &mut Commitments,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Checked> {
    // Read before the metadata: the log then holds at least what the checkpoint covers,
    // even on a database a service writes meanwhile.
    let checkpoint = db.checkpoint(run)?;
    let meta = db.meta(run)?;
    let scan = db.scan_events(run, meta.as_ref().ok().and_then(Option::as_ref))?;
    let exists = scan.records > 0 || !matches!(meta, Ok(None));
    let chain = scan.chain.chain();
    let rewritten = commitments.check_run(run, exists.then_some(chain), problems);
    let checked = Checked {
        exists,
        records: scan.records,
        unchained: chain.unchained,
        rewritten,
    };
    if !exists {
        return Ok(checked);
    }
    let meta_problem = |reason: String| Problem::meta(run, reason);
    let intact = scan.problems.is_empty();
    problems.extend(scan.problems.iter().cloned());

    // The intact part must fold without contradiction: that is what replay will do with it.
    let folded = match ReplayState::from_events(&scan.events) {
        Ok(state) => Some(state),
        Err(c) => {
            problems.push(Problem::event(
                run,
                c.seq,
                format!("history contradicts itself: {}", c.reason),
            ));
            None
        }
    };

    let meta = match meta {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            problems.push(Problem::run(run, "events without metadata"));
            return Ok(checked);
        }
        Err(problem) => {
            problems.push(problem);
            return Ok(checked);
        }
    };
    let stored_next = scan.last_seq.map_or(0, |s| s.saturating_add(1));
    if meta.next_seq != stored_next {
        let log = match scan.last_seq {
            Some(last) => format!("the log ends at seq {last}"),
            None => "the log is empty".into(),
        };
        problems.push(meta_problem(format!(
            "next_seq is {} but {log}",
            meta.next_seq
        )));
    }
    let Some(status) = RunStatus::from_code(meta.status) else {
        problems.push(meta_problem(format!("unknown status code {}", meta.status)));
        return Ok(checked);
    };
    // Final statuses are not indexed (`keys::FINAL_STATUS_MIN`).
    if keys::status_is_indexed(meta.status) && !db.status_indexed(meta.status, run)? {
        problems.push(meta_problem(format!(
            "status is {status} but the status index has no entry for the run"
        )));
    }
    // History-level agreement needs the whole history.
    let (true, Some(folded)) = (intact, folded) else {
        return Ok(checked);
    };
    verify_checkpoint(run, checkpoint, &scan.events, problems);
    if let Some((workflow, version, _)) = folded.started() {
        if *workflow != meta.workflow || *version != meta.version {
            problems.push(meta_problem(format!(
                "says workflow {} v{} but RunStarted says {workflow} v{version}",
                meta.workflow, meta.version
            )));
        }
    }
    let ended_as = folded.terminal().map(|kind| match kind {
        EventKind::RunCompleted { .. } => RunStatus::Completed,
        EventKind::RunFailed { .. } => RunStatus::Failed,
        EventKind::RunCancelled { .. } => RunStatus::Cancelled,
        EventKind::RunTerminated { .. } => RunStatus::Terminated,
        EventKind::ContinuedAsNew { .. } => RunStatus::ContinuedAsNew,
        // A terminal kind added later: only "ended" can be checked.
        _ => status,
    });
    // A run that waits for what its own history holds will not wake by itself.
    let arrived = usize::try_from(meta.status_seq)
        .ok()
        .and_then(|from| scan.events.get(from..))
        .unwrap_or_default();
    if let Some(why) = annal::overdue(status, meta.status_seq, arrived, meta.wake_ms, None) {
        problems.push(Problem::run(
            run,
            format!("{why}; nothing wakes it until an engine opens the store and resumes it"),
        ));
    }
    if let (RunStatus::Parked, Some(wake_ms)) = (status, meta.wake_ms) {
        if !db.due_indexed(wake_ms, run)? {
            problems.push(Problem::run(
                run,
                format!(
                    "parked until {} but the due-time index has no entry for it: the timer service will not wake it (the engine's sweep does)",
                    annal_core::audit::utc(wake_ms)
                ),
            ));
        }
    }
    match ended_as {
        Some(expected) if expected != status || !status.is_terminal() => {
            problems.push(meta_problem(format!(
                "status is {status} but the history ends with {}",
                expected
            )));
        }
        None if status.is_terminal() => {
            problems.push(meta_problem(format!(
                "status is {status} but the history has not ended"
            )));
        }
        _ => {}
    }
    Ok(checked)
}

/// A run's checkpoint is what the engine replays from when it wakes the run, instead of the
/// events it covers: it must be exactly the fold of the log's first events.
fn verify_checkpoint(
    run: RunId,
    checkpoint: Option<Result<Vec<u8>, String>>,
    events: &[annal_core::event::Event],
    problems: &mut Vec<Problem>,
) {
    let Some(bytes) = checkpoint else {
        return;
    };
    let problem = |reason: String| Problem::run(run, reason);
    let state = match bytes
        .and_then(|bytes| annal_core::codec::decode_checkpoint(&bytes).map_err(|e| e.to_string()))
    {
        Ok(state) => state,
        Err(e) => {
            problems.push(problem(format!(
                "checkpoint unreadable (the engine folds the whole log instead): {e}"
            )));
            return;
        }
    };
    let covered = state.next_seq();
    let Some(prefix) = usize::try_from(covered).ok().and_then(|n| events.get(..n)) else {
        problems.push(problem(format!(
            "checkpoint covers {covered} events but the log holds {}",
            events.len()
        )));
        return;
    };
    let agrees = ReplayState::from_events(prefix)
        .is_ok_and(|fold| format!("{fold:?}") == format!("{state:?}"));
    if !agrees {
        problems.push(problem(format!(
            "checkpoint disagrees with the fold of the log's first {covered} events"
        )));
    }
}

/// Checks every index entry (with `only`, those that point at that run) against the run it
/// points at; returns how many entries were checked.
fn verify_indexes(
    db: &Database,
    only: Option<RunId>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<u64> {
    let mut checked = 0;
    for entry in db.index_entries()? {
        let points_at = match &entry {
            IndexEntry::Status { run, .. }
            | IndexEntry::Gate { run, .. }
            | IndexEntry::Dedupe { run, .. } => Some(*run),
            IndexEntry::Due(timer) => Some(timer.run),
            IndexEntry::Malformed(_) => None,
        };
        if only.is_some_and(|only| points_at != Some(only)) {
            continue;
        }
        checked += 1;
        let index = |reason: String| Problem::index(reason, points_at);
        let missing =
            |run: RunId| -> anyhow::Result<bool> { Ok(matches!(db.meta(run)?, Ok(None))) };
        match entry {
            IndexEntry::Malformed(reason) => problems.push(index(reason)),
            IndexEntry::Status { code, run } => {
                let name = RunStatus::from_code(code)
                    .map_or_else(|| format!("code {code}"), |s| s.to_string());
                match db.meta(run)? {
                    Ok(Some(meta)) if meta.status == code => {}
                    Ok(Some(meta)) => {
                        let actual = RunStatus::from_code(meta.status)
                            .map_or_else(|| format!("code {}", meta.status), |s| s.to_string());
                        problems.push(index(format!(
                            "status index lists run {run} as {name}, its metadata says {actual}"
                        )));
                    }
                    Ok(None) => problems.push(index(format!(
                        "status index lists run {run} ({name}), which does not exist"
                    ))),
                    // Already reported with the run.
                    Err(_) => {}
                }
            }
            // A due time left behind by an ended run is harmless (waking an ended run does
            // nothing); one for a run that does not exist means a purge went wrong.
            IndexEntry::Due(timer) if missing(timer.run)? => problems.push(index(format!(
                "due time {} (id {}) points at run {}, which does not exist",
                annal_core::audit::utc(timer.fire_at_ms),
                timer.id,
                timer.run
            ))),
            IndexEntry::Gate { gate, run } if missing(run)? => problems.push(index(format!(
                "approval gate {gate} points at run {run}, which does not exist"
            ))),
            IndexEntry::Dedupe { key, run } if missing(run)? => problems.push(index(format!(
                "dedupe key {key:?} points at run {run}, which does not exist"
            ))),
            IndexEntry::Due(_) | IndexEntry::Gate { .. } | IndexEntry::Dedupe { .. } => {}
        }
    }
    Ok(checked)
}

/// Prints the problems, one line each, then a summary line; the exit code is 1 if anything
/// is wrong.
pub fn print(summary: &Summary, out: &mut dyn Write) -> anyhow::Result<u8> {
    for problem in &summary.problems {
        writeln!(out, "{problem}")?;
    }
    for note in &summary.notes {
        writeln!(out, "{note}")?;
    }
    if summary.unchained > 0 {
        writeln!(
            out,
            "note: {} event records are unchained (written before format 2): nothing links them but the first chained record of their run, which links to the last of them",
            summary.unchained
        )?;
    }
    if summary.unsettled > 0 {
        writeln!(
            out,
            "note: {} runs changed during every re-check (services are executing them); only their damaged records are reported: verify again",
            summary.unsettled
        )?;
    }
    let what = format!(
        "{} runs, {} event records, {} index entries",
        summary.runs, summary.records, summary.index_entries
    );
    if summary.problems.is_empty() {
        writeln!(out, "ok: verified {what}; no problems")?;
        Ok(0)
    } else {
        let runs: std::collections::BTreeSet<RunId> = summary
            .problems
            .iter()
            .filter_map(|p| match p.subject {
                Subject::Event { run, .. } | Subject::Meta { run } | Subject::Run { run } => {
                    Some(run)
                }
                Subject::Index | Subject::Checkpoint { .. } => None,
            })
            .collect();
        writeln!(
            out,
            "FAILED: {} problems, {} runs affected; verified {what}",
            summary.problems.len(),
            runs.len()
        )?;
        Ok(1)
    }
}
