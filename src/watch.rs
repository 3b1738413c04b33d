//! Watching files for changes: the config file, the schema directory, TLS certificates.
//!
//! Directories are watched, not files: editors and config management save by writing a new
//! file and renaming it over the old one (or by swapping a symlink), which a watch on the old
//! file would miss. Changes are debounced, so a save in several steps is one reload. The
//! caller runs the returned future as a task; it ends on cancel.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before acting: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The directory holding `file` (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching `dirs`; the returned future calls `action` (on a blocking thread) after a
/// change to a path for which `relevant` holds, once the changes have been quiet for
/// [`DEBOUNCE`], until `cancel`.
pub fn watch_paths(
    dirs: Vec<PathBuf>,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    cancel: CancellationToken,
    action: impl Fn() + Send + Sync + 'static,
) -> notify::Result<impl Future<Output = ()> + Send + 'static> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() && event.paths.iter().any(|p| relevant(p)) {
            let _ = tx.send(());
        }
    })?;
    let mut watched = Vec::new();
    for dir in dirs {
        // Absolute, so that event paths compare with canonical paths whatever the working
        // directory was.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !watched.contains(&dir) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            watched.push(dir);
        }
    }
    let action = Arc::new(action);
    Ok(async move {
        let mut watcher = watcher; // lives as long as this task
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = rx.recv() => if changed.is_none() { return },
            }
            // Wait for DEBOUNCE of quiet, so a save in several steps is one reload.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = rx.recv() => continue,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                }
            }
            // A watched directory that was replaced (renamed over) is a new inode: watch the
            // path again, so later changes in it are seen too.
            for dir in &watched {
                let _ = watcher.unwatch(dir);
                if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch again");
                }
            }
            let action = Arc::clone(&action);
            let _ = tokio::task::spawn_blocking(move || action()).await;
        }
    })
}
