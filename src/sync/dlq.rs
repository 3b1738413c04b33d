//! The fleet DLQ: every instance's dead-letter entries, from the replicated `dlq` table, and
//! replaying another instance's entry from this one.
//!
//! Replaying a peer's entry takes it over in one statement (`UPDATE dlq SET owner = me ...
//! WHERE owner = origin RETURNING record`, so two instances replaying the same entry cannot
//! both win), puts the event in this instance's outbox for the destinations that had failed,
//! with its original id, and stamps the row `replayed_at`. The origin, at its next heartbeat,
//! drops its local copy of each entry replayed elsewhere and deletes the row. A row owned by
//! this instance and not yet stamped (a crash in between) is replayed again by the next
//! takeover round: at least once, never lost.

use super::{Fleet, SyncError};
use crate::event::{EventId, clock_ms};
use crate::store::{DlqEntry, DlqFilter, DlqSelector, Store, decode_dlq};

/// The entry in a row's third column (`record`), in the store's own encoding.
fn dlq_record(row: &tokio_postgres::Row) -> Result<crate::delivery::DlqRecord, SyncError> {
    decode_dlq(row.get::<_, &[u8]>(2)).map_err(|e| SyncError::Corrupt(format!("DLQ entry: {e}")))
}

/// An entry of the fleet DLQ: which instance holds it, and the entry.
pub struct FleetDlqEntry {
    pub instance_id: String,
    pub entry: DlqEntry,
}

impl Fleet {
    /// The fleet's dead-letter entries matching `filter`, newest first: `limit` of them from
    /// `offset`, and the offset of the next page if there is one.
    pub async fn dlq_list(
        &self,
        filter: &DlqFilter,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<FleetDlqEntry>, Option<u64>), SyncError> {
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT origin, dlq_seq, record FROM {schema}.dlq WHERE owner = origin
                     ORDER BY dead_lettered_at DESC, origin, dlq_seq DESC"
                ),
                &[],
            )
            .await?;
        let mut matching = Vec::new();
        for row in &rows {
            let record = dlq_record(row)?;
            if filter.matches(&record) {
                let entry = DlqEntry { dlq_seq: row.get::<_, i64>(1) as u64, record };
                matching.push(FleetDlqEntry { instance_id: row.get(0), entry });
            }
        }
        let start = (offset as usize).min(matching.len());
        let end = start.saturating_add(limit).min(matching.len());
        let next = (end < matching.len()).then_some(end as u64);
        Ok((matching.drain(start..end).collect(), next))
    }

    /// Replays the entry `id` wherever it is: here, through the store; on a peer, by taking
    /// it over. Returns how many entries were replayed (0: no such entry in the fleet).
    pub async fn dlq_replay(&self, store: &Store, id: EventId) -> Result<u64, SyncError> {
        let here = store.dlq_replay(DlqSelector::Id(id), clock_ms()).await?;
        if here > 0 {
            return Ok(here);
        }
        let inner = &self.inner;
        let schema = &inner.schema;
        let client = inner.pool.get().await?;
        client
            .execute(
                &format!(
                    "UPDATE {schema}.dlq SET owner = $1, updated_at = now()
                     WHERE event_id = $2::text::uuid AND owner = origin AND origin <> $1"
                ),
                &[&inner.instance_id, &id.to_string()],
            )
            .await?;
        drop(client);
        self.finish_dlq_replays(store).await
    }

    /// Puts the entries this instance took over for replay into its outbox, and stamps them.
    pub(super) async fn finish_dlq_replays(&self, store: &Store) -> Result<u64, SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let me = &inner.instance_id;
        let client = inner.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT origin, dlq_seq, record FROM {schema}.dlq
                     WHERE owner = $1 AND origin <> $1 AND replayed_at IS NULL"
                ),
                &[me],
            )
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = dlq_record(row)?;
            let delivery = record.replay_delivery();
            entries.push((record.event, delivery));
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let seqs = store.import(entries).await?;
        store.release(seqs.clone(), clock_ms()).await?;
        let origins: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let dlq_seqs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        client
            .execute(
                &format!(
                    "UPDATE {schema}.dlq d SET replayed_at = now()
                     FROM UNNEST($2::text[], $3::bigint[]) AS r(origin, dlq_seq)
                     WHERE d.origin = r.origin AND d.dlq_seq = r.dlq_seq AND d.owner = $1"
                ),
                &[me, &origins, &dlq_seqs],
            )
            .await?;
        tracing::info!(entries = seqs.len(), "replayed dead-letter entries of other instances");
        Ok(seqs.len() as u64)
    }

    /// Drops the local DLQ entries that another instance replayed, and their rows.
    pub(super) async fn drop_replayed_elsewhere(&self, store: &Store) -> Result<(), SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let me = &inner.instance_id;
        let client = inner.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT dlq_seq, event_id::text FROM {schema}.dlq
                     WHERE origin = $1 AND owner <> $1 AND replayed_at IS NOT NULL"
                ),
                &[me],
            )
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            if let Some(id) = EventId::parse(row.get::<_, &str>(1)) {
                store.dlq_delete(DlqSelector::Id(id)).await?;
            }
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        client
            .execute(
                &format!(
                    "DELETE FROM {schema}.dlq
                     WHERE origin = $1 AND owner <> $1 AND dlq_seq = ANY($2::bigint[])"
                ),
                &[me, &seqs],
            )
            .await?;
        tracing::info!(
            entries = seqs.len(),
            "dead-letter entries replayed by other instances dropped here"
        );
        Ok(())
    }
}
