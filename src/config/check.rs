//! Checks on the configuration data that serde cannot express: values in range, settings that
//! need each other, every destination on a configured broker. They look at the data alone;
//! what needs compiling (keys, signature secrets, templates, schemas) is checked when the
//! running configuration is built from it, in the same pass (`live::LiveConfig::build`).

use super::{
    Config, DEFAULT_SOURCE, DestinationConfig, EventTypeFrom, MetricsListener, Problem,
    SourceConfig, ValueFrom,
};
use crate::event::{EventType, SourceName};

/// The admin token guards every event and the DLQ: shorter ones can be guessed.
const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// Tokens that appear in this repository's configs and docs, now or in earlier releases: a
/// copied example is no secret.
const EXAMPLE_TOKENS: &[&str] = &[
    "dev-admin-token",
    "test-admin-token",
    "change-me",
    "changeme",
    "0000000000000000000000000000000000000000000000000000000000000000",
];

impl Config {
    /// Every problem of the data, not just the first.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: &str, message: &str| problems.push(Problem::new(at, message));
        if self.sources.is_empty() {
            problem("sources", "at least one source is required");
        }
        let has_client_ca = self.server.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        for (name, source) in &self.sources {
            for (at, message) in source.check(name) {
                problem(&at, &message);
            }
            if !source.client_subjects.is_empty() && !has_client_ca {
                let at = format!("sources.{name}.client_subjects");
                problem(&at, "needs server.tls.client_ca (client certificates)");
            }
        }
        if self.relay.batch_size == 0 {
            problem("relay.batch_size", "must be at least 1");
        }
        if self.relay.max_attempts == 0 {
            problem("relay.max_attempts", "must be at least 1");
        }
        for (at, backoff) in self.backoffs() {
            if backoff.initial.get() > backoff.max.get() {
                problem(&at, "initial is longer than max");
            }
        }
        if let Some(token) = self.admin.enabled_token() {
            let token = token.expose();
            if EXAMPLE_TOKENS.contains(&token) {
                problem(
                    "admin.token",
                    "is an example value from the documentation: generate one (openssl rand -hex 32)",
                );
            } else if token.len() < MIN_ADMIN_TOKEN_BYTES {
                problem(
                    "admin.token",
                    &format!(
                        "must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (openssl rand -hex 32 makes 64)"
                    ),
                );
            }
        }
        if self.metrics.listener == MetricsListener::Admin && self.admin.enabled_token().is_none() {
            problem("metrics.listener", "admin needs admin.token (the admin API is off)");
        }
        if self.server.listen_backlog == 0 {
            problem("server.listen_backlog", "must be at least 1");
        }
        if self.server.max_connections == 0 {
            problem("server.max_connections", "must be at least 1");
        }
        let t = &self.server.timeouts;
        for (name, d) in [
            ("tls_handshake", t.tls_handshake),
            ("header_read", t.header_read),
            ("body_read", t.body_read),
            ("idle", t.idle),
        ] {
            if d.get().is_zero() {
                problem(&format!("server.timeouts.{name}"), "must be longer than 0s");
            }
        }
        if self.store.commit_batch_max == 0 {
            problem("store.commit_batch_max", "must be at least 1");
        }
        if self.brokers.rabbitmq.as_ref().is_some_and(|r| r.max_unconfirmed == 0) {
            problem("brokers.rabbitmq.max_unconfirmed", "must be at least 1");
        }
        for (at, to) in self.route_lists() {
            if to.is_empty() {
                problem(&format!("{at}.to"), "names no destination");
            }
            for (j, dest) in to.iter().enumerate() {
                if let Some(message) = self.unconfigured_broker(dest) {
                    problem(&format!("{at}.to[{j}]"), &message);
                }
            }
        }
        if let Some(message) =
            self.dlq.publish_to.as_ref().and_then(|d| self.unconfigured_broker(d))
        {
            problem("dlq.publish_to", &message);
        }
        if let Some(otlp) = &self.telemetry.otlp {
            for (at, message) in crate::telemetry::otlp::check(&otlp.options()) {
                problem(&format!("telemetry.otlp.{at}"), &message);
            }
        }
        if let Some(sync) = &self.sync {
            if sync.lease.get() < std::time::Duration::from_secs(3) {
                problem("sync.lease", "must be at least 3s (the heartbeat renews it every third)");
            }
            if !is_identifier(&sync.postgres.schema) {
                let message = "must be a lowercase SQL identifier ([a-z_][a-z0-9_]*)";
                problem("sync.postgres.schema", message);
            }
            if let Err(message) = sync.postgres.connection_url() {
                problem("sync.postgres.url", &message);
            }
            if sync.ack_timeout.get() < std::time::Duration::from_millis(100) {
                problem("sync.ack_timeout", "must be at least 100ms");
            }
            if sync.dedup_timeout.get() < std::time::Duration::from_millis(10) {
                problem("sync.dedup_timeout", "must be at least 10ms");
            }
            if sync.instance_id.as_deref().is_some_and(|id| SourceName::parse(id).is_err()) {
                problem("sync.instance_id", "must be 1 to 128 of A-Z a-z 0-9 . _ - :");
            }
        }
        problems
    }

    /// Every route's destination list with its key path, the default route's last.
    pub fn route_lists(&self) -> impl Iterator<Item = (String, &[DestinationConfig])> {
        let routes = self.routes.iter().enumerate().map(|(i, r)| (format!("routes[{i}]"), &r.to));
        let default = self.default_route.iter().map(|d| ("default_route".to_owned(), &d.to));
        routes.chain(default).map(|(at, to)| (at, to.as_slice()))
    }

    /// Every backoff setting with its key path.
    fn backoffs(&self) -> Vec<(String, super::BackoffConfig)> {
        let mut all = vec![("relay.backoff".to_owned(), self.relay.backoff)];
        for (i, r) in self.routes.iter().enumerate() {
            all.extend(r.backoff.map(|b| (format!("routes[{i}].backoff"), b)));
            for (j, d) in r.to.iter().enumerate() {
                all.extend(d.retry().1.map(|b| (format!("routes[{i}].to[{j}].backoff"), b)));
            }
        }
        all
    }

    /// Why `dest` cannot be published to: its broker is not under `brokers:`.
    fn unconfigured_broker(&self, dest: &DestinationConfig) -> Option<String> {
        let broker = dest.broker();
        let configured = match dest {
            DestinationConfig::Rabbitmq(_) => self.brokers.rabbitmq.is_some(),
            DestinationConfig::Kafka(_) => self.brokers.kafka.is_some(),
        };
        (!configured).then(|| {
            format!("names broker `{}`, which brokers: does not configure", broker.as_str())
        })
    }
}

