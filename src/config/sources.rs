//! `sources:`: who may send, how they prove it, where the event type and idempotency key of
//! their requests come from.

use std::collections::BTreeMap;

use bytesize::ByteSize;
use serde::Deserialize;

use super::{HumanDuration, Secret};

/// `sources:`: the name `default` serves `POST /api/events/{event_type}`; every other name
/// serves `POST /hooks/{name}`.
pub type SourcesConfig = BTreeMap<String, SourceConfig>;

/// The generic endpoint's source name.
pub const DEFAULT_SOURCE: &str = "default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Accepted `X-API-Key` values: plaintext, or `sha256:<64 hex digits>` (the SHA-256 of the
    /// key) so the file holds no plaintext. Several, so a new key can be rolled out before the
    /// old one is removed.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Signature verification instead of API keys.
    pub verify: Option<VerifyConfig>,
    /// Where the event type comes from (`/hooks/{source}` only; the generic endpoint takes it
    /// from the path).
    pub event_type: Option<EventTypeFrom>,
    /// Where the idempotency key comes from. Default: `Idempotency-Key` on the generic
    /// endpoint, the scheme's delivery id for signed sources (see docs/security.md).
    pub idempotency_key: Option<ValueFrom>,
    /// Overrides `server.max_body_bytes` for this source.
    pub max_body_bytes: Option<ByteSize>,
    /// Token bucket: per API key on key-authenticated sources, per source otherwise.
    pub rate_limit: Option<RateLimitConfig>,
    /// Request headers stored with the event and published with it as metadata.
    #[serde(default)]
    pub keep_headers: Vec<String>,
    /// mTLS: accept only clients whose certificate subject carries every attribute of one of
    /// these (`CN=billing` or `CN=billing,O=Acme`). Needs `server.tls.client_ca`.
    #[serde(default)]
    pub client_subjects: Vec<String>,
    /// Accept a body that repeats a member name within one object (the last value wins).
    /// Off by default: parsers disagree on which one counts (docs/security.md).
    #[serde(default)]
    pub allow_duplicate_keys: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum EventTypeFrom {
    /// A request header's value.
    Header(String),
    /// A JSON pointer to a string in the body.
    Pointer(String),
    /// Always this type.
    Fixed(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ValueFrom {
    Header(String),
    Pointer(String),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: std::num::NonZeroU32,
    /// Requests allowed at once above the sustained rate (default: `per_second`).
    pub burst: Option<std::num::NonZeroU32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    pub scheme: SignatureScheme,
    /// One secret; `secrets` takes several (rotation: add the new one, then remove the old).
    pub secret: Option<Secret>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Largest accepted distance between the signed timestamp and now (schemes with one).
    #[serde(default = "default_tolerance")]
    pub tolerance: HumanDuration,
    /// `hmac-sha256` only: the header holding the signature.
    pub header: Option<String>,
    /// `hmac-sha256` only: `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// `hmac-sha256` only: text before the signature in the header, e.g. `sha256=`.
    pub prefix: Option<String>,
}

impl VerifyConfig {
    pub fn all_secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secret.iter().chain(&self.secrets)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    StandardWebhooks,
    Github,
    Stripe,
    Shopify,
    Slack,
    HmacSha256,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

fn default_tolerance() -> HumanDuration {
    HumanDuration::from_secs(300)
}
