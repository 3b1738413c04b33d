//! Disk space: the floor under which appends are refused, and a reserve file that keeps room
//! for the relay to drain and for redb to reopen when the disk fills anyway.
//!
//! A commit that meets a full disk fails, and after a failed commit redb must reopen (and
//! repair) the file, which itself needs room: on a full disk the store could neither take
//! events nor let the relay delete the ones it delivered. So:
//!
//! - an append is admitted only while the filesystem keeps `store.min_free_bytes` free after
//!   it (the batch's size, estimated generously, counted); ingest answers 503 otherwise;
//! - settles, DLQ moves and reopening are not held to the floor: they use the room it leaves;
//! - next to the store file lies a reserve file of `store.reserve_bytes`. When the disk falls
//!   well under the floor anyway (another process filled it, or a commit or an open failed),
//!   it is deleted, which gives the relay and redb's repair their room back; it is written
//!   again once the space has come back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::StoreConfig;

/// What an append costs on disk at most, beyond its bytes times [`GROWTH_FACTOR`]: record
/// framing, index entries, a share of the B-tree pages copied on write.
const PER_EVENT_OVERHEAD: u64 = 512;
/// Bytes written per byte appended, at most: the value lands in a leaf page, and the leaves
/// and branches it touches are copied on write.
const GROWTH_FACTOR: u64 = 2;
/// What a commit writes besides its records: branch pages, allocator state, the header.
const PER_COMMIT_OVERHEAD: u64 = 256 * 1024;
/// The floor when the config sets none: this share of the filesystem, at most [`FLOOR_CAP`].
const FLOOR_PERCENT: u64 = 2;
const FLOOR_CAP: u64 = 64 * 1024 * 1024;
/// The reserve when the config sets none: the floor, at most this.
const RESERVE_CAP: u64 = 16 * 1024 * 1024;

/// The store's view of its filesystem; shared by the writer and the housekeeping.
pub(super) struct Space {
    /// The directory holding the store file (what `statvfs` asks about).
    dir: PathBuf,
    reserve_path: PathBuf,
    floor: u64,
    reserve_bytes: u64,
    /// The filesystem's available bytes at the last reading.
    available: AtomicU64,
    /// Appends are being refused for space (since the last admitted one).
    refusing: AtomicBool,
    /// Free pages inside the store file that already occupy disk blocks, as last measured
    /// (see `Writer::measure_space`): written again without taking more of the disk.
    in_file_free: AtomicU64,
    /// Checks are off (the simulated disk of the power-loss tests has no filesystem).
    unlimited: bool,
}

impl Space {
    /// Space checks for the store file at `config.path`, with the floor and the reserve its
    /// config sets (or their defaults, from the filesystem's size).
    pub fn new(config: &StoreConfig) -> Space {
        let dir = match config.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let total = fs4::total_space(&dir).unwrap_or(0);
        let floor = config
            .min_free_bytes
            .map(|b| b.as_u64())
            .unwrap_or_else(|| (total / 100 * FLOOR_PERCENT).min(FLOOR_CAP));
        let reserve_bytes =
            config.reserve_bytes.map(|b| b.as_u64()).unwrap_or(floor.min(RESERVE_CAP));
        let mut reserve_path = config.path.clone().into_os_string();
        reserve_path.push(".reserve");
        let space = Space {
            dir,
            reserve_path: reserve_path.into(),
            floor,
            reserve_bytes,
            available: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            in_file_free: AtomicU64::new(0),
            unlimited: false,
        };
        space.refresh();
        space
    }

    /// No checks and no reserve: for a store that is not on a filesystem.
    #[cfg(test)]
    pub fn unlimited() -> Space {
        Space {
            dir: PathBuf::new(),
            reserve_path: PathBuf::new(),
            floor: 0,
            reserve_bytes: 0,
            available: AtomicU64::new(u64::MAX),
            refusing: AtomicBool::new(false),
            in_file_free: AtomicU64::new(0),
            unlimited: true,
        }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Reads the filesystem's available bytes now (one `statvfs`). A failed reading keeps the
    /// last one: it is logged, and the commit that follows reports the real trouble.
    pub fn refresh(&self) -> u64 {
        if self.unlimited {
            return u64::MAX;
        }
        match fs4::available_space(&self.dir) {
            Ok(available) => {
                self.available.store(available, Ordering::Relaxed);
                available
            }
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the free disk space");
                self.available.load(Ordering::Relaxed)
            }
        }
    }

    /// The available bytes at the last reading.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    /// What appending `bytes` of events in one commit may take from the disk, at most.
    pub fn estimate(events: u64, bytes: u64) -> u64 {
        (bytes + events * PER_EVENT_OVERHEAD) * GROWTH_FACTOR
    }

    /// Whether a commit that writes `estimate` more bytes (the first of its batch pays the
    /// commit's own overhead) leaves the floor free, given `available`.
    pub fn admits(&self, available: u64, estimate: u64) -> bool {
        self.unlimited
            || available.saturating_sub(PER_COMMIT_OVERHEAD) >= self.floor.saturating_add(estimate)
    }

