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
    Database, Durability, Key, ReadableTable, Table, TableDefinition, Value, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

mod dedup;
mod dlq;
mod fleet;
mod room;

use super::codec;
use super::feed::{self, FeedKind, Recorder};
use super::open::{Counters, Tuning, file_len, open_database, read_counters};
use super::space::Admission;
use super::{
    Appended, Committed, DEDUP, DEDUP_EXPIRY, DELIVERY, DLQ, DLQ_IDS, DlqSelector, EVENTS,
    IdempotencyKey, KEY_HELD, KEY_HOLDS, LANES, META, META_TEXT, Outcome, Result, Settlement,
    Shared, StoreError,
};
use crate::delivery::{Delivery, DestinationState, Lane};
use crate::event::{EventId, ValidatedEvent, now_ms};
use dedup::{expire_dedup, first_use};
use dlq::{expire, remove_dlq, select};

pub(in crate::store) enum Command {
    Append {
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        /// Where it goes, when ingest routed it; `None` files it unrouted.
        delivery: Option<Delivery>,
        reply: oneshot::Sender<Result<Committed>>,
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
    /// Start the change feed (bootstrapping it from the whole store the first time). Durable.
    StartFeed {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop the change feed and drop its rows. Durable.
    StopFeed {
        reply: oneshot::Sender<Result<()>>,
    },
    /// Drop the feed rows through this change number: they are replicated.
    TrimFeed {
        through: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Add events taken over from a peer, held until released. Durable.
    Import {
        entries: Vec<(ValidatedEvent, Option<Delivery>)>,
        reply: oneshot::Sender<Result<Vec<u64>>>,
    },
    /// Make held events due now.
    Release {
        seqs: Vec<u64>,
        now_ms: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// End key holds: release some events, drop others (duplicates). Durable.
    EndKeyHolds {
        release: Vec<u64>,
        duplicates: Vec<(u64, EventId)>,
        now_ms: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Remove events a peer took over, without publishing them. Durable.
    Forget {
        seqs: Vec<u64>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Set a text setting of the store (durable).
    SetText {
        name: &'static str,
        value: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Make earlier non-durable commits durable, if there are any.
    FlushIfDirty,
    /// The disk is low: measure the free pages inside the file, and give them back to the
    /// filesystem (compaction) when there are many (see `room.rs`).
    TendSpace,
    /// Final durable commit, then the thread ends.
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Command {
    fn is_append(&self) -> bool {
        matches!(self, Command::Append { .. })
    }

    /// Traffic: events coming in or being delivered (not housekeeping, such as key expiry or
    /// DLQ retention). A quiet moment is one without it (see `room.rs`).
    fn is_traffic(&self) -> bool {
        matches!(
            self,
            Command::Append { .. }
                | Command::Settle { .. }
                | Command::Import { .. }
                | Command::Release { .. }
                | Command::EndKeyHolds { .. }
        )
    }

    /// Appends and admin changes are acknowledged to someone outside: they must be durable.
    fn needs_fsync(&self) -> bool {
        // Expired keys that come back after a crash are still expired: no fsync needed.
        !matches!(
            self,
            Command::Settle { .. }
                | Command::TrimFeed { .. }
                | Command::Release { .. }
                | Command::FlushIfDirty
                | Command::TendSpace
                | Command::ExpireDedup { .. }
        )
    }
}

/// How long the writer waits between attempts to reopen a failed database.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

pub(in crate::store) struct Writer {
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
    /// When the file was last compacted to give its free pages back to a low disk.
    last_compaction: Option<Instant>,
    /// When it was last compacted in a quiet moment (see `room.rs`).
    last_idle_compaction: Option<Instant>,
    /// When the last commit with traffic in it (an append, a settle) was made.
    last_traffic: Option<Instant>,
    /// The lanes the commit being made filed entries into.
    filed: [bool; Lane::COUNT],
}

/// A reply to send once the commit is known to have succeeded (or failed).
enum Pending {
    Append(oneshot::Sender<Result<Committed>>, Result<Appended>),
    Unit(oneshot::Sender<Result<()>>),
    Count(oneshot::Sender<Result<u64>>, u64),
    Seqs(oneshot::Sender<Result<Vec<u64>>>, Vec<u64>),
}

impl Pending {
    fn accepts(&self) -> bool {
        matches!(self, Pending::Append(_, Ok(Appended::Accepted(_))))
    }

    /// Sends the reply of a command whose commit succeeded; `batch_events` is how many
    /// events that commit made durable.
    fn succeed(self, batch_events: u32) {
        match self {
            Pending::Append(reply, result) => {
                let _ = reply.send(result.map(|appended| Committed { appended, batch_events }));
            }
            Pending::Unit(reply) => {
                let _ = reply.send(Ok(()));
            }
            Pending::Count(reply, n) => {
                let _ = reply.send(Ok(n));
            }
            Pending::Seqs(reply, seqs) => {
                let _ = reply.send(Ok(seqs));
            }
        }
    }

    fn fail(self, error: &StoreError) {
        match self {
            Pending::Append(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Unit(reply) => drop(reply.send(Err(error.clone()))),
            Pending::Count(reply, _) => drop(reply.send(Err(error.clone()))),
            Pending::Seqs(reply, _) => drop(reply.send(Err(error.clone()))),
        }
    }
}

/// The tables one transaction writes.
pub(super) struct Tables<'t> {
    events: Table<'t, u64, &'static [u8]>,
    delivery: Table<'t, u64, &'static [u8]>,
    lanes: Table<'t, (u8, u64, u64), ()>,
    // Opened when first used: most commits (appends without a key, settles) need none of them.
    dlq: Lazy<'t, u64, &'static [u8]>,
    dlq_ids: Lazy<'t, u128, u64>,
    dedup: Lazy<'t, (&'static str, &'static str), (u128, u64)>,
    dedup_expiry: Lazy<'t, (u64, &'static str, &'static str), ()>,
    key_holds: Lazy<'t, u64, (&'static str, u64)>,
    /// The entries this transaction touched, while the change feed is on.
    feed: Option<Recorder>,
    /// The lanes this transaction filed an entry into (held entries aside).
    filed: [bool; Lane::COUNT],
}

/// A table of a write transaction, opened on first use (opening one costs as much as a few
/// inserts).
pub(super) struct Lazy<'t, K: Key + 'static, V: Value + 'static> {
    txn: &'t WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    table: Option<Table<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> Lazy<'t, K, V> {
    fn new(txn: &'t WriteTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        Self { txn, definition, table: None }
    }

    pub(super) fn open(&mut self) -> Result<&mut Table<'t, K, V>> {
        if self.table.is_none() {
            self.table = Some(self.txn.open_table(self.definition)?);
        }
        Ok(self.table.as_mut().expect("opened above"))
    }
}

impl Tables<'_> {
    /// Files `seq` into `lane`, due at `due_ms`, and notes the lane, so its worker is woken
    /// after the commit. (Not only for entries due at once: the relay's clock is not the
    /// wall clock; a worker woken early claims nothing and sleeps until the next due entry.)
    fn file(&mut self, lane: Lane, due_ms: u64, seq: u64) -> Result<()> {
        self.lanes.insert((lane.number(), due_ms, seq), ())?;
        self.filed[lane.index()] = true;
        Ok(())
    }

    /// Notes a change to an outbox or DLQ entry for the change feed (if it is on).
    fn touched(&mut self, kind: FeedKind, seq: u64) {
        if let Some(feed) = &mut self.feed {
            feed.note(kind, seq);
        }
    }
}

impl Writer {
    pub(in crate::store) fn new(
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
            last_compaction: None,
            last_idle_compaction: None,
            last_traffic: None,
            filed: [false; Lane::COUNT],
        }
    }

    pub(in crate::store) fn run(mut self) {
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
            let tend = batch.iter().any(|c| matches!(c, Command::TendSpace));
            self.execute(batch);
            if closing {
                break;
            }
            if tend {
                self.tend_space();
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
        let only_idle_ticks =
            batch.iter().all(|c| matches!(c, Command::FlushIfDirty | Command::TendSpace));
        if only_idle_ticks && !self.dirty {
            return;
        }
        let Some(db) = self.usable_db() else {
            let error = StoreError::Reopening;
            let mut pending = Vec::new();
            for command in batch {
                unapplied(command, &mut pending);
            }
            pending.into_iter().for_each(|p| p.fail(&error));
            return;
        };
        let durable = self.dirty || batch.iter().any(Command::needs_fsync);
        let traffic = batch.iter().any(Command::is_traffic);
        let mut pending = Vec::with_capacity(batch.len());
        let counters_before = self.counters;
        self.filed = [false; Lane::COUNT];
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
                if self.counters.next_change > counters_before.next_change {
                    // Before the replies: a caller that reads the mark after its reply gets
                    // one past its own change.
                    self.shared.change_mark.store(self.counters.next_change, Ordering::Release);
                    self.shared.fed.notify_one();
                }
                let appended = pending.iter().filter(|p| p.accepts()).count() as u64;
                let batch_events = u32::try_from(appended).unwrap_or(u32::MAX);
                pending.into_iter().for_each(|p| p.succeed(batch_events));
                if traffic {
                    self.last_traffic = Some(Instant::now());
                }
                if appended > 0 {
                    self.shared.metrics.store_batch_events.observe(appended as f64);
                    self.shared.appended_events.fetch_add(appended, Ordering::Relaxed);
                }
                for (lane, filed) in self.filed.iter().enumerate() {
                    if *filed {
                        self.shared.filed[lane].notify_one();
                    }
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
            txn.set_durability(durability)?;
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
        Ok(txn.commit()?)
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        batch: Vec<Command>,
        pending: &mut Vec<Pending>,
    ) -> Result<()> {
        let mut tables = match open_tables(txn, self.counters.feed_on) {
            Ok(tables) => tables,
            Err(error) => {
                batch.into_iter().for_each(|c| unapplied(c, pending));
                return Err(error);
            }
        };
        let before = self.counters;
        let over_quota = self.shared.file_bytes.load(Ordering::Relaxed) > self.max_bytes;
        // Created at the batch's first append: one reading of the free space per batch.
        let mut admission: Option<Admission<'_>> = None;
        let space = Arc::clone(&self.shared.space);
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
                Command::Append { event, reply, .. }
                    if !admission
                        .get_or_insert_with(|| Admission::begin(&space))
                        .admit(event_bytes(&event)) =>
                {
                    let refusal = admission.as_ref().map(Admission::refusal);
                    pending.push(Pending::Append(reply, Err(refusal.expect("begun above"))));
                    Ok(())
                }
                Command::Append { event, key, delivery, reply } => {
                    match first_use(&mut tables, &event, key.as_ref()) {
                        Ok(Some(first)) => {
                            pending.push(Pending::Append(reply, Ok(Appended::Duplicate(first))));
                            Ok(())
                        }
                        Ok(None) => {
                            let seq = self.next_seq();
                            pending
                                .push(Pending::Append(reply, Ok(Appended::Accepted(event.id()))));
                            let hold = key.as_ref().filter(|k| k.hold);
                            append(&mut tables, seq, &event, delivery.as_ref(), hold)
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
                    let removed = select(&mut tables, &selector).and_then(|chosen| {
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
                Command::SetText { name, value, reply } => {
                    pending.push(Pending::Unit(reply));
                    set_text(txn, name, &value)
                }
                Command::StartFeed { reply } => {
                    pending.push(Pending::Unit(reply));
                    let next = self.counters.next_change;
                    let started = tables
                        .dlq
                        .open()
                        .and_then(|dlq| feed::start(txn, &tables.events, &*dlq, next, now_ms()));
                    started.map(|next| {
                        self.counters.next_change = next;
                        self.counters.feed_on = true;
                        tables.feed.get_or_insert_with(Recorder::new);
                    })
                }
                Command::StopFeed { reply } => {
                    pending.push(Pending::Unit(reply));
                    // The feed table is dropped: nothing of this transaction goes into it.
                    tables.feed = None;
                    self.counters.feed_on = false;
                    feed::stop(txn).map(drop)
                }
                Command::Import { entries, reply } => match self.import(&mut tables, entries) {
                    Ok(seqs) => {
                        pending.push(Pending::Seqs(reply, seqs));
                        Ok(())
                    }
                    Err(e) => {
                        pending.push(Pending::Seqs(reply, Vec::new()));
                        Err(e)
                    }
                },
                Command::Release { seqs, now_ms, reply } => {
                    let released = fleet::release(&mut tables, &seqs, now_ms);
                    pending.push(Pending::Count(reply, *released.as_ref().unwrap_or(&0)));
                    released.map(drop)
                }
                Command::EndKeyHolds { release, duplicates, now_ms, reply } => {
                    let ended = fleet::end_key_holds(&mut tables, &release, &duplicates, now_ms);
                    pending.push(Pending::Count(reply, *ended.as_ref().unwrap_or(&0)));
                    ended.map(drop)
                }
                Command::Forget { seqs, reply } => {
                    let forgotten = fleet::forget(&mut tables, &seqs);
                    pending.push(Pending::Count(reply, *forgotten.as_ref().unwrap_or(&0)));
                    forgotten.map(drop)
                }
                Command::TrimFeed { through, reply } => {
                    pending.push(Pending::Unit(reply));
                    feed::trim(txn, through)
                }
                Command::FlushIfDirty | Command::TendSpace => Ok(()),
                Command::Close { reply } => {
                    pending.push(Pending::Unit(reply));
                    Ok(())
                }
            };
            failure = result.err();
        }
        if let Some(admission) = admission {
            admission.finish();
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let recorder = tables.feed.take();
        self.filed = tables.filed;
        drop(tables);
        if let Some(recorder) = recorder {
            self.counters.next_change = recorder.write(txn, self.counters.next_change, now_ms())?;
        }
        // Only what moved: a settle-only commit (most of a drain) leaves the meta table alone.
        let seq_moved = self.counters.next_seq != before.next_seq;
        let dlq_seq_moved = self.counters.next_dlq_seq != before.next_dlq_seq;
        if seq_moved || dlq_seq_moved {
            let mut meta = txn.open_table(META)?;
            if seq_moved {
                meta.insert("next_seq", self.counters.next_seq)?;
            }
            if dlq_seq_moved {
                meta.insert("next_dlq_seq", self.counters.next_dlq_seq)?;
            }
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.counters.next_seq;
        self.counters.next_seq += 1;
        seq
    }

    fn settle(&mut self, t: &mut Tables<'_>, s: Settlement) -> Result<()> {
        for (lane, due) in &s.remove_due {
            t.lanes.remove((lane.number(), *due, s.seq))?;
        }
        for (lane, due) in &s.add_due {
            t.file(*lane, *due, s.seq)?;
        }
        match &s.outcome {
            Outcome::Keep => {}
            Outcome::Store(d) => {
                t.delivery.insert(s.seq, codec::encode_delivery(d).as_slice())?;
            }
            Outcome::Delete => {
                t.events.remove(s.seq)?;
                t.delivery.remove(s.seq)?;
            }
            Outcome::Update(updates) => merge_update(t, s.seq, updates)?,
        }
        if !matches!(s.outcome, Outcome::Keep) {
            t.touched(FeedKind::Outbox, s.seq);
        }
        if let Some(dead) = s.dead_letter {
            self.dead_letter(t, dead)?;
        }
        Ok(())
    }

    fn usable_db(&mut self) -> Option<Arc<Database>> {
        if let Some(db) = &self.db {
            return Some(Arc::clone(db));
        }
        if self.last_reopen_attempt.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
            return None;
        }
        self.last_reopen_attempt = Some(Instant::now());
        // Reopening repairs the file, which needs room: on a full disk, give up the reserve.
        if self.shared.space.refresh() < self.shared.space.floor() {
            self.shared.space.release_reserve("the store is reopening on a full disk");
        }
        match open_database(&self.shared.medium, self.tuning) {
            Ok(db) => {
                let db = Arc::new(db);
                match read_counters(&db) {
                    Ok(c) => {
                        self.counters.next_seq = self.counters.next_seq.max(c.next_seq);
                        self.counters.next_dlq_seq = self.counters.next_dlq_seq.max(c.next_dlq_seq);
                        self.counters.next_change = self.counters.next_change.max(c.next_change);
                        self.counters.feed_on = c.feed_on;
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
    let current = t.delivery.get(seq)?.map(|b| codec::decode_delivery(b.value()));
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
        t.delivery.insert(seq, codec::encode_delivery(&current).as_slice())?;
    } else {
        t.events.remove(seq)?;
        t.delivery.remove(seq)?;
    }
    Ok(())
}

fn open_tables(txn: &WriteTransaction, feed_on: bool) -> Result<Tables<'_>> {
    Ok(Tables {
        events: txn.open_table(EVENTS)?,
        delivery: txn.open_table(DELIVERY)?,
        lanes: txn.open_table(LANES)?,
        dlq: Lazy::new(txn, DLQ),
        dlq_ids: Lazy::new(txn, DLQ_IDS),
        dedup: Lazy::new(txn, DEDUP),
        dedup_expiry: Lazy::new(txn, DEDUP_EXPIRY),
        key_holds: Lazy::new(txn, KEY_HOLDS),
        feed: feed_on.then(Recorder::new),
        filed: [false; Lane::COUNT],
    })
}

/// The reply slot of a command that was not applied (its batch failed before reaching it).
fn unapplied(command: Command, pending: &mut Vec<Pending>) {
    match command {
        Command::Append { reply, event, .. } => {
            pending.push(Pending::Append(reply, Ok(Appended::Accepted(event.id()))))
        }
        Command::Settle { reply, .. }
        | Command::Close { reply }
        | Command::SetText { reply, .. }
        | Command::StartFeed { reply }
        | Command::StopFeed { reply }
        | Command::TrimFeed { reply, .. } => pending.push(Pending::Unit(reply)),
        Command::Replay { reply, .. }
        | Command::DeleteDlq { reply, .. }
        | Command::ExpireDlq { reply, .. }
        | Command::ExpireDedup { reply, .. }
        | Command::Release { reply, .. }
        | Command::EndKeyHolds { reply, .. }
        | Command::Forget { reply, .. } => pending.push(Pending::Count(reply, 0)),
        Command::Import { reply, .. } => pending.push(Pending::Seqs(reply, Vec::new())),
        Command::FlushIfDirty | Command::TendSpace => {}
    }
}

fn set_text(txn: &WriteTransaction, name: &str, value: &str) -> Result<()> {
    txn.open_table(META_TEXT)?.insert(name, value)?;
    Ok(())
}

/// The bytes an event brings to the store: its body and kept headers.
fn event_bytes(event: &ValidatedEvent) -> u64 {
    let headers: usize = event.headers().iter().map(|(n, v)| n.len() + v.len()).sum();
    (event.body().len() + headers) as u64
}

/// Writes a new event: routed (its delivery record, and an entry due now in each of its
/// brokers' lanes) or unrouted (an entry in the routing lane). With `hold`, its entries are
/// filed at [`KEY_HELD`] instead, and the hold recorded, until the fleet rules on its key.
fn append(
    t: &mut Tables<'_>,
    seq: u64,
    event: &ValidatedEvent,
    delivery: Option<&Delivery>,
    hold: Option<&IdempotencyKey>,
) -> Result<()> {
    t.events.insert(seq, codec::encode_event(event).as_slice())?;
    let lanes = match delivery {
        Some(delivery) => {
            t.delivery.insert(seq, codec::encode_delivery(delivery).as_slice())?;
            delivery.pending_lanes()
        }
        None => vec![Lane::UNROUTED],
    };
    match hold {
        Some(key) => {
            t.key_holds.open()?.insert(seq, (key.key.as_str(), key.expires_at_ms))?;
            for lane in lanes {
                t.lanes.insert((lane.number(), KEY_HELD, seq), ())?;
            }
        }
        None => {
            let due = event.received_at_ms();
            for lane in lanes {
                t.file(lane, due, seq)?;
            }
        }
    }
    t.touched(FeedKind::Outbox, seq);
    Ok(())
}
