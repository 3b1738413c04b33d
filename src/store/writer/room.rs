//! Giving disk space back: when the disk runs low, the writer measures the free pages inside
//! the store file, and when there are many (a backlog was delivered, the file did not shrink
//! by itself) compacts the file, which returns them to the filesystem so that ingest can
//! resume. Measuring walks the file's trees and compaction holds the database alone, so both
//! run only while the disk is low, and a compaction at most once a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Writer;
use crate::store::open::file_len;
use crate::store::space::on_disk_bytes;

/// Least time between two compactions.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// How long a compaction waits for readers to finish with the database.
const READERS_GRACE: Duration = Duration::from_secs(5);

impl Writer {
    pub(super) fn tend_space(&mut self) {
        let space = Arc::clone(&self.shared.space);
        let Some(free) = self.measure_free_pages() else { return };
        space.set_in_file_free(free);
        let worth_it = free >= space.floor().max(1 << 20);
        let due = self.last_compaction.is_none_or(|t| t.elapsed() >= COMPACTION_INTERVAL);
        if space.is_low() && worth_it && due {
            self.last_compaction = Some(Instant::now());
            self.compact(free);
        }
    }

    /// Free pages inside the file that occupy disk blocks, in bytes.
    fn measure_free_pages(&mut self) -> Option<u64> {
        let db = self.db.as_ref()?;
        let stats = db.begin_write().ok().and_then(|txn| {
            let stats = txn.stats().ok();
            let _ = txn.abort();
            stats
        })?;
        let in_use = stats.allocated_pages() * stats.page_size() as u64;
        Some(on_disk_bytes(&self.shared.path).saturating_sub(in_use))
    }

    /// Compacts the file. The database is taken from the readers for the duration (they see
    /// the store as reopening and retry); a failure is handled like a failed commit.
    fn compact(&mut self, free: u64) {
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
                    "store compacted to give free space back to the disk"
                );
            }
            Some(Err(error)) => {
                tracing::error!(%error, "store compaction failed; reopening the store");
                self.fail();
            }
        }
    }
}
