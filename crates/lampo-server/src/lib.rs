//! `lampo serve`: the OpenAI-compatible HTTP API over the engine's request
//! interface. No math here: requests are validated and tokenized
//! ([`validate`]), handed to the engine and their events gathered
//! ([`bridge`]), and answered whole ([`routes`]) or streamed
//! ([`stream`]); errors keep OpenAI's shape ([`error`]). [`listen`]
//! accepts connections with timeouts and a cap, and shuts down cleanly.

mod bridge;
pub mod error;
pub mod gateway;
pub mod listen;
mod logprobs;
pub mod metrics;
mod middleware;
pub mod openai;
mod routes;
pub mod state;
mod stream;
mod structured;
mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub use error::{ApiError, MAX_BODY_BYTES};
pub use state::{AppState, ServerConfig};
pub use structured::ReasoningFormat;

use crate::error::BodyTimeout;
use crate::routes::{chat, completions, info};

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let keyed = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(info::models))
        .route("/tokenize", post(info::tokenize))
        .route("/detokenize", post(info::detokenize))
        .route("/openapi.json", get(info::openapi_json))
        .route_layer(from_fn_with_state(state.clone(), middleware::require_key));
    let scraped = Router::new()
        .route("/metrics", get(info::metrics_text))
        .route_layer(from_fn_with_state(
            state.clone(),
            middleware::require_metrics_key,
        ));
    let mut app = Router::new()
        .route("/health", get(info::health))
        .route("/ready", get(info::ready))
        .merge(keyed)
        .merge(scraped)
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::method_not_allowed(method.as_str(), uri.path())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(BodyTimeout(state.config.body_timeout)));
    if let Some(cors) = cors(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(from_fn(middleware::track)).with_state(state)
}

/// Browsers may call the API from `origins` (`*`: any), if any are given.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            // The SDKs send headers of their own (x-stainless-*): the
            // origin is trusted, so what it asks for is allowed.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Lampo",
        description = "Lampo's OpenAI-compatible inference API"
    ),
    paths(
        chat::chat_completions,
        completions::completions,
        info::models,
        info::tokenize,
        info::detokenize,
        info::health,
        info::ready,
        info::metrics_text,
        info::openapi_json
    ),
    components(schemas(openai::ErrorBody))
)]
pub struct ApiDoc;
