//! What a reviewer sees and sends: pending approvals and their filter, decision requests,
//! recorded and past decisions. Plain data, shared by the operator API (`operator`) and the
//! acts forwarded between workers (`acts`).

use annal_storage::{GateId, RunId};

use crate::approval::{ActionDigest, Actor, CheckResult, OnExpiry, RiskTier, Verdict};
use crate::status::RunStatus;
#[cfg(doc)]
use crate::Engine;

/// One approval waiting for a decision, as a reviewer's inbox shows it: everything the gate
/// recorded, so a reviewer decides from the card alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingApproval {
    /// The gate to decide.
    pub gate: GateId,
    /// The run waiting.
    pub run: RunId,
    /// The command position of the approval in the run.
    pub position: u32,
    /// Its workflow.
    pub workflow: String,
    /// The run's status (`Parked` or `Running`).
    pub status: RunStatus,
    /// The proposed action.
    pub action: String,
    /// Risk tier.
    pub risk: RiskTier,
    /// Expected cost.
    pub cost: Option<u64>,
    /// Evidence references.
    pub evidence: Vec<String>,
    /// Guardrail and policy checks run before asking, with their results.
    pub checks: Vec<CheckResult>,
    /// How to undo the action.
    pub rollback: Option<String>,
    /// Who may decide: actor ids, or `role:NAME`; empty: anyone.
    pub approvers: Vec<String>,
    /// What happens at the deadline.
    pub on_expiry: OnExpiry,
    /// When the gate opened (or an operator reopened it), ms since the Unix epoch.
    pub requested_ms: u64,
    /// When it expires (ms since the Unix epoch), if it does.
    pub deadline_ms: Option<u64>,
    /// How long it has waited.
    pub age_ms: u64,
    /// Reminders sent so far.
    pub reminders: u32,
    /// The fields a reviewer may edit (a JSON object: field -> proposed value); `None`: the
    /// gate takes approve or reject only.
    pub editable: Option<serde_json::Value>,
    /// The digest of exactly this request: a decision that names it is refused if the gate
    /// has come to ask for something else.
    pub digest: ActionDigest,
}

impl PendingApproval {
    /// The checks that failed: what the inbox shows as risk flags.
    pub fn failed_checks(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// Which approvals to list.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    /// Only gates this actor may decide (none, for an agent).
    pub approver: Option<Actor>,
    /// Only gates at or above this risk.
    pub min_risk: Option<RiskTier>,
}

impl ApprovalFilter {
    pub(crate) fn admits(&self, pending: &PendingApproval) -> bool {
        self.approver
            .as_ref()
            .is_none_or(|a| !a.is_agent() && a.may_decide(&pending.approvers))
            && self.min_risk.is_none_or(|min| pending.risk >= min)
    }
}

/// A decision as a reviewers' surface sends it: verdict, reason, and the digest of the
/// action the reviewer saw. [`Engine::decide_bound`] applies the reviewer rules to it: a
/// rejection needs a reason, edits only where the gate declared them, and a digest that
/// does not match the gate's request refuses the decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct DecideRequest {
    /// Approve (with edits) or reject.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// The digest of the action decided on ([`PendingApproval::digest`]); `None` decides
    /// whatever the gate asks.
    pub expected_digest: Option<ActionDigest>,
}

impl DecideRequest {
    /// Approve, for `reason`.
    pub fn approve(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Approve { edits: None },
            reason: reason.into(),
            expected_digest: None,
        }
    }

    /// Reject, for `reason` (required).
    pub fn reject(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Reject,
            ..Self::approve(reason)
        }
    }

    /// Approve with these edits of the gate's editable fields.
    pub fn with_edits(mut self, edits: serde_json::Value) -> Self {
        self.verdict = Verdict::Approve { edits: Some(edits) };
        self
    }

    /// Only if the gate still asks for the action with this digest.
    pub fn bound_to(mut self, digest: ActionDigest) -> Self {
        self.expected_digest = Some(digest);
        self
    }
}

/// A decision as it was recorded (durably) by [`Engine::decide_bound`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decided {
    /// The gate.
    pub gate: GateId,
    /// Its run.
    pub run: RunId,
    /// Who decided.
    pub actor: String,
    /// The role they decided under (`role:NAME`, `named`, `any`).
    pub role: String,
    /// Approved or rejected.
    pub approved: bool,
    /// When it was recorded (ms since the Unix epoch).
    pub decided_ms: u64,
    /// The digest of the action decided on.
    pub action_digest: ActionDigest,
}

impl Decided {
    /// A decision as the history records it.
    pub(crate) fn recorded(
        gate: GateId,
        run: RunId,
        actor: String,
        role: String,
        approved: bool,
        decided_ms: u64,
        action_digest: ActionDigest,
    ) -> Self {
        Self {
            gate,
            run,
            actor,
            role,
            approved,
            decided_ms,
            action_digest,
        }
    }
}

/// A closed approval round, for the reviewers' history: who decided, under which role, when
/// and why (or that the gate expired or was withdrawn).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PastDecision {
    /// The gate.
    pub gate: GateId,
    /// Its run.
    pub run: RunId,
    /// The run's workflow.
    pub workflow: String,
    /// The action that was asked for.
    pub action: String,
    /// `approved`, `rejected`, `expired` or `withdrawn`.
    pub decision: String,
    /// Who decided (none for expired and withdrawn gates).
    pub actor: Option<String>,
    /// The role they decided under; `None` for decisions recorded before roles were.
    pub role: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// When the round opened.
    pub requested_ms: u64,
    /// When it closed.
    pub decided_ms: u64,
}

/// Whether a decision goes through the reviewer rules (reason, edits, digest) or only the
/// rules `decide` always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Rules {
    Reviewer,
    Compatible,
}
