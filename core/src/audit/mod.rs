//! Audit: what happened in a run and why, computed from its history alone.
//!
//! **Pure: no I/O, no clock.** Everything here is a function of recorded events (and, where a
//! caller has it, the run's stored metadata), so an auditor's answer does not depend on when
//! or where it is computed, and the output is deterministic enough to snapshot-test: maps are
//! `BTreeMap`s, lists are in position or log order, and times are printed relative to the
//! run's start or as UTC.
//!
//! - [`RunRecord`]: one run summarised: who, what, status, steps with their attempts and
//!   failure classes, approvals, checks, escalations, operator actions, outcome.
//! - [`timeline`]: a readable history, one line per event.
//! - [`Report`]: per-tool metrics over many runs (retry share, failures by class, budget
//!   exhaustion, breaker refusals, success and escalation rates, cost per successful outcome,
//!   approval latency).
//! - [`transparency`]: tamper evidence: the Merkle tree over the runs' heads, signed
//!   checkpoints, inclusion proofs, and the chain checks against them.
//!
//! Events this module does not know yet (variants added to
//! [`EventKind`](crate::event::EventKind) later) are not lost: the fold ignores them and the
//! timeline renders them generically from their JSON form.
//!
//! Files: `record.rs` (the fold and the record), `timeline.rs`, `report.rs`; this file holds
//! the text helpers they share (shortening, redaction, times).

mod record;
mod report;
#[cfg(test)]
mod tests;
mod timeline;
pub mod transparency;

use std::fmt::Write as _;

use crate::event::{OperatorActionKind, Payload};
use crate::policy::OnExhaust;

pub use record::{
    ApprovalRecord, BudgetExhaustion, CeilingRecord, CheckRecord, EscalationRecord, FailureRecord,
    OperatorAction, Outcome, RunRecord, StepEnd, StepRecord, StepRef,
};
pub use report::{ApprovalStats, Exhaustion, Report, ToolStats};
pub use timeline::timeline;

/// Longest rendering of a payload in a timeline line, in characters.
const PAYLOAD_CHARS_MAX: usize = 80;
/// Longest rendering of a message (an error, a reason) in a timeline line, in characters.
const MESSAGE_CHARS_MAX: usize = 100;
/// The tool name reports use for steps that named none.
pub const NO_TOOL: &str = "(none)";

/// An operator action's name as records, timelines and metrics show it: `retry-step`,
/// `skip-step`, `resolve-done`, `resolve-not-done`, `abort`.
pub fn operator_action_name(action: &OperatorActionKind) -> &'static str {
    operator_action_label(action)
}

fn operator_action_label(action: &OperatorActionKind) -> &'static str {
    match action {
        OperatorActionKind::RetryStep => "retry-step",
        OperatorActionKind::SkipStep { .. } => "skip-step",
        OperatorActionKind::ResolveDone { .. } => "resolve-done",
        OperatorActionKind::ResolveNotDone => "resolve-not-done",
        OperatorActionKind::Abort => "abort",
    }
}

/// What a policy did when a step ran out, in words.
fn exhaust_action(action: &OnExhaust) -> String {
    match action {
        OnExhaust::Fail => "fail".into(),
        OnExhaust::Degrade(value) => format!("degrade to {}", short_payload(value)),
        OnExhaust::Skip => "skip".into(),
        OnExhaust::Escalate => "escalate".into(),
    }
}

/// A payload as compact JSON on one line, secrets redacted, shortened.
pub fn short_payload(payload: &Payload) -> String {
    match serde_json::from_slice::<serde_json::Value>(&payload.0) {
        Ok(mut value) => {
            crate::secret::redact_json(&mut value);
            short(&value.to_string(), PAYLOAD_CHARS_MAX)
        }
        Err(_) => format!("(not JSON, {} bytes)", payload.0.len()),
    }
}

/// `s` quoted and escaped onto one line, shortened.
fn quote(s: &str) -> String {
    format!("{:?}", short(s, MESSAGE_CHARS_MAX))
}

/// At most `max_chars` characters of `s`, with `...` when cut.
fn short(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let kept: String = s.chars().take(max_chars.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// A time offset as the timeline prints it: `+0.250s`, `+2m03s`, `+2h03m`, `+3d04h`.
pub fn relative_ms(delta_ms: i128) -> String {
    let sign = if delta_ms < 0 { '-' } else { '+' };
    format!(
        "{sign}{}",
        duration_ms(u64::try_from(delta_ms.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

/// A duration at the precision a reader wants for its size: `0.250s`, `2m03s`, `2h03m`,
/// `3d04h`.
pub fn duration_ms(ms: u64) -> String {
    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    match ms {
        ms if ms < M => format!("{}.{:03}s", ms / S, ms % S),
        ms if ms < H => format!("{}m{:02}s", ms / M, ms % M / S),
        ms if ms < D => format!("{}h{:02}m", ms / H, ms % H / M),
        ms => format!("{}d{:02}h", ms / D, ms % D / H),
    }
}

/// A Unix time in ms as RFC 3339 UTC with milliseconds: `2023-11-14T22:13:20.000Z`.
pub fn utc(ms: u64) -> String {
    let days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day % 3_600_000 / 60_000,
        in_day % 60_000 / 1_000,
        in_day % 1_000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Left-aligned columns, two spaces apart, each line prefixed with `indent`.
fn write_table<const N: usize>(out: &mut String, indent: &str, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = indent.to_string();
        for (cell, w) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn ser_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn ser_opt_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}
