//! Span export over OTLP/HTTP with protobuf bodies (`telemetry.otlp`).
//!
//! Three kinds of span, all in the event's trace (docs/monitoring.md, "Spans over OTLP"):
//! the ingest request (a server span, child of the sender's span), the group commit it
//! waited for (a child of the ingest span) and each publish attempt (a producer span, also a
//! child of the ingest span, whose id is the one the message's `traceparent` carries). The
//! ingest span's id is stored with the event, so a publish hours later or after a restart is
//! still linked to it.
//!
//! Recording never waits: a span goes into a bounded queue ([`QUEUE`]) or is dropped and
//! counted (`orchestron_trace_spans_dropped_total{reason="queue_full"}`). One task sends the
//! queue in batches; a batch the collector does not take after [`ATTEMPTS`] tries is dropped
//! and counted too (`reason="export_failed"`). The settings are read at each batch, so a
//! reload changes the endpoint, its headers and the ratio without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, status};
use prost::Message;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::trace::TraceParent;

pub use opentelemetry_proto::tonic::trace::v1::Span;
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Spans waiting to be sent, at most; more are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Spans per export request, at most.
const BATCH_MAX: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Tries per batch (the first and two retries, 1 s then 2 s apart).
const ATTEMPTS: u32 = 3;
/// At shutdown, what is queued gets this long to go out.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// The checked `telemetry.otlp` settings, part of the running configuration.
#[derive(Debug)]
pub struct Settings {
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Duration,
    /// A trace whose randomness (the trace id's last 56 bits) is below this is recorded.
    threshold: u64,
}

const RANDOM_BITS: u32 = 56;

/// What `telemetry.otlp` says, as plain values (the config layer holds the file's form).
pub struct Options<'a> {
    pub endpoint: &'a str,
    pub sample_ratio: f64,
    pub headers: Vec<(&'a str, &'a str)>,
    pub timeout: Duration,
}

impl Settings {
    /// Builds the settings; [`check`] has refused what would fail here.
    pub fn new(options: &Options<'_>) -> Result<Self, String> {
        let url = traces_url(options.endpoint)?;
        let mut headers = HeaderMap::new();
        for &(name, value) in &options.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let threshold = (options.sample_ratio * (1u64 << RANDOM_BITS) as f64) as u64;
        Ok(Self { url, headers, timeout: options.timeout, threshold })
    }

    /// Whether a trace this instance starts, or whose sender did not record it, is recorded:
    /// decided from the trace id alone, so every instance decides the same for one trace.
    pub fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let mut random = [0u8; 8];
        random[1..].copy_from_slice(&trace_id[9..]);
        u64::from_be_bytes(random) < self.threshold
    }
}

/// The problems of a `telemetry.otlp` section, by key.
pub fn check(options: &Options<'_>) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Err(message) = traces_url(options.endpoint) {
        problems.push(("endpoint", message));
    }
    if !(0.0..=1.0).contains(&options.sample_ratio) {
        problems.push(("sample_ratio", "must be between 0 and 1".to_owned()));
    }
    if options.timeout.is_zero() {
        problems.push(("timeout", "must be longer than 0s".to_owned()));
    }
    for &(name, value) in &options.headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(("headers", format!("{name:?} is not a header name")));
        } else if HeaderValue::from_str(value).is_err() {
            problems.push(("headers", format!("{name}: not a valid header value")));
        }
    }
    problems
}

/// The signal URL: the endpoint as given when it has a path, else with `/v1/traces`.
fn traces_url(endpoint: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("{endpoint:?} is not a URL ({e}); use e.g. http://127.0.0.1:4318"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{endpoint:?}: the scheme must be http or https"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/v1/traces");
    }
    Ok(url)
}

/// Where spans are recorded: a cheap clone. [`Spans::off`] records nothing.
#[derive(Clone)]
pub struct Spans {
    queue: Option<mpsc::Sender<Span>>,
    metrics: Option<Arc<Metrics>>,
}

impl Spans {
    /// Records nothing (benchmarks, and tests that build the pieces by hand).
    pub fn off() -> Self {
        Self { queue: None, metrics: None }
    }

