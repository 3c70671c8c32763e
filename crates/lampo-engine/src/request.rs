//! What goes into the engine and what comes out: a request (a tokenized
//! prompt, its generation settings, stop strings, a time limit, an output
//! constraint), the events it produces, how it ended, and the engine's
//! load. Shared by the engine's handle and its worker.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use crate::constrain::Constraint;
use crate::sampling::SamplingParams;

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Report each generated token's log-probability and this many most
    /// likely alternatives (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

/// A generated token's log-probability under the model (before sampling
/// settings reshape the distribution), with the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

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
