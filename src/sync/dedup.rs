//! Fleet-wide idempotency: an idempotency key accepted by any instance is answered as a
//! duplicate by every other, within `store.dedup_window`.
//!
//! Before a keyed event is stored, ingest claims its key in `dedup_keys` with one statement
//! (`INSERT ... ON CONFLICT DO UPDATE ... WHERE <the row is free> RETURNING`), under a short
//! deadline (`sync.dedup_timeout`, 250 ms by default). Three answers:
//!
//! - the key is ours now: the event is stored locally as usual (local dedup still applies),
//!   and the claim is confirmed in the background once it is durable;
//! - the key belongs to another event that is durable (its claim confirmed): the request is
//!   answered `200 duplicate` with that event's id, and nothing is stored (while the claim is
//!   unconfirmed the request waits for it, within the deadline: that event's append may still
//!   fail, and a duplicate of an event never stored would lose it), so two first arrivals at once on two instances give
//!   one 202 and one duplicate, and the event is published once;
//! - PostgreSQL did not answer in time: local dedup alone decides (counted in
//!   `orchestron_fleet_dedup_fallbacks_total`).
//!
//! A claim is unconfirmed until the event is durable; one left unconfirmed for
//! [`UNCONFIRMED_FOR`] (its instance failed in between) is free again, so a key is never
//! held by an event that does not exist. A failed append releases its claim at once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Fleet, SyncError};
use crate::event::EventId;

/// An unconfirmed claim older than this belongs to no one.
const UNCONFIRMED_FOR: &str = "10 seconds";
/// How often a request whose key another instance holds unconfirmed looks again.
const UNCONFIRMED_POLL: Duration = Duration::from_millis(10);
/// Confirmations waiting for the background task; beyond this they are dropped (the claim
/// then frees itself after `UNCONFIRMED_FOR`, which can only cause a duplicate, not a loss).
const PENDING_CONFIRMS: usize = 16_384;
const CONFIRM_BATCH: usize = 1000;

/// What the fleet says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClaim {
    /// This event holds the key now.
    Claimed,
    /// Another event holds it: this one is a duplicate of it.
    Duplicate(EventId),
    /// PostgreSQL did not answer in time; local dedup decides.
    Unknown,
}

/// A claim and what became of its event, for the background task.
pub(super) struct Confirm {
    source: String,
    key: String,
    event_id: EventId,
    outcome: KeyOutcome,
}

pub(super) fn channel() -> (mpsc::Sender<Confirm>, mpsc::Receiver<Confirm>) {
    mpsc::channel(PENDING_CONFIRMS)
}

impl Fleet {
    /// Claims `key` of `source` for `event_id` until `expires_at_ms`, or says whose it is.
    pub async fn claim_key(
        &self,
        source: &str,
        key: &str,
        event_id: EventId,
        expires_at_ms: u64,
    ) -> KeyClaim {
        let claim = self.try_claim(source, key, event_id, expires_at_ms);
        match tokio::time::timeout(self.inner.dedup_timeout, claim).await {
            Ok(Ok(claim)) => claim,
            Ok(Err(error)) => {
                tracing::debug!(%error, "fleet dedup: PostgreSQL failed; local dedup decides");
                self.inner.metrics.fleet_dedup_fallbacks.inc();
                KeyClaim::Unknown
            }
            Err(_) => {
                self.inner.metrics.fleet_dedup_fallbacks.inc();
                KeyClaim::Unknown
            }
        }
    }