impl SourceConfig {
    /// The data problems of source `name`, as (key path, message).
    fn check(&self, name: &str) -> Vec<(String, String)> {
        let at = format!("sources.{name}");
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: &str| {
            let path = if key.is_empty() { at.clone() } else { format!("{at}.{key}") };
            problems.push((path, message.to_owned()));
        };
        let generic = name == DEFAULT_SOURCE;
        if SourceName::parse(name).is_err() {
            problem("", "a source name must be 1 to 128 of A-Z a-z 0-9 . _ - :");
        }
        match (&self.verify, self.api_keys.is_empty()) {
            (None, true) => problem("", "set api_keys or verify"),
            (Some(_), false) => problem("", "set api_keys or verify, not both"),
            (Some(_), true) if generic => problem("", "the generic endpoint takes api_keys only"),
            _ => {}
        }
        match (&self.event_type, generic) {
            (Some(_), true) => {
                problem("event_type", "the generic endpoint takes the type from the URL path")
            }
            (None, false) => problem("event_type", "required (header, pointer or fixed)"),
            (Some(EventTypeFrom::Fixed(t)), false) if EventType::parse(t).is_err() => {
                problem("event_type.fixed", "not a valid event type")
            }
            (Some(EventTypeFrom::Header(h)), false) if !is_header_name(h) => {
                problem("event_type.header", "not a header name")
            }
            (Some(EventTypeFrom::Pointer(p)), false) if !is_pointer(p) => {
                problem("event_type.pointer", "must start with /")
            }
            _ => {}
        }
        match &self.idempotency_key {
            Some(ValueFrom::Header(h)) if !is_header_name(h) => {
                problem("idempotency_key.header", "not a header name")
            }
            Some(ValueFrom::Pointer(p)) if !is_pointer(p) => {
                problem("idempotency_key.pointer", "must start with /")
            }
            _ => {}
        }
        for h in &self.keep_headers {
            let lower = h.to_ascii_lowercase();
            if !is_header_name(h) {
                problem("keep_headers", &format!("{h:?} is not a header name"));
            } else if lower.starts_with("ce_") || lower == "content-type" {
                problem("keep_headers", &format!("{h:?} would clash with the CloudEvents headers"));
            }
        }
        if self.max_body_bytes.is_some_and(|b| b.as_u64() == 0) {
            problem("max_body_bytes", "must be at least 1 byte");
        }
        problems
    }
}

fn is_header_name(name: &str) -> bool {
    axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// A schema name that needs no quoting: `[a-z_][a-z0-9_]*`, at most 63 bytes.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_pointer(pointer: &str) -> bool {
    pointer.starts_with('/')
}

#[cfg(test)]
mod tests {
    use super::super::load_str;

    const MINIMAL: &str = "server:\n  listen: \"127.0.0.1:8080\"\nstore:\n  path: ./o.redb\nsources:\n  default:\n    api_keys: [\"k1\"]\n";

    #[test]
    fn routes_must_name_configured_brokers() {
        let text = format!(
            "{MINIMAL}routes:\n  - match: {{ type: \"order.*\" }}\n    to:\n      - kafka: {{ topic: orders }}\n"
        );
        let config = load_str("t.yaml".as_ref(), &text, &[]).unwrap();
        let problems = config.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].at, "routes[0].to[0]");
        assert!(problems[0].message.contains("kafka"), "{problems:?}");
        assert_eq!(config.source_map.line_of(&problems[0].at), Some(11));
        let ok = text
            .replace("sources:", "brokers:\n  kafka: { bootstrap_servers: \"x:9092\" }\nsources:");
        assert!(load_str("t.yaml".as_ref(), &ok, &[]).unwrap().check().is_empty());
    }

    #[test]
    fn the_admin_token_is_long_and_no_example() {
        let problems = |token: &str| {
            let text = format!("{MINIMAL}admin: {{ token: \"{token}\" }}\n");
            let problems = load_str("t.yaml".as_ref(), &text, &[]).unwrap().check();
            problems.into_iter().map(|p| format!("{}: {}", p.at, p.message)).collect::<Vec<_>>()
        };
        let short = problems("0123456789abcdef0123456789abcde");
        assert_eq!(short.len(), 1, "31 bytes: {short:?}");
        assert!(short[0].starts_with("admin.token: must be at least 32 bytes"), "{short:?}");
        assert!(problems("0123456789abcdef0123456789abcdef").is_empty(), "32 bytes");
        let example = problems(&"0".repeat(64));
        assert!(example[0].contains("example value"), "{example:?}");
        assert!(problems("dev-admin-token")[0].contains("example value"));
    }
}
