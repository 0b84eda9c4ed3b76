//! # annal
//!
//! An embeddable, event-sourced durable workflow engine. Workflows are plain `async fn`s;
//! every decision is an event in a CRC-framed log (see [`annal_storage`]), and a run's state
//! is rebuilt by replaying that log through the same code, so a crash at any instant resumes
//! where the recorded outcomes end.

pub mod approval;
pub mod audit;
pub mod breaker;
pub mod clock;
pub mod codec;
mod context;
pub mod error;
pub mod event;
pub mod policy;
pub mod replay;
mod runtime;
pub mod secret;
mod status;
mod step;

pub use annal_storage::{Durability, GateId, RunId};
pub use approval::{
    ActionDigest, Actor, ActorKind, ApprovalRequest, CheckResult, Decision, OnExpiry, RiskTier,
    Verdict,
};
pub use context::Ctx;
pub use error::{Cancelled, DriftError, Error, Result, StepError, WorkflowError};
pub use event::{DecisionRef, Event, EventKind, OperatorActionKind, Payload};
pub use policy::{
    Backoff, FailureClass, OnExhaust, Policy, RetryPolicy, StepClass, StepFailure, ToolPolicy,
};
pub use runtime::{
    current_leaves, read_history, write_tree_head, ApprovalFilter, AttemptObserver, DecideRequest,
    Decided, Engine, EngineBuilder, EngineConfig, ObservedAttempt, PastDecision, PendingApproval,
    RunHandle, RunInfo, StartOptions, WrittenTreeHead,
};
pub use secret::Secret;
pub use status::{overdue, Overdue, RunStatus};
pub use step::{Attempt, Reconciled, StepBuilder};
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
