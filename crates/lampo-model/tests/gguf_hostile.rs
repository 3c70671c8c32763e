//! The GGUF reader on broken and hostile files: every case must give a clear
//! error naming the problem, never a panic or an out-of-bounds read.

use lampo_model::gguf::{Gguf, GgufError};
use lampo_model::{GgufFile, Model, ModelError};

/// Builds GGUF files byte by byte.
#[derive(Default)]
struct Writer {
    kvs: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl Writer {
    fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        put_str(&mut self.kvs, key);
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend(value);
        self.n_kv += 1;
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv_raw(key, 4, &v.to_le_bytes())
    }
    fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv_raw(key, 6, &v.to_le_bytes())
    }
    fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
        let mut b = Vec::new();
        put_str(&mut b, v);
        self.kv_raw(key, 8, &b)
    }
    /// An f32 tensor of the given GGML shape filled with `fill`.
    fn tensor(&mut self, name: &str, shape: &[u64], fill: f32) -> &mut Self {
        let offset = self.data.len() as u64;
        put_str(&mut self.infos, name);
        self.infos.extend((shape.len() as u32).to_le_bytes());
        for d in shape {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(0u32.to_le_bytes()); // F32
        self.infos.extend(offset.to_le_bytes());
        let n: u64 = shape.iter().product();
        for _ in 0..n {
            self.data.extend(fill.to_le_bytes());
        }
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_tensors += 1;
        self
    }
    /// A tensor of GGML type `ty` holding `data` as given.
    fn tensor_raw(&mut self, name: &str, shape: &[u64], ty: u32, data: &[u8]) -> &mut Self {
        let offset = self.data.len() as u64;
        put_str(&mut self.infos, name);
        self.infos.extend((shape.len() as u32).to_le_bytes());
        for d in shape {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.data.extend(data);
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.n_tensors += 1;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kvs);
        b.extend(&self.infos);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }
}

/// A complete one-layer llama model with tiny dimensions.
fn tiny_llama() -> Writer {
    tiny_llama_with_kv_heads(2)
}

fn tiny_llama_with_kv_heads(n_head_kv: u32) -> Writer {
    let (d, ff, vocab) = (32u64, 64u64, 16u64);
    let mut w = Writer::default();
    w.kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", d as u32)
        .kv_u32("llama.feed_forward_length", ff as u32)
        .kv_u32("llama.attention.head_count", 4)
        .kv_u32("llama.attention.head_count_kv", n_head_kv)
        .kv_u32("llama.context_length", 128)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.tensor("token_embd.weight", &[d, vocab], 0.01)
        .tensor("output_norm.weight", &[d], 1.0)
        .tensor("blk.0.attn_norm.weight", &[d], 1.0)
        .tensor("blk.0.attn_q.weight", &[d, d], 0.01)
        .tensor("blk.0.attn_k.weight", &[d, 16], 0.01)
        .tensor("blk.0.attn_v.weight", &[d, 16], 0.01)
        .tensor("blk.0.attn_output.weight", &[d, d], 0.01)
        .tensor("blk.0.ffn_norm.weight", &[d], 1.0)
        .tensor("blk.0.ffn_gate.weight", &[d, ff], 0.01)
        .tensor("blk.0.ffn_up.weight", &[d, ff], 0.01)
        .tensor("blk.0.ffn_down.weight", &[ff, d], 0.01);
    w
}

