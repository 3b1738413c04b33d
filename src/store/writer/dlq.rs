//! The writer's dead-letter operations: filing a destination given up on, replaying entries
//! back to the outbox, deleting them, and retention.

use redb::{ReadableTable, ReadableTableMetadata};

use super::{Tables, Writer};
use crate::delivery::{DlqRecord, Lane};
use crate::store::codec;
use crate::store::feed::FeedKind;
use crate::store::{DlqSelector, Result, StoreError};

impl Writer {
    /// Adds to the event's DLQ entry if it has one (another destination failed earlier),
    /// otherwise creates it.
    pub(super) fn dead_letter(&mut self, t: &mut Tables<'_>, mut dead: DlqRecord) -> Result<()> {
        let id = dead.event.id().as_u128();
        let existing = t.dlq_ids.open()?.get(id)?.map(|v| v.value());
        let dlq_seq = match existing {
            Some(dlq_seq) => {
                let earlier = t.dlq.open()?.get(dlq_seq)?.map(|b| codec::decode_dlq(b.value()));
                if let Some(Ok(mut earlier)) = earlier {
                    earlier.destinations.append(&mut dead.destinations);
                    dead = earlier;
                }
                dlq_seq
            }
            None => {
                let dlq_seq = self.counters.next_dlq_seq;
                self.counters.next_dlq_seq += 1;
                t.dlq_ids.open()?.insert(id, dlq_seq)?;
                dlq_seq
            }
        };
        t.dlq.open()?.insert(dlq_seq, codec::encode_dlq(&dead).as_slice())?;
        t.touched(FeedKind::Dlq, dlq_seq);
        Ok(())
    }

    /// Back to the outbox, under a new seq and the same event id, pending only for the
    /// destinations that had failed (a `no_route` entry is routed afresh).
    pub(super) fn replay(
        &mut self,
        t: &mut Tables<'_>,
        selector: &DlqSelector,
        now_ms: u64,
    ) -> Result<u64> {
        let chosen = select(t, selector)?;
        let n = chosen.len() as u64;
        for (dlq_seq, record) in chosen {
            let seq = self.next_seq();
            t.events.insert(seq, codec::encode_event(&record.event).as_slice())?;
            match record.replay_delivery() {
                None => t.file(Lane::UNROUTED, now_ms, seq)?,
                Some(delivery) => {
                    for lane in delivery.pending_lanes() {
                        t.file(lane, now_ms, seq)?;
                    }
                    t.delivery.insert(seq, codec::encode_delivery(&delivery).as_slice())?;
                }
            }
            t.touched(FeedKind::Outbox, seq);
            remove_dlq(t, dlq_seq, &record)?;
        }
        Ok(n)
    }
}

pub(super) fn select(t: &mut Tables<'_>, selector: &DlqSelector) -> Result<Vec<(u64, DlqRecord)>> {
    let decode = |dlq_seq: u64, bytes: &[u8]| {
        codec::decode_dlq(bytes).map_err(|source| StoreError::Corrupt { seq: dlq_seq, source })
    };
    match selector {
        DlqSelector::Id(id) => {
            let Some(dlq_seq) = t.dlq_ids.open()?.get(id.as_u128())?.map(|v| v.value()) else {
                return Ok(Vec::new());
            };
            let Some(bytes) = t.dlq.open()?.get(dlq_seq)? else { return Ok(Vec::new()) };
            Ok(vec![(dlq_seq, decode(dlq_seq, bytes.value())?)])
        }
        DlqSelector::Matching(filter) => {
            let mut chosen = Vec::new();
            for entry in t.dlq.open()?.iter()? {
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

pub(super) fn remove_dlq(t: &mut Tables<'_>, dlq_seq: u64, record: &DlqRecord) -> Result<()> {
    t.dlq.open()?.remove(dlq_seq)?;
    t.dlq_ids.open()?.remove(record.event.id().as_u128())?;
    t.touched(FeedKind::Dlq, dlq_seq);
    Ok(())
}

/// Oldest first: drop entries beyond `max_entries` and those older than `older_than_ms`.
pub(super) fn expire(
    t: &mut Tables<'_>,
    max_entries: Option<u64>,
    older_than_ms: Option<u64>,
) -> Result<u64> {
    let total = t.dlq.open()?.len()?;
    let mut doomed = Vec::new();
    for entry in t.dlq.open()?.iter()? {
        let (key, value) = entry?;
        let record = codec::decode_dlq(value.value())
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
