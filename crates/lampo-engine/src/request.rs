//! What goes into the engine and what comes out: a request (a tokenized
//! prompt, its generation settings, stop strings, a time limit, an output
//! constraint, its service tier and first-token deadline), the events it
//! produces, how it ended, and the engine's load. Shared by the engine's
//! handle and its worker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use crate::constrain::Constraint;
use crate::sampling::SamplingParams;
use crate::scheduler::Forecast;

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
    /// How it ranks against other requests when the engine is busy.
    pub tier: Tier,
    /// How soon after submission its first token must come (`None`: no
    /// promise). One the engine forecasts it cannot meet is refused; one
    /// that misses it anyway ends as timed out.
    pub first_token_within: Option<Duration>,
}

/// A request's service tier (OpenAI's `service_tier`), most urgent first:
/// `Priority` is admitted and prefilled first and never gives way to the
/// others; `Flex` takes only capacity the others leave free, gives its
/// memory back first and is refused first when the queue fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Priority,
    #[default]
    Default,
    Flex,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Priority, Tier::Default, Tier::Flex];

    /// The name OpenAI's API uses.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Priority => "priority",
            Tier::Default => "default",
            Tier::Flex => "flex",
        }
    }

    /// The tier named `name` (`auto` is the default tier).
    pub fn parse(name: &str) -> Option<Tier> {
        match name {
            "priority" => Some(Tier::Priority),
            "default" | "auto" => Some(Tier::Default),
            "flex" => Some(Tier::Flex),
            _ => None,
        }
    }

    /// Its place in [`Tier::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
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
    /// Waiting and running requests by tier, in [`Tier::ALL`]'s order.
    pub waiting_by_tier: [usize; 3],
    pub running_by_tier: [usize; 3],
    /// Share of the KV cache's blocks in use by requests (0 to 1); blocks
    /// that only keep a prefix for later reuse do not count.
    pub kv_usage: f64,
    /// KV cache blocks in memory, in use or not.
    pub kv_blocks: usize,
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
    /// Positions a step may compute (sized to the step time, as if work
    /// filled it); 0 until a step has been measured.
    pub step_budget: usize,
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
    pub waiting_by_tier: [AtomicUsize; 3],
    pub running_by_tier: [AtomicUsize; 3],
    /// Published by the worker after every step.
    pub forecast: Mutex<Forecast>,
    pub step_budget: AtomicUsize,
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
    /// The first token cannot come within the request's deadline: the
    /// forecast, and the deadline.
    #[error(
        "the first token cannot come within {}ms: about {}ms of work is ahead of it",
        .1.as_millis(),
        .0.as_millis()
    )]
    Unmeetable(Duration, Duration),
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0}")]
    Invalid(String),
}
