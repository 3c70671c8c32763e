//! KL divergence between two models (or two quantizations, or two
//! engines) over the same text, in llama.cpp's file format, so that a user
//! compares Lampo with llama.cpp by the numbers llama.cpp users know.
//!
//! `llama-perplexity --kl-divergence-base FILE` writes, as it computes
//! perplexity: the tag `_logits_`, the chunk size, the vocabulary size and
//! the chunk count (32-bit little-endian integers), every chunk's tokens,
//! then for each scored position (the second half of each chunk, as
//! perplexity scores it) the log-probabilities of the whole vocabulary in
//! 16 bits: a scale and the smallest log-probability kept (f32 each), then
//! one `u16` per token (the vocabulary padded to even), log-probabilities
//! below the best one by more than 16 stored as the smallest. `--kl-divergence`
//! reads such a file, evaluates the same tokens, and reports the mean KL
//! divergence from the base to the model, how often both rank the same
//! token first, and both perplexities. Lampo writes and reads the same
//! bytes with the same arithmetic.

use std::io::{Read, Write};

/// The tag a log-probability file begins with.
pub const MAGIC: &[u8; 8] = b"_logits_";

/// `u16`s per scored position: two f32 (scale, least log-probability),
/// then the vocabulary padded to an even count.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// What a base file says before its log-probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseHeader {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
    /// `n_chunk × n_ctx` tokens, as tokenized (before any BOS replaces a
    /// chunk's first token).
    pub tokens: Vec<u32>,
}

fn io_error(e: std::io::Error) -> String {
    format!("cannot read the log-probability file: {e}")
}

fn read_i32(r: &mut impl Read) -> Result<i32, String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(io_error)?;
    Ok(i32::from_le_bytes(b))
}

impl BaseHeader {
    pub fn write(&self, w: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        for v in [self.n_ctx, self.n_vocab, self.n_chunk] {
            w.write_all(&(v as i32).to_le_bytes())?;
        }
        for &t in &self.tokens[..self.n_chunk * self.n_ctx] {
            w.write_all(&(t as i32).to_le_bytes())?;
        }
        Ok(())
    }

    /// Reads and checks a header; a file that is not one, or whose sizes
    /// cannot be right, is refused in one line.
    pub fn read(r: &mut impl Read) -> Result<BaseHeader, String> {
        let mut tag = [0u8; 8];
        r.read_exact(&mut tag).map_err(io_error)?;
        if &tag != MAGIC {
            return Err("this is not a log-probability file (llama-perplexity --kl-divergence-base writes them)".into());
        }
        let (n_ctx, n_vocab, n_chunk) = (read_i32(r)?, read_i32(r)?, read_i32(r)?);
        let sane = |v: i32, hi: i32| (1..=hi).contains(&v);
        if !sane(n_ctx, 1 << 20) || !sane(n_vocab, 1 << 24) || !sane(n_chunk, 1 << 20) {
            return Err(format!(
                "the log-probability file's sizes are not plausible: context {n_ctx}, vocabulary {n_vocab}, chunks {n_chunk}"
            ));
        }
        if n_ctx < 4 {
            return Err(format!(
                "the log-probability file's context of {n_ctx} is too small"
            ));
        }
        let n = n_ctx as usize * n_chunk as usize;
        let mut bytes = vec![0u8; n * 4];
        r.read_exact(&mut bytes)
            .map_err(|_| "the log-probability file ends inside its tokens".to_string())?;
        let tokens = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("four bytes")) as u32)
            .collect();
        Ok(BaseHeader {
            n_ctx: n_ctx as usize,
            n_vocab: n_vocab as usize,
            n_chunk: n_chunk as usize,
            tokens,
        })
    }
}

/// A row of logits as 16-bit log-probabilities, as llama.cpp stores them
/// (its float arithmetic, rounding to nearest, ties to even).
pub fn quantize_row(logits: &[f32], out: &mut Vec<u16>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = logits
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(max - 16.0);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let log_sum = sum.ln() as f32;
    let min_log_prob = min - max - log_sum;
    let scale = (max - min) / 65535.0;
    out.clear();
    for f in [scale, min_log_prob] {
        let b = f.to_le_bytes();
        out.push(u16::from_le_bytes([b[0], b[1]]));
        out.push(u16::from_le_bytes([b[2], b[3]]));
    }
    if scale != 0.0 {
        let inv = 1.0 / scale;
        out.extend(logits.iter().map(|&l| {
            if l > min {
                (inv * (l - min)).round_ties_even() as u16
            } else {
                0
            }
        }));
    } else {
        out.extend(std::iter::repeat_n(0, logits.len()));
    }
    out.resize(row_len(logits.len()), 0);
}

/// Sums over scored positions, as llama.cpp keeps them.
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_kld: f64,
    sum_kld2: f64,
    same_top: usize,
    count: usize,
    klds: Vec<f32>,
}

