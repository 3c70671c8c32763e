//! Where the engine reads the time: request deadlines, and the step and
//! draft costs speculation sizes its proposals by. Serving uses the real
//! monotonic clock; tests use a simulated one whose time moves only when
//! the engine reports work (by a fixed cost model) or the test advances
//! it, so that decisions made from time come out the same on an idle
//! machine and a busy one.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the engine has just computed, for a simulated clock to charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Work {
    /// The target model, or the draft model proposing tokens.
    pub draft: bool,
    /// Forward passes run (a draft proposing k tokens runs k).
    pub passes: usize,
    /// Positions computed over all of them.
    pub positions: usize,
}

/// A source of time for the engine.
pub trait Clock: Send + Sync + 'static {
    /// Time since the clock's start (monotonic).
    fn now(&self) -> Duration;

    /// Told after the engine ran `work`. The real clock ignores it; a
    /// simulated one advances by the work's modelled cost.
    fn ran(&self, work: Work) {
        let _ = work;
    }
}

/// The real monotonic clock.
pub struct RealClock(Instant);

impl RealClock {
    pub fn new() -> RealClock {
        RealClock(Instant::now())
    }
}

impl Default for RealClock {
    fn default() -> RealClock {
        RealClock::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock for tests: it stands still until the engine reports work (a
/// forward pass costs `per_pass` plus `per_position` for each position it
/// computes, for the target and the draft alike) or the test calls
/// [`SimClock::advance`].
pub struct SimClock {
    pub per_pass: Duration,
    pub per_position: Duration,
    now: Mutex<Duration>,
}

impl SimClock {
    pub fn new(per_pass: Duration, per_position: Duration) -> SimClock {
        SimClock {
            per_pass,
            per_position,
            now: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the time on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ran(&self, work: Work) {
        let cost = self.per_pass * work.passes as u32 + self.per_position * work.positions as u32;
        self.advance(cost);
    }
}

/// A shared clock, as the engine's configuration holds it.
#[derive(Clone)]
pub struct ClockHandle(pub Arc<dyn Clock>);

impl ClockHandle {
    pub fn real() -> ClockHandle {
        ClockHandle(Arc::new(RealClock::new()))
    }

    pub fn now(&self) -> Duration {
        self.0.now()
    }

    pub fn ran(&self, work: Work) {
        self.0.ran(work)
    }
}

impl fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClockHandle")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_clock_moves_only_with_work_and_advances() {
        let c = SimClock::new(Duration::from_millis(10), Duration::from_millis(1));
        assert_eq!(c.now(), Duration::ZERO);
        c.ran(Work {
            draft: false,
            passes: 1,
            positions: 5,
        });
        assert_eq!(c.now(), Duration::from_millis(15));
        c.ran(Work {
            draft: true,
            passes: 3,
            positions: 3,
        });
        assert_eq!(c.now(), Duration::from_millis(48));
        c.advance(Duration::from_millis(2));
        assert_eq!(c.now(), Duration::from_millis(50));
        let real = RealClock::new();
        let a = real.now();
        assert!(real.now() >= a);
    }
}
