//! The fleet's tables, as versioned SQL migrations embedded in the binary.
//!
//! They are applied in one transaction under a PostgreSQL advisory lock, so instances that
//! start at once apply each migration once; `{schema}` in the SQL is the configured schema
//! (checked to be a plain identifier). `orchestron sync migrate` applies them explicitly;
//! the daemon applies them when it first reaches PostgreSQL.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::SyncError;

/// Every migration, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("sql/001_instances.sql")),
    (2, include_str!("sql/002_outbox.sql")),
    (3, include_str!("sql/003_takeovers.sql")),
    (4, include_str!("sql/004_dedup_keys.sql")),
    (5, include_str!("sql/005_dlq_replays.sql")),
    (6, include_str!("sql/006_drop_events_event_id.sql")),
    (7, include_str!("sql/007_events_claimed_index.sql")),
    (8, include_str!("sql/008_events_claimed_flag.sql")),
];

/// The advisory lock of `schema`'s migrations (a stable 64-bit hash of its name).
fn lock_key(schema: &str) -> i64 {
    let digest = Sha256::digest(format!("orchestron migrations {schema}").as_bytes());
    i64::from_le_bytes(digest[..8].try_into().expect("8 bytes of a 32-byte digest"))
}

/// Applies the migrations `schema` lacks; returns the versions applied now (empty when the
/// schema was current).
pub async fn migrate(client: &mut Client, schema: &str) -> Result<Vec<i32>, SyncError> {
    let txn = client.transaction().await?;
    // Taken first, so that even the schema is created by one instance only.
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)]).await?;
    // A migration that alters a table waits for its lock behind every open transaction on
    // it, and everything else on that table then queues behind the migration: give up after
    // 5 s instead (the migration is retried at the next heartbeat).
    txn.batch_execute("SET LOCAL lock_timeout = '5s'").await?;
    // `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the database even when the schema
    // exists; a role granted rights on its schema only must get past this.
    let exists = txn.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await?;
    if exists.is_none() {
        txn.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
    }
    txn.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let rows = txn.query(&format!("SELECT version FROM {schema}.migrations"), &[]).await?;
    let done: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        txn.batch_execute(&sql.replace("{schema}", schema)).await?;
        let record = format!("INSERT INTO {schema}.migrations (version) VALUES ($1)");
        txn.execute(&record, &[version]).await?;
        applied.push(*version);
    }
    txn.commit().await?;
    Ok(applied)
}

/// The newest migration this build knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}
