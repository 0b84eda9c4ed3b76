//! The approval inbox page: server-rendered HTML and one stylesheet, no JavaScript.
//!
//! `GET /login` and `POST /login` turn a token into a session cookie; `GET /inbox` lists the
//! pending gates (nearest deadline first) as cards with everything the gate recorded and
//! the run's timeline, and the past decisions; `POST /inbox/decide` records a decision
//! (CSRF-checked, bound to the digest the card showed) and shows the result, or the
//! refusal in words, above the inbox.

use std::sync::Arc;

use annal::audit::{duration_ms, timeline, utc};
use annal::{PendingApproval, RiskTier};
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::{decide_request, inbox, parse_gate};
use crate::auth::{
    cookie, cross_site, same_secret, set_cookie, NoSession, SessionView, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::config::random_hex;
use crate::error::ApiError;
use crate::AdminState;

type St = State<Arc<AdminState>>;

/// Past decisions the page shows.
const PAST_DECISIONS_SHOWN: usize = 50;
/// How long a login form stays usable, in seconds.
const LOGIN_FORM_TTL_SECS: u64 = 600;

const STYLE: &str = include_str!("inbox.css");

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/inbox", get(inbox_page))
        .route("/inbox/decide", post(decide))
        .route("/assets/inbox.css", get(stylesheet))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

/// A whole page, with the headers every page gets (no scripts, no framing).
fn page(
    status: StatusCode,
    title: &str,
    body: Markup,
    extra: Vec<(header::HeaderName, String)>,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · annal" }
                link rel="stylesheet" href="/assets/inbox.css";
            }
            body { (body) }
        }
    };
    let mut response = (status, Html(markup.into_string())).into_response();
    let headers = response.headers_mut();
    if let Ok(csp) = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'".parse() {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    for (name, value) in extra {
        if let Ok(value) = value.parse() {
            headers.append(name, value);
        }
    }
    response
}

/// Query of `GET /login`.
#[derive(Debug, Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    expired: Option<String>,
}

async fn login_form(
    State(state): St,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let note = q
        .expired
        .is_some()
        .then_some("Your session expired; log in again.");
    login_page(&state, StatusCode::OK, note)
}

fn login_page(state: &AdminState, status: StatusCode, note: Option<&str>) -> Response {
    let Ok(nonce) = random_hex::<32>() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no randomness",
        )
        .into_response();
    };
    let body = html! {
        main.narrow {
            h1 { "annal · approvals" }
            @if let Some(note) = note { p.banner.refused role="alert" { (note) } }
            form.card method="post" action="/login" {
                label for="token" { "Access token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                input type="hidden" name="nonce" value=(nonce);
                button.approve type="submit" { "Log in" }
            }
            p.muted { "Tokens come from the service's admin configuration (annal admin new-token)." }
        }
    };
    let cookie = set_cookie(
        LOGIN_COOKIE,
        &nonce,
        "/login",
        LOGIN_FORM_TTL_SECS,
        state.config.secure_cookies,
    );
    page(status, "Log in", body, vec![(header::SET_COOKIE, cookie)])
}

/// The login form.
#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    nonce: String,
}

