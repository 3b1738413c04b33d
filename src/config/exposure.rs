//! Which files hold a plaintext secret and can be read by every user of the host:
//! `check-config` warns about each (it is not an error: the file may sit in a directory no one
//! else can enter, which is the operator's call).
//!
//! Two kinds: the target of every `${file:...}` reference, and the config file itself when a
//! secret's value is written in it literally (an admin token, a plaintext API key, a
//! signature secret, a broker or PostgreSQL password, including one inside a URL). API keys
//! given as `sha256:` hashes are no secret.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Config, Secret, secret};

impl Config {
    /// Warnings for the files that hold a secret and are readable by others; `text` is the
    /// config file's text as read from `path`.
    pub fn exposed_secrets(&self, path: &Path, text: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        for file in secret::file_references(text) {
            if readable_by_others(&file) {
                warnings.push(format!(
                    "{}: holds a secret and is readable by every user (chmod o-r)",
                    file.display()
                ));
            }
        }
        let literal: Vec<&str> = self
            .secrets()
            .into_iter()
            .filter(|(_, value)| !value.is_empty() && text.contains(value))
            .map(|(at, _)| at)
            .collect();
        if !literal.is_empty() && readable_by_others(path) {
            warnings.push(format!(
                "{}: is readable by every user and holds {} in plaintext; use ${{file:...}} \
                 references (or chmod o-r)",
                path.display(),
                literal.join(", ")
            ));
        }
        warnings
    }

    /// Every secret value of the config with where it is: for URLs, their password alone.
    fn secrets(&self) -> Vec<(&'static str, &str)> {
        let mut found: Vec<(&'static str, &str)> = Vec::new();
        if let Some(token) = &self.admin.token {
            found.push(("admin.token", token.expose()));
        }
        for source in self.sources.values() {
            for key in &source.api_keys {
                if !key.expose().starts_with("sha256:") {
                    found.push(("an API key", key.expose()));
                }
            }
            if let Some(verify) = &source.verify {
                found.extend(verify.all_secrets().map(|s| ("a signature secret", s.expose())));
            }
        }
        if let Some(rabbit) = &self.brokers.rabbitmq {
            let urls = std::iter::once(&rabbit.url).chain(&rabbit.urls);
            found.extend(urls.filter_map(url_password).map(|p| ("a RabbitMQ password", p)));
            found.extend(rabbit.password.as_ref().map(|p| ("a RabbitMQ password", p.expose())));
        }
        if let Some(sasl) = self.brokers.kafka.as_ref().and_then(|k| k.sasl.as_ref()) {
            found.push(("the Kafka SASL password", sasl.password.expose()));
        }
        if let Some(sync) = &self.sync {
            let pg = &sync.postgres;
            found.extend(url_password(&pg.url).map(|p| ("the PostgreSQL password", p)));
            found.extend(pg.password.as_ref().map(|p| ("the PostgreSQL password", p.expose())));
        }
        found.dedup_by_key(|(at, _)| *at);
        found
    }
}

/// The password of `scheme://user:password@host...`, if there is one.
fn url_password(url: &Secret) -> Option<&str> {
    let rest = url.expose().split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    userinfo.split_once(':').map(|(_, password)| password).filter(|p| !p.is_empty())
}

fn readable_by_others(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        super::super::load_str(Path::new("t.yaml"), text, &[]).unwrap()
    }

    #[test]
    fn a_world_readable_config_with_a_literal_secret_is_named_and_a_hashed_key_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let secret_file = dir.path().join("token");
        std::fs::write(&secret_file, "x".repeat(40)).unwrap();
        let base = "server: { listen: \"127.0.0.1:0\" }\nstore: { path: /tmp/x.redb }\n";
        let text = format!(
            "{base}brokers: {{ rabbitmq: {{ url: \"amqp://u:hunter2@h/%2f\" }} }}\n\
             sources: {{ default: {{ api_keys: [\"sha256:{}\"] }} }}\n\
             admin: {{ token: \"${{file:{}}}\" }}\n",
            "a".repeat(64),
            secret_file.display()
        );
        std::fs::write(&path, &text).unwrap();
        let set = |p: &Path, mode| std::fs::set_permissions(p, PermissionsExt::from_mode(mode));
        set(&path, 0o644).unwrap();
        set(&secret_file, 0o644).unwrap();
        let warnings = config(&text).exposed_secrets(&path, &text);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("token") && warnings[0].contains("chmod o-r"));
        assert!(warnings[1].contains("a RabbitMQ password"), "{warnings:?}");
        assert!(!warnings[1].contains("API key"), "a hashed key is no secret");
        set(&path, 0o640).unwrap();
        set(&secret_file, 0o600).unwrap();
        assert!(config(&text).exposed_secrets(&path, &text).is_empty());
    }
}
