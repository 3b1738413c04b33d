use super::*;
use crate::delivery::{DeadDestination, Reason, RetryOverride, Status, Target};
use crate::event::{EventType, SourceName};
use bytesize::ByteSize;
use redb::ReadableDatabase;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("o.redb"),
        max_bytes: ByteSize::gib(1),
        cache_bytes: ByteSize::mib(4),
        commit_batch_max: 1024,
        dedup_window: crate::config::HumanDuration::from_secs(3600),
        quick_repair: false,
        min_free_bytes: None,
        reserve_bytes: None,
    }
}

fn event(body: &str, at: u64) -> ValidatedEvent {
    crate::testing::event("t", body, at)
}

fn rabbit() -> Target {
    crate::testing::rabbit("x", "k")
}

fn kafka() -> Target {
    crate::testing::kafka("t", None)
}

const UNROUTED: Lane = Lane::UNROUTED;
const RABBIT: Lane = Lane::RABBITMQ;
const KAFKA: Lane = Lane::KAFKA;
const ALL: [Lane; 3] = Lane::ALL;

#[tokio::test]
async fn concurrent_appends_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let appends = (0..200).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append(event(&format!("{{\"i\":{i}}}"), i)).await })
    });
    let ids: Vec<EventId> = futures_util::future::join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(store.stats().durable_commits < 200, "appends were grouped");
    closer.close().await;
    drop(store);

    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.pending().await.unwrap(), 200);
    let claim = store.claim_due(u64::MAX, 1000, ALL.to_vec()).await.unwrap();
    assert_eq!(claim.entries.len(), 200);
    for (i, entry) in claim.entries.iter().enumerate() {
        assert_eq!(entry.event.body().as_ref(), format!("{{\"i\":{i}}}").as_bytes());
        assert!(ids.contains(&entry.event.id()));
        assert_eq!(entry.claimed, vec![(UNROUTED, i as u64)]);
    }
    let before = claim.entries.iter().map(|e| e.seq).max().unwrap();
    store.append(event("{}", 0)).await.unwrap();
    let claim = store.claim_due(0, 10, ALL.to_vec()).await.unwrap();
    assert!(claim.entries.iter().any(|e| e.seq > before), "seqs keep growing across reopen");
    closer.close().await;
}

#[tokio::test]
async fn a_claim_passes_over_events_in_flight_without_counting_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    for i in 0..6 {
        store.append(event("{}", 1000 + i)).await.unwrap();
    }
    let first = store.claim_due_except(u64::MAX, 3, UNROUTED, HashSet::new()).await.unwrap();
    let held: HashSet<u64> = first.seqs().collect();
    assert_eq!(held.len(), 3);

    let second = store.claim_due_except(u64::MAX, 3, UNROUTED, held.clone()).await.unwrap();
    let next: Vec<u64> = second.seqs().collect();
    assert_eq!(next.len(), 3, "the held events do not count towards the limit");
    assert!(next.iter().all(|seq| !held.contains(seq)), "{next:?} overlaps {held:?}");
    let all: HashSet<u64> = held.iter().chain(&next).copied().collect();
    let third = store.claim_due_except(u64::MAX, 3, UNROUTED, all).await.unwrap();
    assert!(third.is_empty(), "everything due is held");
    closer.close().await;
}

/// Routes entry `e` to RabbitMQ (due at `r`) and Kafka (due at `k`).
fn routed(e: &OutboxEntry, r: u64, k: u64) -> Settlement {
    let mut a = DestinationState::new(rabbit(), RetryOverride::default());
    a.next_attempt_ms = r;
    let mut b = DestinationState::new(kafka(), RetryOverride::default());
    b.next_attempt_ms = k;
    Settlement {
        seq: e.seq,
        remove_due: e.claimed.clone(),
        add_due: vec![(RABBIT, r), (KAFKA, k)],
        outcome: Outcome::Store(Delivery { destinations: vec![a, b] }),
        dead_letter: None,
    }
}

