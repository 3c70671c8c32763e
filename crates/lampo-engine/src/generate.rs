//! Generating text for one sequence: prefill the prompt, then sample token by
//! token, streaming text as it completes.

use std::time::{Duration, Instant};

use lampo_model::{KvCache, LoadedModel, Logits, ModelError, StreamDecoder};

use crate::sampling::{Sampler, SamplingParams};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
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
            let next = sampler.sample(&mut logits);
            out.push(next);
            sampler.accept(next);
            if tok.is_eog(next) {
                break FinishReason::Stop;
            }
            let text = decoder.push(tok.token_bytes(next));
            if !text.is_empty() && !on_text(&text) {
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
            on_text(&rest);
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
