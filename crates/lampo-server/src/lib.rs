//! `lampo serve`: the OpenAI-compatible HTTP API over the engine's request
//! interface. Handlers validate and tokenize; the engine generates; no math
//! here.

pub mod metrics;
pub mod openai;
mod structured;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lampo_engine::TokenLogprob;
use lampo_engine::{
    Constraint, Done, Engine, Event, Finish, GenerateParams, Rejected, Request as EngineRequest,
    SamplingParams, Sink,
};
use lampo_model::tools::ToolFormat;
use lampo_model::{Message, Tokenizer};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::openai::*;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What every handler shares.
pub struct AppState {
    /// Set once the model has loaded; until then requests get 503.
    pub engine: OnceLock<Engine>,
    /// The name clients pass as `model`.
    pub model_name: String,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    pub created: u64,
    /// Longest a request may take, queueing included (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// Turns true when the shutdown grace period is over: requests still
    /// running end now (streams with a final chunk and `[DONE]`).
    cut: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// A state whose model is still loading.
    pub fn new(model_name: String, api_key: Option<String>) -> AppState {
        AppState {
            engine: OnceLock::new(),
            model_name,
            api_key,
            created: now(),
            request_timeout: None,
            cut: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every request still in flight (after the shutdown grace period).
    pub fn cut_requests(&self) {
        self.cut.send_replace(true);
    }

    /// Resolves once `cut_requests` has been called.
    async fn cut(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|&cut| cut).await;
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is still loading".into(),
            param: None,
            code: Some("model_loading"),
        })
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
            code: None,
        }
    }

    fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The queue drains as requests finish: try again shortly.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON body parsed by serde, with every failure (malformed JSON, wrong
/// types, missing fields, oversized bodies) answered in OpenAI's shape.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    format!("request body larger than {MAX_BODY_BYTES} bytes")
                } else {
                    e.body_text()
                },
                param: None,
                code: None,
            })?;
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A short random id for responses.
pub(crate) fn random_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{prefix}-{x:016x}")
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_json))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such route".into(),
                param: None,
                code: Some("unknown_url"),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Gives every request an id (the client's `x-request-id`, or a new one),
/// echoes it in the response, logs the request with it, and counts it.
async fn track(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| random_id("req"), String::from);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().clone();
    let start = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    tracing::info!(request_id = %id, %method, route = %route, status, ms = start.elapsed().as_millis() as u64, "request");
    metrics::http_request(&route, status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = metrics::render(&state.model_name, state.engine.get().map(Engine::load));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn require_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or incorrect API key (send Authorization: Bearer <key>)".into(),
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(request).await
}

#[utoipa::path(get, path = "/health", responses((status = 200, body = Status)))]
async fn health() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/ready", responses((status = 200, body = Status), (status = 503, body = ErrorBody)))]
async fn ready(State(state): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    state.engine()?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "lampo",
        }],
    })
}

fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model != state.model_name {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the model '{model}' does not exist; this server serves '{}'",
                state.model_name
            ),
            param: Some("model"),
            code: Some("model_not_found"),
        });
    }
    Ok(())
}

/// Validated generation settings, OpenAI's defaults where a field is absent.
struct Plan {
    max_tokens: Option<usize>,
    sampling: SamplingParams,
    stop: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
    /// Alternatives per token when log-probabilities are asked for.
    logprobs: Option<usize>,
    ignore_eos: bool,
    /// The grammar every choice's output must follow.
    constraint: Option<Constraint>,
}