#[tokio::test]
async fn lanes_keep_one_brokers_backlog_away_from_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    for i in 0..5 {
        store.append(event("{}", 1000 + i)).await.unwrap();
    }
    let claim = store.claim_due(1002, 10, ALL.to_vec()).await.unwrap();
    assert_eq!(claim.entries.len(), 3);
    assert_eq!(claim.next_due_ms, Some(1003));
    let claim = store.claim_due(1004, 2, ALL.to_vec()).await.unwrap();
    assert_eq!(claim.entries.len(), 2, "limit respected");

    let e = &claim.entries[0];
    store.settle(vec![routed(e, 2000, 3000)]).await.unwrap();
    // Only the RabbitMQ lane is claimed (Kafka down): the entry comes from lane 1 alone.
    let claim = store.claim_due(5000, 10, vec![UNROUTED, RABBIT]).await.unwrap();
    let got = claim.entries.iter().find(|x| x.seq == e.seq).unwrap();
    assert_eq!(got.claimed, vec![(RABBIT, 2000)]);
    assert_eq!(got.delivery.as_ref().unwrap().destinations.len(), 2);
    // Both lanes claimed: one entry, two claimed lanes.
    let claim = store.claim_due(5000, 10, ALL.to_vec()).await.unwrap();
    let got = claim.entries.iter().find(|x| x.seq == e.seq).unwrap();
    assert_eq!(got.claimed, vec![(RABBIT, 2000), (KAFKA, 3000)]);
    store
        .settle(vec![Settlement {
            seq: e.seq,
            remove_due: got.claimed.clone(),
            add_due: vec![],
            outcome: Outcome::Delete,
            dead_letter: None,
        }])
        .await
        .unwrap();
    assert_eq!(store.pending().await.unwrap(), 4);
    closer.close().await;
}

#[tokio::test]
async fn over_quota_appends_are_refused_but_settles_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_bytes = ByteSize::b(1);
    let (store, closer) = Store::open(&cfg).unwrap();
    let err = store.append(event("{}", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded), "{err:?}");
    store.settle(vec![]).await.unwrap();
    closer.close().await;
}

#[tokio::test]
async fn damaged_records_and_orphan_index_entries_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (store, closer) = Store::open(&cfg).unwrap();
    store.append(event("{\"ok\":1}", 10)).await.unwrap();
    closer.close().await;
    drop(store);
    {
        let db = Database::create(&cfg.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(EVENTS).unwrap().insert(500, &[1u8, 2, 3][..]).unwrap();
        let mut due = txn.open_table(LANES).unwrap();
        due.insert((UNROUTED.number(), 11, 500), ()).unwrap();
        due.insert((UNROUTED.number(), 12, 600), ()).unwrap(); // no event 600
        drop(due);
        txn.commit().unwrap();
    }
    let (store, closer) = Store::open(&cfg).unwrap();
    let claim = store.claim_due(100, 10, ALL.to_vec()).await.unwrap();
    assert_eq!(claim.entries.len(), 1, "the good entry is still claimed");
    assert_eq!(claim.unreadable.len(), 1);
    assert!(matches!(claim.unreadable[0].2, StoreError::Corrupt { seq: 500, .. }));
    assert_eq!(claim.orphans, vec![(600, (UNROUTED, 12))]);
    closer.close().await;
}

fn dead(e: &OutboxEntry, reason: Reason, target: Target) -> DlqRecord {
    let mut state = DestinationState::new(target, RetryOverride::default());
    state.status = Status::Dead;
    state.attempts = 3;
    state.last_error = Some("no queue bound".into());
    DlqRecord {
        event: e.event.clone(),
        dead_lettered_at_ms: 5000 + e.seq,
        reason,
        destinations: vec![DeadDestination { state, reason }],
    }
}

