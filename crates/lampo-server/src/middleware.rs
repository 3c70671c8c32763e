//! What wraps every request: an id (the client's `x-request-id`, or a new
//! one) echoed in the response and logged with it, the request counted;
//! the API key on the API routes and the metrics key on `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::metrics;
use crate::state::{AppState, random_id};

/// Routes polled by probes and scrapers (a 503 from `/ready` while the
/// model loads included): logged at debug, not info.
const PROBES: [&str; 3] = ["/health", "/ready", "/metrics"];

pub(crate) async fn track(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| random_id("req"), String::from);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let start = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = start.elapsed().as_millis() as u64;
    if PROBES.contains(&route.as_str()) {
        tracing::debug!(request_id = %id, %method, route = %route, status, ms, "request");
    } else {
        tracing::info!(request_id = %id, %method, route = %route, status, ms, "request");
    }
    metrics::http_request(&route, status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Whether `headers` carry `Authorization: Bearer KEY`.
fn bearer_is(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

/// Compares without returning early, so the time taken says nothing of
/// how much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match &state.config.api_key {
        Some(key) if !bearer_is(request.headers(), key) => ApiError::unauthorized().into_response(),
        _ => next.run(request).await,
    }
}

pub(crate) async fn require_metrics_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match &state.config.metrics_key {
        Some(key) if !bearer_is(request.headers(), key) => ApiError::unauthorized().into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"sekret", b"sekret"));
        assert!(!constant_time_eq(b"sekret", b"sekreT"));
        assert!(!constant_time_eq(b"sek", b"sekret"));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sekret"),
        );
        assert!(bearer_is(&h, "sekret"));
        assert!(!bearer_is(&h, "other"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic sekret"),
        );
        assert!(!bearer_is(&h, "sekret"));
    }
}