    async fn try_claim(
        &self,
        source: &str,
        key: &str,
        event_id: EventId,
        expires_at_ms: u64,
    ) -> Result<KeyClaim, SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let id = event_id.to_string();
        // Until the holder's event is durable (its claim confirmed), this one is no
        // duplicate of it: that append may still fail. Wait for it, within the deadline,
        // holding no connection while waiting (the confirmations need them).
        loop {
            let client = inner.pool.get().await?;
            let claimed = client
            .query_opt(
                &format!(
                    "INSERT INTO {schema}.dedup_keys AS d (source, key, event_id, origin, expires_at)
                     VALUES ($1, $2, $3::text::uuid, $4, to_timestamp($5::bigint / 1000.0))
                     ON CONFLICT (source, key) DO UPDATE SET
                         event_id = EXCLUDED.event_id, origin = EXCLUDED.origin,
                         expires_at = EXCLUDED.expires_at, confirmed = false, claimed_at = now()
                     WHERE d.expires_at < now()
                        OR (NOT d.confirmed AND d.claimed_at < now() - interval '{UNCONFIRMED_FOR}')
                     RETURNING 1"
                ),
                &[&source, &key, &id, &inner.instance_id, &(expires_at_ms as i64)],
            )
            .await?;
            if claimed.is_some() {
                return Ok(KeyClaim::Claimed);
            }
            let holder = client
                .query_opt(
                    &format!(
                        "SELECT event_id::text, confirmed FROM {schema}.dedup_keys
                     WHERE source = $1 AND key = $2"
                    ),
                    &[&source, &key],
                )
                .await?;
            match holder {
                Some(row) if row.get::<_, bool>(1) => {
                    let first = EventId::parse(row.get::<_, &str>(0));
                    return Ok(first.map_or(KeyClaim::Unknown, KeyClaim::Duplicate));
                }
                // Unconfirmed: its event is being stored; gone: its append failed.
                Some(_) => {
                    drop(client);
                    tokio::time::sleep(UNCONFIRMED_POLL).await;
                }
                None => {}
            }
        }
    }

    /// Records what became of a claim (in the background, batched).
    pub fn settle_key(&self, source: &str, key: &str, event_id: EventId, outcome: KeyOutcome) {
        let confirm = Confirm { source: source.to_owned(), key: key.to_owned(), event_id, outcome };
        if self.inner.confirms.try_send(confirm).is_err() {
            self.inner.metrics.fleet_dedup_fallbacks.inc();
        }
    }
}

/// What became of an event whose key was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Stored: the claim stands.
    Durable,
    /// Local dedup found an earlier event for the key (`event_id` is that one).
    Earlier,
    /// Not stored: give the key up.
    Failed,
}

/// Applies confirmations in batches until `stop`; also drops expired keys now and then.
pub(super) async fn run(fleet: Fleet, mut rx: mpsc::Receiver<Confirm>, stop: CancellationToken) {
    let mut expire = tokio::time::interval(Duration::from_secs(60));
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = expire.tick() => {
                if let Err(error) = fleet.expire_keys().await {
                    tracing::debug!(%error, "fleet dedup: expiring keys failed");
                }
                continue;
            }
            n = rx.recv_many(&mut batch, CONFIRM_BATCH) => if n == 0 { return },
        }
        // A failure here leaves claims unconfirmed: they free themselves later, so at worst
        // a later repeat is published again (never a loss).
        if let Err(error) = fleet.confirm(batch).await {
            tracing::debug!(%error, "fleet dedup: confirming claims failed");
        }
    }
}

impl Fleet {
    async fn confirm(&self, batch: Vec<Confirm>) -> Result<(), SyncError> {
        let (mut keep, mut earlier, mut give_up) =
            (Columns::default(), Columns::default(), Columns::default());
        for Confirm { source, key, event_id, outcome } in batch {
            let columns = match outcome {
                KeyOutcome::Durable => &mut keep,
                KeyOutcome::Earlier => &mut earlier,
                KeyOutcome::Failed => &mut give_up,
            };
            columns.push(source, key, event_id);
        }
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await?;
        if !keep.source.is_empty() {
            client
                .execute(
                    &format!(
                        "UPDATE {schema}.dedup_keys d SET confirmed = true
                         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS c(source, key, id)
                         WHERE d.source = c.source AND d.key = c.key AND d.event_id = c.id::uuid"
                    ),
                    &[&keep.source, &keep.key, &keep.id],
                )
                .await?;
        }
        if !earlier.source.is_empty() {
            client
                .execute(
                    &format!(
                        "UPDATE {schema}.dedup_keys d SET confirmed = true, event_id = c.id::uuid
                         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS c(source, key, id)
                         WHERE d.source = c.source AND d.key = c.key AND d.origin = $4"
                    ),
                    &[&earlier.source, &earlier.key, &earlier.id, &self.inner.instance_id],
                )
                .await?;
        }
        if !give_up.source.is_empty() {
            client
                .execute(
                    &format!(
                        "DELETE FROM {schema}.dedup_keys d
                         USING UNNEST($1::text[], $2::text[], $3::text[]) AS c(source, key, id)
                         WHERE d.source = c.source AND d.key = c.key AND d.event_id = c.id::uuid
                           AND NOT d.confirmed"
                    ),
                    &[&give_up.source, &give_up.key, &give_up.id],
                )
                .await?;
        }
        Ok(())
    }

    async fn expire_keys(&self) -> Result<(), SyncError> {
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await?;
        client
            .execute(&format!("DELETE FROM {schema}.dedup_keys WHERE expires_at < now()"), &[])
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Columns {
    source: Vec<String>,
    key: Vec<String>,
    id: Vec<String>,
}

impl Columns {
    fn push(&mut self, source: String, key: String, id: EventId) {
        self.source.push(source);
        self.key.push(key);
        self.id.push(id.to_string());
    }
}
