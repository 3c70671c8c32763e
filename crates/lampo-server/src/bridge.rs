//! Between the HTTP handlers and the engine: submitting a generation's
//! requests, receiving their events, and what each way of ending means
//! to a client. A client that goes away drops its receivers, which the
//! engine sees as closed sinks, so its request stops at the next step.

use std::time::Instant;

use lampo_engine::{
    Done, Event, Finish, Rejected, Request as EngineRequest, Sink, Tier, TokenLogprob,
};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

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
pub(crate) fn submit(
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
                    Rejected::QueueFull(_) => ApiError::queue_full(format!("{e}; retry shortly")),
                    Rejected::Unmeetable(..) => {
                        ApiError::unavailable(e.to_string(), "deadline_unmeetable")
                    }
                    Rejected::Stopped => ApiError::shutting_down(),
                    Rejected::Invalid(why) => ApiError::bad_request(why, None),
                })?;
            Ok(rx)
        })
        .collect()
}

/// The error a request that ended this way answers with, if it is one.
pub(crate) fn failure(finish: &Finish) -> Option<ApiError> {
    match finish {
        Finish::Error(e) => Some(ApiError::internal(format!("generation failed: {e}"))),
        Finish::Invalid(e) => Some(
            ApiError::bad_request(e.clone(), Some("response_format"))
                .with_code("constraint_failed"),
        ),
        Finish::TimedOut => Some(ApiError::timed_out()),
        Finish::Stop | Finish::Length | Finish::Cancelled => None,
    }
}

/// One choice's whole answer.
pub(crate) struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub done: Done,
}

/// Waits for one submitted request's text, log-probabilities and end.
pub(crate) async fn collect(
    state: &AppState,
    mut rx: mpsc::UnboundedReceiver<Event>,
    tier: Tier,
    arrived: Instant,
) -> Result<Collected, ApiError> {
    let mut tracker = metrics::Tracker::new(state.model_name(), tier, arrived);
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = state.cut() => return Err(ApiError::shutting_down()),
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
                if let Some(e) = failure(&done.finish) {
                    return Err(e);
                }
                return Ok(Collected {
                    text,
                    logprobs,
                    done,
                });
            }
        }
    }
    Err(ApiError::internal(
        "the engine ended the request without a result",
    ))
}

/// OpenAI's finish reason; `called`: the answer holds tool calls.
pub(crate) fn finish_reason(f: &Finish, called: bool) -> &'static str {
    match f {
        Finish::Length => "length",
        _ if called => "tool_calls",
        _ => "stop",
    }
}
