//! The scheduler under load: batched requests give their solo outputs,
//! departed clients stop costing compute, overload is refused, a full KV
//! cache makes requests wait, and shared prefixes are computed once.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use lampo_engine::{
    Clock, ClockHandle, Engine, EngineConfig, Event, Finish, GenerateParams, Load, Rejected,
    Request, SamplingParams, SimClock, Sink, Tier,
};
use lampo_model::LoadedModel;

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling,
        logprobs: None,
    }
}

/// Greedy decoding that never ends on its own: end-of-generation banned.
fn endless(lm: &LoadedModel) -> SamplingParams {
    let n_vocab = lm.model.config.n_vocab as u32;
    SamplingParams {
        logit_bias: (0..n_vocab)
            .filter(|&t| lm.tokenizer.is_eog(t))
            .map(|t| (t, -100.0))
            .collect(),
        ..SamplingParams::greedy()
    }
}

fn request(prompt: Vec<u32>, params: GenerateParams) -> Request {
    Request {
        prompt,
        params,
        stop: Vec::new(),
        timeout: None,
        constraint: None,
        tier: lampo_engine::Tier::Default,
        first_token_within: None,
    }
}

/// A client: events arrive on a channel; `leave` makes it disconnect, or
/// it disconnects by itself after the engine has asked whether it is
/// still there `patience` times (once a step, from its first step).
struct Client {
    tx: mpsc::Sender<Event>,
    gone: Arc<AtomicBool>,
    patience: Option<AtomicUsize>,
}

impl Sink for Client {
    fn send(&mut self, event: Event) -> bool {
        !self.gone.load(Ordering::Relaxed) && self.tx.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        if let Some(p) = &self.patience
            && p.fetch_sub(1, Ordering::Relaxed) <= 1
        {
            self.gone.store(true, Ordering::Relaxed);
        }
        self.gone.load(Ordering::Relaxed)
    }
}

struct Handle {
    rx: mpsc::Receiver<Event>,
    gone: Arc<AtomicBool>,
}

impl Handle {
    /// The text and how the request ended.
    fn wait(self) -> (String, Option<Finish>) {
        let mut text = String::new();
        for e in self.rx.iter() {
            match e {
                Event::Text { text: t, .. } => text.push_str(&t),
                Event::Done(d) => return (text, Some(d.finish)),
                Event::Started => {}
            }
        }
        (text, None)
    }

    fn leave(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }
}

fn submit(engine: &Engine, r: Request) -> Result<Handle, Rejected> {
    submit_client(engine, r, None)
}

/// As `submit`, with a client that leaves after `patience` questions.
fn submit_client(engine: &Engine, r: Request, patience: Option<usize>) -> Result<Handle, Rejected> {
    let (tx, rx) = mpsc::channel();
    let gone = Arc::new(AtomicBool::new(false));
    engine.submit(
        r,
        Client {
            tx,
            gone: gone.clone(),
            patience: patience.map(AtomicUsize::new),
        },
    )?;
    Ok(Handle { rx, gone })
}

/// The request alone, one at a time through an engine of its own.
fn solo(lm: &Arc<LoadedModel>, prompt: &[u32], p: &GenerateParams) -> String {
    common::Solo::new(lm, 2048).run(prompt, p).unwrap().0
}

