//! Errors of the engine layer.

use annal_storage::RunId;

use crate::policy::{FailureClass, StepFailure};

/// The code no longer matches the recorded history of a run. The run is moved to `Blocked`,
/// untouched, and resumes when code that matches is deployed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("drift in run {run} at position {position} (event seq {seq:?}): history has {expected}, code did {got}; differing: {}", fields.join(", "))]
pub struct DriftError {
    /// The run.
    pub run: RunId,
    /// Command position (order of the workflow's calls).
    pub position: u32,
    /// Seq of the recorded event at that position, if any.
    pub seq: Option<u64>,
    /// What history recorded.
    pub expected: String,
    /// What the current code did.
    pub got: String,
    /// Names of the differing fields.
    pub fields: Vec<String>,
}

/// Errors returned by [`crate::Engine`] operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed (I/O, corruption, poisoning, …).
    #[error(transparent)]
    Storage(#[from] annal_storage::Error),
    /// A tree head could not be made (an origin that is not one line).
    #[error("tree head: {0}")]
    TreeHead(#[from] crate::audit::transparency::TreeHeadError),
    /// A stored event is intact on disk but does not decode.
    #[error("run {run} seq {seq}: {reason}")]
    Codec {
        /// Run.
        run: RunId,
        /// Seq.
        seq: u64,
        /// Why.
        reason: crate::codec::CodecError,
    },
    /// A history contradicts itself.
    #[error("run {run}: inconsistent history at seq {seq}: {reason}")]
    Inconsistent {
        /// Run.
        run: RunId,
        /// Seq of the offending event.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// Code and history disagree.
    #[error(transparent)]
    Drift(#[from] DriftError),
    /// No workflow is registered under that name (and version).
    #[error("no workflow registered as '{name}'{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownWorkflow {
        /// Name asked for.
        name: String,
        /// Version asked for, if one was.
        version: Option<u32>,
    },
    /// No run with this id exists.
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// The run already ended; nothing was written.
    #[error("run {run} has already ended ({status:?})")]
    RunEnded {
        /// Run.
        run: RunId,
        /// Its final status.
        status: crate::RunStatus,
    },
    /// The run is blocked (drift, unregistered workflow); see its note.
    #[error("run {run} is blocked: {reason}")]
    Blocked {
        /// Run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// The run is escalated to an operator.
    #[error("run {run} is escalated: {reason}")]
    Escalated {
        /// Run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// The workflow returned an error; the run ended `Failed`.
    #[error("run {run} failed: {error}")]
    WorkflowFailed {
        /// Run.
        run: RunId,
        /// The workflow's error.
        error: String,
    },
    /// The run ended cancelled.
    #[error("run {run} was cancelled: {reason}")]
    Cancelled {
        /// Run.
        run: RunId,
        /// Reason given with the cancel request.
        reason: String,
    },
    /// The run was terminated.
    #[error("run {run} was terminated by {actor}: {reason}")]
    Terminated {
        /// Run.
        run: RunId,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// A value could not be encoded or decoded as JSON (input, output, signal payload).
    #[error("payload error: {0}")]
    Payload(String),
    /// `start` was given an input that does not decode into the type the workflow was
    /// registered with; no run was written.
    #[error("input for workflow '{workflow}' version {version} does not decode into its input type {expected}: {reason}; no run was started")]
    InputType {
        /// The workflow.
        workflow: String,
        /// The version that would have run.
        version: u32,
        /// The input type it was registered with.
        expected: &'static str,
        /// What serde said.
        reason: String,
    },
    /// A run's recorded output does not decode into the type its `RunHandle` asks for. The
    /// run itself completed; its output stays in its history.
    #[error("run {run} completed, but its output does not decode into {requested}: {reason}{}", registered.map(|t| format!(" (workflow '{workflow}' is registered with output type {t}: ask the handle for that type, or define the workflow with `Workflow` so the compiler checks it)")).unwrap_or_default())]
    OutputType {
        /// The run.
        run: RunId,
        /// Its workflow (empty if it could not be read).
        workflow: String,
        /// The type the handle asked for.
        requested: &'static str,
        /// The output type the workflow is registered with in this engine, if it is.
        registered: Option<&'static str>,
        /// What serde said.
        reason: String,
    },
    /// No approval gate with this id exists.
    #[error("unknown approval gate {0}")]
    UnknownGate(annal_storage::GateId),
    /// The gate was already decided; the first decision stands and nothing was written.
    #[error("approval gate {gate} was already {} by {actor}{} at {}", if *approved { "approved" } else { "rejected" }, role.as_ref().map(|r| format!(" (as {r})")).unwrap_or_default(), crate::audit::utc(*decided_ms))]
    AlreadyDecided {
        /// The gate.
        gate: annal_storage::GateId,
        /// Who decided first.
        actor: String,
        /// The role they decided under, if it was recorded.
        role: Option<String>,
        /// What they decided.
        approved: bool,
        /// When (ms since the Unix epoch).
        decided_ms: u64,
    },
    /// The actor is a program (an agent): only people decide approval gates, so an agent
    /// cannot approve its own proposals. Nothing was written.
    #[error("{actor} is an agent; agents may not decide approval gate {gate}")]
    AgentMayNotDecide {
        /// The gate.
        gate: annal_storage::GateId,
        /// Who tried.
        actor: String,
    },
    /// The decision named the digest of an action that is not the one the gate records
    /// (the proposal changed since the reviewer saw it); nothing was written.
    #[error("approval gate {gate} asks for another action than the one decided on (expected digest {expected}, the gate records {found})")]
    ActionChanged {
        /// The gate.
        gate: annal_storage::GateId,
        /// The digest the decision named.
        expected: crate::approval::ActionDigest,
        /// The digest of the action the gate records.
        found: crate::approval::ActionDigest,
    },
    /// A rejection without a reason; the workflow needs one to revise its proposal.
    /// Nothing was written.
    #[error("rejecting approval gate {gate} needs a reason")]
    ReasonRequired {
        /// The gate.
        gate: annal_storage::GateId,
    },
    /// Edits the gate does not allow (none declared, another field, another type); nothing
    /// was written.
    #[error("edits refused for approval gate {gate}: {reason}")]
    EditNotAllowed {
        /// The gate.
        gate: annal_storage::GateId,
        /// Why.
        reason: String,
    },
    /// The gate's deadline passed; nothing was written.
    #[error("approval gate {gate} expired")]
    GateExpired {
        /// The gate.
        gate: annal_storage::GateId,
    },
    /// The actor is not among the gate's approvers; nothing was written.
    #[error("{actor} may not decide approval gate {gate}")]
    NotAllowed {
        /// The gate.
        gate: annal_storage::GateId,
        /// Who tried.
        actor: String,
    },
    /// The run is not waiting for this (it ended, or the gate was withdrawn); nothing was
    /// written.
    #[error("run {run} is not waiting for this ({status:?})")]
    NotWaiting {
        /// The run.
        run: RunId,
        /// Its status.
        status: crate::RunStatus,
    },
    /// The operator action does not apply to the run as it stands; nothing was written.
    #[error("operator action refused for run {run}: {reason}")]
    ActionRefused {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// The engine was shut down.
    #[error("engine is shut down")]
    Shutdown,
    /// The worker that executes the run (on a shared store) refused a forwarded act for a
    /// reason this engine has no variant for; the message says it.
    #[error("the worker that executes the run refused: {message}")]
    Forwarded {
        /// Its words.
        message: String,
    },
    /// The engine's configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// What a step returns to the workflow when it does not produce its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The policy gave up (attempts, budget, terminal error) and said `Fail`.
    #[error("step '{step}' failed ({budget}){}: {message}", class.as_ref().map(|c| format!(", last failure {}", c.label())).unwrap_or_default())]
    Exhausted {
        /// Step name.
        step: String,
        /// Which rule or budget gave up.
        budget: String,
        /// Class of the last failure.
        class: Option<FailureClass>,
        /// Last error message.
        message: String,
    },
    /// The run was asked to cancel; this call was not executed.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// Reason given with the cancel request.
        reason: String,
    },
    /// The approval gate was closed without a decision the workflow can use.
    #[error("approval withdrawn: {reason}")]
    Withdrawn {
        /// Why.
        reason: String,
    },
    /// The recorded output does not decode into the type the code asks for.
    #[error("step '{step}' output does not decode: {reason}")]
    Output {
        /// Step name.
        step: String,
        /// Why.
        reason: String,
    },
}

/// What a workflow function returns as its error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// A step gave up.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The run was cancelled and the workflow chose to stop.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The workflow decided the run failed.
    #[error("{0}")]
    Failed(String),
    /// End this run and continue as a new one with this input (use
    /// [`crate::Ctx::continue_as_new`]).
    #[error("continue as new")]
    ContinueAsNew(crate::event::Payload),
}

impl WorkflowError {
    /// A failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        WorkflowError::Failed(message.into())
    }
}

impl From<StepFailure> for WorkflowError {
    fn from(f: StepFailure) -> Self {
        WorkflowError::Failed(f.to_string())
    }
}

impl From<Cancelled> for WorkflowError {
    fn from(c: Cancelled) -> Self {
        WorkflowError::Cancelled(c.reason)
    }
}

/// Returned by waits (timers, signals) when the run is cancelled while waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cancelled: {reason}")]
pub struct Cancelled {
    /// Reason given with the cancel request.
    pub reason: String,
}

impl From<Cancelled> for StepError {
    fn from(c: Cancelled) -> Self {
        StepError::Cancelled { reason: c.reason }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
