//! The durable support refund agent: evidence, a drafted recommendation, guardrail checks, a
//! human approval gate that survives an engine restart, a rejection that sends the agent back
//! to revise, an idempotent refund and a customer message that is never sent twice.
//!
//! A fragile refund agent reads the customer's message, asks a model, and sends the answer.
//! A durable one turns the work into a controlled sequence where every step is recorded:
//!
//! 1. evidence tools (order, payments, refund policy) are `Read` steps with timeouts and
//!    retries; the payments ledger fails once and is retried;
//! 2. the model drafts a recommendation (`Draft`), and guardrails are checked and recorded
//!    with `ctx.check` (evidence cited, refund window, amount within what was paid, no prior
//!    refund);
//! 3. low-value refunds under clear rules are approved by rule, with the rule recorded as a
//!    check: no human is asked;
//! 4. high-value ones wait for a finance reviewer (`ctx.approval`) who sees the proposed
//!    action, the evidence, risk, cost, the checks, the rollback path and the deadline. The
//!    wait is durable: the example restarts the engine while the run waits (the run is parked,
//!    nothing of it in memory), the reviewer rejects with a reason ("too high, offer 50%"),
//!    the agent revises its draft and asks again through a new gate, and the reviewer approves
//!    with an edit to the customer message;
//! 5. the refund is a `Write` carrying its idempotency key: the payment gateway times out
//!    after the refund went through, the retry carries the same key, and exactly one refund
//!    exists;
//! 6. the customer message is `Irreversible`: the mail provider takes the message and the
//!    connection drops, and instead of sending again the reconcile hook asks the provider
//!    whether a message with that key exists.
//!
//! The example plays the reviewer itself and prints the full history at the end.
//!
//! ```text
//! cargo run --example refund_agent
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal::audit::StepEnd;
use annal::{
    Actor, ApprovalFilter, ApprovalRequest, Backoff, CheckResult, Ctx, Decision, Engine,
    EngineBuilder, Error, EventKind, FailureClass, GateId, OnExpiry, PendingApproval, Reconciled,
    RetryPolicy, RiskTier, RunStatus, StepClass, StepFailure, Verdict, WorkflowError,
};
use annal_examples::{count, print_history, record, section, step, usd, wait_for};
use serde::{Deserialize, Serialize};
use serde_json::json;