impl KldStats {
    /// Adds one position: the model's `logits`, the base's stored row,
    /// and the token that came next.
    pub fn add(&mut self, logits: &[f32], base: &[u16], target: usize) {
        let (mut max, mut top) = (logits[0], 0);
        for (i, &l) in logits.iter().enumerate().skip(1) {
            if l > max {
                (max, top) = (l, i);
            }
        }
        let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
        let log_sum = sum.ln() as f32;
        let float = |i: usize| {
            f32::from_le_bytes({
                let (a, b) = (base[i].to_le_bytes(), base[i + 1].to_le_bytes());
                [a[0], a[1], b[0], b[1]]
            })
        };
        let (scale, min_log_prob) = (float(0), float(2));
        let stored = &base[4..4 + logits.len()];
        let nll = max + log_sum - logits[target];
        let nll_base = -(scale * stored[target] as f32 + min_log_prob);
        self.sum_nll += nll as f64;
        self.sum_nll2 += (nll * nll) as f64;
        self.sum_nll_base += nll_base as f64;
        self.sum_nll_base2 += (nll_base * nll_base) as f64;
        let norm = max + log_sum;
        let (mut kld, mut top_base, mut best) = (0f64, 0, f32::NEG_INFINITY);
        for (i, (&q, &l)) in stored.iter().zip(logits).enumerate() {
            let lp_base = scale * q as f32 + min_log_prob;
            if i == 0 || lp_base > best {
                (best, top_base) = (lp_base, i);
            }
            if lp_base > -16.0 {
                kld += (lp_base.exp() * (lp_base - l + norm)) as f64;
            }
        }
        self.sum_kld += kld;
        self.sum_kld2 += kld * kld;
        self.klds.push(kld as f32);
        self.count += 1;
        if top == top_base {
            self.same_top += 1;
        }
    }

    pub fn report(&self) -> KldReport {
        let n = self.count.max(1) as f64;
        let mean_err = |sum: f64, sum2: f64| {
            let mean = sum / n;
            let var = sum2 / n - mean * mean;
            let err = if var > 0.0 && self.count > 10 {
                (var / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            (mean, err)
        };
        let (kld, kld_err) = mean_err(self.sum_kld, self.sum_kld2);
        let (nll, _) = mean_err(self.sum_nll, self.sum_nll2);
        let (nll_base, _) = mean_err(self.sum_nll_base, self.sum_nll_base2);
        let mut sorted = self.klds.clone();
        sorted.sort_by(f32::total_cmp);
        let at = |q: f64| {
            sorted
                .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(0.0) as f64
        };
        let same = self.same_top as f64 / n;
        KldReport {
            positions: self.count,
            mean_kld: kld,
            kld_stderr: kld_err,
            median_kld: at(0.5),
            kld_99: at(0.99),
            max_kld: sorted.last().copied().unwrap_or(0.0) as f64,
            same_top: same,
            same_top_stderr: (same * (1.0 - same) / (n - 1.0).max(1.0)).sqrt(),
            ppl: nll.exp(),
            ppl_base: nll_base.exp(),
        }
    }
}

/// The comparison's figures, as `llama-perplexity --kl-divergence` prints them.
#[derive(Clone, Debug)]
pub struct KldReport {
    pub positions: usize,
    pub mean_kld: f64,
    pub kld_stderr: f64,
    pub median_kld: f64,
    pub kld_99: f64,
    pub max_kld: f64,
    /// Share of positions where both rank the same token first.
    pub same_top: f64,
    pub same_top_stderr: f64,
    pub ppl: f64,
    pub ppl_base: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_within_its_16_bits() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 101) as f32) * 0.3 - 12.0)
            .collect();
        let mut row = Vec::new();
        quantize_row(&logits, &mut row);
        assert_eq!(row.len(), row_len(1001));
        assert_eq!(row.len(), 1006);
        // The same logits against their own row: KL near zero, same top.
        let mut s = KldStats::default();
        s.add(&logits, &row, 5);
        let r = s.report();
        assert!(r.mean_kld.abs() < 1e-4, "{r:?}");
        assert_eq!(r.same_top, 1.0);
        assert!((r.ppl - r.ppl_base).abs() / r.ppl < 1e-3, "{r:?}");
        // Other logits: a clear divergence.
        let other: Vec<f32> = logits.iter().rev().copied().collect();
        let mut s = KldStats::default();
        s.add(&other, &row, 5);
        assert!(s.report().mean_kld > 1.0, "{:?}", s.report());
    }

    #[test]
    fn headers_round_trip_and_bad_files_are_refused() {
        let h = BaseHeader {
            n_ctx: 8,
            n_vocab: 300,
            n_chunk: 2,
            tokens: (0..16).collect(),
        };
        let mut bytes = Vec::new();
        h.write(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 8 + 12 + 16 * 4);
        assert_eq!(BaseHeader::read(&mut bytes.as_slice()).unwrap(), h);
        let err = BaseHeader::read(&mut &b"GGUF\x03\0\0\0rest"[..]).unwrap_err();
        assert!(err.contains("not a log-probability file"), "{err}");
        let err = BaseHeader::read(&mut &bytes[..30]).unwrap_err();
        assert!(err.contains("ends inside its tokens"), "{err}");
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(
            BaseHeader::read(&mut huge.as_slice())
                .unwrap_err()
                .contains("plausible")
        );
    }
}
