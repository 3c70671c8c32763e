//! Elementwise and row-wise transformer ops on f32.

/// The scale that gives `x` unit root-mean-square. The sum is taken in f64,
/// as GGML does, so results agree with the reference to the last bits.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ms = (x.iter().map(|&v| (v * v) as f64).sum::<f64>() / x.len() as f64) as f32;
    1.0 / (ms + eps).sqrt()
}

/// `out = x / rms(x) * w`, with `eps` added to the mean square.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

/// `rms_norm` in place, for per-head and post-sublayer norms.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// Softmax in place; numerically stable, the sum taken in f64.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
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
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// How a rotary embedding pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension 2i rotates with 2i+1 (GGUF llama files store Q/K permuted for this).
    Adjacent,
    /// Dimension i rotates with i + d/2 (GPT-NeoX, Qwen2).
    Halves,
}

/// A rotary embedding: pair `i` of each head turns by `pos * scale^i`.
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated pairs per head.
    pairs: usize,
    /// `base^(-2/dims)`: each pair turns slower than the one before by this factor.
    scale: f32,
}

impl Rope {
    /// `dims` rotated dimensions per head, frequency base `base`.
    pub fn new(style: RopeStyle, dims: usize, base: f32) -> Rope {
        Rope {
            style,
            pairs: dims / 2,
            scale: base.powf(-2.0 / dims as f32),
        }
    }

    /// Rotates every head of `x` (`heads × head_dim`) for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let half = self.pairs;
        // Angles by repeated multiplication, as GGML computes them, so that
        // rounding agrees with the reference.
        let mut angles = Vec::with_capacity(half);
        let mut theta = pos as f32;
        for _ in 0..half {
            angles.push(theta.sin_cos());
            theta *= self.scale;
        }
        for head in x.chunks_exact_mut(head_dim) {
            for (i, &(sin, cos)) in angles.iter().enumerate() {
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
    fn rms_norm_in_place_matches_rms_norm() {
        let x = [0.5f32, -1.5, 2.0, 4.0];
        let w = [1.0f32, 0.5, 2.0, -1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 1e-6, &mut out);
        let mut y = x;
        rms_norm_in_place(&mut y, &w, 1e-6);
        assert_eq!(y, out);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0f32, 1000.0, -f32::INFINITY];
        softmax(&mut x);
        assert_eq!(x, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn rope_styles_pair_the_right_dimensions() {
        // With scale 0 only pair 0 turns, by `pos` radians.
        let at_pos_1 = |style| {
            let mut x = [1.0f32, 2.0, 3.0, 4.0];
            Rope {
                style,
                pairs: 2,
                scale: 0.0,
            }
            .apply(&mut x, 4, 1);
            x
        };
        let (s, c) = 1f32.sin_cos();
        let x = at_pos_1(RopeStyle::Adjacent);
        assert!(
            (x[0] - (c - 2.0 * s)).abs() < 1e-6 && (x[1] - (s + 2.0 * c)).abs() < 1e-6,
            "{x:?}"
        );
        assert_eq!((x[2], x[3]), (3.0, 4.0));
        let x = at_pos_1(RopeStyle::Halves);
        assert!(
            (x[0] - (c - 3.0 * s)).abs() < 1e-6 && (x[2] - (s + 3.0 * c)).abs() < 1e-6,
            "{x:?}"
        );
        assert_eq!((x[1], x[3]), (2.0, 4.0));

        let rope = Rope::new(RopeStyle::Adjacent, 4, 10000.0);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope.apply(&mut x, 4, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0], "position 0 is the identity");
        // Pair i turns by pos * base^(-2i/dims).
        let mut x = [0.0f32, 0.0, 1.0, 0.0];
        rope.apply(&mut x, 4, 100);
        let angle = 100.0 * 10000f32.powf(-0.5);
        assert!(
            (x[2] - angle.cos()).abs() < 1e-5 && (x[3] - angle.sin()).abs() < 1e-5,
            "{x:?}"
        );
    }

    #[test]
    fn activations() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(2.0) - 1.761_594_2).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) + 0.003_637_4).abs() < 1e-6);
    }
}