/// Waits until `cond` holds for the engine's load (or fails after 60 s).
fn wait_for(engine: &Engine, what: &str, cond: impl Fn(&Load) -> bool) -> Load {
    let start = Instant::now();
    loop {
        let load = engine.load();
        if cond(&load) {
            return load;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {load:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// About `n` tokens of varied text.
fn long_text(lm: &LoadedModel, n: usize, seed: &str) -> String {
    let mut text = String::new();
    let mut i = 0;
    while lm.tokenizer.encode(&text, false, false).unwrap().len() < n {
        text.push_str(&format!(
            "Note {i} on {seed}: the river rose {} inches and the town council met at {} o'clock.\n",
            i * 7 % 13,
            i % 12 + 1
        ));
        i += 1;
    }
    text
}

fn prompts(lm: &LoadedModel) -> Vec<Vec<u32>> {
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "def fibonacci(n):",
        "List three colours.",
        "Why is the sky blue?",
        "Translate 'good morning' into Spanish.",
        "The history of Rome begins",
        "Explain recursion to a child.",
        "import numpy as np\n",
        "Once upon a time",
        "What is 17 times 3?",
        "Name a famous painter.",
        "How do bees make honey?",
        "SELECT * FROM",
        "The best way to learn is",
    ];
    let mut out: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| lm.tokenizer.encode(q, true, false).unwrap())
        .collect();
    // One long prompt, prefilled in chunks alongside the others' decoding.
    let long = long_text(lm, 300, "the flood") + "Summarize the notes:";
    out.push(lm.tokenizer.encode(&long, true, false).unwrap());
    out
}

/// Every request of a concurrent load gets exactly its solo output.
fn check_concurrent_equals_solo(
    lm: Arc<LoadedModel>,
    config: EngineConfig,
    max_tokens: usize,
    tier: impl Fn(usize) -> Tier,
) -> Load {
    let prompts = prompts(&lm);
    assert_eq!(prompts.len(), 16);
    let p = |i: usize| {
        // Every fourth request samples, with its own seed: half with
        // llama.cpp's filters, half with OpenAI's defaults (temperature
        // 1, no top-k, top-p or min-p: a draw over the whole vocabulary).
        let sampling = if i % 8 == 3 {
            SamplingParams {
                seed: Some(i as u64),
                ..SamplingParams::default()
            }
        } else if i % 8 == 7 {
            SamplingParams {
                seed: Some(i as u64),
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..SamplingParams::default()
            }
        } else if i % 4 == 1 {
            endless(&lm)
        } else {
            SamplingParams::greedy()
        };
        params(max_tokens, sampling)
    };
    let want: Vec<String> = prompts
        .iter()
        .enumerate()
        .map(|(i, pr)| solo(&lm, pr, &p(i)))
        .collect();
    let engine = Engine::start(lm.clone(), config).unwrap();
    let handles: Vec<Handle> = prompts
        .iter()
        .enumerate()
        .map(|(i, pr)| {
            let mut r = request(pr.clone(), p(i));
            r.tier = tier(i);
            submit(&engine, r).unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (text, finish) = h.wait();
        assert!(
            matches!(finish, Some(Finish::Length | Finish::Stop)),
            "request {i}: {finish:?}"
        );
        assert_eq!(text, want[i], "request {i} differs from its solo output");
    }
    wait_for(&engine, "the batch to empty", |l| {
        l.running == 0 && l.waiting == 0 && l.kv_usage == 0.0
    })
}

#[test]
fn sixteen_concurrent_requests_equal_their_solo_outputs() {
    let lm = Arc::new(common::load("smollm2"));
    let config = EngineConfig {
        max_batch: 16,
        step_tokens: 64,
        ..EngineConfig::new(1024)
    };
    let load = check_concurrent_equals_solo(lm, config, 32, |_| Tier::Default);
    assert_eq!(load.preemptions, 0);
}

/// Mixed tiers under memory pressure: flex requests give way to the
/// others and are recomputed, priority ones never give way to them, and
/// every output stays its solo output.
#[test]
fn a_full_kv_cache_makes_requests_wait_not_fail_in_every_tier() {
    let lm = Arc::new(common::load("smollm2"));
    // Room for a bit more than one full context: requests queue for
    // memory, and running ones are preempted and recomputed.
    let block = lampo_model::kv_block_bytes(&lm.model.config, 16);
    let config = EngineConfig {
        max_batch: 16,
        step_tokens: 64,
        kv_memory: 34 * block,
        ..EngineConfig::new(512)
    };
    let load = check_concurrent_equals_solo(lm, config, 96, |i| Tier::ALL[i % 3]);
    assert!(load.preemptions > 0, "no request was preempted: {load:?}");
}

#[test]
fn a_client_leaving_mid_prefill_stops_the_work_and_frees_its_blocks() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm
        .tokenizer
        .encode(&long_text(&lm, 1500, "the harvest"), true, false)
        .unwrap();
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            step_tokens: 32,
            ..EngineConfig::new(2048)
        },
    )
    .unwrap();
    // The client is asked once while it waits and once after each step:
    // it leaves after three 32-token prefill steps.
    let h = submit_client(
        &engine,
        request(prompt.clone(), params(16, SamplingParams::greedy())),
        Some(4),
    )
    .unwrap();
    // The worker counts the request out of `running` before it publishes
    // the blocks it gave back (both in the same step): wait for both, so
    // a leaked block shows as this wait timing out with the load printed.
    let after = wait_for(&engine, "the request to leave and free its blocks", |l| {
        l.running == 0 && l.waiting == 0 && l.kv_usage == 0.0
    });
    assert_eq!(
        after.prefill_tokens,
        96,
        "{} of {} prompt tokens were computed",
        after.prefill_tokens,
        prompt.len()
    );
    // Nothing more of it is computed: a later request's prefill is all
    // the counter sees.
    let probe = lm.tokenizer.encode("Hi there", true, false).unwrap();
    submit(
        &engine,
        request(probe.clone(), params(2, SamplingParams::greedy())),
    )
    .unwrap()
    .wait();
    assert_eq!(
        engine.load().prefill_tokens,
        after.prefill_tokens + probe.len() as u64,
        "prefill went on"
    );
    // Nothing was sent after Started: no text, no Done.
    let events: Vec<Event> = h.rx.try_iter().collect();
    assert_eq!(events, [Event::Started]);
}

