//! A small interpreter workflow and proptest strategies that generate programs for it, so a
//! property test can throw many differently shaped workflows at the [`CrashHarness`].
//!
//! A [`Program`] is plain serde data: a list of [`Op`]s. [`register_program`] registers the
//! workflow [`PROGRAM_WORKFLOW`] (version 1), which takes a `Program` as its input and runs
//! it op by op against the scenario's fake [`Tools`], one [`FakeTool`](super::FakeTool) per
//! tool name, so every effect is counted per idempotency key. The run's output is the list of
//! op results (see [`Op`] for what each op contributes).
//!
//! [`arb_program`] generates programs with steps of every [`StepClass`], scripted failures of
//! every [`FailureClass`], durable sleeps, signals, recorded random values and joins of two
//! concurrent steps. [`program_harness`] turns a program into a ready [`CrashHarness`] whose
//! driver sends every signal the program waits for.
//!
//! A crash property over generated programs:
//!
//! ```no_run
//! use annal::testing::program::{arb_program, program_harness};
//! use proptest::prelude::*;
//!
//! proptest! {
//!     #[test]
//!     fn every_program_survives_every_crash(program in arb_program()) {
//!         let rt = tokio::runtime::Builder::new_current_thread()
//!             .enable_all()
//!             .start_paused(true)
//!             .build()
//!             .unwrap();
//!         let report = rt.block_on(program_harness(&program).with_torn_tails().run());
//!         prop_assert!(report.is_ok(), "{}", report.unwrap_err());
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use annal_storage::RunId;
use futures::future::BoxFuture;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{CrashHarness, Tools};
use crate::error::WorkflowError;
use crate::event::EventKind;
use crate::policy::{Backoff, FailureClass, RetryPolicy, StepClass, StepFailure};
use crate::{Ctx, Engine, EngineBuilder};

/// Name under which [`register_program`] registers the interpreter (version 1).
pub const PROGRAM_WORKFLOW: &str = "program";

/// Attempts each step of a program may make, the first included. A step with at least this
/// many scripted failures gives up.
pub const MAX_ATTEMPTS: u32 = 3;

/// Longest sleep the interpreter honours; longer ones are cut to this (so that a hostile
/// input cannot overflow a deadline).
pub const MAX_SLEEP_SECS: u64 = 30 * 24 * 3600;

/// A workflow as data, run by the interpreter workflow [`PROGRAM_WORKFLOW`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Program {
    /// The ops, run in order.
    pub ops: Vec<Op>,
}

/// One step of a [`Program`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// The step's name.
    pub name: String,
    /// Its retry class.
    pub class: StepClass,
    /// The fake tool it calls (one [`FakeTool`](super::FakeTool) per name).
    pub tool: String,
    /// Scripted failures: attempt `n` fails with `failures[n - 1]`, later attempts call the
    /// tool and succeed. `Ambiguous` applies the effect at the tool and then loses the
    /// response; every other class fails before the tool is called. `Terminal` is a
    /// property of the request: once an attempt fails `Terminal`, so does every later one
    /// (an attempt after a crash, found not done by reconciling, meets the same error).
    /// Scripting by attempt number (which history records) keeps the script the same
    /// across crashes.
    pub failures: Vec<FailureClass>,
    /// For `Irreversible` steps: answer lost outcomes from the tool's effect ledger
    /// ([`FakeTool::reconcile`](super::FakeTool::reconcile)). Without it a lost outcome
    /// fails the step (live) or escalates the run (after a crash).
    pub reconcile: bool,
}

impl StepSpec {
    /// A step that succeeds at once.
    pub fn new(name: &str, class: StepClass, tool: &str) -> Self {
        Self {
            name: name.to_string(),
            class,
            tool: tool.to_string(),
            failures: Vec::new(),
            reconcile: false,
        }
    }

    /// With these scripted failures.
    pub fn failing(mut self, failures: impl IntoIterator<Item = FailureClass>) -> Self {
        self.failures = failures.into_iter().collect();
        self
    }

    /// With a reconcile hook.
    pub fn reconciled(mut self) -> Self {
        self.reconcile = true;
        self
    }
}

/// Which recorded value a [`Op::Value`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueOp {
    /// `ctx.now_ms()`.
    Now,
    /// `ctx.random_u64()`.
    Random,
    /// `ctx.uuid()`.
    Uuid,
}

