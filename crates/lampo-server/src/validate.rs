//! From a parsed request to a validated generation: every field checked
//! against OpenAI's rules and the model's limits (a 400 naming the field
//! otherwise), messages rendered through the chat template, the prompt
//! tokenized, structured output compiled, and one engine request built
//! per choice. Handlers get a [`Generation`] or an error; nothing past
//! this point can be the client's fault.

use std::sync::Arc;
use std::time::Instant;

use std::time::Duration;

use lampo_engine::{Constraint, GenerateParams, Request as EngineRequest, SamplingParams, Tier};
use lampo_model::Message;
use lampo_model::tools::ToolFormat;

use crate::error::ApiError;
use crate::openai::{ChatMessage, ChatRequest, CompletionRequest, Content, Prompt, Sampling, Stop};
use crate::state::AppState;
use crate::structured;

/// A request ready for the engine.
pub(crate) struct Generation {
    /// One per choice (`n`); they generate together.
    pub requests: Vec<EngineRequest>,
    pub prompt_tokens: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Log-probabilities asked for.
    pub logprobs: bool,
    /// Chat answers that may hold tool calls in this format.
    pub calls: Option<ToolFormat>,
    /// Chat answers that may begin with reasoning, and how to return it.
    pub thoughts: Option<structured::Thoughts>,
    /// Text each choice begins with (the prompt, for `echo`).
    pub echo: Option<String>,
    pub arrived: Instant,
    /// The service tier it is served in.
    pub tier: Tier,
}

/// The header through which an operator's gateway sets a request's
/// service tier, overriding the body's `service_tier`.
pub(crate) const TIER_HEADER: &str = "x-lampo-service-tier";

/// The generation settings both APIs share, OpenAI's defaults where a
/// field is absent.
struct Settings {
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
    tier: Tier,
    first_token_within: Option<Duration>,
}

/// The tier a request is served in: the operator's header over the
/// body's field; `auto` or neither is the server's default.
fn service_tier(body: Option<&str>, header: Option<&str>, default: Tier) -> Result<Tier, ApiError> {
    let parse = |name: &str| match name {
        "auto" => Some(default),
        other => Tier::parse(other),
    };
    if let Some(h) = header {
        return parse(h.trim()).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "the {TIER_HEADER} header must be auto, default, flex or priority, not '{h}'"
                ),
                None,
            )
        });
    }
    match body {
        None => Ok(default),
        Some(b) => parse(b).ok_or_else(|| {
            ApiError::bad_request(
                format!("service_tier must be auto, default, flex or priority, not '{b}'"),
                Some("service_tier"),
            )
        }),
    }
}

fn settings(
    s: Sampling,
    max_tokens: Option<u64>,
    tier_header: Option<&str>,
    default_tier: Tier,
) -> Result<Settings, ApiError> {
    let tier = service_tier(s.service_tier.as_deref(), tier_header, default_tier)?;
    let first_token_within = match s.first_token_deadline_ms {
        None => None,
        Some(ms @ 1..=3_600_000) => Some(Duration::from_millis(ms)),
        Some(ms) => {
            return Err(ApiError::bad_request(
                format!("first_token_deadline_ms must be between 1 and 3600000, got {ms}"),
                Some("first_token_deadline_ms"),
            ));
        }
    };
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
    Ok(Settings {
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
        tier,
        first_token_within,
    })
}

/// Checks `prompt` against the context and vocabulary, and builds choice
/// `i`'s engine request.
fn engine_request(
    state: &AppState,
    prompt: &[u32],
    s: &Settings,
    i: usize,
    prompt_field: &'static str,
) -> Result<EngineRequest, ApiError> {
    let engine = state.engine()?;
    let n_ctx = engine.context_size();
    if prompt.is_empty() {
        return Err(ApiError::bad_request(
            "the prompt is empty",
            Some(prompt_field),
        ));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::bad_request(
            format!(
                "this model's maximum context length is {n_ctx} tokens, but the prompt has {} tokens",
                prompt.len()
            ),
            Some(prompt_field),
        )
        .with_code("context_length_exceeded"));
    }
    let n_vocab = engine.model().model.config.n_vocab;
    if let Some((bad, _)) = s
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
    let mut sampling = s.sampling.clone();
    sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(i as u64));
    if s.ignore_eos {
        let tok = &engine.model().tokenizer;
        let eog = (0..n_vocab as u32).filter(|&t| tok.is_eog(t));
        sampling
            .logit_bias
            .extend(eog.map(|t| (t, f32::NEG_INFINITY)));
    }
    Ok(EngineRequest {
        prompt: prompt.to_vec(),
        params: GenerateParams {
            max_tokens: s.max_tokens.unwrap_or(n_ctx).min(n_ctx - prompt.len()),
            sampling,
            logprobs: s.logprobs,
        },
        stop: s.stop.clone(),
        timeout: state.config.request_timeout,
        constraint: s.constraint.clone(),
        tier: s.tier,
        first_token_within: s.first_token_within,
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
                reasoning_content: m.reasoning_content,
            })
        })
        .collect()
}

