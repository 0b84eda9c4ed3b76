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

/// Whether an actor is a person or a program. Only people decide approval gates: an agent
/// that could approve would approve its own proposals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ActorKind {
    /// A person (the default: [`Actor::new`]).
    #[default]
    Human,
    /// A program: an agent, a bot, a service account.
    Agent,
}

/// The role a decision is recorded under when the gate lets anyone decide.
pub const DECIDED_AS_ANYONE: &str = "any";
/// The role a decision is recorded under when the gate listed the actor's own id.
pub const DECIDED_AS_NAMED: &str = "named";

/// Who is deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Their id.
    pub id: String,
    /// Their roles.
    pub roles: Vec<String>,
    /// Person or program; defaults to a person, so older serialized actors still read.
    #[serde(default)]
    pub kind: ActorKind,
}

impl Actor {
    /// A person with roles.
    pub fn new(id: impl Into<String>, roles: &[&str]) -> Self {
        Self {
            id: id.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            kind: ActorKind::Human,
        }
    }

    /// A program (an agent, a bot) with roles: it may read, but never decide a gate.
    pub fn agent(id: impl Into<String>, roles: &[&str]) -> Self {
        Self {
            kind: ActorKind::Agent,
            ..Self::new(id, roles)
        }
    }

    /// Whether this actor is a program.
    pub fn is_agent(&self) -> bool {
        self.kind == ActorKind::Agent
    }

    /// Whether this actor is one of `approvers` (ids or `role:NAME`). Pure.
    pub fn may_decide(&self, approvers: &[String]) -> bool {
        self.decides_as(approvers).is_some()
    }

    /// Under which entry of `approvers` this actor decides, as recorded with the decision:
    /// `role:NAME` for the first role entry they hold, [`DECIDED_AS_NAMED`] when their id is
    /// listed (whichever of the two comes first in the list), [`DECIDED_AS_ANYONE`] when the
    /// list is empty; `None` when they may not decide. Pure; says nothing about agents.
    pub fn decides_as(&self, approvers: &[String]) -> Option<String> {
        if approvers.is_empty() {
            return Some(DECIDED_AS_ANYONE.to_string());
        }
        approvers
            .iter()
            .find_map(|a| match a.strip_prefix("role:") {
                Some(role) => self.roles.iter().any(|r| r == role).then(|| a.clone()),
                None => (*a == self.id).then(|| DECIDED_AS_NAMED.to_string()),
            })
    }
}

/// A digest of exactly what a gate asks to approve: the recorded request (action, evidence,
/// risk, cost, checks, rollback, deadline, approvers, expiry route), the editable fields if
/// the gate has any, and the gate id. A reviewer's decision can name the digest of what they
/// saw; if the gate's recorded request is not that one (a crash took an unsaved request and
/// the workflow proposed something else at the same gate), the decision is refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionDigest(pub [u8; 32]);

impl ActionDigest {
    /// The digest of a gate's recorded request. Stable: BLAKE3 in derive-key mode over the
    /// gate id and the schema-v1 encoding of the request (whose layout never changes).
    pub fn of(gate: [u8; 16], request: &ApprovalRequest, editable: Option<&[u8]>) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("annal approval action digest v1");
        hasher.update(&gate);
        let request = crate::encoding::canonical_bytes(request);
        hasher.update(&(request.len() as u64).to_le_bytes());
        hasher.update(&request);
        match editable {
            Some(bytes) => {
                hasher.update(&[1]);
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(bytes);
            }
            None => {
                hasher.update(&[0]);
            }
        }
        ActionDigest(*hasher.finalize().as_bytes())
    }

    /// Parses the 64 lowercase or uppercase hex digits [`Display`](std::fmt::Display) writes.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ActionDigest(out))
    }
}

impl std::fmt::Display for ActionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ActionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActionDigest({self})")
    }
}

impl Serialize for ActionDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ActionDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ActionDigest::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("an action digest is 64 hex digits"))
    }
}

/// Whether `edits` only changes what a gate declared editable (`editable`: a JSON object of
/// field -> proposed value), each field keeping the JSON type of its proposed value. Pure;
/// the error says why not, in words a reviewer can act on.
pub fn check_edits(
    editable: Option<&serde_json::Value>,
    edits: &serde_json::Value,
) -> Result<(), String> {
    let Some(serde_json::Value::Object(allowed)) = editable else {
        return Err("this gate does not allow edits".into());
    };
    let serde_json::Value::Object(edits) = edits else {
        return Err("edits must be a JSON object of field -> new value".into());
    };
    for (field, value) in edits {
        let Some(proposed) = allowed.get(field) else {
            let names: Vec<&str> = allowed.keys().map(String::as_str).collect();
            return Err(format!(
                "field '{field}' is not editable (editable: {})",
                names.join(", ")
            ));
        };
        if std::mem::discriminant(proposed) != std::mem::discriminant(value) {
            return Err(format!(
                "field '{field}' must keep the type of its proposed value ({proposed})"
            ));
        }
    }
    Ok(())
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
    fn the_recorded_role_is_the_first_entry_that_admits_the_actor() {
        let dana = Actor::new("dana", &["support", "finance"]);
        assert_eq!(dana.decides_as(&[]).as_deref(), Some(DECIDED_AS_ANYONE));
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            dana.decides_as(&list(&["role:legal", "role:finance", "dana"]))
                .as_deref(),
            Some("role:finance")
        );
        assert_eq!(
            dana.decides_as(&list(&["dana", "role:finance"])).as_deref(),
            Some(DECIDED_AS_NAMED)
        );
        assert_eq!(dana.decides_as(&list(&["role:legal"])), None);
        assert!(!dana.is_agent());
        assert!(Actor::agent("bot", &["finance"]).is_agent());
    }

    #[test]
    fn the_action_digest_covers_every_field_and_round_trips_as_hex() {
        let base = ApprovalRequest {
            cost: Some(42_000),
            rollback: Some("void".into()),
            ..ApprovalRequest::new("refund")
        };
        let d = ActionDigest::of([1; 16], &base, None);
        assert_eq!(d, ActionDigest::of([1; 16], &base.clone(), None), "stable");
        assert_eq!(ActionDigest::parse(&d.to_string()), Some(d));
        assert_eq!(ActionDigest::parse("zz"), None);
        let changed = [
            ActionDigest::of([2; 16], &base, None),
            ActionDigest::of([1; 16], &base, Some(b"{}")),
            ActionDigest::of(
                [1; 16],
                &ApprovalRequest {
                    cost: Some(42_001),
                    ..base.clone()
                },
                None,
            ),
            ActionDigest::of(
                [1; 16],
                &ApprovalRequest {
                    approvers: vec!["role:x".into()],
                    ..base.clone()
                },
                None,
            ),
        ];
        assert!(changed.iter().all(|c| *c != d));
    }

    #[test]
    fn edits_only_touch_declared_fields_with_their_types() {
        let editable = serde_json::json!({ "amount": 42_000, "message": "sorry" });
        assert!(check_edits(Some(&editable), &serde_json::json!({ "amount": 40_000 })).is_ok());
        assert!(check_edits(None, &serde_json::json!({ "amount": 1 })).is_err());
        assert!(check_edits(Some(&editable), &serde_json::json!({ "iban": "x" })).is_err());
        assert!(check_edits(Some(&editable), &serde_json::json!({ "amount": "lots" })).is_err());
        assert!(check_edits(Some(&editable), &serde_json::json!([1])).is_err());
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
