//! Accepting connections, with the limits a server facing the open
//! network needs: a request's head must arrive within `header_timeout` of
//! its first byte (slowloris clients are cut), a connection with nothing
//! in flight is closed after `idle_timeout`, and beyond
//! `max_connections` a new connection gets a 503 in OpenAI's shape and is
//! closed. On shutdown the listener closes, idle connections close at
//! once, busy ones finish their requests, and whatever is left when
//! `force` resolves is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Limits on connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets open
/// connections finish until they are done or `force` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else {
                    // Out of file descriptors and the like: let some
                    // connections end before accepting again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = socket.set_nodelay(true);
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (app, closing) = (app.clone(), closing_rx.clone());
                        connections.spawn(async move {
                            connection(socket, app, limits, closing).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        connections.spawn(refuse(socket, limits.max_connections));
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    closing.send_replace(true);
    tokio::select! {
        _ = async { while connections.join_next().await.is_some() {} } => {}
        _ = force => connections.abort_all(),
    }
}

/// Answers a connection beyond the cap with a 503 and closes it.
async fn refuse(mut socket: TcpStream, cap: usize) {
    let body = serde_json::json!({"error": {
        "message": format!("the server has reached its limit of {cap} open connections; retry shortly"),
        "type": "server_error", "param": null, "code": "too_many_connections",
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        socket.write_all(response.as_bytes()).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// What a connection's watchdog needs to know.
struct Activity {
    /// Requests whose response has not been fully sent.
    busy: AtomicUsize,
    /// When the connection last had nothing in flight (opened, or its
    /// last response ended), and when the first byte of a new request
    /// arrived since.
    times: Mutex<(Instant, Option<Instant>)>,
}

impl Activity {
    fn times(&self) -> std::sync::MutexGuard<'_, (Instant, Option<Instant>)> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.times().1 = None;
    }

    fn end(&self) {
        let mut t = self.times();
        if self.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *t = (Instant::now(), None);
        }
    }

    fn bytes_arrived(&self) {
        if self.busy.load(Ordering::SeqCst) == 0 {
            let mut t = self.times();
            t.1.get_or_insert_with(Instant::now);
        }
    }

    /// Whether the connection has outstayed its welcome.
    fn expired(&self, limits: &Limits) -> bool {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let (idle_since, head_started) = *self.times();
        match head_started {
            Some(t) => t.elapsed() > limits.header_timeout,
            None => idle_since.elapsed() > limits.idle_timeout,
        }
    }
}

async fn connection(
    socket: TcpStream,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        busy: AtomicUsize::new(0),
        times: Mutex::new((Instant::now(), None)),
    });
    let io = Watched {
        inner: TokioIo::new(socket),
        activity: activity.clone(),
    };
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            activity.begin();
            let (app, activity) = (app.clone(), activity.clone());
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                response.map(|r| {
                    r.map(|body| {
                        Body::new(Tracked {
                            inner: body,
                            activity,
                        })
                    })
                })
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut shutting = *closing.borrow();
    if shutting {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = closing.changed(), if !shutting => {
                // The server is stopping (or gone): finish what is in
                // flight, then close.
                let _ = changed;
                shutting = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if activity.expired(&limits) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

/// A response body that tells the connection's activity when it is done
/// (sent whole, or dropped because the client left).
struct Tracked {
    inner: Body,
    activity: Arc<Activity>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.activity.end();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes of a new request arrive.
struct Watched {
    inner: TokioIo<TcpStream>,
    activity: Arc<Activity>,
}

impl Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // A read that completes is taken as bytes arriving (the cursor
        // does not say how many; a read of none is the peer closing,
        // which ends the connection anyway).
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.activity.bytes_arrived();
        }
        poll
    }
}

impl Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
