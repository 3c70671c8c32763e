//! The CPU backend: the [`Backend`] ops on host memory, with the kernels
//! of one instruction set (chosen once, [`Kernels`]), a thread pool held
//! as a value (models that run together share one), and weights read in
//! place from the model file's mapping or, where this CPU's kernels read
//! them faster, interleaved eight rows at a time ([`crate::repack`]).

mod kv;

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::backend::{Activation, Backend, Heads, HostMatrix, KvShape, Mapping, SeqSpan};
use crate::isa::Isa;
use crate::kernels::Kernels;
use crate::matmul::{Activations, Layout, MatmulCtx, WeightRef, matmul_many};
use crate::ops::{Rope, RopeStyle};
use crate::parallel::ThreadPool;
use crate::quant::DType;
use crate::repack::{Packed, interleave_rows8};

pub use kv::CpuKv;

/// The CPU backend. Cheap to clone: clones share the thread pool.
#[derive(Clone)]
pub struct Cpu {
    pool: Arc<ThreadPool>,
    kernels: Kernels,
    acts: Activations,
}

impl Cpu {
    /// A backend with `threads` kernel threads (0: one per physical core)
    /// and the kernels of `isa`, or why this CPU cannot run them.
    pub fn new(threads: usize, isa: Isa) -> Result<Cpu, String> {
        Ok(Cpu {
            pool: Arc::new(ThreadPool::new(threads)),
            kernels: Kernels::for_isa(isa)?,
            acts: Activations::default(),
        })
    }

    /// The backend models get unless they are given one: the instruction
    /// set `LAMPO_ISA` names (or the best), one thread per physical core,
    /// one pool for the whole process.
    pub fn shared() -> Cpu {
        static SHARED: OnceLock<Cpu> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let isa = Isa::from_env().unwrap_or_else(|e| {
                    eprintln!("warning: {e}; using the best kernels this CPU runs");
                    Isa::best()
                });
                Cpu::new(0, isa).expect("this CPU runs its best instruction set")
            })
            .clone()
    }

    /// The same backend with activations met as `acts`.
    pub fn with_activations(mut self, acts: Activations) -> Cpu {
        self.acts = acts;
        self
    }

    pub fn isa(&self) -> Isa {
        self.kernels.isa
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    pub fn activations(&self) -> Activations {
        self.acts
    }

    fn ctx(&self) -> MatmulCtx<'_> {
        MatmulCtx {
            pool: &self.pool,
            kernels: &self.kernels,
            acts: self.acts,
        }
    }
}

/// Activations of the CPU backend: `rows × cols` f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A weight matrix read in place from its mapping, and its interleaved
/// copy when this CPU's kernels read that layout faster.
pub struct CpuMatrix {
    dtype: DType,
    rows: usize,
    cols: usize,
    source: Arc<dyn Mapping>,
    range: Range<usize>,
    interleaved: Option<Packed>,
}