#[test]
fn a_client_leaving_mid_stream_frees_its_place_for_the_next() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm
        .tokenizer
        .encode("Tell me a long story.", true, false)
        .unwrap();
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 1,
            ..EngineConfig::new(1024)
        },
    )
    .unwrap();
    let first = submit(&engine, request(prompt.clone(), params(900, endless(&lm)))).unwrap();
    let second = submit(&engine, request(prompt.clone(), params(8, endless(&lm)))).unwrap();
    // The first streams; the second waits for its place.
    let mut texts = 0;
    while texts < 3 {
        if let Event::Text { .. } = first.rx.recv().unwrap() {
            texts += 1;
        }
    }
    assert_eq!(engine.load().waiting, 1);
    first.leave();
    let (_, finish) = second.wait();
    assert_eq!(finish, Some(Finish::Length));
    wait_for(&engine, "an empty engine", |l| {
        l.running == 0 && l.waiting == 0 && l.kv_usage == 0.0
    });
}

#[test]
fn a_full_queue_refuses_while_accepted_requests_complete() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm.tokenizer.encode("Count to ten:", true, false).unwrap();
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 1,
            max_queue: 2,
            ..EngineConfig::new(512)
        },
    )
    .unwrap();
    let r = || request(prompt.clone(), params(24, SamplingParams::greedy()));
    // A request that runs until its client leaves holds the only place.
    let blocker = submit(
        &engine,
        request(prompt.clone(), params(10_000, endless(&lm))),
    )
    .unwrap();
    assert_eq!(blocker.rx.recv().unwrap(), Event::Started);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match submit(&engine, r()) {
            Ok(h) => accepted.push(h),
            Err(Rejected::QueueFull(2)) => refused += 1,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    assert_eq!((accepted.len(), refused), (2, 3));
    blocker.leave();
    let texts: Vec<String> = accepted
        .into_iter()
        .map(|h| {
            let (text, finish) = h.wait();
            assert!(matches!(finish, Some(Finish::Length | Finish::Stop)));
            text
        })
        .collect();
    assert!(!texts[0].is_empty());
    assert_eq!(texts[0], texts[1]);
    // Room again once the queue drained.
    assert!(submit(&engine, r()).is_ok());
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let lm = Arc::new(common::load("smollm2"));
    let system = long_text(&lm, 1000, "the bridge");
    let ask = |q: &str| {
        lm.tokenizer
            .encode(&format!("{system}Question: {q}\nAnswer:"), true, false)
            .unwrap()
    };
    let (a, b) = (ask("who met?"), ask("how high did the river rise?"));
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared >= 1000, "{shared}");
    let greedy = params(12, SamplingParams::greedy());
    let want_b = solo(&lm, &b, &greedy);
    let engine = Engine::start(lm.clone(), EngineConfig::new(2048)).unwrap();

    submit(&engine, request(a.clone(), greedy.clone()))
        .unwrap()
        .wait();
    let before = engine.load();
    assert_eq!(before.prefill_tokens as usize, a.len());
    let (text, _) = submit(&engine, request(b.clone(), greedy.clone()))
        .unwrap()
        .wait();
    let after = engine.load();
    let computed = (after.prefill_tokens - before.prefill_tokens) as usize;
    // Only what follows the last whole block of the shared prefix.
    assert!(
        computed <= b.len() - shared + 16,
        "computed {computed} of {} tokens, {shared} shared",
        b.len()
    );
    assert_eq!(
        after.prefix_hits - before.prefix_hits,
        (b.len() - computed) as u64
    );
    assert_eq!(text, want_b, "a cached prefix changed the output");

    // Two requests arriving together with a new shared prefix: one
    // computes it, the other waits for it rather than computing it too.
    let other = long_text(&lm, 600, "the mill");
    let c = lm
        .tokenizer
        .encode(&format!("{other}Q: first?"), true, false)
        .unwrap();
    let d = lm
        .tokenizer
        .encode(&format!("{other}Q: second one?"), true, false)
        .unwrap();
    let want_d = solo(&lm, &d, &greedy);
    let start = engine.load().prefill_tokens;
    let hc = submit(&engine, request(c.clone(), greedy.clone())).unwrap();
    let hd = submit(&engine, request(d.clone(), greedy.clone())).unwrap();
    hc.wait();
    assert_eq!(hd.wait().0, want_d);
    let computed = (engine.load().prefill_tokens - start) as usize;
    assert!(
        computed < c.len() + 64,
        "computed {computed} for prompts of {} and {}",
        c.len(),
        d.len()
    );
}

