//! The daemon's long-lived tasks, by name: every one of them (servers, relay workers, store
//! housekeeping, broker connections, watchers) is spawned here, so shutdown can wait for all
//! of them under one deadline and say by name which ones did not finish.
//!
//! A cheap `Clone` handle over one [`TaskTracker`]; each task's name is kept while it runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    /// The names of the tasks still running, by spawn number.
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

/// Takes a task's name off the list when the task ends, however it ends (a panic included).
struct Running {
    id: u64,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // std Mutex: a map update, never held across an await. A poisoned lock (a panic
        // while updating) only leaves a stale name behind.
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` under `name` (shown in the shutdown log if it overruns the deadline).
    pub fn spawn<F>(&self, name: impl Into<String>, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.running.lock().expect("task list lock").insert(id, name.into());
        let guard = Running { id, running: Arc::clone(&self.running) };
        self.tracker.spawn(async move {
            let _guard = guard;
            task.await
        })
    }

    /// The names of the tasks still running, in the order they were spawned.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().expect("task list lock").values().cloned().collect()
    }

    /// Waits until every task has ended or `deadline` passes; returns the names of those
    /// still running then (empty when all ended). No task can be spawned afterwards.
    pub async fn wait_until(&self, deadline: Instant) -> Vec<String> {
        self.tracker.close();
        match tokio::time::timeout_at(deadline, self.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.running(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn names_the_tasks_that_outlive_the_deadline() {
        let tasks = Tasks::new();
        tasks.spawn("quick", async {});
        tasks.spawn("stuck", std::future::pending::<()>());
        let panicking = tasks.spawn("panics", async { panic!("on purpose") });
        assert!(panicking.await.is_err());
        let left = tasks.wait_until(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(left, vec!["stuck".to_owned()]);
    }
}
