//! The scheduler proper, pure bookkeeping: which requests run, which
//! blocks of the paged KV cache each holds, and what the next step
//! computes. No model, no clients, no clock, so it is tested on its own
//! (as [`crate::blocks`] is).
//!
//! Each step computes every running request's next token (and any
//! proposed tokens after it), then chunks of the prompts being prefilled,
//! oldest first, within the step's token budget. Admission is first come,
//! first served: a request waits while the KV memory its prompt needs is
//! taken; one whose prompt begins with blocks another request is
//! computing waits for them (letting those behind it go first) instead of
//! computing them twice. When a decoding request needs a block and none
//! is left, the youngest request gives its blocks back and waits to be
//! recomputed (its finished blocks stay findable by prefix, so that is
//! often short).

use std::collections::VecDeque;

use lampo_model::Logits;

use crate::blocks::{BlockId, BlockKey, BlockPool, Lookup};

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
}

impl Slot {
    /// Whether the next step computes one position and samples after it.
    pub fn decoding(&self) -> bool {
        self.tokens.len() - self.proposed - self.computed == 1
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
    pub stats: Stats,
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

    pub fn enqueue(&mut self, id: SeqId, prompt: Vec<u32>) {
        self.waiting.push_back(Slot {
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

    /// Moves waiting requests into the batch, oldest first, while there is
    /// room in it and KV memory for their prompts. Returns those admitted.
    pub fn admit(&mut self) -> Vec<SeqId> {
        let mut admitted = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.max_batch {
            match self.try_admit(i) {
                Admission::Admitted => admitted.push(self.running.last().expect("admitted").id),
                Admission::Parked => i += 1,
                Admission::NoMemory => break,
            }
        }
        admitted
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
    /// none is left, the youngest request gives its blocks back and waits
    /// to be recomputed (possibly the one in need). Returns those sent back.
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
                    let victim = (0..self.running.len())
                        .max_by_key(|&i| self.running[i].admission)
                        .expect("a request is running");
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
    /// proposal), then prompt chunks, oldest first, within the step's
    /// budget. `may_sample` says whether a request's logits may be
    /// sampled now (its grammar's mask is ready): a request that may not
    /// sits out its decode and stops short of its prompt's last position.
    pub fn plan(&self, may_sample: impl Fn(SeqId) -> bool) -> Vec<Item> {
        let mut items = Vec::new();
        for s in self.running.iter().filter(|s| s.decoding()) {
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
        let mut budget = self
            .step_tokens
            .saturating_sub(items.iter().map(|i| i.n).sum());
        for s in &self.running {
            let left = s.tokens.len() - s.computed;
            if budget == 0 {
                break;
            }
            if left < 2 || s.proposed > 0 {
                continue;
            }
            let n = if left <= budget && !may_sample(s.id) {
                left - 1
            } else {
                left.min(budget)
            };
            budget -= n;
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
mod tests {
    use super::*;

    fn tokens(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| seed * 1000 + i).collect()
    }

    /// Runs the plan as the engine would, sampling token 7 after every
    /// position that wants logits.
    fn step(p: &mut Planner) -> Vec<Item> {
        p.admit();
        p.make_room();
        let plan = p.plan(|_| true);
        for it in &plan {
            let new: Vec<u32> = if it.logits == Logits::None {
                vec![]
            } else {
                vec![7]
            };
            p.commit(it.id, it.start + it.n, &new);
        }
        plan
    }

    #[test]
    fn decodes_come_first_then_prompt_chunks_within_the_budget() {
        // 16-position blocks, 100 blocks, batch of 4, 32 tokens a step.
        let mut p = Planner::new(16, 100, 4, 32);
        p.enqueue(1, tokens(5, 1));
        assert_eq!(
            step(&mut p),
            [Item {
                id: 1,
                start: 0,
                n: 5,
                logits: Logits::Last
            }]
        );
        // A long prompt arrives: request 1 decodes, the prompt fills the rest.
        p.enqueue(2, tokens(70, 2));
        let plan = step(&mut p);
        assert_eq!(
            plan[0],
            Item {
                id: 1,
                start: 5,
                n: 1,
                logits: Logits::Last
            }
        );
        assert_eq!(
            plan[1],
            Item {
                id: 2,
                start: 0,
                n: 31,
                logits: Logits::None
            }
        );
        let plan = step(&mut p);
        assert_eq!(
            plan[1],
            Item {
                id: 2,
                start: 31,
                n: 31,
                logits: Logits::None
            }
        );
        let plan = step(&mut p);
        assert_eq!(
            plan[1],
            Item {
                id: 2,
                start: 62,
                n: 8,
                logits: Logits::Last
            }
        );
        // Both decode now.
        let plan = step(&mut p);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|i| i.n == 1));
    }

    #[test]
    fn a_request_that_may_not_sample_stops_short_and_sits_out_its_decode() {
        let mut p = Planner::new(16, 100, 4, 64);
        p.enqueue(1, tokens(10, 1));
        p.admit();
        let plan = p.plan(|_| false);
        assert_eq!(
            plan,
            [Item {
                id: 1,
                start: 0,
                n: 9,
                logits: Logits::None
            }]
        );
        p.commit(1, 9, &[]);
        assert!(p.plan(|_| false).is_empty(), "its last position waits");
        assert_eq!(
            p.plan(|_| true),
            [Item {
                id: 1,
                start: 9,
                n: 1,
                logits: Logits::Last
            }]
        );
    }

    #[test]
    fn admission_waits_for_memory_and_the_youngest_gives_way() {
        // 6 blocks of 16; 20-token prompts take 2 each, and admission
        // keeps a block per running request for its next token.
        let mut p = Planner::new(16, 6, 4, 256);
        for id in 1..=3 {
            p.enqueue(id, tokens(20, id as u32));
        }
        assert_eq!(p.admit(), [1, 2]);
        assert_eq!(p.waiting().collect::<Vec<_>>(), [3], "no memory for 3");
        // Both decode into their third block (the last two free ones).
        while p.slot(1).unwrap().computed < 48 {
            step(&mut p);
        }
        assert_eq!(p.blocks_in_use(), (6, 6));
        // Request 1 needs a fourth: request 2, admitted later, gives way.
        step(&mut p);
        assert_eq!(p.stats.preemptions, 1);
        assert_eq!(p.waiting().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(p.slot(2).unwrap().computed, 0);
        assert_eq!(p.slot(1).unwrap().blocks.len(), 4);
        // Once request 1 is done, request 2 comes back and finds its full
        // blocks by prefix.
        p.remove(1);
        assert_eq!(p.admit().first(), Some(&2));
        assert_eq!(p.slot(2).unwrap().computed, 32);
    }

    #[test]
    fn a_shared_prefix_is_computed_once() {
        let mut p = Planner::new(16, 100, 4, 256);
        let prefix = tokens(48, 9);
        let with = |tail: u32| {
            let mut t = prefix.clone();
            t.extend([tail, tail + 1]);
            t
        };
        p.enqueue(1, with(1));
        p.enqueue(2, with(5));
        // Request 2 waits for the prefix request 1 is computing.
        assert_eq!(p.admit(), [1]);
        assert_eq!(p.waiting().collect::<Vec<_>>(), [2]);
        step(&mut p);
        assert_eq!(p.admit(), [2]);
        let s = p.slot(2).unwrap();
        assert_eq!(s.computed, 48, "the shared blocks are reused");
        assert_eq!(p.stats.prefix_hits, 48);
        // The shared blocks are held by both.
        assert_eq!(s.blocks[..3], p.slot(1).unwrap().blocks[..3]);
    }

    #[test]
    fn proposals_get_room_from_free_blocks_and_are_verified_in_the_decode() {
        let mut p = Planner::new(16, 2, 1, 64);
        p.enqueue(1, tokens(14, 1));
        step(&mut p);
        p.make_room();
        // 15 tokens, 1 block: room for one more after the next, then a
        // second block gives 16 more; none beyond.
        assert_eq!(p.room_for(1, 40), 17);
        p.propose(1, &[1, 2, 3]);
        assert_eq!(
            p.plan(|_| true),
            [Item {
                id: 1,
                start: 14,
                n: 4,
                logits: Logits::All
            }]
        );
        // Two of three accepted, then the model's own token.
        let proposal = p.take_proposal(1);
        assert_eq!(proposal, [1, 2, 3]);
        p.commit(1, 14 + 1 + 2, &[1, 2, 9]);
        let s = p.slot(1).unwrap();
        assert_eq!((s.tokens.len(), s.computed, s.proposed), (18, 17, 0));
        assert!(s.decoding());
    }

    #[test]
    fn removing_a_request_frees_its_blocks() {
        let mut p = Planner::new(16, 10, 2, 64);
        p.enqueue(1, tokens(40, 1));
        p.enqueue(2, tokens(3, 2));
        step(&mut p);
        assert_eq!(p.blocks_in_use().0, 4);
        p.remove(1);
        p.remove(2);
        assert_eq!(p.blocks_in_use().0, 0);
        assert!(p.is_idle());
    }
}
