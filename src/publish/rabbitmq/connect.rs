//! Connecting to RabbitMQ: the nodes of `url` and `urls`, tried in turn; TLS (`amqps://`)
//! through rustls with the ring provider, verified against `tls.ca` (or the system's trust
//! store) under the URL's host or `tls.server_name`, with an optional client certificate; the
//! password from `password`; `PLAIN` or `EXTERNAL` authentication; and what a failed connect
//! means ([`Trouble`]).
//!
//! The TCP connect and the TLS handshake are made here, not by lapin: lapin 4 leaks its
//! connection's background task (and what it holds) on every connect whose transport fails,
//! and keeps the I/O thread of a connection whose broker never answers for as long as the
//! socket stays open. With the transport made here, a failed TCP or TLS step never reaches
//! lapin, and [`Handshake`] shuts the socket down when the AMQP handshake does not finish, so
//! lapin's thread sees the end of the stream and cleans up. A broker outage of any length costs
//! a bounded, constant amount of memory and threads.

use std::io;
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_compat::CompatExt;
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use sha2::{Digest, Sha256};

use crate::config::{RabbitMqAuth, RabbitMqConfig};
use crate::publish::health::Trouble;
use crate::publish::tls::TlsMaterial;

/// How to reach the cluster, built from the config (and rebuilt by a reload).
pub(super) struct Settings {
    nodes: Vec<Node>,
    tls: Option<Tls>,
    /// Everything a connection depends on, secrets and file contents included: a reload
    /// reconnects only when it changed.
    pub fingerprint: [u8; 32],
}

/// One node of the cluster.
pub(super) struct Node {
    uri: AMQPUri,
    /// `host:port`: logs, `/ready` and the `orchestron_broker_node_info` metric.
    pub label: String,
}

#[derive(Clone)]
struct Tls {
    connector: Arc<RustlsConnector>,
    server_name: Option<String>,
}

impl Settings {
    /// Parses the URLs and reads the TLS files; the error says what is wrong (never a secret).
    pub fn from_config(config: &RabbitMqConfig) -> Result<Self, String> {
        let mut hash = Sha256::new();
        let mut nodes = Vec::new();
        for (i, url) in std::iter::once(&config.url).chain(&config.urls).enumerate() {
            let at = if i == 0 { "url".to_owned() } else { format!("urls[{}]", i - 1) };
            // The parser's message may quote the URL, password and all: not repeated.
            let mut uri = AMQPUri::from_str(url.expose()).map_err(|_| {
                format!("{at}: not an AMQP URL (amqp[s]://user:password@host:port/vhost)")
            })?;
            if let Some(password) = &config.password {
                uri.authority.userinfo.password = password.expose().to_owned();
            }
            if config.auth == RabbitMqAuth::External {
                uri.query.auth_mechanism = Some(SASLMechanism::External);
            }
            if let Some(heartbeat) = config.heartbeat {
                uri.query.heartbeat = Some(heartbeat.get().as_secs().clamp(1, 65_535) as u16);
            }
            hash.update(url.expose().as_bytes());
            let label = format!("{}:{}", uri.authority.host, uri.authority.port);
            nodes.push(Node { uri, label });
        }
        let secure = nodes.iter().filter(|n| n.uri.scheme == AMQPScheme::AMQPS).count();
        if secure != 0 && secure != nodes.len() {
            return Err("url and urls must all be amqps:// or all amqp://".into());
        }
        if config.tls.is_some() && secure == 0 {
            return Err("tls is set but the URL is amqp://; use amqps:// for TLS".into());
        }
        let tls_section = config.tls.clone().unwrap_or(crate::config::BrokerTlsConfig {
            ca: None,
            cert: None,
            key: None,
            server_name: None,
        });
        if config.auth == RabbitMqAuth::External && (secure == 0 || tls_section.cert.is_none()) {
            return Err("auth: external needs amqps:// and a client certificate (tls.cert)".into());
        }
        if let Some(name) = &tls_section.server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err("tls.server_name: not a DNS name or an IP address".into());
        }
        let tls = if secure == 0 {
            None
        } else {
            let material = TlsMaterial::read(&tls_section).map_err(|e| format!("tls: {e}"))?;
            hash.update(material.fingerprint);
            let client = material.client_config().map_err(|e| format!("tls: {e}"))?;
            Some(Tls {
                connector: Arc::new(RustlsConnector::from(Arc::new(client))),
                server_name: tls_section.server_name.clone(),
            })
        };
        hash.update(config.password.as_ref().map(|p| p.expose()).unwrap_or_default());
        hash.update(format!(
            "{:?}{:?}{:?}",
            config.auth, config.heartbeat, tls_section.server_name
        ));
        Ok(Settings { nodes, tls, fingerprint: hash.finalize().into() })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Opens a connection to `node`, named `name` on the broker; a failure says why. The
    /// [`Handshake`] must be kept until the connection is ready for use (channel open,
    /// topology declared), then [`finished`](Handshake::finished): dropped before, it ends
    /// the connection.
    pub async fn connect(
        &self,
        node: &Node,
        name: &str,
    ) -> Result<(Connection, Handshake), (Trouble, String)> {
        // lapin's defaults: no reconnect backoff and no automatic recovery, so lapin asks for
        // the transport once and never retries it (a retry would find it taken, and lapin
        // leaks on a transport that fails).
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| (Trouble::Network, format!("no runtime: {e}")))?;
        let (host, port) = (node.uri.authority.host.as_str(), node.uri.authority.port);
        let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(network)?;
        tcp.set_nodelay(true).map_err(network)?;
        let (tcp, handshake) = Handshake::watch(tcp).map_err(network)?;
        let mut stream = AsyncTcpStream::Plain(tcp.compat());
        if let (AMQPScheme::AMQPS, Some(tls)) = (&node.uri.scheme, &self.tls) {
            let name = tls.server_name.as_deref().unwrap_or(host);
            stream = stream.into_rustls(&tls.connector, name).await.map_err(|e| {
                let trouble = if is_tls(&e) { Trouble::Tls } else { Trouble::Network };
                (trouble, format!("TLS: {e}"))
            })?;
        }
        let transport = Mutex::new(Some(stream));
        let connect = async move |_: AMQPUri, _: async_rs::Runtime<_>| {
            let taken = transport.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.ok_or_else(|| lapin::Error::from(io::Error::from(io::ErrorKind::NotConnected)))
        };
        let connection = Connection::connector(node.uri.clone(), runtime, connect, properties)
            .await
            .map_err(|e| classify(&e, &node.uri.authority.userinfo.password))?;
        Ok((connection, handshake))
    }
}

