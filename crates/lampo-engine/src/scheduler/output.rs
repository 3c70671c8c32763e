//! The output stage: everything a request does with its logits and its
//! client. Sampling (masked by its grammar), verifying proposed tokens,
//! turning tokens into text (whole characters, stop strings held back and
//! cut, log-probabilities released with their text), and delivering
//! events to its sink, which may be gone (the client left) or may panic
//! (the request then ends with an error, alone).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use lampo_model::{StreamDecoder, Tokenizer};

use crate::masker::{Masker, Ready};
use crate::request::{Done, Event, Finish, GenerateParams, Request, Sink, TokenLogprob};
use crate::sampling::{Sampler, logprobs_of};
use crate::speculate::Speculator;
use crate::stops::StopMatcher;

/// What one request of a step does with its logits: sample its next
/// token, verify a proposal, or nothing (a prompt chunk that is not its
/// last). Filled in by [`choose`].
pub(crate) struct Choice {
    pub logits: Vec<f32>,
    pub proposal: Option<Vec<u32>>,
    pub sample: bool,
    /// The tokens delivered and, for a proposal, how many were accepted.
    pub delivered: Vec<u32>,
    pub accepted: usize,
}

/// Samples or verifies, and delivers, each request's next tokens
/// (`work`: a stream with its choice). A draw at a temperature costs
/// passes over the whole vocabulary, so when several requests sample
/// they are spread over threads (the forward pass's threads are idle
/// now); each request's tokens depend only on its own sampler, so the
/// result is the same however they are spread.
pub(crate) fn choose(
    work: Vec<(&mut Stream, &mut Choice)>,
    tok: &Tokenizer,
    n_ctx: usize,
    n_vocab: usize,
) {
    let costly = work
        .iter()
        .filter(|(s, c)| c.sample && s.sampler.params().temperature > 0.0)
        .count();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(costly);
    let one =
        |(stream, choice): (&mut Stream, &mut Choice)| stream.choose(choice, tok, n_ctx, n_vocab);
    if threads < 2 {
        work.into_iter().for_each(one);
        return;
    }
    // Costly draws dealt round the threads; the rest stay on this one.
    let mut shares: Vec<Vec<(&mut Stream, &mut Choice)>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut next = 0;
    for (stream, choice) in work {
        if choice.sample && stream.sampler.params().temperature > 0.0 {
            shares[next % threads].push((stream, choice));
            next += 1;
        } else {
            shares[0].push((stream, choice));
        }
    }
    let mut shares = shares.into_iter();
    let here = shares.next().expect("a share");
    std::thread::scope(|scope| {
        for share in shares {
            scope.spawn(move || share.into_iter().for_each(one));
        }
        here.into_iter().for_each(one);
    });
}

/// A request's client side.
pub(crate) struct Stream {
    sink: Box<dyn Sink>,
    /// When it must end, on the engine's clock.
    pub deadline: Option<Duration>,
    /// When its first token is due, on the engine's clock.
    first_deadline: Option<Duration>,
    pub params: GenerateParams,
    sampler: Sampler,
    text: Text,
    pub n_prompt: usize,
    pub generated: usize,
    started: bool,
    /// Set when the request has ended; it leaves at the end of the step.
    pub finish: Option<Finish>,
    /// Speculative decoding, when on.
    pub spec: Option<Speculator>,
    /// The grammar the output must follow, if any.
    constraint: Option<Masker>,
}

