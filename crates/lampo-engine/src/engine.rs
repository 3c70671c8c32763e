//! The engine's request interface: callers submit a tokenized prompt with
//! its parameters and receive text events; a worker thread owns the model
//! and runs requests one after another. The scheduler (continuous
//! batching, paged KV cache) will replace the worker behind this same
//! interface.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use lampo_model::LoadedModel;

use std::collections::VecDeque;

use crate::generate::{FinishReason, GenerateParams, Session, TokenLogprob};

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Strings that end generation; never part of the output.
    pub stop: Vec<String>,
}

/// What a request produces, in order: `Started` when the engine takes it
/// from the queue, text pieces, then one `Done`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Started,
    /// Text, with the log-probabilities (when asked for) of the tokens whose
    /// text begins in it.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Done),
}

/// How busy the engine is, for metrics and load balancers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub waiting: usize,
    pub running: usize,
    /// Share of the KV cache holding tokens (0 to 1).
    pub kv_usage: f64,
}

#[derive(Default)]
struct Counters {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_tokens: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Done {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Why a request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// The receiver went away (the client disconnected).
    Cancelled,
    /// The model failed on this request (the engine keeps serving).
    Error(String),
}

/// Receives a request's events; returning `false` cancels the request.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

struct Job {
    request: Request,
    sink: Sink,
}

/// A handle to the engine's worker; dropping the last one stops it after
/// the requests already submitted.
pub struct Engine {
    model: Arc<LoadedModel>,
    n_ctx: usize,
    jobs: Option<mpsc::Sender<Box<Job>>>,
    worker: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Engine {
    /// Starts a worker serving `model` with a context of `n_ctx` tokens.
    pub fn start(model: Arc<LoadedModel>, n_ctx: usize) -> Engine {
        let (tx, rx) = mpsc::channel::<Box<Job>>();
        let lm = model.clone();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let worker = std::thread::Builder::new()
            .name("lampo-engine".into())
            .spawn(move || {
                let mut session = Session::new(&lm, n_ctx);
                for job in rx {
                    c.waiting.fetch_sub(1, Ordering::Relaxed);
                    c.running.fetch_add(1, Ordering::Relaxed);
                    let Job { request, mut sink } = *job;
                    if sink(Event::Started) {
                        // A request that panics fails alone: its sink hears
                        // why, the session starts afresh, the worker goes on.
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                run(&mut session, &request, &mut sink)
                            }));
                        if let Err(panic) = outcome {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".into());
                            session = Session::new(&lm, n_ctx);
                            sink(Event::Done(Done {
                                finish: Finish::Error(format!("the engine failed: {why}")),
                                prompt_tokens: request.prompt.len(),
                                completion_tokens: 0,
                            }));
                        }
                    }
                    c.kv_tokens
                        .store(session.cached_tokens(), Ordering::Relaxed);
                    c.running.fetch_sub(1, Ordering::Relaxed);
                    // Dropped last: a caller that waits for its channel to
                    // close sees the counters already settled.
                    drop(sink);
                }
            })
            .expect("spawning the engine thread");
        Engine {
            model,
            n_ctx,
            jobs: Some(tx),
            worker: Some(worker),
            counters,
        }
    }

    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    pub fn context_size(&self) -> usize {
        self.n_ctx
    }

    pub fn load(&self) -> Load {
        let c = &self.counters;
        Load {
            waiting: c.waiting.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            kv_usage: c.kv_tokens.load(Ordering::Relaxed) as f64 / self.n_ctx.max(1) as f64,
        }
    }

    /// Queues a request; its events go to `sink`.
    pub fn submit(&self, request: Request, sink: Sink) {
        let job = Box::new(Job { request, sink });
        let Some(jobs) = &self.jobs else { return };
        self.counters.waiting.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(mut job)) = jobs.send(job) {
            self.counters.waiting.fetch_sub(1, Ordering::Relaxed);
            (job.sink)(Event::Done(Done {
                finish: Finish::Error("the engine has stopped".into()),
                prompt_tokens: job.request.prompt.len(),
                completion_tokens: 0,
            }));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn run(session: &mut Session, request: &Request, sink: &mut Sink) {
    let mut stops = StopMatcher::new(&request.stop);
    let mut open = true;
    let mut hit_stop = false;
    // Log-probabilities wait until the text of their token is emitted;
    // each is keyed by the byte offset where its token's text begins.
    let mut pending: VecDeque<(usize, TokenLogprob)> = VecDeque::new();
    let (mut generated, mut emitted) = (0usize, 0usize);
    let release = |upto: usize, pending: &mut VecDeque<(usize, TokenLogprob)>| {
        let mut out = Vec::new();
        while pending.front().is_some_and(|(at, _)| *at < upto) {
            out.push(pending.pop_front().expect("checked").1);
        }
        out
    };
    let result = session.generate_tokens(&request.prompt, &request.params, |text, lp| {
        if let Some(lp) = lp {
            pending.push_back((generated, lp));
        }
        generated += text.len();
        let (emit, hit) = stops.push(text);
        if !emit.is_empty() {
            emitted += emit.len();
            let logprobs = release(emitted, &mut pending);
            if !sink(Event::Text {
                text: emit,
                logprobs,
            }) {
                open = false;
                return false;
            }
        }
        hit_stop = hit;
        !hit
    });
    let done = match result {
        Ok(g) => {
            let finish = match g.finish {
                _ if !open => Finish::Cancelled,
                _ if hit_stop => Finish::Stop,
                FinishReason::Stop => Finish::Stop,
                FinishReason::Length => Finish::Length,
                FinishReason::Cancelled => Finish::Cancelled,
            };
            if open && !hit_stop {
                let rest = stops.finish();
                let logprobs = release(usize::MAX, &mut pending);
                if !rest.is_empty() || !logprobs.is_empty() {
                    open = sink(Event::Text {
                        text: rest,
                        logprobs,
                    });
                }
            }
            Done {
                finish,
                prompt_tokens: request.prompt.len(),
                completion_tokens: g.tokens.len(),
            }
        }
        Err(e) => Done {
            finish: Finish::Error(e.to_string()),
            prompt_tokens: request.prompt.len(),
            completion_tokens: 0,
        },
    };
    if open {
        sink(Event::Done(done));
    }
}

/// Holds back text that might be the start of a stop string, so a stop
/// string split across tokens is caught and never partly emitted.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds generated text; returns what can be emitted now and whether a
    /// stop string was found (everything from it on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return (emit, true);
        }
        // Keep the longest tail that begins some stop string.
        let keep = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..keep].to_string();
        self.pending.drain(..keep);
        (emit, false)
    }

    /// The text held back when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_stops(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (emit, hit) = m.push(p);
            out.push_str(&emit);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_spanning_pieces_are_cut_and_never_leak() {
        assert_eq!(
            run_stops(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run_stops(&["END"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
        // A partial match that does not complete is emitted in the end.
        assert_eq!(
            run_stops(&["END"], &["abc E", "N", "x"]),
            ("abc ENx".into(), false)
        );
        assert_eq!(run_stops(&["END"], &["abc EN"]), ("abc EN".into(), false));
        // The earliest of several stops wins; multi-byte text stays whole.
        assert_eq!(run_stops(&["b", "é"], &["aéb"]), ("a".into(), true));
        assert_eq!(run_stops(&[], &["x", "y"]), ("xy".into(), false));
    }

    #[test]
    fn nothing_held_back_can_be_emitted_early() {
        let stops = vec!["<|end|>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("text <|e"), ("text ".into(), false));
        assert_eq!(m.push("nd"), (String::new(), false));
        assert_eq!(m.push("|> after"), (String::new(), true));
    }
}