/// The socket of a connection whose AMQP handshake is not finished: dropped before
/// [`finished`](Self::finished) (a failure, a timeout, a cancel), it shuts the socket down,
/// which ends lapin's I/O thread for it.
pub(super) struct Handshake {
    socket: Option<std::net::TcpStream>,
}

impl Handshake {
    /// Keeps a second handle on `tcp`'s socket, to shut it down from here.
    fn watch(tcp: tokio::net::TcpStream) -> io::Result<(tokio::net::TcpStream, Handshake)> {
        let socket = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
        Ok((tcp, Handshake { socket: Some(socket) }))
    }

    /// The connection is ready: from now on lapin owns the socket alone.
    pub fn finished(mut self) {
        self.socket = None;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn network(error: io::Error) -> (Trouble, String) {
    (Trouble::Network, error.to_string())
}

/// Whether an I/O error is rustls refusing the handshake (or the name to verify).
fn is_tls(io: &io::Error) -> bool {
    io.get_ref().is_some_and(|inner| {
        inner.downcast_ref::<rustls::Error>().is_some()
            || inner.downcast_ref::<rustls::pki_types::InvalidDnsNameError>().is_some()
    })
}

/// What a failed connect means, as a reason and a message without secrets.
pub(super) fn classify(error: &lapin::Error, password: &str) -> (Trouble, String) {
    let trouble = match error.kind() {
        ErrorKind::IOError(io) => {
            if is_tls(io) {
                Trouble::Tls
            } else {
                Trouble::Network
            }
        }
        ErrorKind::ProtocolError(amqp) => {
            let text = amqp.to_string();
            if text.contains("ACCESS_REFUSED") || text.contains("NOT_ALLOWED") {
                Trouble::Auth
            } else {
                Trouble::Network
            }
        }
        ErrorKind::AuthProviderError(_) => Trouble::Auth,
        _ => Trouble::Network,
    };
    (trouble, redact(&error.to_string(), password))
}

/// `text` with every occurrence of `secret` (a password, a URL that holds one) blanked out.
pub(super) fn redact(text: &str, secret: &str) -> String {
    if secret.len() < 3 { text.to_owned() } else { text.replace(secret, "[redacted]") }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    fn settings(port: u16) -> Settings {
        let yaml = format!("url: \"amqp://guest:guest@127.0.0.1:{port}/%2f\"");
        Settings::from_config(&serde_saphyr::from_str(&yaml).unwrap()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_connects_leave_no_task_behind() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = settings(port);
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for _ in 0..50 {
            let failed = settings.connect(&settings.nodes()[0], "test").await;
            assert_eq!(failed.err().map(|e| e.0), Some(Trouble::Network));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = metrics.num_alive_tasks();
        assert!(
            after <= before + 2,
            "tasks alive: {before} before 50 refused connects, {after} after"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_given_up_leaves_nothing_behind() {
        // A broker that accepts and never says a word; it counts the connections the client
        // closed (it reads their end).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&closed);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    counter.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let settings = settings(port);
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for _ in 0..10 {
            let attempt = settings.connect(&settings.nodes()[0], "test");
            let given_up = tokio::time::timeout(Duration::from_millis(200), attempt).await;
            assert!(given_up.is_err(), "a silent broker never completes the handshake");
        }
        // Each abandoned connection is closed, and lapin's task for it (spawned on this
        // runtime) has ended: its I/O thread saw the end of the stream.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let settled = || closed.load(Ordering::SeqCst) == 10 && metrics.num_alive_tasks() <= before;
        while !settled() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 10, "every abandoned connection is closed");
        let after = metrics.num_alive_tasks();
        assert!(
            after <= before,
            "tasks alive: {before} before 10 abandoned handshakes, {after} after"
        );
    }
}
