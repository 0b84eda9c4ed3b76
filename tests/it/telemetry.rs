//! Telemetry: a tracing event for every lifecycle transition, counters and histograms through
//! the `metrics` facade.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use annal::{
    Actor, ApprovalRequest, Ctx, Error, OperatorActionKind, Policy, StepClass, StepFailure,
    Verdict, WorkflowError,
};
use annal_storage::SimStore;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing_subscriber::util::SubscriberInitExt;

use crate::support::{on, CapturedLog};

/// One recorder for the whole test binary (a global recorder can be installed once); each
/// test uses its own workflow and tool names, so its counts are its own.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only metrics recorder of this binary");
        snapshotter
    })
}

/// Per metric and labels: the counter's total and the number of histogram values.
type Seen = Vec<(String, Vec<(String, String)>, u64, usize)>;

/// Everything recorded so far. A snapshot drains the recorder, and tests run concurrently:
/// each snapshot is added here, and every test reads from here.
fn recorded() -> std::sync::MutexGuard<'static, Seen> {
    static SEEN: OnceLock<std::sync::Mutex<Seen>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let name = key.name().to_string();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let (count, values) = match value {
            DebugValue::Counter(n) => (n, 0),
            DebugValue::Histogram(values) => (0, values.len()),
            DebugValue::Gauge(_) => (0, 0),
        };
        match seen
            .iter_mut()
            .find(|(n, l, _, _)| *n == name && *l == labels)
        {
            Some(entry) => {
                entry.2 += count;
                entry.3 += values;
            }
            None => seen.push((name, labels, count, values)),
        }
    }
    seen
}

fn matching<'a>(
    seen: &'a Seen,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a (String, Vec<(String, String)>, u64, usize)> {
    seen.iter().filter(move |(n, l, _, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
    })
}

/// The value of counter `name` with these labels (0 if never incremented).
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let seen = recorded();
    matching(&seen, name, labels).map(|e| e.2).sum()
}

/// How many values histogram `name` holds with these labels.
fn histogram_len(name: &str, labels: &[(&str, &str)]) -> usize {
    let seen = recorded();
    matching(&seen, name, labels).map(|e| e.3).sum()
}

fn debug_log(log: &CapturedLog) -> impl SubscriberInitExt {
    crate::support::share_callsite_interest();
    tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish()
}

