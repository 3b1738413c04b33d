//! The durable outbox and dead-letter queue: the only module that touches redb.
//!
//! Writes go through one writer thread ([`writer`]) that commits every queued request in one
//! transaction (group commit) and answers each caller after that commit returned. Reads run
//! on read snapshots in `spawn_blocking` ([`query`]). Tables:
//!
//! | table       | key                      | value                                       |
//! |-------------|--------------------------|---------------------------------------------|
//! | `events`    | seq                      | immutable event record ([`record`])         |
//! | `delivery`  | seq                      | per-destination state, once routed          |
//! | `due_lanes` | (lane, due time ms, seq) | (): what is due when, per broker            |
//! | `dlq`       | dlq seq                  | dead-lettered event and why                 |
//! | `dlq_ids`   | event id                 | dlq seq                                     |
//! | `dedup`     | (source, key)            | (event id, expiry ms): idempotency keys     |
//! | `dedup_expiry` | (expiry ms, source, key) | (): which keys to garbage-collect when    |
//! | `meta`      | name                     | format version, next seq, next dlq seq      |
//!
//! Lanes: lane 0 holds events not yet routed; a routed event has one entry in the lane of
//! each broker it still waits for, due at the earliest retry there. The relay claims only the
//! lanes of connected brokers, so a dead broker's backlog costs nothing and never stalls the
//! other's. `seq` grows by one per appended (or replayed) event and is never reused.

#[cfg(test)]
mod power_loss;
mod query;
mod record;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::StoreConfig;
use crate::event::{EventId, ValidatedEvent};
use crate::telemetry::metrics::Metrics;

pub use query::{
    Claim, DestinationBacklog, DlqEntry, DlqFilter, DlqPage, OutboxEntry, OutboxStats,
    ReadOnlyStore, Summary,
};
pub use record::{
    DeadDestination, DecodeError, Delivery, DestinationState, DlqRecord, Reason, RetryOverride,
    Status,
};
use writer::{Command, Writer};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DELIVERY: TableDefinition<u64, &[u8]> = TableDefinition::new("delivery");
/// Format 1's single due index, migrated into `due_lanes` on open.
const DUE_V1: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
const LANES: TableDefinition<(u8, u64, u64), ()> = TableDefinition::new("due_lanes");
const DLQ: TableDefinition<u64, &[u8]> = TableDefinition::new("dlq");
const DLQ_IDS: TableDefinition<u128, u64> = TableDefinition::new("dlq_ids");
const DEDUP: TableDefinition<(&str, &str), (u128, u64)> = TableDefinition::new("dedup");
const DEDUP_EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("dedup_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of the table layout; a file written by a newer layout is refused, not misread.
const FORMAT_VERSION: u64 = 2;
/// The lane of events not yet routed.
pub const UNROUTED: u8 = 0;
/// Requests waiting for the writer. Bounded so that a stalled disk pushes back on senders.
const QUEUE_DEPTH: usize = 8192;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Errors are `Clone` because one failed commit answers every request of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store is over its size quota")]
    QuotaExceeded,
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("store error: {0}")]
    Db(String),
    #[error("record {seq}: {source}")]
    Corrupt { seq: u64, source: DecodeError },
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// What the relay decided for one claimed outbox entry, applied in one transaction with the
/// rest of its batch.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub seq: u64,
    /// Due entries (lane, due time) the claim found; removed.
    pub remove_due: Vec<(u8, u64)>,
    /// Due entries to add: one per lane that still has pending destinations.
    pub add_due: Vec<(u8, u64)>,
    pub outcome: Outcome,
    /// Destinations given up on in this pass, moved to the DLQ in the same transaction.
    pub dead_letter: Option<DlqRecord>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Leave the records as they are (only the due index moves).
    Keep,
    /// Write the new delivery state.
    Store(Delivery),
    /// Replace these destinations' states (by index) in the stored record; if nothing is
    /// pending afterwards, remove the event. Lets workers of different brokers settle the
    /// same event without overwriting each other.
    Update(Vec<(usize, DestinationState)>),
    /// Nothing is pending any more: remove the event and its delivery state.
    Delete,
}

