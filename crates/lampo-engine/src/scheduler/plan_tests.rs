//! The planner's bookkeeping, step by step: chunking, admission,
//! paging, preemption, prefix sharing, proposals, and the order in which
//! tiers, deadlines and prompt lengths are served.

use super::*;
use crate::request::Tier;

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| seed * 1000 + i).collect()
}

/// Runs the plan as the engine would, sampling token 7 after every
/// position that wants logits.
fn step(p: &mut Planner) -> Vec<Item> {
    p.admit();
    p.make_room();
    let plan = p.plan(|_| true, usize::MAX);
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
    p.enqueue(1, tokens(5, 1), Tier::Default, None);
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
    p.enqueue(2, tokens(70, 2), Tier::Default, None);
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
    p.enqueue(1, tokens(10, 1), Tier::Default, None);
    p.admit();
    let plan = p.plan(|_| false, usize::MAX);
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
    assert!(
        p.plan(|_| false, usize::MAX).is_empty(),
        "its last position waits"
    );
    assert_eq!(
        p.plan(|_| true, usize::MAX),
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
        p.enqueue(id, tokens(20, id as u32), Tier::Default, None);
    }
    assert_eq!(p.admit().admitted, [1, 2]);
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
    assert_eq!(p.admit().admitted.first(), Some(&2));
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
    p.enqueue(1, with(1), Tier::Default, None);
    p.enqueue(2, with(5), Tier::Default, None);
    // Request 2 waits for the prefix request 1 is computing.
    assert_eq!(p.admit().admitted, [1]);
    assert_eq!(p.waiting().collect::<Vec<_>>(), [2]);
    step(&mut p);
    assert_eq!(p.admit().admitted, [2]);
    let s = p.slot(2).unwrap();
    assert_eq!(s.computed, 48, "the shared blocks are reused");
    assert_eq!(p.stats.prefix_hits, 48);
    // The shared blocks are held by both.
    assert_eq!(s.blocks[..3], p.slot(1).unwrap().blocks[..3]);
}

