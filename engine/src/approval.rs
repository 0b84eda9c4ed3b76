//! Human approval gates: what a reviewer sees, who may decide, and what happens when nobody
//! does. Authorization and expiry routing are pure functions; the runtime records their
//! answers.

use serde::{Deserialize, Serialize};

/// How risky the proposed action is; filters the reviewers' inbox.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum RiskTier {
    /// Routine.
    #[default]
    Low,
    /// Needs a look.
    Medium,
    /// Needs a careful look.
    High,
    /// Needs a senior look.
    Critical,
}

/// A guardrail or policy check result shown to the reviewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Check name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it found.
    pub detail: String,
}

/// What happens when the deadline passes with no decision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OnExpiry {
    /// The run stops in `Escalated` for an operator.
    #[default]
    Escalate,
    /// The workflow receives [`Decision::Expired`] and decides itself (usually: do not act).
    Reject,
    /// Remind the approvers `times` times, `every_ms` apart, before the deadline counts; then
    /// escalate.
    Remind {
        /// Reminders before giving up.
        times: u32,
        /// Spacing of reminders.
        every_ms: u64,
    },
}

/// Everything a reviewer needs to decide, recorded in history as asked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The proposed action, in words ("refund $420 to order A-1001").
    pub action: String,
    /// References to the evidence (order ids, ticket links, document hashes).
    pub evidence: Vec<String>,
    /// Risk tier.
    pub risk: RiskTier,
    /// Expected cost (cents, units), if any.
    pub cost: Option<u64>,
    /// Guardrail and policy checks run before asking.
    pub checks: Vec<CheckResult>,
    /// How to undo the action if it turns out wrong.
    pub rollback: Option<String>,
    /// How long reviewers have, from the request.
    pub deadline_ms: Option<u64>,
    /// Who may decide: actor ids, or `role:NAME` for anyone with that role. Empty: anyone.
    pub approvers: Vec<String>,
    /// What happens at the deadline.
    pub on_expiry: OnExpiry,
}

impl ApprovalRequest {
    /// A request for `action` with defaults (low risk, no deadline, anyone may decide).
    pub fn new(action: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            ..Self::default()
        }
    }
}

/// Who is deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Their id.
    pub id: String,
    /// Their roles.
    pub roles: Vec<String>,
}

impl Actor {
    /// An actor with roles.
    pub fn new(id: impl Into<String>, roles: &[&str]) -> Self {
        Self {
            id: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// Whether this actor is one of `approvers` (ids or `role:NAME`). Pure.
    pub fn may_decide(&self, approvers: &[String]) -> bool {
        approvers.is_empty()
            || approvers.iter().any(|a| match a.strip_prefix("role:") {
                Some(role) => self.roles.iter().any(|r| r == role),
                None => *a == self.id,
            })
    }
}

/// What a reviewer decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Go ahead, optionally with edits to the proposal (JSON the workflow understands).
    Approve {
        /// Changes the reviewer made.
        edits: Option<serde_json::Value>,
    },
    /// Do not.
    Reject,
}

/// What the workflow receives from `ctx.approval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Approved.
    Approved {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
        /// The reviewer's edits, for the step that follows.
        edits: Option<serde_json::Value>,
    },
    /// Rejected; the reason can go back into a revised proposal.
    Rejected {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Nobody decided in time (`OnExpiry::Reject`).
    Expired,
}

/// The next instant the approval wait must wake for: a reminder or the deadline. Pure.
pub fn next_wake(request: &ApprovalRequest, requested_ms: u64, reminders_sent: u32) -> Option<u64> {
    let deadline = request.deadline_ms.map(|d| requested_ms.saturating_add(d));
    match request.on_expiry {
        OnExpiry::Remind { times, every_ms } if reminders_sent < times => {
            let reminder =
                requested_ms.saturating_add(every_ms.saturating_mul(u64::from(reminders_sent) + 1));
            Some(deadline.map_or(reminder, |d| d.min(reminder)))
        }
        _ => deadline,
    }
}

/// Whether the wake at `now_ms` is a reminder (true) or the deadline (false). Pure.
pub fn is_reminder(
    request: &ApprovalRequest,
    requested_ms: u64,
    reminders_sent: u32,
    now_ms: u64,
) -> bool {
    let deadline = request.deadline_ms.map(|d| requested_ms.saturating_add(d));
    matches!(request.on_expiry, OnExpiry::Remind { times, .. } if reminders_sent < times)
        && deadline.is_none_or(|d| now_ms < d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approvers_by_id_or_role() {
        let finance = Actor::new("dana", &["finance"]);
        assert!(finance.may_decide(&[]));
        assert!(finance.may_decide(&["role:finance".into()]));
        assert!(finance.may_decide(&["dana".into()]));
        assert!(!finance.may_decide(&["role:legal".into(), "lee".into()]));
    }

    #[test]
    fn reminders_come_before_the_deadline() {
        let request = ApprovalRequest {
            deadline_ms: Some(10_000),
            on_expiry: OnExpiry::Remind {
                times: 2,
                every_ms: 3_000,
            },
            ..ApprovalRequest::new("x")
        };
        assert_eq!(next_wake(&request, 100, 0), Some(3_100));
        assert!(is_reminder(&request, 100, 0, 3_100));
        assert_eq!(next_wake(&request, 100, 1), Some(6_100));
        assert_eq!(next_wake(&request, 100, 2), Some(10_100));
        assert!(!is_reminder(&request, 100, 2, 10_100));
        let no_deadline = ApprovalRequest::new("x");
        assert_eq!(next_wake(&no_deadline, 0, 0), None);
    }
}
