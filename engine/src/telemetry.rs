//! Telemetry: a `tracing` event for every lifecycle transition and counters and histograms
//! through the [`metrics`](https://docs.rs/metrics) facade. Nothing here is called by users:
//! this page lists what the engine reports.
//!
//! annal depends on the facade only: nothing is recorded until the service installs a
//! recorder (`metrics-exporter-prometheus`, an OpenTelemetry bridge, `metrics-util`'s
//! debugging recorder in tests), and then every engine in the process reports to it.
//! Events are emitted live only, never while a run replays what its history already holds,
//! so each transition is counted once however often a run is resumed.
//!
//! # Tracing events (target `annal::telemetry`)
//!
//! | message | level | fields |
//! |---|---|---|
//! | `run started` | info | run, workflow, version |
//! | `run resumed` | debug | run, workflow, events (the history replayed) |
//! | `run parking` | debug | run, workflow |
//! | `run escalated` | info | run, workflow, step, reason |
//! | `run ended` | info | run, workflow, status (when the workflow returns; the terminal event is appended next) |
//! | `attempt started` | debug | run, step, tool, attempt, class |
//! | `attempt failed` | info | run, step, tool, attempt, class (failure class), error, retry_at_ms (absent: no retry) |
//! | `step completed` | debug | run, step, tool, attempt, cost, latency_ms |
//! | `step degraded` / `step skipped` / `step exhausted` | info | run, step, tool, budget, action |
//! | `run ceiling reached` | warn | run, step, tool, ceiling, spent, top_tool, action |
//! | `approval requested` | info | run, gate, action, risk |
//! | `approval decided` | info | run, gate, approved, actor, role, latency_ms |
//! | `approval expired` | info | run, gate, action |
//! | `operator action` | info | run, step position, action, actor |
//!
//! Every attempt also runs in an `attempt` span (run, step, tool, attempt, class), inside the
//! `step` and `run` spans.
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `annal_runs_total` | counter | workflow, status: runs entering each status (`running` at start, `parked`, `escalated`, `blocked`, `completed`, `failed`, `cancelled`, `continued-as-new`, `terminated`) |
//! | `annal_runs_resumed_total` | counter | workflow |
//! | `annal_attempts_total` | counter | tool |
//! | `annal_attempt_failures_total` | counter | tool, class |
//! | `annal_retries_total` | counter | tool |
//! | `annal_exhaustions_total` | counter | tool, action (`fail`, `degrade`, `skip`, `escalate`) |
//! | `annal_ceilings_total` | counter | ceiling, action |
//! | `annal_step_duration_seconds` | histogram | tool: from a step's first attempt to its outcome |
//! | `annal_approvals_requested_total` | counter | — |
//! | `annal_approvals_decided_total` | counter | decision (`approved`, `rejected`) |
//! | `annal_approvals_expired_total` | counter | — |
//! | `annal_approval_latency_seconds` | histogram | decision: from the request to the decision |
//! | `annal_operator_actions_total` | counter | action |
//!
//! Steps that name no tool are labelled `(none)`.

use annal_storage::RunId;

use crate::audit::NO_TOOL;
use crate::policy::{FailureClass, OnExhaust, StepClass};
use crate::status::RunStatus;

fn tool_label(tool: Option<&str>) -> String {
    tool.unwrap_or(NO_TOOL).to_string()
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1_000.0
}

/// A run entered `status` (counted; the caller logs the transition).
pub(crate) fn run_status(workflow: &str, status: RunStatus) {
    metrics::counter!("annal_runs_total", "workflow" => workflow.to_string(), "status" => status.name())
        .increment(1);
}

pub(crate) fn run_started(run: RunId, workflow: &str, version: u32) {
    tracing::info!(%run, workflow, version, "run started");
    run_status(workflow, RunStatus::Running);
}

pub(crate) fn run_resumed(run: RunId, workflow: &str, events: u64) {
    tracing::debug!(%run, workflow, events, "run resumed");
    metrics::counter!("annal_runs_resumed_total", "workflow" => workflow.to_string()).increment(1);
}

pub(crate) fn run_parking(run: RunId, workflow: &str) {
    tracing::debug!(%run, workflow, "run parking");
    run_status(workflow, RunStatus::Parked);
}

pub(crate) fn run_escalated(run: RunId, workflow: &str, step: Option<&str>, reason: &str) {
    tracing::info!(%run, workflow, step = step.unwrap_or(""), reason, "run escalated");
    run_status(workflow, RunStatus::Escalated);
}

pub(crate) fn run_ended(run: RunId, workflow: &str, status: RunStatus) {
    tracing::info!(%run, workflow, status = status.name(), "run ended");
    run_status(workflow, status);
}

/// What an attempt is, for its events.
pub(crate) struct AttemptRef<'a> {
    pub(crate) run: RunId,
    pub(crate) step: &'a str,
    pub(crate) tool: Option<&'a str>,
    pub(crate) attempt: u32,
}

