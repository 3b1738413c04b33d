//! Every metric Orchestron exports, in one place: names and help texts are a public
//! interface (dashboards and alerts depend on them).
//!
//! Labels come only from configuration (source, destination, broker) or from fixed sets
//! (status class, result, reason); never from event ids, types or anything a sender chooses.
//! A destination label is the configured broker and exchange or topic template, e.g.
//! `rabbitmq:orders` or `kafka:events.{type}`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One daemon's metrics, with their own registry (so that tests running several daemons in
/// one process do not mix their counts).
pub struct Metrics {
    registry: Registry,
    pub ingest_requests: IntCounterVec,
    pub ingest_accepted: IntCounterVec,
    pub ingest_rejected: IntCounterVec,
    pub ingest_duration: HistogramVec,
    pub ingest_body_bytes: HistogramVec,
    pub ingest_duplicates: IntCounterVec,
    pub dedup_expired: IntCounter,
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    /// Registered on first use: absent (not 0) on a daemon without TLS.
    tls_cert_expiry: IntGauge,
    tls_cert_expiry_registered: std::sync::Once,
    /// Fleet sync metrics: registered by [`Metrics::enable_sync`], absent without `sync`.
    pub sync_up: IntGauge,
    pub sync_lease_lapsed: IntGauge,
    pub sync_heartbeats: IntCounterVec,
    pub fleet_live_peers: IntGauge,
    pub sync_lag_events: IntGauge,
    pub sync_lag_seconds: Gauge,
    pub sync_replicated: IntCounterVec,
    pub sync_batches: IntCounterVec,
    pub fleet_taken_over: IntCounter,
    pub fleet_reconciled: IntCounter,
    pub fleet_claims_lost: IntCounter,
    pub fleet_dedup: IntCounterVec,
    pub fleet_dedup_fallbacks: IntCounter,
    pub fleet_dedup_held: IntGauge,
    pub fleet_dedup_holds_ended: IntCounterVec,
    sync_registered: std::sync::Once,
    pub store_batch_events: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_commit_failures: IntCounter,
    pub store_bytes: IntGauge,
    pub store_max_bytes: IntGauge,
    pub store_disk_free_bytes: IntGauge,
    pub store_free_bytes: IntGauge,
    pub store_reserve_bytes: IntGauge,
    pub store_compactions: IntCounter,
    pub outbox_pending: IntGauge,
    pub outbox_oldest_age: Gauge,
    pub outbox_backlog: IntGaugeVec,
    pub publish_total: IntCounterVec,
    pub publish_deferred: IntCounterVec,
    pub publish_latency: HistogramVec,
    pub retries: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub dlq_entries: IntGauge,
    pub dlq_expired: IntCounter,
    pub dlq_copy_failures: IntCounter,
    pub trace_spans_exported: IntCounter,
    pub trace_spans_dropped: IntCounterVec,
    pub broker_up: IntGaugeVec,
    pub broker_reconnects: IntCounterVec,
    pub broker_connect_failures: IntCounterVec,
    pub broker_node_info: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub config_info: IntGaugeVec,
    pub config_loaded: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_reload_failures: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("orchestron")
}

fn hopts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help).namespace("orchestron").buckets(buckets)
}