fn write_temp(bytes: &[u8], name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("lampo-test-{}-{name}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_model(bytes: &[u8], name: &str) -> Result<Model, ModelError> {
    let path = write_temp(bytes, name);
    let result = GgufFile::open(&path)
        .map_err(ModelError::from)
        .and_then(|f| Model::from_file(f, lampo_kernels::Cpu::shared()));
    std::fs::remove_file(&path).ok();
    result
}

#[test]
fn a_well_formed_tiny_model_loads_and_runs() {
    let model = load_model(&tiny_llama().bytes(), "ok").unwrap();
    assert_eq!(
        (
            model.config.n_layer,
            model.config.head_dim,
            model.config.n_vocab
        ),
        (1, 8, 16)
    );
    let mut kv = model.kv_cache(8);
    let logits = model
        .forward(&[1, 2, 3], &mut kv, lampo_model::Logits::All)
        .unwrap();
    assert_eq!(logits.len(), 3 * 16);
    assert!(logits.iter().all(|l| l.is_finite()));
    let err = model
        .forward(&[99], &mut kv, lampo_model::Logits::Last)
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

/// RoPE scaling metadata is applied or refused by name, never ignored.
#[test]
fn rope_scaling_is_applied_or_refused() {
    let runs = |w: &Writer, name: &str| {
        let model = load_model(&w.bytes(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut kv = model.kv_cache(8);
        let logits = model
            .forward(&[1, 2, 3], &mut kv, lampo_model::Logits::All)
            .unwrap();
        assert!(logits.iter().all(|l| l.is_finite()), "{name}");
    };
    let refused = |w: &Writer, name: &str, want: &str| {
        let err = load_model(&w.bytes(), name).err().unwrap().to_string();
        assert!(err.contains(want), "{name}: {err}");
    };

    let mut w = tiny_llama();
    w.kv_str("llama.rope.scaling.type", "yarn")
        .kv_f32("llama.rope.scaling.factor", 4.0)
        .kv_u32("llama.rope.scaling.original_context_length", 32);
    runs(&w, "yarn");
    let cfg = load_model(&w.bytes(), "yarn-config").unwrap().config;
    assert_eq!(
        (cfg.rope_scaling.freq_scale, cfg.rope_scaling.n_ctx_orig),
        (0.25, 32)
    );
    let mut w = tiny_llama();
    w.kv_str("llama.rope.scaling.type", "linear")
        .kv_f32("llama.rope.scaling.factor", 2.0);
    runs(&w, "linear");
    // Llama 3.x: one divisor per rotated pair (head size 8: 4 pairs).
    let mut w = tiny_llama();
    w.tensor("rope_freqs.weight", &[4], 2.0);
    runs(&w, "rope-freqs");

    // LongRoPE (phi3's 128k files): short and long factors per pair.
    let mut w = tiny_llama();
    w.kv_str("llama.rope.scaling.type", "longrope");
    w.tensor("rope_factors_long.weight", &[4], 2.0);
    w.tensor("rope_factors_short.weight", &[4], 1.0);
    runs(&w, "longrope");
    let mut w = tiny_llama();
    w.tensor("rope_factors_long.weight", &[3], 2.0);
    refused(&w, "rope-factors-shape", "rope_factors_long.weight");
    let mut w = tiny_llama();
    w.kv_str("llama.rope.scaling.type", "ntk-magic");
    refused(
        &w,
        "unknown-scaling",
        "unknown RoPE scaling type 'ntk-magic'",
    );
    let mut w = tiny_llama();
    w.kv_f32("llama.rope.scaling.factor", -2.0);
    refused(&w, "negative-factor", "negative");
    let mut w = tiny_llama();
    w.tensor("rope_freqs.weight", &[3], 2.0);
    refused(&w, "rope-freqs-shape", "rope_freqs.weight");
    let mut w = tiny_llama();
    w.tensor("rope_freqs.weight", &[4], 0.0);
    refused(&w, "rope-freqs-zero", "not a positive number");
    let mut w = tiny_llama();
    w.kv_f32("llama.attention.scale", 0.5);
    refused(&w, "attention-scale", "custom attention scale");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny_llama().bytes();
    for len in 0..bytes.len() {
        match Gguf::parse(&bytes[..len]) {
            Err(_) => {}
            // Cutting inside trailing padding after the last tensor can leave a valid file.
            Ok(g) => assert!(
                g.tensors.iter().all(|t| t.offset + t.size <= len),
                "truncation to {len} bytes parsed with tensors beyond the end"
            ),
        }
    }
    let err = Gguf::parse(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. }
        ),
        "{err}"
    );
}

/// A file in each low-bit format reads; cut short, or with rows that are
/// not whole blocks, it is refused with one line naming the tensor.
#[test]
fn low_bit_formats_read_and_truncations_are_named() {
    use lampo_kernels::DType;
    use lampo_kernels::quant::sample_blocks;
    for ty in [DType::Q2_K, DType::Q3_K, DType::IQ4_NL, DType::IQ4_XS] {
        let data = sample_blocks(ty, 512, 5);
        let mut w = Writer::default();
        w.tensor_raw("t", &[256, 2], ty.ggml_id(), &data);
        let b = w.bytes();
        let g = Gguf::parse(&b).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert_eq!(g.tensors[0].dtype, ty);
        let err = Gguf::parse(&b[..b.len() - 32]).unwrap_err().to_string();
        assert!(err.contains("'t'"), "{ty} truncated: {err}");
        assert_eq!(err.lines().count(), 1, "{ty}: {err}");
        let mut w = Writer::default();
        w.tensor_raw("t", &[100, 1], ty.ggml_id(), &data);
        let err = Gguf::parse(&w.bytes()).unwrap_err().to_string();
        assert!(
            err.contains("'t'") && err.contains(ty.name()),
            "{ty} partial: {err}"
        );
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = tiny_llama().bytes();
    let header_len = bytes.len() - tiny_llama().data.len();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = bytes.clone();
        let pos = (seed as usize) % header_len;
        b[pos] ^= 1 << ((seed >> 32) % 8);
        // Either outcome is fine; reaching here without a panic is the test.
        if let Ok(g) = Gguf::parse(&b) {
            for t in &g.tensors {
                assert!(t.offset + t.size <= b.len());
            }
        }
    }
    // And through model loading, which checks shapes and types as well.
    for pos in (0..header_len).step_by(7) {
        let mut b = bytes.clone();
        b[pos] = b[pos].wrapping_add(0x41);
        let _ = load_model(&b, "flip");
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = tiny_llama().bytes();
    b[0] = b'X';
    assert!(matches!(Gguf::parse(&b), Err(GgufError::BadMagic(_))));
    let mut b = tiny_llama().bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = Gguf::parse(&b).unwrap_err();
    assert!(
        err.to_string().contains("unsupported GGUF version 1"),
        "{err}"
    );
    let mut b = tiny_llama().bytes();
    b[4..8].copy_from_slice(&2u32.to_le_bytes());
    Gguf::parse(&b).expect("version 2 has the same layout");
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // Tensor and metadata counts.
    for (at, what) in [(8, "tensor"), (16, "metadata")] {
        let mut b = tiny_llama().bytes();
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = Gguf::parse(&b).unwrap_err();
        assert!(
            matches!(err, GgufError::ImpossibleCount { .. }),
            "{what}: {err}"
        );
    }
    // A string length of 2^63.
    let mut w = Writer::default();
    w.kv_raw("general.name", 8, &(1u64 << 63).to_le_bytes());
    let err = Gguf::parse(&w.bytes()).unwrap_err();
    assert!(err.to_string().contains("value of 'general.name'"), "{err}");
    // An array claiming 2^60 u32 items.
    let mut w = Writer::default();
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend((1u64 << 60).to_le_bytes());
    w.kv_raw("tokenizer.ggml.scores", 9, &v);
    let err = Gguf::parse(&w.bytes()).unwrap_err();
    assert!(matches!(err, GgufError::ImpossibleCount { .. }), "{err}");
}

#[test]
fn unknown_and_wrong_types() {
    let mut w = Writer::default();
    w.kv_raw("x", 13, &[0; 8]);
    assert!(matches!(
        Gguf::parse(&w.bytes()),
        Err(GgufError::UnknownValueType { ty: 13, .. })
    ));

    // Arrays nested deeper than the reader allows.
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(1u64.to_le_bytes());
    nested.extend(9u32.to_le_bytes());
    nested.extend(1u64.to_le_bytes());
    nested.extend(4u32.to_le_bytes());
    nested.extend(1u64.to_le_bytes());
    nested.extend(7u32.to_le_bytes());
    let mut w = Writer::default();
    w.kv_raw("deep", 9, &nested);
    assert!(matches!(
        Gguf::parse(&w.bytes()),
        Err(GgufError::ArrayTooDeep { .. })
    ));

    // An unknown tensor type.
    let mut w = Writer::default();
    w.tensor("t", &[32], 0.0);
    let mut b = w.bytes();
    let ty_at = 24 + 8 + 1 + 4 + 8; // header, name length, name, dims count, one dim
    b[ty_at..ty_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let err = Gguf::parse(&b).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown or unsupported type id 77"),
        "{err}"
    );
    // A known GGML format Lampo does not run yet is named.
    b[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let err = Gguf::parse(&b).unwrap_err().to_string();
    assert!(
        err.contains("tensor 't' is stored as IQ2_XXS, a format Lampo does not run yet"),
        "{err}"
    );

    // Metadata of the wrong type: a string where a count belongs.
    let mut w = tiny_llama();
    w.kv_str("llama.rope.freq_base", "fast");
    let err = load_model(&w.bytes(), "wrongtype").err().unwrap();
    assert!(
        err.to_string().contains("llama.rope.freq_base") && err.to_string().contains("string"),
        "{err}"
    );
}

#[test]
fn bad_tensor_tables() {
    // Zero dimensions, too many dimensions, a zero-sized dimension.
    for dims in [&[][..], &[1, 1, 1, 1, 1][..], &[0][..]] {
        let mut w = Writer::default();
        w.tensor("t", dims, 0.0);
        assert!(Gguf::parse(&w.bytes()).is_err(), "dims {dims:?}");
    }
    // Element count overflow.
    let mut w = Writer::default();
    put_str(&mut w.infos, "big");
    w.infos.extend(2u32.to_le_bytes());
    w.infos.extend(u64::MAX.to_le_bytes());
    w.infos.extend(3u64.to_le_bytes());
    w.infos.extend(0u32.to_le_bytes());
    w.infos.extend(0u64.to_le_bytes());
    w.n_tensors = 1;
    assert!(matches!(
        Gguf::parse(&w.bytes()),
        Err(GgufError::BadShape { .. })
    ));

    // Offsets: misaligned, beyond the file, overlapping, duplicate names.
    let with_offset = |offset: u64, name2: &str| {
        let mut w = Writer::default();
        w.tensor("a", &[8], 1.0).tensor(name2, &[8], 1.0);
        let mut b = w.bytes();
        let at = b
            .windows(name2.len() + 8)
            .position(|win| &win[8..] == name2.as_bytes())
            .unwrap()
            + 8
            + name2.len();
        let off_at = at + 4 + 8 + 4;
        b[off_at..off_at + 8].copy_from_slice(&offset.to_le_bytes());
        Gguf::parse(&b)
    };
    assert!(matches!(
        with_offset(4, "b"),
        Err(GgufError::MisalignedTensor { .. })
    ));
    assert!(matches!(
        with_offset(1 << 40, "b"),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    assert!(matches!(
        with_offset(0, "b"),
        Err(GgufError::OverlappingTensors { .. })
    ));
    assert!(matches!(
        with_offset(32, "a"),
        Err(GgufError::DuplicateTensor(_))
    ));

    // Quantized rows must be whole blocks: 40 values of Q4_0 (block 32).
    let mut w = Writer::default();
    w.tensor("q", &[40], 0.0);
    let mut b = w.bytes();
    let ty_at = 24 + 8 + 1 + 4 + 8;
    b[ty_at..ty_at + 4].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        Gguf::parse(&b),
        Err(GgufError::PartialBlock { .. })
    ));

    // Alignment that is not a power of two.
    let mut w = Writer::default();
    w.kv_u32("general.alignment", 48);
    assert!(matches!(
        Gguf::parse(&w.bytes()),
        Err(GgufError::BadAlignment(48))
    ));
}

#[test]
fn model_level_checks_name_the_problem() {
    // A tensor with the wrong shape for the architecture.
    let mut w = tiny_llama();
    w.tensor("blk.0.attn_q.bias", &[32], 0.0); // harmless extra
    let mut b = w.bytes();
    let name = b"blk.0.attn_k.weight";
    let at = b.windows(name.len()).position(|win| win == name).unwrap() + name.len() + 4 + 8;
    b[at..at + 8].copy_from_slice(&8u64.to_le_bytes()); // 16 rows -> 8 rows
    let err = load_model(&b, "shape").err().unwrap();
    assert!(
        err.to_string().contains("blk.0.attn_k.weight") && err.to_string().contains("expected"),
        "{err}"
    );

    // A missing key, then a missing tensor.
    let mut w = Writer::default();
    w.kv_str("general.architecture", "llama");
    let err = load_model(&w.bytes(), "missing").err().unwrap();
    assert!(err.to_string().contains("is missing"), "{err}");
    let mut b = tiny_llama().bytes();
    let name = b"blk.0.ffn_up.weight";
    let at = b.windows(name.len()).position(|win| win == name).unwrap();
    b[at + 8] = b'X'; // rename to blk.0.ffn_Xp.weight
    let err = load_model(&b, "missing-tensor").err().unwrap();
    assert!(
        err.to_string()
            .contains("tensor 'blk.0.ffn_up.weight' is missing"),
        "{err}"
    );

    // Heads that do not divide.
    let err = load_model(&tiny_llama_with_kv_heads(3).bytes(), "heads")
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("4 attention heads cannot be shared by 3"),
        "{err}"
    );

    // A key given twice.
    let mut w = tiny_llama();
    w.kv_u32("llama.block_count", 2);
    let err = load_model(&w.bytes(), "dup").err().unwrap();
    assert!(
        err.to_string()
            .contains("'llama.block_count' appears twice"),
        "{err}"
    );

    // An architecture Lampo does not run.
    let mut w = Writer::default();
    w.kv_str("general.architecture", "mamba");
    let err = load_model(&w.bytes(), "arch").err().unwrap();
    assert!(
        err.to_string()
            .contains("architecture 'mamba' is not supported"),
        "{err}"
    );
}

/// The real model file, cut short at many points, always errors cleanly.
#[test]
fn truncated_real_model_files() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "run scripts/fetch-models smollm2");
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: read-only map of a file the test does not modify.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let full = Gguf::parse(&map).unwrap();
    assert!(!full.tensors.is_empty());
    let mut cuts: Vec<usize> = (0..64).map(|i| i * 97 + 3).collect();
    cuts.extend((1..40).map(|i| full.data_offset / 40 * i));
    cuts.extend([
        full.data_offset - 1,
        full.data_offset + 1,
        map.len() / 2,
        map.len() - 1,
    ]);
    for cut in cuts {
        let err = Gguf::parse(&map[..cut]).expect_err("a cut file must not parse");
        let msg = err.to_string();
        assert!(!msg.is_empty());
    }
}

/// A tiny phi3 file: fused `attn_qkv` (`qkv_rows` rows) and `ffn_up`
/// (gate and up, `up_rows` rows).
fn tiny_phi3(qkv_rows: u64, up_rows: u64) -> Writer {
    let (d, ff, vocab) = (32u64, 64u64, 16u64);
    let mut w = Writer::default();
    w.kv_str("general.architecture", "phi3")
        .kv_u32("phi3.block_count", 1)
        .kv_u32("phi3.embedding_length", d as u32)
        .kv_u32("phi3.feed_forward_length", ff as u32)
        .kv_u32("phi3.attention.head_count", 4)
        .kv_u32("phi3.attention.head_count_kv", 2)
        .kv_u32("phi3.rope.dimension_count", 6)
        .kv_u32("phi3.context_length", 128)
        .kv_f32("phi3.attention.layer_norm_rms_epsilon", 1e-5);
    w.tensor("token_embd.weight", &[d, vocab], 0.01)
        .tensor("output_norm.weight", &[d], 1.0)
        .tensor("output.weight", &[d, vocab], 0.01)
        .tensor("blk.0.attn_norm.weight", &[d], 1.0)
        .tensor("blk.0.attn_qkv.weight", &[d, qkv_rows], 0.01)
        .tensor("blk.0.attn_output.weight", &[d, d], 0.01)
        .tensor("blk.0.ffn_norm.weight", &[d], 1.0)
        .tensor("blk.0.ffn_up.weight", &[d, up_rows], 0.01)
        .tensor("blk.0.ffn_down.weight", &[ff, d], 0.01);
    w
}

/// Fused matrices are split by rows when their shape is whole, and refused
/// by name when it is not.
#[test]
fn fused_phi3_matrices_load_or_are_refused_by_name() {
    // Q 32 rows, K and V 16 each; gate and up 64 each.
    let model = load_model(&tiny_phi3(64, 128).bytes(), "phi3-ok").unwrap();
    assert_eq!((model.config.rope_dims, model.config.head_dim), (6, 8));
    let mut kv = model.kv_cache(8);
    let logits = model
        .forward(&[1, 2, 3], &mut kv, lampo_model::Logits::All)
        .unwrap();
    assert!(logits.iter().all(|l| l.is_finite()));
    for (qkv, up, name, want) in [
        (63, 128, "phi3-qkv", "blk.0.attn_qkv.weight"),
        (64, 64, "phi3-up", "blk.0.ffn_up.weight"),
    ] {
        let err = load_model(&tiny_phi3(qkv, up).bytes(), name)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
}
