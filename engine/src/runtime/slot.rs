//! A run in memory: its history, its replay fold, and the single writer of its log.
//!
//! Every append to a run goes through its slot's writer lock, whoever makes it (the run's own
//! workflow code, a signal, a cancel request), so the engine never races itself; the store's
//! expected-seq check stands behind that. A slot is evicted when its run parks or ends;
//! parked runs cost no memory beyond the index entries that will wake them.

use std::sync::{Arc, Mutex, MutexGuard};

use annal_storage::{Position, RunId, RunMeta};
use tokio::sync::Notify;

use crate::replay::{Mismatch, ReplayState};

/// Why a run's driver must stop running workflow code.
#[derive(Debug, Clone)]
pub(crate) enum Halt {
    /// The code drifted from history.
    Drift(Mismatch),
    /// The run cannot run with this code (unregistered workflow, undecodable input).
    Blocked(String),
    /// Every pending call is a long wait: drop the run from memory.
    Park,
    /// Someone terminated the run.
    Terminated,
    /// The run needs an operator.
    Escalate(String),
    /// The store failed; the run stays as the log says and resumes on the next open.
    Store(String),
    /// This process may no longer write the run (its lease was taken over, or a commit's
    /// outcome is unknown): dropped at once, writing nothing, and resumed from what the
    /// store holds, by whichever worker takes it.
    Lost(String),
    /// Replay-only mode reached the end of the history.
    ReplayEnd,
}

/// The writer half: only touched with the async lock held.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) loaded: bool,
    pub(crate) evicted: bool,
    pub(crate) meta: Option<RunMeta>,
    /// The last append of this run, for durability barriers.
    pub(crate) last_position: Option<Position>,
}

/// What the run's code and waiters look at.
#[derive(Default)]
pub(crate) struct RunState {
    /// The fold of the run's history. The events themselves are not kept: the fold holds
    /// everything replay and the engine read back.
    pub(crate) replay: ReplayState,
    pub(crate) driver_running: bool,
    pub(crate) next_position: u32,
    pub(crate) visited: Visited,
    pub(crate) halt: Option<Halt>,
    pub(crate) active_steps: u32,
    pub(crate) history_warned: bool,
    /// History length when parking was requested, to notice events that arrived meanwhile.
    pub(crate) park_requested_at_len: u64,
    /// Events the run's stored checkpoint covers (0: none).
    pub(crate) checkpoint_seq: u64,
}

impl RunState {
    /// Fresh per-drive state: positions restart at 0 on every replay.
    pub(crate) fn reset_drive(&mut self) {
        self.next_position = 0;
        self.visited.clear();
        self.halt = None;
        self.active_steps = 0;
    }

    /// Whether events arrived since parking was requested (a signal, a cancel request).
    pub(crate) fn halt_generation_changed(&self) -> bool {
        self.replay.next_seq() != self.park_requested_at_len
    }
}

/// The call positions the code has reached in this drive: a bitset, since positions are
/// handed out densely from 0 and replay marks one per recorded call.
#[derive(Debug, Default)]
pub(crate) struct Visited(Vec<u64>);

impl Visited {
    pub(crate) fn insert(&mut self, position: u32) {
        let (word, bit) = (position as usize / 64, position % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    pub(crate) fn contains(&self, position: u32) -> bool {
        self.0
            .get(position as usize / 64)
            .is_some_and(|w| w & (1 << (position % 64)) != 0)
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// One run held in memory.
pub(crate) struct RunSlot {
    pub(crate) run: RunId,
    pub(crate) writer: Arc<tokio::sync::Mutex<Writer>>,
    pub(crate) state: Mutex<RunState>,
    /// Woken on every new event and on halts, so waiters re-check their condition.
    pub(crate) changed: Notify,
    /// Woken when a halt is set; stores a permit so the driver never misses one.
    pub(crate) halted: Notify,
}

impl RunSlot {
    pub(crate) fn new(run: RunId) -> Self {
        Self {
            run,
            writer: Arc::new(tokio::sync::Mutex::new(Writer::default())),
            state: Mutex::new(RunState::default()),
            changed: Notify::new(),
            halted: Notify::new(),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, RunState> {
        // State updates are single assignments; a panic elsewhere cannot leave it half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the driver to stop; the first halt wins.
    pub(crate) fn halt(&self, halt: Halt) {
        let mut state = self.state();
        if state.halt.is_none() {
            state.halt = Some(halt);
            drop(state);
            self.halted.notify_one();
            self.changed.notify_waiters();
        }
    }

    /// Resolves with the halt once one is set.
    pub(crate) async fn wait_halt(&self) -> Halt {
        loop {
            if let Some(h) = self.state().halt.clone() {
                return h;
            }
            self.halted.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Visited;

    #[test]
    fn visited_positions_are_remembered_exactly() {
        let mut visited = Visited::default();
        for p in [0, 63, 64, 1_000] {
            visited.insert(p);
        }
        for p in [0, 63, 64, 1_000] {
            assert!(visited.contains(p), "{p}");
        }
        for p in [1, 62, 65, 999, 1_001, 5_000, u32::MAX] {
            assert!(!visited.contains(p), "{p}");
        }
        visited.clear();
        assert!(!visited.contains(0));
    }
}
