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

/// What the gate asks, from the latest request recorded for it (a reopened gate records
/// one request and several rounds: the request holds for all of them).
fn request_of(
    events: &[annal_core::event::Event],
    gate: GateId,
) -> Option<annal_core::approval::ApprovalRequest> {
    events
        .iter()
        .rev()
        .find_map(|e| match e.kind.approval_request() {
            Some((g, request, _)) if *g == gate.0 => Some(request.clone()),
            _ => None,
        })
}

/// Who may decide, as the gate lists it: `anyone` for an empty list.
fn approvers_text(approvers: &[String]) -> String {
    if approvers.is_empty() {
        "anyone".into()
    } else {
        approvers.join(",")
    }
}

/// The run's state as a reader of this database should understand it. On a directory the
/// CLI holds the database, so no service runs anything in it now: a `running` run (one a
/// decision or an operator action made runnable) waits for the service to open the database
/// again. On PostgreSQL services run while the CLI reads, and `running` is what it says.
fn true_state(db: &Database, status: annal_core::status::RunStatus) -> String {
    match status {
        annal_core::status::RunStatus::Running if !db.shared() => "waiting for the service".into(),
        other => other.to_string(),
    }
}

/// `annal approvals`: one line per gate, with what a reviewer decides on (risk, cost, who may
/// decide, deadline, how long it has waited) and where its run stands.
pub fn list(db: &Database, out: &mut dyn Write) -> anyhow::Result<u8> {
    let gates = db.gates()?;
    if gates.is_empty() {
        writeln!(out, "{NO_GATES}")?;
        return Ok(0);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut rows = vec![[
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
        "ACTION",
    ]
    .map(String::from)];
    let mut waiting_for_service = false;
    for GateEntry { gate, target } in gates {
        let Some((run, position)) = target else {
            let mut row: [String; 12] = Default::default();
            row[0] = gate.to_string();
            row[1] = "?".into();
            row[2] = "?".into();
            row[4] = "malformed index entry".into();
            rows.push(row);
            continue;
        };
        let loaded = db.load(run)?;
        let record = loaded.record();
        let request = request_of(&loaded.scan.events, gate);
        // The latest round: an operator may have reopened an expired gate.
        let approval = record
            .approvals
            .iter()
            .rev()
            .find(|a| a.gate == gate.to_string());
        let decision = match approval.and_then(|a| a.decision.as_ref().map(|d| (a, d))) {
            Some((a, d)) => {
                let mut text = d.clone();
                if let Some(actor) = &a.actor {
                    text.push_str(&format!(" by {actor}"));
                }
                if let Some(role) = &a.role {
                    text.push_str(&format!(" as {role}"));
                }
                text
            }
            None => "pending".into(),
        };
        let requested_ms = approval.map(|a| a.requested_ms);
        let deadline = match (request.as_ref().and_then(|r| r.deadline_ms), requested_ms) {
            (Some(d), Some(at)) => annal_core::audit::utc(at.saturating_add(d)),
            (Some(_), None) => "?".into(),
            (None, _) => "none".into(),
        };
        // Pending: how long it has waited; decided: how long the decision took.
        let age = match (approval, requested_ms) {
            (Some(a), _) if a.decided_ms.is_some() => a.latency_ms().map_or_else(
                || "-".into(),
                |ms| format!("decided after {}", annal_core::audit::duration_ms(ms)),
            ),
            (_, Some(at)) => annal_core::audit::duration_ms(now_ms.saturating_sub(at)),
            _ => "-".into(),
        };
        let status = true_state(db, record.status);
        waiting_for_service |= record.status == annal_core::status::RunStatus::Running;
        rows.push([
            gate.to_string(),
            run.to_string(),
            position.to_string(),
            format!("{} v{}", record.workflow, record.version),
            status,
            decision,
            request
                .as_ref()
                .map_or_else(|| "?".into(), |r| format!("{:?}", r.risk).to_lowercase()),
            request
                .as_ref()
                .and_then(|r| r.cost)
                .map_or_else(|| "-".into(), |c| c.to_string()),
            request
                .as_ref()
                .map_or_else(|| "?".into(), |r| approvers_text(&r.approvers)),
            deadline,
            age,
            approval.and_then(|a| a.action.clone()).unwrap_or_default(),
        ]);
    }
    write_table(out, &rows)?;
    if waiting_for_service {
        writeln!(
            out,
            "\nwaiting for the service: the run can go on (a decision or an operator action was recorded), but no process holds this database; the service resumes it when it next opens the database"
        )?;
    }
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
        let when = approval.decided_ms.map_or_else(String::new, |ms| {
            format!(" at {}", annal_core::audit::utc(ms))
        });
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
    let actor = annal_core::approval::Actor::new(actor, &roles);
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
        Ok(decided) => Ok(decided_message(
            gate,
            run,
            decided.approved,
            &decided.actor,
            &decided.role,
            reason,
            db.resumes(),
        )),
        Err(annal::Error::NotAllowed { actor, .. }) => {
            // Say what the gate requires, so the reviewer knows whom to ask.
            let approvers = db
                .load(run)
                .ok()
                .and_then(|loaded| request_of(&loaded.scan.events, gate))
                .map_or_else(|| "?".into(), |r| approvers_text(&r.approvers));
            let has = if roles.is_empty() {
                "no role given (--role)".to_string()
            } else {
                format!("roles {}", roles.join(","))
            };
            bail!(
                "cannot {verb} gate {gate} (run {run}): {actor} ({has}) may not decide it; it needs one of: {approvers}; nothing was written"
            )
        }
        Err(e) => {
            match db.unconfirmed(&format!("cannot {verb} gate {gate} (run {run})"), run, &e) {
                Some(unknown) => Err(unknown),
                None => bail!("cannot {verb} gate {gate} (run {run}): {e}; nothing was written"),
            }
        }
    }
}

/// What `approve` / `reject` print once the decision is recorded.
fn decided_message(
    gate: GateId,
    run: RunId,
    approved: bool,
    actor: &str,
    role: &str,
    reason: &str,
    resumes: &str,
) -> String {
    let verb = if approved { "approved" } else { "rejected" };
    format!(
        "gate {gate} (run {run}): {verb} by {actor} as {role} ({reason}); the service resumes the run {resumes}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_spelled_in_the_past_tense() {
        let (gate, run) = (GateId([1; 16]), RunId([2; 16]));
        let later = "when it next opens the database";
        let approved = decided_message(gate, run, true, "dana", "role:finance", "ok", later);
        let rejected = decided_message(gate, run, false, "lee", "named", "no", later);
        assert!(
            approved.contains(": approved by dana as role:finance (ok);"),
            "{approved}"
        );
        // It said "rejectd".
        assert!(
            rejected.contains(": rejected by lee as named (no);"),
            "{rejected}"
        );
    }
}
