//! The change feed: which outbox and DLQ entries changed, in commit order, for the fleet's
//! replicator (`sync/`). Kept only while fleet sync is on.
//!
//! Every write transaction that adds, settles, dead-letters, replays or removes an entry
//! appends one feed row per entry it touched, in the same commit: `sync_feed` maps a change
//! number to (kind, seq, when). The feed names entries, not their contents: the replicator
//! reads each named entry as it is *now* (in one snapshot with the feed rows), so a batch of
//! changes to one event costs one row upstream, and an entry that is gone is deleted there.
//! Once a batch is committed in PostgreSQL the replicator trims the feed through its last
//! change number (a cheap, non-durable commit: after a crash the same rows are replicated
//! again, which is idempotent).
//!
//! Turning the feed on the first time writes a `Reset` and a row for every entry already in
//! the store (the bootstrap), so PostgreSQL gets the whole outbox, not only what comes after.
//! Turning it off drops the feed, so the next start with sync on bootstraps again.

use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use super::{DELIVERY, DLQ, EVENTS, META, Result, StoreError, codec};
use crate::delivery::{Delivery, DlqRecord};
use crate::event::ValidatedEvent;

/// change number → (kind, seq, ms since the epoch when it changed).
pub(super) const FEED: TableDefinition<u64, (u8, u64, u64)> = TableDefinition::new("sync_feed");
/// In `meta`: 1 while the feed is kept.
pub(super) const FEED_ON: &str = "sync_feed_on";
/// In `meta`: the next change number.
pub(super) const NEXT_CHANGE: &str = "next_change_seq";

/// What a feed row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedKind {
    /// Forget everything replicated before: the feed was (re)started from the whole store.
    Reset,
    /// An outbox entry, by seq.
    Outbox,
    /// A dead-letter entry, by dlq seq.
    Dlq,
}

impl FeedKind {
    fn code(self) -> u8 {
        match self {
            FeedKind::Reset => 0,
            FeedKind::Outbox => 1,
            FeedKind::Dlq => 2,
        }
    }

    fn from_code(code: u8) -> Option<FeedKind> {
        match code {
            0 => Some(FeedKind::Reset),
            1 => Some(FeedKind::Outbox),
            2 => Some(FeedKind::Dlq),
            _ => None,
        }
    }
}

/// One entry as it is now, for the replicator.
#[derive(Debug, Clone)]
pub enum Change {
    /// Forget what was replicated of this instance before.
    Reset,
    /// An outbox entry; `None` when it is gone (settled, dead-lettered or purged).
    Outbox { seq: u64, now: Option<OutboxNow> },
    /// A dead-letter entry; `None` when it is gone (replayed, deleted or expired).
    Dlq { seq: u64, now: Option<DlqNow> },
}

/// An outbox entry as it is now.
#[derive(Debug, Clone)]
pub struct OutboxNow {
    pub event: ValidatedEvent,
    /// `None` until the relay first routed it.
    pub delivery: Option<Delivery>,
    /// The delivery state exactly as the store keeps it (its own versioned encoding).
    pub delivery_record: Option<Vec<u8>>,
}

/// A dead-letter entry as it is now.
#[derive(Debug, Clone)]
pub struct DlqNow {
    pub entry: DlqRecord,
    /// The entry exactly as the store keeps it (its own versioned encoding).
    pub record: Vec<u8>,
}

/// A batch of the feed, read in one snapshot with the entries it names.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// One per entry named, in the order of their first change in the batch; a `Reset`
    /// comes first.
    pub changes: Vec<Change>,
    /// The last change number read: trim through it once the batch is replicated.
    pub through: Option<u64>,
    /// Feed rows in all, this batch included.
    pub rows: u64,
    /// When the oldest row changed (ms since the epoch).
    pub oldest_ms: Option<u64>,
}

/// How far behind the feed is: rows waiting, and when the oldest changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedLag {
    pub rows: u64,
    pub oldest_ms: Option<u64>,
    /// The next change number: every change below it is replicated once `rows` is 0 or the
    /// oldest row's number is above it.
    pub next_change: u64,
    /// The number of the oldest row waiting, if any.
    pub oldest_change: Option<u64>,
}

