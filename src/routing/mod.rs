//! The route table: which destinations an event goes to.
//!
//! Routes are tried in order and the first whose `match` fits wins; `default_route` takes the
//! rest. The relay resolves an event's routes once, on its first claim, into concrete
//! [`Target`]s (templates rendered, Kafka key extracted) and stores them with the event, so
//! retries go to exactly the destinations that were chosen, whatever happens to the table.

mod glob;
mod template;

use crate::config::{BackoffConfig, BodyMatchConfig, BrokersConfig, Config, DestinationConfig};
use crate::event::{EventType, SourceName, ValidatedEvent};
use crate::store::RetryOverride;

use glob::Glob;
use template::Template;

/// Which broker a target lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    RabbitMq,
    Kafka,
}

impl BrokerKind {
    pub const ALL: [BrokerKind; 2] = [BrokerKind::RabbitMq, BrokerKind::Kafka];

    /// The store's due-index lane for this broker (lane 0 is "not routed yet").
    pub fn lane(self) -> u8 {
        match self {
            BrokerKind::RabbitMq => 1,
            BrokerKind::Kafka => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::RabbitMq => "rabbitmq",
            BrokerKind::Kafka => "kafka",
        }
    }
}

/// A destination resolved for one event: everything a publisher needs, nothing left to render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    RabbitMq { exchange: String, routing_key: String },
    Kafka { topic: String, key: Option<Vec<u8>> },
}

impl Target {
    pub fn broker(&self) -> BrokerKind {
        match self {
            Target::RabbitMq { .. } => BrokerKind::RabbitMq,
            Target::Kafka { .. } => BrokerKind::Kafka,
        }
    }

    /// A short name for logs: `rabbitmq:orders/order.created`, `kafka:orders`.
    pub fn label(&self) -> String {
        match self {
            Target::RabbitMq { exchange, routing_key } => {
                format!("rabbitmq:{exchange}/{routing_key}")
            }
            Target::Kafka { topic, .. } => format!("kafka:{topic}"),
        }
    }

    /// A name for metrics when the configured one is unknown: the broker and the exchange
    /// (never templated) or topic.
    pub fn config_name(&self) -> String {
        match self {
            Target::RabbitMq { exchange, .. } => format!("rabbitmq:{exchange}"),
            Target::Kafka { topic, .. } => format!("kafka:{topic}"),
        }
    }

    /// Config-time check of one destination: its broker is configured, its templates parse.
    pub(crate) fn check(dest: &DestinationConfig, brokers: &BrokersConfig) -> Result<(), String> {
        Destination::parse(dest)?;
        let (kind, configured) = match dest {
            DestinationConfig::Rabbitmq(_) => (BrokerKind::RabbitMq, brokers.rabbitmq.is_some()),
            DestinationConfig::Kafka(_) => (BrokerKind::Kafka, brokers.kafka.is_some()),
        };
        if configured {
            Ok(())
        } else {
            Err(format!("names broker `{}`, which brokers: does not configure", kind.as_str()))
        }
    }
}

/// A destination as configured, templates parsed, retry overrides merged (destination over
/// route over nothing).
#[derive(Debug)]
struct Destination {
    kind: DestinationKind,
    retry: RetryOverride,
}

#[derive(Debug)]
enum DestinationKind {
    RabbitMq { exchange: String, routing_key: Template },
    Kafka { topic: Template, key_pointer: Option<String> },
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
    fn parse(dest: &DestinationConfig) -> Result<Self, String> {
        Self::with_route(dest, (None, None))
    }

    fn with_route(
        dest: &DestinationConfig,
        route: (Option<u32>, Option<BackoffConfig>),
    ) -> Result<Self, String> {
        let kind = DestinationKind::parse(dest)?;
        Ok(Self { kind, retry: merge_retry(route, dest.retry()) })
    }

    fn resolve(&self, event: &ValidatedEvent, body: &mut Option<serde_json::Value>) -> Target {
        self.kind.resolve(event, body)
    }

    /// The configured destination, templates unrendered: `rabbitmq:orders`, `kafka:t.{type}`.
    fn name(&self) -> String {
        match &self.kind {
            DestinationKind::RabbitMq { exchange, .. } => format!("rabbitmq:{exchange}"),
            DestinationKind::Kafka { topic, .. } => format!("kafka:{}", topic.source()),
        }
    }
}

/// A destination resolved for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    pub retry: RetryOverride,
    /// See [`Destination::name`]: a bounded metric label.
    pub name: String,
}

