//! Gregor's wire layer: framing, request decoding and response encoding on top of the
//! [`kafka_protocol`] crate, and the table of APIs and versions the broker advertises.
//!
//! This crate is sans-I/O: it turns bytes into typed requests and typed responses into bytes.
//! It owns every defence against hostile input that has to happen before a request reaches
//! a handler:
//! - [`frame::FrameDecoder`] enforces `socket.request.max.bytes` and rejects negative lengths;
//! - [`codec::decode_request`] never lets a decode failure (or a panic inside the codec)
//!   escape as anything but an error value;
//! - [`alloc_guard::GuardedAllocator`] makes the over-sized `Vec::with_capacity` calls that
//!   `kafka-protocol` 0.18 performs with unchecked wire counts harmless (see its docs).

pub mod alloc_guard;
pub mod batch_builder;
pub mod codec;
pub mod frame;
pub mod records;
pub mod versions;

pub use codec::{decode_request, encode_response, DecodeError, DecodedRequest};
pub use frame::{FrameDecoder, FrameError};
pub use kafka_protocol;
pub use versions::{supported_versions, SUPPORTED_APIS};
