//! `annal`: the auditor's and operator's view of an annal database.
//!
//! It opens the engine's sled directory directly, so it works on a database no process holds
//! (a stopped service, or a copy). Everything it shows is computed from the stored events by
//! the engine's pure audit functions (`annal::audit`).
//!
//! Exit codes: 0 success; 1 a problem was found (verify), the input named nothing (unknown
//! run or gate) or an error occurred; 2 the database is locked by another process (or the
//! command line was malformed).

mod approvals;
mod commands;
mod db;
mod verify;
mod when;

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use annal::RunStatus;
use clap::{ArgGroup, Parser, Subcommand};

use crate::db::{Access, Database};
use crate::when::When;

/// Inspect, verify and maintain an annal database.
#[derive(Debug, Parser)]
#[command(name = "annal", version, about)]
struct Cli {
    /// The database directory (the engine's `path`).
    #[arg(long, global = true, default_value = "annal-data", value_name = "PATH")]
    db: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List runs, oldest first.
    Runs {
        /// Only runs in this status (running, parked, blocked, escalated, completed, failed,
        /// cancelled, terminated, continued-as-new).
        #[arg(long, value_parser = parse_status)]
        status: Option<RunStatus>,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs created since: a duration back from now (24h, 7d) or a date (2024-05-01).
        #[arg(long, value_parser = when::parse_when)]
        since: Option<When>,
    },
    /// Show a run: its record (status, steps, escalations, approvals) and its timeline.
    History {
        /// The run id, or a unique prefix of it.
        run: String,
        /// Print the record and the events as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the stored data; exits 1 and names run, seq and reason for each problem.
    ///
    /// Checks every record's CRC, seq continuity, metadata and indexes, and that each
    /// history replays without contradiction.
    Verify {
        /// Only this run (id or unique prefix); default: the whole database.
        run: Option<String>,
    },
    /// Per-tool metrics over the runs.
    ///
    /// Retry share, failures by class, budget exhaustion, breaker refusals, success and
    /// escalation rates, cost per successful outcome, approval latency.
    Report {
        /// Only runs created since: a duration back from now (24h, 7d) or a date.
        #[arg(long, value_parser = when::parse_when)]
        since: Option<When>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write histories as JSON Lines: one event per line, with its run id.
    #[command(group(ArgGroup::new("which").required(true).args(["run", "all"])))]
    Export {
        /// The run id, or a unique prefix of it.
        run: Option<String>,
        /// Every run.
        #[arg(long)]
        all: bool,
    },
    /// List approval gates.
    Approvals,
    /// Approve a gate.
    Approve {
        /// The gate id (or a unique prefix).
        gate: String,
        /// Who decides.
        #[arg(long, value_name = "ACTOR")]
        by: String,
        /// A role of the actor (repeat for several), matched against `role:NAME` approvers.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Reject a gate.
    Reject {
        /// The gate id (or a unique prefix).
        gate: String,
        /// Who decides.
        #[arg(long, value_name = "ACTOR")]
        by: String,
        /// A role of the actor (repeat for several), matched against `role:NAME` approvers.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Delete ended runs older than a retention period.
    ///
    /// Ended: completed, failed, cancelled, terminated or continued-as-new, and last updated
    /// longer ago than the period. Each run's events, metadata and index entries go in one
    /// atomic batch.
    Purge {
        /// The retention period: 30d, 12w, 48h.
        #[arg(long, value_parser = when::parse_duration_ms, value_name = "DURATION")]
        older_than: u64,
        /// Only list what would be purged.
        #[arg(long)]
        dry_run: bool,
    },
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    RunStatus::parse(s).ok_or_else(|| {
        let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.name()).collect();
        format!("unknown status '{s}'; one of: {}", names.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(report_error(&e)),
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let access = match cli.command {
        Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Purge { dry_run: false, .. } => Access::Write,
        _ => Access::Read,
    };
    let db = Database::open(&cli.db, access)?;
    // The store's API is async; one thread is plenty for a command-line tool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let code = match cli.command {
        Command::Runs {
            status,
            workflow,
            since,
        } => commands::runs(
            &db,
            &commands::RunFilter {
                status,
                workflow,
                since,
            },
            &mut out,
        )?,
        Command::History { run, json } => commands::history(&db, &run, json, &mut out)?,
        Command::Verify { run } => {
            let run = run.map(|r| db.resolve(&r)).transpose()?;
            let summary = verify::verify(&db, run)?;
            verify::print(&summary, &mut out)?
        }
        Command::Report { since, json } => commands::report(&db, since, json, &mut out)?,
        Command::Export { run, all: _ } => commands::export(&db, run.as_deref(), &mut out)?,
        Command::Approvals => approvals::list(&db, &mut out)?,
        Command::Approve {
            gate,
            by,
            roles,
            reason,
        } => approvals::decide(
            &db,
            &runtime,
            &gate,
            approvals::Verdict::Approve,
            &by,
            &roles,
            &reason,
            &mut out,
        )?,
        Command::Reject {
            gate,
            by,
            roles,
            reason,
        } => approvals::decide(
            &db,
            &runtime,
            &gate,
            approvals::Verdict::Reject,
            &by,
            &roles,
            &reason,
            &mut out,
        )?,
        Command::Purge {
            older_than,
            dry_run,
        } => commands::purge(&db, &runtime, older_than, dry_run, &mut out)?,
    };
    out.flush()?;
    Ok(code)
}

/// Prints an error for a person and picks the exit code.
fn report_error(e: &anyhow::Error) -> u8 {
    if let Some(annal_storage::Error::Locked { path }) = e.downcast_ref::<annal_storage::Error>() {
        let path = path.display();
        eprintln!("error: the database at {path} is locked by another process.");
        eprintln!("sled lets one process open a database at a time; most likely the service that embeds annal is running.");
        eprintln!("Either stop that service and run the command again, or copy the directory and point --db at the copy:");
        eprintln!("    cp -r {path} /tmp/annal-copy && annal --db /tmp/annal-copy <command>");
        eprintln!("(A copy taken while the service writes is like a crash image: sled recovers it; the newest writes may be missing.)");
        return 2;
    }
    // `annal export --all | head` closes the pipe early: not an error.
    if e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return 0;
    }
    eprintln!("error: {e:#}");
    1
}
