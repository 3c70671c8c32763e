//! `lampo`: run open-weight language models from GGUF files.

mod bench;
mod models;
mod serve;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lampo_engine::{
    Engine, EngineConfig, Event, Finish, GenerateParams, Grammar, Request, SamplingParams, Session,
    perplexity,
};
use lampo_model::{Gguf, LoadedModel, Message};

#[derive(Parser)]
#[command(
    name = "lampo",
    version,
    about = "Low-latency LLM inference on the hardware you have"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for a prompt and stream it to stdout
    Run(RunArgs),
    /// Chat with a model in the terminal
    Chat(ChatArgs),
    /// Print a model file's metadata and tensors
    Info {
        /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m)
        model: Option<String>,
        /// Also list every tensor
        #[arg(long)]
        tensors: bool,
    },
    /// Serve the OpenAI-compatible HTTP API
    Serve(serve::ServeArgs),
    /// Measure prompt and generation speed, as llama.cpp's llama-bench does
    Bench(bench::BenchArgs),
    /// Compute perplexity over a text file, as llama.cpp's llama-perplexity does
    Perplexity(PerplexityArgs),
    /// Print the token ids of a text
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short, long)]
        prompt: String,
        /// Add BOS/EOS as the model's vocabulary asks
        #[arg(long)]
        add_special: bool,
        /// Turn control-token text such as <|im_start|> into those tokens
        #[arg(long)]
        parse_special: bool,
    },
}

#[derive(Args)]
pub struct ModelArgs {
    /// Model file or name (smollm2, qwen05b, qwen15b, gemma270m); default smollm2
    #[arg(short, long)]
    pub model: Option<String>,
    /// Threads for the kernels (default: one per physical core)
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Dot weights with f32 activations instead of 8-bit ones: slightly
    /// lower perplexity, several times slower
    #[arg(long)]
    pub f32_activations: bool,
}

#[derive(Args)]
struct SamplingArgs {
    /// Tokens to generate at most
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
    max_tokens: usize,
    /// Temperature; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Bias a token's logit: TOKEN_ID=BIAS (repeatable)
    #[arg(long = "logit-bias", value_parser = parse_bias)]
    logit_bias: Vec<(u32, f32)>,
    /// Seed for reproducible sampling
    #[arg(long)]
    seed: Option<u64>,
    /// Context size in tokens
    #[arg(short = 'c', long = "ctx", default_value_t = 4096)]
    ctx: usize,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (t, b) = s.split_once('=').ok_or("expected TOKEN_ID=BIAS")?;
    Ok((
        t.trim().parse().map_err(|e| format!("token id: {e}"))?,
        b.trim().parse().map_err(|e| format!("bias: {e}"))?,
    ))
}

impl SamplingArgs {
    fn params(&self) -> Result<GenerateParams> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("--temp must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.top_p) || !(0.0..=1.0).contains(&self.min_p) {
            bail!("--top-p and --min-p must be between 0 and 1");
        }
        if self.repetition_penalty <= 0.0 {
            bail!("--repeat-penalty must be positive");
        }
        Ok(GenerateParams {
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
        })
    }
}

/// Speculative decoding options, shared by `run` and `serve`.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: ngram (prompt lookup), draft (needs --draft),
    /// auto (prompt lookup when it finds a match, else the draft), off
    #[arg(long, default_value = "off")]
    pub spec: lampo_engine::SpecMode,
    /// Draft model for speculation (same vocabulary as the model), e.g. qwen05b for qwen15b
    #[arg(long)]
    pub draft: Option<String>,
    /// Most tokens proposed per step (the draft model proposes at most 8)
    #[arg(long, default_value_t = 16)]
    pub max_proposal: usize,
}