/// An idempotency key and until when it holds (ms since the epoch).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub expires_at_ms: u64,
}

/// What [`Store::append_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The event is durable under this id.
    Accepted(EventId),
    /// The key was seen before: nothing was written; this is the first event's id.
    Duplicate(EventId),
}

/// Which dead-letter entries an admin operation applies to.
#[derive(Debug, Clone)]
pub enum DlqSelector {
    Id(EventId),
    Matching(DlqFilter),
}

/// Where the database lives: its file, or in unit tests a simulated disk whose power can be
/// cut ([`power_loss`]).
#[derive(Clone)]
enum Medium {
    File(PathBuf),
    #[cfg(test)]
    Simulated(power_loss::Disk),
}

/// State the writer thread and the handles share.
struct Shared {
    path: PathBuf,
    medium: Medium,
    /// `None` while the writer reopens the database after a failed commit.
    db: ArcSwapOption<Database>,
    healthy: AtomicBool,
    file_bytes: AtomicU64,
    /// Woken after every commit that appended events, so an idle relay starts at once.
    appended: Notify,
    /// Durable (fsync'd) commits since open.
    durable_commits: AtomicU64,
    /// Events appended since open.
    appended_events: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub durable_commits: u64,
    pub appended_events: u64,
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Joins the writer thread on shutdown.
pub struct StoreCloser {
    tx: mpsc::Sender<Command>,
    thread: std::thread::JoinHandle<()>,
}

impl Store {
    /// Opens (creating or, after a crash, repairing) the store file and starts the writer.
    /// Blocking: call it from `spawn_blocking` or before the runtime gets busy.
    pub fn open(config: &StoreConfig) -> Result<(Store, StoreCloser)> {
        Self::open_with_metrics(config, Arc::new(Metrics::new()))
    }

    /// [`Store::open`], recording commit metrics into `metrics`.
    pub fn open_with_metrics(
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, StoreCloser)> {
        Self::open_on(Medium::File(config.path.clone()), config, metrics)
    }