fn plan(s: Sampling, max_tokens: Option<u64>) -> Result<Plan, ApiError> {
    let range = |v: Option<f32>, lo: f32, hi: f32, name: &'static str, default: f32| match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(ApiError::bad_request(
            format!("{name} must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
    };
    let temperature = range(s.temperature, 0.0, 2.0, "temperature", 1.0)?;
    let top_p = range(s.top_p, 0.0, 1.0, "top_p", 1.0)?;
    let min_p = range(s.min_p, 0.0, 1.0, "min_p", 0.0)?;
    let frequency_penalty = range(s.frequency_penalty, -2.0, 2.0, "frequency_penalty", 0.0)?;
    let presence_penalty = range(s.presence_penalty, -2.0, 2.0, "presence_penalty", 0.0)?;
    let repetition_penalty = range(s.repetition_penalty, 0.01, 10.0, "repetition_penalty", 1.0)?;
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("top_k must be positive or -1, got {k}"),
                Some("top_k"),
            ));
        }
    };
    let max_tokens = match max_tokens.or(s.max_tokens) {
        Some(0) => {
            return Err(ApiError::bad_request(
                "max_tokens must be at least 1",
                Some("max_tokens"),
            ));
        }
        m => m.map(|m| m.min(usize::MAX as u64) as usize),
    };
    let n = match s.n {
        None => 1,
        Some(n @ 1..=16) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                format!("n must be between 1 and 16, got {n}"),
                Some("n"),
            ));
        }
    };
    let stop = s.stop.map(Stop::into_vec).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::bad_request(
            "at most 4 stop sequences",
            Some("stop"),
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in s.logit_bias.unwrap_or_default() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::bad_request(
                format!("logit_bias key '{k}' is not a token id"),
                Some("logit_bias"),
            )
        })?;
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::bad_request(
                format!("logit_bias values must be between -100 and 100, got {v}"),
                Some("logit_bias"),
            ));
        }
        logit_bias.push((id, v));
    }
    Ok(Plan {
        max_tokens,
        sampling: SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            logit_bias,
            seed: s.seed,
            ..SamplingParams::default()
        },
        stop,
        n,
        stream: s.stream,
        include_usage: s.stream_options.is_some_and(|o| o.include_usage),
        logprobs: None,
        ignore_eos: s.ignore_eos,
        constraint: None,
    })
}

/// OpenAI's finish reason; `called`: the answer holds tool calls.
fn finish_reason(f: &Finish, called: bool) -> &'static str {
    match f {
        Finish::Length => "length",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// Checks `prompt` against the context and vocabulary, and builds choice
/// `i`'s engine request.
fn engine_request(
    state: &AppState,
    prompt: &[u32],
    plan: &Plan,
    i: usize,
) -> Result<EngineRequest, ApiError> {
    let n_ctx = state.engine()?.context_size();
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty", Some("prompt")));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::bad_request(
            format!(
                "this model's maximum context length is {n_ctx} tokens, but the prompt has {} tokens",
                prompt.len()
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    let n_vocab = state.engine()?.model().model.config.n_vocab;
    if let Some((bad, _)) = plan
        .sampling
        .logit_bias
        .iter()
        .find(|(t, _)| *t as usize >= n_vocab)
    {
        return Err(ApiError::bad_request(
            format!("logit_bias token {bad} is outside the vocabulary of {n_vocab}"),
            Some("logit_bias"),
        ));
    }
    let mut sampling = plan.sampling.clone();
    sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
    if plan.ignore_eos {
        let tok = &state.engine()?.model().tokenizer;
        let eog = (0..n_vocab as u32).filter(|&t| tok.is_eog(t));
        sampling
            .logit_bias
            .extend(eog.map(|t| (t, f32::NEG_INFINITY)));
    }
    Ok(EngineRequest {
        prompt: prompt.to_vec(),
        params: GenerateParams {
            max_tokens: plan.max_tokens.unwrap_or(n_ctx).min(n_ctx - prompt.len()),
            sampling,
            logprobs: plan.logprobs,
        },
        stop: plan.stop.clone(),
        timeout: state.request_timeout,
        constraint: plan.constraint.clone(),
    })
}

/// Engine events into a channel. Once the receiving end is dropped (the
/// client left), the engine sees the sink closed and stops the request.
struct ChannelSink(mpsc::UnboundedSender<Event>);

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send(event).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// Hands every choice's request to the engine at once (they generate
/// together); a full queue is a 429.
fn submit(
    state: &AppState,
    requests: Vec<EngineRequest>,
) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
    let engine = state.engine()?;
    requests
        .into_iter()
        .map(|request| {
            let (tx, rx) = mpsc::unbounded_channel();
            engine
                .submit(request, ChannelSink(tx))
                .map_err(|e| match e {
                    Rejected::QueueFull(_) => ApiError {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        message: format!("{e}; retry shortly"),
                        param: None,
                        code: Some("queue_full"),
                    },
                    Rejected::Stopped => ApiError {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: e.to_string(),
                        param: None,
                        code: Some("shutting_down"),
                    },
                    Rejected::Invalid(why) => ApiError::bad_request(why, Some("messages")),
                })?;
            Ok(rx)
        })
        .collect()
}

/// The error a request that ran out of time gets.
fn timed_out() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the request ran past the server's time limit".into(),
        param: None,
        code: Some("timeout"),
    }
}

