//! The admin API and the inbox page, called in-process: every refusal has its typed body and
//! HTTP status and leaves the history unchanged; page sessions and CSRF; operator actions;
//! tokens never reach the logs.

mod support;

use std::time::Duration;

use annal::OnExpiry;
use axum::http::{Method, StatusCode};
use serde_json::json;
use support::*;

/// What is tried, with which token, where, what is sent, and the status and code expected.
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    String,
    serde_json::Value,
    StatusCode,
    &'a str,
);

fn decision(gate: &str) -> String {
    format!("/api/v1/approvals/{gate}/decision")
}

#[tokio::test(start_paused = true)]
async fn every_api_refusal_is_typed_and_writes_nothing() {
    let w = world().await;
    let (run, card) = w.gated_refund(42_000, OnExpiry::Escalate).await;
    let gate = card.gate.to_string();
    let digest = card.digest.to_string();
    let before = w.engine.history(run).await.unwrap();
    let approve =
        json!({ "verdict": "approve", "reason": "within policy", "action_digest": digest });

    let cases: Vec<Case<'_>> = vec![
        (
            "no credentials",
            None,
            decision(&gate),
            approve.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "bad token",
            Some("not-a-token-of-anyone-at-all"),
            decision(&gate),
            approve.clone(),
            StatusCode::UNAUTHORIZED,
            "bad_token",
        ),
        (
            "agent",
            Some(BOT),
            decision(&gate),
            approve.clone(),
            StatusCode::FORBIDDEN,
            "agent_not_allowed",
        ),
        (
            "not an approver",
            Some(LEE),
            decision(&gate),
            approve.clone(),
            StatusCode::FORBIDDEN,
            "not_allowed",
        ),
        (
            "stale digest",
            Some(DANA),
            decision(&gate),
            json!({ "verdict": "approve", "reason": "ok", "action_digest": "00".repeat(32) }),
            StatusCode::CONFLICT,
            "action_changed",
        ),
        (
            "no digest",
            Some(DANA),
            decision(&gate),
            json!({ "verdict": "approve", "reason": "ok" }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown gate",
            Some(DANA),
            decision("9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a"),
            approve.clone(),
            StatusCode::NOT_FOUND,
            "unknown_gate",
        ),
        (
            "reject without reason",
            Some(DANA),
            decision(&gate),
            json!({ "verdict": "reject", "reason": " ", "action_digest": digest }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
        ),
        (
            "edits on a plain gate",
            Some(DANA),
            decision(&gate),
            json!({ "verdict": "approve", "reason": "ok", "action_digest": digest, "edits": { "amount": 1 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "edit_not_allowed",
        ),
        (
            "bad verdict",
            Some(DANA),
            decision(&gate),
            json!({ "verdict": "maybe", "reason": "ok", "action_digest": digest }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, token, uri, body, status, code) in cases {
        let reply = w.api(Method::POST, &uri, token, Some(body)).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert_eq!(reply.json()["error"], code, "{what}: {}", reply.body);
        assert!(
            !reply.json()["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
        assert_eq!(
            w.engine.history(run).await.unwrap(),
            before,
            "{what}: nothing written"
        );
    }
    let stale = w
        .api(
            Method::POST,
            &decision(&gate),
            Some(DANA),
            Some(json!({ "verdict": "approve", "reason": "ok", "action_digest": "11".repeat(32) })),
        )
        .await
        .json();
    assert_eq!(
        stale["found_digest"], digest,
        "the body names the gate's digest"
    );

    // The first decision wins, durable before the answer; the run completes.
    let ok = w
        .api(
            Method::POST,
            &decision(&gate),
            Some(DANA),
            Some(approve.clone()),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let ok = ok.json();
    assert_eq!(
        (
            ok["actor"].as_str(),
            ok["role"].as_str(),
            ok["decision"].as_str()
        ),
        (Some("dana"), Some("role:finance"), Some("approved"))
    );
    let out = w.engine.handle::<String>(run).result().await.unwrap();
    assert_eq!(out, "refunded 42000 (approved by dana)");
    let decided = w.engine.history(run).await.unwrap();

    // A second decision: already decided, by whom, under which role, when; nothing written.
    let again = w
        .api(Method::POST, &decision(&gate), Some(DANA), Some(json!({ "verdict": "reject", "reason": "changed my mind", "action_digest": digest })))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let body = again.json();
    assert_eq!(body["error"], "already_decided");
    assert_eq!(body["actor"], "dana");
    assert_eq!(body["role"], "role:finance");
    assert_eq!(body["decision"], "approved");
    assert_eq!(body["decided_ms"], ok["decided_ms"]);
    assert_eq!(w.engine.history(run).await.unwrap(), decided);
    let view = w
        .api(
            Method::GET,
            &format!("/api/v1/approvals/{gate}"),
            Some(DANA),
            None,
        )
        .await;
    assert_eq!(
        (view.status, view.json()["error"].clone()),
        (StatusCode::CONFLICT, json!("already_decided"))
    );

    // The history of decisions says who, role, when, why.
    let past = w
        .api(Method::GET, "/api/v1/decisions", Some(LEE), None)
        .await
        .json();
    assert_eq!(past[0]["actor"], "dana");
    assert_eq!(past[0]["role"], "role:finance");
    assert_eq!(past[0]["reason"], "within policy");

    // An expired gate.
    let (late_run, late) = w.gated_refund(500, OnExpiry::Reject).await;
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS)).await;
    let late_before = w.engine.history(late_run).await.unwrap();
    let reply = w
        .api(Method::POST, &decision(&late.gate.to_string()), Some(DANA), Some(json!({ "verdict": "approve", "reason": "late", "action_digest": late.digest.to_string() })))
        .await;
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (StatusCode::GONE, json!("expired"))
    );
    assert_eq!(w.engine.history(late_run).await.unwrap(), late_before);
}

#[tokio::test(start_paused = true)]
async fn the_approvals_list_carries_everything_the_gate_recorded() {
    let w = world().await;
    let (run, card) = w.gated_refund(42_000, OnExpiry::Escalate).await;
    let list = w
        .api(Method::GET, "/api/v1/approvals", Some(LEE), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    let p = &list.json()[0];
    assert_eq!(p["gate"], card.gate.to_string());
    assert_eq!(p["run"], run.to_string());
    assert_eq!(p["cost"], 42_000);
    assert_eq!(p["risk"], "High");
    assert_eq!(p["risk_flags"], json!(["under_auto_limit"]));
    assert_eq!(p["checks"][1]["passed"], false);
    assert_eq!(p["rollback"], "void refund via payments API within 24h");
    assert_eq!(p["approvers"], json!(["role:finance"]));
    assert_eq!(p["deadline_ms"], 1_700_000_000_000u64 + 3 * DAY_MS);
    assert_eq!(p["action_digest"], card.digest.to_string());
    assert_eq!(
        p["decides_as"],
        serde_json::Value::Null,
        "lee may not decide it"
    );
    let mine = w
        .api(Method::GET, "/api/v1/approvals?mine=true", Some(LEE), None)
        .await
        .json();
    assert_eq!(mine, json!([]));
    let bots = w
        .api(Method::GET, "/api/v1/approvals?mine=true", Some(BOT), None)
        .await
        .json();
    assert_eq!(
        bots,
        json!([]),
        "an agent with the finance role decides nothing"
    );
    let danas = w
        .api(Method::GET, "/api/v1/approvals?mine=true", Some(DANA), None)
        .await
        .json();
    assert_eq!(danas[0]["gate"], card.gate.to_string());
    let one = w
        .api(
            Method::GET,
            &format!("/api/v1/approvals/{}", card.gate),
            Some(DANA),
            None,
        )
        .await
        .json();
    assert_eq!(one["decides_as"], "role:finance");
    assert!(one["timeline"]
        .as_str()
        .unwrap()
        .contains("ApprovalRequested"));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let runs = w
        .api(
            Method::GET,
            "/api/v1/runs?status=parked&workflow=refund",
            Some(LEE),
            None,
        )
        .await
        .json();
    assert_eq!(runs[0]["run"], run.to_string());
    let none = w
        .api(
            Method::GET,
            "/api/v1/runs?status=completed",
            Some(LEE),
            None,
        )
        .await
        .json();
    assert_eq!(none, json!([]));
    let young = w
        .api(
            Method::GET,
            "/api/v1/runs?min_age_ms=86400000",
            Some(LEE),
            None,
        )
        .await
        .json();
    assert_eq!(young, json!([]), "the run is younger than a day");
    let bad = w
        .api(Method::GET, "/api/v1/runs?status=sleepy", Some(LEE), None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let view = w
        .api(Method::GET, &format!("/api/v1/runs/{run}"), Some(LEE), None)
        .await
        .json();
    assert!(view["rendered"].as_str().unwrap().contains("refund v1"));
    assert!(view["timeline"].as_str().unwrap().contains("RunStarted"));
    let unknown = w
        .api(
            Method::GET,
            "/api/v1/runs/01890000-0000-7000-8000-000000000000",
            Some(LEE),
            None,
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.json()["error"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_run"))
    );
    let report = w
        .api(Method::GET, "/api/v1/report", Some(LEE), None)
        .await
        .json();
    assert_eq!(report["report"]["approvals"]["pending"], 1);
    let me = w
        .api(Method::GET, "/api/v1/whoami", Some(BOT), None)
        .await
        .json();
    assert_eq!(
        (me["actor"].as_str(), me["kind"].as_str()),
        (Some("refund-bot"), Some("agent"))
    );
}

#[tokio::test(start_paused = true)]
async fn operator_actions_need_an_operator_a_reason_and_an_escalated_run() {
    let w = world().await;
    let (run, _) = w.gated_refund(100, OnExpiry::Escalate).await;
    let uri = format!("/api/v1/runs/{run}/operate");
    let retry = json!({ "action": "retry", "reason": "reviewer was on leave" });
    let refused = w
        .api(Method::POST, &uri, Some(OLGA), Some(retry.clone()))
        .await;
    assert_eq!(
        (refused.status, refused.json()["error"].clone()),
        (StatusCode::CONFLICT, json!("action_refused")),
        "not escalated yet"
    );
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS + 1_000)).await;
    assert_eq!(
        w.engine.status(run).await.unwrap().status,
        annal::RunStatus::Escalated
    );
    let before = w.engine.history(run).await.unwrap();
    for (token, body, status, code) in [
        (
            None,
            retry.clone(),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Some(DANA),
            retry.clone(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (Some(BOT), retry.clone(), StatusCode::FORBIDDEN, "forbidden"),
        (
            Some(OLGA),
            json!({ "action": "retry", "reason": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
        ),
        (
            Some(OLGA),
            json!({ "action": "skip", "reason": "x" }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            Some(OLGA),
            json!({ "action": "resolve-done", "value": "x", "reason": "x" }),
            StatusCode::CONFLICT,
            "action_refused",
        ),
        (
            Some(OLGA),
            json!({ "action": "dance", "reason": "x" }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let reply = w.api(Method::POST, &uri, token, Some(body.clone())).await;
        assert_eq!(
            (reply.status, reply.json()["error"].clone()),
            (status, json!(code)),
            "{body}: {}",
            reply.body
        );
        assert_eq!(
            w.engine.history(run).await.unwrap(),
            before,
            "{body}: nothing written"
        );
    }
    let done = w.api(Method::POST, &uri, Some(OLGA), Some(retry)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.json()["actor"], "olga");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reopened = w
        .api(Method::GET, "/api/v1/approvals", Some(DANA), None)
        .await
        .json();
    assert_eq!(
        reopened[0]["run"],
        run.to_string(),
        "the gate is open again"
    );
    let abort = w
        .api(
            Method::POST,
            &uri,
            Some(OLGA),
            Some(json!({ "action": "abort", "reason": "customer left" })),
        )
        .await;
    assert_eq!(
        abort.status,
        StatusCode::CONFLICT,
        "no longer escalated: {}",
        abort.body
    );
}

#[tokio::test(start_paused = true)]
async fn the_page_needs_a_session_and_a_csrf_token_and_refuses_with_nothing_written() {
    let w = world().await;
    let (run, card) = w.gated_refund(42_000, OnExpiry::Escalate).await;
    let gate = card.gate.to_string();
    let digest = card.digest.to_string();
    let before = w.engine.history(run).await.unwrap();

    // Not logged in: sent to the login page.
    let anonymous = w.get("/inbox", "").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers["location"], "/login");
    let anonymous_post = w
        .form(
            "/inbox/decide",
            "",
            &[
                ("gate", &gate),
                ("digest", &digest),
                ("verdict", "approve"),
                ("reason", "x"),
            ],
            &[],
        )
        .await;
    assert_eq!(anonymous_post.status, StatusCode::SEE_OTHER);

    // Login: the form's one-time value must come with its cookie; the token must be known.
    let form = w.get("/login", "").await;
    let nonce_cookie = set_cookie(&form.headers, "annal_login").unwrap();
    let nonce = hidden(&form.body, "nonce").unwrap();
    let forged = w
        .form("/login", "", &[("token", DANA), ("nonce", &nonce)], &[])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "login CSRF");
    let wrong = w
        .form(
            "/login",
            &nonce_cookie,
            &[
                ("token", "guess-guess-guess-guess-guess"),
                ("nonce", &nonce),
            ],
            &[],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&wrong.headers, "annal_session").is_none());
    let ok = w
        .form(
            "/login",
            &nonce_cookie,
            &[("token", DANA), ("nonce", &nonce)],
            &[],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    let header = set_cookie_header(&ok.headers, "annal_session").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(header.contains(attr), "{header}");
    }
    assert!(!header.contains("Secure"), "not configured for TLS");
    let session = set_cookie(&ok.headers, "annal_session").unwrap();

    // The inbox card shows what the gate recorded.
    let inbox = w.get("/inbox", &session).await;
    assert_eq!(inbox.status, StatusCode::OK);
    for text in [
        "Refund 42000 cents to order A-1001",
        "USD 420.00",
        "under_auto_limit",
        "void refund via payments API within 24h",
        "role:finance",
        "expires in",
        "order:A-1001 delivered late",
        "Run timeline",
    ] {
        assert!(inbox.body.contains(text), "{text} missing");
    }
    assert!(inbox.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let csrf = hidden(&inbox.body, "csrf").unwrap();

    let missing = w
        .decide_on_page(&session, "", &card, "approve", "ok", &[])
        .await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert!(missing.body.contains("CSRF"), "{}", missing.body);
    let wrong = w
        .decide_on_page(&session, &"0".repeat(64), &card, "approve", "ok", &[])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let cross = w
        .decide_on_page(
            &session,
            &csrf,
            &card,
            "approve",
            "ok",
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let blank = w
        .decide_on_page(&session, &csrf, &card, "reject", "", &[])
        .await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        blank
            .body
            .contains("A rejection needs a reason. Nothing was recorded."),
        "{}",
        blank.body
    );
    assert_eq!(
        w.engine.history(run).await.unwrap(),
        before,
        "nothing written on refusal"
    );

    // Another reviewer without the role is refused in words.
    let (lee, lee_csrf) = w.login(LEE).await;
    let refused = w
        .decide_on_page(&lee, &lee_csrf, &card, "approve", "looks fine", &[])
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused
            .body
            .contains("Not allowed: lee is not among this gate"),
        "{}",
        refused.body
    );
    assert_eq!(w.engine.history(run).await.unwrap(), before);

    // A session past its expiry is sent to log in again, and nothing is written.
    let ttl_ms = support::config().session_ttl_secs * 1_000;
    let (old, old_csrf) = w.login(DANA).await;
    tokio::time::sleep(Duration::from_millis(ttl_ms)).await;
    let expired = w
        .decide_on_page(&old, &old_csrf, &card, "approve", "ok", &[])
        .await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER);
    assert_eq!(expired.headers["location"], "/login?expired=1");
    assert_eq!(w.engine.history(run).await.unwrap(), before);
}

#[tokio::test(start_paused = true)]
async fn a_page_decision_is_recorded_with_role_and_shown_in_the_history() {
    let w = world().await;
    let (run, card) = w.gated_refund(42_000, OnExpiry::Escalate).await;
    let (session, csrf) = w.login(DANA).await;
    let done = w
        .decide_on_page(
            &session,
            &csrf,
            &card,
            "approve",
            "late delivery, policy v3",
            &[],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(done.body.contains("Approved: gate"), "{}", done.body);
    assert!(done.body.contains("by dana as role:finance"));
    assert_eq!(
        w.engine.handle::<String>(run).result().await.unwrap(),
        "refunded 42000 (approved by dana)"
    );
    let inbox = w.get("/inbox", &session).await.body;
    assert!(inbox.contains("Nothing waits for a decision."));
    assert!(
        inbox.contains("late delivery, policy v3"),
        "the past decision, with why"
    );
    // A stale form (the gate was decided meanwhile) says by whom and when.
    let again = w
        .decide_on_page(&session, &csrf, &card, "reject", "no", &[])
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again
            .body
            .contains("Already approved by dana (as role:finance) at 2023-11-14T22:13:21.000Z"),
        "{}",
        again.body
    );
}

/// A writer the test can read back: what tracing printed.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_session_ids_and_csrf_tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    // While only one subscriber is registered, tracing caches a call site's interest from the
    // firing thread's subscriber alone; a concurrent test with none would switch events off for
    // this one. A second, binary-long subscriber makes tracing ask all of them.
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let w = world().await;
    let (run, card) = w.gated_refund(42_000, OnExpiry::Escalate).await;
    let (session, csrf) = w.login(DANA).await;
    let bad = w
        .form(
            "/inbox/decide",
            &session,
            &[("csrf", "bogus"), ("gate", &card.gate.to_string())],
            &[],
        )
        .await;
    assert_eq!(bad.status, StatusCode::FORBIDDEN);
    let done = w
        .decide_on_page(&session, &csrf, &card, "approve", "ok", &[])
        .await;
    assert_eq!(done.status, StatusCode::OK);
    let _ = w
        .api(Method::GET, "/api/v1/approvals", Some(LEE), None)
        .await;
    let _ = w
        .api(
            Method::GET,
            "/api/v1/approvals",
            Some("wrong-token-wrong-token-wrong"),
            None,
        )
        .await;
    w.engine.handle::<String>(run).result().await.unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("page session opened") && logs.contains("decision recorded"),
        "the capture works: {logs}"
    );
    let session_id = session.split_once('=').unwrap().1;
    for secret in [
        DANA,
        LEE,
        "wrong-token-wrong-token-wrong",
        session_id,
        &csrf,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
    }
}

#[tokio::test]
async fn serve_binds_loopback_and_refuses_other_addresses_unless_allowed() {
    let w = world().await;
    let open = annal_admin::AdminConfig {
        bind: "0.0.0.0:0".parse().unwrap(),
        ..support::config()
    };
    assert!(matches!(
        annal_admin::serve(w.engine.clone(), open).await,
        Err(annal_admin::ServeError::NonLoopback { .. })
    ));
    let served = annal_admin::serve(w.engine.clone(), support::config())
        .await
        .unwrap();
    assert!(served.local_addr().ip().is_loopback());
    served.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn edits_are_offered_and_taken_only_where_the_gate_declares_them() {
    let w = world().await;
    let handle = w
        .engine
        .start::<_, String>("refund_editable", &42_000u64)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let list = w
        .api(Method::GET, "/api/v1/approvals", Some(DANA), None)
        .await
        .json();
    assert_eq!(list[0]["editable"], json!({ "amount": 42_000 }));
    let gate = list[0]["gate"].as_str().unwrap().to_string();
    let digest = list[0]["action_digest"].as_str().unwrap().to_string();
    let (session, _) = w.login(DANA).await;
    let page = w.get("/inbox", &session).await.body;
    assert!(
        page.contains("name=\"edits\""),
        "the card has an edit field"
    );
    let before = w.engine.history(handle.run_id()).await.unwrap();
    for (edits, status, code) in [
        (
            json!({ "iban": "DE00" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "edit_not_allowed",
        ),
        (
            json!({ "amount": "all" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "edit_not_allowed",
        ),
    ] {
        let reply = w
            .api(Method::POST, &decision(&gate), Some(DANA), Some(json!({ "verdict": "approve", "reason": "x", "action_digest": digest, "edits": edits })))
            .await;
        assert_eq!(
            (reply.status, reply.json()["error"].clone()),
            (status, json!(code))
        );
    }
    let reject_with_edits = w
        .api(Method::POST, &decision(&gate), Some(DANA), Some(json!({ "verdict": "reject", "reason": "x", "action_digest": digest, "edits": { "amount": 1 } })))
        .await;
    assert_eq!(reject_with_edits.status, StatusCode::BAD_REQUEST);
    assert_eq!(w.engine.history(handle.run_id()).await.unwrap(), before);
    let ok = w
        .api(Method::POST, &decision(&gate), Some(DANA), Some(json!({ "verdict": "approve", "reason": "capped", "action_digest": digest, "edits": { "amount": 40_000 } })))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(handle.result().await.unwrap(), "refunded 40000");
}