    fn open_on(
        medium: Medium,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, StoreCloser)> {
        let started = std::time::Instant::now();
        let tuning = Tuning {
            cache_bytes: config.cache_bytes.as_u64() as usize,
            quick_repair: config.quick_repair,
        };
        let db = open_database(&medium, tuning)?;
        let counters = read_counters(&db)?;
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            medium,
            db: ArcSwapOption::from_pointee(db),
            healthy: AtomicBool::new(true),
            file_bytes: AtomicU64::new(file_len(&config.path)),
            appended: Notify::new(),
            durable_commits: AtomicU64::new(0),
            appended_events: AtomicU64::new(0),
            metrics,
        });
        tracing::info!(
            path = %config.path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store opened"
        );
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer::new(
            rx,
            Arc::clone(&shared),
            tuning,
            config.max_bytes.as_u64(),
            config.commit_batch_max,
            counters,
        );
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        spawn_flush_ticker(tx.clone());
        Ok((Store { tx: tx.clone(), shared }, StoreCloser { tx, thread }))
    }

    /// Makes `event` durable. Returns only after the commit holding it returned Ok.
    pub async fn append(&self, event: ValidatedEvent) -> Result<EventId> {
        match self.append_once(event, None).await? {
            Appended::Accepted(id) | Appended::Duplicate(id) => Ok(id),
        }
    }

    /// Makes `event` durable unless `key` was already used by its source and has not expired:
    /// then nothing is written and the first event's id is returned. The decision and the key
    /// are part of the same commit as the event, so two concurrent requests with one key
    /// cannot both be accepted, and a restart does not forget a key.
    pub async fn append_once(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
    ) -> Result<Appended> {
        self.call(|reply| Command::Append { event, key, reply }).await
    }

    /// Removes idempotency keys that expired before `now_ms`, at most `limit` per call so a
    /// large backlog of keys never makes one huge transaction. Returns how many were removed.
    pub async fn dedup_expire(&self, now_ms: u64, limit: usize) -> Result<u64> {
        self.call(|reply| Command::ExpireDedup { now_ms, limit, reply }).await
    }

    /// Applies the relay's decisions in one (cheap, non-durable) commit.
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<()> {
        self.call(|reply| Command::Settle { settlements, reply }).await
    }

    /// Moves the selected dead-letter entries back to the outbox, for the destinations that
    /// had failed only, keeping their event ids. Durable. Returns how many were moved.
    pub async fn dlq_replay(&self, selector: DlqSelector, now_ms: u64) -> Result<u64> {
        self.call(|reply| Command::Replay { selector, now_ms, reply }).await
    }

    /// Deletes the selected dead-letter entries. Durable. Returns how many were deleted.
    pub async fn dlq_delete(&self, selector: DlqSelector) -> Result<u64> {
        self.call(|reply| Command::DeleteDlq { selector, reply }).await
    }

    /// Applies DLQ retention: drops the oldest entries beyond `max_entries` and those
    /// dead-lettered before `older_than_ms`. Returns how many were dropped.
    pub async fn dlq_expire(
        &self,
        max_entries: Option<u64>,
        older_than_ms: Option<u64>,
    ) -> Result<u64> {
        self.call(|reply| Command::ExpireDlq { max_entries, older_than_ms, reply }).await
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs a read-only query on a snapshot, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || query(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Entries due at `now_ms` in `lanes` (up to `limit` per lane), oldest first. Costs
    /// O(limit), however large the outbox.
    pub async fn claim_due(&self, now_ms: u64, limit: usize, lanes: Vec<u8>) -> Result<Claim> {
        self.read(move |db| query::claim(db, now_ms, limit, &lanes, &HashSet::new())).await
    }

    /// As [`Store::claim_due`] for one lane, passing over the events in `skip` (those a
    /// pass still in flight holds) without counting them towards `limit`: O(limit + skip).
    ///
    /// `skip` must be taken before this call: an event leaves it only after its settlement
    /// committed, so any event not in it is seen here as settled or still due, never as
    /// still due from a snapshot older than its settlement.
    pub async fn claim_due_except(
        &self,
        now_ms: u64,
        limit: usize,
        lane: u8,
        skip: HashSet<u64>,
    ) -> Result<Claim> {
        self.read(move |db| query::claim(db, now_ms, limit, &[lane], &skip)).await
    }

    /// Number of events in the outbox.
    pub async fn pending(&self) -> Result<u64> {
        self.read(query::pending).await
    }

    pub async fn dlq_list(
        &self,
        filter: DlqFilter,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<DlqPage> {
        self.read(move |db| query::dlq_list(db, &filter, cursor, limit)).await
    }

    pub async fn dlq_get(&self, id: EventId) -> Result<Option<DlqEntry>> {
        self.read(move |db| query::dlq_get(db, id)).await
    }

    /// Outbox depth, oldest age and DLQ size: O(1), cheap enough for every scrape.
    pub async fn summary(&self, now_ms: u64) -> Result<query::Summary> {
        self.read(move |db| query::summary(db, now_ms)).await
    }

    /// Outbox depth, age and per-destination backlog. Walks the delivery table: O(outbox).
    pub async fn outbox_stats(&self, now_ms: u64) -> Result<OutboxStats> {
        self.read(move |db| query::outbox_stats(db, now_ms)).await
    }

    fn database(&self) -> Result<Arc<Database>> {
        self.shared.db.load_full().ok_or_else(|| StoreError::Unavailable("reopening".into()))
    }

    /// False from a failed commit until the database has been reopened.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            durable_commits: self.shared.durable_commits.load(Ordering::Relaxed),
            appended_events: self.shared.appended_events.load(Ordering::Relaxed),
        }
    }

    /// Size of the store file after the last commit.
    pub fn file_bytes(&self) -> u64 {
        self.shared.file_bytes.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Completes when a commit appends events (or at once if one did since the last call).
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }
}

