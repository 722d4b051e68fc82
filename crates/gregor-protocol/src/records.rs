//! Validation of the records inside a v2 record batch, before the broker stores it.
//!
//! The broker keeps batches as received, but like Kafka's log validator it must know that a
//! batch really contains `recordsCount` well-formed records, and it must not let a small
//! compressed batch expand into an unbounded buffer (a zip bomb). `kafka-protocol`'s record
//! decoder cannot be used for this on untrusted input: it reserves capacity from the wire's
//! record and header counts and decompresses without a cap (see the dependency notes). So this
//! module owns that path: bounded decompression per codec, then a walk over the records'
//! varint-framed fields that checks every length against the bytes that remain. Nothing is
//! allocated from a count read off the wire, and nothing is copied per record.

use gregor_compression::CompressionError;

/// Offsets in the v2 batch header (see `gregor_wire::batch`).
use gregor_wire::batch::{
    ATTRIBUTES_POS as ATTRIBUTES, HEADER_SIZE as RECORDS, RECORDS_COUNT_POS as RECORDS_COUNT,
};

/// Why a batch's records were rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordsError {
    #[error("batch shorter than its header")]
    Truncated,
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("{codec} data does not decompress: {reason}")]
    Decompress { codec: &'static str, reason: String },
    #[error("batch decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("record {index}: {reason}")]
    Malformed { index: i32, reason: String },
    #[error("batch claims {claimed} records but holds {found}")]
    CountMismatch { claimed: i32, found: i32 },
    #[error("{0} bytes after the last record")]
    TrailingBytes(usize),
    /// Records without a key where the topic needs one (`cleanup.policy` has `compact`):
    /// their indexes in the batch, for the Produce response's record errors (KIP-467).
    #[error("{} record(s) without a key on a compacted topic", .0.len())]
    MissingKeys(Vec<i32>),
}

/// Checks one whole v2 batch (whose header, length and CRC were already validated): the
/// records decompress within `max_decompressed` bytes, and there are exactly
/// `recordsCount` well-formed records with offset deltas 0, 1, 2, ...
pub fn validate_batch_records(batch: &[u8], max_decompressed: usize) -> Result<(), RecordsError> {
    validate_batch_records_with(batch, max_decompressed, false)
}

/// [`validate_batch_records`], and with `require_keys` (a compacted topic) every record must
/// have a key: a well-formed batch with keyless records fails with
/// [`RecordsError::MissingKeys`] naming all of them, as Kafka's log validator does.
pub fn validate_batch_records_with(
    batch: &[u8],
    max_decompressed: usize,
    require_keys: bool,
) -> Result<(), RecordsError> {
    if batch.len() < RECORDS {
        return Err(RecordsError::Truncated);
    }
    let attributes = gregor_wire::be_i16(batch, ATTRIBUTES);
    let count = gregor_wire::be_i32(batch, RECORDS_COUNT);
    let codec = (attributes & 0x7) as u8;
    let payload = &batch[RECORDS..];
    if codec == 0 {
        return walk_records(payload, count, require_keys);
    }
    let data = decompress_bounded(codec, payload, max_decompressed)?;
    walk_records(&data, count, require_keys)
}

/// Decompresses `input` with Kafka's framing for `codec`, failing as soon as the output would
/// exceed `limit` bytes (see [`gregor_compression::decompress_bounded`]).
pub fn decompress_bounded(codec: u8, input: &[u8], limit: usize) -> Result<Vec<u8>, RecordsError> {
    Ok(gregor_compression::decompress_bounded(codec, input, limit)?)
}

impl From<CompressionError> for RecordsError {
    fn from(e: CompressionError) -> Self {
        match e {
            CompressionError::UnknownCodec(c) => RecordsError::UnknownCodec(c),
            CompressionError::TooLarge { limit } => RecordsError::TooLarge { limit },
            CompressionError::Decompress { codec, reason }
            | CompressionError::Compress { codec, reason } => {
                RecordsError::Decompress { codec, reason }
            }
        }
    }
}

