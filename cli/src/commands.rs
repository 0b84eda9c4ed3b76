//! `runs`, `history`, `report`, `export` and `purge`: reading (and, for purge, deleting)
//! runs. Each writes its answer to `out` and returns the process exit code.

use std::io::Write;

use annal_core::audit::{timeline, utc, Report};
use annal_core::{event::Event, status::RunStatus};
use annal_storage::RunId;
use serde::Serialize;

use crate::db::Database;
use crate::when::{now_ms, When};

/// Filters of `annal runs`.
#[derive(Debug, Default)]
pub struct RunFilter {
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs created at or after this time.
    pub since: Option<When>,
}

/// `annal runs`: one line per run, oldest first.
pub fn runs(db: &Database, filter: &RunFilter, out: &mut dyn Write) -> anyhow::Result<u8> {
    let since_ms = filter.since.map(|w| w.resolve(now_ms()));
    let mut rows: Vec<(u64, RunId, [String; 7])> = Vec::new();
    let mut unreadable = 0;
    for (run, meta) in db.metas()? {
        let meta = match meta {
            Ok(Some(meta)) => meta,
            // Without metadata there is no status or workflow to filter or show.
            Ok(None) | Err(_) => {
                unreadable += 1;
                continue;
            }
        };
        let status = RunStatus::from_code(meta.status);
        if filter.status.is_some_and(|s| Some(s) != status)
            || filter
                .workflow
                .as_ref()
                .is_some_and(|w| *w != meta.workflow)
            || since_ms.is_some_and(|since| meta.created_ms < since)
        {
            continue;
        }
        let status = status.map_or_else(|| format!("code {}", meta.status), |s| s.to_string());
        let row = RunRow {
            run: run.to_string(),
            workflow: &meta.workflow,
            version: meta.version,
            status,
            events: meta.next_seq,
            created_ms: meta.created_ms,
            updated_ms: meta.updated_ms,
            note: &meta.note,
        };
        rows.push((meta.created_ms, run, row.cells()));
    }
    rows.sort_by_key(|row| (row.0, row.1));
    if rows.is_empty() {
        let filtered =
            filter.status.is_some() || filter.workflow.is_some() || filter.since.is_some();
        writeln!(
            out,
            "{}",
            if filtered {
                "no runs match"
            } else {
                "no runs in this database"
            }
        )?;
    } else {
        let table: Vec<[String; 7]> = std::iter::once(RunRow::header())
            .chain(rows.into_iter().map(|(_, _, row)| row))
            .collect();
        write_table(out, &table)?;
    }
    if unreadable > 0 {
        eprintln!("warning: {unreadable} runs have missing or corrupt metadata and are not listed; run `annal verify`");
    }
    Ok(0)
}

/// One line of `annal runs`, local or remote.
pub struct RunRow<'a> {
    /// Run id.
    pub run: String,
    /// Workflow name.
    pub workflow: &'a str,
    /// Pinned version.
    pub version: u32,
    /// Status, as shown.
    pub status: String,
    /// Events in its history.
    pub events: u64,
    /// Created at.
    pub created_ms: u64,
    /// Last status change.
    pub updated_ms: u64,
    /// Why it is in its status.
    pub note: &'a str,
}

impl RunRow<'_> {
    /// The table's header.
    pub fn header() -> [String; 7] {
        [
            "RUN",
            "WORKFLOW",
            "STATUS",
            "EVENTS",
            "CREATED",
            "STATUS SINCE",
            "NOTE",
        ]
        .map(String::from)
    }

    /// The row's cells.
    pub fn cells(self) -> [String; 7] {
        [
            self.run,
            format!("{} v{}", self.workflow, self.version),
            self.status,
            self.events.to_string(),
            utc(self.created_ms),
            utc(self.updated_ms),
            self.note.replace('\n', " "),
        ]
    }
}

/// What `annal history --json` prints.
#[derive(Serialize)]
struct HistoryJson<'a> {
    record: annal_core::audit::RunRecord,
    events: &'a [Event],
    problems: Vec<String>,
}

