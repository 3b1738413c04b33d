//! Relay scheduling under tokio's paused clock, with scripted publishers standing in for the
//! brokers (the integration tests cover the real ones). What is asserted is the schedule: when
//! attempts happen, how far apart, and when an event moves to the DLQ.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;

use super::*;
use crate::config::load_str;
use crate::delivery::{DestinationState, Reason};
use crate::event::{EventId, ValidatedEvent};
use crate::publish::{ErrorClass, Publisher};
use crate::store::DlqFilter;
use crate::testing::Scripted;

const CONFIG: &str = r#"
server: { listen: "127.0.0.1:0" }
store: { path: unused }
brokers:
  rabbitmq: { url: "amqp://unused" }
  kafka: { bootstrap_servers: "unused:9092" }
sources: { default: { api_keys: [k] } }
relay: { max_attempts: 5, backoff: { initial: 1s, max: 8s } }
routes:
  - match: { type: "to.kafka" }
    to: [ { kafka: { topic: t } } ]
  - match: { type: "to.both" }
    to: [ { kafka: { topic: t } }, { rabbitmq: { exchange: x } } ]
default_route:
  to: [ { rabbitmq: { exchange: x, routing_key: "{type}" } } ]
"#;

struct Harness {
    relay: Relay,
    store: Store,
    closer: crate::store::StoreCloser,
    _dir: tempfile::TempDir,
}

async fn harness(rabbit: Arc<Scripted>, kafka: Arc<Scripted>) -> Harness {
    harness_with(CONFIG, rabbit, kafka).await
}

async fn harness_with(
    config: &str,
    rabbit: Arc<dyn Publisher>,
    kafka: Arc<dyn Publisher>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = load_str("t.yaml".as_ref(), config, &[]).unwrap();
    let live = Arc::new(ArcSwap::from_pointee(LiveConfig::build(&config).unwrap()));
    let mut store_config = config.store.clone();
    store_config.path = dir.path().join("o.redb");
    let (store, closer) = Store::open(&store_config).unwrap();
    let publishers =
        Publishers { rabbitmq: Some(rabbit), kafka: Some(kafka), connected: Arc::default() };
    let relay = Relay::new(store.clone(), live, publishers, Arc::default(), Tasks::new());
    Harness { relay, store, closer, _dir: dir }
}

fn event(ty: &str) -> ValidatedEvent {
    crate::testing::event(ty, "{}", clock_ms())
}

async fn dlq_len(store: &Store) -> usize {
    store.dlq_list(DlqFilter::default(), None, 100).await.unwrap().entries.len()
}

/// The delivery state of the only outbox entry, if there is one.
async fn only_state(store: &Store) -> Option<DestinationState> {
    let claim = store.claim_due(u64::MAX, 10, Lane::ALL.to_vec()).await.unwrap();
    claim.entries.first()?.delivery.as_ref()?.destinations.first().cloned()
}

