//! # annal
//!
//! An embeddable, event-sourced durable workflow engine. Workflows are plain `async fn`s;
//! every decision is an event in a CRC-framed log (see [`annal_storage`]), and a run's state
//! is rebuilt by replaying that log through the same code, so a crash at any instant resumes
//! where the recorded outcomes end: finished steps are not run again, an irreversible effect
//! whose outcome is unknown is reconciled or escalated, never blindly repeated.
//!
//! # Concepts
//!
//! - **Engine and runs.** An [`Engine`] owns a store (sled in a directory, or
//!   [`annal_storage::SimStore`] in tests, or PostgreSQL through `annal-postgres`), a
//!   registry of workflows by name and version, and the runs in flight. [`Engine::start`]
//!   (or [`Engine::start_workflow`] for a typed [`Workflow`]) returns a [`RunHandle`] whose
//!   `result()` waits for the run's end.
//! - **Ctx.** Everything a workflow does goes through its [`Ctx`]: steps
//!   ([`Ctx::step`], then [`StepBuilder::run`]), durable timers, signals, recorded values
//!   (`now_ms`, `random_u64`, `uuid`), checks, approvals ([`Ctx::approval`]) and patches.
//!   Each call is recorded once and handed back on every replay.
//! - **Steps and classes.** A step's [`StepClass`] says what may be retried: `Read` and
//!   `Draft` freely, `Write` with its idempotency key ([`Attempt::idempotency_key`]),
//!   `Irreversible` never after an ambiguous failure. A body reports failures as
//!   [`StepFailure`]s with a [`FailureClass`], and cost with [`Attempt::report_cost`].
//! - **Policy.** A [`Policy`] (a TOML file) gives each tool its retries across the run,
//!   timeout, backoff, on-exhaust rule ([`OnExhaust`]: fail, degrade, skip, escalate) and
//!   breaker, and the run its ceilings (iterations, duration, tool calls, cost). A ceiling is
//!   a cap: reaching it escalates or fails the run ([`OnCeiling`]), whatever the step's own
//!   rule.
//! - **Approvals and operators.** [`Ctx::approval`] waits, parked, for
//!   [`Engine::decide`] / [`Engine::decide_bound`]; an escalated run waits for
//!   [`Engine::operate`] (retry, skip with a value, resolve, abort). Both are recorded with
//!   who and why.
//! - **Audit.** [`audit`] computes run records, timelines and per-tool reports from
//!   histories alone; the `annal` CLI prints them.
//! - **Telemetry.** Lifecycle transitions are `tracing` events (target `annal::telemetry`)
//!   and counters and histograms go through the [`metrics`](https://docs.rs/metrics) facade:
//!   [`telemetry`] lists every event and metric.
//!
//! # A complete example
//!
//! A support agent fetches pages until it has enough, under a policy whose ceiling stops a
//! loop that would otherwise never end:
//!
//! ```
//! use annal::{Ctx, Engine, Error, Policy, RunStatus, StepClass, Workflow, WorkflowError};
//!
//! struct Research;
//!
//! impl Workflow for Research {
//!     const NAME: &'static str = "research";
//!     type Input = u32; // pages wanted
//!     type Output = Vec<String>;
//!
//!     async fn run(&self, ctx: Ctx, wanted: u32) -> Result<Vec<String>, WorkflowError> {
//!         let mut pages = Vec::new();
//!         let mut i = 0;
//!         while pages.len() < wanted as usize {
//!             // A read of a named tool: the tool's policy applies; a fetch that keeps
//!             // failing is skipped (`None`) and the loop goes on.
//!             let page: Option<String> = ctx
//!                 .step(&format!("fetch_{i}"))
//!                 .tool("web_fetch")
//!                 .class(StepClass::Read)
//!                 .run(move |attempt| async move {
//!                     attempt.report_cost(1);
//!                     Ok(Some(format!("page {i}")))
//!                 })
//!                 .await?;
//!             pages.extend(page);
//!             i += 1;
//!         }
//!         Ok(pages)
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let policy = Policy::from_toml(
//!     r#"
//!     [run]
//!     max_iterations = 5          # attempts of all steps together: the final cap
//!     [tools.web_fetch]
//!     max_retries = 2
//!     on_exhaust = "skip"
//!     "#,
//! )?;
//! let engine = Engine::builder()
//!     .path(dir.path())
//!     .policy(policy)
//!     .workflow(Research)
//!     .open()
//!     .await?;
//!
//! // Within the ceiling: three pages, three steps.
//! let run = engine.start_workflow::<Research>(&3).await?;
//! assert_eq!(run.result().await?.len(), 3);
//!
//! // Past it: the sixth step would be the sixth attempt, so the run escalates to an
//! // operator instead of looping, with what was spent and by which tool.
//! let run = engine.start_workflow::<Research>(&20).await?;
//! match run.result().await {
//!     Err(Error::Escalated { reason, .. }) => {
//!         assert!(reason.contains("run max_iterations (5)"));
//!         assert!(reason.contains("5 attempts spent, 5 of them by tool web_fetch"));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(engine.status(run.run_id()).await?.status, RunStatus::Escalated);
//!
//! // What happened, from the history alone.
//! let history = engine.history(run.run_id()).await?;
//! print!("{}", annal::audit::timeline(&history));
//! engine.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Where to go next
//!
//! - [`StepBuilder`]: retries, budgets, breakers, fallbacks, reconcile hooks, and the table
//!   of a step's lifecycle in history.
//! - [`policy`]: classes, failure classes, retry decisions and the policy file.
//! - [`approval`] and [`Engine::pending_approvals`]: gates, deadlines, reminders, the
//!   reviewers' inbox (served over HTTP by the `annal-admin` crate).
//! - [`event`]: the schema of the log and its evolution rules; [`replay`]: the pure fold
//!   and matcher.
//! - [`audit`]: run records, timelines, per-tool reports.
//! - [`workflow`]: typed workflows; [`telemetry`]: events and metrics.
//! - `testing` (feature `testing`): the crash harness, the replayer and fake tools to test
//!   your own workflows.
//! - The repository's `examples/` (`cargo run --example tool_budgets`, `refund_agent`,
//!   `telemetry`, …), `ARCHITECTURE.md` and `docs/format.md`.

// The pure core (`annal-core`), under the paths this crate always had them.
pub(crate) use annal_core::status;
pub use annal_core::{approval, audit, breaker, codec, event, replay, secret};
pub mod clock;
pub mod error;
mod failure;
pub mod policy {
    //! Step classes, failure classes, retry policies, per-tool rules and run ceilings
    //! (`annal_core::policy`), and what a step body reports when an attempt fails.
    pub use crate::failure::StepFailure;
    pub use annal_core::policy::*;
}
mod runtime;
pub mod telemetry;
pub mod workflow;

pub use annal_storage::{Durability, GateId, RunId};
pub use approval::{
    ActionDigest, Actor, ActorKind, ApprovalRequest, CheckResult, Decision, OnExpiry, RiskTier,
    Verdict,
};
pub use error::{Cancelled, DriftError, Error, Result, StepError, WorkflowError};
pub use event::{DecisionRef, Event, EventKind, OperatorActionKind, Payload};
pub use policy::{
    Backoff, Ceiling, FailureClass, OnCeiling, OnExhaust, Policy, RetryPolicy, StepClass,
    StepFailure, ToolPolicy,
};
pub use runtime::context::Ctx;
pub use runtime::step::{Attempt, Reconciled, StepBuilder};
pub use runtime::{
    current_leaves, read_history, write_tree_head, ApprovalFilter, AttemptObserver, DecideRequest,
    Decided, Engine, EngineBuilder, EngineConfig, ObservedAttempt, PastDecision, PendingApproval,
    RunHandle, RunInfo, StartOptions, WrittenTreeHead,
};
pub use secret::Secret;
pub use status::{overdue, Overdue, RunStatus};
pub use workflow::Workflow;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
