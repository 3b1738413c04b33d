//! The relay: moves events from the outbox to their destinations.
//!
//! One pass claims the due entries (oldest first, O(batch)), routes the ones never routed
//! before, publishes every pending destination concurrently, and settles the batch in one
//! store command: an entry whose destinations all confirmed is deleted; the rest are
//! rescheduled, each failed destination with its own backoff. A destination that confirmed is
//! never published again because a sibling failed. Nothing is ever dropped: after
//! `max_attempts` (or a permanent error) an event is kept and retried every `backoff.max`.

mod backoff;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::app::LiveConfig;
use crate::event::now_ms;
use crate::publish::{ErrorClass, PublishError, Publishers};
use crate::store::{Delivery, DestinationState, OutboxEntry, Settlement, Store, StoreError};

pub use backoff::RelayPolicy;

/// While a broker is disconnected its events wait this long between checks (no attempt is
/// counted); a reconnect wakes the relay sooner.
const DEFER_DELAY: Duration = Duration::from_secs(2);
/// Longest idle sleep; a safety net, since appends and reconnects wake the relay anyway.
const MAX_IDLE: Duration = Duration::from_secs(5);
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What one pass did; tests drive the relay pass by pass and assert on this.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    pub delivered: usize,
    pub failed: usize,
    pub deferred: usize,
    pub next_due_ms: Option<u64>,
}

pub struct Relay {
    store: Store,
    live: Arc<ArcSwap<LiveConfig>>,
    publishers: Publishers,
}

impl Relay {
    pub fn new(store: Store, live: Arc<ArcSwap<LiveConfig>>, publishers: Publishers) -> Self {
        Self { store, live, publishers }
    }

    /// Runs passes until `cancel`; a pass in progress is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let (wait, wake_on_append) = match self.run_once().await {
                // Something was published: there may be more right away.
                Ok(pass) if pass.delivered + pass.failed > 0 => continue,
                // Everything due waits for a broker: new events would wait too, so neither
                // they nor the backlog are worth a pass until a reconnect or the defer delay.
                Ok(pass) if pass.deferred > 0 => (DEFER_DELAY, false),
                Ok(pass) => {
                    let until_due = pass
                        .next_due_ms
                        .map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
                    (until_due.unwrap_or(MAX_IDLE).min(MAX_IDLE), true)
                }
                Err(error) => {
                    tracing::error!(%error, "relay pass failed");
                    (ERROR_PAUSE, false)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.store.appended(), if wake_on_append => {}
                _ = self.publishers.connected.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("relay stopped");
    }

    /// One claim → publish → settle pass.
    pub async fn run_once(&self) -> Result<Pass, StoreError> {
        let live = self.live.load_full();
        let policy = &live.relay;
        let claim = self.store.claim_due(now_ms(), policy.batch_size).await?;
        let mut pass = Pass {
            claimed: claim.entries.len(),
            next_due_ms: claim.next_due_ms,
            ..Pass::default()
        };
        let mut settlements = set_aside(policy, &claim);
        if claim.entries.is_empty() {
            if !settlements.is_empty() {
                self.store.settle(settlements).await?;
            }
            return Ok(pass);
        }
        let now = now_ms();
        let mut deliveries: Vec<Delivery> =
            claim.entries.iter().map(|entry| self.delivery_for(&live, entry)).collect();

        // Every pending destination whose time has come, published concurrently.
        let jobs: Vec<(usize, usize)> = deliveries
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                d.destinations
                    .iter()
                    .enumerate()
                    .filter(move |(_, s)| !s.done && s.next_attempt_ms <= now)
                    .map(move |(j, _)| (i, j))
            })
            .collect();
        let outcomes = join_all(jobs.iter().map(|&(i, j)| {
            let event = &claim.entries[i].event;
            let target = &deliveries[i].destinations[j].target;
            async move {
                match self.publishers.get(target.broker()) {
                    Some(publisher) => publisher.publish(event, target).await,
                    None => Err(PublishError::permanent(format!(
                        "broker {} is no longer configured",
                        target.broker().as_str()
                    ))),
                }
            }
        }))
        .await;

        let now = now_ms();
        for (&(i, j), outcome) in jobs.iter().zip(outcomes) {
            let entry = &claim.entries[i];
            let state = &mut deliveries[i].destinations[j];
            match outcome {
                Ok(()) => {
                    pass.delivered += 1;
                    state.done = true;
                    state.attempts += 1;
                    state.last_error = None;
                }
                Err(error) if error.class == ErrorClass::NotConnected => {
                    pass.deferred += 1;
                    state.next_attempt_ms = now + DEFER_DELAY.as_millis() as u64;
                }
                Err(error) => {
                    pass.failed += 1;
                    record_failure(policy, entry, state, &error, now);
                }
            }
        }
        settlements.extend(
            claim
                .entries
                .iter()
                .zip(deliveries)
                .map(|(entry, delivery)| settle(policy, entry, delivery, now)),
        );
        self.store.settle(settlements).await?;
        Ok(pass)
    }

    /// The stored delivery state, or a fresh one routed from the current table.
    fn delivery_for(&self, live: &LiveConfig, entry: &OutboxEntry) -> Delivery {
        if let Some(d) = entry.delivery.as_ref().filter(|d| !d.destinations.is_empty()) {
            return d.clone();
        }
        let destinations = live
            .routes
            .resolve(&entry.event)
            .into_iter()
            .map(|target| DestinationState {
                target,
                done: false,
                attempts: 0,
                next_attempt_ms: 0,
                last_error: None,
            })
            .collect();
        Delivery { destinations }
    }
}

