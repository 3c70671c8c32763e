//! `lampo perplexity`: perplexity over a text file, as llama.cpp's
//! llama-perplexity computes it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use lampo_engine::perplexity;

use crate::args::ModelArgs;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to evaluate
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Tokens per chunk
    #[arg(short = 'c', long = "ctx", default_value_t = 512, value_parser = crate::args::context)]
    ctx: usize,
    /// Evaluate at most this many chunks
    #[arg(long, value_parser = crate::args::at_least_one)]
    chunks: Option<usize>,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let lm = a.model.load()?;
    let mut text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    // llama.cpp drops one trailing newline from prompt files; do the same so token counts agree.
    if text.ends_with('\n') {
        text.pop();
    }
    let start = Instant::now();
    let mut tokens = lm.tokenizer.encode(&text, true, false)?;
    let bos = if lm.tokenizer.add_bos {
        lm.tokenizer.bos
    } else {
        None
    };
    if let Some(max) = a.chunks {
        tokens.truncate(max * a.ctx);
    }
    eprintln!(
        "{} tokens, {} chunks of {}",
        tokens.len(),
        tokens.len() / a.ctx.max(1),
        a.ctx
    );
    let bar = indicatif::ProgressBar::new((tokens.len() / a.ctx.max(1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chunks, ppl {msg} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let report = perplexity(&lm.model, &tokens, a.ctx, bos, |_, _, ppl| {
        bar.inc(1);
        bar.set_message(format!("{ppl:.4}"));
    })?;
    bar.finish_and_clear();
    let running: Vec<String> = report
        .running
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}]{:.4}", i + 1, p))
        .collect();
    println!("{}", running.join(","));
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {:.1} s)",
        report.ppl,
        report.ppl_stderr,
        report.chunks,
        report.n_ctx,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
