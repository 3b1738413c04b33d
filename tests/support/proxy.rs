//! A TCP proxy the test (or benchmark) controls, shared by the integration tests and the
//! benchmarks.

use std::net::SocketAddr;

/// A TCP proxy between the daemon and a broker (or PostgreSQL), to cut and restore the
/// network path while the service itself keeps running (other tests share it). Down, it
/// accepts and drops every connection (a refused connect, as from a stopped broker) and cuts
/// the ones it carried.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    pub async fn start(upstream: &str, up: bool) -> Proxy {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::watch::channel(up);
        let tx = std::sync::Arc::new(tx);
        let state = std::sync::Arc::clone(&tx);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { break };
                let mut up_rx = state.subscribe();
                let upstream = upstream.clone();
                if !*up_rx.borrow() {
                    drop(inbound); // refused: the broker looks down
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream.as_str()).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = up_rx.wait_for(|up| !*up) => {} // cut: both sockets drop
                    }
                });
            }
        });
        Proxy { addr, up: tx }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// A tansu of its own (memory storage) behind a [`Proxy`], advertising the proxy, so that
/// every client connection goes through it and the test can cut the path to the broker.
pub struct ProxiedTansu {
    pub proxy: Proxy,
    child: std::process::Child,
}

impl ProxiedTansu {
    pub async fn start() -> ProxiedTansu {
        let plain = super::ports::free_port();
        let proxy = Proxy::start(&format!("127.0.0.1:{plain}"), true).await;
        let child = std::process::Command::new("tansu")
            .args(["broker", "--storage-engine", &format!("memory://tansu-{plain}/")])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
            .args(["--advertised-listener-url", &format!("tcp://{}", proxy.addr)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu (scripts/test installs it)");
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", plain)).await.is_err() {
            assert!(started.elapsed().as_secs() < 20, "tansu did not listen on {plain}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        ProxiedTansu { proxy, child }
    }

    /// Where clients connect: the proxy.
    pub fn bootstrap(&self) -> String {
        self.proxy.addr.to_string()
    }
}

impl Drop for ProxiedTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
