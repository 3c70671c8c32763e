//! Elementwise and row-wise transformer ops on f32.
//!
//! Each op is written once as plain loops over independent lanes, which the
//! compiler vectorizes, and compiled twice (`variants!`): portable
//! (`name_portable`), and for AVX2+FMA (`name_avx2`, which the kernel
//! table hands out only on CPUs that have them; see [`crate::kernels`]).
//! The exponential of the SIMD build is a polynomial (`exp_poly`, within 2
//! ulp of libm's) since a libm call per value would stop vectorization.

/// Defines `pub fn ${name}_portable` running `$body::<false>` and, on
/// x86-64, `pub(crate) fn ${name}_avx2` running `$body::<true>` compiled for
/// AVX2+FMA.
macro_rules! variants {
    ($(#[$doc:meta])* fn $portable:ident / $avx2:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        pub fn $portable($($arg: $ty),*) $(-> $ret)? {
            $body::<false>($($arg),*)
        }

        $(#[$doc])*
        /// (AVX2+FMA build; only reachable through a kernel table built
        /// after detecting them.)
        #[cfg(target_arch = "x86_64")]
        pub(crate) fn $avx2($($arg: $ty),*) $(-> $ret)? {
            #[target_feature(enable = "avx2,fma")]
            fn fast($($arg: $ty),*) $(-> $ret)? {
                $body::<true>($($arg),*)
            }
            // SAFETY: the kernel table holds this function only when the
            // CPU has AVX2 and FMA.
            unsafe { fast($($arg),*) }
        }
    };
}

/// `e^x` for f32 by range reduction to `[-ln2/2, ln2/2]` and a degree-6
/// polynomial: vectorizable, unlike a libm call.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.3, 88.7);
    let n = (clamped * LOG2E).round_ties_even();
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let e = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    // Below the clamp the true value is subnormal or zero: flush, as a
    // masked softmax entry (-inf) must give exactly 0.
    if x < -87.3 { 0.0 } else { e }
}

#[inline(always)]
fn exp<const FAST: bool>(x: f32) -> f32 {
    if FAST { exp_poly(x) } else { x.exp() }
}

/// The scale that gives `x` unit root-mean-square. The sum is taken in f64,
/// as GGML does, so results agree with the reference to the last bits; eight
/// running sums keep it vectorizable.
#[inline(always)]
fn rms_scale_body<const FAST: bool>(x: &[f32], eps: f32) -> f32 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += (c[i] * c[i]) as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| (v * v) as f64).sum();
    let sum = acc.iter().sum::<f64>() + tail;
    let ms = (sum / x.len() as f64) as f32;
    1.0 / (ms + eps).sqrt()
}

variants! {
    /// `1 / rms(x)` with `eps` added to the mean square.
    fn rms_scale_portable / rms_scale_avx2(x: &[f32], eps: f32) -> f32 => rms_scale_body
}

#[inline(always)]
fn scale_mul_body<const FAST: bool>(x: &[f32], scale: f32, w: &[f32], out: &mut [f32]) {
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (v * scale) * g;
    }
}

variants! {
    /// `out = x * scale * w`, elementwise.
    fn scale_mul_portable / scale_mul_avx2(x: &[f32], scale: f32, w: &[f32], out: &mut [f32]) => scale_mul_body
}

#[inline(always)]
fn softmax_body<const FAST: bool>(x: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            max[i] = max[i].max(c[i]);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&max)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            c[i] = exp::<FAST>(c[i] - max);
            acc[i] += c[i] as f64;
        }
    }
    let mut sum = acc.iter().sum::<f64>();
    for v in chunks.into_remainder() {
        *v = exp::<FAST>(*v - max);
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

variants! {
    /// Softmax in place; numerically stable, the sum taken in f64.
    fn softmax_portable / softmax_avx2(x: &mut [f32]) => softmax_body
}

#[inline(always)]
fn silu_mul_body<const FAST: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp::<FAST>(-*g)) * u;
    }
}

variants! {
    /// `gate = silu(gate) * up`: the SwiGLU of llama-style MLPs.
    fn silu_mul_portable / silu_mul_avx2(gate: &mut [f32], up: &[f32]) => silu_mul_body
}

#[inline(always)]
fn gelu_mul_body<const FAST: bool>(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let inner = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
        // tanh(y) = 1 - 2 / (e^(2y) + 1), exact at both infinities.
        let tanh = 1.0 - 2.0 / (exp::<FAST>(2.0 * inner) + 1.0);
        *g = 0.5 * x * (1.0 + tanh) * u;
    }
}

