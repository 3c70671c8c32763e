//! Lampo's engine: from a tokenized request to text events, with no HTTP.
//! The handle ([`Engine`]) queues [`Request`]s; its worker batches them
//! step by step ([`scheduler`]: plan, run, output) over a paged KV cache
//! with prefix reuse ([`blocks`]), sampling ([`sampling`]), speculative
//! decoding ([`speculate`]) and output constraints ([`constrain`]).
//! Perplexity evaluation sits beside it.

mod blocks;
pub mod clock;
pub mod constrain;
pub mod engine;
pub mod kld;
mod masker;
pub mod perplexity;
pub mod request;
pub mod sampling;
mod scheduler;
mod schema;
pub mod speculate;
mod stops;

pub use clock::{Clock, ClockHandle, SimClock, Work};
pub use constrain::{Constraint, Grammar};
pub use engine::{Engine, EngineConfig};
pub use kld::KldReport;
pub use perplexity::{PerplexityReport, kl_divergence, perplexity};
pub use request::{
    Done, Event, Finish, GenerateParams, Load, Rejected, Request, Sink, Tier, TokenLogprob,
};
pub use sampling::{Sampler, SamplingParams};
pub use speculate::SpecMode;
pub use stops::StopMatcher;

pub use lampo_kernels::parallel::background_priority;
pub use lampo_model::ModelError;