const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefundRequest {
    ticket: String,
    order_id: String,
    customer: String,
    email: String,
    reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    customer: String,
    total_cents: u64,
    delivered_days_ago: u32,
    status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    id: String,
    kind: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefundPolicy {
    version: String,
    window_days: u32,
    auto_approve_max_cents: u64,
    clause: String,
}

/// What the model proposes. `revision` counts the drafts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recommendation {
    amount_cents: u64,
    rationale: String,
    citations: Vec<String>,
    message: String,
    revision: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefundReceipt {
    refund_id: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    ticket: String,
    refund_id: String,
    amount_cents: u64,
    approved_by: String,
    message_id: String,
}

/// The systems the agent talks to. Faults are configured per order, so the high-value
/// ticket meets every kind of trouble and the low-value one none.
#[derive(Default)]
struct World {
    orders: BTreeMap<String, Order>,
    captures: BTreeMap<String, Payment>,
    /// Orders whose payments lookup fails once.
    flaky_ledger: Mutex<BTreeSet<String>>,
    ledger_calls: AtomicU32,
    /// Orders whose first refund response is lost after the refund went through.
    lose_refund_response: Mutex<BTreeSet<String>>,
    refund_calls: AtomicU32,
    refunds: Mutex<BTreeMap<String, RefundReceipt>>,
    /// Recipients whose first message is taken by the provider, then the connection drops.
    drop_mail_response: Mutex<BTreeSet<String>>,
    mail_sends: AtomicU32,
    outbox: Mutex<BTreeMap<String, (String, String)>>,
}

impl World {
    fn new() -> Self {
        let order = |id: &str, customer: &str, total_cents, delivered_days_ago| {
            let status = "delivered late".to_string();
            (
                id.to_string(),
                Order {
                    id: id.into(),
                    customer: customer.into(),
                    total_cents,
                    delivered_days_ago,
                    status,
                },
            )
        };
        let capture = |order: &str, id: &str, amount_cents| {
            (
                order.to_string(),
                Payment {
                    id: id.into(),
                    kind: "capture".into(),
                    amount_cents,
                },
            )
        };
        Self {
            orders: [
                order("A-1041", "ada", 1_850, 3),
                order("A-1042", "grace", 42_000, 5),
            ]
            .into(),
            captures: [
                capture("A-1041", "pay_5501", 1_850),
                capture("A-1042", "pay_7781", 42_000),
            ]
            .into(),
            flaky_ledger: Mutex::new(["A-1042".to_string()].into()),
            lose_refund_response: Mutex::new(["A-1042".to_string()].into()),
            drop_mail_response: Mutex::new(["grace@example.com".to_string()].into()),
            ..Self::default()
        }
    }

    fn order(&self, id: &str) -> Result<Order, StepFailure> {
        self.orders
            .get(id)
            .cloned()
            .ok_or_else(|| StepFailure::terminal(format!("404 no order {id}")))
    }

    fn payments(&self, order: &str) -> Result<Vec<Payment>, StepFailure> {
        self.ledger_calls.fetch_add(1, Ordering::SeqCst);
        if self.flaky_ledger.lock().unwrap().remove(order) {
            return Err(StepFailure::transient(
                "502 payments ledger: upstream connect error",
            ));
        }
        let mut payments: Vec<Payment> = self.captures.get(order).cloned().into_iter().collect();
        payments.extend(
            self.refunds
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, r)| r.refund_id.contains(order))
                .map(|(_, r)| Payment {
                    id: r.refund_id.clone(),
                    kind: "refund".into(),
                    amount_cents: r.amount_cents,
                }),
        );
        Ok(payments)
    }

    fn refund_policy(&self) -> RefundPolicy {
        RefundPolicy {
            version: "refund-policy v3".into(),
            window_days: 30,
            auto_approve_max_cents: 5_000,
            clause: "§2.1 late delivery: up to the full amount".into(),
        }
    }

    /// The payment gateway: one refund per idempotency key, whatever the number of calls.
    fn refund(
        &self,
        key: &str,
        order: &str,
        amount_cents: u64,
    ) -> Result<RefundReceipt, StepFailure> {
        self.refund_calls.fetch_add(1, Ordering::SeqCst);
        let mut refunds = self.refunds.lock().unwrap();
        if let Some(existing) = refunds.get(key) {
            return Ok(existing.clone());
        }
        let receipt = RefundReceipt {
            refund_id: format!("re_{order}_{}", refunds.len() + 1),
            amount_cents,
        };
        refunds.insert(key.to_string(), receipt.clone());
        if self.lose_refund_response.lock().unwrap().remove(order) {
            return Err(StepFailure::timeout(
                "504 from the payment gateway (the refund was submitted)",
            ));
        }
        Ok(receipt)
    }

    fn send_mail(&self, key: &str, to: &str, text: &str) -> Result<String, StepFailure> {
        self.mail_sends.fetch_add(1, Ordering::SeqCst);
        let mut outbox = self.outbox.lock().unwrap();
        let id = format!("msg_{}", outbox.len() + 1);
        outbox.insert(key.to_string(), (id.clone(), text.to_string()));
        if self.drop_mail_response.lock().unwrap().remove(to) {
            return Err(StepFailure::ambiguous(
                "connection reset after the message was handed to the provider",
            ));
        }
        Ok(id)
    }

    /// The mail provider's lookup by idempotency key: did a message with this key go out?
    fn mail_sent(&self, key: &str) -> Reconciled<String> {
        match self.outbox.lock().unwrap().get(key) {
            Some((id, _)) => Reconciled::Done(id.clone()),
            None => Reconciled::NotDone,
        }
    }
}

