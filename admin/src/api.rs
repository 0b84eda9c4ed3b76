//! The JSON API under `/api/v1`, bearer tokens only (no cookies, hence no CSRF exposure).
//! Every refusal is an [`ApiError`] with a typed body; `docs/admin-api.md` lists them.

use std::sync::Arc;

use annal::audit::{timeline, Report, RunRecord};
use annal::{
    ActionDigest, ApprovalFilter, DecideRequest, GateId, PendingApproval, RunId, RunStatus,
};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::wire::{
    DecideBody, DecisionView, OperateBody, OperatedView, PastDecisionView, PendingView, ReportView,
    RunSummary, RunView, WhoAmI,
};
use crate::AdminState;

type St = State<Arc<AdminState>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{run}", get(run))
        .route("/api/v1/runs/{run}/operate", post(operate))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/approvals/{gate}", get(approval))
        .route("/api/v1/approvals/{gate}/decision", post(decide))
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/report", get(report))
}

fn caller(state: &AdminState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    bearer(&state.principals, headers)
}

pub(crate) fn parse_run(text: &str) -> Result<RunId, ApiError> {
    uuid::Uuid::parse_str(text)
        .map(|u| RunId(*u.as_bytes()))
        .map_err(|_| ApiError::bad_request(format!("'{text}' is not a run id (a UUID)")))
}

pub(crate) fn parse_gate(text: &str) -> Result<GateId, ApiError> {
    uuid::Uuid::parse_str(text)
        .map(|u| GateId(*u.as_bytes()))
        .map_err(|_| ApiError::bad_request(format!("'{text}' is not a gate id (a UUID)")))
}

async fn whoami(State(state): St, headers: HeaderMap) -> ApiResult<WhoAmI> {
    let caller = caller(&state, &headers)?;
    Ok(Json(WhoAmI {
        operator: state.is_operator(&caller.actor),
        kind: if caller.actor.is_agent() {
            "agent"
        } else {
            "human"
        }
        .into(),
        actor: caller.actor.id,
        roles: caller.actor.roles,
    }))
}

/// Filters of `GET /api/v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    status: Option<String>,
    workflow: Option<String>,
    /// Created at or after (ms since the Unix epoch).
    since_ms: Option<u64>,
    /// Created at most this long ago.
    max_age_ms: Option<u64>,
    /// Created at least this long ago.
    min_age_ms: Option<u64>,
    limit: Option<usize>,
}

async fn runs(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Vec<RunSummary>> {
    caller(&state, &headers)?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            RunStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown status '{s}'")))
        })
        .transpose()?;
    let now_ms = state.now_ms();
    let mut out: Vec<RunSummary> = state
        .engine
        .runs()
        .await?
        .into_iter()
        .filter(|r| status.is_none_or(|s| r.status == s))
        .filter(|r| q.workflow.as_ref().is_none_or(|w| *w == r.workflow))
        .filter(|r| q.since_ms.is_none_or(|since| r.created_ms >= since))
        .filter(|r| {
            q.max_age_ms
                .is_none_or(|age| now_ms.saturating_sub(r.created_ms) <= age)
        })
        .filter(|r| {
            q.min_age_ms
                .is_none_or(|age| now_ms.saturating_sub(r.created_ms) >= age)
        })
        .map(|r| RunSummary {
            run: r.run.to_string(),
            workflow: r.workflow,
            version: r.version,
            status: r.status.to_string(),
            note: r.note,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            events: r.events,
        })
        .collect();
    out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.run.cmp(&b.run)));
    if let Some(limit) = q.limit {
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
    }
    Ok(Json(out))
}

async fn run(State(state): St, headers: HeaderMap, Path(run): Path<String>) -> ApiResult<RunView> {
    caller(&state, &headers)?;
    let run = parse_run(&run)?;
    let meta = state
        .engine
        .store()
        .meta(run)
        .await
        .map_err(annal::Error::from)?
        .ok_or(annal::Error::UnknownRun(run))?;
    let events = state.engine.history(run).await?;
    let record = RunRecord::from_history(run, Some(&meta), &events);
    Ok(Json(RunView {
        rendered: record.render(),
        record: to_json(&record)?,
        timeline: timeline(&events),
        events: to_json(&events)?,
    }))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot render as JSON: {e}"),
        )
    })
}

