//! The Gregor broker: connections, request routing, topic registry and the handlers that
//! connect Kafka requests to partition logs.
//!
//! Data flow (one way): socket → [`server`] (framing, in-order processing) →
//! `gregor_protocol::decode_request` → [`handlers`] → [`Broker`] → coordinators
//! ([`groups`], [`transactions`]) / [`partition`] → `gregor_log` → response encode →
//! socket. Modules import only modules below them (checked by
//! `scripts/check_module_cycles.py`):
//!
//! ```text
//! server → handlers → broker → transactions → markers → groups → internal_topics → registry
//!                            transactions → cluster
//!                            → cluster (gregor_meta) → replication → registry
//!                            → flusher, checkpoint, log_manager (background work)
//! replication → partition (fetchers: gregor_client::BrokerConnection)
//! registry, flusher, checkpoint → partition → partition::{producer_state, replica}
//! leaves: config, topic_config, appends, metrics, security (listeners, TLS, SASL, SCRAM)
//! ```

pub mod appends;
pub mod broker;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod flusher;
pub mod groups;
pub mod handlers;
pub mod internal_topics;
pub mod log_manager;
pub mod markers;
pub mod metrics;
pub mod partition;
pub mod registry;
pub mod replication;
pub mod security;
pub mod server;
pub mod topic_config;
pub mod transactions;

pub use broker::Broker;
pub use config::BrokerConfig;
