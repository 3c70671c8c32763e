//! The engine's worker: continuous batching over a paged KV cache.
//!
//! Each step runs every running request's next token and, within a token
//! budget, chunks of the prompts being prefilled, all through one forward
//! pass (each weight matrix is read once per step for everybody).
//! Requests join and leave between steps. Admission is first come, first
//! served: a request waits while the KV memory it needs is taken; one
//! whose prompt begins with blocks another request is computing waits for
//! them instead of computing them twice. When a running request needs a
//! block and none is left, the youngest request gives its blocks back and
//! waits to be recomputed. A request's tokens never depend on the others
//! in its batch: the forward pass treats each sequence alone.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use lampo_model::{KvStore, LoadedModel, Logits, Sequence, StreamDecoder};

use crate::blocks::{BlockId, BlockKey, BlockPool, Lookup};
use crate::clock::Work;
use crate::engine::{Counters, Done, EngineConfig, Event, Finish, Job, Sink, StopMatcher};
use crate::generate::{TokenLogprob, logprobs_of};
use crate::masker::{Masker, Ready};
use crate::sampling::Sampler;
use crate::speculate::{DraftState, Proposer, SpecMode, Speculator, ngram_proposal};

/// Serves jobs from `jobs` until every sender is gone and no work is left.
pub(crate) fn run(
    lm: &LoadedModel,
    draft: Option<&LoadedModel>,
    cfg: &EngineConfig,
    n_blocks: usize,
    jobs: mpsc::Receiver<Job>,
    counters: &Counters,
) {
    let mut s = Scheduler {
        lm,
        draft,
        cfg,
        store: KvStore::new(&lm.model.config, cfg.block_size, n_blocks),
        pool: BlockPool::new(n_blocks),
        waiting: VecDeque::new(),
        running: Vec::new(),
        counters,
        admitted: 0,
    };
    loop {
        if s.waiting.is_empty() && s.running.is_empty() {
            match jobs.recv() {
                Ok(job) => s.enqueue(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            s.enqueue(job);
        }
        s.step();
    }
}

struct Scheduler<'a> {
    lm: &'a LoadedModel,
    draft: Option<&'a LoadedModel>,
    cfg: &'a EngineConfig,
    store: KvStore,
    pool: BlockPool,
    /// In arrival order (preempted requests go back to the front).
    waiting: VecDeque<Seq>,
    /// In admission order.
    running: Vec<Seq>,
    counters: &'a Counters,
    /// Admissions so far: orders requests by age for preemption.
    admitted: u64,
}

/// A request in the engine.
struct Seq {
    sink: Box<dyn Sink>,
    /// On the engine's clock.
    deadline: Option<Duration>,
    params: crate::GenerateParams,
    /// Prompt, then the tokens generated so far.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Positions whose keys and values are in `blocks`.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Keys of the full blocks of `tokens` known so far.
    keys: Vec<BlockKey>,
    /// Blocks marked computed in the pool (`computed / block_size` once caught up).
    completed: usize,
    sampler: Sampler,
    output: Output,
    started: bool,
    admission: u64,
    /// Set when the request has ended; it leaves at the end of the step.
    finish: Option<Finish>,
    /// Speculative decoding, when on.
    spec: Option<Speculator>,
    /// This step's proposed tokens (appended to `tokens` until verified),
    /// who proposed them, and how long proposing took.
    proposal: Option<(Proposer, usize, Option<Duration>)>,
    /// The grammar the output must follow, if any.
    constraint: Option<Masker>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    /// Names the full blocks of `tokens` up to block `full`, those not
    /// named yet.
    fn extend_keys(&mut self, block_size: usize, full: usize) {
        if self.keys.len() < full {
            let more = BlockKey::chain(&self.tokens, block_size, self.keys.len(), self.keys.last());
            self.keys.extend(more);
        }
    }

    /// Takes this step's unverified proposal back out of `tokens`.
    fn drop_proposal(&mut self) {
        if let Some((_, n, _)) = self.proposal.take() {
            self.tokens.truncate(self.tokens.len() - n);
        }
    }

    /// Gives all the request's blocks back to `pool`.
    fn release_blocks(&mut self, pool: &mut BlockPool) {
        for id in self.blocks.drain(..) {
            pool.release(id);
        }
    }
}

/// Tokens a draft may read before proposing and still have its proposal
/// timed (more means it is reading the prompt).
const CATCH_UP: usize = 8;

/// A request's part of the next forward pass.
struct Planned {
    at: usize,
    n: usize,
    logits: Logits,
}

impl Scheduler<'_> {
    fn bs(&self) -> usize {
        self.cfg.block_size
    }

    fn enqueue(&mut self, job: Job) {
        let Job {
            request,
            sink,
            deadline,
        } = job;
        let mut sampler = Sampler::new(request.params.sampling.clone());
        for &t in &request.prompt {
            sampler.accept(t);
        }
        self.waiting.push_back(Seq {
            sink,
            deadline,
            params: request.params,
            n_prompt: request.prompt.len(),
            tokens: request.prompt,
            computed: 0,
            blocks: Vec::new(),
            keys: Vec::new(),
            completed: 0,
            sampler,
            output: Output::new(&request.stop),
            started: false,
            admission: 0,
            finish: None,
            // Proposals are not checked against grammars: constrained
            // requests decode plainly (and get no draft cache).
            spec: if request.constraint.is_none() {
                self.speculator()
            } else {
                None
            },
            proposal: None,
            constraint: request.constraint.map(Masker::new),
        });
    }

    fn speculator(&self) -> Option<Speculator> {
        let mode = self.cfg.speculation;
        if mode == SpecMode::Off || self.cfg.max_proposal == 0 {
            return None;
        }
        let draft = match (mode, self.draft) {
            (SpecMode::Draft | SpecMode::Auto, Some(d)) => Some(DraftState::new(d, self.cfg.n_ctx)),
            _ => None,
        };
        let mut spec = Speculator::new(mode, draft, self.cfg.max_proposal);
        if !self.cfg.adaptive_speculation {
            spec = spec.fixed();
        }
        Some(spec)
    }

    fn step(&mut self) {
        self.reap_waiting();
        self.admit();
        let plan = self.plan();
        if !plan.is_empty() {
            self.forward(&plan);
        } else if let Some(m) = self
            .running
            .iter_mut()
            .filter(|s| s.finish.is_none())
            .find_map(|s| s.constraint.as_mut())
        {
            // Only grammars are working: wait for one rather than spin.
            m.wait(Duration::from_millis(1));
        }
        let now = self.cfg.clock.now();
        for seq in self.running.iter_mut() {
            if seq.finish.is_none() && seq.sink.is_closed() {
                seq.finish = Some(Finish::Cancelled);
            }
            if seq.finish.is_none() && seq.deadline.is_some_and(|d| now >= d) {
                seq.finish = Some(Finish::TimedOut);
            }
        }
        self.retire();
        self.publish();
    }

    /// Ends waiting requests whose client left or whose time is up.
    fn reap_waiting(&mut self) {
        let now = self.cfg.clock.now();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for mut seq in self.waiting.drain(..) {
            let finish = if seq.sink.is_closed() {
                Finish::Cancelled
            } else if seq.deadline.is_some_and(|d| now >= d) {
                Finish::TimedOut
            } else {
                kept.push_back(seq);
                continue;
            };
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            seq.finish = Some(finish);
            end(&mut seq);
        }
        self.waiting = kept;
    }

    /// Moves waiting requests into the batch, oldest first, while there
    /// is room in it and KV memory for their prompts. A request whose
    /// prefix another is computing right now waits for it, letting those
    /// behind it go first.
    fn admit(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.cfg.max_batch {
            match self.try_admit(i) {
                Admission::Admitted => {}
                Admission::Parked => i += 1,
                Admission::NoMemory => break,
            }
        }
    }

    fn try_admit(&mut self, i: usize) -> Admission {
        let bs = self.bs();
        let seq = &mut self.waiting[i];
        let len = seq.tokens.len();
        let full = len / bs;
        seq.extend_keys(bs, full);
        // The last token is always computed: its logits choose the next one.
        let mut shared = Vec::new();
        let mut parked = false;
        for key in &seq.keys[..(len - 1) / bs] {
            match self.pool.lookup(key) {
                Lookup::Ready(id) => shared.push(id),
                Lookup::Pending => {
                    parked = true;
                    break;
                }
                Lookup::Missing => break,
            }
        }
        if parked {
            return Admission::Parked;
        }
        let own = len.div_ceil(bs) - shared.len();
        // Shared blocks nobody else uses count as available until taken;
        // keep a block per running request for its next token.
        let idle_shared = shared.iter().filter(|&&id| self.pool.is_idle(id)).count();
        if self.pool.available() < own + idle_shared + self.running.len() {
            return Admission::NoMemory;
        }
        for &id in &shared {
            self.pool.share(id);
        }
        let mut seq = self.waiting.remove(i).expect("index checked");
        let mut blocks = shared;
        for _ in 0..own {
            blocks.push(self.pool.allocate().expect("availability checked"));
        }
        let hit = (blocks.len() - own) * bs;
        let (from, to) = (hit / bs, full);
        for (&id, key) in blocks[from..to].iter().zip(&seq.keys[from..to]) {
            self.pool.name(id, key);
        }
        seq.blocks = blocks;
        seq.computed = hit;
        seq.completed = hit / bs;
        self.admitted += 1;
        seq.admission = self.admitted;
        let c = self.counters;
        c.waiting.fetch_sub(1, Ordering::Relaxed);
        c.running.fetch_add(1, Ordering::Relaxed);
        c.prefix_queries.fetch_add(len as u64, Ordering::Relaxed);
        c.prefix_hits.fetch_add(hit as u64, Ordering::Relaxed);
        if !seq.started {
            seq.started = true;
            if !deliver(&mut seq, Event::Started) {
                seq.finish.get_or_insert(Finish::Cancelled);
            }
        }
        self.running.push(seq);
        Admission::Admitted
    }

    /// Chooses this step's work: every decoding request's next token, then
    /// prompt chunks, oldest first, within the step's token budget.
    fn plan(&mut self) -> Vec<Planned> {
        let bs = self.bs();
        let mut plan = Vec::new();
        // Decoding requests first, each needing room for one more position.
        let mut at = 0;
        while at < self.running.len() {
            let seq = &mut self.running[at];
            if seq.finish.is_some() || seq.tokens.len() - seq.computed != 1 || !grammar_ready(seq) {
                at += 1;
                continue;
            }
            if seq.computed / bs < seq.blocks.len() {
                let n = 1 + self.propose(at);
                plan.push(Planned {
                    at,
                    n,
                    logits: if n > 1 { Logits::All } else { Logits::Last },
                });
                at += 1;
                continue;
            }
            match self.pool.allocate() {
                Some(id) => self.running[at].blocks.push(id),
                // No block left: the youngest request gives its own back
                // (possibly this one) and the loop tries again.
                None => {
                    let victim = self.youngest();
                    self.preempt(victim);
                    plan.retain(|p| p.at != victim);
                    for p in plan.iter_mut().filter(|p| p.at > victim) {
                        p.at -= 1;
                    }
                    if victim < at {
                        at -= 1;
                    }
                }
            }
        }
        let mut budget = self
            .cfg
            .step_tokens
            .saturating_sub(plan.iter().map(|p| p.n).sum());
        for (at, seq) in self.running.iter_mut().enumerate() {
            let left = seq.tokens.len() - seq.computed;
            if budget == 0 {
                break;
            }
            // Decoding requests (with or without a proposal) are planned already.
            if seq.finish.is_some() || left < 2 || seq.proposal.is_some() {
                continue;
            }
            // The last chunk's logits are sampled at once: under a grammar,
            // only with its mask ready.
            let n = if left <= budget && !grammar_ready(seq) {
                left - 1
            } else {
                left.min(budget)
            };
            budget -= n;
            plan.push(Planned {
                at,
                n,
                logits: if n == left {
                    Logits::Last
                } else {
                    Logits::None
                },
            });
        }
        plan
    }

    /// Appends request `at`'s proposed next tokens to its text, within the
    /// room its blocks (and the free ones) give; returns how many.
    fn propose(&mut self, at: usize) -> usize {
        let bs = self.bs();
        let (draft_model, n_ctx) = (self.draft, self.cfg.n_ctx);
        let seq = &mut self.running[at];
        // Room in the context and the answer for the proposal and the
        // token after it.
        let room = (n_ctx.saturating_sub(seq.tokens.len() + 1))
            .min(seq.params.max_tokens.saturating_sub(seq.generated() + 1));
        let Some(spec) = seq.spec.as_mut() else {
            return 0;
        };
        if room == 0 || !spec.active() {
            return 0;
        }
        let clock = &self.cfg.clock;
        let start = clock.now();
        let mut proposer = Proposer::NGram;
        let mut catching_up = false;
        let mut tokens = match spec.mode {
            SpecMode::NGram | SpecMode::Auto => {
                ngram_proposal(&seq.tokens, spec.length(Proposer::NGram).min(room))
            }
            _ => Vec::new(),
        };
        if tokens.is_empty()
            && let k = spec.length(Proposer::Draft).min(room)
            && k > 0
            && let (Some(state), Some(model)) = (spec.draft.as_mut(), draft_model)
        {
            proposer = Proposer::Draft;
            catching_up = state.behind(&seq.tokens) > CATCH_UP;
            // A failing draft only costs the speculation.
            let before = state.work();
            tokens = state.propose(model, &seq.tokens, k).unwrap_or_default();
            let after = state.work();
            clock.ran(Work {
                draft: true,
                passes: after.0 - before.0,
                positions: after.1 - before.1,
            });
        }
        // Blocks for the proposal's positions; without them, a shorter one.
        let mut free = seq.blocks.len() * bs - seq.tokens.len();
        while free < tokens.len() {
            match self.pool.allocate() {
                Some(id) => {
                    seq.blocks.push(id);
                    free += bs;
                }
                None => break,
            }
        }
        tokens.truncate(free);
        let n = tokens.len();
        if n > 0 {
            seq.tokens.extend(tokens);
            // A proposal that first read many tokens into the draft (the
            // prompt, or text after plain steps) is not timed.
            let time = (!catching_up).then(|| clock.now() - start);
            seq.proposal = Some((proposer, n, time));
        }
        n
    }

    /// The running request admitted last.
    fn youngest(&self) -> usize {
        (0..self.running.len())
            .max_by_key(|&i| self.running[i].admission)
            .expect("a request is running")
    }

    /// Sends running request `at` back to the front of the queue, its
    /// blocks released (they stay findable by prefix until evicted, so
    /// the recomputation is often short).
    fn preempt(&mut self, at: usize) {
        let mut seq = self.running.remove(at);
        seq.drop_proposal();
        seq.release_blocks(&mut self.pool);
        seq.computed = 0;
        seq.completed = 0;
        let c = self.counters;
        c.running.fetch_sub(1, Ordering::Relaxed);
        c.waiting.fetch_add(1, Ordering::Relaxed);
        c.preemptions.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_front(seq);
    }

    /// Runs the planned work in one forward pass, then samples and
    /// delivers the next token of every request that reached its end.
    fn forward(&mut self, plan: &[Planned]) {
        let seqs: Vec<Sequence> = plan
            .iter()
            .map(|p| {
                let seq = &self.running[p.at];
                Sequence {
                    tokens: &seq.tokens[seq.computed..seq.computed + p.n],
                    blocks: &seq.blocks,
                    past: seq.computed,
                    logits: p.logits,
                }
            })
            .collect();
        let model = &self.lm.model;
        let store = &mut self.store;
        let clock = &self.cfg.clock;
        let started = clock.now();
        let result = catch_unwind(AssertUnwindSafe(|| model.forward_batch(store, &seqs)));
        clock.ran(Work {
            draft: false,
            passes: 1,
            positions: plan.iter().map(|p| p.n).sum(),
        });
        let logits = match result {
            Ok(Ok(logits)) => logits,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(panic) => format!("the engine failed: {}", panic_message(&panic)),
                    Ok(Ok(_)) => unreachable!(),
                };
                for p in plan {
                    // Unverified proposals are not output.
                    let seq = &mut self.running[p.at];
                    seq.drop_proposal();
                    seq.finish = Some(Finish::Error(why.clone()));
                }
                return;
            }
        };
        let step_time = clock.now() - started;
        for (p, logits) in plan.iter().zip(logits) {
            let seq = &mut self.running[p.at];
            // Tokens generated before this step (a proposal is not yet).
            let generated = seq.generated() - seq.proposal.as_ref().map_or(0, |p| p.1);
            if let Some((proposer, proposed, propose_time)) = seq.proposal.take() {
                let before = seq.computed;
                let accepted = verify(self.lm, self.cfg.n_ctx, seq, proposed, &logits);
                seq.computed = before + 1 + accepted;
                if let Some(spec) = seq.spec.as_mut() {
                    spec.record(proposer, proposed, accepted, propose_time, step_time);
                    if let Some(d) = spec.draft.as_mut() {
                        d.rollback(seq.computed);
                    }
                }
                let c = self.counters;
                let (p_count, a_count) = match proposer {
                    Proposer::NGram => (&c.ngram_proposed, &c.ngram_accepted),
                    Proposer::Draft => (&c.draft_proposed, &c.draft_accepted),
                };
                p_count.fetch_add(proposed as u64, Ordering::Relaxed);
                a_count.fetch_add(accepted as u64, Ordering::Relaxed);
                c.generated_tokens
                    .fetch_add((seq.generated() - generated) as u64, Ordering::Relaxed);
                self.complete_blocks(p.at);
                continue;
            }
            let prompt_part =
                (seq.computed + p.n).min(seq.n_prompt) - seq.computed.min(seq.n_prompt);
            self.counters
                .prefill_tokens
                .fetch_add(prompt_part as u64, Ordering::Relaxed);
            let decoding = seq.tokens.len() - seq.computed == 1;
            seq.computed += p.n;
            if p.logits == Logits::Last {
                next_token(self.lm, self.cfg.n_ctx, seq, logits);
                self.counters
                    .generated_tokens
                    .fetch_add((seq.generated() - generated) as u64, Ordering::Relaxed);
                if decoding && let Some(spec) = seq.spec.as_mut() {
                    spec.record_plain(step_time);
                }
            }
            self.complete_blocks(p.at);
        }
    }

    /// Makes request `at`'s blocks that are now full of computed positions
    /// findable by prefix.
    fn complete_blocks(&mut self, at: usize) {
        let bs = self.bs();
        let seq = &mut self.running[at];
        let full = seq.computed.min(seq.tokens.len()) / bs;
        seq.extend_keys(bs, full);
        for k in seq.completed..full {
            self.pool.complete(seq.blocks[k], &seq.keys[k]);
        }
        seq.completed = seq.completed.max(full);
    }

    /// Removes ended requests, frees their blocks and tells their sinks.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].finish.is_none() {
                i += 1;
                continue;
            }
            let mut seq = self.running.remove(i);
            seq.release_blocks(&mut self.pool);
            self.counters.running.fetch_sub(1, Ordering::Relaxed);
            self.publish();
            end(&mut seq);
        }
    }

    fn publish(&self) {
        self.counters
            .blocks_in_use
            .store(self.pool.in_use(), Ordering::Relaxed);
    }
}

