//! Human approval gates, escalation and operator actions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal::{
    Actor, ApprovalFilter, ApprovalRequest, Ctx, Decision, Engine, EngineBuilder, Error, EventKind,
    GateId, OnExpiry, OperatorActionKind, RiskTier, RunId, RunStatus, StepClass, Verdict,
    WorkflowError,
};
use annal_storage::SimStore;
use serde_json::json;

use crate::support::kinds;

const DAY_MS: u64 = 86_400_000;

fn request(amount: u64, on_expiry: OnExpiry) -> ApprovalRequest {
    ApprovalRequest {
        action: format!("refund {amount} cents"),
        evidence: vec!["order:A-1".into(), "payment:p-9".into()],
        risk: if amount > 10_000 {
            RiskTier::High
        } else {
            RiskTier::Low
        },
        cost: Some(amount),
        checks: vec![annal::CheckResult {
            name: "under_limit".into(),
            passed: true,
            detail: "< 500 USD".into(),
        }],
        rollback: Some("void the refund within 24h".into()),
        deadline_ms: Some(3 * DAY_MS),
        approvers: vec!["role:finance".into()],
        on_expiry,
    }
}

/// Asks for approval of a refund; on rejection revises the amount once and asks again.
async fn refund(ctx: Ctx, (amount, on_expiry): (u64, OnExpiry)) -> Result<String, WorkflowError> {
    ctx.check("amount_positive", amount > 0, "refund must be positive")
        .await;
    let mut amount = amount;
    for round in 0..2 {
        match ctx.approval(request(amount, on_expiry.clone())).await? {
            Decision::Approved { actor, edits, .. } => {
                let final_amount = edits.and_then(|e| e["amount"].as_u64()).unwrap_or(amount);
                let done: String = ctx
                    .step("issue_refund")
                    .run(move |a| {
                        let actor = actor.clone();
                        async move {
                            Ok(format!(
                                "refunded {final_amount} by {actor} key {}",
                                a.idempotency_key.len()
                            ))
                        }
                    })
                    .await?;
                return Ok(done);
            }
            Decision::Rejected { reason, .. } if round == 0 => {
                amount = ctx
                    .step("revise")
                    .class(StepClass::Draft)
                    .run(move |_| {
                        let reason = reason.clone();
                        async move {
                            Ok(if reason.contains("too much") {
                                amount / 2
                            } else {
                                amount
                            })
                        }
                    })
                    .await?;
            }
            Decision::Rejected { reason, .. } => {
                return Err(WorkflowError::failed(format!("rejected twice: {reason}")))
            }
            Decision::Expired => return Ok("expired: no refund".into()),
        }
    }
    unreachable!()
}

fn builder(store: &Arc<SimStore>, clock: &Arc<annal::clock::TokioClock>) -> EngineBuilder {
    builder_on(Arc::clone(store) as Arc<dyn annal_storage::LogStore>, clock)
}

fn builder_on(
    store: Arc<dyn annal_storage::LogStore>,
    clock: &Arc<annal::clock::TokioClock>,
) -> EngineBuilder {
    Engine::builder()
        .store(store)
        .clock(Arc::clone(clock) as Arc<dyn annal::clock::Clock>)
        .park_after_ms(60_000)
        .register("refund", 1, refund)
}

fn world() -> (Arc<SimStore>, Arc<annal::clock::TokioClock>) {
    (
        Arc::new(SimStore::new()),
        Arc::new(annal::clock::TokioClock::starting_at(1_700_000_000_000)),
    )
}

fn finance() -> Actor {
    Actor::new("dana", &["finance"])
}

async fn only_gate(engine: &Engine) -> GateId {
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    pending[0].gate
}

