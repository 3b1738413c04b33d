//! The replicator: copies the store's change feed to PostgreSQL, in batches.
//!
//! Each batch is up to [`BATCH`] feed rows, read in one snapshot with the entries they name
//! ([`crate::store::FeedBatch`]). It becomes one PostgreSQL transaction of at most four
//! multi-row statements (`UNNEST` arrays: upsert and delete of events, upsert and delete of
//! DLQ entries), never one round trip per event. After the commit the feed is trimmed
//! through the batch's last change. An entry that changed several times in a batch costs one
//! row; one that is gone is deleted. Upserts touch only rows this instance still owns
//! (`owner = origin`, not `claimed`): a row a peer has taken over is the peer's to change, and
//! one claimed back from a peer that died mid-takeover is takeover's to finish.
//!
//! While PostgreSQL is unreachable the feed waits in the store (bounded by
//! `store.max_bytes`, like everything else) and the replicator retries with a backoff,
//! logging once when it starts failing and once when it recovers.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use super::{Fleet, SyncError};
use crate::delivery::{DestinationState, Status};
use crate::event::now_ms;
use crate::store::{Change, DlqNow, FeedBatch, OutboxNow, Store};

/// Feed rows per batch (and so per PostgreSQL transaction).
const BATCH: usize = 2000;
/// Waiting for nothing to happen: the longest sleep between two looks at the feed.
const IDLE: Duration = Duration::from_secs(1);
/// With `ack: local`, how long the replicator lets changes gather after it is woken.
const LINGER: Duration = Duration::from_millis(50);
/// The longest a batch may take in PostgreSQL before it counts as failed.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The columns and rows of an insert into `events`, from the arrays of [`EventColumns::params`]
/// (ids and times in PostgreSQL's binary forms, so neither side formats or parses them).
const EVENT_ROWS: &str = "(origin, seq, event_id, source, event_type, received_at, headers, body,
                           destinations, delivery, owner)
     SELECT $1, u.seq, u.id, u.source, u.event_type, u.received_at, u.headers::jsonb, u.body,
            u.destinations::jsonb, u.delivery, $1
     FROM UNNEST($2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                 $7::text[], $8::bytea[], $9::text[], $10::bytea[])
          AS u(seq, id, source, event_type, received_at, headers, body, destinations, delivery)";

/// Replicates until `stop`.
pub(super) async fn run(fleet: Fleet, store: Store, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut failing_since: Option<Instant> = None;
    // The next batch, read from the store while the last one was in PostgreSQL.
    let mut next: Option<FeedBatch> = None;
    loop {
        let batch = match next.take() {
            Some(batch) => Ok(batch),
            None => store.change_feed(BATCH).await.map_err(SyncError::from),
        };
        let result = match batch {
            Ok(batch) => {
                // A backlog (catch-up): read the following rows meanwhile, so the store's
                // reads and PostgreSQL's writes overlap instead of taking turns.
                let after = batch.through.filter(|_| batch.rows > BATCH as u64);
                let read_ahead = async {
                    match after {
                        Some(after) => store.change_feed_after(after, BATCH).await.ok(),
                        None => None,
                    }
                };
                let (result, ahead) = tokio::join!(
                    tokio::time::timeout(STATEMENT_TIMEOUT, once(&fleet, &store, batch)),
                    read_ahead
                );
                match result {
                    Ok(Ok(more)) => {
                        next = ahead.filter(|b| b.through.is_some());
                        Ok(more)
                    }
                    Ok(Err(error)) => Err(error),
                    Err(_) => {
                        Err(SyncError::Unanswered("PostgreSQL did not answer within 15 s".into()))
                    }
                }
            }
            Err(error) => Err(error),
        };
        fleet.note_lag(&store).await;
        let metrics = &fleet.inner.metrics;
        let wait = match result {
            Ok(more) => {
                metrics.sync_batches.with_label_values(&["ok"]).inc();
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        outage_s = since.elapsed().as_secs(),
                        "replication to PostgreSQL resumed"
                    );
                }
                backoff = BACKOFF_MIN;
                if more {
                    continue;
                }
                None
            }
            Err(error) => {
                metrics.sync_batches.with_label_values(&["failed"]).inc();
                if failing_since.is_none() {
                    tracing::error!(
                        %error,
                        "replication to PostgreSQL failed; changes wait in the store"
                    );
                    failing_since = Some(Instant::now());
                }
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                Some(wait)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = store.fed(), if wait.is_none() => {
                // With `ack: local` nobody waits: let an event's first changes (accepted,
                // then routed a moment later) reach PostgreSQL as one row.
                if !fleet.acks_with_fleet() {
                    tokio::time::sleep(LINGER).await;
                }
            }
            _ = tokio::time::sleep(wait.unwrap_or(IDLE)) => {}
        }
    }
}

