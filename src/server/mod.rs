//! The ingest listener's HTTP server: our own accept loop over hyper, so that every
//! connection has limits a public edge needs and `axum::serve` does not set.
//!
//! - At most `server.max_connections` connections are served at once; more wait in the
//!   kernel's accept queue, so a flood of idle sockets cannot exhaust file descriptors.
//! - TLS handshakes must finish within `timeouts.tls_handshake`.
//! - HTTP/1 request headers must arrive within `timeouts.header_read` (hyper's timer-driven
//!   header timeout, which also bounds a keep-alive connection waiting for its next request).
//!   A slowloris client trickling one header byte every few seconds is cut off then.
//! - Bodies must arrive within `timeouts.body_read` (enforced by the ingest handler).
//! - A connection with no bytes read or written for `timeouts.idle` is closed gracefully.
//! - A connection that has no request in flight for `timeouts.header_read` is closed
//!   gracefully too (GOAWAY on HTTP/2). For HTTP/1 hyper's header timeout does the same; for
//!   HTTP/2 this is what bounds a stream whose headers never finish (its request does not
//!   exist until they do, and no other frame may come between a header block's parts), and
//!   a connection kept open by PING or SETTINGS frames alone.
//! - HTTP/2: at most 256 concurrent streams; a client that resets streams faster than they
//!   are accepted (rapid reset, CVE-2023-44487: more than 20 pending) or provokes resets
//!   (more than 1,024) gets GOAWAY `ENHANCE_YOUR_CALM`.
//! - On shutdown every connection is closed gracefully: requests in flight get their answer.

pub mod client_cert;
pub mod tls;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::TimeoutsConfig;
use crate::telemetry::metrics::Metrics;
use client_cert::ClientSubject;
use tls::TlsState;

/// Binds a listening socket that queues up to `backlog` connections for the accept loop
/// (the kernel caps it at `net.core.somaxconn`). `TcpListener::bind` queues 128, so a burst
/// of senders beyond that would have SYNs dropped and wait a second or more to retry.
pub fn bind_listener(addr: std::net::SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// How the listener treats connections.
#[derive(Clone)]
pub struct ServerOptions {
    pub timeouts: TimeoutsConfig,
    pub max_connections: usize,
    pub tls: Option<Arc<TlsState>>,
}

/// Serves `router` on `listener` until `shutdown`, then closes every connection gracefully
/// and returns once they are all gone (the caller bounds this with its shutdown deadline).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        metrics.connections_total.inc();
        let connection = Connection {
            router: router.clone(),
            options: options.clone(),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            let _slot = slot;
            connection.run(stream).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

struct Connection {
    router: Router,
    options: ServerOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        self.metrics.connections_open.inc();
        let activity = Arc::new(Activity::new());
        let stream = Tracked { inner: stream, activity: Arc::clone(&activity) };
        match self.options.tls.clone() {
            None => self.drive(stream, &activity, None, Alpn::None).await,
            Some(tls) => {
                let handshake = tls.acceptor().accept(stream);
                match tokio::time::timeout(self.options.timeouts.tls_handshake.get(), handshake)
                    .await
                {
                    Ok(Ok(stream)) => {
                        // mTLS: the (verified) client certificate's subject, for the handlers.
                        let subject = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| ClientSubject::from_der(leaf));
                        let alpn = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Alpn::H2,
                            _ => Alpn::Http1,
                        };
                        self.drive(stream, &activity, subject, alpn).await
                    }
                    Ok(Err(error)) => {
                        self.metrics.tls_handshake_failures.with_label_values(&["error"]).inc();
                        tracing::debug!(%error, "TLS handshake failed");
                    }
                    Err(_) => {
                        self.metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
                    }
                }
            }
        }
        self.metrics.connections_open.dec();
    }

    async fn drive<IO>(
        &self,
        io: IO,
        activity: &Activity,
        subject: Option<ClientSubject>,
        alpn: Alpn,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeouts = &self.options.timeouts;
        // Over TLS, ALPN already said which protocol it is: no sniffing for the h2 preface.
        let mut builder = match alpn {
            Alpn::None => auto::Builder::new(TokioExecutor::new()),
            Alpn::Http1 => auto::Builder::new(TokioExecutor::new()).http1_only(),
            Alpn::H2 => auto::Builder::new(TokioExecutor::new()).http2_only(),
        };
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read.get())
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_RESETS);
        let router = self.router.clone();
        let requests = Arc::new(Requests::new());
        let served = Arc::clone(&requests);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            if let Some(subject) = &subject {
                request.extensions_mut().insert(subject.clone());
            }
            let in_flight = served.begin();
            let answer = router.clone().oneshot(request);
            async move {
                let answer = answer.await;
                drop(in_flight);
                answer
            }
        });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let idle = timeouts.idle.get();
        let check_every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // Once closing, requests in flight get this long to finish before the socket is dropped.
        let mut closing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                _ = self.shutdown.cancelled(), if closing_since.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                _ = tokio::time::sleep(check_every) => {
                    match closing_since {
                        None if activity.idle_for() >= idle
                            || requests.idle_for() >= timeouts.header_read.get() => {
                            conn.as_mut().graceful_shutdown();
                            closing_since = Some(Instant::now());
                        }
                        Some(since) if since.elapsed() >= timeouts.body_read.get() => return,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// HTTP/2 streams a connection may have open at once.
const MAX_STREAMS: u32 = 256;
/// Streams the client reset before they were accepted, at most, before GOAWAY (h2's own
/// default, stated here: the rapid reset limit).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server had to reset because of the client's errors, at most, per connection.
const MAX_LOCAL_RESETS: usize = 1024;

/// The requests a connection is serving, and since when it has served none.
struct Requests {
    start: Instant,
    in_flight: AtomicU64,
    /// When the last request ended (or the connection opened), in ms since `start`.
    last_ms: AtomicU64,
}

impl Requests {
    fn new() -> Self {
        Self { start: Instant::now(), in_flight: AtomicU64::new(0), last_ms: AtomicU64::new(0) }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has had no request in flight (zero while it has one).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One request being served: counted until its answer is ready.
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.start.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The protocol TLS negotiated (`None`: plain TCP, detect it from the first bytes).
#[derive(Clone, Copy)]
enum Alpn {
    None,
    Http1,
    H2,
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A socket that records when bytes last moved through it (TLS records included).
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
