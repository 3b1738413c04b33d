//! Orchestron: a durable webhook relay.
//!
//! ```text
//! sender ──HTTP──► ingest ──────────────────────────────► store (redb, one file)
//!   auth → read body (size cap) → parse JSON → validate      one writer thread: group commit,
//!   (schema of the event type) → routable? ────────────────► fsync, then every waiter gets 202
//!                                                                  │
//! relay (background) ◄── claim due events (O(batch)) ◄────────────┘
//!   route (snapshot of the route table) → publish to each destination concurrently
//!   (Kafka: rdkafka, idempotent, acks=all; RabbitMQ: lapin, confirms, mandatory)
//!   → settle: delete when every destination confirmed │ reschedule the failed ones with backoff
//! ```
//!
//! One module per stage: [`ingest`], [`validate`], [`store`] (the only module that touches
//! redb), [`relay`], [`routing`], [`publish`]; [`config`] loads and checks the YAML file;
//! [`app`] wires the tasks together and shuts them down in pipeline order.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod event;
pub mod ingest;
pub mod publish;
pub mod relay;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod validate;