#[test]
fn a_request_past_its_timeout_ends_timed_out() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm.tokenizer.encode("Hello", true, false).unwrap();
    // Simulated time: each step takes 10 ms, however busy the machine.
    let clock = Arc::new(SimClock::new(Duration::from_millis(10), Duration::ZERO));
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 1,
            clock: ClockHandle(clock.clone()),
            ..EngineConfig::new(2048)
        },
    )
    .unwrap();
    let busy = submit(
        &engine,
        request(prompt.clone(), params(10_000, endless(&lm))),
    )
    .unwrap();
    assert_eq!(busy.rx.recv().unwrap(), Event::Started);
    // Queued behind a request that never ends: its 20 ms pass waiting.
    let mut late = request(prompt.clone(), params(8, SamplingParams::greedy()));
    late.timeout = Some(Duration::from_millis(20));
    let (text, finish) = submit(&engine, late).unwrap().wait();
    assert_eq!((text.as_str(), finish), ("", Some(Finish::TimedOut)));
    busy.leave();
    // Running: about 30 steps in, its 300 ms are up.
    let mut slow = request(prompt, params(10_000, endless(&lm)));
    slow.timeout = Some(Duration::from_millis(300));
    let started = clock.now();
    let (text, finish) = submit(&engine, slow).unwrap().wait();
    assert_eq!(finish, Some(Finish::TimedOut));
    assert!(!text.is_empty(), "it ran before its time was up");
    let took = clock.now() - started;
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(330)).contains(&took),
        "{took:?}"
    );
}