impl StoreCloser {
    /// Commits what is pending durably, closes the file and joins the writer thread.
    pub async fn close(self) {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Close { reply }).await.is_ok() {
            let _ = answer.await;
        }
        drop(self.tx);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("store is shut down".into())
}

/// Settle commits skip the fsync; this makes them durable within a second even when no
/// append comes along to carry them, so a crash after a quiet spell republishes little.
fn spawn_flush_ticker(tx: mpsc::Sender<Command>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.send(Command::FlushIfDirty).await.is_err() {
                break;
            }
        }
    });
}

pub(crate) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// How the database is opened (the first time and after a failed commit).
#[derive(Clone, Copy)]
struct Tuning {
    cache_bytes: usize,
    quick_repair: bool,
}

/// Opens or creates the file, makes sure every table exists, and upgrades an older layout.
fn open_database(medium: &Medium, tuning: Tuning) -> Result<Database> {
    let mut builder = Database::builder();
    builder.set_cache_size(tuning.cache_bytes);
    let (db, path) = match medium {
        Medium::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            (builder.create(path)?, path.as_path())
        }
        #[cfg(test)]
        Medium::Simulated(disk) => {
            (builder.create_with_backend(disk.backend())?, Path::new("simulated disk"))
        }
    };
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    txn.set_quick_repair(tuning.quick_repair);
    let version = txn.open_table(META)?.get("format_version")?.map(|v| v.value());
    match version {
        Some(v) if v > FORMAT_VERSION => {
            return Err(StoreError::Unavailable(format!(
                "{} has store format {v}; this build reads up to {FORMAT_VERSION}",
                path.display()
            )));
        }
        Some(1) => migrate_v1(&txn)?,
        _ => {}
    }
    txn.open_table(EVENTS)?;
    txn.open_table(DELIVERY)?;
    txn.open_table(LANES)?;
    txn.open_table(DLQ)?;
    txn.open_table(DLQ_IDS)?;
    txn.open_table(DEDUP)?;
    txn.open_table(DEDUP_EXPIRY)?;
    txn.open_table(META)?.insert("format_version", FORMAT_VERSION)?;
    txn.commit()?;
    Ok(db)
}

/// Format 1 had one due index; each entry moves to the lanes its pending destinations use
/// (or the unrouted lane). Runs once, in the transaction that records format 2.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<()> {
    let old: Vec<(u64, u64)> = {
        let due = txn.open_table(DUE_V1)?;
        due.iter()?.map(|e| e.map(|(k, _)| k.value())).collect::<Result<_, _>>()?
    };
    let delivery = txn.open_table(DELIVERY)?;
    let mut lanes = txn.open_table(LANES)?;
    for &(due_ms, seq) in &old {
        let state = delivery.get(seq)?.map(|b| record::decode_delivery(b.value()));
        let mut wanted: Vec<u8> = match state {
            Some(Ok(d)) if !d.destinations.is_empty() => d
                .destinations
                .iter()
                .filter(|s| s.is_pending())
                .map(|s| s.target.broker().lane())
                .collect(),
            _ => vec![UNROUTED],
        };
        wanted.sort_unstable();
        wanted.dedup();
        for lane in wanted {
            lanes.insert((lane, due_ms, seq), ())?;
        }
    }
    drop((delivery, lanes));
    txn.delete_table(DUE_V1)?;
    tracing::info!(entries = old.len(), "store upgraded from format 1 to 2");
    Ok(())
}

/// Counters the writer continues from.
#[derive(Debug, Clone, Copy)]
struct Counters {
    next_seq: u64,
    next_dlq_seq: u64,
}

fn read_counters(db: &Database) -> Result<Counters> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |name: &str| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
    // An entry can only exist if its commit also advanced the counter past it; taking the
    // max guards against a file whose meta row was lost in some other way.
    let after_last_event = txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    let after_last_dlq = txn.open_table(DLQ)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    Ok(Counters {
        next_seq: get("next_seq")?.max(after_last_event),
        next_dlq_seq: get("next_dlq_seq")?.max(after_last_dlq),
    })
}

#[cfg(test)]
mod tests;
