//! Speculative decoding: cheap proposals for the next tokens, verified by
//! the model in the same forward pass as its next token (k + 1 positions
//! for the price of about one weight read), accepted or replaced by
//! [`crate::Sampler::verify`] so that the output is exactly what plain
//! decoding would give (greedy) or is distributed as it (sampling).
//!
//! Two proposers: prompt lookup (the tokens that followed the latest
//! earlier occurrence of the text's last few tokens: free, and right when
//! the answer repeats its input) and a small draft model sharing the
//! model's vocabulary. Each request adapts how many tokens it proposes to
//! how many get accepted, and turns speculation off when its measured
//! speed with it is below its speed without.

use std::str::FromStr;
use std::time::Duration;

use lampo_model::{KvCache, LoadedModel, Logits, ModelError};

use crate::sampling::argmax;

/// Which proposer requests use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpecMode {
    #[default]
    Off,
    /// Prompt lookup (n-grams of the text so far).
    NGram,
    /// The draft model.
    Draft,
    /// Prompt lookup when the text offers a match, else the draft model
    /// when there is one.
    Auto,
}

impl FromStr for SpecMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SpecMode, String> {
        match s {
            "off" => Ok(SpecMode::Off),
            "ngram" => Ok(SpecMode::NGram),
            "draft" => Ok(SpecMode::Draft),
            "auto" => Ok(SpecMode::Auto),
            other => Err(format!(
                "unknown speculation '{other}' (off, ngram, draft, auto)"
            )),
        }
    }
}

/// Which proposer made a proposal (for the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposer {
    NGram,
    Draft,
}

/// Checks that `draft` can propose tokens for `model`: the same vocabulary,
/// token for token.
pub fn check_draft(model: &LoadedModel, draft: &LoadedModel) -> Result<(), String> {
    let (a, b) = (&model.tokenizer, &draft.tokenizer);
    let (na, nb) = (model.model.config.n_vocab, draft.model.config.n_vocab);
    if a.vocab_size() != b.vocab_size() || na != nb {
        return Err(format!(
            "the draft's vocabulary has {} tokens ({nb} logits), the model's {} ({na})",
            b.vocab_size(),
            a.vocab_size()
        ));
    }
    if let Some(t) = (0..a.vocab_size() as u32).find(|&t| a.token_bytes(t) != b.token_bytes(t)) {
        return Err(format!(
            "the draft's vocabulary differs from the model's at token {t} ({:?} vs {:?})",
            String::from_utf8_lossy(b.token_bytes(t)),
            String::from_utf8_lossy(a.token_bytes(t))
        ));
    }
    Ok(())
}

/// Longest suffix of `tokens` looked up, and shortest.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;

/// Up to `k` tokens that followed the latest earlier occurrence of the
/// longest suffix of `tokens` (from `NGRAM_MAX` down to `NGRAM_MIN` tokens)
/// found earlier in `tokens`.
pub fn ngram_proposal(tokens: &[u32], k: usize) -> Vec<u32> {
    let len = tokens.len();
    for n in (NGRAM_MIN..=NGRAM_MAX.min(len.saturating_sub(1))).rev() {
        let suffix = &tokens[len - n..];
        // Latest occurrence that ends before the suffix itself.
        if let Some(start) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = start + n;
            let end = (from + k).min(len);
            if from < end {
                return tokens[from..end].to_vec();
            }
        }
    }
    Vec::new()
}

/// A request's copy of the draft model's cache.
pub struct DraftState {
    kv: KvCache,
}

impl DraftState {
    pub fn new(draft: &LoadedModel, n_ctx: usize) -> DraftState {
        DraftState {
            kv: KvCache::new(&draft.model.config, n_ctx),
        }
    }

    /// Tokens of `tokens` the draft has not seen yet (the whole prompt at
    /// first): what the next proposal computes before proposing.
    pub fn behind(&self, tokens: &[u32]) -> usize {
        tokens.len() - self.kv.len().min(tokens.len())
    }

