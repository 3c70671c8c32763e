//! Lampo's engine: turning a model's logits into text. Sampling, generation
//! with streamed output and stop strings, the request interface servers
//! use, and perplexity evaluation. No HTTP here.

mod blocks;
pub mod clock;
pub mod constrain;
pub mod engine;
pub mod generate;
mod masker;
pub mod perplexity;
pub mod sampling;
mod scheduler;
mod schema;
pub mod speculate;

pub use clock::{Clock, ClockHandle, SimClock, Work};
pub use constrain::{Constraint, Grammar};
pub use engine::{
    Done, Engine, EngineConfig, Event, Finish, Load, Rejected, Request, Sink, StopMatcher,
};
pub use generate::{FinishReason, GenerateParams, Generation, Session, TokenLogprob};
pub use perplexity::{PerplexityReport, perplexity};
pub use sampling::{Sampler, SamplingParams};
pub use speculate::SpecMode;

pub use lampo_kernels::parallel::background_priority;
pub use lampo_model::ModelError;
