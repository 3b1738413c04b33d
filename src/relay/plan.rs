//! What the relay does with one claimed outbox entry in one pass.

use super::{DEFER_DELAY, Pass, RelayPolicy};
use crate::delivery::{
    DeadDestination, Delivery, DestinationState, DlqRecord, Lane, Reason, Status,
};
use crate::event::now_ms;
use crate::live::LiveConfig;
use crate::publish::{ErrorClass, PublishError};
use crate::store::{OutboxEntry, Outcome, Settlement};
use crate::telemetry::metrics::Metrics;

pub(super) struct Plan {
    pub entry: OutboxEntry,
    pub delivery: Delivery,
    /// The lane this pass works on: `Lane::UNROUTED` routes (and publishes nothing); a broker's
    /// lane acts only on that broker's destinations.
    lane: Lane,
    /// Destinations given up on in this pass, with why.
    dead: Vec<(usize, Reason)>,
}

/// At start, for an event waiting on a broker that is no longer configured: its pending
/// destinations there are replaced by what the current route table gives on the configured
/// brokers (destinations already delivered or dead-lettered stay as they are). If the table
/// gives nothing new, the stranded destinations are dead-lettered with reason `no_route`.
/// Runs before the broker workers start, so the record can be replaced whole.
pub(super) fn reroute(
    entry: OutboxEntry,
    live: &LiveConfig,
    configured: &[Lane],
    now: u64,
) -> (Settlement, usize) {
    let seq = entry.seq;
    let old = entry.delivery.clone().unwrap_or_default().destinations;
    let (stranded, mut kept): (Vec<DestinationState>, Vec<DestinationState>) = old
        .into_iter()
        .partition(|s| s.is_pending() && !configured.contains(&s.target.broker().lane()));
    let busy_lanes: Vec<Lane> =
        kept.iter().filter(|s| s.is_pending()).map(|s| s.target.broker().lane()).collect();
    let added: Vec<DestinationState> = live
        .routes
        .resolve(&entry.event)
        .into_iter()
        .filter(|r| configured.contains(&r.target.broker().lane()))
        .filter(|r| !kept.iter().any(|k| k.target == r.target))
        .map(|r| DestinationState { name: r.name, ..DestinationState::new(r.target, r.retry) })
        .collect();
    let rerouted = added.len();
    // Lanes that already hold a due entry for this event pick the new destinations up then.
    let mut add_due: Vec<(Lane, u64)> = added
        .iter()
        .map(|s| s.target.broker().lane())
        .filter(|lane| !busy_lanes.contains(lane))
        .map(|lane| (lane, now))
        .collect();
    add_due.sort_unstable();
    add_due.dedup();
    let dead_letter = (added.is_empty() && !stranded.is_empty()).then(|| DlqRecord {
        event: entry.event.clone(),
        dead_lettered_at_ms: now_ms(),
        reason: Reason::NoRoute,
        destinations: stranded
            .iter()
            .map(|s| DeadDestination {
                state: DestinationState { status: Status::Dead, ..s.clone() },
                reason: Reason::NoRoute,
            })
            .collect(),
    });
    if dead_letter.is_some() {
        tracing::error!(
            event_id = %entry.event.id(),
            "its broker is no longer configured and no current route goes elsewhere; dead-lettering it"
        );
        kept.extend(stranded.into_iter().map(|s| DestinationState { status: Status::Dead, ..s }));
    }
    kept.extend(added);
    let pending = kept.iter().any(|s| s.is_pending());
    let outcome =
        if pending { Outcome::Store(Delivery { destinations: kept }) } else { Outcome::Delete };
    let settlement = Settlement { seq, remove_due: entry.claimed, add_due, outcome, dead_letter };
    (settlement, rerouted)
}

impl Plan {
    pub fn new(entry: OutboxEntry, live: &LiveConfig, now: u64, lane: Lane) -> Self {
        let delivery = match entry.delivery.clone().filter(|d| !d.destinations.is_empty()) {
            Some(stored) => stored,
            None => Delivery::of(live.routes.resolve(&entry.event)),
        };
        let mut plan = Self { entry, delivery, lane, dead: Vec::new() };
        let age = now.saturating_sub(plan.entry.event.received_at_ms());
        if live.relay.max_age.is_some_and(|max| age > max.as_millis() as u64) {
            for j in 0..plan.delivery.destinations.len() {
                let s = &plan.delivery.destinations[j];
                if s.is_pending() && (lane == Lane::UNROUTED || plan.acts_on(s)) {
                    plan.give_up(j, Reason::Expired);
                }
            }
        }
        plan
    }

    /// Whether this pass publishes to `s` (routing passes publish nothing).
    fn acts_on(&self, s: &DestinationState) -> bool {
        self.lane != Lane::UNROUTED && s.target.broker().lane() == self.lane
    }