    /// The draft's greedy continuation of `tokens`, `k` tokens long (fewer
    /// near the end of the context). Positions it already holds are not
    /// recomputed.
    pub fn propose(
        &mut self,
        draft: &LoadedModel,
        tokens: &[u32],
        k: usize,
    ) -> Result<Vec<u32>, ModelError> {
        let k = k.min(self.kv.capacity().saturating_sub(tokens.len()));
        let mut out = Vec::with_capacity(k);
        if k == 0 {
            return Ok(out);
        }
        self.kv.truncate(tokens.len().saturating_sub(1));
        let held = self.kv.len();
        let mut logits = draft
            .model
            .forward(&tokens[held..], &mut self.kv, Logits::Last)?;
        loop {
            let next = argmax(&logits);
            out.push(next);
            if out.len() == k {
                return Ok(out);
            }
            logits = draft.model.forward(&[next], &mut self.kv, Logits::Last)?;
        }
    }

    /// Keeps the first `valid` positions (the tokens accepted).
    pub fn rollback(&mut self, valid: usize) {
        self.kv.truncate(valid);
    }
}

/// One request's speculation: its proposer state, how many tokens each
/// proposer offers, and the measurements that decide whether to speculate.
pub struct Speculator {
    pub mode: SpecMode,
    pub draft: Option<DraftState>,
    ngram: Length,
    drafted: Length,
    /// Seconds per generated token with speculation and without (moving
    /// averages of whole steps, draft time included).
    with: Rate,
    without: Rate,
    /// Steps left in the current trial of plain decoding.
    plain_steps: usize,
    steps: usize,
}

/// How many tokens a proposer offers, from how many it got accepted.
#[derive(Clone, Copy)]
struct Length {
    k: usize,
    max_k: usize,
    /// Share of proposed tokens accepted (moving average).
    acceptance: f64,
}

impl Length {
    fn new(max_k: usize) -> Length {
        Length {
            k: max_k.min(4),
            max_k,
            acceptance: 0.7,
        }
    }

    fn record(&mut self, proposed: usize, accepted: usize) {
        let rate = accepted as f64 / proposed as f64;
        self.acceptance = 0.7 * self.acceptance + 0.3 * rate;
        self.k = if accepted == proposed {
            // All accepted: a long run is likely going on (copied text).
            (self.k * 2).min(self.max_k)
        } else {
            // Propose as far as a proposal is still likely to survive: the
            // chance that all of k tokens are accepted stays above a quarter.
            let a = self.acceptance.clamp(0.05, 0.97);
            ((0.25f64.ln() / a.ln()).floor() as usize).clamp(1, self.max_k)
        };
    }
}

#[derive(Clone, Copy, Default)]
struct Rate {
    seconds_per_token: Option<f64>,
    steps: usize,
}

impl Rate {
    fn add(&mut self, seconds: f64, tokens: usize) {
        let s = seconds / tokens.max(1) as f64;
        self.steps += 1;
        self.seconds_per_token = Some(match self.seconds_per_token {
            Some(old) => 0.8 * old + 0.2 * s,
            None => s,
        });
    }
}

/// A request's first steps decode plainly, and every this many steps it
/// measures plain decoding again for a few steps, so that speculation
/// is judged against a fresh baseline as the load and the text change.
const RETRIAL_EVERY: usize = 32;
const TRIAL_STEPS: usize = 3;
/// Steps with speculation measured before it can be judged slower.
const MIN_STEPS: usize = 4;
/// Most tokens the draft model proposes per step: each costs a draft
/// forward pass, unlike a prompt-lookup proposal.
const DRAFT_MAX: usize = 8;

impl Speculator {
    pub fn new(mode: SpecMode, draft: Option<DraftState>, max_k: usize) -> Speculator {
        Speculator {
            mode,
            draft,
            ngram: Length::new(max_k),
            drafted: Length::new(max_k.min(DRAFT_MAX)),
            with: Rate::default(),
            without: Rate::default(),
            plain_steps: TRIAL_STEPS,
            steps: 0,
        }
    }

