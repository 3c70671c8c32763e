//! Where a distribution's running mass crosses a target, in the order of
//! decreasing logit (ties: the lower token id first), without sorting the
//! vocabulary.
//!
//! Sampling walks the candidates most likely first and stops where the
//! running sum of their probabilities passes a uniform draw; top-p stops
//! where it reaches `top_p`. Sorting 49k-151k candidates for that costs
//! milliseconds per token. Here the candidates are partitioned around a
//! pivot instead (as quickselect does), the mass of the part before the
//! pivot decides which side holds the crossing, and only the last few
//! dozen candidates are sorted: expected linear time, the same token as
//! the sorted walk (up to the rounding of sums taken in another order).

use std::cmp::Ordering;

/// A candidate token: its logit (after bias and penalties) and its
/// probability (not necessarily normalized).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Cand {
    pub id: u32,
    pub logit: f32,
    pub q: f64,
}

/// The sampling order: higher logit first, then lower id.
pub(super) fn order(a: &Cand, b: &Cand) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

fn before(a: &Cand, b: &Cand) -> bool {
    order(a, b) == Ordering::Less
}

/// How the walk stops: a draw stops at the first candidate with weight
/// after which the remainder is negative; top-p at the first after which
/// it is zero or less (the cumulative mass has reached `top_p`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Stop {
    Below,
    AtOrBelow,
}

impl Stop {
    fn hit(self, r: f64, q: f64) -> bool {
        match self {
            Stop::Below => r < 0.0 && q > 0.0,
            Stop::AtOrBelow => r <= 0.0,
        }
    }

    fn inside(self, r: f64, mass: f64) -> bool {
        match self {
            Stop::Below => r < mass,
            Stop::AtOrBelow => r <= mass,
        }
    }
}

/// Below this many candidates the rest is sorted and walked.
const SMALL: usize = 48;
/// Partition rounds before the rest is sorted whatever its size, so that
/// no input makes the search quadratic.
const MAX_ROUNDS: usize = 64;
/// Buckets of the first pass: by the binary exponent of the weight.
pub(super) const BUCKETS: usize = 64;

/// The bucket of a weight in `[0, 1]`: its binary exponent, negated (so
/// that larger weights, which come first in the order, have smaller
/// buckets), the smallest and zero in the last.
pub(super) fn bucket(q: f64) -> usize {
    let exponent = ((q.to_bits() >> 52) & 0x7ff) as usize;
    1023usize.saturating_sub(exponent).min(BUCKETS - 1)
}

/// Walks `items` in sampling order subtracting each weight (each in
/// `[0, 1]`, and none larger than one before it in the order, as
/// probabilities are) from `r` and returns `m`, the position after the candidate
/// where the walk stops (`stop`), having reordered `items` so that
/// `items[..m]` are the first `m` in order and `items[m - 1]` is that
/// candidate. `None` when the walk runs off the end (the mass never
/// crosses; `items` is then reordered arbitrarily).
///
/// A first pass sums the weights by binary exponent, which orders them as
/// the logits do: the bucket where the crossing lies is found from those
/// sums, and only its candidates are searched further. Most of a
/// language model's mass sits in a few tokens, so that bucket is small.
pub(super) fn crossing(items: &mut [Cand], r: f64, stop: Stop) -> Option<usize> {
    let mut mass = [0f64; BUCKETS];
    for c in items.iter() {
        mass[bucket(c.q)] += c.q;
    }
    let (at, r, inside) = locate(&mass, r, stop);
    let hi = partition_in_place(items, |c| bucket(c.q) <= at);
    let lo = partition_in_place(&mut items[..hi], |c| bucket(c.q) < at);
    search(items, lo, hi, r, stop, inside)
}

/// The bucket where a walk over buckets of the given masses stops, what
/// is left of `r` once the buckets before it are subtracted, and whether
/// the sums say the crossing lies inside it (if not, it is the last
/// bucket with weight, and the walk may run off the end).
pub(super) fn locate(mass: &[f64; BUCKETS], mut r: f64, stop: Stop) -> (usize, f64, bool) {
    let last = (0..BUCKETS)
        .rev()
        .find(|&b| mass[b] > 0.0)
        .unwrap_or(BUCKETS - 1);
    for (b, &m) in mass.iter().enumerate().take(last) {
        if stop.inside(r, m) {
            return (b, r, true);
        }
        r -= m;
    }
    (last, r, false)
}

