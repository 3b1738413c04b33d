//! Orchestron: a durable webhook relay.
//!
//! ```text
//! sender ──HTTP──► ingest ──────────────────────────────► store (redb, one file)
//!   sources (auth, limits) → read body → parse JSON       one writer thread: group commit,
//!   → validate (schema of the type) → routable? ─────────► fsync, then every waiter gets 202
//!                                                                  │
//! relay (background) ◄── claim due events (O(batch)) ◄────────────┘
//!   route (snapshot of the route table) → publish to each destination concurrently
//!   (Kafka: rdkafka, idempotent, acks=all; RabbitMQ: lapin, confirms, mandatory)
//!   → settle: delete when every destination confirmed │ reschedule the failed ones with backoff
//!   │ move to the DLQ
//! admin (bearer token): DLQ, outbox, config status, schemas; /ready and /metrics (probe)
//! live: the running configuration, rebuilt and swapped on SIGHUP or a file change
//! ```
//!
//! Modules, from the top of the layers to the bottom; a module imports only modules below it
//! (docs/architecture.md has the whole map, and `tests/integration/layers.rs` keeps it true):
//!
//! - [`app`] (only `main` imports it) builds and runs everything; [`cli`] runs the operator
//!   commands.
//! - [`admin`], [`ingest`], [`relay`]: the listeners' handlers and the background workers.
//! - [`live`]: the running configuration and its reload.
//! - [`sources`] (who may send), [`routing`] (where events go), [`validate`] (schemas),
//!   [`publish`] (the brokers), [`store`] (the only module that touches redb), [`server`] (the
//!   ingest listener's accept loop and TLS).
//! - [`config`]: the YAML model, plain data.
//! - [`delivery`] and [`event`] (the shared nouns), [`telemetry`] (logs, metrics), [`watch`]
//!   (file watching), [`systemd`], [`tasks`] (the named task tracker).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod event;
pub mod ingest;
pub mod live;
pub mod publish;
pub mod relay;
pub mod routing;
pub mod server;
pub mod sources;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod tasks;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod validate;
pub mod watch;
