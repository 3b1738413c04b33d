//! Giving disk space back. redb shrinks the file only when its tail is free, so a delivered
//! backlog can leave a file mostly made of free pages. The writer measures them and
//! compacts the file, which returns them to the filesystem:
//! - when the disk runs low (so that ingest can resume), at most once a minute;
//! - in a quiet moment: nothing appended or settled for [`QUIET_FOR`] (so neither ingest nor
//!   a draining relay is held up), the file at least twice what it holds (and
//!   [`IDLE_MIN_FREE`] over) and holding at most [`IDLE_MAX_IN_USE`], at most once per
//!   [`IDLE_INTERVAL`].
//!
//! Measuring walks the file's trees and compaction holds the database alone (requests that
//! arrive meanwhile wait for it), so neither runs while events are coming in, unless the
//! disk is low.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Writer;
use crate::store::open::file_len;
use crate::store::space::on_disk_bytes;

/// Least time between two compactions for a low disk.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// How long a compaction waits for readers to finish with the database.
const READERS_GRACE: Duration = Duration::from_secs(5);
/// No traffic (appends, settles) for this long makes a quiet moment (short in unit tests).
const QUIET_FOR: Duration =
    if cfg!(test) { Duration::from_millis(200) } else { Duration::from_secs(30) };
/// Free pages worth a compaction in a quiet moment (compacting a few MiB takes milliseconds).
const IDLE_MIN_FREE: u64 = 4 << 20;
/// A quiet-moment compaction moves what the file holds: only when that is little (a drained
/// backlog), so it stays short; a file still holding a large backlog waits for its drain.
const IDLE_MAX_IN_USE: u64 = 64 << 20;
/// Least time between two compactions in quiet moments.
const IDLE_INTERVAL: Duration = Duration::from_secs(600);

impl Writer {
    pub(super) fn tend_space(&mut self) {
        let space = Arc::clone(&self.shared.space);
        let low = space.is_low();
        let quiet = self.last_traffic.is_none_or(|t| t.elapsed() >= QUIET_FOR);
        if !low && !quiet {
            return;
        }
        let Some((free, in_use)) = self.measure_free_pages() else { return };
        space.set_in_file_free(free);
        let since = |last: Option<Instant>, interval| last.is_none_or(|t| t.elapsed() >= interval);
        if low {
            let worth_it = free >= space.floor().max(1 << 20);
            if worth_it && since(self.last_compaction, COMPACTION_INTERVAL) {
                self.last_compaction = Some(Instant::now());
                self.compact(free, "to give free space back to a low disk");
            }
        } else if free >= IDLE_MIN_FREE.max(in_use)
            && in_use <= IDLE_MAX_IN_USE
            && since(self.last_idle_compaction, IDLE_INTERVAL)
        {
            self.last_idle_compaction = Some(Instant::now());
            self.compact(free, "in a quiet moment: most of the file was free pages");
        }
    }

    /// Free pages inside the file that occupy disk blocks, and the bytes in use, in bytes.
    fn measure_free_pages(&mut self) -> Option<(u64, u64)> {
        let db = self.db.as_ref()?;
        let stats = db.begin_write().ok().and_then(|txn| {
            let stats = txn.stats().ok();
            let _ = txn.abort();
            stats
        })?;
        let in_use = stats.allocated_pages() * stats.page_size() as u64;
        Some((on_disk_bytes(&self.shared.path).saturating_sub(in_use), in_use))
    }

    /// Compacts the file. The database is taken from the readers for the duration (they see
    /// the store as reopening and retry); a failure is handled like a failed commit.
    fn compact(&mut self, free: u64, why: &str) {
        let Some(mut db) = self.db.take() else { return };
        self.shared.db.store(None);
        let waiting = Instant::now();
        while Arc::strong_count(&db) > 1 && waiting.elapsed() < READERS_GRACE {
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = file_len(&self.shared.path);
        let started = Instant::now();
        let outcome = Arc::get_mut(&mut db).map(|db| db.compact());
        let after = file_len(&self.shared.path);
        self.shared.db.store(Some(Arc::clone(&db)));
        self.db = Some(db);
        self.shared.file_bytes.store(after, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            None => tracing::warn!("compaction skipped: readers held the store too long"),
            Some(Ok(_)) => {
                self.shared.space.set_in_file_free(0);
                self.shared.space.refresh();
                self.shared.metrics.store_compactions.inc();
                tracing::info!(
                    free_pages_bytes = free,
                    file_bytes_before = before,
                    file_bytes_after = after,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store compacted {why}"
                );
            }
            Some(Err(error)) => {
                tracing::error!(%error, "store compaction failed; reopening the store");
                self.fail();
            }
        }
    }
}