/// Waits for one submitted request's text, log-probabilities and end.
async fn collect(
    state: &AppState,
    mut rx: mpsc::UnboundedReceiver<Event>,
    arrived: Instant,
) -> Result<(String, Vec<TokenLogprob>, Done), ApiError> {
    let mut tracker = metrics::Tracker::new(&state.model_name, arrived);
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = state.cut() => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the server is shutting down".into(),
                    param: None,
                    code: Some("shutting_down"),
                });
            }
        };
        tracker.event(&event);
        match event {
            Event::Started => {}
            Event::Text {
                text: t,
                logprobs: l,
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            Event::Done(done) => {
                match &done.finish {
                    Finish::Error(e) => {
                        return Err(ApiError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            message: format!("generation failed: {e}"),
                            param: None,
                            code: None,
                        });
                    }
                    Finish::TimedOut => return Err(timed_out()),
                    _ => {}
                }
                return Ok((text, logprobs, done));
            }
        }
    }
    Err(ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the engine ended the request without a result".into(),
        param: None,
        code: None,
    })
}

fn to_messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    messages
        .into_iter()
        .map(|m| {
            if !["system", "developer", "user", "assistant", "tool"].contains(&m.role.as_str()) {
                return Err(ApiError::bad_request(
                    format!("unknown role '{}' (expected system, developer, user, assistant or tool)", m.role),
                    Some("messages"),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::bad_request(
                                    format!("content parts of type '{kind}' are not supported (only text)"),
                                    Some("messages"),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            let role = if m.role == "developer" { "system".to_string() } else { m.role };
            let mut tool_calls = m.tool_calls;
            if let Some(calls) = tool_calls.as_mut() {
                structured::arguments_as_json(calls);
            }
            Ok(Message {
                role,
                content,
                tool_call_id: m.tool_call_id,
                tool_calls,
            })
        })
        .collect()
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses((status = 200, description = "A completion, or server-sent events when `stream` is true", body = ChatResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    check_model(&state, &req.model)?;
    let mut plan = plan(req.sampling, req.max_completion_tokens)?;
    plan.logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), None) => Some(0),
        (Some(true), Some(k @ 0..=20)) => Some(k as usize),
        (Some(true), Some(k)) => {
            return Err(ApiError::bad_request(
                format!("top_logprobs must be between 0 and 20, got {k}"),
                Some("top_logprobs"),
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs needs logprobs set to true",
                Some("top_logprobs"),
            ));
        }
        _ => None,
    };
    let messages = to_messages(req.messages)?;
    let lm = state.engine()?.model();
    let template = lm.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template; use /v1/completions", None)
    })?;
    let asked = structured::Asked {
        response_format: req.response_format,
        tools: req.tools,
        tool_choice: req.tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
    };
    // Compiling a grammar (and, the first time, the vocabulary trie) is
    // CPU work: keep it off the async workers.
    let structure = if asked.is_plain() {
        structured::Structure::default()
    } else {
        let st = state.clone();
        tokio::task::spawn_blocking(move || structured::plan(st.engine()?, asked))
            .await
            .map_err(|e| ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("compiling the output constraint failed: {e}"),
                param: None,
                code: None,
            })??
    };
    if structure.constraint.is_some() && plan.ignore_eos {
        return Err(ApiError::bad_request(
            "ignore_eos cannot be combined with response_format or tools",
            Some("ignore_eos"),
        ));
    }
    plan.constraint = structure.constraint;
    let text = template
        .render(&messages, true, structure.template_tools.as_ref())
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let prompt = lm
        .tokenizer
        .encode(&text, false, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let requests = (0..plan.n)
        .map(|i| engine_request(&state, &prompt, &plan, i))
        .collect::<Result<Vec<_>, _>>()?;
    let (id, created, model) = (random_id("chatcmpl"), now(), state.model_name.clone());
    if plan.stream {
        return stream(
            state,
            requests,
            StreamMeta {
                echo: String::new(),
                id,
                created,
                model,
                chat: true,
                calls: structure.calls,
                include_usage: plan.include_usage,
                arrived,
            },
        );
    }
    let mut choices = Vec::new();
    let mut usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: 0,
        total_tokens: 0,
    };
    for (index, rx) in submit(&state, requests)?.into_iter().enumerate() {
        let (text, lps, done) = collect(&state, rx, arrived).await?;
        usage.completion_tokens += done.completion_tokens;
        let answer = match structure.calls {
            Some(format) => structured::split_answer(format, &text),
            None => structured::Answer {
                content: Some(text),
                tool_calls: Vec::new(),
            },
        };
        let called = !answer.tool_calls.is_empty();
        choices.push(ChatChoice {
            index,
            message: AssistantMessage {
                role: "assistant",
                content: answer.content,
                tool_calls: answer.tool_calls,
            },
            logprobs: plan
                .logprobs
                .map(|_| chat_logprobs(&state.engine()?.model().tokenizer, &lps))
                .transpose()?,
            finish_reason: finish_reason(&done.finish, called),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage,
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "A completion, or server-sent events when `stream` is true", body = CompletionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    check_model(&state, &req.model)?;
    let echo = req.echo == Some(true);
    let mut plan = plan(req.sampling, None)?;
    plan.logprobs = match req.logprobs {
        None => None,
        Some(_) if echo => {
            return Err(ApiError::bad_request(
                "echo together with logprobs is not supported yet",
                Some("echo"),
            ));
        }
        Some(k @ 0..=5) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("logprobs must be between 0 and 5, got {k}"),
                Some("logprobs"),
            ));
        }
    };
    let prompt = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::bad_request(
                "only one prompt per request is supported",
                Some("prompt"),
            ));
        }
    };
    let lm = state.engine()?.model();
    let tokens = lm
        .tokenizer
        .encode(&prompt, true, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    let requests = (0..plan.n)
        .map(|i| engine_request(&state, &tokens, &plan, i))
        .collect::<Result<Vec<_>, _>>()?;
    let (id, created, model) = (random_id("cmpl"), now(), state.model_name.clone());
    if plan.stream {
        return stream(
            state,
            requests,
            StreamMeta {
                echo: if echo { prompt.clone() } else { String::new() },
                id,
                created,
                model,
                chat: false,
                calls: None,
                include_usage: plan.include_usage,
                arrived,
            },
        );
    }
    let mut choices = Vec::new();
    let mut usage = Usage {
        prompt_tokens: tokens.len(),
        completion_tokens: 0,
        total_tokens: 0,
    };
    for (index, rx) in submit(&state, requests)?.into_iter().enumerate() {
        let (text, lps, done) = collect(&state, rx, arrived).await?;
        usage.completion_tokens += done.completion_tokens;
        let tok = &state.engine()?.model().tokenizer;
        choices.push(CompletionChoice {
            index,
            logprobs: plan.logprobs.map(|_| completion_logprobs(tok, &lps, 0).0),
            text: if echo {
                format!("{prompt}{text}")
            } else {
                text
            },
            finish_reason: finish_reason(&done.finish, false),
        });
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    Ok(Json(CompletionResponse {
        id,
        object: "text_completion",
        created,
        model,
        choices,
        usage,
    })
    .into_response())
}

/// Server-sent events as OpenAI sends them: for chat, the role in the
/// first delta, text deltas, a final delta with the finish reason, the
/// usage chunk when asked for, then `[DONE]`.
/// What every chunk of one streamed response repeats, and how it ends.
struct StreamMeta {
    /// Text sent before each choice's own (the prompt, for `echo`).
    echo: String,
    id: String,
    created: u64,
    model: String,
    chat: bool,
    /// Chat answers that may hold tool calls in this format.
    calls: Option<ToolFormat>,
    include_usage: bool,
    arrived: Instant,
}

fn stream(
    state: Arc<AppState>,
    requests: Vec<EngineRequest>,
    meta: StreamMeta,
) -> Result<Response, ApiError> {
    let StreamMeta {
        echo,
        id,
        created,
        model,
        chat,
        calls,
        include_usage,
        arrived,
    } = meta;
    let (out, rx) = mpsc::unbounded_channel::<Result<SseEvent, Infallible>>();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        SseEvent::default().data(c.to_string())
    };
    let prompt_tokens = requests.first().map_or(0, |r| r.prompt.len());
    let want_logprobs = requests
        .first()
        .is_some_and(|r| r.params.logprobs.is_some());
    let receivers = submit(&state, requests)?;
    tokio::spawn(async move {
        let send = |e: SseEvent| out.send(Ok(e)).is_ok();
        let mut completion_tokens = 0;
        for (index, mut events) in receivers.into_iter().enumerate() {
            if chat
                && !send(chunk(
                    json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                    None,
                ))
            {
                return;
            }
            let Ok(engine) = state.engine() else { return };
            let tok = &engine.model().tokenizer;
            let mut offset = 0;
            if !echo.is_empty()
                && !send(chunk(
                    json!([{"index": index, "text": echo, "logprobs": null, "finish_reason": null}]),
                    None,
                ))
            {
                return;
            }
            let mut tracker = metrics::Tracker::new(&state.model_name, arrived);
            let mut deltas = structured::DeltaStream::new(calls);
            loop {
                let event = tokio::select! {
                    e = events.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                    // The client left: dropping the receivers cancels the
                    // requests in the engine, even mid-prefill.
                    _ = out.closed() => return,
                    _ = state.cut() => {
                        // The grace period is over: end this stream well-formed.
                        let end = if chat {
                            json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": "length"})
                        } else {
                            json!({"index": index, "text": "", "logprobs": null, "finish_reason": "length"})
                        };
                        if send(chunk(json!([end]), None)) {
                            let _ = send(SseEvent::default().data("[DONE]"));
                        }
                        return;
                    }
                };
                tracker.event(&event);
                let choices: Vec<Value> = match event {
                    Event::Started => continue,
                    Event::Text { text, logprobs } if chat => {
                        let mut lp = if want_logprobs {
                            chat_logprobs(tok, &logprobs).unwrap_or(Value::Null)
                        } else {
                            Value::Null
                        };
                        // The log-probabilities ride on the text's first delta.
                        deltas
                            .deltas(&text, false)
                            .into_iter()
                            .map(|delta| {
                                let lp = std::mem::take(&mut lp);
                                json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null})
                            })
                            .collect()
                    }
                    Event::Text { text, logprobs } => {
                        let lp = if want_logprobs {
                            let (lp, next) = completion_logprobs(tok, &logprobs, offset);
                            offset = next;
                            lp
                        } else {
                            Value::Null
                        };
                        vec![
                            json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null}),
                        ]
                    }
                    Event::Done(done) => {
                        let failure = match &done.finish {
                            Finish::Error(e) => Some(ApiError {
                                status: StatusCode::INTERNAL_SERVER_ERROR,
                                message: format!("generation failed: {e}"),
                                param: None,
                                code: None,
                            }),
                            Finish::TimedOut => Some(timed_out()),
                            _ => None,
                        };
                        if let Some(e) = failure {
                            let err = json!({"error": {"message": e.message, "type": e.kind(), "param": null, "code": e.code}});
                            let _ = send(SseEvent::default().data(err.to_string()));
                            return;
                        }
                        completion_tokens += done.completion_tokens;
                        if chat {
                            let mut last: Vec<Value> = deltas
                                .deltas("", true)
                                .into_iter()
                                .map(|delta| json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": null}))
                                .collect();
                            let reason = finish_reason(&done.finish, deltas.called());
                            last.push(json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}));
                            last
                        } else {
                            let reason = finish_reason(&done.finish, false);
                            vec![
                                json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason}),
                            ]
                        }
                    }
                };
                for choice in choices {
                    if !send(chunk(json!([choice]), None)) {
                        return;
                    }
                }
            }
        }
        if include_usage {
            let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
            if !send(chunk(json!([]), Some(usage))) {
                return;
            }
        }
        let _ = send(SseEvent::default().data("[DONE]"));
    });
    Ok(Sse::new(UnboundedReceiverStream::new(rx)).into_response())
}