/// Up to `limit` feed rows, with the entries they name as they are in the same snapshot.
pub(super) fn batch(
    db: &impl ReadableDatabase,
    after: Option<u64>,
    limit: usize,
) -> Result<FeedBatch> {
    let txn = db.begin_read()?;
    let feed = match txn.open_table(FEED) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(FeedBatch::default()),
        Err(e) => return Err(e.into()),
    };
    let events = txn.open_table(EVENTS)?;
    let delivery = txn.open_table(DELIVERY)?;
    let dlq = txn.open_table(DLQ)?;
    let mut out = FeedBatch { rows: feed.len()?, ..FeedBatch::default() };
    let mut seen = std::collections::HashSet::new();
    let rows = match after {
        None => feed.iter()?,
        Some(after) => feed.range(after + 1..)?,
    };
    for row in rows.take(limit) {
        let (number, value) = row?;
        let (code, seq, at_ms) = value.value();
        out.through = Some(number.value());
        out.oldest_ms.get_or_insert(at_ms);
        let Some(kind) = FeedKind::from_code(code) else { continue };
        if !seen.insert((kind, seq)) {
            continue;
        }
        let change = match kind {
            FeedKind::Reset => Change::Reset,
            FeedKind::Outbox => {
                let now = match events.get(seq)? {
                    None => None,
                    Some(bytes) => {
                        let event = codec::decode_event(bytes.value())
                            .map_err(|source| StoreError::Corrupt { seq, source })?;
                        let record = delivery.get(seq)?.map(|d| d.value().to_vec());
                        let routed = match &record {
                            None => None,
                            Some(d) => Some(
                                codec::decode_delivery(d)
                                    .map_err(|source| StoreError::Corrupt { seq, source })?,
                            ),
                        };
                        Some(OutboxNow { event, delivery: routed, delivery_record: record })
                    }
                };
                Change::Outbox { seq, now }
            }
            FeedKind::Dlq => {
                let now = match dlq.get(seq)? {
                    None => None,
                    Some(bytes) => Some(DlqNow {
                        entry: codec::decode_dlq(bytes.value())
                            .map_err(|source| StoreError::Corrupt { seq, source })?,
                        record: bytes.value().to_vec(),
                    }),
                };
                Change::Dlq { seq, now }
            }
        };
        out.changes.push(change);
    }
    Ok(out)
}

/// How far behind the feed is: O(1).
pub(super) fn lag(db: &impl ReadableDatabase) -> Result<FeedLag> {
    let txn = db.begin_read()?;
    let next_change = txn.open_table(META)?.get(NEXT_CHANGE)?.map(|v| v.value()).unwrap_or(0);
    let feed = match txn.open_table(FEED) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(FeedLag { next_change, ..FeedLag::default() });
        }
        Err(e) => return Err(e.into()),
    };
    let first = feed.first()?.map(|(k, v)| (k.value(), v.value().2));
    Ok(FeedLag {
        rows: feed.len()?,
        oldest_ms: first.map(|(_, at)| at),
        next_change,
        oldest_change: first.map(|(number, _)| number),
    })
}

/// The changes one write transaction makes, appended to the feed at its end.
pub(super) struct Recorder {
    touched: Vec<(FeedKind, u64)>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder { touched: Vec::new() }
    }

    pub fn note(&mut self, kind: FeedKind, seq: u64) {
        self.touched.push((kind, seq));
    }

    /// Writes the rows from `next_change` on; returns the next change number after them.
    pub fn write(self, txn: &WriteTransaction, mut next_change: u64, at_ms: u64) -> Result<u64> {
        if self.touched.is_empty() {
            return Ok(next_change);
        }
        let mut feed = txn.open_table(FEED)?;
        for (kind, seq) in self.touched {
            feed.insert(next_change, (kind.code(), seq, at_ms))?;
            next_change += 1;
        }
        txn.open_table(META)?.insert(NEXT_CHANGE, next_change)?;
        Ok(next_change)
    }
}

/// Starts the feed: a `Reset`, then every outbox and DLQ entry in the store (`events` and
/// `dlq`, the writer's open tables). A no-op when the feed is already on. Returns the next
/// change number.
pub(super) fn start(
    txn: &WriteTransaction,
    events: &impl ReadableTable<u64, &'static [u8]>,
    dlq: &impl ReadableTable<u64, &'static [u8]>,
    next_change: u64,
    at_ms: u64,
) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    if meta.get(FEED_ON)?.is_some_and(|v| v.value() == 1) {
        return Ok(next_change);
    }
    meta.insert(FEED_ON, 1)?;
    drop(meta);
    let mut recorder = Recorder::new();
    recorder.note(FeedKind::Reset, 0);
    for row in events.iter()? {
        recorder.note(FeedKind::Outbox, row?.0.value());
    }
    for row in dlq.iter()? {
        recorder.note(FeedKind::Dlq, row?.0.value());
    }
    let entries = recorder.touched.len() - 1;
    let next = recorder.write(txn, next_change, at_ms)?;
    tracing::info!(entries, "change feed started: the whole store will be replicated");
    Ok(next)
}

/// Stops the feed and drops its rows (sync was turned off).
pub(super) fn stop(txn: &WriteTransaction) -> Result<bool> {
    let mut meta = txn.open_table(META)?;
    if meta.get(FEED_ON)?.is_none_or(|v| v.value() != 1) {
        return Ok(false);
    }
    meta.remove(FEED_ON)?;
    drop(meta);
    txn.delete_table(FEED)?;
    Ok(true)
}

/// Drops the rows through `through` (they are replicated).
pub(super) fn trim(txn: &WriteTransaction, through: u64) -> Result<()> {
    let mut feed = txn.open_table(FEED)?;
    feed.retain_in(..=through, |_, _| false)?;
    Ok(())
}

/// Whether the file keeps a feed.
pub(super) fn is_on(db: &impl ReadableDatabase) -> Result<bool> {
    Ok(state(&db.begin_read()?)?.0)
}

/// Whether the file keeps a feed, and the next change number.
pub(super) fn state(txn: &redb::ReadTransaction) -> Result<(bool, u64)> {
    let meta = txn.open_table(META)?;
    let on = meta.get(FEED_ON)?.is_some_and(|v| v.value() == 1);
    let next = meta.get(NEXT_CHANGE)?.map(|v| v.value()).unwrap_or(0);
    Ok((on, next))
}
