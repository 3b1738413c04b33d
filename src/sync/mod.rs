//! Fleet sync over PostgreSQL (`sync:`): instances that share one database know of each
//! other. Each instance has a stable id (configured, or generated once and kept in its store
//! file), applies the fleet's migrations ([`migrations`]) when it first reaches the database,
//! and renews its row in `instances` every third of `sync.lease` (the heartbeat), with the
//! size of its outbox and DLQ. [`Fleet::members`] is the fleet as the database sees it:
//! `GET /admin/fleet` and `orchestron fleet status`.
//!
//! The store keeps a change feed while sync is on, and [`replicate`] copies it to the
//! `events` and `dlq` tables in batches, so PostgreSQL converges to what this instance holds.
//!
//! An instance stays fully functional while PostgreSQL is down: the heartbeat fails (one log
//! line when it starts, one when it ends), `/ready` reports the sync state in its body and
//! not as a failure, and nothing else waits for it. By its own monotonic clock an instance
//! knows when its lease has lapsed (no heartbeat committed within `lease`, less a margin).
//!
//! On top of that: `ack: fleet` ([`Fleet::replicated`]), fleet-wide idempotency
//! ([`dedup`]), takeover of a dead peer's events with fencing and reconciliation
//! ([`takeover`]), and the fleet DLQ ([`dlq`]). docs/fleet.md is the operator's account.

mod dedup;
mod dlq;
pub mod migrations;
mod pg;
mod replicate;
mod takeover;

pub use dedup::{KeyClaim, KeyOutcome};
pub use dlq::FleetDlqEntry;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{AckMode, SyncConfig};
use crate::event::{EventId, now_ms};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;

/// The store setting that keeps a generated instance id.
const INSTANCE_ID: &str = "fleet.instance_id";
/// How long after the last committed heartbeat an instance counts its own lease as lapsed,
/// short of the lease itself: clocks drift, and a peer may act the moment it lapses.
const LAPSE_MARGIN: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Config(String),
    #[error("PostgreSQL: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Unanswered(String),
    /// A row in PostgreSQL this build cannot read back.
    #[error("PostgreSQL holds an unreadable {0}")]
    Corrupt(String),
}

/// This instance in the fleet: a cheap clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    instance_id: String,
    lease: Duration,
    schema: String,
    pool: Pool,
    started_at_ms: u64,
    metrics: Arc<Metrics>,
    ack: AckMode,
    ack_timeout: Duration,
    dedup_timeout: Duration,
    dedup_hold_max: Duration,
    /// An event was stored held for its key ([`dedup::run_holds`] looks).
    holds_added: tokio::sync::Notify,
    store: Store,
    /// Fleet dedup: claims to confirm, for the background task.
    confirms: tokio::sync::mpsc::Sender<dedup::Confirm>,
    /// Outbox seqs below this may be in PostgreSQL (and so taken over by a peer): they are
    /// published only while this instance's lease is live and it has reconciled.
    held_below: std::sync::atomic::AtomicU64,
    /// Every change below this number is committed in PostgreSQL.
    replicated: tokio::sync::watch::Sender<u64>,
    // std Mutex: short updates, never held across an await.
    state: Mutex<State>,
}

impl State {
    /// No heartbeat committed within `lease` less the margin, by this instance's clock.
    fn lapsed(&self, lease: Duration) -> bool {
        let lapse = lease.mul_f64(1.0 - LAPSE_MARGIN);
        self.renewed.is_none_or(|t| t.elapsed() >= lapse)
    }
}

#[derive(Default)]
struct State {
    /// When the last heartbeat committed.
    renewed: Option<Instant>,
    epoch: i64,
    migrated: bool,
    /// The last failure, while the database is unreachable.
    error: Option<String>,
    down_since: Option<Instant>,
    /// Changes not yet replicated, and the age of the oldest.
    lag_events: u64,
    lag_seconds: f64,
    /// The epoch at which this instance last reconciled (dropped what peers took over).
    reconciled: Option<i64>,
}

