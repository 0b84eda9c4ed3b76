//! `annal --url URL --token-file FILE …`: the same commands against a running service,
//! through its admin API (`annal-admin`), instead of a database directory no process holds.
//!
//! The HTTP client is `ureq`: blocking (a command-line tool needs no runtime for one
//! request), small, rustls for `https://` URLs. The token is read from a file so it never
//! appears in a process list or shell history, and it is sent only in the `Authorization`
//! header.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use annal_admin::wire::{
    DecideBody, DecisionView, ErrorBody, OperateBody, OperatedView, PastDecisionView, PendingView,
    ReportView, RunSummary, RunView, WhoAmI,
};
use annal_core::audit::{duration_ms, utc};
use anyhow::{bail, Context as _};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::commands::write_table;

/// How long one request may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The service refused: its typed error body.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: ErrorBody,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused ({}, HTTP {}): {}",
            self.body.error, self.status, self.body.message
        )?;
        if matches!(self.status, 401 | 403 | 404 | 409 | 410 | 422) {
            write!(f, "; nothing was written")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// A client of one service's admin API.
pub struct Remote {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Remote {
    /// A client for the service at `url`, authenticating with the token in `token_file`.
    pub fn new(url: &str, token_file: &Path) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read the token file {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", token_file.display());
        }
        warn_if_readable_by_others(token_file);
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://, not '{url}'");
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        Ok(Self { agent, base, token })
    }

    fn answer<T: DeserializeOwned>(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let mut response =
            response.with_context(|| format!("cannot reach the service at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{what}: unreadable answer"))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .with_context(|| format!("{what}: unexpected answer from the service"));
        }
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(Refused { status, body }.into()),
            Err(_) => bail!("{what}: HTTP {status} from the service (is --url the admin server?)"),
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .call();
        self.answer(path, response)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let json = serde_json::to_string(body)?;
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(json);
        self.answer(path, response)
    }

    /// Who the token belongs to.
    pub fn whoami(&self) -> anyhow::Result<WhoAmI> {
        self.get("/api/v1/whoami")
    }

    /// A run id from a full id or a unique prefix, among the service's runs.
    fn resolve_run(&self, prefix: &str) -> anyhow::Result<String> {
        let wanted = prefix.to_ascii_lowercase();
        let runs: Vec<RunSummary> = self.get("/api/v1/runs")?;
        let matches: Vec<&RunSummary> =
            runs.iter().filter(|r| r.run.starts_with(&wanted)).collect();
        match matches.as_slice() {
            [one] => Ok(one.run.clone()),
            [] => bail!("no run matches '{prefix}'"),
            _ => bail!(
                "'{prefix}' matches {} runs; give more digits",
                matches.len()
            ),
        }
    }

    /// `annal runs`.
    pub fn runs(
        &self,
        filter: &crate::commands::RunFilter,
        out: &mut dyn Write,
    ) -> anyhow::Result<u8> {
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(format!("status={}", status.name()));
        }
        if let Some(workflow) = &filter.workflow {
            query.push(format!("workflow={}", encode(workflow)));
        }
        if let Some(since) = filter.since {
            query.push(format!("since_ms={}", since.resolve(crate::when::now_ms())));
        }
        let path = if query.is_empty() {
            "/api/v1/runs".to_string()
        } else {
            format!("/api/v1/runs?{}", query.join("&"))
        };
        let runs: Vec<RunSummary> = self.get(&path)?;
        if runs.is_empty() {
            writeln!(out, "no runs match")?;
            return Ok(0);
        }
        let mut rows = vec![crate::commands::RunRow::header()];
        for r in &runs {
            let row = crate::commands::RunRow {
                run: r.run.clone(),
                workflow: &r.workflow,
                version: r.version,
                status: r.status.clone(),
                events: r.events,
                created_ms: r.created_ms,
                updated_ms: r.updated_ms,
                note: &r.note,
            };
            rows.push(row.cells());
        }
        write_table(out, &rows)?;
        Ok(0)
    }

    /// `annal history RUN`.
    pub fn history(&self, run: &str, json: bool, out: &mut dyn Write) -> anyhow::Result<u8> {
        let run = self.resolve_run(run)?;
        let view: RunView = self.get(&format!("/api/v1/runs/{run}"))?;
        if json {
            let doc = serde_json::json!({ "record": view.record, "events": view.events });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", view.rendered)?;
            writeln!(out, "\ntimeline")?;
            write!(out, "{}", view.timeline)?;
        }
        Ok(0)
    }

    /// `annal report`.
    pub fn report(
        &self,
        since: Option<crate::when::When>,
        json: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<u8> {
        let path = match since {
            Some(since) => format!(
                "/api/v1/report?since_ms={}",
                since.resolve(crate::when::now_ms())
            ),
            None => "/api/v1/report".to_string(),
        };
        let view: ReportView = self.get(&path)?;
        if json {
            serde_json::to_writer_pretty(&mut *out, &view.report)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", view.rendered)?;
        }
        Ok(0)
    }

    /// `annal approvals`: what waits, then the latest decisions.
    pub fn approvals(&self, out: &mut dyn Write) -> anyhow::Result<u8> {
        let pending: Vec<PendingView> = self.get("/api/v1/approvals")?;
        if pending.is_empty() {
            writeln!(out, "no approvals waiting")?;
        } else {
            let mut rows = vec![[
                "GATE",
                "RUN",
                "WORKFLOW",
                "RISK",
                "COST",
                "APPROVERS",
                "EXPIRES",
                "AGE",
                "FLAGS",
                "YOU DECIDE AS",
                "ACTION",
            ]
            .map(String::from)];
            for p in &pending {
                rows.push([
                    p.gate.clone(),
                    p.run.clone(),
                    p.workflow.clone(),
                    format!("{:?}", p.risk),
                    p.cost.map_or_else(|| "-".into(), |c| c.to_string()),
                    if p.approvers.is_empty() {
                        "anyone".into()
                    } else {
                        p.approvers.join(",")
                    },
                    p.deadline_ms.map_or_else(|| "never".into(), utc),
                    duration_ms(p.age_ms),
                    if p.risk_flags.is_empty() {
                        "-".into()
                    } else {
                        p.risk_flags.join(",")
                    },
                    p.decides_as.clone().unwrap_or_else(|| "(not yours)".into()),
                    p.action.clone(),
                ]);
            }
            write_table(out, &rows)?;
        }
        let past: Vec<PastDecisionView> = self.get("/api/v1/decisions?limit=20")?;
        if !past.is_empty() {
            writeln!(out, "\nrecent decisions")?;
            let mut rows =
                vec![["WHEN", "GATE", "DECISION", "WHO", "ROLE", "WHY"].map(String::from)];
            for d in past {
                rows.push([
                    utc(d.decided_ms),
                    d.gate,
                    d.decision,
                    d.actor.unwrap_or_else(|| "-".into()),
                    d.role.unwrap_or_else(|| "-".into()),
                    d.reason.unwrap_or_else(|| "-".into()),
                ]);
            }
            write_table(out, &rows)?;
        }
        Ok(0)
    }

    /// Refuses `--by` naming someone else than the token's owner.
    fn check_by(&self, by: Option<&str>) -> anyhow::Result<WhoAmI> {
        let me = self.whoami()?;
        if let Some(by) = by {
            if by != me.actor {
                bail!(
                    "--by {by} does not match the token, which is {}'s; nothing was written",
                    me.actor
                );
            }
        }
        Ok(me)
    }

    /// `annal approve|reject GATE`: shows what is decided, then decides it, bound to the
    /// digest of exactly that action.
    pub fn decide(
        &self,
        gate: &str,
        approve: bool,
        by: Option<&str>,
        reason: &str,
        edits: Option<serde_json::Value>,
        out: &mut dyn Write,
    ) -> anyhow::Result<u8> {
        self.check_by(by)?;
        let gate = self.resolve_gate(gate)?;
        let pending: PendingView = self.get(&format!("/api/v1/approvals/{gate}"))?;
        writeln!(
            out,
            "gate {} (run {}): {} [risk {:?}, cost {}, waiting {}]",
            pending.gate,
            pending.run,
            pending.action,
            pending.risk,
            pending.cost.map_or_else(|| "-".into(), |c| c.to_string()),
            duration_ms(pending.age_ms)
        )?;
        let body = DecideBody {
            verdict: if approve { "approve" } else { "reject" }.into(),
            reason: reason.to_string(),
            action_digest: pending.action_digest,
            edits,
        };
        let decided: DecisionView =
            match self.post(&format!("/api/v1/approvals/{gate}/decision"), &body) {
                Ok(decided) => decided,
                // Say what the gate requires, so the reviewer knows whom to ask.
                Err(e) if format!("{e:#}").contains("not_allowed") => {
                    let approvers = if pending.approvers.is_empty() {
                        "anyone".to_string()
                    } else {
                        pending.approvers.join(",")
                    };
                    bail!("{e:#}; the gate needs one of: {approvers}")
                }
                Err(e) => return Err(e),
            };
        writeln!(
            out,
            "{} by {} as {} at {}; the service resumes the run now",
            decided.decision,
            decided.actor,
            decided.role,
            utc(decided.decided_ms)
        )?;
        Ok(0)
    }

    /// A gate id from a full id, or a unique prefix among the waiting gates.
    fn resolve_gate(&self, prefix: &str) -> anyhow::Result<String> {
        if uuid_like(prefix) {
            return Ok(prefix.to_ascii_lowercase());
        }
        let wanted = prefix.to_ascii_lowercase();
        let pending: Vec<PendingView> = self.get("/api/v1/approvals")?;
        let matches: Vec<&PendingView> = pending
            .iter()
            .filter(|p| p.gate.starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.gate.clone()),
            [] => bail!(
                "no waiting approval gate matches '{prefix}' (give the full id of a decided one)"
            ),
            _ => bail!(
                "'{prefix}' matches {} gates; give more digits",
                matches.len()
            ),
        }
    }

    /// `annal operate RUN …`.
    pub fn operate(
        &self,
        run: &str,
        action: &crate::Operation,
        out: &mut dyn Write,
    ) -> anyhow::Result<u8> {
        let (name, value, why) = action.wire()?;
        self.check_by(why.by.as_deref())?;
        let run = self.resolve_run(run)?;
        let body = OperateBody {
            action: name.to_string(),
            value,
            reason: why.reason.clone(),
        };
        let done: OperatedView = self.post(&format!("/api/v1/runs/{run}/operate"), &body)?;
        writeln!(
            out,
            "run {}: {} by {}; the run is {} now",
            done.run, done.action, done.actor, done.status
        )?;
        Ok(0)
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: {} is readable by other users; chmod 600 it",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}
