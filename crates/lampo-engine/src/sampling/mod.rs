//! Choosing the next token from logits: greedy, or temperature sampling
//! after top-k, top-p and min-p filtering, with repetition, frequency and
//! presence penalties and per-token logit bias. Seeded for reproducibility.
//!
//! A draw takes time linear in the vocabulary: nothing is sorted but the
//! few candidates where a cumulative mass crosses its target
//! ([`select`]). It draws the tokens the earlier sorting sampler drew
//! (kept in `reference.rs` for the tests that check so).

use std::collections::HashMap;

use crate::request::TokenLogprob;
use select::{BUCKETS, Cand, Stop};

#[cfg(test)]
mod reference;
mod select;

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely (0: none).
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of recent tokens (1: off).
    pub repetition_penalty: f32,
    /// Subtracted once per earlier occurrence of a token.
    pub frequency_penalty: f32,
    /// Subtracted once from any token seen before.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed, same output. `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and reproducible
/// across platforms.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The next token's distribution: one token; every candidate, with its
/// weight in `Sampler::weights` (by token id) and the weights' sums by
/// bucket in `Sampler::mass` (`select::bucket`); or the sampler's first `keep` candidates
/// (`Sampler::cands`). Weights are `e^((logit - max) / temperature)`: the
/// probabilities times their total, so that the first is 1.
enum Distribution {
    Greedy(u32),
    All { total: f64 },
    Kept { keep: usize },
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    recent: Vec<u32>,
    /// Every token's weight in the last distribution (kept to reuse the
    /// memory), 0 for those that cannot be drawn.
    weights: Vec<f64>,
    /// The weights' sums by bucket.
    mass: [f64; BUCKETS],
    /// Candidates of the last distribution that the search looked at.
    cands: Vec<Cand>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            recent: Vec::new(),
            weights: Vec::new(),
            mass: [0.0; BUCKETS],
            cands: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token of the context (prompt or output) for the penalties.
    pub fn accept(&mut self, token: u32) {
        self.recent.push(token);
        let keep = self.params.penalty_last_n;
        if self.recent.len() > keep * 2 + 64 {
            self.recent.drain(..self.recent.len() - keep);
        }
    }

