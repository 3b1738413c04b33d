//! The relay: moves events from the outbox to their destinations, or to the DLQ.
//!
//! Independent workers, one per lane. Ingest routes events and files them into the lane of
//! each broker they go to in the append's own commit; the routing worker routes the events
//! stored unrouted (taken over from a peer without a route, replayed `no_route` entries,
//! files written before routing moved to ingest) the same way. Each broker's worker claims
//! only its own lane, publishes the due destinations concurrently and settles its batch in
//! one store command. A slow or failing broker therefore never holds up another one, and a
//! disconnected broker's worker does not even read its backlog.
//!
//! Per destination: a confirm marks it done; a broker found disconnected mid-pass defers it
//! without counting an attempt; a transient or unroutable failure is retried with backoff
//! until its `max_attempts`; a permanent failure, exhausted attempts or `relay.max_age` move
//! it to the DLQ in the same transaction. A destination that confirmed is
//! never published again because a sibling failed. Only when nothing is pending any more does
//! the event leave the outbox.

mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::delivery::{BrokerKind, DlqRecord, Lane};
use crate::event::clock_ms;
use crate::live::LiveConfig;
use crate::publish::{Outgoing, PublishError, Publishers};
use crate::routing::RelayPolicy;
use crate::store::{Claim, Outcome, Settlement, Store, StoreError};
use crate::sync::Fleet;
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::Spans;
use plan::Plan;

/// While a broker is disconnected mid-pass its events wait this long (no attempt counted); a
/// reconnect wakes the relay sooner.
const DEFER_DELAY: Duration = Duration::from_secs(2);
/// Longest idle sleep; a safety net, since appends and reconnects wake the relay anyway.
const MAX_IDLE: Duration = Duration::from_secs(5);
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How long an event that this instance may not publish yet (fleet sync: lease lapsed or not
/// reconciled) waits before it is looked at again.
const FENCED_DELAY: Duration = Duration::from_millis(500);
/// Passes a broker's worker keeps in flight at once (see [`Relay::publish_loop`]).
const PASSES_IN_FLIGHT: usize = 2;

/// What one pass did; tests drive the relay pass by pass and assert on this.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    /// Events routed (filed into broker lanes) by the routing worker.
    pub routed: usize,
    pub delivered: usize,
    pub failed: usize,
    pub deferred: usize,
    pub dead_lettered: usize,
    pub next_due_ms: Option<u64>,
}

pub struct Relay {
    store: Store,
    live: Arc<ArcSwap<LiveConfig>>,
    publishers: Publishers,
    metrics: Arc<Metrics>,
    /// Where the workers and the dead-letter copies run.
    tasks: Tasks,
    /// With fleet sync: events that may be in PostgreSQL wait while this instance may not
    /// publish them (its lease lapsed, or a peer may have taken them over).
    fleet: Option<Fleet>,
    /// Where publish spans go (`telemetry.otlp`).
    spans: Spans,
}