/// A chat completion request, validated.
pub(crate) async fn chat(
    state: &Arc<AppState>,
    req: ChatRequest,
    arrived: Instant,
    tier_header: Option<&str>,
) -> Result<Generation, ApiError> {
    state.check_model(&req.model)?;
    let default_tier = state.config.default_service_tier;
    let mut s = settings(
        req.sampling,
        req.max_completion_tokens,
        tier_header,
        default_tier,
    )?;
    s.logprobs = match (req.logprobs, req.top_logprobs) {
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
        ApiError::bad_request(
            "this model has no chat template (a base model); use /v1/completions",
            None,
        )
    })?;
    let reasoning_format = match req.reasoning_format.as_deref() {
        None => state.config.reasoning_format,
        Some(name) => structured::ReasoningFormat::parse(name)
            .map_err(|e| ApiError::bad_request(e, Some("reasoning_format")))?,
    };
    let kwargs = req.chat_template_kwargs.unwrap_or_default();
    if let Some(k) = kwargs
        .keys()
        .find(|k| lampo_model::chat::TEMPLATE_VARIABLES.contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(
            format!("chat_template_kwargs may not set '{k}', which the server sets"),
            Some("chat_template_kwargs"),
        ));
    }
    let asked = structured::Asked {
        response_format: req.response_format,
        tools: req.tools,
        tool_choice: req.tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
    };
    let mut structure = structured::plan(state.engine()?, asked)?;
    if structure.grammar.is_some() && s.ignore_eos {
        return Err(ApiError::bad_request(
            "ignore_eos cannot be combined with response_format or tools",
            Some("ignore_eos"),
        ));
    }
    let text = template
        .render_with(&messages, true, structure.template_tools.as_ref(), &kwargs)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let reasoning = template.reasoning();
    let thoughts = structured::Thoughts::of(reasoning, reasoning_format, &text);
    if thoughts.is_some_and(|t| !t.show) && s.logprobs.is_some() {
        // Each token's log-probability names the token: it would show
        // the reasoning that is to stay hidden.
        return Err(ApiError::bad_request(
            "logprobs cannot be combined with hidden reasoning (reasoning_format 'hidden')",
            Some("logprobs"),
        ));
    }
    let calls = structure.calls;
    // Compiling a grammar (and, the first time, the vocabulary trie) is
    // CPU work: on a thread of its own at background priority, off the
    // async workers.
    if let Some(answer) = structure.grammar.take() {
        let grammar = structured::after_reasoning(reasoning, &text, answer);
        let st = state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("lampo-compile".into())
            .spawn(move || {
                // Compiling must not slow the steps of requests running.
                lampo_engine::background_priority();
                let _ = tx.send(st.engine().and_then(|e| structure.compile(e, grammar)));
            })
            .map_err(|_| ApiError::internal("cannot start compiling the output constraint"))?;
        s.constraint = Some(
            rx.await
                .map_err(|_| ApiError::internal("compiling the output constraint failed"))??,
        );
    }
    finish_chat(state, s, &lm.tokenizer, &text, calls, thoughts, arrived)
}

/// Tokenizes a rendered chat prompt and builds each choice's request.
fn finish_chat(
    state: &AppState,
    s: Settings,
    tokenizer: &lampo_model::Tokenizer,
    text: &str,
    calls: Option<ToolFormat>,
    thoughts: Option<structured::Thoughts>,
    arrived: Instant,
) -> Result<Generation, ApiError> {
    let prompt = tokenizer
        .encode(text, false, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let requests = (0..s.n)
        .map(|i| engine_request(state, &prompt, &s, i, "messages"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Generation {
        requests,
        prompt_tokens: prompt.len(),
        stream: s.stream,
        include_usage: s.include_usage,
        logprobs: s.logprobs.is_some(),
        calls,
        thoughts,
        echo: None,
        arrived,
        tier: s.tier,
    })
}

/// A text completion request, validated.
pub(crate) fn completion(
    state: &AppState,
    req: CompletionRequest,
    arrived: Instant,
    tier_header: Option<&str>,
) -> Result<Generation, ApiError> {
    state.check_model(&req.model)?;
    let echo = req.echo == Some(true);
    let default_tier = state.config.default_service_tier;
    let mut s = settings(req.sampling, None, tier_header, default_tier)?;
    s.logprobs = match req.logprobs {
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
    let tokens = state
        .engine()?
        .model()
        .tokenizer
        .encode(&prompt, true, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    let requests = (0..s.n)
        .map(|i| engine_request(state, &tokens, &s, i, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Generation {
        requests,
        prompt_tokens: tokens.len(),
        stream: s.stream,
        include_usage: s.include_usage,
        logprobs: s.logprobs.is_some(),
        calls: None,
        thoughts: None,
        echo: echo.then_some(prompt),
        arrived,
        tier: s.tier,
    })
}