/// Replicates one batch read from the feed; returns whether more rows wait.
async fn once(fleet: &Fleet, store: &Store, batch: FeedBatch) -> Result<bool, SyncError> {
    let Some(through) = batch.through else { return Ok(false) };
    let inner = &fleet.inner;
    let rows =
        Rows::of(&batch.changes, inner.held_below.load(std::sync::atomic::Ordering::Acquire));
    let mut client = inner.pool.get().await?;
    fleet.ensure_migrated(&mut client).await?;
    let schema = &inner.schema;
    let me = &inner.instance_id;
    let txn = client.transaction().await?;
    if rows.reset {
        execute(
            &txn,
            &format!(
                "DELETE FROM {schema}.events WHERE origin = $1 AND owner = $1 AND NOT claimed"
            ),
            &[me],
        )
        .await?;
        execute(&txn, &format!("DELETE FROM {schema}.dlq WHERE origin = $1 AND owner = $1"), &[me])
            .await?;
    }
    // Raised before the statements: from here on these may be in PostgreSQL (see
    // `Fleet::may_publish`), and if the batch fails they are sent again as upserts.
    let fresh = &rows.fresh;
    if let Some(&last) = rows.events.seq.iter().chain(&fresh.seq).max() {
        inner.held_below.fetch_max(last as u64 + 1, std::sync::atomic::Ordering::AcqRel);
    }
    if !fresh.seq.is_empty() {
        // Never sent before: a plain insert, which costs PostgreSQL less than an upsert's
        // speculative insertion. A row that is there after all fails the batch, which is
        // retried as upserts; only a row a peer has claimed can be (`Reset` deletes this
        // instance's own), and the upsert leaves that one to the peer, as it always did.
        execute(&txn, &format!("INSERT INTO {schema}.events {EVENT_ROWS}"), &fresh.params(me))
            .await?;
    }
    let e = &rows.events;
    if !e.seq.is_empty() {
        execute(
            &txn,
            &format!(
                "INSERT INTO {schema}.events AS t {EVENT_ROWS}
                 ON CONFLICT (origin, seq) DO UPDATE SET
                     destinations = EXCLUDED.destinations,
                     delivery = EXCLUDED.delivery,
                     updated_at = now()
                 WHERE t.owner = t.origin AND NOT t.claimed"
            ),
            &e.params(me),
        )
        .await?;
    }
    if !rows.events_gone.is_empty() {
        execute(
            &txn,
            &format!(
                "DELETE FROM {schema}.events
                 WHERE origin = $1 AND owner = $1 AND NOT claimed AND seq = ANY($2::bigint[])"
            ),
            &[me, &rows.events_gone],
        )
        .await?;
    }
    let d = &rows.dlq;
    if !d.seq.is_empty() {
        execute(
            &txn,
            &format!(
                "INSERT INTO {schema}.dlq AS t (origin, dlq_seq, event_id, source, event_type,
                     received_at, dead_lettered_at, reason, destinations, record, owner)
                 SELECT $1, u.seq, u.id::uuid, u.source, u.event_type,
                        to_timestamp(u.ms / 1000.0), to_timestamp(u.dead_ms / 1000.0),
                        u.reason, u.destinations::jsonb, u.record, $1
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                             $7::bigint[], $8::text[], $9::text[], $10::bytea[])
                      AS u(seq, id, source, event_type, ms, dead_ms, reason, destinations, record)
                 ON CONFLICT (origin, dlq_seq) DO UPDATE SET
                     reason = EXCLUDED.reason,
                     destinations = EXCLUDED.destinations,
                     record = EXCLUDED.record,
                     updated_at = now()
                 WHERE t.owner = t.origin"
            ),
            &[
                me,
                &d.seq,
                &d.id,
                &d.source,
                &d.event_type,
                &d.received_ms,
                &d.dead_ms,
                &d.reason,
                &d.destinations,
                &d.record,
            ],
        )
        .await?;
    }
    if !rows.dlq_gone.is_empty() {
        execute(
            &txn,
            &format!(
                "DELETE FROM {schema}.dlq
                 WHERE origin = $1 AND owner = $1 AND dlq_seq = ANY($2::bigint[])"
            ),
            &[me, &rows.dlq_gone],
        )
        .await?;
    }
    txn.commit().await?;
    // Every change through `through` is in PostgreSQL now (the feed is read in order, and
    // earlier rows were trimmed after their own commits): `ack: fleet` requests waiting on
    // them are answered before the trim.
    fleet.mark_replicated(through + 1);
    store.trim_change_feed(through).await?;
    let count = |table: &str, op: &str, n: usize| {
        inner.metrics.sync_replicated.with_label_values(&[table, op]).inc_by(n as u64);
    };
    // A first insert counts as an upsert too (the metric's `op` says written or deleted).
    count("events", "upsert", fresh.seq.len() + e.seq.len());
    count("events", "delete", rows.events_gone.len());
    count("dlq", "upsert", d.seq.len());
    count("dlq", "delete", rows.dlq_gone.len());
    Ok(batch.rows > BATCH as u64)
}

