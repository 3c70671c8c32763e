//! A batched forward pass over a paged KV store gives every sequence
//! exactly the logits it gets alone in its own cache: batching, scattered
//! blocks, shared prefixes and chunked prompts must not change anyone's
//! output.

mod common;

use lampo_model::{LoadedModel, Logits, Sequence};

fn check(lm: &LoadedModel) {
    let tok = &lm.tokenizer;
    let prompts = [
        tok.encode(
            "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun",
            true,
            false,
        )
        .unwrap(),
        tok.encode(
            "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
            true,
            false,
        )
        .unwrap(),
        tok.encode("Paris is", true, false).unwrap(),
    ];
    let model = &lm.model;
    // Alone: the first prompt whole (all logits), the second after a cached
    // prefix (its last token now), the third whole (last logits).
    let mut alone = Vec::new();
    let mut kv0 = model.kv_cache(64);
    alone.push(model.forward(&prompts[0], &mut kv0, Logits::All).unwrap());
    let mut kv1 = model.kv_cache(64);
    let (head, tail) = prompts[1].split_at(prompts[1].len() - 1);
    model.forward(head, &mut kv1, Logits::Last).unwrap();
    alone.push(model.forward(tail, &mut kv1, Logits::Last).unwrap());
    let mut kv2 = model.kv_cache(64);
    alone.push(model.forward(&prompts[2], &mut kv2, Logits::Last).unwrap());

    // Batched, in a store of 4-position blocks handed out out of order.
    let mut store = model.kv_store(4, 32);
    let table = |ids: &[u32]| ids.to_vec();
    let b0 = table(&[31, 2, 17, 5, 9, 11, 30, 1, 0]);
    let b1 = table(&[3, 28, 7, 20, 21, 22, 23, 24]);
    let b2 = table(&[13, 14]);
    // The second prompt's head in chunks of 5, without logits.
    let mut done = 0;
    for chunk in head.chunks(5) {
        let out = model
            .forward_batch(
                &mut store,
                &[Sequence {
                    tokens: chunk,
                    blocks: &b1,
                    past: done,
                    logits: Logits::None,
                }],
            )
            .unwrap();
        assert!(out[0].is_empty());
        done += chunk.len();
    }
    let batched = model
        .forward_batch(
            &mut store,
            &[
                Sequence {
                    tokens: &prompts[0],
                    blocks: &b0,
                    past: 0,
                    logits: Logits::All,
                },
                Sequence {
                    tokens: tail,
                    blocks: &b1,
                    past: head.len(),
                    logits: Logits::Last,
                },
                Sequence {
                    tokens: &prompts[2],
                    blocks: &b2,
                    past: 0,
                    logits: Logits::Last,
                },
            ],
        )
        .unwrap();
    assert_eq!(batched.len(), 3);
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a.len(), b.len(), "sequence {i}");
        assert!(a == b, "sequence {i}: batched logits differ from its own");
    }
    // The caches hold the same keys and values: the next step agrees too.
    let next = [7u32];
    let a = model.forward(&next, &mut kv1, Logits::Last).unwrap();
    let b = model
        .forward_batch(
            &mut store,
            &[Sequence {
                tokens: &next,
                blocks: &b1,
                past: prompts[1].len(),
                logits: Logits::Last,
            }],
        )
        .unwrap();
    assert!(a == b[0], "the batched cache continues differently");

    // A second sequence sharing the first's full blocks of the second
    // prompt reads them without recomputing: same logits.
    let shared = (head.len() / 4) * 4;
    let mut b3 = b1[..shared / 4].to_vec();
    b3.extend([25, 26, 27]);
    let c = model
        .forward_batch(
            &mut store,
            &[Sequence {
                tokens: &prompts[1][shared..],
                blocks: &b3,
                past: shared,
                logits: Logits::Last,
            }],
        )
        .unwrap();
    assert!(c[0] == alone[1], "a shared prefix changes the logits");

    // Room is checked: a table too short for the new tokens is refused.
    let short = model.forward_batch(
        &mut store,
        &[Sequence {
            tokens: &prompts[0],
            blocks: &b2,
            past: 0,
            logits: Logits::Last,
        }],
    );
    assert!(short.is_err());
}

#[test]
fn smollm2_batched_equals_alone() {
    check(&common::load("smollm2"));
}

#[test]
fn qwen05b_batched_equals_alone() {
    check(&common::load("qwen05b"));
}
