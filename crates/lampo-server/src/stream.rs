//! Streamed answers as OpenAI sends them, in server-sent events: for chat
//! the role in a first delta, then text (or tool-call) deltas, a final
//! delta with the finish reason; the usage chunk when asked for; then
//! `[DONE]`. A request that fails on the way, or is cut at shutdown, ends
//! with an error event in OpenAI's shape (which the SDKs raise) and
//! `[DONE]`, never with a finish reason that looks like a normal end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lampo_engine::{Event, TokenLogprob};
use lampo_model::Tokenizer;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::bridge::{self, failure, finish_reason};
use crate::error::ApiError;
use crate::openai::{
    ChatChunk, ChatChunkChoice, ChatDelta, CompletionChunk, CompletionChunkChoice, Usage,
};
use crate::state::{AppState, now};
use crate::structured::DeltaStream;
use crate::validate::Generation;
use crate::{logprobs, metrics};

/// Which API's chunks to send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completions,
}

/// What every chunk of one response repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
    api: Api,
    tier: &'static str,
}

impl Head {
    fn data<T: Serialize>(chunk: &T) -> SseEvent {
        SseEvent::default().data(serde_json::to_string(chunk).expect("chunks serialize"))
    }

    fn chat(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> SseEvent {
        Head::data(&ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            service_tier: self.tier,
            choices,
            usage,
        })
    }

    fn text(&self, choices: Vec<CompletionChunkChoice>, usage: Option<Usage>) -> SseEvent {
        Head::data(&CompletionChunk {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            service_tier: self.tier,
            choices,
            usage,
        })
    }

    fn usage(&self, usage: Usage) -> SseEvent {
        match self.api {
            Api::Chat => self.chat(Vec::new(), Some(usage)),
            Api::Completions => self.text(Vec::new(), Some(usage)),
        }
    }
}

/// One choice's chunks, built from its engine events.
struct Choice<'a> {
    head: &'a Head,
    index: usize,
    tok: &'a Tokenizer,
    want_logprobs: bool,
    deltas: DeltaStream,
    /// Text offset for completions' log-probabilities.
    offset: usize,
}

impl Choice<'_> {
    fn chat_choice(
        &self,
        delta: ChatDelta,
        lp: Option<Value>,
        finish: Option<&'static str>,
    ) -> SseEvent {
        self.head.chat(
            vec![ChatChunkChoice {
                index: self.index,
                delta,
                logprobs: lp,
                finish_reason: finish,
            }],
            None,
        )
    }

    fn text_choice(
        &self,
        text: String,
        lp: Option<Value>,
        finish: Option<&'static str>,
    ) -> SseEvent {
        self.head.text(
            vec![CompletionChunkChoice {
                index: self.index,
                text,
                logprobs: lp,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// The chunks opening the choice: the role (chat), the echoed prompt.
    fn opening(&self, echo: Option<&str>) -> Vec<SseEvent> {
        match (self.head.api, echo) {
            (Api::Chat, _) => vec![self.chat_choice(
                ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                },
                None,
                None,
            )],
            (Api::Completions, Some(e)) if !e.is_empty() => {
                vec![self.text_choice(e.to_string(), None, None)]
            }
            (Api::Completions, _) => Vec::new(),
        }
    }

    fn text(&mut self, text: &str, lps: &[TokenLogprob]) -> Vec<SseEvent> {
        match self.head.api {
            Api::Chat => {
                // The log-probabilities ride on the text's first delta (on
                // an empty one if the text is held, part of a tag maybe).
                let mut lp = self.want_logprobs.then(|| logprobs::chat(self.tok, lps));
                let mut deltas = self.deltas.deltas(text, false);
                if deltas.is_empty() && lp.is_some() {
                    deltas.push(ChatDelta::default());
                }
                deltas
                    .into_iter()
                    .map(|d| self.chat_choice(d, lp.take(), None))
                    .collect()
            }
            Api::Completions => {
                let lp = self.want_logprobs.then(|| {
                    let (lp, next) = logprobs::completion(self.tok, lps, self.offset);
                    self.offset = next;
                    lp
                });
                vec![self.text_choice(text.to_string(), lp, None)]
            }
        }
    }

    fn end(&mut self, finish: &lampo_engine::Finish) -> Vec<SseEvent> {
        match self.head.api {
            Api::Chat => {
                let mut out: Vec<SseEvent> = self
                    .deltas
                    .deltas("", true)
                    .into_iter()
                    .map(|d| self.chat_choice(d, None, None))
                    .collect();
                let reason = finish_reason(finish, self.deltas.called());
                out.push(self.chat_choice(ChatDelta::default(), None, Some(reason)));
                out
            }
            Api::Completions => {
                vec![self.text_choice(String::new(), None, Some(finish_reason(finish, false)))]
            }
        }
    }
}

/// Submits `g` and answers with its stream. A refusal (a full queue)
/// comes back as an error status before any event is sent.
pub(crate) fn respond(
    state: Arc<AppState>,
    g: Generation,
    api: Api,
    id: String,
) -> Result<Response, ApiError> {
    let receivers = bridge::submit(&state, g.requests)?;
    let head = Head {
        id,
        created: now(),
        model: state.model_name().to_string(),
        api,
        tier: g.tier.name(),
    };
    let (out, rx) = mpsc::unbounded_channel::<Result<SseEvent, Infallible>>();
    let (prompt_tokens, calls, include_usage) = (g.prompt_tokens, g.calls, g.include_usage);
    let thoughts = g.thoughts;
    let (echo, arrived, want_logprobs) = (g.echo, g.arrived, g.logprobs);
    let g_tier = g.tier;
    tokio::spawn(async move {
        let send = |e: SseEvent| out.send(Ok(e)).is_ok();
        let Ok(engine) = state.engine() else { return };
        let tok = &engine.model().tokenizer;
        let mut completion_tokens = 0;
        for (index, mut events) in receivers.into_iter().enumerate() {
            let mut choice = Choice {
                head: &head,
                index,
                tok,
                want_logprobs,
                deltas: DeltaStream::new(thoughts, calls),
                offset: 0,
            };
            if !choice.opening(echo.as_deref()).into_iter().all(send) {
                return;
            }
            let mut tracker = metrics::Tracker::new(state.model_name(), g_tier, arrived);
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
                        if send(ApiError::shutting_down().event()) {
                            send(SseEvent::default().data("[DONE]"));
                        }
                        return;
                    }
                };
                tracker.event(&event);
                let chunks = match event {
                    Event::Started => continue,
                    Event::Text { text, logprobs } => choice.text(&text, &logprobs),
                    Event::Done(done) => {
                        if let Some(e) = failure(&done.finish) {
                            if send(e.event()) {
                                send(SseEvent::default().data("[DONE]"));
                            }
                            return;
                        }
                        completion_tokens += done.completion_tokens;
                        choice.end(&done.finish)
                    }
                };
                if !chunks.into_iter().all(send) {
                    return;
                }
            }
        }
        if include_usage {
            let usage = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            };
            if !send(head.usage(usage)) {
                return;
            }
        }
        send(SseEvent::default().data("[DONE]"));
    });
    // Comments now and again keep proxies from closing a quiet stream
    // (a long prompt being read).
    let events = UnboundedReceiverStream::new(rx);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
