//! A constrained request's grammar, worked on its own thread: after each
//! chosen token the thread advances the parser and computes the next
//! mask while the engine goes on stepping every other request. A request
//! takes part in a step only once its mask is ready, so a grammar that is
//! slow to follow (a pathological regex, a huge enum) slows its own
//! request and nobody else's.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use llguidance::toktrie::SimpleVob;
use llguidance::{CancellationHandle, Matcher};

use crate::constrain::{Constraint, apply_mask, next_mask, one_line};

/// What the grammar allows after the tokens so far.
pub(crate) enum Next {
    /// These tokens.
    Mask(SimpleVob),
    /// Nothing more: the output is complete.
    Done,
}

/// The state of one request's grammar, as the scheduler sees it.
pub(crate) enum Ready<'a> {
    /// The next mask is being computed.
    Pending,
    Mask(&'a SimpleVob),
    Done,
    /// The grammar failed (a parser limit, no allowed token): one line.
    Failed(String),
}

pub(crate) struct Masker {
    /// The parser until the first token is committed; then it lives on
    /// the thread.
    matcher: Option<Matcher>,
    cancel: Option<CancellationHandle>,
    tokens: Option<mpsc::Sender<u32>>,
    results: Option<mpsc::Receiver<Result<Next, String>>>,
    ready: Option<Result<Next, String>>,
    worker: Option<JoinHandle<()>>,
}

impl Masker {
    pub(crate) fn new(c: Constraint) -> Masker {
        let matcher = c.matcher.into_cancellable();
        Masker {
            cancel: matcher.cancellation_handle(),
            matcher: Some(matcher),
            tokens: None,
            results: None,
            ready: Some(Ok(Next::Mask(c.first))),
            worker: None,
        }
    }

    /// Where the grammar is, without waiting.
    pub(crate) fn poll(&mut self) -> Ready<'_> {
        if self.ready.is_none()
            && let Some(rx) = &self.results
        {
            match rx.try_recv() {
                Ok(r) => self.ready = Some(r),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.ready = Some(Err("the grammar's thread ended".into()));
                }
            }
        }
        match &self.ready {
            None => Ready::Pending,
            Some(Ok(Next::Mask(m))) => Ready::Mask(m),
            Some(Ok(Next::Done)) => Ready::Done,
            Some(Err(e)) => Ready::Failed(e.clone()),
        }
    }

    /// Waits up to `limit` for the next mask; whether it is ready.
    pub(crate) fn wait(&mut self, limit: Duration) -> bool {
        if self.ready.is_none()
            && let Some(rx) = &self.results
            && let Ok(r) = rx.recv_timeout(limit)
        {
            self.ready = Some(r);
        }
        !matches!(self.poll(), Ready::Pending)
    }

    /// Masks `logits` with the ready mask (waiting for it if need be: the
    /// scheduler only plans a request whose mask is ready).
    pub(crate) fn apply(&mut self, logits: &mut [f32]) -> Result<(), String> {
        while !self.wait(Duration::from_millis(50)) {}
        match self.poll() {
            Ready::Mask(m) => {
                apply_mask(m, logits);
                Ok(())
            }
            Ready::Done => Err("the grammar is complete and allows no more tokens".into()),
            Ready::Failed(e) => Err(e),
            Ready::Pending => unreachable!("waited for it"),
        }
    }

    /// Hands the chosen token to the grammar's thread, which advances the
    /// parser and computes the next mask.
    pub(crate) fn commit(&mut self, token: u32) -> Result<(), String> {
        self.ready = None;
        if self.tokens.is_none() {
            let matcher = self
                .matcher
                .take()
                .expect("the parser is here until it moves");
            let (tokens, rx) = mpsc::channel();
            let (tx, results) = mpsc::channel();
            let worker = std::thread::Builder::new()
                .name("lampo-grammar".into())
                .spawn(move || follow(matcher, rx, tx))
                .map_err(|e| format!("cannot start the grammar's thread: {e}"))?;
            (self.tokens, self.results, self.worker) = (Some(tokens), Some(results), Some(worker));
        }
        self.tokens
            .as_ref()
            .expect("started")
            .send(token)
            .map_err(|_| "the grammar's thread ended".to_string())
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        // Stop a mask computation in progress; the thread then sees its
        // channel closed and ends.
        if let Some(c) = &self.cancel {
            c.cancel();
        }
        self.tokens = None;
        drop(self.worker.take());
    }
}

/// The grammar's thread: each token in, the next mask (or the end, or the
/// failure) out, until the request is gone.
fn follow(
    mut matcher: Matcher,
    tokens: mpsc::Receiver<u32>,
    results: mpsc::Sender<Result<Next, String>>,
) {
    // A slow grammar must slow its own request only, not the steps of all.
    lampo_kernels::parallel::background_priority();
    while let Ok(token) = tokens.recv() {
        let next = match matcher.consume_token(token) {
            Err(e) => Err(one_line(&e)),
            Ok(()) if matcher.is_stopped() => Ok(Next::Done),
            Ok(()) => next_mask(&mut matcher).map(Next::Mask),
        };
        let failed = next.is_err();
        if results.send(next).is_err() || failed {
            return;
        }
    }
}