/// What `/ready` and `/admin/fleet` say about this instance's sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    pub instance_id: String,
    /// The last heartbeat committed within the lease.
    pub connected: bool,
    pub epoch: i64,
    /// No heartbeat committed within the lease (less a margin), by this instance's clock.
    pub lease_lapsed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_age_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Changes to outbox and DLQ entries not yet committed in PostgreSQL.
    pub lag_events: u64,
    /// Age of the oldest of them (0 when none waits).
    pub lag_seconds: f64,
    /// Keyed events held until PostgreSQL rules on their key, and how holds ended.
    #[serde(default)]
    pub key_holds: KeyHolds,
}

/// Keyed events accepted while PostgreSQL could not answer for their key (docs/fleet.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyHolds {
    /// Held now.
    pub waiting: i64,
    /// Since start: published once the key was theirs.
    pub claimed: u64,
    /// Since start: settled unpublished, another event of the fleet holding the key.
    pub duplicate: u64,
    /// Since start: published on local dedup alone after `sync.dedup_hold_max`.
    pub expired: u64,
}

/// One instance as the database knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub instance_id: String,
    pub epoch: i64,
    /// Seconds since its last heartbeat.
    pub lease_age_seconds: f64,
    /// Its lease has not expired.
    pub live: bool,
    pub version: String,
    pub started_at: String,
    pub pending_events: i64,
    pub dlq_entries: i64,
    /// Its replication lag (changes not yet in PostgreSQL) at its last heartbeat.
    pub sync_lag_events: i64,
}

impl Fleet {
    /// Joins the fleet: resolves the instance id and starts the heartbeat (which applies the
    /// migrations first). Connects to nothing before returning.
    pub async fn start(
        config: &SyncConfig,
        store: &Store,
        tasks: &Tasks,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Fleet, SyncError> {
        let instance_id = match &config.instance_id {
            Some(id) => id.clone(),
            None => match store.text(INSTANCE_ID).await? {
                Some(id) => id,
                None => {
                    let id = EventId::new().to_string();
                    store.set_text(INSTANCE_ID, id.clone()).await?;
                    id
                }
            },
        };
        let (confirms, pending_confirms) = dedup::channel();
        let fleet = Fleet {
            inner: Arc::new(Inner {
                instance_id,
                lease: config.lease.get(),
                schema: config.postgres.schema.clone(),
                pool: pg::pool(&config.postgres)?,
                started_at_ms: now_ms(),
                metrics,
                ack: config.ack,
                ack_timeout: config.ack_timeout.get(),
                dedup_timeout: config.dedup_timeout.get(),
                dedup_hold_max: config.dedup_hold_max.get(),
                holds_added: tokio::sync::Notify::new(),
                store: store.clone(),
                confirms,
                // Everything in the store at start may have been replicated before.
                held_below: std::sync::atomic::AtomicU64::new(store.next_seq().await?),
                replicated: tokio::sync::watch::Sender::new(0),
                state: Mutex::default(),
            }),
        };
        fleet.inner.metrics.enable_sync();
        store.start_change_feed().await?;
        tracing::info!(instance_id = %fleet.inner.instance_id, "fleet sync on");
        tasks.spawn("sync: heartbeat", fleet.clone().heartbeat(store.clone(), stop.clone()));
        tasks.spawn("sync: replicator", replicate::run(fleet.clone(), store.clone(), stop.clone()));
        tasks.spawn("sync: takeover", takeover::run(fleet.clone(), store.clone(), stop.clone()));
        tasks
            .spawn("sync: key holds", dedup::run_holds(fleet.clone(), store.clone(), stop.clone()));
        tasks.spawn("sync: idempotency keys", dedup::run(fleet.clone(), pending_confirms, stop));
        Ok(fleet)
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// `sync.ack: fleet`: a 202 waits for PostgreSQL ([`Fleet::replicated`]).
    pub fn acks_with_fleet(&self) -> bool {
        self.inner.ack == AckMode::Fleet
    }

    /// Waits until every change the store has committed so far (its change mark, read after
    /// the caller's append returned) is committed in PostgreSQL too, for at most
    /// `sync.ack_timeout`. The replicator batches whatever is waiting, so concurrent requests
    /// share one PostgreSQL transaction.
    pub async fn replicated(&self) -> Result<(), SyncError> {
        let mark = self.inner.store.change_mark();
        let mut watch = self.inner.replicated.subscribe();
        let wait = watch.wait_for(|&replicated| replicated >= mark);
        match tokio::time::timeout(self.inner.ack_timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SyncError::Unanswered("fleet sync stopped".into())),
            Err(_) => Err(SyncError::Unanswered(format!(
                "PostgreSQL did not commit the event within sync.ack_timeout ({} ms)",
                self.inner.ack_timeout.as_millis()
            ))),
        }
    }

    pub fn status(&self) -> SyncStatus {
        let state = self.inner.state.lock().expect("sync state lock");
        let age = state.renewed.map(|t| t.elapsed());
        SyncStatus {
            instance_id: self.inner.instance_id.clone(),
            connected: age.is_some_and(|a| a < self.inner.lease) && state.error.is_none(),
            epoch: state.epoch,
            lease_lapsed: state.lapsed(self.inner.lease),
            last_heartbeat_age_seconds: age.map(|a| a.as_secs_f64()),
            error: state.error.clone(),
            lag_events: state.lag_events,
            lag_seconds: state.lag_seconds,
            key_holds: self.key_holds(),
        }
    }

    fn key_holds(&self) -> KeyHolds {
        let metrics = &self.inner.metrics;
        let ended =
            |outcome: &str| metrics.fleet_dedup_holds_ended.with_label_values(&[outcome]).get();
        KeyHolds {
            waiting: metrics.fleet_dedup_held.get(),
            claimed: ended("claimed"),
            duplicate: ended("duplicate"),
            expired: ended("expired"),
        }
    }

    /// Every instance of the fleet, from the database.
    pub async fn members(&self) -> Result<Vec<Member>, SyncError> {
        let client = self.inner.pool.get().await?;
        let schema = &self.inner.schema;
        let rows = client
            .query(
                &format!(
                    "SELECT instance_id, epoch,
                            extract(epoch from now() - heartbeat_at)::float8,
                            lease_expires_at > now(), version,
                            to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                            pending_events, dlq_entries, sync_lag_events
                     FROM {schema}.instances ORDER BY instance_id"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Member {
                instance_id: row.get(0),
                epoch: row.get(1),
                lease_age_seconds: row.get(2),
                live: row.get(3),
                version: row.get(4),
                started_at: row.get(5),
                pending_events: row.get(6),
                dlq_entries: row.get(7),
                sync_lag_events: row.get(8),
            })
            .collect())
    }