#[tokio::test(start_paused = true)]
async fn an_approval_waits_for_days_across_a_restart_and_edits_reach_the_next_step() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = engine
        .start::<_, String>("refund", &(42_000u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_millis(2 * DAY_MS)).await;
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Parked,
        "waiting costs no memory"
    );
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    assert_eq!(pending[0].action, "refund 42000 cents");
    assert_eq!(pending[0].risk, RiskTier::High);
    assert_eq!(pending[0].age_ms, 2 * DAY_MS);
    assert_eq!(pending[0].deadline_ms, Some(1_700_000_000_000 + 3 * DAY_MS));
    engine.shutdown().await;
    drop(engine);

    let engine = builder(&store, &clock).open().await.unwrap();
    let gate = only_gate(&engine).await;
    engine
        .decide(
            gate,
            &finance(),
            Verdict::Approve {
                edits: Some(json!({ "amount": 40_000 })),
            },
            "capped",
        )
        .await
        .unwrap();
    let out = engine.handle::<String>(run).result().await.unwrap();
    assert!(out.starts_with("refunded 40000 by dana"), "{out}");
    let history = engine.history(run).await.unwrap();
    assert_eq!(
        kinds(&history),
        [
            "RunStarted",
            "CheckRecorded",
            "ApprovalRequested",
            "ApprovalDecided",
            "StepRan",
            "RunCompleted"
        ]
    );
}

/// An engine on a store whose durability a test can hold back, with one refund run started.
async fn refund_on_a_held_store() -> (Arc<crate::support::HeldStore>, Engine, RunId) {
    let (_, clock) = world();
    let store = Arc::new(crate::support::HeldStore::new());
    let engine = builder_on(
        Arc::clone(&store) as Arc<dyn annal_storage::LogStore>,
        &clock,
    )
    .open()
    .await
    .unwrap();
    let run = engine
        .start::<_, String>("refund", &(100u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    (store, engine, run)
}

/// A second reviewer is told "already decided" only once the decision is durable: a crash
/// in between would take the decision back and reopen a gate the reviewer was turned away
/// from.
#[tokio::test(start_paused = true)]
async fn already_decided_is_answered_once_the_decision_is_durable() {
    let (store, engine, run) = refund_on_a_held_store().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = only_gate(&engine).await;

    store.hold(true);
    let decide = |actor: Actor, verdict: Verdict| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.decide(gate, &actor, verdict, "r").await })
    };
    let first = decide(finance(), Verdict::Approve { edits: None });
    // The first decision is appended (readers see it) but not durable.
    while !kinds(&engine.history(run).await.unwrap()).contains(&"ApprovalDecided") {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = decide(Actor::new("lee", &["finance"]), Verdict::Reject);
    let refused = store.answer_once_durable(second, "a decision").await;
    assert!(
        matches!(&refused, Err(Error::AlreadyDecided { actor, .. }) if actor == "dana"),
        "{refused:?}"
    );
    first.await.unwrap().unwrap();
}

