//! The run record and the per-tool report count what happened: an operator's skip, a
//! degraded step and a skipped step are not successes, and every attempt's cost counts.
//! Every number is pinned on a history built here, event by event.

use annal::audit::{Report, RunRecord, StepEnd};
use annal::{Event, EventKind, FailureClass, OnExhaust, OperatorActionKind, Payload, StepClass};
use annal_storage::RunId;

const T0: u64 = 1_700_000_000_000;
const RUN: RunId = RunId([7; 16]);

fn json(text: &str) -> Payload {
    Payload(text.as_bytes().to_vec())
}

fn scheduled(position: u32, name: &str, tool: &str) -> EventKind {
    EventKind::StepScheduled {
        position,
        name: name.into(),
        tool: Some(tool.into()),
        class: StepClass::Write,
        idem_key: format!("run/{position}"),
        input_hash: 0,
    }
}

fn failed(position: u32, attempt: u32, retry: bool) -> EventKind {
    EventKind::AttemptFailed {
        position,
        attempt,
        class: FailureClass::Transient,
        message: format!("attempt {attempt} failed"),
        retry_at_ms: retry.then_some(T0 + 1_000),
    }
}

fn exhausted(position: u32, action: OnExhaust) -> EventKind {
    EventKind::StepExhausted {
        position,
        action,
        budget: "step attempts (2)".into(),
        message: "attempt 2 failed".into(),
    }
}

/// One run in which each tool's step ends another way:
/// - `search_api` degrades after 2 failed attempts;
/// - `web_fetch` is skipped by its on-exhaust rule after 1;
/// - `crm_write` escalates after 2 and an operator skips it with a value;
/// - `crm_read` succeeds at once, reporting 4 units;
/// - `model` fails once, then succeeds reporting 3 units.
///
/// `costs` adds the cost failed attempts reported (`AttemptCost`): 5 units for `model`'s,
/// 1 for each of `crm_write`'s.
fn history(costs: bool) -> Vec<Event> {
    let mut kinds = vec![EventKind::RunStarted {
        workflow: "support".into(),
        version: 1,
        input: json("{}"),
        dedupe_key: None,
        owner: None,
        continued_from: None,
        policy_version: None,
    }];
    kinds.extend([
        scheduled(0, "search", "search_api"),
        failed(0, 1, true),
        failed(0, 2, false),
        exhausted(0, OnExhaust::Degrade(json("[]"))),
        scheduled(1, "fetch", "web_fetch"),
        failed(1, 1, false),
        exhausted(1, OnExhaust::Skip),
        scheduled(2, "crm", "crm_write"),
        failed(2, 1, true),
    ]);
    if costs {
        kinds.push(EventKind::AttemptCost {
            position: 2,
            attempt: 1,
            cost: 1,
        });
    }
    kinds.push(failed(2, 2, false));
    if costs {
        kinds.push(EventKind::AttemptCost {
            position: 2,
            attempt: 2,
            cost: 1,
        });
    }
    kinds.extend([
        exhausted(2, OnExhaust::Escalate),
        EventKind::Escalated {
            position: Some(2),
            reason: "step 'crm' gave up".into(),
            context: Default::default(),
        },
        EventKind::OperatorAction {
            position: Some(2),
            action: OperatorActionKind::SkipStep {
                value: json("\"case-1\""),
            },
            actor: "olga".into(),
            reason: "written by hand".into(),
        },
        EventKind::StepRan {
            position: 3,
            name: "lookup".into(),
            tool: Some("crm_read".into()),
            class: StepClass::Read,
            idem_key: "run/3".into(),
            input_hash: 0,
            output: json("1"),
            attempt: 1,
            cost: 4,
        },
        scheduled(4, "draft", "model"),
        failed(4, 1, true),
    ]);
    if costs {
        kinds.push(EventKind::AttemptCost {
            position: 4,
            attempt: 1,
            cost: 5,
        });
    }
    kinds.extend([
        EventKind::StepCompleted {
            position: 4,
            output: json("\"draft\""),
            attempt: 2,
            served_by: None,
            cost: 3,
        },
        EventKind::RunCompleted { output: json("1") },
    ]);
    kinds
        .into_iter()
        .enumerate()
        .map(|(seq, kind)| Event {
            seq: seq as u64,
            at_ms: T0 + seq as u64 * 10,
            kind,
        })
        .collect()
}

