//! Every way ingest can refuse a request, mapped to a status code and a JSON body that names
//! the problem without exposing internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::time::Duration;

use super::signature::SignatureError;
use crate::store::StoreError;
use crate::validate::Violation;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("signature not accepted: {0}")]
    Signature(SignatureError),
    #[error("no such source")]
    UnknownSource,
    #[error("this source needs a client certificate")]
    ClientCertificateRequired,
    #[error("this source does not accept the client certificate presented")]
    ClientCertificateRefused,
    #[error("rate limit exceeded for this source; retry later")]
    RateLimited { retry_after: Duration },
    #[error("idempotency key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("invalid event type: {0}")]
    InvalidEventType(String),
    #[error("body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("could not read the request body")]
    BodyRead,
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("body violates the schema of this event type")]
    SchemaViolation(Vec<Violation>),
    #[error("no route matches this event, and there is no default route")]
    Unroutable,
    #[error("cannot accept events now: {0}")]
    Store(#[from] StoreError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized | IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::UnknownSource => StatusCode::NOT_FOUND,
            IngestError::ClientCertificateRequired => StatusCode::UNAUTHORIZED,
            IngestError::ClientCertificateRefused => StatusCode::FORBIDDEN,
            IngestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::InvalidEventType(_)
            | IngestError::InvalidIdempotencyKey
            | IngestError::BodyRead
            | IngestError::InvalidJson(_)
            | IngestError::NotAnObject => StatusCode::BAD_REQUEST,
            IngestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::SchemaViolation(_) | IngestError::Unroutable => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            IngestError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable, machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::Signature(_) => "invalid_signature",
            IngestError::UnknownSource => "unknown_source",
            IngestError::ClientCertificateRequired => "client_certificate_required",
            IngestError::ClientCertificateRefused => "client_certificate_refused",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::InvalidIdempotencyKey => "invalid_idempotency_key",
            IngestError::BodyTimeout => "body_timeout",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::InvalidEventType(_) => "invalid_event_type",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::BodyRead => "body_read_failed",
            IngestError::InvalidJson(_) => "invalid_json",
            IngestError::NotAnObject => "invalid_body",
            IngestError::SchemaViolation(_) => "schema_violation",
            IngestError::Unroutable => "unroutable",
            IngestError::Store(StoreError::QuotaExceeded) => "store_full",
            IngestError::Store(_) => "unavailable",
        }
    }

    /// The `reason` label of `orchestron_ingest_rejected_total`: a small fixed set.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "auth",
            IngestError::Signature(_) => "signature",
            IngestError::UnknownSource => "unknown_source",
            IngestError::ClientCertificateRequired | IngestError::ClientCertificateRefused => {
                "client_certificate"
            }
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::BodyTimeout => "timeout",
            IngestError::UnsupportedMediaType => "media_type",
            IngestError::InvalidEventType(_)
            | IngestError::InvalidIdempotencyKey
            | IngestError::BodyRead
            | IngestError::InvalidJson(_)
            | IngestError::NotAnObject => "invalid",
            IngestError::PayloadTooLarge { .. } => "size",
            IngestError::SchemaViolation(_) => "schema",
            IngestError::Unroutable => "unroutable",
            IngestError::Store(StoreError::QuotaExceeded) => "store_full",
            IngestError::Store(_) => "unavailable",
        }
    }

    /// The message sent to the client. Store failures get a fixed text: their detail (paths,
    /// OS errors) is for the log only.
    fn public_message(&self) -> String {
        match self {
            IngestError::Store(StoreError::QuotaExceeded) => {
                "the outbox is full; retry later".to_owned()
            }
            IngestError::Store(_) => "the event store is unavailable; retry later".to_owned(),
            other => other.to_string(),
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            IngestError::RateLimited { retry_after } => {
                Some(retry_after.as_secs_f64().ceil() as u64)
            }
            IngestError::Store(StoreError::QuotaExceeded) => Some(30),
            IngestError::Store(_) => Some(5),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code(), "message": self.public_message() });
        if let IngestError::SchemaViolation(violations) = &self {
            body["violations"] = json!(violations);
        }
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