impl Relay {
    pub fn new(
        store: Store,
        live: Arc<ArcSwap<LiveConfig>>,
        publishers: Publishers,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Self {
        Self { store, live, publishers, metrics, tasks, fleet: None, spans: Spans::off() }
    }

    /// Records a span of each publish attempt of a recorded trace.
    pub fn with_spans(mut self, spans: Spans) -> Self {
        self.spans = spans;
        self
    }

    /// Publishes only what [`Fleet::may_publish`] allows.
    pub fn with_fleet(mut self, fleet: Option<Fleet>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Runs the routing worker and one worker per configured broker (each a task of its own)
    /// until `cancel`; each finishes the pass it is in first.
    pub async fn run(self, cancel: CancellationToken) {
        if let Err(error) = self.reroute_stranded().await {
            tracing::error!(%error, "re-routing events of removed brokers failed; they stay queued");
        }
        let relay = Arc::new(self);
        let tasks = relay.tasks.clone();
        let mut workers = vec![
            tasks.spawn("relay: routing worker", Arc::clone(&relay).route_loop(cancel.clone())),
        ];
        for broker in BrokerKind::ALL {
            if relay.publishers.get(broker).is_some() {
                let worker = Arc::clone(&relay).publish_loop(broker, cancel.clone());
                workers.push(tasks.spawn(format!("relay: {} worker", broker.as_str()), worker));
            }
        }
        for worker in workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "a relay worker panicked");
            }
        }
        tracing::info!("relay stopped");
    }

    /// Events still waiting on a broker that is no longer configured (removed from
    /// `brokers:`, then a restart) would wait forever: they go where the current routes send
    /// them, or to the DLQ (see [`plan::reroute`]). Runs once, before the workers start.
    async fn reroute_stranded(&self) -> Result<(), StoreError> {
        let (configured, stranded): (Vec<BrokerKind>, Vec<BrokerKind>) =
            BrokerKind::ALL.into_iter().partition(|&b| self.publishers.get(b).is_some());
        if stranded.is_empty() {
            return Ok(());
        }
        let configured: Vec<Lane> = configured.into_iter().map(BrokerKind::lane).collect();
        let lanes: Vec<Lane> = stranded.into_iter().map(BrokerKind::lane).collect();
        let (mut events, mut rerouted) = (0, 0);
        loop {
            let batch_size = self.live.load().relay.batch_size;
            // Not `u64::MAX`: entries held for a takeover are never due.
            let claim = self.store.claim_due(u64::MAX - 1, batch_size, lanes.clone()).await?;
            if claim.entries.is_empty() {
                break;
            }
            let live = self.live.load_full();
            let now = clock_ms();
            let mut settlements = Vec::with_capacity(claim.entries.len());
            for entry in claim.entries {
                let (settlement, n) = plan::reroute(entry, &live, &configured, now);
                rerouted += n;
                events += 1;
                if let Some(record) = &settlement.dead_letter {
                    self.metrics.dead_lettered.with_label_values(&[record.reason.as_str()]).inc();
                }
                settlements.push(settlement);
            }
            self.store.settle(settlements).await?;
        }
        if events > 0 {
            tracing::warn!(
                events,
                new_destinations = rerouted,
                "events waiting on brokers that are no longer configured were re-routed"
            );
        }
        Ok(())
    }

    async fn route_loop(self: Arc<Self>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let wait = match self.run_lane(Lane::UNROUTED).await {
                Ok(pass) if pass.routed + pass.dead_lettered > 0 => continue,
                Ok(pass) => until(pass.next_due_ms),
                Err(error) => {
                    tracing::error!(%error, "routing pass failed");
                    ERROR_PAUSE
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.store.filed(Lane::UNROUTED) => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A broker's worker. It keeps up to [`PASSES_IN_FLIGHT`] passes going: while one waits
    /// for its confirms, the next is claimed (passing over the events in flight) and
    /// published, so the broker does not sit idle while a batch settles and the next is read.
    async fn publish_loop(self: Arc<Self>, broker: BrokerKind, cancel: CancellationToken) {
        let lane = broker.lane();
        let mut passes = tokio::task::JoinSet::new();
        // The events each pass in flight holds, by task, until it has settled.
        let mut holding: HashMap<tokio::task::Id, Vec<u64>> = HashMap::new();
        // No new claim before this: the broker was found disconnected, or a pass failed.
        let mut pause_until = Instant::now();
        while !cancel.is_cancelled() {
            // Registered before the broker is looked at: a reconnect announced in between
            // (`notify_waiters` wakes only those already waiting) still ends the wait.
            let reconnected = self.publishers.connected.notified();
            tokio::pin!(reconnected);
            reconnected.as_mut().enable();
            let connected = self.publishers.get(broker).is_some_and(|p| p.is_connected());
            let wait = if !connected {
                // Nothing to claim while down: wait for the reconnect (or look again soon).
                DEFER_DELAY
            } else if Instant::now() < pause_until {
                pause_until - Instant::now()
            } else if passes.len() >= PASSES_IN_FLIGHT {
                MAX_IDLE // until a pass finishes
            } else {
                let batch_size = self.live.load().relay.batch_size;
                // Taken before the claim reads (see `Store::claim_due_except`).
                let skip: HashSet<u64> = holding.values().flatten().copied().collect();
                match self.store.claim_due_except(clock_ms(), batch_size, lane, skip).await {
                    Ok(claim) if claim.is_empty() => until(claim.next_due_ms),
                    Ok(claim) => {
                        let seqs: Vec<u64> = claim.seqs().collect();
                        let relay = Arc::clone(&self);
                        let pass = passes.spawn(async move { relay.deliver(lane, claim).await });
                        holding.insert(pass.id(), seqs);
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, broker = broker.as_str(), "relay claim failed");
                        pause_until = Instant::now() + ERROR_PAUSE;
                        ERROR_PAUSE
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = passes.join_next_with_id(), if !passes.is_empty() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(error) => error.id(),
                    };
                    holding.remove(&id);
                    let name = broker.as_str();
                    match done {
                        Ok((_, Ok(pass))) if pass.deferred == 0 => {}
                        Ok((_, Ok(_))) => pause_until = Instant::now() + DEFER_DELAY,
                        Ok((_, Err(error))) => {
                            tracing::error!(%error, broker = name, "relay pass failed");
                            pause_until = Instant::now() + ERROR_PAUSE;
                        }
                        Err(error) => {
                            tracing::error!(%error, broker = name, "relay pass panicked");
                            pause_until = Instant::now() + ERROR_PAUSE;
                        }
                    }
                }
                _ = self.store.filed(lane) => {}
                // A reconnect ends a pause for a broker found disconnected.
                _ = &mut reconnected => pause_until = Instant::now(),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // The passes in flight finish (publishes have their own deadlines) and settle, so that
        // what the broker confirmed is not published again after a restart.
        while passes.join_next().await.is_some() {}
    }

    /// One routing pass, then one pass of each connected broker's lane. Tests drive the
    /// relay with this, pass by pass.
    pub async fn run_once(&self) -> Result<Pass, StoreError> {
        let mut total = self.run_lane(Lane::UNROUTED).await?;
        for broker in BrokerKind::ALL {
            if self.publishers.get(broker).is_some_and(|p| p.is_connected()) {
                let pass = self.run_lane(broker.lane()).await?;
                total.claimed += pass.claimed;
                total.delivered += pass.delivered;
                total.failed += pass.failed;
                total.deferred += pass.deferred;
                total.dead_lettered += pass.dead_lettered;
                total.next_due_ms = match (total.next_due_ms, pass.next_due_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(total)
    }

    /// One claim → (route | publish) → settle pass over one lane.
    pub async fn run_lane(&self, lane: Lane) -> Result<Pass, StoreError> {
        let batch_size = self.live.load().relay.batch_size;
        let claim = self.store.claim_due(clock_ms(), batch_size, vec![lane]).await?;
        self.deliver(lane, claim).await
    }

    /// Routes (the routing lane) or publishes (a broker's lane) what `claim` holds, then
    /// settles all of it in one store command.
    async fn deliver(&self, lane: Lane, claim: Claim) -> Result<Pass, StoreError> {
        // The snapshot for the whole pass is taken after the claim: an event accepted after a
        // reload is never routed with the table from before it.
        let live = self.live.load_full();
        let policy = &live.relay;
        let now = clock_ms();
        let mut pass = Pass {
            claimed: claim.entries.len(),
            next_due_ms: claim.next_due_ms,
            ..Pass::default()
        };
        let mut settlements = set_aside(policy, &claim, now);
        let mut entries = claim.entries;
        if let Some(fleet) = self.fleet.as_ref().filter(|_| lane != Lane::UNROUTED) {
            let (free, fenced): (Vec<_>, Vec<_>) =
                entries.into_iter().partition(|e| fleet.may_publish(e.seq));
            entries = free;
            pass.deferred += fenced.len();
            let later = now + FENCED_DELAY.as_millis() as u64;
            settlements.extend(fenced.into_iter().map(|e| Settlement {
                seq: e.seq,
                remove_due: e.claimed.clone(),
                add_due: e.claimed.iter().map(|&(lane, _)| (lane, later)).collect(),
                outcome: Outcome::Keep,
                dead_letter: None,
            }));
        }
        let mut plans: Vec<Plan> =
            entries.into_iter().map(|entry| Plan::new(entry, &live, now, lane)).collect();

        let jobs: Vec<(usize, usize)> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, plan)| plan.due_jobs(now).map(move |j| (i, j)))
            .collect();
        let record_spans = live.otlp.is_some();
        let outcomes = join_all(jobs.iter().map(|&(i, j)| {
            let plan = &plans[i];
            let destination = &plan.delivery.destinations[j];
            let target = &destination.target;
            async move {
                let Some(publisher) = self.publishers.get(target.broker()) else {
                    return Err(PublishError::permanent(format!(
                        "broker {} is not configured",
                        target.broker().as_str()
                    )));
                };
                let message = Outgoing::new(&plan.entry.event, target);
                // Read the clock only when a span may be recorded: this is the relay's loop.
                let started = record_spans.then(std::time::SystemTime::now);
                let outcome = publisher.publish(message).await;
                if let Some(started) = started
                    && let Some(span) = message.span(destination.attempts + 1, started, &outcome)
                {
                    self.spans.record(span);
                }
                outcome
            }
        }))
        .await;

        let now = clock_ms();
        for (&(i, j), outcome) in jobs.iter().zip(outcomes) {
            plans[i].record(j, outcome, policy, now, &mut pass, &self.metrics);
        }
        let mut dead_letters = Vec::new();
        for plan in plans {
            let settlement = plan.settle(now);
            if lane == Lane::UNROUTED {
                pass.routed += 1;
            }
            if let Some(dead) = &settlement.dead_letter {
                pass.dead_lettered += 1;
                for reason in dead
                    .destinations
                    .iter()
                    .map(|d| d.reason)
                    .chain(dead.destinations.is_empty().then_some(dead.reason))
                {
                    self.metrics.dead_lettered.with_label_values(&[reason.as_str()]).inc();
                }
                dead_letters.push(dead.clone());
            }
            settlements.push(settlement);
        }
        if !settlements.is_empty() {
            // The store wakes the workers of the lanes this files events into.
            self.store.settle(settlements).await?;
        }
        if !dead_letters.is_empty() {
            self.copy_dead_letters(&live, dead_letters);
        }
        Ok(pass)
    }

    /// `dlq.publish_to`: a best-effort copy of each dead-lettered event, after the DLQ commit.
    /// The DLQ in the store stays the record; a failed copy is logged, not retried.
    fn copy_dead_letters(&self, live: &LiveConfig, dead: Vec<DlqRecord>) {
        let copies: Vec<_> = dead
            .into_iter()
            .filter_map(|r| live.routes.dlq_copy_target(&r.event).map(|t| (r, t)))
            .collect();
        if copies.is_empty() {
            return;
        }
        let publishers = self.publishers.clone();
        let metrics = Arc::clone(&self.metrics);
        self.tasks.spawn("relay: dead-letter copies", async move {
            for (record, target) in copies {
                let Some(publisher) = publishers.get(target.broker()) else { continue };
                let first = record.destinations.first();
                let headers = [
                    ("x-orchestron-dlq-reason", record.reason.as_str().to_owned()),
                    (
                        "x-orchestron-dlq-destination",
                        first.map(|d| d.state.target.label()).unwrap_or_default(),
                    ),
                    (
                        "x-orchestron-dlq-error",
                        first.and_then(|d| d.state.last_error.clone()).unwrap_or_default(),
                    ),
                ];
                let message = Outgoing::new(&record.event, &target).with_extra_headers(&headers);
                if let Err(error) = publisher.publish(message).await {
                    metrics.dlq_copy_failures.inc();
                    tracing::warn!(
                        event_id = %record.event.id(), destination = %target.label(), %error,
                        "could not publish the dead-letter copy; the DLQ entry is kept"
                    );
                }
            }
        });
    }
}

/// How long to sleep until `next_due_ms` (bounded by `MAX_IDLE`).
fn until(next_due_ms: Option<u64>) -> Duration {
    next_due_ms
        .map(|due| Duration::from_millis(due.saturating_sub(clock_ms())))
        .unwrap_or(MAX_IDLE)
        .min(MAX_IDLE)
}

/// Entries the store could not read are kept and looked at again every `backoff.max`; index
/// entries without an event are dropped.
fn set_aside(policy: &RelayPolicy, claim: &Claim, now: u64) -> Vec<Settlement> {
    let later = now + policy.backoff_max.as_millis() as u64;
    let unreadable = claim.unreadable.iter().map(|(seq, claimed, error)| {
        tracing::error!(seq, %error, "outbox entry unreadable; kept in the store and skipped");
        Settlement {
            seq: *seq,
            remove_due: claimed.clone(),
            add_due: claimed.iter().map(|&(lane, _)| (lane, later)).collect(),
            outcome: Outcome::Keep,
            dead_letter: None,
        }
    });
    let orphans = claim.orphans.iter().map(|&(seq, due)| {
        tracing::warn!(seq, "due index named a missing event; index entry dropped");
        Settlement {
            seq,
            remove_due: vec![due],
            add_due: vec![],
            outcome: Outcome::Keep,
            dead_letter: None,
        }
    });
    unreadable.chain(orphans).collect()
}

#[cfg(test)]
mod tests;
