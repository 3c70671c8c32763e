//! The engine's request interface: requests that fail or panic fail alone,
//! cancelled ones stop, and the worker keeps serving.

mod common;

use std::sync::Arc;
use std::sync::mpsc;

use lampo_engine::{
    Engine, EngineConfig, Event, Finish, GenerateParams, Rejected, Request, SamplingParams,
};

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        params: GenerateParams {
            max_tokens,
            sampling: SamplingParams::greedy(),
            logprobs: None,
        },
        stop: Vec::new(),
        timeout: None,
        constraint: None,
        tier: lampo_engine::Tier::Default,
        first_token_within: None,
    }
}

/// Submits and gathers every event.
fn events(engine: &Engine, r: Request) -> Vec<Event> {
    let (tx, rx) = mpsc::channel();
    engine
        .submit(r, move |e| tx.send(e).is_ok())
        .expect("accepted");
    rx.iter().collect()
}

fn finish(events: &[Event]) -> Option<Finish> {
    match events.last()? {
        Event::Done(d) => Some(d.finish.clone()),
        _ => None,
    }
}

#[test]
fn failures_panics_and_cancellations_stay_with_their_request() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm
        .tokenizer
        .encode("The capital of France is", true, false)
        .unwrap();
    let engine = Engine::start(lm.clone(), EngineConfig::new(256)).unwrap();

    let ok = events(&engine, request(prompt.clone(), 8));
    assert_eq!(ok.first(), Some(&Event::Started));
    assert_eq!(finish(&ok), Some(Finish::Length));

    // A token id outside the vocabulary, an empty prompt, one that fills
    // the context: refused at once, the sink never called.
    for prompt in [vec![1, u32::MAX], vec![], vec![1; 256]] {
        let refused = engine.submit(request(prompt, 8), |_: Event| -> bool {
            panic!("a refused request's sink is called")
        });
        assert!(matches!(refused, Err(Rejected::Invalid(_))), "{refused:?}");
    }

    // A sink that panics on the first text: the request ends with an error
    // and the worker survives.
    let (tx, rx) = mpsc::channel();
    engine
        .submit(request(prompt.clone(), 8), move |e| {
            if matches!(e, Event::Text { .. }) {
                panic!("the client broke");
            }
            tx.send(e).is_ok()
        })
        .unwrap();
    let got: Vec<Event> = rx.iter().collect();
    match finish(&got) {
        Some(Finish::Error(why)) => assert!(why.contains("the client broke"), "{why}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // A client that goes away after the first text stops the generation.
    let (tx, rx) = mpsc::channel();
    engine
        .submit(request(prompt.clone(), 200), move |e| {
            let text = matches!(e, Event::Text { .. });
            tx.send(e).is_ok() && !text
        })
        .unwrap();
    let got: Vec<Event> = rx.iter().collect();
    assert_eq!(
        got.iter()
            .filter(|e| matches!(e, Event::Text { .. }))
            .count(),
        1
    );
    assert!(!got.iter().any(|e| matches!(e, Event::Done(_))));

    // And the engine still answers as it did at first.
    let again = events(&engine, request(prompt, 8));
    assert_eq!(again, ok);
    let load = engine.load();
    assert_eq!((load.waiting, load.running), (0, 0));
}
