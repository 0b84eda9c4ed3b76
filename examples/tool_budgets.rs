//! Per-tool retry budgets: a flaky search tool degrades on its own budget and does not starve
//! the CRM write that comes after it.
//!
//! The scenario comes from a support automation in production: after a provider migration
//! the knowledge-base `search_api` failed on every call. Under a single run-level retry cap,
//! search burned most of the run's budget early, the CRM update downstream had no room left
//! for its own recovery, and every run still "succeeded" from the orchestrator's point of
//! view. Nobody could say which tool had eaten the retries without reading logs.
//!
//! Here the reliability policy is loaded from a file, `examples/policies/support.toml`: each
//! tool has its own retry budget across the run, timeout, backoff and on-exhaust rule (search
//! degrades to an empty result, the CRM write escalates to a human), and run ceilings stay as
//! the final cap. Three tickets are handled; search spends its own three retries per run and
//! then degrades, the CRM write still gets the retry it needs, and the per-tool report shows
//! which tool consumed the retries.
//!
//! Then an agent loop (`while !done`, seed 002's failure mode) fetches pages with a tool whose
//! on-exhaust rule is `skip`: 20 steps against the policy's 12-iteration ceiling. The ceiling
//! is a cap, not a skip: the step that would make the 13th attempt escalates the run, with
//! what was spent and the tool that spent it, and an operator ends it.
//!
//! ```text
//! cargo run --example tool_budgets
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use annal::audit::{Report, StepEnd};
use annal::{Ctx, Engine, OnExhaust, Policy, RunStatus, StepClass, StepFailure, WorkflowError};
use annal_examples::{print_history, record, section, step};
use serde::{Deserialize, Serialize};

const POLICY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/support.toml");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ticket {
    id: String,
    customer: String,
    text: String,
}

/// What a search returns; the policy's `degrade_to` produces `{ results: [], degraded: true }`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Hits {
    results: Vec<String>,
    #[serde(default)]
    degraded: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extracted {
    intent: String,
    order: Option<String>,
    kb_articles: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Resolution {
    ticket: String,
    crm_record: String,
    intent: String,
    kb_degraded: bool,
}

/// The knowledge-base search after its provider migration: every call fails, some by hanging
/// past the timeout, the others with a gateway error.
#[derive(Default)]
struct SearchApi {
    calls: AtomicU32,
}

impl SearchApi {
    async fn search(&self, query: &str) -> Result<Hits, StepFailure> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n % 3 == 0 {
            // Hangs; the policy's `timeout_ms` cuts the attempt off.
            std::future::pending::<()>().await;
        }
        Err(StepFailure::transient(format!(
            "502 from the new search provider (query {query:?})"
        )))
    }
}

/// The CRM: deduplicates writes by idempotency key; the first call for each key fails before
/// anything is written (a lock held by a nightly sync job).
#[derive(Default)]
struct Crm {
    calls: AtomicU32,
    records: Mutex<BTreeMap<String, String>>,
    seen: Mutex<BTreeMap<String, u32>>,
}

impl Crm {
    fn upsert(
        &self,
        idempotency_key: &str,
        ticket: &Ticket,
        intent: &str,
    ) -> Result<String, StepFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.seen.lock().unwrap();
        let tries = seen.entry(idempotency_key.to_string()).or_default();
        *tries += 1;
        if *tries == 1 {
            return Err(StepFailure::transient(
                "503 record locked by the nightly sync",
            ));
        }
        let mut records = self.records.lock().unwrap();
        let next = records.len() + 1;
        let id = records
            .entry(idempotency_key.to_string())
            .or_insert_with(|| format!("case-{next:03} ({}, {intent})", ticket.customer));
        Ok(id.clone())
    }
}

#[derive(Default)]
struct Tools {
    search: SearchApi,
    crm: Crm,
    extractions: AtomicU32,
}

