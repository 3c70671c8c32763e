//! The engine's worker: continuous batching over a paged KV cache, as
//! three stages a step goes through.
//!
//! - [`plan`]: the scheduler proper, pure bookkeeping. It admits waiting
//!   requests, pages their KV blocks (sharing prefixes, preempting the
//!   least urgent, least advanced request when memory runs out) and says
//!   what the step computes: every running request's next token and,
//!   within a token budget, prompt chunks, in the order [`policy`] gives
//!   (service tier, first-token deadline, shortest remaining prompt).
//!   The worker sizes each step's budget so that it lasts about
//!   [`EngineConfig::max_step_time`], measured as it goes: a request that
//!   arrives waits at most one such step before its prompt starts.
//! - [`runner`]: runs that plan on the model in one forward pass (each
//!   weight read once for everybody), and the draft model's proposals.
//! - [`output`]: samples and verifies, turns tokens into text and hands
//!   events to the clients.
//!
//! Requests join and leave between steps. A request's tokens never
//! depend on the others in its batch: the forward pass treats each
//! sequence alone.

mod cost;
mod forecast;
mod output;
pub(crate) mod plan;
pub(crate) mod policy;
mod runner;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use lampo_kernels::Backend;
use lampo_model::{LoadedModel, Logits};

use crate::engine::{EngineConfig, Job};
use crate::request::{Counters, Finish, Tier};
use crate::speculate::{Proposer, SpecMode, Speculator, ngram_proposal};
use cost::{Shape, StepCost};
pub(crate) use forecast::Forecast;
use output::{Choice, Stream};
use plan::{Planner, SeqId};
use runner::Runner;

/// Tokens a draft may read before proposing and still have its proposal
/// timed (more means it is reading the prompt).
const CATCH_UP: usize = 8;

/// Fewest positions a step is sized to from a cost per position alone
/// (and the fewest a step must have to measure that cost): below it,
/// per-step costs would dominate.
const MIN_STEP_TOKENS: usize = 32;

/// Fewest prompt positions a step sized by the fitted cost computes
/// beside the decodes, however slow positions are (late in a long prompt
/// each one attends to thousands): prompts always progress.
const MIN_STEP_PREFILL: usize = 8;

/// Serves jobs from `jobs` until every sender is gone and no work is left.
pub(crate) fn run<B: Backend>(
    lm: &LoadedModel<B>,
    draft: Option<&LoadedModel<B>>,
    cfg: &EngineConfig,
    n_blocks: usize,
    jobs: mpsc::Receiver<Job>,
    counters: &Counters,
) {
    let mut w = Worker {
        lm,
        cfg,
        counters,
        planner: Planner::new(cfg.block_size, n_blocks, cfg.max_batch, cfg.step_tokens),
        streams: HashMap::new(),
        runner: Runner::new(lm, draft, cfg.block_size, n_blocks, cfg.clock.clone()),
        next_id: 0,
        cost: Cost::default(),
        model: StepCost::default(),
        others_seen: None,
    };
    loop {
        if w.planner.is_idle() {
            match jobs.recv() {
                Ok(job) => w.enqueue(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            w.enqueue(job);
        }
        w.step();
    }
}

struct Worker<'a, B: Backend> {
    lm: &'a LoadedModel<B>,
    cfg: &'a EngineConfig,
    counters: &'a Counters,
    planner: Planner,
    streams: HashMap<SeqId, Stream>,
    runner: Runner<'a, B>,
    next_id: SeqId,
    cost: Cost,
    /// What a step of a given shape costs, fitted as steps run.
    model: StepCost,
    /// When a request of a tier other than flex was last queued or running.
    others_seen: Option<Duration>,
}

/// What steps cost, measured on steps of at least [`MIN_STEP_TOKENS`]
/// positions (moving averages).
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    per_position: Option<Duration>,
    step: Option<Duration>,
}

impl Cost {
    fn record(&mut self, positions: usize, took: Duration) {
        if positions < MIN_STEP_TOKENS {
            return;
        }
        let avg = |old: Option<Duration>, new: Duration| {
            Some(old.map_or(new, |o| o.mul_f64(0.7) + new.mul_f64(0.3)))
        };
        self.per_position = avg(self.per_position, took / positions as u32);
        self.step = avg(self.step, took);
    }
}

