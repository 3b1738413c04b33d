//! `brokers:`: how to reach RabbitMQ and Kafka.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{HumanDuration, Secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokersConfig {
    pub rabbitmq: Option<RabbitMqConfig>,
    pub kafka: Option<KafkaConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    pub url: Secret,
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

#[derive(Debug, Clone, Default, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// librdkafka's `message.timeout.ms`: a delivery not confirmed by then is retried by us.
    #[serde(default = "default_message_timeout")]
    pub message_timeout: HumanDuration,
    /// Extra librdkafka producer properties (e.g. `linger.ms`). Ours for idempotence and acks
    /// cannot be overridden.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
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
