//! Shared helpers for the annal examples: narrative headings, history printing, polling with
//! a deadline, and a few lookups into a recorded history.
//!
//! The helpers only read what the engine recorded; every example's workflow logic stays in its
//! own file so it can be read top to bottom.

use std::future::Future;
use std::time::{Duration, Instant};

use annal::audit::{RunRecord, StepRecord};
use annal::{Engine, Event, EventKind, RunId};

/// Prints a heading of an example's narrative.
pub fn section(title: &str) {
    println!("\n== {title}");
}

/// Logs engine tracing to stderr when `RUST_LOG` is set (off by default, so the narrative
/// stays readable).
pub fn trace_from_env() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Reads a run's history, prints it as a timeline (`annal::audit::timeline`) and returns it.
pub async fn print_history(engine: &Engine, run: RunId) -> Result<Vec<Event>, annal::Error> {
    let history = engine.history(run).await?;
    println!("history of run {run}:");
    print!("{}", annal::audit::timeline(&history));
    Ok(history)
}

/// The auditor's summary of a run, from its history alone.
pub fn record(run: RunId, history: &[Event]) -> RunRecord {
    RunRecord::from_history(run, None, history)
}

/// The step named `name` in a run record (the first one, if the name repeats).
///
/// # Panics
/// When the run has no such step: the example no longer does what it says.
pub fn step<'a>(record: &'a RunRecord, name: &str) -> &'a StepRecord {
    record
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("run {} has no step '{name}'", record.run))
}

/// Event kind names of a history, for compact assertions.
pub fn kinds(history: &[Event]) -> Vec<&'static str> {
    history.iter().map(|e| e.kind.name()).collect()
}

/// How many events of kind `name` (e.g. `"FallbackUsed"`) a history holds.
pub fn count(history: &[Event], name: &str) -> usize {
    history.iter().filter(|e| e.kind.name() == name).count()
}

/// The `Escalated` event's context, if the run escalated.
pub fn escalation(history: &[Event]) -> Option<annal::event::EscalationContext> {
    history.iter().rev().find_map(|e| match &e.kind {
        EventKind::Escalated { context, .. } => Some(context.clone()),
        _ => None,
    })
}

/// Polls `probe` every 5 ms until it returns `Some`, and returns that value.
///
/// # Panics
/// When `timeout` passes first: the example is stuck, which CI must see.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens the sled store directly, to read a history without resuming its runs. The store
/// of an engine is released once `Engine::shutdown` returned and the last handle is dropped.
pub fn open_store(
    path: &std::path::Path,
) -> Result<annal_storage::SledStore, annal_storage::Error> {
    annal_storage::SledStore::open(annal_storage::SledConfig::new(path))
}

/// Money in cents as dollars, for the narrative.
pub fn usd(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}
