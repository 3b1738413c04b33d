use super::*;
use crate::event::{EventType, SourceName};
use crate::routing::Target;
use bytesize::ByteSize;

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("o.redb"),
        max_bytes: ByteSize::gib(1),
        cache_bytes: ByteSize::mib(4),
        commit_batch_max: 1024,
    }
}

fn event(body: &str, at: u64) -> ValidatedEvent {
    ValidatedEvent::new(
        EventId::new(),
        SourceName::parse("default").unwrap(),
        EventType::parse("t").unwrap(),
        at,
        body.to_owned().into(),
    )
}

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
    closer.close().await;
    drop(store);

    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    assert_eq!(store.pending().await.unwrap(), 200);
    let claim = store.claim_due(u64::MAX, 1000).await.unwrap();
    assert_eq!(claim.entries.len(), 200);
    // Ordered by due time (here: received_at = i).
    for (i, entry) in claim.entries.iter().enumerate() {
        assert_eq!(entry.event.body().as_ref(), format!("{{\"i\":{i}}}").as_bytes());
        assert!(ids.contains(&entry.event.id()));
    }
    // Sequence numbers keep growing across a reopen.
    let before = claim.entries.iter().map(|e| e.seq).max().unwrap();
    store.append(event("{}", 0)).await.unwrap();
    let claim = store.claim_due(0, 10).await.unwrap();
    assert!(claim.entries.iter().any(|e| e.seq > before));
    closer.close().await;
}

#[tokio::test]
async fn claim_takes_only_due_entries_and_settle_moves_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, closer) = Store::open(&config(dir.path())).unwrap();
    for i in 0..5 {
        store.append(event("{}", 1000 + i)).await.unwrap();
    }
    let claim = store.claim_due(1002, 10).await.unwrap();
    assert_eq!(claim.entries.len(), 3);
    assert_eq!(claim.next_due_ms, Some(1003));
    let claim = store.claim_due(1004, 2).await.unwrap();
    assert_eq!(claim.entries.len(), 2, "limit respected");

    let first = &claim.entries[0];
    let second = &claim.entries[1];
    let delivery = Delivery {
        destinations: vec![DestinationState {
            target: Target::Kafka { topic: "t".into(), key: None },
            done: false,
            attempts: 1,
            next_attempt_ms: 9000,
            last_error: Some("broker down".into()),
        }],
    };
    store
        .settle(vec![
            Settlement::Delete { seq: first.seq, due_ms: first.due_ms },
            Settlement::Reschedule {
                seq: second.seq,
                due_ms: second.due_ms,
                delivery: delivery.clone(),
                next_due_ms: 9000,
            },
        ])
        .await
        .unwrap();
    assert_eq!(store.pending().await.unwrap(), 4);
    let claim = store.claim_due(8999, 10).await.unwrap();
    assert_eq!(claim.entries.len(), 3);
    assert_eq!(claim.next_due_ms, Some(9000));
    let claim = store.claim_due(9000, 10).await.unwrap();
    let moved = claim.entries.iter().find(|e| e.seq == second.seq).unwrap();
    assert_eq!(moved.delivery.as_ref(), Some(&delivery));
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
        let mut due = txn.open_table(DUE).unwrap();
        due.insert((11, 500), ()).unwrap();
        due.insert((12, 600), ()).unwrap(); // no event 600
        drop(due);
        txn.commit().unwrap();
    }
    let (store, closer) = Store::open(&cfg).unwrap();
    let claim = store.claim_due(100, 10).await.unwrap();
    assert_eq!(claim.entries.len(), 1, "the good entry is still claimed");
    assert_eq!(claim.unreadable.len(), 1);
    assert!(matches!(claim.unreadable[0].2, StoreError::Corrupt { seq: 500, .. }));
    assert_eq!(claim.orphans, vec![(600, 12)]);
    store
        .settle(vec![
            Settlement::Defer { seq: 500, due_ms: 11, next_due_ms: 1000 },
            Settlement::DropIndex { seq: 600, due_ms: 12 },
        ])
        .await
        .unwrap();
    let claim = store.claim_due(100, 10).await.unwrap();
    assert!(claim.unreadable.is_empty() && claim.orphans.is_empty());
    assert_eq!(claim.next_due_ms, Some(1000));
    let later = store.claim_due(1000, 10).await.unwrap();
    assert_eq!(later.unreadable.len(), 1, "kept, not deleted");
    closer.close().await;
}
