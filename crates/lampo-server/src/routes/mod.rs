//! The HTTP routes, one file per group: chat completions, text
//! completions, and the model, token and health routes.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod info;