/// Walks `count` records in `data`, checking framing and offset deltas (and keys when
/// `require_keys`).
fn walk_records(data: &[u8], count: i32, require_keys: bool) -> Result<(), RecordsError> {
    let mut pos = 0;
    let mut index = 0;
    let mut keyless = Vec::new();
    while pos < data.len() {
        if index == count {
            return Err(RecordsError::TrailingBytes(data.len() - pos));
        }
        let malformed = |reason: String| RecordsError::Malformed { index, reason };
        let record =
            gregor_wire::read_record(data, &mut pos).map_err(|e| malformed(e.to_string()))?;
        if record.offset_delta != index {
            return Err(malformed(format!(
                "offset delta {}, expected {index}",
                record.offset_delta
            )));
        }
        if require_keys && record.key.is_none() {
            keyless.push(index);
        }
        index += 1;
    }
    if index != count {
        return Err(RecordsError::CountMismatch {
            claimed: count,
            found: index,
        });
    }
    if !keyless.is_empty() {
        return Err(RecordsError::MissingKeys(keyless));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch_builder::BatchBuilder;
    use bytes::Bytes;
    use kafka_protocol::records::Compression;
    use proptest::prelude::*;

    fn batch(n: usize, compression: Compression, value_len: usize) -> Bytes {
        BatchBuilder::new()
            .base_sequence(0)
            .compression(compression)
            .header("h", Some(b"x"))
            .records((0..n).map(|i| {
                let key = (i % 2 == 0).then(|| Bytes::from(format!("k{i}")));
                let value = Some(Bytes::from(vec![b'v'; value_len]));
                (key, value, 1_000 + i as i64)
            }))
            .encode()
            .unwrap()
    }

    #[test]
    fn accepts_real_batches_of_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(50, c, 100);
            validate_batch_records(&b, 1 << 20).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
    }

    #[test]
    fn rejects_zip_bombs_of_every_codec() {
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            // 200 records of 10 KB zeros: ~2 MB decompressed, tiny compressed.
            let b = batch(200, c, 10_000);
            assert!(b.len() < 200_000, "{c:?} compressed to {}", b.len());
            assert_eq!(
                validate_batch_records(&b, 1 << 20),
                Err(RecordsError::TooLarge { limit: 1 << 20 }),
                "{c:?}"
            );
        }
    }

    #[test]
    fn rejects_wrong_counts_and_deltas() {
        let b = batch(3, Compression::None, 10);
        let mut wrong = b.to_vec();
        wrong[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&4i32.to_be_bytes());
        assert!(matches!(
            validate_batch_records(&wrong, 1 << 20),
            Err(RecordsError::CountMismatch {
                claimed: 4,
                found: 3
            })
        ));
        wrong[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(validate_batch_records(&wrong, 1 << 20).is_err());
        wrong[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&2i32.to_be_bytes());
        assert!(matches!(
            validate_batch_records(&wrong, 1 << 20),
            Err(RecordsError::TrailingBytes(_))
        ));
    }

    #[test]
    fn snappy_claimed_length_is_checked_before_allocating() {
        // A raw snappy block whose header claims ~4 GiB of output.
        let mut b = batch(1, Compression::None, 1).to_vec();
        b.truncate(RECORDS);
        b[ATTRIBUTES + 1] |= 2;
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
        assert_eq!(
            validate_batch_records(&b, 1 << 20),
            Err(RecordsError::TooLarge { limit: 1 << 20 })
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_payloads(codec in 0u8..6, payload in proptest::collection::vec(any::<u8>(), 0..512), count in any::<i32>()) {
            let mut b = batch(1, Compression::None, 1).to_vec();
            b.truncate(RECORDS);
            b[ATTRIBUTES + 1] = codec;
            b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&payload);
            let _ = validate_batch_records(&b, 1 << 16);
        }
    }
}
