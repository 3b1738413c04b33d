//! `GET /metrics` and `GET /ready`, served by the ingest listener (and mirrored on the admin
//! listener). Gauges that describe the store and the brokers are read at scrape time; the
//! per-destination backlog, which needs a walk of the outbox, by a background refresh.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::delivery::BrokerKind;
use crate::event::now_ms;
use crate::live::LiveConfig;
use crate::publish::Publishers;
use crate::store::Store;
use crate::telemetry::metrics::Metrics;

/// How often the per-destination backlog (an O(outbox) walk) is recomputed.
const BACKLOG_REFRESH: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Probe {
    pub store: Store,
    pub publishers: Publishers,
    pub live: Arc<ArcSwap<LiveConfig>>,
    pub metrics: Arc<Metrics>,
    pub max_store_bytes: u64,
    /// This instance in the fleet, with `sync` configured: its state is in `/ready`'s body
    /// (not a failure: the instance works on alone while PostgreSQL is down).
    pub fleet: Option<crate::sync::Fleet>,
}

/// `/ready`, and `/metrics` when `with_metrics`.
pub fn router(probe: Probe, with_metrics: bool) -> Router {
    let router = Router::new().route("/ready", get(ready));
    let router = if with_metrics { router.route("/metrics", get(metrics)) } else { router };
    router.with_state(probe)
}

impl Probe {
    /// The parts that keep the daemon from keeping its promise right now.
    pub fn failing(&self) -> Vec<&'static str> {
        let mut failing = Vec::new();
        if !self.store.is_healthy() {
            failing.push("store");
        }
        if self.store.file_bytes() > self.max_store_bytes {
            failing.push("store_quota");
        }
        if self.store.is_short_of_disk() {
            failing.push("store_disk_space");
        }
        // With `ack: fleet` a 202 needs PostgreSQL: without it, ingest answers 503.
        if self.fleet.as_ref().is_some_and(|f| f.acks_with_fleet() && !f.status().connected) {
            failing.push("sync");
        }
        for broker in self.live.load().routes.brokers_used() {
            if !self.publishers.get(broker).is_some_and(|p| p.is_connected()) {
                failing.push(broker.as_str());
            }
        }
        failing
    }

    async fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.store_bytes.set(self.store.file_bytes() as i64);
        m.store_max_bytes.set(self.max_store_bytes as i64);
        let dir = self.store.path().parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(free) = fs4::available_space(dir.unwrap_or(std::path::Path::new("."))) {
            m.store_disk_free_bytes.set(free as i64);
        }
        m.store_free_bytes.set(self.store.headroom_bytes().min(i64::MAX as u64) as i64);
        m.store_reserve_bytes.set(self.store.reserve_bytes() as i64);
        if let Ok(summary) = self.store.summary(now_ms()).await {
            m.outbox_pending.set(summary.pending as i64);
            m.outbox_oldest_age.set(summary.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
            m.dlq_entries.set(summary.dlq_entries as i64);
        }
        for broker in BrokerKind::ALL {
            if let Some(p) = self.publishers.get(broker) {
                m.broker_up.with_label_values(&[broker.as_str()]).set(i64::from(p.is_connected()));
            }
        }
    }
}

/// `GET /ready`: 200 or 503 naming what fails, with each configured broker's state (the
/// node it is connected to, or why it is down: `network`, `tls`, `auth`).
async fn ready(State(probe): State<Probe>) -> Response {
    let failing = probe.failing();
    let brokers: serde_json::Map<String, serde_json::Value> = BrokerKind::ALL
        .into_iter()
        .filter_map(|b| probe.publishers.get(b).map(|p| (b.as_str().to_owned(), json!(p.health()))))
        .collect();
    let mut body = json!({ "status": "ready", "brokers": brokers });
    if let Some(fleet) = &probe.fleet {
        body["sync"] = json!(fleet.status());
    }
    if failing.is_empty() {
        Json(body).into_response()
    } else {
        body["status"] = json!("not_ready");
        body["failing"] = json!(failing);
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `GET /metrics`: refreshes the scrape-time gauges, then renders every metric.
pub async fn metrics(State(probe): State<Probe>) -> Response {
    probe.refresh_gauges().await;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], probe.metrics.render()).into_response()
}

impl Probe {
    /// Recomputes `orchestron_outbox_destination_backlog` now and every `BACKLOG_REFRESH`,
    /// until `cancel`.
    pub async fn refresh_backlog(self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if let Ok(stats) = self.store.outbox_stats(now_ms()).await {
                self.metrics.outbox_backlog.reset();
                let mut by_name = std::collections::BTreeMap::<String, i64>::new();
                for d in stats.destinations {
                    *by_name.entry(d.name).or_default() += d.pending as i64;
                }
                for (name, pending) in by_name {
                    self.metrics.outbox_backlog.with_label_values(&[name.as_str()]).set(pending);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(BACKLOG_REFRESH) => {}
            }
        }
    }
}