/// One operation of a [`Program`], and what it adds to the run's output list.
///
/// The values recorded by [`Op::Value`] differ from run to run, so they are not in the
/// output; instead every later step declares them as its input (`StepBuilder::input`), and
/// a replay that handed back a different value would show up as drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Run a step. Output: `{"ok": <tool result>}` or `{"failed": "<step>"}`; a failed
    /// step does not end the program.
    Step(StepSpec),
    /// A durable sleep. Output: `"slept"`.
    Sleep {
        /// Seconds to sleep.
        secs: u64,
    },
    /// Wait for the next signal of this name; [`program_driver`] sends it. Output: the
    /// signal's payload, `"<name>#<i>"` for the `i`-th wait on that name.
    Signal {
        /// Signal name.
        name: String,
    },
    /// Record a deterministic value. Output: the kind, e.g. `"uuid"`.
    Value {
        /// Which value.
        kind: ValueOp,
    },
    /// Run two steps concurrently. Output: a list of the two step outputs.
    Join(StepSpec, StepSpec),
    /// Ask for a human approval; [`program_driver`] plays the reviewer and decides it as
    /// `approve` says. Output: `"approved"` or `"rejected"`.
    Approval {
        /// The reviewer's verdict.
        approve: bool,
    },
}

impl Program {
    /// A program of these ops.
    pub fn new(ops: impl IntoIterator<Item = Op>) -> Self {
        Self {
            ops: ops.into_iter().collect(),
        }
    }

    /// Every signal the program waits for, in program order, with the payload the driver
    /// sends: `(name, "<name>#<i>")`.
    pub fn signals(&self) -> Vec<(String, Value)> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for op in &self.ops {
            if let Op::Signal { name } = op {
                let i = seen.entry(name).or_default();
                out.push((name.clone(), signal_payload(name, *i)));
                *i += 1;
            }
        }
        out
    }

    /// The reviewer's verdicts for the program's approvals, in program order.
    pub fn approvals(&self) -> Vec<bool> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Approval { approve } => Some(*approve),
                _ => None,
            })
            .collect()
    }

    /// Every step of the program, joined ones included, in call order.
    pub fn steps(&self) -> Vec<&StepSpec> {
        self.ops
            .iter()
            .flat_map(|op| match op {
                Op::Step(s) => vec![s],
                Op::Join(a, b) => vec![a, b],
                _ => Vec::new(),
            })
            .collect()
    }
}

fn signal_payload(name: &str, i: usize) -> Value {
    Value::String(format!("{name}#{i}"))
}

/// Registers the interpreter as workflow [`PROGRAM_WORKFLOW`] version 1 on `builder`; its
/// steps call the fake tools of `tools`.
pub fn register_program(builder: EngineBuilder, tools: &Tools) -> EngineBuilder {
    let tools = tools.clone();
    builder.register(PROGRAM_WORKFLOW, 1, move |ctx: Ctx, program: Program| {
        let tools = tools.clone();
        async move { interpret(ctx, tools, program).await }
    })
}

/// The interpreter itself: runs `program` on `ctx` with `tools`. Exposed for users who want
/// to register it under another name or embed it in a larger workflow.
pub async fn interpret(
    ctx: Ctx,
    tools: Tools,
    program: Program,
) -> Result<Vec<Value>, WorkflowError> {
    let mut out = Vec::with_capacity(program.ops.len());
    // Folds every recorded value; later steps declare it as their input (see `Op`).
    let mut values: u64 = 0;
    for op in &program.ops {
        let result = match op {
            Op::Step(spec) => step(&ctx, &tools, spec, values).await,
            Op::Join(a, b) => {
                // Both positions are taken here, in call order, before either runs.
                let (a, b) = (step(&ctx, &tools, a, values), step(&ctx, &tools, b, values));
                let (a, b) = futures::future::join(a, b).await;
                json!([a, b])
            }
            Op::Sleep { secs } => {
                ctx.sleep(Duration::from_secs((*secs).min(MAX_SLEEP_SECS)))
                    .await?;
                json!("slept")
            }
            Op::Signal { name } => ctx.signal::<Value>(name).await?,
            Op::Approval { .. } => {
                let request = crate::ApprovalRequest::new(format!("program op {}", out.len()));
                match ctx.approval(request).await? {
                    crate::Decision::Approved { .. } => json!("approved"),
                    crate::Decision::Rejected { .. } => json!("rejected"),
                    crate::Decision::Expired => json!("expired"),
                }
            }
            Op::Value { kind } => {
                let (label, value) = match kind {
                    ValueOp::Now => ("now", ctx.now_ms().await),
                    ValueOp::Random => ("random", ctx.random_u64().await),
                    ValueOp::Uuid => {
                        let (hi, lo) = ctx.uuid().await.as_u64_pair();
                        ("uuid", hi ^ lo.rotate_left(17))
                    }
                };
                values = values.rotate_left(7) ^ value;
                json!(label)
            }
        };
        out.push(result);
    }
    Ok(out)
}