#[tokio::test]
async fn dead_letters_list_newest_first_filter_replay_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    for i in 0..5 {
        store.append(event(&format!("{{\"i\":{i}}}"), 10 + i)).await.unwrap();
    }
    let claim = store.claim_due(100, 10, ALL.to_vec()).await.unwrap();
    let settle_dead = |e: &OutboxEntry, reason, target| Settlement {
        seq: e.seq,
        remove_due: e.claimed.clone(),
        add_due: vec![],
        outcome: Outcome::Delete,
        dead_letter: Some(dead(e, reason, target)),
    };
    let mut settlements: Vec<Settlement> =
        claim.entries[..4].iter().map(|e| settle_dead(e, Reason::Unroutable, rabbit())).collect();
    // The fifth fails on Kafka only; RabbitMQ is still pending in the outbox.
    let fifth = &claim.entries[4];
    let mut pending = DestinationState::new(rabbit(), RetryOverride::default());
    pending.next_attempt_ms = 50;
    settlements.push(Settlement {
        seq: fifth.seq,
        remove_due: fifth.claimed.clone(),
        add_due: vec![(RABBIT, 50)],
        outcome: Outcome::Store(Delivery { destinations: vec![pending] }),
        dead_letter: Some(dead(fifth, Reason::Rejected, kafka())),
    });
    store.settle(settlements).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 1);

    let page = store.dlq_list(DlqFilter::default(), None, 3).await.unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.entries[0].record.event.id(), fifth.event.id(), "newest first");
    let rest = store.dlq_list(DlqFilter::default(), page.next_cursor, 3).await.unwrap();
    assert_eq!(rest.entries.len(), 2);
    assert_eq!(rest.next_cursor, None);
    let rejected = DlqFilter { reason: Some(Reason::Rejected), ..DlqFilter::default() };
    assert_eq!(store.dlq_list(rejected.clone(), None, 10).await.unwrap().entries.len(), 1);
    let by_dest = DlqFilter { destination: Some("kafka:".into()), ..DlqFilter::default() };
    assert_eq!(store.dlq_list(by_dest, None, 10).await.unwrap().entries.len(), 1);
    let got = store.dlq_get(fifth.event.id()).await.unwrap().unwrap();
    assert_eq!(got.record.destinations[0].state.target, kafka());

    // Replay the Kafka failure: back in the outbox for Kafka only, same id.
    let n = store.dlq_replay(DlqSelector::Id(fifth.event.id()), 60).await.unwrap();
    assert_eq!(n, 1);
    assert!(store.dlq_get(fifth.event.id()).await.unwrap().is_none());
    let claim = store.claim_due(100, 10, vec![KAFKA]).await.unwrap();
    assert_eq!(claim.entries.len(), 1);
    let replayed = &claim.entries[0];
    assert_eq!(replayed.event.id(), fifth.event.id());
    let d = replayed.delivery.as_ref().unwrap();
    assert_eq!(d.destinations.len(), 1);
    assert_eq!((d.destinations[0].target.clone(), d.destinations[0].attempts), (kafka(), 0));

    // Purge by filter, then retention.
    let purged = store.dlq_delete(DlqSelector::Matching(rejected)).await.unwrap();
    assert_eq!(purged, 0, "the rejected one was replayed");
    let expired = store.dlq_expire(Some(2), None).await.unwrap();
    assert_eq!(expired, 2);
    let expired = store.dlq_expire(None, Some(u64::MAX)).await.unwrap();
    assert_eq!(expired, 2);
    let stats = store.outbox_stats(100).await.unwrap();
    assert_eq!((stats.pending, stats.dlq_entries), (2, 0));
    assert_eq!(stats.destinations.len(), 2);
    closer.close().await;
}

#[tokio::test]
async fn format_1_files_are_migrated_to_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    {
        // A file as format 1 wrote it: one due index, a routed and an unrouted event.
        let db = Database::create(&cfg.path).unwrap();
        let txn = db.begin_write().unwrap();
        let (a, b) = (event("{}", 1), event("{}", 2));
        let mut events = txn.open_table(EVENTS).unwrap();
        events.insert(0, codec::encode_event(&a).as_slice()).unwrap();
        events.insert(1, codec::encode_event(&b).as_slice()).unwrap();
        drop(events);
        let mut due = txn.open_table(DUE_V1).unwrap();
        due.insert((1, 0), ()).unwrap();
        due.insert((7, 1), ()).unwrap();
        drop(due);
        let d = Delivery {
            destinations: vec![DestinationState::new(kafka(), RetryOverride::default())],
        };
        txn.open_table(DELIVERY).unwrap().insert(1, codec::encode_delivery(&d).as_slice()).unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format_version", 1).unwrap();
        meta.insert("next_seq", 2).unwrap();
        drop(meta);
        txn.commit().unwrap();
    }
    let (store, closer) = Store::open(&cfg).unwrap();
    let claim = store.claim_due(100, 10, ALL.to_vec()).await.unwrap();
    let claimed: Vec<_> = claim.entries.iter().map(|e| (e.seq, e.claimed.clone())).collect();
    assert_eq!(claimed, vec![(0, vec![(UNROUTED, 1)]), (1, vec![(KAFKA, 7)])]);
    closer.close().await;
    let db = Database::open(&cfg.path).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(META).unwrap().get("format_version").unwrap().unwrap().value(), 2);
}

