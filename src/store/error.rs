//! What can go wrong in the store. Errors are `Clone` because one failed commit answers every
//! request of its batch; the redb and I/O errors are kept (behind an `Arc`) so that callers
//! can tell a full disk from a broken one.

use std::path::PathBuf;
use std::sync::Arc;

use super::codec::DecodeError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store is over its size quota")]
    QuotaExceeded,
    /// Appending would leave less than `store.min_free_bytes` free on the store's filesystem.
    #[error("the disk is nearly full: {available} bytes available, {floor} kept free")]
    DiskFull { available: u64, floor: u64 },
    #[error("store is reopening after a failed commit")]
    Reopening,
    #[error("store is shut down")]
    Closed,
    #[error("{what}: {cause}")]
    Io { what: String, cause: Arc<std::io::Error> },
    #[error("{} has store format {found}; this build reads up to {supported}", .path.display())]
    TooNew { path: PathBuf, found: u64, supported: u64 },
    #[error("cannot open {} read-only ({cause}); is the daemon still running?", .path.display())]
    ReadOnly { path: PathBuf, cause: Arc<redb::DatabaseError> },
    #[error("cannot open {} to compact it ({cause}); stop the daemon first", .path.display())]
    Exclusive { path: PathBuf, cause: Arc<redb::DatabaseError> },
    #[error("compaction failed: {0}")]
    Compaction(Arc<redb::CompactionError>),
    #[error("commit failed: {0}")]
    Commit(Arc<redb::CommitError>),
    #[error("store error: {0}")]
    Db(Arc<redb::Error>),
    #[error("record {seq}: {source}")]
    Corrupt { seq: u64, source: DecodeError },
    /// A store task or thread could not run (it panicked, or the runtime is shutting down).
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Arc::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        StoreError::Commit(Arc::new(e))
    }
}
