//! What every handler shares: the engine (once the model has loaded), the
//! server's settings, and the switch that ends requests at shutdown.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lampo_engine::{Engine, Tier};

use crate::error::{ApiError, BODY_TIMEOUT};
use crate::gateway::Objective;
use crate::structured::ReasoningFormat;

/// How the server answers, set once at start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Names clients may pass as `model`: the first is the one responses
    /// and `/v1/models` show (the alias, or the short name the model was
    /// started by, or the file's stem), the others are accepted too.
    pub model_names: Vec<String>,
    /// Bearer token the API routes require, if any.
    pub api_key: Option<String>,
    /// Bearer token `/metrics` requires, if any (it is open otherwise, for
    /// scrapers on a private network).
    pub metrics_key: Option<String>,
    /// Longest a request may take, queueing included (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// Origins browsers may call the API from (`*` for any); none by
    /// default, so web pages cannot read its answers.
    pub cors_origins: Vec<String>,
    /// Longest a request body may take to arrive.
    pub body_timeout: Duration,
    /// The tier of requests that ask for `auto` or none.
    pub default_service_tier: Tier,
    /// InferenceObjective names (from the gateway's objective header) and
    /// the tier each is served in.
    pub objectives: Vec<Objective>,
    /// How chat answers return a reasoning model's thinking.
    pub reasoning_format: ReasoningFormat,
}

impl ServerConfig {
    pub fn new(model_name: impl Into<String>) -> ServerConfig {
        ServerConfig {
            model_names: vec![model_name.into()],
            api_key: None,
            metrics_key: None,
            request_timeout: None,
            cors_origins: Vec::new(),
            body_timeout: BODY_TIMEOUT,
            default_service_tier: Tier::Default,
            objectives: Vec::new(),
            reasoning_format: ReasoningFormat::Parsed,
        }
    }
}

pub struct AppState {
    /// Set once the model has loaded; until then requests get 503.
    pub engine: OnceLock<Engine>,
    pub config: ServerConfig,
    pub created: u64,
    /// Turns true when requests in flight are to end now (the shutdown
    /// grace period is over, or a second signal came): streams end with
    /// an error event and `[DONE]`, other requests with a 503.
    cut: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// A state whose model is still loading, served as `model_name`.
    pub fn new(model_name: String, api_key: Option<String>) -> AppState {
        AppState::with_config(ServerConfig {
            api_key,
            ..ServerConfig::new(model_name)
        })
    }

    pub fn with_config(config: ServerConfig) -> AppState {
        assert!(!config.model_names.is_empty(), "a model name");
        AppState {
            engine: OnceLock::new(),
            config,
            created: now(),
            cut: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The name responses carry.
    pub fn model_name(&self) -> &str {
        &self.config.model_names[0]
    }

    /// Ends every request still in flight.
    pub fn cut_requests(&self) {
        self.cut.send_replace(true);
    }

    /// Resolves once `cut_requests` has been called.
    pub(crate) async fn cut(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|&cut| cut).await;
    }

    pub(crate) fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine
            .get()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", "model_loading"))
    }

    /// Checks that `model` names the served model.
    pub(crate) fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if self.config.model_names.iter().any(|n| n == model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model, self.model_name()))
        }
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short random id for responses.
pub(crate) fn random_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // A counter keeps ids made in the same nanosecond apart.
    let mut x =
        nanos ^ 0x9E37_79B9_7F4A_7C15 ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{prefix}-{x:016x}")
}
