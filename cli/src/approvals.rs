//! `annal approvals`, `annal approve`, `annal reject`: the approval gates of a database.
//!
//! Gates are found through the `A` index (gate -> run, step). What a gate asks and how it
//! was decided comes from the run's history, through the audit record.
//!
//! Recording a decision is not done here yet: see [`decide_in_store`], the seam where the
//! engine's decide API plugs in.

use std::io::Write;

use annal_storage::{keys, GateId, LogStore as _, RunId};
use anyhow::bail;

use crate::commands::write_table;
use crate::db::Database;

/// What an operator decides about a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Approve,
    /// Do not.
    Reject,
}

/// Printed when the gate index is empty.
const NO_GATES: &str = "no approval gates in this database";

/// One entry of the gate index.
struct GateEntry {
    gate: GateId,
    /// The run and command position it belongs to; `None` if the entry is malformed.
    target: Option<(RunId, u32)>,
}

/// Every gate of the index, in gate id order.
fn gates(db: &Database) -> anyhow::Result<Vec<GateEntry>> {
    let mut gates = Vec::new();
    for item in db.scan_prefix(&[keys::GATE]) {
        let (key, value) = item?;
        let Some(id) = key.get(1..).and_then(|id| <[u8; 16]>::try_from(id).ok()) else {
            continue;
        };
        gates.push(GateEntry {
            gate: GateId(id),
            target: keys::parse_gate_value(&value),
        });
    }
    Ok(gates)
}

/// `annal approvals`: one line per gate.
pub fn list(db: &Database, out: &mut dyn Write) -> anyhow::Result<u8> {
    let gates = gates(db)?;
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
pub fn decide(
    db: &Database,
    runtime: &tokio::runtime::Runtime,
    gate: &str,
    verdict: Verdict,
    actor: &str,
    reason: &str,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let known = gates(db)?;
    if known.is_empty() {
        eprintln!("{NO_GATES}; nothing to {}", verb(verdict));
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
    let Some((run, position)) = runtime.block_on(db.store().gate(gate_id))? else {
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
    let message = decide_in_store(db, gate_id, run, position, verdict, actor, reason)?;
    writeln!(out, "{message}")?;
    Ok(0)
}

fn verb(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approve => "approve",
        Verdict::Reject => "reject",
    }
}

/// SEAM: where the engine's decide API plugs in.
///
/// The CLI opens the database directly, without the service's workflow code, so it cannot
/// open an `Engine` (recovery would replay runs whose workflows it does not have). It needs
/// an engine function that records a decision against the store alone, e.g.
/// `annal::approval::decide_in_store(store, gate, actor, verdict, reason, now_ms)`, which
/// checks the gate is still open and the actor allowed, appends `ApprovalDecided` at the
/// run's expected seq, removes the gate's deadline and marks the run runnable, so the
/// service resumes it the next time it opens the database. Until then this refuses, and
/// writes nothing.
fn decide_in_store(
    db: &Database,
    gate: GateId,
    run: RunId,
    position: u32,
    verdict: Verdict,
    actor: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let _ = (db, actor, reason);
    bail!(
        "cannot {} gate {gate} (run {run}, step {position}) from the CLI yet: this annal build has no \
         store-level decide API; nothing was written. Decide it through the service that runs the workflow \
         (Engine::decide).",
        verb(verdict)
    )
}
