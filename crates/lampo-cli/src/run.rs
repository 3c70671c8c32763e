//! `lampo run`: one prompt's completion streamed to stdout, through the
//! engine (so stop strings, constraints and speculation work as in the
//! server). The context is clamped to what the model was trained for and
//! the KV cache is sized by what this prompt and answer need, checked
//! against the memory the machine has.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use lampo_engine::{Engine, EngineConfig, Event, Finish, Grammar, Request, SpecMode};
use lampo_model::{LoadedModel, Message};

use crate::args::{ModelArgs, SamplingArgs, SpecArgs, check_memory, fit_context, read_prompt};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (`-` reads it from standard input)
    #[arg(short, long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Read the prompt from FILE
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    chat: bool,
    /// System message (with --chat)
    #[arg(long, requires = "chat")]
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

/// The chat template applied to `messages`, tokenized.
pub fn chat_prompt(lm: &LoadedModel, messages: &[Message]) -> Result<Vec<u32>> {
    let template = lm.chat_template.as_ref().with_context(|| {
        "this model has no chat template (a base model such as gemma270m): \
         run it without --chat for plain completion"
    })?;
    let text = template.render(messages, true, None)?;
    Ok(lm.tokenizer.encode(&text, false, true)?)
}

fn grammar(a: &RunArgs) -> Result<Option<Grammar>> {
    Ok(match (&a.json_schema, &a.grammar) {
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
    })
}

pub fn run(a: RunArgs) -> Result<()> {
    let text = read_prompt(a.prompt.as_deref(), a.file.as_ref())?;
    let grammar = grammar(&a)?;
    let params = a.sampling.params();
    let backend = a.model.backend()?;
    let mut lm = a.model.load_on(backend.clone())?;
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &text));
        chat_prompt(&lm, &messages)?
    } else {
        lm.tokenizer.encode(&text, true, false)?
    };
    let ctx = fit_context(a.sampling.ctx, &mut lm);
    if prompt.len() >= ctx {
        bail!(
            "the prompt has {} tokens; the context holds {ctx} (raise --ctx, up to the model's {})",
            prompt.len(),
            lm.model.config.n_ctx_train
        );
    }
    let draft = a.spec.load_draft(&backend)?;
    // One request: the whole prompt in one step, and KV memory for the
    // positions this prompt and its answer can reach, not the whole
    // context.
    let reach = (prompt.len() + params.max_tokens).min(ctx).max(2);
    let mut config = EngineConfig {
        max_batch: 1,
        step_tokens: reach,
        speculation: a.spec.spec,
        max_proposal: a.spec.max_proposal,
        ..EngineConfig::new(reach)
    };
    let draft_config = draft.as_ref().map(|d| &d.model.config);
    config.kv_memory = config.kv_bytes_for(&lm.model.config, draft_config, reach);
    check_memory(config.kv_memory, &format!("a {reach}-token answer"))?;
    let kv_bytes = config.kv_memory;
    let engine =
        Engine::start_with_draft(Arc::new(lm), draft, config).map_err(|e| anyhow::anyhow!(e))?;
    let constraint = grammar
        .map(|g| engine.constrain(g))
        .transpose()
        .map_err(|e| anyhow::anyhow!("cannot constrain the output: {e}"))?;
    let request = Request {
        prompt,
        params,
        stop: Vec::new(),
        timeout: None,
        constraint,
        tier: lampo_engine::Tier::Default,
        first_token_within: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let submitted = Instant::now();
    engine
        .submit(request, move |e| tx.send(e).is_ok())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut stdout = std::io::stdout().lock();
    let (mut first, mut done) = (None, None);
    for event in rx {
        match event {
            Event::Text { text, .. } => {
                first.get_or_insert_with(Instant::now);
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
            Event::Done(d) => done = Some((d, Instant::now())),
            Event::Started => {}
        }
    }
    writeln!(stdout).ok();
    let (done, ended) = done.context("the engine ended without a result")?;
    if let Finish::Error(e) | Finish::Invalid(e) = &done.finish {
        bail!("generation failed: {e}");
    }
    if a.stats {
        print_stats(&engine, submitted, first, ended, &done, a.spec.spec);
        eprintln!(
            "KV cache: {:.1} MiB for {reach} positions",
            kv_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Timing on stderr. Rates come only from spans long enough to time: a
/// one-token answer has no decode rate.
fn print_stats(
    engine: &Engine,
    submitted: Instant,
    first: Option<Instant>,
    ended: Instant,
    done: &lampo_engine::Done,
    spec: SpecMode,
) {
    let load = engine.load();
    let first = first.unwrap_or(ended);
    let prefill = (first - submitted).as_secs_f64();
    let decode = (ended - first).as_secs_f64();
    let rate = |n: f64, secs: f64| {
        if secs >= 1e-3 && n >= 1.0 {
            format!("{:.1} t/s", n / secs)
        } else {
            "too short to time".to_string()
        }
    };
    let after_first = done.completion_tokens.saturating_sub(1) as f64;
    eprintln!(
        "prompt: {} tokens in {prefill:.3} s ({}, first token included); generated: {} tokens, {} after the first; finish: {:?}",
        load.prefill_tokens,
        rate(load.prefill_tokens as f64, prefill),
        done.completion_tokens,
        rate(after_first, decode),
        done.finish
    );
    if spec != SpecMode::Off {
        let pct = |acc: u64, prop: u64| 100.0 * acc as f64 / prop.max(1) as f64;
        eprintln!(
            "speculation: prompt lookup proposed {} and {} accepted ({:.0}%); draft proposed {} and {} accepted ({:.0}%)",
            load.ngram_proposed,
            load.ngram_accepted,
            pct(load.ngram_accepted, load.ngram_proposed),
            load.draft_proposed,
            load.draft_accepted,
            pct(load.draft_accepted, load.draft_proposed)
        );
    }
}
