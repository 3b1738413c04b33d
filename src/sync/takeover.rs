//! Takeover of a dead peer's events, with fencing, and reconciliation when the old owner
//! returns.
//!
//! **Taking over.** A live instance (its own lease renewed, reconciled) looks every
//! [`CHECK`] for peers whose lease has expired and who still own rows in `events`. For each,
//! in one transaction: it locks the peer's `instances` row (`FOR UPDATE SKIP LOCKED`, so one
//! instance takes a given peer over at a time) and checks the lease is still expired, bumps
//! the peer's epoch (the fencing token: the peer learns of it at its next heartbeat), and
//! sets itself as owner of a batch of the peer's rows (`FOR UPDATE SKIP LOCKED`), marking them
//! `claimed`. Then it finishes its claims:
//!
//! 1. the claimed events go into its own store, durable, with the delivery state the peer had
//!    replicated (destinations confirmed stay confirmed), *held*: the relay does not see them;
//! 2. in one PostgreSQL transaction, each claimed row is deleted and a tombstone in
//!    `takeovers` written, only `WHERE owner = me AND owner_epoch = <as read>`; a row that no
//!    longer matches was claimed away (this instance stalled past its own lease) and its
//!    local copy is dropped after the commit;
//! 3. before that transaction commits, the events whose rows it deleted are released to the
//!    relay (durably), which publishes them to the destinations not yet confirmed, with their
//!    original event ids. From then on they are this instance's own events, replicated under
//!    its id. So a held event whose row is gone was claimed away, never finished here.
//!
//! A crash between the steps leaves rows claimed by this instance, and held events in its
//! store: the next round finishes them the same way (importing what is not held yet, dropping
//! held events whose rows are gone).
//!
//! A claimed row stays `claimed` until it is finished, whoever owns it next: when B stalls, C
//! claims some of B's rows and dies before finishing them, and B (back, reconciled, those
//! events dropped from its store) takes C over, the rows are claimed back by their own origin
//! and B imports them like any other claim, under new seqs, instead of taking them for its own
//! rows (which its store would hold).
//!
//! **Fencing the old owner.** An instance publishes an event that may be in PostgreSQL (any
//! seq below its replicated mark, and everything that was in its store when it started) only
//! while its own lease is live by its own clock and it has reconciled at its current epoch.
//! Events accepted later and not replicated yet are its alone and publish as usual.
//!
//! **Reconciliation.** At its first heartbeat, and whenever its epoch has moved, an instance
//! reads its events that peers took over (`takeovers`, and its rows now owned by a peer),
//! drops them from its store without publishing, and deletes the tombstones.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use super::{Fleet, SyncError};
use crate::delivery::Delivery;
use crate::event::{EventId, EventType, SourceName, ValidatedEvent, clock_ms};
use crate::store::{Store, decode_delivery};

/// Rows claimed per transaction.
const BATCH: i64 = 1000;
/// The columns of a claimed row, as [`decode_row`] and [`Fleet::finish_rows`] read them.
const CLAIMED_ROW: &str = "e.origin, e.seq, e.event_id::text, e.source, e.event_type,
     round(extract(epoch from e.received_at) * 1000)::bigint, e.headers::text, e.body,
     e.delivery, e.owner_epoch";