/// One support ticket: two searches, an extraction, the CRM update. Every step names its
/// tool, so the tool's policy (budget, timeout, backoff, on-exhaust) applies.
async fn handle_ticket(
    ctx: Ctx,
    ticket: Ticket,
    tools: Arc<Tools>,
) -> Result<Resolution, WorkflowError> {
    let mut kb_articles = 0;
    let mut kb_degraded = false;
    for (name, query) in [
        ("search_kb", "refund policy"),
        ("search_similar_tickets", ticket.text.as_str()),
    ] {
        let hits: Hits = ctx
            .step(name)
            .tool("search_api")
            .class(StepClass::Read)
            .run(|_| {
                let tools = Arc::clone(&tools);
                let query = query.to_string();
                async move { tools.search.search(&query).await }
            })
            .await?;
        kb_articles += hits.results.len();
        kb_degraded |= hits.degraded;
    }

    // Works on degraded input: without knowledge-base hits it extracts from the ticket alone.
    let extracted: Extracted = ctx
        .step("extract")
        .tool("extract")
        .class(StepClass::Draft)
        .run(|_| {
            let tools = Arc::clone(&tools);
            let text = ticket.text.clone();
            async move {
                tools.extractions.fetch_add(1, Ordering::SeqCst);
                let order = text
                    .split_whitespace()
                    .find(|w| w.starts_with("A-"))
                    .map(String::from);
                let intent = if text.contains("refund") {
                    "refund_request"
                } else {
                    "question"
                };
                Ok(Extracted {
                    intent: intent.into(),
                    order,
                    kb_articles,
                })
            }
        })
        .await?;

    let crm_record: String = ctx
        .step("crm_write")
        .tool("crm_write")
        .class(StepClass::Write)
        .run(|attempt| {
            let tools = Arc::clone(&tools);
            let (ticket, intent) = (ticket.clone(), extracted.intent.clone());
            async move { tools.crm.upsert(&attempt.idempotency_key, &ticket, &intent) }
        })
        .await?;

    Ok(Resolution {
        ticket: ticket.id,
        crm_record,
        intent: extracted.intent,
        kb_degraded,
    })
}