variants! {
    /// `gate = gelu_tanh(gate) * up`: GeGLU with the tanh approximation, as Gemma uses.
    fn gelu_mul_portable / gelu_mul_avx2(gate: &mut [f32], up: &[f32]) => gelu_mul_body
}

/// How a rotary embedding pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension 2i rotates with 2i+1 (GGUF llama files store Q/K permuted for this).
    Adjacent,
    /// Dimension i rotates with i + d/2 (GPT-NeoX, Qwen2).
    Halves,
}

/// How a model stretches its rotary angles beyond the context it was
/// trained on, in GGML's formulation (so that results agree with it):
/// pair `i`'s angle `θ` becomes `θ / factors[i]` ("extrapolated"), then
/// `freq_scale` times that ("interpolated"); YaRN blends the two per pair
/// and scales the sines and cosines by `mscale`.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// Angles are multiplied by this: 1 / the scaling factor for linear and
    /// YaRN scaling, 1 for none.
    pub freq_scale: f32,
    /// Per-pair divisors of the angle (Llama 3's `rope_freqs` tensor).
    pub freq_factors: Option<Vec<f32>>,
    pub yarn: Option<Yarn>,
    /// Sines and cosines are multiplied by this (YaRN's attention factor).
    pub mscale: f32,
}

/// YaRN's blend: pairs below `corr_dims[0]` keep their extrapolated angle,
/// pairs above `corr_dims[1]` take the interpolated one, a linear ramp
/// between, weighted by `ext_factor`.
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub ext_factor: f32,
    pub corr_dims: [f32; 2],
}

