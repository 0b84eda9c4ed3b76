//! [`timeline`]: a history as text, one line per event.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ids::{GateId, RunId};

use super::{
    duration_ms, exhaust_action, operator_action_label, quote, relative_ms, short, short_payload,
    PAYLOAD_CHARS_MAX,
};
use crate::event::{Event, EventKind, OperatorActionKind};
use crate::policy::FailureClass;

/// Renders a history as a timeline, one line per event:
///
/// ```text
///    +0.250s  #3    StepCompleted     [0] lookup_order attempt 2, cost 1 -> {"status":"paid"}
/// ```
///
/// time since the run's first event, seq, event kind, and what the event says: the step's
/// position and name, the attempt, the failure class, when the retry was due, the decision.
/// Payloads and messages are shortened to one line; recorded secrets show as `<redacted>`.
/// Event kinds this build does not know how to describe are shown from their JSON form.
pub fn timeline(events: &[Event]) -> String {
    let Some(first) = events.first() else {
        return String::new();
    };
    let start_ms = first.at_ms;
    let rel = |ms: u64| relative_ms(ms as i128 - start_ms as i128);
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = String::new();
    for event in events {
        if let EventKind::StepScheduled { position, name, .. }
        | EventKind::StepRan { position, name, .. } = &event.kind
        {
            names.insert(*position, name.clone());
        }
        let step = |position: &u32| match names.get(position) {
            Some(name) => format!("[{position}] {name}"),
            None => format!("[{position}]"),
        };
        let detail = match &event.kind {
            EventKind::RunStarted {
                workflow,
                version,
                input,
                dedupe_key,
                owner,
                continued_from,
                policy_version,
                ..
            } => {
                let mut s = format!("{workflow} v{version}");
                if let Some(owner) = owner {
                    let _ = write!(s, ", owner {owner}");
                }
                if let Some(policy) = policy_version {
                    let _ = write!(s, ", policy {policy}");
                }
                if let Some(key) = dedupe_key {
                    let _ = write!(s, ", dedupe {}", quote(key));
                }
                if let Some(from) = continued_from {
                    let _ = write!(s, ", continues {}", RunId(*from));
                }
                let _ = write!(s, ", input {}", short_payload(input));
                s
            }
            EventKind::StepScheduled {
                position,
                tool,
                class,
                ..
            } => format!("{}{} class={class:?}", step(position), tool_detail(tool)),
            EventKind::StepRan {
                position,
                tool,
                class,
                output,
                attempt,
                cost,
                ..
            } => {
                let mut s = format!(
                    "{}{} class={class:?} attempt {attempt}",
                    step(position),
                    tool_detail(tool)
                );
                if *cost > 0 {
                    let _ = write!(s, ", cost {cost}");
                }
                let _ = write!(s, " -> {}", short_payload(output));
                s
            }
            EventKind::AttemptStarted {
                position, attempt, ..
            } => format!("{} attempt {attempt}", step(position)),
            EventKind::AttemptFailed {
                position,
                attempt,
                class,
                message,
                retry_at_ms,
                ..
            } => {
                let decision = match retry_at_ms {
                    Some(at) => format!("retry at {}", rel(*at)),
                    None => "no retry".into(),
                };
                format!(
                    "{} attempt {attempt} {}: {} -> {decision}",
                    step(position),
                    class_detail(class),
                    quote(message)
                )
            }
            EventKind::StepCompleted {
                position,
                output,
                attempt,
                served_by,
                cost,
                ..
            } => {
                let mut s = format!("{} attempt {attempt}", step(position));
                if let Some(by) = served_by {
                    let _ = write!(s, ", served by {by}");
                }
                if *cost > 0 {
                    let _ = write!(s, ", cost {cost}");
                }
                let _ = write!(s, " -> {}", short_payload(output));
                s
            }
            EventKind::StepExhausted {
                position,
                action,
                budget,
                message,
                ..
            } => {
                format!(
                    "{} gave up ({budget}): {} -> {}",
                    step(position),
                    quote(message),
                    exhaust_action(action)
                )
            }
            EventKind::TimerStarted {
                position,
                fire_at_ms,
                ..
            } => format!("[{position}] timer, fires at {}", rel(*fire_at_ms)),
            EventKind::TimerFired { position, .. } => format!("[{position}] timer fired"),
            EventKind::SignalReceived { name, payload, .. } => {
                format!("{} {}", quote(name), short_payload(payload))
            }
            EventKind::SignalConsumed {
                position,
                name,
                signal_seq,
                ..
            } => {
                format!("[{position}] {} (received at #{signal_seq})", quote(name))
            }
            EventKind::ValueRecorded {
                position,
                kind,
                value,
                ..
            } => format!("[{position}] {kind:?} = {}", short_payload(value)),
            EventKind::CancelRequested { actor, reason, .. } => {
                format!("by {actor}: {}", quote(reason))
            }
            EventKind::RunCompleted { output, .. } => format!("-> {}", short_payload(output)),
            EventKind::RunFailed { error, .. } => quote(error),
            EventKind::RunCancelled { reason, .. } => quote(reason),
            EventKind::RunTerminated { actor, reason, .. } => {
                format!("by {actor}: {}", quote(reason))
            }
            EventKind::Escalated {
                position, reason, ..
            } => {
                let at = position
                    .as_ref()
                    .map_or_else(String::new, |p| format!("{} ", step(p)));
                format!("{at}{}", quote(reason))
            }
            EventKind::ContinuedAsNew {
                next_run, input, ..
            } => {
                format!(
                    "next run {}, input {}",
                    RunId(*next_run),
                    short_payload(input)
                )
            }
            EventKind::CheckRecorded {
                position,
                name,
                passed,
                detail,
                ..
            } => {
                let verdict = if *passed { "passed" } else { "FAILED" };
                format!("[{position}] {name} {verdict}: {}", quote(detail))
            }
            EventKind::ApprovalRequested {
                position,
                gate,
                request,
                ..
            } => format!(
                "[{position}] gate {}: {} (risk {:?})",
                GateId(*gate),
                quote(&request.action),
                request.risk
            ),
            EventKind::ApprovalRequestedEditable {
                position,
                gate,
                request,
                editable,
            } => format!(
                "[{position}] gate {}: {} (risk {:?}), editable {}",
                GateId(*gate),
                quote(&request.action),
                request.risk,
                short_payload(editable)
            ),
            kind @ (EventKind::ApprovalDecided { .. } | EventKind::ApprovalDecidedAs { .. }) => {
                match kind.decision() {
                    Some(d) => {
                        let verdict = if d.approved { "approved" } else { "rejected" };
                        let mut s = format!("gate {} {verdict} by {}", GateId(*d.gate), d.actor);
                        if let Some(role) = d.role {
                            let _ = write!(s, " as {role}");
                        }
                        let _ = write!(s, ": {}", quote(d.reason));
                        if let Some(edits) = d.edits {
                            let _ = write!(s, ", edits {}", short_payload(edits));
                        }
                        s
                    }
                    None => generic_detail(kind, &names),
                }
            }
            EventKind::ApprovalReminded { gate, reminder, .. } => {
                format!("gate {}, reminder {reminder}", GateId(*gate))
            }
            EventKind::ApprovalExpired { gate, .. } | EventKind::ApprovalWithdrawn { gate, .. } => {
                format!("gate {}", GateId(*gate))
            }
            EventKind::OperatorAction {
                position,
                action,
                actor,
                reason,
                ..
            } => {
                let at = position
                    .as_ref()
                    .map_or_else(String::new, |p| format!("{} ", step(p)));
                let with = match action {
                    OperatorActionKind::SkipStep { value: output }
                    | OperatorActionKind::ResolveDone { output } => {
                        format!(" with {}", short_payload(output))
                    }
                    _ => String::new(),
                };
                format!(
                    "{at}{}{with} by {actor}: {}",
                    operator_action_label(action),
                    quote(reason)
                )
            }
            EventKind::AttemptCost {
                position,
                attempt,
                cost,
            } => format!("{} attempt {attempt} cost {cost}", step(position)),
            kind @ EventKind::RunCeilingReached { .. } => match kind.ceiling() {
                Some((position, hit, action)) => {
                    let action = match action {
                        crate::policy::OnCeiling::Escalate => "escalate",
                        crate::policy::OnCeiling::Fail => "fail the run",
                    };
                    format!(
                        "{} {hit}: {} -> {action}",
                        step(&position),
                        hit.spent_text()
                    )
                }
                None => generic_detail(kind, &names),
            },
            // Everything else, including kinds added to the schema after this was written.
            other => generic_detail(other, &names),
        };
        let line = format!(
            "{:>9}  #{:<4} {:<17} {detail}",
            rel(event.at_ms),
            event.seq,
            event.kind.name()
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn class_detail(class: &FailureClass) -> String {
    match class {
        FailureClass::RateLimited {
            retry_after_ms: Some(after),
        } => format!("rate-limited (retry after {})", duration_ms(*after)),
        other => other.label().to_string(),
    }
}

/// Describes an event from its JSON form: `[position] name` if it has a position, then its
/// other fields as `key=value`, each shortened, secrets redacted.
fn generic_detail(kind: &EventKind, names: &BTreeMap<u32, String>) -> String {
    let value = match serde_json::to_value(kind) {
        Ok(value) => value,
        // A payload that is not JSON cannot be embedded; the Debug form still says enough.
        Err(_) => return short(&format!("{kind:?}"), PAYLOAD_CHARS_MAX),
    };
    let fields = match value {
        serde_json::Value::Object(map) => map.into_iter().next().map(|(_, fields)| fields),
        _ => None,
    };
    let Some(serde_json::Value::Object(fields)) = fields else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(position) = fields
        .get("position")
        .and_then(|p| p.as_u64())
        .and_then(|p| u32::try_from(p).ok())
    {
        parts.push(match names.get(&position) {
            Some(name) => format!("[{position}] {name}"),
            None => format!("[{position}]"),
        });
    }
    for (key, mut value) in fields.into_iter().filter(|(k, _)| k != "position") {
        crate::secret::redact_json(&mut value);
        let text = match &value {
            serde_json::Value::String(s) => quote(s),
            other => short(&other.to_string(), PAYLOAD_CHARS_MAX),
        };
        parts.push(format!("{key}={text}"));
    }
    parts.join(" ")
}

fn tool_detail(tool: &Option<String>) -> String {
    tool.as_deref()
        .map_or_else(String::new, |t| format!(" tool={t}"))
}