/// What the report said before is wrong here: an operator's skip counted as a success of
/// `crm_write` (`success 1/1 100.0%`, "completed at attempt 2 by operator").
#[test]
fn an_operators_skip_is_not_a_success_of_the_tool() {
    let record = RunRecord::from_history(RUN, None, &history(false));
    let crm = record.steps.iter().find(|s| s.name == "crm").unwrap();
    assert!(!crm.succeeded(), "{:?}", crm.outcome);
    let text = record.render();
    assert!(
        !text.contains("completed at attempt 2 by operator"),
        "{text}"
    );
    assert!(
        text.contains("skipped by operator olga after 2 attempts"),
        "{text}"
    );

    let report = Report::from_records([&record]);
    let crm = &report.tools["crm_write"];
    assert_eq!(
        (crm.steps, crm.attempts, crm.completed),
        (1, 2, 0),
        "{crm:?}"
    );
    assert_eq!(crm.success_rate, Some(0.0));
    assert_eq!(crm.cost_per_success, None);
    for tool in ["search_api", "web_fetch"] {
        let stats = &report.tools[tool];
        assert_eq!(
            (stats.completed, stats.success_rate),
            (0, Some(0.0)),
            "{tool}"
        );
    }
    let model = &report.tools["model"];
    assert_eq!(
        (model.attempts, model.retries, model.completed, model.cost),
        (2, 1, 1, 3)
    );
    assert_eq!(model.cost_per_success, Some(3.0));
    assert_eq!(report.tools["crm_read"].cost_per_success, Some(4.0));
    assert_eq!((report.total_cost, report.completed_runs), (7, 1));
}

/// Every number of the report and the record, with the cost failed attempts reported.
#[test]
fn every_ending_has_its_own_column_and_every_attempt_its_cost() {
    let record = RunRecord::from_history(RUN, None, &history(true));
    let step = |name: &str| record.steps.iter().find(|s| s.name == name).unwrap();
    assert!(matches!(
        &step("crm").outcome,
        StepEnd::OperatorSkipped { actor, .. } if actor == "olga"
    ));
    assert_eq!(
        step("crm")
            .failures
            .iter()
            .map(|f| f.cost)
            .collect::<Vec<_>>(),
        [1, 1]
    );
    assert_eq!((step("draft").cost, step("draft").success_cost()), (8, 3));
    assert_eq!(record.cost(), 2 + 4 + 8);

    let report = Report::from_records([&record]);
    let columns = |tool: &str| {
        let s = &report.tools[tool];
        (
            s.completed,
            s.degraded,
            s.skipped,
            s.operator_skipped,
            s.failed,
            s.gave_up,
        )
    };
    assert_eq!(columns("search_api"), (0, 1, 0, 0, 0, 1));
    assert_eq!(columns("web_fetch"), (0, 0, 1, 0, 0, 1));
    assert_eq!(columns("crm_write"), (0, 0, 0, 1, 0, 0));
    assert_eq!(columns("crm_read"), (1, 0, 0, 0, 0, 0));
    assert_eq!(columns("model"), (1, 0, 0, 0, 0, 0));
    let crm = &report.tools["crm_write"];
    assert_eq!((crm.cost, crm.cost_per_success), (2, None));
    assert_eq!(crm.escalations, 1);
    let model = &report.tools["model"];
    assert_eq!(
        (model.cost, model.cost_per_success, model.success_rate),
        (8, Some(8.0), Some(1.0))
    );
    assert_eq!(report.total_cost, 14);
    assert_eq!(report.cost_per_completed_run, Some(14.0));
    assert_eq!(
        report.tools.values().map(|s| s.attempts).sum::<u64>(),
        2 + 1 + 2 + 1 + 2
    );

    let text = report.render();
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("tool"))
        .unwrap();
    for column in [
        "success",
        "degraded",
        "skipped",
        "op-skipped",
        "failed",
        "cost/success",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = |tool: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(tool))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // tool steps attempts retries success% degraded skipped op-skipped failed escalated% …
    assert_eq!(
        row("crm_write")[..12],
        [
            "crm_write",
            "1",
            "2",
            "1/2",
            "50.0%",
            "0/1",
            "0.0%",
            "0",
            "0",
            "1",
            "0",
            "1/1"
        ]
    );
    assert_eq!(
        row("model")[..7],
        ["model", "1", "2", "1/2", "50.0%", "1/1", "100.0%"]
    );
    assert_eq!(row("model")[row("model").len() - 2..], ["8", "8.00"]);
}