impl Stream {
    pub fn new(
        request: Request,
        sink: Box<dyn Sink>,
        deadline: Option<Duration>,
        first_deadline: Option<Duration>,
        spec: Option<Speculator>,
    ) -> Stream {
        let mut sampler = Sampler::new(request.params.sampling.clone());
        for &t in &request.prompt {
            sampler.accept(t);
        }
        Stream {
            sink,
            deadline,
            first_deadline,
            params: request.params,
            sampler,
            text: Text::new(&request.stop),
            n_prompt: request.prompt.len(),
            generated: 0,
            started: false,
            finish: None,
            // Proposals are not checked against grammars: constrained
            // requests decode plainly.
            spec: if request.constraint.is_none() {
                spec
            } else {
                None
            },
            constraint: request.constraint.map(Masker::new),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }

    /// Whether at `now` its time is up, or its first token is overdue.
    pub fn overdue(&self, now: Duration) -> bool {
        self.deadline.is_some_and(|d| now >= d)
            || (self.generated == 0 && self.first_deadline.is_some_and(|d| now >= d))
    }

    /// Tells the client its request left the queue (once, however often
    /// it is preempted and admitted again).
    pub fn start(&mut self) {
        if !self.started {
            self.started = true;
            if !self.deliver(Event::Started) {
                self.finish.get_or_insert(Finish::Cancelled);
            }
        }
    }

    /// Whether the request's logits may be sampled now: yes, unless its
    /// grammar's next mask is still being computed. A grammar that has
    /// completed or failed ends the request here.
    pub fn may_sample(&mut self) -> bool {
        let Some(m) = self.constraint.as_mut() else {
            return true;
        };
        match m.poll() {
            Ready::Mask(_) => true,
            Ready::Pending => false,
            Ready::Done => {
                self.finish = Some(Finish::Stop);
                false
            }
            Ready::Failed(e) => {
                self.finish = Some(Finish::Invalid(format!(
                    "the output constraint failed: {e}"
                )));
                false
            }
        }
    }

    /// Waits up to `limit` for this request's grammar, if it is working.
    pub fn wait_for_grammar(&mut self, limit: Duration) -> bool {
        self.constraint.as_mut().is_some_and(|m| m.wait(limit))
    }

    pub fn has_grammar(&self) -> bool {
        self.constraint.is_some()
    }

    /// Room for proposed tokens: within the context (`n_ctx`) and the
    /// answer's length, leaving the token after them.
    pub fn proposal_room(&self, n_ctx: usize) -> usize {
        let len = self.n_prompt + self.generated;
        n_ctx
            .saturating_sub(len + 1)
            .min(self.params.max_tokens.saturating_sub(self.generated + 1))
    }

    /// Does what `choice` asks with its logits (see [`choose`]).
    fn choose(&mut self, choice: &mut Choice, tok: &Tokenizer, n_ctx: usize, n_vocab: usize) {
        let logits = std::mem::take(&mut choice.logits);
        if let Some(proposal) = &choice.proposal {
            (choice.delivered, choice.accepted) =
                self.verify(tok, n_ctx, n_vocab, proposal, &logits);
        } else if choice.sample {
            choice.delivered.extend(self.sample(tok, n_ctx, logits));
        }
    }

    /// Samples the token after the last computed position and delivers
    /// it; returns it, unless the request failed before choosing one.
    pub fn sample(&mut self, tok: &Tokenizer, n_ctx: usize, mut logits: Vec<f32>) -> Option<u32> {
        // The sampler reshapes logits in place: keep the model's own.
        let raw = self.params.logprobs.map(|_| logits.clone());
        if let Some(c) = self.constraint.as_mut()
            && let Err(e) = c.apply(&mut logits)
        {
            self.finish = Some(Finish::Invalid(format!(
                "the output constraint failed: {e}"
            )));
            return None;
        }
        let next = self.sampler.sample(&mut logits);
        self.deliver_token(tok, n_ctx, next, raw);
        Some(next)
    }

    /// Checks `proposal` against the model's logits at each of its
    /// positions (`logits`: the last computed token's and each proposed
    /// token's, `n_vocab` each), delivering the accepted tokens and then
    /// the model's own next one. Returns the tokens delivered and how
    /// many proposed ones were accepted.
    pub fn verify(
        &mut self,
        tok: &Tokenizer,
        n_ctx: usize,
        n_vocab: usize,
        proposal: &[u32],
        logits: &[f32],
    ) -> (Vec<u32>, usize) {
        let mut delivered = Vec::new();
        let mut accepted = 0;
        for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
            let mut row = row.to_vec();
            let raw = self.params.logprobs.map(|_| row.clone());
            let (token, ok) = match proposal.get(i) {
                Some(&d) => self.sampler.verify(&mut row, d),
                None => (self.sampler.sample(&mut row), false),
            };
            self.deliver_token(tok, n_ctx, token, raw);
            delivered.push(token);
            if self.finish.is_some() || !ok {
                break;
            }
            accepted += 1;
        }
        (delivered, accepted)
    }

