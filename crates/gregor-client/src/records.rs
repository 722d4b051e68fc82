//! Record batch (magic v2) encoding and a defensive decoder.
//!
//! The decoder is the client's own rather than `kafka-protocol`'s `RecordBatchDecoder`
//! because of three defects of that crate (0.18) that a client must not inherit:
//! it reserves `record_count` entries read off the wire before checking the bytes, it
//! decompresses without any bound, and it collapses repeated header keys (Kafka allows
//! them). Here every count is checked against the bytes that remain (a record takes at
//! least [`MIN_RECORD_BYTES`]), decompression stops at [`MAX_DECOMPRESSED_BYTES`] per batch,
//! headers are kept as a list, and keys/values are zero-copy `Bytes` slices.
//!
//! Decompression goes through `gregor-compression` (bounded). Compression on the encode side
//! uses `kafka-protocol`'s compressors (gzip, snappy in the
//! xerial framing the Java client uses, lz4 frame, zstd).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gregor_wire::batch::{BASE_OFFSET_POS, BATCH_LENGTH_POS, LAST_OFFSET_DELTA_POS};
use gregor_wire::varint::{put_varint, put_varlong, varlong_len};
use gregor_wire::{be_i32, be_i64};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

use crate::error::{Error, Result};

/// Smallest possible encoded record: length, attributes, timestamp delta, offset delta,
/// key length, value length and header count, each at least one byte.
pub const MIN_RECORD_BYTES: usize = 7;
/// Upper bound on the decompressed size of one batch.
pub const MAX_DECOMPRESSED_BYTES: usize = 128 << 20;
/// Size of the v2 batch header up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Compression codec of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing on encode; both framings on decode).
    Snappy,
    /// LZ4 frame.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn attr(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "zstd" => Compression::Zstd,
            other => {
                return Err(Error::Config(format!(
                    "unknown compression {other:?} (none, gzip, snappy, lz4, zstd)"
                )))
            }
        })
    }
}

/// A record header. Keys may repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: String,
    /// Header value (`None` is a null value).
    pub value: Option<Bytes>,
}

/// A record to encode.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
    /// Creation timestamp (ms since the epoch).
    pub timestamp: i64,
}

impl OutRecord {
    /// Rough encoded size, for batch size accounting.
    pub fn size_estimate(&self) -> usize {
        size_estimate(self.key.as_ref(), self.value.as_ref(), &self.headers)
    }
}

/// [`OutRecord::size_estimate`] of a record's parts.
pub(crate) fn size_estimate(
    key: Option<&Bytes>,
    value: Option<&Bytes>,
    headers: &[Header],
) -> usize {
    let h: usize = headers
        .iter()
        .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 4)
        .sum();
    key.map_or(0, |k| k.len()) + value.map_or(0, |v| v.len()) + h + 16
}

/// Producer identity for idempotent batches.
#[derive(Debug, Clone, Copy)]
pub struct ProducerIdentity {
    /// Producer id (-1 without idempotence).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record (-1 without idempotence).
    pub base_sequence: i32,
}

impl Default for ProducerIdentity {
    fn default() -> Self {
        ProducerIdentity {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

fn put_bytes_field(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i32);
            buf.put_slice(b);
        }
    }
}

