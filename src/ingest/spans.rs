//! The spans of an ingest request (`telemetry.otlp`): the request itself, a server span
//! under the sender's, and the group commit it waited for.

use std::time::SystemTime;

use axum::http::StatusCode;

use super::{Answer, Facts, IngestError};
use crate::store::Appended;
use crate::telemetry::otlp::{self, Span, SpanKind};
use crate::telemetry::trace::IngestTrace;

/// The request's span, named after its route (`POST /hooks/{source}`); 5xx answers are
/// errors, refusals (4xx) are not (the OpenTelemetry HTTP conventions).
pub(super) fn request(
    trace: &IngestTrace,
    route: &str,
    started: SystemTime,
    source: &str,
    status: StatusCode,
    result: &Result<Answer, IngestError>,
    facts: &Facts,
) -> Span {
    let name = format!("POST {route}");
    let now = SystemTime::now();
    let mut span = otlp::span(&trace.span, trace.parent, name, SpanKind::Server, started, now);
    if let Some(state) = &trace.state {
        span.trace_state = state.clone();
    }
    otlp::text(&mut span, "http.request.method", "POST");
    otlp::text(&mut span, "http.route", route);
    otlp::int(&mut span, "http.response.status_code", i64::from(status.as_u16()));
    otlp::text(&mut span, "orchestron.source", source);
    if let Some(event_type) = &facts.event_type {
        otlp::text(&mut span, "orchestron.event_type", event_type.as_str());
    }
    let (outcome, event_id) = match result {
        Ok(Answer::Stored(Appended::Accepted(id), _)) => ("accepted", Some(id)),
        Ok(Answer::Stored(Appended::Duplicate(id), _)) => ("duplicate", Some(id)),
        Ok(Answer::Challenge(_)) => ("challenge", None),
        Err(_) => ("refused", None),
    };
    otlp::text(&mut span, "orchestron.result", outcome);
    if let Some(id) = event_id {
        otlp::text(&mut span, "orchestron.event_id", id.to_string());
    }
    if let Err(error) = result {
        otlp::text(&mut span, "error.type", error.code());
        if status.is_server_error() {
            otlp::failed(&mut span, error.code());
        }
    }
    span
}

/// The group commit's span, a child of the request's.
pub(super) fn commit(
    trace: &IngestTrace,
    (started, ended, events): (SystemTime, SystemTime, u32),
) -> Span {
    let context = trace.span.child();
    let name = "store commit".to_owned();
    let mut span =
        otlp::span(&context, Some(trace.span.span_id), name, SpanKind::Internal, started, ended);
    otlp::int(&mut span, "orchestron.batch.events", i64::from(events));
    span
}
