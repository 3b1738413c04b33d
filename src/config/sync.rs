//! `sync:`: the PostgreSQL a fleet of instances shares, and this instance's place in it.

use std::path::PathBuf;

use serde::Deserialize;

use super::{HumanDuration, Secret};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub postgres: PostgresConfig,
    /// This instance's name in the fleet. Default: one generated at the first start and kept
    /// in the store file.
    pub instance_id: Option<String>,
    /// A peer may take this instance's events over this long after its last heartbeat; the
    /// heartbeat renews it every third of it.
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
    /// When a 202 is answered: after the local fsync (`local`), or after PostgreSQL has
    /// committed the event too (`fleet`).
    #[serde(default)]
    pub ack: AckMode,
    /// With `ack: fleet`, how long a request waits for PostgreSQL before it is answered 503.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: HumanDuration,
    /// How long a keyed request waits for PostgreSQL's answer on its idempotency key before
    /// local dedup decides alone.
    #[serde(default = "default_dedup_timeout")]
    pub dedup_timeout: HumanDuration,
    /// A keyed event accepted while PostgreSQL could not answer for its key is held back
    /// from the relay until PostgreSQL rules on the key (published, or settled as a
    /// duplicate of the event that holds it), for at most this long; then it is published
    /// on local dedup alone. `0s` publishes it at once.
    #[serde(default = "default_dedup_hold_max")]
    pub dedup_hold_max: HumanDuration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// 202 once the event is fsync'd in the local store; PostgreSQL gets it asynchronously.
    #[default]
    Local,
    /// 202 once the event is fsync'd locally and committed in PostgreSQL.
    Fleet,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database?sslmode=...`; `sslmode=require` or `verify-full`
    /// connects over TLS (rustls), `disable` (the default) does not.
    pub url: Secret,
    /// The password, overriding the URL's (typically a `${file:...}` reference).
    pub password: Option<Secret>,
    /// PEM: CA certificates the server's certificate must chain to (default: the system's).
    pub ca: Option<PathBuf>,
    /// Every table lives in this schema; the role needs rights on it only.
    #[serde(default = "default_schema")]
    pub schema: String,
}

impl PostgresConfig {
    /// The URL without its `sslmode` (tokio-postgres knows only `disable`, `prefer` and
    /// `require`), and whether that mode asks for TLS. `prefer` and `allow` are refused: they
    /// fall back to plain TCP without a word, and the fleet's tables hold events.
    pub fn connection_url(&self) -> Result<(String, bool), String> {
        split_sslmode(self.url.expose())
    }
}

fn split_sslmode(url: &str) -> Result<(String, bool), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), false)) };
    let mut tls = false;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "disable")) => tls = false,
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => tls = true,
            Some(("sslmode", mode)) => {
                return Err(format!(
                    "sslmode={mode} is not supported: use disable, or require, verify-ca or \
                     verify-full (all three verify the server's certificate and name)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, tls))
}

fn default_lease() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_ack_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}

fn default_dedup_timeout() -> HumanDuration {
    HumanDuration::from_millis(250)
}

fn default_dedup_hold_max() -> HumanDuration {
    HumanDuration::from_secs(300)
}

fn default_schema() -> String {
    "orchestron".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_decides_tls() {
        let split = |url: &str| split_sslmode(url).unwrap();
        assert_eq!(split("postgres://u@h/db"), ("postgres://u@h/db".into(), false));
        assert_eq!(
            split("postgres://u@h/db?sslmode=verify-full"),
            ("postgres://u@h/db".into(), true)
        );
        assert_eq!(
            split("postgres://u@h/db?application_name=x&sslmode=disable"),
            ("postgres://u@h/db?application_name=x".into(), false)
        );
        assert!(split("postgres://h/d?sslmode=require").1);
        assert!(split_sslmode("postgres://h/d?sslmode=prefer").unwrap_err().contains("prefer"));
    }
}