/// Whether `seq` may compute logits to sample this step: yes, unless its
/// grammar's next mask is still being computed. A grammar that has
/// completed or failed ends the request here.
fn grammar_ready(seq: &mut Seq) -> bool {
    let Some(m) = seq.constraint.as_mut() else {
        return true;
    };
    match m.poll() {
        Ready::Mask(_) => true,
        Ready::Pending => false,
        Ready::Done => {
            seq.finish = Some(Finish::Stop);
            false
        }
        Ready::Failed(e) => {
            seq.finish = Some(Finish::Invalid(format!(
                "the output constraint failed: {e}"
            )));
            false
        }
    }
}

enum Admission {
    Admitted,
    /// Waits for a prefix another request is computing.
    Parked,
    /// The KV memory it needs is taken.
    NoMemory,
}

/// Samples the token after `seq`'s last computed position and delivers its
/// text, setting `seq.finish` when the request is done.
fn next_token(lm: &LoadedModel, n_ctx: usize, seq: &mut Seq, mut logits: Vec<f32>) {
    // The sampler reshapes logits in place: keep the model's own.
    let raw = seq.params.logprobs.map(|_| logits.clone());
    if let Some(c) = seq.constraint.as_mut()
        && let Err(e) = c.apply(&mut logits)
    {
        seq.finish = Some(Finish::Invalid(format!(
            "the output constraint failed: {e}"
        )));
        return;
    }
    let next = seq.sampler.sample(&mut logits);
    deliver_token(lm, n_ctx, seq, next, raw);
}

