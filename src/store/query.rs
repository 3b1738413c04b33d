//! Read-only queries on a snapshot: claims for the relay, DLQ listings and outbox statistics
//! for the admin API. Generic over redb's `ReadableDatabase`, so the CLI's `--offline` mode
//! runs the same code on a read-only open of a stopped daemon's file.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::codec;
use super::{DELIVERY, DLQ, DLQ_IDS, EVENTS, KeyHold, LANES, META_TEXT, Result, StoreError};
use crate::delivery::{Delivery, DlqRecord, Lane, Reason};
use crate::event::{EventId, ValidatedEvent};

/// An outbox entry handed to the relay.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: u64,
    pub event: ValidatedEvent,
    /// `None` until the relay first routed the event.
    pub delivery: Option<Delivery>,
    /// The due entries (lane, due time) this claim found for it.
    pub claimed: Vec<(Lane, u64)>,
}

/// A due entry whose records could not be read: its seq, the due entries found, and why.
pub type Unreadable = (u64, Vec<(Lane, u64)>, StoreError);

/// A claim: the due entries, and when the next one not yet due will be.
#[derive(Debug, Default)]
pub struct Claim {
    pub entries: Vec<OutboxEntry>,
    pub next_due_ms: Option<u64>,
    /// Due entries whose records could not be read, with why. Never skipped silently: the
    /// relay defers and logs them, and they stay in the file for inspection.
    pub unreadable: Vec<Unreadable>,
    /// Due entries whose event is gone: (seq, (lane, due time)).
    pub orphans: Vec<(u64, (Lane, u64))>,
}

impl Claim {
    /// Nothing due was found (not even an unreadable or orphaned entry).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.unreadable.is_empty() && self.orphans.is_empty()
    }

    /// Every event this claim holds, readable or not.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        let entries = self.entries.iter().map(|e| e.seq);
        let unreadable = self.unreadable.iter().map(|(seq, _, _)| *seq);
        entries.chain(unreadable).chain(self.orphans.iter().map(|(seq, _)| *seq))
    }
}

pub(super) fn claim(
    db: &impl ReadableDatabase,
    now_ms: u64,
    limit: usize,
    lanes: &[Lane],
    skip: &HashSet<u64>,
) -> Result<Claim> {
    let txn = db.begin_read()?;
    let due = txn.open_table(LANES)?;
    let events = txn.open_table(EVENTS)?;
    let delivery = txn.open_table(DELIVERY)?;
    let mut claim = Claim::default();
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    let note_next = |due_ms: u64, claim: &mut Claim| {
        claim.next_due_ms = Some(claim.next_due_ms.map_or(due_ms, |n| n.min(due_ms)));
    };
    for &lane in lanes {
        let mut taken = 0;
        let number = lane.number();
        for entry in due.range((number, 0, 0)..=(number, u64::MAX, u64::MAX))? {
            let (_, due_ms, seq) = entry?.0.value();
            if due_ms >= super::KEY_HELD {
                // Held entries (key holds, then takeovers) sort last in their lane, and are
                // never due.
                break;
            }
            if due_ms > now_ms || taken == limit {
                note_next(due_ms, &mut claim);
                break;
            }
            if skip.contains(&seq) {
                continue;
            }
            taken += 1;
            if let Some(&i) = index.get(&seq) {
                claim.entries[i].claimed.push((lane, due_ms));
                continue;
            }
            let Some(bytes) = events.get(seq)? else {
                claim.orphans.push((seq, (lane, due_ms)));
                continue;
            };
            let decoded = codec::decode_event(bytes.value()).and_then(|event| {
                let state = delivery.get(seq).ok().flatten();
                let state = state.map(|b| codec::decode_delivery(b.value())).transpose()?;
                Ok((event, state))
            });
            match decoded {
                Ok((event, delivery)) => {
                    index.insert(seq, claim.entries.len());
                    let claimed = vec![(lane, due_ms)];
                    claim.entries.push(OutboxEntry { seq, event, delivery, claimed });
                }
                Err(source) => {
                    let error = StoreError::Corrupt { seq, source };
                    claim.unreadable.push((seq, vec![(lane, due_ms)], error));
                }
            }
        }
    }
    Ok(claim)
}

