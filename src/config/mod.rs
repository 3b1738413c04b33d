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
pub use reload::{ConfigStatus, Reloader, SharedStatus, initial_status, parent_dir, watch_paths};
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
    /// How long an idempotency key is remembered: a repeat within it is answered as a
    /// duplicate and not published again.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: HumanDuration,
    /// redb's quick repair: every commit also saves the allocator state, so opening the file
    /// after a crash takes milliseconds instead of a walk over the whole file (docs/benchmarks.md
    /// has what it costs in ingest throughput).
    #[serde(default)]
    pub quick_repair: bool,
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

/// `sources:`: the name `default` serves `POST /api/events/{event_type}`; every other name
/// serves `POST /hooks/{name}`.
pub type SourcesConfig = BTreeMap<String, SourceConfig>;

/// The generic endpoint's source name.
pub const DEFAULT_SOURCE: &str = "default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Accepted `X-API-Key` values: plaintext, or `sha256:<64 hex digits>` (the SHA-256 of the
    /// key) so the file holds no plaintext. Several, so a new key can be rolled out before the
    /// old one is removed.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Signature verification instead of API keys.
    pub verify: Option<VerifyConfig>,
    /// Where the event type comes from (`/hooks/{source}` only; the generic endpoint takes it
    /// from the path).
    pub event_type: Option<EventTypeFrom>,
    /// Where the idempotency key comes from. Default: `Idempotency-Key` on the generic
    /// endpoint, the scheme's delivery id for signed sources (see docs/security.md).
    pub idempotency_key: Option<ValueFrom>,
    /// Overrides `server.max_body_bytes` for this source.
    pub max_body_bytes: Option<ByteSize>,
    /// Token bucket: per API key on key-authenticated sources, per source otherwise.
    pub rate_limit: Option<RateLimitConfig>,
    /// Request headers stored with the event and published with it as metadata.
    #[serde(default)]
    pub keep_headers: Vec<String>,
    /// mTLS: accept only clients whose certificate subject carries every attribute of one of
    /// these (`CN=billing` or `CN=billing,O=Acme`). Needs `server.tls.client_ca`.
    #[serde(default)]
    pub client_subjects: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum EventTypeFrom {
    /// A request header's value.
    Header(String),
    /// A JSON pointer to a string in the body.
    Pointer(String),
    /// Always this type.
    Fixed(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ValueFrom {
    Header(String),
    Pointer(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: std::num::NonZeroU32,
    /// Requests allowed at once above the sustained rate (default: `per_second`).
    pub burst: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    pub scheme: SignatureScheme,
    /// One secret; `secrets` takes several (rotation: add the new one, then remove the old).
    pub secret: Option<Secret>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between the signed timestamp and now (schemes with one).
    #[serde(default = "default_tolerance")]
    pub tolerance: HumanDuration,
    /// `hmac-sha256` only: the header holding the signature.
    pub header: Option<String>,
    /// `hmac-sha256` only: `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// `hmac-sha256` only: text before the signature in the header, e.g. `sha256=`.
    pub prefix: Option<String>,
}

impl VerifyConfig {
    pub fn all_secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secret.iter().chain(&self.secrets)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    HmacSha256,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
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

/// How an event is laid out in a broker message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// CloudEvents binary mode: the body byte for byte, attributes as `ce_*` headers.
    #[default]
    Binary,
    /// CloudEvents structured mode: `application/cloudevents+json` with the body as `data`.
    Cloudevents,
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
fn default_tolerance() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_dedup_window() -> HumanDuration {
    HumanDuration::from_secs(72 * 3600)
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

impl SourceConfig {
    fn check(&self, name: &str, problems: &mut Vec<String>) {
        let at = format!("sources.{name}");
        let generic = name == DEFAULT_SOURCE;
        if crate::event::SourceName::parse(name).is_err() {
            problems.push(format!("{at}: a source name must be 1 to 128 of A-Z a-z 0-9 . _ - :"));
        }
        match (&self.verify, self.api_keys.is_empty()) {
            (None, true) => problems.push(format!("{at}: set api_keys or verify")),
            (Some(_), false) => {
                problems.push(format!("{at}: set api_keys or verify, not both"));
            }
            (Some(_), true) if generic => {
                problems.push(format!("{at}: the generic endpoint takes api_keys only"));
            }
            _ => {}
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            if let Err(e) = crate::ingest::auth::ApiKeys::parse_one(key) {
                problems.push(format!("{at}.api_keys[{i}]: {e}"));
            }
        }
        if let Some(verify) = &self.verify
            && let Err(e) = crate::ingest::signature::Verifier::from_config(verify)
        {
            problems.push(format!("{at}.verify: {e}"));
        }
        match (&self.event_type, generic) {
            (Some(_), true) => problems.push(format!(
                "{at}.event_type: the generic endpoint takes the type from the URL path"
            )),
            (None, false) => {
                problems.push(format!("{at}.event_type: required (header, pointer or fixed)"))
            }
            (Some(EventTypeFrom::Fixed(t)), false)
                if crate::event::EventType::parse(t).is_err() =>
            {
                problems.push(format!("{at}.event_type.fixed: not a valid event type"));
            }
            (Some(EventTypeFrom::Header(h)), false) if !is_header_name(h) => {
                problems.push(format!("{at}.event_type.header: not a header name"));
            }
            (Some(EventTypeFrom::Pointer(p)), false) if !is_pointer(p) => {
                problems.push(format!("{at}.event_type.pointer: must start with /"));
            }
            _ => {}
        }
        match &self.idempotency_key {
            Some(ValueFrom::Header(h)) if !is_header_name(h) => {
                problems.push(format!("{at}.idempotency_key.header: not a header name"));
            }
            Some(ValueFrom::Pointer(p)) if !is_pointer(p) => {
                problems.push(format!("{at}.idempotency_key.pointer: must start with /"));
            }
            _ => {}
        }
        for h in &self.keep_headers {
            let lower = h.to_ascii_lowercase();
            if !is_header_name(h) {
                problems.push(format!("{at}.keep_headers: {h:?} is not a header name"));
            } else if lower.starts_with("ce_") || lower == "content-type" {
                problems.push(format!(
                    "{at}.keep_headers: {h:?} would clash with the CloudEvents headers"
                ));
            }
        }
        for subject in &self.client_subjects {
            if let Err(e) = crate::server::client_cert::SubjectPattern::parse(subject) {
                problems.push(format!("{at}.client_subjects: {e}"));
            }
        }
        if self.max_body_bytes.is_some_and(|b| b.as_u64() == 0) {
            problems.push(format!("{at}.max_body_bytes: must be at least 1 byte"));
        }
    }
}

fn is_header_name(name: &str) -> bool {
    axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

fn is_pointer(pointer: &str) -> bool {
    pointer.starts_with('/')
}

impl Config {
    /// Checks that need more than one field: every route names a configured broker, templates
    /// and pointers parse, limits are positive. Returns every problem, not just the first.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.sources.is_empty() {
            problems.push("sources: at least one source is required".to_owned());
        }
        for (name, source) in &self.sources {
            source.check(name, &mut problems);
            let has_client_ca = self.server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            if !source.client_subjects.is_empty() && !has_client_ca {
                problems.push(format!(
                    "sources.{name}.client_subjects: needs server.tls.client_ca (client certificates)"
                ));
            }
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
        if self.server.listen_backlog == 0 {
            problems.push("server.listen_backlog: must be at least 1".to_owned());
        }
        if self.server.max_connections == 0 {
            problems.push("server.max_connections: must be at least 1".to_owned());
        }
        let t = &self.server.timeouts;
        for (name, d) in [
            ("tls_handshake", t.tls_handshake),
            ("header_read", t.header_read),
            ("body_read", t.body_read),
            ("idle", t.idle),
        ] {
            if d.get().is_zero() {
                problems.push(format!("server.timeouts.{name}: must be longer than 0s"));
            }
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