/// Starts one step: its position is taken when this is called, not when it is polled.
fn step<'c>(
    ctx: &'c Ctx,
    tools: &Tools,
    spec: &StepSpec,
    values: u64,
) -> impl Future<Output = Value> + Send + 'c {
    let tool = tools.tool(&spec.tool);
    let mut builder = ctx
        .step(&spec.name)
        .class(spec.class)
        .tool(&spec.tool)
        .input(&values)
        .retry(RetryPolicy {
            max_attempts: MAX_ATTEMPTS,
            backoff: Backoff::Exponential {
                initial_ms: 500,
                factor: 2,
                max_ms: 10_000,
            },
            jitter: true,
            attempt_timeout_ms: None,
            max_total_ms: None,
        });
    if spec.reconcile {
        let tool = tool.clone();
        builder = builder.reconcile(move |key: String| {
            let tool = tool.clone();
            async move { tool.reconcile(&key) }
        });
    }
    let failures = spec.failures.clone();
    let input = json!({ "step": spec.name, "tool": spec.tool });
    let running = builder.run(move |attempt| {
        let (tool, input) = (tool.clone(), input.clone());
        let scripted = scripted_failure(&failures, attempt.number);
        async move {
            match scripted {
                None => tool.call(&attempt, input).await,
                Some(FailureClass::Ambiguous) => {
                    // The effect lands; the response is lost on the way back.
                    tool.call(&attempt, input).await?;
                    Err(StepFailure::ambiguous(
                        "scripted: response lost after the effect",
                    ))
                }
                Some(class) => Err(StepFailure {
                    class,
                    message: "scripted failure".into(),
                }),
            }
        }
    });
    async move {
        match running.await {
            Ok(value) => json!({ "ok": value }),
            // Only which step gave up counts: after a crash the same give-up can carry the
            // reconcile verdict (an open attempt found not done) instead of the tool's own
            // last error, and so another rule and message, which is not another outcome.
            Err(crate::StepError::Exhausted { step, .. }) => json!({ "failed": step }),
            Err(e) => json!({ "failed": e.to_string() }),
        }
    }
}

/// The scripted failure of attempt `number` (from 1), if any (see [`StepSpec::failures`]).
pub fn scripted_failure(failures: &[FailureClass], number: u32) -> Option<FailureClass> {
    let n = usize::try_from(number).unwrap_or(usize::MAX);
    let upto = &failures[..n.min(failures.len())];
    if upto.contains(&FailureClass::Terminal)
        || (n > failures.len() && failures.contains(&FailureClass::Terminal))
    {
        return Some(FailureClass::Terminal);
    }
    n.checked_sub(1).and_then(|i| failures.get(i)).cloned()
}

/// A [`CrashHarness`] driver for `program`: after every (re)open it sends each signal the
/// program waits for that the run's history has not received yet, in order, so a signal
/// lost in a crash is sent again and none is sent twice (every other one once the run has
/// parked); then it plays the reviewer, deciding each approval as the program says once
/// the run has asked for it and parked. It returns
/// when every approval is decided, the run stopped, or the engine went away (a crash).
pub fn program_driver(
    program: &Program,
) -> impl Fn(Engine, RunId) -> BoxFuture<'static, ()> + Send + Sync + 'static {
    let signals = program.signals();
    let approvals = program.approvals();
    move |engine: Engine, run: RunId| {
        let signals = signals.clone();
        let approvals = approvals.clone();
        Box::pin(async move {
            let Ok(history) = engine.history(run).await else {
                return;
            };
            let mut received: BTreeMap<String, usize> = BTreeMap::new();
            for event in &history {
                if let EventKind::SignalReceived { name, .. } = &event.kind {
                    *received.entry(name.clone()).or_default() += 1;
                }
            }
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for (k, (name, payload)) in signals.iter().enumerate() {
                let i = seen.entry(name).or_default();
                *i += 1;
                if *i <= received.get(name).copied().unwrap_or(0) {
                    continue;
                }
                // Every other signal waits until the run has parked, so that it wakes a parked
                // run (the path whose wake-up a crash could lose); the rest arrive while the
                // run may still be in memory.
                if k % 2 == 0 && !parked(&engine, run).await {
                    return;
                }
                // A crash (or the run's end) stops the driver; the next open sends the rest.
                if engine.signal(run, name, payload).await.is_err() {
                    return;
                }
            }
            review(&engine, run, &approvals).await;
        })
    }
}