/// An agent that keeps fetching until it has `pages` pages: each fetch is one step of the
/// `web_fetch` tool, whose policy skips a fetch that keeps failing. Left alone it would write
/// events for as long as it is not done.
async fn research_loop(
    ctx: Ctx,
    pages: u32,
    fetches: Arc<AtomicU32>,
) -> Result<u32, WorkflowError> {
    let mut got = 0;
    let mut i = 0;
    while got < pages {
        let page: Option<String> = ctx
            .step(&format!("fetch_{i}"))
            .tool("web_fetch")
            .class(StepClass::Read)
            .run(|_| {
                let fetches = Arc::clone(&fetches);
                async move {
                    let n = fetches.fetch_add(1, Ordering::SeqCst);
                    Ok(Some(format!("page {n}")))
                }
            })
            .await?;
        got += u32::from(page.is_some());
        i += 1;
    }
    Ok(got)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    annal_examples::trace_from_env();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;

    section("1. The reliability policy is loaded from a file");
    let policy = Policy::load(POLICY_FILE)?;
    println!(
        "{POLICY_FILE} (version {}):",
        policy.version.as_deref().unwrap_or("-")
    );
    println!(
        "  run ceilings: max_iterations {:?}, max_tool_calls {:?}, max_duration_seconds {:?}",
        policy.run.max_iterations, policy.run.max_tool_calls, policy.run.max_duration_seconds
    );
    for (tool, rule) in &policy.tools {
        println!(
            "  {tool:<11} max_retries {:?}, timeout_ms {:?}, backoff {:?}, on_exhaust {:?}",
            rule.max_retries, rule.timeout_ms, rule.backoff, rule.on_exhaust
        );
    }
    let search_budget = policy.tools["search_api"].max_retries.unwrap_or_default();

    let tools = Arc::new(Tools::default());
    let t = Arc::clone(&tools);
    let fetches = Arc::new(AtomicU32::new(0));
    let f = Arc::clone(&fetches);
    let engine = Engine::builder()
        .path(dir.path())
        .policy(policy)
        .register("support_ticket", 1, move |ctx, ticket| {
            handle_ticket(ctx, ticket, Arc::clone(&t))
        })
        .register("research_loop", 1, move |ctx, pages| {
            research_loop(ctx, pages, Arc::clone(&f))
        })
        .open()
        .await?;

    section("2. Three tickets arrive while the search provider is broken");
    let tickets = [
        (
            "T-5530",
            "ada",
            "my order A-1041 arrived broken, I want a refund",
        ),
        (
            "T-5531",
            "grace",
            "where is order A-1042? I'd like a refund if it is lost",
        ),
        ("T-5532", "linus", "how do I change my shipping address?"),
    ];
    let mut handles = Vec::new();
    for (id, customer, text) in tickets {
        let ticket = Ticket {
            id: id.into(),
            customer: customer.into(),
            text: text.into(),
        };
        handles.push(
            engine
                .start::<_, Resolution>("support_ticket", &ticket)
                .await?,
        );
    }
    let mut records = Vec::new();
    for handle in &handles {
        let resolution = handle.result().await?;
        let run = handle.run_id();
        assert_eq!(engine.status(run).await?.status, RunStatus::Completed);
        let history = engine.history(run).await?;
        let rec = record(run, &history);
        let (search, similar, crm) = (
            step(&rec, "search_kb"),
            step(&rec, "search_similar_tickets"),
            step(&rec, "crm_write"),
        );
        println!(
            "  {}: search_kb {} attempts, search_similar_tickets {} attempt, CRM write {} attempts -> {}{}",
            resolution.ticket,
            search.attempts,
            similar.attempts,
            crm.attempts,
            resolution.crm_record,
            if resolution.kb_degraded { " (answered without knowledge-base hits)" } else { "" }
        );

        // Search spent exactly its own budget (3 retries) on the first search, then gave up
        // degraded; the second search got one attempt: the tool's budget is run-wide.
        assert_eq!(
            search.attempts,
            search_budget + 1,
            "search_kb: first try plus the tool's retries"
        );
        assert!(matches!(
            &search.outcome,
            StepEnd::Exhausted {
                action: OnExhaust::Degrade(_),
                ..
            }
        ));
        assert_eq!(
            similar.attempts, 1,
            "the search budget was already spent in this run"
        );
        match &similar.outcome {
            StepEnd::Exhausted {
                budget,
                action: OnExhaust::Degrade(_),
                ..
            } => {
                assert_eq!(budget, "tool search_api max_retries (3) across the run");
            }
            other => {
                panic!("search_similar_tickets should have degraded on the tool budget: {other:?}")
            }
        }
        // The CRM write was not starved: it failed once and got its own retry.
        assert!(
            matches!(crm.outcome, StepEnd::Completed { attempt: 2, .. }),
            "{:?}",
            crm.outcome
        );
        assert!(resolution.kb_degraded);
        // No run ceiling was needed: per-tool budgets stopped search first.
        let hit_ceiling = rec.steps.iter().any(|s| match &s.outcome {
            StepEnd::Exhausted { budget, .. } => budget.starts_with("run "),
            _ => false,
        });
        assert!(!hit_ceiling, "no run ceiling was needed");
        assert_eq!(rec.policy_version.as_deref(), Some("support-2026-11"));
        records.push(rec);
    }
    let crm_records = tools.crm.records.lock().unwrap().len();
    assert_eq!(
        crm_records, 3,
        "one CRM record per ticket, however many attempts"
    );
    assert_eq!(tools.crm.calls.load(Ordering::SeqCst), 6);
    assert_eq!(
        tools.search.calls.load(Ordering::SeqCst),
        15,
        "5 search calls per ticket, not more"
    );
    assert_eq!(tools.extractions.load(Ordering::SeqCst), 3);
    println!(
        "  CRM: {crm_records} records from {} calls (every write retried once, same key)",
        tools.crm.calls.load(Ordering::SeqCst)
    );

    section("3. Per-tool report: which tool consumed the retries");
    let report = Report::from_records(&records);
    print!("{}", report.render());
    let total_retries: u64 = report.tools.values().map(|s| s.retries).sum();
    println!("\nretry share per tool (retries / attempts, and share of all retries):");
    for (tool, stats) in &report.tools {
        let of_all = if total_retries == 0 {
            0.0
        } else {
            stats.retries as f64 * 100.0 / total_retries as f64
        };
        println!(
            "  {tool:<11} {:>2} retries / {:>2} attempts = {:>5.1}%   {of_all:>5.1}% of all retries",
            stats.retries,
            stats.attempts,
            stats.retry_share.unwrap_or_default() * 100.0
        );
    }
    let search = &report.tools["search_api"];
    let crm = &report.tools["crm_write"];
    assert_eq!((search.retries, search.attempts), (9, 15));
    assert_eq!((crm.retries, crm.attempts, crm.completed), (3, 6, 3));
    assert_eq!(report.tools["extract"].retries, 0);
    assert_eq!(
        search.exhausted.values().sum::<u64>(),
        6,
        "both searches of every ticket degraded"
    );
    assert_eq!(report.exhaustions.len(), 6);
    assert_eq!(
        report.escalated_runs, 0,
        "the CRM write never needed a human"
    );
    println!(
        "\nsearch_api exhausted its budget in every run and degraded; crm_write succeeded on its retry in every run."
    );

    section("4. The first ticket's history");
    print_history(&engine, handles[0].run_id()).await?;

    section("5. An agent loop meets the run ceiling: 20 steps against max_iterations = 12");
    let agent = engine.start::<_, u32>("research_loop", &20u32).await?;
    let run = agent.run_id();
    match agent.result().await {
        Err(annal::Error::Escalated { reason, .. }) => println!("  escalated: {reason}"),
        other => panic!("the ceiling must stop the loop: {other:?}"),
    }
    assert_eq!(engine.status(run).await?.status, RunStatus::Escalated);
    let rec = record(run, &engine.history(run).await?);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        12,
        "12 fetches ran, no more"
    );
    assert_eq!(rec.steps.len(), 13, "the 13th step met the ceiling");
    let stopped = &rec.steps[12];
    assert_eq!(stopped.name, "fetch_12");
    assert!(matches!(
        &stopped.outcome,
        StepEnd::Exhausted { budget, action: OnExhaust::Escalate, .. } if budget == "run max_iterations (12)"
    ));
    let ceiling = &rec.ceilings[0];
    println!(
        "  step [{}] {}: {}: {} -> {}",
        ceiling.step.position, ceiling.step.name, ceiling.ceiling, ceiling.spent, ceiling.action
    );
    assert_eq!(
        ceiling.top_tool,
        Some(("web_fetch".to_string(), 12)),
        "the tool that spent the budget is named"
    );
    let escalation = &rec.escalations[0];
    println!(
        "  operator is told: {}; attempts per tool {:?}",
        escalation.context.suggested_next, escalation.context.attempts_per_tool
    );
    println!(
        "  (from the CLI: annal operate {run} abort --by olga --reason \"agent loop without end\")"
    );
    engine
        .operate(
            run,
            "olga",
            annal::OperatorActionKind::Abort,
            "agent loop without end",
        )
        .await?;
    assert_eq!(engine.status(run).await?.status, RunStatus::Failed);
    println!(
        "  run {run} aborted by olga: {}",
        engine.status(run).await?.status
    );

    drop(handles);
    engine.shutdown().await;
    println!("\ndone in {:.2?}", started.elapsed());
    Ok(())
}
