//! Lampo's numeric kernels and its CPU backend: tensor block formats,
//! dequantization, dot products, matrix multiplication and the
//! elementwise ops of a transformer, for each instruction set
//! ([`isa`], [`kernels`]), behind the [`backend::Backend`] boundary the
//! models are written against ([`cpu::Cpu`] implements it). Knows nothing
//! about models.

pub mod backend;
pub mod bandwidth;
pub mod cpu;
pub mod isa;
pub mod kernels;
mod lowbit;
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

pub use backend::{Activation, Backend, Heads, HostMatrix, KvShape, Mapping, SeqSpan};
pub use cpu::Cpu;
pub use isa::Isa;
pub use kernels::Kernels;
pub use matmul::{Activations, Layout, WeightRef};
pub use quant::DType;