/// Waits until the run is parked; false if it stopped otherwise (ended, escalated, blocked)
/// or the engine went away.
async fn parked(engine: &Engine, run: RunId) -> bool {
    let mut poll = Duration::from_millis(1);
    loop {
        match engine.status(run).await.map(|info| info.status) {
            Ok(crate::RunStatus::Parked) => return true,
            Ok(crate::RunStatus::Running) => {}
            _ => return false,
        }
        // Virtual time is free, each poll is not: back off up to a minute.
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_secs(60));
    }
}

/// Decides the run's approvals in order, as `verdicts` say, waiting for each to be asked
/// and for the run to park on it (reviewers take their time): the decision wakes a parked
/// run, the path whose wake-up a crash could lose.
async fn review(engine: &Engine, run: RunId, verdicts: &[bool]) {
    let reviewer = crate::Actor::new("reviewer", &[]);
    let mut poll = Duration::from_millis(1);
    for (k, approve) in verdicts.iter().enumerate() {
        loop {
            let Ok(history) = engine.history(run).await else {
                return;
            };
            let gate = history
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::ApprovalRequested { gate, .. } => Some(*gate),
                    _ => None,
                })
                .nth(k);
            if let Some(gate) = gate {
                let decided = history
                    .iter()
                    .any(|e| e.kind.decision().is_some_and(|d| *d.gate == gate));
                if decided {
                    break;
                }
                if !parked(engine, run).await {
                    return;
                }
                let verdict = if *approve {
                    crate::Verdict::Approve { edits: None }
                } else {
                    crate::Verdict::Reject
                };
                match engine
                    .decide(crate::GateId(gate), &reviewer, verdict, "scripted")
                    .await
                {
                    Ok(()) | Err(crate::Error::AlreadyDecided { .. }) => break,
                    Err(_) => return,
                }
            }
            match engine.status(run).await {
                Ok(info)
                    if matches!(
                        info.status,
                        crate::RunStatus::Running | crate::RunStatus::Parked
                    ) => {}
                _ => return,
            }
            // Virtual time is free, each poll is not: back off up to a minute.
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_secs(60));
        }
    }
}

/// A [`CrashHarness`] for `program` on the interpreter, with [`program_driver`] sending its
/// signals. Add `.with_torn_tails()` to test torn records too. Runs park with a checkpoint
/// after every 2 events, so that waking from checkpoints is crash-tested too.
pub fn program_harness(program: &Program) -> CrashHarness {
    CrashHarness::new(PROGRAM_WORKFLOW, program, |builder, tools| {
        register_program(builder.checkpoint_after_events(2), tools)
    })
    .drive(program_driver(program))
}

/// Tool names generated programs use: few, so that steps share tools.
pub const TOOLS: [&str; 3] = ["crm", "mail", "payments"];

/// Signal names generated programs use.
pub const SIGNALS: [&str; 2] = ["go", "approve"];

/// Any failure class, transient ones most often.
pub fn arb_failure() -> impl Strategy<Value = FailureClass> {
    prop_oneof![
        4 => Just(FailureClass::Transient),
        1 => proptest::option::of(0u64..5_000).prop_map(|retry_after_ms| FailureClass::RateLimited { retry_after_ms }),
        1 => Just(FailureClass::Timeout),
        1 => Just(FailureClass::Terminal),
        2 => Just(FailureClass::Ambiguous),
        1 => Just(FailureClass::BreakerOpen),
    ]
}

