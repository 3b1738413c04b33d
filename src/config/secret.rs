//! Secret values and their references: `${env:NAME}` and `${file:/path}`.
//!
//! References are resolved while the config is read, so a missing variable or file is a load
//! error with the file position. A relative `${file:name}` is looked up in
//! `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`). The value never shows in `Debug`
//! output, so a config dumped to a log leaks nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, de};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        resolve(&raw).map(Secret).map_err(de::Error::custom)
    }
}

/// Replaces every `${env:NAME}` and `${file:PATH}` in `raw`; other text is kept, so a URL can
/// carry just its password as a reference.
pub(crate) fn resolve(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed \"${{\" in {raw:?}"))?;
        let reference = &after[..end];
        out.push_str(&resolve_one(reference)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The files named by the `${file:...}` references in `text` (resolved as they would be).
pub(crate) fn file_references(text: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${file:") {
        let after = &rest[start + "${file:".len()..];
        let Some(end) = after.find('}') else { break };
        files.push(credential_path(Path::new(&after[..end])));
        rest = &after[end + 1..];
    }
    files
}

/// The most a secret file may hold: a secret is short, and `/dev/zero` or a log file named by
/// mistake must be refused, not read until memory runs out.
const SECRET_FILE_MAX: u64 = 64 * 1024;

fn read_secret_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(SECRET_FILE_MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > SECRET_FILE_MAX {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB: not a secret",
            SECRET_FILE_MAX / 1024
        )));
    }
    Ok(text)
}

fn resolve_one(reference: &str) -> Result<String, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
    } else if let Some(path) = reference.strip_prefix("file:") {
        let path = credential_path(Path::new(path));
        let text = read_secret_file(&path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        // Files written by editors and `echo` end in a newline that is not part of the secret.
        Ok(text.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        Err(format!("unknown reference \"${{{reference}}}\"; use ${{env:NAME}} or ${{file:PATH}}"))
    }
}

fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_that_never_ends_is_refused() {
        let error = resolve("${file:/dev/zero}").unwrap_err();
        assert!(error.contains("/dev/zero") && error.contains("not a secret"), "{error}");
    }

    #[test]
    fn resolves_env_and_file_references_inside_text() {
        // SAFETY of the test: a variable name no other test uses.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let raw = format!("amqp://u:${{file:{}}}@h/%2f", file.display());
        assert_eq!(resolve(&raw).unwrap(), "amqp://u:s3cret@h/%2f");
        assert_eq!(resolve("plain").unwrap(), "plain");
        assert!(resolve("${env:ORCHESTRON_TEST_SURELY_UNSET}").unwrap_err().contains("not set"));
        assert!(resolve("${vault:x}").unwrap_err().contains("unknown reference"));
        assert!(resolve("${env:X").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn debug_never_shows_the_value() {
        assert!(!format!("{:?}", Secret("hunter2".into())).contains("hunter2"));
    }
}