/// A proposal made this step: by whom, how many tokens, how long it took
/// (`None`: not a fair measure of proposing).
type Proposal = (Proposer, usize, Option<Duration>);

impl<B: Backend> Worker<'_, B> {
    fn enqueue(&mut self, job: Job) {
        let Job {
            request,
            sink,
            deadline,
            submitted,
        } = job;
        self.next_id += 1;
        let id = self.next_id;
        let first = first_token_deadline(&request, submitted);
        self.planner
            .enqueue(id, request.prompt.clone(), request.tier, first);
        let stream = Stream::new(request, sink, deadline, first, self.speculator());
        self.streams.insert(id, stream);
    }

    fn speculator(&self) -> Option<Speculator> {
        let mode = self.cfg.speculation;
        if mode == SpecMode::Off || self.cfg.max_proposal == 0 {
            return None;
        }
        let spec = Speculator::new(mode, self.cfg.max_proposal);
        Some(if self.cfg.adaptive_speculation {
            spec
        } else {
            spec.fixed()
        })
    }

    fn stream(&mut self, id: SeqId) -> &mut Stream {
        self.streams
            .get_mut(&id)
            .expect("every request has a stream")
    }

    fn step(&mut self) {
        self.reap_waiting();
        let stats_before = self.planner.stats;
        let admission = self.planner.admit();
        for &id in &admission.preempted {
            self.sent_back(id);
        }
        for id in admission.admitted {
            self.count(id, true, 1);
            self.count(id, false, -1);
            self.stream(id).start();
        }
        for id in self.planner.make_room() {
            self.sent_back(id);
        }
        // Requests whose grammar ended or failed, or whose client left as
        // it was told it started, leave before any work is planned.
        let mut ready: HashMap<SeqId, bool> = HashMap::new();
        for slot in self.planner.running() {
            let s = streams_get(&mut self.streams, slot.id);
            let ok = s.finish.is_none() && s.may_sample();
            ready.insert(slot.id, ok);
        }
        self.retire();
        let proposals = self.propose();
        if !self.planner.only_flex() {
            self.others_seen = Some(self.cfg.clock.now());
        }
        let may_sample = |id| ready.get(&id).copied().unwrap_or(false);
        let budget = self.step_budget(may_sample);
        let plan = self.planner.plan(may_sample, budget);
        if plan.is_empty() {
            // Only grammars are working: wait for one rather than spin.
            if let Some(s) = self
                .streams
                .values_mut()
                .find(|s| s.finish.is_none() && s.has_grammar())
            {
                s.wait_for_grammar(Duration::from_millis(1));
            }
        } else {
            self.run_plan(&plan, &proposals);
        }
        let now = self.cfg.clock.now();
        for slot in self.planner.running() {
            let s = streams_get(&mut self.streams, slot.id);
            if s.finish.is_none() && s.is_closed() {
                s.finish = Some(Finish::Cancelled);
            }
            if s.finish.is_none() && s.overdue(now) {
                s.finish = Some(Finish::TimedOut);
            }
        }
        self.retire();
        let st = self.planner.stats;
        let c = self.counters;
        c.prefix_queries.fetch_add(
            st.prefix_queries - stats_before.prefix_queries,
            Ordering::Relaxed,
        );
        c.prefix_hits
            .fetch_add(st.prefix_hits - stats_before.prefix_hits, Ordering::Relaxed);
        c.preemptions
            .fetch_add(st.preemptions - stats_before.preemptions, Ordering::Relaxed);
        self.publish();
        self.publish_forecast();
    }

    /// Ends waiting requests whose client left or whose time is up.
    fn reap_waiting(&mut self) {
        let now = self.cfg.clock.now();
        let gone: Vec<(SeqId, Finish)> = self
            .planner
            .waiting()
            .filter_map(|id| {
                let s = &self.streams[&id];
                if s.is_closed() {
                    Some((id, Finish::Cancelled))
                } else if s.overdue(now) {
                    Some((id, Finish::TimedOut))
                } else {
                    None
                }
            })
            .collect();
        for (id, finish) in gone {
            self.count(id, false, -1);
            self.planner.remove(id);
            self.runner.draft_forget(id);
            let mut s = self.streams.remove(&id).expect("a stream");
            s.finish = Some(finish);
            s.end();
        }
    }

    /// Proposes tokens for the decoding requests that speculate, within
    /// the room their blocks (and the free ones) give.
    fn propose(&mut self) -> HashMap<SeqId, Proposal> {
        let mut made = HashMap::new();
        for id in self.planner.decoding() {
            let has_draft = self.runner.has_draft();
            let s = streams_get(&mut self.streams, id);
            if s.finish.is_some() {
                continue;
            }
            let room = s.proposal_room(self.cfg.n_ctx);
            let Some(spec) = s.spec.as_mut() else {
                continue;
            };
            if room == 0 || !spec.active() {
                continue;
            }
            let clock = &self.cfg.clock;
            let start = clock.now();
            let slot = self.planner.slot(id).expect("decoding");
            let mut proposer = Proposer::NGram;
            let mut catching_up = false;
            let mut tokens = match spec.mode {
                SpecMode::NGram | SpecMode::Auto => {
                    ngram_proposal(&slot.tokens, spec.length(Proposer::NGram).min(room))
                }
                _ => Vec::new(),
            };
            let k = spec.length(Proposer::Draft).min(room);
            if tokens.is_empty() && has_draft && k > 0 {
                proposer = Proposer::Draft;
                let k = self.planner.room_for(id, k);
                let slot = self.planner.slot(id).expect("decoding");
                catching_up = self.runner.draft_behind(slot) > CATCH_UP;
                tokens = self.runner.draft(slot, k);
            }
            let granted = self.planner.room_for(id, tokens.len());
            tokens.truncate(granted);
            if !tokens.is_empty() {
                self.planner.propose(id, &tokens);
                // A proposal that first read many tokens into the draft
                // (the prompt, or text after plain steps) is not timed.
                let time = (!catching_up).then(|| clock.now() - start);
                made.insert(id, (proposer, tokens.len(), time));
            }
        }
        made
    }

    /// Runs the planned work, then samples (or verifies) and delivers the
    /// next token of every request that reached its end.
    fn run_plan(&mut self, plan: &[plan::Item], proposals: &HashMap<SeqId, Proposal>) {
        let clock = self.cfg.clock.clone();
        let started = clock.now();
        let result = self.runner.forward(plan, &self.planner);
        let logits = match result {
            Ok(l) => l,
            Err(why) => {
                for it in plan {
                    // Unverified proposals are not output.
                    self.planner.take_proposal(it.id);
                    self.stream(it.id).finish = Some(Finish::Error(why.clone()));
                }
                return;
            }
        };
        let step_time = clock.now() - started;
        self.cost
            .record(plan.iter().map(|it| it.n).sum(), step_time);
        let shape = Shape::of(plan);
        tracing::trace!(
            target: "lampo_engine::steps",
            positions = shape.positions,
            attended = shape.attended,
            predicted_ms = self.model.predict(shape).map(|d| d.as_secs_f64() * 1e3),
            took_ms = step_time.as_secs_f64() * 1e3,
            "step"
        );
        self.model.record(shape, step_time);
        let (tok, n_ctx) = (&self.lm.tokenizer, self.cfg.n_ctx);
        let n_vocab = self.lm.model.config.n_vocab;
        let mut choices: Vec<Choice> = plan
            .iter()
            .zip(logits)
            .map(|(it, logits)| {
                let proposal = proposals
                    .contains_key(&it.id)
                    .then(|| self.planner.take_proposal(it.id));
                Choice {
                    logits,
                    sample: proposal.is_some() || it.logits == Logits::Last,
                    proposal,
                    delivered: Vec::new(),
                    accepted: 0,
                }
            })
            .collect();
        let generated: Vec<usize> = plan
            .iter()
            .map(|it| self.streams[&it.id].generated)
            .collect();
        {
            let mut streams: HashMap<SeqId, &mut Stream> =
                self.streams.iter_mut().map(|(&id, s)| (id, s)).collect();
            let work = plan
                .iter()
                .zip(choices.iter_mut())
                .map(|(it, c)| {
                    (
                        streams
                            .remove(&it.id)
                            .expect("one stream per planned request"),
                        c,
                    )
                })
                .collect();
            output::choose(work, tok, n_ctx, n_vocab);
        }
        for ((it, choice), generated) in plan.iter().zip(choices).zip(generated) {
            let stream = self.streams.get_mut(&it.id).expect("a stream");
            if let Some(&(proposer, proposed, propose_time)) = proposals.get(&it.id) {
                let accepted = choice.accepted;
                let computed = it.start + 1 + accepted;
                if let Some(spec) = stream.spec.as_mut() {
                    spec.record(proposer, proposed, accepted, propose_time, step_time);
                }
                self.planner.commit(it.id, computed, &choice.delivered);
                self.runner.draft_rollback(it.id, computed);
                let c = self.counters;
                let (p_count, a_count) = match proposer {
                    Proposer::NGram => (&c.ngram_proposed, &c.ngram_accepted),
                    Proposer::Draft => (&c.draft_proposed, &c.draft_accepted),
                };
                p_count.fetch_add(proposed as u64, Ordering::Relaxed);
                a_count.fetch_add(accepted as u64, Ordering::Relaxed);
            } else {
                let slot = self.planner.slot(it.id).expect("planned");
                let n_prompt = slot.n_prompt;
                let prompt_part = (it.start + it.n).min(n_prompt) - it.start.min(n_prompt);
                self.counters
                    .prefill_tokens
                    .fetch_add(prompt_part as u64, Ordering::Relaxed);
                let decoding = it.n == 1 && slot.decoding();
                if choice.sample
                    && decoding
                    && let Some(spec) = stream.spec.as_mut()
                {
                    spec.record_plain(step_time);
                }
                self.planner
                    .commit(it.id, it.start + it.n, &choice.delivered);
            }
            self.counters.generated_tokens.fetch_add(
                (self.streams[&it.id].generated - generated) as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Removes ended requests, frees their blocks and tells their sinks.
    fn retire(&mut self) {
        let ended: Vec<SeqId> = self
            .planner
            .running()
            .filter(|s| self.streams[&s.id].finish.is_some())
            .map(|s| s.id)
            .collect();
        for id in ended {
            self.count(id, true, -1);
            self.planner.remove(id);
            self.runner.draft_forget(id);
            self.publish();
            let mut s = self.streams.remove(&id).expect("a stream");
            s.end();
        }
    }

    fn publish(&self) {
        let (in_use, total) = self.planner.blocks_in_use();
        self.counters.blocks_in_use.store(in_use, Ordering::Relaxed);
        self.counters.blocks_total.store(total, Ordering::Relaxed);
    }

    /// Tells the forecast what is queued and what steps cost.
    /// The budget published is the step's capacity: what fits in the
    /// step time with a new prompt filling whatever the queued work
    /// leaves, so it does not read as the cap when the work queued is
    /// small; 0 until a step has been measured.
    fn publish_forecast(&self) {
        let budget = if self.cost.per_position.is_some() {
            self.sized_budget(|_| true, true)
        } else {
            0
        };
        self.counters.step_budget.store(budget, Ordering::Relaxed);
        let forecast = Forecast {
            step: self.cost.step,
            budget,
            decoding: self.planner.decoding().len(),
            prompts: self.planner.prompts(),
        };
        *self
            .counters
            .forecast
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = forecast;
    }

    /// Positions the next step may compute: as many as fit in
    /// `max_step_time` (or the shorter time [`policy::step_time`] gives
    /// flex-only steps), at most `step_tokens` and at least the decodes
    /// and [`MIN_STEP_PREFILL`] positions (at least [`MIN_STEP_TOKENS`]
    /// while the fit warms up). The
    /// step is planned at candidate budgets and each plan's time
    /// predicted by the fitted [`StepCost`] (so the attention a chunk
    /// late in a long prompt pays is counted); until the fit is warm, at
    /// the measured cost per position.
    fn step_budget(&self, may_sample: impl Fn(SeqId) -> bool) -> usize {
        self.sized_budget(may_sample, false)
    }

    /// [`Worker::step_budget`]; with `filled`, the budget as if a new
    /// prompt took every position the queued work leaves (the capacity a
    /// new arrival would share).
    fn sized_budget(&self, may_sample: impl Fn(SeqId) -> bool, filled: bool) -> usize {
        let cap = self.cfg.step_tokens;
        let floor = MIN_STEP_TOKENS.min(cap);
        let Some(max_step) = self.cfg.max_step_time else {
            return cap;
        };
        let since_others = self.others_seen.map(|t| self.cfg.clock.now() - t);
        let full = self.planner.plan(&may_sample, cap);
        let (prompts, decodes): (Vec<plan::Item>, Vec<plan::Item>) = full
            .iter()
            .partition(|it| self.planner.slot(it.id).is_some_and(|s| !s.decoding()));
        let n_decodes: usize = decodes.iter().map(|it| it.n).sum();
        let prefilling = !prompts.is_empty();
        let kind = policy::StepKind {
            only_flex: self.planner.only_flex(),
            first_token_beside_prefill: prompts.iter().any(|it| it.logits == Logits::Last)
                && prompts.iter().any(|it| it.logits == Logits::None),
        };
        let t = policy::step_time(max_step, kind, since_others);
        // The step as planned at `budget`; with no prompt to prefill (or
        // `filled`), with a new prompt taking the positions left (what the
        // forecast wants to know).
        let cost = |budget: usize| {
            let mut items = if prefilling {
                self.planner.plan(&may_sample, budget)
            } else {
                decodes.clone()
            };
            let used: usize = items.iter().map(|it| it.n).sum();
            if !prefilling || (filled && used < budget) {
                items.push(plan::Item {
                    id: SeqId::MAX,
                    start: 0,
                    n: budget.saturating_sub(used).max(1),
                    logits: Logits::Last,
                });
            }
            self.model.predict(Shape::of(&items))
        };
        match cost(cap) {
            Some(c) if c <= t => cap,
            Some(_) => {
                // The largest budget whose plan fits: `lo` fits (or is
                // the floor), `hi` does not.
                let (mut lo, mut hi) = ((n_decodes + MIN_STEP_PREFILL).min(cap), cap);
                while hi - lo > 1 {
                    let mid = (lo + hi) / 2;
                    if cost(mid).is_some_and(|c| c <= t) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
            None => match self.cost.per_position {
                Some(c) if !c.is_zero() => {
                    let fit = (t.as_secs_f64() / c.as_secs_f64()) as usize;
                    fit.clamp(floor, cap)
                }
                _ => cap,
            },
        }
    }

    /// Moves request `id` (of whichever tier) into (`by` 1) or out of (-1)
    /// the running (`running`) or waiting counts.
    fn count(&self, id: SeqId, running: bool, by: isize) {
        let tier = self.planner.slot(id).map_or(Tier::Default, |s| s.tier);
        let c = self.counters;
        let (all, by_tier) = if running {
            (&c.running, &c.running_by_tier)
        } else {
            (&c.waiting, &c.waiting_by_tier)
        };
        for counter in [all, &by_tier[tier.index()]] {
            if by > 0 {
                counter.fetch_add(by as usize, Ordering::Relaxed);
            } else {
                counter.fetch_sub(by.unsigned_abs(), Ordering::Relaxed);
            }
        }
    }

    /// Counts a preempted request as waiting again and drops its draft state.
    fn sent_back(&mut self, id: SeqId) {
        self.count(id, true, -1);
        self.count(id, false, 1);
        self.runner.draft_forget(id);
    }
}

/// When `request`'s first token is due, on the engine's clock.
fn first_token_deadline(
    request: &crate::request::Request,
    submitted: Duration,
) -> Option<Duration> {
    request.first_token_within.map(|d| submitted + d)
}

fn streams_get(streams: &mut HashMap<SeqId, Stream>, id: SeqId) -> &mut Stream {
    streams.get_mut(&id).expect("every request has a stream")
}