    /// Renews the lease every third of it until `stop`; applies the migrations first.
    async fn heartbeat(self, store: Store, stop: CancellationToken) {
        let every = self.inner.lease / 3;
        loop {
            // The lease runs from when the heartbeat was sent, not from when it returned:
            // by this clock it lapses no later than PostgreSQL's.
            let sent = Instant::now();
            let result = match tokio::time::timeout(every, self.beat(&store)).await {
                Ok(result) => result,
                Err(_) => Err(SyncError::Unanswered(format!(
                    "PostgreSQL did not answer the heartbeat within {} ms",
                    every.as_millis()
                ))),
            };
            let epoch = result.as_ref().ok().copied();
            self.record(sent, result);
            let reconciled = self.inner.state.lock().expect("sync state lock").reconciled;
            if let Some(epoch) = epoch.filter(|&e| reconciled != Some(e)) {
                let done = tokio::time::timeout(every, self.reconcile(&store, epoch)).await;
                match done.unwrap_or_else(|_| Err(SyncError::Unanswered("timed out".into()))) {
                    Ok(()) => {}
                    Err(error) => tracing::error!(%error, "reconciling with the fleet failed"),
                }
            }
            if epoch.is_some()
                && let Err(error) = self.drop_replayed_elsewhere(&store).await
            {
                tracing::warn!(%error, "dropping DLQ entries replayed by peers failed; will retry");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One heartbeat: the instance's row, with its lease and its outbox and DLQ sizes.
    async fn beat(&self, store: &Store) -> Result<i64, SyncError> {
        let inner = &self.inner;
        let mut client = inner.pool.get().await?;
        self.ensure_migrated(&mut client).await?;
        let summary = store.summary(now_ms()).await.unwrap_or_default();
        let lag = store.change_feed_lag().await.map(|l| l.rows).unwrap_or_default();
        let schema = &inner.schema;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO {schema}.instances
                         (instance_id, lease_expires_at, heartbeat_at, started_at, version,
                          pending_events, dlq_entries, sync_lag_events)
                     VALUES ($1, now() + $2::bigint * interval '1 millisecond', now(),
                             to_timestamp($3::float8), $4, $5, $6, $7)
                     ON CONFLICT (instance_id) DO UPDATE SET
                         lease_expires_at = EXCLUDED.lease_expires_at,
                         heartbeat_at = EXCLUDED.heartbeat_at,
                         started_at = EXCLUDED.started_at,
                         version = EXCLUDED.version,
                         pending_events = EXCLUDED.pending_events,
                         dlq_entries = EXCLUDED.dlq_entries,
                         sync_lag_events = EXCLUDED.sync_lag_events
                     RETURNING epoch"
                ),
                &[
                    &inner.instance_id,
                    &(inner.lease.as_millis() as i64),
                    &(inner.started_at_ms as f64 / 1000.0),
                    &env!("CARGO_PKG_VERSION"),
                    &(summary.pending as i64),
                    &(summary.dlq_entries as i64),
                    &(lag as i64),
                ],
            )
            .await?;
        let epoch: i64 = row.get(0);
        let live = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.instances
                     WHERE lease_expires_at > now() AND instance_id <> $1"
                ),
                &[&inner.instance_id],
            )
            .await?;
        let peers: i64 = live.get(0);
        inner.metrics.fleet_live_peers.set(peers);
        Ok(epoch)
    }

    /// Applies the migrations the first time this instance reaches the database.
    async fn ensure_migrated(
        &self,
        client: &mut deadpool_postgres::Client,
    ) -> Result<(), SyncError> {
        let inner = &self.inner;
        if inner.state.lock().expect("sync state lock").migrated {
            return Ok(());
        }
        let applied = migrations::migrate(client, &inner.schema).await?;
        if !applied.is_empty() {
            tracing::info!(schema = %inner.schema, ?applied, "fleet schema migrated");
        }
        inner.state.lock().expect("sync state lock").migrated = true;
        Ok(())
    }

    /// Keeps the state, the metrics and the log (one line per change of reachability).
    fn record(&self, sent: Instant, result: Result<i64, SyncError>) {
        let inner = &self.inner;
        let mut state = inner.state.lock().expect("sync state lock");
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        inner.metrics.sync_heartbeats.with_label_values(&[outcome]).inc();
        match result {
            Ok(epoch) => {
                if let Some(since) = state.down_since.take() {
                    tracing::info!(
                        outage_s = since.elapsed().as_secs(),
                        "PostgreSQL reachable again; fleet heartbeat renewed"
                    );
                }
                state.renewed = Some(sent);
                state.epoch = epoch;
                state.error = None;
            }
            Err(error) => {
                let message = error.to_string();
                if state.down_since.is_none() {
                    tracing::error!(
                        error = %message,
                        "fleet heartbeat failed: PostgreSQL unreachable; this instance works on alone"
                    );
                    state.down_since = Some(Instant::now());
                }
                state.error = Some(message);
            }
        }
        drop(state);
        let status = self.status();
        inner.metrics.sync_up.set(i64::from(status.connected));
        inner.metrics.sync_lease_lapsed.set(i64::from(status.lease_lapsed));
    }
}

/// tokio-postgres says only "db error" for an error the server sent: add what it said.
fn pg_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Connects and reads the schema's migration version: (applied, this build's latest).
pub async fn schema_version(config: &SyncConfig) -> Result<(i32, i32), SyncError> {
    let pool = pg::pool(&config.postgres)?;
    let client = pool.get().await?;
    let schema = &config.postgres.schema;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'migrations'",
            &[schema],
        )
        .await?;
    let current = match exists {
        Some(_) => {
            let sql = format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations");
            client.query_one(&sql, &[]).await?.get(0)
        }
        None => 0,
    };
    Ok((current, migrations::latest()))
}

/// Applies the migrations now (`orchestron sync migrate`); returns the versions applied.
pub async fn migrate_now(config: &SyncConfig) -> Result<Vec<i32>, SyncError> {
    let pool = pg::pool(&config.postgres)?;
    let mut client = pool.get().await?;
    migrations::migrate(&mut client, &config.postgres.schema).await
}
