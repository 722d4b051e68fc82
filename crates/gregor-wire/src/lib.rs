//! Kafka's byte-level encodings, in one place: zig-zag and unsigned varints, bounds-checked
//! big-endian readers, the layout of a v2 record batch header, a walker over the records of
//! a batch's (decompressed) records section, and Java's `String.hashCode`.
//!
//! Pure bytes: nothing here knows about requests, files or time, so every crate that reads
//! Kafka's formats (`gregor-protocol`, `gregor-log`, `gregor-txn`, `gregor-group`,
//! `gregor-client`) can depend on it without depending on each other. Every reader checks
//! lengths against the bytes that remain and never panics on malformed input (the
//! fixed-position `be_*` helpers excepted; they are for headers whose length was checked).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod reader;
pub mod record;
pub mod varint;

pub use reader::{be_i16, be_i32, be_i64, be_u32, be_u64, Reader};
pub use record::{read_record, RecordView};

/// Why bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes remain than the field needs.
    #[error("needed {needed} bytes, {remaining} remain")]
    Truncated {
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that remain.
        remaining: usize,
    },
    /// A varint ends with the input.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint has more than 10 bytes.
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    /// A varint does not fit an `i32`.
    #[error("varint {0} out of i32 range")]
    VarintOutOfRange(i64),
    /// A length or count is negative where that is not allowed.
    #[error("negative {what} {value}")]
    Negative {
        /// What the number is (e.g. "record length").
        what: &'static str,
        /// The number read.
        value: i64,
    },
    /// A string is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A null where a value is required.
    #[error("null where a string is required")]
    Null,
    /// An array count larger than the bytes that remain could hold.
    #[error("array count {0} exceeds the bytes left")]
    CountTooLarge(i32),
    /// A record has bytes after its last header.
    #[error("{0} bytes left inside the record")]
    TrailingInRecord(usize),
}

/// Java's `String.hashCode` (UTF-16 code units, wrapping 32-bit arithmetic): what Kafka
/// hashes group ids and transactional ids with to pick their coordinator partition.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The coordinator partition of a group id (in `__consumer_offsets`) or a transactional id
/// (in `__transaction_state`) among `partitions`: `Utils.abs(s.hashCode()) % n`, where
/// `Utils.abs` maps `i32::MIN` to 0.
pub fn coordinator_partition(s: &str, partitions: i32) -> i32 {
    (java_string_hash(s) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_string_hash_matches_java() {
        // Values from java.lang.String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("g"), 103);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(coordinator_partition("polygenelubricants", 50), 0);
    }
}
