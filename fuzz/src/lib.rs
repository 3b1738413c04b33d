//! What the fuzz targets share: the daemon's real ingest router on a sink that keeps nothing,
//! built from a config text, and a way to send it one request.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::future::BoxFuture;
use orchestron::delivery::Delivery;
use orchestron::event::ValidatedEvent;
use orchestron::ingest::{EventSink, IngestState};
use orchestron::live::LiveConfig;
use orchestron::store::{Appended, Committed, IdempotencyKey, StoreError};
use orchestron::telemetry::otlp::Spans;
use tower::ServiceExt;

/// The API key of every source the targets configure.
pub const KEY: &str = "fuzz-key";

/// The sections every config needs, with brokers nobody listens on: nothing is published
/// (the sink keeps nothing anyway), and no store is opened.
pub const BASE: &str = "server: { listen: \"127.0.0.1:0\" }\n\
                        store: { path: /nonexistent/fuzz.redb }\n\
                        brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }\n  \
                        kafka: { bootstrap_servers: \"127.0.0.1:1\" }\n";

/// Accepts every event and keeps nothing; checks what ingest hands over.
struct Discard;

impl EventSink for Discard {
    fn append(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        delivery: Delivery,
    ) -> BoxFuture<'_, Result<Committed, StoreError>> {
        // Ingest stores only routed events, and every key it found.
        assert!(!delivery.destinations.is_empty(), "an unroutable event reached the store");
        if let Some(key) = &key {
            assert!(!key.key.is_empty(), "an empty idempotency key");
        }
        let appended = Appended::Accepted(event.id());
        Box::pin(async move { Ok(Committed { appended, batch_events: 1 }) })
    }
}

/// The ingest router for `config_text`, or `None` when the daemon would refuse the config
/// (then it must say why: never panic).
pub fn router(config_text: &str) -> Option<axum::Router> {
    let trace = |error: &dyn std::fmt::Display| {
        if std::env::var_os("ORCHESTRON_FUZZ_TRACE").is_some() {
            eprintln!("config refused: {error}");
        }
    };
    let config = orchestron::config::load_str(Path::new("fuzz.yaml"), config_text, &[])
        .map_err(|e| trace(&e))
        .ok()?;
    let live = LiveConfig::build(&config).map_err(|e| trace(&e)).ok()?;
    let state = IngestState {
        sink: Arc::new(Discard),
        live: Arc::new(ArcSwap::from_pointee(live)),
        metrics: Arc::new(orchestron::telemetry::metrics::Metrics::new()),
        fleet: None,
        spans: Spans::off(),
    };
    Some(orchestron::ingest::router(state))
}

/// One runtime for the whole fuzzing process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime")
    })
}

/// POSTs `body` to `path` with the API key and `headers`; returns the status. A status of
/// 500 or above is a bug whatever the input (the sink never fails).
pub fn post(
    router: &axum::Router,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> StatusCode {
    let mut request = Request::builder()
        .method("POST")
        .header("content-type", "application/json")
        .header("x-api-key", KEY);
    match path.parse::<axum::http::Uri>() {
        Ok(uri) => request = request.uri(uri),
        Err(_) => return StatusCode::NOT_FOUND,
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return StatusCode::BAD_REQUEST; // a header value http refuses: never reaches us
    };
    let response = runtime().block_on(router.clone().oneshot(request)).expect("infallible");
    let status = response.status();
    if std::env::var_os("ORCHESTRON_FUZZ_TRACE").is_some() {
        eprintln!("{path}: {status}");
    }
    assert!(status.as_u16() < 500, "{path}: {status} for {:?}", String::from_utf8_lossy(body));
    status
}

/// `text` as a YAML scalar that reads back as exactly `text` (JSON strings are YAML).
pub fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}
