//! What a step costs, learned from the steps run so far, so that the
//! worker can size the next one to [`crate::EngineConfig::max_step_time`].
//!
//! A step's time is modelled as a sum of four parts: a fixed part (the
//! weights are read once whatever the batch), a part per position (the
//! matrix products), a part per attended pair (each position reads the
//! keys and values of every position before it in its sequence, so a
//! chunk late in a long prompt costs far more than one at its start),
//! and a part per position whose logits are computed (the vocabulary
//! projection). The coefficients are fitted by least squares over the
//! recent steps, older steps weighing less, with none allowed below
//! zero. A cost per position alone would size a step of a 3,500-token
//! prompt's last chunks as if they were its first: twice the time meant.

use std::time::Duration;

use lampo_model::Logits;

use super::plan::Item;

/// How much a step's weight in the fit shrinks with every later step:
/// the fit follows the last few dozen steps.
const FORGET: f64 = 0.95;

/// Steps seen before the fit is trusted.
const WARM_UP: u32 = 4;

/// Features are scaled to similar sizes so that the fit is well
/// conditioned: one step, 64 positions, 64k attended pairs, 8 logits.
const SCALE: [f64; 4] = [1.0, 64.0, 65536.0, 8.0];

/// What a step computes, as the cost model sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Shape {
    pub positions: usize,
    /// Pairs (position, earlier position of its sequence) attended.
    pub attended: u64,
    /// Positions whose logits are computed.
    pub logits: usize,
}

impl Shape {
    pub fn of(items: &[Item]) -> Shape {
        let mut s = Shape::default();
        for it in items {
            s.positions += it.n;
            let (start, n) = (it.start as u64, it.n as u64);
            s.attended += n * start + n * (n + 1) / 2;
            s.logits += match it.logits {
                Logits::All => it.n,
                Logits::Last => 1,
                Logits::None => 0,
            };
        }
        s
    }

    fn features(&self) -> [f64; 4] {
        let raw = [
            1.0,
            self.positions as f64,
            self.attended as f64,
            self.logits as f64,
        ];
        std::array::from_fn(|i| raw[i] / SCALE[i])
    }
}

/// The fit: exponentially weighted normal equations and their solution.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepCost {
    xx: [[f64; 4]; 4],
    xt: [f64; 4],
    seen: u32,
    /// Seconds per unit of each scaled feature.
    coef: Option<[f64; 4]>,
}

impl StepCost {
    /// Learns from a step of `shape` that took `took`.
    pub fn record(&mut self, shape: Shape, took: Duration) {
        let x = shape.features();
        let t = took.as_secs_f64();
        for i in 0..4 {
            for j in 0..4 {
                self.xx[i][j] = self.xx[i][j] * FORGET + x[i] * x[j];
            }
            self.xt[i] = self.xt[i] * FORGET + x[i] * t;
        }
        self.seen = self.seen.saturating_add(1);
        if self.seen >= WARM_UP {
            self.coef = fit_nonnegative(&self.xx, &self.xt);
        }
    }

    /// What a step of `shape` should take; `None` until enough steps
    /// were seen.
    pub fn predict(&self, shape: Shape) -> Option<Duration> {
        let c = self.coef?;
        let x = shape.features();
        let t: f64 = (0..4).map(|i| c[i] * x[i]).sum();
        Some(Duration::from_secs_f64(t.max(0.0)))
    }
}

/// Least squares with every coefficient at least zero: a feature whose
/// coefficient comes out negative is left out and the rest fitted again.
fn fit_nonnegative(xx: &[[f64; 4]; 4], xt: &[f64; 4]) -> Option<[f64; 4]> {
    let mut used = [true; 4];
    for _ in 0..4 {
        let idx: Vec<usize> = (0..4).filter(|&i| used[i]).collect();
        let c = solve(xx, xt, &idx)?;
        let mut coef = [0.0; 4];
        for (k, &i) in idx.iter().enumerate() {
            coef[i] = c[k];
        }
        match idx.iter().position(|&i| coef[i] < 0.0) {
            None => return Some(coef),
            Some(_) => {
                let worst = idx
                    .iter()
                    .copied()
                    .min_by(|&a, &b| coef[a].total_cmp(&coef[b]))
                    .expect("a negative one");
                used[worst] = false;
            }
        }
    }
    Some([0.0; 4])
}