/// One gated run with a damaged log does not take the whole inbox down: the reviewers see
/// every other gate, and the damaged one is left out (it cannot be decided until repaired).
#[tokio::test(start_paused = true)]
async fn a_damaged_gated_run_is_left_out_of_the_inbox_not_fatal_to_it() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let damaged = engine
        .start::<_, String>("refund", &(42_000u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    let intact = engine
        .start::<_, String>("refund", &(5_000u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_millis(DAY_MS)).await;
    assert_eq!(
        engine.runs_in_memory(),
        0,
        "both runs parked at their gates"
    );
    assert!(store.corrupt_record(damaged, 1, |bytes| {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
    }));
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .expect("the inbox lists the gates it can read");
    assert_eq!(
        pending.iter().map(|p| p.run).collect::<Vec<_>>(),
        [intact],
        "{pending:?}"
    );
    assert_eq!(pending[0].action, "refund 5000 cents");
}

#[tokio::test(start_paused = true)]
async fn two_concurrent_decisions_exactly_one_wins() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = engine
        .start::<_, String>("refund", &(100u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = only_gate(&engine).await;
    let lee = Actor::new("lee", &["finance"]);
    let dana = finance();
    let (a, b) = tokio::join!(
        engine.decide(gate, &dana, Verdict::Approve { edits: None }, "ok"),
        engine.decide(gate, &lee, Verdict::Reject, "no")
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(Error::AlreadyDecided { .. })));
    engine.handle::<String>(run).result().await.ok();
    let decided = engine
        .history(run)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind.decision().is_some())
        .count();
    assert!(decided >= 1);
    let decisions: Vec<_> = engine
        .history(run)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.decision().is_some())
        .collect();
    // The winner's decision is the only one on the first gate.
    assert!(decisions[0]
        .kind
        .decision()
        .is_some_and(|d| *d.gate == gate.0));
    assert_eq!(
        decisions
            .iter()
            .filter(|e| e.kind.decision().is_some_and(|d| *d.gate == gate.0))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_are_typed_and_write_nothing() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let run = engine
        .start::<_, String>("refund", &(100u64, OnExpiry::Reject))
        .await
        .unwrap()
        .run_id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = only_gate(&engine).await;
    let before = engine.history(run).await.unwrap();
    let intern = Actor::new("sam", &["support"]);
    assert!(
        matches!(engine.decide(gate, &intern, Verdict::Approve { edits: None }, "lgtm").await, Err(Error::NotAllowed { ref actor, .. }) if actor == "sam")
    );
    assert!(matches!(
        engine
            .decide(GateId([9; 16]), &finance(), Verdict::Reject, "x")
            .await,
        Err(Error::UnknownGate(_))
    ));
    assert_eq!(
        engine.history(run).await.unwrap(),
        before,
        "nothing written"
    );
    // Finance only sees it in their inbox.
    let mine = engine
        .pending_approvals(&ApprovalFilter {
            approver: Some(intern),
            min_risk: None,
        })
        .await
        .unwrap();
    assert!(mine.is_empty());
    let high = engine
        .pending_approvals(&ApprovalFilter {
            approver: None,
            min_risk: Some(RiskTier::High),
        })
        .await
        .unwrap();
    assert!(
        high.is_empty(),
        "a low-risk refund is not in the high-risk view"
    );
    // After the deadline: expired, refused, nothing written; the workflow gets Expired.
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS)).await;
    assert!(matches!(
        engine
            .decide(gate, &finance(), Verdict::Approve { edits: None }, "late")
            .await,
        Err(Error::GateExpired { .. })
    ));
    assert_eq!(
        engine.handle::<String>(run).result().await.unwrap(),
        "expired: no refund"
    );
    assert!(matches!(
        engine
            .decide(gate, &finance(), Verdict::Approve { edits: None }, "late")
            .await,
        Err(Error::GateExpired { .. })
    ));
    assert!(matches!(
        engine
            .operate(run, "ops", OperatorActionKind::RetryStep, "x")
            .await,
        Err(Error::ActionRefused { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_rejection_reason_goes_back_into_a_revised_request() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let handle = engine
        .start::<_, String>("refund", &(30_000u64, OnExpiry::Escalate))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = only_gate(&engine).await;
    engine
        .decide(
            gate,
            &finance(),
            Verdict::Reject,
            "too much for a late delivery",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = only_gate(&engine).await;
    assert_ne!(second, gate, "a new gate for the revised proposal");
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    assert_eq!(pending[0].action, "refund 15000 cents");
    engine
        .decide(second, &finance(), Verdict::Approve { edits: None }, "fine")
        .await
        .unwrap();
    assert!(handle.result().await.unwrap().starts_with("refunded 15000"));
}

#[tokio::test(start_paused = true)]
async fn an_expired_approval_escalates_and_an_operator_reopens_it() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let handle = engine
        .start::<_, String>("refund", &(100u64, OnExpiry::Escalate))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS + 1_000)).await;
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    assert!(engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap()
        .is_empty());
    engine
        .operate(
            handle.run_id(),
            "olga",
            OperatorActionKind::RetryStep,
            "reviewer was on leave",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = only_gate(&engine).await;
    engine
        .decide(gate, &finance(), Verdict::Approve { edits: None }, "ok")
        .await
        .unwrap();
    assert!(handle.result().await.unwrap().starts_with("refunded 100"));
    let history = engine.history(handle.run_id()).await.unwrap();
    assert!(history.iter().any(|e| matches!(&e.kind, EventKind::OperatorAction { actor, reason, .. } if actor == "olga" && reason == "reviewer was on leave")));
}

/// A second operator acting on a run the first one just moved on is refused only once the
/// first one's action is durable.
#[tokio::test(start_paused = true)]
async fn an_operator_is_refused_for_another_action_only_once_it_is_durable() {
    let (store, engine, run) = refund_on_a_held_store().await;
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS + 1_000)).await;
    assert_eq!(
        engine.status(run).await.unwrap().status,
        RunStatus::Escalated
    );

    store.hold(true);
    let operate = |actor: &'static str| {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .operate(run, actor, OperatorActionKind::RetryStep, "reopen")
                .await
        })
    };
    let first = operate("olga");
    while engine.status(run).await.unwrap().status == RunStatus::Escalated {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = operate("omar");
    let refused = store.answer_once_durable(second, "an action").await;
    assert!(
        matches!(&refused, Err(Error::ActionRefused { reason, .. }) if reason.contains("not escalated")),
        "{refused:?}"
    );
    first.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn reminders_go_out_before_the_deadline() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let handle = engine
        .start::<_, String>(
            "refund",
            &(
                100u64,
                OnExpiry::Remind {
                    times: 2,
                    every_ms: DAY_MS,
                },
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(DAY_MS + 1_000)).await;
    assert_eq!(
        engine
            .pending_approvals(&ApprovalFilter::default())
            .await
            .unwrap()[0]
            .reminders,
        1
    );
    tokio::time::sleep(Duration::from_millis(3 * DAY_MS)).await;
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    let history = engine.history(handle.run_id()).await.unwrap();
    let reminded: Vec<_> = history
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ApprovalReminded { reminder, .. } => Some((reminder, e.at_ms)),
            _ => None,
        })
        .collect();
    let start = history[0].at_ms;
    assert_eq!(reminded.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert!(reminded
        .iter()
        .all(|(n, at)| at - start >= u64::from(*n) * DAY_MS
            && at - start < u64::from(*n) * DAY_MS + 120_000));
    assert!(history
        .iter()
        .any(|e| matches!(e.kind, EventKind::ApprovalExpired { .. })));
}

