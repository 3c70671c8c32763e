//! `lampo perplexity`: perplexity over a text file, as llama.cpp's
//! llama-perplexity computes it; with `--kl-divergence-base FILE` the
//! log-probabilities are saved in llama.cpp's format, and with
//! `--kl-divergence` too, such a file (from Lampo or llama.cpp) is compared
//! with this model.

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
    /// Text file to evaluate (not with --kl-divergence, which reads the
    /// tokens from the base file)
    #[arg(short = 'f', long, required_unless_present = "kl_divergence")]
    file: Option<PathBuf>,
    /// Save the scored log-probabilities to FILE in llama.cpp's format (as
    /// `llama-perplexity --kl-divergence-base` does); with --kl-divergence,
    /// read them from it instead
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare this model with the base file's log-probabilities (written
    /// by Lampo or llama.cpp): KL divergence, same top token, both
    /// perplexities
    #[arg(long, requires = "kl_divergence_base", conflicts_with = "file")]
    kl_divergence: bool,
    /// Tokens per chunk
    #[arg(short = 'c', long = "ctx", default_value_t = 512, value_parser = crate::args::context)]
    ctx: usize,
    /// Evaluate at most this many chunks
    #[arg(long, value_parser = crate::args::at_least_one)]
    chunks: Option<usize>,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let mut lm = a.model.load()?;
    lm.model.set_context(a.ctx);
    if a.kl_divergence {
        return compare(&a, &lm);
    }
    let file = a.file.as_ref().expect("clap requires --file");
    let mut text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
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
    let mut save = match &a.kl_divergence_base {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let report = perplexity(
        &lm.model,
        &tokens,
        a.ctx,
        bos,
        save.as_mut().map(|w| w as &mut dyn std::io::Write),
        |_, _, ppl| {
            bar.inc(1);
            bar.set_message(format!("{ppl:.4}"));
        },
    )?;
    if let Some(mut w) = save {
        use std::io::Write;
        w.flush().context("cannot write the log-probabilities")?;
    }
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

/// `--kl-divergence`: the base file's tokens through this model, and the
/// comparison.
fn compare(a: &PerplexityArgs, lm: &lampo_model::LoadedModel) -> Result<()> {
    let path = a
        .kl_divergence_base
        .as_ref()
        .expect("clap requires the base");
    let mut base = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let bos = if lm.tokenizer.add_bos {
        lm.tokenizer.bos
    } else {
        None
    };
    let start = Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chunks, KLD {msg} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let r = lampo_engine::kl_divergence(&lm.model, &mut base, bos, |done, total, kld| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{kld:.6}"));
    })?;
    bar.finish_and_clear();
    println!("positions:      {}", r.positions);
    println!("Mean PPL(Q):    {:.4}", r.ppl);
    println!("Mean PPL(base): {:.4}", r.ppl_base);
    println!("Mean    KLD:    {:.6} +/- {:.6}", r.mean_kld, r.kld_stderr);
    println!("Median  KLD:    {:.6}", r.median_kld);
    println!("99.0%   KLD:    {:.6}", r.kld_99);
    println!("Maximum KLD:    {:.6}", r.max_kld);
    println!(
        "Same top p:     {:.3} +/- {:.3} %",
        100.0 * r.same_top,
        100.0 * r.same_top_stderr
    );
    eprintln!("({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}