impl CpuMatrix {
    /// The matrix as the matmuls read it: interleaved when it has that
    /// copy and activations are 8-bit (the only kernels for that layout).
    fn weight_ref(&self, acts: Activations) -> WeightRef<'_> {
        match &self.interleaved {
            Some(data) if acts == Activations::Q8 => WeightRef {
                dtype: self.dtype,
                rows: self.rows,
                cols: self.cols,
                data,
                layout: Layout::Rows8,
            },
            _ => self.rows_ref(),
        }
    }

    /// The matrix row by row, as in the file.
    fn rows_ref(&self) -> WeightRef<'_> {
        WeightRef {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data: &self.source.bytes()[self.range.clone()],
            layout: Layout::Rows,
        }
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Kv = CpuKv;

    fn name(&self) -> String {
        format!("cpu {}", self.kernels.isa)
    }

    fn tensor(&self, rows: usize, cols: usize) -> CpuTensor {
        CpuTensor {
            rows,
            cols,
            data: vec![0f32; rows * cols],
        }
    }

    fn tensor_from(&self, rows: usize, cols: usize, values: &[f32]) -> CpuTensor {
        assert_eq!(values.len(), rows * cols, "{rows} x {cols} values");
        CpuTensor {
            rows,
            cols,
            data: values.to_vec(),
        }
    }

    fn matrix(&self, w: HostMatrix) -> CpuMatrix {
        let mut m = self.table(w);
        // Interleaved when this CPU's kernels have that layout for the
        // format; the mapped original may then leave memory (it stays in
        // the page cache for the f32-activation path).
        if let Some(k) = self.kernels.dots.rows8.filter(|k| k.dots.supports(m.dtype)) {
            m.interleaved = interleave_rows8(&m.rows_ref(), k.unit);
            if m.interleaved.is_some() {
                m.source.release(m.range.clone());
            }
        }
        m
    }

    fn table(&self, w: HostMatrix) -> CpuMatrix {
        CpuMatrix {
            dtype: w.dtype,
            rows: w.rows,
            cols: w.cols,
            source: w.source,
            range: w.range,
            interleaved: None,
        }
    }

    fn vector(&self, values: &[f32]) -> Vec<f32> {
        values.to_vec()
    }

    fn kv(&self, shape: KvShape, n_blocks: usize) -> CpuKv {
        CpuKv::new(shape, n_blocks)
    }

    fn kv_grow(&self, kv: &mut CpuKv, n_blocks: usize) {
        kv.grow(n_blocks);
    }

    fn kv_blocks(&self, kv: &CpuKv) -> usize {
        kv.n_blocks()
    }

    fn read(&self, x: &CpuTensor, rows: Range<usize>) -> Vec<f32> {
        x.data[rows.start * x.cols..rows.end * x.cols].to_vec()
    }

    fn embed(&self, table: &CpuMatrix, tokens: &[u32], out: &mut CpuTensor) {
        let rows = table.rows_ref();
        for (row, &t) in out.data.chunks_exact_mut(out.cols).zip(tokens) {
            rows.dequantize_row_into(t as usize, row);
        }
    }

    fn scale(&self, x: &mut CpuTensor, by: f32) {
        x.data.iter_mut().for_each(|v| *v *= by);
    }

    fn soft_cap(&self, x: &mut CpuTensor, cap: f32) {
        x.data
            .iter_mut()
            .for_each(|v| *v = crate::ops::soft_cap(*v, cap));
    }

    fn rms_norm(&self, x: &CpuTensor, gain: &Vec<f32>, eps: f32, out: &mut CpuTensor) {
        let d = x.cols;
        for (xr, hr) in x.data.chunks_exact(d).zip(out.data.chunks_exact_mut(d)) {
            self.kernels.rms_norm(xr, gain, eps, hr);
        }
    }

    fn rms_norm_pieces(&self, x: &mut CpuTensor, gain: &Vec<f32>, eps: f32) {
        x.data
            .chunks_exact_mut(gain.len())
            .for_each(|piece| self.kernels.rms_norm_in_place(piece, gain, eps));
    }

    fn matmul(&self, x: &CpuTensor, jobs: &mut [(&CpuMatrix, &mut CpuTensor)]) {
        let mut refs: Vec<(WeightRef, &mut [f32])> = jobs
            .iter_mut()
            .map(|(m, out)| (m.weight_ref(self.acts), &mut out.data[..]))
            .collect();
        matmul_many(self.ctx(), &x.data, &mut refs);
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &Vec<f32>) {
        for row in x.data.chunks_exact_mut(bias.len()) {
            for (a, b) in row.iter_mut().zip(bias) {
                *a += b;
            }
        }
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) {
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
    }

    fn gated(&self, act: Activation, gate: &mut CpuTensor, up: &CpuTensor) {
        let f = match act {
            Activation::Silu => self.kernels.silu_mul,
            Activation::GeluTanh => self.kernels.gelu_mul,
        };
        let n = gate.cols;
        self.pool
            .for_each_chunk_mut(&mut gate.data, n, |t, g| f(g, up.row(t)));
    }

    fn rope_table(&self, rope: &Rope, seqs: &[SeqSpan]) -> CpuTensor {
        let pairs = rope.pairs();
        let rows = seqs.iter().map(|s| s.rows.end).max().unwrap_or(0);
        let mut t = self.tensor(rows, 2 * pairs);
        for s in seqs {
            for i in s.rows.clone() {
                let row = &mut t.data[i * 2 * pairs..(i + 1) * 2 * pairs];
                let (sin, cos) = row.split_at_mut(pairs);
                rope.fill(s.past + i - s.rows.start, sin, cos);
            }
        }
        t
    }

    fn rope(&self, x: &mut CpuTensor, table: &CpuTensor, style: RopeStyle, head_dim: usize) {
        let pairs = table.cols / 2;
        let cols = x.cols;
        for (i, row) in x.data.chunks_exact_mut(cols).enumerate() {
            let (sin, cos) = table.row(i).split_at(pairs);
            (self.kernels.rotate)(row, head_dim, style, sin, cos);
        }
    }

    fn write_kv(
        &self,
        kv: &mut CpuKv,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        seqs: &[SeqSpan],
    ) {
        kv.write(layer, &k.data, &v.data, seqs);
    }

    fn attention(
        &self,
        q: &mut CpuTensor,
        kv: &CpuKv,
        layer: usize,
        heads: Heads,
        seqs: &[SeqSpan],
        out: &mut CpuTensor,
    ) {
        kv.attention(
            &self.pool,
            &self.kernels,
            layer,
            heads,
            seqs,
            &mut q.data,
            &mut out.data,
        );
    }

    fn gather(&self, x: &CpuTensor, rows: &[usize]) -> CpuTensor {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            data.extend_from_slice(x.row(r));
        }
        CpuTensor {
            rows: rows.len(),
            cols: x.cols,
            data,
        }
    }
}