/// Entries the store could not read are kept and looked at again every `backoff.max`; index
/// entries without an event are dropped.
fn set_aside(policy: &RelayPolicy, claim: &crate::store::Claim) -> Vec<Settlement> {
    let later = now_ms() + policy.backoff_max.as_millis() as u64;
    let unreadable = claim.unreadable.iter().map(|(seq, due_ms, error)| {
        tracing::error!(seq, %error, "outbox entry unreadable; kept in the store and skipped");
        Settlement::Defer { seq: *seq, due_ms: *due_ms, next_due_ms: later }
    });
    let orphans = claim.orphans.iter().map(|&(seq, due_ms)| {
        tracing::warn!(seq, "due index named a missing event; index entry dropped");
        Settlement::DropIndex { seq, due_ms }
    });
    unreadable.chain(orphans).collect()
}

fn record_failure(
    policy: &RelayPolicy,
    entry: &OutboxEntry,
    state: &mut DestinationState,
    error: &PublishError,
    now: u64,
) {
    state.attempts += 1;
    state.last_error = Some(error.message.clone());
    let exhausted = error.class == ErrorClass::Permanent || state.attempts >= policy.max_attempts;
    let delay = if exhausted { policy.backoff_max } else { policy.delay(state.attempts) };
    state.next_attempt_ms = now + delay.as_millis() as u64;
    let (event_id, destination) = (entry.event.id(), state.target.label());
    if exhausted {
        tracing::error!(
            %event_id, source = entry.event.source().as_str(), %destination,
            attempts = state.attempts, error = %error,
            "delivery keeps failing; the event is kept and retried every {:?}", policy.backoff_max
        );
    } else {
        tracing::warn!(
            %event_id, source = entry.event.source().as_str(), %destination,
            attempts = state.attempts, retry_in_ms = delay.as_millis() as u64, error = %error,
            "publish failed; will retry"
        );
    }
}

fn settle(policy: &RelayPolicy, entry: &OutboxEntry, delivery: Delivery, now: u64) -> Settlement {
    let (seq, due_ms) = (entry.seq, entry.due_ms);
    if delivery.destinations.is_empty() {
        // Routes changed since the event was accepted and nothing matches now: keep it and
        // look again later; it is routed as soon as a route covers it.
        tracing::error!(event_id = %entry.event.id(), "no route matches a pending event; keeping it");
        let next_due_ms = now + policy.backoff_max.as_millis() as u64;
        return Settlement::Reschedule { seq, due_ms, delivery, next_due_ms };
    }
    let next_due_ms =
        delivery.destinations.iter().filter(|s| !s.done).map(|s| s.next_attempt_ms).min();
    match next_due_ms {
        None => {
            tracing::debug!(event_id = %entry.event.id(), "delivered to every destination");
            Settlement::Delete { seq, due_ms }
        }
        Some(next_due_ms) => Settlement::Reschedule { seq, due_ms, delivery, next_due_ms },
    }
}