    /// Records whether the last batch had to refuse appends for space.
    pub fn set_refusing(&self, refusing: bool) {
        if self.refusing.swap(refusing, Ordering::Relaxed) != refusing {
            if refusing {
                tracing::warn!(
                    available = self.available(),
                    floor = self.floor,
                    "the disk is nearly full: refusing new events (503) until space returns"
                );
            } else {
                tracing::info!(
                    available = self.available(),
                    "disk space is back: accepting events"
                );
            }
        }
    }

    /// Whether appends are being refused for space: what `/ready` reports.
    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// The disk is under the floor, or appends are being refused for space: free pages in
    /// the file are worth measuring (appends reuse them) and giving back to the disk. (An
    /// append is refused a little above the floor, its own estimate counted: refusing must
    /// count as low, or a disk in that band never gets its free pages measured.)
    pub fn is_low(&self) -> bool {
        !self.unlimited
            && (self.is_refusing()
                || self.available() < self.floor.saturating_add(PER_COMMIT_OVERHEAD))
    }

    pub fn set_in_file_free(&self, bytes: u64) {
        self.in_file_free.store(bytes, Ordering::Relaxed);
    }

    /// What the store can still write before appends are refused: the filesystem's space
    /// above the floor, plus free pages inside the file (as last measured).
    pub fn headroom(&self) -> u64 {
        if self.unlimited {
            return u64::MAX;
        }
        self.available().saturating_sub(self.floor).saturating_add(self.in_file_free())
    }

    pub fn in_file_free(&self) -> u64 {
        self.in_file_free.load(Ordering::Relaxed)
    }

    /// Gives the reserve up when the disk is well under the floor (something else filled it,
    /// or a commit failed), otherwise puts it back when there is room. Blocking (it may write
    /// the reserve file): call it off the async workers.
    pub fn keep_room(&self) {
        if self.refresh() < self.floor / 2 {
            self.release_reserve("the disk is under half the floor");
        } else {
            self.restore_reserve();
        }
    }

    /// Whether a reserve file is in place, and its size.
    pub fn reserve_in_place(&self) -> u64 {
        if !self.unlimited && self.reserve_path.exists() { self.reserve_bytes } else { 0 }
    }

    /// Deletes the reserve file, if there is one, so that settles and a reopen find room.
    /// Returns whether there was one.
    pub fn release_reserve(&self, why: &str) -> bool {
        if self.unlimited {
            return false;
        }
        match std::fs::remove_file(&self.reserve_path) {
            Ok(()) => {
                tracing::warn!(
                    file = %self.reserve_path.display(),
                    bytes = self.reserve_bytes,
                    why,
                    "released the disk reserve so the outbox can drain"
                );
                self.refresh();
                true
            }
            Err(_) => false,
        }
    }

    /// Writes the reserve file again once the disk has room for it and the floor, twice over.
    pub fn restore_reserve(&self) {
        if self.unlimited || self.reserve_bytes == 0 || self.reserve_path.exists() {
            return;
        }
        let needed = self.floor.saturating_add(self.reserve_bytes).saturating_mul(2);
        if self.refresh() < needed {
            return;
        }
        match write_reserve(&self.reserve_path, self.reserve_bytes) {
            Ok(()) => tracing::info!(
                file = %self.reserve_path.display(),
                bytes = self.reserve_bytes,
                "disk reserve in place"
            ),
            Err(error) => {
                tracing::warn!(file = %self.reserve_path.display(), %error, "cannot write the disk reserve");
            }
        }
        self.refresh();
    }
}

/// The appends of one batch, admitted while the floor stays free after them.
pub(super) struct Admission<'a> {
    space: &'a Space,
    available: u64,
    admitted: u64,
    refused: bool,
}

impl<'a> Admission<'a> {
    /// Reads the free space once for the whole batch.
    pub fn begin(space: &'a Space) -> Self {
        Self { space, available: space.refresh(), admitted: 0, refused: false }
    }

    /// Whether an event of `bytes` fits after the ones admitted so far. Once one is refused,
    /// the rest of the batch is too, so that a smaller one does not jump the queue.
    pub fn admit(&mut self, bytes: u64) -> bool {
        let with = self.admitted.saturating_add(Space::estimate(1, bytes));
        if self.refused || !self.space.admits(self.available, with) {
            self.refused = true;
            return false;
        }
        self.admitted = with;
        true
    }

    pub fn refusal(&self) -> super::StoreError {
        super::StoreError::DiskFull { available: self.available, floor: self.space.floor }
    }

    /// Records the outcome for `/ready` and the logs.
    pub fn finish(self) {
        self.space.set_refusing(self.refused);
    }
}

/// Writes `bytes` of zeros (real blocks, not a sparse file) and makes them durable; leaves
/// nothing behind on failure.
fn write_reserve(path: &Path, bytes: u64) -> std::io::Result<()> {
    let partial = path.with_extension("reserve.partial");
    let written = (|| {
        let mut file = File::create(&partial)?;
        let chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Bytes of the store file that occupy disk blocks (a sparse tail, grown but never written,
/// does not).
pub(super) fn on_disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}
