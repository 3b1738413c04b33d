//! The durable outbox and dead-letter queue: the only module that touches redb.
//!
//! Writes go through one writer thread ([`writer`]) that commits every queued request in one
//! transaction (group commit) and answers each caller after that commit returned. Reads run
//! on read snapshots in `spawn_blocking` ([`query`]). Records are laid out by [`codec`]; the
//! store owns its background work ([`housekeeping`]). It knows nothing about routes or
//! brokers: it keeps [`crate::delivery`]'s nouns as they are given. Tables:
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
//! | `meta_text` | name                     | text: the fleet instance id                 |
//! | `sync_feed` | change number            | (kind, seq, ms): what changed, for fleet sync ([`feed`]) |
//! | `key_holds` | seq                      | (key, expiry ms): events waiting for the fleet to rule on their key |
//!
//! Lanes: lane 0 holds events not yet routed; a routed event has one entry in the lane of
//! each broker it still waits for, due at the earliest retry there. The relay claims only the
//! lanes of connected brokers, so a dead broker's backlog costs nothing and never stalls the
//! other's. `seq` grows by one per appended (or replayed) event and is never reused.

mod codec;
mod error;
mod feed;
mod housekeeping;
mod open;
#[cfg(test)]
mod power_loss;
mod query;
mod space;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use redb::{Database, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;
use crate::delivery::{Delivery, DestinationState, DlqRecord, Lane};
use crate::event::{EventId, ValidatedEvent};
use crate::telemetry::metrics::Metrics;

pub use codec::{
    DecodeError, decode_delivery, decode_dlq, decode_event, encode_delivery, encode_dlq,
    encode_event,
};
pub use error::{Result, StoreError};
pub use feed::{Change, DlqNow, FeedBatch, FeedLag, OutboxNow};
use open::{Tuning, file_len, open_database, read_counters};
pub use query::{
    Claim, DestinationBacklog, DlqEntry, DlqFilter, DlqPage, OutboxEntry, OutboxStats,
    ReadOnlyStore, Summary, compact_file,
};
use space::Space;
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
/// Text settings of the store itself (the fleet instance id). Added without a format change:
/// older builds do not read it, and lose nothing by not reading it.
const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");

/// Events waiting for the fleet to rule on their idempotency key (`key_holds`). Added
/// without a format change: an older build reads neither it nor [`KEY_HELD`] entries (to it
/// they are due in the far future), so a downgrade only delays those events until the next
/// upgrade.
const KEY_HOLDS: TableDefinition<u64, (&str, u64)> = TableDefinition::new("key_holds");

/// The due time of an event taken over from a peer while the takeover is not final: never
/// due, until released.
const HELD: u64 = u64::MAX;
/// The due time of an event whose idempotency key the fleet has not ruled on yet (it was
/// accepted while PostgreSQL did not answer): never due, until its hold ends
/// ([`Store::end_key_holds`]). Sorts just before [`HELD`]: the due scan stops at either.
const KEY_HELD: u64 = u64::MAX - 1;

/// Version of the table layout; a file written by a newer layout is refused, not misread.
const FORMAT_VERSION: u64 = 2;
/// Requests waiting for the writer. Bounded so that a stalled disk pushes back on senders.
const QUEUE_DEPTH: usize = 8192;

/// What the relay decided for one claimed outbox entry, applied in one transaction with the
/// rest of its batch.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub seq: u64,
    /// Due entries (lane, due time) the claim found; removed.
    pub remove_due: Vec<(Lane, u64)>,
    /// Due entries to add: one per lane that still has pending destinations.
    pub add_due: Vec<(Lane, u64)>,
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
    /// Hold the event back from the relay until the fleet has ruled on the key (see
    /// [`Store::key_holds`]): it was accepted while PostgreSQL could not say whose it is.
    pub hold: bool,
}