/// Checks `seq`'s `proposed` tokens (the end of `seq.tokens`) against the
/// model's logits at each of them (`logits`: the last computed token's
/// and each proposal's, `n_vocab` each), delivering the accepted ones and
/// then the model's own next token. Returns how many proposals were
/// accepted; `seq.tokens` ends with the tokens delivered.
fn verify(lm: &LoadedModel, n_ctx: usize, seq: &mut Seq, proposed: usize, logits: &[f32]) -> usize {
    let n_vocab = lm.model.config.n_vocab;
    let base = seq.tokens.len() - proposed;
    let proposal: Vec<u32> = seq.tokens.drain(base..).collect();
    let mut accepted = 0;
    for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
        let mut row = row.to_vec();
        let raw = seq.params.logprobs.map(|_| row.clone());
        let (token, ok) = match proposal.get(i) {
            Some(&d) => seq.sampler.verify(&mut row, d),
            None => (seq.sampler.sample(&mut row), false),
        };
        deliver_token(lm, n_ctx, seq, token, raw);
        if seq.finish.is_some() || !ok {
            break;
        }
        accepted += 1;
    }
    accepted
}

/// Adds `next` to `seq`'s tokens and delivers its text (with its
/// log-probabilities from `raw`, the model's logits), setting
/// `seq.finish` when the request is done.
fn deliver_token(lm: &LoadedModel, n_ctx: usize, seq: &mut Seq, next: u32, raw: Option<Vec<f32>>) {
    let tok = &lm.tokenizer;
    seq.sampler.accept(next);
    seq.tokens.push(next);
    if let Some(c) = seq.constraint.as_mut()
        && let Err(e) = c.commit(next)
    {
        seq.finish = Some(Finish::Invalid(format!(
            "the output constraint failed: {e}"
        )));
        return;
    }
    if tok.is_eog(next) {
        seq.finish = Some(Finish::Stop);
        return;
    }
    let lp = raw.map(|raw| logprobs_of(&raw, next, seq.params.logprobs.unwrap_or(0)));
    let text = seq.output.decoder.push(tok.token_bytes(next));
    if let Pushed::Text(event) = seq.output.push(&text, lp)
        && !deliver(seq, event)
    {
        seq.finish.get_or_insert(Finish::Cancelled);
        return;
    }
    if seq.output.hit_stop {
        seq.finish = Some(Finish::Stop);
    } else if seq.generated() >= seq.params.max_tokens || seq.tokens.len() > n_ctx {
        seq.finish = Some(Finish::Length);
    }
}

