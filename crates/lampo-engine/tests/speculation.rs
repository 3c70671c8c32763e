//! Speculative decoding is lossless: with greedy decoding every request's
//! events (text and log-probabilities) are the same with speculation as
//! without, for both proposers, alone and in a batch. (That sampling keeps
//! its distribution is tested on the sampler's verification itself.)

mod common;

use std::sync::{Arc, mpsc};
use std::time::Duration;

use lampo_engine::{
    ClockHandle, Engine, EngineConfig, Event, Finish, GenerateParams, Load, Request,
    SamplingParams, SimClock, SpecMode,
};
use lampo_model::LoadedModel;

fn prompts(lm: &LoadedModel) -> Vec<Vec<u32>> {
    let code = "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    return width * height\n";
    let texts = [
        format!("Rewrite this function with the argument names w and h:\n{code}\nRewritten:\n"),
        format!("Copy this code exactly:\n{code}\nCopy:\n"),
        "List the numbers from one to twenty in words: one, two, three,".to_string(),
        "The capital of France is".to_string(),
        "Write a short story about a robot who learns to paint.".to_string(),
        "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown".to_string(),
    ];
    texts
        .iter()
        .map(|t| lm.tokenizer.encode(t, true, false).unwrap())
        .collect()
}

fn run_all(
    lm: &Arc<LoadedModel>,
    draft: Option<Arc<LoadedModel>>,
    config: EngineConfig,
    prompts: &[Vec<u32>],
    sampling: SamplingParams,
    logprobs: Option<usize>,
) -> (Vec<Vec<Event>>, Load) {
    let engine = Engine::start_with_draft(lm.clone(), draft, config).unwrap();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (tx, rx) = mpsc::channel();
            let r = Request {
                prompt: p.clone(),
                params: GenerateParams {
                    max_tokens: 48,
                    sampling: sampling.clone(),
                    logprobs,
                },
                stop: Vec::new(),
                timeout: None,
                constraint: None,
                tier: lampo_engine::Tier::Default,
                first_token_within: None,
            };
            engine.submit(r, move |e| tx.send(e).is_ok()).unwrap();
            rx
        })
        .collect();
    let events = receivers
        .into_iter()
        .map(|rx| rx.iter().collect())
        .collect();
    (events, engine.load())
}

