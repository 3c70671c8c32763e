//! `lampo serve`: the OpenAI-compatible API. Every setting is checked
//! (against the model file's metadata too) before the server listens;
//! then it listens at once and answers `/health`, while `/ready` and the
//! API return 503 until the model has loaded. SIGTERM or Ctrl-C stops
//! accepting connections and lets requests in flight finish for
//! `--grace-period` seconds; then, or at a second signal, requests still
//! running end (streams with an error event and `[DONE]`, others with a
//! 503) and it exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use lampo_engine::{Engine, EngineConfig};
use lampo_model::LoadedModel;
use lampo_server::listen::{self, Limits};
use lampo_server::{AppState, ServerConfig, router};

use crate::args::{ModelArgs, SpecArgs, at_least_one, check_memory, context, parse_bytes};
use crate::logging::{self, LogFormat, announce};
use crate::models;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes and /openapi.json
    #[arg(long, env = "LAMPO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Require `Authorization: Bearer KEY` on /metrics (open by default, for scrapers)
    #[arg(long, env = "LAMPO_METRICS_KEY", hide_env_values = true)]
    metrics_key: Option<String>,
    /// Let browser pages from ORIGIN call the API (repeatable; `*` for any).
    /// Without it no page can read the API's answers
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Context size in tokens per request (at most the model's trained context)
    #[arg(short = 'c', long = "ctx", default_value_t = 4096, value_parser = context)]
    ctx: usize,
    /// The model name clients pass as `model` (the short name, e.g.
    /// smollm2, and the file's stem are accepted too)
    #[arg(long)]
    model_alias: Option<String>,
    /// Seconds requests in flight may run on after SIGTERM or Ctrl-C (a
    /// second signal ends them at once)
    #[arg(long, default_value_t = 30)]
    grace_period: u64,
    /// Most requests generating at once (continuous batching)
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    max_batch: usize,
    /// Most requests waiting for a place; beyond it, 429 with Retry-After
    #[arg(long, default_value_t = 128, value_parser = at_least_one)]
    max_queue: usize,
    /// KV cache memory for all requests and the prefix cache (e.g. 512MiB, 2GiB)
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    kv_memory: usize,
    /// Most tokens one step computes: the batch's next tokens, then prompt
    /// chunks (smaller keeps streams smoother while long prompts arrive)
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    step_tokens: usize,
    /// Milliseconds a step should take: prompt chunks shrink (to 32
    /// positions at least) so that steps last about this long, which bounds
    /// how long a new request waits before its prompt starts (0: always
    /// --step-tokens)
    #[arg(long, default_value_t = 100)]
    max_step_ms: u64,
    /// Service tier of requests that ask for `auto` or none (default,
    /// flex or priority); the `x-lampo-service-tier` header overrides a
    /// request's own choice
    #[arg(long, default_value = "default", value_parser = tier)]
    default_service_tier: lampo_engine::Tier,
    /// Serve requests whose `x-gateway-inference-objective` header (set
    /// by the Gateway API Inference Extension) names OBJECTIVE in TIER:
    /// default, flex, priority, or the InferenceObjective's integer
    /// priority (above 0 priority, 0 default, below 0 flex); repeatable.
    /// `x-lampo-service-tier` still wins; unmapped objectives are ignored
    #[arg(long = "objective", value_name = "OBJECTIVE=TIER", value_parser = lampo_server::gateway::Objective::parse)]
    objectives: Vec<lampo_server::gateway::Objective>,
    /// How chat answers return a reasoning model's thinking (Qwen3's
    /// `<think>` block): parsed (in `reasoning_content`, the answer alone
    /// in `content`), raw (left in `content`, tags and all) or hidden
    /// (dropped); a request's `reasoning_format` overrides it
    #[arg(long, default_value = "parsed", value_parser = lampo_server::ReasoningFormat::parse)]
    reasoning_format: lampo_server::ReasoningFormat,
    /// Seconds a request may take, queueing included (0: no limit)
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Seconds a client has to send a request's head once it begins
    /// (slower clients are disconnected)
    #[arg(long, default_value_t = 10, value_parser = seconds)]
    header_timeout: u64,
    /// Seconds a client has to send a request's body (408 beyond)
    #[arg(long, default_value_t = 30, value_parser = seconds)]
    body_timeout: u64,
    /// Seconds a connection may stay open with no request in flight
    #[arg(long, default_value_t = 30, value_parser = seconds)]
    idle_timeout: u64,
    /// Most connections open at once; beyond it, new ones get a 503
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    max_connections: usize,
    /// Log as text or as one JSON object per line
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    spec: SpecArgs,
}

fn tier(s: &str) -> Result<lampo_engine::Tier, String> {
    match s {
        "auto" => Err("the default tier must be default, flex or priority".into()),
        _ => lampo_engine::Tier::parse(s)
            .ok_or_else(|| format!("'{s}' is not a service tier (default, flex or priority)")),
    }
}

fn seconds(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1 second".into()),
        Err(_) => Err(format!("'{s}' is not a whole number of seconds")),
    }
}

/// The names clients may use for the model: the alias, the short name it
/// was started by, the file's stem (the first is the one shown).
fn model_names(alias: Option<&str>, arg: Option<&str>, path: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let short = models::short_name(arg, path);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    for n in [alias.map(String::from), short, stem].into_iter().flatten() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() {
        names.push("model".into());
    }
    names
}