/// Filters of `GET /api/v1/approvals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsQuery {
    /// Only gates the caller may decide.
    #[serde(default)]
    mine: bool,
}

/// The inbox, nearest deadline first (no deadline last), then highest risk.
pub(crate) async fn inbox(
    state: &AdminState,
    only_for: Option<&annal::Actor>,
) -> Result<Vec<PendingApproval>, ApiError> {
    let filter = ApprovalFilter {
        approver: only_for.cloned(),
        min_risk: None,
    };
    let mut pending = state.engine.pending_approvals(&filter).await?;
    pending.sort_by_key(|p| (p.deadline_ms.unwrap_or(u64::MAX), std::cmp::Reverse(p.risk)));
    Ok(pending)
}

pub(crate) fn pending_view(p: &PendingApproval, caller: &annal::Actor) -> PendingView {
    PendingView {
        gate: p.gate.to_string(),
        run: p.run.to_string(),
        position: p.position,
        workflow: p.workflow.clone(),
        status: p.status.to_string(),
        action: p.action.clone(),
        risk: p.risk,
        cost: p.cost,
        evidence: p.evidence.clone(),
        checks: p.checks.clone(),
        risk_flags: p.failed_checks().map(|c| c.name.clone()).collect(),
        rollback: p.rollback.clone(),
        approvers: p.approvers.clone(),
        on_expiry: p.on_expiry.clone(),
        requested_ms: p.requested_ms,
        deadline_ms: p.deadline_ms,
        age_ms: p.age_ms,
        reminders: p.reminders,
        editable: p.editable.clone(),
        action_digest: p.digest.to_string(),
        decides_as: if caller.is_agent() {
            None
        } else {
            caller.decides_as(&p.approvers)
        },
        timeline: None,
    }
}

async fn approvals(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<ApprovalsQuery>,
) -> ApiResult<Vec<PendingView>> {
    let caller = caller(&state, &headers)?;
    if q.mine && caller.actor.is_agent() {
        // An agent decides nothing, whatever its roles say.
        return Ok(Json(Vec::new()));
    }
    let pending = inbox(&state, q.mine.then_some(&caller.actor)).await?;
    Ok(Json(
        pending
            .iter()
            .map(|p| pending_view(p, &caller.actor))
            .collect(),
    ))
}

/// A pending gate by id, or the typed reason it is not pending.
pub(crate) async fn pending_gate(
    state: &AdminState,
    gate: GateId,
) -> Result<PendingApproval, ApiError> {
    let pending = state
        .engine
        .pending_approvals(&ApprovalFilter::default())
        .await?;
    if let Some(p) = pending.into_iter().find(|p| p.gate == gate) {
        return Ok(p);
    }
    // Not waiting: say why, as a decision would (decided by whom and when, expired, …).
    let past = state.engine.past_decisions(usize::MAX).await?;
    match past.into_iter().find(|d| d.gate == gate) {
        Some(d) if d.decision == "expired" => Err(annal::Error::GateExpired { gate }.into()),
        Some(d) if matches!(d.decision.as_str(), "approved" | "rejected") => {
            Err(annal::Error::AlreadyDecided {
                gate,
                actor: d.actor.unwrap_or_default(),
                role: d.role,
                approved: d.decision == "approved",
                decided_ms: d.decided_ms,
            }
            .into())
        }
        _ => Err(annal::Error::UnknownGate(gate).into()),
    }
}

async fn approval(
    State(state): St,
    headers: HeaderMap,
    Path(gate): Path<String>,
) -> ApiResult<PendingView> {
    let caller = caller(&state, &headers)?;
    let gate = parse_gate(&gate)?;
    let pending = pending_gate(&state, gate).await?;
    let mut view = pending_view(&pending, &caller.actor);
    view.timeline = Some(timeline(&state.engine.history(pending.run).await?));
    Ok(Json(view))
}

/// The engine request for a decision as the API and the page send it.
pub(crate) fn decide_request(
    verdict: &str,
    reason: &str,
    digest: &str,
    edits: Option<serde_json::Value>,
) -> Result<DecideRequest, ApiError> {
    let digest = ActionDigest::parse(digest).ok_or_else(|| {
        ApiError::bad_request("action_digest must be the 64 hex digits the approval shows")
    })?;
    let request = match verdict {
        "approve" => DecideRequest::approve(reason),
        "reject" => {
            if edits.is_some() {
                return Err(ApiError::bad_request("a rejection carries no edits"));
            }
            DecideRequest::reject(reason)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "verdict must be approve or reject, not '{other}'"
            )))
        }
    };
    let request = match edits {
        Some(edits) => request.with_edits(edits),
        None => request,
    };
    Ok(request.bound_to(digest))
}

