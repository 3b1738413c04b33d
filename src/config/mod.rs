//! The configuration model: one YAML file, with the key names of the config contract
//! (docs/configuration.md lists every key, its default and whether it reloads).
//!
//! Plain data, one file per section. Every struct rejects unknown keys, so a typo is an error
//! that names the key, not a setting silently ignored. [`load`] reads the file, applies
//! `ORCHESTRON_` environment overrides and resolves secret references; [`Config::check`]
//! finds the problems of the data that serde cannot express; compiling what the data
//! describes (keys, signature schemes, routes, schemas) is `live`'s job, which reports its
//! problems together with these, each with its line ([`SourceMap`]).

mod brokers;
mod check;
mod exposure;
mod load;
mod problem;
mod routes;
mod secret;
mod server;
mod sources;
mod store;
mod sync;
mod units;

use std::net::SocketAddr;

use serde::Deserialize;

pub use brokers::{
    BrokerTlsConfig, BrokersConfig, ExchangeConfig, ExchangeType, KafkaConfig, KafkaSaslConfig,
    RabbitMqAuth, RabbitMqConfig, RabbitMqDeclareConfig, SaslMechanism,
};
pub use load::{ConfigError, load, load_str};
pub use problem::{Problem, SourceMap};
pub use routes::{
    BackoffConfig, BodyMatchConfig, DefaultRouteConfig, DestinationConfig, DlqConfig,
    KafkaDestinationConfig, MatchConfig, RabbitMqDestinationConfig, RelayConfig, RouteConfig,
    SchemasConfig,
};
pub use secret::Secret;
pub use server::{ServerConfig, TimeoutsConfig, TlsConfig, TlsVersion};
pub use sources::{
    DEFAULT_SOURCE, EventTypeFrom, RateLimitConfig, SignatureEncoding, SignatureScheme,
    SourceConfig, SourcesConfig, ValueFrom, VerifyConfig,
};
pub use store::StoreConfig;
pub use sync::{AckMode, PostgresConfig, SyncConfig};
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
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Fleet sync over PostgreSQL; absent: this instance stands alone.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
    /// SHA-256 (hex, first 16 digits) of the file text and the overrides applied: which
    /// configuration is running (the `orchestron_config_info` metric).
    #[serde(skip)]
    pub fingerprint: String,
    /// The file this was loaded from (`None` for text loaded directly): SIGHUP reloads it.
    #[serde(skip)]
    pub path: Option<std::path::PathBuf>,
    /// Where each key is in the file, for the messages of problems found after parsing.
    #[serde(skip)]
    pub source_map: SourceMap,
}

impl Config {
    /// The error reporting `problems`, each located in the file, in the order of the file.
    pub fn invalid(&self, mut problems: Vec<Problem>) -> ConfigError {
        self.source_map.locate(&mut problems);
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        ConfigError::Invalid { path: self.source_map.file.clone(), problems }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`; `--log-format` overrides it. The filter is `RUST_LOG` (default info).
    #[serde(default)]
    pub format: crate::telemetry::LogFormat,
}

/// Trace context (docs/monitoring.md, "Traces").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Start a W3C trace for a request that carries no valid `traceparent` (a valid one is
    /// always carried on).
    #[serde(default = "yes")]
    pub new_traces: bool,
    /// Span export over OTLP/HTTP (protobuf); absent: no spans are recorded.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { new_traces: true, otlp: None }
    }
}

/// `telemetry.otlp`: where spans go (docs/monitoring.md, "Spans over OTLP").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://127.0.0.1:4318`): `/v1/traces` is appended unless
    /// the URL has a path of its own.
    pub endpoint: String,
    /// Share of traces recorded (0 to 1) among those whose sender did not record them; a
    /// trace the sender records (sampled flag set) is always recorded.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Request headers for the collector, e.g. an API key: `${env:...}` or `${file:...}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// Deadline of one export request.
    #[serde(default = "default_otlp_timeout")]
    pub timeout: HumanDuration,
}

impl OtlpConfig {
    /// The settings as the exporter takes them.
    pub fn options(&self) -> crate::telemetry::otlp::Options<'_> {
        crate::telemetry::otlp::Options {
            endpoint: &self.endpoint,
            sample_ratio: self.sample_ratio,
            headers: self.headers.iter().map(|(n, v)| (n.as_str(), v.expose())).collect(),
            timeout: self.timeout.get(),
        }
    }
}

fn one() -> f64 {
    1.0
}

fn default_otlp_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn yes() -> bool {
    true
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

/// The admin listener: DLQ, outbox, config and schema endpoints. Off without a token.
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

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
