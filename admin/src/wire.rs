//! The JSON bodies of the API, shared by the server and its clients (the `annal` CLI's
//! remote mode), so both sides agree on one definition. Ids are strings (UUIDs), times ms
//! since the Unix epoch. `docs/admin-api.md` documents every field.

use annal::{CheckResult, OnExpiry, OperatorActionKind, Payload, RiskTier};
use serde::{Deserialize, Serialize};

/// Every error answer: a stable `error` code, a sentence, and what the code needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code: `already_decided`, `not_allowed`, `expired`, `unknown_gate`, …
    pub error: String,
    /// For a person.
    pub message: String,
    /// The gate concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// The run concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// `already_decided`: who decided; `not_allowed`: who tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// `already_decided`: the role they decided under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `already_decided`: `approved` or `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// `already_decided`: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<u64>,
    /// `action_changed`: the digest the decision named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    /// `action_changed`: the digest of what the gate asks now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_digest: Option<String>,
}

impl ErrorBody {
    /// A body with a code and a message and nothing else.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: code.into(),
            message: message.into(),
            gate: None,
            run: None,
            actor: None,
            role: None,
            decision: None,
            decided_ms: None,
            expected_digest: None,
            found_digest: None,
        }
    }
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// Actor id.
    pub actor: String,
    /// Roles.
    pub roles: Vec<String>,
    /// `human` or `agent`.
    pub kind: String,
    /// Whether they may act on escalated runs.
    pub operator: bool,
}

/// A run in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run: String,
    /// Workflow name.
    pub workflow: String,
    /// Pinned version.
    pub version: u32,
    /// Status name (`running`, `parked`, `escalated`, `completed`, …).
    pub status: String,
    /// Why it is in that status, if there is a reason.
    pub note: String,
    /// Created at.
    pub created_ms: u64,
    /// Last status change.
    pub updated_ms: u64,
    /// Events in its history.
    pub events: u64,
}

/// `GET /api/v1/runs/{run}`: the audit record, its text, the timeline and the events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// `annal::audit::RunRecord` as JSON.
    pub record: serde_json::Value,
    /// The record as text (what `annal history` prints).
    pub rendered: String,
    /// The timeline, one line per event.
    pub timeline: String,
    /// The events (`annal::Event` as JSON).
    pub events: serde_json::Value,
}

/// An approval waiting for a decision, with everything the gate recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingView {
    /// Gate id.
    pub gate: String,
    /// Run id.
    pub run: String,
    /// Command position of the approval in the run.
    pub position: u32,
    /// Workflow.
    pub workflow: String,
    /// The run's status.
    pub status: String,
    /// The proposed action.
    pub action: String,
    /// Risk tier.
    pub risk: RiskTier,
    /// Expected cost (the workflow's units; cents for money).
    pub cost: Option<u64>,
    /// Evidence references.
    pub evidence: Vec<String>,
    /// Checks with their results.
    pub checks: Vec<CheckResult>,
    /// Names of the checks that failed: the risk flags.
    pub risk_flags: Vec<String>,
    /// How to undo the action.
    pub rollback: Option<String>,
    /// Who may decide (actor ids, `role:NAME`); empty: anyone.
    pub approvers: Vec<String>,
    /// What happens at the deadline.
    pub on_expiry: OnExpiry,
    /// When the gate opened.
    pub requested_ms: u64,
    /// When it expires.
    pub deadline_ms: Option<u64>,
    /// How long it has waited.
    pub age_ms: u64,
    /// Reminders sent.
    pub reminders: u32,
    /// Editable fields with their proposed values; `null`: approve or reject only.
    pub editable: Option<serde_json::Value>,
    /// The digest a decision must name.
    pub action_digest: String,
    /// The role the caller would decide under; `null`: the caller may not decide it.
    pub decides_as: Option<String>,
    /// The run's timeline so far (single-gate view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
}

/// `POST /api/v1/approvals/{gate}/decision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// `approve` or `reject`.
    pub verdict: String,
    /// Why; required to reject.
    #[serde(default)]
    pub reason: String,
    /// The `action_digest` of the approval as the reviewer saw it. Required: a decision is
    /// bound to the exact action.
    pub action_digest: String,
    /// Edits of the gate's editable fields (approve only).
    #[serde(default)]
    pub edits: Option<serde_json::Value>,
}

/// A decision as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionView {
    /// Gate id.
    pub gate: String,
    /// Run id.
    pub run: String,
    /// Who decided.
    pub actor: String,
    /// The role they decided under.
    pub role: String,
    /// `approved` or `rejected`.
    pub decision: String,
    /// When it was recorded.
    pub decided_ms: u64,
    /// The digest of the action decided on.
    pub action_digest: String,
}

/// A closed approval round in the decision history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastDecisionView {
    /// Gate id.
    pub gate: String,
    /// Run id.
    pub run: String,
    /// Workflow.
    pub workflow: String,
    /// The action asked for.
    pub action: String,
    /// `approved`, `rejected`, `expired` or `withdrawn`.
    pub decision: String,
    /// Who decided.
    pub actor: Option<String>,
    /// Under which role.
    pub role: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When the round opened.
    pub requested_ms: u64,
    /// When it closed.
    pub decided_ms: u64,
}

/// `POST /api/v1/runs/{run}/operate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperateBody {
    /// `retry`, `skip`, `resolve-done`, `resolve-not-done` or `abort`.
    pub action: String,
    /// `skip`: the step's output; `resolve-done`: the effect's output (JSON).
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    /// Why (required).
    pub reason: String,
}

/// An operator action as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatedView {
    /// Run id.
    pub run: String,
    /// The action.
    pub action: String,
    /// Who.
    pub actor: String,
    /// The run's status afterwards.
    pub status: String,
}

/// `GET /api/v1/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportView {
    /// `annal::audit::Report` as JSON.
    pub report: serde_json::Value,
    /// The report as text (what `annal report` prints).
    pub rendered: String,
}

/// The engine's operator action for an API action name (`retry`, `skip`, `resolve-done`,
/// `resolve-not-done`, `abort`) and its value, or why they do not make one. Shared by the
/// server and the CLI's local mode, so both read the names alike.
pub fn operator_action(
    name: &str,
    value: Option<&serde_json::Value>,
) -> Result<OperatorActionKind, String> {
    let payload = || -> Result<Payload, String> {
        let value = value.ok_or_else(|| format!("{name} needs a value (JSON)"))?;
        Payload::encode(value).map_err(|e| e.to_string())
    };
    let action = match name {
        "retry" => OperatorActionKind::RetryStep,
        "skip" => OperatorActionKind::SkipStep { value: payload()? },
        "resolve-done" => OperatorActionKind::ResolveDone { output: payload()? },
        "resolve-not-done" => OperatorActionKind::ResolveNotDone,
        "abort" => OperatorActionKind::Abort,
        other => {
            return Err(format!(
                "action must be retry, skip, resolve-done, resolve-not-done or abort, not '{other}'"
            ))
        }
    };
    if value.is_some() && !matches!(name, "skip" | "resolve-done") {
        return Err(format!("{name} takes no value"));
    }
    Ok(action)
}
