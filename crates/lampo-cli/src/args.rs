//! Options several commands share (the model, threads, sampling,
//! speculation) and the parsers that check values before anything runs,
//! with messages that name the flag and say what it takes.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use lampo_engine::{GenerateParams, SamplingParams, SpecMode};
use lampo_kernels::{Activations, Cpu, Isa};
use lampo_model::LoadedModel;

use crate::models;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m); default smollm2
    #[arg(short, long)]
    pub model: Option<String>,
    /// Threads for the kernels (default: one per physical core; more than
    /// the cores needs --force-threads)
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Allow more threads than this machine has cores (usually much slower)
    #[arg(long)]
    pub force_threads: bool,
    /// Dot weights with f32 activations instead of 8-bit ones: slightly
    /// lower perplexity, several times slower
    #[arg(long)]
    pub f32_activations: bool,
}

impl ModelArgs {
    /// The thread count to use: the cores by default; more than the cores
    /// only with `--force-threads` (it slows every kernel down).
    pub fn threads(&self) -> Result<usize> {
        check_threads(self.threads, self.force_threads)
    }

    /// The CPU backend these options ask for: the thread count, the
    /// kernels `LAMPO_ISA` names (or the best this CPU runs), and how
    /// activations meet the weights. Models that run together share it.
    pub fn backend(&self) -> Result<Cpu> {
        let threads = self.threads()?;
        let isa = Isa::from_env().map_err(|e| anyhow!(e))?;
        let cpu = Cpu::new(threads, isa).map_err(|e| anyhow!(e))?;
        Ok(if self.f32_activations {
            cpu.with_activations(Activations::F32)
        } else {
            cpu
        })
    }

    /// Loads the model on a backend of its own, with a spinner on a terminal.
    pub fn load(&self) -> Result<LoadedModel> {
        self.load_on(self.backend()?)
    }

    /// Loads the model on `backend`.
    pub fn load_on(&self, backend: Cpu) -> Result<LoadedModel> {
        let path = models::resolve(self.model.as_deref())?;
        let spinner = indicatif::ProgressBar::new_spinner()
            .with_message(format!("loading {}", path.display()));
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        let lm = LoadedModel::load_with(&path, backend)
            .with_context(|| format!("cannot load {}", path.display()));
        spinner.finish_and_clear();
        lm
    }
}

/// `threads` checked against the machine: 0 is one per physical core.
pub fn check_threads(threads: usize, force: bool) -> Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > cores && !force {
        bail!(
            "-t {threads} asks for more threads than this machine's {cores} cores, which slows every step down; \
             use -t {cores} or less (or add --force-threads)"
        );
    }
    Ok(threads)
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most (at least 1)
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256, value_parser = at_least_one)]
    pub max_tokens: usize,
    /// Temperature, 0 to 2; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.8, allow_negative_numbers = true, value_parser = temperature)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to P (0 to 1; 1: all)
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true, value_parser = unit)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 to 1)
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true, value_parser = unit)]
    pub min_p: f32,
    /// Divide the logits of tokens already seen by this (above 0; 1: off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0, allow_negative_numbers = true, value_parser = positive)]
    pub repetition_penalty: f32,
    /// Lower a token's logit by this times its count so far (-2 to 2)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = penalty)]
    pub frequency_penalty: f32,
    /// Lower the logit of every token seen so far by this (-2 to 2)
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = penalty)]
    pub presence_penalty: f32,
    /// Bias a token's logit: TOKEN_ID=BIAS (repeatable)
    #[arg(long = "logit-bias", value_parser = parse_bias, allow_negative_numbers = true)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed for reproducible sampling
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context size in tokens (at most the model's trained context)
    #[arg(short = 'c', long = "ctx", default_value_t = 4096, value_parser = context)]
    pub ctx: usize,
}

impl SamplingArgs {
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                logit_bias: self.logit_bias.clone(),
                seed: self.seed,
                ..SamplingParams::default()
            },
            logprobs: None,
        }
    }
}

/// `ctx` clamped to what `lm` was trained for, saying so when it is, and
/// the model told the context it will run with (LongRoPE files choose
/// their factors by it).
pub fn fit_context(ctx: usize, lm: &mut LoadedModel) -> usize {
    let trained = lm.model.config.n_ctx_train;
    let ctx = if trained > 0 && ctx > trained {
        eprintln!("note: --ctx {ctx} is more than the model's trained context; using {trained}");
        trained
    } else {
        ctx
    };
    lm.model.set_context(ctx);
    ctx
}

