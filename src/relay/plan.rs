//! What the relay does with one claimed outbox entry in one pass.

use super::{DEFER_DELAY, Pass, RelayPolicy};
use crate::app::LiveConfig;
use crate::event::now_ms;
use crate::publish::{ErrorClass, PublishError};
use crate::store::{
    DeadDestination, Delivery, DestinationState, DlqRecord, OutboxEntry, Outcome, Reason,
    Settlement, Status, UNROUTED,
};
use crate::telemetry::metrics::Metrics;

pub(super) struct Plan {
    pub entry: OutboxEntry,
    pub delivery: Delivery,
    /// The entry came from the unrouted lane: this pass acts on every destination.
    all_lanes: bool,
    /// Otherwise, only on destinations in the lanes it was claimed from.
    lanes: Vec<u8>,
    /// Destinations given up on in this pass, with why.
    dead: Vec<(usize, Reason)>,
}

impl Plan {
    pub fn new(entry: OutboxEntry, live: &LiveConfig, now: u64) -> Self {
        let all_lanes = entry.claimed.iter().any(|&(lane, _)| lane == UNROUTED);
        let lanes = entry.claimed.iter().map(|&(lane, _)| lane).collect();
        let delivery = match entry.delivery.clone().filter(|d| !d.destinations.is_empty()) {
            Some(stored) => stored,
            None => Delivery {
                destinations: live
                    .routes
                    .resolve(&entry.event)
                    .into_iter()
                    .map(|r| DestinationState {
                        name: r.name,
                        ..DestinationState::new(r.target, r.retry)
                    })
                    .collect(),
            },
        };
        let mut plan = Self { entry, delivery, all_lanes, lanes, dead: Vec::new() };
        let age = now.saturating_sub(plan.entry.event.received_at_ms());
        if live.relay.max_age.is_some_and(|max| age > max.as_millis() as u64) {
            for j in 0..plan.delivery.destinations.len() {
                if plan.delivery.destinations[j].is_pending() {
                    plan.give_up(j, Reason::Expired);
                }
            }
        }
        plan
    }

    fn acts_on(&self, s: &DestinationState) -> bool {
        self.all_lanes || self.lanes.contains(&s.target.broker().lane())
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
            Err(e) => match e.class {
                ErrorClass::NotConnected => {
                    metrics.publish_deferred.with_label_values(&[name]).inc();
                    "deferred"
                }
                ErrorClass::Transient => "transient",
                ErrorClass::Unroutable => "unroutable",
                ErrorClass::Permanent => "permanent",
            },
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
    pub fn settle(mut self) -> Settlement {
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
        let mut add_due: Vec<(u8, u64)> = Vec::new();
        for s in self.delivery.destinations.iter().filter(|s| s.is_pending() && self.acts_on(s)) {
            let lane = s.target.broker().lane();
            match add_due.iter_mut().find(|(l, _)| *l == lane) {
                Some((_, due)) => *due = (*due).min(s.next_attempt_ms),
                None => add_due.push((lane, s.next_attempt_ms)),
            }
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
        let outcome = if self.delivery.destinations.iter().any(DestinationState::is_pending) {
            Outcome::Store(self.delivery)
        } else {
            Outcome::Delete
        };
        Settlement { seq, remove_due, add_due, outcome, dead_letter }
    }
}
