//! `schemas:`, `routes:`, `default_route:`, `relay:` and `dlq:`: where events go, how
//! delivery is retried, and what happens to the ones given up on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::HumanDuration;
use crate::delivery::{BrokerKind, MessageFormat};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// Holds `<event_type>.json` JSON Schemas. Types without a file are not validated.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    pub to: Vec<DestinationConfig>,
    /// Keep looking after this route matched: later matches add their destinations.
    #[serde(rename = "continue", default)]
    pub continue_matching: bool,
    /// Overrides `relay.max_attempts` for this route's destinations.
    pub max_attempts: Option<u32>,
    /// Overrides `relay.backoff` for this route's destinations.
    pub backoff: Option<BackoffConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Glob (`*`) on the source name.
    pub source: Option<String>,
    /// Glob (`*`) on the event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Conditions on values in the JSON body; all must hold.
    #[serde(default)]
    pub body: Vec<BodyMatchConfig>,
    /// Request headers (name → exact value or `*` glob); all must hold. A header a route
    /// matches on is stored with the event (like `keep_headers`), so the relay can match it.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One condition on the body: the value at `pointer` equals a value, is one of several, or
/// exists (or not). Exactly one of `equals`, `one_of`, `exists`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyMatchConfig {
    pub pointer: String,
    pub equals: Option<serde_json::Value>,
    pub one_of: Option<Vec<serde_json::Value>>,
    pub exists: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultRouteConfig {
    pub to: Vec<DestinationConfig>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum DestinationConfig {
    Rabbitmq(RabbitMqDestinationConfig),
    Kafka(KafkaDestinationConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqDestinationConfig {
    pub exchange: String,
    /// Template: `{type}`, `{source}` and `{/json/pointer}` are replaced.
    #[serde(default)]
    pub routing_key: String,
    /// `binary` (default): the body as sent, CloudEvents attributes in headers;
    /// `cloudevents`: a CloudEvents JSON envelope (structured mode) with the body as `data`.
    #[serde(default)]
    pub format: MessageFormat,
    /// Overrides the route's and `relay`'s `max_attempts` for this destination.
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDestinationConfig {
    /// Template: `{type}`, `{source}` and `{/json/pointer}` are replaced.
    pub topic: String,
    /// The record key: a JSON pointer (`/customer_id`: the value there) or a template
    /// (`{source}:{/customer_id}`).
    pub key: Option<String>,
    /// A fixed partition; default: librdkafka's partitioner (by key).
    pub partition: Option<i32>,
    #[serde(default)]
    pub format: MessageFormat,
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Most events claimed and published per pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Attempts per destination before the event is dead-lettered for it.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Events older than this are dead-lettered (reason `expired`) instead of retried.
    pub max_age: Option<HumanDuration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            max_attempts: default_max_attempts(),
            backoff: BackoffConfig::default(),
            max_age: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial: HumanDuration,
    pub max: HumanDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: HumanDuration::from_secs(1), max: HumanDuration::from_secs(300) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqConfig {
    /// Keep at most this many entries; the oldest go first.
    pub max_entries: Option<u64>,
    /// Drop entries dead-lettered longer ago than this.
    pub max_age: Option<HumanDuration>,
    /// Also publish a copy of each dead-lettered event here (best effort), with the reason
    /// in headers, so broker tooling sees it too.
    pub publish_to: Option<DestinationConfig>,
}

impl DestinationConfig {
    /// The broker this destination is on.
    pub fn broker(&self) -> BrokerKind {
        match self {
            DestinationConfig::Rabbitmq(_) => BrokerKind::RabbitMq,
            DestinationConfig::Kafka(_) => BrokerKind::Kafka,
        }
    }

    /// This destination's own retry overrides.
    pub fn retry(&self) -> (Option<u32>, Option<BackoffConfig>) {
        match self {
            DestinationConfig::Rabbitmq(r) => (r.max_attempts, r.backoff),
            DestinationConfig::Kafka(k) => (k.max_attempts, k.backoff),
        }
    }
}

fn default_batch_size() -> usize {
    500
}
fn default_max_attempts() -> u32 {
    10
}