pub fn run(a: ServeArgs) -> Result<()> {
    let backend = a.model.backend()?;
    let path = models::resolve(a.model.model.as_deref())?;
    // Everything checked before listening: the settings against each
    // other, the model file's metadata and the machine's memory.
    let file = lampo_model::GgufFile::open(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let model_config = lampo_model::Config::from_gguf(&file.gguf)
        .with_context(|| format!("cannot run {}", path.display()))?;
    drop(file);
    let trained = model_config.n_ctx_train;
    let mut ctx = a.ctx;
    if trained > 0 && ctx > trained {
        eprintln!("note: --ctx {ctx} is more than the model's trained context; using {trained}");
        ctx = trained;
    }
    let config = EngineConfig {
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        kv_memory: a.kv_memory,
        step_tokens: a.step_tokens,
        max_step_time: (a.max_step_ms > 0).then(|| Duration::from_millis(a.max_step_ms)),
        speculation: a.spec.spec,
        max_proposal: a.spec.max_proposal,
        ..EngineConfig::new(ctx)
    };
    // The draft's cache shares the budget: its file is read for its shape.
    let draft_config = match &a.spec.draft {
        Some(d) => {
            let path = models::resolve(Some(d))?;
            let file = lampo_model::GgufFile::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(lampo_model::Config::from_gguf(&file.gguf)?)
        }
        None => None,
    };
    config
        .kv_blocks(&model_config, draft_config.as_ref())
        .map_err(|e| anyhow::anyhow!("cannot serve with these settings: {e}"))?;
    check_memory(a.kv_memory, "--kv-memory")?;
    if a.spec.spec == lampo_engine::SpecMode::Draft && a.spec.draft.is_none() {
        bail!("--spec draft needs --draft MODEL");
    }
    logging::init(a.log_format)?;
    let names = model_names(a.model_alias.as_deref(), a.model.model.as_deref(), &path);
    let name = names[0].clone();
    let server = ServerConfig {
        model_names: names,
        api_key: a.api_key.clone(),
        metrics_key: a.metrics_key.clone(),
        request_timeout: (a.request_timeout > 0).then(|| Duration::from_secs(a.request_timeout)),
        cors_origins: a.cors_origins.clone(),
        body_timeout: Duration::from_secs(a.body_timeout),
        default_service_tier: a.default_service_tier,
        objectives: a.objectives.clone(),
        reasoning_format: a.reasoning_format,
    };
    let limits = Limits {
        header_timeout: Duration::from_secs(a.header_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout),
        max_connections: a.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = Arc::new(AppState::with_config(server));
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        announce(&format!(
            "serving {name} ({}) on http://{addr}; loading the model",
            path.display()
        ));
        let loading = state.clone();
        let spec = a.spec.clone();
        let key_hint = a.api_key.is_some();
        let load = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut lm = LoadedModel::load_with(&path, backend.clone())
                .with_context(|| format!("cannot load {}", path.display()))?;
            lm.model.set_context(config.n_ctx);
            let draft = spec.load_draft(&backend)?;
            let engine = Engine::start_with_draft(Arc::new(lm), draft, config.clone())
                .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
            let _ = loading.engine.set(engine);
            announce(&format!(
                "model loaded, ready (batch {}, context {}, {} MiB of KV cache)",
                config.max_batch,
                config.n_ctx,
                config.kv_memory >> 20
            ));
            announce(&format!(
                "try: curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{} \
                 -d '{{\"model\": \"{name}\", \"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"Say hello in one sentence.\"}}]}}'",
                if key_hint { " -H \"Authorization: Bearer $LAMPO_API_KEY\"" } else { "" }
            ));
            Ok(())
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (force_tx, force_rx) = tokio::sync::oneshot::channel::<()>();
        let grace = Duration::from_secs(a.grace_period);
        let cutter = state.clone();
        tokio::spawn(async move {
            let mut signals = Signals::new();
            signals.next().await;
            announce(&format!(
                "shutting down: finishing requests in flight for up to {} s (a second Ctrl-C or SIGTERM ends them now)",
                grace.as_secs()
            ));
            let _ = stop_tx.send(());
            tokio::select! {
                _ = tokio::time::sleep(grace) => announce("grace period over, ending requests still running"),
                _ = signals.next() => announce("second signal: ending requests now"),
            }
            cutter.cut_requests();
            // Streams get their last events; connections still open after
            // that are dropped.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = force_tx.send(());
        });
        let app = router(state.clone());
        let serving = listen::serve(
            listener,
            app,
            limits,
            async move {
                let _ = stop_rx.await;
            },
            async move {
                let _ = force_rx.await;
            },
        );
        tokio::pin!(serving);
        // A model that fails to load ends the server; a server stopped
        // while the model loads does not wait for it.
        tokio::select! {
            loaded = load => {
                loaded.context("loading the model")??;
                serving.await;
            }
            _ = &mut serving => {}
        }
        announce("stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    // Model loading may still run on a blocking thread: leave without it.
    std::process::exit(0);
}

/// Ctrl-C and SIGTERM, as one stream of signals.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        let term = async {
            match self.term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_answers_to_the_names_a_user_would_guess() {
        let path = std::path::Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(
            model_names(None, Some("smollm2"), path),
            ["smollm2", "SmolLM2-135M-Instruct.Q4_1"]
        );
        assert_eq!(
            model_names(Some("chat"), Some("smollm2"), path),
            ["chat", "smollm2", "SmolLM2-135M-Instruct.Q4_1"]
        );
        // Started by path: the stem, and the short name of a known file.
        assert_eq!(
            model_names(None, Some("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), path),
            ["smollm2", "SmolLM2-135M-Instruct.Q4_1"]
        );
        let other = std::path::Path::new("/x/my-model.gguf");
        assert_eq!(
            model_names(None, Some("/x/my-model.gguf"), other),
            ["my-model"]
        );
    }
}