/// Runs one statement, parsed and planned once per connection (the pool's statement cache),
/// not once per batch.
async fn execute(
    txn: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = txn.prepare_cached(sql).await?;
    txn.execute(&statement, params).await
}

/// One batch as the column arrays of its statements, borrowing from the feed batch.
#[derive(Default)]
struct Rows<'a> {
    reset: bool,
    /// Events never sent to PostgreSQL by this process (seq at or above `held_below`).
    fresh: EventColumns<'a>,
    /// Events that may be there already.
    events: EventColumns<'a>,
    events_gone: Vec<i64>,
    dlq: DlqColumns<'a>,
    dlq_gone: Vec<i64>,
}

#[derive(Default)]
struct EventColumns<'a> {
    seq: Vec<i64>,
    id: Vec<uuid::Uuid>,
    source: Vec<&'a str>,
    event_type: Vec<&'a str>,
    received_at: Vec<SystemTime>,
    headers: Vec<String>,
    body: Vec<&'a [u8]>,
    destinations: Vec<Option<String>>,
    delivery: Vec<Option<&'a [u8]>>,
}

#[derive(Default)]
struct DlqColumns<'a> {
    seq: Vec<i64>,
    id: Vec<String>,
    source: Vec<&'a str>,
    event_type: Vec<&'a str>,
    received_ms: Vec<i64>,
    dead_ms: Vec<i64>,
    reason: Vec<&'static str>,
    destinations: Vec<String>,
    record: Vec<&'a [u8]>,
}

impl<'a> Rows<'a> {
    /// The batch's changes; outbox entries from `fresh_from` on are new to PostgreSQL.
    fn of(changes: &'a [Change], fresh_from: u64) -> Rows<'a> {
        let mut rows = Rows::default();
        for change in changes {
            match change {
                Change::Reset => rows.reset = true,
                Change::Outbox { seq, now: None } => rows.events_gone.push(*seq as i64),
                Change::Outbox { seq, now: Some(now) } if *seq >= fresh_from => {
                    rows.fresh.push(*seq, now)
                }
                Change::Outbox { seq, now: Some(now) } => rows.events.push(*seq, now),
                Change::Dlq { seq, now: None } => rows.dlq_gone.push(*seq as i64),
                Change::Dlq { seq, now: Some(now) } => rows.dlq.push(*seq, now),
            }
        }
        rows
    }
}

impl<'a> EventColumns<'a> {
    /// `$1` (this instance) and the column arrays, as [`EVENT_ROWS`] takes them.
    fn params<'p>(&'p self, me: &'p String) -> [&'p (dyn ToSql + Sync); 10] {
        [
            me,
            &self.seq,
            &self.id,
            &self.source,
            &self.event_type,
            &self.received_at,
            &self.headers,
            &self.body,
            &self.destinations,
            &self.delivery,
        ]
    }

