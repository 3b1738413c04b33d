//! Every way ingest can refuse a request, mapped to a status code and a JSON body that names
//! the problem without exposing internals.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::sources::Refusal;
use crate::store::StoreError;
use crate::validate::Violation;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The source refused the sender (credentials, rate limit, type or key it cannot read).
    #[error(transparent)]
    Source(#[from] Refusal),
    #[error("no such source")]
    UnknownSource,
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
    #[error(
        "body repeats the member name at {0}: parsers disagree on which value counts, so it is \
         refused"
    )]
    DuplicateKey(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("body violates the schema of this event type")]
    SchemaViolation(Vec<Violation>),
    #[error("no route matches this event, and there is no default route")]
    Unroutable,
    #[error("cannot accept events now: {0}")]
    Store(#[from] StoreError),
    /// `sync.ack: fleet` and PostgreSQL did not commit the event in time.
    #[error("the event is not committed in PostgreSQL: {0}")]
    NotReplicated(String),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Source(refusal) => refusal.status(),
            IngestError::UnknownSource => StatusCode::NOT_FOUND,
            IngestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::InvalidEventType(_)
            | IngestError::BodyRead
            | IngestError::InvalidJson(_)
            | IngestError::DuplicateKey(_)
            | IngestError::NotAnObject => StatusCode::BAD_REQUEST,
            IngestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::SchemaViolation(_) | IngestError::Unroutable => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            IngestError::Store(_) | IngestError::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Stable, machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Source(refusal) => refusal.code(),
            IngestError::UnknownSource => "unknown_source",
            IngestError::BodyTimeout => "body_timeout",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::InvalidEventType(_) => "invalid_event_type",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::BodyRead => "body_read_failed",
            IngestError::InvalidJson(_) => "invalid_json",
            IngestError::DuplicateKey(_) => "duplicate_key",
            IngestError::NotAnObject => "invalid_body",
            IngestError::SchemaViolation(_) => "schema_violation",
            IngestError::Unroutable => "unroutable",
            IngestError::Store(StoreError::QuotaExceeded) => "store_full",
            IngestError::Store(StoreError::DiskFull { .. }) => "disk_full",
            IngestError::Store(_) => "unavailable",
            IngestError::NotReplicated(_) => "sync_unavailable",
        }
    }

    /// The `reason` label of `orchestron_ingest_rejected_total`: a small fixed set.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            IngestError::Source(refusal) => refusal.metric_reason(),
            IngestError::UnknownSource => "unknown_source",
            IngestError::BodyTimeout => "timeout",
            IngestError::UnsupportedMediaType => "media_type",
            IngestError::InvalidEventType(_)
            | IngestError::BodyRead
            | IngestError::InvalidJson(_)
            | IngestError::DuplicateKey(_)
            | IngestError::NotAnObject => "invalid",
            IngestError::PayloadTooLarge { .. } => "size",
            IngestError::SchemaViolation(_) => "schema",
            IngestError::Unroutable => "unroutable",
            IngestError::Store(StoreError::QuotaExceeded) => "store_full",
            IngestError::Store(StoreError::DiskFull { .. }) => "disk_full",
            IngestError::Store(_) => "unavailable",
            IngestError::NotReplicated(_) => "sync_unavailable",
        }
    }

    /// The message sent to the client. Store failures get a fixed text: their detail (paths,
    /// OS errors) is for the log only.
    fn public_message(&self) -> String {
        match self {
            IngestError::Store(StoreError::QuotaExceeded) => {
                "the outbox is full; retry later".to_owned()
            }
            IngestError::Store(StoreError::DiskFull { .. }) => {
                "the disk holding the outbox is nearly full; retry later".to_owned()
            }
            IngestError::Store(_) => "the event store is unavailable; retry later".to_owned(),
            IngestError::NotReplicated(_) => {
                "the fleet database did not confirm the event in time; retry later".to_owned()
            }
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Source(refusal) => refusal.retry_after(),
            IngestError::Store(StoreError::QuotaExceeded | StoreError::DiskFull { .. }) => {
                Some(Duration::from_secs(30))
            }
            IngestError::Store(_) | IngestError::NotReplicated(_) => Some(Duration::from_secs(5)),
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
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs_f64().ceil() as u64;
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
