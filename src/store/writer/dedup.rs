//! The writer's idempotency keys: the first use of a key wins within its window, and expired
//! keys are collected in bounded batches.

use redb::ReadableTable;

use super::Tables;
use crate::event::{EventId, ValidatedEvent};
use crate::store::{IdempotencyKey, Result};

/// With a key: the id of the event that used it first if it is still live; otherwise records
/// the key for `event` (replacing an expired use) and returns `None`.
pub(super) fn first_use(
    t: &mut Tables<'_>,
    event: &ValidatedEvent,
    key: Option<&IdempotencyKey>,
) -> Result<Option<EventId>> {
    let Some(key) = key else { return Ok(None) };
    let source = event.source().as_str();
    let now = crate::event::now_ms();
    let existing = t.dedup.open()?.get((source, key.key.as_str()))?.map(|v| v.value());
    if let Some((first, expires_at)) = existing {
        if expires_at > now {
            return Ok(Some(EventId::from_u128(first)));
        }
        t.dedup_expiry.open()?.remove((expires_at, source, key.key.as_str()))?;
    }
    t.dedup
        .open()?
        .insert((source, key.key.as_str()), (event.id().as_u128(), key.expires_at_ms))?;
    t.dedup_expiry.open()?.insert((key.expires_at_ms, source, key.key.as_str()), ())?;
    Ok(None)
}

/// Removes up to `limit` keys that expired before `now_ms`, oldest first.
pub(super) fn expire_dedup(t: &mut Tables<'_>, now_ms: u64, limit: usize) -> Result<u64> {
    let mut doomed: Vec<(u64, String, String)> = Vec::new();
    for entry in t.dedup_expiry.open()?.range(..(now_ms, "", ""))?.take(limit) {
        let (k, _) = entry?;
        let (at, source, key) = k.value();
        doomed.push((at, source.to_owned(), key.to_owned()));
    }
    for (at, source, key) in &doomed {
        t.dedup_expiry.open()?.remove((*at, source.as_str(), key.as_str()))?;
        // A key re-used after it expired points at its new expiry: leave that one alone.
        let current = t.dedup.open()?.get((source.as_str(), key.as_str()))?.map(|v| v.value().1);
        if current == Some(*at) {
            t.dedup.open()?.remove((source.as_str(), key.as_str()))?;
        }
    }
    Ok(doomed.len() as u64)
}
