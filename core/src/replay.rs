//! The pure core of replay: a fold of history into what each workflow call already did, and
//! the matcher that compares a call of the current code with the recorded one at its
//! position.
//!
//! **No I/O, no clock, no randomness here.** The runtime feeds events in and asks questions;
//! everything it needs to decide (timestamps, retry instants, random values) is in the events.
//!
//! A step's lifecycle as history records it:
//!
//! | recorded so far                         | the call at this position…                      |
//! |-----------------------------------------|-------------------------------------------------|
//! | nothing                                 | runs live: schedule, attempt                    |
//! | `StepScheduled`                         | continues live from attempt 1                   |
//! | … `AttemptFailed { retry_at_ms: Some }` | waits out the remaining backoff, then attempt n+1 |
//! | … `AttemptStarted` with no outcome      | Irreversible: reconcile or escalate; else re-run|
//! | … `StepCompleted`, or `StepRan` alone     | returns the recorded output, runs nothing       |
//! | … `StepExhausted`                       | returns the recorded exhaustion, runs nothing   |

use std::collections::{BTreeMap, BTreeSet};

use crate::event::{Event, EventKind, Payload, ValueKind};
use crate::policy::{FailureClass, OnExhaust, StepClass};

/// One failed attempt as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptFailure {
    /// Attempt number.
    pub attempt: u32,
    /// Its class.
    pub class: FailureClass,
    /// Its message.
    pub message: String,
    /// When the next attempt was allowed.
    pub retry_at_ms: Option<u64>,
}

/// How a step ended, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StepOutcome {
    /// Output recorded.
    Completed {
        /// The output.
        output: Payload,
        /// Which attempt produced it.
        attempt: u32,
        /// Fallback alternative that served, if any.
        served_by: Option<String>,
    },
    /// Ran out of attempts or budget.
    Exhausted {
        /// What the policy did.
        action: OnExhaust,
        /// Which budget.
        budget: String,
        /// Last error.
        message: String,
    },
}

/// What history says about one step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// Name.
    pub name: String,
    /// Tool named when it was scheduled (the primary of a fallback chain).
    pub tool: Option<String>,
    /// Class.
    pub class: StepClass,
    /// Input hash.
    pub input_hash: u64,
    /// When it was scheduled.
    pub scheduled_ms: u64,
    /// Highest attempt number started or failed so far.
    pub attempts: u32,
    /// Whether the last `AttemptStarted` has no recorded result yet.
    pub attempt_open: bool,
    /// Failed attempts, in order.
    pub failures: Vec<AttemptFailure>,
    /// The outcome, once there is one.
    pub outcome: Option<StepOutcome>,
    /// Index of the fallback alternative in use (0: the primary).
    pub alternative: u32,
    /// Tool of the alternative in use.
    pub current_tool: Option<String>,
    /// Attempts made with the alternative in use.
    pub alternative_attempts: u32,
    /// Highest attempt already counted against the run's budgets.
    counted: u32,
}

/// What history says one workflow call did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Recorded {
    /// A step (boxed: a history holds thousands, and the fold moves records around).
    Step(Box<StepRecord>),
    /// A durable timer.
    Timer {
        /// When it fires.
        fire_at_ms: u64,
        /// Fired or cancelled already.
        done: bool,
    },
    /// A consumed signal.
    Signal {
        /// Its name.
        name: String,
        /// Seq of the `SignalReceived` event.
        signal_seq: u64,
    },
    /// A deterministic value.
    Value {
        /// Its kind.
        kind: ValueKind,
        /// The value.
        value: Payload,
    },
    /// A patch marker.
    Patch {
        /// Patch id.
        id: String,
    },
    /// Cancellation was delivered to whatever call stood at this position.
    CancelDelivered,
    /// A human approval.
    Approval(Box<ApprovalRecord>),
    /// A recorded check.
    Check {
        /// Check name.
        name: String,
        /// Whether it passed.
        passed: bool,
    },
}

/// Where an approval gate stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GateState {
    /// Waiting for a decision.
    Pending,
    /// Decided.
    Decided {
        /// Approved or rejected.
        approved: bool,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
        /// Edits (JSON bytes).
        edits: Option<Payload>,
        /// When.
        at_ms: u64,
        /// The role they decided under (`None` for decisions recorded before roles were).
        role: Option<String>,
    },
    /// The deadline passed.
    Expired,
    /// Closed by a cancellation.
    Withdrawn,
}