fn text(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Speculation proposing all it can every step: these tests are about
/// what verification keeps, not about when speculating pays (the model as
/// its own draft never pays).
fn config(speculation: SpecMode, max_batch: usize) -> EngineConfig {
    EngineConfig {
        speculation,
        max_batch,
        adaptive_speculation: false,
        ..EngineConfig::new(1024)
    }
}

#[test]
fn greedy_output_is_identical_with_each_proposer() {
    let lm = Arc::new(common::load("smollm2"));
    let prompts = prompts(&lm);
    let greedy = SamplingParams::greedy();
    // One request at a time, with log-probabilities.
    let (plain, _) = run_all(
        &lm,
        None,
        config(SpecMode::Off, 1),
        &prompts,
        greedy.clone(),
        Some(2),
    );
    for (i, e) in plain.iter().enumerate() {
        assert!(
            matches!(e.last(), Some(Event::Done(d)) if d.finish != Finish::Cancelled),
            "{i}: {e:?}"
        );
    }
    let (ngram, load) = run_all(
        &lm,
        None,
        config(SpecMode::NGram, 1),
        &prompts,
        greedy.clone(),
        Some(2),
    );
    assert_eq!(ngram, plain, "prompt lookup changed the output");
    assert!(load.ngram_proposed > 20, "{load:?}");
    assert!(load.ngram_accepted > 10, "{load:?}");

    // The model as its own draft: same vocabulary, nearly all accepted.
    let (draft, load) = run_all(
        &lm,
        Some(lm.clone()),
        config(SpecMode::Draft, 1),
        &prompts,
        greedy.clone(),
        Some(2),
    );
    assert_eq!(draft, plain, "the draft changed the output");
    assert!(load.draft_proposed > 50, "{load:?}");
    assert!(
        load.draft_accepted * 10 >= load.draft_proposed * 9,
        "a draft equal to the model is almost always right: {load:?}"
    );

    // All together in one batch, both proposers.
    let (batched, load) = run_all(
        &lm,
        Some(lm.clone()),
        config(SpecMode::Auto, 8),
        &prompts,
        greedy,
        Some(2),
    );
    assert_eq!(batched, plain, "speculation in a batch changed the output");
    assert!(
        load.ngram_proposed > 0 && load.draft_proposed > 0,
        "{load:?}"
    );
}

#[test]
fn sampled_requests_with_speculation_complete() {
    let lm = Arc::new(common::load("smollm2"));
    let prompts = prompts(&lm);
    let sampling = SamplingParams {
        seed: Some(3),
        ..SamplingParams::default()
    };
    let (events, load) = run_all(
        &lm,
        Some(lm.clone()),
        config(SpecMode::Auto, 4),
        &prompts,
        sampling,
        None,
    );
    for (i, e) in events.iter().enumerate() {
        assert!(!text(e).is_empty(), "{i}");
        match e.last() {
            Some(Event::Done(d)) => {
                assert!(
                    matches!(d.finish, Finish::Stop | Finish::Length),
                    "{i}: {d:?}"
                );
                assert!(d.completion_tokens <= 48);
            }
            other => panic!("{i}: {other:?}"),
        }
    }
    assert!(load.draft_accepted > 0, "{load:?}");
    assert_eq!((load.running, load.kv_usage), (0, 0.0));
}

#[test]
fn a_draft_with_another_vocabulary_is_refused() {
    let lm = Arc::new(common::load("smollm2"));
    let other = Arc::new(common::load("qwen05b"));
    let err = Engine::start_with_draft(lm.clone(), Some(other), config(SpecMode::Draft, 1))
        .err()
        .expect("refused");
    assert!(err.contains("vocabulary"), "{err}");
    let err = Engine::start(lm, config(SpecMode::Draft, 1))
        .err()
        .expect("refused");
    assert!(err.contains("draft model"), "{err}");
}

#[test]
fn adaptive_speculation_stops_proposing_what_does_not_pay() {
    let lm = Arc::new(common::load("smollm2"));
    let prompts = prompts(&lm);
    let greedy = SamplingParams::greedy();
    // Its decisions come from step times: simulated ones, so that they
    // are the same on a busy machine. A forward pass costs 10 ms and 1 ms
    // more per position, for the model and for the draft alike.
    let adaptive = |mode| EngineConfig {
        speculation: mode,
        max_batch: 1,
        clock: ClockHandle(Arc::new(SimClock::new(
            Duration::from_millis(10),
            Duration::from_millis(1),
        ))),
        ..EngineConfig::new(1024)
    };
    let (plain, _) = run_all(
        &lm,
        None,
        config(SpecMode::Off, 1),
        &prompts,
        greedy.clone(),
        None,
    );
    // The model as its own draft: each proposed token costs a whole step,
    // so no proposal length beats plain decoding; after its first
    // measurements a request proposes only in its periodic probes.
    let (events, load) = run_all(
        &lm,
        Some(lm.clone()),
        adaptive(SpecMode::Draft),
        &prompts,
        greedy.clone(),
        None,
    );
    assert_eq!(events, plain);
    let generated = load.generated_tokens;
    assert!(generated > 200, "{load:?}");
    assert!(
        load.draft_proposed * 5 < generated,
        "proposed {} tokens over {generated} generated: {load:?}",
        load.draft_proposed
    );
    // Prompt lookup costs nothing to propose: it keeps proposing where
    // the text repeats.
    let (events, load) = run_all(&lm, None, adaptive(SpecMode::NGram), &prompts, greedy, None);
    assert_eq!(events, plain);
    assert!(load.ngram_accepted > 20, "{load:?}");
}
