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

use std::io::Write;

use annal::replay::ReplayState;
use annal::{EventKind, RunStatus};
use annal_storage::{keys, RunId};

use crate::db::{Database, Problem, Subject};

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
}

/// Checks the named run, or all of them and the indexes.
pub fn verify(db: &Database, run: Option<RunId>) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let runs = match run {
        Some(run) => vec![run],
        None => db.run_ids()?.into_iter().collect(),
    };
    for run in runs {
        summary.runs += 1;
        verify_run(db, run, &mut summary)?;
    }
    if run.is_none() {
        verify_indexes(db, &mut summary)?;
    }
    summary.problems.sort();
    Ok(summary)
}

fn verify_run(db: &Database, run: RunId, summary: &mut Summary) -> anyhow::Result<()> {
    let scan = db.scan_events(run)?;
    summary.records += scan.records;
    let problems = &mut summary.problems;
    let meta_problem = |reason: String| Problem {
        subject: Subject::Meta { run },
        reason,
    };
    let intact = scan.problems.is_empty();
    problems.extend(scan.problems.iter().cloned());

    // The intact part must fold without contradiction: that is what replay will do with it.
    let folded = match ReplayState::from_events(&scan.events) {
        Ok(state) => Some(state),
        Err(c) => {
            problems.push(Problem {
                subject: Subject::Event { run, seq: c.seq },
                reason: format!("history contradicts itself: {}", c.reason),
            });
            None
        }
    };

    let meta = match db.meta(run)? {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            problems.push(Problem {
                subject: Subject::Run { run },
                reason: "events without metadata".into(),
            });
            return Ok(());
        }
        Err(problem) => {
            problems.push(problem);
            return Ok(());
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
        return Ok(());
    };
    // Final statuses are not indexed (`keys::FINAL_STATUS_MIN`).
    if keys::status_is_indexed(meta.status)
        && !db
            .scan_prefix(&keys::status(meta.status, run))
            .any(|item| item.is_ok())
    {
        problems.push(meta_problem(format!(
            "status is {status} but the status index has no entry for the run"
        )));
    }
    // History-level agreement needs the whole history.
    let (true, Some(folded)) = (intact, folded) else {
        return Ok(());
    };
    verify_checkpoint(db, run, &scan.events, problems)?;
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
        problems.push(Problem {
            subject: Subject::Run { run },
            reason: format!(
                "{why}; nothing wakes it until an engine opens the store and resumes it"
            ),
        });
    }
    if let (RunStatus::Parked, Some(wake_ms)) = (status, meta.wake_ms) {
        let mut due = keys::timer(wake_ms, run, 0);
        due.truncate(due.len() - 4);
        if !db.scan_prefix(&due).any(|item| item.is_ok()) {
            problems.push(Problem {
                subject: Subject::Run { run },
                reason: format!(
                    "parked until {} but the due-time index has no entry for it: the timer service will not wake it (the engine's sweep does)",
                    annal::audit::utc(wake_ms)
                ),
            });
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
    Ok(())
}

/// A run's checkpoint is what the engine replays from when it wakes the run, instead of the
/// events it covers: it must be exactly the fold of the log's first events.
fn verify_checkpoint(
    db: &Database,
    run: RunId,
    events: &[annal::Event],
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    let Some(raw) = db.checkpoint(run)? else {
        return Ok(());
    };
    let problem = |reason: String| Problem {
        subject: Subject::Run { run },
        reason,
    };
    let state = match annal_storage::decode_checkpoint(&raw)
        .map_err(|e| e.to_string())
        .and_then(|bytes| annal::codec::decode_checkpoint(&bytes).map_err(|e| e.to_string()))
    {
        Ok(state) => state,
        Err(e) => {
            problems.push(problem(format!(
                "checkpoint unreadable (the engine folds the whole log instead): {e}"
            )));
            return Ok(());
        }
    };
    let covered = state.next_seq();
    let Some(prefix) = usize::try_from(covered).ok().and_then(|n| events.get(..n)) else {
        problems.push(problem(format!(
            "checkpoint covers {covered} events but the log holds {}",
            events.len()
        )));
        return Ok(());
    };
    let agrees = ReplayState::from_events(prefix)
        .is_ok_and(|fold| format!("{fold:?}") == format!("{state:?}"));
    if !agrees {
        problems.push(problem(format!(
            "checkpoint disagrees with the fold of the log's first {covered} events"
        )));
    }
    Ok(())
}

fn verify_indexes(db: &Database, summary: &mut Summary) -> anyhow::Result<()> {
    let index = |reason: String| Problem {
        subject: Subject::Index,
        reason,
    };
    for item in db.scan_prefix(&[keys::STATUS]) {
        let (key, _) = item?;
        summary.index_entries += 1;
        let Some((code, run)) = keys::parse_status(&key) else {
            summary.problems.push(index(format!(
                "malformed status key {}",
                crate::db::hex_bytes(&key)
            )));
            continue;
        };
        let name =
            RunStatus::from_code(code).map_or_else(|| format!("code {code}"), |s| s.to_string());
        match db.meta(run)? {
            Ok(Some(meta)) if meta.status == code => {}
            Ok(Some(meta)) => {
                let actual = RunStatus::from_code(meta.status)
                    .map_or_else(|| format!("code {}", meta.status), |s| s.to_string());
                summary.problems.push(index(format!(
                    "status index lists run {run} as {name}, its metadata says {actual}"
                )));
            }
            Ok(None) => summary.problems.push(index(format!(
                "status index lists run {run} ({name}), which does not exist"
            ))),
            // Already reported with the run.
            Err(_) => {}
        }
    }
    for item in db.scan_prefix(&[keys::TIMER]) {
        let (key, _) = item?;
        summary.index_entries += 1;
        match keys::parse_timer(&key) {
            None => summary.problems.push(index(format!(
                "malformed timer key {}",
                crate::db::hex_bytes(&key)
            ))),
            // A due time left behind by an ended run is harmless (waking an ended run does
            // nothing); one for a run that does not exist means a purge went wrong.
            Some(timer) if matches!(db.meta(timer.run)?, Ok(None)) => {
                summary.problems.push(index(format!(
                    "due time {} (id {}) points at run {}, which does not exist",
                    annal::audit::utc(timer.fire_at_ms),
                    timer.id,
                    timer.run
                )))
            }
            Some(_) => {}
        }
    }
    for item in db.scan_prefix(&[keys::GATE]) {
        let (key, value) = item?;
        summary.index_entries += 1;
        let gate = crate::db::hex_bytes(key.get(1..).unwrap_or_default());
        match keys::parse_gate_value(&value) {
            None => summary
                .problems
                .push(index(format!("approval gate {gate}: malformed entry"))),
            Some((run, _)) if matches!(db.meta(run)?, Ok(None)) => summary.problems.push(index(
                format!("approval gate {gate} points at run {run}, which does not exist"),
            )),
            Some(_) => {}
        }
    }
    for item in db.scan_prefix(&[keys::DEDUPE]) {
        let (key, value) = item?;
        summary.index_entries += 1;
        let dedupe = String::from_utf8_lossy(key.get(1..).unwrap_or_default()).into_owned();
        match keys::parse_run_value(&value) {
            None => summary
                .problems
                .push(index(format!("dedupe key {dedupe:?}: malformed entry"))),
            Some(run) if matches!(db.meta(run)?, Ok(None)) => summary.problems.push(index(
                format!("dedupe key {dedupe:?} points at run {run}, which does not exist"),
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Prints the problems, one line each, then a summary line; the exit code is 1 if anything
/// is wrong.
pub fn print(summary: &Summary, out: &mut dyn Write) -> anyhow::Result<u8> {
    for problem in &summary.problems {
        writeln!(out, "{problem}")?;
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
                Subject::Index => None,
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
