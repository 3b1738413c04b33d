//! Opening the store file: creating it, letting redb repair it after a crash, upgrading an
//! older table layout, and reading back the counters the writer continues from.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable};

use super::{
    DEDUP, DEDUP_EXPIRY, DELIVERY, DLQ, DLQ_IDS, DUE_V1, EVENTS, FORMAT_VERSION, LANES, META,
    META_TEXT, Medium, Result, StoreError, codec,
};
use crate::delivery::Lane;

pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// How the database is opened (the first time and after a failed commit).
#[derive(Clone, Copy)]
pub(super) struct Tuning {
    pub cache_bytes: usize,
    pub quick_repair: bool,
}

/// Opens or creates the file, makes sure every table exists, and upgrades an older layout.
pub(super) fn open_database(medium: &Medium, tuning: Tuning) -> Result<Database> {
    let mut builder = Database::builder();
    builder.set_cache_size(tuning.cache_bytes);
    let (db, path) = match medium {
        Medium::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                    what: format!("cannot create {}", dir.display()),
                    cause: Arc::new(e),
                })?;
            }
            (builder.create(path)?, path.as_path())
        }
        #[cfg(test)]
        Medium::Simulated(disk) => {
            (builder.create_with_backend(disk.backend())?, Path::new("simulated disk"))
        }
    };
    // A file of the current layout needs no write to open: it then opens even on a full disk.
    if is_current(&db)? {
        return Ok(db);
    }
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    txn.set_quick_repair(tuning.quick_repair);
    let version = txn.open_table(META)?.get("format_version")?.map(|v| v.value());
    match version {
        Some(v) if v > FORMAT_VERSION => {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        Some(1) => migrate_v1(&txn)?,
        _ => {}
    }
    txn.open_table(EVENTS)?;
    txn.open_table(DELIVERY)?;
    txn.open_table(LANES)?;
    txn.open_table(DLQ)?;
    txn.open_table(DLQ_IDS)?;
    txn.open_table(DEDUP)?;
    txn.open_table(DEDUP_EXPIRY)?;
    txn.open_table(META_TEXT)?;
    txn.open_table(META)?.insert("format_version", FORMAT_VERSION)?;
    txn.commit()?;
    Ok(db)
}

/// Whether every table exists and the file records this build's format version.
fn is_current(db: &Database) -> Result<bool> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let version = match txn.open_table(META) {
        Ok(meta) => meta.get("format_version")?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if version != Some(FORMAT_VERSION) {
        return Ok(false);
    }
    let tables = [
        txn.open_table(EVENTS).map(drop),
        txn.open_table(DELIVERY).map(drop),
        txn.open_table(LANES).map(drop),
        txn.open_table(DLQ).map(drop),
        txn.open_table(DLQ_IDS).map(drop),
        txn.open_table(DEDUP).map(drop),
        txn.open_table(DEDUP_EXPIRY).map(drop),
        txn.open_table(META_TEXT).map(drop),
    ];
    for table in tables {
        match table {
            Ok(()) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Format 1 had one due index; each entry moves to the lanes its pending destinations use
/// (or the unrouted lane). Runs once, in the transaction that records format 2.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<()> {
    let old: Vec<(u64, u64)> = {
        let due = txn.open_table(DUE_V1)?;
        due.iter()?.map(|e| e.map(|(k, _)| k.value())).collect::<Result<_, _>>()?
    };
    let delivery = txn.open_table(DELIVERY)?;
    let mut lanes = txn.open_table(LANES)?;
    for &(due_ms, seq) in &old {
        let state = delivery.get(seq)?.map(|b| codec::decode_delivery(b.value()));
        let wanted: Vec<Lane> = match state {
            Some(Ok(d)) if !d.destinations.is_empty() => d.pending_lanes(),
            _ => vec![Lane::UNROUTED],
        };
        for lane in wanted {
            lanes.insert((lane.number(), due_ms, seq), ())?;
        }
    }
    drop((delivery, lanes));
    txn.delete_table(DUE_V1)?;
    tracing::info!(entries = old.len(), "store upgraded from format 1 to 2");
    Ok(())
}

/// Counters the writer continues from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counters {
    pub next_seq: u64,
    pub next_dlq_seq: u64,
    /// The change feed is kept ([`super::feed`]), and its next change number.
    pub feed_on: bool,
    pub next_change: u64,
}

pub(super) fn read_counters(db: &Database) -> Result<Counters> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |name: &str| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
    // An entry can only exist if its commit also advanced the counter past it; taking the
    // max guards against a file whose meta row was lost in some other way.
    let after_last_event = txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    let after_last_dlq = txn.open_table(DLQ)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    let next_seq = get("next_seq")?.max(after_last_event);
    let next_dlq_seq = get("next_dlq_seq")?.max(after_last_dlq);
    let (feed_on, next_change) = super::feed::state(&txn)?;
    Ok(Counters { next_seq, next_dlq_seq, feed_on, next_change })
}
