//! `store:`: the redb file, its quota, cache and commit batching.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Deserialize;

use super::HumanDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Above this file size ingest answers 503 with `Retry-After` instead of accepting.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// redb's page cache. Capped so that resident memory does not grow with the backlog.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: ByteSize,
    /// Most events one group commit takes. `1` gives one fsync per request (a benchmark arm).
    #[serde(default = "default_commit_batch")]
    pub commit_batch_max: usize,
    /// How long an idempotency key is remembered: a repeat within it is answered as a
    /// duplicate and not published again.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: HumanDuration,
    /// redb's quick repair: every commit also saves the allocator state, so opening the file
    /// after a crash takes milliseconds instead of a walk over the whole file (docs/benchmarks.md
    /// has what it costs in ingest throughput).
    #[serde(default)]
    pub quick_repair: bool,
    /// Ingest answers 503 once appending would leave less than this free on the store's
    /// filesystem, so the disk never fills under the store. Default: 2 % of the filesystem,
    /// at most 64 MiB.
    #[serde(default)]
    pub min_free_bytes: Option<ByteSize>,
    /// A file of this size kept next to the store and deleted when the disk fills anyway,
    /// so that the relay can drain and the store can reopen. Default: `min_free_bytes`, at
    /// most 16 MiB; `0` turns it off.
    #[serde(default)]
    pub reserve_bytes: Option<ByteSize>,
}

fn default_max_bytes() -> ByteSize {
    ByteSize::gib(8)
}
fn default_cache_bytes() -> ByteSize {
    ByteSize::mib(32)
}
fn default_commit_batch() -> usize {
    1024
}
fn default_dedup_window() -> HumanDuration {
    HumanDuration::from_secs(72 * 3600)
}
