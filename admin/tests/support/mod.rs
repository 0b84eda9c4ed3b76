//! What the admin tests share: a refund workflow with a gate, an engine on a simulated
//! store, principals with known tokens, and a way to call the router in-process.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use annal::{
    ApprovalRequest, CheckResult, Ctx, Decision, Engine, OnExpiry, RiskTier, RunId, WorkflowError,
};
use annal_admin::{Admin, AdminConfig, PrincipalKind};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const DAY_MS: u64 = 86_400_000;
pub const DANA: &str = "dana-finance-token-0123456789abcdef";
pub const LEE: &str = "lee-support-token-0123456789abcdef";
pub const BOT: &str = "refund-bot-token-0123456789abcdef";
pub const OLGA: &str = "olga-operator-token-0123456789abcd";

/// The gate a refund asks for: everything a reviewer needs, one failing check.
pub fn refund_request(amount: u64, on_expiry: OnExpiry) -> ApprovalRequest {
    ApprovalRequest {
        action: format!("Refund {amount} cents to order A-1001"),
        evidence: vec!["order:A-1001 delivered late".into(), "ticket:T-77".into()],
        risk: RiskTier::High,
        cost: Some(amount),
        checks: vec![
            CheckResult {
                name: "within_policy".into(),
                passed: true,
                detail: "late delivery refund policy v3".into(),
            },
            CheckResult {
                name: "under_auto_limit".into(),
                passed: false,
                detail: "above the 100 USD auto-approval limit".into(),
            },
        ],
        rollback: Some("void refund via payments API within 24h".into()),
        deadline_ms: Some(3 * DAY_MS),
        approvers: vec!["role:finance".into()],
        on_expiry,
    }
}

/// A refund that waits for approval, then issues it.
pub async fn refund(
    ctx: Ctx,
    (amount, on_expiry): (u64, OnExpiry),
) -> Result<String, WorkflowError> {
    match ctx.approval(refund_request(amount, on_expiry)).await? {
        Decision::Approved { actor, .. } => {
            let done: String = ctx
                .step("issue_refund")
                .run(move |_| {
                    let actor = actor.clone();
                    async move { Ok(format!("refunded {amount} (approved by {actor})")) }
                })
                .await?;
            Ok(done)
        }
        Decision::Rejected { reason, .. } => Ok(format!("not refunded: {reason}")),
        Decision::Expired => Ok("expired".into()),
    }
}

/// A refund whose amount the reviewer may lower before approving.
pub async fn refund_editable(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let mut editable = serde_json::Map::new();
    editable.insert("amount".into(), amount.into());
    match ctx
        .approval_editable(refund_request(amount, OnExpiry::Escalate), editable)
        .await?
    {
        Decision::Approved { edits, .. } => {
            let amount = edits.and_then(|e| e["amount"].as_u64()).unwrap_or(amount);
            Ok(format!("refunded {amount}"))
        }
        Decision::Rejected { reason, .. } => Ok(format!("not refunded: {reason}")),
        Decision::Expired => Ok("expired".into()),
    }
}

pub fn config() -> AdminConfig {
    AdminConfig {
        currency: Some("USD".into()),
        operator_roles: vec!["operator".into()],
        ..AdminConfig::default()
    }
    .with_principal("dana", &["finance"], PrincipalKind::Human, DANA)
    .with_principal("lee", &["support"], PrincipalKind::Human, LEE)
    .with_principal("refund-bot", &["finance"], PrincipalKind::Agent, BOT)
    .with_principal("olga", &["operator"], PrincipalKind::Human, OLGA)
}

pub struct World {
    pub engine: Engine,
    pub admin: Admin,
    pub clock: Arc<annal::clock::TokioClock>,
}

/// An engine on a simulated store with the refund workflow, and its admin surface.
pub async fn world() -> World {
    let clock = Arc::new(annal::clock::TokioClock::starting_at(1_700_000_000_000));
    let engine = Engine::builder()
        .store(Arc::new(annal_storage::SimStore::new()) as Arc<dyn annal_storage::LogStore>)
        .clock(Arc::clone(&clock) as Arc<dyn annal::clock::Clock>)
        .park_after_ms(60_000)
        .register("refund", 1, refund)
        .register("refund_editable", 1, refund_editable)
        .open()
        .await
        .unwrap();
    let admin = Admin::with_clock(
        engine.clone(),
        config(),
        Arc::clone(&clock) as Arc<dyn annal::clock::Clock>,
    )
    .unwrap();
    World {
        engine,
        admin,
        clock,
    }
}

impl World {
    /// Starts a refund and waits until its gate is in the inbox.
    pub async fn gated_refund(
        &self,
        amount: u64,
        on_expiry: OnExpiry,
    ) -> (RunId, annal::PendingApproval) {
        let run = self
            .engine
            .start::<_, String>("refund", &(amount, on_expiry))
            .await
            .unwrap()
            .run_id();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pending = self
            .engine
            .pending_approvals(&annal::ApprovalFilter::default())
            .await
            .unwrap();
        let card = pending.into_iter().find(|p| p.run == run).unwrap();
        (run, card)
    }

    pub async fn call(&self, req: Request<Body>) -> Reply {
        let response = self.admin.router().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// An API call with an optional bearer token and JSON body.
    pub async fn api(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                req = req.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.call(req.body(body).unwrap()).await
    }

    /// A form post with cookies.
    pub async fn form(
        &self,
        uri: &str,
        cookies: &str,
        fields: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Reply {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{}={}", k, urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookies);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.call(req.body(Body::from(body)).unwrap()).await
    }

    /// Submits a card's decision form of the page (with extra request headers).
    pub async fn decide_on_page(
        &self,
        session: &str,
        csrf: &str,
        card: &annal::PendingApproval,
        verdict: &str,
        reason: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let (gate, digest) = (card.gate.to_string(), card.digest.to_string());
        let fields = [
            ("csrf", csrf),
            ("gate", gate.as_str()),
            ("digest", digest.as_str()),
            ("verdict", verdict),
            ("reason", reason),
        ];
        self.form("/inbox/decide", session, &fields, extra).await
    }

    pub async fn get(&self, uri: &str, cookies: &str) -> Reply {
        let req = Request::builder().uri(uri).header("cookie", cookies);
        self.call(req.body(Body::empty()).unwrap()).await
    }

    /// Logs in through the page as the holder of `token`; returns the session cookie pair
    /// (`annal_session=...`) and the page's CSRF token.
    pub async fn login(&self, token: &str) -> (String, String) {
        let form = self.get("/login", "").await;
        let nonce_cookie = set_cookie(&form.headers, "annal_login").unwrap();
        let nonce = hidden(&form.body, "nonce").unwrap();
        let done = self
            .form(
                "/login",
                &nonce_cookie,
                &[("token", token), ("nonce", &nonce)],
                &[],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let session = set_cookie(&done.headers, "annal_session").unwrap();
        let inbox = self.get("/inbox", &session).await;
        assert_eq!(inbox.status, StatusCode::OK);
        let csrf = hidden(&inbox.body, "csrf").unwrap();
        (session, csrf)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `name=value` of the `Set-Cookie` header that sets `name`.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    set_cookie_header(headers, name).and_then(|v| v.split(';').next().map(str::to_string))
}

/// The full `Set-Cookie` header that sets `name`.
pub fn set_cookie_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// The value of the first hidden input named `name`.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    rest.split('"').next().map(str::to_string)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