/// Sends a request's last text and its `Done` (nothing to a client that left).
fn end(seq: &mut Seq) {
    let mut finish = seq.finish.clone().unwrap_or(Finish::Cancelled);
    if finish == Finish::Cancelled {
        return;
    }
    if !matches!(finish, Finish::Error(_)) && !seq.output.hit_stop {
        let rest = seq.output.decoder.finish();
        let last = seq.output.flush(&rest);
        if seq.output.hit_stop {
            finish = Finish::Stop;
        }
        if let Some(event) = last
            && !deliver(seq, event)
        {
            return;
        }
    }
    let done = Done {
        finish,
        prompt_tokens: seq.n_prompt,
        completion_tokens: seq.generated(),
    };
    deliver(seq, Event::Done(done));
}

/// Delivers an event; a sink that panics ends its request with an error
/// (which it is told, if it still listens).
fn deliver(seq: &mut Seq, event: Event) -> bool {
    let is_done = matches!(event, Event::Done(_));
    match catch_unwind(AssertUnwindSafe(|| seq.sink.send(event))) {
        Ok(open) => open,
        Err(panic) if !is_done => {
            let why = format!("the engine failed: {}", panic_message(&panic));
            seq.finish = Some(Finish::Error(why.clone()));
            let done = Done {
                finish: Finish::Error(why),
                prompt_tokens: seq.n_prompt,
                completion_tokens: seq.generated(),
            };
            let _ = catch_unwind(AssertUnwindSafe(|| seq.sink.send(Event::Done(done))));
            // Told already: `end` must not tell it again.
            seq.sink = Box::new(|_: Event| false);
            false
        }
        Err(_) => false,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A request's text on its way out: bytes to characters, stop strings
/// held back and cut, log-probabilities released with the text of their
/// token.
struct Output {
    decoder: StreamDecoder,
    stops: StopMatcher,
    /// Log-probabilities waiting for their text, keyed by the byte offset
    /// where their token's text begins.
    pending: VecDeque<(usize, TokenLogprob)>,
    generated: usize,
    emitted: usize,
    hit_stop: bool,
}

enum Pushed {
    Text(Event),
    Nothing,
}

impl Output {
    fn new(stop: &[String]) -> Output {
        Output {
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
    fn push(&mut self, text: &str, lp: Option<TokenLogprob>) -> Pushed {
        if let Some(lp) = lp {
            self.pending.push_back((self.generated, lp));
        }
        self.generated += text.len();
        let (emit, hit) = self.stops.push(text);
        self.hit_stop = hit;
        if emit.is_empty() {
            return Pushed::Nothing;
        }
        self.emitted += emit.len();
        let logprobs = self.release(self.emitted);
        Pushed::Text(Event::Text {
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