fn key(k: &str, expires_at_ms: u64) -> Option<IdempotencyKey> {
    Some(IdempotencyKey { key: k.to_owned(), expires_at_ms, hold: false })
}

#[tokio::test]
async fn an_idempotency_key_admits_one_event_even_concurrently_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let far = crate::event::now_ms() + 3_600_000;
    let tries = (0..50).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.append_once(event("{}", i), key("k1", far)).await })
    });
    let answers: Vec<Appended> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let accepted: Vec<EventId> = answers
        .iter()
        .filter_map(|a| if let Appended::Accepted(id) = a { Some(*id) } else { None })
        .collect();
    assert_eq!(accepted.len(), 1, "{answers:?}");
    assert!(answers.iter().all(
        |a| matches!(a, Appended::Accepted(id) | Appended::Duplicate(id) if *id == accepted[0])
    ));
    assert_eq!(store.pending().await.unwrap(), 1);
    closer.close().await;
    drop(store);

    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let again = store.append_once(event("{}", 99), key("k1", far)).await.unwrap();
    assert_eq!(again, Appended::Duplicate(accepted[0]));
    // Keys are per source: another source may use the same key.
    let other = ValidatedEvent::new(
        EventId::new(),
        SourceName::parse("github").unwrap(),
        EventType::parse("t").unwrap(),
        1,
        "{}".into(),
    );
    assert!(matches!(
        store.append_once(other, key("k1", far)).await.unwrap(),
        Appended::Accepted(_)
    ));
    assert_eq!(store.pending().await.unwrap(), 2);
    closer.close().await;
}

#[tokio::test]
async fn expired_keys_admit_again_and_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let now = crate::event::now_ms();
    let first = store.append_once(event("{}", 1), key("old", now - 1)).await.unwrap();
    assert!(matches!(first, Appended::Accepted(_)));
    // Expired: the same key is accepted again and now holds until `now + 1h`.
    let second = store.append_once(event("{}", 2), key("old", now + 3_600_000)).await.unwrap();
    assert!(matches!(second, Appended::Accepted(_)));
    for i in 0..5 {
        store.append_once(event("{}", 3), key(&format!("gone{i}"), now - 10)).await.unwrap();
    }
    assert_eq!(store.dedup_expire(now, 3).await.unwrap(), 3, "limit respected");
    assert_eq!(store.dedup_expire(now, 100).await.unwrap(), 2);
    assert_eq!(store.dedup_expire(now, 100).await.unwrap(), 0);
    // The re-used key survived collection of its expired first use.
    let third = store.append_once(event("{}", 4), key("old", now + 3_600_000)).await.unwrap();
    assert!(matches!(third, Appended::Duplicate(_)));
    closer.close().await;
}

/// The kinds and seqs a feed batch names, with whether each entry still exists.
fn named(batch: &FeedBatch) -> Vec<(&'static str, u64, bool)> {
    batch
        .changes
        .iter()
        .map(|c| match c {
            Change::Reset => ("reset", 0, true),
            Change::Outbox { seq, now } => ("outbox", *seq, now.is_some()),
            Change::Dlq { seq, now } => ("dlq", *seq, now.is_some()),
        })
        .collect()
}

