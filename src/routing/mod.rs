//! The route table: which destinations an event goes to.
//!
//! Routes are tried in order and the first whose `match` fits wins; `default_route` takes the
//! rest. The relay resolves an event's routes once, on its first claim, into concrete
//! [`Target`]s (templates rendered, Kafka key extracted) and stores them with the event, so
//! retries go to exactly the destinations that were chosen, whatever happens to the table.
//! (docs/configuration.md, "When routes change", has the whole rule.)

mod glob;
mod template;

use crate::config::{
    BackoffConfig, BodyMatchConfig, BrokersConfig, Config, DestinationConfig, MessageFormat,
};
use crate::event::{EventType, SourceName, ValidatedEvent};
use crate::store::RetryOverride;

use glob::Glob;
use template::{Template, Values};

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
    RabbitMq { exchange: String, routing_key: String, format: MessageFormat },
    Kafka { topic: String, key: Option<Vec<u8>>, partition: Option<i32>, format: MessageFormat },
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
            Target::RabbitMq { exchange, routing_key, .. } => {
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

    pub fn format(&self) -> MessageFormat {
        match self {
            Target::RabbitMq { format, .. } | Target::Kafka { format, .. } => *format,
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

    fn resolve(&self, event: &ValidatedEvent, body: &mut Body<'_>) -> Target {
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
    /// Lowercase header name and the glob its value must match.
    headers: Vec<(String, Glob)>,
    to: Vec<Destination>,
    continue_matching: bool,
}

impl Route {
    fn matches(&self, source: &SourceName, ty: &EventType, body: &mut Body<'_>) -> bool {
        self.source.as_ref().is_none_or(|g| g.matches(source.as_str()))
            && self.event_type.as_ref().is_none_or(|g| g.matches(ty.as_str()))
            && self
                .headers
                .iter()
                .all(|(name, glob)| body.headers.iter().any(|(n, v)| n == name && glob.matches(v)))
            && (self.body.is_empty() || {
                let value = body.get();
                self.body.iter().all(|m| m.holds(value))
            })
    }
}

/// What routes look at besides source and type: the body, parsed at most once and only if a
/// route or destination looks inside it, and the event's kept headers.
pub struct Body<'a> {
    raw: &'a [u8],
    parsed: Option<serde_json::Value>,
    headers: &'a [(String, String)],
}

impl<'a> Body<'a> {
    pub fn raw(raw: &'a [u8]) -> Self {
        Self { raw, parsed: None, headers: &[] }
    }

    pub fn parsed(value: serde_json::Value) -> Self {
        Self { raw: &[], parsed: Some(value), headers: &[] }
    }

    /// The request headers kept with the event (lowercase names), for header matches.
    pub fn with_headers(mut self, headers: &'a [(String, String)]) -> Self {
        self.headers = headers;
        self
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
    /// Lowercase names of the headers some route matches on (computed once, read per request).
    matched_headers: Vec<String>,
    default: Option<Vec<Destination>>,
    dlq_copy: Option<Destination>,
}

impl RouteTable {
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let parse_all = |to: &[DestinationConfig], retry| -> Result<Vec<Destination>, String> {
            to.iter().map(|d| Destination::with_route(d, retry)).collect()
        };
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    source: r.matches.source.as_deref().map(Glob::new),
                    event_type: r.matches.event_type.as_deref().map(Glob::new),
                    body: r.matches.body.iter().map(BodyMatch::parse).collect::<Result<_, _>>()?,
                    headers: r
                        .matches
                        .headers
                        .iter()
                        .map(|(name, value)| {
                            axum::http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                                format!("match.headers: {name:?} is not a header name")
                            })?;
                            Ok((name.to_ascii_lowercase(), Glob::new(value)))
                        })
                        .collect::<Result<_, String>>()?,
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
        let mut matched_headers: Vec<String> =
            routes.iter().flat_map(|r| r.headers.iter().map(|(n, _)| n.clone())).collect();
        matched_headers.sort_unstable();
        matched_headers.dedup();
        Ok(Self { routes, matched_headers, default, dlq_copy })
    }

    /// Where `dlq.publish_to` sends the copy of a dead-lettered event, if configured.
    pub fn dlq_copy_target(&self, event: &ValidatedEvent) -> Option<Target> {
        let mut body = Body::raw(event.body()).with_headers(event.headers());
        self.dlq_copy.as_ref().map(|d| d.resolve(event, &mut body))
    }

    /// The request headers some route matches on (lowercase): ingest keeps them with the
    /// event, so the relay can match them later.
    pub fn matched_headers(&self) -> &[String] {
        &self.matched_headers
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
        let mut view = Body::raw(event.body()).with_headers(event.headers());
        let destinations = self.destinations(event.source(), event.event_type(), &mut view);
        let mut targets: Vec<Resolved> = Vec::with_capacity(destinations.len());
        for d in destinations {
            let target = d.resolve(event, &mut view);
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
            vec![rabbit("orders", "default.order.created"), kafka("t-order.created", Some(b"42")),]
        );
        let other: Vec<Target> =
            t.resolve(&event("user.deleted", "{}")).into_iter().map(|r| r.target).collect();
        assert_eq!(other, vec![rabbit("events", "user.deleted")]);
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
        assert_eq!(targets("{}"), vec![kafka("a", None)]);
        assert_eq!(targets(r#"{"k":"abc"}"#), vec![kafka("a", Some(b"abc"))]);
    }

    fn rabbit(exchange: &str, routing_key: &str) -> Target {
        Target::RabbitMq {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            format: MessageFormat::Binary,
        }
    }

    fn kafka(topic: &str, key: Option<&[u8]>) -> Target {
        Target::Kafka {
            topic: topic.into(),
            key: key.map(<[u8]>::to_vec),
            partition: None,
            format: MessageFormat::Binary,
        }
    }

    #[test]
    fn headers_pointer_templates_formats_and_partitions() {
        let t = table(concat!(
            "routes:\n",
            "  - match: { headers: { X-Tenant: \"acme-*\" } }\n",
            "    to:\n",
            "      - kafka: { topic: \"t.{/region}\", key: \"{source}:{/customer}\", partition: 2, format: cloudevents }\n",
            "default_route:\n",
            "  to: [ { rabbitmq: { exchange: e, routing_key: \"{type}.{/region}\" } } ]\n",
        ));
        assert_eq!(t.matched_headers(), ["x-tenant"]);
        let body = r#"{"region":"eu/1","customer":"c-9"}"#;
        let kept = vec![("x-tenant".to_owned(), "acme-prod".to_owned())];
        let tenant = event("a.b", body).with_headers(kept);
        let resolved: Vec<Target> = t.resolve(&tenant).into_iter().map(|r| r.target).collect();
        assert_eq!(
            resolved,
            vec![Target::Kafka {
                topic: "t.eu_1".into(),
                key: Some(b"default:c-9".to_vec()),
                partition: Some(2),
                format: MessageFormat::Cloudevents,
            }]
        );
        let other = event("a.b", body).with_headers(vec![("x-tenant".into(), "beta".into())]);
        let resolved: Vec<Target> = t.resolve(&other).into_iter().map(|r| r.target).collect();
        assert_eq!(resolved, vec![rabbit("e", "a.b.eu_1")]);
        let none: Vec<Target> =
            t.resolve(&event("a.b", body)).into_iter().map(|r| r.target).collect();
        assert_eq!(none, vec![rabbit("e", "a.b.eu_1")], "no header: no match");
    }
}