    /// Whether this step should speculate at all.
    pub fn active(&mut self) -> bool {
        self.steps += 1;
        if self.plain_steps > 0 {
            self.plain_steps -= 1;
            return false;
        }
        if self.steps.is_multiple_of(RETRIAL_EVERY) {
            self.plain_steps = TRIAL_STEPS - 1;
            return false;
        }
        // Off while plain decoding has measured faster (over enough steps
        // of each), until the next trial.
        if self.with.steps >= MIN_STEPS
            && self.without.steps >= TRIAL_STEPS
            && let (Some(w), Some(p)) =
                (self.with.seconds_per_token, self.without.seconds_per_token)
            && w > p * 1.02
            && !self.steps.is_multiple_of(RETRIAL_EVERY / 2)
        {
            return false;
        }
        true
    }

    /// How many tokens `proposer` should propose now.
    pub fn length(&self, proposer: Proposer) -> usize {
        match proposer {
            Proposer::NGram => self.ngram.k,
            Proposer::Draft => self.drafted.k,
        }
    }

    /// Records a step without a proposal: one token in `time`.
    pub fn record_plain(&mut self, time: Duration) {
        self.without.add(time.as_secs_f64(), 1);
    }

    /// Records a step in which `proposer` proposed `proposed` tokens and
    /// `accepted` were, `produced` tokens generated, in `time` (the whole
    /// step, proposal included; `None` for a step whose time says nothing
    /// about speculation's speed, such as the draft's first reading of the
    /// prompt).
    pub fn record(
        &mut self,
        proposer: Proposer,
        proposed: usize,
        accepted: usize,
        produced: usize,
        time: Option<Duration>,
    ) {
        if let Some(time) = time {
            self.with.add(time.as_secs_f64(), produced);
        }
        match proposer {
            Proposer::NGram => self.ngram.record(proposed, accepted),
            Proposer::Draft => self.drafted.record(proposed, accepted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_lookup_proposes_what_followed_the_latest_match() {
        let t = [1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 8, 2, 3, 4];
        // "2 3 4" last occurred before at 6..9, followed by 7, 8, 2.
        assert_eq!(ngram_proposal(&t, 3), [7, 8, 2]);
        assert_eq!(ngram_proposal(&t, 1), [7]);
        // No earlier occurrence of any suffix of two or more tokens.
        assert!(ngram_proposal(&[1, 2, 3, 4], 4).is_empty());
        // Proposals stop at the end of the text.
        assert_eq!(ngram_proposal(&[5, 6, 5, 6], 4), [5, 6]);
        assert!(ngram_proposal(&[], 4).is_empty());
    }

    #[test]
    fn proposals_grow_with_acceptance_and_stop_when_slower() {
        let mut s = Speculator::new(SpecMode::Auto, None, 16);
        // The first steps measure plain decoding.
        assert!((0..TRIAL_STEPS).all(|_| !s.active()));
        assert!(s.active());
        let ms = Duration::from_millis;
        for _ in 0..6 {
            let k = s.length(Proposer::NGram);
            s.record(Proposer::NGram, k, k, k + 1, Some(ms(10)));
        }
        assert_eq!(s.length(Proposer::NGram), 16, "all accepted: the longest");
        assert_eq!(s.length(Proposer::Draft), 4, "each proposer adapts alone");
        for _ in 0..8 {
            s.record(Proposer::Draft, 8, 8, 9, Some(ms(10)));
        }
        assert_eq!(s.length(Proposer::Draft), DRAFT_MAX);
        for _ in 0..20 {
            s.record(Proposer::NGram, 4, 0, 1, Some(ms(10)));
        }
        assert_eq!(s.length(Proposer::NGram), 1, "none accepted: the shortest");
        // Plain steps measure faster: speculation pauses.
        for _ in 0..TRIAL_STEPS {
            s.record_plain(ms(5));
        }
        let on = (0..32).filter(|_| s.active()).count();
        assert!(on <= 2, "speculated {on} of 32 steps while slower");
    }
}
