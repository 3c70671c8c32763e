//! `lampo serve`: the OpenAI-compatible API. The server listens at once and
//! answers `/health`; `/ready` and the API return 503 until the model has
//! loaded. SIGTERM or Ctrl-C stops accepting connections and lets requests
//! in flight finish for `--grace-period` seconds; then streams still open
//! get a final chunk and `[DONE]`, other requests a 503, and it exits.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use lampo_engine::{Engine, EngineConfig};
use lampo_model::LoadedModel;
use lampo_server::{AppState, router};

use crate::ModelArgs;

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
    /// Require `Authorization: Bearer KEY` on the API routes
    #[arg(long, env = "LAMPO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Context size in tokens per request
    #[arg(short = 'c', long = "ctx", default_value_t = 4096)]
    ctx: usize,
    /// The model name clients pass as `model` (default: the file's stem)
    #[arg(long)]
    model_alias: Option<String>,
    /// Seconds requests in flight may run on after SIGTERM or Ctrl-C
    #[arg(long, default_value_t = 30)]
    grace_period: u64,
    /// Most requests generating at once (continuous batching)
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Most requests waiting for a place; beyond it, 429 with Retry-After
    #[arg(long, default_value_t = 128)]
    max_queue: usize,
    /// KV cache memory for all requests and the prefix cache (e.g. 512MiB, 2GiB)
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    kv_memory: usize,
    /// Most tokens one step computes: the batch's next tokens, then prompt
    /// chunks (smaller keeps streams smoother while long prompts arrive)
    #[arg(long, default_value_t = 256)]
    step_tokens: usize,
    /// Seconds a request may take, queueing included (0: no limit)
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    #[command(flatten)]
    spec: crate::SpecArgs,
}

/// Bytes from a size such as `512MiB`, `2GiB`, `1.5G` or a plain number.
fn parse_bytes(s: &str) -> Result<usize, String> {
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

pub fn run(a: ServeArgs) -> Result<()> {
    let path = crate::models::resolve(a.model.model.as_deref())?;
    let name = a.model_alias.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    lampo_kernels::parallel::set_threads(a.model.threads);
    tracing_subscriber::fmt().with_target(false).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut state = AppState::new(name.clone(), a.api_key.clone());
        state.request_timeout =
            (a.request_timeout > 0).then(|| std::time::Duration::from_secs(a.request_timeout));
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        println!("lampo: serving {name} ({}) on http://{addr}", path.display());
        println!(
            "try: curl http://{addr}/v1/chat/completions -H 'Content-Type: application/json'{} -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
            if a.api_key.is_some() { " -H \"Authorization: Bearer $LAMPO_API_KEY\"" } else { "" }
        );
        let loading = state.clone();
        let f32_acts = a.model.f32_activations;
        let mut config = EngineConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            kv_memory: a.kv_memory,
            step_tokens: a.step_tokens,
            speculation: a.spec.spec,
            max_proposal: a.spec.max_proposal,
            ..EngineConfig::new(a.ctx)
        };
        let spec = a.spec.clone();
        let threads = a.model.threads;
        let load = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut lm = LoadedModel::load(&path)
                .with_context(|| format!("cannot load {}", path.display()))?;
            if f32_acts {
                lm.model.set_activations(lampo_kernels::Activations::F32);
            }
            config.n_ctx = config.n_ctx.min(lm.model.config.n_ctx_train.max(1));
            let draft = spec.load_draft(threads)?;
            let engine = Engine::start_with_draft(Arc::new(lm), draft, config.clone())
                .map_err(|e| anyhow::anyhow!("cannot start the engine: {e}"))?;
            let _ = loading.engine.set(engine);
            println!(
                "lampo: model loaded, ready (batch {}, context {}, {} MiB of KV cache)",
                config.max_batch,
                config.n_ctx,
                config.kv_memory >> 20
            );
            Ok(())
        });
        let grace = std::time::Duration::from_secs(a.grace_period);
        let app = router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown().await;
                    // Stop accepting now; cut what still runs after the grace period.
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        println!("lampo: grace period over, ending requests still running");
                        state.cut_requests();
                    });
                })
                .await
        });
        load.await.context("loading the model")??;
        server.await?.context("serving")?;
        println!("lampo: stopped");
        Ok::<(), anyhow::Error>(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    println!("lampo: shutting down, finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
