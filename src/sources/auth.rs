//! API keys: kept as SHA-256 digests, so a key given as its hash (`sha256:<hex>`) and a
//! plaintext key are checked the same way, and the comparison is constant-time in content
//! and length (every digest is 32 bytes).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The accepted keys of one source, in the order of the config (rate limits are per key).
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

/// Why a configured key was refused (the key itself is never part of the message).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("a sha256: key must be 64 hex digits")]
    BadHash,
}

const HASH_PREFIX: &str = "sha256:";

impl ApiKeys {
    /// The keys of one source; or every key that is refused, by its index.
    pub fn from_config(keys: &[Secret]) -> Result<Self, Vec<(usize, KeyError)>> {
        let mut digests = Vec::with_capacity(keys.len());
        let mut refused = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match Self::parse_one(key) {
                Ok(digest) => digests.push(digest),
                Err(e) => refused.push((i, e)),
            }
        }
        if refused.is_empty() { Ok(Self { digests }) } else { Err(refused) }
    }

    /// The digest a configured key stands for.
    pub fn parse_one(key: &Secret) -> Result<[u8; 32], KeyError> {
        let key = key.expose();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        match key.strip_prefix(HASH_PREFIX) {
            Some(hex_digits) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hex_digits, &mut digest).map_err(|_| KeyError::BadHash)?;
                Ok(digest)
            }
            None => Ok(Sha256::digest(key.as_bytes()).into()),
        }
    }

    /// The index of the key `presented` matches. Every configured key is compared, so the
    /// time taken does not tell which one (or whether one) matched.
    pub fn check(&self, presented: &[u8]) -> Option<usize> {
        if presented.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (i, known) in self.digests.iter().enumerate() {
            if bool::from(digest.ct_eq(known)) {
                found = Some(i);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// `sha256:<hex>` for a key: what `orchestron hash-key` prints for the config file.
pub fn hash_key(key: &str) -> String {
    format!("{HASH_PREFIX}{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        serde_json::from_value(serde_json::json!(s)).unwrap()
    }

    #[test]
    fn plaintext_and_hashed_keys_both_match_and_report_their_index() {
        let hashed = hash_key("new-key");
        let keys = ApiKeys::from_config(&[secret("old-key"), secret(&hashed)]).unwrap();
        assert_eq!(keys.check(b"old-key"), Some(0));
        assert_eq!(keys.check(b"new-key"), Some(1));
        assert_eq!(keys.check(hashed.as_bytes()), None, "the hash itself is not a key");
        assert_eq!(keys.check(b"old-ke"), None);
        assert_eq!(keys.check(b""), None);
    }

    #[test]
    fn bad_hashes_and_empty_keys_are_refused() {
        assert!(ApiKeys::parse_one(&secret("")).is_err());
        assert!(ApiKeys::parse_one(&secret("sha256:abc")).is_err());
        assert!(ApiKeys::parse_one(&secret(&format!("sha256:{}", "zz".repeat(32)))).is_err());
    }
}