/// The longest time between two looks for dead peers.
const CHECK: Duration = Duration::from_secs(2);
/// The longest one batch (claim, import, finish) may take before the round counts as
/// failed; a round over a large backlog runs as long as its batches keep finishing.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Looks for dead peers and takes their events over, until `stop`.
pub(super) async fn run(fleet: Fleet, store: Store, stop: CancellationToken) {
    let every = (fleet.inner.lease / 3).min(CHECK);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !fleet.may_act() {
            continue;
        }
        match fleet.take_over(&store).await {
            Ok(_) => failing = false,
            Err(error) if !failing => {
                tracing::error!(%error, "taking over a dead peer's events failed; will retry");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl Fleet {
    /// Whether the relay may publish the outbox entry `seq` now (see the module docs).
    pub fn may_publish(&self, seq: u64) -> bool {
        seq >= self.inner.held_below.load(std::sync::atomic::Ordering::Acquire) || self.may_act()
    }

    /// This instance's lease is live by its own clock, and it has reconciled at its epoch.
    /// The relay asks this for every claimed entry that may be replicated: one lock, no copy.
    fn may_act(&self) -> bool {
        let state = self.inner.state.lock().expect("sync state lock");
        !state.lapsed(self.inner.lease) && state.reconciled == Some(state.epoch)
    }

    /// One round: finish claims left from before, then claim the dead peers' rows batch by
    /// batch. Returns how many events were taken over.
    async fn take_over(&self, store: &Store) -> Result<u64, SyncError> {
        within_batch_timeout(self.finish_dlq_replays(store)).await?;
        let mut taken = within_batch_timeout(self.finish_claims(store)).await?;
        let schema = &self.inner.schema;
        let me = &self.inner.instance_id;
        let peers = within_batch_timeout(async {
            let client = self.inner.pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT i.instance_id FROM {schema}.instances i
                         WHERE i.lease_expires_at < now() AND i.instance_id <> $1
                           AND (EXISTS (SELECT 1 FROM {schema}.events e
                                        WHERE e.origin = i.instance_id
                                          AND e.owner = e.origin AND NOT e.claimed)
                                OR EXISTS (SELECT 1 FROM {schema}.events e
                                           WHERE e.owner = i.instance_id AND e.claimed))"
                    ),
                    &[me],
                )
                .await?;
            Ok(rows)
        })
        .await?;
        if !peers.is_empty()
            && let Err(error) = within_batch_timeout(self.analyze_if_stale()).await
        {
            tracing::warn!(%error, "could not analyze the events table; claiming anyway");
        }
        for peer in peers.iter().map(|row| row.get::<_, String>(0)) {
            // The peer's own rows are claimed in seq order, each batch after the last one's
            // highest seq; a row skipped because it was locked is claimed by a later round.
            // (Claiming the next batch while finishing this one was tried: no faster on two
            // cores shared with PostgreSQL, docs/benchmarks.md.)
            let mut after = -1;
            while self.may_act() {
                let batch = async {
                    match self.claim(&peer, after).await? {
                        None => Ok(None),
                        Some(batch) => {
                            after = after.max(batch.highest);
                            self.finish_rows(store, batch.rows).await.map(Some)
                        }
                    }
                };
                match within_batch_timeout(batch).await? {
                    Some(n) => taken += n,
                    None => break,
                }
            }
        }
        Ok(taken)
    }

    /// Analyzes `events` when it never was, or when more rows changed since than it holds
    /// (plus 1,000): statistics that far off are what misleads the planner. The claim and
    /// finish statements are planned from them, and a takeover often starts right after a
    /// large backlog arrived, before autovacuum looked (or where it is off): without them
    /// PostgreSQL chose a sort of the whole peer's rows, and a hash join over a scan of the
    /// table, for each batch of 1,000 (500 events/s on a 1M backlog instead of 4,500).
    /// A role that does not own the table gets a warning from PostgreSQL, not an error; a
    /// lock held by a vacuum or another instance's analyze makes this one give up after 1 s
    /// (the caller logs it and claims with the statistics there are).
    async fn analyze_if_stale(&self) -> Result<(), SyncError> {
        let schema = &self.inner.schema;
        let mut client = self.inner.pool.get().await?;
        let stale = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM pg_stat_user_tables
                     WHERE relid = '{schema}.events'::regclass
                       AND (coalesce(last_analyze, last_autoanalyze) IS NULL
                            OR n_mod_since_analyze > 1000 + n_live_tup)"
                ),
                &[],
            )
            .await?;
        if stale.is_some() {
            // In a transaction, so the lock timeout ends with it (rolled back on error).
            let txn = client.transaction().await?;
            txn.batch_execute(&format!("SET LOCAL lock_timeout = '1s'; ANALYZE {schema}.events"))
                .await?;
            txn.commit().await?;
        }
        Ok(())
    }

    /// Claims a batch of `peer`'s rows if its lease is still expired and no one else is
    /// taking it over; bumps its epoch. The batch is the rows `peer` had claimed and not
    /// finished (from others, or back from a peer that had claimed them from it), and its
    /// own rows with a seq above `after`. Returns `None` when nothing was claimed.
    async fn claim(&self, peer: &str, after: i64) -> Result<Option<Claimed>, SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let my_epoch = inner.state.lock().expect("sync state lock").epoch;
        let mut client = inner.pool.get().await?;
        let txn = client.transaction().await?;
        let locked = txn
            .query_opt(
                &format!(
                    "SELECT epoch FROM {schema}.instances
                     WHERE instance_id = $1 AND lease_expires_at < now()
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&peer],
            )
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
        txn.execute(
            &format!("UPDATE {schema}.instances SET epoch = epoch + 1 WHERE instance_id = $1"),
            &[&peer],
        )
        .await?;
        // Its own rows by the primary key, the ones it had claimed by `events_claims`; the
        // claimed rows come back whole, as `finish_rows` takes them.
        let mut rows = txn
            .query(
                &format!(
                    "WITH own AS (
                         SELECT origin, seq FROM {schema}.events
                         WHERE origin = $1 AND owner = $1 AND NOT claimed AND seq > $5
                         ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED),
                     theirs AS (
                         SELECT origin, seq FROM {schema}.events
                         WHERE owner = $1 AND claimed
                         ORDER BY owner, origin, seq LIMIT $4 FOR UPDATE SKIP LOCKED)
                     UPDATE {schema}.events e
                     SET owner = $2, owner_epoch = $3, claimed = true, updated_at = now()
                     FROM (SELECT origin, seq, true AS own FROM own
                           UNION ALL SELECT origin, seq, false FROM theirs) c
                     WHERE e.origin = c.origin AND e.seq = c.seq
                     RETURNING {CLAIMED_ROW}, c.own"
                ),
                &[&peer, &inner.instance_id, &my_epoch, &BATCH, &after],
            )
            .await?;
        txn.commit().await?;
        if rows.is_empty() {
            return Ok(None);
        }
        // In the order they were accepted in, as a read of the claimed rows gives them.
        rows.sort_by(|x, y| {
            (x.get::<_, &str>(0), x.get::<_, i64>(1)).cmp(&(y.get::<_, &str>(0), y.get(1)))
        });
        // Of its own rows only: one it had claimed back may have any seq.
        let highest = rows
            .iter()
            .filter(|row| row.get::<_, bool>(10))
            .map(|row| row.get::<_, i64>(1))
            .max()
            .unwrap_or(after);
        tracing::warn!(peer, events = rows.len(), "taking over a dead peer's events");
        Ok(Some(Claimed { rows, highest }))
    }

    /// Brings the rows this instance claimed and did not finish (a crash, a failed batch)
    /// into its store and makes the claims final, and drops held events whose claim was
    /// lost. Returns how many events were released to the relay.
    async fn finish_claims(&self, store: &Store) -> Result<u64, SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let me = &inner.instance_id;
        let mut released = 0;
        loop {
            let client = inner.pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {CLAIMED_ROW} FROM {schema}.events e WHERE owner = $1 AND claimed
                         ORDER BY owner, origin, seq LIMIT $2"
                    ),
                    &[me, &BATCH],
                )
                .await?;
            // Held events whose rows this instance no longer owns were claimed away.
            let held = store.held().await?;
            if !held.is_empty() {
                let held_ids: Vec<String> = held.iter().map(|(_, id)| id.to_string()).collect();
                let still_ours = client
                    .query(
                        &format!(
                            "SELECT event_id::text FROM {schema}.events
                             WHERE owner = $1 AND claimed AND event_id::text = ANY($2)"
                        ),
                        &[me, &held_ids],
                    )
                    .await?;
                let ours: HashSet<String> = still_ours.iter().map(|row| row.get(0)).collect();
                let lost: Vec<u64> = held
                    .iter()
                    .filter(|(_, id)| !ours.contains(&id.to_string()))
                    .map(|&(seq, _)| seq)
                    .collect();
                if !lost.is_empty() {
                    tracing::warn!(events = lost.len(), "claims lost to another instance; dropped");
                    inner.metrics.fleet_claims_lost.inc_by(lost.len() as u64);
                    store.forget(lost).await?;
                }
            }
            drop(client);
            let full = rows.len() as i64 == BATCH;
            if !rows.is_empty() {
                released += self.finish_rows(store, rows).await?;
            }
            if !full {
                return Ok(released);
            }
        }
    }

    /// Imports claimed `rows` (those not held already: a crash may have come after their
    /// import), makes the claims that still hold final in PostgreSQL, drops the others, and
    /// releases the final ones to the relay. Returns how many were released.
    async fn finish_rows(&self, store: &Store, rows: Vec<Row>) -> Result<u64, SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let me = &inner.instance_id;
        let metrics = &inner.metrics;
        let held: HashMap<EventId, u64> =
            store.held().await?.into_iter().map(|(seq, id)| (id, seq)).collect();
        let mut local: Vec<Option<u64>> = Vec::with_capacity(rows.len());
        let mut fresh = Vec::new();
        for row in &rows {
            let (event, delivery) = decode_row(row)?;
            match held.get(&event.id()) {
                Some(&seq) => local.push(Some(seq)),
                None => {
                    local.push(None);
                    fresh.push((event, delivery));
                }
            }
        }
        let mut imported = store.import(fresh).await?.into_iter();
        let local: Vec<u64> = local
            .into_iter()
            .map(|seq| seq.or_else(|| imported.next()).expect("one each"))
            .collect();
        // Final only for rows still claimed as read. A row claimed back by its own origin
        // (from a peer that died mid-takeover) gets no tombstone: there is no one else to
        // tell, and it lives on under its new seq.
        let origins: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        let epochs: Vec<i64> = rows.iter().map(|r| r.get(9)).collect();
        let mut client = inner.pool.get().await?;
        let txn = client.transaction().await?;
        let finished = txn
            .query(
                &format!(
                    "WITH gone AS (
                         DELETE FROM {schema}.events e
                         USING UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS c(origin, seq, epoch)
                         WHERE e.origin = c.origin AND e.seq = c.seq
                           AND e.owner = $1 AND e.claimed AND e.owner_epoch = c.epoch
                         RETURNING e.origin, e.seq, e.event_id),
                     told AS (
                         INSERT INTO {schema}.takeovers (origin, seq, event_id, taken_by)
                         SELECT origin, seq, event_id, $1 FROM gone WHERE origin <> $1
                         ON CONFLICT (origin, seq) DO UPDATE SET taken_by = EXCLUDED.taken_by,
                             taken_at = now())
                     SELECT origin, seq FROM gone"
                ),
                &[me, &origins, &seqs, &epochs],
            )
            .await?;
        let done: HashSet<(&str, i64)> =
            finished.iter().map(|row| (row.get(0), row.get(1))).collect();
        let (mut keep, mut drop_) = (Vec::new(), Vec::new());
        for (i, seq) in local.into_iter().enumerate() {
            if done.contains(&(origins[i].as_str(), seqs[i])) {
                keep.push(seq);
            } else {
                drop_.push(seq);
            }
        }
        // Released (durably) before the rows' deletion commits, so that a held event whose
        // row is gone always means a claim lost to another instance, never one finished here
        // and not released yet (a crash, a full disk, this batch timing out in between):
        // that one would be forgotten by the next round and published by no one. If the
        // commit fails after the release, the rows stay claimed and the next round imports
        // and publishes them again: a duplicate, not a loss.
        let released = keep.len() as u64;
        store.release(keep, clock_ms()).await?;
        txn.commit().await?;
        drop(client);
        metrics.fleet_taken_over.inc_by(released);
        if !drop_.is_empty() {
            metrics.fleet_claims_lost.inc_by(drop_.len() as u64);
            store.forget(drop_).await?;
        }
        Ok(released)
    }

    /// Drops the events peers took over from this instance, then counts it reconciled at
    /// `epoch` (read by the heartbeat before this runs).
    pub(super) async fn reconcile(&self, store: &Store, epoch: i64) -> Result<(), SyncError> {
        let inner = &self.inner;
        let schema = &inner.schema;
        let me = &inner.instance_id;
        let client = inner.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT seq FROM {schema}.takeovers WHERE origin = $1
                     UNION SELECT seq FROM {schema}.events WHERE origin = $1 AND owner <> origin"
                ),
                &[me],
            )
            .await?;
        let seqs: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        if !seqs.is_empty() {
            let forgotten = store.forget(seqs.iter().map(|&s| s as u64).collect()).await?;
            client
                .execute(
                    &format!("DELETE FROM {schema}.takeovers WHERE origin = $1 AND seq = ANY($2)"),
                    &[me, &seqs],
                )
                .await?;
            inner.metrics.fleet_reconciled.inc_by(forgotten);
            tracing::warn!(
                events = forgotten,
                epoch,
                "peers took over events of this instance while it was away; dropped here \
                 without publishing"
            );
        }
        inner.state.lock().expect("sync state lock").reconciled = Some(epoch);
        Ok(())
    }
}

