//! A TCP proxy the test (or benchmark) controls, shared by the integration tests and the
//! benchmarks.

use std::net::SocketAddr;

/// A TCP proxy between the daemon and a broker (or PostgreSQL), to cut and restore the
/// network path while the service itself keeps running (other tests share it). Down, it
/// accepts and drops every connection (a refused connect, as from a stopped broker) and cuts
/// the ones it carried. Silent, it accepts connections and never answers (a firewall that
/// drops packets, a hung broker); refusing, it does not listen at all (a stopped broker's
/// closed port), until it is set up or down again.
pub struct Proxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<tokio::sync::watch::Sender<Mode>>,
}

/// What the proxy does with a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Up,
    Down,
    Silent,
    Refused,
}

impl Proxy {
    pub async fn start(upstream: &str, up: bool) -> Proxy {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::watch::channel(if up { Mode::Up } else { Mode::Down });
        let tx = std::sync::Arc::new(tx);
        let state = std::sync::Arc::clone(&tx);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut watching = state.subscribe();
            loop {
                if *watching.borrow_and_update() == Mode::Refused {
                    // No listener: a connect is refused by the kernel.
                    drop(listener.take());
                    if watching.wait_for(|m| *m != Mode::Refused).await.is_err() {
                        break; // the proxy was dropped
                    }
                    continue;
                }
                let bound = match listener.take() {
                    Some(bound) => bound,
                    None => match tokio::net::TcpListener::bind(addr).await {
                        Ok(bound) => bound,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let accepted = tokio::select! {
                    accepted = bound.accept() => accepted,
                    changed = watching.changed() => {
                        if changed.is_err() {
                            break; // the proxy was dropped
                        }
                        listener = Some(bound);
                        continue;
                    }
                };
                listener = Some(bound);
                let Ok((mut inbound, _)) = accepted else { break };
                let mut rx = state.subscribe();
                let upstream = upstream.clone();
                let path = *rx.borrow();
                match path {
                    Mode::Down | Mode::Refused => drop(inbound), // the broker looks down
                    Mode::Silent => {
                        // Held open, never read nor written, until the mode changes.
                        tokio::spawn(async move {
                            let _ = rx.wait_for(|p| *p != Mode::Silent).await;
                            drop(inbound);
                        });
                    }
                    Mode::Up => {
                        tokio::spawn(async move {
                            let Ok(mut outbound) =
                                tokio::net::TcpStream::connect(upstream.as_str()).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = rx.wait_for(|p| *p != Mode::Up) => {} // cut: both sockets drop
                            }
                        });
                    }
                }
            }
        });
        Proxy { addr, state: tx }
    }

    pub fn set_up(&self, up: bool) {
        self.state.send_replace(if up { Mode::Up } else { Mode::Down });
    }

    /// Cuts the connections it carried and answers no new ones: they are accepted and then
    /// left without a byte until the path is set up or down again.
    pub fn set_silent(&self) {
        self.state.send_replace(Mode::Silent);
    }

    /// Cuts the connections it carried and stops listening: a connect is refused (a stopped
    /// broker, a closed port) until the path is set up or down again.
    pub fn set_refusing(&self) {
        self.state.send_replace(Mode::Refused);
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