/// The model: drafts and revises recommendations (deterministic here).
fn draft(
    req: &RefundRequest,
    order: &Order,
    payments: &[Payment],
    policy: &RefundPolicy,
) -> Recommendation {
    let amount_cents = order.total_cents;
    Recommendation {
        amount_cents,
        rationale: format!(
            "{}; order {} {} days after the promised date",
            req.reason, order.status, order.delivered_days_ago
        ),
        citations: citations(order, payments, policy),
        message: message(&order.customer, amount_cents),
        revision: 1,
    }
}

fn revise(previous: &Recommendation, reason: &str, customer: &str) -> Recommendation {
    let percent: u64 = reason
        .split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|n| n.parse().ok()))
        .unwrap_or(100);
    let amount_cents = previous.amount_cents * percent / 100;
    Recommendation {
        amount_cents,
        rationale: format!(
            "{}; revised to {percent}% after review: {reason:?}",
            previous.rationale
        ),
        citations: previous.citations.clone(),
        message: message(customer, amount_cents),
        revision: previous.revision + 1,
    }
}

fn citations(order: &Order, payments: &[Payment], policy: &RefundPolicy) -> Vec<String> {
    let mut refs = vec![format!("order:{}", order.id)];
    refs.extend(payments.iter().map(|p| format!("payment:{}", p.id)));
    refs.push(format!("policy:{} {}", policy.version, policy.clause));
    refs
}

fn message(customer: &str, amount_cents: u64) -> String {
    format!(
        "Hi {customer}, we have refunded {} to your card for the late delivery.",
        usd(amount_cents)
    )
}

/// Guardrails, each recorded in history for the reviewer and the auditor.
async fn guardrails(
    ctx: &Ctx,
    rec: &Recommendation,
    order: &Order,
    payments: &[Payment],
    policy: &RefundPolicy,
) -> Vec<CheckResult> {
    let captured: u64 = payments
        .iter()
        .filter(|p| p.kind == "capture")
        .map(|p| p.amount_cents)
        .sum();
    let refunded: u64 = payments
        .iter()
        .filter(|p| p.kind == "refund")
        .map(|p| p.amount_cents)
        .sum();
    let cites_all = rec.citations.iter().any(|c| c.starts_with("order:"))
        && rec.citations.iter().any(|c| c.starts_with("payment:"))
        && rec.citations.iter().any(|c| c.starts_with("policy:"));
    let checks = [
        (
            "evidence_cited",
            cites_all,
            format!("cites {}", rec.citations.join(", ")),
        ),
        (
            "within_refund_window",
            order.delivered_days_ago <= policy.window_days,
            format!(
                "{} days late, window {} days",
                order.delivered_days_ago, policy.window_days
            ),
        ),
        (
            "amount_within_captured",
            rec.amount_cents <= captured.saturating_sub(refunded),
            format!("{} of {} captured", usd(rec.amount_cents), usd(captured)),
        ),
        (
            "no_prior_refund",
            refunded == 0,
            format!("{} refunded before", usd(refunded)),
        ),
    ];
    let mut results = Vec::new();
    for (name, passed, detail) in checks {
        let passed = ctx.check(name, passed, &detail).await;
        results.push(CheckResult {
            name: name.into(),
            passed,
            detail,
        });
    }
    results
}