    /// Picks the next token. `logits` is modified (bias and penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        match self.distribution(logits) {
            Distribution::Greedy(t) => t,
            Distribution::All { total } => {
                let r = self.rng.next_f64() * total;
                self.draw_all(logits, r)
            }
            Distribution::Kept { keep } => {
                let total: f64 = self.cands[..keep].iter().map(|c| c.q).sum();
                self.draw_kept(keep, total)
            }
        }
    }

    /// Verifies a proposed next token (speculative decoding) so that the
    /// token returned follows exactly the distribution `sample` draws from:
    /// greedy decoding accepts the proposal when it is the argmax; sampling
    /// accepts it with its probability p(d), and otherwise draws from the
    /// rest of the distribution (p without d, renormalized), which together
    /// give p again. Returns the token and whether it is the proposal.
    pub fn verify(&mut self, logits: &mut [f32], proposed: u32) -> (u32, bool) {
        match self.distribution(logits) {
            Distribution::Greedy(t) => (t, t == proposed),
            Distribution::All { total } => {
                let mut rest = total;
                let at = proposed as usize;
                if logits.get(at).is_some_and(|l| l.is_finite()) {
                    let w = self.weights[at];
                    if self.rng.next_f64() * total < w {
                        return (proposed, true);
                    }
                    self.weights[at] = 0.0;
                    self.mass[select::bucket(w)] -= w;
                    rest = total - w;
                }
                if rest <= 0.0 {
                    return (proposed, true);
                }
                let r = self.rng.next_f64() * rest;
                (self.draw_all(logits, r), false)
            }
            Distribution::Kept { keep } => {
                let kept = &mut self.cands[..keep];
                let total: f64 = kept.iter().map(|c| c.q).sum();
                if let Some(c) = kept.iter_mut().find(|c| c.id == proposed) {
                    if self.rng.next_f64() * total < c.q {
                        return (proposed, true);
                    }
                    c.q = 0.0;
                }
                let rest: f64 = kept.iter().map(|c| c.q).sum();
                if rest <= 0.0 {
                    return (proposed, true);
                }
                (self.draw_kept(keep, rest), false)
            }
        }
    }

    /// A token of the first `keep` candidates, each with probability
    /// `q / total`: the one where a uniform draw falls when the
    /// candidates are laid end to end most likely first.
    fn draw_kept(&mut self, keep: usize, total: f64) -> u32 {
        let r = self.rng.next_f64() * total;
        let kept = &mut self.cands[..keep];
        match select::crossing(kept, r, Stop::Below) {
            Some(m) => kept[m - 1].id,
            None => select::last_positive(kept).unwrap_or(&kept[0]).id,
        }
    }

    /// The token where `r` falls when every candidate is laid end to end
    /// most likely first: only the bucket that the sums by bucket place
    /// it in is gathered and searched.
    fn draw_all(&mut self, logits: &[f32], r: f64) -> u32 {
        let (at, r, inside) = select::locate(&self.mass, r, Stop::Below);
        gather(&mut self.cands, &self.weights, logits, |b| b == at);
        let n = self.cands.len();
        if let Some(m) = select::search(&mut self.cands, 0, n, r, Stop::Below, inside) {
            return self.cands[m - 1].id;
        }
        if inside {
            // The bucket's walk, summed in another order than its sum,
            // just missed: the draw is the first candidate after it.
            let here = self.cands.first().map(|c| c.id);
            gather(&mut self.cands, &self.weights, logits, |b| b > at);
            if let Some(c) = self
                .cands
                .iter()
                .filter(|c| c.q > 0.0)
                .min_by(|a, b| select::order(a, b))
            {
                return c.id;
            }
            gather(&mut self.cands, &self.weights, logits, |b| b == at);
            return select::last_positive(&self.cands)
                .map(|c| c.id)
                .or(here)
                .unwrap_or(0);
        }
        select::last_positive(&self.cands)
            .or(self.cands.first())
            .map_or(0, |c| c.id)
    }

    /// What the next token is drawn from, after bias, penalties,
    /// temperature, top-k, top-p and min-p, in time linear in the
    /// vocabulary: nothing is sorted but the few candidates where a
    /// cumulative mass crosses its target (`select`).
    fn distribution(&mut self, logits: &mut [f32]) -> Distribution {
        let p = &self.params;
        for &(tok, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(tok as usize) {
                *l += bias;
            }
        }
        apply_penalties(p, &self.recent, logits);
        let (t, top_k, top_p, min_p) = (p.temperature, p.top_k, p.top_p, p.min_p);
        if t <= 0.0 {
            return Distribution::Greedy(argmax(logits));
        }
        let finite = |l: &f32| l.is_finite();
        let (cands, weights, mass) = (&mut self.cands, &mut self.weights, &mut self.mass);
        if top_k > 0 && top_k < logits.len() {
            cands.clear();
            cands.extend(logits.iter().enumerate().filter(|(_, l)| finite(l)).map(
                |(i, &logit)| Cand {
                    id: i as u32,
                    logit,
                    q: 0.0,
                },
            ));
            if cands.is_empty() {
                return Distribution::Greedy(argmax(logits));
            }
            if top_k < cands.len() {
                cands.select_nth_unstable_by(top_k - 1, select::order);
                cands.truncate(top_k);
            }
            let max = cands
                .iter()
                .map(|c| c.logit)
                .fold(f32::NEG_INFINITY, f32::max);
            for c in cands.iter_mut() {
                c.q = (((c.logit - max) / t) as f64).exp();
            }
            let total: f64 = cands.iter().map(|c| c.q).sum();
            let keep = filter(cands, total, top_p, min_p);
            return Distribution::Kept { keep };
        }

        let max = logits
            .iter()
            .copied()
            .filter(finite)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return Distribution::Greedy(argmax(logits));
        }
        // Every token's weight, their total and sums by bucket, in one pass.
        weights.clear();
        weights.resize(logits.len(), 0.0);
        *mass = [0.0; BUCKETS];
        let mut total = 0.0;
        for (w, &l) in weights.iter_mut().zip(logits.iter()) {
            if l.is_finite() {
                *w = (((l - max) / t) as f64).exp();
                total += *w;
                mass[select::bucket(*w)] += *w;
            }
        }
        if min_p <= 0.0 && top_p >= 1.0 {
            return Distribution::All { total };
        }
        // The filters keep a prefix of the order: gather the buckets it
        // can reach (those at least `min_p`, those up to where the mass
        // reaches `top_p`), then cut it exactly.
        let mut limit = BUCKETS - 1;
        if min_p > 0.0 {
            limit = select::bucket((min_p as f64).min(1.0));
        }
        if top_p < 1.0 {
            let (at, _, inside) = select::locate(mass, top_p as f64 * total, Stop::AtOrBelow);
            if inside {
                limit = limit.min(at);
            }
        }
        gather(cands, weights, logits, |b| b <= limit);
        let keep = filter(cands, total, top_p, min_p);
        Distribution::Kept { keep }
    }
}

