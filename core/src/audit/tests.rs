//! Unit tests of the audit functions on hand-built histories.

use crate::ids::{RunId, RunMeta};

use super::*;
use crate::event::{EscalationContext, Event, EventKind, OperatorActionKind, Payload, ValueKind};
use crate::policy::{FailureClass, OnExhaust, StepClass};
use crate::status::RunStatus;

const T0: u64 = 1_700_000_000_000;

fn ev(seq: u64, offset_ms: u64, kind: EventKind) -> Event {
    Event {
        seq,
        at_ms: T0 + offset_ms,
        kind,
    }
}

fn json(s: &str) -> Payload {
    Payload(s.as_bytes().to_vec())
}

fn scheduled(position: u32, name: &str, tool: Option<&str>, class: StepClass) -> EventKind {
    EventKind::StepScheduled {
        position,
        name: name.into(),
        tool: tool.map(String::from),
        class,
        idem_key: format!("run/{position}"),
        input_hash: 0,
    }
}

fn failed(position: u32, attempt: u32, class: FailureClass, retry_at: Option<u64>) -> EventKind {
    EventKind::AttemptFailed {
        position,
        attempt,
        class,
        message: format!("attempt {attempt} failed"),
        retry_at_ms: retry_at.map(|ms| T0 + ms),
    }
}