/// A token as OpenAI's log-probability entries show it.
fn token_entry(tok: &Tokenizer, id: u32, logprob: f32) -> Value {
    let bytes = tok.token_bytes(id);
    json!({"token": String::from_utf8_lossy(bytes), "logprob": logprob, "bytes": bytes})
}

/// Chat `logprobs`: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> Result<Value, ApiError> {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = token_entry(tok, l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(t, p)| token_entry(tok, t, p)).collect();
            e
        })
        .collect();
    Ok(json!({"content": content}))
}

/// Text-completion `logprobs` (the legacy shape), with text offsets from
/// `offset`; also returns the offset after the last token.
fn completion_logprobs(tok: &Tokenizer, lps: &[TokenLogprob], mut offset: usize) -> (Value, usize) {
    let (mut tokens, mut values, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for l in lps {
        let text = String::from_utf8_lossy(tok.token_bytes(l.token)).into_owned();
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        values.push(l.logprob);
        let top: serde_json::Map<String, Value> = l
            .top
            .iter()
            .map(|&(t, p)| {
                (
                    String::from_utf8_lossy(tok.token_bytes(t)).into_owned(),
                    json!(p),
                )
            })
            .collect();
        tops.push(Value::Object(top));
    }
    (
        json!({"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}),
        offset,
    )
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorBody)))]
async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let engine = state.engine()?;
    let tokens = engine
        .model()
        .tokenizer
        .encode(&body.prompt, body.add_special_tokens, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: engine.context_size(),
    }))
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorBody)))]
async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let lm = state.engine()?.model();
    let n_vocab = lm.model.config.n_vocab;
    if let Some(bad) = body.tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ApiError::bad_request(
            format!("token {bad} is outside the vocabulary of {n_vocab}"),
            Some("tokens"),
        ));
    }
    Ok(Json(DetokenizeResponse {
        prompt: lm.tokenizer.decode(&body.tokens, true),
    }))
}

/// The OpenAPI document of this API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Lampo",
        description = "Lampo's OpenAI-compatible inference API"
    ),
    paths(
        chat_completions,
        completions,
        models,
        tokenize,
        detokenize,
        health,
        ready,
        metrics_text
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi())
}
