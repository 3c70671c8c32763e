//! `lampo serve`: the OpenAI-compatible API. The server listens at once and
//! answers `/health`; `/ready` and the API return 503 until the model has
//! loaded. SIGTERM or Ctrl-C stops accepting connections and lets requests
//! in flight finish for `--grace-period` seconds; then streams still open
//! get a final chunk and `[DONE]`, other requests a 503, and it exits.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use lampo_engine::Engine;
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
        let state = Arc::new(AppState::new(name.clone(), a.api_key.clone()));
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
        let (ctx, f32_acts) = (a.ctx, a.model.f32_activations);
        let load = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut lm = LoadedModel::load(&path)
                .with_context(|| format!("cannot load {}", path.display()))?;
            if f32_acts {
                lm.model.set_activations(lampo_kernels::Activations::F32);
            }
            let ctx = ctx.min(lm.model.config.n_ctx_train.max(1));
            let _ = loading.engine.set(Engine::start(Arc::new(lm), ctx));
            println!("lampo: model loaded, ready");
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
