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
//! - PostgreSQL did not answer in time: the event is stored (local dedup applies) but *held*
//!   from the relay ([`crate::store::Store::key_holds`]) until PostgreSQL rules on its key.
//!   [`run_holds`] claims the held keys in batches (one statement each) as soon as PostgreSQL
//!   answers: a key that is now this event's releases it to the relay; a key another durable
//!   event holds settles it as a duplicate (removed unpublished, counted). A hold that lasts
//!   `sync.dedup_hold_max` (PostgreSQL down that long) ends by publishing on local dedup
//!   alone (counted in `orchestron_fleet_dedup_fallbacks_total`).
//!
//! A claim is unconfirmed until the event is durable; one left unconfirmed for
//! [`UNCONFIRMED_FOR`] (its instance failed in between) is free again, so a key is never
//! held by an event that does not exist. A failed append releases its claim at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Fleet, SyncError};
use crate::event::{EventId, now_ms};
use crate::store::{KeyHold, Store};

/// An unconfirmed claim older than this belongs to no one.
const UNCONFIRMED_FOR: &str = "10 seconds";
/// How often a request whose key another instance holds unconfirmed looks again.
const UNCONFIRMED_POLL: Duration = Duration::from_millis(10);
/// Confirmations waiting for the background task; beyond this they are dropped (the claim
/// then frees itself after `UNCONFIRMED_FOR`, which can only cause a duplicate, not a loss).
const PENDING_CONFIRMS: usize = 16_384;
const CONFIRM_BATCH: usize = 1000;
/// Key holds ruled on per round (one claim statement).
const HOLD_BATCH: usize = 1000;
/// How often held keys are put to PostgreSQL while some wait.
const HOLD_POLL: Duration = Duration::from_millis(500);
/// The longest one round of claims may take before PostgreSQL counts as unreachable.
const HOLD_ROUND: Duration = Duration::from_secs(5);

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
                tracing::debug!(%error, "fleet dedup: PostgreSQL failed; the key waits for it");
                self.unknown_key()
            }
            Err(_) => self.unknown_key(),
        }
    }

    fn unknown_key(&self) -> KeyClaim {
        if !self.holds_unknown_keys() {
            self.inner.metrics.fleet_dedup_fallbacks.inc();
        }
        KeyClaim::Unknown
    }

    /// Whether an event whose key PostgreSQL did not answer for is held until it does
    /// (`sync.dedup_hold_max` above zero), rather than published on local dedup alone.
    pub fn holds_unknown_keys(&self) -> bool {
        !self.inner.dedup_hold_max.is_zero()
    }

    /// Notes that an event was stored held for its key: [`run_holds`] looks soon.
    pub fn key_held(&self) {
        self.inner.metrics.fleet_dedup_held.inc();
        self.inner.holds_added.notify_one();
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

/// What PostgreSQL said of a held event's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ruling {
    /// The key is this event's now: publish it.
    Ours,
    /// Another durable event holds it.
    Duplicate(EventId),
    /// Another event holds it unconfirmed (being stored, or abandoned): ask again later.
    Wait,
}

/// Ends key holds until `stop`: a round whenever an event was held, and every
/// [`HOLD_POLL`] while some wait (see the module docs).
pub(super) async fn run_holds(fleet: Fleet, store: Store, stop: CancellationToken) {
    loop {
        let waiting = match fleet.end_holds(&store).await {
            Ok(waiting) => waiting,
            Err(error) => {
                tracing::warn!(%error, "fleet dedup: ending key holds failed; will retry");
                true
            }
        };
        let idle = if waiting { HOLD_POLL } else { Duration::from_secs(60) };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = fleet.inner.holds_added.notified() => {}
            _ = tokio::time::sleep(idle) => {}
        }
    }
}

