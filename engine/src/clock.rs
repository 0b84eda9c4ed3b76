//! Time for the runtime. Replay never reads a clock; only the live path stamps events with
//! this clock's readings.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall time and a way to sleep until a wall time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Resolves once `now_ms() >= at_ms`.
    fn sleep_until_ms(&self, at_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Wall time read once at creation, advanced by tokio's monotonic clock.
///
/// Under `#[tokio::test(start_paused = true)]` tokio's clock jumps over sleeps, so days of
/// simulated waiting (approvals, backoffs, timers) pass instantly and deterministically.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock starting at the system's current wall time.
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::starting_at(base_ms)
    }

    /// A clock starting at a chosen wall time (deterministic tests).
    pub fn starting_at(base_ms: u64) -> Self {
        Self {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    fn sleep_until_ms(&self, at_ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let wait_ms = at_ms.saturating_sub(self.now_ms());
        // Sleep to the instant, then round up: elapsed() truncates to whole ms.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        Box::pin(async move {
            tokio::time::sleep_until(deadline).await;
        })
    }
}
