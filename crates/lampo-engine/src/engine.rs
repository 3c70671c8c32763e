//! The engine's request interface: callers submit a tokenized prompt with
//! its parameters and receive text events. A worker thread owns the model
//! and runs every admitted request together, step by step (see
//! [`crate::scheduler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use lampo_model::{KvStore, LoadedModel};

use crate::clock::ClockHandle;
use crate::constrain::{Compiler, Constraint, Grammar};
use crate::generate::{GenerateParams, TokenLogprob};
use crate::scheduler;
use crate::speculate::{SpecMode, check_draft};

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    /// Strings that end generation; never part of the output.
    pub stop: Vec<String>,
    /// How long the request may take from submission to its end, waiting
    /// included (`None`: no limit).
    pub timeout: Option<Duration>,
    /// What the output must match (see [`Engine::constrain`]).
    pub constraint: Option<Constraint>,
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

/// How busy the engine is and what it has done, for metrics and load balancers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub waiting: usize,
    pub running: usize,
    /// Share of the KV cache's blocks in use by requests (0 to 1); blocks
    /// that only keep a prefix for later reuse do not count.
    pub kv_usage: f64,
    /// Prompt positions computed (prefill, including recomputation after
    /// preemption), since the start.
    pub prefill_tokens: u64,
    /// Tokens generated (sampled or accepted from a proposal), since the start.
    pub generated_tokens: u64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    /// Requests set back to waiting to free KV memory.
    pub preemptions: u64,
    /// Speculative decoding: tokens proposed and accepted, by prompt lookup
    /// and by the draft model.
    pub ngram_proposed: u64,
    pub ngram_accepted: u64,
    pub draft_proposed: u64,
    pub draft_accepted: u64,
}

/// Shared between the handle and the worker: the worker writes, metrics read.
#[derive(Default)]
pub(crate) struct Counters {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub blocks_in_use: AtomicUsize,
    pub blocks_total: AtomicUsize,
    pub prefill_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub preemptions: AtomicU64,
    pub ngram_proposed: AtomicU64,
    pub ngram_accepted: AtomicU64,
    pub draft_proposed: AtomicU64,
    pub draft_accepted: AtomicU64,
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
    /// The request's timeout passed.
    TimedOut,
    /// The model failed on this request (the engine keeps serving).
    Error(String),
    /// The request cannot go on for a reason of its own: its output
    /// constraint failed (a parser limit was reached, or it allows no
    /// token). A client error, described in one line.
    Invalid(String),
}

/// Receives a request's events.
pub trait Sink: Send {
    /// Delivers an event; `false` means the receiver is gone (the request
    /// is cancelled).
    fn send(&mut self, event: Event) -> bool;

    /// Whether the receiver is gone, asked before every step so that a
    /// request stops even while it has nothing to say (a long prefill).
    fn is_closed(&self) -> bool {
        false
    }
}

impl<F: FnMut(Event) -> bool + Send> Sink for F {
    fn send(&mut self, event: Event) -> bool {
        self(event)
    }
}

/// Why `submit` refused a request; its sink was not called.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("the engine's queue is full ({0} requests waiting)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0}")]
    Invalid(String),
}

/// How the engine divides its work and memory.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most positions (prompt and output) of one request.
    pub n_ctx: usize,
    /// Most requests generating at once.
    pub max_batch: usize,
    /// Most tokens one step computes: every running request's next token,
    /// then prompt chunks up to this budget, so a long prompt cannot stall
    /// the streams already running.
    pub step_tokens: usize,
    /// Bytes of KV cache for all requests and the prefix cache together.
    pub kv_memory: usize,
    /// Most requests waiting for a place; more are refused.
    pub max_queue: usize,
    /// Positions per KV block: the unit of allocation and of prefix reuse.
    pub block_size: usize,
    /// Speculative decoding for every request.
    pub speculation: SpecMode,
    /// Most tokens proposed per step.
    pub max_proposal: usize,
    /// Size each request's proposals from its measured acceptance and
    /// costs (off: every step proposes as many as it can, up to
    /// `max_proposal`, for tests and for measuring fixed lengths).
    pub adaptive_speculation: bool,
    /// Where deadlines and step costs are read (tests simulate it).
    pub clock: ClockHandle,
}

impl EngineConfig {
    /// Defaults for a context of `n_ctx` tokens.
    pub fn new(n_ctx: usize) -> EngineConfig {
        EngineConfig {
            n_ctx,
            max_batch: 8,
            step_tokens: 256,
            kv_memory: 1 << 30,
            max_queue: 128,
            block_size: 16,
            speculation: SpecMode::Off,
            max_proposal: 16,
            adaptive_speculation: true,
            clock: ClockHandle::real(),
        }
    }