pub(super) fn text(db: &impl ReadableDatabase, name: &str) -> Result<Option<String>> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META_TEXT) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(name)?.map(|v| v.value().to_owned()))
}

/// Up to `limit` key holds, by seq, with their events as they are now.
pub(super) fn key_holds(db: &impl ReadableDatabase, limit: usize) -> Result<Vec<KeyHold>> {
    let txn = db.begin_read()?;
    let holds = match txn.open_table(super::KEY_HOLDS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let events = txn.open_table(EVENTS)?;
    let mut found = Vec::new();
    for entry in holds.iter()?.take(limit) {
        let (seq, value) = entry?;
        let seq = seq.value();
        let (key, expires_at_ms) = value.value();
        let event = match events.get(seq)? {
            Some(bytes) => {
                let event = codec::decode_event(bytes.value())
                    .map_err(|source| StoreError::Corrupt { seq, source })?;
                Some((event.id(), event.source().as_str().to_owned(), event.received_at_ms()))
            }
            None => None,
        };
        found.push(KeyHold { seq, key: key.to_owned(), expires_at_ms, event });
    }
    Ok(found)
}

pub(super) fn key_hold_count(db: &impl ReadableDatabase) -> Result<u64> {
    let txn = db.begin_read()?;
    match txn.open_table(super::KEY_HOLDS) {
        Ok(table) => Ok(table.len()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Events imported from a peer and not released yet (due at `HELD`).
pub(super) fn held(db: &impl ReadableDatabase) -> Result<Vec<(u64, EventId)>> {
    let txn = db.begin_read()?;
    let lanes = txn.open_table(LANES)?;
    let events = txn.open_table(EVENTS)?;
    let mut seqs = std::collections::BTreeSet::new();
    for lane in Lane::ALL {
        let n = lane.number();
        for entry in lanes.range((n, super::HELD, 0)..=(n, super::HELD, u64::MAX))? {
            seqs.insert(entry?.0.value().2);
        }
    }
    let mut held = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(bytes) = events.get(seq)? {
            let event = codec::decode_event(bytes.value())
                .map_err(|source| StoreError::Corrupt { seq, source })?;
            held.push((seq, event.id()));
        }
    }
    Ok(held)
}

/// The next seq to be given: above every event's, in the file as in the counter.
pub(super) fn next_seq(db: &impl ReadableDatabase) -> Result<u64> {
    let txn = db.begin_read()?;
    let counter = txn.open_table(super::META)?.get("next_seq")?.map(|v| v.value()).unwrap_or(0);
    let last = txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    Ok(counter.max(last))
}

pub(super) fn pending(db: &impl ReadableDatabase) -> Result<u64> {
    Ok(db.begin_read()?.open_table(EVENTS)?.len()?)
}

/// Filters for DLQ listings and bulk operations; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    pub source: Option<String>,
    pub event_type: Option<String>,
    /// Matches when some failed destination's label (`rabbitmq:ex/key`, `kafka:topic`)
    /// contains this text.
    pub destination: Option<String>,
    pub reason: Option<Reason>,
}

impl DlqFilter {
    /// A filter from text fields (query parameters, CLI flags); fails on an unknown reason.
    pub fn parse(
        source: Option<String>,
        event_type: Option<String>,
        destination: Option<String>,
        reason: Option<&str>,
    ) -> Result<Self, String> {
        let reason = reason
            .map(|r| {
                Reason::parse(r).ok_or_else(|| {
                    let known: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                    format!("unknown reason {r:?}; one of {}", known.join(", "))
                })
            })
            .transpose()?;
        Ok(Self { source, event_type, destination, reason })
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_none()
            && self.event_type.is_none()
            && self.destination.is_none()
            && self.reason.is_none()
    }

    pub fn matches(&self, r: &DlqRecord) -> bool {
        self.source.as_deref().is_none_or(|s| r.event.source().as_str() == s)
            && self.event_type.as_deref().is_none_or(|t| r.event.event_type().as_str() == t)
            && self
                .destination
                .as_deref()
                .is_none_or(|d| r.destinations.iter().any(|dd| dd.state.target.label().contains(d)))
            && self.reason.is_none_or(|reason| {
                r.reason == reason || r.destinations.iter().any(|d| d.reason == reason)
            })
    }
}

/// One DLQ entry and its position (the cursor unit).
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub dlq_seq: u64,
    pub record: DlqRecord,
}

/// A page of a newest-first listing; `next_cursor` continues it.
#[derive(Debug, Clone, Default)]
pub struct DlqPage {
    pub entries: Vec<DlqEntry>,
    pub next_cursor: Option<u64>,
}

pub(super) fn dlq_list(
    db: &impl ReadableDatabase,
    filter: &DlqFilter,
    cursor: Option<u64>,
    limit: usize,
) -> Result<DlqPage> {
    let txn = db.begin_read()?;
    let dlq = txn.open_table(DLQ)?;
    let mut page = DlqPage::default();
    for entry in dlq.range(..cursor.unwrap_or(u64::MAX))?.rev() {
        let (key, value) = entry?;
        let dlq_seq = key.value();
        let record = codec::decode_dlq(value.value())
            .map_err(|source| StoreError::Corrupt { seq: dlq_seq, source })?;
        if !filter.matches(&record) {
            continue;
        }
        if page.entries.len() == limit {
            page.next_cursor = page.entries.last().map(|e| e.dlq_seq);
            break;
        }
        page.entries.push(DlqEntry { dlq_seq, record });
    }
    Ok(page)
}

pub(super) fn dlq_get(db: &impl ReadableDatabase, id: EventId) -> Result<Option<DlqEntry>> {
    let txn = db.begin_read()?;
    let Some(dlq_seq) = txn.open_table(DLQ_IDS)?.get(id.as_u128())?.map(|v| v.value()) else {
        return Ok(None);
    };
    let dlq = txn.open_table(DLQ)?;
    let Some(bytes) = dlq.get(dlq_seq)? else { return Ok(None) };
    let record = codec::decode_dlq(bytes.value())
        .map_err(|source| StoreError::Corrupt { seq: dlq_seq, source })?;
    Ok(Some(DlqEntry { dlq_seq, record }))
}

/// The outbox entries of event `id` (one, or more after a DLQ replay of some of its
/// destinations while others were pending), oldest first, each with whether it is held for
/// the fleet's ruling on its key: a walk over the outbox that reads each record's id (its
/// first bytes) and decodes only the matches. O(outbox).
pub(super) fn find_pending(
    db: &impl ReadableDatabase,
    id: EventId,
) -> Result<Vec<(OutboxEntry, bool)>> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let holds = match txn.open_table(super::KEY_HOLDS) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let wanted = id.as_bytes();
    let mut found = Vec::new();
    for entry in events.iter()? {
        let (seq, bytes) = entry?;
        // Every event format starts with its version byte, then the 16 bytes of the id.
        if bytes.value().get(1..17) != Some(wanted.as_slice()) {
            continue;
        }
        let seq = seq.value();
        let event = codec::decode_event(bytes.value())
            .map_err(|source| StoreError::Corrupt { seq, source })?;
        let delivery = match txn.open_table(DELIVERY)?.get(seq)? {
            Some(b) => Some(
                codec::decode_delivery(b.value())
                    .map_err(|source| StoreError::Corrupt { seq, source })?,
            ),
            None => None,
        };
        let held = match &holds {
            Some(holds) => holds.get(seq)?.is_some(),
            None => false,
        };
        found.push((OutboxEntry { seq, event, delivery, claimed: Vec::new() }, held));
    }
    Ok(found)
}

