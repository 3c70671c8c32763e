//! How soon a new request's first token could come, from what the worker
//! last published: the prompts queued, the step budget and what steps
//! cost. [`crate::Engine::submit`] refuses a request whose first-token
//! deadline the forecast says it cannot meet, before any work is spent
//! on it. A forecast, not a promise: requests that arrive later and are
//! more urgent can still delay it (it then ends as timed out).

use std::time::Duration;

use super::policy::{AGED_SHARE, Prompt};
use crate::request::Tier;

/// The worker's view of its queue, published after every step.
#[derive(Clone, Debug, Default)]
pub(crate) struct Forecast {
    /// What a step of at least the minimum size costs (`None`: not yet
    /// measured, so nothing is refused).
    pub step: Option<Duration>,
    /// Positions the next step may compute.
    pub budget: usize,
    /// Requests decoding: each takes a position of every step.
    pub decoding: usize,
    /// Prompts not yet computed.
    pub prompts: Vec<Prompt>,
}

impl Forecast {
    /// When a prompt of `len` positions, of `tier`, due at `deadline`
    /// (on the engine's clock) would get its first token, counted from
    /// now: the step under way, then as many steps as the prompts ordered
    /// before it and its own need. `None` when steps have not been
    /// measured yet.
    pub fn first_token(
        &self,
        tier: Tier,
        deadline: Option<Duration>,
        len: usize,
    ) -> Option<Duration> {
        let step = self.step?;
        let new = Prompt {
            tier,
            deadline,
            left: len,
            arrival: u64::MAX,
        };
        let ahead: usize = self
            .prompts
            .iter()
            .filter(|p| p.before(&new))
            .map(|p| p.left)
            .sum();
        let mut per_step = self.budget.saturating_sub(self.decoding).max(1);
        // A prompt ordered after it may be owed the aged share.
        if self.prompts.iter().any(|p| !p.before(&new)) {
            per_step -= per_step / AGED_SHARE;
        }
        let steps = (ahead + len).div_ceil(per_step.max(1));
        Some(step * (1 + steps as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(tier: Tier, left: usize, arrival: u64) -> Prompt {
        Prompt {
            tier,
            deadline: None,
            left,
            arrival,
        }
    }

    #[test]
    fn a_short_prompt_waits_for_its_own_steps_not_a_long_ones() {
        let ms = Duration::from_millis;
        let f = Forecast {
            step: Some(ms(100)),
            budget: 128,
            decoding: 8,
            prompts: vec![prompt(Tier::Default, 3500, 1)],
        };
        // 120 positions a step, 90 once the long prompt takes its share:
        // the step under way, then one of its own.
        assert_eq!(f.first_token(Tier::Default, None, 40), Some(ms(200)));
        assert_eq!(f.first_token(Tier::Default, None, 200), Some(ms(400)));
        // Longer than the long prompt's remainder: it goes after it.
        assert_eq!(f.first_token(Tier::Default, None, 3600), Some(ms(6100)));
        // A flex request waits for every default prompt.
        assert_eq!(f.first_token(Tier::Flex, None, 40), Some(ms(3100)));
        // Nothing measured: no forecast.
        let fresh = Forecast::default();
        assert_eq!(fresh.first_token(Tier::Default, None, 40), None);
    }
}