/// An event held until the fleet rules on its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHold {
    pub seq: u64,
    pub key: String,
    pub expires_at_ms: u64,
    /// The event (id, source, received time); `None` if it is gone from the outbox (taken
    /// over by a peer, say): the hold is then only to be dropped.
    pub event: Option<(EventId, String, u64)>,
}

/// What [`Store::append_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The event is durable under this id.
    Accepted(EventId),
    /// The key was seen before: nothing was written; this is the first event's id.
    Duplicate(EventId),
}

/// What an append's commit did: the answer, and how many events that group commit made
/// durable (its batch), which the ingest's commit span reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub appended: Appended,
    pub batch_events: u32,
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
    /// Per lane: woken after a commit that filed an entry into it (an append, a routed event,
    /// a replay, a retry), so an idle worker of that lane starts at once.
    filed: [Notify; Lane::COUNT],
    /// Woken after every commit that added change-feed rows.
    fed: Notify,
    /// The next change number after the last commit (see [`Store::change_mark`]).
    change_mark: AtomicU64,
    /// Durable (fsync'd) commits since open.
    durable_commits: AtomicU64,
    /// Events appended since open.
    appended_events: AtomicU64,
    metrics: Arc<Metrics>,
    /// Ends the housekeeping tasks when the store closes.
    housekeeping: CancellationToken,
    /// The free-space floor and the disk reserve.
    space: Arc<Space>,
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

/// Ends the housekeeping and joins the writer thread on shutdown.
pub struct StoreCloser {
    tx: mpsc::Sender<Command>,
    thread: std::thread::JoinHandle<()>,
    housekeeping: CancellationToken,
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
        let space = Arc::new(match &medium {
            Medium::File(_) => Space::new(config),
            #[cfg(test)]
            Medium::Simulated(_) => Space::unlimited(),
        });
        let db = match open_database(&medium, tuning) {
            Ok(db) => db,
            // Opening a file that needs repair needs room: on a full disk, use the reserve.
            Err(_)
                if space.refresh() < space.floor()
                    && space.release_reserve("the store could not open on a full disk") =>
            {
                open_database(&medium, tuning)?
            }
            Err(error) => return Err(error),
        };
        space.keep_room();
        let counters = read_counters(&db)?;
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            medium,
            db: ArcSwapOption::from_pointee(db),
            healthy: AtomicBool::new(true),
            file_bytes: AtomicU64::new(file_len(&config.path)),
            filed: Default::default(),
            fed: Notify::new(),
            change_mark: AtomicU64::new(counters.next_change),
            durable_commits: AtomicU64::new(0),
            appended_events: AtomicU64::new(0),
            metrics,
            housekeeping: CancellationToken::new(),
            space,
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
            .map_err(|e| StoreError::Io {
                what: "cannot start the writer thread".into(),
                cause: Arc::new(e),
            })?;
        let closer =
            StoreCloser { tx: tx.clone(), thread, housekeeping: shared.housekeeping.clone() };
        Ok((Store { tx, shared }, closer))
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
    ///
    /// The event is filed unrouted: the relay's routing worker routes it. Ingest uses
    /// [`Store::append_routed`].
    pub async fn append_once(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
    ) -> Result<Appended> {
        let committed =
            self.call(|reply| Command::Append { event, key, delivery: None, reply }).await?;
        Ok(committed.appended)
    }

    /// [`Store::append_once`] for an event already routed: its delivery record and the lane
    /// entry of each broker it goes to are written in the append's own commit, due now, so the
    /// brokers' workers pick it up without a routing pass. An empty `delivery` files it
    /// unrouted.
    pub async fn append_routed(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        delivery: Delivery,
    ) -> Result<Appended> {
        Ok(self.append_committed(event, key, delivery).await?.appended)
    }

