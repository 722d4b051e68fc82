//! Producers and transactions, sans-I/O.
//!
//! - [`producer_state`]: idempotent-producer state of a partition (which producer ids wrote
//!   to it, at which epoch, the sequence numbers of their last batches, their open
//!   transactions), consulted by every produce. Its types are re-exported here.
//! - [`coordinator`]: the transaction coordinator (`__transaction_state`).
//! - [`records`]: the `__transaction_state` and control record schemas.

pub mod coordinator;
pub mod producer_state;
pub mod records;

pub use coordinator::{
    txn_partition, InitOutcome, MarkerJob, TxnConfig, TxnCoordinator, TxnError, TxnMetadata,
    TxnRecord, TxnStatus,
};
pub use producer_state::*;
