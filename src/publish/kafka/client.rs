//! The librdkafka settings of the producer, from `brokers.kafka`: TLS (`SSL`, with OpenSSL
//! from the same files as RabbitMQ's rustls), SASL (`PLAIN`, `SCRAM-SHA-256/512`), the
//! operator's `options`, and ours, which the delivery guarantee rests on and which cannot be
//! overridden. Every key is checked by librdkafka itself when the config is loaded, so an
//! unknown one is refused by `check-config` and by a reload, not at the first publish.
//!
//! The [`Context`] turns librdkafka's log lines and errors into the broker's state: its own
//! lines go to `debug` (it logs every failed reconnect, several times), and errors are sorted
//! into a reason (`network`, `tls`, `auth`) for `/ready`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sha2::{Digest, Sha256};

use crate::config::KafkaConfig;
use crate::publish::health::Trouble;
use crate::publish::tls::TlsMaterial;

/// Set by us, last, whatever `options` says: the delivery guarantee rests on them.
const GUARANTEED: [&str; 3] = ["enable.idempotence", "acks", "request.required.acks"];
/// Set from the `tls` and `sasl` sections.
const FROM_SECTIONS: [&str; 12] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
];
/// The most requests in flight per connection that keep the idempotent producer's order.
const MAX_IN_FLIGHT: u32 = 5;

/// The producer's settings and what they depend on.
pub(super) struct ClientSettings {
    pub config: ClientConfig,
    /// Over every setting, secrets and TLS file contents included: a reload recreates the
    /// producer only when it changed.
    pub fingerprint: [u8; 32],
}

impl ClientSettings {
    /// Builds and checks the settings; each problem is (key path under `brokers.kafka`,
    /// message), and no message holds a secret.
    pub fn from_config(config: &KafkaConfig) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.bootstrap_servers);
        c.set("client.id", "orchestron");
        c.set("linger.ms", "5");
        // librdkafka doubles its reconnect backoff up to 10 s by default, so a broker back
        // after a long outage was found seconds late; capped (options may still override).
        c.set("reconnect.backoff.ms", "100");
        c.set("reconnect.backoff.max.ms", "500");
        let deadline_ms = config.message_timeout.get().as_millis() as u64;
        for (key, value) in &config.options {
            if let Some(message) = refusal(key, value, deadline_ms) {
                problems.push((format!("options.{key}"), message));
            } else {
                c.set(key, value);
            }
        }
        let mut hash = Sha256::new();
        let protocol = match (&config.tls, &config.sasl) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        c.set("security.protocol", protocol);
        if let Some(tls) = &config.tls {
            if tls.server_name.is_some() {
                let message = "not supported for Kafka (librdkafka verifies the broker's name)";
                problems.push(("tls.server_name".into(), message.into()));
            }
            match TlsMaterial::read(tls) {
                Ok(material) => hash.update(material.fingerprint),
                Err(e) => problems.push(("tls".into(), e)),
            }
            // Without a CA file, librdkafka looks for the system's trust store itself (its
            // OpenSSL is built in, with no store of its own).
            let ca = tls.ca.as_ref().map(|p| p.display().to_string());
            c.set("ssl.ca.location", ca.as_deref().unwrap_or("probe"));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                c.set("ssl.certificate.location", cert.display().to_string());
                c.set("ssl.key.location", key.display().to_string());
            }
        }
        if let Some(sasl) = &config.sasl {
            c.set("sasl.mechanism", sasl.mechanism.as_str());
            c.set("sasl.username", &sasl.username);
            c.set("sasl.password", sasl.password.expose());
        }
        // Set last: the delivery guarantee does not depend on what the file says.
        c.set("enable.idempotence", "true");
        c.set("acks", "all");
        if !config.options.contains_key("delivery.timeout.ms")
            && !config.options.contains_key("message.timeout.ms")
        {
            c.set("message.timeout.ms", deadline_ms.to_string());
        }
        // librdkafka checks every key and value (an unknown key is refused here).
        if let Err(error) = c.create_native_config() {
            problems.push(("options".into(), describe(&error)));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // Sorted by key (a BTreeMap); the values through `get`, because `config_map` blanks
        // the secret ones, and a changed password must make a new producer.
        for key in c.config_map().keys() {
            hash.update(key.as_bytes());
            hash.update(b"=");
            hash.update(c.get(key).unwrap_or_default().as_bytes());
            hash.update(b"\n");
        }
        Ok(Self { config: c, fingerprint: hash.finalize().into() })
    }
}

