//! Who may send and how they prove it: the configured sources, compiled for the request
//! path. A [`Source`] knows how its senders authenticate (API keys in [`auth`], signature
//! schemes in [`signature`], client certificate subjects), where the event type and the
//! idempotency key of a request come from, and its body and rate limits. Every check says
//! why it refused ([`Refusal`]); ingest turns that into the answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub mod auth;
mod refusal;
pub mod signature;

pub use refusal::Refusal;

use crate::config::{
    Config, DEFAULT_SOURCE, EventTypeFrom, Problem, RateLimitConfig, SourceConfig, ValueFrom,
};
use crate::event::{EventType, SourceName, now_ms};
use crate::server::client_cert::{ClientSubject, SubjectPattern};
use auth::ApiKeys;
use signature::Verifier;

/// Longest idempotency key kept; longer ones are refused rather than truncated.
const MAX_KEY_LEN: usize = 255;

/// Every configured source by name (`default` is the generic endpoint's).
pub struct Sources(HashMap<String, Arc<Source>>);

impl Sources {
    /// Compiles every source; all problems are reported, each with its key path.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let server_limit = config.server.max_body_bytes.as_u64();
        let mut sources = HashMap::new();
        let mut problems = Vec::new();
        for (name, c) in &config.sources {
            match Source::from_config(name, c, server_limit) {
                Ok(source) => drop(sources.insert(name.clone(), Arc::new(source))),
                Err(mut found) => problems.append(&mut found),
            }
        }
        if problems.is_empty() { Ok(Self(sources)) } else { Err(problems) }
    }

    /// The source serving `POST /hooks/{name}`.
    pub fn hook(&self, name: &str) -> Option<&Arc<Source>> {
        self.0.get(name).filter(|_| name != DEFAULT_SOURCE)
    }

    /// The source serving `POST /api/events/{type}`, if configured.
    pub fn generic(&self) -> Option<&Arc<Source>> {
        self.0.get(DEFAULT_SOURCE)
    }
}

pub struct Source {
    pub name: SourceName,
    auth: Auth,
    event_type: Option<EventTypeFrom>,
    idempotency_key: Option<ValueFrom>,
    pub max_body_bytes: u64,
    /// One per API key, or one for the source; empty without `rate_limit`.
    limiters: Vec<DefaultDirectRateLimiter>,
    pub keep_headers: Vec<HeaderName>,
    /// Empty: any client (certificate or not) may send.
    client_subjects: Vec<SubjectPattern>,
    /// `allow_duplicate_keys`: a repeated member name is taken (the last wins), not refused.
    pub allow_duplicate_keys: bool,
}

enum Auth {
    ApiKeys(ApiKeys),
    Signature(Verifier),
}

/// Who sent a request, as far as the rate limit cares: the index of the API key used.
#[derive(Debug, Clone, Copy)]
pub struct Credential(usize);

