//! The store's own background work, started by [`Store::start_housekeeping`] and ended by
//! [`super::StoreCloser::close`]: the flush tick that makes settles durable when no append
//! comes along, DLQ retention (`dlq.max_entries`, `dlq.max_age`) and the expiry of old
//! idempotency keys, and the disk watch (the reserve file, and free pages given back to the
//! disk when it runs low or in a quiet moment; see `space.rs` and `writer/room.rs`). Each is a task on the daemon's [`Tasks`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use super::writer::Command;
use crate::config::DlqConfig;
use crate::event::now_ms;
use crate::tasks::Tasks;

/// How often earlier non-durable commits are made durable if nothing else did it.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often DLQ retention is applied.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);
/// How often expired idempotency keys are collected, and how many per commit.
const DEDUP_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const DEDUP_EXPIRY_BATCH: usize = 10_000;
/// How often the free disk space is read (the writer also reads it for every batch).
const DISK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the writer is asked to tend the file's free pages: it measures them while the
/// disk is low or in a quiet moment, and compacts when they are worth it (see
/// `writer/room.rs`).
const TEND_INTERVAL: Duration = Duration::from_secs(30);

impl Store {
    /// Starts the flush tick, DLQ retention (if `dlq` sets any) and key expiry on `tasks`;
    /// they run until the store is closed.
    pub fn start_housekeeping(&self, tasks: &Tasks, dlq: &DlqConfig) {
        let stop = self.shared.housekeeping.clone();
        tasks.spawn("store: flush tick", flush_tick(self.clone(), stop.clone()));
        tasks.spawn("store: idempotency key expiry", dedup_expiry(self.clone(), stop.clone()));
        tasks.spawn("store: disk space", disk_watch(self.clone(), stop.clone()));
        let max_entries = dlq.max_entries;
        let max_age = dlq.max_age.map(|d| d.get());
        if max_entries.is_some() || max_age.is_some() {
            let retention = retention(self.clone(), max_entries, max_age, stop);
            tasks.spawn("store: DLQ retention", retention);
        }
    }
}

/// Settle commits skip the fsync; this makes them durable within a second even when no
/// append comes along to carry them, so a crash after a quiet spell republishes little.
async fn flush_tick(store: Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if store.tx.send(Command::FlushIfDirty).await.is_err() {
            return;
        }
    }
}

/// Applies `dlq.max_entries` / `dlq.max_age` now and every [`RETENTION_INTERVAL`].
async fn retention(
    store: Store,
    max_entries: Option<u64>,
    max_age: Option<Duration>,
    stop: CancellationToken,
) {
    loop {
        let older_than = max_age.map(|age| now_ms().saturating_sub(age.as_millis() as u64));
        match store.dlq_expire(max_entries, older_than).await {
            Ok(0) => {}
            Ok(n) => {
                store.shared.metrics.dlq_expired.inc_by(n);
                tracing::info!(expired = n, "DLQ retention removed entries");
            }
            Err(error) => tracing::warn!(%error, "DLQ retention failed; will retry"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
        }
    }
}

/// Removes idempotency keys older than `store.dedup_window`, in bounded commits.
async fn dedup_expiry(store: Store, stop: CancellationToken) {
    loop {
        loop {
            match store.dedup_expire(now_ms(), DEDUP_EXPIRY_BATCH).await {
                Ok(n) => {
                    store.shared.metrics.dedup_expired.inc_by(n);
                    if n < DEDUP_EXPIRY_BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "expiring idempotency keys failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DEDUP_EXPIRY_INTERVAL) => {}
        }
    }
}

/// Keeps the disk reserve (given up when the disk is well under the floor, put back when
/// there is room), and asks the writer to tend the free pages inside the file: at once when
/// the disk turns low, then every [`TEND_INTERVAL`].
async fn disk_watch(store: Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DISK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut last_tend: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let space = std::sync::Arc::clone(&store.shared.space);
        // Writing the reserve back is file I/O: off the async workers.
        let low = tokio::task::spawn_blocking(move || {
            space.keep_room();
            space.is_low()
        })
        .await
        .unwrap_or(false);
        let due = last_tend.is_none_or(|t| t.elapsed() >= TEND_INTERVAL);
        let idle_due = last_tend.unwrap_or(started).elapsed() >= TEND_INTERVAL;
        if (low && due) || idle_due {
            last_tend = Some(tokio::time::Instant::now());
            if store.tx.send(Command::TendSpace).await.is_err() {
                return;
            }
        }
    }
}