/// A step that fails until told otherwise, escalating when it gives up.
async fn fragile(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    let v: String = ctx
        .step("crm_write")
        .retry(annal::RetryPolicy {
            max_attempts: 2,
            backoff: annal::Backoff::None,
            ..annal::RetryPolicy::default()
        })
        .on_exhaust(annal::OnExhaust::Escalate)
        .run(|_| async {
            if FIXED.load(Ordering::SeqCst) == 1 {
                Ok("written".to_string())
            } else {
                Err(annal::StepFailure::transient("503"))
            }
        })
        .await?;
    Ok(v)
}

static FIXED: AtomicU32 = AtomicU32::new(0);

#[tokio::test(start_paused = true)]
async fn operator_retry_skip_and_abort() {
    let (store, clock) = world();
    let engine = Engine::builder()
        .store(Arc::clone(&store) as Arc<dyn annal_storage::LogStore>)
        .clock(clock as Arc<dyn annal::clock::Clock>)
        .register("fragile", 1, fragile)
        .open()
        .await
        .unwrap();
    let escalated = |run: RunId| {
        let engine = engine.clone();
        async move {
            assert!(matches!(
                engine.handle::<String>(run).result().await,
                Err(Error::Escalated { .. })
            ))
        }
    };
    // Skip with a value.
    let a = engine.start::<_, String>("fragile", &()).await.unwrap();
    escalated(a.run_id()).await;
    engine
        .operate(
            a.run_id(),
            "olga",
            OperatorActionKind::SkipStep {
                value: annal::Payload::encode("manual entry").unwrap(),
            },
            "entered by hand",
        )
        .await
        .unwrap();
    assert_eq!(a.result().await.unwrap(), "manual entry");
    // Abort.
    let b = engine.start::<_, String>("fragile", &()).await.unwrap();
    escalated(b.run_id()).await;
    assert!(
        matches!(
            engine
                .operate(
                    b.run_id(),
                    "olga",
                    OperatorActionKind::ResolveDone {
                        output: annal::Payload::encode("x").unwrap()
                    },
                    "x"
                )
                .await,
            Err(Error::ActionRefused { .. })
        ),
        "nothing unknown to resolve"
    );
    engine
        .operate(
            b.run_id(),
            "olga",
            OperatorActionKind::Abort,
            "customer left",
        )
        .await
        .unwrap();
    assert!(
        matches!(b.result().await, Err(Error::WorkflowFailed { ref error, .. }) if error.contains("customer left"))
    );
    assert_eq!(
        engine.status(b.run_id()).await.unwrap().status,
        RunStatus::Failed
    );
    // Retry once the cause is fixed.
    let c = engine.start::<_, String>("fragile", &()).await.unwrap();
    escalated(c.run_id()).await;
    FIXED.store(1, Ordering::SeqCst);
    engine
        .operate(
            c.run_id(),
            "olga",
            OperatorActionKind::RetryStep,
            "CRM is back",
        )
        .await
        .unwrap();
    assert_eq!(c.result().await.unwrap(), "written");
    assert!(matches!(
        engine
            .operate(c.run_id(), "olga", OperatorActionKind::Abort, "late")
            .await,
        Err(Error::ActionRefused { .. })
    ));
}

