//! The Gregor broker: connections, request routing, topic registry and the handlers that
//! connect Kafka requests to partition logs.
//!
//! Data flow (one way): socket → [`server`] (framing, in-order processing) →
//! `gregor_protocol::decode_request` → [`handlers`] → [`state::Broker`] / partition log →
//! response encode → socket.

pub mod config;
pub mod flusher;
pub mod groups;
pub mod handlers;
pub mod log_manager;
pub mod producer_state;
pub mod server;
pub mod state;
pub mod topic_config;
pub mod transactions;

pub use config::BrokerConfig;
pub use state::Broker;