/// Solves the normal equations restricted to features `idx`, with a
/// little ridge so that features the steps have not varied yet (every
/// step the same shape) stay near zero instead of making it singular.
fn solve(xx: &[[f64; 4]; 4], xt: &[f64; 4], idx: &[usize]) -> Option<Vec<f64>> {
    let n = idx.len();
    if n == 0 {
        return Some(Vec::new());
    }
    let trace: f64 = idx.iter().map(|&i| xx[i][i]).sum();
    let ridge = 1e-9 * trace.max(1e-12);
    let mut a: Vec<Vec<f64>> = idx
        .iter()
        .map(|&i| {
            let mut row: Vec<f64> = idx.iter().map(|&j| xx[i][j]).collect();
            row.push(xt[i]);
            row
        })
        .collect();
    for (k, row) in a.iter_mut().enumerate() {
        row[k] += ridge;
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        let top = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / top[col];
                for (x, p) in row[col..].iter_mut().zip(&top[col..]) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..n).map(|k| a[k][n] / a[k][k]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(start: usize, n: usize, logits: Logits) -> Item {
        Item {
            id: 1,
            start,
            n,
            logits,
        }
    }

    #[test]
    fn shape_counts_positions_pairs_and_logits() {
        let s = Shape::of(&[
            item(10, 1, Logits::Last),
            item(0, 4, Logits::None),
            item(5, 3, Logits::All),
        ]);
        assert_eq!(s.positions, 8);
        // 11 + (1+2+3+4) + (6+7+8)
        assert_eq!(s.attended, 11 + 10 + 21);
        assert_eq!(s.logits, 4);
    }

    /// A made-up machine: 5 ms a step, 0.2 ms a position, 20 ns a pair,
    /// 0.1 ms a logit row.
    fn machine(s: Shape) -> Duration {
        Duration::from_secs_f64(
            5e-3 + 2e-4 * s.positions as f64 + 2e-8 * s.attended as f64 + 1e-4 * s.logits as f64,
        )
    }

    #[test]
    fn the_fit_learns_that_late_chunks_of_a_long_prompt_cost_more() {
        let mut cost = StepCost::default();
        assert_eq!(cost.predict(Shape::default()), None);
        // A long prompt prefilled in chunks of 128 beside 4 decoders.
        for k in 0..20 {
            let mut items: Vec<Item> = (0..4).map(|d| item(40 + d + k, 1, Logits::Last)).collect();
            items.push(item(128 * k, 128, Logits::None));
            let s = Shape::of(&items);
            cost.record(s, machine(s));
        }
        for (start, n) in [(0, 128), (3000, 128), (3400, 40)] {
            let s = Shape::of(&[item(start, n, Logits::None), item(9, 1, Logits::Last)]);
            let (got, want) = (cost.predict(s).unwrap(), machine(s));
            let err = (got.as_secs_f64() - want.as_secs_f64()).abs() / want.as_secs_f64();
            assert!(err < 0.05, "chunk at {start}: {got:?} for {want:?}");
        }
    }

    #[test]
    fn coefficients_never_go_negative_and_zero_times_predict_zero() {
        let mut cost = StepCost::default();
        for k in 0..10 {
            let s = Shape::of(&[item(k, 1 + k % 3, Logits::Last)]);
            cost.record(s, Duration::ZERO);
        }
        assert_eq!(cost.predict(Shape::default()), Some(Duration::ZERO));
        // Noisy times that a plain fit would explain with a negative
        // cost per pair.
        let mut cost = StepCost::default();
        for (k, ms) in [(0usize, 9.0), (1, 8.0), (2, 7.5), (3, 7.0), (4, 6.0)] {
            let s = Shape::of(&[item(k * 1000, 32, Logits::Last)]);
            cost.record(s, Duration::from_secs_f64(ms * 1e-3));
        }
        let c = cost.coef.unwrap();
        assert!(c.iter().all(|&v| v >= 0.0), "{c:?}");
        let far = Shape::of(&[item(100_000, 32, Logits::Last)]);
        assert!(cost.predict(far).unwrap() > Duration::ZERO);
    }
}
