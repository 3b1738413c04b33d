//! The running configuration: what a request or a relay pass reads, built from [`Config`]
//! and swapped whole on reload ([`reload`]).
//!
//! [`LiveConfig::build`] is the one place where a configuration is judged: it runs the data
//! checks of [`Config::check`] and compiles every section that can still fail (sources and
//! their keys and secrets, routes and their templates, schemas), collecting every problem in
//! one pass, each with its file and line. `check-config`, start-up and reload all run it.

pub mod reload;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{BrokersConfig, Config, ConfigError, Problem};
use crate::publish::kafka::KafkaPublisher;
use crate::publish::rabbitmq::RabbitMqPublisher;
use crate::routing::{RelayPolicy, RouteTable};
use crate::sources::Sources;
use crate::validate::SchemaRegistry;

pub use reload::{ConfigStatus, Reloader, SharedStatus, initial_status};

/// The settings a request or a relay pass reads, as one immutable snapshot.
pub struct LiveConfig {
    pub routes: RouteTable,
    pub schemas: SchemaRegistry,
    pub sources: Sources,
    pub body_read_timeout: Duration,
    pub dedup_window: Duration,
    pub relay: RelayPolicy,
    /// `telemetry.new_traces`.
    pub new_traces: bool,
    /// `telemetry.otlp`: spans are recorded only while it is set.
    pub otlp: Option<Arc<crate::telemetry::otlp::Settings>>,
}

impl LiveConfig {
    /// Checks `config` and compiles what it describes; every problem found is reported.
    pub fn build(config: &Config) -> Result<Self, ConfigError> {
        let mut problems = config.check();
        let mut keep = |found: Vec<Problem>| problems.extend(found);
        let routes = RouteTable::from_config(config).map_err(&mut keep).ok();
        let sources = Sources::from_config(config).map_err(&mut keep).ok();
        let schemas = SchemaRegistry::load(config.schemas.dir.as_deref())
            .map_err(|e| keep(vec![Problem::new("schemas.dir", e.to_string())]))
            .ok();
        keep(broker_problems(&config.brokers));
        let otlp = match &config.telemetry.otlp {
            // `check` reported what would fail here.
            Some(otlp) => crate::telemetry::otlp::Settings::new(&otlp.options()).ok().map(Arc::new),
            None => None,
        };
        match (routes, sources, schemas) {
            (Some(routes), Some(sources), Some(schemas)) if problems.is_empty() => Ok(Self {
                routes,
                schemas,
                sources,
                body_read_timeout: config.server.timeouts.body_read.get(),
                dedup_window: config.store.dedup_window.get(),
                relay: RelayPolicy::from_config(&config.relay),
                new_traces: config.telemetry.new_traces,
                otlp,
            }),
            _ => Err(config.invalid(problems)),
        }
    }
}

/// What keeps a broker's connection settings from working: URLs, TLS files (a key that does
/// not match its certificate), Kafka options. Checked without connecting anywhere.
fn broker_problems(brokers: &BrokersConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(rabbitmq) = &brokers.rabbitmq
        && let Err(message) = RabbitMqPublisher::check(rabbitmq)
    {
        problems.push(Problem::new("brokers.rabbitmq", message));
    }
    if let Some(kafka) = &brokers.kafka
        && let Err(found) = KafkaPublisher::check(kafka)
    {
        let located =
            found.into_iter().map(|(at, m)| Problem::new(format!("brokers.kafka.{at}"), m));
        problems.extend(located);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_of_a_file_is_reported_with_its_line() {
        let text = "\
server:
  listen: \"127.0.0.1:0\"
store:
  path: ./o.redb
relay:
  batch_size: 0
brokers:
  kafka: { bootstrap_servers: \"127.0.0.1:9092\" }
sources:
  default:
    api_keys: [\"sha256:abc\"]
routes:
  - match: { type: \"a.*\" }
    to:
      - kafka: { topic: \"t.{nope}\" }
";
        let config = crate::config::load_str("bad.yaml".as_ref(), text, &[]).unwrap();
        let error = LiveConfig::build(&config).err().expect("three mistakes");
        let ConfigError::Invalid { problems, .. } = &error else { panic!("{error}") };
        let found: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.at.as_str(), p.line)).collect();
        for expected in [
            ("relay.batch_size", Some(6)),
            ("sources.default.api_keys[0]", Some(11)),
            ("routes[0].to[0]", Some(15)),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert_eq!(problems.len(), 3, "{found:?}");
        let text = error.to_string();
        assert!(text.contains("bad.yaml:6: relay.batch_size: must be at least 1"), "{text}");
        assert!(
            text.contains("bad.yaml:15: routes[0].to[0]: topic: unknown placeholder"),
            "{text}"
        );
    }
}
