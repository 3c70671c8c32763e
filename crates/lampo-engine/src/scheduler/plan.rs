//! The scheduler proper, pure bookkeeping: which requests run, which
//! blocks of the paged KV cache each holds, and what the next step
//! computes. No model, no clients, no clock, so it is tested on its own
//! (as [`crate::blocks`] is).
//!
//! Each step computes every running request's next token (and any
//! proposed tokens after it), then chunks of the prompts being prefilled
//! within the step's token budget, in the order [`super::policy`] gives
//! (tier, deadline, shortest remaining first, a share kept for the
//! oldest). Admission takes the most urgent tier first, then arrival
//! order: a request waits while the KV memory its prompt needs is taken
//! (unless a less urgent request can give it back); one whose prompt
//! begins with blocks another request is computing waits for them
//! (letting those behind it go first) instead of computing them twice.
//! Flex requests take only the places the other tiers leave free. When a
//! decoding request needs a block and none is left, a request of its tier
//! or a less urgent one gives its blocks back and waits to be recomputed
//! (its finished blocks stay findable by prefix, so that is often short).

use std::collections::VecDeque;
use std::time::Duration;

use lampo_model::Logits;

use super::policy::{self, Prompt, Running};
use crate::blocks::{BlockId, BlockKey, BlockPool, Lookup};
use crate::request::Tier;

/// A request's number in the engine.
pub(crate) type SeqId = u64;

/// What the planner knows of a request: its tokens and where their keys
/// and values are.
pub(crate) struct Slot {
    pub id: SeqId,
    /// Prompt, then the tokens generated, then this step's proposal.
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    /// Positions whose keys and values are in `blocks`.
    pub computed: usize,
    pub blocks: Vec<BlockId>,
    /// Keys of the full blocks of `tokens` known so far.
    keys: Vec<BlockKey>,
    /// Blocks marked computed in the pool.
    completed: usize,
    admission: u64,
    /// Tokens at the end of `tokens` proposed this step, not yet verified.
    pub proposed: usize,
    pub tier: Tier,
    /// When its first token is due, on the engine's clock.
    pub deadline: Option<Duration>,
    /// Arrival order.
    arrival: u64,
}

impl Slot {
    /// Whether the next step computes one position and samples after it.
    pub fn decoding(&self) -> bool {
        self.tokens.len() - self.proposed - self.computed == 1
    }

    /// As the prefill ordering sees it.
    fn prompt(&self) -> Prompt {
        Prompt {
            tier: self.tier,
            deadline: self.deadline,
            left: self.tokens.len() - self.computed,
            arrival: self.arrival,
        }
    }

    /// As the choice of a preemption victim sees it.
    fn running(&self) -> Running {
        Running {
            tier: self.tier,
            computed: self.computed,
            admission: self.admission,
        }
    }

    /// Names the full blocks of `tokens` up to block `full`.
    fn extend_keys(&mut self, block_size: usize, full: usize) {
        if self.keys.len() < full {
            let more = BlockKey::chain(&self.tokens, block_size, self.keys.len(), self.keys.last());
            self.keys.extend(more);
        }
    }
}

/// One request's part of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub id: SeqId,
    /// Positions `start..start + n` are computed.
    pub start: usize,
    pub n: usize,
    pub logits: Logits,
}

/// What admission and paging have counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
}

pub(crate) struct Planner {
    block_size: usize,
    step_tokens: usize,
    max_batch: usize,
    pool: BlockPool,
    /// In arrival order (preempted requests go back to the front).
    waiting: VecDeque<Slot>,
    /// In admission order.
    running: Vec<Slot>,
    /// Admissions so far: orders requests by age for preemption.
    admitted: u64,
    /// Arrivals so far: orders prompts by age for prefill.
    arrived: u64,
    pub stats: Stats,
}

/// What one call to [`Planner::admit`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub admitted: Vec<SeqId>,
    /// Running requests sent back to wait to make room for more urgent ones.
    pub preempted: Vec<SeqId>,
}

enum Admission {
    Admitted,
    /// Waits for a prefix another request is computing.
    Parked,
    /// The KV memory it needs is taken.
    NoMemory,
}