/// Why `key` cannot be set in `options`, if it cannot.
fn refusal(key: &str, value: &str, deadline_ms: u64) -> Option<String> {
    if GUARANTEED.contains(&key) {
        return Some("cannot be set: the delivery guarantee rests on it".into());
    }
    if FROM_SECTIONS.contains(&key) {
        return Some("set it with brokers.kafka.tls or brokers.kafka.sasl".into());
    }
    let number = value.trim().parse::<u64>().ok();
    match key {
        "max.in.flight.requests.per.connection" | "max.in.flight"
            if number.is_none_or(|n| n > u64::from(MAX_IN_FLIGHT)) =>
        {
            Some(format!(
                "at most {MAX_IN_FLIGHT}: more would break the idempotent producer's order"
            ))
        }
        "delivery.timeout.ms" | "message.timeout.ms" if number.is_none_or(|n| n < deadline_ms) => {
            Some(format!(
                "at least brokers.kafka.message_timeout ({deadline_ms} ms): a delivery must not \
                 give up before Orchestron does"
            ))
        }
        _ => None,
    }
}

/// A librdkafka config error as a message (the value is not repeated: it may be a secret).
fn describe(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, message, key, _) => format!("{key}: {message}"),
        other => other.to_string(),
    }
}

/// The last error librdkafka reported, sorted, and when.
pub(super) type LastTrouble = Arc<Mutex<Option<(Trouble, String, Instant)>>>;

/// How long a TLS or SASL failure stays the reason, when librdkafka follows it with a
/// generic one ("1/1 brokers are down").
const SPECIFIC_FOR: Duration = Duration::from_secs(30);

/// What librdkafka tells the producer, kept for the reachability probe.
pub(super) struct Context {
    pub last_trouble: LastTrouble,
    /// Woken when librdkafka finds every broker down.
    pub wake_probe: Arc<tokio::sync::Notify>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Configuration warnings matter to the operator; connection chatter is summed up by
        // the broker's state (one line per change).
        let serious = !matches!(
            level,
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug
        );
        if fac == "CONFWARN" && serious {
            tracing::warn!(target: "librdkafka", fac, "{log_message}");
        } else {
            tracing::debug!(target: "librdkafka", fac, ?level, "{log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let trouble = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Trouble::Auth
            }
            Some(RDKafkaErrorCode::SSL) => Trouble::Tls,
            _ if reason.contains("SSL handshake") || reason.contains("certificate") => Trouble::Tls,
            _ if reason.contains("SASL") => Trouble::Auth,
            _ => Trouble::Network,
        };
        tracing::debug!(target: "librdkafka", %error, reason, "librdkafka error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.wake_probe.notify_one();
        }
        // std Mutex: a store, never held across an await.
        let mut last = self.last_trouble.lock().expect("trouble lock");
        let more_specific = matches!(
            &*last,
            Some((Trouble::Tls | Trouble::Auth, _, at)) if at.elapsed() < SPECIFIC_FOR
        );
        if trouble != Trouble::Network || !more_specific {
            *last = Some((trouble, reason.to_owned(), Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(options: &str) -> KafkaConfig {
        let text = format!("{{ bootstrap_servers: \"k:9092\", options: {{ {options} }} }}");
        serde_saphyr::from_str(&text).expect("a Kafka config")
    }

    fn refused(options: &str) -> Vec<String> {
        match ClientSettings::from_config(&config(options)) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|(at, m)| format!("{at}: {m}")).collect(),
        }
    }

    #[test]
    fn options_pass_through_but_not_the_guarantee_nor_unknown_keys() {
        assert!(refused("linger.ms: \"20\", compression.type: zstd").is_empty());
        for (options, key) in [
            ("enable.idempotence: \"false\"", "options.enable.idempotence"),
            ("acks: \"1\"", "options.acks"),
            ("max.in.flight.requests.per.connection: \"6\"", "options.max.in.flight"),
            ("delivery.timeout.ms: \"1000\"", "options.delivery.timeout.ms"),
            ("sasl.password: x", "options.sasl.password"),
            ("security.protocol: SSL", "options.security.protocol"),
            ("no.such.key: \"1\"", "no.such.key"),
        ] {
            let problems = refused(options);
            assert!(problems.iter().any(|p| p.contains(key)), "{options}: {problems:?}");
        }
        assert!(refused("max.in.flight.requests.per.connection: \"5\"").is_empty());
        assert!(refused("delivery.timeout.ms: \"60000\"").is_empty());
    }

    #[test]
    fn a_changed_secret_changes_the_fingerprint() {
        let with = |password: &str| {
            let text = format!(
                "{{ bootstrap_servers: \"k:9092\", sasl: {{ mechanism: PLAIN, username: u, password: {password} }} }}"
            );
            let config: KafkaConfig = serde_saphyr::from_str(&text).unwrap();
            ClientSettings::from_config(&config).unwrap().fingerprint
        };
        assert_ne!(with("one"), with("two"));
        assert_eq!(with("one"), with("one"));
    }
}
