//! Logs fit for terminals, files and collectors: colour only on a
//! terminal and never with `NO_COLOR` set, `RUST_LOG`-style filters
//! (`RUST_LOG=debug`, `RUST_LOG=lampo_server=debug,info`), and with
//! `--log-format json` one JSON object per line (request logs carry the
//! request id). Lifecycle messages (listening, ready, shutting down) are
//! plain lines on stdout in text mode and log events in JSON mode.

use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static JSON: OnceLock<bool> = OnceLock::new();

/// Whether colour codes belong in output written to `stream_is_terminal`.
pub fn colour(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the logger (to stderr).
pub fn init(format: LogFormat) -> Result<()> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = Targets::from_str(&spec).map_err(|e| {
        anyhow!(
            "RUST_LOG='{spec}' is not a log filter such as 'info' or 'lampo_server=debug,info': {e}"
        )
    })?;
    let _ = JSON.set(format == LogFormat::Json);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_ansi(colour(std::io::stderr().is_terminal())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| anyhow!("cannot install the logger: {e}"))
}

/// A lifecycle message: a line on stdout, or a log event in JSON mode.
pub fn announce(message: &str) {
    if JSON.get().copied().unwrap_or(false) {
        tracing::info!("{message}");
    } else {
        println!("lampo: {message}");
    }
}
