//! Perplexity computed the way llama.cpp's `llama-perplexity` computes it, so
//! that the two numbers can be compared: the text is cut into chunks of
//! `n_ctx` tokens, each evaluated from an empty cache (its first token
//! replaced by BOS when the vocabulary adds one), and only the predictions of
//! the second half of each chunk are scored. The scored log-probabilities
//! can be saved in llama.cpp's file format, and a saved file compared with
//! a model ([`kl_divergence`], [`crate::kld`]).

use std::io::{Read, Write};

use lampo_kernels::Backend;
use lampo_model::{Logits, Model, ModelError};

use crate::kld::{BaseHeader, KldReport, KldStats, quantize_row, row_len};

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
/// `on_chunk(done, total, running_ppl)` reports progress. With `save`, the
/// scored log-probabilities are written to it as llama.cpp's
/// `--kl-divergence-base` writes them.
pub fn perplexity<B: Backend>(
    model: &Model<B>,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
    mut save: Option<&mut dyn Write>,
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
    let saving =
        |e: std::io::Error| ModelError::Config(format!("cannot write the log-probabilities: {e}"));
    if let Some(w) = save.as_deref_mut() {
        let header = BaseHeader {
            n_ctx,
            n_vocab,
            n_chunk: chunks,
            tokens: tokens[..chunks * n_ctx].to_vec(),
        };
        header.write(w).map_err(saving)?;
    }
    let mut row_buf = Vec::with_capacity(row_len(n_vocab));
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
            if let Some(w) = save.as_deref_mut() {
                quantize_row(row, &mut row_buf);
                let bytes: Vec<u8> = row_buf.iter().flat_map(|q| q.to_le_bytes()).collect();
                w.write_all(&bytes).map_err(saving)?;
            }
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

/// Compares `model` with the base whose log-probabilities `base` holds
/// (llama.cpp's `--kl-divergence-base` format, written by llama.cpp or by
/// [`perplexity`]): the file's own tokens are evaluated in its chunks, and
/// each scored position's distribution compared with the stored one.
/// `on_chunk(done, total, mean_kld)` reports progress.
pub fn kl_divergence<B: Backend>(
    model: &Model<B>,
    base: &mut impl Read,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, usize, f64),
) -> Result<KldReport, ModelError> {
    let header = BaseHeader::read(base).map_err(ModelError::Config)?;
    let n_vocab = model.config.n_vocab;
    if header.n_vocab != n_vocab {
        return Err(ModelError::Config(format!(
            "the log-probability file is for a vocabulary of {} tokens, this model's has {n_vocab}",
            header.n_vocab
        )));
    }
    if let Some(&bad) = header.tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ModelError::BadToken {
            token: bad,
            n_vocab,
        });
    }
    let (n_ctx, first) = (header.n_ctx, header.n_ctx / 2);
    let per_row = row_len(n_vocab);
    let mut bytes = vec![0u8; per_row * 2];
    let mut row = vec![0u16; per_row];
    let mut stats = KldStats::default();
    for c in 0..header.n_chunk {
        let chunk = &header.tokens[c * n_ctx..(c + 1) * n_ctx];
        let mut input = chunk.to_vec();
        if let Some(b) = bos {
            input[0] = b;
        }
        let mut kv = model.kv_cache(n_ctx);
        let logits = model.forward(&input, &mut kv, Logits::All)?;
        for j in first..n_ctx - 1 {
            base.read_exact(&mut bytes).map_err(|_| {
                ModelError::Config(format!(
                    "the log-probability file ends in chunk {} of {}",
                    c + 1,
                    header.n_chunk
                ))
            })?;
            for (q, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *q = u16::from_le_bytes([b[0], b[1]]);
            }
            stats.add(
                &logits[j * n_vocab..(j + 1) * n_vocab],
                &row,
                chunk[j + 1] as usize,
            );
        }
        on_chunk(c + 1, header.n_chunk, stats.report().mean_kld);
    }
    Ok(stats.report())
}