    /// Indexes of the destinations to publish to now.
    pub fn due_jobs(&self, now: u64) -> impl Iterator<Item = usize> + '_ {
        self.delivery
            .destinations
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.is_pending() && self.acts_on(s) && s.next_attempt_ms <= now)
            .map(|(j, _)| j)
    }

    fn give_up(&mut self, j: usize, reason: Reason) {
        self.delivery.destinations[j].status = Status::Dead;
        self.dead.push((j, reason));
    }

    /// Applies one publish outcome to destination `j`.
    pub fn record(
        &mut self,
        j: usize,
        outcome: Result<(), PublishError>,
        policy: &RelayPolicy,
        now: u64,
        pass: &mut Pass,
        metrics: &Metrics,
    ) {
        let state = &mut self.delivery.destinations[j];
        let name = state.name.as_str();
        let result = match &outcome {
            Ok(()) => "ok",
            Err(e) => {
                if e.class == ErrorClass::NotConnected {
                    metrics.publish_deferred.with_label_values(&[name]).inc();
                }
                e.class.as_str()
            }
        };
        if result != "deferred" {
            metrics.publish_total.with_label_values(&[name, result]).inc();
        }
        if let Err(PublishError { class: ErrorClass::NotConnected, .. }) = outcome {
            pass.deferred += 1;
            state.next_attempt_ms = now + DEFER_DELAY.as_millis() as u64;
            return;
        }
        state.attempts += 1;
        state.last_attempt_ms = now;
        if state.first_attempt_ms == 0 {
            state.first_attempt_ms = now;
        }
        let error = match outcome {
            Ok(()) => {
                let latency = now_ms().saturating_sub(self.entry.event.received_at_ms());
                metrics
                    .publish_latency
                    .with_label_values(&[state.name.as_str()])
                    .observe(latency as f64 / 1000.0);
                pass.delivered += 1;
                state.status = Status::Done;
                state.last_error = None;
                return;
            }
            Err(error) => error,
        };
        pass.failed += 1;
        state.last_error = Some(error.message.clone());
        let max_attempts = state.retry.max_attempts.unwrap_or(policy.max_attempts);
        let give_up = match error.class {
            ErrorClass::Permanent => Some(Reason::Rejected),
            ErrorClass::Unroutable if state.attempts >= max_attempts => Some(Reason::Unroutable),
            _ if state.attempts >= max_attempts => Some(Reason::MaxAttempts),
            _ => None,
        };
        let (event_id, destination) = (self.entry.event.id(), state.target.label());
        let source = self.entry.event.source().as_str();
        match give_up {
            Some(reason) => {
                tracing::error!(
                    %event_id, source, %destination, attempts = state.attempts,
                    reason = reason.as_str(), %error, "dead-lettering the event for this destination"
                );
                self.give_up(j, reason);
            }
            None => {
                metrics.retries.with_label_values(&[state.name.as_str()]).inc();
                let delay = policy.delay(state.attempts, state.retry.backoff_ms);
                state.next_attempt_ms = now + delay.as_millis() as u64;
                tracing::warn!(
                    %event_id, source, %destination, attempts = state.attempts,
                    retry_in_ms = delay.as_millis() as u64, %error, "publish failed; will retry"
                );
            }
        }
    }

    /// The store command for this entry after the pass.
    pub fn settle(mut self, now: u64) -> Settlement {
        let seq = self.entry.seq;
        let remove_due = std::mem::take(&mut self.entry.claimed);
        if self.delivery.destinations.is_empty() {
            tracing::error!(event_id = %self.entry.event.id(), "no route matches the event; dead-lettering it");
            let dead_letter = DlqRecord {
                event: self.entry.event,
                dead_lettered_at_ms: now_ms(),
                reason: Reason::NoRoute,
                destinations: Vec::new(),
            };
            return Settlement {
                seq,
                remove_due,
                add_due: vec![],
                outcome: Outcome::Delete,
                dead_letter: Some(dead_letter),
            };
        }
        let dead_letter = (!self.dead.is_empty()).then(|| DlqRecord {
            event: self.entry.event.clone(),
            dead_lettered_at_ms: now_ms(),
            reason: self.dead[0].1,
            destinations: self
                .dead
                .iter()
                .map(|&(j, reason)| DeadDestination {
                    state: self.delivery.destinations[j].clone(),
                    reason,
                })
                .collect(),
        });
        if self.lane == Lane::UNROUTED {
            // File the event into the lane of every broker it still waits for, due now.
            let mut add_due: Vec<(Lane, u64)> = self
                .delivery
                .destinations
                .iter()
                .filter(|s| s.is_pending())
                .map(|s| (s.target.broker().lane(), now))
                .collect();
            add_due.sort_unstable();
            add_due.dedup();
            let outcome =
                if add_due.is_empty() { Outcome::Delete } else { Outcome::Store(self.delivery) };
            return Settlement { seq, remove_due, add_due, outcome, dead_letter };
        }
        // A broker's pass reports only its own destinations; the store merges them into the
        // current record, so another broker's worker settling the same event loses nothing.
        let mine: Vec<(usize, DestinationState)> = self
            .delivery
            .destinations
            .iter()
            .enumerate()
            .filter(|(_, s)| s.target.broker().lane() == self.lane)
            .map(|(j, s)| (j, s.clone()))
            .collect();
        let next_due =
            mine.iter().filter(|(_, s)| s.is_pending()).map(|(_, s)| s.next_attempt_ms).min();
        let add_due = next_due.map(|due| vec![(self.lane, due)]).unwrap_or_default();
        Settlement { seq, remove_due, add_due, outcome: Outcome::Update(mine), dead_letter }
    }
}
