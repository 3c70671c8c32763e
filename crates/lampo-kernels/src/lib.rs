//! Lampo's numeric kernels: tensor block formats, dequantization, dot
//! products, matrix multiplication and the elementwise ops of a transformer.
//! Knows nothing about models.

pub mod bandwidth;
pub mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod ops;
pub mod parallel;
pub mod qdot;
pub mod quant;
pub mod repack;
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use matmul::{Activations, Layout, WeightRef, matmul, matmul_many};
pub use quant::DType;
