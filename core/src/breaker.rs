//! Circuit breakers per tool, shared by all runs of an engine.
//!
//! A breaker is live state and is consulted only on the live path. Its rejections are
//! recorded as failed attempts of class `BreakerOpen` with the instant to retry, so replay
//! never asks a breaker anything.
//!
//! | state     | on admit                          | on result                               |
//! |-----------|-----------------------------------|-----------------------------------------|
//! | closed    | allowed                           | failure: count; at threshold -> open    |
//! | open      | rejected until `cool_down` ends, then -> half-open | —                       |
//! | half-open | `probes` calls allowed, rest rejected | success -> closed; failure -> open  |

use serde::{Deserialize, Serialize};

/// Breaker thresholds for one tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting a probe through.
    pub cool_down_ms: u64,
    /// Calls allowed at once while half-open.
    #[serde(default = "one")]
    pub probes: u32,
}

fn one() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down_ms: 30_000,
            probes: 1,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until `until_ms`.
    Open {
        /// End of the cool-down.
        until_ms: u64,
    },
    /// A few probe calls decide whether to close again.
    HalfOpen {
        /// Probes running.
        in_flight: u32,
    },
}

/// The answer to "may I call the tool now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as a half-open probe.
    Probe,
    /// Refused; try again at this instant.
    Rejected {
        /// When the breaker lets a probe through.
        retry_at_ms: u64,
    },
}

/// One tool's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    opened: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
            opened: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many times it opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Asks to make a call at `now_ms`.
    pub fn admit(&mut self, now_ms: u64) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until_ms } if now_ms < until_ms => Admission::Rejected {
                retry_at_ms: until_ms,
            },
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen { in_flight: 1 };
                Admission::Probe
            }
            BreakerState::HalfOpen { in_flight } if in_flight < self.config.probes => {
                self.state = BreakerState::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Admission::Probe
            }
            BreakerState::HalfOpen { .. } => Admission::Rejected {
                retry_at_ms: now_ms.saturating_add(self.config.cool_down_ms),
            },
        }
    }

    /// Records a call's result. `counts` is false for failures that say nothing about the
    /// tool's health (bad input): they neither open nor close the breaker.
    pub fn record(&mut self, success: bool, counts: bool, now_ms: u64) {
        let open = |b: &mut Self| {
            b.state = BreakerState::Open {
                until_ms: now_ms.saturating_add(b.config.cool_down_ms),
            };
            b.opened += 1;
        };
        match (self.state, success) {
            (BreakerState::HalfOpen { .. }, true) | (BreakerState::Closed { .. }, true) => {
                self.state = BreakerState::Closed { failures: 0 };
            }
            (_, false) if !counts => {
                if let BreakerState::HalfOpen { in_flight } = self.state {
                    self.state = BreakerState::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                    };
                }
            }
            (BreakerState::HalfOpen { .. }, false) => open(self),
            (BreakerState::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    open(self);
                } else {
                    self.state = BreakerState::Closed { failures };
                }
            }
            // A call admitted before the breaker opened reports late: the open state stands.
            (BreakerState::Open { .. }, _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_half_opens_after_cool_down_and_closes_on_success() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 2,
            cool_down_ms: 1_000,
            probes: 1,
        });
        assert_eq!(b.admit(0), Admission::Allowed);
        b.record(false, true, 0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
        b.record(false, true, 10);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 1_010 });
        assert_eq!(b.admit(500), Admission::Rejected { retry_at_ms: 1_010 });
        assert_eq!(b.admit(1_010), Admission::Probe);
        assert!(
            matches!(b.admit(1_011), Admission::Rejected { .. }),
            "one probe at a time"
        );
        b.record(true, true, 1_020);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_probe_reopens_and_terminal_errors_do_not_count() {
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 1,
            cool_down_ms: 100,
            probes: 1,
        });
        b.record(false, false, 0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        b.record(false, true, 0);
        assert_eq!(b.admit(100), Admission::Probe);
        b.record(false, true, 150);
        assert_eq!(b.state(), BreakerState::Open { until_ms: 250 });
        assert_eq!(b.times_opened(), 2);
    }
}
