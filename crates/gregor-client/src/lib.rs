//! `gregor-client`: an async, pure-Rust Kafka client built on tokio and the
//! `kafka-protocol` codecs. It talks to any Kafka-compatible broker, Gregor included.
//!
//! - [`Client`]: bootstrap, metadata refresh, one pipelined connection per broker, API
//!   version negotiation (ApiVersions; each request uses min(client max, broker max)).
//! - [`Producer`]: batching (`linger`, `batch_size`), compression, Java-compatible murmur2
//!   partitioning for keyed records and sticky partitioning for unkeyed ones, acks, retries
//!   that keep per-partition order, idempotence when the broker offers `InitProducerId`.
//! - [`Consumer`]: manual assignment, seek, fetch loop; group subscription with the classic
//!   protocol (range and cooperative-sticky assignors), automatic or manual commits.
//! - [`Admin`]: topics, partitions, configs, groups, offsets.
//!
//! ```no_run
//! # async fn f() -> gregor_client::Result<()> {
//! use gregor_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
//! let client = Client::connect(ClientConfig::new("localhost:9092")).await?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
//! let ack = producer.send(ProducerRecord::new("events", "hello").with_key("k")).await?;
//! println!("written at {}/{}", ack.await?.partition, 0);
//! producer.flush().await?;
//! # Ok(()) }
//! ```
//!
//! # Safety against hostile brokers
//! Response frames are capped by [`ClientConfig::max_response_bytes`] before they are
//! buffered, and record batches are decoded by [`records::decode_batches`], which checks
//! counts against bytes and bounds decompression. Response *messages* are decoded by
//! `kafka-protocol`, whose array decoding reserves capacity from wire counts; a program that
//! talks to untrusted brokers should install a guarding global allocator as the `gregor`
//! binary does (`gregor_protocol::alloc_guard::GuardedAllocator`).

#![warn(missing_docs)]

pub mod admin;
pub mod client;
mod conn;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;
pub mod records;

pub use admin::{
    Admin, LogDir, LogDirPartition, OngoingReassignment, PartitionOutcome, QuorumDescription,
};
pub use client::{Client, ClientConfig};
pub use conn::BrokerConnection;
pub use consumer::{Consumer, ConsumerConfig};

pub use error::{Error, Result};
pub use producer::{Producer, ProducerConfig, ProducerRecord};
pub use records::{Compression, ConsumerRecord, Header};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