/// What history says about one approval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRecord {
    /// The gate id.
    pub gate: [u8; 16],
    /// The request as recorded.
    pub request: crate::approval::ApprovalRequest,
    /// When the gate (re)opened.
    pub requested_ms: u64,
    /// Reminders sent since.
    pub reminders: u32,
    /// Where it stands.
    pub state: GateState,
    /// The fields a reviewer may edit (a JSON object: field -> proposed value), if any.
    pub editable: Option<Payload>,
}

impl ApprovalRecord {
    /// The digest of what this gate asks to approve.
    pub fn action_digest(&self) -> crate::approval::ActionDigest {
        crate::approval::ActionDigest::of(
            self.gate,
            &self.request,
            self.editable.as_ref().map(|p| p.0.as_slice()),
        )
    }
}

impl Recorded {
    fn describe(&self) -> String {
        match self {
            Recorded::Step(step) => match &step.tool {
                Some(tool) => format!("step '{}' (tool {tool}, {:?})", step.name, step.class),
                None => format!("step '{}' ({:?})", step.name, step.class),
            },
            Recorded::Timer { .. } => "timer".into(),
            Recorded::Signal { name, .. } => format!("signal '{name}'"),
            Recorded::Value { kind, .. } => format!("value {kind:?}"),
            Recorded::Patch { id } => format!("patch marker '{id}'"),
            Recorded::CancelDelivered => "cancellation".into(),
            Recorded::Approval(_) => "approval".into(),
            Recorded::Check { name, .. } => format!("check '{name}'"),
        }
    }
}

/// A recorded command and where it sits in the log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandRecord {
    /// Seq of the event that created it.
    pub seq: u64,
    /// What it did.
    pub recorded: Recorded,
}

/// What the current code asks for at a position.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    /// `ctx.step(name)…run(…)`.
    Step {
        /// Name.
        name: &'a str,
        /// Tool.
        tool: Option<&'a str>,
        /// Class.
        class: StepClass,
        /// Input hash.
        input_hash: u64,
    },
    /// `ctx.sleep(…)`.
    Timer,
    /// `ctx.signal(name)`.
    Signal {
        /// Name.
        name: &'a str,
    },
    /// `ctx.now()` / `random_u64()` / `uuid()`.
    Value {
        /// Kind.
        kind: ValueKind,
    },
    /// `ctx.approval(…)`.
    Approval,
    /// `ctx.check(name, …)`.
    Check {
        /// Check name.
        name: &'a str,
    },
}

impl Command<'_> {
    fn describe(&self) -> String {
        match self {
            Command::Step {
                name, tool, class, ..
            } => match tool {
                Some(tool) => format!("step '{name}' (tool {tool}, {class:?})"),
                None => format!("step '{name}' ({class:?})"),
            },
            Command::Timer => "timer".into(),
            Command::Signal { name } => format!("signal '{name}'"),
            Command::Value { kind } => format!("value {kind:?}"),
            Command::Approval => "approval".into(),
            Command::Check { name } => format!("check '{name}'"),
        }
    }
}

/// A mismatch between code and history, before the runtime adds the run id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Command position.
    pub position: u32,
    /// Seq of the recorded event, if there is one.
    pub seq: Option<u64>,
    /// What history recorded.
    pub expected: String,
    /// What the code did.
    pub got: String,
    /// Names of the fields that differ (`kind`, `name`, `tool`, `class`, `input_hash`).
    pub fields: Vec<String>,
}

/// The matcher's answer for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum Match<'a> {
    /// Nothing recorded at this position: run live.
    Live,
    /// Recorded and matching: use what history says.
    Recorded(&'a CommandRecord),
    /// Recorded and different: the code drifted.
    Drift(Mismatch),
}

/// A history that contradicts itself (an outcome without its command, a duplicate position,
/// events after the end). Found by the fold; `annal verify` reports these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradiction {
    /// Seq of the offending event.
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// The fold of a history: what each position recorded, pending signals, cancellation, end.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplayState {
    #[serde(deserialize_with = "commands_in_bulk")]
    commands: BTreeMap<u32, CommandRecord>,
    /// Received signals: seq, name, payload.
    signals: Vec<(u64, String, Payload)>,
    consumed_signals: BTreeSet<u64>,
    /// Positions of timers that were cancelled (to deliver a cancellation).
    cancelled_timers: BTreeSet<u32>,
    cancel_requested: Option<String>,
    cancel_delivered: bool,
    started: Option<(String, u32, Payload)>,
    terminal: Option<EventKind>,
    next_seq: u64,
    budget: crate::policy::BudgetUse,
    gates: BTreeMap<[u8; 16], u32>,
    escalated: Option<Option<u32>>,
    /// The latest run ceiling reached: at which position, and what the run did about it.
    ceiling: Option<(u32, crate::policy::OnCeiling)>,
}

