//! `annal approvals`, `annal approve`, `annal reject`: the approval gates of a database.
//!
//! Gates are found through the `A` index (gate -> run, step). What a gate asks and how it
//! was decided comes from the run's history, through the audit record.
//!
//! Decisions are recorded through an operator-only `annal::Engine` (no workflow code, no
//! recovery): the same checks and the same event as `Engine::decide` in the service.

use std::io::Write;

use annal_storage::{GateId, RunId};
use anyhow::bail;

use crate::commands::write_table;
use crate::db::{Database, GateEntry};

/// What an operator decides about a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead, with edits of the gate's editable fields.
    Approve {
        /// The edits (a JSON object), if any.
        edits: Option<serde_json::Value>,
    },
    /// Do not.
    Reject,
}

/// Printed when the gate index is empty.
const NO_GATES: &str = "no approval gates in this database";

/// `annal approvals`: one line per gate.
pub fn list(db: &Database, out: &mut dyn Write) -> anyhow::Result<u8> {
    let gates = db.gates()?;
    if gates.is_empty() {
        writeln!(out, "{NO_GATES}")?;
        return Ok(0);
    }
    let mut rows = vec![[
        "GATE", "RUN", "STEP", "WORKFLOW", "STATUS", "ACTION", "DECISION",
    ]
    .map(String::from)];
    for GateEntry { gate, target } in gates {
        let Some((run, position)) = target else {
            rows.push([
                gate.to_string(),
                "?".into(),
                "?".into(),
                "".into(),
                "malformed index entry".into(),
                "".into(),
                "".into(),
            ]);
            continue;
        };
        let record = db.load(run)?.record();
        // The latest round: an operator may have reopened an expired gate.
        let approval = record
            .approvals
            .iter()
            .rev()
            .find(|a| a.gate == gate.to_string());
        rows.push([
            gate.to_string(),
            run.to_string(),
            position.to_string(),
            format!("{} v{}", record.workflow, record.version),
            record.status.to_string(),
            approval.and_then(|a| a.action.clone()).unwrap_or_default(),
            approval
                .and_then(|a| a.decision.clone())
                .unwrap_or_else(|| "pending".into()),
        ]);
    }
    write_table(out, &rows)?;
    Ok(0)
}

/// `annal approve` / `annal reject`. Exit code 1, with nothing written, when the database
/// has no such gate.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    db: &Database,
    runtime: &tokio::runtime::Runtime,
    gate: &str,
    verdict: Verdict,
    actor: &str,
    roles: &[String],
    reason: &str,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let known = db.gates()?;
    if known.is_empty() {
        eprintln!("{NO_GATES}; nothing to {}", verb(&verdict));
        return Ok(1);
    }
    let wanted: String = gate
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let matches: Vec<GateId> = known
        .iter()
        .map(|entry| entry.gate)
        .filter(|g| !wanted.is_empty() && crate::db::hex_bytes(&g.0).starts_with(&wanted))
        .collect();
    let gate_id = match matches.as_slice() {
        [one] => *one,
        [] => {
            eprintln!("unknown approval gate '{gate}'; `annal approvals` lists the gates");
            return Ok(1);
        }
        _ => {
            eprintln!(
                "'{gate}' matches {} approval gates; give more digits",
                matches.len()
            );
            return Ok(1);
        }
    };
    let Some((run, position)) = db.gate(gate_id)? else {
        eprintln!("unknown approval gate '{gate}'");
        return Ok(1);
    };
    // A gate that history shows closed needs no engine to refuse: the first decision wins.
    let record = db.load(run)?.record();
    let round = record
        .approvals
        .iter()
        .rev()
        .find(|a| a.gate == gate_id.to_string());
    if let Some(decided) = round.and_then(|a| a.decision.as_ref().map(|d| (a, d))) {
        let (approval, decision) = decided;
        let by = approval
            .actor
            .as_deref()
            .map_or_else(String::new, |actor| format!(" by {actor}"));
        let when = approval
            .decided_ms
            .map_or_else(String::new, |ms| format!(" at {}", annal::audit::utc(ms)));
        eprintln!(
            "gate {gate_id} (run {run}) was already {decision}{by}{when}; nothing was written"
        );
        return Ok(1);
    }
    let _ = position;
    let message = decide_in_store(db, runtime, gate_id, run, verdict, actor, roles, reason)?;
    writeln!(out, "{message}")?;
    Ok(0)
}

fn verb(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Approve { .. } => "approve",
        Verdict::Reject => "reject",
    }
}

/// Records the decision through an operator-only engine: it checks the gate (still open,
/// deadline not passed, actor allowed, a reason to reject, edits only where declared) under
/// the run's writer lock, appends the decision with the role it was taken under durably and
/// marks the run `Running`, so the service resumes it when it next opens the database. On
/// PostgreSQL, a run a live worker executes gets the decision from that worker (forwarded,
/// same checks), which resumes it at once. Refusals write nothing.
#[allow(clippy::too_many_arguments)]
fn decide_in_store(
    db: &Database,
    runtime: &tokio::runtime::Runtime,
    gate: GateId,
    run: RunId,
    verdict: Verdict,
    actor: &str,
    roles: &[String],
    reason: &str,
) -> anyhow::Result<String> {
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let actor = annal::Actor::new(actor, &roles);
    let verb = verb(&verdict);
    let request = match verdict {
        Verdict::Approve { edits: None } => annal::DecideRequest::approve(reason),
        Verdict::Approve { edits: Some(edits) } => {
            annal::DecideRequest::approve(reason).with_edits(edits)
        }
        Verdict::Reject => annal::DecideRequest::reject(reason),
    };
    let decided = runtime.block_on(async {
        let engine = db.operator_engine().await?;
        let result = db
            .acting(run, engine.decide_bound(gate, &actor, &request))
            .await;
        engine.shutdown().await;
        drop(engine);
        result
    });
    match decided {
        Ok(decided) => Ok(format!(
            "gate {gate} (run {run}): {verb}d by {} as {} ({reason}); the service resumes the run {}",
            decided.actor,
            decided.role,
            db.resumes()
        )),
        Err(e) => match db.unconfirmed(&format!("cannot {verb} gate {gate} (run {run})"), run, &e) {
            Some(unknown) => Err(unknown),
            None => bail!("cannot {verb} gate {gate} (run {run}): {e}; nothing was written"),
        },
    }
}
