//! The writer thread: every write to redb happens here, in group commits.
//!
//! The loop blocks for one command, then takes everything else already queued (up to the batch
//! cap) and applies it all in one write transaction. The commit is durable (fsync, two-phase)
//! when the batch holds an append or an admin change; settle-only batches skip the fsync, and
//! a tick makes them durable within a second. No timer delays a commit: while one commit
//! runs, the next batch fills by itself.
//!
//! A failed commit answers every request of its batch with an error, marks the store
//! unhealthy, drops the database and reopens it; it never retries an fsync and then acks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, StorageError, Table,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::record::{self, Delivery, DestinationState, DlqRecord};
use super::{
    Appended, Counters, DEDUP, DEDUP_EXPIRY, DELIVERY, DLQ, DLQ_IDS, DlqSelector, EVENTS,
    IdempotencyKey, LANES, META, Outcome, Result, Settlement, Shared, StoreError, Tuning, UNROUTED,
    file_len, open_database,
};
use crate::event::{EventId, ValidatedEvent};

pub(super) enum Command {
    Append {
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        reply: oneshot::Sender<Result<Appended>>,
    },
    ExpireDedup {
        now_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<u64>>,
    },
    Settle {
        settlements: Vec<Settlement>,
        reply: oneshot::Sender<Result<()>>,
    },
    Replay {
        selector: DlqSelector,
        now_ms: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    DeleteDlq {
        selector: DlqSelector,
        reply: oneshot::Sender<Result<u64>>,
    },
    ExpireDlq {
        max_entries: Option<u64>,
        older_than_ms: Option<u64>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Make earlier non-durable commits durable, if there are any.
    FlushIfDirty,
    /// Final durable commit, then the thread ends.
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Command {
    fn is_append(&self) -> bool {
        matches!(self, Command::Append { .. })
    }

    /// Appends and admin changes are acknowledged to someone outside: they must be durable.
    fn needs_fsync(&self) -> bool {
        // Expired keys that come back after a crash are still expired: no fsync needed.
        !matches!(
            self,
            Command::Settle { .. } | Command::FlushIfDirty | Command::ExpireDedup { .. }
        )
    }
}

/// How long the writer waits between attempts to reopen a failed database.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct Writer {
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    db: Option<Arc<Database>>,
    tuning: Tuning,
    max_bytes: u64,
    batch_max: usize,
    counters: Counters,
    /// A non-durable commit happened since the last durable one.
    dirty: bool,
    last_reopen_attempt: Option<Instant>,
}

/// A reply to send once the commit is known to have succeeded (or failed).
enum Pending {
    Append(oneshot::Sender<Result<Appended>>, Result<Appended>),
    Unit(oneshot::Sender<Result<()>>),
    Count(oneshot::Sender<Result<u64>>, u64),
}

impl Pending {
    fn succeed(self) -> bool {
        match self {
            Pending::Append(reply, result) => {
                let appended = matches!(result, Ok(Appended::Accepted(_)));
                let _ = reply.send(result);
                return appended;
            }
            Pending::Unit(reply) => {
                let _ = reply.send(Ok(()));
            }
            Pending::Count(reply, n) => {
                let _ = reply.send(Ok(n));
            }
        }
        false
    }

    fn fail(self, error: &StoreError) {
        match self {
            Pending::Append(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Unit(reply) => drop(reply.send(Err(error.clone()))),
            Pending::Count(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// The tables one transaction writes.
struct Tables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    delivery: Table<'t, u64, &'static [u8]>,
    lanes: Table<'t, (u8, u64, u64), ()>,
    dlq: Table<'t, u64, &'static [u8]>,
    dlq_ids: Table<'t, u128, u64>,
    dedup: Table<'t, (&'static str, &'static str), (u128, u64)>,
    dedup_expiry: Table<'t, (u64, &'static str, &'static str), ()>,
}

impl Writer {
    pub(super) fn new(
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        tuning: Tuning,
        max_bytes: u64,
        batch_max: usize,
        counters: Counters,
    ) -> Self {
        let db = shared.db.load_full();
        Self {
            rx,
            shared,
            db,
            tuning,
            max_bytes,
            batch_max,
            counters,
            dirty: false,
            last_reopen_attempt: None,
        }
    }

    pub(super) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut appends = usize::from(first.is_append());
            let mut batch = vec![first];
            while appends < self.batch_max {
                match self.rx.try_recv() {
                    Ok(command) => {
                        appends += usize::from(command.is_append());
                        batch.push(command);
                    }
                    Err(_) => break,
                }
            }
            let closing = batch.iter().any(|c| matches!(c, Command::Close { .. }));
            self.execute(batch);
            if closing {
                break;
            }
        }
        // Dropping the last handle to the database closes the file cleanly.
        self.shared.db.store(None);
        self.db = None;
        tracing::info!(
            durable_commits = self.shared.durable_commits.load(Ordering::Relaxed),
            appended_events = self.shared.appended_events.load(Ordering::Relaxed),
            "store closed"
        );
    }

    fn execute(&mut self, batch: Vec<Command>) {
        let only_idle_ticks = batch.iter().all(|c| matches!(c, Command::FlushIfDirty));
        if only_idle_ticks && !self.dirty {
            return;
        }
        let Some(db) = self.usable_db() else {
            let error = StoreError::Unavailable("reopening after a failed commit".into());
            let mut pending = Vec::new();
            for command in batch {
                unapplied(command, &mut pending);
            }
            pending.into_iter().for_each(|p| p.fail(&error));
            return;
        };
        let durable = self.dirty || batch.iter().any(Command::needs_fsync);
        let mut pending = Vec::with_capacity(batch.len());
        let counters_before = self.counters;
        let started = Instant::now();
        let committed = self.commit(&db, batch, durable, &mut pending);
        self.shared.metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                self.dirty = !durable;
                if durable {
                    self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
                }
                self.shared.file_bytes.store(file_len(&self.shared.path), Ordering::Relaxed);
                let appended =
                    pending.into_iter().map(Pending::succeed).filter(|&a| a).count() as u64;
                if appended > 0 {
                    self.shared.metrics.store_batch_events.observe(appended as f64);
                    self.shared.appended_events.fetch_add(appended, Ordering::Relaxed);
                    self.shared.appended.notify_one();
                }
            }
            Err(error) => {
                tracing::error!(%error, "store commit failed; failing the batch and reopening");
                self.shared.metrics.store_commit_failures.inc();
                self.counters = counters_before;
                pending.into_iter().for_each(|p| p.fail(&error));
                self.fail();
            }
        }
    }

    /// Applies the batch in one transaction and commits it. On error the transaction is
    /// dropped (aborted); `pending` holds a reply for every command either way.
    fn commit(
        &mut self,
        db: &Database,
        batch: Vec<Command>,
        durable: bool,
        pending: &mut Vec<Pending>,
    ) -> Result<()> {
        let durability = if durable { Durability::Immediate } else { Durability::None };
        let begun = db.begin_write().map_err(StoreError::from).and_then(|mut txn| {
            txn.set_two_phase_commit(true);
            txn.set_quick_repair(self.tuning.quick_repair);
            txn.set_durability(durability).map_err(|e| StoreError::Db(e.to_string()))?;
            Ok(txn)
        });
        let txn = match begun {
            Ok(txn) => txn,
            Err(error) => {
                batch.into_iter().for_each(|c| unapplied(c, pending));
                return Err(error);
            }
        };
        self.apply(&txn, batch, pending)?;
        txn.commit().map_err(|e| StoreError::Commit(e.to_string()))
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        batch: Vec<Command>,
        pending: &mut Vec<Pending>,
    ) -> Result<()> {
        let mut tables = match open_tables(txn) {
            Ok(tables) => tables,
            Err(error) => {
                batch.into_iter().for_each(|c| unapplied(c, pending));
                return Err(error);
            }
        };
        let over_quota = self.shared.file_bytes.load(Ordering::Relaxed) > self.max_bytes;
        let mut failure: Option<StoreError> = None;
        for command in batch {
            if failure.is_some() {
                unapplied(command, pending);
                continue;
            }
            // Each reply is recorded with what the command did; after an error every
            // request of the batch is still answered (with that error).
            let result = match command {
                Command::Append { reply, .. } if over_quota => {
                    pending.push(Pending::Append(reply, Err(StoreError::QuotaExceeded)));
                    Ok(())
                }
                Command::Append { event, key, reply } => {
                    match first_use(&mut tables, &event, key.as_ref()) {
                        Ok(Some(first)) => {
                            pending.push(Pending::Append(reply, Ok(Appended::Duplicate(first))));
                            Ok(())
                        }
                        Ok(None) => {
                            let seq = self.next_seq();
                            pending
                                .push(Pending::Append(reply, Ok(Appended::Accepted(event.id()))));
                            append(&mut tables, seq, &event)
                        }
                        Err(e) => {
                            pending
                                .push(Pending::Append(reply, Ok(Appended::Accepted(event.id()))));
                            Err(e)
                        }
                    }
                }
                Command::ExpireDedup { now_ms, limit, reply } => {
                    let expired = expire_dedup(&mut tables, now_ms, limit);
                    pending.push(Pending::Count(reply, *expired.as_ref().unwrap_or(&0)));
                    expired.map(drop)
                }
                Command::Settle { settlements, reply } => {
                    pending.push(Pending::Unit(reply));
                    settlements.into_iter().try_for_each(|s| self.settle(&mut tables, s))
                }
                Command::Replay { selector, now_ms, reply } => {
                    match self.replay(&mut tables, &selector, now_ms) {
                        Ok(n) => {
                            pending.push(Pending::Count(reply, n));
                            Ok(())
                        }
                        Err(e) => {
                            pending.push(Pending::Count(reply, 0));
                            Err(e)
                        }
                    }
                }
                Command::DeleteDlq { selector, reply } => {
                    let removed = select(&tables, &selector).and_then(|chosen| {
                        let n = chosen.len() as u64;
                        for (dlq_seq, record) in chosen {
                            remove_dlq(&mut tables, dlq_seq, &record)?;
                        }
                        Ok(n)
                    });
                    pending.push(Pending::Count(reply, *removed.as_ref().unwrap_or(&0)));
                    removed.map(drop)
                }
                Command::ExpireDlq { max_entries, older_than_ms, reply } => {
                    let expired = expire(&mut tables, max_entries, older_than_ms);
                    pending.push(Pending::Count(reply, *expired.as_ref().unwrap_or(&0)));
                    expired.map(drop)
                }
                Command::FlushIfDirty => Ok(()),
                Command::Close { reply } => {
                    pending.push(Pending::Unit(reply));
                    Ok(())
                }
            };
            failure = result.err();
        }
        if let Some(error) = failure {
            return Err(error);
        }
        drop(tables);
        let mut meta = txn.open_table(META)?;
        meta.insert("next_seq", self.counters.next_seq)?;
        meta.insert("next_dlq_seq", self.counters.next_dlq_seq)?;
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        seq
    }

    fn settle(&mut self, t: &mut Tables<'_>, s: Settlement) -> Result<()> {
        for (lane, due) in &s.remove_due {
            t.lanes.remove((*lane, *due, s.seq))?;
        }
        for (lane, due) in &s.add_due {
            t.lanes.insert((*lane, *due, s.seq), ())?;
        }
        match &s.outcome {
            Outcome::Keep => {}
            Outcome::Store(d) => {
                t.delivery.insert(s.seq, record::encode_delivery(d).as_slice())?;
            }
            Outcome::Delete => {
                t.events.remove(s.seq)?;
                t.delivery.remove(s.seq)?;
            }
            Outcome::Update(updates) => merge_update(t, s.seq, updates)?,
        }
        if let Some(dead) = s.dead_letter {
            self.dead_letter(t, dead)?;
        }
        Ok(())
    }

    /// Adds to the event's DLQ entry if it has one (another destination failed earlier),
    /// otherwise creates it.
    fn dead_letter(&mut self, t: &mut Tables<'_>, mut dead: DlqRecord) -> Result<()> {
        let id = dead.event.id().as_u128();
        let existing = t.dlq_ids.get(id)?.map(|v| v.value());
        let dlq_seq = match existing {
            Some(dlq_seq) => {
                let earlier = t.dlq.get(dlq_seq)?.map(|b| record::decode_dlq(b.value()));
                if let Some(Ok(mut earlier)) = earlier {
                    earlier.destinations.append(&mut dead.destinations);
                    dead = earlier;
                }
                dlq_seq
            }
            None => {
                let dlq_seq = self.counters.next_dlq_seq;
                self.counters.next_dlq_seq += 1;
                t.dlq_ids.insert(id, dlq_seq)?;
                dlq_seq
            }
        };
        t.dlq.insert(dlq_seq, record::encode_dlq(&dead).as_slice())?;
        Ok(())
    }

    /// Back to the outbox, under a new seq and the same event id, pending only for the
    /// destinations that had failed (a `no_route` entry is routed afresh).
    fn replay(&mut self, t: &mut Tables<'_>, selector: &DlqSelector, now_ms: u64) -> Result<u64> {
        let chosen = select(t, selector)?;
        let n = chosen.len() as u64;
        for (dlq_seq, record) in chosen {
            let seq = self.next_seq();
            t.events.insert(seq, record::encode_event(&record.event).as_slice())?;
            if record.destinations.is_empty() {
                t.lanes.insert((UNROUTED, now_ms, seq), ())?;
            } else {
                let destinations: Vec<DestinationState> = record
                    .destinations
                    .iter()
                    .map(|d| DestinationState {
                        name: d.state.name.clone(),
                        ..DestinationState::new(d.state.target.clone(), d.state.retry)
                    })
                    .collect();
                let mut lanes: Vec<u8> =
                    destinations.iter().map(|d| d.target.broker().lane()).collect();
                lanes.sort_unstable();
                lanes.dedup();
                for lane in lanes {
                    t.lanes.insert((lane, now_ms, seq), ())?;
                }
                let delivery = Delivery { destinations };
                t.delivery.insert(seq, record::encode_delivery(&delivery).as_slice())?;
            }
            remove_dlq(t, dlq_seq, &record)?;
        }
        Ok(n)
    }

    fn usable_db(&mut self) -> Option<Arc<Database>> {
        if let Some(db) = &self.db {
            return Some(Arc::clone(db));
        }
        if self.last_reopen_attempt.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
            return None;
        }
        self.last_reopen_attempt = Some(Instant::now());
        match open_database(&self.shared.medium, self.tuning) {
            Ok(db) => {
                let db = Arc::new(db);
                match super::read_counters(&db) {
                    Ok(c) => {
                        self.counters.next_seq = self.counters.next_seq.max(c.next_seq);
                        self.counters.next_dlq_seq = self.counters.next_dlq_seq.max(c.next_dlq_seq);
                    }
                    Err(error) => {
                        tracing::error!(%error, "reopened store is unreadable");
                        return None;
                    }
                }
                tracing::warn!("store reopened after a failed commit");
                self.shared.db.store(Some(Arc::clone(&db)));
                self.shared.healthy.store(true, Ordering::Relaxed);
                self.db = Some(Arc::clone(&db));
                Some(db)
            }
            Err(error) => {
                tracing::error!(%error, "cannot reopen store yet");
                None
            }
        }
    }

    /// After a failed commit the in-memory state of redb is not trusted: drop every handle so
    /// the file can be reopened (and repaired) from what is on disk.
    fn fail(&mut self) {
        self.shared.healthy.store(false, Ordering::Relaxed);
        self.shared.db.store(None);
        self.db = None;
        self.dirty = false;
        self.last_reopen_attempt = None;
    }
}

/// Applies one broker worker's destination states to the stored record.
fn merge_update(t: &mut Tables<'_>, seq: u64, updates: &[(usize, DestinationState)]) -> Result<()> {
    let current = t.delivery.get(seq)?.map(|b| record::decode_delivery(b.value()));
    let Some(Ok(mut current)) = current else {
        // The event is gone (or its record unreadable): nothing to merge into.
        return Ok(());
    };
    for (j, state) in updates {
        if let Some(slot) = current.destinations.get_mut(*j).filter(|s| s.target == state.target) {
            *slot = state.clone();
        }
    }
    if current.destinations.iter().any(DestinationState::is_pending) {
        t.delivery.insert(seq, record::encode_delivery(&current).as_slice())?;
    } else {
        t.events.remove(seq)?;
        t.delivery.remove(seq)?;
    }
    Ok(())
}

fn open_tables(txn: &WriteTransaction) -> Result<Tables<'_>> {
    Ok(Tables {
        events: txn.open_table(EVENTS)?,
        delivery: txn.open_table(DELIVERY)?,
        lanes: txn.open_table(LANES)?,
        dlq: txn.open_table(DLQ)?,
        dlq_ids: txn.open_table(DLQ_IDS)?,
        dedup: txn.open_table(DEDUP)?,
        dedup_expiry: txn.open_table(DEDUP_EXPIRY)?,
    })
}

