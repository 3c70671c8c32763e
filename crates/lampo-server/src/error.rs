//! Errors in OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, for every failure a client can meet: bad JSON or fields,
//! the wrong content type, a missing key, an unknown route, model or
//! method, overload, timeouts, shutdown. Streams end with the same object
//! as their last event. Messages name the problem in a sentence and never
//! carry internal state.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::openai::{ErrorBody, ErrorDetail};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// How long a request's body may take to arrive once its head has (408
/// beyond), unless the server is configured otherwise.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            param,
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// As OpenAI answers an unknown model: 404, `model_not_found`.
    pub fn model_not_found(model: &str, served: &str) -> ApiError {
        ApiError {
            param: Some("model"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model '{model}' does not exist; this server serves '{served}'"),
            )
        }
        .with_code("model_not_found")
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or incorrect API key (send Authorization: Bearer <key>)",
        )
        .with_code("invalid_api_key")
    }

    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no such route: {path}"),
        )
        .with_code("unknown_url")
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not answer {method}"),
        )
        .with_code("method_not_allowed")
    }

    pub fn unsupported_media_type(got: Option<&str>) -> ApiError {
        let got = got.map_or_else(|| "none".to_string(), |g| format!("'{g}'"));
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("the body must be JSON with Content-Type: application/json (got {got})"),
        )
        .with_code("unsupported_media_type")
    }

    /// 503 with a code: the model loading, the server shutting down.
    pub fn unavailable(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code(code)
    }

    pub fn queue_full(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            .with_code("queue_full")
    }

    pub fn timed_out() -> ApiError {
        ApiError::unavailable("the request ran past the server's time limit", "timeout")
    }

    pub fn shutting_down() -> ApiError {
        ApiError::unavailable(
            "the server is shutting down; the request was ended before it finished",
            "server_shutdown",
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.map(String::from),
                code: self.code.map(String::from),
            },
        }
    }

    /// The error as a stream's last event (OpenAI's SDKs raise it).
    pub fn event(&self) -> SseEvent {
        SseEvent::default().data(serde_json::to_string(&self.body()).expect("serializes"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self.status {
            // The queue drains as requests finish: try again shortly.
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Whether a `Content-Type` value names JSON (`application/json`, with
/// or without parameters such as a charset).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON body parsed by serde, with every failure answered in OpenAI's
/// shape: no JSON content type (415: a web page's form or `text/plain`
/// post cannot start work), a body too slow to arrive (408), too large
/// (413), malformed, of the wrong types or missing fields (400).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !content_type.as_deref().is_some_and(is_json) {
            return Err(ApiError::unsupported_media_type(content_type.as_deref()));
        }
        let limit = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(BODY_TIMEOUT, |t| t.0);
        let bytes = match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    format!(
                        "the request body did not arrive within {} s",
                        limit.as_secs()
                    ),
                )
                .with_code("request_timeout"));
            }
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                ));
            }
            Ok(Err(e)) => {
                return Err(ApiError::bad_request(
                    format!("cannot read the request body: {}", e.body_text()),
                    None,
                ));
            }
            Ok(Ok(b)) => b,
        };
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}"), None))?;
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
                None,
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid request: {e}"), None))
    }
}

/// The body-read limit in force, put in each request's extensions by the
/// router.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("multipart/form-data; boundary=x"));
        assert!(!is_json("application/jsonx"));
    }
}