    fn push(&mut self, seq: u64, now: &'a OutboxNow) {
        let event = &now.event;
        self.seq.push(seq as i64);
        self.id.push(uuid::Uuid::from_bytes(*event.id().as_bytes()));
        self.source.push(event.source().as_str());
        self.event_type.push(event.event_type().as_str());
        self.received_at.push(UNIX_EPOCH + Duration::from_millis(event.received_at_ms()));
        self.headers.push(serde_json::to_string(event.headers()).expect("strings serialize"));
        self.body.push(event.body());
        self.destinations.push(now.delivery.as_ref().map(|d| {
            let states = d.destinations.iter().map(|state| Destination::of(state, None));
            serde_json::to_string(&states.collect::<Vec<_>>()).expect("strings serialize")
        }));
        self.delivery.push(now.delivery_record.as_deref());
    }
}

impl<'a> DlqColumns<'a> {
    fn push(&mut self, seq: u64, now: &'a DlqNow) {
        let entry = &now.entry;
        let event = &entry.event;
        self.seq.push(seq as i64);
        self.id.push(event.id().to_string());
        self.source.push(event.source().as_str());
        self.event_type.push(event.event_type().as_str());
        self.received_ms.push(event.received_at_ms() as i64);
        self.dead_ms.push(entry.dead_lettered_at_ms as i64);
        self.reason.push(entry.reason.as_str());
        let destinations = entry
            .destinations
            .iter()
            .map(|dead| Destination::of(&dead.state, Some(dead.reason.as_str())));
        self.destinations.push(
            serde_json::to_string(&destinations.collect::<Vec<_>>()).expect("strings serialize"),
        );
        self.record.push(&now.record);
    }
}

/// One destination's state, as the `destinations` column shows it.
#[derive(serde::Serialize)]
struct Destination<'a> {
    name: &'a str,
    target: String,
    status: &'static str,
    attempts: u32,
    last_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl<'a> Destination<'a> {
    fn of(state: &'a DestinationState, reason: Option<&'static str>) -> Self {
        let status = match state.status {
            Status::Pending => "pending",
            Status::Done => "done",
            Status::Dead => "dead",
        };
        Destination {
            name: &state.name,
            target: state.target.label(),
            status,
            attempts: state.attempts,
            last_error: state.last_error.as_deref(),
            reason,
        }
    }
}

impl Fleet {
    /// Every change below `mark` is in PostgreSQL.
    fn mark_replicated(&self, mark: u64) {
        self.inner.replicated.send_if_modified(|replicated| {
            let moved = mark > *replicated;
            *replicated = (*replicated).max(mark);
            moved
        });
    }

    /// Exports how far behind replication is.
    pub(super) async fn note_lag(&self, store: &Store) {
        let Ok(lag) = store.change_feed_lag().await else { return };
        let seconds = lag.oldest_ms.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
        let metrics = &self.inner.metrics;
        metrics.sync_lag_events.set(lag.rows as i64);
        metrics.sync_lag_seconds.set(seconds);
        // Every change below the oldest row still waiting (or below the next change, when
        // none waits) is in PostgreSQL; read in one snapshot, so no change slips between.
        self.mark_replicated(lag.oldest_change.unwrap_or(lag.next_change));
        let mut state = self.inner.state.lock().expect("sync state lock");
        state.lag_events = lag.rows;
        state.lag_seconds = seconds;
    }
}
