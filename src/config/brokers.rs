//! `brokers:`: how to reach RabbitMQ and Kafka: addresses, TLS, credentials.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{HumanDuration, Secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokersConfig {
    pub rabbitmq: Option<RabbitMqConfig>,
    pub kafka: Option<KafkaConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://` or `amqps://` (TLS) URL of the first node; may carry user and password.
    pub url: Secret,
    /// The password, overriding the URL's (typically a `${file:...}` reference).
    pub password: Option<Secret>,
    /// More nodes of the cluster, tried in turn when a connect fails.
    #[serde(default)]
    pub urls: Vec<Secret>,
    /// Trust anchors, client certificate and verification name for `amqps://`.
    pub tls: Option<BrokerTlsConfig>,
    /// `plain` (user and password) or `external` (SASL EXTERNAL: the client certificate).
    #[serde(default)]
    pub auth: RabbitMqAuth,
    /// AMQP heartbeat interval (default: what the broker proposes).
    pub heartbeat: Option<HumanDuration>,
    /// A publish not confirmed by the broker within this time counts as failed (and is retried).
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: HumanDuration,
    /// Most messages published and not yet confirmed at once.
    #[serde(default = "default_max_unconfirmed")]
    pub max_unconfirmed: usize,
    /// Topology declared on every (re)connect, so a fresh broker works without manual setup.
    #[serde(default)]
    pub declare: RabbitMqDeclareConfig,
}

/// TLS towards a broker: rustls with ring for RabbitMQ, librdkafka's OpenSSL for Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// PEM: the CA certificates the broker's certificate must chain to (default: the
    /// system's trust store).
    pub ca: Option<PathBuf>,
    /// PEM: a client certificate chain (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM: the client certificate's private key.
    pub key: Option<PathBuf>,
    /// The name the broker's certificate is verified against (and sent as SNI), when it is
    /// not the host of the URL. RabbitMQ only.
    pub server_name: Option<String>,
}

impl BrokerTlsConfig {
    /// The files this configuration reads: watched for changes.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.ca.iter().chain(&self.cert).chain(&self.key)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RabbitMqAuth {
    #[default]
    Plain,
    External,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqDeclareConfig {
    #[serde(default)]
    pub exchanges: Vec<ExchangeConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ExchangeType,
    #[serde(default = "default_true")]
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    #[default]
    Topic,
    Headers,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers, comma-separated.
    pub bootstrap_servers: String,
    /// Present: TLS (`SSL`, or `SASL_SSL` with `sasl`). `server_name` is not supported here.
    pub tls: Option<BrokerTlsConfig>,
    /// Present: SASL (`SASL_PLAINTEXT`, or `SASL_SSL` with `tls`).
    pub sasl: Option<KafkaSaslConfig>,
    /// librdkafka's `message.timeout.ms`: a delivery not confirmed by then is retried by us.
    #[serde(default = "default_message_timeout")]
    pub message_timeout: HumanDuration,
    /// librdkafka producer properties passed as they are (e.g. `linger.ms`,
    /// `compression.type`). Keys the delivery guarantee rests on, and keys that `tls` and
    /// `sasl` set, are refused. (`properties` is the older name of this key.)
    #[serde(default, alias = "properties")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka (and the Kafka protocol) use.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

fn default_confirm_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_unconfirmed() -> usize {
    1024
}
fn default_message_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_true() -> bool {
    true
}
