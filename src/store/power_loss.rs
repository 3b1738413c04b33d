//! Power loss, simulated (RELIABILITY.md). `kill -9` leaves the page cache to the kernel, so
//! it cannot show what a power cut does. Here the store runs on a disk that keeps what was
//! synced apart from what was only written. At a seeded point the power goes: every later
//! operation fails, and the disk that comes back holds the synced bytes plus, for each write
//! since the last sync, all of it, none of it or a torn subset of its sectors (and each
//! length change or not). The store is reopened on that disk, sometimes losing power again
//! during the recovery, and must open and hold every event whose append returned Ok exactly
//! once, byte for byte, with its idempotency key.
//!
//! `cargo test --lib power_loss` runs 40 seeds; `-- --ignored power_loss_long` runs 2,000.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::join_all;
use redb::StorageBackend;

use super::*;

const SECTOR: usize = 512;

/// A disk with a page cache and a power switch; clones share it.
#[derive(Clone, Debug, Default)]
pub(super) struct Disk(Arc<Mutex<DiskState>>);

#[derive(Debug, Default)]
struct DiskState {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a power cut.
    synced: Vec<u8>,
    /// Changes since the last sync, oldest first: each may or may not survive a power cut.
    unsynced: Vec<Change>,
    /// Writes, length changes and syncs left before the power goes (None: it stays on).
    power_left: Option<u64>,
    /// Writes, length changes and syncs done so far.
    operations: u64,
    off: bool,
}

