//! Shared helpers for the integration tests.

use std::sync::Arc;

use annal::{Engine, EngineBuilder, Event, EventKind};
use annal_storage::SimStore;

/// An engine builder on a shared in-memory store, with a fixed clock start.
pub fn on(store: &Arc<SimStore>) -> EngineBuilder {
    Engine::builder()
        .store(Arc::clone(store) as Arc<dyn annal_storage::LogStore>)
        .clock(Arc::new(annal::clock::TokioClock::starting_at(
            1_700_000_000_000,
        )))
}

/// Event names of a history, for compact assertions.
pub fn kinds(history: &[Event]) -> Vec<&'static str> {
    history.iter().map(|e| e.kind.name()).collect()
}

/// Names of steps that completed, in log order.
pub fn completed_steps(history: &[Event]) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in history {
        match &e.kind {
            EventKind::StepScheduled { position, name, .. } => {
                names.insert(*position, name.clone());
            }
            EventKind::StepCompleted { position, .. } => out.push(names[position].clone()),
            EventKind::StepRan { name, .. } => out.push(name.clone()),
            _ => {}
        }
    }
    out
}

/// Logs engine tracing to stderr when `RUST_LOG` is set (debugging aid).
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Opens a sled store that an engine of this process just released. Another test of this
/// binary may be spawning a child process (the SIGKILL test), which holds copies of every
/// open file, sled's lock included, between fork and exec; so a `Locked` is retried briefly.
pub fn open_sled(path: &std::path::Path) -> annal_storage::SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match annal_storage::SledStore::open(annal_storage::SledConfig::new(path)) {
            Err(annal_storage::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other.expect("the store opens once released"),
        }
    }
}
