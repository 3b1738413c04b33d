//! The durable outbox: the only module that touches redb.
//!
//! Writes go through one writer thread ([`writer`]) that commits every queued request in one
//! transaction (group commit) and answers each caller after that commit returned. Reads (the
//! relay's claims) run in `spawn_blocking` on a read snapshot. Tables:
//!
//! | table      | key                  | value                                        |
//! |------------|----------------------|----------------------------------------------|
//! | `events`   | seq                  | immutable event record ([`record`])          |
//! | `delivery` | seq                  | per-destination state, once routed           |
//! | `due`      | (due time ms, seq)   | (): the due-time index claims walk in order  |
//! | `dedup`    | (source, key)        | (event id, expiry ms): idempotency keys      |
//! | `meta`     | name                 | format version, next seq, instance id        |
//!
//! `seq` grows by one per appended event and is never reused, so it is also the order in which
//! changes happened (room for a sync task to follow later).

mod record;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::StoreConfig;
use crate::event::{EventId, ValidatedEvent};

pub use record::{DecodeError, Delivery, DestinationState};
use writer::{Command, Writer};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DELIVERY: TableDefinition<u64, &[u8]> = TableDefinition::new("delivery");
const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
const DEDUP: TableDefinition<(&str, &str), (u128, u64)> = TableDefinition::new("dedup");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of the table layout; a file written by a newer layout is refused, not misread.
const FORMAT_VERSION: u64 = 1;
/// Requests waiting for the writer. Bounded so that a stalled disk pushes back on senders
/// (their requests wait, then time out) instead of growing memory.
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

/// An outbox entry handed to the relay.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: u64,
    /// The due time under which the entry is indexed now; settling moves it from there.
    pub due_ms: u64,
    pub event: ValidatedEvent,
    /// `None` until the relay first routed the event.
    pub delivery: Option<Delivery>,
}

/// What the relay decided for one claimed entry.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Every destination confirmed: remove the event.
    Delete { seq: u64, due_ms: u64 },
    /// Some destinations are still pending: store their state, index under the next due time.
    Reschedule { seq: u64, due_ms: u64, delivery: Delivery, next_due_ms: u64 },
    /// Only move the entry in the due index (an unreadable record: kept, looked at later).
    Defer { seq: u64, due_ms: u64, next_due_ms: u64 },
    /// Drop a due-index entry whose event no longer exists.
    DropIndex { seq: u64, due_ms: u64 },
}

/// A claim: the due entries, and when the next one not yet due will be.
#[derive(Debug, Default)]
pub struct Claim {
    pub entries: Vec<OutboxEntry>,
    pub next_due_ms: Option<u64>,
    /// Due entries that could not be read, with why. They are never skipped silently: the
    /// relay defers and logs them, and they stay in the file for inspection.
    pub unreadable: Vec<(u64, u64, StoreError)>,
    /// Due-index entries whose event is gone (seq, due time).
    pub orphans: Vec<(u64, u64)>,
}

/// State the writer thread and the handles share.
struct Shared {
    path: PathBuf,
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
        let started = std::time::Instant::now();
        let cache = config.cache_bytes.as_u64() as usize;
        let db = open_database(&config.path, cache)?;
        let next_seq = read_next_seq(&db)?;
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            db: ArcSwapOption::from_pointee(db),
            healthy: AtomicBool::new(true),
            file_bytes: AtomicU64::new(file_len(&config.path)),
            appended: Notify::new(),
            durable_commits: AtomicU64::new(0),
            appended_events: AtomicU64::new(0),
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
            cache,
            config.max_bytes.as_u64(),
            config.commit_batch_max,
            next_seq,
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
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { event, reply }).await?;
        answer.await.map_err(|_| closed())?
    }

    /// Applies the relay's decisions in one (cheap, non-durable) commit.
    pub async fn settle(&self, settlements: Vec<Settlement>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settle { settlements, reply }).await?;
        answer.await.map_err(|_| closed())?
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.tx.send(command).await.map_err(|_| closed())
    }

    /// Up to `limit` entries due at `now_ms`, oldest due first. Costs O(limit), however
    /// large the outbox.
    pub async fn claim_due(&self, now_ms: u64, limit: usize) -> Result<Claim> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || claim(&db, now_ms, limit))
            .await
            .map_err(|e| StoreError::Unavailable(format!("claim task failed: {e}")))?
    }

    /// Number of events in the outbox.
    pub async fn pending(&self) -> Result<u64> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || -> Result<u64> {
            Ok(db.begin_read()?.open_table(EVENTS)?.len()?)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("count task failed: {e}")))?
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

/// Opens or creates the file, makes sure every table exists and the format is one we read.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let db = Database::builder().set_cache_size(cache_bytes).create(path)?;
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    {
        txn.open_table(EVENTS)?;
        txn.open_table(DELIVERY)?;
        txn.open_table(DUE)?;
        txn.open_table(DEDUP)?;
        let mut meta = txn.open_table(META)?;
        let version = meta.get("format_version")?.map(|v| v.value());
        match version {
            None => {
                meta.insert("format_version", FORMAT_VERSION)?;
            }
            Some(v) if v > FORMAT_VERSION => {
                return Err(StoreError::Unavailable(format!(
                    "{} has store format {v}; this build reads up to {FORMAT_VERSION}",
                    path.display()
                )));
            }
            Some(_) => {}
        }
    }
    txn.commit()?;
    Ok(db)
}

fn read_next_seq(db: &Database) -> Result<u64> {
    let txn = db.begin_read()?;
    let from_meta = txn.open_table(META)?.get("next_seq")?.map(|v| v.value()).unwrap_or(0);
    // An event can only exist if its append also wrote next_seq past it; this guards against
    // a file whose meta row was lost in some other way.
    let after_last = txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    Ok(from_meta.max(after_last))
}

fn claim(db: &Database, now_ms: u64, limit: usize) -> Result<Claim> {
    let txn = db.begin_read()?;
    let due = txn.open_table(DUE)?;
    let events = txn.open_table(EVENTS)?;
    let delivery = txn.open_table(DELIVERY)?;
    let mut claim = Claim::default();
    for entry in due.iter()? {
        let (key, _) = entry?;
        let (due_ms, seq) = key.value();
        if due_ms > now_ms {
            claim.next_due_ms = Some(due_ms);
            break;
        }
        if claim.entries.len() == limit {
            claim.next_due_ms = Some(due_ms);
            break;
        }
        let Some(bytes) = events.get(seq)? else {
            claim.orphans.push((seq, due_ms));
            continue;
        };
        let decoded = record::decode_event(bytes.value()).and_then(|event| {
            let state = delivery.get(seq).ok().flatten();
            let state = state.map(|b| record::decode_delivery(b.value())).transpose()?;
            Ok((event, state))
        });
        let (event, state) = match decoded {
            Ok(decoded) => decoded,
            Err(source) => {
                claim.unreadable.push((seq, due_ms, StoreError::Corrupt { seq, source }));
                continue;
            }
        };
        claim.entries.push(OutboxEntry { seq, due_ms, event, delivery: state });
    }
    Ok(claim)
}

#[cfg(test)]
mod tests;
