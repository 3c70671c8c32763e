//! One table of kernels per instruction set, chosen once: the quantized
//! dot products and activation quantizers ([`RowDots`]), the f32 dot, the
//! f16 attention primitives and the elementwise ops. A CPU backend holds
//! one table by value and calls nothing else, so there is one way a
//! kernel is picked and one place that picks it ([`Kernels::for_isa`]).

use crate::isa::Isa;
use crate::ops::{self, RopeStyle};
use crate::qdot::RowDots;
use crate::simd::{self, F16Run};

#[derive(Clone, Copy)]
pub struct Kernels {
    pub isa: Isa,
    pub dots: RowDots,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// A BF16 weight row (its bytes) dotted with 1 to 4 rows of f32
    /// activations.
    pub dot_bf16: simd::Bf16Dot,
    pub group_scores_f16: fn(&[f32], F16Run, &mut [f32]),
    pub group_weighted_sum_f16: fn(&mut [f32], &[f32], usize, F16Run),
    pub rms_scale: fn(&[f32], f32) -> f32,
    pub scale_mul: fn(&[f32], f32, &[f32], &mut [f32]),
    pub softmax: fn(&mut [f32]),
    pub silu_mul: fn(&mut [f32], &[f32]),
    pub gelu_mul: fn(&mut [f32], &[f32]),
    pub rotate: fn(&mut [f32], usize, RopeStyle, &[f32], &[f32]),
}

impl Kernels {
    pub const PORTABLE: Kernels = Kernels {
        isa: Isa::Portable,
        dots: RowDots::PORTABLE,
        dot_f32: simd::dot_portable,
        dot_bf16: simd::dot_bf16_rows_portable,
        group_scores_f16: simd::group_scores_f16_portable,
        group_weighted_sum_f16: simd::group_weighted_sum_f16_portable,
        rms_scale: ops::rms_scale_portable,
        scale_mul: ops::scale_mul_portable,
        softmax: ops::softmax_portable,
        silu_mul: ops::silu_mul_portable,
        gelu_mul: ops::gelu_mul_portable,
        rotate: ops::rotate_portable,
    };

    /// The kernels of `isa`, or why this CPU cannot run them.
    pub fn for_isa(isa: Isa) -> Result<Kernels, String> {
        let dots =
            RowDots::for_isa(isa).ok_or_else(|| format!("this CPU does not run {isa} kernels"))?;
        Ok(match isa {
            Isa::Portable => Kernels::PORTABLE,
            // Both x86 sets include AVX2, FMA and F16C: the f32 and f16
            // primitives and the elementwise ops are their AVX2 builds.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni | Isa::Avx2 => Kernels {
                isa,
                dots,
                dot_f32: simd::dot_avx2,
                dot_bf16: simd::dot_bf16_rows_avx2,
                group_scores_f16: simd::group_scores_f16_avx2,
                group_weighted_sum_f16: simd::group_weighted_sum_f16_avx2,
                rms_scale: ops::rms_scale_avx2,
                scale_mul: ops::scale_mul_avx2,
                softmax: ops::softmax_avx2,
                silu_mul: ops::silu_mul_avx2,
                gelu_mul: ops::gelu_mul_avx2,
                rotate: ops::rotate_avx2,
            },
            // NEON: its own quantized dots; the rest is portable code,
            // which the compiler vectorizes with NEON on aarch64.
            _ => Kernels {
                isa,
                dots,
                ..Kernels::PORTABLE
            },
        })
    }

    /// The kernels of every instruction set this CPU runs, fastest first.
    pub fn available() -> Vec<Kernels> {
        Isa::available()
            .into_iter()
            .filter_map(|i| Kernels::for_isa(i).ok())
            .collect()
    }

    /// `out = x / rms(x) * w`, with `eps` added to the mean square.
    pub fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        (self.scale_mul)(x, (self.rms_scale)(x, eps), w, out);
    }

    /// `rms_norm` in place, for per-head and post-sublayer norms.
    pub fn rms_norm_in_place(&self, x: &mut [f32], w: &[f32], eps: f32) {
        let scale = (self.rms_scale)(x, eps);
        for (v, &g) in x.iter_mut().zip(w) {
            *v = (*v * scale) * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_each_instruction_set_is_its_own() {
        let all = Kernels::available();
        assert_eq!(all.last().map(|k| k.isa), Some(Isa::Portable));
        for k in &all {
            assert_eq!(k.dots.isa, k.isa.name());
        }
        for isa in Isa::ALL {
            assert_eq!(Kernels::for_isa(isa).is_ok(), isa.supported(), "{isa}");
        }
        let k = Kernels::PORTABLE;
        let mut out = [0f32; 4];
        k.rms_norm(&[3.0, -4.0, 0.0, 0.0], &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        assert_eq!(out, [1.2, -3.2, 0.0, 0.0]);
        let mut y = [3.0f32, -4.0, 0.0, 0.0];
        k.rms_norm_in_place(&mut y, &[1.0, 2.0, 1.0, 1.0], 0.0);
        assert_eq!(y, out);
    }
}