/// The walk of [`crossing`] over `items[lo..hi]`, every candidate before
/// `lo` coming before them in order and every one from `hi` after them,
/// `r` being what is left once `items[..lo]` are subtracted; `inside`
/// when the sums said that the crossing lies before `hi`.
pub(super) fn search(
    items: &mut [Cand],
    mut lo: usize,
    mut hi: usize,
    mut r: f64,
    stop: Stop,
    mut inside: bool,
) -> Option<usize> {
    let mut rounds = 0;
    while hi - lo > SMALL && rounds < MAX_ROUNDS {
        rounds += 1;
        let pivot = median_of_three(&items[lo..hi]);
        let mut mid = lo;
        let mut mass = 0.0;
        for i in lo..hi {
            if before(&items[i], &pivot) {
                items.swap(i, mid);
                mass += items[mid].q;
                mid += 1;
            }
        }
        if mid == lo {
            // The pivot is the first of the slice: walk it alone.
            let at = (lo..hi).find(|&i| items[i] == pivot).expect("the pivot");
            items.swap(lo, at);
            r -= pivot.q;
            if stop.hit(r, pivot.q) {
                return Some(lo + 1);
            }
            lo += 1;
        } else if stop.inside(r, mass) {
            hi = mid;
            inside = true;
        } else {
            r -= mass;
            lo = mid;
        }
    }
    items[lo..hi].sort_unstable_by(order);
    for (i, c) in items.iter().enumerate().take(hi).skip(lo) {
        r -= c.q;
        if stop.hit(r, c.q) {
            return Some(i + 1);
        }
    }
    if !inside || hi == items.len() {
        return None;
    }
    // The part's sum said the crossing was inside it, but its walk, summed
    // in another order, just missed it: the crossing is the next
    // candidate that can stop the walk.
    let next = (hi..items.len())
        .filter(|&i| stop == Stop::AtOrBelow || items[i].q > 0.0)
        .min_by(|&a, &b| order(&items[a], &items[b]))?;
    items.swap(hi, next);
    Some(hi + 1)
}

/// Moves the items `keep` accepts to the front, in no particular order;
/// returns how many.
pub(super) fn partition_in_place<T>(items: &mut [T], keep: impl Fn(&T) -> bool) -> usize {
    let mut n = 0;
    for i in 0..items.len() {
        if keep(&items[i]) {
            items.swap(i, n);
            n += 1;
        }
    }
    n
}

/// The last candidate in sampling order with a positive weight: where a
/// draw ends when rounding leaves a remainder after the last one.
pub(super) fn last_positive(items: &[Cand]) -> Option<&Cand> {
    items
        .iter()
        .filter(|c| c.q > 0.0)
        .max_by(|a, b| order(a, b))
}

fn median_of_three(s: &[Cand]) -> Cand {
    let (a, b, c) = (s[0], s[s.len() / 2], s[s.len() - 1]);
    if before(&a, &b) {
        if before(&b, &c) {
            b
        } else if before(&a, &c) {
            c
        } else {
            a
        }
    } else if before(&a, &c) {
        a
    } else if before(&b, &c) {
        c
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Rng;

    fn cands(n: usize, seed: u64, ties: bool) -> Vec<Cand> {
        let mut rng = Rng::new(seed);
        (0..n as u32)
            .map(|id| {
                let mut logit = (rng.next_f64() * 20.0 - 10.0) as f32;
                if ties {
                    logit = (logit * 2.0).round() / 2.0;
                }
                // Weights fall along the order, as probabilities do; the
                // lowest underflow to zero.
                let q = if logit < -9.0 {
                    0.0
                } else {
                    ((logit - 10.0) as f64).exp()
                };
                Cand { id, logit, q }
            })
            .collect()
    }

    /// The sorted walk, as the search must reproduce it.
    fn walk(items: &[Cand], mut r: f64, stop: Stop) -> Option<usize> {
        let mut s = items.to_vec();
        s.sort_unstable_by(order);
        for (i, c) in s.iter().enumerate() {
            r -= c.q;
            if stop.hit(r, c.q) {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn the_search_stops_where_the_sorted_walk_stops() {
        let mut rng = Rng::new(3);
        for (n, ties) in [
            (1usize, false),
            (7, true),
            (48, false),
            (49, true),
            (500, false),
            (5000, true),
            (20_000, false),
        ] {
            for trial in 0..40 {
                let items = cands(n, n as u64 * 100 + trial, ties);
                let total: f64 = items.iter().map(|c| c.q).sum();
                let stop = if trial % 2 == 0 {
                    Stop::Below
                } else {
                    Stop::AtOrBelow
                };
                // Inside, at the very start, and past the end.
                let r = match trial % 5 {
                    0 => 0.0,
                    1 => total * 1.01,
                    _ => rng.next_f64() * total,
                };
                let want = walk(&items, r, stop);
                let mut got_items = items.clone();
                let got = crossing(&mut got_items, r, stop);
                assert_eq!(got, want, "n {n} trial {trial} r {r}");
                if let Some(m) = got {
                    let mut sorted = items.clone();
                    sorted.sort_unstable_by(order);
                    let mut prefix = got_items[..m].to_vec();
                    prefix.sort_unstable_by(order);
                    assert_eq!(prefix, sorted[..m], "the first m in order");
                    assert_eq!(got_items[m - 1], sorted[m - 1], "the crossing candidate");
                }
            }
        }
    }

    #[test]
    fn sorted_and_reversed_inputs_stay_linear_and_correct() {
        let mut items: Vec<Cand> = (0..100_000u32)
            .map(|id| Cand {
                id,
                logit: -(id as f32),
                q: 1.0,
            })
            .collect();
        assert_eq!(
            crossing(&mut items.clone(), 77_777.5, Stop::Below),
            Some(77_778)
        );
        items.reverse();
        assert_eq!(crossing(&mut items, 10.0, Stop::AtOrBelow), Some(10));
        let all_equal = vec![
            Cand {
                id: 0,
                logit: 1.0,
                q: 0.5
            };
            1
        ];
        assert_eq!(last_positive(&all_equal).map(|c| c.id), Some(0));
    }
}