/// Any step class.
pub fn arb_class() -> impl Strategy<Value = StepClass> {
    prop_oneof![
        Just(StepClass::Read),
        Just(StepClass::Draft),
        Just(StepClass::Write),
        Just(StepClass::Irreversible)
    ]
}

/// A step (named `"step"`; [`arb_program`] renames steps in order). Most steps succeed at
/// once or after a few failures; irreversible ones mostly have a reconcile hook and are
/// often scripted to lose an applied effect's response (`Ambiguous`).
pub fn arb_step() -> impl Strategy<Value = StepSpec> {
    let failures = prop_oneof![
        3 => Just(Vec::new()),
        3 => proptest::collection::vec(arb_failure(), 1..=2),
        1 => proptest::collection::vec(arb_failure(), 3..=4),
    ];
    let irreversible_failures = prop_oneof![
        2 => Just(Vec::new()),
        2 => Just(vec![FailureClass::Ambiguous]),
        2 => proptest::collection::vec(arb_failure(), 1..=3),
    ];
    (
        arb_class(),
        proptest::sample::select(TOOLS.to_vec()),
        failures,
        irreversible_failures,
        proptest::bool::weighted(0.85),
    )
        .prop_map(
            |(class, tool, failures, irreversible_failures, reconcile)| {
                let irreversible = class == StepClass::Irreversible;
                StepSpec {
                    name: "step".into(),
                    class,
                    tool: tool.to_string(),
                    failures: if irreversible {
                        irreversible_failures
                    } else {
                        failures
                    },
                    reconcile: irreversible && reconcile,
                }
            },
        )
}

/// Any op: steps most often, then sleeps (short ones and ones long enough to park the run),
/// signals, values and joins.
pub fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => arb_step().prop_map(Op::Step),
        1 => prop_oneof![0u64..5, 60u64..7_200].prop_map(|secs| Op::Sleep { secs }),
        1 => proptest::sample::select(SIGNALS.to_vec()).prop_map(|name| Op::Signal { name: name.to_string() }),
        1 => prop_oneof![Just(ValueOp::Now), Just(ValueOp::Random), Just(ValueOp::Uuid)].prop_map(|kind| Op::Value { kind }),
        1 => (arb_step(), arb_step()).prop_map(|(a, b)| Op::Join(a, b)),
        1 => any::<bool>().prop_map(|approve| Op::Approval { approve }),
    ]
}

/// A program of 1 to 8 ops of every kind (see [`arb_op`]); steps are named `s<i>` in call
/// order.
pub fn arb_program() -> impl Strategy<Value = Program> {
    arb_program_of(1..=8)
}

/// A program with a number of ops in `ops`.
pub fn arb_program_of(ops: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Program> {
    proptest::collection::vec(arb_op(), ops).prop_map(|ops| {
        let mut program = Program { ops };
        name_steps(&mut program);
        program
    })
}

/// Names steps `s0`, `s1`, … in call order.
fn name_steps(program: &mut Program) {
    let mut i = 0;
    let mut name = |s: &mut StepSpec| {
        s.name = format!("s{i}");
        i += 1;
    };
    for op in &mut program.ops {
        match op {
            Op::Step(s) => name(s),
            Op::Join(a, b) => {
                name(a);
                name(b);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_numbered_per_name() {
        let program = Program::new([
            Op::Signal { name: "go".into() },
            Op::Signal {
                name: "approve".into(),
            },
            Op::Signal { name: "go".into() },
        ]);
        assert_eq!(
            program.signals(),
            [
                ("go".to_string(), json!("go#0")),
                ("approve".to_string(), json!("approve#0")),
                ("go".to_string(), json!("go#1"))
            ]
        );
    }

    #[test]
    fn programs_round_trip_through_json() {
        let program = Program::new([
            Op::Step(
                StepSpec::new("a", StepClass::Irreversible, "payments")
                    .failing([FailureClass::Ambiguous])
                    .reconciled(),
            ),
            Op::Join(
                StepSpec::new("b", StepClass::Read, "crm"),
                StepSpec::new("c", StepClass::Draft, "mail"),
            ),
            Op::Value {
                kind: ValueOp::Uuid,
            },
        ]);
        let text = serde_json::to_string(&program).unwrap();
        assert_eq!(serde_json::from_str::<Program>(&text).unwrap(), program);
        assert_eq!(program.steps().len(), 3);
    }
}
