//! HTTP/2 abuse over TLS with ALPN h2 (docs/security.md, "HTTP/2 abuse"): headers that never
//! finish, a PING flood with no request, rapid reset, streams whose answers are never read.
//! Each abusive connection is ended by the server, and a well-behaved client on another
//! connection keeps being served; the p99 of its requests with and without the abuse is
//! printed (docs/reliability.md has a run's figures).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use crate::certs::TestCa;
use crate::helpers::{API_KEY, TestApp};

/// Events go to a broker that is not there: they are stored, the relay waits.
const UNREACHABLE: &str = "brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }\n\
    default_route:\n  to: [ { rabbitmq: { exchange: h2-unused, routing_key: k } } ]\n";

/// `header_read` and `body_read` short, so the closes come within seconds.
fn config(dir: &Path) -> String {
    format!(
        "server:\n  timeouts: {{ header_read: 2s, body_read: 2s }}\n  tls:\n    cert: {}\n    key: {}\n{UNREACHABLE}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

struct Daemon {
    app: TestApp,
    ca: String,
    _certs: tempfile::TempDir,
}

async fn daemon() -> Daemon {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "localhost", false);
    std::fs::write(certs.path().join("cert.pem"), &leaf.cert).unwrap();
    std::fs::write(certs.path().join("key.pem"), &leaf.key).unwrap();
    let app = TestApp::spawn(&config(certs.path())).await;
    Daemon { app, ca: ca.pem(), _certs: certs }
}

/// A TLS connection that negotiated `h2`.
async fn tls(d: &Daemon) -> TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(d.ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(d.app.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;

/// The error code and debug data of the first GOAWAY among the frames in `bytes`.
fn goaway(bytes: &[u8]) -> Option<(u32, String)> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let payload = rest.get(9..9 + len)?;
        if rest[3] == 0x7 && len >= 8 {
            let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
            return Some((code, String::from_utf8_lossy(&payload[8..]).into_owned()));
        }
        rest = &rest[9 + len..];
    }
    None
}

/// Keeps writing `next()` frames every `every` until the server closes the connection;
/// returns how long that took (panics after `limit`) and the server's GOAWAY, if it sent one.
async fn until_closed(
    mut stream: TlsStream<tokio::net::TcpStream>,
    every: Duration,
    limit: Duration,
    mut next: impl FnMut() -> Vec<u8>,
) -> (Duration, Option<(u32, String)>) {
    let started = Instant::now();
    let (mut read, mut write) = tokio::io::split(&mut stream);
    let received = std::sync::Mutex::new(Vec::new());
    let reader = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            received.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    };
    let writer = async {
        loop {
            if write.write_all(&next()).await.is_err() || write.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        // Writing failed: the server closed; wait for the reader to see it.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
        _ = tokio::time::sleep(limit) => panic!("the server kept the connection for {limit:?}"),
    }
    (started.elapsed(), goaway(&received.into_inner().unwrap()))
}

/// A well-behaved client's request latencies, for `within`, on connections of its own.
async fn latencies(d: &Daemon, within: Duration) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(d.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/api/events/h2.test", d.app.addr.port());
    let client = client;
    let started = Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < within {
        let t = Instant::now();
        let answer = client
            .post(&url)
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("a well-behaved client is served");
        assert_eq!(answer.status(), 202);
        assert_eq!(answer.version(), reqwest::Version::HTTP_2);
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_finishes_does_not_hold_the_connection() {
    let d = daemon().await;
    let mut stream = tls(&d).await;
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // HEADERS without END_HEADERS, then one byte of CONTINUATION every 1.5 s: bytes keep
    // moving (the idle timeout never fires), and no request ever exists. (h2 itself ends a
    // header block after 5 CONTINUATION frames: 9 s at this pace.)
    // :method POST, :scheme http, :path /, then a header `x` whose value is 127 bytes long:
    // each CONTINUATION brings one more byte of it, so h2 waits for more.
    let block = [0x83, 0x86, 0x84, 0x00, 0x01, b'x', 0x7f, 0x00];
    stream.write_all(&frame(HEADERS, 0x1, 1, &block)).await.unwrap();
    let every = Duration::from_millis(1500);
    let (took, goaway) =
        until_closed(stream, every, Duration::from_secs(20), || frame(CONTINUATION, 0, 1, b"a"))
            .await;
    println!("unfinished header block: GOAWAY {goaway:?}");
    assert_eq!(goaway.map(|g| g.0), Some(0), "a graceful GOAWAY (NO_ERROR), not h2's own limit");
    // header_read (2 s) for the GOAWAY, then body_read (2 s) for the graceful close.
    assert!(took >= Duration::from_secs(2), "closed after {took:?}: too early to be the rule");
    assert!(took < Duration::from_secs(6), "closed after {took:?}: not by header_read");
    println!("unfinished header block: connection closed after {took:?}");
    d.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_with_no_request_is_closed_and_others_keep_their_latency() {
    let d = daemon().await;
    let quiet = p99(latencies(&d, Duration::from_secs(2)).await);
    let mut stream = tls(&d).await;
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut n = 0u64;
    let flood =
        until_closed(stream, Duration::from_micros(200), Duration::from_secs(20), move || {
            n += 1;
            let mut frames = frame(PING, 0, 0, &n.to_be_bytes());
            frames.extend(frame(SETTINGS, 0, 0, &[]));
            frames
        });
    let ((took, goaway), busy) = tokio::join!(flood, latencies(&d, Duration::from_secs(3)));
    let busy = p99(busy);
    assert_eq!(goaway.map(|g| g.0), Some(0), "a graceful GOAWAY (NO_ERROR)");
    println!("PING/SETTINGS flood: closed after {took:?}; p99 quiet {quiet:?}, during {busy:?}");
    assert!(busy < Duration::from_secs(1), "p99 {busy:?} during the flood");
    d.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_and_others_keep_their_latency() {
    let d = daemon().await;
    let quiet = p99(latencies(&d, Duration::from_secs(2)).await);
    let (mut send, connection) = h2::client::handshake(tls(&d).await).await.unwrap();
    let driven = tokio::spawn(connection);
    let abuse = tokio::spawn(async move {
        let mut opened = 0u32;
        let error = loop {
            if let Err(e) = futures_util::future::poll_fn(|cx| send.poll_ready(cx)).await {
                break Some(e);
            }
            let request = http::Request::post("/api/events/h2.test")
                .header("x-api-key", API_KEY)
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            match send.send_request(request, false) {
                Ok((_answer, mut body)) => body.send_reset(h2::Reason::CANCEL),
                Err(e) => break Some(e),
            }
            opened += 1;
            if opened == 100_000 {
                break None;
            }
            tokio::task::yield_now().await;
        };
        (opened, error)
    });
    let busy = latencies(&d, Duration::from_secs(2)).await;
    let (opened, error) = tokio::time::timeout(Duration::from_secs(30), abuse)
        .await
        .expect("the abuse ended")
        .unwrap();
    // The connection task sees the GOAWAY too (the loop may see the socket's reset first).
    let ended = match tokio::time::timeout(Duration::from_secs(5), driven).await {
        Ok(Ok(Err(e))) => e.reason(),
        _ => None,
    };
    let busy = p99(busy);
    println!(
        "rapid reset: {opened} streams opened and reset before the server's GOAWAY ({error:?}); \
         p99 quiet {quiet:?}, during {busy:?}"
    );
    let error = error.expect("the server never stopped the resets");
    let calm = Some(h2::Reason::ENHANCE_YOUR_CALM);
    assert!(error.reason() == calm || ended == calm, "{error}; connection: {ended:?}");
    assert!(busy < Duration::from_secs(1), "p99 {busy:?} during the resets");
    d.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_answers_are_never_read_are_let_go() {
    let d = daemon().await;
    // A zero window: the server can send no answer body, so all the streams stay open.
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls(&d).await)
        .await
        .unwrap();
    let driven = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..100 {
        let request = http::Request::post("/api/events/h2.test")
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (answer, mut body) = send.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"{}"), true).unwrap();
        answers.push(answer);
        send = send.ready().await.unwrap();
    }
    let started = Instant::now();
    let busy = p99(latencies(&d, Duration::from_secs(2)).await);
    // Closed: header_read after the last answer was ready, then body_read for the streams.
    let ended = tokio::time::timeout(Duration::from_secs(15), driven).await;
    let took = started.elapsed();
    println!("100 unread streams: connection closed after {took:?}; p99 meanwhile {busy:?}");
    assert!(ended.is_ok(), "the connection was kept for {took:?}");
    assert!(busy < Duration::from_secs(1), "p99 {busy:?}");
    drop(answers);
    d.app.stop().await;
}
