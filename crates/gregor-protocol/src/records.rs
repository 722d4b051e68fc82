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

/// Offsets in the v2 batch header (see `gregor_log::batch`).
const ATTRIBUTES: usize = 21;
const RECORDS_COUNT: usize = 57;
const RECORDS: usize = 61;

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
}

/// Checks one whole v2 batch (whose header, length and CRC were already validated): the
/// records decompress within `max_decompressed` bytes, and there are exactly
/// `recordsCount` well-formed records with offset deltas 0, 1, 2, ...
pub fn validate_batch_records(batch: &[u8], max_decompressed: usize) -> Result<(), RecordsError> {
    if batch.len() < RECORDS {
        return Err(RecordsError::Truncated);
    }
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES], batch[ATTRIBUTES + 1]]);
    let count = i32::from_be_bytes(
        batch[RECORDS_COUNT..RECORDS_COUNT + 4]
            .try_into()
            .expect("4 bytes"),
    );
    let codec = (attributes & 0x7) as u8;
    let payload = &batch[RECORDS..];
    if codec == 0 {
        return walk_records(payload, count);
    }
    let data = decompress_bounded(codec, payload, max_decompressed)?;
    walk_records(&data, count)
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

/// A cursor over varint-framed record fields; every read is checked against what remains.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varlong(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn varint(&mut self) -> Result<i32, String> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| format!("varint {v} out of i32 range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!(
                "length {n} exceeds the {} bytes left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A varint length followed by that many bytes; -1 (null) allowed if `nullable`.
    fn bytes(&mut self, nullable: bool, what: &str) -> Result<(), String> {
        match self.varint()? {
            -1 if nullable => Ok(()),
            n if n < 0 => Err(format!("negative {what} length {n}")),
            n => self.take(n as usize).map(|_| ()),
        }
    }
}

/// Walks `count` records in `data`, checking framing and offset deltas.
fn walk_records(data: &[u8], count: i32) -> Result<(), RecordsError> {
    let mut c = Cursor { buf: data };
    let mut index = 0;
    while !c.buf.is_empty() {
        if index == count {
            return Err(RecordsError::TrailingBytes(c.buf.len()));
        }
        let malformed = |reason: String| RecordsError::Malformed { index, reason };
        let len = c.varint().map_err(malformed)?;
        if len < 0 {
            return Err(malformed(format!("negative record length {len}")));
        }
        let mut r = Cursor {
            buf: c.take(len as usize).map_err(malformed)?,
        };
        let check = |r: &mut Cursor| -> Result<(), String> {
            r.take(1)?; // attributes
            r.varlong()?; // timestamp delta
            let delta = r.varint()?;
            if delta != index {
                return Err(format!("offset delta {delta}, expected {index}"));
            }
            r.bytes(true, "key")?;
            r.bytes(true, "value")?;
            let headers = r.varint()?;
            if headers < 0 {
                return Err(format!("negative header count {headers}"));
            }
            for _ in 0..headers {
                r.bytes(false, "header key")?;
                r.bytes(true, "header value")?;
            }
            if !r.buf.is_empty() {
                return Err(format!("{} bytes left inside the record", r.buf.len()));
            }
            Ok(())
        };
        check(&mut r).map_err(malformed)?;
        index += 1;
    }
    if index != count {
        return Err(RecordsError::CountMismatch {
            claimed: count,
            found: index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;

    fn batch(n: usize, compression: Compression, value_len: usize) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // kafka-protocol starts a new batch whenever offset - sequence changes.
                sequence: i as i32,
                timestamp: 1_000 + i as i64,
                key: if i % 2 == 0 {
                    Some(Bytes::from(format!("k{i}")))
                } else {
                    None
                },
                value: Some(Bytes::from(vec![b'v'; value_len])),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
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
