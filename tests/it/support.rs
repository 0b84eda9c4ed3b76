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

/// Log lines the engine writes while a test runs, for tests of what it reports. Install
/// with `log.subscriber().set_default()` in a current-thread test: the engine's tasks are
/// polled on the test's thread, where the default subscriber applies.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

/// Keeps tracing's per-call-site interest honest while tests capture logs concurrently.
///
/// While exactly one subscriber is registered, tracing decides a call site's interest the
/// first time it fires from the *firing thread's* default subscriber alone. A test on another
/// thread with no subscriber could then cache "never" for an event this test's subscriber
/// wants, and the event would vanish from the capture. A second subscriber that lives for the
/// whole binary makes tracing ask every registered subscriber instead.
pub fn share_callsite_interest() {
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

impl CapturedLog {
    pub fn subscriber(&self) -> impl tracing_subscriber::util::SubscriberInitExt {
        share_callsite_interest();
        tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .finish()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Opens a sled store that an engine of this process just released. A child process holds
/// copies of every open file, sled's lock included, between fork and exec: the tests that
/// spawn children have their own binaries (`tests/sigkill`, `tests/full_disk`), and a
/// `Locked` is still retried briefly in case a test here ever spawns one.
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

/// A [`SimStore`] whose durability can be held back: while held, `wait_durable` waits, so a
/// test can act between an append and its commit (what a slow fsync does to a real store).
pub struct HeldStore {
    pub inner: SimStore,
    held: tokio::sync::watch::Sender<bool>,
}

impl HeldStore {
    pub fn new() -> Self {
        Self {
            inner: SimStore::new(),
            held: tokio::sync::watch::Sender::new(false),
        }
    }

    pub fn hold(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Checks that `task` (an answer that rests on state appended while durability is held)
    /// is still waiting, then releases durability and returns its answer.
    pub async fn answer_once_durable<T: std::fmt::Debug + Send + 'static>(
        &self,
        task: tokio::task::JoinHandle<T>,
        what: &str,
    ) -> T {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !task.is_finished(),
            "answered for {what} not yet durable: {:?}",
            task.await
        );
        self.hold(false);
        task.await.unwrap()
    }
}

#[async_trait::async_trait]
impl annal_storage::LogStore for HeldStore {
    async fn append(
        &self,
        batch: annal_storage::AppendBatch,
    ) -> annal_storage::Result<annal_storage::Position> {
        self.inner.append(batch).await
    }
    async fn wait_durable(&self, position: annal_storage::Position) -> annal_storage::Result<()> {
        let mut held = self.held.subscribe();
        held.wait_for(|held| !held)
            .await
            .map_err(|_| annal_storage::Error::Closed)?;
        self.inner.wait_durable(position).await
    }
    async fn wait_applied_durable(&self) -> annal_storage::Result<()> {
        let mut held = self.held.subscribe();
        held.wait_for(|held| !held)
            .await
            .map_err(|_| annal_storage::Error::Closed)?;
        self.inner.wait_applied_durable().await
    }
    async fn read(
        &self,
        run: annal::RunId,
        from_seq: u64,
        max: usize,
    ) -> annal_storage::Result<Vec<annal_storage::Record>> {
        self.inner.read(run, from_seq, max).await
    }
    async fn meta(
        &self,
        run: annal::RunId,
    ) -> annal_storage::Result<Option<annal_storage::RunMeta>> {
        self.inner.meta(run).await
    }
    async fn runs(&self) -> annal_storage::Result<Vec<(annal::RunId, annal_storage::RunMeta)>> {
        self.inner.runs().await
    }
    async fn runs_with_status(&self, status: u8) -> annal_storage::Result<Vec<annal::RunId>> {
        self.inner.runs_with_status(status).await
    }
    async fn due_timers(
        &self,
        up_to_ms: u64,
        max: usize,
    ) -> annal_storage::Result<Vec<annal_storage::TimerEntry>> {
        self.inner.due_timers(up_to_ms, max).await
    }
    async fn next_timer(&self) -> annal_storage::Result<Option<annal_storage::TimerEntry>> {
        self.inner.next_timer().await
    }
    async fn dedupe(&self, key: &[u8]) -> annal_storage::Result<Option<annal::RunId>> {
        self.inner.dedupe(key).await
    }
    async fn gate(
        &self,
        gate: annal_storage::GateId,
    ) -> annal_storage::Result<Option<(annal::RunId, u32)>> {
        self.inner.gate(gate).await
    }
    async fn gates(
        &self,
    ) -> annal_storage::Result<Vec<(annal_storage::GateId, annal::RunId, u32)>> {
        self.inner.gates().await
    }
    async fn checkpoint(&self, run: annal::RunId) -> annal_storage::Result<Option<Vec<u8>>> {
        self.inner.checkpoint(run).await
    }
    async fn purge(&self, run: annal::RunId) -> annal_storage::Result<()> {
        self.inner.purge(run).await
    }
    async fn put_tree_head(&self, body: Vec<u8>) -> annal_storage::Result<u64> {
        self.inner.put_tree_head(body).await
    }
    async fn tree_heads(
        &self,
        from: u64,
        max: usize,
    ) -> annal_storage::Result<Vec<(u64, Vec<u8>)>> {
        self.inner.tree_heads(from, max).await
    }
    async fn latest_tree_head(&self) -> annal_storage::Result<Option<(u64, Vec<u8>)>> {
        self.inner.latest_tree_head().await
    }
    fn durability(&self) -> annal_storage::Durability {
        self.inner.durability()
    }
}
