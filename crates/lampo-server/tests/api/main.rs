//! The API over real HTTP against SmolLM2: shapes, streaming, stop strings,
//! seeds, every error status, hardening against hostile clients, and
//! serving under load. Needs `scripts/fetch-models smollm2`.

mod answers;
mod common;
mod errors;
mod gateway;
mod hardening;
mod serving;
mod structured;