    /// The recorder and its export task (to spawn; it runs until `stop`, then flushes).
    /// `settings` says at each batch where spans go now (`None`: export is off), so a reload
    /// applies to the next batch.
    pub fn start(
        settings: CurrentSettings,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let exporter = Exporter::new(settings, Arc::clone(&metrics));
        (Self { queue: Some(tx), metrics: Some(metrics) }, exporter.run(rx, stop))
    }

    /// Queues `span`, or drops it (counted) when the queue is full.
    pub fn record(&self, span: Span) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(span).is_err()
            && let Some(metrics) = &self.metrics
        {
            metrics.trace_spans_dropped.with_label_values(&["queue_full"]).inc();
        }
    }
}

/// A span of `context` (trace and span id) under `parent`, from `start` to `end`. Only a
/// server span's parent is remote (the sender's); the others' parent is the ingest span.
pub fn span(
    context: &TraceParent,
    parent: Option<[u8; 8]>,
    name: String,
    kind: SpanKind,
    start: SystemTime,
    end: SystemTime,
) -> Span {
    let remote = kind == SpanKind::Server && parent.is_some();
    Span {
        trace_id: context.trace_id.to_vec(),
        span_id: context.span_id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        // Bits 8 and 9: whether the parent is known to be remote (W3C flags in 0..8).
        flags: u32::from(context.flags) | 0x100 | if remote { 0x200 } else { 0 },
        name,
        kind: kind as i32,
        start_time_unix_nano: unix_nanos(start),
        end_time_unix_nano: unix_nanos(end.max(start)),
        ..Span::default()
    }
}

/// Adds a string attribute.
pub fn text(span: &mut Span, key: &str, value: impl Into<String>) {
    span.attributes.push(KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..KeyValue::default()
    });
}

/// Adds an integer attribute.
pub fn int(span: &mut Span, key: &str, value: i64) {
    span.attributes.push(KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..KeyValue::default()
    });
}

/// Marks the span failed, with a message.
pub fn failed(span: &mut Span, message: impl Into<String>) {
    span.status = Some(Status { message: message.into(), code: status::StatusCode::Error as i32 });
}