#[tokio::test]
async fn the_change_feed_names_every_entry_changed_and_starts_from_the_whole_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    // Off by default: appends write no feed rows (a file of before the feed reads as empty).
    store.append(event(r#"{"a":0}"#, 1)).await.unwrap();
    store.append(event(r#"{"a":1}"#, 2)).await.unwrap();
    assert_eq!(store.change_feed(10).await.unwrap().rows, 0);
    assert_eq!(store.change_feed_lag().await.unwrap(), FeedLag::default());

    // Started, it feeds what the store already holds, after a reset.
    store.start_change_feed().await.unwrap();
    let batch = store.change_feed(10).await.unwrap();
    assert_eq!(named(&batch), [("reset", 0, true), ("outbox", 0, true), ("outbox", 1, true)]);
    assert_eq!(batch.through, Some(2));
    store.start_change_feed().await.unwrap();
    assert_eq!(store.change_feed(10).await.unwrap().rows, 3, "a second start adds nothing");
    store.trim_change_feed(2).await.unwrap();
    let lag = store.change_feed_lag().await.unwrap();
    assert_eq!((lag.rows, lag.next_change, lag.oldest_change), (0, 3, None));

    // An append, a settlement that routes it, one that dead-letters an event, a delete.
    store.append(event(r#"{"a":2}"#, 3)).await.unwrap();
    let mark = store.change_mark();
    assert_eq!(mark, 4, "the mark passes the append's change once it returned");
    let claim = store.claim_due(u64::MAX, 10, ALL.to_vec()).await.unwrap();
    let settle = |e: &OutboxEntry, outcome: Outcome, dead_letter: Option<DlqRecord>| Settlement {
        seq: e.seq,
        remove_due: e.claimed.clone(),
        add_due: Vec::new(),
        outcome,
        dead_letter,
    };
    let [first, second, third] = &claim.entries[..] else { panic!("{claim:?}") };
    let routed =
        Delivery { destinations: vec![DestinationState::new(rabbit(), Default::default())] };
    store
        .settle(vec![
            settle(first, Outcome::Store(routed), None),
            settle(second, Outcome::Delete, Some(dead(second, Reason::Rejected, rabbit()))),
            settle(third, Outcome::Delete, None),
        ])
        .await
        .unwrap();
    let batch = store.change_feed(10).await.unwrap();
    assert_eq!(
        named(&batch),
        [("outbox", 2, false), ("outbox", 0, true), ("outbox", 1, false), ("dlq", 0, true)],
        "each entry once, as it is now"
    );
    let Change::Outbox { now: Some(now), .. } = &batch.changes[1] else { panic!() };
    assert_eq!(now.delivery.as_ref().unwrap().destinations.len(), 1);
    assert_eq!(now.event.body().as_ref(), br#"{"a":0}"#);
    assert!(now.delivery_record.is_some());
    let lag = store.change_feed_lag().await.unwrap();
    assert_eq!((lag.rows, lag.oldest_change), (5, Some(3)));
    assert!(lag.oldest_ms.is_some());

    // Replaying the dead letter removes it and adds an outbox entry.
    store.trim_change_feed(batch.through.unwrap()).await.unwrap();
    let dlq_id = second.event.id();
    assert_eq!(store.dlq_replay(DlqSelector::Id(dlq_id), 10).await.unwrap(), 1);
    let batch = store.change_feed(10).await.unwrap();
    assert_eq!(named(&batch), [("outbox", 3, true), ("dlq", 0, false)]);

    // Kept across a restart; stopped, it is dropped and a later start bootstraps again.
    closer.close().await;
    drop(store);
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.change_feed(10).await.unwrap().rows, 2);
    store.append(event(r#"{"a":3}"#, 4)).await.unwrap();
    assert_eq!(store.change_feed(10).await.unwrap().rows, 3, "still on after the restart");
    store.stop_change_feed().await.unwrap();
    store.append(event(r#"{"a":4}"#, 5)).await.unwrap();
    assert_eq!(store.change_feed(10).await.unwrap().rows, 0);
    store.start_change_feed().await.unwrap();
    let batch = store.change_feed(10).await.unwrap();
    assert_eq!(batch.changes.len(), 1 + 4, "a reset and the four events in the outbox");
    closer.close().await;
}

/// Appends `n` events of ~2 KiB and settles them all (delivered everywhere).
async fn fill_and_drain(store: &Store, n: u64) {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    futures_util::future::join_all((0..n).map(|i| store.append(event(&body, 1000 + i)))).await;
    loop {
        let claim = store.claim_due(u64::MAX, 1000, vec![UNROUTED]).await.unwrap();
        if claim.is_empty() {
            break;
        }
        let settled = claim.entries.iter().map(|e| Settlement {
            seq: e.seq,
            remove_due: e.claimed.clone(),
            add_due: Vec::new(),
            outcome: Outcome::Delete,
            dead_letter: None,
        });
        store.settle(settled.collect()).await.unwrap();
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// A delivered backlog leaves a file of free pages; in a quiet moment the writer compacts it
/// back near its empty size, with the daemon running (the disk is not low here).
#[tokio::test]
async fn a_drained_backlog_is_compacted_away_in_a_quiet_moment() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let path = dir.path().join("o.redb");
    let empty = file_size(&path);
    fill_and_drain(&store, 20_000).await;
    // Not quiet: an append a moment ago.
    store.append(event("{}", 5)).await.unwrap();
    let drained = file_size(&path);
    assert!(drained > 40 << 20, "the drained backlog left the file large: {drained}");
    store.tend_space_now().await;
    // (A commit may trim a free tail off the file, so not exactly the same size.)
    let not_quiet = file_size(&path);
    assert!(not_quiet > 40 << 20, "no compaction while events are coming in: {not_quiet}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    store.tend_space_now().await;
    let compacted = file_size(&path);
    assert!(
        compacted <= 2 * empty.max(1 << 20),
        "empty {empty}, drained {drained}, after the quiet compaction {compacted}"
    );
    // The store works as before, and its event is still there.
    store.append(event("{}", 99)).await.unwrap();
    assert_eq!(store.claim_due(u64::MAX, 10, vec![UNROUTED]).await.unwrap().entries.len(), 2);
    closer.close().await;
}

/// `orchestron store compact`: refused while the file is open, shrinks it once closed.
#[tokio::test]
async fn an_offline_compaction_is_refused_while_open_and_shrinks_a_closed_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let path = dir.path().join("o.redb");
    let empty = file_size(&path);
    fill_and_drain(&store, 20_000).await;
    let refused = compact_file(&path).unwrap_err();
    assert!(matches!(refused, StoreError::Exclusive { .. }), "{refused}");
    closer.close().await;
    let (before, after) = compact_file(&path).unwrap();
    assert!(before > 40 << 20, "{before}");
    assert!(after <= 2 * empty.max(1 << 20), "empty {empty}, before {before}, after {after}");
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    store.append(event("{}", 99)).await.unwrap();
    closer.close().await;
}

/// An event routed at ingest is filed into its brokers' lanes, with its delivery record, in
/// the append's own commit: the brokers' workers are woken and claim it with no routing pass.
#[tokio::test]
async fn a_routed_append_is_filed_into_its_brokers_lanes_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let delivery = Delivery {
        destinations: vec![
            DestinationState::new(rabbit(), RetryOverride::default()),
            DestinationState::new(kafka(), RetryOverride::default()),
        ],
    };
    let appended = store.append_routed(event("{}", 7), None, delivery.clone()).await.unwrap();
    let Appended::Accepted(id) = appended else { panic!("{appended:?}") };
    for lane in [RABBIT, KAFKA] {
        let woken = tokio::time::timeout(std::time::Duration::from_secs(1), store.filed(lane));
        woken.await.expect("the lane's worker is woken by the append");
    }
    assert!(store.claim_due(u64::MAX, 10, vec![UNROUTED]).await.unwrap().is_empty());
    for lane in [RABBIT, KAFKA] {
        let claim = store.claim_due(u64::MAX, 10, vec![lane]).await.unwrap();
        assert_eq!(claim.entries.len(), 1, "{lane:?}");
        let entry = &claim.entries[0];
        assert_eq!(entry.event.id(), id);
        assert_eq!(entry.claimed, vec![(lane, 7)]);
        assert_eq!(entry.delivery.as_ref(), Some(&delivery));
    }
    // An empty delivery (nothing resolved) is filed unrouted, for the routing worker.
    store.append_routed(event("{}", 8), None, Delivery::default()).await.unwrap();
    assert_eq!(store.claim_due(u64::MAX, 10, vec![UNROUTED]).await.unwrap().entries.len(), 1);
    closer.close().await;
    // The counters survive a reopen although settle-only commits no longer write them.
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let newest = store.append(event("{}", 9)).await.unwrap();
    let claim = store.claim_due(u64::MAX, 10, ALL.to_vec()).await.unwrap();
    assert_eq!(claim.entries.len(), 3);
    let seq_of = |id: EventId| claim.entries.iter().find(|e| e.event.id() == id).unwrap().seq;
    let older = claim.entries.iter().filter(|e| e.event.id() != newest).map(|e| e.seq).max();
    assert!(seq_of(newest) > older.unwrap(), "seqs keep growing across reopen");
    closer.close().await;
}

#[tokio::test]
async fn a_key_held_event_is_never_due_until_its_hold_ends_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let delivery =
        Delivery { destinations: vec![DestinationState::new(rabbit(), RetryOverride::default())] };
    let far = crate::event::now_ms() + 3_600_000;
    let held = |k: &str| Some(IdempotencyKey { key: k.to_owned(), expires_at_ms: far, hold: true });
    let mut ids = Vec::new();
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        let appended = store.append_routed(event("{}", i as u64), held(k), delivery.clone());
        let Appended::Accepted(id) = appended.await.unwrap() else { panic!() };
        ids.push(id);
    }
    // Local dedup still applies to a held key.
    let again = store.append_routed(event("{}", 9), held("a"), delivery.clone()).await.unwrap();
    assert_eq!(again, Appended::Duplicate(ids[0]));
    let appended = store.append_routed(event("{}", 5), None, delivery.clone()).await.unwrap();
    let Appended::Accepted(plain) = appended else { panic!() };
    let claim = store.claim_due(u64::MAX, 10, ALL.to_vec()).await.unwrap();
    let due: Vec<EventId> = claim.entries.iter().map(|e| e.event.id()).collect();
    assert_eq!(due, vec![plain], "held events are not due");
    assert_eq!(claim.next_due_ms, None, "and not counted as due later either");
    assert!(store.held().await.unwrap().is_empty(), "not takeover holds");
    closer.close().await;

    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let holds = store.key_holds(10).await.unwrap();
    let keys: Vec<&str> = holds.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(holds[1].event.as_ref().map(|e| e.0), Some(ids[1]));
    assert_eq!(holds[1].expires_at_ms, far);
    assert_eq!(store.key_hold_count().await.unwrap(), 3);
    // a is released, b is a duplicate of another event of the fleet.
    let first = EventId::new();
    let ended = store.end_key_holds(vec![holds[0].seq], vec![(holds[1].seq, first)], 50);
    assert_eq!(ended.await.unwrap(), 2);
    let claim = store.claim_due(u64::MAX, 10, vec![RABBIT]).await.unwrap();
    let due: Vec<EventId> = claim.entries.iter().map(|e| e.event.id()).collect();
    assert_eq!(due, vec![plain, ids[0]]);
    assert_eq!(claim.entries[1].claimed, vec![(RABBIT, 50)], "due from the release");
    assert_eq!(store.pending().await.unwrap(), 3, "the duplicate left the outbox");
    // A local repeat of b is answered with the fleet's first event, not the one removed.
    let again = store.append_routed(event("{}", 9), held("b"), delivery.clone()).await.unwrap();
    assert_eq!(again, Appended::Duplicate(first));
    // Fleet sync turned off: every hold left is released.
    assert_eq!(store.release_all_key_holds(60).await.unwrap(), 1);
    assert!(store.key_holds(10).await.unwrap().is_empty());
    let claim = store.claim_due(u64::MAX, 10, vec![RABBIT]).await.unwrap();
    assert!(claim.entries.iter().any(|e| e.event.id() == ids[2]), "c is due now");
    // A hold whose event a peer took over (forgotten) goes with it.
    let appended = store.append_routed(event("{}", 10), held("d"), delivery.clone()).await;
    assert!(matches!(appended.unwrap(), Appended::Accepted(_)));
    let d = store.key_holds(10).await.unwrap()[0].seq;
    store.forget(vec![d]).await.unwrap();
    assert!(store.key_holds(10).await.unwrap().is_empty());
    closer.close().await;
}

#[tokio::test]
async fn outbox_stats_give_each_destinations_oldest_pending_age() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    let to = |targets: Vec<Target>| Delivery {
        destinations: targets
            .into_iter()
            .map(|t| DestinationState::new(t, RetryOverride::default()))
            .collect(),
    };
    store.append_routed(event("{}", 10), None, to(vec![kafka()])).await.unwrap();
    store.append_routed(event("{}", 20), None, to(vec![rabbit(), kafka()])).await.unwrap();
    store.append_routed(event("{}", 30), None, to(vec![rabbit()])).await.unwrap();
    let stats = store.outbox_stats(100).await.unwrap();
    let oldest: Vec<(&str, u64, Option<u64>)> =
        stats.destinations.iter().map(|d| (d.broker, d.pending, d.oldest_pending_age_ms)).collect();
    assert_eq!(oldest, [("kafka", 2, Some(90)), ("rabbitmq", 2, Some(80))]);
    assert_eq!(stats.oldest_pending_age_ms, Some(90));
    closer.close().await;
}