async fn login(State(state): St, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let from_page = cookie(&headers, LOGIN_COOKIE);
    if cross_site(&headers)
        || form.nonce.is_empty()
        || !from_page.is_some_and(|c| same_secret(&c, &form.nonce))
    {
        return refusal_page(StatusCode::FORBIDDEN, "This login did not come from the login page (CSRF check failed). Open the login page and try again.");
    }
    let Some(principal) = state.principals.by_token(form.token.trim()) else {
        tracing::info!("page login refused: unknown token");
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That token matches no principal."),
        );
    };
    let ttl_ms = state.config.session_ttl_secs.saturating_mul(1_000);
    let id = match state
        .sessions
        .open(principal.actor(), state.now_ms(), ttl_ms)
    {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    tracing::info!(actor = %principal.actor, "page session opened");
    let secure = state.config.secure_cookies;
    let mut response = Redirect::to("/inbox").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    for cookie in [
        set_cookie(
            SESSION_COOKIE,
            &id,
            "/",
            state.config.session_ttl_secs,
            secure,
        ),
        set_cookie(LOGIN_COOKIE, "", "/login", 0, secure),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

fn refusal_page(status: StatusCode, message: &str) -> Response {
    let body = html! {
        main.narrow {
            h1 { "annal · approvals" }
            p.banner.refused role="alert" { (message) }
            p { a href="/login" { "Log in" } " · " a href="/inbox" { "Inbox" } }
        }
    };
    page(status, "Refused", body, Vec::new())
}

/// The session of a page request.
fn session(state: &AdminState, headers: &HeaderMap) -> Result<SessionView, NoSession> {
    state.sessions.get(headers, state.now_ms())
}

/// Where a request without a (live) session goes: the login page, saying why.
fn to_login(why: NoSession) -> Response {
    let to = match why {
        NoSession::Missing => "/login",
        NoSession::Expired => "/login?expired=1",
    };
    let mut response = Redirect::to(to).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

/// The logout form.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(state): St, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    let session = match session(&state, &headers) {
        Ok(s) => s,
        Err(why) => return to_login(why),
    };
    if cross_site(&headers) || !same_secret(&session.csrf, &form.csrf) {
        return refusal_page(
            StatusCode::FORBIDDEN,
            "CSRF check failed; nothing was done.",
        );
    }
    state.sessions.close(&headers);
    let mut response = Redirect::to("/login").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = set_cookie(SESSION_COOKIE, "", "/", 0, state.config.secure_cookies).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn inbox_page(State(state): St, headers: HeaderMap) -> Response {
    match session(&state, &headers) {
        Ok(session) => render_inbox(&state, &session, StatusCode::OK, None).await,
        Err(why) => to_login(why),
    }
}

/// What the last form did, shown above the inbox.
enum Banner {
    Done(String),
    Refused(String),
}

/// The decision form of a card.
#[derive(Deserialize)]
struct DecideForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    gate: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    edits: String,
}

async fn decide(State(state): St, headers: HeaderMap, Form(form): Form<DecideForm>) -> Response {
    let session = match session(&state, &headers) {
        Ok(s) => s,
        Err(why) => return to_login(why),
    };
    if cross_site(&headers) || form.csrf.is_empty() || !same_secret(&session.csrf, &form.csrf) {
        return render_inbox(
            &state,
            &session,
            StatusCode::FORBIDDEN,
            Some(Banner::Refused("The form's CSRF token is missing or wrong (a stale page, or a request from another site); nothing was recorded. Reload the inbox and decide again.".into())),
        )
        .await;
    }
    let outcome = async {
        let gate = parse_gate(&form.gate)?;
        let edits = match form.edits.trim() {
            "" => None,
            text => Some(serde_json::from_str(text).map_err(|e| {
                ApiError::bad_request(format!("the edits are not JSON: {e}"))
            })?),
        };
        let request = decide_request(&form.verdict, &form.reason, &form.digest, edits)?;
        let decided = state
            .engine
            .decide_bound(gate, &session.actor, &request)
            .await?;
        tracing::info!(%gate, actor = %decided.actor, role = %decided.role, approved = decided.approved, "decision recorded from the inbox");
        Ok::<_, ApiError>(decided)
    }
    .await;
    match outcome {
        Ok(d) => {
            let verdict = if d.approved { "Approved" } else { "Rejected" };
            let text = format!(
                "{verdict}: gate {} (run {}) by {} as {} at {}. The run resumes now.",
                d.gate,
                d.run,
                d.actor,
                d.role,
                utc(d.decided_ms)
            );
            render_inbox(&state, &session, StatusCode::OK, Some(Banner::Done(text))).await
        }
        Err(e) => {
            let words = refusal_words(&e);
            render_inbox(&state, &session, e.status, Some(Banner::Refused(words))).await
        }
    }
}

/// A refusal in words a reviewer understands, ending with "nothing was recorded".
fn refusal_words(e: &ApiError) -> String {
    let b = &e.body;
    let what = match b.error.as_str() {
        "already_decided" => format!(
            "Already {} by {}{} at {}.",
            b.decision.as_deref().unwrap_or("decided"),
            b.actor.as_deref().unwrap_or("someone"),
            b.role
                .as_deref()
                .map(|r| format!(" (as {r})"))
                .unwrap_or_default(),
            b.decided_ms.map(utc).unwrap_or_default()
        ),
        "not_allowed" => format!(
            "Not allowed: {} is not among this gate's approvers.",
            b.actor.as_deref().unwrap_or("you")
        ),
        "agent_not_allowed" => "Not allowed: agents may not decide approvals.".to_string(),
        "action_changed" => {
            "The proposed action changed since this page was loaded; review the new proposal."
                .to_string()
        }
        "expired" => "This approval expired before the decision.".to_string(),
        "unknown_gate" => "No such approval gate.".to_string(),
        "reason_required" => "A rejection needs a reason.".to_string(),
        "edit_not_allowed" | "bad_request" => format!("Refused: {}.", b.message),
        _ => format!("Refused: {}.", b.message),
    };
    format!("{what} Nothing was recorded.")
}

/// Cost as the reviewer reads it: money when the config names a currency.
fn cost_text(state: &AdminState, cost: u64) -> String {
    match &state.config.currency {
        Some(currency) => format!("{currency} {}.{:02}", grouped(cost / 100), cost % 100),
        None => grouped(cost),
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn risk_class(risk: RiskTier) -> &'static str {
    match risk {
        RiskTier::Low => "risk low",
        RiskTier::Medium => "risk medium",
        RiskTier::High => "risk high",
        RiskTier::Critical => "risk critical",
    }
}

async fn render_inbox(
    state: &AdminState,
    session: &SessionView,
    status: StatusCode,
    banner: Option<Banner>,
) -> Response {
    let (pending, past) = match (
        inbox(state, None).await,
        state.engine.past_decisions(PAST_DECISIONS_SHOWN).await,
    ) {
        (Ok(pending), Ok(past)) => (pending, past),
        (Err(e), _) => return e.into_response(),
        (_, Err(e)) => return ApiError::from(e).into_response(),
    };
    let now_ms = state.now_ms();
    let mut cards = Vec::with_capacity(pending.len());
    for p in &pending {
        let shown = match state.engine.history(p.run).await {
            Ok(history) => timeline(&history),
            Err(e) => format!("(the run's history cannot be read: {e})"),
        };
        cards.push(card(state, session, p, &shown, now_ms));
    }
    let actor = &session.actor;
    let body = html! {
        header.top {
            div {
                strong { "annal · approvals" }
                span.muted { " · " (pending.len()) " waiting" }
            }
            form.inline method="post" action="/logout" {
                span.who { (actor.id) @if !actor.roles.is_empty() { " (" (actor.roles.join(", ")) ")" } @if actor.is_agent() { " · agent" } }
                input type="hidden" name="csrf" value=(session.csrf);
                button.link type="submit" { "Log out" }
            }
        }
        main {
            @match &banner {
                Some(Banner::Done(text)) => p.banner.done role="status" { (text) },
                Some(Banner::Refused(text)) => p.banner.refused role="alert" { (text) },
                None => {},
            }
            section aria-label="Waiting for a decision" {
                h1 { "Waiting for a decision" }
                @if cards.is_empty() { p.muted { "Nothing waits for a decision." } }
                @for card in &cards { (card) }
            }
            section aria-label="Past decisions" {
                h2 { "Past decisions" }
                @if past.is_empty() { p.muted { "No decisions yet." } }
                @else {
                    div.scroll {
                        table.past {
                            thead { tr { th { "When" } th { "Action" } th { "Decision" } th { "Who" } th { "Role" } th { "Why" } } }
                            tbody {
                                @for d in &past {
                                    tr {
                                        td { time datetime=(utc(d.decided_ms)) { (utc(d.decided_ms)) } }
                                        td { (d.action) br; span.muted { (d.workflow) " · gate " (short_id(&d.gate.to_string())) } }
                                        td { span class=(format!("verdict {}", d.decision)) { (d.decision) } }
                                        td { (d.actor.as_deref().unwrap_or("-")) }
                                        td { (d.role.as_deref().unwrap_or("-")) }
                                        td { (d.reason.as_deref().unwrap_or("-")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(status, "Approvals", body, Vec::new())
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One compact card: what is asked, why it is safe or not, how to undo it, who may decide,
/// how long is left, the run so far, and the decision form.
fn card(
    state: &AdminState,
    session: &SessionView,
    p: &PendingApproval,
    timeline: &str,
    now_ms: u64,
) -> Markup {
    let decides_as = (!session.actor.is_agent())
        .then(|| session.actor.decides_as(&p.approvers))
        .flatten();
    let flags: Vec<&annal::CheckResult> = p.failed_checks().collect();
    let countdown = p.deadline_ms.map(|d| {
        if d > now_ms {
            format!("expires in {}", duration_ms(d - now_ms))
        } else {
            "deadline passed".to_string()
        }
    });
    let gate = p.gate.to_string();
    html! {
        article.card id=(format!("gate-{gate}")) data-gate=(gate) {
            header {
                h3.action { (p.action) }
                div.badges {
                    span class=(risk_class(p.risk)) { "Risk " (format!("{:?}", p.risk)) }
                    @if let Some(cost) = p.cost { span.amount { "Amount " (cost_text(state, cost)) } }
                }
            }
            p.meta {
                span { "Waiting " (duration_ms(p.age_ms)) }
                " · "
                span.countdown { (countdown.as_deref().unwrap_or("no deadline")) }
                @if p.reminders > 0 { " · " (p.reminders) " reminders sent" }
                " · " (p.workflow) " · run " code { (short_id(&p.run.to_string())) }
            }
            @if !flags.is_empty() {
                ul.flags aria-label="Risk flags" {
                    @for c in &flags { li { strong { (c.name) } ": " (c.detail) } }
                }
            }
            dl {
                dt { "Evidence" }
                dd { @if p.evidence.is_empty() { "none" } @else { ul { @for e in &p.evidence { li { (e) } } } } }
                dt { "Checks" }
                dd {
                    @if p.checks.is_empty() { "none" }
                    @else {
                        ul.checks { @for c in &p.checks {
                            li class=(if c.passed { "pass" } else { "fail" }) {
                                (if c.passed { "passed" } else { "FAILED" }) " " strong { (c.name) } ": " (c.detail)
                            }
                        } }
                    }
                }
                dt { "Rollback" }
                dd.rollback { (p.rollback.as_deref().unwrap_or("none given")) }
                dt { "Approvers" }
                dd { @if p.approvers.is_empty() { "anyone" } @else { (p.approvers.join(", ")) } }
                dt { "On expiry" }
                dd { (format!("{:?}", p.on_expiry)) }
                dt { "Action digest" }
                dd { code.digest { (p.digest.to_string()) } }
            }
            details open {
                summary { "Run timeline so far" }
                pre { (timeline) }
            }
            form.decide method="post" action="/inbox/decide" {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="gate" value=(gate);
                input type="hidden" name="digest" value=(p.digest.to_string());
                label for=(format!("reason-{gate}")) { "Reason (required to reject)" }
                textarea id=(format!("reason-{gate}")) name="reason" rows="2" {}
                @if let Some(editable) = &p.editable {
                    label for=(format!("edits-{gate}")) { "Edits (JSON; only these fields)" }
                    textarea id=(format!("edits-{gate}")) name="edits" rows="2" placeholder=(editable.to_string()) {}
                }
                div.buttons {
                    button.approve type="submit" name="verdict" value="approve" { "Approve" }
                    button.reject type="submit" name="verdict" value="reject" { "Reject" }
                }
                @match &decides_as {
                    Some(role) => p.muted.role { "You decide as " (role) "." },
                    None => p.cannot { "You are not among this gate's approvers: a decision would be refused." },
                }
            }
        }
    }
}
