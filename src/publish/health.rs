//! How a broker connection stands: connected (to which node), or down and why (`network`,
//! `tls`, `auth`). `/ready`, the metrics and the logs read it.
//!
//! A broker that stays down logs one line when it goes down (or the reason changes), one
//! when it comes back, and a reminder every [`REMINDER`] in between, however often the
//! connection is retried.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::delivery::BrokerKind;
use crate::telemetry::metrics::Metrics;

/// How often a broker that stays down is mentioned again in the log.
pub const REMINDER: Duration = Duration::from_secs(300);

/// Why a broker cannot be reached. Authentication and TLS failures do not heal by retrying:
/// they wait for a reload with other credentials or certificates (events stay queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trouble {
    /// Refused, timed out, unreachable, name not resolved, connection lost.
    Network,
    /// The TLS handshake failed: untrusted certificate, wrong name, no client certificate.
    Tls,
    /// The broker refused the credentials.
    Auth,
}

impl Trouble {
    pub fn as_str(self) -> &'static str {
        match self {
            Trouble::Network => "network",
            Trouble::Tls => "tls",
            Trouble::Auth => "auth",
        }
    }
}

/// A broker's state as `/ready` reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub connected: bool,
    /// The node connected to (`host:port` from the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Trouble>,
    /// The last connection error, without secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One broker's connection state, shared by its publisher and the probe.
pub struct Connectivity {
    broker: BrokerKind,
    metrics: Arc<Metrics>,
    // std Mutex: short updates, never held across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    health: Health,
    /// When the current outage began, and when it was last logged.
    down_since: Option<Instant>,
    last_logged: Option<Instant>,
    attempts: u64,
}

impl Connectivity {
    pub fn new(broker: BrokerKind, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { broker, metrics, state: Mutex::default() })
    }

    pub fn health(&self) -> Health {
        self.state.lock().expect("connectivity lock").health.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.state.lock().expect("connectivity lock").health.connected
    }

    /// Connected to `node`.
    pub fn up(&self, node: &str) {
        let mut s = self.state.lock().expect("connectivity lock");
        let name = self.broker.as_str();
        if s.health.connected && s.health.node.as_deref() == Some(node) {
            return;
        }
        match s.down_since.take() {
            Some(since) => tracing::info!(
                destination = name,
                node,
                outage_s = since.elapsed().as_secs(),
                attempts = s.attempts,
                "{name} reachable again"
            ),
            None => tracing::info!(destination = name, node, "connected to {name}"),
        }
        self.forget_node(&s.health);
        s.health = Health { connected: true, node: Some(node.to_owned()), ..Health::default() };
        s.attempts = 0;
        s.last_logged = None;
        self.metrics.broker_node_info.with_label_values(&[name, node]).set(1);
        self.metrics.broker_reconnects.with_label_values(&[name]).inc();
    }

    /// A connect failed (or the connection was lost) for `trouble`, with `error` (which must
    /// carry no secret).
    pub fn down(&self, trouble: Trouble, error: &str) {
        let mut s = self.state.lock().expect("connectivity lock");
        let name = self.broker.as_str();
        self.metrics.broker_connect_failures.with_label_values(&[name, trouble.as_str()]).inc();
        let changed = s.health.connected || s.health.reason != Some(trouble);
        let since = *s.down_since.get_or_insert_with(Instant::now);
        s.attempts += 1;
        let remind = s.last_logged.is_none_or(|t| t.elapsed() >= REMINDER);
        if changed {
            let hint = match trouble {
                Trouble::Network => "retrying; events wait in the outbox",
                Trouble::Tls | Trouble::Auth => {
                    "fix the credentials or certificates and reload; events wait in the outbox"
                }
            };
            tracing::error!(
                destination = name,
                reason = trouble.as_str(),
                error,
                "{name} unreachable: {hint}"
            );
            s.last_logged = Some(Instant::now());
        } else if remind {
            tracing::warn!(
                destination = name,
                reason = trouble.as_str(),
                error,
                down_s = since.elapsed().as_secs(),
                attempts = s.attempts,
                "{name} still unreachable"
            );
            s.last_logged = Some(Instant::now());
        }
        self.forget_node(&s.health);
        s.health = Health {
            connected: false,
            node: None,
            reason: Some(trouble),
            error: Some(error.into()),
        };
    }

    /// Drops the node series of a connection that ended.
    fn forget_node(&self, health: &Health) {
        if let Some(old) = &health.node {
            let _ = self.metrics.broker_node_info.remove_label_values(&[self.broker.as_str(), old]);
        }
    }
}
