//! A batched forward pass gives every sequence exactly the logits it gets
//! alone: batching must not change anyone's output.

mod common;

use lampo_model::{KvCache, LoadedModel, Logits, Sequence};

fn check(lm: &LoadedModel) {
    let tok = &lm.tokenizer;
    let prompts = [
        tok.encode("The quick brown fox jumps over the lazy dog", true, false)
            .unwrap(),
        tok.encode("def add(a, b):", true, false).unwrap(),
        tok.encode("Paris is", true, false).unwrap(),
    ];
    let model = &lm.model;
    // Alone: the first prompt whole (all logits), the second after a cached
    // prefix (its last token now), the third whole (last logits).
    let mut alone = Vec::new();
    let mut kv0 = KvCache::new(&model.config, 64);
    alone.push(model.forward(&prompts[0], &mut kv0, Logits::All).unwrap());
    let mut kv1 = KvCache::new(&model.config, 64);
    let (head, tail) = prompts[1].split_at(prompts[1].len() - 1);
    model.forward(head, &mut kv1, Logits::Last).unwrap();
    alone.push(model.forward(tail, &mut kv1, Logits::Last).unwrap());
    let mut kv2 = KvCache::new(&model.config, 64);
    alone.push(model.forward(&prompts[2], &mut kv2, Logits::Last).unwrap());

    let mut b0 = KvCache::new(&model.config, 64);
    let mut b1 = KvCache::new(&model.config, 64);
    let mut b2 = KvCache::new(&model.config, 64);
    model.forward(head, &mut b1, Logits::Last).unwrap();
    let batched = model
        .forward_batch(&mut [
            Sequence {
                tokens: &prompts[0],
                kv: &mut b0,
                logits: Logits::All,
            },
            Sequence {
                tokens: tail,
                kv: &mut b1,
                logits: Logits::Last,
            },
            Sequence {
                tokens: &prompts[2],
                kv: &mut b2,
                logits: Logits::Last,
            },
        ])
        .unwrap();
    assert_eq!(batched.len(), 3);
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a.len(), b.len(), "sequence {i}");
        assert!(a == b, "sequence {i}: batched logits differ from its own");
    }
    assert_eq!(
        (b0.len(), b1.len(), b2.len()),
        (kv0.len(), kv1.len(), kv2.len())
    );
    // The caches hold the same keys and values: the next step agrees too.
    let next = [7u32];
    let a = model.forward(&next, &mut kv1, Logits::Last).unwrap();
    let b = model.forward(&next, &mut b1, Logits::Last).unwrap();
    assert!(a == b, "the batched cache continues differently");
}

#[test]
fn smollm2_batched_equals_alone() {
    check(&common::load("smollm2"));
}

#[test]
fn qwen05b_batched_equals_alone() {
    check(&common::load("qwen05b"));
}
