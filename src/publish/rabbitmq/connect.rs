//! Connecting to RabbitMQ: the nodes of `url` and `urls`, tried in turn; TLS (`amqps://`)
//! through rustls with the ring provider, verified against `tls.ca` (or the system's trust
//! store) under the URL's host or `tls.server_name`, with an optional client certificate; the
//! password from `password`; `PLAIN` or `EXTERNAL` authentication; and what a failed connect
//! means ([`Trouble`]).

use std::str::FromStr;
use std::sync::Arc;

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

    /// Opens a connection to `node`; a failure says why.
    pub async fn connect(
        &self,
        node: &Node,
        properties: ConnectionProperties,
    ) -> Result<Connection, (Trouble, String)> {
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| (Trouble::Network, format!("no runtime: {e}")))?;
        let tls = self.tls.clone();
        let connect = async move |uri: AMQPUri, runtime: async_rs::Runtime<_>| {
            let addrs = runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            match (&uri.scheme, &tls) {
                (AMQPScheme::AMQPS, Some(tls)) => {
                    let name = tls.server_name.as_deref().unwrap_or(&uri.authority.host);
                    Ok(stream.into_rustls(&tls.connector, name).await?)
                }
                _ => Ok(stream),
            }
        };
        Connection::connector(node.uri.clone(), runtime, connect, properties)
            .await
            .map_err(|e| classify(&e, &node.uri.authority.userinfo.password))
    }
}

/// What a failed connect means, as a reason and a message without secrets.
pub(super) fn classify(error: &lapin::Error, password: &str) -> (Trouble, String) {
    let trouble = match error.kind() {
        ErrorKind::IOError(io) => {
            let tls =
                io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            if tls { Trouble::Tls } else { Trouble::Network }
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