    /// [`Store::append_routed`], also saying how many events its group commit held.
    pub async fn append_committed(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        delivery: Delivery,
    ) -> Result<Committed> {
        let delivery = Some(delivery).filter(|d| !d.destinations.is_empty());
        self.call(|reply| Command::Append { event, key, delivery, reply }).await
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

    /// Has the writer tend the file's free pages now (as the disk watch does every 30 s), and
    /// returns once it has.
    #[cfg(test)]
    pub(crate) async fn tend_space_now(&self) {
        self.tx.send(Command::TendSpace).await.expect("store open");
        // Answered in the same round as the tend or the next; the second call is only taken
        // after the tend (the writer does one thing at a time).
        self.dedup_expire(0, 1).await.unwrap();
        self.dedup_expire(0, 1).await.unwrap();
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
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Entries due at `now_ms` in `lanes` (up to `limit` per lane), oldest first. Costs
    /// O(limit), however large the outbox.
    pub async fn claim_due(&self, now_ms: u64, limit: usize, lanes: Vec<Lane>) -> Result<Claim> {
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
        lane: Lane,
        skip: HashSet<u64>,
    ) -> Result<Claim> {
        self.read(move |db| query::claim(db, now_ms, limit, &[lane], &skip)).await
    }

    /// Adds events taken over from a dead peer, with their delivery state, held (never due)
    /// until [`Store::release`]. Durable. Returns their new seqs, in order.
    pub async fn import(
        &self,
        entries: Vec<(ValidatedEvent, Option<Delivery>)>,
    ) -> Result<Vec<u64>> {
        self.call(|reply| Command::Import { entries, reply }).await
    }

    /// Makes held events due now. Returns how many due entries moved.
    pub async fn release(&self, seqs: Vec<u64>, now_ms: u64) -> Result<u64> {
        self.call(|reply| Command::Release { seqs, now_ms, reply }).await
    }

    /// Removes events from the outbox without publishing them: a peer has taken them over.
    /// Durable. Returns how many were still there.
    pub async fn forget(&self, seqs: Vec<u64>) -> Result<u64> {
        self.call(|reply| Command::Forget { seqs, reply }).await
    }

    /// Up to `limit` events held for the fleet's ruling on their key, oldest first.
    pub async fn key_holds(&self, limit: usize) -> Result<Vec<KeyHold>> {
        self.read(move |db| query::key_holds(db, limit)).await
    }

    /// How many events are held for the fleet's ruling on their key.
    pub async fn key_hold_count(&self) -> Result<u64> {
        self.read(query::key_hold_count).await
    }

    /// Ends key holds: the events in `release` become due now (their key is theirs, or the
    /// hold ran out); those in `duplicates` leave the outbox unpublished (another event, the
    /// id given, holds their key: local dedup answers with that id from now on). Durable.
    /// Returns how many events were released or removed.
    pub async fn end_key_holds(
        &self,
        release: Vec<u64>,
        duplicates: Vec<(u64, EventId)>,
        now_ms: u64,
    ) -> Result<u64> {
        self.call(|reply| Command::EndKeyHolds { release, duplicates, now_ms, reply }).await
    }

    /// Releases every key hold (fleet sync is off: nothing else would). Returns how many
    /// events were released.
    pub async fn release_all_key_holds(&self, now_ms: u64) -> Result<u64> {
        let mut released = 0;
        loop {
            let holds = self.key_holds(1000).await?;
            if holds.is_empty() {
                return Ok(released);
            }
            let (gone, held): (Vec<_>, Vec<_>) = holds.into_iter().partition(|h| h.event.is_none());
            let seqs = held.iter().map(|h| h.seq).collect();
            let gone = gone.iter().map(|h| (h.seq, EventId::from_u128(0))).collect();
            released += held.len() as u64;
            self.end_key_holds(seqs, gone, now_ms).await?;
        }
    }

    /// Held events (imported, not released): (seq, event id).
    pub async fn held(&self) -> Result<Vec<(u64, EventId)>> {
        self.read(query::held).await
    }

    /// The next seq the store will give: every event accepted so far has a smaller one.
    pub async fn next_seq(&self) -> Result<u64> {
        self.read(query::next_seq).await
    }

    /// A text setting of the store (`meta_text`), if it is set.
    pub async fn text(&self, name: &'static str) -> Result<Option<String>> {
        self.read(move |db| query::text(db, name)).await
    }

    /// Keeps the change feed from now on ([`feed`]); the first time, every entry already in
    /// the store is fed too. Durable; a no-op when the feed is on.
    pub async fn start_change_feed(&self) -> Result<()> {
        // Checked first, so that a start with the feed on writes nothing (a full disk).
        if self.read(feed::is_on).await? {
            return Ok(());
        }
        self.call(|reply| Command::StartFeed { reply }).await
    }

    /// Stops keeping the change feed and drops it (fleet sync is off). Durable.
    pub async fn stop_change_feed(&self) -> Result<()> {
        if !self.read(feed::is_on).await? {
            return Ok(());
        }
        self.call(|reply| Command::StopFeed { reply }).await
    }

    /// Up to `limit` rows of the change feed, with the entries they name as they are now.
    pub async fn change_feed(&self, limit: usize) -> Result<FeedBatch> {
        self.read(move |db| feed::batch(db, None, limit)).await
    }

    /// [`Store::change_feed`] from the change after `after` (the `through` of a batch not
    /// trimmed yet): the replicator reads the next batch while the last one commits.
    pub async fn change_feed_after(&self, after: u64, limit: usize) -> Result<FeedBatch> {
        self.read(move |db| feed::batch(db, Some(after), limit)).await
    }

    /// Drops the feed rows through `through`: they are replicated. Not durable by itself.
    pub async fn trim_change_feed(&self, through: u64) -> Result<()> {
        self.call(|reply| Command::TrimFeed { through, reply }).await
    }

    /// The next change number after the last commit: every change committed so far is below
    /// it, so an append that has returned is replicated once the replicator passes it.
    pub fn change_mark(&self) -> u64 {
        self.shared.change_mark.load(Ordering::Acquire)
    }

    /// How far the change feed is behind: O(1).
    pub async fn change_feed_lag(&self) -> Result<FeedLag> {
        self.read(feed::lag).await
    }

    /// Sets a text setting, durably.
    pub async fn set_text(&self, name: &'static str, value: String) -> Result<()> {
        self.call(|reply| Command::SetText { name, value, reply }).await
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

    /// Event `id` as it is in the outbox (its delivery state; more than one entry after a
    /// partial DLQ replay), each with whether it is held for the fleet's ruling on its key.
    /// Walks the outbox: about a second per million events queued, for an operator's lookup.
    pub async fn find_pending(&self, id: EventId) -> Result<Vec<(OutboxEntry, bool)>> {
        self.read(move |db| query::find_pending(db, id)).await
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
        self.shared.db.load_full().ok_or(StoreError::Reopening)
    }

    /// Appends are refused because the disk is nearly full (`store.min_free_bytes`), or it is
    /// under the floor.
    pub fn is_short_of_disk(&self) -> bool {
        self.shared.space.is_low()
    }

    /// What can still be written before appends are refused: the filesystem's free space
    /// above the floor, plus the free pages inside the file as last measured.
    pub fn headroom_bytes(&self) -> u64 {
        self.shared.space.headroom()
    }

    /// The size of the disk reserve in place (0 while it is given up).
    pub fn reserve_bytes(&self) -> u64 {
        self.shared.space.reserve_in_place()
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

    /// Completes when a commit adds change-feed rows (or at once if one did since the last
    /// call).
    pub async fn fed(&self) {
        self.shared.fed.notified().await
    }

    /// Completes when a commit files an entry into `lane` (or at once if one did since the
    /// last call). One waiter per lane: the lane's worker.
    pub async fn filed(&self, lane: Lane) {
        self.shared.filed[lane.index()].notified().await
    }
}

impl StoreCloser {
    /// Ends the housekeeping, commits what is pending durably, closes the file and joins the
    /// writer thread.
    pub async fn close(self) {
        self.housekeeping.cancel();
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
    StoreError::Closed
}

#[cfg(test)]
mod tests;
