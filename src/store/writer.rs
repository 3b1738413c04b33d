//! The writer thread: every write to redb happens here, in group commits.
//!
//! The loop blocks for one command, then takes everything else already queued (up to the batch
//! cap) and applies it all in one write transaction. The commit is durable (fsync, two-phase)
//! when the batch holds an append; settle-only batches skip the fsync, and a tick makes them
//! durable within a second. No timer delays a commit: while one commit runs, the next batch
//! fills by itself.
//!
//! A failed commit answers every request of its batch with an error, marks the store
//! unhealthy, drops the database and reopens it; it never retries an fsync and then acks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{Database, Durability, StorageError, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    DELIVERY, DUE, EVENTS, META, Result, Settlement, Shared, StoreError, file_len, open_database,
    record,
};
use crate::event::{EventId, ValidatedEvent};

pub(super) enum Command {
    Append {
        event: ValidatedEvent,
        reply: oneshot::Sender<Result<EventId>>,
    },
    Settle {
        settlements: Vec<Settlement>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Make earlier non-durable commits durable, if there are any.
    FlushIfDirty,
    /// Final durable commit, then the thread ends.
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// How long the writer waits between attempts to reopen a failed database.
const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

pub(super) struct Writer {
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    db: Option<Arc<Database>>,
    cache_bytes: usize,
    max_bytes: u64,
    batch_max: usize,
    next_seq: u64,
    /// A non-durable commit happened since the last durable one.
    dirty: bool,
    last_reopen_attempt: Option<Instant>,
}

/// The outcome of applying one command inside the transaction, sent after the commit.
enum Pending {
    Append(oneshot::Sender<Result<EventId>>, Result<EventId>),
    Settle(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<()>),
}

impl Writer {
    pub(super) fn new(
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        cache_bytes: usize,
        max_bytes: u64,
        batch_max: usize,
        next_seq: u64,
    ) -> Self {
        let db = shared.db.load_full();
        Self {
            rx,
            shared,
            db,
            cache_bytes,
            max_bytes,
            batch_max,
            next_seq,
            dirty: false,
            last_reopen_attempt: None,
        }
    }

    pub(super) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            let mut appends = usize::from(matches!(batch[0], Command::Append { .. }));
            while appends < self.batch_max {
                match self.rx.try_recv() {
                    Ok(command) => {
                        appends += usize::from(matches!(command, Command::Append { .. }));
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
        let Some(db) = self.usable_db() else {
            let error = StoreError::Unavailable("reopening after a failed commit".into());
            for command in batch {
                answer_error(command, &error);
            }
            return;
        };
        let needs_fsync =
            batch.iter().any(|c| matches!(c, Command::Append { .. } | Command::Close { .. }))
                || (self.dirty && batch.iter().any(|c| matches!(c, Command::FlushIfDirty)));
        let only_idle_ticks = batch.iter().all(|c| matches!(c, Command::FlushIfDirty));
        if only_idle_ticks && !self.dirty {
            return;
        }
        match self.commit(&db, batch, needs_fsync) {
            Ok(pending) => {
                self.dirty = !needs_fsync;
                self.shared.file_bytes.store(file_len(&self.shared.path), Ordering::Relaxed);
                if needs_fsync {
                    self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
                }
                let mut appended = 0;
                for p in pending {
                    match p {
                        Pending::Append(reply, result) => {
                            appended += u64::from(result.is_ok());
                            let _ = reply.send(result);
                        }
                        Pending::Settle(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Pending::Close(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
                if appended > 0 {
                    self.shared.appended_events.fetch_add(appended, Ordering::Relaxed);
                    self.shared.appended.notify_one();
                }
            }
            Err((error, pending)) => {
                tracing::error!(%error, "store commit failed; answering the batch with 503 and reopening");
                for p in pending {
                    match p {
                        Pending::Append(reply, _) => {
                            let _ = reply.send(Err(error.clone()));
                        }
                        Pending::Settle(reply) => {
                            let _ = reply.send(Err(error.clone()));
                        }
                        Pending::Close(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
                self.fail();
            }
        }
    }

    /// Applies the batch in one transaction and commits it. On error the transaction is
    /// dropped (aborted) and the caller learns which requests to fail.
    fn commit(
        &mut self,
        db: &Database,
        batch: Vec<Command>,
        durable: bool,
    ) -> std::result::Result<Vec<Pending>, (StoreError, Vec<Pending>)> {
        let mut pending = Vec::with_capacity(batch.len());
        let seq_before = self.next_seq;
        let outcome = (|| -> Result<WriteTransaction> {
            let mut txn = db.begin_write()?;
            txn.set_two_phase_commit(true);
            let durability = if durable { Durability::Immediate } else { Durability::None };
            txn.set_durability(durability).map_err(|e| StoreError::Db(e.to_string()))?;
            self.apply(&txn, batch, &mut pending)?;
            Ok(txn)
        })()
        .and_then(|txn| Ok(txn.commit()?));
        match outcome {
            Ok(()) => Ok(pending),
            Err(error) => {
                self.next_seq = seq_before;
                let error = match error {
                    StoreError::Db(msg) => StoreError::Commit(msg),
                    other => other,
                };
                Err((error, pending))
            }
        }
    }

    fn apply(
        &mut self,
        txn: &WriteTransaction,
        batch: Vec<Command>,
        pending: &mut Vec<Pending>,
    ) -> Result<()> {
        let mut events = txn.open_table(EVENTS)?;
        let mut due = txn.open_table(DUE)?;
        let mut delivery = txn.open_table(DELIVERY)?;
        let over_quota = self.shared.file_bytes.load(Ordering::Relaxed) > self.max_bytes;
        let mut failure = None;
        for command in batch {
            // Each reply is recorded before the fallible writes, so that after an error every
            // request of the batch is still answered (with that error).
            match command {
                Command::Append { event, reply } if failure.is_none() => {
                    if over_quota {
                        pending.push(Pending::Append(reply, Err(StoreError::QuotaExceeded)));
                        continue;
                    }
                    let seq = self.next_seq;
                    pending.push(Pending::Append(reply, Ok(event.id())));
                    self.next_seq += 1;
                    failure = apply_append(&mut events, &mut due, seq, &event)
                        .err()
                        .map(StoreError::from);
                }
                Command::Settle { settlements, reply } if failure.is_none() => {
                    pending.push(Pending::Settle(reply));
                    for s in settlements {
                        if let Err(e) = apply_settlement(&mut events, &mut due, &mut delivery, s) {
                            failure = Some(StoreError::from(e));
                            break;
                        }
                    }
                }
                Command::Append { reply, .. } => {
                    pending.push(Pending::Append(reply, Err(StoreError::Commit(String::new()))));
                }
                Command::Settle { reply, .. } => pending.push(Pending::Settle(reply)),
                Command::FlushIfDirty => {}
                Command::Close { reply } => pending.push(Pending::Close(reply)),
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        txn.open_table(META)?.insert("next_seq", self.next_seq)?;
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
        match open_database(&self.shared.path, self.cache_bytes) {
            Ok(db) => {
                let db = Arc::new(db);
                match super::read_next_seq(&db) {
                    Ok(next) => self.next_seq = self.next_seq.max(next),
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

type Events<'t> = Table<'t, u64, &'static [u8]>;
type Due<'t> = Table<'t, (u64, u64), ()>;

fn apply_append(
    events: &mut Events<'_>,
    due: &mut Due<'_>,
    seq: u64,
    event: &ValidatedEvent,
) -> std::result::Result<(), StorageError> {
    events.insert(seq, record::encode_event(event).as_slice())?;
    due.insert((event.received_at_ms(), seq), ())?;
    Ok(())
}

fn apply_settlement(
    events: &mut Events<'_>,
    due: &mut Due<'_>,
    delivery: &mut Events<'_>,
    settlement: Settlement,
) -> std::result::Result<(), StorageError> {
    match settlement {
        Settlement::Delete { seq, due_ms } => {
            due.remove((due_ms, seq))?;
            events.remove(seq)?;
            delivery.remove(seq)?;
        }
        Settlement::Reschedule { seq, due_ms, delivery: state, next_due_ms } => {
            due.remove((due_ms, seq))?;
            due.insert((next_due_ms, seq), ())?;
            delivery.insert(seq, record::encode_delivery(&state).as_slice())?;
        }
        Settlement::Defer { seq, due_ms, next_due_ms } => {
            due.remove((due_ms, seq))?;
            due.insert((next_due_ms, seq), ())?;
        }
        Settlement::DropIndex { seq, due_ms } => {
            due.remove((due_ms, seq))?;
        }
    }
    Ok(())
}

fn answer_error(command: Command, error: &StoreError) {
    match command {
        Command::Append { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Command::Settle { reply, .. } => {
            let _ = reply.send(Err(error.clone()));
        }
        Command::FlushIfDirty => {}
        Command::Close { reply } => {
            let _ = reply.send(());
        }
    }
}
