//! Who goes first: the scheduler's ordering decisions as pure functions
//! of a few numbers per request, so each is tested on its own.
//!
//! - Prompt chunks: a step's prefill budget goes to the prompts in order
//!   of tier, then first-token deadline (earliest first, none last), then
//!   fewest positions left (shortest remaining first), then age. A short
//!   request arriving while a long prompt is prefilled is done in the
//!   next step. So that a stream of short prompts cannot starve a long
//!   one, the oldest prompt of the most urgent tier present is promised
//!   a quarter of every step's budget ([`AGED_SHARE`]).
//! - Admission: most urgent tier first, then arrival order.
//! - Preemption: the victim is of the least urgent tier, never of a more
//!   urgent one than the request in need, and among those the one that
//!   loses the least work (fewest positions computed), then the youngest.

use std::cmp::Reverse;
use std::time::Duration;

use crate::request::Tier;

/// The share of a step's prefill budget (one in this many tokens) the
/// oldest prompt of the most urgent tier is promised when others are
/// ordered before it.
pub(crate) const AGED_SHARE: usize = 4;

/// A prompt being prefilled, as the ordering sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prompt {
    pub tier: Tier,
    /// When its first token is due, on the engine's clock.
    pub deadline: Option<Duration>,
    /// Positions left to compute.
    pub left: usize,
    /// Arrival order (smaller is older).
    pub arrival: u64,
}

impl Prompt {
    /// Whether `self` is served before `other`.
    pub fn before(&self, other: &Prompt) -> bool {
        order_key(self) < order_key(other)
    }
}

/// The ordering as one comparable key: tier, deadline (none last), left, age.
fn order_key(p: &Prompt) -> (Tier, bool, Duration, usize, u64) {
    (
        p.tier,
        p.deadline.is_none(),
        p.deadline.unwrap_or(Duration::MAX),
        p.left,
        p.arrival,
    )
}

/// The order in which `prompts` are served: indices into it.
pub(crate) fn prefill_order(prompts: &[Prompt]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| order_key(&prompts[i]));
    order
}

/// Splits `budget` positions over `prompts`: how many each computes this
/// step (in the input's order). Served in [`prefill_order`], each takes
/// what it needs while the budget lasts, except that the oldest prompt of
/// the first one's tier keeps `budget / AGED_SHARE` for itself.
pub(crate) fn split(prompts: &[Prompt], budget: usize) -> Vec<usize> {
    let mut take = vec![0; prompts.len()];
    let order = prefill_order(prompts);
    let Some(&first) = order.first() else {
        return take;
    };
    let tier = prompts[first].tier;
    let oldest = (0..prompts.len())
        .filter(|&i| prompts[i].tier == tier)
        .min_by_key(|&i| prompts[i].arrival)
        .expect("the first is of its own tier");
    let mut left = budget;
    if oldest != first {
        let kept = (budget / AGED_SHARE).min(prompts[oldest].left);
        take[oldest] = kept;
        left -= kept;
    }
    for i in order {
        let n = (prompts[i].left - take[i]).min(left);
        take[i] += n;
        left -= n;
    }
    take
}

/// A running request, as the choice of a preemption victim sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Running {
    pub tier: Tier,
    /// Positions computed: the work preempting it throws away (some may
    /// be found again by prefix).
    pub computed: usize,
    /// Admission order (larger is younger).
    pub admission: u64,
}

/// Which of `running` gives its memory back so that a request of `tier`
/// can go on: the least urgent tier (never one more urgent than `tier`),
/// then the least work lost, then the youngest. `None` if every running
/// request is more urgent than `tier`.
pub(crate) fn victim(running: &[Running], tier: Tier) -> Option<usize> {
    (0..running.len())
        .filter(|&i| running[i].tier >= tier)
        .max_by_key(|&i| {
            let r = &running[i];
            (r.tier, Reverse(r.computed), r.admission)
        })
}

/// How long after the last request of another tier flex-only steps stay
/// short ([`step_time`]).
pub(crate) const FLEX_QUIET: Duration = Duration::from_secs(30);

/// Flex-only steps last this share (one in this many) of the step time
/// while other tiers are being served.
pub(crate) const FLEX_STEP_SHARE: u32 = 4;

/// What the next step holds, as the choice of its length sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StepKind {
    /// Every request is flex.
    pub only_flex: bool,
    /// A prompt gets its first token while another is still being
    /// prefilled beside it.
    pub first_token_beside_prefill: bool,
}

