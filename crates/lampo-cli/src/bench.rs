//! `lampo bench`: prompt processing and generation speed, measured the way
//! llama-bench measures it so the two can be compared: random tokens (no
//! tokenizer), an empty context per repetition, one warm-up run, and mean ±
//! standard deviation of tokens per second over the repetitions.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use lampo_kernels::Activations;
use lampo_kernels::bandwidth::read_bandwidth;
use lampo_kernels::{Cpu, Isa};
use lampo_model::{Logits, Model, Sequence};

#[derive(Args)]
pub struct BenchArgs {
    /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m); default smollm2
    #[arg(short, long)]
    model: Option<String>,
    /// Prompt tokens processed in one batch (0 skips the test)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated one at a time (0 skips the test)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Sequences generating together in the generation test (continuous
    /// batching's decode step); t/s counts the tokens of all of them
    #[arg(short = 'b', long = "batch", default_value_t = 1)]
    batch: usize,
    /// Repetitions of each test
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    repetitions: usize,
    /// Threads (default: one per physical core)
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Allow more threads than this machine has cores
    #[arg(long)]
    force_threads: bool,
    /// Dot weights with f32 activations instead of 8-bit ones
    #[arg(long)]
    f32_activations: bool,
    /// Print JSON instead of a Markdown table
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

/// One test's result.
struct Measured {
    test: String,
    tokens: usize,
    samples: Vec<f64>,
}

impl Measured {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }

    /// Sample standard deviation, as llama-bench reports it.
    fn std(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

/// A small deterministic generator for token ids.
struct Tokens(u64);

impl Tokens {
    fn next(&mut self, n_vocab: usize) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n_vocab as u64) as u32
    }
}

fn prompt_run(model: &Model, n: usize, rng: &mut Tokens) -> Result<f64> {
    let tokens: Vec<u32> = (0..n).map(|_| rng.next(model.config.n_vocab)).collect();
    let mut kv = model.kv_cache(n);
    let start = Instant::now();
    model.forward(&tokens, &mut kv, Logits::Last)?;
    Ok(start.elapsed().as_secs_f64())
}