/// The log lines of the telemetry events (and the test's own) with `message`.
fn lines<'a>(text: &'a str, message: &str) -> Vec<&'a str> {
    let wanted = format!("telemetry: {message}");
    text.lines().filter(|l| l.contains(&wanted)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_looping_run_reports_attempts_retries_exhaustions_and_its_ceiling() {
    snapshotter();
    let log = CapturedLog::default();
    let _guard = debug_log(&log).set_default();
    let store = Arc::new(SimStore::new());
    let policy = "[run]\nmax_iterations = 6\n[tools.tel_fetch]\nmax_retries = 1\nbackoff = \"none\"\non_exhaust = \"skip\"\n";
    let engine = on(&store)
        .policy(Policy::from_toml(policy).unwrap())
        .register("tel_loop", 1, |ctx: Ctx, ()| async move {
            for i in 0..10u32 {
                let _: Option<String> = ctx
                    .step(&format!("fetch_{i}"))
                    .tool("tel_fetch")
                    .class(StepClass::Read)
                    .run(move |a| async move {
                        tracing::info!("fetching");
                        // Every other step fails: a retry while the tool has one, then a skip.
                        if i % 2 == 1 {
                            return Err(StepFailure::transient("503"));
                        }
                        Ok(Some(format!("page {}", a.number)))
                    })
                    .await?;
            }
            Ok::<_, WorkflowError>(())
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, ()>("tel_loop", &()).await.unwrap();
    assert!(matches!(
        handle.result().await,
        Err(Error::Escalated { .. })
    ));
    let run = handle.run_id().to_string();
    // Steps 0, 2 and 4 succeed at once; 1 fails, is retried once, fails again and is skipped;
    // 3 fails once and is skipped, the tool's one retry being spent: 6 attempts, and step 5
    // meets the ceiling.
    let tool = [("tool", "tel_fetch")];
    assert_eq!(counter("annal_attempts_total", &tool), 6);
    assert_eq!(counter("annal_retries_total", &tool), 1);
    assert_eq!(
        counter(
            "annal_attempt_failures_total",
            &[("tool", "tel_fetch"), ("class", "transient")]
        ),
        3
    );
    assert_eq!(
        counter(
            "annal_exhaustions_total",
            &[("tool", "tel_fetch"), ("action", "skip")]
        ),
        2
    );
    assert_eq!(
        counter(
            "annal_exhaustions_total",
            &[("tool", "tel_fetch"), ("action", "escalate")]
        ),
        1
    );
    assert!(
        counter(
            "annal_ceilings_total",
            &[("ceiling", "max_iterations"), ("action", "escalate")]
        ) >= 1
    );
    assert_eq!(histogram_len("annal_step_duration_seconds", &tool), 6);
    for status in ["running", "escalated"] {
        assert_eq!(
            counter(
                "annal_runs_total",
                &[("workflow", "tel_loop"), ("status", status)]
            ),
            1,
            "{status}"
        );
    }

    let text = log.text();
    assert_eq!(lines(&text, "run started").len(), 1, "{text}");
    assert_eq!(lines(&text, "attempt started").len(), 6, "{text}");
    assert_eq!(lines(&text, "step completed").len(), 3, "{text}");
    assert_eq!(lines(&text, "step skipped").len(), 2, "{text}");
    let failed = lines(&text, "attempt failed");
    assert_eq!(failed.len(), 3, "{text}");
    assert!(
        failed[0].contains("class=\"transient\"")
            && failed[0].contains("error=\"503\"")
            && failed[0].contains("retry_at_ms=1700000000000"),
        "{}",
        failed[0]
    );
    assert!(
        !failed[1].contains("retry_at_ms"),
        "no retry: {}",
        failed[1]
    );
    for line in &failed {
        assert!(
            line.contains(&run) && line.contains("tool=\"tel_fetch\""),
            "{line}"
        );
    }
    // The tool's own events are inside the attempt's span, with its fields.
    let fetching = lines(&text, "fetching");
    assert_eq!(fetching.len(), 6, "{text}");
    assert!(
        fetching[0].contains(&format!(
            ":attempt{{run={run} step=fetch_0 tool=\"tel_fetch\" attempt=1 class=Read}}"
        )),
        "{}",
        fetching[0]
    );
    let ceiling = lines(&text, "run ceiling reached");
    assert_eq!(ceiling.len(), 1, "{text}");
    assert!(ceiling[0].contains("step=\"fetch_5\""), "{}", ceiling[0]);
    assert!(
        ceiling[0].contains("spent=6 attempts spent, 6 of them by tool tel_fetch"),
        "{}",
        ceiling[0]
    );
    assert_eq!(lines(&text, "run escalated").len(), 1, "{text}");

    // An operator acts: recorded, counted and logged.
    engine
        .operate(handle.run_id(), "olga", OperatorActionKind::Abort, "loops")
        .await
        .unwrap();
    assert_eq!(
        counter(
            "annal_runs_total",
            &[("workflow", "tel_loop"), ("status", "failed")]
        ),
        1
    );
    let text = log.text();
    let action = lines(&text, "operator action");
    assert_eq!(action.len(), 1, "{text}");
    assert!(action[0].contains("action=\"abort\"") && action[0].contains("actor=\"olga\""));
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn resuming_an_approved_run_is_visible_at_debug() {
    snapshotter();
    let log = CapturedLog::default();
    let _guard = debug_log(&log).set_default();
    let store = Arc::new(SimStore::new());
    let engine = on(&store)
        .register("tel_refund", 1, |ctx: Ctx, ()| async move {
            let decision = ctx
                .approval(ApprovalRequest::new("refund 420 to A-1"))
                .await?;
            let paid: String = ctx
                .step("pay")
                .tool("tel_payments")
                .run(|_| async { Ok("paid".to_string()) })
                .await?;
            Ok::<_, WorkflowError>(format!("{decision:?} {paid}"))
        })
        .open()
        .await
        .unwrap();
    let handle = engine.start::<_, String>("tel_refund", &()).await.unwrap();
    // The run waits long enough to park.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let gate = engine
        .pending_approvals(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.workflow == "tel_refund")
        .unwrap()
        .gate;
    engine
        .decide(
            gate,
            &Actor::new("dana", &["finance"]),
            Verdict::Approve { edits: None },
            "fine",
        )
        .await
        .unwrap();
    assert!(handle.result().await.unwrap().ends_with("paid"));
    let text = log.text();
    for message in [
        "run started",
        "approval requested",
        "run parking",
        "approval decided",
        "run resumed",
        "attempt started",
        "step completed",
        "run ended",
    ] {
        assert_eq!(lines(&text, message).len(), 1, "{message}: {text}");
    }
    let decided = lines(&text, "approval decided")[0];
    assert!(
        decided.contains("actor=\"dana\"") && decided.contains("role=\"any\""),
        "{decided}"
    );
    assert!(decided.contains("latency_ms=120000"), "{decided}");
    assert!(lines(&text, "run ended")[0].contains("status=\"completed\""));
    assert!(counter("annal_approvals_requested_total", &[]) >= 1);
    assert!(
        histogram_len(
            "annal_approval_latency_seconds",
            &[("decision", "approved")]
        ) >= 1
    );
    for status in ["running", "parked", "completed"] {
        assert_eq!(
            counter(
                "annal_runs_total",
                &[("workflow", "tel_refund"), ("status", status)]
            ),
            1,
            "{status}"
        );
    }
    assert_eq!(
        counter("annal_runs_resumed_total", &[("workflow", "tel_refund")]),
        1
    );
    engine.shutdown().await;
}
