//! Generating text for one sequence: prefill the prompt, then sample token by
//! token, streaming text as it completes.

use std::time::{Duration, Instant};

use lampo_model::{KvCache, LoadedModel, Logits, ModelError, StreamDecoder};

use crate::sampling::{Sampler, SamplingParams};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Report each generated token's log-probability and this many most
    /// likely alternatives (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

/// A generated token's log-probability under the model (before sampling
/// settings reshape the distribution), with the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
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

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// Prompt tokens evaluated now (less than the prompt when a prefix was cached).
    pub prompt_evaluated: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// One sequence's state: the tokens in its KV cache.
pub struct Session<'m> {
    lm: &'m LoadedModel,
    kv: KvCache,
    /// Tokens whose keys and values are in `kv`, in order.
    cached: Vec<u32>,
}

impl<'m> Session<'m> {
    /// A session with room for `n_ctx` positions.
    pub fn new(lm: &'m LoadedModel, n_ctx: usize) -> Session<'m> {
        Session {
            lm,
            kv: KvCache::new(&lm.model.config, n_ctx),
            cached: Vec::new(),
        }
    }

    /// Tokens whose keys and values the session holds.
    pub fn cached_tokens(&self) -> usize {
        self.cached.len()
    }

    /// Generates a continuation of `prompt`, calling `on_text` with each
    /// complete piece of text; returning `false` from it stops generation.
    /// Whatever prefix of `prompt` is already cached is not recomputed.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation, ModelError> {
        self.generate_tokens(prompt, params, |text, _| text.is_empty() || on_text(text))
    }

    /// As `generate`, calling `on_token` once per generated token (but the
    /// end-of-generation one) with the text it completes (empty while a
    /// character is still incomplete) and, if asked for, its
    /// log-probabilities; a last call may carry leftover text alone.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(&str, Option<TokenLogprob>) -> bool,
    ) -> Result<Generation, ModelError> {
        let tok = &self.lm.tokenizer;
        if prompt.is_empty() {
            return Err(ModelError::Config("the prompt is empty".into()));
        }
        if prompt.len() >= self.kv.capacity() {
            return Err(ModelError::ContextFull {
                needed: prompt.len() + 1,
                capacity: self.kv.capacity(),
            });
        }
        // Reuse the common prefix, but always evaluate at least the last prompt
        // token: its logits choose the first new token.
        let common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.kv.truncate(common);
        self.cached.truncate(common);

        let mut sampler = Sampler::new(params.sampling.clone());
        for &t in prompt {
            sampler.accept(t);
        }

        let start = Instant::now();
        let mut logits = self
            .lm
            .model
            .forward(&prompt[common..], &mut self.kv, Logits::Last)?;
        self.cached.extend_from_slice(&prompt[common..]);
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut out = Vec::new();
        let mut decoder = StreamDecoder::new();
        let finish = loop {
            if out.len() >= params.max_tokens {
                break FinishReason::Length;
            }
            // The sampler reshapes logits in place: keep the model's own.
            let raw = params.logprobs.map(|_| logits.clone());
            let next = sampler.sample(&mut logits);
            out.push(next);
            sampler.accept(next);
            if tok.is_eog(next) {
                break FinishReason::Stop;
            }
            let lp = raw.map(|raw| logprobs_of(&raw, next, params.logprobs.unwrap_or(0)));
            let text = decoder.push(tok.token_bytes(next));
            if !on_token(&text, lp) {
                break FinishReason::Cancelled;
            }
            if out.len() >= params.max_tokens || self.kv.len() + 1 > self.kv.capacity() {
                break FinishReason::Length;
            }
            logits = self.lm.model.forward(&[next], &mut self.kv, Logits::Last)?;
            self.cached.push(next);
        };
        let rest = decoder.finish();
        if !rest.is_empty() {
            on_token(&rest, None);
        }
        Ok(Generation {
            tokens: out,
            finish,
            prompt_evaluated: prompt.len() - common,
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
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
}
