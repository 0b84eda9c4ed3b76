//! `annal`: the auditor's and operator's view of an annal database.
//!
//! It opens the engine's sled directory directly (`--db`), so it works on a database no
//! process holds (a stopped service, or a copy), or a PostgreSQL database (`--pg URL`)
//! while services run on it: decisions and operator actions on a run a service executes
//! are forwarded to that service. Everything it shows is computed from the stored events by
//! the engine's pure audit functions (`annal::audit`); `db/` hides where they are stored.
//!
//! Tamper evidence (`tamper.rs`): `keygen` makes the key checkpoints are signed with,
//! `digest` signs and stores a checkpoint of every run's head, `verify` checks every hash
//! chain and (with `--against`) that the history extends a checkpoint, `prove` prints an
//! inclusion proof, `check-proof` checks one with the public key alone.
//!
//! With `--url URL --token-file FILE` the commands `runs`, `history`, `report`, `approvals`,
//! `approve`, `reject` and `operate` talk to a running service through its admin API
//! (`remote.rs`) instead; the token says who decides, under which roles.
//!
//! Exit codes: 0 success; 1 a problem was found (verify), the input named nothing (unknown
//! run or gate, no such schema) or an error occurred; 2 the database is locked by another
//! process (sled), cannot be reached or refused the login (PostgreSQL), or the command line
//! was malformed.

mod approvals;
mod commands;
mod db;
mod operate;
mod remote;
mod tamper;
mod verify;
mod when;

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use annal_core::status::RunStatus;
use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::db::{Access, Database, Target};
use crate::when::When;

/// Inspect, verify and maintain an annal database.
///
/// A sled directory (--db) must be free: stop the service that embeds it, or point at a
/// copy. A PostgreSQL database (--pg) can be used while services run on it: reads see a
/// consistent view of each run, and a decision or operator action on a run a service
/// executes is carried out by that service.
///
/// Exit codes: 0 success; 1 a problem was found (verify), nothing matched (run, gate,
/// schema) or the command failed; 2 the database is locked (sled), cannot be reached or
/// refused the login (PostgreSQL), or the command line is malformed.
#[derive(Debug, Parser)]
#[command(name = "annal", version, about, long_about)]
struct Cli {
    /// The database directory (the engine's `path`). sled lets one process open it: it must
    /// not be in use by a running service.
    #[arg(long, global = true, default_value = "annal-data", value_name = "PATH")]
    db: PathBuf,

    /// Use the PostgreSQL database at this URL (postgresql://user@host:port/db) instead of
    /// a directory. Works while services run on it. A password in the URL is never printed.
    #[arg(long, global = true, value_name = "URL", conflicts_with_all = ["db", "url"])]
    pg: Option<String>,