/// Backlog of one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationBacklog {
    pub destination: String,
    /// The configured destination (a bounded metric label).
    pub name: String,
    pub broker: &'static str,
    /// Events still to deliver there.
    pub pending: u64,
    /// Of those, how many failed at least once.
    pub retrying: u64,
    /// Failed attempts so far, summed over the pending events.
    pub failed_attempts: u64,
    /// Age of the first event in outbox order still pending there (its received time).
    pub oldest_pending_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    /// Accepted but not routed yet.
    pub unrouted: u64,
    pub oldest_pending_age_ms: Option<u64>,
    pub dlq_entries: u64,
    pub destinations: Vec<DestinationBacklog>,
}

pub(super) fn outbox_stats(db: &impl ReadableDatabase, now_ms: u64) -> Result<OutboxStats> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let delivery = txn.open_table(DELIVERY)?;
    let mut stats = OutboxStats {
        pending: events.len()?,
        dlq_entries: txn.open_table(DLQ)?.len()?,
        ..OutboxStats::default()
    };
    stats.unrouted = stats.pending.saturating_sub(delivery.len()?);
    // Sequence order is acceptance order: the first event is the oldest.
    if let Some((key, value)) = events.first()? {
        let event = codec::decode_event(value.value())
            .map_err(|source| StoreError::Corrupt { seq: key.value(), source })?;
        stats.oldest_pending_age_ms = Some(now_ms.saturating_sub(event.received_at_ms()));
    }
    let mut by_label: BTreeMap<String, DestinationBacklog> = BTreeMap::new();
    for entry in delivery.iter()? {
        let (key, value) = entry?;
        let d = codec::decode_delivery(value.value())
            .map_err(|source| StoreError::Corrupt { seq: key.value(), source })?;
        for s in d.destinations.iter().filter(|s| s.is_pending()) {
            let b = match by_label.entry(s.target.label()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(first) => {
                    // Delivery records are in outbox order: the first pending one is the
                    // oldest there. One event read per destination.
                    let received = match events.get(key.value())? {
                        Some(e) => Some(
                            codec::decode_event(e.value())
                                .map_err(|source| StoreError::Corrupt { seq: key.value(), source })?
                                .received_at_ms(),
                        ),
                        None => None,
                    };
                    let destination = first.key().clone();
                    first.insert(DestinationBacklog {
                        destination,
                        name: s.name.clone(),
                        broker: s.target.broker().as_str(),
                        oldest_pending_age_ms: received.map(|t| now_ms.saturating_sub(t)),
                        ..DestinationBacklog::default()
                    })
                }
            };
            b.pending += 1;
            b.retrying += u64::from(s.attempts > 0);
            b.failed_attempts += u64::from(s.attempts);
        }
    }
    stats.destinations = by_label.into_values().collect();
    Ok(stats)
}