/// A refund: a lookup that needs a retry, a payment whose breaker is open and that
/// escalates, an operator terminating the run.
fn escalated_history() -> Vec<Event> {
    vec![
        ev(
            0,
            0,
            EventKind::RunStarted {
                workflow: "refund".into(),
                version: 2,
                input: json(r#"{"order":"A-1"}"#),
                dedupe_key: None,
                owner: Some("support".into()),
                continued_from: None,
                policy_version: Some("refunds-7".into()),
            },
        ),
        ev(
            1,
            10,
            scheduled(0, "lookup", Some("orders"), StepClass::Read),
        ),
        ev(2, 10, failed(0, 1, FailureClass::Transient, Some(260))),
        ev(
            3,
            270,
            EventKind::StepCompleted {
                position: 0,
                output: json(
                    r#"{"card":{"$secret":"0000000000000000000000000000000000000000000000000000000000000000"}}"#,
                ),
                attempt: 2,
                served_by: None,
                cost: 2,
            },
        ),
        ev(
            4,
            300,
            EventKind::ValueRecorded {
                position: 1,
                kind: ValueKind::Now,
                value: json("1"),
            },
        ),
        ev(
            5,
            300,
            scheduled(2, "pay", Some("payments"), StepClass::Irreversible),
        ),
        ev(
            6,
            300,
            EventKind::AttemptStarted {
                position: 2,
                attempt: 1,
            },
        ),
        ev(
            7,
            301,
            failed(2, 1, FailureClass::BreakerOpen, Some(30_301)),
        ),
        ev(
            8,
            30_301,
            EventKind::AttemptStarted {
                position: 2,
                attempt: 2,
            },
        ),
        ev(9, 30_400, failed(2, 2, FailureClass::Transient, None)),
        ev(
            10,
            30_400,
            EventKind::StepExhausted {
                position: 2,
                action: OnExhaust::Escalate,
                budget: "step attempts (2)".into(),
                message: "attempt 2 failed".into(),
            },
        ),
        ev(
            11,
            30_400,
            EventKind::Escalated {
                position: Some(2),
                reason: "step 'pay' gave up".into(),
                context: EscalationContext {
                    suggested_next: "retry or skip".into(),
                    ..Default::default()
                },
            },
        ),
        ev(
            12,
            7_380_000,
            EventKind::PatchMarker {
                position: 3,
                id: "fix-1".into(),
            },
        ),
        ev(
            13,
            7_380_400,
            EventKind::RunTerminated {
                actor: "alice".into(),
                reason: "refunded by hand".into(),
            },
        ),
    ]
}

fn completed_history() -> Vec<Event> {
    vec![
        ev(
            0,
            0,
            EventKind::RunStarted {
                workflow: "refund".into(),
                version: 2,
                input: json("{}"),
                dedupe_key: None,
                owner: None,
                continued_from: None,
                policy_version: None,
            },
        ),
        ev(
            1,
            5,
            scheduled(0, "lookup", Some("orders"), StepClass::Read),
        ),
        ev(
            2,
            5,
            EventKind::StepCompleted {
                position: 0,
                output: json("1"),
                attempt: 1,
                served_by: None,
                cost: 1,
            },
        ),
        ev(3, 9, scheduled(1, "note", None, StepClass::Write)),
        ev(
            4,
            9,
            EventKind::StepCompleted {
                position: 1,
                output: json("null"),
                attempt: 1,
                served_by: None,
                cost: 0,
            },
        ),
        ev(
            5,
            12,
            EventKind::RunCompleted {
                output: json(r#"{"ok":true}"#),
            },
        ),
    ]
}

#[test]
fn run_record_summarises_the_history() {
    let run = RunId([0xab; 16]);
    let record = RunRecord::from_history(run, None, &escalated_history());
    assert_eq!(record.workflow, "refund");
    assert_eq!(record.version, 2);
    assert_eq!(record.owner.as_deref(), Some("support"));
    assert_eq!(record.policy_version.as_deref(), Some("refunds-7"));
    assert_eq!(record.status, RunStatus::Terminated);
    assert_eq!(record.current_step, None, "an ended run stands nowhere");
    assert_eq!(record.created_ms, T0);
    assert_eq!(record.updated_ms, T0 + 7_380_400);
    assert_eq!(record.ended_ms, Some(T0 + 7_380_400));
    assert_eq!(
        record.tools.iter().collect::<Vec<_>>(),
        ["orders", "payments"]
    );
    assert_eq!(record.steps.len(), 2);
    let pay = &record.steps[1];
    assert_eq!(
        (pay.name.as_str(), pay.attempts, pay.retries()),
        ("pay", 2, 1)
    );
    let classes: Vec<&str> = pay.failures.iter().map(|f| f.class.label()).collect();
    assert_eq!(classes, ["breaker-open", "transient"]);
    assert!(matches!(
        &pay.outcome,
        StepEnd::Exhausted {
            action: OnExhaust::Escalate,
            ..
        }
    ));
    assert_eq!(record.escalations.len(), 1);
    assert_eq!(
        record.escalations[0].step,
        Some(StepRef {
            position: 2,
            name: "pay".into()
        })
    );
    assert_eq!(record.operator_actions.len(), 1);
    assert_eq!(record.operator_actions[0].action, "terminate");
    assert_eq!(
        record.outcome,
        Outcome::Terminated {
            actor: "alice".into(),
            reason: "refunded by hand".into()
        }
    );
    assert_eq!(record.cost(), 2);
    assert!(record.approvals.is_empty() && record.checks.is_empty());
}

#[test]
fn stored_metadata_wins_for_status_and_current_step() {
    let mut history = escalated_history();
    history.truncate(12); // up to the escalation
    let meta = RunMeta {
        workflow: "refund".into(),
        version: 2,
        status: RunStatus::Escalated.code(),
        next_seq: 12,
        created_ms: T0 - 5,
        updated_ms: T0 + 30_400,
        wake_ms: None,
        note: "step 'pay' gave up".into(),
        status_seq: 0,
    };
    let record = RunRecord::from_history(RunId([1; 16]), Some(&meta), &history);
    assert_eq!(record.status, RunStatus::Escalated);
    assert_eq!(record.note, "step 'pay' gave up");
    assert_eq!(record.created_ms, T0 - 5);
    assert_eq!(
        record.current_step,
        Some(StepRef {
            position: 2,
            name: "pay".into()
        })
    );
    assert_eq!(record.outcome, Outcome::InProgress);
    // Without metadata the escalation is derived from history.
    let derived = RunRecord::from_history(RunId([1; 16]), None, &history);
    assert_eq!(derived.status, RunStatus::Escalated);
}

#[test]
fn timeline_has_one_readable_line_per_event() {
    let text = timeline(&escalated_history());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 14);
    assert_eq!(lines[0], "  +0.000s  #0    RunStarted        refund v2, owner support, policy refunds-7, input {\"order\":\"A-1\"}");
    assert_eq!(lines[2], "  +0.010s  #2    AttemptFailed     [0] lookup attempt 1 transient: \"attempt 1 failed\" -> retry at +0.260s");
    assert_eq!(lines[3], "  +0.270s  #3    StepCompleted     [0] lookup attempt 2, cost 2 -> {\"card\":\"<redacted>\"}");
    assert_eq!(lines[7], "  +0.301s  #7    AttemptFailed     [2] pay attempt 1 breaker-open: \"attempt 1 failed\" -> retry at +30.301s");
    assert_eq!(lines[10], " +30.400s  #10   StepExhausted     [2] pay gave up (step attempts (2)): \"attempt 2 failed\" -> escalate");
    // PatchMarker goes through the generic renderer, as new event kinds will.
    assert_eq!(
        lines[12],
        "   +2h03m  #12   PatchMarker       [3] id=\"fix-1\""
    );
    assert_eq!(
        lines[13],
        "   +2h03m  #13   RunTerminated     by alice: \"refunded by hand\""
    );
    assert_eq!(timeline(&[]), "");
}

#[test]
fn payloads_and_messages_are_shortened_to_one_line() {
    let long = format!("{{\"text\":\"{}\"}}", "x".repeat(500));
    let shown = short_payload(&Payload(long.into_bytes()));
    assert_eq!(shown.chars().count(), PAYLOAD_CHARS_MAX);
    assert!(shown.ends_with("..."));
    assert_eq!(quote("two\nlines"), "\"two\\nlines\"");
    assert_eq!(
        short_payload(&Payload(vec![0xff, 0])),
        "(not JSON, 2 bytes)"
    );
    assert_eq!(short("ééé", 2), "...");
}

#[test]
fn times_render_at_a_readable_precision() {
    assert_eq!(relative_ms(0), "+0.000s");
    assert_eq!(relative_ms(59_999), "+59.999s");
    assert_eq!(relative_ms(123_000), "+2m03s");
    assert_eq!(relative_ms(7_380_000), "+2h03m");
    assert_eq!(relative_ms(3 * 86_400_000 + 4 * 3_600_000), "+3d04h");
    assert_eq!(relative_ms(-1_500), "-1.500s");
    assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(utc(T0), "2023-11-14T22:13:20.000Z");
    assert_eq!(utc(951_782_400_000 + 1), "2000-02-29T00:00:00.001Z");
}

#[test]
fn report_aggregates_per_tool() {
    let a = RunRecord::from_history(RunId([0xa; 16]), None, &escalated_history());
    let b = RunRecord::from_history(RunId([0xb; 16]), None, &completed_history());
    let report = Report::from_records([&a, &b]);
    assert_eq!(report.runs, 2);
    assert_eq!(report.ended_runs, 2);
    assert_eq!(report.completed_runs, 1);
    assert_eq!(report.success_rate, Some(0.5));
    assert_eq!(report.escalated_runs, 1);
    assert_eq!(report.total_cost, 3);
    assert_eq!(report.cost_per_completed_run, Some(3.0));

    let orders = &report.tools["orders"];
    assert_eq!(
        (
            orders.steps,
            orders.attempts,
            orders.retries,
            orders.completed
        ),
        (2, 3, 1, 2)
    );
    assert_eq!(orders.retry_share, Some(1.0 / 3.0));
    assert_eq!(orders.cost_per_success, Some(1.5));
    let payments = &report.tools["payments"];
    assert_eq!(
        (
            payments.breaker_refusals,
            payments.escalations,
            payments.completed
        ),
        (1, 1, 0)
    );
    assert_eq!(payments.success_rate, Some(0.0));
    assert_eq!(payments.exhausted.get("step attempts (2)"), Some(&1));
    assert_eq!(payments.failures.get("breaker-open"), Some(&1));
    assert_eq!(report.tools[NO_TOOL].steps, 1);
    assert_eq!(report.exhaustions.len(), 1);
    assert_eq!(report.exhaustions[0].action, "escalate");
    assert_eq!(report.approvals, ApprovalStats::default());

    let text = report.render();
    assert!(
        text.contains("success      1 of 2 ended runs completed (50.0%)"),
        "{text}"
    );
    assert!(
        text.contains("  payments: breaker-open 1, transient 1"),
        "{text}"
    );
    assert!(
        text.contains("[2] pay (tool payments): step attempts (2) -> escalate"),
        "{text}"
    );
    // Deterministic: the same records give the same text.
    assert_eq!(text, Report::from_records([&a, &b]).render());
}

#[test]
fn approval_latency_is_aggregated_once_approvals_are_recorded() {
    let mut record = RunRecord::from_history(RunId([1; 16]), None, &completed_history());
    let gate = |decision: Option<&str>, decided: Option<u64>| ApprovalRecord {
        gate: "g".into(),
        position: None,
        seq: 0,
        action: None,
        requested_ms: 1_000,
        reminders: 0,
        decided_ms: decided,
        decision: decision.map(String::from),
        actor: Some("bob".into()),
        role: None,
        reason: None,
        action_digest: None,
    };
    record.approvals = vec![
        gate(Some("approved"), Some(61_000)),
        gate(Some("rejected"), Some(2_000)),
        gate(Some("approved"), Some(3_601_000)),
        gate(None, None),
    ];
    let stats = Report::from_records([&record]).approvals;
    assert_eq!(
        (
            stats.requested,
            stats.approved,
            stats.rejected,
            stats.pending
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(stats.latency_ms_min, Some(1_000));
    assert_eq!(stats.latency_ms_median, Some(60_000));
    assert_eq!(stats.latency_ms_max, Some(3_600_000));
}

/// A refund that needs a human: a check, an approval that expires, is reopened by an
/// operator, reminded and approved; a payment the operator then skips with a value.
fn approval_history() -> Vec<Event> {
    let gate = [0x9a; 16];
    let request = crate::approval::ApprovalRequest {
        risk: crate::approval::RiskTier::High,
        ..crate::approval::ApprovalRequest::new("refund $420 to order A-1")
    };
    vec![
        ev(
            0,
            0,
            EventKind::RunStarted {
                workflow: "refund".into(),
                version: 3,
                input: json("{}"),
                dedupe_key: None,
                owner: None,
                continued_from: None,
                policy_version: None,
            },
        ),
        ev(
            1,
            10,
            EventKind::CheckRecorded {
                position: 0,
                name: "amount-limit".into(),
                passed: false,
                detail: "420 > 400".into(),
            },
        ),
        ev(
            2,
            20,
            EventKind::ApprovalRequested {
                position: 1,
                gate,
                request,
            },
        ),
        ev(3, 3_600_020, EventKind::ApprovalExpired { gate }),
        ev(
            4,
            3_600_020,
            EventKind::Escalated {
                position: Some(1),
                reason: "approval expired".into(),
                context: EscalationContext::default(),
            },
        ),
        ev(
            5,
            7_200_000,
            EventKind::OperatorAction {
                position: Some(1),
                action: OperatorActionKind::RetryStep,
                actor: "ops".into(),
                reason: "ask again".into(),
            },
        ),
        ev(
            6,
            7_260_000,
            EventKind::ApprovalReminded { gate, reminder: 1 },
        ),
        ev(
            7,
            7_500_000,
            EventKind::ApprovalDecided {
                gate,
                approved: true,
                actor: "dana".into(),
                reason: "known customer".into(),
                edits: None,
            },
        ),
        ev(
            8,
            7_500_001,
            EventKind::ApprovalDecided {
                gate,
                approved: false,
                actor: "lee".into(),
                reason: "too late".into(),
                edits: None,
            },
        ),
        ev(
            9,
            7_500_010,
            scheduled(2, "pay", Some("payments"), StepClass::Irreversible),
        ),
        ev(
            10,
            7_500_010,
            EventKind::AttemptStarted {
                position: 2,
                attempt: 1,
            },
        ),
        ev(11, 7_500_020, failed(2, 1, FailureClass::Terminal, None)),
        ev(
            12,
            7_500_020,
            EventKind::StepExhausted {
                position: 2,
                action: OnExhaust::Escalate,
                budget: "terminal error".into(),
                message: "declined".into(),
            },
        ),
        ev(
            13,
            7_500_020,
            EventKind::Escalated {
                position: Some(2),
                reason: "step 'pay' gave up".into(),
                context: EscalationContext::default(),
            },
        ),
        ev(
            14,
            7_600_000,
            EventKind::OperatorAction {
                position: Some(2),
                action: OperatorActionKind::SkipStep {
                    value: json(r#"{"paid":"by hand"}"#),
                },
                actor: "ops".into(),
                reason: "paid by phone".into(),
            },
        ),
        ev(
            15,
            7_600_100,
            EventKind::RunCompleted {
                output: json("true"),
            },
        ),
    ]
}

#[test]
fn approvals_checks_and_operator_actions_are_recorded() {
    let record = RunRecord::from_history(RunId([3; 16]), None, &approval_history());
    assert_eq!(
        record.checks,
        vec![CheckRecord {
            seq: 1,
            at_ms: T0 + 10,
            name: "amount-limit".into(),
            passed: false,
            detail: "420 > 400".into()
        }]
    );
    // Two rounds of one gate: the expired one and the one the operator reopened.
    assert_eq!(record.approvals.len(), 2, "{:#?}", record.approvals);
    let (first, second) = (&record.approvals[0], &record.approvals[1]);
    assert_eq!(first.gate, "9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a");
    assert_eq!(first.action.as_deref(), Some("refund $420 to order A-1"));
    assert_eq!(
        (first.decision.as_deref(), first.latency_ms()),
        (Some("expired"), Some(3_600_000))
    );
    assert_eq!(
        (second.seq, second.requested_ms, second.reminders),
        (5, T0 + 7_200_000, 1)
    );
    // The first decision wins; the late one changes nothing.
    assert_eq!(second.decision.as_deref(), Some("approved"));
    assert_eq!(
        (second.actor.as_deref(), second.reason.as_deref()),
        (Some("dana"), Some("known customer"))
    );
    assert_eq!(second.latency_ms(), Some(300_000));
    let actions: Vec<(&str, &str)> = record
        .operator_actions
        .iter()
        .map(|a| (a.action.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("retry-step [1]", "ask again"),
            ("skip-step [2]", "paid by phone")
        ]
    );
    // The skipped step is skipped by the operator, not a success of its tool; its exhaustion
    // stays on record.
    let pay = &record.steps[0];
    assert!(
        matches!(&pay.outcome, StepEnd::OperatorSkipped { actor, .. } if actor == "ops"),
        "{pay:?}"
    );
    assert!(!pay.succeeded());
    assert_eq!(pay.exhaustions.len(), 1);
    assert_eq!(record.escalations.len(), 2);
    assert_eq!(record.status, RunStatus::Completed);

    let report = Report::from_records([&record]);
    assert_eq!(
        (
            report.approvals.requested,
            report.approvals.approved,
            report.approvals.expired
        ),
        (2, 1, 1)
    );
    assert_eq!(report.approvals.latency_ms_median, Some(300_000));
    assert_eq!(
        report.tools["payments"].exhausted.get("terminal error"),
        Some(&1)
    );
    let payments = &report.tools["payments"];
    assert_eq!(
        (
            payments.completed,
            payments.operator_skipped,
            payments.success_rate
        ),
        (0, 1, Some(0.0))
    );

    let text = record.render();
    assert!(text.contains("  #2 +0.020s gate 9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a \"refund $420 to order A-1\": expired after 1h00m"), "{text}");
    assert!(
        text.contains("approved after 5m00s by dana: \"known customer\""),
        "{text}"
    );
    assert!(
        text.contains("  #1 +0.010s amount-limit FAILED: \"420 > 400\""),
        "{text}"
    );

    let timeline = timeline(&approval_history());
    let lines: Vec<&str> = timeline.lines().collect();
    assert_eq!(
        lines[1],
        "  +0.010s  #1    CheckRecorded     [0] amount-limit FAILED: \"420 > 400\""
    );
    assert_eq!(lines[2], "  +0.020s  #2    ApprovalRequested [1] gate 9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a: \"refund $420 to order A-1\" (risk High)");
    assert_eq!(
        lines[3],
        "   +1h00m  #3    ApprovalExpired   gate 9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a"
    );
    assert_eq!(
        lines[5],
        "   +2h00m  #5    OperatorAction    [1] retry-step by ops: \"ask again\""
    );
    assert_eq!(
        lines[6],
        "   +2h01m  #6    ApprovalReminded  gate 9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a, reminder 1"
    );
    assert_eq!(lines[7], "   +2h05m  #7    ApprovalDecided   gate 9a9a9a9a-9a9a-9a9a-9a9a-9a9a9a9a9a9a approved by dana: \"known customer\"");
    assert_eq!(lines[14], "   +2h06m  #14   OperatorAction    [2] pay skip-step with {\"paid\":\"by hand\"} by ops: \"paid by phone\"");
}

#[test]
fn contradictory_histories_still_yield_a_record() {
    // An outcome without its StepScheduled, and a second terminal event.
    let history = vec![
        ev(
            0,
            0,
            EventKind::StepCompleted {
                position: 4,
                output: json("1"),
                attempt: 1,
                served_by: None,
                cost: 0,
            },
        ),
        ev(
            1,
            1,
            EventKind::RunFailed {
                error: "boom".into(),
            },
        ),
        ev(2, 2, EventKind::RunCompleted { output: json("1") }),
    ];
    let record = RunRecord::from_history(RunId([2; 16]), None, &history);
    assert_eq!(record.steps[0].name, "#4");
    assert_eq!(
        record.outcome,
        Outcome::Failed {
            error: "boom".into()
        }
    );
    assert_eq!(record.status, RunStatus::Failed);
    let record = RunRecord::from_history(RunId([2; 16]), None, &[]);
    assert_eq!(record.events, 0);
    assert!(!record.render().is_empty());
}

/// A step written as one `StepRan` must read exactly like `StepScheduled` + `StepCompleted`
/// to the replay fold, the audit record and the per-tool report.
#[test]
fn step_ran_reads_like_scheduled_then_completed() {
    let started = ev(
        0,
        0,
        EventKind::RunStarted {
            workflow: "crm".into(),
            version: 1,
            input: json("{}"),
            dedupe_key: None,
            owner: None,
            continued_from: None,
            policy_version: None,
        },
    );
    let output = json(r#""lead-1""#);
    let two = vec![
        started.clone(),
        ev(
            1,
            5,
            scheduled(0, "create_lead", Some("crm"), StepClass::Write),
        ),
        ev(
            2,
            5,
            EventKind::StepCompleted {
                position: 0,
                output: output.clone(),
                attempt: 1,
                served_by: None,
                cost: 3,
            },
        ),
    ];
    let one = vec![
        started,
        ev(
            1,
            5,
            EventKind::StepRan {
                position: 0,
                name: "create_lead".into(),
                tool: Some("crm".into()),
                class: StepClass::Write,
                idem_key: "run/0".into(),
                input_hash: 0,
                output,
                attempt: 1,
                cost: 3,
            },
        ),
    ];

    let fold = |h: &[Event]| crate::replay::ReplayState::from_events(h).unwrap();
    let (a, b) = (fold(&two), fold(&one));
    assert_eq!(a.budget(), b.budget());
    let step = |s: &crate::replay::ReplayState| match &s.command(0).unwrap().recorded {
        crate::replay::Recorded::Step(step) => step.clone(),
        other => panic!("not a step: {other:?}"),
    };
    let (sa, sb) = (step(&a), step(&b));
    assert_eq!(sa, sb);
    assert!(matches!(
        sb.outcome,
        Some(crate::replay::StepOutcome::Completed { attempt: 1, .. })
    ));

    let run = RunId([7; 16]);
    let (ra, rb) = (
        RunRecord::from_history(run, None, &two),
        RunRecord::from_history(run, None, &one),
    );
    let mut steps_a = ra.steps.clone();
    steps_a[0].seq = 1;
    assert_eq!(steps_a, rb.steps);
    assert_eq!(rb.steps[0].cost, 3);
    assert_eq!(
        Report::from_records([&ra]).render(),
        Report::from_records([&rb]).render(),
        "the per-tool report does not depend on the form"
    );
    let line = timeline(&one).lines().nth(1).unwrap().to_string();
    assert_eq!(
        line,
        "  +0.005s  #1    StepRan           [0] create_lead tool=crm class=Write attempt 1, cost 3 -> \"lead-1\""
    );
}

/// The engine folds events it owns with `apply_owned`; tools fold borrowed ones with `apply`.
/// Both must build the same state, and refuse the same contradictions.
#[test]
fn owned_and_borrowed_folds_agree() {
    let fold_borrowed = |h: &[Event]| {
        let mut state = crate::replay::ReplayState::default();
        h.iter()
            .try_for_each(|e| state.apply(e))
            .map(|()| format!("{state:?}"))
            .map_err(|c| (c.seq, c.reason))
    };
    let fold_owned = |h: &[Event]| {
        let mut state = crate::replay::ReplayState::default();
        h.iter()
            .try_for_each(|e| state.apply_owned(e.clone()))
            .map(|()| format!("{state:?}"))
            .map_err(|c| (c.seq, c.reason))
    };
    let ran = |seq: u64, position: u32| {
        ev(
            seq,
            seq,
            EventKind::StepRan {
                position,
                name: format!("s{position}"),
                tool: Some("crm".into()),
                class: StepClass::Write,
                idem_key: format!("run/{position}"),
                input_hash: 7,
                output: json("1"),
                attempt: 1,
                cost: 2,
            },
        )
    };
    let mut with_ran = completed_history();
    let next = with_ran.len() as u64 - 1;
    let end = with_ran.pop().unwrap();
    with_ran.push(ran(next, 90));
    with_ran.push(ran(next + 1, 91));
    with_ran.push(Event {
        seq: next + 2,
        ..end
    });
    let mut twice = with_ran.clone();
    let second = twice.len() - 2;
    twice[second] = ran(next + 1, 90);
    let mut early = with_ran.clone();
    early.remove(0);
    assert!(fold_owned(&with_ran).is_ok());
    assert!(fold_owned(&twice).unwrap_err().1.contains("recorded twice"));
    assert!(fold_owned(&early).is_err());
    for history in [
        escalated_history(),
        completed_history(),
        approval_history(),
        with_ran,
        twice,
        early,
    ] {
        assert_eq!(fold_owned(&history), fold_borrowed(&history));
    }
}

/// A checkpoint of the fold at any point, decoded and folded on, is the fold of the whole
/// history: loading a parked run from its checkpoint must not change what replay sees.
#[test]
fn a_checkpoint_at_any_prefix_folds_on_to_the_same_state() {
    let fold = |h: &[Event]| {
        let mut state = crate::replay::ReplayState::default();
        for e in h {
            state.apply(e).unwrap();
        }
        state
    };
    for mut history in [escalated_history(), completed_history(), approval_history()] {
        // Only the part that folds: some of these histories end in a deliberate contradiction.
        let mut probe = crate::replay::ReplayState::default();
        let valid = history
            .iter()
            .take_while(|e| probe.apply(e).is_ok())
            .count();
        history.truncate(valid);
        assert!(valid >= 5, "{valid}");
        let whole = format!("{:?}", fold(&history));
        for k in 0..=history.len() {
            let bytes = crate::codec::encode_checkpoint(&fold(&history[..k]));
            let mut state = crate::codec::decode_checkpoint(&bytes).unwrap();
            assert_eq!(state.next_seq(), k as u64);
            for e in &history[k..] {
                state.apply_owned(e.clone()).unwrap();
            }
            assert_eq!(format!("{state:?}"), whole, "checkpoint after {k} events");
        }
    }
    // Damage and other formats are refused, never misread.
    let bytes = crate::codec::encode_checkpoint(&fold(&completed_history()));
    assert!(crate::codec::decode_checkpoint(&bytes[..bytes.len() - 1]).is_err());
    let mut other = bytes.clone();
    other[0] = crate::codec::CHECKPOINT_FORMAT.wrapping_add(1);
    assert!(crate::codec::decode_checkpoint(&other).is_err());
    assert!(crate::codec::decode_checkpoint(&[]).is_err());
}

proptest::proptest! {
    /// A damaged checkpoint (a changed byte, a cut, bytes added) decodes or is refused; it
    /// never panics and never asks for an unbounded allocation, whatever length it claims.
    #[test]
    fn damaged_checkpoints_never_panic(
        which in 0usize..3,
        at in proptest::prelude::any::<proptest::sample::Index>(),
        byte in proptest::prelude::any::<u8>(),
        cut in proptest::prelude::any::<proptest::sample::Index>(),
        tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
    ) {
        let history = [escalated_history(), completed_history(), approval_history()][which].clone();
        let mut state = crate::replay::ReplayState::default();
        for e in &history {
            if state.apply(e).is_err() {
                break;
            }
        }
        let mut bytes = crate::codec::encode_checkpoint(&state);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = crate::codec::decode_checkpoint(&bytes);
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend_from_slice(&tail);
        let _ = crate::codec::decode_checkpoint(&bytes);
    }
}

/// The checkpoint encoding of folds that hold every kind of record, pinned. A change to any
/// type a fold is made of changes these bytes: bump `codec::CHECKPOINT_FORMAT` (so that stored
/// checkpoints of the old shape are ignored, not misread), then update the digest.
#[test]
fn the_checkpoint_encoding_is_pinned_to_its_format_version() {
    let mut hasher = blake3::Hasher::new();
    for history in [escalated_history(), completed_history(), approval_history()] {
        let mut state = crate::replay::ReplayState::default();
        for e in &history {
            if state.apply(e).is_err() {
                break;
            }
        }
        hasher.update(&crate::codec::encode_checkpoint(&state));
    }
    assert_eq!(crate::codec::CHECKPOINT_FORMAT, 4);
    assert_eq!(
        hasher.finalize().to_hex().as_str(),
        "a4312a997aa6d1c35859094594c1c7981203f35fbea05ce819e0f754c131369e",
        "the fold's shape changed: bump codec::CHECKPOINT_FORMAT and update this digest"
    );
}
