//! Talking to systemd (`Type=notify`): READY once the store is open and the listeners are
//! bound, STOPPING on shutdown, and watchdog pings while the runtime is alive. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// The daemon is serving: the store is open (any repair done) and every listener is bound.
pub fn ready(status: &str) {
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
}

/// The daemon is shutting down.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// sd_notify(3); a failure is logged, never fatal.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// With `WatchdogSec=` set, a loop that pings systemd at half the interval until `cancel`, so
/// a wedged daemon is restarted; `None` when the watchdog is off.
pub fn watchdog(cancel: CancellationToken) -> Option<impl Future<Output = ()> + Send + 'static> {
    let interval = sd_notify::watchdog_enabled()?;
    Some(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval / 2) => {}
            }
        }
    })
}