/// Decodes the commands of a checkpoint into a list first and builds the map from it in one
/// pass (the entries come in key order): inserting them one by one, as serde's own map
/// decoding does, took a quarter of a 10,000-step checkpoint's decode.
fn commands_in_bulk<'de, D>(decoder: D) -> Result<BTreeMap<u32, CommandRecord>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = BTreeMap<u32, CommandRecord>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of positions to command records")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            // The hint comes from the input: bounded, so a damaged length cannot reserve much.
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 12));
            while let Some(entry) = map.next_entry::<u32, CommandRecord>()? {
                entries.push(entry);
            }
            // Sorted input is built in bulk; a repeated position keeps its last record, which
            // an encoder of a map never writes.
            Ok(entries.into_iter().collect())
        }
    }
    decoder.deserialize_map(Entries)
}

fn step_in(
    commands: &mut BTreeMap<u32, CommandRecord>,
    position: u32,
    seq: u64,
) -> Result<&mut StepRecord, Contradiction> {
    match commands.get_mut(&position) {
        Some(CommandRecord {
            recorded: Recorded::Step(step),
            ..
        }) => Ok(step),
        _ => Err(Contradiction {
            seq,
            reason: format!("step event for position {position}, which is not a step"),
        }),
    }
}

/// Records a step's output (`StepCompleted`, or the second half of `StepRan`).
fn complete_step(
    budget: &mut crate::policy::BudgetUse,
    step: &mut StepRecord,
    output: Payload,
    attempt: u32,
    served_by: Option<String>,
    cost: u64,
) {
    if attempt > step.attempts {
        step.alternative_attempts += 1;
    }
    step.attempts = step.attempts.max(attempt);
    step.attempt_open = false;
    count_attempt(budget, step, attempt, cost);
    step.outcome = Some(StepOutcome::Completed {
        output,
        attempt,
        served_by,
    });
}

impl StepRecord {
    /// A step as its `StepScheduled` (or the first half of `StepRan`) records it.
    fn scheduled(
        name: String,
        tool: Option<String>,
        class: StepClass,
        input_hash: u64,
        scheduled_ms: u64,
    ) -> Self {
        StepRecord {
            name,
            current_tool: tool.clone(),
            tool,
            class,
            input_hash,
            scheduled_ms,
            attempts: 0,
            attempt_open: false,
            failures: Vec::new(),
            outcome: None,
            alternative: 0,
            alternative_attempts: 0,
            counted: 0,
        }
    }
}

/// Counts an attempt against the run's budgets once, however many events mention it.
fn count_attempt(
    budget: &mut crate::policy::BudgetUse,
    step: &mut StepRecord,
    attempt: u32,
    cost: u64,
) {
    add_cost(budget, step, cost);
    if attempt > step.counted {
        step.counted = attempt;
        budget.attempts += 1;
        if let Some(tool) = &step.current_tool {
            budget.tool_calls += 1;
            *budget.tool_attempts.entry(tool.clone()).or_default() += 1;
        }
    }
}

/// Counts cost units an attempt of `step` reported against the run and its tool.
fn add_cost(budget: &mut crate::policy::BudgetUse, step: &StepRecord, cost: u64) {
    if cost == 0 {
        return;
    }
    budget.cost_units = budget.cost_units.saturating_add(cost);
    if let Some(tool) = &step.current_tool {
        let spent = budget.tool_cost.entry(tool.clone()).or_default();
        *spent = spent.saturating_add(cost);
    }
}

