//! Speculative decoding: cheap proposals for the next tokens, verified by
//! the model in the same forward pass as its next token (k + 1 positions
//! for the price of about one weight read), accepted or replaced by
//! [`crate::Sampler::verify`] so that the output is exactly what plain
//! decoding would give (greedy) or is distributed as it (sampling).
//!
//! Two proposers: prompt lookup (the tokens that followed the earlier
//! place matching the text's end longest: free, and right when the answer
//! repeats its input) and a small draft model sharing the model's
//! vocabulary. Each request sizes its proposals from what it measures
//! (acceptance, step and draft costs), down to none when plain decoding is
//! expected to be as fast.

use std::str::FromStr;
use std::time::Duration;

use lampo_kernels::Backend;
use lampo_model::LoadedModel;

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
pub fn check_draft<B: Backend>(
    model: &LoadedModel<B>,
    draft: &LoadedModel<B>,
) -> Result<(), String> {
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

/// Fewest tokens a match of the text's end must have to propose.
const NGRAM_MIN: usize = 2;
/// Matches are compared this far back at most.
const MATCH_MAX: usize = 64;

/// Up to `k` tokens that followed the earlier place in `tokens` whose
/// preceding tokens match the end of `tokens` longest (at least
/// `NGRAM_MIN`; the latest among equally long matches). The longest match
/// is the place being copied: in an edited function, the line of the
/// original rather than a similar line just written.
pub fn ngram_proposal(tokens: &[u32], k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || len <= NGRAM_MIN {
        return Vec::new();
    }
    let tail = &tokens[len - NGRAM_MIN..];
    // (match length, where the continuation starts)
    let mut best = (0, 0);
    for end in (NGRAM_MIN..len).rev() {
        if tokens[end - NGRAM_MIN..end] != *tail {
            continue;
        }
        let longest = MATCH_MAX.min(end);
        let m = (NGRAM_MIN..longest)
            .find(|&m| tokens[end - m - 1] != tokens[len - m - 1])
            .unwrap_or(longest);
        if m > best.0 {
            best = (m, end);
        }
    }
    if best.0 == 0 {
        return Vec::new();
    }
    let from = best.1;
    tokens[from..(from + k).min(len)].to_vec()
}

/// One request's speculation: its proposer state and the measurements
/// that choose each step's proposal length. A proposal of k tokens, each
/// accepted with probability a, yields 1 + a + ... + a^k tokens on average
/// for a step that costs the plain step plus k times (the verification of
/// one more position + proposing one token); the length chosen is the one
/// that yields most tokens per second, and none when plain decoding does.
pub struct Speculator {
    pub mode: SpecMode,
    ngram: Proposals,
    drafted: Proposals,
    /// Seconds of a step without a proposal (moving average).
    plain: Option<f64>,
    /// Seconds each verified proposal token adds to a step (moving average).
    per_position: Option<f64>,
    /// Steps left in the current run of plain decoding.
    plain_steps: usize,
    steps: usize,
    /// Always propose the most tokens (no cost model).
    fixed: bool,
}

/// What a proposer's tokens are worth: how often they are accepted and
/// what each costs to propose.
#[derive(Clone, Copy)]
struct Proposals {
    max_k: usize,
    /// Proposed tokens accepted, and proposals cut short by a rejection
    /// (counts that decay, so the estimate follows the text).
    accepted: f64,
    rejected: f64,
    /// Seconds proposing one token takes (moving average; `None`: free).
    cost: Option<f64>,
}

impl Proposals {
    fn new(max_k: usize, prior_acceptance: f64) -> Proposals {
        Proposals {
            max_k,
            accepted: 4.0 * prior_acceptance,
            rejected: 4.0 * (1.0 - prior_acceptance),
            cost: None,
        }
    }

    /// Chance that a proposed token is accepted, given its predecessors were.
    fn acceptance(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    fn record(&mut self, proposed: usize, accepted: usize) {
        self.accepted = DECAY * self.accepted + accepted as f64;
        self.rejected = DECAY * self.rejected + if accepted < proposed { 1.0 } else { 0.0 };
    }
}

/// How fast the acceptance counts forget (per proposal).
const DECAY: f64 = 0.85;

fn average(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| 0.8 * o + 0.2 * new)
}

/// A request's first steps decode plainly (measuring the plain step), and
/// every this many steps it does so again, since the load changes it.
const RETRIAL_EVERY: usize = 32;
const TRIAL_STEPS: usize = 2;
/// Every this many steps without speculating, a short proposal probes
/// whether the acceptance has changed.
const PROBE_EVERY: usize = 16;
const PROBE_K: usize = 2;
/// Most tokens the draft model proposes per step.
pub const DRAFT_MAX: usize = 8;
/// Speculate only when it is expected to be at least this much faster.
const MARGIN: f64 = 1.03;
/// Before measuring: what verifying one more position, and the draft
/// proposing one token, cost against a plain step.
const PRIOR_PER_POSITION: f64 = 0.2;
const PRIOR_DRAFT_TOKEN: f64 = 0.35;

impl Speculator {
    pub fn new(mode: SpecMode, max_k: usize) -> Speculator {
        Speculator {
            mode,
            ngram: Proposals::new(max_k, 0.6),
            drafted: Proposals::new(max_k.min(DRAFT_MAX), 0.7),
            plain: None,
            per_position: None,
            plain_steps: TRIAL_STEPS,
            steps: 0,
            fixed: false,
        }
    }

    /// A speculator that proposes as many tokens as it may every step.
    pub fn fixed(mut self) -> Speculator {
        self.fixed = true;
        self.plain_steps = 0;
        self
    }

    /// Whether this step may speculate (not a plain-decoding trial step).
    pub fn active(&mut self) -> bool {
        self.steps += 1;
        if self.fixed {
            return true;
        }
        if self.plain_steps > 0 {
            self.plain_steps -= 1;
            return false;
        }
        if self.steps.is_multiple_of(RETRIAL_EVERY) {
            self.plain_steps = TRIAL_STEPS - 1;
            return false;
        }
        self.plain.is_some()
    }

    /// How many tokens `proposer` should propose now: the length expected
    /// to give the most tokens per second, 0 when plain decoding is
    /// expected to be as fast (then, now and again, a short probe).
    pub fn length(&self, proposer: Proposer) -> usize {
        if self.fixed {
            return match proposer {
                Proposer::NGram => self.ngram.max_k,
                Proposer::Draft => self.drafted.max_k,
            };
        }
        let Some(t0) = self.plain else {
            return 0;
        };
        let p = match proposer {
            Proposer::NGram => &self.ngram,
            Proposer::Draft => &self.drafted,
        };
        let prior_cost = match proposer {
            Proposer::NGram => 0.0,
            Proposer::Draft => PRIOR_DRAFT_TOKEN * t0,
        };
        let per_token =
            self.per_position.unwrap_or(PRIOR_PER_POSITION * t0) + p.cost.unwrap_or(prior_cost);
        let a = p.acceptance();
        let (mut expected, mut chain) = (1.0, 1.0);
        let (mut best, mut best_k) = (MARGIN / t0, 0);
        for k in 1..=p.max_k {
            chain *= a;
            expected += chain;
            let rate = expected / (t0 + k as f64 * per_token);
            if rate > best {
                (best, best_k) = (rate, k);
            }
        }
        if best_k == 0 && self.steps > 0 && self.steps.is_multiple_of(PROBE_EVERY) {
            return PROBE_K.min(p.max_k);
        }
        best_k
    }

    /// Records a step without a proposal, which took `time`.
    pub fn record_plain(&mut self, time: Duration) {
        self.plain = Some(average(self.plain, time.as_secs_f64()));
    }

    /// Records a step in which `proposer` proposed `proposed` tokens and
    /// `accepted` were: proposing took `propose_time` (`None` when that
    /// time says nothing about proposing, such as the draft's first
    /// reading of the prompt) and the step `step_time`.
    pub fn record(
        &mut self,
        proposer: Proposer,
        proposed: usize,
        accepted: usize,
        propose_time: Option<Duration>,
        step_time: Duration,
    ) {
        let p = match proposer {
            Proposer::NGram => &mut self.ngram,
            Proposer::Draft => &mut self.drafted,
        };
        p.record(proposed, accepted);
        if proposer == Proposer::Draft
            && let Some(t) = propose_time
        {
            p.cost = Some(average(p.cost, t.as_secs_f64() / proposed as f64));
        }
        if let Some(t0) = self.plain {
            let extra = (step_time.as_secs_f64() - t0).max(0.0) / proposed as f64;
            self.per_position = Some(average(self.per_position, extra));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_lookup_proposes_what_followed_the_longest_match() {
        let t = [1, 2, 3, 4, 5, 9, 2, 3, 4, 7, 8, 2, 3, 4];
        // "2 3 4" matched thrice; the latest earlier one (6..9) and the
        // first (1..4) match equally far back: the latest wins.
        assert_eq!(ngram_proposal(&t, 3), [7, 8, 2]);
        assert_eq!(ngram_proposal(&t, 1), [7]);
        // A longer match further back beats a short recent one: the text
        // copies "a b c d" and has just written "x c d".
        let copy = [
            10, 11, 12, 13, 14, 15, 0, 11, 12, 13, 1, 2, 0, 7, 12, 13, 3, 10, 11, 12, 13,
        ];
        assert_eq!(ngram_proposal(&copy, 2), [14, 15]);
        // No earlier occurrence of the last two tokens.
        assert!(ngram_proposal(&[1, 2, 3, 4], 4).is_empty());
        // Proposals stop at the end of the text.
        assert_eq!(ngram_proposal(&[5, 6, 5, 6], 4), [5, 6]);
        assert!(ngram_proposal(&[], 4).is_empty());
        assert!(ngram_proposal(&t, 0).is_empty());
    }

    #[test]
    fn proposal_lengths_follow_acceptance_and_cost() {
        let ms = Duration::from_millis;
        let mut s = Speculator::new(SpecMode::Auto, 16);
        // The first steps measure plain decoding.
        assert!((0..TRIAL_STEPS).all(|_| !s.active()));
        assert_eq!(s.length(Proposer::NGram), 0, "no plain step measured yet");
        s.record_plain(ms(30));
        assert!(s.active());
        // Prompt lookup accepted in full, verification cheap: the longest.
        for _ in 0..10 {
            let k = s.length(Proposer::NGram).max(1);
            s.record(Proposer::NGram, k, k, None, ms(30) + ms(2) * k as u32);
        }
        assert_eq!(s.length(Proposer::NGram), 16);
        // Each proposer is judged alone; the draft's tokens cost time.
        let k_draft = s.length(Proposer::Draft);
        assert!((1..=DRAFT_MAX).contains(&k_draft), "{k_draft}");
        // Half of each proposal accepted: short proposals.
        for _ in 0..20 {
            s.record(Proposer::Draft, 4, 2, Some(ms(40)), ms(38));
        }
        let k = s.length(Proposer::Draft);
        assert!(k <= 1, "draft at half acceptance and 10 ms a token: {k}");
        // Prompt lookup no longer accepted: no proposals but the periodic probe.
        for _ in 0..40 {
            s.record(Proposer::NGram, 4, 0, None, ms(38));
        }
        let proposing = (0..64)
            .filter(|_| s.active() && s.length(Proposer::NGram) > 0)
            .count();
        assert!(
            proposing <= 4,
            "proposed in {proposing} of 64 steps while useless"
        );
    }

    #[test]
    fn a_fixed_speculator_always_proposes_the_most() {
        let mut s = Speculator::new(SpecMode::Auto, 16).fixed();
        assert!(s.active(), "no plain steps first");
        assert_eq!(s.length(Proposer::NGram), 16);
        assert_eq!(s.length(Proposer::Draft), DRAFT_MAX);
        for _ in 0..40 {
            s.record(Proposer::NGram, 16, 0, None, Duration::from_millis(100));
        }
        assert!(s.active() && s.length(Proposer::NGram) == 16);
    }

    #[test]
    fn costly_verification_shortens_proposals() {
        let ms = Duration::from_millis;
        let lengths: Vec<usize> = [1u64, 6, 40]
            .iter()
            .map(|&per_position| {
                let mut s = Speculator::new(SpecMode::NGram, 16);
                s.record_plain(ms(30));
                for _ in 0..10 {
                    // Eight of every ten proposed tokens accepted.
                    s.record(Proposer::NGram, 10, 8, None, ms(30) + ms(per_position) * 10);
                }
                s.length(Proposer::NGram)
            })
            .collect();
        assert!(
            lengths[0] > lengths[1] && lengths[1] > lengths[2],
            "{lengths:?}"
        );
        assert_eq!(
            lengths[2], 0,
            "verification dearer than it saves: {lengths:?}"
        );
    }
}
