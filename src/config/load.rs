//! Reading the config: file → YAML → `ORCHESTRON_` overrides → typed [`Config`].
//!
//! Loading checks the shape (YAML syntax, known keys, value types, secret references);
//! [`Config::check`] and the build of the running configuration check the rest, and report
//! every problem with its line through the [`SourceMap`] kept here.

use std::path::{Path, PathBuf};

use super::{Config, Problem, SourceMap};

/// Prefix of environment overrides. `ORCHESTRON_STORE__PATH=/x` sets `store.path`; `__`
/// separates levels and at least one is required, so a plain `ORCHESTRON_ADMIN_TOKEN` (a
/// secret referenced from the file) is never mistaken for an override.
const ENV_PREFIX: &str = "ORCHESTRON_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: environment override {var}: {message}")]
    Override { path: PathBuf, var: String, message: String },
    /// Every problem found, each with its key path and (where the file has it) its line.
    #[error("{}", render(.path, .problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// One problem per line: `file:line: key.path: what is wrong`.
fn render(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match p.line {
            Some(line) => format!("{}:{line}: {}: {}", path.display(), p.at, p.message),
            None => format!("{}: {}: {}", path.display(), p.at, p.message),
        })
        .collect();
    lines.join("\n")
}

/// Loads, overrides and checks the file at `path`, with overrides from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let overrides = std::env::vars().filter(|(k, _)| is_override(k)).collect::<Vec<_>>();
    let mut config = load_str(path, &text, &overrides)?;
    config.path = Some(path.to_owned());
    Ok(config)
}

/// [`load`] on text already read; `path` is only used in messages.
pub fn load_str(
    path: &Path,
    text: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let parse_error = |e: serde_saphyr::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let config: Config = if overrides.is_empty() {
        // Straight from the text, so errors carry the line and column.
        serde_saphyr::from_str(text).map_err(parse_error)?
    } else {
        let mut tree: serde_json::Value = serde_saphyr::from_str(text).map_err(parse_error)?;
        for (var, value) in overrides {
            apply_override(&mut tree, var, value).map_err(|message| ConfigError::Override {
                path: path.to_owned(),
                var: var.clone(),
                message,
            })?;
        }
        serde_json::from_value(tree).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{e} (after applying {ENV_PREFIX}* overrides)"),
        })?
    };
    let mut config = config;
    config.fingerprint = fingerprint(text, overrides);
    config.source_map = SourceMap::of(path.to_owned(), text);
    Ok(config)
}

fn fingerprint(text: &str, overrides: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(text.as_bytes());
    for (k, v) in overrides {
        hash.update(b"\0");
        hash.update(k.as_bytes());
        hash.update(b"=");
        hash.update(v.as_bytes());
    }
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn is_override(var: &str) -> bool {
    var.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains("__"))
}

/// Sets the key path named by `var` to `value` parsed as a YAML scalar or flow collection
/// (`8080`, `true`, `[a, b]`), creating missing maps on the way.
fn apply_override(tree: &mut serde_json::Value, var: &str, value: &str) -> Result<(), String> {
    let keys: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err("empty key between '__' separators".to_owned());
    }
    let parsed: serde_json::Value = if value.is_empty() {
        serde_json::Value::String(String::new())
    } else {
        serde_saphyr::from_str(value).map_err(|e| format!("value is not valid YAML: {e}"))?
    };
    let mut node = tree;
    for key in &keys[..keys.len() - 1] {
        let map = node.as_object_mut().ok_or_else(|| format!("`{key}` is not inside a map"))?;
        node = map.entry(key.clone()).or_insert_with(|| serde_json::json!({}));
    }
    let map = node.as_object_mut().ok_or("the parent key is not a map")?;
    map.insert(keys[keys.len() - 1].clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
server:
  listen: "127.0.0.1:8080"
store:
  path: ./data/o.redb
sources:
  default:
    api_keys: ["k1"]
"#;

    fn load(text: &str, overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let overrides: Vec<_> =
            overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_str(Path::new("test.yaml"), text, &overrides)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.max_body_bytes.as_u64(), 1024 * 1024);
        assert_eq!(c.relay.batch_size, 500);
        assert_eq!(c.relay.backoff.max.get().as_secs(), 300);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let text = format!(
            "{MINIMAL}  github:\n    verify: {{ scheme: github, secrets: [hush-hush-1, hush-hush-2] }}\n\
             \x20   event_type: {{ header: X-GitHub-Event }}\n\
             brokers:\n  rabbitmq:\n    url: \"amqps://u:hush-url@h:5671/%2f\"\n    password: hush-pw\n\
             \x20   urls: [\"amqps://u:hush-urls@h2:5671/%2f\"]\n\
             \x20 kafka:\n    bootstrap_servers: k:9093\n\
             \x20   sasl: {{ mechanism: SCRAM-SHA-512, username: u, password: hush-sasl }}\n"
        );
        let c = load(&text, &[]).unwrap();
        let dumped = format!("{c:?}");
        assert!(dumped.contains("github") && dumped.contains("Github"), "{dumped}");
        assert!(dumped.contains("ScramSha512"), "{dumped}");
        for secret in
            ["hush-hush-1", "hush-hush-2", "k1", "hush-url", "hush-pw", "hush-urls", "hush-sasl"]
        {
            assert!(!dumped.contains(secret), "{secret} leaked: {dumped}");
        }
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = MINIMAL.replace("  path:", "  paht: x\n  path:");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.starts_with("test.yaml"), "{err}");
        assert!(err.contains("paht"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn env_overrides_reach_nested_keys_and_parse_values() {
        let c = load(
            MINIMAL,
            &[
                ("ORCHESTRON_SERVER__LISTEN", "127.0.0.1:0"),
                ("ORCHESTRON_RELAY__BATCH_SIZE", "7"),
                ("ORCHESTRON_SOURCES__DEFAULT__API_KEYS", "[a, b]"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 0);
        assert_eq!(c.relay.batch_size, 7);
        assert_eq!(c.sources["default"].api_keys.len(), 2);
        let err = load(MINIMAL, &[("ORCHESTRON_SERVER__LISTN", "x")]).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn only_double_underscore_vars_are_overrides() {
        assert!(is_override("ORCHESTRON_STORE__PATH"));
        assert!(!is_override("ORCHESTRON_ADMIN_TOKEN"));
        assert!(!is_override("PATH"));
    }

    #[test]
    fn sizes_and_durations_take_units() {
        let text = format!("{MINIMAL}relay:\n  backoff: {{ initial: 250ms, max: 1m }}\n")
            .replace("path: ./data/o.redb", "path: ./data/o.redb\n  max_bytes: 2GiB");
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.store.max_bytes.as_u64(), 2 << 30);
        assert_eq!(c.relay.backoff.initial.get().as_millis(), 250);
        let bad = text.replace("250ms", "soon");
        assert!(load(&bad, &[]).unwrap_err().to_string().contains("invalid duration"));
    }
}
