//! The sampler as it was before the linear-time search (`select`): it
//! sorted every candidate and walked them. Kept for the tests only, which
//! check that the sampler draws exactly the tokens this one draws for the
//! same seed, over many draws and parameter mixes.

use super::{Rng, SamplingParams, apply_penalties, argmax};

/// One token, or tokens with weights, most likely first.
enum Distribution {
    Greedy(u32),
    Weighted { tokens: Vec<u32>, weights: Vec<f64> },
}

pub(super) struct Reference {
    params: SamplingParams,
    rng: Rng,
    recent: Vec<u32>,
}

impl Reference {
    pub fn new(params: SamplingParams) -> Reference {
        let seed = params.seed.expect("a seeded reference");
        Reference {
            params,
            rng: Rng::new(seed),
            recent: Vec::new(),
        }
    }

    pub fn accept(&mut self, token: u32) {
        self.recent.push(token);
        let keep = self.params.penalty_last_n;
        if self.recent.len() > keep * 2 + 64 {
            self.recent.drain(..self.recent.len() - keep);
        }
    }

    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        match self.distribution(logits) {
            Distribution::Greedy(t) => t,
            Distribution::Weighted { tokens, weights } => {
                let total: f64 = weights.iter().sum();
                self.draw(&tokens, &weights, total)
            }
        }
    }

    pub fn verify(&mut self, logits: &mut [f32], proposed: u32) -> (u32, bool) {
        match self.distribution(logits) {
            Distribution::Greedy(t) => (t, t == proposed),
            Distribution::Weighted {
                tokens,
                mut weights,
            } => {
                let total: f64 = weights.iter().sum();
                if let Some(i) = tokens.iter().position(|&t| t == proposed) {
                    if self.rng.next_f64() * total < weights[i] {
                        return (proposed, true);
                    }
                    weights[i] = 0.0;
                }
                let rest: f64 = weights.iter().sum();
                if rest <= 0.0 {
                    return (proposed, true);
                }
                (self.draw(&tokens, &weights, rest), false)
            }
        }
    }

    fn draw(&mut self, tokens: &[u32], weights: &[f64], total: f64) -> u32 {
        let mut r = self.rng.next_f64() * total;
        for (i, q) in weights.iter().enumerate() {
            r -= q;
            if r < 0.0 && *q > 0.0 {
                return tokens[i];
            }
        }
        let last = weights.iter().rposition(|&q| q > 0.0).unwrap_or(0);
        tokens[last]
    }

    fn distribution(&self, logits: &mut [f32]) -> Distribution {
        let p = &self.params;
        for &(tok, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(tok as usize) {
                *l += bias;
            }
        }
        apply_penalties(p, &self.recent, logits);
        if p.temperature <= 0.0 {
            return Distribution::Greedy(argmax(logits));
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return Distribution::Greedy(argmax(logits));
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit);
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|c| (((c.1 - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        probs.truncate(keep);
        Distribution::Weighted {
            tokens: cand[..keep].iter().map(|c| c.0).collect(),
            weights: probs,
        }
    }
}

/// Logits shaped like a language model's over a vocabulary of `n`: a
/// bell of small values, a handful of strong candidates at varying
/// distances, optionally logits on a coarse grid (ties) and tokens masked
/// out (a grammar's `-inf`).
pub(super) fn model_like_logits(n: usize, seed: u64, ties: bool, masked: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut gauss = || {
        // Box-Muller.
        let (u, v) = (rng.next_f64().max(1e-300), rng.next_f64());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let spread = 1.5 + 2.5 * (seed % 7) as f64 / 6.0;
    let mut logits: Vec<f32> = (0..n).map(|_| (gauss() * spread) as f32).collect();
    let mut rng = Rng::new(seed ^ 0xA5A5);
    let strong = 1 + (seed % 12) as usize;
    let peak = 4.0 + 14.0 * rng.next_f64();
    for j in 0..strong {
        let at = (rng.next_u64() % n as u64) as usize;
        logits[at] = (peak - j as f64 * rng.next_f64() * 3.0) as f32 + 3.0 * spread as f32;
    }
    if ties {
        logits
            .iter_mut()
            .for_each(|l| *l = (*l * 4.0).round() / 4.0);
    }
    if masked > 0.0 {
        for l in logits.iter_mut() {
            if rng.next_f64() < masked {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    logits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Sampler;

    /// A mix of the parameters clients send: OpenAI's defaults
    /// (temperature 1, no top-k, top-p 1), llama.cpp's, and others.
    fn mix(i: u64) -> SamplingParams {
        let mut rng = Rng::new(i.wrapping_mul(0x9E37_79B9));
        let pick = |rng: &mut Rng, xs: &[f32]| xs[(rng.next_u64() % xs.len() as u64) as usize];
        let temperature = pick(&mut rng, &[1.0, 1.0, 0.7, 0.3, 1.5, 2.0, 0.05]);
        let top_k = pick(&mut rng, &[0.0, 0.0, 0.0, 40.0, 1.0, 1000.0]) as usize;
        let top_p = pick(&mut rng, &[1.0, 1.0, 0.95, 0.9, 0.5, 0.0]);
        let min_p = pick(&mut rng, &[0.0, 0.0, 0.05, 0.2, 1.0]);
        let penalties = rng.next_u64().is_multiple_of(4);
        SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: if penalties { 1.1 } else { 1.0 },
            frequency_penalty: if penalties { 0.3 } else { 0.0 },
            presence_penalty: if penalties { 0.2 } else { 0.0 },
            penalty_last_n: 64,
            logit_bias: if rng.next_u64().is_multiple_of(5) {
                vec![(3, 8.0), (17, -100.0)]
            } else {
                Vec::new()
            },
            seed: Some(rng.next_u64()),
        }
    }

    /// The sampler draws exactly what the sorting one drew: 10,400 draws
    /// (samples and speculative verifications, with the penalties' history
    /// growing) over vocabularies from 256 to 151,936 tokens, model-like
    /// logits with ties and masks, and mixes of every filter.
    #[test]
    fn draws_are_exactly_the_sorting_samplers() {
        // (vocabulary, sessions): each session is 26 draws from one mix.
        let plan = [
            (256usize, 120u64),
            (4096, 120),
            (32_000, 80),
            (49_152, 60),
            (151_936, 20),
        ];
        let mut draws = 0;
        let mut session = 0u64;
        for (n, sessions) in plan {
            for _ in 0..sessions {
                session += 1;
                let params = mix(session);
                let (mut new, mut old) =
                    (Sampler::new(params.clone()), Reference::new(params.clone()));
                let ties = session.is_multiple_of(3);
                let masked = if session.is_multiple_of(4) { 0.9 } else { 0.0 };
                let logits = model_like_logits(n, session, ties, masked);
                for step in 0..26u64 {
                    // The same logits drift a little from step to step.
                    let mut row = logits.clone();
                    let at = ((session * 31 + step * 17) % n as u64) as usize;
                    row[at] += step as f32 * 0.5;
                    let (mut a, mut b) = (row.clone(), row);
                    let (got, want) = if step % 3 == 2 {
                        let proposed = ((step * 7919) % n as u64) as u32;
                        let proposed = if step % 2 == 0 { argmax(&a) } else { proposed };
                        (new.verify(&mut a, proposed), old.verify(&mut b, proposed))
                    } else {
                        ((new.sample(&mut a), false), (old.sample(&mut b), false))
                    };
                    assert_eq!(
                        got, want,
                        "session {session} step {step}, vocabulary {n}, {params:?}"
                    );
                    assert_eq!(a, b, "the same penalties and bias applied");
                    new.accept(got.0);
                    old.accept(want.0);
                    draws += 1;
                }
            }
        }
        assert_eq!(draws, 10_400);
    }
}