    /// The schema annal's tables live in (with --pg; the services' `PgConfig::schema`).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        default_value = "annal",
        requires = "pg"
    )]
    pg_schema: String,

    /// Talk to a running service's admin API at this URL instead of a database directory
    /// (e.g. http://127.0.0.1:8417).
    #[arg(long, global = true, value_name = "URL", requires = "token_file")]
    url: Option<String>,

    /// The file holding your admin API token (with --url).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,

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
    /// history replays without contradiction. On PostgreSQL it runs while services write:
    /// each run a problem names is checked again until it holds still, and only what that
    /// check finds is reported.
    ///
    /// Checks every run's hash chain (a record altered, replaced or reordered breaks the
    /// link of the next one; the earlier record of the two is named) and the latest stored
    /// tree head: its leaf list must hash to its root, its signature must verify (with
    /// --public-key), and every run it committed to must still extend it. With --against,
    /// the same for an auditor's checkpoint: a dropped run, a truncated tail or an altered
    /// record is named with run and seq.
    Verify {
        /// Only this run (id or unique prefix); default: the whole database.
        run: Option<String>,
        /// A checkpoint kept outside the database (what `annal digest` printed): prove that
        /// the history as it is now extends it.
        #[arg(long, value_name = "CHECKPOINT", requires = "public_key")]
        against: Option<PathBuf>,
        /// The public key checkpoints are signed with (`annal keygen`'s FILE.pub).
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Make a key to sign checkpoints with: the private key to FILE (mode 600), the public
    /// key to FILE.pub and standard output.
    Keygen {
        /// Where the private key goes (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The key's name, also the checkpoints' origin: a URL without scheme is
        /// recommended (example.com/annal). No spaces or '+'.
        #[arg(long, value_name = "NAME", default_value = "annal")]
        name: String,
    },
    /// Compute every run's head, sign a checkpoint of them, store it with its leaf list and
    /// print it: keep the printed checkpoint outside the database.
    Digest {
        /// The private key file (`annal keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The checkpoint's origin line (default: the key's name).
        #[arg(long, value_name = "NAME")]
        origin: Option<String>,
    },
    /// Print an inclusion proof that a checkpoint committed to a run's events: anyone with
    /// the public key checks it with `annal check-proof`, without the database.
    Prove {
        /// The run id (or a unique prefix).
        run: String,
        /// The checkpoint (what `annal digest` printed).
        #[arg(long, value_name = "CHECKPOINT")]
        against: PathBuf,
        /// Check the checkpoint's signature first with this public key.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Check an inclusion proof with the public key alone (no database): prints the run,
    /// its event count and head, or why the proof is refused (exit 1).
    CheckProof {
        /// The proof (what `annal prove` printed).
        proof: PathBuf,
        /// The public key the checkpoint is signed with.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
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
        /// Who decides (required on a database; with --url the token says, and --by must
        /// match it).
        #[arg(long, value_name = "ACTOR")]
        by: Option<String>,
        /// A role of the actor (repeat for several), matched against `role:NAME` approvers
        /// (on a database; with --url the server knows the token's roles).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Edits of the fields the gate declared editable, as a JSON object.
        #[arg(long, value_name = "JSON")]
        edits: Option<String>,
    },
    /// Reject a gate.
    Reject {
        /// The gate id (or a unique prefix).
        gate: String,
        /// Who decides (required on a database; with --url the token says).
        #[arg(long, value_name = "ACTOR")]
        by: Option<String>,
        /// A role of the actor (repeat for several), matched against `role:NAME` approvers.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Act on an escalated run: retry, skip with a value, resolve, abort.
    Operate {
        /// The run id (or a unique prefix).
        run: String,
        #[command(subcommand)]
        operation: Operation,
    },
    /// Admin server helpers: tokens for its configuration file.
    #[command(subcommand)]
    Admin(AdminCommand),
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

/// Who acts and why, for every operator action.
#[derive(Debug, Clone, Args)]
pub struct Why {
    /// Who acts (required on a database; with --url the token says, and --by must match it).
    #[arg(long, value_name = "ACTOR")]
    pub by: Option<String>,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
}

/// What an operator does to an escalated run.
#[derive(Debug, Clone, Subcommand)]
pub enum Operation {
    /// Run the failed step again with fresh attempts (or reopen an expired approval).
    Retry(#[command(flatten)] Why),
    /// Treat the step as done with this output.
    Skip {
        /// The step's output, as JSON.
        #[arg(long, value_name = "JSON")]
        value: String,
        /// Who acts and why.
        #[command(flatten)]
        why: Why,
    },
    /// Say what became of an irreversible effect whose outcome was unknown.
    #[command(subcommand)]
    Resolve(Resolution),
    /// End the run as failed.
    Abort(#[command(flatten)] Why),
}

/// The outcome of an unknown irreversible effect.
#[derive(Debug, Clone, Subcommand)]
pub enum Resolution {
    /// It happened; this is its output.
    Done {
        /// The effect's output, as JSON.
        #[arg(long, value_name = "JSON")]
        output: String,
        /// Who acts and why.
        #[command(flatten)]
        why: Why,
    },
    /// It did not happen: run it again.
    NotDone(#[command(flatten)] Why),
}

impl Operation {
    /// The API's name for it, its value, and who and why.
    pub fn wire(&self) -> anyhow::Result<(&'static str, Option<serde_json::Value>, &Why)> {
        let json = |what: &str, text: &str| -> anyhow::Result<serde_json::Value> {
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--{what} is not JSON: {e}"))
        };
        Ok(match self {
            Operation::Retry(why) => ("retry", None, why),
            Operation::Skip { value, why } => ("skip", Some(json("value", value)?), why),
            Operation::Resolve(Resolution::Done { output, why }) => {
                ("resolve-done", Some(json("output", output)?), why)
            }
            Operation::Resolve(Resolution::NotDone(why)) => ("resolve-not-done", None, why),
            Operation::Abort(why) => ("abort", None, why),
        })
    }
}

/// `annal admin …`.
#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Make a new random token: writes it to FILE (mode 600) and prints the line for the
    /// admin configuration (`token_blake3 = "…"`).
    NewToken {
        /// Where the token goes (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the `token_blake3` hash of the token in FILE (or on standard input).
    HashToken {
        /// The file holding the token; default: read standard input.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
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
    if let Command::Admin(admin) = &cli.command {
        return admin_command(admin);
    }
    // Commands that need no database.
    match &cli.command {
        Command::Keygen { out, name } => {
            return tamper::keygen(out, name, &mut std::io::stdout().lock());
        }
        Command::CheckProof { proof, public_key } => {
            return tamper::check_proof(proof, public_key, &mut std::io::stdout().lock());
        }
        _ => {}
    }
    if let Some(url) = &cli.url {
        let token_file = cli
            .token_file
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--url needs --token-file"))?;
        return run_remote(url, token_file, cli.command);
    }
    let access = match cli.command {
        Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Operate { .. }
        | Command::Purge { dry_run: false, .. }
        | Command::Digest { .. } => Access::Write,
        _ => Access::Read,
    };
    let target = match &cli.pg {
        Some(url) => Target::Pg {
            url,
            schema: &cli.pg_schema,
        },
        None => Target::Sled(&cli.db),
    };
    let db = Database::open(target, access)?;
    let runtime = db.runtime();
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
        Command::Verify {
            run,
            against,
            public_key,
        } => {
            let run = run.map(|r| db.resolve(&r)).transpose()?;
            let against = verify::Against {
                key: public_key
                    .as_deref()
                    .map(tamper::verifier_key)
                    .transpose()?,
                checkpoint: against.as_deref().map(tamper::checkpoint).transpose()?,
            };
            let summary = verify::verify(&db, run, against)?;
            verify::print(&summary, &mut out)?
        }
        Command::Digest { key, origin } => tamper::digest(&db, &key, origin.as_deref(), &mut out)?,
        Command::Prove {
            run,
            against,
            public_key,
        } => {
            let run = match db.resolve(&run) {
                Ok(run) => run,
                // A run the store no longer has can still be in the checkpoint.
                Err(e) => full_run_id(&run).ok_or(e)?,
            };
            tamper::prove(&db, run, &against, public_key.as_deref(), &mut out)?
        }
        Command::Keygen { .. } | Command::CheckProof { .. } => {
            unreachable!("handled before the database is opened")
        }
        Command::Report { since, json } => commands::report(&db, since, json, &mut out)?,
        Command::Export { run, all: _ } => commands::export(&db, run.as_deref(), &mut out)?,
        Command::Approvals => approvals::list(&db, &mut out)?,
        Command::Approve {
            gate,
            by,
            roles,
            reason,
            edits,
        } => {
            let edits = edits.as_deref().map(parse_edits).transpose()?;
            approvals::decide(
                &db,
                runtime,
                &gate,
                approvals::Verdict::Approve { edits },
                &required_by(by)?,
                &roles,
                &reason,
                &mut out,
            )?
        }
        Command::Reject {
            gate,
            by,
            roles,
            reason,
        } => approvals::decide(
            &db,
            runtime,
            &gate,
            approvals::Verdict::Reject,
            &required_by(by)?,
            &roles,
            &reason,
            &mut out,
        )?,
        Command::Operate { run, operation } => {
            operate::operate(&db, runtime, &run, &operation, &mut out)?
        }
        Command::Admin(_) => unreachable!("handled before the database is opened"),
        Command::Purge {
            older_than,
            dry_run,
        } => commands::purge(&db, older_than, dry_run, &mut out)?,
    };
    out.flush()?;
    Ok(code)
}

fn required_by(by: Option<String>) -> anyhow::Result<String> {
    by.ok_or_else(|| {
        anyhow::anyhow!(
            "--by ACTOR is required on a database (with --url the token says who decides)"
        )
    })
}

/// A whole run id (32 hex digits, dashes ignored), for a run the store may no longer have.
fn full_run_id(text: &str) -> Option<annal::RunId> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(annal::RunId(id))
}

fn parse_edits(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--edits is not JSON: {e}"))
}

/// The commands that work against a running service.
fn run_remote(url: &str, token_file: &std::path::Path, command: Command) -> anyhow::Result<u8> {
    let remote = remote::Remote::new(url, token_file)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let code = match command {
        Command::Runs {
            status,
            workflow,
            since,
        } => remote.runs(
            &commands::RunFilter {
                status,
                workflow,
                since,
            },
            &mut out,
        )?,
        Command::History { run, json } => remote.history(&run, json, &mut out)?,
        Command::Report { since, json } => remote.report(since, json, &mut out)?,
        Command::Approvals => remote.approvals(&mut out)?,
        Command::Approve {
            gate,
            by,
            reason,
            edits,
            roles: _,
        } => {
            let edits = edits.as_deref().map(parse_edits).transpose()?;
            remote.decide(&gate, true, by.as_deref(), &reason, edits, &mut out)?
        }
        Command::Reject {
            gate, by, reason, ..
        } => remote.decide(&gate, false, by.as_deref(), &reason, None, &mut out)?,
        Command::Operate { run, operation } => remote.operate(&run, &operation, &mut out)?,
        Command::Verify { .. }
        | Command::Export { .. }
        | Command::Purge { .. }
        | Command::Digest { .. }
        | Command::Prove { .. } => {
            anyhow::bail!("this command works on a database directory (--db) or a PostgreSQL database (--pg), not with --url")
        }
        Command::Admin(_) | Command::Keygen { .. } | Command::CheckProof { .. } => {
            unreachable!("handled before")
        }
    };
    out.flush()?;
    Ok(code)
}

/// `annal admin new-token` / `hash-token`.
fn admin_command(command: &AdminCommand) -> anyhow::Result<u8> {
    match command {
        AdminCommand::NewToken { out } => {
            let token = annal_admin::new_token()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(out)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
            writeln!(file, "{token}")?;
            println!("token_blake3 = \"{}\"", annal_admin::hash_token(&token)?);
            eprintln!(
                "the token is in {}; hand it to its owner, keep only the hash in the config",
                out.display()
            );
        }
        AdminCommand::HashToken { token_file } => {
            let token = match token_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                None => std::io::read_to_string(std::io::stdin())?,
            };
            println!("token_blake3 = \"{}\"", annal_admin::hash_token(&token)?);
        }
    }
    Ok(0)
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
    if e.chain().any(|cause| cause.is::<db::Unreachable>()) {
        eprintln!("error: {e:#}");
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