#[test]
fn a_first_token_deadline_the_forecast_cannot_meet_is_refused_at_once() {
    let lm = Arc::new(common::load("smollm2"));
    // Simulated time: a step costs 10 ms plus 1 ms a position, so steps
    // sized to 100 ms settle at 90 positions.
    let clock = Arc::new(SimClock::new(
        Duration::from_millis(10),
        Duration::from_millis(1),
    ));
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 1,
            clock: ClockHandle(clock.clone()),
            ..EngineConfig::new(2048)
        },
    )
    .unwrap();
    let long = lm
        .tokenizer
        .encode(&long_text(&lm, 1500, "the harvest"), true, false)
        .unwrap();
    let short = lm.tokenizer.encode("Hello", true, false).unwrap();
    // Before any step is measured there is no forecast: nothing is refused.
    assert_eq!(engine.first_token_eta(Tier::Default, None, 10), None);
    // While the long prompt is computed, the budget published is a
    // step's capacity from the first measured step on (the prompt's last
    // chunk is smaller than a step; the budget must not read as the cap).
    let handle = submit(&engine, request(long, params(1, SamplingParams::greedy()))).unwrap();
    let (text, seen) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| handle.wait().0);
        let mut seen = Vec::new();
        while !waiter.is_finished() {
            let b = engine.load().step_budget;
            if seen.last() != Some(&b) {
                seen.push(b);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (waiter.join().unwrap(), seen)
    });
    assert!(!text.is_empty());
    let settled: Vec<_> = seen
        .iter()
        .skip_while(|b| !(80..=100).contains(*b))
        .collect();
    assert!(
        settled.iter().all(|b| (80..=100).contains(*b)),
        "budgets published: {seen:?}"
    );
    let budget = wait_for(&engine, "the step budget", |l| l.step_budget > 0).step_budget;
    assert!((80..=100).contains(&budget), "step budget {budget}");
    // A 1 ms deadline cannot be met by a step that takes 100: refused
    // before it costs anything.
    let mut hurried = request(short.clone(), params(4, SamplingParams::greedy()));
    hurried.first_token_within = Some(Duration::from_millis(1));
    match submit(&engine, hurried) {
        Err(Rejected::Unmeetable(eta, within)) => {
            assert!(eta > within && eta >= Duration::from_millis(100), "{eta:?}")
        }
        other => panic!("not refused: {:?}", other.err()),
    }
    assert_eq!(engine.load().waiting, 0, "nothing was queued");
    // A second is plenty for an idle engine.
    let mut easy = request(short.clone(), params(4, SamplingParams::greedy()));
    easy.first_token_within = Some(Duration::from_secs(1));
    let (text, finish) = submit(&engine, easy).unwrap().wait();
    assert!(matches!(finish, Some(Finish::Length | Finish::Stop)) && !text.is_empty());
    // A forecast is not a promise: queued behind a request that never
    // ends (one place in the batch), its first token never comes, and it
    // ends as timed out once its deadline passes.
    let busy = submit(
        &engine,
        request(short.clone(), params(100_000, endless(&lm))),
    )
    .unwrap();
    assert_eq!(busy.rx.recv().unwrap(), Event::Started);
    let mut stuck = request(short, params(4, SamplingParams::greedy()));
    stuck.first_token_within = Some(Duration::from_millis(500));
    let (text, finish) = submit(&engine, stuck).unwrap().wait();
    assert_eq!((text.as_str(), finish), ("", Some(Finish::TimedOut)));
    busy.leave();
}

#[test]
fn a_flex_request_is_refused_once_half_the_queue_is_taken() {
    let lm = Arc::new(common::load("smollm2"));
    let prompt = lm.tokenizer.encode("Hello", true, false).unwrap();
    let engine = Engine::start(
        lm.clone(),
        EngineConfig {
            max_batch: 1,
            max_queue: 4,
            ..EngineConfig::new(512)
        },
    )
    .unwrap();
    let busy = submit(
        &engine,
        request(prompt.clone(), params(100_000, endless(&lm))),
    )
    .unwrap();
    assert_eq!(busy.rx.recv().unwrap(), Event::Started);
    let with = |tier| {
        let mut r = request(prompt.clone(), params(4, SamplingParams::greedy()));
        r.tier = tier;
        r
    };
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(submit(&engine, with(Tier::Flex)).unwrap());
    }
    assert!(matches!(
        submit(&engine, with(Tier::Flex)),
        Err(Rejected::QueueFull(2))
    ));
    // The other tiers still find room.
    queued.push(submit(&engine, with(Tier::Default)).unwrap());
    queued.push(submit(&engine, with(Tier::Priority)).unwrap());
    assert!(matches!(
        submit(&engine, with(Tier::Priority)),
        Err(Rejected::QueueFull(4))
    ));
    let load = engine.load();
    assert_eq!(load.waiting_by_tier, [1, 1, 2]);
    assert_eq!(load.running_by_tier, [0, 1, 0]);
    busy.leave();
    for h in queued {
        let (_, finish) = h.wait();
        assert!(matches!(finish, Some(Finish::Length | Finish::Stop)));
    }
}
