//! Lampo's numeric kernels: tensor block formats, dequantization, dot
//! products, matrix multiplication and the elementwise ops of a transformer.
//! Knows nothing about models.

pub mod matmul;
pub mod ops;
pub mod parallel;
pub mod qdot;
pub mod quant;
pub mod simd;

pub use matmul::{Activations, WeightRef, matmul};
pub use quant::DType;