impl Yarn {
    /// The correction range for `dims` rotated dimensions of a model
    /// trained on `n_ctx_orig` positions: the pairs that turn `beta_fast`
    /// times and `beta_slow` times over that context.
    pub fn new(
        dims: usize,
        n_ctx_orig: usize,
        base: f32,
        beta_fast: f32,
        beta_slow: f32,
        ext_factor: f32,
    ) -> Yarn {
        let corr = |turns: f32| {
            dims as f32 * (n_ctx_orig as f32 / (turns * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let start = corr(beta_fast).floor();
        let end = corr(beta_slow).ceil();
        Yarn {
            ext_factor,
            corr_dims: [start.max(0.0), end.min(dims as f32 - 1.0)],
        }
    }

    /// How much of pair `i`'s angle stays extrapolated, 0 to 1.
    fn ramp(&self, i: usize) -> f32 {
        let [low, high] = self.corr_dims;
        let y = (i as f32 - low) / (high - low).max(0.001);
        1.0 - y.clamp(0.0, 1.0)
    }
}

/// A rotary embedding: pair `i` of each head turns by `pos * scale^i`
/// (then as its [`RopeScaling`] says, if it has one).
#[derive(Clone, Debug)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated pairs per head.
    pairs: usize,
    /// `base^(-2/dims)`: each pair turns slower than the one before by this factor.
    scale: f32,
    scaling: Option<RopeScaling>,
}

impl Rope {
    /// `dims` rotated dimensions per head, frequency base `base`.
    pub fn new(style: RopeStyle, dims: usize, base: f32) -> Rope {
        Rope {
            style,
            pairs: dims / 2,
            scale: base.powf(-2.0 / dims as f32),
            scaling: None,
        }
    }

    /// As [`Rope::new`], with `scaling` (whose `freq_factors`, if any, must
    /// hold one divisor per pair).
    pub fn scaled(style: RopeStyle, dims: usize, base: f32, scaling: RopeScaling) -> Rope {
        assert!(
            scaling
                .freq_factors
                .as_ref()
                .is_none_or(|f| f.len() == dims / 2),
            "one RoPE frequency factor per rotated pair"
        );
        Rope {
            scaling: Some(scaling),
            ..Rope::new(style, dims, base)
        }
    }

    /// Rotated pairs per head.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// The sines and cosines of position `pos`'s pairs, into `sin` and
    /// `cos` (`pairs()` long each). Angles come by repeated multiplication,
    /// as GGML computes them, so that rounding agrees with the reference.
    pub fn fill(&self, pos: usize, sin: &mut [f32], cos: &mut [f32]) {
        let mut theta = pos as f32;
        let Some(s) = &self.scaling else {
            for (s, c) in sin.iter_mut().zip(cos.iter_mut()).take(self.pairs) {
                (*s, *c) = theta.sin_cos();
                theta *= self.scale;
            }
            return;
        };
        for (i, (sn, cs)) in sin
            .iter_mut()
            .zip(cos.iter_mut())
            .take(self.pairs)
            .enumerate()
        {
            let extrapolated = theta / s.freq_factors.as_ref().map_or(1.0, |f| f[i]);
            let interpolated = s.freq_scale * extrapolated;
            let (angle, mscale) = match &s.yarn {
                Some(y) if y.ext_factor != 0.0 => {
                    let mix = y.ramp(i) * y.ext_factor;
                    (
                        interpolated * (1.0 - mix) + extrapolated * mix,
                        s.mscale * (1.0 + 0.1 * (1.0 / s.freq_scale).ln()),
                    )
                }
                _ => (interpolated, s.mscale),
            };
            let (a, b) = angle.sin_cos();
            (*sn, *cs) = (a * mscale, b * mscale);
            theta *= self.scale;
        }
    }

    /// Rotates every head of `x` (`heads × head_dim`) for position `pos`,
    /// on the portable path.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let (mut sin, mut cos) = (vec![0f32; self.pairs], vec![0f32; self.pairs]);
        self.fill(pos, &mut sin, &mut cos);
        rotate_portable(x, head_dim, self.style, &sin, &cos);
    }
}

/// `cap * tanh(x / cap)`: `x` squashed smoothly into `(-cap, cap)`, in
/// GGML's order of operations (scale by the reciprocal, tanh, scale).
#[inline]
pub fn soft_cap(x: f32, cap: f32) -> f32 {
    (x * (1.0 / cap)).tanh() * cap
}

#[inline(always)]
fn rotate_body<const FAST: bool>(
    x: &mut [f32],
    head_dim: usize,
    style: RopeStyle,
    sin: &[f32],
    cos: &[f32],
) {
    let half = sin.len();
    for head in x.chunks_exact_mut(head_dim) {
        match style {
            RopeStyle::Adjacent => {
                for (i, pair) in head[..2 * half].chunks_exact_mut(2).enumerate() {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos[i] - x1 * sin[i];
                    pair[1] = x0 * sin[i] + x1 * cos[i];
                }
            }
            RopeStyle::Halves => {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (lo[i], hi[i]);
                    lo[i] = x0 * cos[i] - x1 * sin[i];
                    hi[i] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

variants! {
    /// Rotates every head of `x` by the given sines and cosines.
    fn rotate_portable / rotate_avx2(x: &mut [f32], head_dim: usize, style: RopeStyle, sin: &[f32], cos: &[f32]) => rotate_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rms() {
        let x = [3.0f32, -4.0, 0.0, 0.0];
        let mut out = [0f32; 4];
        scale_mul_portable(
            &x,
            rms_scale_portable(&x, 0.0),
            &[1.0, 2.0, 1.0, 1.0],
            &mut out,
        );
        // rms = sqrt(25/4) = 2.5
        assert_eq!(out, [1.2, -3.2, 0.0, 0.0]);
    }

    #[test]
    fn soft_cap_is_near_identity_below_the_cap_and_bounded_above() {
        assert!((soft_cap(0.5, 50.0) - 0.5).abs() < 1e-4);
        assert!((soft_cap(-1e6, 30.0) + 30.0).abs() < 1e-4);
        assert!(soft_cap(60.0, 30.0) < 30.0 && soft_cap(60.0, 30.0) > 28.0);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_values() {
        let mut x = [1000.0f32, 1000.0, -f32::INFINITY];
        softmax_portable(&mut x);
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
                scaling: None,
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

    fn angles(rope: &Rope, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut sin, mut cos) = (vec![0f32; rope.pairs()], vec![0f32; rope.pairs()]);
        rope.fill(pos, &mut sin, &mut cos);
        (sin, cos)
    }

    #[test]
    fn rope_scaling_stretches_the_angles_it_names() {
        let plain = Rope::new(RopeStyle::Halves, 16, 10_000.0);
        let scaled = |freq_factors, freq_scale, yarn| {
            let scaling = RopeScaling {
                freq_scale,
                freq_factors,
                yarn,
                mscale: 1.0,
            };
            Rope::scaled(RopeStyle::Halves, 16, 10_000.0, scaling)
        };
        // No-op scaling is bit-identical to none.
        let identity = scaled(Some(vec![1.0; 8]), 1.0, None);
        for pos in [0, 1, 77, 4000] {
            assert_eq!(angles(&identity, pos), angles(&plain, pos));
        }
        // Linear scaling by 4: position 4p turns exactly as p did.
        let linear = scaled(None, 0.25, None);
        assert_eq!(angles(&linear, 4 * 123), angles(&plain, 123));
        // A factor of 8 on the last pair (Llama 3's low frequencies) only.
        let mut f = vec![1.0; 8];
        f[7] = 8.0;
        let llama3 = scaled(Some(f), 1.0, None);
        let (s8, c8) = angles(&llama3, 8 * 50);
        let (s1, c1) = angles(&plain, 50);
        assert_eq!((s8[7], c8[7]), (s1[7], c1[7]));
        let (s_same, _) = angles(&plain, 8 * 50);
        assert_eq!(s8[..7], s_same[..7]);
        // YaRN: pairs below the correction range keep their angle, pairs above
        // are interpolated, and every sine/cosine pair grows by the same mscale.
        let yarn = Yarn {
            ext_factor: 1.0,
            corr_dims: [2.0, 5.0],
        };
        let y = scaled(None, 0.25, Some(yarn));
        let (sy, cy) = angles(&y, 4 * 31);
        let (sp, cp) = angles(&plain, 4 * 31);
        let (sl, cl) = angles(&linear, 4 * 31);
        let m = 1.0 + 0.1 * 4f32.ln();
        for i in 0..8 {
            let r = (sy[i] * sy[i] + cy[i] * cy[i]).sqrt();
            assert!((r - m).abs() < 1e-5, "pair {i}: magnitude {r}, want {m}");
        }
        for i in 0..=2 {
            assert!((sy[i] - sp[i] * m).abs() < 1e-5 && (cy[i] - cp[i] * m).abs() < 1e-5);
        }
        for i in 5..8 {
            assert!((sy[i] - sl[i] * m).abs() < 1e-5 && (cy[i] - cl[i] * m).abs() < 1e-5);
        }
        // Ramp between: neither.
        assert!((sy[3] - sp[3] * m).abs() > 1e-3 && (sy[3] - sl[3] * m).abs() > 1e-3);
    }

    #[test]
    fn yarn_correction_range_matches_the_formula() {
        // dims 128, trained on 4096 positions, base 10000, betas 32 and 1.
        let y = Yarn::new(128, 4096, 10_000.0, 32.0, 1.0, 1.0);
        let corr = |turns: f64| {
            128.0 * (4096.0 / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * 10_000f64.ln())
        };
        assert_eq!(
            y.corr_dims,
            [corr(32.0).floor() as f32, corr(1.0).ceil() as f32]
        );
        assert_eq!(y.corr_dims, [20.0, 46.0]);
    }

    #[test]
    fn gated_activations_on_both_paths() {
        let gate = [0.0f32, 2.0, 1.0, -3.0, 40.0, -100.0, 0.5, -0.25, 3.0];
        let up = [1.0f32, 1.0, 2.0, 1.0, 0.5, 1.0, -1.0, 4.0, 1.0];
        let silu = |x: f32| x / (1.0 + (-x as f64).exp() as f32);
        let gelu = |x: f32| 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
        let mut fast = gate;
        silu_mul_body::<true>(&mut fast, &up);
        let mut slow = gate;
        silu_mul_body::<false>(&mut slow, &up);
        for i in 0..gate.len() {
            let want = silu(gate[i]) * up[i];
            assert!(
                (fast[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu {i}: {}",
                fast[i]
            );
            assert!(
                (slow[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu {i}"
            );
        }
        assert!((fast[1] - 1.761_594_2).abs() < 1e-6);
        let mut fast = gate;
        gelu_mul_body::<true>(&mut fast, &up);
        let mut slow = gate;
        gelu_mul_body::<false>(&mut slow, &up);
        for i in 0..gate.len() {
            let want = gelu(gate[i]) * up[i];
            assert!(
                (fast[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu {i}: {}",
                fast[i]
            );
            assert!(
                (slow[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                "gelu {i}"
            );
        }
        assert!((fast[2] / 2.0 - 0.841_192).abs() < 1e-5);
    }

    #[test]
    fn polynomial_exp_tracks_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_poly(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}): {got} vs {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_poly(-1000.0), 0.0);
    }

    #[test]
    fn softmax_and_rms_agree_across_paths_on_odd_sizes() {
        for n in [1usize, 7, 8, 9, 33, 100] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.7).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            softmax_body::<true>(&mut a);
            softmax_body::<false>(&mut b);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-6, "softmax n={n}");
            }
            assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let (r1, r2) = (
                rms_scale_body::<true>(&x, 1e-6),
                rms_scale_body::<false>(&x, 1e-6),
            );
            assert!((r1 - r2).abs() <= 1e-6 * r2, "rms n={n}");
        }
    }
}