/// Replaces `cands` with the drawable tokens (finite logits) whose
/// weight's bucket `keep` accepts.
fn gather(cands: &mut Vec<Cand>, weights: &[f64], logits: &[f32], keep: impl Fn(usize) -> bool) {
    cands.clear();
    for (i, (&q, &logit)) in weights.iter().zip(logits).enumerate() {
        if logit.is_finite() && keep(select::bucket(q)) {
            cands.push(Cand {
                id: i as u32,
                logit,
                q,
            });
        }
    }
}

/// Cuts `cands` (weights whose total over every candidate is `total`) to
/// the prefix of the order that min-p and top-p keep, moved to the front;
/// returns its length. min-p keeps the candidates at least `min_p` times
/// as likely as the first (a prefix, since weights fall along the
/// order), and at least the first; top-p the shortest prefix whose mass
/// reaches `top_p`; both apply.
fn filter(cands: &mut [Cand], total: f64, top_p: f32, min_p: f32) -> usize {
    let mut keep = cands.len();
    if min_p > 0.0 {
        let top = cands.iter().map(|c| c.q).fold(0.0, f64::max);
        let floor = top * min_p as f64;
        keep = select::partition_in_place(cands, |c| c.q >= floor);
        if keep == 0 {
            let first = (0..cands.len())
                .min_by(|&a, &b| select::order(&cands[a], &cands[b]))
                .expect("candidates");
            cands.swap(0, first);
            keep = 1;
        }
    }
    if top_p < 1.0
        && let Some(m) = select::crossing(&mut cands[..keep], top_p as f64 * total, Stop::AtOrBelow)
    {
        keep = m;
    }
    keep
}