/// An irreversible step with no reconcile hook: after a crash its outcome is unknown.
async fn send_once(ctx: Ctx, (): ()) -> Result<String, WorkflowError> {
    let v: String = ctx
        .step("send_message")
        .class(StepClass::Irreversible)
        .run(|_| async {
            SENDS.fetch_add(1, Ordering::SeqCst);
            Ok("sent".to_string())
        })
        .await?;
    Ok(v)
}

static SENDS: AtomicU32 = AtomicU32::new(0);

#[tokio::test(start_paused = true)]
async fn operator_resolves_an_unknown_irreversible_outcome() {
    for done in [true, false] {
        SENDS.store(0, Ordering::SeqCst);
        let (store, clock) = world();
        let open = || {
            Engine::builder()
                .store(Arc::clone(&store) as Arc<dyn annal_storage::LogStore>)
                .clock(Arc::clone(&clock) as Arc<dyn annal::clock::Clock>)
                .register("send", 1, send_once)
                .open()
        };
        // Crash right after AttemptStarted became durable (sync 2: start, attempt).
        store.crash_after_syncs(2);
        let engine = open().await.unwrap();
        let run = engine
            .start::<_, String>("send", &())
            .await
            .unwrap()
            .run_id();
        tokio::time::sleep(Duration::from_secs(1)).await;
        engine.shutdown().await;
        store.crash();
        let engine = open().await.unwrap();
        assert!(matches!(
            engine.handle::<String>(run).result().await,
            Err(Error::Escalated { .. })
        ));
        let sends_before = SENDS.load(Ordering::SeqCst);
        let action = if done {
            OperatorActionKind::ResolveDone {
                output: annal::Payload::encode("sent (confirmed by provider)").unwrap(),
            }
        } else {
            OperatorActionKind::ResolveNotDone
        };
        engine
            .operate(run, "olga", action, "checked the provider's log")
            .await
            .unwrap();
        let out = engine.handle::<String>(run).result().await.unwrap();
        if done {
            assert_eq!(out, "sent (confirmed by provider)");
            assert_eq!(SENDS.load(Ordering::SeqCst), sends_before, "not sent again");
        } else {
            assert_eq!(out, "sent");
            assert_eq!(
                SENDS.load(Ordering::SeqCst),
                sends_before + 1,
                "sent exactly once more"
            );
        }
    }
}

