//! `server:`: the ingest listener, its TLS and its connection limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use super::HumanDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// How long shutdown may take (draining requests, the relay batch, broker flushes) before
    /// the process exits anyway. Anything not yet published stays in the outbox.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// HTTPS on the ingest listener. Absent: plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections the kernel queues for the accept loop (`listen(2)` backlog, capped by
    /// `net.core.somaxconn`). A burst beyond it has its SYNs dropped, and senders retry
    /// after a second or more.
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// PEM: CA certificates. Set: every client must present a certificate one of them signed.
    pub client_ca: Option<PathBuf>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// Limits on how long a connection may take for each step; a client too slow for them is
/// disconnected, so stalled connections (slowloris) cannot pile up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// From accept to a finished TLS handshake.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake: HumanDuration,
    /// To receive a request's complete header block (also bounds an idle keep-alive
    /// connection waiting for its next request).
    #[serde(default = "default_header_timeout")]
    pub header_read: HumanDuration,
    /// To receive a request's complete body.
    #[serde(default = "default_body_timeout")]
    pub body_read: HumanDuration,
    /// Longest a connection may stay open without a request in progress.
    #[serde(default = "default_idle_timeout")]
    pub idle: HumanDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tls_handshake: default_handshake_timeout(),
            header_read: default_header_timeout(),
            body_read: default_body_timeout(),
            idle: default_idle_timeout(),
        }
    }
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_listen_backlog() -> u32 {
    1024
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}