/// Marks the span successful (only a final, confirmed result is).
pub fn ok(span: &mut Span) {
    span.status = Some(Status { message: String::new(), code: status::StatusCode::Ok as i32 });
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Reads the export settings in force now.
pub type CurrentSettings = Arc<dyn Fn() -> Option<Arc<Settings>> + Send + Sync>;

/// The export task.
struct Exporter {
    settings: CurrentSettings,
    metrics: Arc<Metrics>,
    client: Option<reqwest::Client>,
    resource: Resource,
    /// Whether the last batch failed: failures are logged when they start and end.
    failing: AtomicBool,
}

impl Exporter {
    fn new(settings: CurrentSettings, metrics: Arc<Metrics>) -> Self {
        let mut resource = Span::default();
        text(&mut resource, "service.name", "orchestron");
        text(&mut resource, "service.version", env!("CARGO_PKG_VERSION"));
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            text(&mut resource, "host.name", host.trim());
        }
        let resource = Resource { attributes: resource.attributes, ..Resource::default() };
        // No connection pool beyond one idle connection: a batch every half second at most.
        let client = match reqwest::Client::builder().pool_max_idle_per_host(1).build() {
            Ok(client) => Some(client),
            Err(error) => {
                // E.g. a system CA store with no usable certificate: spans are then dropped
                // (and counted) rather than the daemon refusing to start.
                tracing::error!(%error, "cannot build the OTLP client; spans will not be exported");
                None
            }
        };
        Self { settings, metrics, client, resource, failing: AtomicBool::new(false) }
    }

    async fn run(self, mut queue: mpsc::Receiver<Span>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            tokio::select! {
                n = queue.recv_many(&mut batch, BATCH_MAX) => if n == 0 { break },
                _ = stop.cancelled() => break,
            }
            let wait = tokio::time::sleep(BATCH_DELAY);
            tokio::pin!(wait);
            while batch.len() < BATCH_MAX {
                let room = BATCH_MAX - batch.len();
                tokio::select! {
                    n = queue.recv_many(&mut batch, room) => if n == 0 { break },
                    _ = &mut wait => break,
                    _ = stop.cancelled() => break,
                }
            }
            self.export(std::mem::take(&mut batch), &stop).await;
            if stop.is_cancelled() {
                break;
            }
        }
        // Stopping: what is queued goes out, one try per batch, within FLUSH_DEADLINE.
        queue.close();
        while let Ok(span) = queue.try_recv() {
            batch.push(span);
            if batch.len() == BATCH_MAX {
                self.export(std::mem::take(&mut batch), &stop).await;
            }
        }
        if !batch.is_empty() {
            self.export(batch, &stop).await;
        }
    }

    /// Sends one batch, retrying what may succeed later. Once `stop` is cancelled a batch
    /// gets one try, of at most FLUSH_DEADLINE, and no retry.
    async fn export(&self, spans: Vec<Span>, stop: &CancellationToken) {
        let count = spans.len() as u64;
        let (Some(settings), Some(client)) = ((self.settings)(), &self.client) else {
            // Turned off by a reload since these were recorded (or no client).
            self.metrics.trace_spans_dropped.with_label_values(&["disabled"]).inc_by(count);
            return;
        };
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "orchestron".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let pause = tokio::time::sleep(Duration::from_secs(1 << (attempt - 1)));
                tokio::select! {
                    _ = pause => {}
                    _ = stop.cancelled() => break,
                }
            }
            let timeout = match stop.is_cancelled() {
                true => settings.timeout.min(FLUSH_DEADLINE),
                false => settings.timeout,
            };
            let sent = client
                .post(settings.url.clone())
                .headers(settings.headers.clone())
                .header(CONTENT_TYPE, "application/x-protobuf")
                .timeout(timeout)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => {
                    let rejected = answer
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| ExportTraceServiceResponse::decode(b).ok())
                        .and_then(|r| r.partial_success)
                        .map_or(0, |p| p.rejected_spans.max(0) as u64)
                        .min(count);
                    let m = &self.metrics;
                    m.trace_spans_exported.inc_by(count - rejected);
                    m.trace_spans_dropped.with_label_values(&["rejected"]).inc_by(rejected);
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(endpoint = %settings.url, "span export works again");
                    }
                    return;
                }
                Ok(answer) => {
                    let code = answer.status();
                    last_error = format!("the collector answered {code}");
                    // The OTLP specification's retryable answers; any other is final.
                    if !matches!(code.as_u16(), 429 | 502 | 503 | 504) {
                        break;
                    }
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        self.metrics.trace_spans_dropped.with_label_values(&["export_failed"]).inc_by(count);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %settings.url, error = %last_error, spans = count,
                "span export failed; spans are dropped until the collector takes them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(endpoint: &str) -> Options<'_> {
        Options { endpoint, sample_ratio: 1.0, headers: vec![], timeout: Duration::from_secs(1) }
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_unless_it_has_one() {
        let url = |e: &str| traces_url(e).map(|u| u.to_string());
        assert_eq!(url("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(url("https://otel.example/").unwrap(), "https://otel.example/v1/traces");
        assert_eq!(url("http://c:4318/custom/traces").unwrap(), "http://c:4318/custom/traces");
        assert!(url("127.0.0.1:4318").is_err());
        assert!(url("ftp://c/").is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = Options {
            sample_ratio: 2.0,
            timeout: Duration::ZERO,
            headers: vec![("a b", "x")],
            ..options("nope")
        };
        let found: Vec<&str> = check(&bad).into_iter().map(|(at, _)| at).collect();
        assert_eq!(found, ["endpoint", "sample_ratio", "timeout", "headers"]);
        assert!(check(&options("http://127.0.0.1:4318")).is_empty());
    }

    #[test]
    fn the_ratio_decides_from_the_trace_id() {
        let settings = |sample_ratio: f64| {
            Settings::new(&Options { sample_ratio, ..options("http://c:4318") }).unwrap()
        };
        let (none, all, half) = (settings(0.0), settings(1.0), settings(0.5));
        let mut kept = 0;
        for _ in 0..10_000 {
            let id = TraceParent::new_trace().trace_id;
            assert!(!none.samples(&id));
            assert!(all.samples(&id));
            kept += usize::from(half.samples(&id));
        }
        assert!((4_500..5_500).contains(&kept), "{kept} of 10000 at 0.5");
        let id = TraceParent::new_trace().trace_id;
        assert_eq!(half.samples(&id), half.samples(&id), "the same trace, the same answer");
    }
}