/// Speculative decoding options, shared by `run` and `serve`.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: ngram (prompt lookup), draft (needs --draft),
    /// auto (prompt lookup when it finds a match, else the draft), off
    #[arg(long, default_value = "off")]
    pub spec: SpecMode,
    /// Draft model for speculation (same vocabulary as the model), e.g. qwen05b for qwen15b
    #[arg(long)]
    pub draft: Option<String>,
    /// Most tokens proposed per step (the draft model proposes at most 8)
    #[arg(long, default_value_t = 16)]
    pub max_proposal: usize,
}

impl SpecArgs {
    /// The draft model, loaded on `backend` (with 8-bit activations), if
    /// one was named.
    pub fn load_draft(&self, backend: &Cpu) -> Result<Option<Arc<LoadedModel>>> {
        let Some(name) = &self.draft else {
            if self.spec == SpecMode::Draft {
                bail!("--spec draft needs --draft MODEL");
            }
            return Ok(None);
        };
        let args = ModelArgs {
            model: Some(name.clone()),
            threads: backend.threads(),
            force_threads: true,
            f32_activations: false,
        };
        let backend = backend.clone().with_activations(Activations::Q8);
        Ok(Some(Arc::new(args.load_on(backend)?)))
    }
}

/// A prompt given as text, as `-` (standard input) or as a file.
pub fn read_prompt(prompt: Option<&str>, file: Option<&PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some("-"), None) => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the prompt from standard input")?;
            Ok(text)
        }
        (Some(p), None) => Ok(p.to_string()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the prompt file {}", f.display())),
        (None, None) => bail!("give a prompt: -p TEXT, -p - (standard input) or -f FILE"),
        (Some(_), Some(_)) => bail!("give the prompt once: -p or -f, not both"),
    }
}

fn parse_f32(s: &str) -> Result<f32, String> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("'{s}' is not a number"))
}

fn temperature(s: &str) -> Result<f32, String> {
    let x = parse_f32(s)?;
    if (0.0..=2.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!(
            "the temperature must be between 0 and 2 (0 is greedy), not {x}"
        ))
    }
}

fn unit(s: &str) -> Result<f32, String> {
    let x = parse_f32(s)?;
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("must be between 0 and 1, not {x}"))
    }
}

fn positive(s: &str) -> Result<f32, String> {
    let x = parse_f32(s)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err(format!("must be above 0, not {x}"))
    }
}

fn penalty(s: &str) -> Result<f32, String> {
    let x = parse_f32(s)?;
    if (-2.0..=2.0).contains(&x) {
        Ok(x)
    } else {
        Err(format!("must be between -2 and 2, not {x}"))
    }
}

/// A whole number of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// A context size: room for a prompt and an answer.
pub fn context(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 16 => Ok(n),
        Ok(n) => Err(format!(
            "a context of {n} tokens leaves no room for a prompt and an answer (at least 16)"
        )),
        Err(_) => Err(format!("'{s}' is not a whole number of tokens")),
    }
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (t, b) = s.split_once('=').ok_or("expected TOKEN_ID=BIAS")?;
    Ok((
        t.trim()
            .parse()
            .map_err(|_| format!("'{t}' is not a token id"))?,
        parse_f32(b)?,
    ))
}

/// Bytes from a size such as `512MiB`, `2GiB`, `1.5G` or a plain number.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 512MiB or 2GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    Ok((number * scale) as usize)
}

/// Memory this machine has free for the KV cache, if it says.
pub fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a KV cache that would not fit in memory.
pub fn check_memory(kv_bytes: usize, what: &str) -> Result<()> {
    if let Some(free) = available_memory()
        && kv_bytes > free / 10 * 9
    {
        bail!(
            "{what} needs {} MiB of KV cache but this machine has {} MiB available; \
             lower --ctx (or --kv-memory)",
            kv_bytes >> 20,
            free >> 20
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_with_messages_that_say_what_is_wanted() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(temperature("0"), Ok(0.0));
        assert!(temperature("-1").unwrap_err().contains("between 0 and 2"));
        assert!(temperature("nan").is_err());
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(context("0").unwrap_err().contains("no room"));
        assert_eq!(parse_bias("5=-2.5"), Ok((5, -2.5)));
        assert!(parse_bias("x=1").is_err());
    }
}