const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const LATENCY: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];
const BYTES: &[f64] = &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0];
const BATCH: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Records the serving certificate's expiry (and from then on exports the gauge).
    /// Exports the fleet sync metrics (once `sync` is configured).
    pub fn enable_sync(&self) {
        self.sync_registered.call_once(|| {
            let metrics: [Box<dyn prometheus::core::Collector>; 15] = [
                Box::new(self.fleet_dedup.clone()),
                Box::new(self.fleet_dedup_fallbacks.clone()),
                Box::new(self.fleet_dedup_held.clone()),
                Box::new(self.fleet_dedup_holds_ended.clone()),
                Box::new(self.fleet_taken_over.clone()),
                Box::new(self.fleet_reconciled.clone()),
                Box::new(self.fleet_claims_lost.clone()),
                Box::new(self.sync_up.clone()),
                Box::new(self.sync_lease_lapsed.clone()),
                Box::new(self.sync_heartbeats.clone()),
                Box::new(self.fleet_live_peers.clone()),
                Box::new(self.sync_lag_events.clone()),
                Box::new(self.sync_lag_seconds.clone()),
                Box::new(self.sync_replicated.clone()),
                Box::new(self.sync_batches.clone()),
            ];
            for metric in metrics {
                self.registry.register(metric).expect("metric names are unique");
            }
        });
    }

    pub fn set_tls_cert_expiry(&self, unix_seconds: i64) {
        self.tls_cert_expiry_registered.call_once(|| {
            let gauge = Box::new(self.tls_cert_expiry.clone());
            self.registry.register(gauge).expect("metric names are unique");
        });
        self.tls_cert_expiry.set(unix_seconds);
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric.expect("metric definitions are valid");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let metrics = Self {
            ingest_requests: reg!(IntCounterVec::new(
                opts(
                    "ingest_requests_total",
                    "Ingest requests answered, by source and status class (2xx, 4xx, 5xx)."
                ),
                &["source", "status"]
            )),
            ingest_accepted: reg!(IntCounterVec::new(
                opts("ingest_accepted_total", "Events accepted (202 after a durable commit)."),
                &["source"]
            )),
            ingest_rejected: reg!(IntCounterVec::new(
                opts(
                    "ingest_rejected_total",
                    "Requests refused, by reason: auth, signature, client_certificate, unknown_source, rate_limited, timeout, media_type, invalid, size, schema, unroutable, store_full, disk_full, unavailable, sync_unavailable."
                ),
                &["source", "reason"]
            )),
            ingest_duration: reg!(HistogramVec::new(
                hopts(
                    "ingest_request_duration_seconds",
                    "Time from request to answer, including the durable commit.",
                    SECONDS.to_vec()
                ),
                &["source"]
            )),
            ingest_body_bytes: reg!(HistogramVec::new(
                hopts("ingest_body_bytes", "Size of accepted request bodies.", BYTES.to_vec()),
                &["source"]
            )),
            ingest_duplicates: reg!(IntCounterVec::new(
                opts(
                    "ingest_duplicates_total",
                    "Requests answered 200 duplicate: their idempotency key was already used."
                ),
                &["source"]
            )),
            dedup_expired: reg!(IntCounter::with_opts(opts(
                "dedup_keys_expired_total",
                "Idempotency keys removed after store.dedup_window."
            ))),
            connections_open: reg!(IntGauge::with_opts(opts(
                "http_connections_open",
                "Ingest connections open now (server.max_connections caps it)."
            ))),
            connections_total: reg!(IntCounter::with_opts(opts(
                "http_connections_total",
                "Ingest connections accepted."
            ))),
            tls_handshake_failures: reg!(IntCounterVec::new(
                opts(
                    "tls_handshake_failures_total",
                    "TLS handshakes that failed, by reason: timeout, error."
                ),
                &["reason"]
            )),
            tls_reloads: reg!(IntCounterVec::new(
                opts(
                    "tls_cert_reloads_total",
                    "Loads of the TLS certificate and key after a change, by result: success, failure (the previous pair stays in use)."
                ),
                &["result"]
            )),
            tls_cert_expiry: IntGauge::with_opts(opts(
                "tls_cert_expiry_timestamp_seconds",
                "When the ingest listener's TLS certificate expires (Unix time); absent without TLS."
            ))
            .expect("metric definitions are valid"),
            tls_cert_expiry_registered: std::sync::Once::new(),
            sync_up: IntGauge::with_opts(opts(
                "sync_up",
                "1 while this instance's fleet heartbeat commits in PostgreSQL (within the lease)."
            ))
            .expect("metric definitions are valid"),
            sync_lease_lapsed: IntGauge::with_opts(opts(
                "sync_lease_lapsed",
                "1 when no heartbeat committed within sync.lease (by this instance's clock)."
            ))
            .expect("metric definitions are valid"),
            sync_heartbeats: IntCounterVec::new(
                opts("sync_heartbeats_total", "Fleet heartbeats, by result: ok, failed."),
                &["result"],
            )
            .expect("metric definitions are valid"),
            fleet_live_peers: IntGauge::with_opts(opts(
                "fleet_live_peers",
                "Other instances of the fleet whose lease has not expired (at the last heartbeat)."
            ))
            .expect("metric definitions are valid"),
            sync_lag_events: IntGauge::with_opts(opts(
                "sync_lag_events",
                "Changes to outbox and DLQ entries not yet committed in PostgreSQL."
            ))
            .expect("metric definitions are valid"),
            sync_lag_seconds: Gauge::with_opts(opts(
                "sync_lag_seconds",
                "Age of the oldest change not yet committed in PostgreSQL (0 when none waits)."
            ))
            .expect("metric definitions are valid"),
            sync_replicated: IntCounterVec::new(
                opts(
                    "sync_replicated_total",
                    "Entries written to PostgreSQL by the replicator, by table (events, dlq) and \
                     operation (upsert, delete)."
                ),
                &["table", "op"],
            )
            .expect("metric definitions are valid"),
            sync_batches: IntCounterVec::new(
                opts("sync_batches_total", "Replication batches, by result: ok, failed."),
                &["result"],
            )
            .expect("metric definitions are valid"),
            fleet_taken_over: IntCounter::with_opts(opts(
                "fleet_taken_over_events_total",
                "Events this instance took over from dead peers and published as its own."
            ))
            .expect("metric definitions are valid"),
            fleet_reconciled: IntCounter::with_opts(opts(
                "fleet_reconciled_events_total",
                "Events of this instance that peers took over while it was away, dropped here \
                 without publishing."
            ))
            .expect("metric definitions are valid"),
            fleet_claims_lost: IntCounter::with_opts(opts(
                "fleet_claims_lost_total",
                "Takeover claims that another instance took first (this one stalled)."
            ))
            .expect("metric definitions are valid"),
            fleet_dedup: IntCounterVec::new(
                opts(
                    "fleet_dedup_claims_total",
                    "Idempotency keys claimed in PostgreSQL, by result: claimed, duplicate, unknown."
                ),
                &["result"],
            )
            .expect("metric definitions are valid"),
            fleet_dedup_fallbacks: IntCounter::with_opts(opts(
                "fleet_dedup_fallbacks_total",
                "Keyed events published on local dedup alone: PostgreSQL did not rule on the key within sync.dedup_hold_max (or a claim's confirmation was dropped, the queue full)."
            ))
            .expect("metric definitions are valid"),
            fleet_dedup_held: IntGauge::with_opts(opts(
                "fleet_dedup_held_events",
                "Keyed events accepted while PostgreSQL could not answer for the key, held from publishing until it rules."
            ))
            .expect("metric definitions are valid"),
            fleet_dedup_holds_ended: IntCounterVec::new(
                opts(
                    "fleet_dedup_holds_ended_total",
                    "Key holds ended, by outcome: claimed (published), duplicate (settled unpublished: another event holds the key), expired (published after sync.dedup_hold_max)."
                ),
                &["outcome"],
            )
            .expect("metric definitions are valid"),
            sync_registered: std::sync::Once::new(),
            store_batch_events: reg!(Histogram::with_opts(hopts(
                "store_append_batch_events",
                "Events per durable group commit (events per fsync).",
                BATCH.to_vec()
            ))),
            store_commit_seconds: reg!(Histogram::with_opts(hopts(
                "store_commit_duration_seconds",
                "Duration of store commits (durable and settle-only).",
                SECONDS.to_vec()
            ))),
            store_commit_failures: reg!(IntCounter::with_opts(opts(
                "store_commit_failures_total",
                "Store commits that failed; each answered its batch with 503 and reopened the store."
            ))),
            store_bytes: reg!(IntGauge::with_opts(opts("store_bytes", "Size of the store file."))),
            store_max_bytes: reg!(IntGauge::with_opts(opts(
                "store_max_bytes",
                "store.max_bytes: above this size ingest answers 503."
            ))),
            store_disk_free_bytes: reg!(IntGauge::with_opts(opts(
                "store_disk_free_bytes",
                "Free space on the store's file system."
            ))),
            store_free_bytes: reg!(IntGauge::with_opts(opts(
                "store_free_bytes",
                "What the store can still write before ingest answers 503 for disk space: the file system's free space above store.min_free_bytes, plus free pages inside the store file (measured while the disk is low)."
            ))),
            store_reserve_bytes: reg!(IntGauge::with_opts(opts(
                "store_reserve_bytes",
                "Size of the disk reserve file in place next to the store (0 while it is given up to let the outbox drain on a full disk)."
            ))),
            store_compactions: reg!(IntCounter::with_opts(opts(
                "store_compactions_total",
                "Compactions of the store file that gave its free pages back to the filesystem.",
            ))),
            outbox_pending: reg!(IntGauge::with_opts(opts(
                "outbox_pending_events",
                "Events accepted and not yet delivered to every destination (nor dead-lettered)."
            ))),
            outbox_oldest_age: reg!(Gauge::with_opts(opts(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest pending event, computed at scrape; 0 when the outbox is empty."
            ))),
            outbox_backlog: reg!(IntGaugeVec::new(
                opts(
                    "outbox_destination_backlog",
                    "Pending events per destination (refreshed every 15 s)."
                ),
                &["destination"]
            )),
            publish_total: reg!(IntCounterVec::new(
                opts(
                    "relay_publish_total",
                    "Publish attempts by destination and result: ok, transient, unroutable, permanent."
                ),
                &["destination", "result"]
            )),
            publish_deferred: reg!(IntCounterVec::new(
                opts(
                    "relay_deferred_total",
                    "Publishes not attempted because the broker was not connected."
                ),
                &["destination"]
            )),
            publish_latency: reg!(HistogramVec::new(
                hopts(
                    "relay_delivery_latency_seconds",
                    "Time from acceptance to the broker's confirm.",
                    LATENCY.to_vec()
                ),
                &["destination"]
            )),
            retries: reg!(IntCounterVec::new(
                opts("relay_retries_total", "Failed publishes scheduled for another attempt."),
                &["destination"]
            )),
            dead_lettered: reg!(IntCounterVec::new(
                opts(
                    "dead_lettered_total",
                    "Event deliveries moved to the DLQ, by reason: unroutable, rejected, max_attempts, expired, no_route."
                ),
                &["reason"]
            )),
            dlq_entries: reg!(IntGauge::with_opts(opts(
                "dlq_entries",
                "Entries in the dead-letter queue."
            ))),
            dlq_expired: reg!(IntCounter::with_opts(opts(
                "dlq_expired_total",
                "DLQ entries removed by retention (dlq.max_entries, dlq.max_age)."
            ))),
            dlq_copy_failures: reg!(IntCounter::with_opts(opts(
                "dlq_copy_failures_total",
                "Dead-letter copies (dlq.publish_to) that could not be published."
            ))),
            trace_spans_exported: reg!(IntCounter::with_opts(opts(
                "trace_spans_exported_total",
                "Spans the OTLP collector took (telemetry.otlp)."
            ))),
            trace_spans_dropped: reg!(IntCounterVec::new(
                opts(
                    "trace_spans_dropped_total",
                    "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector did not take the batch), rejected (the collector refused them), disabled (telemetry.otlp removed by a reload)."
                ),
                &["reason"]
            )),
            broker_up: reg!(IntGaugeVec::new(
                opts(
                    "broker_up",
                    "1 when the broker is connected (RabbitMQ) or reachable (Kafka)."
                ),
                &["broker"]
            )),
            broker_reconnects: reg!(IntCounterVec::new(
                opts("broker_reconnects_total", "Connections (re)established to the broker."),
                &["broker"]
            )),
            broker_connect_failures: reg!(IntCounterVec::new(
                opts(
                    "broker_connect_failures_total",
                    "Failed connects to a broker (and connections lost), by reason: network, tls, auth."
                ),
                &["broker", "reason"]
            )),
            broker_node_info: reg!(IntGaugeVec::new(
                opts(
                    "broker_node_info",
                    "1 for the broker node (host:port from the config) the connection is to now."
                ),
                &["broker", "node"]
            )),
            build_info: reg!(IntGaugeVec::new(
                opts("build_info", "Always 1; the version label says which build runs."),
                &["version"]
            )),
            config_info: reg!(IntGaugeVec::new(
                opts(
                    "config_info",
                    "Always 1; the hash label fingerprints the running configuration."
                ),
                &["hash"]
            )),
            config_loaded: reg!(IntGauge::with_opts(opts(
                "config_loaded_timestamp_seconds",
                "When the running configuration was loaded or last reloaded (Unix time)."
            ))),
            config_reloads: reg!(IntCounterVec::new(
                opts(
                    "config_reloads_total",
                    "Reloads (file change or SIGHUP) by result: success, failure."
                ),
                &["result"]
            )),
            config_reload_failures: reg!(IntCounter::with_opts(opts(
                "config_reload_failures_total",
                "Reloads that failed (the previous configuration kept running); the same as config_reloads_total{result=\"failure\"}."
            ))),
            registry,
        };
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        // Only fails if registered twice, which one registry per daemon prevents.
        let _ = metrics.registry.register(Box::new(process));
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// `2xx`, `4xx`, `5xx` for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