/// `annal history RUN`: the run record, then the timeline. Exit code 1 if the history is
/// damaged (what is readable is still shown).
pub fn history(db: &Database, run: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
    let run = db.resolve(run)?;
    let loaded = db.load(run)?;
    let problems: Vec<String> = loaded.problems().map(ToString::to_string).collect();
    let record = loaded.record();
    if json {
        let doc = HistoryJson {
            record,
            events: &loaded.scan.events,
            problems: problems.clone(),
        };
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", record.render())?;
        writeln!(out, "\ntimeline")?;
        if loaded.scan.events.is_empty() {
            writeln!(out, "  no readable events")?;
        }
        write!(out, "{}", timeline(&loaded.scan.events))?;
        if !problems.is_empty() {
            writeln!(
                out,
                "\nproblems (the timeline stops at the first; see `annal verify`)"
            )?;
            for problem in &problems {
                writeln!(out, "  {problem}")?;
            }
        }
    }
    Ok(u8::from(!problems.is_empty()))
}

/// `annal report`: per-tool metrics over every run (created since `since`). Damaged runs
/// count with their intact part, and a warning says so.
pub fn report(
    db: &Database,
    since: Option<When>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let since_ms = since.map(|w| w.resolve(now_ms()));
    let mut records = Vec::new();
    for run in db.run_ids()? {
        let loaded = db.load(run)?;
        if since_ms.is_some_and(|since| loaded.created_ms().is_none_or(|created| created < since)) {
            continue;
        }
        if let Some(problem) = loaded.problems().next() {
            eprintln!("warning: {problem}; the report counts what is readable of this run (see `annal verify`)");
        }
        records.push(loaded.record());
    }
    let report = Report::from_records(&records);
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        if let Some(since) = since_ms {
            writeln!(out, "since        {}", utc(since))?;
        }
        write!(out, "{}", report.render())?;
    }
    Ok(0)
}

/// One line of `annal export`: an [`Event`] with its run id beside it, so that lines from
/// many runs stay apart. It still parses as an `annal::Event` (the extra field is ignored).
#[derive(Serialize)]
struct ExportLine<'a> {
    run: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// `annal export`: JSON Lines, one event per line, runs in id order. A damaged run is not
/// exported (a partial history would pass for a whole one) and makes the exit code 1.
pub fn export(db: &Database, run: Option<&str>, out: &mut dyn Write) -> anyhow::Result<u8> {
    let runs: Vec<RunId> = match run {
        Some(prefix) => vec![db.resolve(prefix)?],
        None => db.run_ids()?.into_iter().collect(),
    };
    let mut code = 0;
    for run in runs {
        let loaded = db.load(run)?;
        if let Some(problem) = loaded.scan.problems.first() {
            eprintln!("not exported: {problem} (see `annal verify`)");
            code = 1;
            continue;
        }
        for event in &loaded.scan.events {
            serde_json::to_writer(
                &mut *out,
                &ExportLine {
                    run: run.to_string(),
                    event,
                },
            )
            .map_err(|e| {
                anyhow::anyhow!("run {run} seq {}: cannot write as JSON: {e}", event.seq)
            })?;
            writeln!(out)?;
        }
    }
    Ok(code)
}

/// `annal purge`: deletes ended runs (completed, failed, cancelled, terminated, continued as
/// new) last updated before `now - older_than_ms`, each with its events and index entries
/// in one atomic batch.
pub fn purge(
    db: &Database,
    older_than_ms: u64,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let cutoff_ms = now_ms().saturating_sub(older_than_ms);
    let mut purged = 0u64;
    let mut events = 0u64;
    for (run, meta) in db.metas()? {
        let Ok(Some(meta)) = meta else {
            continue;
        };
        let Some(status) = RunStatus::from_code(meta.status).filter(|s| s.is_terminal()) else {
            continue;
        };
        if meta.updated_ms >= cutoff_ms {
            continue;
        }
        let what = format!(
            "run {run} ({} v{}, {status}, {} events, last updated {})",
            meta.workflow,
            meta.version,
            meta.next_seq,
            utc(meta.updated_ms)
        );
        if dry_run {
            writeln!(out, "would purge {what}")?;
        } else {
            db.purge(run)?;
            writeln!(out, "purged {what}")?;
        }
        purged += 1;
        events += meta.next_seq;
    }
    let verb = if dry_run { "would purge" } else { "purged" };
    writeln!(
        out,
        "{verb} {purged} runs ({events} events) that ended and were last updated before {}",
        utc(cutoff_ms)
    )?;
    Ok(0)
}

/// Left-aligned columns, two spaces apart; the first row is the header.
pub fn write_table<const N: usize>(
    out: &mut dyn Write,
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