impl Planner {
    pub fn new(
        block_size: usize,
        n_blocks: usize,
        max_batch: usize,
        step_tokens: usize,
    ) -> Planner {
        Planner {
            block_size,
            step_tokens,
            max_batch,
            pool: BlockPool::new(n_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            admitted: 0,
            arrived: 0,
            stats: Stats::default(),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Blocks some request holds, and all blocks.
    pub fn blocks_in_use(&self) -> (usize, usize) {
        (self.pool.in_use(), self.pool.total())
    }

    pub fn enqueue(&mut self, id: SeqId, prompt: Vec<u32>, tier: Tier, deadline: Option<Duration>) {
        self.arrived += 1;
        self.waiting.push_back(Slot {
            tier,
            deadline,
            arrival: self.arrived,
            id,
            n_prompt: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            keys: Vec::new(),
            completed: 0,
            admission: 0,
            proposed: 0,
        });
    }

    pub fn waiting(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().map(|s| s.id)
    }

    pub fn running(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.running.iter()
    }

    /// Every prompt not yet computed, waiting or running, as the prefill
    /// ordering sees it.
    pub fn prompts(&self) -> Vec<Prompt> {
        self.waiting
            .iter()
            .chain(self.running.iter().filter(|s| !s.decoding()))
            .map(Slot::prompt)
            .collect()
    }

    pub fn slot(&self, id: SeqId) -> Option<&Slot> {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .find(|s| s.id == id)
    }

    fn running_mut(&mut self, id: SeqId) -> &mut Slot {
        self.running
            .iter_mut()
            .find(|s| s.id == id)
            .expect("a running request")
    }

    /// Takes request `id` out, waiting or running, and gives its blocks back.
    pub fn remove(&mut self, id: SeqId) -> Option<Slot> {
        let mut slot = if let Some(at) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(at)
        } else {
            let at = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(at).expect("found")
        };
        release(&mut self.pool, &mut slot.blocks);
        Some(slot)
    }

    /// Moves waiting requests into the batch, most urgent tier first and
    /// then oldest first, while there is room in it and KV memory for
    /// their prompts; flex requests only into the places kept for them.
    /// A request finding no room or memory takes it from a running one of
    /// a less urgent tier, which waits at the front of the queue (behind
    /// the more urgent ones, as admission goes by tier first).
    pub fn admit(&mut self) -> Admitted {
        let mut done = Admitted::default();
        let mut parked: Vec<SeqId> = Vec::new();
        let flex_places = policy::flex_places(self.max_batch);
        while let Some(i) = (0..self.waiting.len())
            .filter(|&i| !parked.contains(&self.waiting[i].id))
            .min_by_key(|&i| (self.waiting[i].tier, i))
        {
            let tier = self.waiting[i].tier;
            if tier == Tier::Flex
                && self.running.iter().filter(|s| s.tier == Tier::Flex).count() >= flex_places
            {
                break;
            }
            if self.running.len() >= self.max_batch {
                match self.less_urgent(tier) {
                    Some(at) => done.preempted.push(self.preempt(at)),
                    None => break,
                }
                continue;
            }
            match self.try_admit(i) {
                Admission::Admitted => done
                    .admitted
                    .push(self.running.last().expect("admitted").id),
                Admission::Parked => parked.push(self.waiting[i].id),
                Admission::NoMemory => match self.less_urgent(tier) {
                    Some(at) => done.preempted.push(self.preempt(at)),
                    None => break,
                },
            }
        }
        done
    }

    /// The running request to preempt for a waiting one of `tier`: of a
    /// strictly less urgent tier, chosen as [`policy::victim`] does.
    fn less_urgent(&self, tier: Tier) -> Option<usize> {
        let running: Vec<Running> = self.running.iter().map(Slot::running).collect();
        policy::victim(&running, tier).filter(|&at| running[at].tier > tier)
    }

    fn try_admit(&mut self, i: usize) -> Admission {
        let bs = self.block_size;
        let slot = &mut self.waiting[i];
        let len = slot.tokens.len();
        let full = len / bs;
        slot.extend_keys(bs, full);
        // The last token is always computed: its logits choose the next one.
        let mut shared = Vec::new();
        for key in &slot.keys[..(len - 1) / bs] {
            match self.pool.lookup(key) {
                Lookup::Ready(id) => shared.push(id),
                Lookup::Pending => return Admission::Parked,
                Lookup::Missing => break,
            }
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
        let mut slot = self.waiting.remove(i).expect("index checked");
        let mut blocks = shared;
        for _ in 0..own {
            blocks.push(self.pool.allocate().expect("availability checked"));
        }
        let hit = (blocks.len() - own) * bs;
        let (from, to) = (hit / bs, full);
        for (&id, key) in blocks[from..to].iter().zip(&slot.keys[from..to]) {
            self.pool.name(id, key);
        }
        slot.blocks = blocks;
        slot.computed = hit;
        slot.completed = hit / bs;
        self.admitted += 1;
        slot.admission = self.admitted;
        self.stats.prefix_queries += len as u64;
        self.stats.prefix_hits += hit as u64;
        self.running.push(slot);
        Admission::Admitted
    }

    /// Gives every decoding request a block for its next position; when
    /// none is left, a request of its tier or a less urgent one gives its
    /// blocks back and waits to be recomputed (possibly the one in need;
    /// see [`policy::victim`]). Returns those sent back.
    pub fn make_room(&mut self) -> Vec<SeqId> {
        let bs = self.block_size;
        let mut preempted = Vec::new();
        let mut at = 0;
        while at < self.running.len() {
            let slot = &self.running[at];
            if !slot.decoding() || slot.computed / bs < slot.blocks.len() {
                at += 1;
                continue;
            }
            match self.pool.allocate() {
                Some(id) => self.running[at].blocks.push(id),
                None => {
                    let running: Vec<Running> = self.running.iter().map(Slot::running).collect();
                    let victim = policy::victim(&running, running[at].tier)
                        .expect("the request in need is a candidate");
                    preempted.push(self.preempt(victim));
                    if victim < at {
                        at -= 1;
                    }
                }
            }
        }
        preempted
    }

    /// Sends running request `at` back to the front of the queue, its
    /// blocks released.
    fn preempt(&mut self, at: usize) -> SeqId {
        let mut slot = self.running.remove(at);
        slot.tokens.truncate(slot.tokens.len() - slot.proposed);
        slot.proposed = 0;
        release(&mut self.pool, &mut slot.blocks);
        slot.computed = 0;
        slot.completed = 0;
        self.stats.preemptions += 1;
        let id = slot.id;
        self.waiting.push_front(slot);
        id
    }

    /// Requests that decode this step (one position, then a sample).
    pub fn decoding(&self) -> Vec<SeqId> {
        self.running
            .iter()
            .filter(|s| s.decoding())
            .map(|s| s.id)
            .collect()
    }

    /// Gives decoding request `id` blocks for up to `k` proposed tokens
    /// after its next one, from the free blocks only; returns how many
    /// it has room for.
    pub fn room_for(&mut self, id: SeqId, k: usize) -> usize {
        let bs = self.block_size;
        let mut grown = Vec::new();
        let slot = self
            .running
            .iter()
            .find(|s| s.id == id)
            .expect("a running request");
        let mut free = slot.blocks.len() * bs - slot.tokens.len();
        while free < k {
            match self.pool.allocate() {
                Some(b) => {
                    grown.push(b);
                    free += bs;
                }
                None => break,
            }
        }
        self.running_mut(id).blocks.extend(grown);
        free.min(k)
    }

    /// Appends proposed tokens to request `id` (as many as `room_for` gave).
    pub fn propose(&mut self, id: SeqId, tokens: &[u32]) {
        let slot = self.running_mut(id);
        debug_assert_eq!(slot.proposed, 0);
        slot.tokens.extend_from_slice(tokens);
        slot.proposed = tokens.len();
    }

    /// This step's work: every decoding request's next position (and its
    /// proposal), then prompt chunks within a budget of `step_tokens`
    /// positions in all (at most the planner's own), shared as
    /// [`policy::split`] says. `may_sample`
    /// says whether a request's logits may be sampled now (its grammar's
    /// mask is ready): a request that may not sits out its decode and
    /// stops short of its prompt's last position.
    ///
    /// Flex yields: a step that gives a request of another tier its first
    /// token computes nothing for flex requests, so that the first token
    /// comes as fast as on an idle engine. Flex requests lose one step
    /// for each such arrival, no more.
    pub fn plan(&self, may_sample: impl Fn(SeqId) -> bool, step_tokens: usize) -> Vec<Item> {
        let items = self.plan_for(&may_sample, step_tokens, true);
        let first_token_above_flex = items.iter().any(|it| {
            let s = self.slot(it.id).expect("planned requests run");
            s.tier < Tier::Flex && !s.decoding() && it.logits == Logits::Last
        });
        if first_token_above_flex && self.running.iter().any(|s| s.tier == Tier::Flex) {
            self.plan_for(&may_sample, step_tokens, false)
        } else {
            items
        }
    }

    /// Whether there are requests, all of them flex.
    pub fn only_flex(&self) -> bool {
        !self.is_idle()
            && self.running.iter().all(|s| s.tier == Tier::Flex)
            && self.waiting.iter().all(|s| s.tier == Tier::Flex)
    }

    /// [`Planner::plan`], with or without the flex requests.
    fn plan_for(
        &self,
        may_sample: &impl Fn(SeqId) -> bool,
        step_tokens: usize,
        flex: bool,
    ) -> Vec<Item> {
        let mut items = Vec::new();
        let included = |s: &&Slot| flex || s.tier != Tier::Flex;
        for s in self
            .running
            .iter()
            .filter(included)
            .filter(|s| s.decoding())
        {
            if !may_sample(s.id) {
                continue;
            }
            items.push(Item {
                id: s.id,
                start: s.computed,
                n: 1 + s.proposed,
                logits: if s.proposed > 0 {
                    Logits::All
                } else {
                    Logits::Last
                },
            });
        }
        let budget = step_tokens
            .min(self.step_tokens)
            .saturating_sub(items.iter().map(|i| i.n).sum());
        let prefilling: Vec<&Slot> = self
            .running
            .iter()
            .filter(included)
            .filter(|s| s.tokens.len() - s.computed >= 2 && s.proposed == 0)
            .collect();
        let prompts: Vec<Prompt> = prefilling.iter().map(|s| s.prompt()).collect();
        let shares = policy::split(&prompts, budget);
        for i in policy::prefill_order(&prompts) {
            let (s, share) = (prefilling[i], shares[i]);
            let left = prompts[i].left;
            let n = if share == left && !may_sample(s.id) {
                left - 1
            } else {
                share
            };
            if n == 0 {
                continue;
            }
            items.push(Item {
                id: s.id,
                start: s.computed,
                n,
                logits: if n == left {
                    Logits::Last
                } else {
                    Logits::None
                },
            });
        }
        items
    }

    /// Takes request `id`'s unverified proposal back out of its tokens.
    pub fn take_proposal(&mut self, id: SeqId) -> Vec<u32> {
        let slot = self.running_mut(id);
        let at = slot.tokens.len() - slot.proposed;
        slot.proposed = 0;
        slot.tokens.split_off(at)
    }

    /// Records what a step did for request `id`: `computed` positions are
    /// now in its blocks and `new` tokens follow its text. Blocks that
    /// became full of computed positions are made findable by prefix.
    pub fn commit(&mut self, id: SeqId, computed: usize, new: &[u32]) {
        let bs = self.block_size;
        let at = self
            .running
            .iter()
            .position(|s| s.id == id)
            .expect("a running request");
        let slot = &mut self.running[at];
        slot.tokens.extend_from_slice(new);
        slot.computed = computed;
        let full = slot.computed.min(slot.tokens.len()) / bs;
        slot.extend_keys(bs, full);
        for k in slot.completed..full {
            self.pool.complete(slot.blocks[k], &slot.keys[k]);
        }
        slot.completed = slot.completed.max(full);
    }
}

/// Gives `blocks` back, the last first: the pool evicts the blocks
/// released longest ago first, so a prefix loses its end before its
/// beginning and stays reusable as long as possible.
fn release(pool: &mut BlockPool, blocks: &mut Vec<BlockId>) {
    for b in blocks.drain(..).rev() {
        pool.release(b);
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