impl ReplayState {
    /// Folds a whole history, stopping at the first contradiction.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Self, Contradiction> {
        let mut state = Self::default();
        for event in events {
            state.apply(event)?;
        }
        Ok(state)
    }

    /// Folds one more event it may keep: a step's strings and output move into its record
    /// instead of being copied (loading a run folds thousands of them).
    pub fn apply_owned(&mut self, event: Event) -> Result<(), Contradiction> {
        let Event { seq, at_ms, kind } = event;
        let (position, record) = match kind {
            EventKind::StepRan {
                position,
                name,
                tool,
                class,
                input_hash,
                output,
                attempt,
                cost,
                ..
            } => {
                self.admit(seq, "StepRan")?;
                let mut step =
                    Box::new(StepRecord::scheduled(name, tool, class, input_hash, at_ms));
                complete_step(&mut self.budget, &mut step, output, attempt, None, cost);
                (position, step)
            }
            EventKind::StepScheduled {
                position,
                name,
                tool,
                class,
                input_hash,
                ..
            } => {
                self.admit(seq, "StepScheduled")?;
                let step = StepRecord::scheduled(name, tool, class, input_hash, at_ms);
                (position, Box::new(step))
            }
            kind => return self.apply(&Event { seq, at_ms, kind }),
        };
        let recorded = Recorded::Step(record);
        if self
            .commands
            .insert(position, CommandRecord { seq, recorded })
            .is_some()
        {
            return Err(Contradiction {
                seq,
                reason: format!("position {position} recorded twice"),
            });
        }
        Ok(())
    }

    /// Checks that an event named `kind` may come next at `seq`, and counts it.
    fn admit(&mut self, seq: u64, kind: &str) -> Result<(), Contradiction> {
        let bad = |reason: String| Err(Contradiction { seq, reason });
        if seq != self.next_seq {
            return bad(format!("seq {seq} where {} was expected", self.next_seq));
        }
        if self.terminal.is_some() {
            return bad(format!("{kind} after the run ended"));
        }
        if self.started.is_none() && kind != "RunStarted" {
            return bad(format!("history starts with {kind} instead of RunStarted"));
        }
        self.next_seq += 1;
        Ok(())
    }

    /// Folds one more event.
    pub fn apply(&mut self, event: &Event) -> Result<(), Contradiction> {
        if matches!(
            event.kind,
            EventKind::StepRan { .. } | EventKind::StepScheduled { .. }
        ) {
            // The fold keeps a step's strings either way: one copy, then the owned path.
            return self.apply_owned(event.clone());
        }
        let seq = event.seq;
        let bad = |reason: String| Err(Contradiction { seq, reason });
        self.admit(seq, event.kind.name())?;
        if let Some(position) = event.kind.command_position() {
            let recorded = match &event.kind {
                EventKind::TimerStarted { fire_at_ms, .. } => Recorded::Timer {
                    fire_at_ms: *fire_at_ms,
                    done: false,
                },
                EventKind::SignalConsumed {
                    name, signal_seq, ..
                } => {
                    let received = self
                        .signals
                        .iter()
                        .any(|(s, n, _)| s == signal_seq && n == name);
                    if !received || !self.consumed_signals.insert(*signal_seq) {
                        return bad(format!(
                            "signal seq {signal_seq} not received or consumed twice"
                        ));
                    }
                    Recorded::Signal {
                        name: name.clone(),
                        signal_seq: *signal_seq,
                    }
                }
                EventKind::ValueRecorded { kind, value, .. } => Recorded::Value {
                    kind: *kind,
                    value: value.clone(),
                },
                EventKind::PatchMarker { id, .. } => Recorded::Patch { id: id.clone() },
                EventKind::ApprovalRequested { .. }
                | EventKind::ApprovalRequestedEditable { .. } => {
                    let Some((gate, request, editable)) = event.kind.approval_request() else {
                        unreachable!("both forms of an approval request");
                    };
                    if self.gates.insert(*gate, position).is_some() {
                        return bad("approval gate recorded twice".into());
                    }
                    Recorded::Approval(Box::new(ApprovalRecord {
                        gate: *gate,
                        request: request.clone(),
                        requested_ms: event.at_ms,
                        reminders: 0,
                        state: GateState::Pending,
                        editable: editable.cloned(),
                    }))
                }
                EventKind::CheckRecorded { name, passed, .. } => Recorded::Check {
                    name: name.clone(),
                    passed: *passed,
                },
                EventKind::CancelDelivered { .. } => {
                    if self.cancel_requested.is_none() || self.cancel_delivered {
                        return bad("cancellation delivered without a pending request".into());
                    }
                    self.cancel_delivered = true;
                    Recorded::CancelDelivered
                }
                _ => unreachable!(
                    "command_position covers exactly the command events; steps fold owned"
                ),
            };
            if self
                .commands
                .insert(position, CommandRecord { seq, recorded })
                .is_some()
            {
                return bad(format!("position {position} recorded twice"));
            }
            return Ok(());
        }
        match &event.kind {
            EventKind::RunStarted {
                workflow,
                version,
                input,
                ..
            } => {
                if self.started.is_some() {
                    return bad("second RunStarted".into());
                }
                self.started = Some((workflow.clone(), *version, input.clone()));
                self.budget.started_ms = event.at_ms;
            }
            EventKind::AttemptStarted { position, attempt } => {
                let step = self.step_mut(*position, seq)?;
                if step.outcome.is_some() || *attempt != step.attempts + 1 {
                    return bad(format!(
                        "attempt {attempt} of position {position} out of order"
                    ));
                }
                step.attempts = *attempt;
                step.alternative_attempts += 1;
                step.attempt_open = true;
            }
            EventKind::AttemptFailed {
                position,
                attempt,
                class,
                message,
                retry_at_ms,
            } => {
                let budget = &mut self.budget;
                let step = step_in(&mut self.commands, *position, seq)?;
                let continues_open = step.attempt_open && *attempt == step.attempts;
                if step.outcome.is_some() || !(continues_open || *attempt == step.attempts + 1) {
                    return bad(format!(
                        "attempt {attempt} of position {position} out of order"
                    ));
                }
                if !continues_open {
                    step.alternative_attempts += 1;
                }
                step.attempts = *attempt;
                step.attempt_open = false;
                step.failures.push(AttemptFailure {
                    attempt: *attempt,
                    class: class.clone(),
                    message: message.clone(),
                    retry_at_ms: *retry_at_ms,
                });
                if *class != FailureClass::BreakerOpen {
                    count_attempt(budget, step, *attempt, 0);
                    if let (Some(tool), Some(_)) = (&step.current_tool, retry_at_ms) {
                        *budget.tool_retries.entry(tool.clone()).or_default() += 1;
                    }
                }
            }
            EventKind::StepCompleted {
                position,
                output,
                attempt,
                served_by,
                cost,
            } => {
                let step = step_in(&mut self.commands, *position, seq)?;
                if step.outcome.is_some() {
                    return bad(format!("position {position} completed twice"));
                }
                let (output, served_by) = (output.clone(), served_by.clone());
                complete_step(&mut self.budget, step, output, *attempt, served_by, *cost);
            }
            EventKind::AttemptCost {
                position,
                attempt,
                cost,
            } => {
                let budget = &mut self.budget;
                let step = step_in(&mut self.commands, *position, seq)?;
                let failed = step.failures.last().is_some_and(|f| f.attempt == *attempt);
                if step.outcome.is_some() || !failed {
                    return bad(format!(
                        "cost of attempt {attempt} of position {position}, which has not just failed"
                    ));
                }
                add_cost(budget, step, *cost);
            }
            EventKind::RunCeilingReached {
                position, action, ..
            } => {
                let step = self.step_mut(*position, seq)?;
                if !matches!(step.outcome, Some(StepOutcome::Exhausted { .. })) {
                    return bad(format!(
                        "run ceiling at position {position}, whose step did not give up"
                    ));
                }
                self.ceiling = Some((*position, *action));
            }
            EventKind::StepExhausted {
                position,
                action,
                budget,
                message,
            } => {
                let step = self.step_mut(*position, seq)?;
                if step.outcome.is_some() {
                    return bad(format!("position {position} ended twice"));
                }
                step.attempt_open = false;
                step.outcome = Some(StepOutcome::Exhausted {
                    action: action.clone(),
                    budget: budget.clone(),
                    message: message.clone(),
                });
            }
            EventKind::FallbackUsed { position, to, .. } => {
                let step = self.step_mut(*position, seq)?;
                if step.outcome.is_some() || step.attempt_open {
                    return bad(format!(
                        "fallback of position {position} while an attempt is open or after its end"
                    ));
                }
                step.alternative += 1;
                step.current_tool = Some(to.clone());
                step.alternative_attempts = 0;
            }
            EventKind::TimerFired { position } | EventKind::TimerCancelled { position } => {
                match self.commands.get_mut(position) {
                    Some(CommandRecord {
                        recorded: Recorded::Timer { done, .. },
                        ..
                    }) if !*done => *done = true,
                    _ => {
                        return bad(format!(
                            "timer event for position {position} without a running timer"
                        ))
                    }
                }
                // A timer is only cancelled to deliver a cancellation to the waiting code.
                if matches!(event.kind, EventKind::TimerCancelled { .. }) {
                    self.cancelled_timers.insert(*position);
                    if self.cancel_requested.is_some() {
                        self.cancel_delivered = true;
                    }
                }
            }
            EventKind::SignalReceived { name, payload } => {
                self.signals.push((seq, name.clone(), payload.clone()))
            }
            EventKind::ApprovalDecided { .. } | EventKind::ApprovalDecidedAs { .. } => {
                let Some(decision) = event.kind.decision() else {
                    unreachable!("both forms of a decision");
                };
                let at_ms = event.at_ms;
                let approval = self.approval_mut(decision.gate, seq)?;
                if approval.state != GateState::Pending {
                    return bad("approval decided when it was not pending".into());
                }
                approval.state = GateState::Decided {
                    approved: decision.approved,
                    actor: decision.actor.to_string(),
                    reason: decision.reason.to_string(),
                    edits: decision.edits.cloned(),
                    at_ms,
                    role: decision.role.map(str::to_string),
                };
            }
            EventKind::ApprovalReminded { gate, .. } => {
                let approval = self.approval_mut(gate, seq)?;
                approval.reminders += 1;
            }
            EventKind::ApprovalExpired { gate } | EventKind::ApprovalWithdrawn { gate } => {
                let withdrawn = matches!(event.kind, EventKind::ApprovalWithdrawn { .. });
                let approval = self.approval_mut(gate, seq)?;
                if approval.state != GateState::Pending {
                    return bad("approval closed when it was not pending".into());
                }
                approval.state = if withdrawn {
                    GateState::Withdrawn
                } else {
                    GateState::Expired
                };
                if withdrawn && self.cancel_requested.is_some() {
                    self.cancel_delivered = true;
                }
            }
            EventKind::Escalated { position, .. } => self.escalated = Some(*position),
            EventKind::OperatorAction {
                position, action, ..
            } => {
                self.escalated = None;
                if let Some(position) = position {
                    self.apply_operator(*position, action, event.at_ms, seq)?;
                }
            }
            EventKind::CancelRequested { reason, .. } if self.cancel_requested.is_none() => {
                self.cancel_requested = Some(reason.clone());
            }
            kind if kind.is_terminal() => self.terminal = Some(kind.clone()),
            _ => {}
        }
        Ok(())
    }

    fn step_mut(&mut self, position: u32, seq: u64) -> Result<&mut StepRecord, Contradiction> {
        step_in(&mut self.commands, position, seq)
    }

    fn approval_mut(
        &mut self,
        gate: &[u8; 16],
        seq: u64,
    ) -> Result<&mut ApprovalRecord, Contradiction> {
        let position = self.gates.get(gate).copied();
        match position.and_then(|p| self.commands.get_mut(&p)) {
            Some(CommandRecord {
                recorded: Recorded::Approval(approval),
                ..
            }) => Ok(approval),
            _ => Err(Contradiction {
                seq,
                reason: "event for an unknown approval gate".into(),
            }),
        }
    }

    /// Applies an operator's decision to the call it targets, so the replaying code sees
    /// the step or approval as the operator left it.
    fn apply_operator(
        &mut self,
        position: u32,
        action: &crate::event::OperatorActionKind,
        at_ms: u64,
        seq: u64,
    ) -> Result<(), Contradiction> {
        use crate::event::OperatorActionKind as Op;
        let bad = |reason: &str| {
            Err(Contradiction {
                seq,
                reason: reason.to_string(),
            })
        };
        match (
            self.commands.get_mut(&position).map(|r| &mut r.recorded),
            action,
        ) {
            (_, Op::Abort) => {}
            (Some(Recorded::Step(step)), Op::RetryStep) => {
                if self.ceiling.is_some_and(|(at, _)| at == position) {
                    self.ceiling = None;
                }
                step.outcome = None;
                step.attempt_open = false;
                step.alternative = 0;
                step.current_tool = step.tool.clone();
                step.alternative_attempts = 0;
                if let Some(last) = step.failures.last_mut() {
                    last.retry_at_ms = None;
                }
            }
            (
                Some(Recorded::Step(step)),
                Op::SkipStep { value: output } | Op::ResolveDone { output },
            ) => {
                step.attempt_open = false;
                step.outcome = Some(StepOutcome::Completed {
                    output: output.clone(),
                    attempt: step.attempts,
                    served_by: Some("operator".into()),
                });
            }
            (Some(Recorded::Step(step)), Op::ResolveNotDone) => {
                if !step.attempt_open {
                    return bad("resolve-not-done for a step with no open attempt");
                }
                step.attempt_open = false;
                step.failures.push(AttemptFailure {
                    attempt: step.attempts,
                    class: FailureClass::Transient,
                    message: "operator: the effect did not happen".into(),
                    retry_at_ms: None,
                });
            }
            (Some(Recorded::Approval(approval)), Op::RetryStep) => {
                approval.state = GateState::Pending;
                approval.requested_ms = at_ms;
                approval.reminders = 0;
            }
            _ => return bad("operator action does not fit the call at its position"),
        }
        Ok(())
    }

    /// The position that escalated, while the run waits for an operator (`Some(None)`: the
    /// run escalated outside any call).
    pub fn escalated(&self) -> Option<Option<u32>> {
        self.escalated
    }

    /// The position of an approval gate.
    pub fn gate_position(&self, gate: &[u8; 16]) -> Option<u32> {
        self.gates.get(gate).copied()
    }

    /// Budget use of the run so far.
    pub fn budget(&self) -> &crate::policy::BudgetUse {
        &self.budget
    }

    /// Whether a run ceiling stopped the run at `position`, and what the run did about it
    /// (the latest time, if an operator retried the step since).
    pub fn ceiling_at(&self, position: u32) -> Option<crate::policy::OnCeiling> {
        self.ceiling
            .filter(|(at, _)| *at == position)
            .map(|(_, action)| action)
    }

    /// Compares the call at `position` with history.
    pub fn check(&self, position: u32, command: &Command<'_>) -> Match<'_> {
        let Some(record) = self.commands.get(&position) else {
            // A finished history has no room for more calls: code that goes on drifted.
            if let Some(end) = &self.terminal {
                return Match::Drift(Mismatch {
                    position,
                    seq: Some(self.next_seq.saturating_sub(1)),
                    expected: format!("the end of the run ({})", end.name()),
                    got: command.describe(),
                    fields: vec!["kind".into()],
                });
            }
            return Match::Live;
        };
        let mut fields = Vec::new();
        match (&record.recorded, command) {
            (Recorded::CancelDelivered, _) => {}
            (
                Recorded::Step(step),
                Command::Step {
                    name: n,
                    tool: t,
                    class: c,
                    input_hash: h,
                },
            ) => {
                if step.name != *n {
                    fields.push("name".to_string());
                }
                if step.tool.as_deref() != *t {
                    fields.push("tool".to_string());
                }
                if step.class != *c {
                    fields.push("class".to_string());
                }
                if step.input_hash != *h {
                    fields.push("input_hash".to_string());
                }
            }
            (Recorded::Timer { .. }, Command::Timer) => {}
            (Recorded::Signal { name, .. }, Command::Signal { name: n }) => {
                if name != n {
                    fields.push("name".to_string());
                }
            }
            (Recorded::Value { kind, .. }, Command::Value { kind: k }) => {
                if kind != k {
                    fields.push("kind".to_string());
                }
            }
            (Recorded::Approval(_), Command::Approval) => {}
            (Recorded::Check { name, .. }, Command::Check { name: n }) => {
                if name != n {
                    fields.push("name".to_string());
                }
            }
            _ => fields.push("kind".to_string()),
        }
        if fields.is_empty() {
            Match::Recorded(record)
        } else {
            Match::Drift(Mismatch {
                position,
                seq: Some(record.seq),
                expected: record.recorded.describe(),
                got: command.describe(),
                fields,
            })
        }
    }

    /// `ctx.patched(id)` at `position`: `Some(true)` if history has the marker there (the
    /// position is consumed), `Some(false)` if history has another command there (old code
    /// path; the position is not consumed), `None` if nothing is recorded (live: record it).
    pub fn check_patch(&self, position: u32, id: &str) -> Option<bool> {
        match self.commands.get(&position) {
            // A finished history written before the patch never reached it.
            None if self.terminal.is_some() => Some(false),
            None => None,
            Some(CommandRecord {
                recorded: Recorded::Patch { id: recorded },
                ..
            }) => Some(recorded == id),
            Some(_) => Some(false),
        }
    }

    /// How the code's own ending compares with the recorded end of the run, for replays of
    /// finished histories: `None` when they agree (or the history has not ended). Outputs
    /// are compared as JSON values, so key order does not matter.
    pub fn ending_mismatch(&self, ended: Result<&Payload, &str>) -> Option<Mismatch> {
        let recorded = self.terminal.as_ref()?;
        let seq = Some(self.next_seq.saturating_sub(1));
        let as_json = |p: &Payload| serde_json::from_slice::<serde_json::Value>(&p.0).ok();
        let (expected, got) = match (recorded, ended) {
            (EventKind::RunCompleted { output }, Ok(out)) => {
                if as_json(output) == as_json(out) {
                    return None;
                }
                (
                    format!("output {}", output.as_text()),
                    format!("output {}", out.as_text()),
                )
            }
            (EventKind::RunCompleted { output }, Err(error)) => (
                format!("output {}", output.as_text()),
                format!("error {error}"),
            ),
            (EventKind::RunFailed { .. } | EventKind::RunCancelled { .. }, Err(_)) => return None,
            (other, Ok(out)) => (
                other.name().to_string(),
                format!("output {}", out.as_text()),
            ),
            (_, Err(_)) => return None,
        };
        let position = self.commands.keys().next_back().map_or(0, |p| p + 1);
        Some(Mismatch {
            position,
            seq,
            expected,
            got,
            fields: vec!["output".into()],
        })
    }

    /// The first recorded position the code has not reached (`visited` says which it has),
    /// for "code finished early".
    pub fn unvisited(&self, visited: impl Fn(u32) -> bool) -> Option<Mismatch> {
        self.commands
            .iter()
            .find(|(p, _)| !visited(**p))
            .map(|(position, record)| Mismatch {
                position: *position,
                seq: Some(record.seq),
                expected: record.recorded.describe(),
                got: "workflow returned before reaching it".into(),
                fields: vec!["kind".into()],
            })
    }

    /// The earliest instant anything recorded wants the run woken: a running timer, a
    /// backoff before the next attempt, an approval's reminder or deadline. `None` when the
    /// run waits only on the outside (signals, decisions without a deadline).
    pub fn next_wake(&self) -> Option<u64> {
        self.commands
            .values()
            .filter_map(|record| match &record.recorded {
                Recorded::Timer {
                    fire_at_ms,
                    done: false,
                } => Some(*fire_at_ms),
                Recorded::Step(step) if step.outcome.is_none() && !step.attempt_open => step
                    .failures
                    .last()
                    .filter(|f| f.attempt == step.attempts)
                    .and_then(|f| f.retry_at_ms),
                Recorded::Approval(a) if a.state == GateState::Pending => {
                    crate::approval::next_wake(&a.request, a.requested_ms, a.reminders)
                }
                _ => None,
            })
            .min()
    }

    /// The earliest received signal named `name` that no call has taken yet.
    pub fn next_signal(&self, name: &str) -> Option<u64> {
        self.signals
            .iter()
            .find(|(seq, n, _)| n == name && !self.consumed_signals.contains(seq))
            .map(|(seq, _, _)| *seq)
    }

    /// The payload of the signal received at `seq`.
    pub fn signal_payload(&self, seq: u64) -> Option<&Payload> {
        self.signals
            .iter()
            .find(|(s, _, _)| *s == seq)
            .map(|(_, _, payload)| payload)
    }

    /// Whether the timer at `position` was cancelled.
    pub fn timer_cancelled(&self, position: u32) -> bool {
        self.cancelled_timers.contains(&position)
    }

    /// A pending cancellation not yet delivered: its reason.
    pub fn pending_cancel(&self) -> Option<&str> {
        if self.cancel_delivered {
            None
        } else {
            self.cancel_requested.as_deref()
        }
    }

    /// Whether a cancellation was requested at all (delivered or not).
    pub fn cancel_reason(&self) -> Option<&str> {
        self.cancel_requested.as_deref()
    }

    /// Workflow, version and input from `RunStarted`.
    pub fn started(&self) -> Option<&(String, u32, Payload)> {
        self.started.as_ref()
    }

    /// The event that ended the run, if it ended.
    pub fn terminal(&self) -> Option<&EventKind> {
        self.terminal.as_ref()
    }

    /// The seq the next event must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The recorded command at a position.
    pub fn command(&self, position: u32) -> Option<&CommandRecord> {
        self.commands.get(&position)
    }

    /// All recorded commands by position.
    pub fn commands(&self) -> impl Iterator<Item = (u32, &CommandRecord)> {
        self.commands.iter().map(|(p, r)| (*p, r))
    }
}

