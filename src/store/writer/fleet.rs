//! The writer's fleet operations: importing events taken over from a dead peer (held until
//! the takeover is final in PostgreSQL), releasing them to the relay, and forgetting events
//! a peer has taken over from this instance.

use std::collections::HashSet;

use redb::ReadableTable;

use super::{Tables, Writer};
use crate::delivery::{Delivery, Lane};
use crate::event::{EventId, ValidatedEvent};
use crate::store::feed::FeedKind;
use crate::store::{HELD, KEY_HELD, Result, codec};

impl Writer {
    /// Adds the events to the outbox under new seqs, with their delivery state, due at
    /// [`HELD`] in the lane of each destination still pending (lane 0 if not routed yet).
    pub(super) fn import(
        &mut self,
        t: &mut Tables<'_>,
        entries: Vec<(ValidatedEvent, Option<Delivery>)>,
    ) -> Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(entries.len());
        for (event, delivery) in entries {
            let seq = self.next_seq();
            t.events.insert(seq, codec::encode_event(&event).as_slice())?;
            let lanes = match &delivery {
                Some(d) => {
                    t.delivery.insert(seq, codec::encode_delivery(d).as_slice())?;
                    d.pending_lanes()
                }
                None => vec![Lane::UNROUTED],
            };
            for lane in lanes {
                t.lanes.insert((lane.number(), HELD, seq), ())?;
            }
            t.touched(FeedKind::Outbox, seq);
            seqs.push(seq);
        }
        Ok(seqs)
    }
}

/// Removes the events (taken over by a peer, or duplicates of an event elsewhere in the
/// fleet) without publishing them, with their due entries and key holds. Returns how many
/// were in the outbox.
pub(super) fn forget(t: &mut Tables<'_>, seqs: &[u64]) -> Result<u64> {
    let doomed: HashSet<u64> = seqs.iter().copied().collect();
    let mut forgotten = 0;
    for &seq in &doomed {
        if t.events.remove(seq)?.is_some() {
            forgotten += 1;
        }
        t.delivery.remove(seq)?;
        t.key_holds.open()?.remove(seq)?;
        t.touched(FeedKind::Outbox, seq);
    }
    // The due index is keyed by time: one walk over it finds the entries of these events.
    let mut keys = Vec::new();
    for entry in t.lanes.iter()? {
        let key = entry?.0.value();
        if doomed.contains(&key.2) {
            keys.push(key);
        }
    }
    for key in keys {
        t.lanes.remove(key)?;
    }
    Ok(forgotten)
}

/// Makes held events due now.
pub(super) fn release(t: &mut Tables<'_>, seqs: &[u64], now_ms: u64) -> Result<u64> {
    release_from(t, HELD, seqs, now_ms)
}

/// Ends key holds: `release` become due now; `duplicates` are removed unpublished, their
/// entries taken from where the hold filed them (no walk over the due index), and the local
/// dedup row of their key names the event that holds it in the fleet. Returns how many events
/// were released or removed.
pub(super) fn end_key_holds(
    t: &mut Tables<'_>,
    release: &[u64],
    duplicates: &[(u64, EventId)],
    now_ms: u64,
) -> Result<u64> {
    let holds = t.key_holds.open()?;
    for seq in release {
        holds.remove(seq)?;
    }
    let released = release_from(t, KEY_HELD, release, now_ms)?;
    let mut removed = 0;
    for &(seq, first) in duplicates {
        let hold = t.key_holds.open()?.remove(seq)?.map(|v| {
            let (key, expires_at_ms) = v.value();
            (key.to_owned(), expires_at_ms)
        });
        let Some(bytes) = t.events.remove(seq)? else { continue };
        let event = codec::decode_event(bytes.value());
        drop(bytes);
        removed += 1;
        t.delivery.remove(seq)?;
        for lane in Lane::ALL {
            t.lanes.remove((lane.number(), KEY_HELD, seq))?;
        }
        t.touched(FeedKind::Outbox, seq);
        if let (Some((key, expires_at_ms)), Ok(event)) = (hold, event) {
            let name = (event.source().as_str(), key.as_str());
            let dedup = t.dedup.open()?;
            let ours = dedup.get(name)?.is_some_and(|v| v.value().0 == event.id().as_u128());
            if ours {
                dedup.insert(name, (first.as_u128(), expires_at_ms))?;
            }
        }
    }
    Ok(released + removed)
}

/// Moves the entries of `seqs` held at `held` (a due time no claim reaches) to now. Returns
/// how many entries moved.
fn release_from(t: &mut Tables<'_>, held: u64, seqs: &[u64], now_ms: u64) -> Result<u64> {
    let wanted: HashSet<u64> = seqs.iter().copied().collect();
    let mut keys = Vec::new();
    for lane in Lane::ALL {
        let n = lane.number();
        for entry in t.lanes.range((n, held, 0)..=(n, held, u64::MAX))? {
            let key = entry?.0.value();
            if wanted.contains(&key.2) {
                keys.push(key);
            }
        }
    }
    for (lane, _, seq) in &keys {
        t.lanes.remove((*lane, held, *seq))?;
        t.file(Lane::from_number(*lane), now_ms, *seq)?;
    }
    Ok(keys.len() as u64)
}