/// How long the next step may last: `max_step`, except that
/// - a step of flex requests alone, while requests of other tiers were
///   seen in the last [`FLEX_QUIET`] (`since_others`: how long ago,
///   `None`: never), is kept to a [`FLEX_STEP_SHARE`] of it, so that such
///   a request arriving waits little for the step under way (a server
///   serving flex alone keeps full steps);
/// - a step that gives a request its first token beside another prompt's
///   chunk is kept to half of it: the first token does not wait for a
///   full chunk of someone else's long prompt.
pub(crate) fn step_time(
    max_step: Duration,
    kind: StepKind,
    since_others: Option<Duration>,
) -> Duration {
    match since_others {
        Some(ago) if kind.only_flex && ago < FLEX_QUIET => max_step / FLEX_STEP_SHARE,
        _ if kind.first_token_beside_prefill => max_step / 2,
        _ => max_step,
    }
}

/// How many of `max_batch` places flex requests may hold: the rest are
/// kept for the other tiers, so that they never wait for a place.
pub(crate) fn flex_places(max_batch: usize) -> usize {
    max_batch - (max_batch / 4).max(1).min(max_batch - 1)
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
    fn the_shortest_remaining_prompt_goes_first_and_the_oldest_keeps_a_quarter() {
        // A 3,500-position prompt (oldest) and a 40-position one.
        let p = [prompt(Tier::Default, 3500, 1), prompt(Tier::Default, 40, 2)];
        assert_eq!(prefill_order(&p), [1, 0]);
        assert_eq!(split(&p, 256), [216, 40]);
        // Many short ones: the long one still gets its quarter.
        let p = [
            prompt(Tier::Default, 3500, 1),
            prompt(Tier::Default, 100, 2),
            prompt(Tier::Default, 100, 3),
        ];
        assert_eq!(split(&p, 256), [64, 100, 92]);
        // Alone, the oldest takes everything.
        assert_eq!(split(&p[..1], 256), [256]);
    }

    #[test]
    fn tiers_come_before_deadlines_and_deadlines_before_length() {
        let mut urgent = prompt(Tier::Default, 500, 3);
        urgent.deadline = Some(Duration::from_millis(200));
        let mut later = prompt(Tier::Default, 400, 4);
        later.deadline = Some(Duration::from_millis(900));
        let p = [
            prompt(Tier::Flex, 10, 1),
            prompt(Tier::Default, 20, 2),
            urgent,
            later,
            prompt(Tier::Priority, 3000, 5),
        ];
        assert_eq!(prefill_order(&p), [4, 2, 3, 1, 0]);
        // The priority prompt is the oldest of its tier: nothing is kept
        // for the older flex one.
        assert_eq!(split(&p, 256), [0, 0, 0, 0, 256]);
        assert!(p[2].before(&p[3]) && !p[0].before(&p[1]));
    }

    #[test]
    fn the_victim_is_the_least_urgent_then_the_one_losing_least() {
        let r = |tier, computed, admission| Running {
            tier,
            computed,
            admission,
        };
        let running = [
            r(Tier::Flex, 900, 1),
            r(Tier::Flex, 100, 2),
            r(Tier::Default, 10, 3),
            r(Tier::Priority, 5, 4),
        ];
        assert_eq!(victim(&running, Tier::Priority), Some(1));
        assert_eq!(victim(&running[2..], Tier::Default), Some(0));
        // A default request never takes a priority one's memory.
        assert_eq!(victim(&running[3..], Tier::Default), None);
        // Equal work: the youngest.
        let tie = [r(Tier::Default, 48, 1), r(Tier::Default, 48, 2)];
        assert_eq!(victim(&tie, Tier::Default), Some(1));
    }

    #[test]
    fn flex_only_steps_are_short_while_other_tiers_are_served() {
        let (max, s) = (Duration::from_millis(100), Duration::from_secs);
        let flex = StepKind {
            only_flex: true,
            ..StepKind::default()
        };
        assert_eq!(step_time(max, flex, Some(s(1))), Duration::from_millis(25));
        assert_eq!(step_time(max, flex, Some(s(31))), max);
        assert_eq!(step_time(max, flex, None), max);
        assert_eq!(step_time(max, StepKind::default(), Some(s(1))), max);
        let first = StepKind {
            first_token_beside_prefill: true,
            ..StepKind::default()
        };
        assert_eq!(step_time(max, first, None), Duration::from_millis(50));
    }

    #[test]
    fn flex_leaves_places_for_the_other_tiers() {
        assert_eq!(flex_places(8), 6);
        assert_eq!(flex_places(4), 3);
        assert_eq!(flex_places(2), 1);
        assert_eq!(flex_places(1), 1);
    }
}
