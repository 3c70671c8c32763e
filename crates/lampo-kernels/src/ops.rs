//! Elementwise and row-wise transformer ops on f32.

/// `out = x / rms(x) * w`, with `eps` added to the mean square.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// `rms_norm` in place, for per-head norms.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ms + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v *= scale * g;
    }
}

/// Softmax in place; numerically stable.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU with the tanh approximation, as Gemma uses.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

/// How a rotary embedding pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension 2i rotates with 2i+1 (GGUF llama files store Q/K permuted for this).
    Adjacent,
    /// Dimension i rotates with i + d/2 (GPT-NeoX, Qwen2).
    Halves,
}

/// Precomputed inverse frequencies of a rotary embedding.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    inv_freq: Vec<f32>,
}

impl Rope {
    /// `dims` rotated dimensions per head, frequency base `base`.
    pub fn new(style: RopeStyle, dims: usize, base: f32) -> Rope {
        let inv_freq = (0..dims / 2).map(|i| base.powf(-2.0 * i as f32 / dims as f32)).collect();
        Rope { style, inv_freq }
    }

    /// Rotates every head of `x` (`heads × head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let half = self.inv_freq.len();
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f32 * f).sin_cos();
                let (a, b) = match self.style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        // rms = sqrt(25/4) = 2.5
        assert_eq!(out, [1.2, -3.2, 0.0, 0.0]);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0f32, 1000.0, -f32::INFINITY];
        softmax(&mut x);
        assert_eq!(x, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn rope_styles_pair_the_right_dimensions() {
        // Position 0 is the identity; a quarter turn at inv_freq 1 swaps a pair.
        let rope = Rope::new(RopeStyle::Adjacent, 4, 10000.0);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 4, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        let pos = std::f32::consts::FRAC_PI_2; // inv_freq[0] = 1, so angle = pos
        let rope_adj = Rope { style: RopeStyle::Adjacent, inv_freq: vec![pos, 0.0] };
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope_adj.apply(&mut x, 4, 1);
        assert!((x[0] + 2.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6 && x[2] == 3.0 && x[3] == 4.0);
        let rope_half = Rope { style: RopeStyle::Halves, inv_freq: vec![pos, 0.0] };
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope_half.apply(&mut x, 4, 1);
        assert!((x[0] + 3.0).abs() < 1e-6 && (x[2] - 1.0).abs() < 1e-6 && x[1] == 2.0 && x[3] == 4.0);
    }

    #[test]
    fn activations() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(2.0) - 1.761_594_2).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
    }
}