impl Fleet {
    /// One round over the oldest holds. Returns whether holds are still waiting.
    async fn end_holds(&self, store: &Store) -> Result<bool, SyncError> {
        let holds = store.key_holds(HOLD_BATCH).await?;
        let metrics = &self.inner.metrics;
        if holds.is_empty() {
            metrics.fleet_dedup_held.set(0);
            return Ok(false);
        }

        let now = now_ms();
        let hold_max = self.inner.dedup_hold_max.as_millis() as u64;
        let (mut release, mut duplicates) = (Vec::new(), Vec::new());
        // One event per key in a statement (PostgreSQL refuses to update a row twice in one);
        // a second one for the same key waits for the next round.
        let mut asked = HashSet::new();
        let mut ask = Vec::new();
        for hold in &holds {
            match &hold.event {
                // Gone from the outbox (a peer took it over): only the hold is left to drop.
                None => {
                    duplicates.push((hold.seq, EventId::from_u128(0)));
                }
                Some((_, source, _)) => {
                    if asked.insert((source.as_str(), hold.key.as_str())) {
                        ask.push(hold);
                    }
                }
            }
        }
        let expired = |hold: &KeyHold| {
            hold.event.as_ref().is_some_and(|(_, _, received)| now >= received + hold_max)
        };
        let rulings = match tokio::time::timeout(HOLD_ROUND, self.rule_on_keys(&ask)).await {
            Ok(Ok(rulings)) => Some(rulings),
            Ok(Err(error)) => {
                tracing::debug!(%error, "fleet dedup: PostgreSQL cannot rule on held keys yet");
                None
            }
            Err(_) => None,
        };
        let (mut claimed, mut duplicate, mut fallback) = (0u64, 0u64, 0u64);
        for (i, hold) in ask.iter().enumerate() {
            let (id, source, _) = hold.event.as_ref().expect("asked only with an event");
            match rulings.as_ref().map(|r| r[i]) {
                Some(Ruling::Ours) => {
                    release.push(hold.seq);
                    claimed += 1;
                }
                Some(Ruling::Duplicate(first)) => {
                    tracing::info!(
                        event_id = %id, duplicate_of = %first, source = %source,
                        "held event settled as a duplicate: its key belongs to an event of the fleet"
                    );
                    duplicates.push((hold.seq, first));
                    duplicate += 1;
                }
                Some(Ruling::Wait) | None if expired(hold) => {
                    tracing::warn!(
                        event_id = %id, source = %source,
                        "held event published on local dedup alone: PostgreSQL did not rule on \
                         its key within sync.dedup_hold_max"
                    );
                    release.push(hold.seq);
                    fallback += 1;
                }
                Some(Ruling::Wait) | None => {}
            }
        }
        if release.is_empty() && duplicates.is_empty() {
            metrics.fleet_dedup_held.set(store.key_hold_count().await? as i64);
            return Ok(true);
        }
        store.end_key_holds(release, duplicates, now_ms()).await?;
        let ended = &metrics.fleet_dedup_holds_ended;
        ended.with_label_values(&["claimed"]).inc_by(claimed);
        ended.with_label_values(&["duplicate"]).inc_by(duplicate);
        ended.with_label_values(&["expired"]).inc_by(fallback);
        metrics.fleet_dedup_fallbacks.inc_by(fallback);
        // Counted after the commit: holds added meanwhile are in it.
        let left = store.key_hold_count().await?;
        metrics.fleet_dedup_held.set(left as i64);
        Ok(left > 0)
    }

    /// Claims the keys of `holds` for their events, in one statement (the events are
    /// durable: the claims are confirmed at once), and says whose each key is.
    async fn rule_on_keys(&self, holds: &[&KeyHold]) -> Result<Vec<Ruling>, SyncError> {
        if holds.is_empty() {
            return Ok(Vec::new());
        }
        let (mut sources, mut keys, mut ids, mut expires) = (vec![], vec![], vec![], vec![]);
        for hold in holds {
            let (id, source, _) = hold.event.as_ref().expect("asked only with an event");
            sources.push(source.as_str());
            keys.push(hold.key.as_str());
            ids.push(id.to_string());
            expires.push(hold.expires_at_ms as i64);
        }
        let inner = &self.inner;
        let schema = &inner.schema;
        let client = inner.pool.get().await?;
        // A key is this event's if it is free, abandoned, or already claimed for it (a round
        // that claimed it, then failed before the release was durable).
        let claimed = client
            .query(
                &format!(
                    "INSERT INTO {schema}.dedup_keys AS d
                         (source, key, event_id, origin, expires_at, confirmed)
                     SELECT c.source, c.key, c.id::uuid, $5, to_timestamp(c.expires / 1000.0), true
                     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                          AS c(source, key, id, expires)
                     ON CONFLICT (source, key) DO UPDATE SET
                         event_id = EXCLUDED.event_id, origin = EXCLUDED.origin,
                         expires_at = EXCLUDED.expires_at, confirmed = true, claimed_at = now()
                     WHERE d.expires_at < now()
                        OR (NOT d.confirmed AND d.claimed_at < now() - interval '{UNCONFIRMED_FOR}')
                        OR d.event_id = EXCLUDED.event_id
                     RETURNING d.source, d.key"
                ),
                &[&sources, &keys, &ids, &expires, &inner.instance_id],
            )
            .await?;
        let ours: HashSet<(String, String)> =
            claimed.iter().map(|row| (row.get(0), row.get(1))).collect();
        let holders = client
            .query(
                &format!(
                    "SELECT d.source, d.key, d.event_id::text, d.confirmed
                     FROM {schema}.dedup_keys d
                     JOIN UNNEST($1::text[], $2::text[]) AS c(source, key)
                       ON d.source = c.source AND d.key = c.key"
                ),
                &[&sources, &keys],
            )
            .await?;
        let holders: HashMap<(String, String), (String, bool)> = holders
            .iter()
            .map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3))))
            .collect();
        Ok(sources
            .iter()
            .zip(&keys)
            .map(|(source, key)| {
                let name = (source.to_string(), key.to_string());
                if ours.contains(&name) {
                    return Ruling::Ours;
                }
                match holders.get(&name) {
                    Some((id, true)) => EventId::parse(id).map_or(Ruling::Wait, Ruling::Duplicate),
                    _ => Ruling::Wait,
                }
            })
            .collect())
    }
}