/// What an operator needs to act on a run that stopped at `position` (pure: read from the
/// fold).
pub fn escalation_context(
    replay: &ReplayState,
    run: crate::ids::RunId,
    position: Option<u32>,
    suggested_next: &str,
) -> crate::event::EscalationContext {
    let mut last_done: Option<(u64, String)> = None;
    let mut per_tool: BTreeMap<String, u32> = BTreeMap::new();
    for (_, record) in replay.commands() {
        if let Recorded::Step(step) = &record.recorded {
            if let Some(tool) = &step.tool {
                *per_tool.entry(tool.clone()).or_default() += step.attempts;
            }
            if matches!(step.outcome, Some(StepOutcome::Completed { .. }))
                && last_done.as_ref().is_none_or(|(seq, _)| record.seq > *seq)
            {
                last_done = Some((record.seq, step.name.clone()));
            }
        }
    }
    let failing = position.and_then(|p| replay.command(p));
    let (failing_step, idempotency_key, errors) = match failing.map(|r| &r.recorded) {
        Some(Recorded::Step(step)) => (
            Some(step.name.clone()),
            position.map(|p| crate::ids::idempotency_key(run, p)),
            step.failures
                .iter()
                .map(|f| (f.attempt, f.class.label().to_string(), f.message.clone()))
                .collect(),
        ),
        _ => (None, None, Vec::new()),
    };
    crate::event::EscalationContext {
        last_successful_step: last_done.map(|(_, name)| name),
        failing_step,
        idempotency_key,
        errors,
        attempts_per_tool: per_tool.into_iter().collect(),
        suggested_next: suggested_next.to_string(),
    }
}