fn approval_request(
    req: &RefundRequest,
    order: &Order,
    rec: &Recommendation,
    checks: &[CheckResult],
    policy: &RefundPolicy,
) -> ApprovalRequest {
    let mut evidence = rec.citations.clone();
    evidence.push(format!("ticket:{}", req.ticket));
    ApprovalRequest {
        action: format!("refund {} to {} for order {} (draft {})", usd(rec.amount_cents), order.customer, order.id, rec.revision),
        evidence,
        risk: if rec.amount_cents > 25_000 { RiskTier::High } else { RiskTier::Medium },
        cost: Some(rec.amount_cents),
        checks: checks.to_vec(),
        rollback: Some(format!(
            "a refund cannot be recalled; if it was wrong, recover it with a new charge agreed with the customer \
             ({} §7)",
            policy.version
        )),
        deadline_ms: Some(48 * HOUR_MS),
        approvers: vec!["role:finance".into()],
        on_expiry: OnExpiry::Remind { times: 2, every_ms: 12 * HOUR_MS },
    }
}

/// The agent. Every call on `ctx` is recorded; after a restart the recorded outcomes are
/// handed back and only what is missing runs.
async fn refund_agent(
    ctx: Ctx,
    req: RefundRequest,
    world: Arc<World>,
) -> Result<Outcome, WorkflowError> {
    let (w, req) = (&*world, &req);
    let evidence_retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Exponential {
            initial_ms: 20,
            factor: 2,
            max_ms: 100,
        },
        attempt_timeout_ms: Some(1_000),
        ..RetryPolicy::default()
    };

    // 1. Evidence.
    let order: Order = ctx
        .step("fetch_order")
        .tool("orders_api")
        .class(StepClass::Read)
        .retry(evidence_retry.clone())
        .run(move |_| async move { w.order(&req.order_id) })
        .await?;
    let payments: Vec<Payment> = ctx
        .step("fetch_payments")
        .tool("payments_api")
        .class(StepClass::Read)
        .retry(evidence_retry.clone())
        .run(move |_| async move { w.payments(&req.order_id) })
        .await?;
    let policy: RefundPolicy = ctx
        .step("fetch_policy")
        .tool("policy_kb")
        .class(StepClass::Read)
        .retry(evidence_retry)
        .run(move |_| async move { Ok(w.refund_policy()) })
        .await?;

    // 2. The drafted recommendation and its guardrails.
    let (o, p, pol) = (&order, &payments, &policy);
    let mut rec: Recommendation = ctx
        .step("draft_recommendation")
        .tool("llm")
        .class(StepClass::Draft)
        .run(move |_| async move { Ok(draft(req, o, p, pol)) })
        .await?;
    let mut checks = guardrails(&ctx, &rec, &order, &payments, &policy).await;
    if let Some(failed) = checks.iter().find(|c| !c.passed) {
        return Err(WorkflowError::failed(format!(
            "guardrail {} failed: {}",
            failed.name, failed.detail
        )));
    }

    // 3. Who approves: a rule for small amounts, a finance reviewer above.
    let limit = policy.auto_approve_max_cents;
    let (approved_by, message) = if rec.amount_cents <= limit {
        let detail = format!(
            "{} <= {} and every guardrail passed: approved by rule",
            usd(rec.amount_cents),
            usd(limit)
        );
        ctx.check("auto_approval_rule", true, &detail).await;
        (
            "rule:auto-approve-under-50".to_string(),
            rec.message.clone(),
        )
    } else {
        let detail = format!(
            "{} is above the {} auto-approval limit: a finance reviewer decides",
            usd(rec.amount_cents),
            usd(limit)
        );
        ctx.check("auto_approval_rule", false, &detail).await;
        let mut round = 1;
        loop {
            match ctx
                .approval(approval_request(req, &order, &rec, &checks, &policy))
                .await?
            {
                Decision::Approved { actor, edits, .. } => {
                    // The reviewer's edits reach the step that follows.
                    let edited = edits
                        .as_ref()
                        .and_then(|e| e["message"].as_str())
                        .map(String::from);
                    break (actor, edited.unwrap_or_else(|| rec.message.clone()));
                }
                Decision::Rejected { reason, .. } if round < 3 => {
                    // The rejection reason goes back to the model for a revised draft.
                    round += 1;
                    let previous = &rec;
                    let (reason, customer) = (&reason, &order.customer);
                    rec = ctx
                        .step("revise_recommendation")
                        .tool("llm")
                        .class(StepClass::Draft)
                        .run(move |_| async move { Ok(revise(previous, reason, customer)) })
                        .await?;
                    checks = guardrails(&ctx, &rec, &order, &payments, &policy).await;
                }
                Decision::Rejected { actor, reason } => {
                    return Err(WorkflowError::failed(format!(
                        "rejected {round} times; last by {actor}: {reason}"
                    )))
                }
                Decision::Expired => {
                    return Err(WorkflowError::failed(
                        "the approval expired without a decision",
                    ))
                }
            }
        }
    };

    // 4. The refund: a write retried with one idempotency key.
    let amount_cents = rec.amount_cents;
    let receipt: RefundReceipt = ctx
        .step("issue_refund")
        .tool("payments_refund")
        .class(StepClass::Write)
        .retry(RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed { delay_ms: 30 },
            ..RetryPolicy::default()
        })
        .run(move |attempt| async move {
            w.refund(&attempt.idempotency_key, &req.order_id, amount_cents)
        })
        .await?;

    // 5. The customer message: irreversible, reconciled by key instead of sent again.
    let text = &message;
    let message_id: String = ctx
        .step("notify_customer")
        .tool("email")
        .class(StepClass::Irreversible)
        .reconcile(move |key| async move { w.mail_sent(&key) })
        .run(move |attempt| async move { w.send_mail(&attempt.idempotency_key, &req.email, text) })
        .await?;

    Ok(Outcome {
        ticket: req.ticket.clone(),
        refund_id: receipt.refund_id,
        amount_cents,
        approved_by,
        message_id,
    })
}