pub(crate) fn attempt_started(a: &AttemptRef<'_>, class: StepClass) {
    let tool = a.tool.unwrap_or("");
    tracing::debug!(run = %a.run, step = a.step, tool, attempt = a.attempt, class = ?class, "attempt started");
    metrics::counter!("annal_attempts_total", "tool" => tool_label(a.tool)).increment(1);
}

pub(crate) fn attempt_failed(
    a: &AttemptRef<'_>,
    class: &FailureClass,
    message: &str,
    retry_at_ms: Option<u64>,
) {
    let tool = a.tool.unwrap_or("");
    tracing::info!(
        run = %a.run,
        step = a.step,
        tool,
        attempt = a.attempt,
        class = class.label(),
        error = message,
        retry_at_ms,
        "attempt failed"
    );
    metrics::counter!("annal_attempt_failures_total", "tool" => tool_label(a.tool), "class" => class.label())
        .increment(1);
    if retry_at_ms.is_some() {
        metrics::counter!("annal_retries_total", "tool" => tool_label(a.tool)).increment(1);
    }
}

pub(crate) fn step_completed(a: &AttemptRef<'_>, cost: u64, latency_ms: u64) {
    let tool = a.tool.unwrap_or("");
    tracing::debug!(run = %a.run, step = a.step, tool, attempt = a.attempt, cost, latency_ms, "step completed");
    metrics::histogram!("annal_step_duration_seconds", "tool" => tool_label(a.tool))
        .record(seconds(latency_ms));
}

pub(crate) fn step_exhausted(
    a: &AttemptRef<'_>,
    budget: &str,
    action: &OnExhaust,
    latency_ms: u64,
) {
    let tool = a.tool.unwrap_or("");
    let label = match action {
        OnExhaust::Fail => "fail",
        OnExhaust::Degrade(_) => "degrade",
        OnExhaust::Skip => "skip",
        OnExhaust::Escalate => "escalate",
    };
    match action {
        OnExhaust::Degrade(_) => {
            tracing::info!(run = %a.run, step = a.step, tool, budget, action = label, "step degraded")
        }
        OnExhaust::Skip => {
            tracing::info!(run = %a.run, step = a.step, tool, budget, action = label, "step skipped")
        }
        OnExhaust::Fail | OnExhaust::Escalate => {
            tracing::info!(run = %a.run, step = a.step, tool, budget, action = label, "step exhausted")
        }
    }
    metrics::counter!("annal_exhaustions_total", "tool" => tool_label(a.tool), "action" => label)
        .increment(1);
    metrics::histogram!("annal_step_duration_seconds", "tool" => tool_label(a.tool))
        .record(seconds(latency_ms));
}

pub(crate) fn ceiling_reached(
    a: &AttemptRef<'_>,
    hit: &crate::policy::CeilingHit,
    action: crate::policy::OnCeiling,
) {
    let action = action.label();
    tracing::warn!(
        run = %a.run,
        step = a.step,
        tool = a.tool.unwrap_or(""),
        ceiling = %hit,
        spent = %hit.spent_text(),
        top_tool = hit.top_tool.as_ref().map_or("", |(t, _)| t.as_str()),
        action,
        "run ceiling reached"
    );
    metrics::counter!("annal_ceilings_total", "ceiling" => hit.ceiling.key(), "action" => action)
        .increment(1);
}

pub(crate) fn approval_requested(run: RunId, gate: [u8; 16], action: &str, risk: &str) {
    let gate = annal_storage::GateId(gate);
    tracing::info!(%run, %gate, action, risk, "approval requested");
    metrics::counter!("annal_approvals_requested_total").increment(1);
}

pub(crate) fn approval_decided(
    run: RunId,
    gate: annal_storage::GateId,
    approved: bool,
    actor: &str,
    role: &str,
    latency_ms: u64,
) {
    tracing::info!(%run, %gate, approved, actor, role, latency_ms, "approval decided");
    let decision = if approved { "approved" } else { "rejected" };
    metrics::counter!("annal_approvals_decided_total", "decision" => decision).increment(1);
    metrics::histogram!("annal_approval_latency_seconds", "decision" => decision)
        .record(seconds(latency_ms));
}

pub(crate) fn approval_expired(run: RunId, gate: [u8; 16], action: &str) {
    let gate = annal_storage::GateId(gate);
    tracing::info!(%run, %gate, action, "approval expired");
    metrics::counter!("annal_approvals_expired_total").increment(1);
}

pub(crate) fn operator_action(run: RunId, position: Option<u32>, action: &str, actor: &str) {
    tracing::info!(%run, position, action, actor, "operator action");
    metrics::counter!("annal_operator_actions_total", "action" => action.to_string()).increment(1);
}