impl DestinationKind {
    fn parse(dest: &DestinationConfig) -> Result<Self, String> {
        match dest {
            DestinationConfig::Rabbitmq(r) => Ok(DestinationKind::RabbitMq {
                exchange: r.exchange.clone(),
                routing_key: Template::parse(&r.routing_key)
                    .map_err(|e| format!("routing_key: {e}"))?,
            }),
            DestinationConfig::Kafka(k) => {
                let topic = Template::parse(&k.topic).map_err(|e| format!("topic: {e}"))?;
                if topic.is_empty() {
                    return Err("topic: must not be empty".to_owned());
                }
                if let Some(p) = k.key.as_ref().filter(|p| !p.starts_with('/')) {
                    return Err(format!("key: {p:?} is not a JSON pointer (starts with '/')"));
                }
                Ok(DestinationKind::Kafka { topic, key_pointer: k.key.clone() })
            }
        }
    }

    fn resolve(&self, event: &ValidatedEvent, body: &mut Option<serde_json::Value>) -> Target {
        let (ty, source) = (event.event_type().as_str(), event.source().as_str());
        match self {
            DestinationKind::RabbitMq { exchange, routing_key } => Target::RabbitMq {
                exchange: exchange.clone(),
                routing_key: routing_key.render(ty, source),
            },
            DestinationKind::Kafka { topic, key_pointer } => {
                let key = key_pointer.as_deref().and_then(|pointer| {
                    // Parsed at most once per event, and only when some route wants a key.
                    let body = body.get_or_insert_with(|| {
                        serde_json::from_slice(event.body()).unwrap_or(serde_json::Value::Null)
                    });
                    key_bytes(body.pointer(pointer)?)
                });
                Target::Kafka { topic: topic.render(ty, source), key }
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

/// A condition on a body value.
#[derive(Debug)]
enum BodyMatch {
    Equals(String, serde_json::Value),
    OneOf(String, Vec<serde_json::Value>),
    Exists(String, bool),
}

impl BodyMatch {
    fn parse(c: &BodyMatchConfig) -> Result<Self, String> {
        if !c.pointer.starts_with('/') {
            return Err(format!("match.body: {:?} is not a JSON pointer", c.pointer));
        }
        let p = c.pointer.clone();
        match (&c.equals, &c.one_of, c.exists) {
            (Some(v), None, None) => Ok(BodyMatch::Equals(p, v.clone())),
            (None, Some(vs), None) => Ok(BodyMatch::OneOf(p, vs.clone())),
            (None, None, Some(e)) => Ok(BodyMatch::Exists(p, e)),
            _ => Err(format!(
                "match.body {:?}: give exactly one of equals, one_of, exists",
                c.pointer
            )),
        }
    }

    fn holds(&self, body: &serde_json::Value) -> bool {
        match self {
            BodyMatch::Equals(p, v) => body.pointer(p) == Some(v),
            BodyMatch::OneOf(p, vs) => body.pointer(p).is_some_and(|x| vs.contains(x)),
            BodyMatch::Exists(p, e) => body.pointer(p).is_some() == *e,
        }
    }
}

#[derive(Debug)]
struct Route {
    source: Option<Glob>,
    event_type: Option<Glob>,
    body: Vec<BodyMatch>,
    to: Vec<Destination>,
    continue_matching: bool,
}

impl Route {
    fn matches(&self, source: &SourceName, ty: &EventType, body: &mut Body<'_>) -> bool {
        self.source.as_ref().is_none_or(|g| g.matches(source.as_str()))
            && self.event_type.as_ref().is_none_or(|g| g.matches(ty.as_str()))
            && (self.body.is_empty() || {
                let value = body.get();
                self.body.iter().all(|m| m.holds(value))
            })
    }
}

/// An event body, parsed at most once and only if a route or destination looks inside it.
pub struct Body<'a> {
    raw: &'a [u8],
    parsed: Option<serde_json::Value>,
}

impl<'a> Body<'a> {
    pub fn raw(raw: &'a [u8]) -> Self {
        Self { raw, parsed: None }
    }

    pub fn parsed(value: serde_json::Value) -> Self {
        Self { raw: &[], parsed: Some(value) }
    }

    fn get(&mut self) -> &serde_json::Value {
        let raw = self.raw;
        self.parsed.get_or_insert_with(|| serde_json::from_slice(raw).unwrap_or_default())
    }
}

/// An immutable snapshot of the routes; the relay and ingest read one snapshot per use.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    default: Option<Vec<Destination>>,
    dlq_copy: Option<Destination>,
}

impl RouteTable {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let parse_all = |to: &[DestinationConfig], retry| -> Result<Vec<Destination>, String> {
            to.iter().map(|d| Destination::with_route(d, retry)).collect()
        };
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    source: r.matches.source.as_deref().map(Glob::new),
                    event_type: r.matches.event_type.as_deref().map(Glob::new),
                    body: r.matches.body.iter().map(BodyMatch::parse).collect::<Result<_, _>>()?,
                    to: parse_all(&r.to, (r.max_attempts, r.backoff))?,
                    continue_matching: r.continue_matching,
                })
            })
            .collect::<Result<_, String>>()?;
        let default = config
            .default_route
            .as_ref()
            .map(|d| parse_all(&d.to, (d.max_attempts, d.backoff)))
            .transpose()?;
        let dlq_copy = config.dlq.publish_to.as_ref().map(Destination::parse).transpose()?;
        Ok(Self { routes, default, dlq_copy })
    }

    /// Where `dlq.publish_to` sends the copy of a dead-lettered event, if configured.
    pub fn dlq_copy_target(&self, event: &ValidatedEvent) -> Option<Target> {
        self.dlq_copy.as_ref().map(|d| d.resolve(event, &mut None))
    }

    /// The destinations of every matching route, in order: the first match ends the search
    /// unless it says `continue: true`. The default route only if nothing matched.
    fn destinations(
        &self,
        source: &SourceName,
        ty: &EventType,
        body: &mut Body<'_>,
    ) -> Vec<&Destination> {
        let mut found = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            if route.matches(source, ty, body) {
                matched = true;
                found.extend(route.to.iter());
                if !route.continue_matching {
                    break;
                }
            }
        }
        if !matched {
            found.extend(self.default.iter().flatten());
        }
        found
    }

    /// Whether an event would go anywhere. Ingest refuses events that would not, rather than
    /// accepting them into a void.
    pub fn is_routable(&self, source: &SourceName, ty: &EventType, body: &mut Body<'_>) -> bool {
        !self.destinations(source, ty, body).is_empty()
    }

    /// The concrete targets of `event` with their retry overrides; empty when nothing
    /// matches.
    pub fn resolve(&self, event: &ValidatedEvent) -> Vec<Resolved> {
        let mut view = Body::raw(event.body());
        let destinations = self.destinations(event.source(), event.event_type(), &mut view);
        let mut body = view.parsed.take();
        let mut targets: Vec<Resolved> = Vec::with_capacity(destinations.len());
        for d in destinations {
            let target = d.resolve(event, &mut body);
            // Destinations rendering to the same target are one delivery, not two.
            if !targets.iter().any(|r| r.target == target) {
                targets.push(Resolved { target, retry: d.retry, name: d.name() });
            }
        }
        targets
    }

    /// The brokers some route or the default route sends to (what `/ready` checks).
    pub fn brokers_used(&self) -> Vec<BrokerKind> {
        let all = self.routes.iter().flat_map(|r| r.to.iter()).chain(self.default.iter().flatten());
        let mut used: Vec<BrokerKind> = all
            .map(|d| match d.kind {
                DestinationKind::RabbitMq { .. } => BrokerKind::RabbitMq,
                DestinationKind::Kafka { .. } => BrokerKind::Kafka,
            })
            .collect();
        used.sort();
        used.dedup();
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    fn table(yaml_routes: &str) -> RouteTable {
        let text = format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\nstore: {{ path: x }}\n\
             brokers:\n  rabbitmq: {{ url: \"amqp://x\" }}\n  kafka: {{ bootstrap_servers: x }}\n\
             sources: {{ default: {{ api_keys: [k] }} }}\n{yaml_routes}"
        );
        let config = crate::config::load_str("t.yaml".as_ref(), &text, &[]).unwrap();
        RouteTable::from_config(&config).unwrap()
    }

    fn event(ty: &str, body: &str) -> ValidatedEvent {
        ValidatedEvent::new(
            EventId::new(),
            SourceName::parse("default").unwrap(),
            EventType::parse(ty).unwrap(),
            0,
            body.to_owned().into(),
        )
    }

    #[test]
    fn first_match_wins_then_default() {
        let t = table(
            "routes:\n  - match: { type: \"order.*\" }\n    to:\n      - rabbitmq: { exchange: orders, routing_key: \"{source}.{type}\" }\n      - kafka: { topic: \"t-{type}\", key: /customer_id }\n  - match: { type: \"order.created\" }\n    to: [ { kafka: { topic: never } } ]\ndefault_route:\n  to: [ { rabbitmq: { exchange: events, routing_key: \"{type}\" } } ]\n",
        );
        let resolved = t.resolve(&event("order.created", r#"{"customer_id": 42}"#));
        let targets: Vec<Target> = resolved.iter().map(|r| r.target.clone()).collect();
        assert_eq!(resolved[1].name, "kafka:t-{type}");
        assert_eq!(
            targets,
            vec![
                Target::RabbitMq {
                    exchange: "orders".into(),
                    routing_key: "default.order.created".into()
                },
                Target::Kafka { topic: "t-order.created".into(), key: Some(b"42".to_vec()) },
            ]
        );
        let other: Vec<Target> =
            t.resolve(&event("user.deleted", "{}")).into_iter().map(|r| r.target).collect();
        assert_eq!(
            other,
            vec![Target::RabbitMq {
                exchange: "events".into(),
                routing_key: "user.deleted".into()
            }]
        );
    }

    #[test]
    fn continue_fans_out_and_body_values_select_routes() {
        let t = table(
            "routes:\n\
             \x20 - match: { type: \"order.*\" }\n    continue: true\n    to: [ { kafka: { topic: audit } } ]\n\
             \x20 - match: { body: [ { pointer: /tier, equals: gold } ] }\n    to: [ { rabbitmq: { exchange: vip } } ]\n\
             \x20 - match: { body: [ { pointer: /region, one_of: [eu, uk] }, { pointer: /test, exists: false } ] }\n    to: [ { rabbitmq: { exchange: europe } } ]\n\
             default_route:\n  to: [ { rabbitmq: { exchange: other } } ]\n",
        );
        let names = |ty: &str, body: &str| -> Vec<String> {
            t.resolve(&event(ty, body)).into_iter().map(|r| r.target.config_name()).collect()
        };
        assert_eq!(names("order.created", r#"{"tier":"gold"}"#), ["kafka:audit", "rabbitmq:vip"]);
        assert_eq!(names("order.created", r#"{"tier":"silver"}"#), ["kafka:audit"]);
        assert_eq!(names("user.created", r#"{"region":"uk"}"#), ["rabbitmq:europe"]);
        assert_eq!(names("user.created", r#"{"region":"uk","test":1}"#), ["rabbitmq:other"]);
        assert_eq!(names("user.created", "{}"), ["rabbitmq:other"]);
        let bad = "routes:\n  - match: { body: [ { pointer: /a, equals: 1, exists: true } ] }\n    to: [ { kafka: { topic: t } } ]\n";
        let text = format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\nstore: {{ path: x }}\n\
             brokers:\n  kafka: {{ bootstrap_servers: x }}\n\
             sources: {{ default: {{ api_keys: [k] }} }}\n{bad}"
        );
        let config = crate::config::load_str("t.yaml".as_ref(), &text, &[]).unwrap();
        assert!(RouteTable::from_config(&config).unwrap_err().contains("exactly one"));
    }

    #[test]
    fn retry_overrides_merge_destination_over_route() {
        let t = table(
            "routes:\n  - match: { type: \"a\" }\n    max_attempts: 3\n    backoff: { initial: 1s, max: 2s }\n    to:\n      - kafka: { topic: a, max_attempts: 7 }\n      - rabbitmq: { exchange: e }\n",
        );
        let resolved = t.resolve(&event("a", "{}"));
        assert_eq!(resolved[0].retry.max_attempts, Some(7));
        assert_eq!(resolved[0].retry.backoff_ms, Some((1000, 2000)));
        assert_eq!(resolved[1].retry.max_attempts, Some(3));
    }

    #[test]
    fn without_default_unmatched_is_unroutable() {
        let t = table(
            "routes:\n  - match: { type: \"a.*\" }\n    to: [ { kafka: { topic: a, key: /k } } ]\n",
        );
        let src = SourceName::parse("default").unwrap();
        let mut body = Body::raw(b"{}");
        assert!(t.is_routable(&src, &EventType::parse("a.b").unwrap(), &mut body));
        assert!(!t.is_routable(&src, &EventType::parse("b.a").unwrap(), &mut body));
        // A missing key is no key, not an error.
        let targets = |body| -> Vec<Target> {
            t.resolve(&event("a.b", body)).into_iter().map(|r| r.target).collect()
        };
        assert_eq!(targets("{}"), vec![Target::Kafka { topic: "a".into(), key: None }]);
        assert_eq!(
            targets(r#"{"k":"abc"}"#),
            vec![Target::Kafka { topic: "a".into(), key: Some(b"abc".to_vec()) }]
        );
    }
}
