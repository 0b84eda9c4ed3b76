//! The crash harness over the engine's own workflows: crash after every durable commit,
//! restart, and compare with the crash-free run.

use std::time::Duration;

use annal::testing::{Behavior, CrashHarness, Tools};
use annal::{Ctx, FailureClass, RetryPolicy, StepClass, WorkflowError};
use serde_json::{json, Value};

async fn order(ctx: Ctx, tools: Tools, amount: u64) -> Result<Value, WorkflowError> {
    let lookup = tools.tool("lookup");
    let crm = tools.tool("crm");
    let pay = tools.tool("payments");
    let found: Value = ctx
        .step("lookup")
        .class(StepClass::Read)
        .tool("lookup")
        .run(|a| {
            let lookup = lookup.clone();
            async move { lookup.call(&a, json!({ "amount": amount })).await }
        })
        .await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let note: Value = ctx
        .step("crm_note")
        .tool("crm")
        .retry(RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        })
        .run(|a| {
            let crm = crm.clone();
            async move { crm.call(&a, "note").await }
        })
        .await?;
    let approved: bool = ctx.signal("go").await?;
    let charge: Value = ctx
        .step("charge")
        .class(StepClass::Irreversible)
        .tool("payments")
        .reconcile(|key| {
            let pay = pay.clone();
            async move { pay.reconcile(&key) }
        })
        .run(|a| {
            let pay = pay.clone();
            async move { pay.call(&a, amount).await }
        })
        .await?;
    let id = ctx.uuid().await;
    Ok(
        json!({ "found": found, "note": note, "approved": approved, "charge": charge, "id_len": id.to_string().len() }),
    )
}

fn harness() -> CrashHarness {
    CrashHarness::new("order", &250u64, |builder, tools| {
        let tools = tools.clone();
        builder.register("order", 1, move |ctx, amount| {
            order(ctx, tools.clone(), amount)
        })
    })
    .script(|tools| {
        tools.tool("crm").fail_times(2, FailureClass::Transient);
    })
    .drive(|engine, run| {
        Box::pin(async move {
            let _ = engine.signal(run, "go", &true).await;
        })
    })
}

#[tokio::test(start_paused = true)]
async fn every_crash_point_resumes_to_the_same_outcome() {
    crate::support::trace();
    let report = harness().run().await.unwrap_or_else(|f| panic!("{f}"));
    assert!(report.crash_points >= 6, "{report:?}");
    assert!(
        matches!(report.outcome, annal::testing::Outcome::Completed(ref out) if out.contains("\"approved\":true")),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn torn_tails_are_detected_at_every_crash_point() {
    let report = harness()
        .with_torn_tails()
        .run()
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert!(report.crash_points >= 6);
}

async fn pay_once(ctx: Ctx, tools: Tools, reconcile: bool) -> Result<Value, WorkflowError> {
    let pay = tools.tool("payments");
    let mut step = ctx
        .step("charge")
        .class(StepClass::Irreversible)
        .tool("payments");
    if reconcile {
        let pay = pay.clone();
        step = step.reconcile(move |key| {
            let pay = pay.clone();
            async move { pay.reconcile(&key) }
        });
    }
    let charged: Value = step
        .run(|a| {
            let pay = pay.clone();
            async move { pay.call(&a, 10).await }
        })
        .await?;
    Ok(charged)
}

fn pay_harness(reconcile: bool) -> CrashHarness {
    CrashHarness::new("pay", &(), move |builder, tools| {
        let tools = tools.clone();
        builder.register("pay", 1, move |ctx, ()| {
            pay_once(ctx, tools.clone(), reconcile)
        })
    })
    .script(|tools| {
        tools.tool("payments").script([Behavior::ApplyThenLose]);
    })
}

#[tokio::test(start_paused = true)]
async fn a_lost_irreversible_outcome_is_reconciled_not_repeated() {
    // The payment applies and its response is lost. With a reconcile hook the engine asks the
    // ledger and completes with the applied charge, live or after any crash.
    let report = pay_harness(true)
        .run()
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        report.outcome,
        annal::testing::Outcome::Completed("10".into())
    );
    assert!(report.escalated_at.is_empty(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn without_a_reconcile_hook_a_lost_irreversible_outcome_is_never_retried() {
    let report = pay_harness(false)
        .run()
        .await
        .unwrap_or_else(|f| panic!("{f}"));
    match &report.outcome {
        annal::testing::Outcome::Ended(status, message) => {
            assert_eq!(*status, annal::RunStatus::Failed);
            assert!(
                message.contains("irreversible effect may have happened"),
                "{message}"
            );
        }
        other => panic!("expected a failed run, got {other:?}"),
    }
    // Crashing after AttemptStarted was durable and before the outcome: escalation.
    assert!(!report.escalated_at.is_empty(), "{report:?}");
}

/// A write that keeps failing escalates; the operator retries it once (its next attempt
/// works) and skips a second, which never works, with a value. Every commit around the
/// escalations and the operator actions is a crash point, and every one resumes to the same
/// outcome. The bodies fail by attempt number, so a failed attempt a crash took back and
/// that runs again fails the same way.
async fn sync_crm(ctx: Ctx, (): ()) -> Result<Value, WorkflowError> {
    let push = |name: &'static str, works_from_attempt: u32| {
        let ctx = ctx.clone();
        async move {
            ctx.step(name)
                .class(StepClass::Write)
                .tool("crm")
                .retry(RetryPolicy {
                    max_attempts: 2,
                    jitter: false,
                    ..RetryPolicy::default()
                })
                .on_exhaust(annal::OnExhaust::Escalate)
                .run(move |a| async move {
                    if a.number >= works_from_attempt {
                        Ok(format!("{name} pushed"))
                    } else {
                        Err(annal::StepFailure::transient("crm unavailable"))
                    }
                })
                .await
        }
    };
    let contact: String = push("push_contact", 3).await?;
    let note: String = push("push_note", u32::MAX).await?;
    Ok(json!({ "contact": contact, "note": note }))
}

#[tokio::test(start_paused = true)]
async fn operator_actions_resume_to_the_same_outcome_at_every_crash_point() {
    let report = CrashHarness::new("sync_crm", &(), |builder, _| {
        builder.register("sync_crm", 1, sync_crm)
    })
    .operate(|engine, run| {
        Box::pin(async move {
            let history = engine.history(run).await.unwrap_or_default();
            let retried = history
                .iter()
                .any(|e| matches!(e.kind, annal::EventKind::OperatorAction { .. }));
            let action = if retried {
                annal::OperatorActionKind::SkipStep {
                    value: annal::Payload::encode(&json!("skipped by ops")).unwrap(),
                }
            } else {
                annal::OperatorActionKind::RetryStep
            };
            // Refused when a crash took the escalation back: the run escalates again.
            let _ = engine.operate(run, "ops", action, "scripted").await;
        })
    })
    .run()
    .await
    .unwrap_or_else(|f| panic!("{f}"));
    assert!(report.crash_points >= 8, "{report:?}");
    assert_eq!(
        report.outcome,
        annal::testing::Outcome::Completed(
            r#"{"contact":"push_contact pushed","note":"skipped by ops"}"#.into()
        ),
        "{report:?}"
    );
}