/// Like `refund`, but the reviewer may edit the amount (and nothing else).
async fn refund_editable(ctx: Ctx, amount: u64) -> Result<String, WorkflowError> {
    let mut editable = serde_json::Map::new();
    editable.insert("amount".into(), json!(amount));
    match ctx
        .approval_editable(request(amount, OnExpiry::Escalate), editable)
        .await?
    {
        Decision::Approved { actor, edits, .. } => {
            let amount = edits.and_then(|e| e["amount"].as_u64()).unwrap_or(amount);
            Ok(format!("refunded {amount} by {actor}"))
        }
        Decision::Rejected { reason, .. } => Ok(format!("not refunded: {reason}")),
        Decision::Expired => Ok("expired".into()),
    }
}

/// A decision records the role it was taken under and the digest of the action; the inbox
/// shows everything the gate recorded; the history of decisions says who, role, when, why.
#[tokio::test(start_paused = true)]
async fn a_decision_records_its_role_and_digest_and_shows_in_the_decision_history() {
    let (store, clock) = world();
    let engine = builder(&store, &clock).open().await.unwrap();
    let handle = engine
        .start::<_, String>("refund", &(42_000u64, OnExpiry::Escalate))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    let card = &pending[0];
    assert_eq!(card.checks, request(42_000, OnExpiry::Escalate).checks);
    assert_eq!(card.rollback.as_deref(), Some("void the refund within 24h"));
    assert_eq!(card.approvers, ["role:finance"]);
    assert_eq!(card.requested_ms, 1_700_000_000_000);
    assert_eq!(card.editable, None, "a plain gate takes no edits");
    assert_eq!(card.failed_checks().count(), 0);
    let decided = engine
        .decide_bound(
            card.gate,
            &Actor::new("dana", &["support", "finance"]),
            &annal::DecideRequest::approve("within policy").bound_to(card.digest),
        )
        .await
        .unwrap();
    assert_eq!(decided.role, "role:finance");
    assert_eq!(decided.action_digest, card.digest);
    assert_eq!(decided.decided_ms, 1_700_000_060_000);
    assert!(handle.result().await.unwrap().starts_with("refunded 42000"));
    let history = engine.history(handle.run_id()).await.unwrap();
    let recorded = history.iter().find_map(|e| match &e.kind {
        EventKind::ApprovalDecidedAs {
            role,
            action_digest,
            actor,
            ..
        } => Some((role.clone(), *action_digest, actor.clone())),
        _ => None,
    });
    assert_eq!(
        recorded,
        Some(("role:finance".into(), card.digest.0, "dana".into()))
    );
    let record = annal::audit::RunRecord::from_history(handle.run_id(), None, &history);
    assert_eq!(record.approvals[0].role.as_deref(), Some("role:finance"));
    let timeline = annal::audit::timeline(&history);
    assert!(
        timeline.contains("approved by dana as role:finance: \"within policy\""),
        "{timeline}"
    );
    let past = engine.past_decisions(10).await.unwrap();
    assert_eq!(past.len(), 1, "{past:?}");
    assert_eq!(
        (
            past[0].decision.as_str(),
            past[0].actor.as_deref(),
            past[0].role.as_deref(),
            past[0].reason.as_deref(),
            past[0].decided_ms
        ),
        (
            "approved",
            Some("dana"),
            Some("role:finance"),
            Some("within policy"),
            1_700_000_060_000
        )
    );
    // A second decision is told who decided, under which role, and when; nothing written.
    let again = engine
        .decide_bound(card.gate, &finance(), &annal::DecideRequest::reject("no"))
        .await;
    match again {
        Err(Error::AlreadyDecided {
            actor,
            role,
            approved,
            decided_ms,
            ..
        }) => assert_eq!(
            (actor.as_str(), role.as_deref(), approved, decided_ms),
            ("dana", Some("role:finance"), true, 1_700_000_060_000)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.history(handle.run_id()).await.unwrap(), history);
}

/// The reviewer rules of `decide_bound`, each refusal typed and writing nothing: an agent,
/// a stale digest, a rejection without a reason, edits on a gate that allows none, edits of
/// an undeclared field or type. A plain `decide` refuses agents too.
#[tokio::test(start_paused = true)]
async fn reviewer_rules_refuse_agents_stale_digests_blank_rejections_and_stray_edits() {
    let (store, clock) = world();
    let engine = builder(&store, &clock)
        .register("refund_editable", 1, refund_editable)
        .open()
        .await
        .unwrap();
    let plain = engine
        .start::<_, String>("refund", &(100u64, OnExpiry::Escalate))
        .await
        .unwrap()
        .run_id();
    let editable = engine
        .start::<_, String>("refund_editable", &30_000u64)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = engine
        .pending_approvals(&ApprovalFilter::default())
        .await
        .unwrap();
    let card = |run: RunId| pending.iter().find(|p| p.run == run).unwrap().clone();
    let (plain_card, edit_card) = (card(plain), card(editable.run_id()));
    assert_eq!(edit_card.editable, Some(json!({ "amount": 30_000 })));
    let before = (
        engine.history(plain).await.unwrap(),
        engine.history(editable.run_id()).await.unwrap(),
    );
    let bot = Actor::agent("refund-bot", &["finance"]);
    assert!(matches!(
        engine
            .decide(plain_card.gate, &bot, Verdict::Approve { edits: None }, "me")
            .await,
        Err(Error::AgentMayNotDecide { ref actor, .. }) if actor == "refund-bot"
    ));
    let refused = |r: annal::Result<annal::Decided>| r.unwrap_err();
    let stale = annal::ActionDigest([7; 32]);
    assert!(matches!(
        refused(engine.decide_bound(plain_card.gate, &finance(), &annal::DecideRequest::approve("ok").bound_to(stale)).await),
        Error::ActionChanged { expected, found, .. } if expected == stale && found == plain_card.digest
    ));
    assert!(matches!(
        refused(
            engine
                .decide_bound(
                    plain_card.gate,
                    &finance(),
                    &annal::DecideRequest::reject("  ")
                )
                .await
        ),
        Error::ReasonRequired { .. }
    ));
    assert!(matches!(
        refused(
            engine
                .decide_bound(
                    plain_card.gate,
                    &finance(),
                    &annal::DecideRequest::approve("ok").with_edits(json!({ "amount": 1 }))
                )
                .await
        ),
        Error::EditNotAllowed { .. }
    ));
    for edits in [json!({ "iban": "DE00" }), json!({ "amount": "all of it" })] {
        assert!(matches!(
            refused(
                engine
                    .decide_bound(
                        edit_card.gate,
                        &finance(),
                        &annal::DecideRequest::approve("ok").with_edits(edits)
                    )
                    .await
            ),
            Error::EditNotAllowed { .. }
        ));
    }
    assert_eq!(
        (
            engine.history(plain).await.unwrap(),
            engine.history(editable.run_id()).await.unwrap()
        ),
        before,
        "nothing written on any refusal"
    );
    engine
        .decide_bound(
            edit_card.gate,
            &finance(),
            &annal::DecideRequest::approve("capped at the order total")
                .with_edits(json!({ "amount": 25_000 }))
                .bound_to(edit_card.digest),
        )
        .await
        .unwrap();
    assert_eq!(editable.result().await.unwrap(), "refunded 25000 by dana");
}