    /// KV blocks the memory budget buys for a model of `config`, or why
    /// the settings cannot work.
    pub fn kv_blocks(&self, config: &lampo_model::Config) -> Result<usize, String> {
        if !self.block_size.is_power_of_two() {
            return Err(format!(
                "the KV block size must be a power of two, not {}",
                self.block_size
            ));
        }
        if self.max_batch == 0 {
            return Err("the batch must hold at least one request".into());
        }
        if self.n_ctx < 2 {
            return Err(format!(
                "a context of {} tokens holds no prompt and answer (at least 2)",
                self.n_ctx
            ));
        }
        if self.step_tokens < self.max_batch {
            return Err(format!(
                "a step of {} tokens cannot advance a batch of {} requests",
                self.step_tokens, self.max_batch
            ));
        }
        let per_block = KvStore::block_bytes(config, self.block_size);
        let blocks = self.kv_memory / per_block;
        // One request at full context must fit, with its next token.
        let needed = (self.n_ctx + 1).div_ceil(self.block_size);
        if blocks < needed {
            return Err(format!(
                "{} MiB of KV memory holds {} positions, less than one {}-token context ({} MiB); \
                 raise the KV memory or lower the context",
                self.kv_memory >> 20,
                blocks * self.block_size,
                self.n_ctx,
                (needed * per_block).div_ceil(1 << 20)
            ));
        }
        Ok(blocks)
    }

    /// Bytes of KV memory that hold `n_ctx` positions of a model of
    /// `config` (one request at full context, with its next token).
    pub fn kv_bytes_for(&self, config: &lampo_model::Config, n_ctx: usize) -> usize {
        let per_block = KvStore::block_bytes(config, self.block_size);
        ((n_ctx + 1).div_ceil(self.block_size) + 1) * per_block
    }
}

pub(crate) struct Job {
    pub request: Request,
    pub sink: Box<dyn Sink>,
    /// On the engine's clock.
    pub deadline: Option<Duration>,
}

/// A handle to the engine's worker; dropping it stops the worker once
/// the requests already submitted are done.
pub struct Engine {
    model: Arc<LoadedModel>,
    config: EngineConfig,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    grammars: Compiler,
}

impl Engine {
    /// Starts a worker serving `model`, or says why `config` cannot work.
    pub fn start(model: Arc<LoadedModel>, config: EngineConfig) -> Result<Engine, String> {
        Engine::start_with_draft(model, None, config)
    }

    /// As `start`, with a draft model for speculative decoding (it must
    /// share the model's vocabulary).
    pub fn start_with_draft(
        model: Arc<LoadedModel>,
        draft: Option<Arc<LoadedModel>>,
        config: EngineConfig,
    ) -> Result<Engine, String> {
        let n_blocks = config.kv_blocks(&model.model.config)?;
        if let Some(d) = &draft {
            check_draft(&model, d)?;
        } else if config.speculation == SpecMode::Draft {
            return Err("speculation by a draft model needs a draft model".into());
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        counters.blocks_total.store(n_blocks, Ordering::Relaxed);
        let (lm, cfg, c) = (model.clone(), config.clone(), counters.clone());
        let worker = std::thread::Builder::new()
            .name("lampo-engine".into())
            .spawn(move || scheduler::run(&lm, draft.as_deref(), &cfg, n_blocks, rx, &c))
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
        Ok(Engine {
            grammars: Compiler::new(model.clone()),
            model,
            config,
            jobs: Some(tx),
            worker: Some(worker),
            counters,
        })
    }

    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    pub fn context_size(&self) -> usize {
        self.config.n_ctx
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Compiles `grammar` into a constraint for one request, or says
    /// what is wrong with it. The first call builds the vocabulary trie.
    pub fn constrain(&self, grammar: Grammar) -> Result<Constraint, String> {
        self.grammars.compile(grammar)
    }

    pub fn load(&self) -> Load {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Load {
            waiting: c.waiting.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed),
            kv_usage: c.blocks_in_use.load(Ordering::Relaxed) as f64
                / c.blocks_total.load(Ordering::Relaxed).max(1) as f64,
            prefill_tokens: get(&c.prefill_tokens),
            generated_tokens: get(&c.generated_tokens),
            prefix_queries: get(&c.prefix_queries),
            prefix_hits: get(&c.prefix_hits),
            preemptions: get(&c.preemptions),
            ngram_proposed: get(&c.ngram_proposed),
            ngram_accepted: get(&c.ngram_accepted),
            draft_proposed: get(&c.draft_proposed),
            draft_accepted: get(&c.draft_accepted),
        }
    }

    /// Queues a request; its events go to `sink`. Refuses, without calling
    /// the sink, a request that cannot run or that finds the queue full.
    pub fn submit(&self, request: Request, sink: impl Sink + 'static) -> Result<(), Rejected> {
        let n_ctx = self.config.n_ctx;
        let n_vocab = self.model.model.config.n_vocab;
        if request.prompt.is_empty() {
            return Err(Rejected::Invalid("the prompt is empty".into()));
        }
        if request.prompt.len() >= n_ctx {
            return Err(Rejected::Invalid(format!(
                "the prompt has {} tokens; the context holds {n_ctx} with room to generate",
                request.prompt.len()
            )));
        }
        if let Some(&bad) = request.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Rejected::Invalid(format!(
                "token id {bad} is outside the vocabulary of {n_vocab}"
            )));
        }
        let jobs = self.jobs.as_ref().ok_or(Rejected::Stopped)?;
        let waiting = &self.counters.waiting;
        let queued = waiting.fetch_add(1, Ordering::Relaxed);
        if queued >= self.config.max_queue {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Rejected::QueueFull(queued));
        }
        let deadline = request.timeout.map(|t| self.config.clock.now() + t);
        let job = Job {
            request,
            sink: Box::new(sink),
            deadline,
        };
        jobs.send(job).map_err(|_| {
            waiting.fetch_sub(1, Ordering::Relaxed);
            Rejected::Stopped
        })
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