/// What a metrics scrape reads, in O(1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub pending: u64,
    pub oldest_pending_age_ms: Option<u64>,
    pub dlq_entries: u64,
}

pub(super) fn summary(db: &impl ReadableDatabase, now_ms: u64) -> Result<Summary> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let oldest = match events.first()? {
        Some((key, value)) => Some(
            codec::decode_event(value.value())
                .map_err(|source| StoreError::Corrupt { seq: key.value(), source })?
                .received_at_ms(),
        ),
        None => None,
    };
    Ok(Summary {
        pending: events.len()?,
        oldest_pending_age_ms: oldest.map(|t| now_ms.saturating_sub(t)),
        dlq_entries: txn.open_table(DLQ)?.len()?,
    })
}

/// A stopped daemon's store, opened read-only (the CLI's `--offline`).
pub struct ReadOnlyStore(redb::ReadOnlyDatabase);

/// Compacts the store file of a stopped daemon (`orchestron store compact`): the free pages
/// inside it go back to the filesystem. Returns the file's size before and after, in bytes.
/// Refused while the daemon (or anything else) has the file open.
pub fn compact_file(path: &Path) -> Result<(u64, u64)> {
    let len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = len();
    let mut db = redb::Database::builder()
        .open(path)
        .map_err(|e| StoreError::Exclusive { path: path.to_owned(), cause: Arc::new(e) })?;
    db.compact().map_err(|e| StoreError::Compaction(Arc::new(e)))?;
    drop(db);
    Ok((before, len()))
}

impl ReadOnlyStore {
    pub fn open(path: &Path) -> Result<Self> {
        let db = redb::Database::builder()
            .open_read_only(path)
            .map_err(|e| StoreError::ReadOnly { path: path.to_owned(), cause: Arc::new(e) })?;
        Ok(Self(db))
    }

    pub fn dlq_list(
        &self,
        filter: &DlqFilter,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<DlqPage> {
        dlq_list(&self.0, filter, cursor, limit)
    }

    pub fn dlq_get(&self, id: EventId) -> Result<Option<DlqEntry>> {
        dlq_get(&self.0, id)
    }

    pub fn find_pending(&self, id: EventId) -> Result<Vec<(OutboxEntry, bool)>> {
        find_pending(&self.0, id)
    }

    pub fn outbox_stats(&self, now_ms: u64) -> Result<OutboxStats> {
        outbox_stats(&self.0, now_ms)
    }
}