impl Source {
    fn from_config(name: &str, c: &SourceConfig, server_limit: u64) -> Result<Self, Vec<Problem>> {
        let at = |key: &str| format!("sources.{name}.{key}");
        let mut problems = Vec::new();
        let auth = match &c.verify {
            Some(verify) => Verifier::from_config(verify)
                .map(Auth::Signature)
                .map_err(|e| problems.push(Problem::new(at("verify"), e))),
            None => ApiKeys::from_config(&c.api_keys).map(Auth::ApiKeys).map_err(|bad| {
                for (i, e) in bad {
                    problems.push(Problem::new(at(&format!("api_keys[{i}]")), e.to_string()));
                }
            }),
        };
        let mut client_subjects = Vec::with_capacity(c.client_subjects.len());
        for (i, pattern) in c.client_subjects.iter().enumerate() {
            match SubjectPattern::parse(pattern) {
                Ok(p) => client_subjects.push(p),
                Err(e) => problems.push(Problem::new(at(&format!("client_subjects[{i}]")), e)),
            }
        }
        let mut keep_headers = Vec::with_capacity(c.keep_headers.len());
        for h in &c.keep_headers {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => keep_headers.push(name),
                Err(_) => problems.push(Problem::new(at("keep_headers"), format!("header {h:?}"))),
            }
        }
        let name = SourceName::parse(name)
            .map_err(|e| problems.push(Problem::new(format!("sources.{name}"), e.to_string())));
        let (Ok(auth), Ok(name), true) = (auth, name, problems.is_empty()) else {
            return Err(problems);
        };
        let idempotency_key = match (&c.idempotency_key, &auth) {
            (Some(from), _) => Some(from.clone()),
            (None, Auth::Signature(v)) => v.default_idempotency_key(),
            (None, Auth::ApiKeys(_)) => Some(ValueFrom::Header("idempotency-key".to_owned())),
        };
        let buckets = match &auth {
            Auth::ApiKeys(keys) => keys.len(),
            Auth::Signature(_) => 1,
        };
        let limiters = c.rate_limit.map(|r| (0..buckets).map(|_| limiter(r)).collect());
        Ok(Self {
            name,
            auth,
            event_type: c.event_type.clone(),
            idempotency_key,
            max_body_bytes: c.max_body_bytes.map_or(server_limit, |b| b.as_u64()),
            limiters: limiters.unwrap_or_default(),
            keep_headers,
            client_subjects,
            allow_duplicate_keys: c.allow_duplicate_keys,
        })
    }

    /// True when the source is checked by API key, before its body is read.
    pub fn uses_api_keys(&self) -> bool {
        matches!(self.auth, Auth::ApiKeys(_))
    }

    /// Sources with `client_subjects`: the connection's client certificate must match one.
    pub fn check_client(&self, subject: Option<&ClientSubject>) -> Result<(), Refusal> {
        if self.client_subjects.is_empty() {
            return Ok(());
        }
        match subject {
            None => Err(Refusal::ClientCertificateRequired),
            Some(s) if self.client_subjects.iter().any(|p| s.matches(p)) => Ok(()),
            Some(_) => Err(Refusal::ClientCertificateRefused),
        }
    }

    /// API-key sources: checks `X-API-Key`.
    pub fn check_key(&self, headers: &HeaderMap) -> Result<Credential, Refusal> {
        let Auth::ApiKeys(keys) = &self.auth else { return Ok(Credential(0)) };
        let presented = headers.get("x-api-key").map(|v| v.as_bytes()).unwrap_or_default();
        keys.check(presented).map(Credential).ok_or(Refusal::Unauthorized)
    }

    /// Signed sources: checks the signature over the raw body.
    pub fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let Auth::Signature(verifier) = &self.auth else { return Ok(()) };
        let now = (now_ms() / 1000) as i64;
        verifier.verify(headers, body, now).map_err(Refusal::Signature)
    }

    /// Slack sources: the `challenge` of a (signed) `url_verification` request, which Slack
    /// sends once when the endpoint is set up and which must be echoed back.
    pub fn challenge(&self, body: &serde_json::Value) -> Option<String> {
        let Auth::Signature(verifier) = &self.auth else { return None };
        if !verifier.is_slack() || body.get("type")?.as_str()? != "url_verification" {
            return None;
        }
        Some(body.get("challenge")?.as_str()?.to_owned())
    }

    /// Takes a token from the credential's bucket, or says how long to wait.
    pub fn admit(&self, who: Credential) -> Result<(), Refusal> {
        let Some(limiter) = self.limiters.get(who.0) else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::RateLimited { retry_after: wait.max(Duration::from_secs(1)) }
        })
    }

    /// The event type of a `/hooks` request (the generic endpoint passes its path segment).
    pub fn event_type(
        &self,
        headers: &HeaderMap,
        body: &serde_json::Value,
    ) -> Result<EventType, Refusal> {
        let invalid = |why: String| Refusal::InvalidEventType(why);
        let text = match &self.event_type {
            Some(EventTypeFrom::Fixed(t)) => t.as_str(),
            Some(EventTypeFrom::Header(h)) => headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| invalid(format!("missing {h} header")))?,
            Some(EventTypeFrom::Pointer(p)) => body
                .pointer(p)
                .and_then(|v| v.as_str())
                .ok_or_else(|| invalid(format!("no string at {p} in the body")))?,
            None => return Err(invalid("the source names no event type".into())),
        };
        // Senders name topics with slashes (Shopify's `orders/create`); a type becomes a
        // file name and a routing key, where `/` cannot go: it becomes `.`.
        let text = text.replace('/', ".");
        EventType::parse(&text).map_err(|e| invalid(e.to_string()))
    }

    /// The request's idempotency key, if it carries one.
    pub fn idempotency_key(
        &self,
        headers: &HeaderMap,
        body: &serde_json::Value,
    ) -> Result<Option<String>, Refusal> {
        let key = match &self.idempotency_key {
            None => None,
            Some(ValueFrom::Header(h)) => match headers.get(h.as_str()) {
                None => None,
                Some(v) => Some(v.to_str().map_err(|_| Refusal::InvalidIdempotencyKey)?.to_owned()),
            },
            Some(ValueFrom::Pointer(p)) => match body.pointer(p) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(_) => return Err(Refusal::InvalidIdempotencyKey),
            },
        };
        match key {
            Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => Err(Refusal::InvalidIdempotencyKey),
            other => Ok(other),
        }
    }

    /// The kept headers present on the request, names lowercase, values as sent.
    pub fn kept_headers(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        self.keep_headers
            .iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect()
    }
}