/// A batch of claimed rows ([`CLAIMED_ROW`], then whether the row was one of the peer's own),
/// in (origin, seq) order.
struct Claimed {
    rows: Vec<Row>,
    /// The highest seq among the peer's own rows claimed (`after` when none).
    highest: i64,
}

/// `step`, or an error if it takes longer than [`BATCH_TIMEOUT`] (what it did so far is
/// finished by the next round: see the module docs).
async fn within_batch_timeout<T>(
    step: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    tokio::time::timeout(BATCH_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| Err(SyncError::Unanswered("a takeover batch timed out".into())))
}

/// A claimed row as the event and delivery state it was on its origin.
fn decode_row(row: &Row) -> Result<(ValidatedEvent, Option<Delivery>), SyncError> {
    let bad = |what: &str| SyncError::Corrupt(format!("event row ({what})"));
    let id = EventId::parse(row.get::<_, &str>(2)).ok_or_else(|| bad("event id"))?;
    let source = SourceName::parse(row.get::<_, &str>(3)).map_err(|_| bad("source"))?;
    let event_type = EventType::parse(row.get::<_, &str>(4)).map_err(|_| bad("event type"))?;
    let received_ms: i64 = row.get(5);
    let headers: Vec<(String, String)> =
        serde_json::from_str(row.get::<_, &str>(6)).map_err(|_| bad("headers"))?;
    let body: Vec<u8> = row.get(7);
    let delivery = match row.get::<_, Option<Vec<u8>>>(8) {
        Some(bytes) => Some(decode_delivery(&bytes).map_err(|_| bad("delivery state"))?),
        None => None,
    };
    let event = ValidatedEvent::new(id, source, event_type, received_ms as u64, Bytes::from(body))
        .with_headers(headers);
    Ok((event, delivery))
}