pub(crate) fn decision_view(d: &annal::Decided) -> DecisionView {
    DecisionView {
        gate: d.gate.to_string(),
        run: d.run.to_string(),
        actor: d.actor.clone(),
        role: d.role.clone(),
        decision: if d.approved { "approved" } else { "rejected" }.into(),
        decided_ms: d.decided_ms,
        action_digest: d.action_digest.to_string(),
    }
}

async fn decide(
    State(state): St,
    headers: HeaderMap,
    Path(gate): Path<String>,
    body: Result<Json<DecideBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DecisionView> {
    let caller = caller(&state, &headers)?;
    let gate = parse_gate(&gate)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = decide_request(&body.verdict, &body.reason, &body.action_digest, body.edits)?;
    let decided = state
        .engine
        .decide_bound(gate, &caller.actor, &request)
        .await?;
    tracing::info!(%gate, actor = %decided.actor, role = %decided.role, approved = decided.approved, "decision recorded");
    Ok(Json(decision_view(&decided)))
}

/// Filters of `GET /api/v1/decisions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionsQuery {
    limit: Option<usize>,
}

async fn decisions(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<DecisionsQuery>,
) -> ApiResult<Vec<PastDecisionView>> {
    caller(&state, &headers)?;
    let past = state.engine.past_decisions(q.limit.unwrap_or(100)).await?;
    Ok(Json(past.iter().map(past_view).collect()))
}

pub(crate) fn past_view(d: &annal::PastDecision) -> PastDecisionView {
    PastDecisionView {
        gate: d.gate.to_string(),
        run: d.run.to_string(),
        workflow: d.workflow.clone(),
        action: d.action.clone(),
        decision: d.decision.clone(),
        actor: d.actor.clone(),
        role: d.role.clone(),
        reason: d.reason.clone(),
        requested_ms: d.requested_ms,
        decided_ms: d.decided_ms,
    }
}

async fn operate(
    State(state): St,
    headers: HeaderMap,
    Path(run): Path<String>,
    body: Result<Json<OperateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<OperatedView> {
    let caller = caller(&state, &headers)?;
    let run = parse_run(&run)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !state.is_operator(&caller.actor) {
        return Err(ApiError::forbidden(format!(
            "{} is not an operator (needs one of the roles: {}; agents never are)",
            caller.actor.id,
            state.config.operator_roles.join(", ")
        )));
    }
    if body.reason.trim().is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "an operator action needs a reason",
        ));
    }
    let action = crate::wire::operator_action(&body.action, body.value.as_ref())
        .map_err(ApiError::bad_request)?;
    state
        .engine
        .operate(run, &caller.actor.id, action, &body.reason)
        .await?;
    tracing::info!(%run, actor = %caller.actor.id, action = %body.action, "operator action recorded");
    let status = state.engine.status(run).await?.status;
    Ok(Json(OperatedView {
        run: run.to_string(),
        action: body.action,
        actor: caller.actor.id,
        status: status.to_string(),
    }))
}

/// Filters of `GET /api/v1/report`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// Only runs created at or after (ms since the Unix epoch).
    since_ms: Option<u64>,
}

async fn report(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> ApiResult<ReportView> {
    caller(&state, &headers)?;
    let mut records = Vec::new();
    for info in state.engine.runs().await? {
        if q.since_ms.is_some_and(|since| info.created_ms < since) {
            continue;
        }
        let events = match state.engine.history(info.run).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(run = %info.run, error = %e, "run unreadable; left out of the report");
                continue;
            }
        };
        let meta = state
            .engine
            .store()
            .meta(info.run)
            .await
            .map_err(annal::Error::from)?;
        records.push(RunRecord::from_history(info.run, meta.as_ref(), &events));
    }
    let report = Report::from_records(&records);
    Ok(Json(ReportView {
        rendered: report.render(),
        report: to_json(&report)?,
    }))
}