fn limiter(r: RateLimitConfig) -> DefaultDirectRateLimiter {
    RateLimiter::direct(
        Quota::per_second(r.per_second).allow_burst(r.burst.unwrap_or(r.per_second)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn source(config: serde_json::Value) -> Source {
        let config: SourceConfig = serde_json::from_value(config).unwrap();
        Source::from_config("s", &config, 1024).unwrap()
    }

    #[test]
    fn event_types_come_from_a_header_a_pointer_or_a_fixed_name() {
        let mut headers = HeaderMap::new();
        headers.insert("x-shopify-topic", HeaderValue::from_static("orders/create"));
        let body = json!({ "type": "invoice.paid", "n": 1 });
        let by_header =
            source(json!({ "api_keys": ["k"], "event_type": { "header": "X-Shopify-Topic" } }));
        assert_eq!(by_header.event_type(&headers, &body).unwrap().as_str(), "orders.create");
        let by_pointer = source(json!({ "api_keys": ["k"], "event_type": { "pointer": "/type" } }));
        assert_eq!(by_pointer.event_type(&headers, &body).unwrap().as_str(), "invoice.paid");
        let fixed = source(json!({ "api_keys": ["k"], "event_type": { "fixed": "a.b" } }));
        assert_eq!(fixed.event_type(&headers, &body).unwrap().as_str(), "a.b");
        let missing = source(json!({ "api_keys": ["k"], "event_type": { "pointer": "/n" } }));
        assert!(missing.event_type(&headers, &body).is_err(), "not a string");
    }

    #[test]
    fn idempotency_keys_are_bounded_and_default_per_scheme() {
        let body = json!({ "id": "evt_1", "big": 7 });
        let mut headers = HeaderMap::new();
        let generic = source(json!({ "api_keys": ["k"], "event_type": { "fixed": "t" } }));
        assert_eq!(generic.idempotency_key(&headers, &body).unwrap(), None);
        headers.insert("idempotency-key", HeaderValue::from_static("abc"));
        assert_eq!(generic.idempotency_key(&headers, &body).unwrap().as_deref(), Some("abc"));
        headers.insert("idempotency-key", HeaderValue::from_str(&"x".repeat(256)).unwrap());
        assert!(generic.idempotency_key(&headers, &body).is_err());
        let stripe = source(json!({
            "verify": { "scheme": "stripe", "secret": "s" },
            "event_type": { "pointer": "/type" }
        }));
        assert_eq!(stripe.idempotency_key(&headers, &body).unwrap().as_deref(), Some("evt_1"));
        let numeric = source(json!({
            "api_keys": ["k"], "event_type": { "fixed": "t" }, "idempotency_key": { "pointer": "/big" }
        }));
        assert_eq!(numeric.idempotency_key(&headers, &body).unwrap().as_deref(), Some("7"));
    }
}