fn bytes_field_len(b: Option<&[u8]>) -> usize {
    match b {
        None => 1,
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn encode_records(out: &mut BytesMut, records: &[OutRecord], base_ts: i64) {
    for (i, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp - base_ts;
        let mut len = 1
            + varlong_len(ts_delta)
            + varlong_len(i as i64)
            + bytes_field_len(r.key.as_deref())
            + bytes_field_len(r.value.as_deref())
            + varlong_len(r.headers.len() as i64);
        for h in &r.headers {
            len += bytes_field_len(Some(h.key.as_bytes())) + bytes_field_len(h.value.as_deref());
        }
        out.reserve(len + 5);
        put_varint(out, len as i32);
        let start = out.len();
        out.put_i8(0);
        put_varlong(out, ts_delta);
        put_varint(out, i as i32);
        put_bytes_field(out, r.key.as_deref());
        put_bytes_field(out, r.value.as_deref());
        put_varint(out, r.headers.len() as i32);
        for h in &r.headers {
            put_bytes_field(out, Some(h.key.as_bytes()));
            put_bytes_field(out, h.value.as_deref());
        }
        debug_assert_eq!(out.len() - start, len);
    }
}

/// Encode `records` as one v2 batch (base offset 0) with `compression`.
///
/// ```
/// use bytes::Bytes;
/// use gregor_client::records::{encode_batch, decode_batches, Compression, OutRecord, ProducerIdentity};
/// let recs = vec![OutRecord { value: Some(Bytes::from_static(b"v")), timestamp: 5, ..Default::default() }];
/// let batch = encode_batch(&recs, Compression::Gzip, ProducerIdentity::default()).unwrap();
/// let back = decode_batches(batch).unwrap();
/// assert_eq!(back[0].value.as_deref(), Some(&b"v"[..]));
/// ```
pub fn encode_batch(
    records: &[OutRecord],
    compression: Compression,
    producer: ProducerIdentity,
) -> Result<Bytes> {
    if records.is_empty() {
        return Err(Error::Config("cannot encode an empty batch".into()));
    }
    let base_ts = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
    let estimate: usize = records.iter().map(|r| r.size_estimate()).sum();
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + estimate + 64);
    out.put_i64(0); // base offset
    out.put_i32(0); // batch length, filled below
    out.put_i32(-1); // partition leader epoch
    out.put_i8(2); // magic
    out.put_u32(0); // crc, filled below
    out.put_i16(compression.attr());
    out.put_i32(records.len() as i32 - 1);
    out.put_i64(base_ts);
    out.put_i64(max_ts);
    out.put_i64(producer.producer_id);
    out.put_i16(producer.producer_epoch);
    out.put_i32(producer.base_sequence);
    out.put_i32(records.len() as i32);
    let compressed = |out: &mut BytesMut| -> anyhow::Result<()> {
        match compression {
            Compression::None => {
                encode_records(out, records, base_ts);
                Ok(())
            }
            Compression::Gzip => Gzip::compress(out, |b| {
                encode_records(b, records, base_ts);
                Ok(())
            }),
            Compression::Snappy => Snappy::compress(out, |b| {
                encode_records(b, records, base_ts);
                Ok(())
            }),
            Compression::Lz4 => Lz4::compress(out, |b| {
                encode_records(b, records, base_ts);
                Ok(())
            }),
            Compression::Zstd => Zstd::compress(out, |b| {
                encode_records(b, records, base_ts);
                Ok(())
            }),
        }
    };
    compressed(&mut out).map_err(|e| Error::Protocol(format!("compressing batch: {e:#}")))?;
    let len = out.len() - 12;
    out[8..12].copy_from_slice(&(len as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic (filled in by the consumer; empty from [`decode_batches`]).
    pub topic: String,
    /// Partition (filled in by the consumer).
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms since the epoch).
    pub timestamp: i64,
    /// Whether the timestamp is log-append time rather than create time.
    pub log_append_time: bool,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers, in wire order, keys may repeat.
    pub headers: Vec<Header>,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// The records section of a batch, decompressed within [`MAX_DECOMPRESSED_BYTES`].
fn decompress(codec: i16, data: Bytes) -> Result<Bytes> {
    if codec == 0 {
        return Ok(data);
    }
    gregor_compression::decompress_bounded(codec as u8, &data, MAX_DECOMPRESSED_BYTES)
        .map(Bytes::from)
        .map_err(|e| err(format!("decompressing batch: {e}")))
}

/// Decode every complete batch in `data` (a Fetch response's `records`). A partial batch at
/// the end (brokers may cut the last one) is ignored. Control batches yield no records.
pub fn decode_batches(data: Bytes) -> Result<Vec<ConsumerRecord>> {
    Ok(decode_batches_with_next(data)?.0)
}

/// Like [`decode_batches`], also returning the offset after the last complete batch
/// (`None` if there was none). Control batches count, so a consumer moves past them.
pub fn decode_batches_with_next(mut data: Bytes) -> Result<(Vec<ConsumerRecord>, Option<i64>)> {
    let mut out = Vec::new();
    let mut next = None;
    while data.remaining() >= BATCH_HEADER_BYTES {
        let batch_len = be_i32(&data, BATCH_LENGTH_POS);
        if batch_len < (BATCH_HEADER_BYTES - 12) as i32 {
            return Err(err(format!("batch length {batch_len} too small")));
        }
        let total = 12 + batch_len as usize;
        if total > data.remaining() {
            break; // partial trailing batch
        }
        let batch = data.split_to(total);
        let base = be_i64(&batch, BASE_OFFSET_POS);
        let last_delta = be_i32(&batch, LAST_OFFSET_DELTA_POS);
        next = Some(base + i64::from(last_delta) + 1);
        decode_one(batch, &mut out)?;
    }
    Ok((out, next))
}

fn decode_one(mut b: Bytes, out: &mut Vec<ConsumerRecord>) -> Result<()> {
    let base_offset = b.get_i64();
    let _len = b.get_i32();
    let _epoch = b.get_i32();
    let magic = b.get_i8();
    if magic != 2 {
        return Err(err(format!("unsupported record batch magic {magic}")));
    }
    let crc = b.get_u32();
    if crc32c::crc32c(&b) != crc {
        return Err(err("record batch CRC mismatch"));
    }
    let attributes = b.get_i16();
    let _last_delta = b.get_i32();
    let base_ts = b.get_i64();
    let max_ts = b.get_i64();
    let _pid = b.get_i64();
    let _pepoch = b.get_i16();
    let _seq = b.get_i32();
    let count = b.get_i32();
    if attributes & 0x20 != 0 {
        return Ok(()); // control batch (transaction markers)
    }
    if count < 0 {
        return Err(err("negative record count"));
    }
    let log_append = attributes & 0x08 != 0;
    let body = decompress(attributes & 0x07, b)?;
    let count = count as usize;
    if count.saturating_mul(MIN_RECORD_BYTES) > body.remaining() {
        return Err(err(format!(
            "batch claims {count} records in {} bytes",
            body.remaining()
        )));
    }
    out.reserve(count);
    let mut pos = 0;
    for _ in 0..count {
        let r =
            gregor_wire::read_record(&body, &mut pos).map_err(|e| err(format!("record: {e}")))?;
        let field = |f: Option<&[u8]>| f.map(|f| body.slice_ref(f));
        let (off_delta, ts_delta) = (r.offset_delta, r.timestamp_delta);
        let (key, value) = (field(r.key), field(r.value));
        let headers = r
            .headers()
            .map(|(k, v)| Header {
                key: String::from_utf8_lossy(k).into_owned(),
                value: field(v),
            })
            .collect();
        out.push(ConsumerRecord {
            topic: String::new(),
            partition: 0,
            offset: base_offset + off_delta as i64,
            timestamp: if log_append {
                max_ts
            } else {
                base_ts + ts_delta
            },
            log_append_time: log_append,
            key,
            value,
            headers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize) -> Vec<OutRecord> {
        (0..n)
            .map(|i| OutRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'x'; i * 10])),
                headers: vec![
                    Header {
                        key: "h".into(),
                        value: Some(Bytes::from_static(b"1")),
                    },
                    Header {
                        key: "h".into(),
                        value: None,
                    },
                ],
                timestamp: 1000 + i as i64,
            })
            .collect()
    }

    #[test]
    fn roundtrip_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let input = recs(50);
            let b = encode_batch(&input, c, ProducerIdentity::default()).unwrap();
            let out = decode_batches(b.clone()).unwrap();
            assert_eq!(out.len(), 50, "{c:?}");
            assert_eq!(decode_batches_with_next(b.clone()).unwrap().1, Some(50));
            for (i, (a, r)) in input.iter().zip(&out).enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.key, a.key);
                assert_eq!(r.value, a.value);
                assert_eq!(r.timestamp, a.timestamp);
                assert_eq!(r.headers, a.headers, "duplicate header keys survive");
            }
            // kafka-protocol's decoder agrees on the bytes (CRC, layout).
            let mut bb = b.clone();
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bb).unwrap();
            assert_eq!(set.records.len(), 50);
            // A truncated trailing batch is skipped, not an error.
            let cut = b.slice(..b.len() - 3);
            assert!(decode_batches(cut).unwrap().is_empty());
        }
    }

    #[test]
    fn hostile_record_count_is_rejected_before_allocating() {
        let mut b = BytesMut::from(
            &encode_batch(&recs(1), Compression::None, ProducerIdentity::default()).unwrap()[..],
        );
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = decode_batches(b.freeze()).unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
    }

    #[test]
    fn corrupt_crc_is_rejected() {
        let mut b = BytesMut::from(
            &encode_batch(&recs(3), Compression::None, ProducerIdentity::default()).unwrap()[..],
        );
        let n = b.len();
        b[n - 1] ^= 0xff;
        assert!(decode_batches(b.freeze()).is_err());
    }

    #[test]
    fn gzip_bomb_is_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_DECOMPRESSED_BYTES >> 20) + 2 {
            enc.write_all(&zeros).unwrap();
        }
        let data = enc.finish().unwrap();
        assert!(decompress(1, Bytes::from(data)).is_err());
    }
}