/// Repetition, frequency and presence penalties over the last
/// `penalty_last_n` tokens of `recent`.
fn apply_penalties(p: &SamplingParams, recent: &[u32], logits: &mut [f32]) {
    if p.repetition_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0 {
        return;
    }
    let window = &recent[recent.len().saturating_sub(p.penalty_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in window {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if p.repetition_penalty != 1.0 {
            *l = if *l > 0.0 {
                *l / p.repetition_penalty
            } else {
                *l * p.repetition_penalty
            };
        }
        *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

/// Log-probability of `token` and the `k` most likely tokens, from logits.
pub(crate) fn logprobs_of(logits: &[f32], token: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if top.len() < k || top.last().is_some_and(|&(_, m)| l > m) {
            let at = top.partition_point(|&(_, m)| m >= l);
            top.insert(at, (i as u32, l));
            top.truncate(k);
        }
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - lse,
        top: top.into_iter().map(|(t, l)| (t, l - lse)).collect(),
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_normalized_and_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, -1.0, 3.0];
        let lp = logprobs_of(&logits, 2, 3);
        let total: f64 = logits.iter().map(|&l| ((l - 3.0) as f64).exp()).sum();
        let want = (2.0 - 3.0) - total.ln() as f32;
        assert!((lp.logprob - want).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 4, 2]);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let p: f64 = logits
            .iter()
            .map(|&l| ((l - 3.0) as f64).exp() / total)
            .sum();
        assert!((p - 1.0).abs() < 1e-9);
        assert!(logprobs_of(&logits, 0, 0).top.is_empty());
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        f(&mut p);
        p
    }

    fn draw(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(p.clone());
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(&mut logits.to_vec()) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.7).sin()).collect();
        let a = params(|p| p.temperature = 1.0);
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..40)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&a), run(&a));
        assert_ne!(
            run(&a),
            run(&params(|p| {
                p.temperature = 1.0;
                p.seed = Some(8)
            }))
        );
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // p = softmax([ln 1, ln 2, ln 7]) = [0.1, 0.2, 0.7]
        let logits = [0f32, 2f32.ln(), 7f32.ln()];
        let counts = draw(&params(|p| p.temperature = 1.0), &logits, 20_000);
        for (c, want) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let got = *c as f64 / 20_000.0;
            assert!((got - want).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn filters_cut_the_tail() {
        let logits = [0f32, 2f32.ln(), 7f32.ln()];
        let k1 = draw(
            &params(|p| {
                p.temperature = 1.0;
                p.top_k = 1
            }),
            &logits,
            200,
        );
        assert_eq!(k1, vec![0, 0, 200]);
        let top_p = draw(
            &params(|p| {
                p.temperature = 1.0;
                p.top_p = 0.85
            }),
            &logits,
            2000,
        );
        assert_eq!(
            top_p[0], 0,
            "0.7 + 0.2 reaches 0.85, so the 0.1 token is cut: {top_p:?}"
        );
        assert!(top_p[1] > 0);
        let min_p = draw(
            &params(|p| {
                p.temperature = 1.0;
                p.min_p = 0.2
            }),
            &logits,
            2000,
        );
        assert_eq!(min_p[0], 0, "0.1 < 0.2 * 0.7: {min_p:?}");
        assert!(min_p[1] > 0, "0.2 >= 0.14: {min_p:?}");
    }

    #[test]
    fn penalties_and_bias() {
        let mut s = Sampler::new(params(|p| p.repetition_penalty = 2.0));
        s.accept(0);
        s.accept(1);
        let mut l = [4.0f32, -1.0, 3.0];
        assert_eq!(s.sample(&mut l), 2, "token 0 penalized from 4 to 2");
        assert_eq!(l[..2], [2.0, -2.0]);

        let mut s = Sampler::new(params(|p| {
            p.frequency_penalty = 1.0;
            p.presence_penalty = 0.5
        }));
        for t in [0, 0, 0, 1] {
            s.accept(t);
        }
        let mut l = [10.0f32, 10.0, 7.0];
        s.sample(&mut l);
        assert_eq!(l, [6.5, 8.5, 7.0]);

        let mut s = Sampler::new(params(|p| p.logit_bias = vec![(0, -100.0), (2, 5.0)]));
        assert_eq!(s.sample(&mut [3.0, 1.0, -1.0]), 2);
    }

    /// Speculative verification keeps the target distribution exactly:
    /// over many draws, whatever is proposed, the tokens returned are
    /// distributed as plain sampling's (within sampling error).
    #[test]
    fn verification_keeps_the_sampling_distribution() {
        let logits = [2.0f32, 1.5, 0.2, -0.5, 1.0, -3.0];
        let settings: [fn(&mut SamplingParams); 3] = [
            |p| p.temperature = 1.0,
            |p| {
                p.temperature = 0.7;
                p.top_k = 3
            },
            |p| {
                p.temperature = 1.3;
                p.top_p = 0.8
            },
        ];
        let draws = 40_000;
        for (si, set) in settings.iter().enumerate() {
            let mut plain = Sampler::new(params(|p| {
                set(p);
                p.seed = Some(7)
            }));
            let mut want = [0usize; 6];
            for _ in 0..draws {
                want[plain.sample(&mut logits.clone()) as usize] += 1;
            }
            // Proposals: the likeliest token, an unlikely one, one that
            // top-k or top-p drops.
            for proposed in [0u32, 3, 5] {
                let mut spec = Sampler::new(params(|p| {
                    set(p);
                    p.seed = Some(11 + proposed as u64)
                }));
                let mut got = [0usize; 6];
                let mut accepted = 0;
                for _ in 0..draws {
                    let (t, ok) = spec.verify(&mut logits.clone(), proposed);
                    assert_eq!(ok, t == proposed);
                    accepted += ok as usize;
                    got[t as usize] += 1;
                }
                for t in 0..6 {
                    let (a, b) = (want[t] as f64 / draws as f64, got[t] as f64 / draws as f64);
                    // Five standard errors of the difference of two proportions.
                    let se = (2.0 * a.max(1e-4) * (1.0 - a) / draws as f64).sqrt();
                    assert!(
                        (a - b).abs() <= 5.0 * se + 1e-3,
                        "setting {si}, proposal {proposed}, token {t}: {a:.4} vs {b:.4}"
                    );
                }
                // A proposal is accepted as often as it would be drawn.
                let rate = accepted as f64 / draws as f64;
                let p = want[proposed as usize] as f64 / draws as f64;
                assert!(
                    (rate - p).abs() < 0.02,
                    "setting {si}: accepted {rate} vs p {p}"
                );
            }
        }
        // Greedy: accepted exactly when it is the argmax.
        let mut g = Sampler::new(SamplingParams::greedy());
        assert_eq!(g.verify(&mut logits.clone(), 0), (0, true));
        assert_eq!(g.verify(&mut logits.clone(), 4), (0, false));
    }
}