impl SpecArgs {
    /// The draft model, loaded, if one was named.
    pub fn load_draft(&self, threads: usize) -> Result<Option<std::sync::Arc<LoadedModel>>> {
        let Some(name) = &self.draft else {
            if self.spec == lampo_engine::SpecMode::Draft {
                bail!("--spec draft needs --draft MODEL");
            }
            return Ok(None);
        };
        let args = ModelArgs {
            model: Some(name.clone()),
            threads,
            f32_activations: false,
        };
        Ok(Some(std::sync::Arc::new(load(&args)?)))
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt
    #[arg(short, long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    chat: bool,
    /// System message (with --chat)
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Constrain the output to JSON valid against the JSON schema in FILE
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<PathBuf>,
    /// Constrain the output to the grammar in FILE (llguidance's Lark syntax)
    #[arg(long, value_name = "FILE")]
    grammar: Option<PathBuf>,
    /// Print timing to stderr after the completion
    #[arg(long)]
    stats: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to evaluate
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Tokens per chunk
    #[arg(short = 'c', long = "ctx", default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks
    #[arg(long)]
    chunks: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Chat(a) => cmd_chat(a),
        Command::Info { model, tensors } => cmd_info(model, tensors),
        Command::Perplexity(a) => cmd_perplexity(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => models::resolve(a.model()).and_then(|path| bench::run(a, &path)),
        Command::Tokenize {
            model,
            prompt,
            add_special,
            parse_special,
        } => cmd_tokenize(model, &prompt, add_special, parse_special),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ModelArgs) -> Result<LoadedModel> {
    lampo_kernels::parallel::set_threads(args.threads);
    let path = models::resolve(args.model.as_deref())?;
    let spinner =
        indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let lm = LoadedModel::load(&path).with_context(|| format!("cannot load {}", path.display()));
    spinner.finish_and_clear();
    let mut lm = lm?;
    if args.f32_activations {
        lm.model.set_activations(lampo_kernels::Activations::F32);
    }
    Ok(lm)
}

fn chat_prompt(lm: &LoadedModel, messages: &[Message]) -> Result<Vec<u32>> {
    let template = lm
        .chat_template
        .as_ref()
        .context("this model has no chat template; run without --chat")?;
    let text = template.render(messages, true, None)?;
    Ok(lm.tokenizer.encode(&text, false, true)?)
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let lm = load(&a.model)?;
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &a.prompt));
        chat_prompt(&lm, &messages)?
    } else {
        lm.tokenizer.encode(&a.prompt, true, false)?
    };
    let draft = a.spec.load_draft(a.model.threads)?;
    let ctx = a.sampling.ctx;
    // One request: the whole prompt in one step, KV memory for one context.
    let mut config = EngineConfig {
        max_batch: 1,
        step_tokens: ctx.max(1),
        speculation: a.spec.spec,
        max_proposal: a.spec.max_proposal,
        ..EngineConfig::new(ctx)
    };
    let block = lampo_model::KvStore::block_bytes(&lm.model.config, config.block_size);
    config.kv_memory = ((ctx + 1).div_ceil(config.block_size) + 1) * block;
    let engine = Engine::start_with_draft(std::sync::Arc::new(lm), draft, config)
        .map_err(|e| anyhow::anyhow!(e))?;
    let grammar = match (&a.json_schema, &a.grammar) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let schema = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Some(Grammar::JsonSchema(schema))
        }
        (None, Some(path)) => Some(Grammar::Lark(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )),
        (None, None) => None,
    };
    let constraint = grammar
        .map(|g| engine.constrain(g))
        .transpose()
        .map_err(|e| anyhow::anyhow!("cannot constrain the output: {e}"))?;
    let request = Request {
        prompt: prompt.clone(),
        params,
        stop: Vec::new(),
        timeout: None,
        constraint,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let submitted = Instant::now();
    engine
        .submit(request, move |e| tx.send(e).is_ok())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut stdout = std::io::stdout().lock();
    let (mut first, mut last, mut done) = (None, None, None);
    for event in rx {
        match event {
            Event::Text { text, .. } => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                if let Err(e) = stdout
                    .write_all(text.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    // A closed pipe (e.g. `| head`) ends the run quietly.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e).context("writing to stdout");
                }
            }
            Event::Done(d) => done = Some(d),
            Event::Started => {}
        }
    }
    writeln!(stdout).ok();
    let done = done.context("the engine ended without a result")?;
    if let Finish::Error(e) = &done.finish {
        bail!("generation failed: {e}");
    }
    if a.stats {
        let load = engine.load();
        let (first, last) = (first.unwrap_or(submitted), last.unwrap_or(submitted));
        let prefill = (first - submitted).as_secs_f64().max(1e-9);
        let decode = (last - first).as_secs_f64().max(1e-9);
        eprintln!(
            "prompt: {} tokens in {prefill:.2} s ({:.1} t/s, first token included); generated: {} tokens, {:.1} t/s after the first; finish: {:?}",
            load.prefill_tokens,
            load.prefill_tokens as f64 / prefill,
            done.completion_tokens,
            done.completion_tokens.saturating_sub(1) as f64 / decode,
            done.finish
        );
        if a.spec.spec != lampo_engine::SpecMode::Off {
            let rate = |acc: u64, prop: u64| 100.0 * acc as f64 / prop.max(1) as f64;
            eprintln!(
                "speculation: prompt lookup proposed {} and {} accepted ({:.0}%); draft proposed {} and {} accepted ({:.0}%)",
                load.ngram_proposed,
                load.ngram_accepted,
                rate(load.ngram_accepted, load.ngram_proposed),
                load.draft_proposed,
                load.draft_accepted,
                rate(load.draft_accepted, load.draft_proposed)
            );
        }
    }
    Ok(())
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let lm = load(&a.model)?;
    if lm.chat_template.is_none() {
        bail!("this model has no chat template; use `lampo run` for plain completion");
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s));
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {}. Type /reset to start over, /exit or Ctrl-D to leave.",
            lm.model.config.name.as_deref().unwrap_or("the model")
        );
    }
    let mut session = Session::new(&lm, a.sampling.ctx);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m: &Message| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line.trim_end()));
        let prompt = chat_prompt(&lm, &messages)?;
        let mut reply = String::new();
        let mut stdout = std::io::stdout().lock();
        let result = session.generate(&prompt, &params, |text| {
            reply.push_str(text);
            stdout
                .write_all(text.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok()
        });
        writeln!(stdout).ok();
        match result {
            Ok(_) => messages.push(Message::new("assistant", &reply)),
            // A full context ends the conversation's memory, not the program.
            Err(e @ lampo_model::ModelError::ContextFull { .. }) => {
                eprintln!("error: {e}; starting a new conversation");
                messages.retain(|m| m.role == "system");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn cmd_info(model: Option<String>, list_tensors: bool) -> Result<()> {
    let path = models::resolve(model.as_deref())?;
    let file = lampo_model::GgufFile::open(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let g: &Gguf = &file.gguf;
    println!(
        "file: {} ({:.1} MB, GGUF v{})",
        path.display(),
        file.file_size() as f64 / 1e6,
        g.version
    );
    println!("metadata ({} keys):", g.metadata.len());
    for (k, v) in &g.metadata {
        let shown = v.to_string();
        let shown = if shown.chars().count() > 100 {
            format!(
                "{}… ({} chars)",
                shown.chars().take(100).collect::<String>(),
                shown.len()
            )
        } else {
            shown
        };
        println!("  {k} = {}", shown.replace('\n', "\\n"));
    }
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64, usize)> = Default::default();
    for t in &g.tensors {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.elements();
        e.2 += t.size;
    }
    let total: u64 = g.tensors.iter().map(|t| t.elements()).sum();
    println!(
        "tensors: {} holding {:.1} M parameters",
        g.tensors.len(),
        total as f64 / 1e6
    );
    for (ty, (n, el, bytes)) in by_type {
        println!(
            "  {ty:5} {n:4} tensors {:8.1} M params {:8.1} MB",
            el as f64 / 1e6,
            bytes as f64 / 1e6
        );
    }
    if list_tensors {
        for t in &g.tensors {
            println!("  {:32} {:5} {:?}", t.name, t.dtype.name(), t.shape);
        }
    }
    match lampo_model::Config::from_gguf(g) {
        Ok(c) => println!(
            "model: {} layers, width {}, ffn {}, {} heads ({} kv) of {}, vocab {}, context {}, rope base {}, rms eps {}",
            c.n_layer,
            c.n_embd,
            c.n_ff,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_vocab,
            c.n_ctx_train,
            c.rope_base,
            c.rms_eps
        ),
        Err(e) => println!("model: cannot run: {e}"),
    }
    Ok(())
}

fn cmd_perplexity(a: PerplexityArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let mut text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    // llama.cpp drops one trailing newline from prompt files; do the same so token counts agree.
    if text.ends_with('\n') {
        text.pop();
    }
    let start = Instant::now();
    let mut tokens = lm.tokenizer.encode(&text, true, false)?;
    let bos = if lm.tokenizer.add_bos {
        lm.tokenizer.bos
    } else {
        None
    };
    if let Some(max) = a.chunks {
        tokens.truncate(max * a.ctx);
    }
    eprintln!(
        "{} tokens, {} chunks of {}",
        tokens.len(),
        tokens.len() / a.ctx.max(1),
        a.ctx
    );
    let bar = indicatif::ProgressBar::new((tokens.len() / a.ctx.max(1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chunks, ppl {msg} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let report = perplexity(&lm.model, &tokens, a.ctx, bos, |_, _, ppl| {
        bar.inc(1);
        bar.set_message(format!("{ppl:.4}"));
    })?;
    bar.finish_and_clear();
    let running: Vec<String> = report
        .running
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}]{:.4}", i + 1, p))
        .collect();
    println!("{}", running.join(","));
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {:.1} s)",
        report.ppl,
        report.ppl_stderr,
        report.chunks,
        report.n_ctx,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_tokenize(
    model: ModelArgs,
    text: &str,
    add_special: bool,
    parse_special: bool,
) -> Result<()> {
    let path = models::resolve(model.model.as_deref())?;
    let file = lampo_model::GgufFile::open(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let tok = lampo_model::Tokenizer::from_gguf(&file.gguf)?;
    let ids = tok.encode(text, add_special, parse_special)?;
    for id in ids {
        println!("{id:6} -> {:?}", tok.token_text(id));
    }
    Ok(())
}
