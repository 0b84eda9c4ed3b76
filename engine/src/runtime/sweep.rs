//! The sweep: finds runs whose status says they wait, but whose own history already holds
//! what they wait for, and resumes them (see [`crate::overdue`]).
//!
//! Every event from outside wakes a parked run in the same append that records it, so a
//! run cannot be left waiting for what it already has. The sweep is the defence behind that
//! rule: it runs at open and every [`EngineConfig::sweep_ms`](super::EngineConfig) after, and
//! also finds runs a store written by an older engine left behind, and `Running` runs that no
//! driver holds (a wake-up that failed).

use std::collections::HashSet;
use std::sync::Arc;

use annal_storage::RunId;

use super::inner::{AppendReq, EngineInner};
use crate::error::{Error, Result};
use crate::status::{overdue, Overdue, RunStatus};

/// Due-time entries the sweep reads to tell a due run the timer service will wake from one
/// it cannot.
const DUE_BATCH: usize = 4096;

/// A failed store fails every run alike: it ends the sweep (its caller reports it once);
/// anything else is logged for the run and the sweep goes on.
fn poisoned(error: Error, run: RunId, what: &str) -> Result<()> {
    match error {
        Error::Storage(annal_storage::Error::Poisoned { .. }) => Err(error),
        // Another worker executes it (a shared store): its own sweeps cover it.
        Error::Storage(e) if e.drops_run() => Ok(()),
        error => {
            tracing::error!(%run, %error, "{what}");
            Ok(())
        }
    }
}

impl EngineInner {
    /// Checks every parked and escalated run (the last record of each, so a torn or lost
    /// tail is found now rather than when a decision arrives) and resumes the overdue ones;
    /// with `running`, also wakes `Running` runs that are not in memory.
    pub(crate) async fn sweep(self: &Arc<Self>, running: bool) -> Result<()> {
        if self.store_failed().is_some() {
            // Reported where it happened; no run is woken until the store is reopened.
            return Ok(());
        }
        if running {
            for run in self
                .store
                .runs_with_status(RunStatus::Running.code())
                .await?
            {
                if self.is_resident(run) {
                    continue;
                }
                if let Err(e) = self.wake(run).await {
                    poisoned(e, run, "running run could not be resumed")?;
                }
            }
        }
        let now_ms = self.clock.now_ms();
        // Due entries are the timer service's to wake: a due time counts as overdue here
        // only for a run the index has no due entry for. A full batch says the service is
        // behind, not that entries are missing: the rule then waits for the next sweep.
        let due = self.store.due_timers(now_ms, DUE_BATCH).await?;
        let indexed: Option<HashSet<RunId>> =
            (due.len() < DUE_BATCH).then(|| due.iter().map(|t| t.run).collect());
        for status in [RunStatus::Parked, RunStatus::Escalated] {
            for run in self.store.runs_with_status(status.code()).await? {
                if self.is_resident(run) {
                    continue;
                }
                let now_ms = indexed
                    .as_ref()
                    .filter(|runs| !runs.contains(&run))
                    .map(|_| now_ms);
                match self.check_waiting(run, now_ms).await {
                    Ok(None) => {}
                    Ok(Some((status_seq, why))) => {
                        tracing::warn!(%run, %why, "resuming a run whose history holds what it waits for");
                        if let Err(e) = self.resume_overdue(run, status, status_seq).await {
                            poisoned(e, run, "overdue run could not be resumed")?;
                        }
                    }
                    Err(e) if super::inner::is_unreadable(&e) => {
                        self.block_unreadable(run, &e).await
                    }
                    Err(e) => poisoned(e, run, "run log could not be checked")?,
                }
            }
        }
        Ok(())
    }

    fn is_resident(&self, run: RunId) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&run)
    }

    /// Reads a waiting run's events from the seq at which it took its status (at least its
    /// last record, which must decode: a log that ends before the seq its metadata recorded
    /// lost its tail) and says whether it is overdue, with the seq of its status.
    async fn check_waiting(
        &self,
        run: RunId,
        now_ms: Option<u64>,
    ) -> Result<Option<(u64, Overdue)>> {
        let meta = self.meta(run).await?;
        let Some(status) = RunStatus::from_code(meta.status) else {
            return Ok(None);
        };
        let from = meta.status_seq.min(meta.next_seq.saturating_sub(1));
        let records = self.store.read(run, from, usize::MAX).await?;
        if records.is_empty() && meta.next_seq > 0 {
            return Err(Error::Inconsistent {
                run,
                seq: meta.next_seq - 1,
                reason: format!(
                    "metadata says the log ends at seq {} but that record is missing",
                    meta.next_seq
                ),
            });
        }
        let arrived = records
            .iter()
            .map(|record| {
                crate::codec::decode_event(&record.payload).map_err(|reason| Error::Codec {
                    run,
                    seq: record.seq,
                    reason,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(
            overdue(status, meta.status_seq, &arrived, meta.wake_ms, now_ms)
                .map(|why| (meta.status_seq, why)),
        )
    }

    /// Moves an overdue run to `Running` and drives it, unless it changed since it was
    /// checked (woken meanwhile, or parked again with a new status).
    async fn resume_overdue(
        self: &Arc<Self>,
        run: RunId,
        status: RunStatus,
        status_seq: u64,
    ) -> Result<()> {
        let (slot, mut writer) = self.lock_run(run).await?;
        let unchanged = writer
            .meta
            .as_ref()
            .is_some_and(|m| m.status == status.code() && m.status_seq == status_seq);
        if !unchanged || slot.state().driver_running {
            return Ok(());
        }
        self.append_locked(
            &slot,
            &mut writer,
            AppendReq::default().status(RunStatus::Running, ""),
        )
        .await?;
        self.ensure_driver(&slot, &mut writer).await
    }
}
