//! Lampo's engine: turning a model's logits into text. Sampling, generation
//! with streamed output and stop strings, the request interface servers
//! use, and perplexity evaluation. No HTTP here.

pub mod engine;
pub mod generate;
pub mod perplexity;
pub mod sampling;

pub use engine::{Done, Engine, Event, Finish, Load, Request, Sink, StopMatcher};
pub use generate::{FinishReason, GenerateParams, Generation, Session, TokenLogprob};
pub use perplexity::{PerplexityReport, perplexity};
pub use sampling::{Sampler, SamplingParams};

pub use lampo_model::ModelError;
