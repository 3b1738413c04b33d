//! Connection limits on the ingest listener: slow clients are cut off by the timeouts while
//! real traffic keeps flowing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::helpers::TestApp;

const CONFIG: &str = "server:\n  timeouts: { header_read: 2s, body_read: 2s, idle: 3s }\n\
                      brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }\n\
                      default_route:\n  to:\n    - rabbitmq: { exchange: unused, routing_key: k }\n";

/// Opens a connection that starts a request and then sends one more header byte every
/// second, forever; returns how long the server let it live (None: still open after 20 s).
async fn slowloris(addr: std::net::SocketAddr) -> Option<Duration> {
    let opened = Instant::now();
    // From 127.0.0.2: these thousand sockets take their ephemeral ports on that address, so
    // tests running alongside that bind a free port on 127.0.0.1 never collide with them.
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
    let mut stream = socket.connect(addr).await.ok()?;
    stream.write_all(b"POST /api/events/slow HTTP/1.1\r\nhost: x\r\nx-slow: ").await.ok()?;
    let mut buf = [0u8; 512];
    while opened.elapsed() < Duration::from_secs(20) {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => {} // a 408 or similar: keep reading until the close
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if stream.write_all(b"a").await.is_err() {
                    return Some(opened.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_are_reaped_while_real_traffic_flows() {
    let app = TestApp::spawn(CONFIG).await;
    let stalled: Vec<_> = (0..1000).map(|_| tokio::spawn(slowloris(app.addr))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Real senders, on their own connections, while the stalled ones hold theirs.
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        let response = app.post("real.traffic", format!("{{\"i\":{i}}}")).await;
        assert_eq!(response.status(), 202);
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "real requests kept flowing: slowest {slowest:?}");

    let mut lifetimes = Vec::new();
    for task in stalled {
        lifetimes.push(task.await.unwrap().expect("every stalled connection is closed"));
    }
    lifetimes.sort();
    let (median, longest) = (lifetimes[lifetimes.len() / 2], lifetimes[lifetimes.len() - 1]);
    // header_read is 2 s. The clock here starts before connect, the daemon's at its first
    // read. The thousand connections arrive at once: the listen backlog (server.listen_backlog,
    // 1024) queues them all; with the kernel's usual 128 most SYNs were dropped and retried a
    // second or three later (median 4 s, seen on a busy CI machine).
    assert!(
        median < Duration::from_secs(3) && longest < Duration::from_secs(6),
        "reaped at the header timeout: fastest {:?}, median {median:?}, longest {longest:?}",
        lifetimes[0]
    );

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let open: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orchestron_http_connections_open "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open <= 2, "only the metrics request's connection is left: {open}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_408_and_idle_connections_are_closed() {
    let app = TestApp::spawn(CONFIG).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/events/slow HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\":",
        crate::helpers::API_KEY
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "after body_read");

    // A keep-alive connection that sends nothing more is closed by the server.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let opened = Instant::now();
    let mut buf = vec![0u8; 4096];
    let first = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..first]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the idle connection is closed");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    app.stop().await;
}
