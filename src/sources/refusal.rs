//! Why a source refused a request: the sender did not prove who it is, sends too fast, or
//! sent a request its source cannot take an event type or idempotency key from. Each refusal
//! has its status code, its stable `error` code and its metric reason; ingest wraps it.

use std::time::Duration;

use axum::http::StatusCode;

use super::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("signature not accepted: {0}")]
    Signature(#[from] SignatureError),
    #[error("this source needs a client certificate")]
    ClientCertificateRequired,
    #[error("this source does not accept the client certificate presented")]
    ClientCertificateRefused,
    #[error("rate limit exceeded for this source; retry later")]
    RateLimited { retry_after: Duration },
    #[error("idempotency key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("invalid event type: {0}")]
    InvalidEventType(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized | Refusal::Signature(_) => StatusCode::UNAUTHORIZED,
            Refusal::ClientCertificateRequired => StatusCode::UNAUTHORIZED,
            Refusal::ClientCertificateRefused => StatusCode::FORBIDDEN,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::InvalidIdempotencyKey | Refusal::InvalidEventType(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// Stable, machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Signature(_) => "invalid_signature",
            Refusal::ClientCertificateRequired => "client_certificate_required",
            Refusal::ClientCertificateRefused => "client_certificate_refused",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::InvalidIdempotencyKey => "invalid_idempotency_key",
            Refusal::InvalidEventType(_) => "invalid_event_type",
        }
    }

    /// The `reason` label of `orchestron_ingest_rejected_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Refusal::Unauthorized => "auth",
            Refusal::Signature(_) => "signature",
            Refusal::ClientCertificateRequired | Refusal::ClientCertificateRefused => {
                "client_certificate"
            }
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::InvalidIdempotencyKey | Refusal::InvalidEventType(_) => "invalid",
        }
    }

    /// How long the sender should wait before trying again, when waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}
