//! Perplexity computed the way llama.cpp's `llama-perplexity` computes it, so
//! that the two numbers can be compared: the text is cut into chunks of
//! `n_ctx` tokens, each evaluated from an empty cache (its first token
//! replaced by BOS when the vocabulary adds one), and only the predictions of
//! the second half of each chunk are scored.

use lampo_kernels::Backend;
use lampo_model::{Logits, Model, ModelError};

#[derive(Clone, Debug)]
pub struct PerplexityReport {
    pub tokens: usize,
    pub chunks: usize,
    pub n_ctx: usize,
    /// Running perplexity after each chunk.
    pub running: Vec<f64>,
    pub ppl: f64,
    /// Standard error of the perplexity estimate.
    pub ppl_stderr: f64,
}

/// Evaluates `tokens`; `bos` replaces the first token of each chunk when set.
/// `on_chunk(done, total, running_ppl)` reports progress.
pub fn perplexity<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PerplexityReport, ModelError> {
    if n_ctx < 4 {
        return Err(ModelError::Config(format!(
            "a context of {n_ctx} tokens is too small for perplexity"
        )));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(ModelError::Config(format!(
            "perplexity with a context of {n_ctx} needs at least {} tokens, the text has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let chunks = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let n_vocab = model.config.n_vocab;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        let mut input = chunk.to_vec();
        if let Some(b) = bos {
            input[0] = b;
        }
        let mut kv = model.kv_cache(n_ctx);
        let logits = model.forward(&input, &mut kv, Logits::All)?;
        for j in first..n_ctx - 1 {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            let target = chunk[j + 1] as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            let v = -(row[target] as f64 - max - sum.ln());
            nll += v;
            nll2 += v * v;
        }
        count += n_ctx - first - 1;
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        on_chunk(c + 1, chunks, ppl);
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let ppl_stderr = if var > 0.0 {
        ppl * (var / (count as f64 - 1.0)).sqrt()
    } else {
        0.0
    };
    Ok(PerplexityReport {
        tokens: tokens.len(),
        chunks,
        n_ctx,
        running,
        ppl,
        ppl_stderr,
    })
}
