//! `lampo`: run open-weight language models from GGUF files.

mod args;
mod bench;
mod chat;
mod info;
mod logging;
mod models;
mod perplexity;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: the release, the git revision it was built from, and the
/// kernels this CPU will use.
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let kernels = match lampo_kernels::Isa::from_env() {
            Ok(isa) => isa.name().to_string(),
            Err(e) => e,
        };
        format!(
            "{} (git {}; kernels: {kernels}, {} threads)",
            env!("CARGO_PKG_VERSION"),
            env!("LAMPO_GIT_REVISION"),
            lampo_kernels::parallel::physical_cores()
        )
    })
}

#[derive(Parser)]
#[command(
    name = "lampo",
    version = version(),
    about = "Low-latency LLM inference on the hardware you have"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for a prompt and stream it to stdout
    Run(run::RunArgs),
    /// Chat with a model in the terminal
    Chat(chat::ChatArgs),
    /// Print a model file's metadata and tensors
    Info(info::InfoArgs),
    /// Serve the OpenAI-compatible HTTP API
    Serve(serve::ServeArgs),
    /// Measure prompt and generation speed, as llama.cpp's llama-bench does
    Bench(bench::BenchArgs),
    /// Compute perplexity over a text file, as llama.cpp's llama-perplexity does
    Perplexity(perplexity::PerplexityArgs),
    /// Print the token ids of a text
    Tokenize(info::TokenizeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // A usage error in one line, as every other error.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (lampo --help lists the options)");
            return ExitCode::from(2);
        }
        // --help, --version.
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Info(a) => info::info(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => models::resolve(a.model()).and_then(|path| bench::run(a, &path)),
        Command::Tokenize(a) => info::tokenize(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