fn engine_at(dir: &std::path::Path, world: &Arc<World>) -> EngineBuilder {
    let world = Arc::clone(world);
    Engine::builder()
        .path(dir)
        // Park a waiting run after 100 ms (the default is 30 s) so the example shows it.
        .park_after_ms(100)
        .register("refund_agent", 1, move |ctx, req| {
            refund_agent(ctx, req, Arc::clone(&world))
        })
}

async fn inbox(engine: &Engine, reviewer: &Actor) -> Result<Vec<PendingApproval>, Error> {
    engine
        .pending_approvals(&ApprovalFilter {
            approver: Some(reviewer.clone()),
            min_risk: None,
        })
        .await
}

/// Waits for a pending approval other than `not`, and prints what the reviewer sees.
async fn next_gate(
    engine: &Engine,
    reviewer: &Actor,
    not: Option<GateId>,
) -> Result<PendingApproval, Box<dyn std::error::Error>> {
    let pending = wait_for(
        "an approval in the inbox",
        Duration::from_secs(10),
        || async {
            inbox(engine, reviewer)
                .await
                .ok()
                .and_then(|list| list.into_iter().find(|p| Some(p.gate) != not))
        },
    )
    .await;
    let history = engine.history(pending.run).await?;
    let request = history.iter().find_map(|e| match &e.kind {
        EventKind::ApprovalRequested { gate, request, .. } if *gate == pending.gate.0 => {
            Some(request.clone())
        }
        _ => None,
    });
    println!("  inbox of {}: gate {}", reviewer.id, pending.gate);
    println!("    action     {}", pending.action);
    println!(
        "    risk       {:?}, cost {}",
        pending.risk,
        pending.cost.map_or_else(|| "-".into(), usd)
    );
    println!("    evidence   {}", pending.evidence.join("; "));
    if let Some(request) = request {
        for c in &request.checks {
            println!(
                "    check      {} {}: {}",
                if c.passed { "passed" } else { "FAILED" },
                c.name,
                c.detail
            );
        }
        println!("    rollback   {}", request.rollback.unwrap_or_default());
        println!("    on expiry  {:?}", request.on_expiry);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let deadline_in = pending.deadline_ms.map(|d| d.saturating_sub(now_ms));
    println!(
        "    approvers  {}; deadline in {}; waiting {}",
        pending.approvers.join(", "),
        deadline_in.map_or_else(|| "-".into(), annal::audit::duration_ms),
        annal::audit::duration_ms(pending.age_ms)
    );
    Ok(pending)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let world = Arc::new(World::new());
    let dana = Actor::new("dana", &["finance"]);

    section("1. Two refund requests arrive");
    let engine = engine_at(dir.path(), &world).open().await?;
    let small = RefundRequest {
        ticket: "T-5530".into(),
        order_id: "A-1041".into(),
        customer: "ada".into(),
        email: "ada@example.com".into(),
        reason: "parcel arrived three days late".into(),
    };
    let large = RefundRequest {
        ticket: "T-5531".into(),
        order_id: "A-1042".into(),
        customer: "grace".into(),
        email: "grace@example.com".into(),
        reason: "parcel arrived five days late, gift missed".into(),
    };
    let small_run = engine.start::<_, Outcome>("refund_agent", &small).await?;
    let large_run = engine.start::<_, Outcome>("refund_agent", &large).await?;
    let run = large_run.run_id();

    let done = small_run.result().await?;
    println!(
        "  {} ({}): {} refunded as {}, approved by {}, customer told ({})",
        done.ticket,
        small.order_id,
        usd(done.amount_cents),
        done.refund_id,
        done.approved_by,
        done.message_id
    );
    let small_history = engine.history(small_run.run_id()).await?;
    assert_eq!(
        count(&small_history, "ApprovalRequested"),
        0,
        "a small refund asks no human"
    );
    let small_record = record(small_run.run_id(), &small_history);
    assert!(
        small_record
            .checks
            .iter()
            .any(|c| c.name == "auto_approval_rule" && c.passed),
        "the rule is on record"
    );
    assert_eq!(done.approved_by, "rule:auto-approve-under-50");

    section("2. The large refund waits for finance");
    let first = next_gate(&engine, &dana, None).await?;
    assert_eq!(first.run, run);
    assert_eq!((first.risk, first.cost), (RiskTier::High, Some(42_000)));
    let sam = Actor::new("sam", &["support"]);
    let before = engine.history(run).await?.len();
    let refused = engine
        .decide(first.gate, &sam, Verdict::Approve { edits: None }, "lgtm")
        .await;
    println!(
        "  sam (support) tries to approve: {}",
        refused
            .as_ref()
            .map_or_else(ToString::to_string, |()| "accepted?!".into())
    );
    assert!(matches!(refused, Err(Error::NotAllowed { .. })));
    assert_eq!(
        engine.history(run).await?.len(),
        before,
        "a refused decision writes nothing"
    );
    let parked = wait_for("the run to park", Duration::from_secs(5), || async {
        engine
            .status(run)
            .await
            .ok()
            .filter(|i| i.status == RunStatus::Parked)
    })
    .await;
    println!(
        "  run {run} is {}: its wait lives in the store's gate index, not in memory",
        parked.status
    );

    section("3. The engine restarts while the run waits");
    engine.shutdown().await;
    drop((small_run, large_run, engine));
    let engine = engine_at(dir.path(), &world).open().await?;
    println!(
        "  reopened {}; run {run} is {}",
        dir.path().display(),
        engine.status(run).await?.status
    );
    let again = next_gate(&engine, &dana, None).await?;
    assert_eq!(again.gate, first.gate, "the same gate, across the restart");

    section("4. The reviewer rejects with a reason; the agent revises and asks again");
    engine
        .decide(first.gate, &dana, Verdict::Reject, "too high, offer 50%")
        .await?;
    println!(
        "  dana rejected gate {}: \"too high, offer 50%\"",
        first.gate
    );
    let second = next_gate(&engine, &dana, Some(first.gate)).await?;
    assert_ne!(
        second.gate, first.gate,
        "a revised proposal gets a new gate"
    );
    assert_eq!((second.cost, second.risk), (Some(21_000), RiskTier::Medium));
    let late = engine
        .decide(
            first.gate,
            &dana,
            Verdict::Approve { edits: None },
            "changed my mind",
        )
        .await;
    println!(
        "  a second decision on the first gate: {}",
        late.as_ref()
            .map_or_else(ToString::to_string, |()| "accepted?!".into())
    );
    assert!(matches!(late, Err(Error::AlreadyDecided { .. })));

    section("5. The reviewer approves, editing the customer message");
    let edited = "Hi grace, we are sorry your gift arrived late. We have refunded $210.00 (half the order) to your card.";
    engine
        .decide(
            second.gate,
            &dana,
            Verdict::Approve {
                edits: Some(json!({ "message": edited })),
            },
            "50% is fair for a late gift",
        )
        .await?;
    let outcome: Outcome = engine.handle(run).result().await?;
    println!(
        "  {}: {} refunded as {}, approved by {}, customer told ({})",
        outcome.ticket,
        usd(outcome.amount_cents),
        outcome.refund_id,
        outcome.approved_by,
        outcome.message_id
    );

    let history = engine.history(run).await?;
    let rec = record(run, &history);
    assert_eq!(
        (outcome.amount_cents, outcome.approved_by.as_str()),
        (21_000, "dana")
    );
    assert_eq!(
        step(&rec, "fetch_payments").attempts,
        2,
        "the payments ledger failed once and was retried"
    );
    let refund = step(&rec, "issue_refund");
    assert_eq!(refund.attempts, 2, "the gateway timeout was retried");
    assert_eq!(refund.failures[0].class, FailureClass::Timeout);
    let refunds = world.refunds.lock().unwrap().clone();
    let for_large: Vec<_> = refunds
        .iter()
        .filter(|(_, r)| r.refund_id.contains("A-1042"))
        .collect();
    assert_eq!(
        for_large.len(),
        1,
        "one refund, though the gateway was called twice with the same key"
    );
    assert_eq!(for_large[0].0, &refund.idem_key);
    let notify = step(&rec, "notify_customer");
    assert!(matches!(notify.outcome, StepEnd::Completed { .. }));
    assert_eq!(
        notify.failures[0].class,
        FailureClass::Ambiguous,
        "the dropped connection is on record"
    );
    let outbox = world.outbox.lock().unwrap().clone();
    let to_grace: Vec<_> = outbox
        .iter()
        .filter(|(k, _)| **k == notify.idem_key)
        .collect();
    assert_eq!(to_grace.len(), 1);
    assert_eq!(
        to_grace[0].1 .1, edited,
        "the reviewer's edit reached the message"
    );
    assert_eq!(
        world.mail_sends.load(Ordering::SeqCst),
        2,
        "one send per customer: the reconcile hook found grace's"
    );
    assert_eq!(
        world.refund_calls.load(Ordering::SeqCst),
        3,
        "ada's refund once, grace's twice with one key"
    );
    assert_eq!(world.ledger_calls.load(Ordering::SeqCst), 3);
    let decisions: Vec<_> = rec
        .approvals
        .iter()
        .map(|a| a.decision.clone().unwrap_or_default())
        .collect();
    assert_eq!(decisions, ["rejected", "approved"]);
    assert_eq!(
        count(&history, "CheckRecorded"),
        9,
        "four guardrails per draft, and the approval rule"
    );
    println!(
        "  payment gateway calls for grace's refund: 2, refunds: {}; mail provider sends: 1, messages: {}",
        for_large.len(),
        to_grace.len()
    );

    section("6. The full history of the large refund");
    print_history(&engine, run).await?;
    println!();
    print!("{}", rec.render());

    engine.shutdown().await;
    println!("\ndone in {:.2?}", started.elapsed());
    Ok(())
}
