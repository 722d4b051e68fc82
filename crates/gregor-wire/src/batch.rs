//! The layout of a Kafka `RecordBatch` (magic v2) header: 61 bytes, integers big-endian.
//!
//! | offset | field                  | type |
//! |-------:|------------------------|------|
//! |      0 | `baseOffset`           | i64  |
//! |      8 | `batchLength`          | i32  |
//! |     12 | `partitionLeaderEpoch` | i32  |
//! |     16 | `magic` (= 2)          | i8   |
//! |     17 | `crc` (CRC-32C)        | u32  |
//! |     21 | `attributes`           | i16  |
//! |     23 | `lastOffsetDelta`      | i32  |
//! |     27 | `baseTimestamp`        | i64  |
//! |     35 | `maxTimestamp`         | i64  |
//! |     43 | `producerId`           | i64  |
//! |     51 | `producerEpoch`        | i16  |
//! |     53 | `baseSequence`         | i32  |
//! |     57 | `recordsCount`         | i32  |
//! |     61 | records…               |      |
//!
//! `batchLength` counts the bytes after the length field, so a batch occupies
//! `batchLength + 12` bytes. The CRC covers bytes `[21..end)`. The parsed, validated header
//! is `gregor_log::BatchHeader`; the records section is walked with [`crate::read_record`].

/// The only supported batch format version.
pub const MAGIC_V2: i8 = 2;
/// Bytes preceding the part of the batch counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed header; the records section starts here.
pub const HEADER_SIZE: usize = 61;

/// Byte position of `baseOffset`.
pub const BASE_OFFSET_POS: usize = 0;
/// Byte position of `batchLength`.
pub const BATCH_LENGTH_POS: usize = 8;
/// Byte position of `partitionLeaderEpoch`.
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
/// Byte position of `magic`.
pub const MAGIC_POS: usize = 16;
/// Byte position of `crc`.
pub const CRC_POS: usize = 17;
/// Byte position of `attributes`; the CRC covers everything from here on.
pub const ATTRIBUTES_POS: usize = 21;
/// Byte position of `lastOffsetDelta`.
pub const LAST_OFFSET_DELTA_POS: usize = 23;
/// Byte position of `baseTimestamp`.
pub const BASE_TIMESTAMP_POS: usize = 27;
/// Byte position of `maxTimestamp`.
pub const MAX_TIMESTAMP_POS: usize = 35;
/// Byte position of `producerId`.
pub const PRODUCER_ID_POS: usize = 43;
/// Byte position of `producerEpoch`.
pub const PRODUCER_EPOCH_POS: usize = 51;
/// Byte position of `baseSequence`.
pub const BASE_SEQUENCE_POS: usize = 53;
/// Byte position of `recordsCount`.
pub const RECORDS_COUNT_POS: usize = 57;

/// `attributes` bits of the compression codec.
pub const COMPRESSION_MASK: i16 = 0x07;
/// `attributes` bit: timestamps are log-append time.
pub const TIMESTAMP_TYPE_BIT: i16 = 0x08;
/// `attributes` bit: transactional batch.
pub const TRANSACTIONAL_BIT: i16 = 0x10;
/// `attributes` bit: control batch (transaction markers).
pub const CONTROL_BIT: i16 = 0x20;