/// The reply slot of a command that was not applied (its batch failed before reaching it).
fn unapplied(command: Command, pending: &mut Vec<Pending>) {
    match command {
        Command::Append { reply, event, .. } => {
            pending.push(Pending::Append(reply, Ok(Appended::Accepted(event.id()))))
        }
        Command::Settle { reply, .. } | Command::Close { reply } => {
            pending.push(Pending::Unit(reply))
        }
        Command::Replay { reply, .. }
        | Command::DeleteDlq { reply, .. }
        | Command::ExpireDlq { reply, .. }
        | Command::ExpireDedup { reply, .. } => pending.push(Pending::Count(reply, 0)),
        Command::FlushIfDirty => {}
    }
}

fn append(t: &mut Tables<'_>, seq: u64, event: &ValidatedEvent) -> Result<()> {
    t.events.insert(seq, record::encode_event(event).as_slice())?;
    t.lanes.insert((UNROUTED, event.received_at_ms(), seq), ())?;
    Ok(())
}

/// With a key: the id of the event that used it first if it is still live; otherwise records
/// the key for `event` (replacing an expired use) and returns `None`.
fn first_use(
    t: &mut Tables<'_>,
    event: &ValidatedEvent,
    key: Option<&IdempotencyKey>,
) -> Result<Option<EventId>> {
    let Some(key) = key else { return Ok(None) };
    let source = event.source().as_str();
    let now = crate::event::now_ms();
    let existing = t.dedup.get((source, key.key.as_str()))?.map(|v| v.value());
    if let Some((first, expires_at)) = existing {
        if expires_at > now {
            return Ok(Some(EventId::from_u128(first)));
        }
        t.dedup_expiry.remove((expires_at, source, key.key.as_str()))?;
    }
    t.dedup.insert((source, key.key.as_str()), (event.id().as_u128(), key.expires_at_ms))?;
    t.dedup_expiry.insert((key.expires_at_ms, source, key.key.as_str()), ())?;
    Ok(None)
}

