//! The timer service: wakes parked runs whose due time (timer, backoff, deadline) has come,
//! and runs the sweep (`sweep.rs`) every `EngineConfig::sweep_ms`.
//!
//! Runs in memory wait on their own timers; this service only rehydrates runs that are not
//! in memory. It sleeps until the next due entry, or until told that one was registered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::inner::EngineInner;

const BATCH: usize = 1024;

/// Longest the timer service sleeps on a store several workers share.
const SHARED_POLL_MS: u64 = 1_000;

impl EngineInner {
    pub(crate) async fn timer_service(self: Arc<Self>) {
        // The open's recovery swept just now.
        let mut sweep_at_ms = self.clock.now_ms().saturating_add(self.config.sweep_ms);
        // Scan the due-time index at once, then when the next entry is due, a poll comes, or
        // a new entry was registered; a sweep alone does not scan it.
        let mut scan_at_ms = 0;
        loop {
            let now_ms = self.clock.now_ms();
            if now_ms >= sweep_at_ms {
                sweep_at_ms = now_ms.saturating_add(self.config.sweep_ms);
                if let Err(e) = self.sweep(true).await {
                    tracing::error!(error = %e, "the sweep of waiting runs failed");
                }
            }
            if now_ms >= scan_at_ms {
                let next_ms = match self.wake_due(now_ms).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "timer service could not wake due runs");
                        None
                    }
                };
                // On a shared store a due entry can become this worker's to wake without
                // any notice here (the worker that held its run died): look often.
                let poll = if self.store.shared() {
                    self.config.timer_poll_ms.min(SHARED_POLL_MS)
                } else {
                    self.config.timer_poll_ms
                };
                let poll_ms = now_ms.saturating_add(poll);
                scan_at_ms = next_ms.map_or(poll_ms, |n| n.min(poll_ms));
            }
            let changed = self.timers_changed.notified();
            tokio::select! {
                () = self.clock.sleep_until_ms(scan_at_ms.min(sweep_at_ms)) => {}
                () = changed => scan_at_ms = 0,
            }
        }
    }

    /// Wakes every run with a due entry that is not in memory; returns the next future due
    /// time.
    async fn wake_due(self: &Arc<Self>, now_ms: u64) -> crate::Result<Option<u64>> {
        let due = self.store.due_timers(now_ms, BATCH).await?;
        // Raised as soon as an entry is left due (before the runs woken here can settle), so
        // that every settling run wakes the service again; see `EngineInner::timers_left_due`.
        let left_due = |left: bool| {
            if left {
                self.timers_left_due.store(true, Ordering::Release);
            }
            left
        };
        let mut left = left_due(due.len() >= BATCH);
        for entry in &due {
            if self.is_active(entry.run) {
                left = left || left_due(true);
                continue;
            }
            match self.wake(entry.run).await {
                Ok(_) => {}
                // A failed store fails every wake alike: said once per poll by the caller,
                // not once for each of up to a batch of runs.
                Err(e @ crate::Error::Storage(annal_storage::Error::Poisoned { .. })) => {
                    left_due(true);
                    return Err(e);
                }
                // Taken by another worker meanwhile (a shared store).
                Err(e) if self.loses_run(&e) => {}
                Err(e) => {
                    tracing::warn!(run = %entry.run, error = %e, "due run could not be woken")
                }
            }
        }
        if !left {
            self.timers_left_due.store(false, Ordering::Release);
        }
        let ahead = self.store.due_timers(u64::MAX, due.len() + 1).await?;
        Ok(ahead
            .into_iter()
            .map(|t| t.fire_at_ms)
            .find(|&t| t > now_ms))
    }
}
