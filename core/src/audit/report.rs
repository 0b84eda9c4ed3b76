//! [`Report`]: per-tool metrics over many runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::ids::RunId;
use serde::Serialize;

use super::record::{Outcome, RunRecord, StepEnd, StepRef};
use super::{duration_ms, exhaust_action, ser_display, write_table, NO_TOOL};
use crate::policy::{FailureClass, OnExhaust};

/// Per-tool metrics over many runs. Build it with [`Report::from_records`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Runs covered.
    pub runs: u64,
    /// Runs per status.
    pub statuses: BTreeMap<String, u64>,
    /// Runs that ended (any terminal status).
    pub ended_runs: u64,
    /// Runs that completed with an output.
    pub completed_runs: u64,
    /// `completed_runs / ended_runs`.
    pub success_rate: Option<f64>,
    /// Runs that escalated at least once.
    pub escalated_runs: u64,
    /// `escalated_runs / runs`.
    pub escalation_rate: Option<f64>,
    /// Cost units over all runs.
    pub total_cost: u64,
    /// `total_cost / completed_runs`: what one successful outcome costs.
    pub cost_per_completed_run: Option<f64>,
    /// Approval counts and latency.
    pub approvals: ApprovalStats,
    /// Metrics per tool ([`NO_TOOL`] for steps that named none).
    pub tools: BTreeMap<String, ToolStats>,
    /// Every budget exhaustion, in run then log order.
    pub exhaustions: Vec<Exhaustion>,
    /// Run ceilings reached, by ceiling (`max_iterations`, …).
    pub ceilings: BTreeMap<String, u64>,
}

/// Metrics of one tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolStats {
    /// Steps that called it.
    pub steps: u64,
    /// Attempts made.
    pub attempts: u64,
    /// Attempts after each step's first.
    pub retries: u64,
    /// `retries / attempts`.
    pub retry_share: Option<f64>,
    /// Failed attempts by failure class label.
    pub failures: BTreeMap<String, u64>,
    /// Calls a circuit breaker refused (attempts of class `breaker-open`). How often a
    /// breaker opened is live state, not history; refusals are what the log records.
    pub breaker_refusals: u64,
    /// Budget exhaustion events, by budget.
    pub exhausted: BTreeMap<String, u64>,
    /// Steps whose output the tool produced: its real successes (an operator's resolution
    /// of an effect of unknown outcome as done included; a skip is not).
    pub completed: u64,
    /// Steps that gave up and degraded to a fallback value.
    pub degraded: u64,
    /// Steps that gave up and were skipped by their on-exhaust rule.
    pub skipped: u64,
    /// Steps an operator skipped with a value.
    pub operator_skipped: u64,
    /// Steps that gave up and failed or escalated (and were not resolved since).
    pub failed: u64,
    /// Steps whose final outcome is an exhaustion: `degraded + skipped + failed`.
    pub gave_up: u64,
    /// `completed / (completed + gave_up + operator_skipped)`; steps still running do not
    /// count.
    pub success_rate: Option<f64>,
    /// Escalations raised by its steps.
    pub escalations: u64,
    /// `escalations / steps`.
    pub escalation_rate: Option<f64>,
    /// Cost units its attempts reported, failed ones included.
    pub cost: u64,
    /// `cost / completed`: what one real success of the tool cost.
    pub cost_per_success: Option<f64>,
}

/// One budget exhaustion (`StepExhausted`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exhaustion {
    /// The run.
    #[serde(serialize_with = "ser_display")]
    pub run: RunId,
    /// Seq of the `StepExhausted` event.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// The step.
    pub step: StepRef,
    /// Its tool ([`NO_TOOL`] if none).
    pub tool: String,
    /// Which budget ran out.
    pub budget: String,
    /// What the policy did.
    pub action: String,
}

