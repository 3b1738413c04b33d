//! A configured destination, compiled: templates parsed, retry overrides merged, and
//! resolved for one event into a [`Target`].

use super::Body;
use super::template::{Template, Values};
use crate::config::{BackoffConfig, DestinationConfig};
use crate::delivery::{BrokerKind, MessageFormat, RetryOverride, Target};
use crate::event::ValidatedEvent;

/// A destination as configured, templates parsed, retry overrides merged (destination over
/// route over nothing).
#[derive(Debug)]
pub(super) struct Destination {
    kind: DestinationKind,
    pub retry: RetryOverride,
}

#[derive(Debug)]
enum DestinationKind {
    RabbitMq { exchange: String, routing_key: Template, format: MessageFormat },
    Kafka { topic: Template, key: Option<KeyFrom>, partition: Option<i32>, format: MessageFormat },
}

/// Where a Kafka record key comes from.
#[derive(Debug)]
enum KeyFrom {
    /// `/customer_id`: the value there (strings as text, null as no key, the rest as JSON).
    Pointer(String),
    /// `{source}:{/customer_id}`: rendered text.
    Template(Template),
}

fn merge_retry(
    route: (Option<u32>, Option<BackoffConfig>),
    dest: (Option<u32>, Option<BackoffConfig>),
) -> RetryOverride {
    let backoff = dest.1.or(route.1);
    RetryOverride {
        max_attempts: dest.0.or(route.0),
        backoff_ms: backoff
            .map(|b| (b.initial.get().as_millis() as u64, b.max.get().as_millis() as u64)),
    }
}

impl Destination {
    pub fn parse(dest: &DestinationConfig) -> Result<Self, String> {
        Self::with_route(dest, (None, None))
    }

    pub fn with_route(
        dest: &DestinationConfig,
        route: (Option<u32>, Option<BackoffConfig>),
    ) -> Result<Self, String> {
        let kind = DestinationKind::parse(dest)?;
        Ok(Self { kind, retry: merge_retry(route, dest.retry()) })
    }

    pub fn broker(&self) -> BrokerKind {
        match self.kind {
            DestinationKind::RabbitMq { .. } => BrokerKind::RabbitMq,
            DestinationKind::Kafka { .. } => BrokerKind::Kafka,
        }
    }

    pub fn resolve(&self, event: &ValidatedEvent, body: &mut Body<'_>) -> Target {
        self.kind.resolve(event, body)
    }

    /// The configured destination, templates unrendered: `rabbitmq:orders`, `kafka:t.{type}`.
    pub fn name(&self) -> String {
        match &self.kind {
            DestinationKind::RabbitMq { exchange, .. } => format!("rabbitmq:{exchange}"),
            DestinationKind::Kafka { topic, .. } => format!("kafka:{}", topic.source()),
        }
    }
}

impl DestinationKind {
    fn parse(dest: &DestinationConfig) -> Result<Self, String> {
        match dest {
            DestinationConfig::Rabbitmq(r) => Ok(DestinationKind::RabbitMq {
                exchange: r.exchange.clone(),
                routing_key: Template::parse(&r.routing_key)
                    .map_err(|e| format!("routing_key: {e}"))?,
                format: r.format,
            }),
            DestinationConfig::Kafka(k) => {
                let topic = Template::parse(&k.topic).map_err(|e| format!("topic: {e}"))?;
                if topic.is_empty() {
                    return Err("topic: must not be empty".to_owned());
                }
                let key = match k.key.as_deref() {
                    None => None,
                    Some(p) if p.starts_with('/') && !p.contains('{') => {
                        Some(KeyFrom::Pointer(p.to_owned()))
                    }
                    Some(t) => Some(KeyFrom::Template(
                        Template::parse(t).map_err(|e| format!("key: {e}"))?,
                    )),
                };
                if k.partition.is_some_and(|p| p < 0) {
                    return Err("partition: must be 0 or more".to_owned());
                }
                Ok(DestinationKind::Kafka { topic, key, partition: k.partition, format: k.format })
            }
        }
    }

    fn resolve(&self, event: &ValidatedEvent, body: &mut Body<'_>) -> Target {
        let (ty, source) = (event.event_type().as_str(), event.source().as_str());
        match self {
            DestinationKind::RabbitMq { exchange, routing_key, format } => Target::RabbitMq {
                exchange: exchange.clone(),
                routing_key: routing_key.render(ty, source, body, Values::Names),
                format: *format,
            },
            DestinationKind::Kafka { topic, key, partition, format } => {
                let key = match key {
                    None => None,
                    Some(KeyFrom::Pointer(p)) => body.get().pointer(p).and_then(key_bytes),
                    Some(KeyFrom::Template(t)) => {
                        Some(t.render(ty, source, body, Values::Raw).into_bytes())
                    }
                };
                Target::Kafka {
                    topic: topic.render(ty, source, body, Values::Names),
                    key,
                    partition: *partition,
                    format: *format,
                }
            }
        }
    }
}

/// The record key for a JSON value: strings as their text, null as no key, the rest as JSON.
fn key_bytes(value: &serde_json::Value) -> Option<Vec<u8>> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}
