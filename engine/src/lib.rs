//! # annal
//!
//! An embeddable, event-sourced durable workflow engine. Workflows are plain `async fn`s;
//! every decision is an event in a CRC-framed log (see [`annal_storage`]), and a run's state
//! is rebuilt by replaying that log through the same code, so a crash at any instant resumes
//! where the recorded outcomes end.

pub mod clock;
pub mod codec;
pub mod breaker;
mod context;
pub mod error;
pub mod event;
pub mod policy;
pub mod replay;
mod runtime;
mod status;
mod step;

pub use annal_storage::{Durability, RunId};
pub use context::Ctx;
pub use step::{Attempt, Reconciled, StepBuilder};
pub use error::{Cancelled, DriftError, Error, Result, StepError, WorkflowError};
pub use event::{Event, EventKind, Payload};
pub use policy::{Backoff, FailureClass, OnExhaust, Policy, RetryPolicy, StepClass, StepFailure, ToolPolicy};
pub use runtime::{read_history, AttemptObserver, ObservedAttempt, Engine, EngineBuilder, EngineConfig, RunHandle, RunInfo, StartOptions};
pub use status::RunStatus;
#[cfg(feature = "testing")]
pub mod testing;