    /// Counts `next` as generated and delivers its text (with its
    /// log-probabilities from `raw`, the model's logits), setting `finish`
    /// when the request is done.
    fn deliver_token(&mut self, tok: &Tokenizer, n_ctx: usize, next: u32, raw: Option<Vec<f32>>) {
        self.sampler.accept(next);
        self.generated += 1;
        if let Some(c) = self.constraint.as_mut()
            && let Err(e) = c.commit(next)
        {
            self.finish = Some(Finish::Invalid(format!(
                "the output constraint failed: {e}"
            )));
            return;
        }
        if tok.is_eog(next) {
            self.finish = Some(Finish::Stop);
            return;
        }
        let lp = raw.map(|raw| logprobs_of(&raw, next, self.params.logprobs.unwrap_or(0)));
        let text = self.text.decoder.push(tok.token_bytes(next));
        if let Some(event) = self.text.push(&text, lp)
            && !self.deliver(event)
        {
            self.finish.get_or_insert(Finish::Cancelled);
            return;
        }
        if self.text.hit_stop {
            self.finish = Some(Finish::Stop);
        } else if self.generated >= self.params.max_tokens || self.n_prompt + self.generated > n_ctx
        {
            self.finish = Some(Finish::Length);
        }
    }

    /// Sends the request's last text and its `Done` (nothing to a client
    /// that left).
    pub fn end(&mut self) {
        let mut finish = self.finish.clone().unwrap_or(Finish::Cancelled);
        if finish == Finish::Cancelled {
            return;
        }
        if !matches!(finish, Finish::Error(_) | Finish::Invalid(_)) && !self.text.hit_stop {
            let rest = self.text.decoder.finish();
            let last = self.text.flush(&rest);
            if self.text.hit_stop {
                finish = Finish::Stop;
            }
            if let Some(event) = last
                && !self.deliver(event)
            {
                return;
            }
        }
        let done = Done {
            finish,
            prompt_tokens: self.n_prompt,
            completion_tokens: self.generated,
        };
        self.deliver(Event::Done(done));
    }

    /// Delivers an event; a sink that panics ends its request with an
    /// error (which it is told, if it still listens).
    fn deliver(&mut self, event: Event) -> bool {
        let is_done = matches!(event, Event::Done(_));
        match catch_unwind(AssertUnwindSafe(|| self.sink.send(event))) {
            Ok(open) => open,
            Err(panic) if !is_done => {
                let why = format!("the engine failed: {}", panic_message(&panic));
                self.finish = Some(Finish::Error(why.clone()));
                let done = Done {
                    finish: Finish::Error(why),
                    prompt_tokens: self.n_prompt,
                    completion_tokens: self.generated,
                };
                let _ = catch_unwind(AssertUnwindSafe(|| self.sink.send(Event::Done(done))));
                // Told already: `end` must not tell it again.
                self.sink = Box::new(|_: Event| false);
                false
            }
            Err(_) => false,
        }
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A request's text on its way out: bytes to characters, stop strings
/// held back and cut, log-probabilities released with the text of their
/// token.
struct Text {
    decoder: StreamDecoder,
    stops: StopMatcher,
    /// Log-probabilities waiting for their text, keyed by the byte offset
    /// where their token's text begins.
    pending: VecDeque<(usize, TokenLogprob)>,
    generated: usize,
    emitted: usize,
    hit_stop: bool,
}

impl Text {
    fn new(stop: &[String]) -> Text {
        Text {
            decoder: StreamDecoder::new(),
            stops: StopMatcher::new(stop),
            pending: VecDeque::new(),
            generated: 0,
            emitted: 0,
            hit_stop: false,
        }
    }

    /// Adds a token's text (and log-probability); returns the text event
    /// to send now, if any.
    fn push(&mut self, text: &str, lp: Option<TokenLogprob>) -> Option<Event> {
        if let Some(lp) = lp {
            self.pending.push_back((self.generated, lp));
        }
        self.generated += text.len();
        let (emit, hit) = self.stops.push(text);
        self.hit_stop = hit;
        if emit.is_empty() {
            return None;
        }
        self.emitted += emit.len();
        let logprobs = self.release(self.emitted);
        Some(Event::Text {
            text: emit,
            logprobs,
        })
    }

    /// The last event when generation ends without a stop string: text
    /// still held back (and `rest`, the decoder's leftover), with every
    /// log-probability not yet sent.
    fn flush(&mut self, rest: &str) -> Option<Event> {
        let (mut text, hit) = self.stops.push(rest);
        if hit {
            self.hit_stop = true;
        } else {
            text.push_str(&self.stops.finish());
        }
        let logprobs = self.release(usize::MAX);
        (!text.is_empty() || !logprobs.is_empty()).then_some(Event::Text { text, logprobs })
    }

    fn release(&mut self, upto: usize) -> Vec<TokenLogprob> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|(at, _)| *at < upto) {
            out.push(self.pending.pop_front().expect("checked").1);
        }
        out
    }
}
