//! The configuration model: one YAML file, the key names of ARCHITECTURE.md's config contract.
//!
//! Every struct rejects unknown keys, so a typo is an error that names the key, not a setting
//! silently ignored. [`load`] reads the file, applies `ORCHESTRON_` environment overrides and
//! resolves secret references; [`Config::check`] runs the checks serde cannot express.

mod load;
mod reload;
mod secret;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

pub use load::{ConfigError, load, load_str};
pub use reload::{ConfigStatus, Reloader, SharedStatus, initial_status};
pub use secret::Secret;
pub use units::HumanDuration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub brokers: BrokersConfig,
    pub sources: SourcesConfig,
    #[serde(default)]
    pub schemas: SchemasConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub default_route: Option<DefaultRouteConfig>,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub dlq: DlqConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// SHA-256 (hex, first 16 digits) of the file text and the overrides applied: which
    /// configuration is running (the `orchestron_config_info` metric).
    #[serde(skip)]
    pub fingerprint: String,
    /// The file this was loaded from (`None` for text loaded directly): SIGHUP reloads it.
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`; `--log-format` overrides it. The filter is `RUST_LOG` (default info).
    #[serde(default)]
    pub format: crate::telemetry::LogFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Which listener serves `GET /metrics`.
    #[serde(default)]
    pub listener: MetricsListener,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsListener {
    /// The ingest listener, without authentication (the default).
    #[default]
    Ingest,
    /// The admin listener, behind its bearer token.
    Admin,
}

/// The admin listener: DLQ, outbox and (later) config endpoints. Off without a token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// `Authorization: Bearer <token>`. Absent or empty: the admin API is off.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token: None }
    }
}

impl AdminConfig {
    /// The token, if the admin API is on.
    pub fn enabled_token(&self) -> Option<&Secret> {
        self.token.as_ref().filter(|t| !t.expose().is_empty())
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Above this file size ingest answers 503 with `Retry-After` instead of accepting.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// redb's page cache. Capped so that resident memory does not grow with the backlog.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: ByteSize,
    /// Most events one group commit takes. `1` gives one fsync per request (a benchmark arm).
    #[serde(default = "default_commit_batch")]
    pub commit_batch_max: usize,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ExchangeType,
    #[serde(default = "default_true")]
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// Serves `POST /api/events/{event_type}`.
    pub default: DefaultSourceConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSourceConfig {
    /// Accepted `X-API-Key` values. Several, so a new key can be rolled out before the old one
    /// is removed.
    pub api_keys: Vec<Secret>,
}

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
    /// Template: `{type}` and `{source}` are replaced.
    #[serde(default)]
    pub routing_key: String,
    /// Overrides the route's and `relay`'s `max_attempts` for this destination.
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaDestinationConfig {
    /// Template: `{type}` and `{source}` are replaced.
    pub topic: String,
    /// JSON pointer into the body whose value becomes the record key (e.g. `/customer_id`).
    pub key: Option<String>,
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

fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_max_bytes() -> ByteSize {
    ByteSize::gib(8)
}
fn default_cache_bytes() -> ByteSize {
    ByteSize::mib(32)
}
fn default_commit_batch() -> usize {
    1024
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
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_true() -> bool {
    true
}
fn default_batch_size() -> usize {
    500
}
fn default_max_attempts() -> u32 {
    10
}

impl DestinationConfig {
    /// This destination's own retry overrides.
    pub fn retry(&self) -> (Option<u32>, Option<BackoffConfig>) {
        match self {
            DestinationConfig::Rabbitmq(r) => (r.max_attempts, r.backoff),
            DestinationConfig::Kafka(k) => (k.max_attempts, k.backoff),
        }
    }
}

impl Config {
    /// Checks that need more than one field: every route names a configured broker, templates
    /// and pointers parse, limits are positive. Returns every problem, not just the first.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.sources.default.api_keys.is_empty() {
            problems.push("sources.default.api_keys: at least one key is required".to_owned());
        }
        if self.sources.default.api_keys.iter().any(|k| k.expose().is_empty()) {
            problems.push("sources.default.api_keys: a key is empty".to_owned());
        }
        if self.relay.batch_size == 0 {
            problems.push("relay.batch_size: must be at least 1".to_owned());
        }
        if self.relay.max_attempts == 0 {
            problems.push("relay.max_attempts: must be at least 1".to_owned());
        }
        let backoffs = std::iter::once(("relay.backoff".to_owned(), Some(self.relay.backoff)))
            .chain(self.routes.iter().enumerate().flat_map(|(i, r)| {
                let own = (format!("routes[{i}].backoff"), r.backoff);
                let dests =
                    r.to.iter()
                        .enumerate()
                        .map(move |(j, d)| (format!("routes[{i}].to[{j}].backoff"), d.retry().1));
                std::iter::once(own).chain(dests)
            }));
        for (at, backoff) in backoffs {
            if backoff.is_some_and(|b| b.initial.get() > b.max.get()) {
                problems.push(format!("{at}: initial is longer than max"));
            }
        }
        if self.metrics.listener == MetricsListener::Admin && self.admin.enabled_token().is_none() {
            problems
                .push("metrics.listener: admin needs admin.token (the admin API is off)".into());
        }
        let dlq_copy = self.dlq.publish_to.as_ref();
        if let Some(Err(e)) = dlq_copy.map(|d| crate::routing::Target::check(d, &self.brokers)) {
            problems.push(format!("dlq.publish_to: {e}"));
        }
        if self.store.commit_batch_max == 0 {
            problems.push("store.commit_batch_max: must be at least 1".to_owned());
        }
        if self.brokers.rabbitmq.as_ref().is_some_and(|r| r.max_unconfirmed == 0) {
            problems.push("brokers.rabbitmq.max_unconfirmed: must be at least 1".to_owned());
        }
        let routes = self.routes.iter().enumerate().map(|(i, r)| (format!("routes[{i}]"), &r.to));
        let default = self.default_route.iter().map(|d| ("default_route".to_owned(), &d.to));
        for (at, to) in routes.chain(default) {
            if to.is_empty() {
                problems.push(format!("{at}.to: names no destination"));
            }
            for (j, dest) in to.iter().enumerate() {
                let at = format!("{at}.to[{j}]");
                if let Err(e) = crate::routing::Target::check(dest, &self.brokers) {
                    problems.push(format!("{at}: {e}"));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}