/// Approval counts and how long decisions took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApprovalStats {
    /// Gates requested.
    pub requested: u64,
    /// Approved.
    pub approved: u64,
    /// Rejected.
    pub rejected: u64,
    /// Expired without a decision.
    pub expired: u64,
    /// Closed because the run was cancelled while waiting.
    pub withdrawn: u64,
    /// Still waiting.
    pub pending: u64,
    /// Shortest wait for a decision.
    pub latency_ms_min: Option<u64>,
    /// Median wait (the lower middle for an even count).
    pub latency_ms_median: Option<u64>,
    /// Longest wait.
    pub latency_ms_max: Option<u64>,
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Report {
    /// Aggregates run records. The result depends only on the records, not their order
    /// beyond the order of `exhaustions`.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RunRecord>) -> Self {
        let mut report = Report::default();
        let mut latencies = Vec::new();
        for record in records {
            report.runs += 1;
            *report
                .statuses
                .entry(record.status.to_string())
                .or_default() += 1;
            if record.status.is_terminal() {
                report.ended_runs += 1;
            }
            if matches!(record.outcome, Outcome::Completed { .. }) {
                report.completed_runs += 1;
            }
            if !record.escalations.is_empty() {
                report.escalated_runs += 1;
            }
            report.total_cost = report.total_cost.saturating_add(record.cost());
            for step in &record.steps {
                // Attempts are counted against the tool each one called: a fallback
                // alternative's attempts are its own, not the primary's.
                let primary = step.tool.clone().unwrap_or_else(|| NO_TOOL.to_string());
                let current = step.current_tool.clone().unwrap_or_else(|| primary.clone());
                let mut attempts: BTreeMap<String, u64> = BTreeMap::new();
                for failure in &step.failures {
                    let tool = failure.tool.clone().unwrap_or_else(|| primary.clone());
                    *attempts.entry(tool.clone()).or_default() += 1;
                    let stats = report.tools.entry(tool).or_default();
                    stats.cost = stats.cost.saturating_add(failure.cost);
                    *stats
                        .failures
                        .entry(failure.class.label().to_string())
                        .or_default() += 1;
                    if failure.class == FailureClass::BreakerOpen {
                        stats.breaker_refusals += 1;
                    }
                }
                match &step.outcome {
                    StepEnd::Completed {
                        attempt, served_by, ..
                    } => {
                        let tool = served_by
                            .clone()
                            .filter(|s| s != "operator")
                            .unwrap_or_else(|| current.clone());
                        // A reconciled attempt is recorded as failed and completed: count it
                        // once. An operator's resolution adds no attempt.
                        let counted = step.failures.iter().any(|f| f.attempt == *attempt)
                            || served_by.as_deref() == Some("operator");
                        if !counted {
                            *attempts.entry(tool.clone()).or_default() += 1;
                        }
                        let stats = report.tools.entry(tool).or_default();
                        stats.completed += 1;
                        stats.cost = stats.cost.saturating_add(step.success_cost());
                    }
                    StepEnd::OperatorSkipped { .. } => {
                        let stats = report.tools.entry(current.clone()).or_default();
                        stats.operator_skipped += 1;
                        stats.cost = stats.cost.saturating_add(step.success_cost());
                    }
                    StepEnd::Exhausted { action, .. } => {
                        let stats = report.tools.entry(current.clone()).or_default();
                        match action {
                            OnExhaust::Degrade(_) => stats.degraded += 1,
                            OnExhaust::Skip => stats.skipped += 1,
                            OnExhaust::Fail | OnExhaust::Escalate => stats.failed += 1,
                        }
                        stats.gave_up += 1;
                        stats.cost = stats.cost.saturating_add(step.success_cost());
                    }
                    StepEnd::Pending => {
                        let stats = report.tools.entry(current.clone()).or_default();
                        stats.cost = stats.cost.saturating_add(step.success_cost());
                    }
                }
                if attempts.is_empty() {
                    attempts.insert(primary.clone(), u64::from(step.attempts));
                }
                for (tool, made) in attempts {
                    let stats = report.tools.entry(tool).or_default();
                    stats.steps += 1;
                    stats.attempts += made;
                    stats.retries += made.saturating_sub(1);
                }
                let tool = current.clone();
                let stats = report.tools.entry(tool.clone()).or_default();
                for exhaustion in &step.exhaustions {
                    *stats
                        .exhausted
                        .entry(exhaustion.budget.clone())
                        .or_default() += 1;
                    report.exhaustions.push(Exhaustion {
                        run: record.run,
                        seq: exhaustion.seq,
                        at_ms: exhaustion.at_ms,
                        step: StepRef {
                            position: step.position,
                            name: step.name.clone(),
                        },
                        tool: tool.clone(),
                        budget: exhaustion.budget.clone(),
                        action: exhaust_action(&exhaustion.action),
                    });
                }
            }
            for ceiling in &record.ceilings {
                let key = ceiling
                    .ceiling
                    .strip_prefix("run ")
                    .and_then(|c| c.split(' ').next())
                    .unwrap_or(&ceiling.ceiling);
                *report.ceilings.entry(key.to_string()).or_default() += 1;
            }
            for escalation in &record.escalations {
                let Some(step) = &escalation.step else {
                    continue;
                };
                let tool = record
                    .steps
                    .iter()
                    .find(|s| s.position == step.position)
                    .and_then(|s| s.tool.clone())
                    .unwrap_or_else(|| NO_TOOL.to_string());
                report.tools.entry(tool).or_default().escalations += 1;
            }
            for approval in &record.approvals {
                let a = &mut report.approvals;
                a.requested += 1;
                match approval.decision.as_deref() {
                    Some("approved") => a.approved += 1,
                    Some("rejected") => a.rejected += 1,
                    Some("expired") => a.expired += 1,
                    Some("withdrawn") => a.withdrawn += 1,
                    _ => a.pending += 1,
                }
                if matches!(approval.decision.as_deref(), Some("approved" | "rejected")) {
                    latencies.extend(approval.latency_ms());
                }
            }
        }
        for stats in report.tools.values_mut() {
            stats.retry_share = ratio(stats.retries, stats.attempts);
            stats.success_rate = ratio(
                stats.completed,
                stats.completed + stats.gave_up + stats.operator_skipped,
            );
            stats.escalation_rate = ratio(stats.escalations, stats.steps);
            stats.cost_per_success =
                (stats.completed > 0).then(|| stats.cost as f64 / stats.completed as f64);
        }
        report.success_rate = ratio(report.completed_runs, report.ended_runs);
        report.escalation_rate = ratio(report.escalated_runs, report.runs);
        report.cost_per_completed_run = (report.completed_runs > 0)
            .then(|| report.total_cost as f64 / report.completed_runs as f64);
        latencies.sort_unstable();
        report.approvals.latency_ms_min = latencies.first().copied();
        report.approvals.latency_ms_max = latencies.last().copied();
        report.approvals.latency_ms_median = latencies
            .get(latencies.len().saturating_sub(1) / 2)
            .copied();
        report
    }

    /// The report as text: run totals, a table per tool, failures by class, approvals, and
    /// every budget exhaustion.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "runs         {} ({})",
            self.runs,
            if statuses.is_empty() {
                "none".into()
            } else {
                statuses.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "success      {} of {} ended runs completed ({})",
            self.completed_runs,
            self.ended_runs,
            percent(self.success_rate)
        );
        let _ = writeln!(
            out,
            "escalation   {} of {} runs escalated ({})",
            self.escalated_runs,
            self.runs,
            percent(self.escalation_rate)
        );
        let _ = writeln!(
            out,
            "cost         {} units, {} per completed run",
            self.total_cost,
            decimal(self.cost_per_completed_run)
        );
        let a = &self.approvals;
        if a.requested == 0 {
            let _ = writeln!(out, "approvals    none recorded");
        } else {
            let latency = |ms: Option<u64>| ms.map_or_else(|| "-".into(), duration_ms);
            let _ = writeln!(
                out,
                "approvals    {} requested: {} approved, {} rejected, {} expired, {} withdrawn, {} pending; latency min {} median {} max {}",
                a.requested,
                a.approved,
                a.rejected,
                a.expired,
                a.withdrawn,
                a.pending,
                latency(a.latency_ms_min),
                latency(a.latency_ms_median),
                latency(a.latency_ms_max)
            );
        }

        let _ = writeln!(out, "\nper tool");
        if self.tools.is_empty() {
            let _ = writeln!(out, "  none");
        } else {
            let mut rows = vec![[
                "tool",
                "steps",
                "attempts",
                "retry share",
                "success",
                "degraded",
                "skipped",
                "op-skipped",
                "failed",
                "escalated",
                "breaker refusals",
                "exhausted",
                "cost",
                "cost/success",
            ]
            .map(String::from)];
            for (tool, s) in &self.tools {
                let exhausted: u64 = s.exhausted.values().sum();
                rows.push([
                    tool.clone(),
                    s.steps.to_string(),
                    s.attempts.to_string(),
                    format!("{}/{} {}", s.retries, s.attempts, percent(s.retry_share)),
                    format!(
                        "{}/{} {}",
                        s.completed,
                        s.completed + s.gave_up + s.operator_skipped,
                        percent(s.success_rate)
                    ),
                    s.degraded.to_string(),
                    s.skipped.to_string(),
                    s.operator_skipped.to_string(),
                    s.failed.to_string(),
                    format!(
                        "{}/{} {}",
                        s.escalations,
                        s.steps,
                        percent(s.escalation_rate)
                    ),
                    s.breaker_refusals.to_string(),
                    exhausted.to_string(),
                    s.cost.to_string(),
                    decimal(s.cost_per_success),
                ]);
            }
            write_table(&mut out, "  ", &rows);
        }

        let _ = writeln!(out, "\nfailures by class");
        let mut any = false;
        for (tool, s) in self.tools.iter().filter(|(_, s)| !s.failures.is_empty()) {
            any = true;
            let classes: Vec<String> = s.failures.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = writeln!(out, "  {tool}: {}", classes.join(", "));
        }
        if !any {
            let _ = writeln!(out, "  none");
        }

        if !self.ceilings.is_empty() {
            let ceilings: Vec<String> = self
                .ceilings
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(out, "\nrun ceilings reached: {}", ceilings.join(", "));
        }

        let _ = writeln!(out, "\nbudget exhaustion");
        if self.exhaustions.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for e in &self.exhaustions {
            let _ = writeln!(
                out,
                "  run {} [{}] {} (tool {}): {} -> {}",
                e.run, e.step.position, e.step.name, e.tool, e.budget, e.action
            );
        }
        out
    }
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn decimal(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}