#[derive(Debug)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl Disk {
    fn with_image(image: Vec<u8>) -> Disk {
        let state = DiskState { current: image.clone(), synced: image, ..DiskState::default() };
        Disk(Arc::new(Mutex::new(state)))
    }

    pub(super) fn backend(&self) -> Backend {
        Backend(self.clone())
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap()
    }

    fn cut_power_after(&self, operations: u64) {
        self.state().power_left = Some(operations);
    }

    fn operations(&self) -> u64 {
        self.state().operations
    }

    /// The disk as it comes back after the power went: what was synced, and of every change
    /// since then all, none or (writes) a random subset of its sectors.
    fn after_power_cut(&self, rng: &mut fastrand::Rng) -> Disk {
        let mut state = self.state();
        state.off = true;
        let mut image = state.synced.clone();
        for change in &state.unsynced {
            match change {
                Change::SetLen(len) => {
                    if rng.bool() {
                        image.resize(*len as usize, 0);
                    }
                }
                Change::Write(offset, data) => {
                    let fate = rng.u8(0..3);
                    for (i, sector) in data.chunks(SECTOR).enumerate() {
                        if fate == 0 || (fate == 2 && rng.bool()) {
                            let at = *offset as usize + i * SECTOR;
                            if image.len() < at + sector.len() {
                                image.resize(at + sector.len(), 0);
                            }
                            image[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
        }
        Disk::with_image(image)
    }
}

impl DiskState {
    /// Counts one operation that changes the disk, and fails it once the power is gone.
    fn operate(&mut self) -> io::Result<()> {
        match self.power_left {
            _ if self.off => return Err(power_off()),
            Some(0) => {
                self.off = true;
                return Err(power_off());
            }
            Some(left) => self.power_left = Some(left - 1),
            None => {}
        }
        self.operations += 1;
        Ok(())
    }
}

fn power_off() -> io::Error {
    io::Error::other("the power is off")
}

/// redb's view of a [`Disk`].
#[derive(Debug)]
pub(super) struct Backend(Disk);

impl StorageBackend for Backend {
    fn len(&self) -> io::Result<u64> {
        let state = self.0.state();
        if state.off {
            return Err(power_off());
        }
        Ok(state.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.0.state();
        if state.off {
            return Err(power_off());
        }
        let start = offset as usize;
        let bytes = state.current.get(start..start + out.len()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the disk")
        })?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.0.state();
        state.operate()?;
        state.current.resize(len as usize, 0);
        state.unsynced.push(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.0.state();
        state.operate()?;
        state.synced = state.current.clone();
        state.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.0.state();
        state.operate()?;
        let (start, end) = (offset as usize, offset as usize + data.len());
        if state.current.len() < end {
            state.current.resize(end, 0);
        }
        state.current[start..end].copy_from_slice(data);
        state.unsynced.push(Change::Write(offset, data.to_vec()));
        Ok(())
    }
}

impl Store {
    fn open_simulated(disk: &Disk, quick_repair: bool) -> Result<(Store, StoreCloser)> {
        let config = StoreConfig {
            path: PathBuf::from("simulated"),
            max_bytes: bytesize::ByteSize::gib(1),
            cache_bytes: bytesize::ByteSize::mib(4),
            commit_batch_max: 1024,
            dedup_window: crate::config::HumanDuration::from_secs(3600),
            quick_repair,
            min_free_bytes: None,
            reserve_bytes: None,
        };
        Self::open_on(Medium::Simulated(disk.clone()), &config, Arc::new(Metrics::new()))
    }
}

/// What the workload sent and what the store said.
#[derive(Default)]
struct Ledger {
    /// Every event appended, acknowledged or not: its body.
    sent: HashMap<EventId, Vec<u8>>,
    /// Appends that returned Ok, with their idempotency key.
    acknowledged: Vec<(EventId, Option<String>)>,
    /// Acknowledged events whose removal from the outbox (a delivery) returned Ok.
    settled: HashSet<EventId>,
}

fn event(rng: &mut fastrand::Rng) -> ValidatedEvent {
    let body = format!("{{\"n\":{},\"pad\":\"{}\"}}", rng.u64(..), "x".repeat(rng.usize(0..2000)));
    crate::testing::event("power.cut", &body, 1)
}

/// Rounds of eight concurrent appends (half with an idempotency key), every other round
/// settling a few events as delivered (a settle commit skips the fsync), until the rounds are
/// done or the power is gone.
async fn workload(store: &Store, rng: &mut fastrand::Rng, rounds: usize, ledger: &mut Ledger) {
    for round in 0..rounds {
        let batch: Vec<(ValidatedEvent, Option<String>)> = (0..8)
            .map(|i| (event(rng), (i % 2 == 0).then(|| format!("key-{round}-{i}"))))
            .collect();
        let appends = batch.iter().map(|(event, key)| {
            let key =
                key.clone().map(|key| IdempotencyKey { key, expires_at_ms: u64::MAX, hold: false });
            store.append_once(event.clone(), key)
        });
        let results = join_all(appends).await;
        let mut failed = false;
        for ((event, key), result) in batch.into_iter().zip(results) {
            ledger.sent.insert(event.id(), event.body().to_vec());
            match result {
                Ok(Appended::Accepted(id)) => ledger.acknowledged.push((id, key)),
                Ok(Appended::Duplicate(id)) => {
                    panic!("a fresh key was taken for a duplicate of {id}")
                }
                Err(_) => failed = true,
            }
        }
        if failed {
            return;
        }
        if round % 2 == 1 {
            let Ok(claim) = store.claim_due(u64::MAX, 3, vec![Lane::UNROUTED]).await else {
                return;
            };
            let settlements = claim.entries.iter().map(|entry| Settlement {
                seq: entry.seq,
                remove_due: entry.claimed.clone(),
                add_due: vec![],
                outcome: Outcome::Delete,
                dead_letter: None,
            });
            if store.settle(settlements.collect()).await.is_err() {
                return;
            }
            ledger.settled.extend(claim.entries.iter().map(|e| e.event.id()));
        }
    }
}

const ROUNDS: usize = 24;

/// One seeded run: load, power cut, (maybe a second cut during recovery), reopen, check.
/// Odd seeds run with redb's quick repair (`store.quick_repair`), even ones without.
async fn power_cut(seed: u64, operations_in_a_run: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let quick = seed % 2 == 1;
    let disk = Disk::default();
    let mut ledger = Ledger::default();
    let (store, closer) = Store::open_simulated(&disk, quick).expect("a new store opens");
    disk.cut_power_after(rng.u64(0..operations_in_a_run));
    workload(&store, &mut rng, ROUNDS, &mut ledger).await;
    closer.close().await;
    drop(store);
    let mut disk = disk.after_power_cut(&mut rng);

    if rng.bool() {
        // The power goes again while the store recovers.
        let recovering = disk.clone();
        recovering.cut_power_after(rng.u64(0..24));
        if let Ok((store, closer)) = Store::open_simulated(&recovering, quick) {
            closer.close().await;
            drop(store);
        }
        disk = recovering.after_power_cut(&mut rng);
    }

    let (store, closer) = Store::open_simulated(&disk, quick).unwrap_or_else(|e| {
        panic!("seed {seed} (quick repair {quick}): the store does not open after a power cut: {e}")
    });
    let claim = store.claim_due(u64::MAX, 100_000, vec![Lane::UNROUTED]).await.unwrap();
    assert!(claim.unreadable.is_empty() && claim.orphans.is_empty(), "seed {seed}: damaged");
    let mut held = HashSet::new();
    for entry in &claim.entries {
        let id = entry.event.id();
        assert!(held.insert(id), "seed {seed}: event {id} is in the outbox twice");
        let sent = ledger.sent.get(&id).unwrap_or_else(|| panic!("seed {seed}: unknown {id}"));
        assert_eq!(entry.event.body().as_ref(), sent.as_slice(), "seed {seed}: {id} changed");
    }
    for (id, key) in &ledger.acknowledged {
        assert!(
            held.contains(id) || ledger.settled.contains(id),
            "seed {seed}: acknowledged event {id} was lost"
        );
        if let Some(key) = key {
            let again = IdempotencyKey { key: key.clone(), expires_at_ms: u64::MAX, hold: false };
            let answer = store.append_once(event(&mut rng), Some(again)).await.unwrap();
            assert_eq!(answer, Appended::Duplicate(*id), "seed {seed}: key {key} forgotten");
        }
    }
    store.append(event(&mut rng)).await.expect("the recovered store takes new events");
    closer.close().await;
}

/// How many disk operations a whole run makes with the power on, so that cut points spread
/// over all of it.
async fn operations_in_a_run() -> u64 {
    let disk = Disk::default();
    let (store, closer) = Store::open_simulated(&disk, false).unwrap();
    let start = disk.operations();
    workload(&store, &mut fastrand::Rng::with_seed(0), ROUNDS, &mut Ledger::default()).await;
    closer.close().await;
    disk.operations() - start
}

async fn power_cuts(seeds: std::ops::Range<u64>) {
    let operations = operations_in_a_run().await;
    assert!(operations > 50, "the workload reaches the disk: {operations} operations");
    for seed in seeds {
        power_cut(seed, operations).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_cut_exactly_once() {
    power_cuts(0..40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 2,000 power cuts"]
async fn power_loss_long() {
    power_cuts(1_000..3_000).await;
}