#[tokio::test(start_paused = true)]
async fn transient_failures_follow_the_backoff_schedule_then_dead_letter() {
    let rabbit = Scripted::new(true, Some(ErrorClass::Unroutable));
    let h = harness(rabbit.clone(), Scripted::new(true, None)).await;
    h.store.append(event("any.thing")).await.unwrap();

    // Drive the relay as its loop would: a pass, then sleep until the entry is due again.
    // (The paused clock may jump further while the store works on its own thread; the
    // schedule is therefore read from what the relay stored, and every attempt is checked to
    // come no earlier than it was due.)
    let mut schedule = Vec::new();
    for _ in 0..40 {
        let calls_before = rabbit.calls().len();
        let pass = h.relay.run_once().await.unwrap();
        let attempted = rabbit.calls().len() > calls_before;
        if let (true, Some(&due), Some(&call)) = (attempted, schedule.last(), rabbit.calls().last())
        {
            assert!(call >= due, "attempt at {call} before it was due at {due}");
        }
        if pass.dead_lettered > 0 {
            break;
        }
        assert_eq!(dlq_len(&h.store).await, 0, "nothing in the DLQ before max_attempts");
        let state = only_state(&h.store).await.expect("still in the outbox");
        if schedule.len() < state.attempts as usize {
            // After failure n the delay is between `initial` and min(max, initial * 2^(n-1)).
            let n = state.attempts;
            let gap = state.next_attempt_ms - state.last_attempt_ms;
            let ceiling = (1000u64 << (n - 1)).min(8000);
            assert!((1000..=ceiling).contains(&gap), "delay {gap} ms after attempt {n}");
            schedule.push(state.next_attempt_ms);
        }
        let wait = state.next_attempt_ms.saturating_sub(clock_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    assert_eq!(rabbit.calls().len(), 5, "exactly max_attempts attempts");
    assert_eq!(schedule.len(), 4, "a delay after each of the first four");
    let page = h.store.dlq_list(DlqFilter::default(), None, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    let record = &page.entries[0].record;
    assert_eq!(record.reason, Reason::Unroutable);
    assert_eq!(record.destinations[0].state.attempts, 5);
    assert_eq!(h.store.pending().await.unwrap(), 0);
    h.closer.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_dead_letters_at_once_and_spares_the_healthy_sibling() {
    let kafka = Scripted::new(true, Some(ErrorClass::Permanent));
    let rabbit = Scripted::new(true, None);
    let h = harness(rabbit.clone(), kafka.clone()).await;
    h.store.append(event("to.both")).await.unwrap();
    let pass = h.relay.run_once().await.unwrap();
    assert_eq!((pass.delivered, pass.dead_lettered), (1, 1));
    assert_eq!(kafka.calls().len(), 1, "no retry of a permanent failure");
    let page = h.store.dlq_list(DlqFilter::default(), None, 10).await.unwrap();
    let record = &page.entries[0].record;
    assert_eq!(record.reason, Reason::Rejected);
    assert_eq!(record.destinations.len(), 1, "only the failed destination");
    assert_eq!(h.store.pending().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.relay.run_once().await.unwrap();
    assert_eq!(rabbit.calls().len(), 1, "the healthy destination got it once");
    h.closer.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_down_broker_costs_no_attempts_and_does_not_stall_the_other() {
    let kafka = Scripted::new(false, None);
    let rabbit = Scripted::new(true, None);
    let h = harness(rabbit.clone(), kafka.clone()).await;
    // A Kafka backlog ahead of RabbitMQ traffic.
    for _ in 0..30 {
        h.store.append(event("to.kafka")).await.unwrap();
    }
    let first = h.relay.run_once().await.unwrap();
    assert_eq!((first.routed, first.deferred), (30, 0), "routed; Kafka's lane not even read");
    for _ in 0..5 {
        h.store.append(event("other")).await.unwrap();
    }
    // Kafka stays down for ten minutes: RabbitMQ events flow, Kafka's lane is not even read.
    let mut delivered = 0;
    for _ in 0..10 {
        delivered += h.relay.run_once().await.unwrap().delivered;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(delivered, 5);
    assert_eq!(rabbit.calls().len(), 5);
    assert!(kafka.calls().is_empty());
    assert_eq!(dlq_len(&h.store).await, 0, "an outage is not a failure");
    let stats = h.store.outbox_stats(clock_ms()).await.unwrap();
    let backlog = &stats.destinations[0];
    assert_eq!((backlog.pending, backlog.failed_attempts), (30, 0));

    kafka.connected.store(true, Ordering::Relaxed);
    let mut delivered = 0;
    for _ in 0..5 {
        delivered += h.relay.run_once().await.unwrap().delivered;
    }
    assert_eq!(delivered, 30);
    assert_eq!(h.store.pending().await.unwrap(), 0);
    h.closer.close().await;
}

/// A broker stand-in whose publishes wait until the gate opens, recording each event id.
struct Gated {
    gate: tokio::sync::Semaphore,
    published: Mutex<Vec<EventId>>,
}

impl Publisher for Gated {
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            self.published.lock().unwrap().push(message.event.id());
            let _open = self.gate.acquire().await.expect("the gate is never closed");
            Ok(())
        })
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn close(&self, _: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pass_is_published_while_the_first_waits_for_its_confirms() {
    let text = CONFIG.replace("relay: {", "relay: { batch_size: 10,");
    let rabbit =
        Arc::new(Gated { gate: tokio::sync::Semaphore::new(0), published: Mutex::default() });
    let Harness { relay, store, closer, _dir } =
        harness_with(&text, rabbit.clone(), Scripted::new(true, None)).await;
    for _ in 0..30 {
        store.append(event("other")).await.unwrap();
    }
    let cancel = CancellationToken::new();
    let running = tokio::spawn(relay.run(cancel.clone()));

    let published = || rabbit.published.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while published().len() < 2 * 10 {
        assert!(Instant::now() < deadline, "a second batch is published: {}", published().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = published();
    assert_eq!(held.len(), PASSES_IN_FLIGHT * 10, "no third pass while two are in flight");
    let distinct: HashSet<EventId> = held.iter().copied().collect();
    assert_eq!(distinct.len(), held.len(), "the second pass passed over the first one's events");

    rabbit.gate.add_permits(1000);
    while store.pending().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the outbox drains");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = published();
    let distinct: HashSet<EventId> = all.iter().copied().collect();
    assert_eq!((all.len(), distinct.len()), (30, 30), "each event published once");
    cancel.cancel();
    running.await.unwrap();
    closer.close().await;
}
