//! Webhook signature schemes, always over the raw body bytes as received.
//!
//! Each scheme names the headers it reads and what is signed; all use HMAC-SHA256. A missing,
//! empty or malformed header is a failure, never a pass; a timestamp outside the tolerance
//! is a failure even with a valid signature (replay). Every configured secret is tried, so a
//! secret can be rotated by adding the new one before removing the old one. MACs are compared
//! with [`Mac::verify_slice`] (constant time; the length, 32 bytes, is public).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{SignatureEncoding, SignatureScheme, ValueFrom, VerifyConfig};

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was not accepted. The text goes back to the sender: it says what
/// is wrong with the request, never anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or empty {0} header")]
    Missing(String),
    #[error("malformed {0} header")]
    Malformed(String),
    #[error("timestamp outside the accepted window")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// How one source's requests are verified.
pub struct Verifier {
    scheme: Scheme,
    secrets: Vec<Vec<u8>>,
    tolerance: Duration,
}

enum Scheme {
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    Generic { header: HeaderName, encoding: SignatureEncoding, prefix: String },
}

impl Verifier {
    pub fn from_config(config: &VerifyConfig) -> Result<Self, String> {
        let scheme = match config.scheme {
            SignatureScheme::StandardWebhooks => Scheme::StandardWebhooks,
            SignatureScheme::Github => Scheme::Github,
            SignatureScheme::Stripe => Scheme::Stripe,
            SignatureScheme::Shopify => Scheme::Shopify,
            SignatureScheme::Slack => Scheme::Slack,
            SignatureScheme::HmacSha256 => {
                let header = config.header.as_deref().ok_or("hmac-sha256 needs `header`")?;
                let header = HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("{header:?} is not a header name"))?;
                let prefix = config.prefix.clone().unwrap_or_default();
                Scheme::Generic { header, encoding: config.encoding, prefix }
            }
        };
        let is_generic = matches!(scheme, Scheme::Generic { .. });
        if !is_generic && (config.header.is_some() || config.prefix.is_some()) {
            return Err("`header` and `prefix` are for the hmac-sha256 scheme only".into());
        }
        let secrets = config
            .all_secrets()
            .map(|s| decode_secret(config.scheme, s.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err("needs `secret` or `secrets`".into());
        }
        Ok(Self { scheme, secrets, tolerance: config.tolerance.get() })
    }

    pub fn is_slack(&self) -> bool {
        matches!(self.scheme, Scheme::Slack)
    }

    /// Where the scheme's senders put a delivery id: the idempotency key when the source
    /// does not name one.
    pub fn default_idempotency_key(&self) -> Option<ValueFrom> {
        let header = |h: &str| Some(ValueFrom::Header(h.to_owned()));
        match self.scheme {
            Scheme::StandardWebhooks => header("webhook-id"),
            Scheme::Github => header("x-github-delivery"),
            Scheme::Shopify => header("x-shopify-webhook-id"),
            Scheme::Stripe => Some(ValueFrom::Pointer("/id".to_owned())),
            Scheme::Slack | Scheme::Generic { .. } => None,
        }
    }

