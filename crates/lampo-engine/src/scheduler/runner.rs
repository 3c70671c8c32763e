//! The runner: executes a step's plan on the model, and the draft
//! model's proposals. Both keep their keys and values in paged stores of
//! the same blocks: a request's draft positions live in the draft store
//! at the block its target positions use, so the draft's cache is part
//! of the KV budget and follows the request's paging (preemption,
//! prefixes shared with others).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use lampo_kernels::Backend;
use lampo_model::{KvStore, LoadedModel, Logits, Sequence};

use crate::clock::{ClockHandle, Work};
use crate::sampling::argmax;
use crate::scheduler::output::panic_message;
use crate::scheduler::plan::{Item, Planner, SeqId, Slot};

pub(crate) struct Runner<'a, B: Backend> {
    lm: &'a LoadedModel<B>,
    store: KvStore<B>,
    draft: Option<Draft<'a, B>>,
    clock: ClockHandle,
}

struct Draft<'a, B: Backend> {
    lm: &'a LoadedModel<B>,
    store: KvStore<B>,
    /// Per request, the positions of its text whose draft keys and values
    /// are in the draft store.
    held: HashMap<SeqId, usize>,
}

impl<'a, B: Backend> Runner<'a, B> {
    pub fn new(
        lm: &'a LoadedModel<B>,
        draft: Option<&'a LoadedModel<B>>,
        block_size: usize,
        n_blocks: usize,
        clock: ClockHandle,
    ) -> Runner<'a, B> {
        Runner {
            lm,
            store: lm.model.kv_store(block_size, n_blocks),
            draft: draft.map(|d| Draft {
                lm: d,
                store: d.model.kv_store(block_size, n_blocks),
                held: HashMap::new(),
            }),
            clock,
        }
    }

    pub fn has_draft(&self) -> bool {
        self.draft.is_some()
    }

    /// Runs the plan in one forward pass; returns each item's logits (as
    /// many rows as it asked for), or why the pass failed (a panic
    /// included: it fails the step's requests, not the engine).
    pub fn forward(&mut self, plan: &[Item], planner: &Planner) -> Result<Vec<Vec<f32>>, String> {
        let slots: Vec<&Slot> = plan
            .iter()
            .map(|it| planner.slot(it.id).expect("planned requests run"))
            .collect();
        let seqs: Vec<Sequence> = plan
            .iter()
            .zip(&slots)
            .map(|(it, slot)| Sequence {
                tokens: &slot.tokens[it.start..it.start + it.n],
                blocks: &slot.blocks,
                past: it.start,
                logits: it.logits,
            })
            .collect();
        let model = &self.lm.model;
        let store = &mut self.store;
        let result = catch_unwind(AssertUnwindSafe(|| model.forward_batch(store, &seqs)));
        self.clock.ran(Work {
            draft: false,
            passes: 1,
            positions: plan.iter().map(|it| it.n).sum(),
        });
        match result {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!("the engine failed: {}", panic_message(&panic))),
        }
    }

    /// Positions of `slot`'s text the draft has not read yet (the whole
    /// prompt at first): what its next proposal computes first.
    pub fn draft_behind(&self, slot: &Slot) -> usize {
        let held = self
            .draft
            .as_ref()
            .and_then(|d| d.held.get(&slot.id).copied())
            .unwrap_or(0);
        slot.tokens.len() - held.min(slot.tokens.len())
    }

    /// The draft model's greedy continuation of `slot`'s text, `k` tokens
    /// long; the slot's blocks must hold room for them. Positions the
    /// draft already holds are not recomputed. A failing draft proposes
    /// nothing (it only costs the speculation).
    pub fn draft(&mut self, slot: &Slot, k: usize) -> Vec<u32> {
        let Some(d) = self.draft.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(k);
        if k == 0 {
            return out;
        }
        let tokens = &slot.tokens;
        // The last token is always run again: its logits give the first proposal.
        let held = d
            .held
            .get(&slot.id)
            .copied()
            .unwrap_or(0)
            .min(tokens.len() - 1);
        let (mut passes, mut positions) = (0, 0);
        let mut run = |from: usize, ts: &[u32], store: &mut KvStore<B>| {
            passes += 1;
            positions += ts.len();
            let seq = Sequence {
                tokens: ts,
                blocks: &slot.blocks,
                past: from,
                logits: Logits::Last,
            };
            catch_unwind(AssertUnwindSafe(|| d.lm.model.forward_batch(store, &[seq])))
                .ok()
                .and_then(Result::ok)
                .and_then(|mut l| l.pop())
        };
        // Positions whose draft keys and values are right.
        let mut valid = held;
        let mut next = run(held, &tokens[held..], &mut d.store);
        if next.is_some() {
            valid = tokens.len();
        }
        while let Some(logits) = next {
            let t = argmax(&logits);
            out.push(t);
            if out.len() == k {
                break;
            }
            next = run(valid, &[t], &mut d.store);
            if next.is_some() {
                valid += 1;
            }
        }
        d.held.insert(slot.id, valid);
        self.clock.ran(Work {
            draft: true,
            passes,
            positions,
        });
        out
    }

    /// Keeps the first `valid` draft positions of request `id` (those of
    /// the tokens accepted).
    pub fn draft_rollback(&mut self, id: SeqId, valid: usize) {
        if let Some(d) = self.draft.as_mut()
            && let Some(h) = d.held.get_mut(&id)
        {
            *h = (*h).min(valid);
        }
    }

    /// Forgets request `id`'s draft positions (its blocks were given
    /// back: it left, or it was preempted).
    pub fn draft_forget(&mut self, id: SeqId) {
        if let Some(d) = self.draft.as_mut() {
            d.held.remove(&id);
        }
    }
}