fn gen_run(model: &Model, n: usize, rng: &mut Tokens) -> Result<f64> {
    let mut kv = model.kv_cache(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = rng.next(model.config.n_vocab);
        model.forward(&[t], &mut kv, Logits::Last)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `batch` sequences generating `n` tokens each in lockstep, one forward
/// pass per step over a paged store, as the server's decode steps run.
fn batch_gen_run(model: &Model, n: usize, batch: usize, rng: &mut Tokens) -> Result<f64> {
    const BLOCK: usize = 16;
    let per_seq = n.div_ceil(BLOCK);
    let mut store = model.kv_store(BLOCK, batch * per_seq);
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|b| ((b * per_seq) as u32..((b + 1) * per_seq) as u32).collect())
        .collect();
    let start = Instant::now();
    for pos in 0..n {
        let tokens: Vec<u32> = (0..batch).map(|_| rng.next(model.config.n_vocab)).collect();
        let seqs: Vec<Sequence> = tables
            .iter()
            .zip(&tokens)
            .map(|(blocks, t)| Sequence {
                tokens: std::slice::from_ref(t),
                blocks,
                past: pos,
                logits: Logits::Last,
            })
            .collect();
        model.forward_batch(&mut store, &seqs)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(a: BenchArgs, path: &Path) -> Result<()> {
    if a.repetitions == 0 || a.batch == 0 {
        bail!("--repetitions and --batch must be at least 1");
    }
    let threads = crate::args::check_threads(a.threads, a.force_threads)?;
    let isa = Isa::from_env().map_err(|e| anyhow::anyhow!(e))?;
    let mut backend = Cpu::new(threads, isa).map_err(|e| anyhow::anyhow!(e))?;
    if a.f32_activations {
        backend = backend.with_activations(Activations::F32);
    }
    let threads = backend.threads();
    let mut model = Model::load_with(path, backend.clone())?;
    let pool = backend.pool();
    let ctx = model.config.n_ctx_train.max(1);
    if a.n_prompt > ctx || a.n_gen > ctx {
        bail!("tests longer than the model's context of {ctx} tokens");
    }
    // The context llama-bench gives its tests.
    model.set_context(a.n_prompt + a.n_gen);
    let mut rng = Tokens(0x2545_F491_4F6C_DD1D);
    // Warm-up, as llama-bench does: a full prompt and one generated token.
    if a.n_prompt > 0 {
        prompt_run(&model, a.n_prompt, &mut rng)?;
    }
    if a.n_gen > 0 {
        gen_run(&model, 1, &mut rng)?;
    }
    let mut results = Vec::new();
    for (test, n, f) in [
        (
            "pp",
            a.n_prompt,
            prompt_run as fn(&Model, usize, &mut Tokens) -> Result<f64>,
        ),
        ("tg", a.n_gen, gen_run),
    ] {
        if n == 0 {
            continue;
        }
        let batched = test == "tg" && a.batch > 1;
        let mut samples = Vec::new();
        for _ in 0..a.repetitions {
            let seconds = if batched {
                batch_gen_run(&model, n, a.batch, &mut rng)? / a.batch as f64
            } else {
                f(&model, n, &mut rng)?
            };
            samples.push(n as f64 / seconds);
        }
        results.push(Measured {
            test: if batched {
                format!("{test}{n} x{}", a.batch)
            } else {
                format!("{test}{n}")
            },
            tokens: n,
            samples,
        });
    }
    let rss = peak_rss();
    // Parallel regions per generated token, and what one costs.
    let regions = if a.n_gen > 0 {
        let before = pool.regions_started();
        gen_run(&model, a.n_gen.min(16), &mut rng)?;
        Some((pool.regions_started() - before) as f64 / a.n_gen.min(16) as f64)
    } else {
        None
    };
    let (pool_cost, spawn_cost) = pool.region_cost(threads, 20_000);
    let bandwidth = read_bandwidth(pool, 1 << 29, 5, threads);
    let weights = model.weight_bytes_per_token();
    // Generation reads every weight once per token, plus the KV cache of
    // the positions so far (on average half the generated length).
    // With a batch, one step reads the weights once for all its tokens.
    let batch = a.batch.max(1) as u64;
    let decode_bytes = |n: usize| weights / batch + model.kv_bytes_per_position() * n as u64 / 2;
    let file_bytes = std::fs::metadata(path)?.len();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let acts = if a.f32_activations { "f32" } else { "q8" };

    if a.json {
        let tests: Vec<_> = results
            .iter()
            .map(|m| {
                let bw = m
                    .test
                    .starts_with("tg")
                    .then(|| decode_bytes(m.tokens) as f64 * m.mean());
                serde_json::json!({
                    "test": m.test,
                    "n_tokens": m.tokens,
                    "avg_ts": m.mean(),
                    "stddev_ts": m.std(),
                    "samples_ts": m.samples,
                    "decode_bytes_per_s": bw,
                })
            })
            .collect();
        let report = serde_json::json!({
            "model": name,
            "file_bytes": file_bytes,
            "weight_bytes_per_token": weights,
            "threads": threads,
            "activations": acts,
            "kernels": backend.isa().name(),
            "read_bandwidth_bytes_per_s": bandwidth,
            "peak_rss_bytes": rss,
            "regions_per_token": regions,
            "region_seconds_pool": pool_cost,
            "region_seconds_spawn": spawn_cost,
            "tests": tests,
        });
        println!("{report}");
        return Ok(());
    }
    let gb = |b: f64| b / 1e9;
    println!("| model | size | threads | kernels | test | t/s | decode GB/s | of bandwidth |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in &results {
        let (bw, frac) = if m.test.starts_with("tg") {
            let b = decode_bytes(m.tokens) as f64 * m.mean();
            (
                format!("{:.1}", gb(b)),
                format!("{:.0}%", 100.0 * b / bandwidth),
            )
        } else {
            (String::from("-"), String::from("-"))
        };
        println!(
            "| {} | {:.1} MB | {} | {} {} | {} | {:.2} ± {:.2} | {} | {} |",
            name,
            file_bytes as f64 / 1e6,
            threads,
            backend.isa().name(),
            acts,
            m.test,
            m.mean(),
            m.std(),
            bw,
            frac
        );
    }
    println!();
    println!(
        "measured read bandwidth: {:.1} GB/s ({threads} threads); weights read per token: {:.1} MB",
        gb(bandwidth),
        weights as f64 / 1e6
    );
    if let Some(r) = regions {
        println!(
            "parallel regions per generated token: {r:.0}; one costs {:.2} µs in the pool ({:.1} µs spawning threads per region)",
            pool_cost * 1e6,
            spawn_cost * 1e6
        );
    }
    if let Some(r) = rss {
        println!(
            "peak resident memory: {:.1} MB (model file {:.1} MB)",
            r as f64 / 1e6,
            file_bytes as f64 / 1e6
        );
    }
    Ok(())
}