#[test]
fn proposals_get_room_from_free_blocks_and_are_verified_in_the_decode() {
    let mut p = Planner::new(16, 2, 1, 64);
    p.enqueue(1, tokens(14, 1), Tier::Default, None);
    step(&mut p);
    p.make_room();
    // 15 tokens, 1 block: room for one more after the next, then a
    // second block gives 16 more; none beyond.
    assert_eq!(p.room_for(1, 40), 17);
    p.propose(1, &[1, 2, 3]);
    assert_eq!(
        p.plan(|_| true, usize::MAX),
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
    p.enqueue(1, tokens(40, 1), Tier::Default, None);
    p.enqueue(2, tokens(3, 2), Tier::Default, None);
    step(&mut p);
    assert_eq!(p.blocks_in_use().0, 4);
    p.remove(1);
    p.remove(2);
    assert_eq!(p.blocks_in_use().0, 0);
    assert!(p.is_idle());
}

fn items_of(plan: &[Item], id: SeqId) -> Option<Item> {
    plan.iter().copied().find(|i| i.id == id)
}

#[test]
fn a_short_prompt_arriving_during_a_long_prefill_is_done_in_the_next_step() {
    let mut p = Planner::new(16, 400, 4, 64);
    p.enqueue(1, tokens(1000, 1), Tier::Default, None);
    step(&mut p);
    step(&mut p);
    p.enqueue(2, tokens(10, 2), Tier::Default, None);
    let plan = step(&mut p);
    assert_eq!(
        items_of(&plan, 2),
        Some(Item {
            id: 2,
            start: 0,
            n: 10,
            logits: Logits::Last
        }),
        "the whole short prompt, sampled at once"
    );
    assert_eq!(items_of(&plan, 1).map(|i| (i.start, i.n)), Some((128, 54)));
    // Next step: it decodes, the long prompt takes the rest.
    let plan = step(&mut p);
    assert_eq!(items_of(&plan, 2).map(|i| i.n), Some(1));
    assert_eq!(items_of(&plan, 1).map(|i| i.n), Some(63));
}

#[test]
fn a_long_prompt_keeps_a_quarter_of_every_step_under_a_stream_of_short_ones() {
    let budget = 64;
    let solo_steps = 1000usize.div_ceil(budget);
    let mut p = Planner::new(16, 1000, 4, budget);
    p.enqueue(1, tokens(1000, 1), Tier::Default, None);
    let mut steps = 0;
    let mut next = 2;
    while p.slot(1).unwrap().computed < 1000 {
        // A new 60-token prompt every step, each gone after its first token.
        p.enqueue(next, tokens(60, next as u32), Tier::Default, None);
        next += 1;
        let before = p.slot(1).unwrap().computed;
        let plan = step(&mut p);
        steps += 1;
        assert!(
            p.slot(1).unwrap().computed - before >= budget / policy::AGED_SHARE,
            "step {steps}: {plan:?}"
        );
        let done: Vec<SeqId> = p
            .running()
            .filter(|s| s.id != 1 && s.decoding())
            .map(|s| s.id)
            .collect();
        for id in done {
            p.remove(id);
        }
    }
    assert!(
        steps <= solo_steps * policy::AGED_SHARE,
        "{steps} steps, {solo_steps} alone"
    );
}

#[test]
fn a_prompt_with_a_deadline_goes_before_an_older_one_without() {
    let mut p = Planner::new(16, 100, 4, 64);
    p.enqueue(1, tokens(100, 1), Tier::Default, None);
    p.enqueue(
        2,
        tokens(100, 2),
        Tier::Default,
        Some(Duration::from_secs(1)),
    );
    let plan = step(&mut p);
    let got: Vec<(SeqId, usize)> = plan.iter().map(|i| (i.id, i.n)).collect();
    // The older one keeps its quarter.
    assert_eq!(got, [(2, 48), (1, 16)]);
}

#[test]
fn admission_takes_the_most_urgent_tier_first_and_flex_only_its_places() {
    // A batch of 4: flex may hold 3 places.
    let mut p = Planner::new(16, 100, 4, 256);
    p.enqueue(1, tokens(20, 1), Tier::Flex, None);
    p.enqueue(2, tokens(20, 2), Tier::Flex, None);
    p.enqueue(3, tokens(20, 3), Tier::Default, None);
    p.enqueue(4, tokens(20, 4), Tier::Flex, None);
    p.enqueue(5, tokens(20, 5), Tier::Flex, None);
    assert_eq!(p.admit().admitted, [3, 1, 2, 4]);
    step(&mut p);
    // Flex holds its three places: the fourth flex request waits, though
    // a place is free once the default one leaves.
    p.remove(3);
    assert_eq!(p.admit(), Admitted::default());
    // A priority arrival takes the free place; another finds the batch
    // full and takes a flex request's place (the one that lost least).
    p.enqueue(6, tokens(20, 6), Tier::Priority, None);
    assert_eq!(p.admit().admitted, [6]);
    p.commit(1, 30, &[]);
    p.enqueue(7, tokens(20, 7), Tier::Priority, None);
    let a = p.admit();
    assert_eq!(a.admitted, [7]);
    assert_eq!(
        a.preempted,
        [4],
        "flex, fewest positions computed, youngest"
    );
    // It waits behind nothing more urgent, and before the other flex one.
    assert_eq!(p.waiting().collect::<Vec<_>>(), [4, 5]);
}

#[test]
fn under_memory_pressure_a_priority_request_never_gives_way_to_flex() {
    // 6 blocks of 16: two 20-token prompts take 2 each.
    let mut p = Planner::new(16, 6, 4, 256);
    p.enqueue(1, tokens(20, 1), Tier::Flex, None);
    p.enqueue(2, tokens(20, 2), Tier::Priority, None);
    assert_eq!(p.admit().admitted, [2, 1]);
    while p.slot(2).unwrap().computed < 48 {
        step(&mut p);
    }
    assert_eq!(p.blocks_in_use(), (6, 6));
    // Both need a fourth block: the flex request, admitted after the
    // priority one, gives its blocks back, never the priority one.
    step(&mut p);
    assert_eq!(p.waiting().collect::<Vec<_>>(), [1]);
    assert_eq!(p.slot(2).unwrap().blocks.len(), 4);
    // And the flex request finds nothing to take from the priority one.
    assert_eq!(p.admit(), Admitted::default());
}

#[test]
fn flex_sits_out_the_step_that_gives_another_tier_its_first_token() {
    let mut p = Planner::new(16, 400, 8, 64);
    assert!(!p.only_flex(), "an idle planner has no flex requests");
    // Two flex streams decoding, a long flex prompt being prefilled.
    p.enqueue(1, tokens(10, 1), Tier::Flex, None);
    p.enqueue(2, tokens(10, 2), Tier::Flex, None);
    p.enqueue(3, tokens(600, 3), Tier::Flex, None);
    step(&mut p);
    step(&mut p);
    assert!(p.only_flex());
    // A priority prompt arrives: its step is its own.
    p.enqueue(4, tokens(30, 4), Tier::Priority, None);
    assert!(!p.only_flex());
    let plan = step(&mut p);
    let got: Vec<(SeqId, usize)> = plan.iter().map(|i| (i.id, i.n)).collect();
    assert_eq!(got, [(4, 30)]);
    // The next step, flex goes on beside the priority stream's decode.
    let plan = step(&mut p);
    let ids: Vec<SeqId> = plan.iter().map(|i| i.id).collect();
    assert_eq!(ids, [1, 2, 4, 3]);
    // A default prompt too long to finish in one step does not stop flex.
    p.enqueue(5, tokens(300, 5), Tier::Default, None);
    let plan = step(&mut p);
    assert!(items_of(&plan, 1).is_some() && items_of(&plan, 5).is_some());
    // Its last chunk does.
    while p.slot(5).unwrap().computed + 64 < 300 {
        step(&mut p);
    }
    let plan = step(&mut p);
    assert_eq!(items_of(&plan, 5).map(|i| i.logits), Some(Logits::Last));
    assert!(
        plan.iter()
            .all(|i| p.slot(i.id).unwrap().tier != Tier::Flex),
        "{plan:?}"
    );
}
