//! Integration tests: the real daemon (in-process on port 0, or the real binary for crash
//! tests) against the real RabbitMQ on 127.0.0.1:5672, a Kafka-protocol broker (tansu) on
//! 127.0.0.1:9092, and rdkafka's in-process MockCluster for Kafka fault injection.
//!
//! Each test uses its own exchange, queue or topic name and its own temp store, so tests run
//! in parallel without seeing each other's messages.

mod broker_tls;
mod certs;
mod config_files;
mod console;
mod crash;
mod disk;
mod dlq;
mod faults;
mod fleet;
mod helpers;
mod http2;
mod ingest;
mod kafka;
mod layers;
mod limits;
mod observability;
mod openapi;
mod outage;
mod rabbitmq;
mod reload;
mod routing;
mod sources;
mod systemd;
mod takeover;
mod tls;
mod trace;