    /// Checks `body` against the request's signature headers; `now` is seconds since the epoch.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), SignatureError> {
        match &self.scheme {
            Scheme::StandardWebhooks => {
                let id = required(headers, "webhook-id")?;
                let ts = required(headers, "webhook-timestamp")?;
                self.fresh(parse_ts(ts, "webhook-timestamp")?, now)?;
                let header = required(headers, "webhook-signature")?;
                // Space-separated `version,base64`; other versions (v1a: asymmetric) are not
                // ours to check, and skipping them is what the reference libraries do.
                let signatures: Vec<Vec<u8>> = header
                    .split(' ')
                    .filter_map(|part| part.strip_prefix("v1,"))
                    .map(|b64| BASE64.decode(b64))
                    .collect::<Result<_, _>>()
                    .map_err(|_| malformed("webhook-signature"))?;
                if signatures.is_empty() {
                    return Err(malformed("webhook-signature"));
                }
                self.any_matches(&[id.as_bytes(), b".", ts.as_bytes(), b".", body], &signatures)
            }
            Scheme::Github => {
                let header = required(headers, "x-hub-signature-256")?;
                let sig = header
                    .strip_prefix("sha256=")
                    .and_then(lower_hex)
                    .ok_or_else(|| malformed("x-hub-signature-256"))?;
                self.any_matches(&[body], &[sig])
            }
            Scheme::Stripe => {
                const NAME: &str = "stripe-signature";
                let header = required(headers, NAME)?;
                let mut ts = None;
                let mut signatures = Vec::new();
                for item in header.split(',') {
                    match item.trim().split_once('=') {
                        Some(("t", v)) => ts = Some(v),
                        Some(("v1", v)) => {
                            signatures.push(lower_hex(v).ok_or_else(|| malformed(NAME))?)
                        }
                        Some(_) => {} // v0 (test mode, SHA-1) and future versions
                        None => return Err(malformed(NAME)),
                    }
                }
                let ts = ts.ok_or_else(|| malformed(NAME))?;
                self.fresh(parse_ts(ts, NAME)?, now)?;
                if signatures.is_empty() {
                    return Err(malformed(NAME));
                }
                self.any_matches(&[ts.as_bytes(), b".", body], &signatures)
            }
            Scheme::Shopify => {
                const NAME: &str = "x-shopify-hmac-sha256";
                let sig = BASE64.decode(required(headers, NAME)?).map_err(|_| malformed(NAME))?;
                self.any_matches(&[body], &[sig])
            }
            Scheme::Slack => {
                let ts = required(headers, "x-slack-request-timestamp")?;
                self.fresh(parse_ts(ts, "x-slack-request-timestamp")?, now)?;
                let sig = required(headers, "x-slack-signature")?
                    .strip_prefix("v0=")
                    .and_then(lower_hex)
                    .ok_or_else(|| malformed("x-slack-signature"))?;
                self.any_matches(&[b"v0:", ts.as_bytes(), b":", body], &[sig])
            }
            Scheme::Generic { header, encoding, prefix } => {
                let name = header.as_str();
                let value = required(headers, name)?;
                let encoded = value.strip_prefix(prefix.as_str()).ok_or_else(|| malformed(name))?;
                let sig = match encoding {
                    SignatureEncoding::Hex => hex::decode(encoded).ok(),
                    SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
                }
                .ok_or_else(|| malformed(name))?;
                self.any_matches(&[body], &[sig])
            }
        }
    }

    fn fresh(&self, ts: i64, now: i64) -> Result<(), SignatureError> {
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.abs_diff(ts) > tolerance as u64 { Err(SignatureError::Stale) } else { Ok(()) }
    }

    /// True if any presented signature is the MAC of `parts` under any secret.
    fn any_matches(&self, parts: &[&[u8]], presented: &[Vec<u8>]) -> Result<(), SignatureError> {
        let mut matched = false;
        for secret in &self.secrets {
            let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
            parts.iter().for_each(|p| mac.update(p));
            for sig in presented {
                // Not short-circuited: every pair is checked.
                matched |= mac.clone().verify_slice(sig).is_ok();
            }
        }
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// Standard Webhooks secrets are base64 (after an optional `whsec_`); the other schemes use
/// the secret's bytes as they are, as their senders do.
fn decode_secret(scheme: SignatureScheme, secret: &str) -> Result<Vec<u8>, String> {
    if secret.is_empty() {
        return Err("a secret is empty".into());
    }
    match scheme {
        SignatureScheme::StandardWebhooks => BASE64
            .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
            .map_err(|_| "a standard-webhooks secret must be base64 (after whsec_)".to_owned()),
        _ => Ok(secret.as_bytes().to_vec()),
    }
}

fn required<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureError> {
    let missing = || SignatureError::Missing(name.to_owned());
    let value = headers.get(name).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| malformed(name))?.trim();
    if value.is_empty() { Err(missing()) } else { Ok(value) }
}

/// GitHub, Stripe and Slack send lowercase hex; anything else is not their signature.
fn lower_hex(text: &str) -> Option<Vec<u8>> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if canonical { hex::decode(text).ok() } else { None }
}

fn malformed(name: &str) -> SignatureError {
    SignatureError::Malformed(name.to_owned())
}

fn parse_ts(ts: &str, name: &str) -> Result<i64, SignatureError> {
    ts.parse().map_err(|_| malformed(name))
}

#[cfg(test)]
mod tests;