/// Removes up to `limit` keys that expired before `now_ms`, oldest first.
fn expire_dedup(t: &mut Tables<'_>, now_ms: u64, limit: usize) -> Result<u64> {
    let mut doomed: Vec<(u64, String, String)> = Vec::new();
    for entry in t.dedup_expiry.range(..(now_ms, "", ""))?.take(limit) {
        let (k, _) = entry?;
        let (at, source, key) = k.value();
        doomed.push((at, source.to_owned(), key.to_owned()));
    }
    for (at, source, key) in &doomed {
        t.dedup_expiry.remove((*at, source.as_str(), key.as_str()))?;
        // A key re-used after it expired points at its new expiry: leave that one alone.
        let current = t.dedup.get((source.as_str(), key.as_str()))?.map(|v| v.value().1);
        if current == Some(*at) {
            t.dedup.remove((source.as_str(), key.as_str()))?;
        }
    }
    Ok(doomed.len() as u64)
}

fn select(t: &Tables<'_>, selector: &DlqSelector) -> Result<Vec<(u64, DlqRecord)>> {
    let decode = |dlq_seq: u64, bytes: &[u8]| {
        record::decode_dlq(bytes).map_err(|source| StoreError::Corrupt { seq: dlq_seq, source })
    };
    match selector {
        DlqSelector::Id(id) => {
            let Some(dlq_seq) = t.dlq_ids.get(id.as_u128())?.map(|v| v.value()) else {
                return Ok(Vec::new());
            };
            let Some(bytes) = t.dlq.get(dlq_seq)? else { return Ok(Vec::new()) };
            Ok(vec![(dlq_seq, decode(dlq_seq, bytes.value())?)])
        }
        DlqSelector::Matching(filter) => {
            let mut chosen = Vec::new();
            for entry in t.dlq.iter()? {
                let (key, value) = entry?;
                let record = decode(key.value(), value.value())?;
                if filter.matches(&record) {
                    chosen.push((key.value(), record));
                }
            }
            Ok(chosen)
        }
    }
}

fn remove_dlq(t: &mut Tables<'_>, dlq_seq: u64, record: &DlqRecord) -> Result<(), StorageError> {
    t.dlq.remove(dlq_seq)?;
    t.dlq_ids.remove(record.event.id().as_u128())?;
    Ok(())
}

/// Oldest first: drop entries beyond `max_entries` and those older than `older_than_ms`.
fn expire(t: &mut Tables<'_>, max_entries: Option<u64>, older_than_ms: Option<u64>) -> Result<u64> {
    let total = t.dlq.len()?;
    let mut doomed = Vec::new();
    for entry in t.dlq.iter()? {
        let (key, value) = entry?;
        let record = record::decode_dlq(value.value())
            .map_err(|source| StoreError::Corrupt { seq: key.value(), source })?;
        let over_count = max_entries.is_some_and(|max| total - doomed.len() as u64 > max);
        let too_old = older_than_ms.is_some_and(|t| record.dead_lettered_at_ms < t);
        if !over_count && !too_old {
            break;
        }
        doomed.push((key.value(), record));
    }
    for (dlq_seq, record) in &doomed {
        remove_dlq(t, *dlq_seq, record)?;
    }
    Ok(doomed.len() as u64)
}
