//! The reviewers' inbox while the service runs: an engine with gated refunds, the admin
//! server (`annal-admin`) on loopback, and its URL and a login token printed.
//!
//! ```sh
//! cargo run --example inbox            # serve until Ctrl-C; open the printed URL
//! cargo run --example inbox -- --demo  # approve through the API, show the result, exit
//! ```
//!
//! The refund gate declares its amount editable (`ctx.approval_editable`), so the card has
//! an edit field; the decision comes back to the workflow with the reviewer's edits.

use std::time::Duration;

use annal::{
    ApprovalFilter, ApprovalRequest, CheckResult, Ctx, Decision, Engine, OnExpiry, RiskTier,
    StepClass, WorkflowError,
};
use annal_admin::{AdminConfig, PrincipalKind};
use annal_examples::{section, trace_from_env, wait_for};

/// A refund that a finance reviewer approves (possibly lowering the amount) before it is
/// issued.
async fn refund(ctx: Ctx, (order, amount): (String, u64)) -> Result<String, WorkflowError> {
    let over_limit = amount > 10_000;
    let request = ApprovalRequest {
        action: format!("Refund {amount} cents to order {order}"),
        evidence: vec![
            format!("order:{order} delivered 9 days late"),
            "ticket:T-4411".into(),
        ],
        risk: if over_limit {
            RiskTier::High
        } else {
            RiskTier::Low
        },
        cost: Some(amount),
        checks: vec![
            CheckResult {
                name: "within_policy".into(),
                passed: true,
                detail: "late-delivery refund policy v3".into(),
            },
            CheckResult {
                name: "under_auto_limit".into(),
                passed: !over_limit,
                detail: "auto-approval limit is 100.00 USD".into(),
            },
        ],
        rollback: Some("void the refund through the payments API within 24h".into()),
        deadline_ms: Some(2 * 86_400_000),
        approvers: vec!["role:finance".into()],
        on_expiry: OnExpiry::Escalate,
    };
    let mut editable = serde_json::Map::new();
    editable.insert("amount".into(), amount.into());
    match ctx.approval_editable(request, editable).await? {
        Decision::Approved { actor, edits, .. } => {
            let amount = edits.and_then(|e| e["amount"].as_u64()).unwrap_or(amount);
            ctx.step("issue_refund")
                .class(StepClass::Write)
                .run(move |attempt| {
                    let actor = actor.clone();
                    async move {
                        Ok(format!(
                            "refunded {amount} cents (approved by {actor}, key {})",
                            attempt.idempotency_key
                        ))
                    }
                })
                .await
                .map_err(Into::into)
        }
        Decision::Rejected { reason, .. } => Ok(format!("not refunded: {reason}")),
        Decision::Expired => Ok("expired".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    trace_from_env();
    let demo =
        std::env::args().any(|a| a == "--demo") || std::env::var_os("ANNAL_INBOX_DEMO").is_some();
    let dir = tempfile::tempdir()?;
    let engine = Engine::builder()
        .path(dir.path().join("db"))
        .register("refund", 1, refund)
        .open()
        .await?;

    section("two refunds wait for a finance reviewer");
    let big = engine
        .start::<_, String>("refund", &("A-1001".to_string(), 42_000u64))
        .await?;
    engine
        .start::<_, String>("refund", &("A-1002".to_string(), 4_900u64))
        .await?;
    let pending = wait_for(
        "both gates in the inbox",
        Duration::from_secs(10),
        || async {
            let pending = engine
                .pending_approvals(&ApprovalFilter::default())
                .await
                .ok()?;
            (pending.len() == 2).then_some(pending)
        },
    )
    .await;
    for p in &pending {
        println!("  gate {}: {} (risk {:?})", p.gate, p.action, p.risk);
    }

    section("the admin server");
    // A throwaway token for this demo; a service keeps only its hash in its config file
    // (`annal admin new-token`).
    let token = annal_admin::new_token()?;
    let token_file = dir.path().join("dana.token");
    std::fs::write(&token_file, &token)?;
    let config = AdminConfig {
        currency: Some("USD".into()),
        ..AdminConfig::default()
    }
    .with_principal("dana", &["finance"], PrincipalKind::Human, &token);
    let served = annal_admin::serve(engine.clone(), config).await?;
    println!("  inbox:  {}/inbox", served.url());
    println!("  log in as dana (finance) with the demo token: {token}");
    println!(
        "  CLI:    annal --url {} --token-file {} approvals",
        served.url(),
        token_file.display()
    );

    if demo {
        section("demo: dana approves the large refund through the API, capped at 400.00");
        let url = served.url();
        let gate = pending
            .iter()
            .find(|p| p.run == big.run_id())
            .map(|p| (p.gate.to_string(), p.digest.to_string()))
            .ok_or("the large refund's gate")?;
        let answer = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let body = serde_json::json!({
                "verdict": "approve",
                "reason": "late delivery; capped at the order total",
                "action_digest": gate.1,
                "edits": { "amount": 40_000 },
            });
            let mut response = ureq::post(format!("{url}/api/v1/approvals/{}/decision", gate.0))
                .header("authorization", format!("Bearer {token}"))
                .send_json(&body)
                .map_err(|e| e.to_string())?;
            response
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())
        })
        .await??;
        println!("  answer: {answer}");
        let out = tokio::time::timeout(Duration::from_secs(10), big.result()).await??;
        println!("  run {}: {out}", big.run_id());
        assert!(
            out.starts_with("refunded 40000 cents (approved by dana"),
            "{out}"
        );
        let past = engine.past_decisions(1).await?;
        let d = past.first().ok_or("a past decision")?;
        println!(
            "  history: {} by {} as {} - {}",
            d.decision,
            d.actor.as_deref().unwrap_or("-"),
            d.role.as_deref().unwrap_or("-"),
            d.reason.as_deref().unwrap_or("-")
        );
        assert_eq!(d.role.as_deref(), Some("role:finance"));
    } else {
        println!("\nserving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    served.shutdown().await?;
    engine.shutdown().await;
    Ok(())
}
