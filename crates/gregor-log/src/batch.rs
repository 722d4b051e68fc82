//! Kafka `RecordBatch` (magic v2) header parsing and validation.
//!
//! The header layout (61 bytes, positions re-exported here) is `gregor_wire::batch`.
//!
//! `batchLength` counts the bytes *after* the length field, so a batch occupies
//! `batchLength + 12` bytes in total. The CRC covers bytes `[21..end)`, i.e.
//! everything from `attributes` on; `baseOffset` and `partitionLeaderEpoch`
//! can therefore be rewritten by the broker without recomputing it.
//!
//! Nothing in this module looks at individual records: the log stores and
//! serves batches as opaque byte ranges.

use std::ops::Range;

pub use gregor_wire::batch::{
    ATTRIBUTES_POS, BASE_OFFSET_POS, BASE_SEQUENCE_POS, BASE_TIMESTAMP_POS, BATCH_LENGTH_POS,
    CRC_POS, LAST_OFFSET_DELTA_POS, LOG_OVERHEAD, MAGIC_POS, MAGIC_V2, MAX_TIMESTAMP_POS,
    PARTITION_LEADER_EPOCH_POS, PRODUCER_EPOCH_POS, PRODUCER_ID_POS, RECORDS_COUNT_POS,
};
use gregor_wire::batch::{COMPRESSION_MASK, CONTROL_BIT, TIMESTAMP_TYPE_BIT, TRANSACTIONAL_BIT};
use gregor_wire::{be_i16, be_i32, be_i64};

/// Why a batch could not be parsed or validated.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The buffer ends before the header or the batch does.
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes required (header size or whole batch size).
        needed: usize,
        /// Bytes available in the buffer.
        available: usize,
    },
    /// `batchLength` is too small to hold a v2 header.
    #[error("invalid batch length {0}")]
    InvalidLength(i32),
    /// `magic` is not 2.
    #[error("unsupported magic {0} (only v2 batches are supported)")]
    InvalidMagic(i8),
    /// The stored CRC-32C does not match the batch contents.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over bytes `[21..end)`.
        computed: u32,
    },
    /// `recordsCount` is negative.
    #[error("invalid records count {0}")]
    InvalidRecordsCount(i32),
    /// `lastOffsetDelta` is negative.
    #[error("invalid last offset delta {0}")]
    InvalidLastOffsetDelta(i32),
}

impl BatchError {
    /// True for errors that indicate damaged bytes (as opposed to a
    /// well-formed batch with semantically invalid contents).
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            BatchError::InvalidRecordsCount(_) | BatchError::InvalidLastOffsetDelta(_)
        )
    }
}

/// The decoded fixed-size header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record in the batch.
    pub base_offset: i64,
    /// Bytes following the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch of the partition leader that appended the batch.
    pub partition_leader_epoch: i32,
    /// Format version; always 2 for a parsed header.
    pub magic: i8,
    /// CRC-32C of bytes `[21..end)`.
    pub crc: u32,
    /// Compression codec, timestamp type, transactional and control flags.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent / transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Size of the fixed v2 batch header in bytes.
    pub const SIZE: usize = gregor_wire::batch::HEADER_SIZE;

    /// Smallest legal `batchLength` (a batch with an empty records section).
    pub const MIN_BATCH_LENGTH: i32 = (Self::SIZE - LOG_OVERHEAD) as i32;

    /// Decodes the header at the start of `buf` (which needs at least
    /// [`BatchHeader::SIZE`] bytes).
    ///
    /// Checks only what is needed to interpret the header at all: the magic
    /// byte and that `batchLength` covers a full header. It does not check
    /// that the whole batch is present or that the CRC matches; use
    /// [`validate_batch`] for that.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < Self::SIZE {
            return Err(BatchError::Truncated {
                needed: Self::SIZE,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::InvalidMagic(magic));
        }
        let batch_length = be_i32(buf, BATCH_LENGTH_POS);
        if batch_length < Self::MIN_BATCH_LENGTH {
            return Err(BatchError::InvalidLength(batch_length));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_POS),
            batch_length,
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH_POS),
            magic,
            crc: be_i32(buf, CRC_POS) as u32,
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_POS),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_POS),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_POS),
            producer_id: be_i64(buf, PRODUCER_ID_POS),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_POS),
            base_sequence: be_i32(buf, BASE_SEQUENCE_POS),
            records_count: be_i32(buf, RECORDS_COUNT_POS),
        })
    }

    /// Total size of the batch on the wire / on disk (`batchLength + 12`).
    pub fn total_size(&self) -> usize {
        usize::try_from(self.batch_length).unwrap_or(0) + LOG_OVERHEAD
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset following the last record of the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// Compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// True for control batches (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// True if the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// True if timestamps are broker-assigned (`LogAppendTime`).
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    /// Checks the header fields that do not depend on the record bytes.
    fn check_counts(&self) -> Result<(), BatchError> {
        if self.records_count < 0 {
            return Err(BatchError::InvalidRecordsCount(self.records_count));
        }
        if self.last_offset_delta < 0 {
            return Err(BatchError::InvalidLastOffsetDelta(self.last_offset_delta));
        }
        Ok(())
    }
}

/// Computes the CRC-32C that belongs in the header of `batch` (which must be
/// a complete batch): the checksum of bytes `[21..end)`.
pub fn compute_crc(batch: &[u8]) -> u32 {
    #[cfg(any(test, feature = "crc-count"))]
    crc_count::bump();
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Counts [`compute_crc`] calls on the current thread (feature `crc-count`, for tests that
/// prove a path checksums each batch once).
#[cfg(any(test, feature = "crc-count"))]
pub mod crc_count {
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn bump() {
        COUNT.with(|c| c.set(c.get() + 1));
    }

    /// CRCs computed by this thread so far.
    pub fn get() -> u64 {
        COUNT.with(Cell::get)
    }
}

/// Concatenated v2 batches (the `records` of one partition in a Produce request) whose
/// framing and CRCs were checked once, with each batch's header parsed once.
/// [`crate::PartitionLog::append_validated`] appends them without checking again, and the
/// caller reuses [`headers`](Self::headers) instead of walking the bytes again. The only
/// way to build one is [`ValidatedBatches::validate`], so holding one proves the check.
#[derive(Debug, Clone)]
pub struct ValidatedBatches<'a> {
    data: &'a [u8],
    /// Each batch's header and its start in `data`, in order.
    batches: Vec<(BatchHeader, usize)>,
}

/// Why [`ValidatedBatches::validate`] refused: a batch's framing or CRC, or the caller's
/// own check of a (well-formed) batch.
#[derive(Debug)]
pub enum ValidateError<E> {
    /// A batch is malformed (framing, magic, CRC, counts).
    Batch(BatchError),
    /// The caller's check refused a well-formed batch.
    Check(E),
}

impl<'a> ValidatedBatches<'a> {
    /// Walks `data` once: validates each batch (see [`validate_batch`]: framing, magic, CRC,
    /// counts), then calls `check` with its header and bytes before going on to the next,
    /// so errors come in batch order. Stops at the first error.
    pub fn validate<E>(
        data: &'a [u8],
        mut check: impl FnMut(&BatchHeader, &'a [u8]) -> Result<(), E>,
    ) -> Result<ValidatedBatches<'a>, ValidateError<E>> {
        let mut batches = Vec::new();
        for item in iter_batches(data) {
            let (header, range) = item.map_err(ValidateError::Batch)?;
            check(&header, &data[range.clone()]).map_err(ValidateError::Check)?;
            batches.push((header, range.start));
        }
        Ok(ValidatedBatches { data, batches })
    }

    /// All the batches' bytes, as given.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The headers, in order (`base_offset` as sent, before the log assigns offsets).
    pub fn headers(&self) -> impl ExactSizeIterator<Item = &BatchHeader> + '_ {
        self.batches.iter().map(|(h, _)| h)
    }

    /// Each header with the batch's bytes, in order.
    pub fn batches(&self) -> impl ExactSizeIterator<Item = (&BatchHeader, &'a [u8])> + '_ {
        let data = self.data;
        self.batches
            .iter()
            .map(move |(h, start)| (h, &data[*start..*start + h.total_size()]))
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// No batches (empty `data`).
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub(crate) fn starts(&self) -> &[(BatchHeader, usize)] {
        &self.batches
    }
}

/// Validates the batch at the start of `buf` completely: the whole batch fits
/// in `buf`, magic is 2, the CRC matches, `recordsCount >= 0` and
/// `lastOffsetDelta >= 0`. Bytes after the batch are ignored.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let size = header.total_size();
    if buf.len() < size {
        return Err(BatchError::Truncated {
            needed: size,
            available: buf.len(),
        });
    }
    let computed = compute_crc(&buf[..size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    header.check_counts()?;
    Ok(header)
}

/// Validates a header whose record bytes were checksummed separately
/// (`crc` = CRC-32C of bytes `[21..end)`), as during streaming recovery.
pub(crate) fn validate_streamed(header: &BatchHeader, crc: u32) -> Result<(), BatchError> {
    if crc != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed: crc,
        });
    }
    header.check_counts()
}

/// Overwrites the `baseOffset` field of the batch starting at `batch`.
pub(crate) fn write_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Stamps the complete batch `batch` (described by `header`) with
/// `LogAppendTime` `timestamp`: sets the timestampType attribute bit and
/// `maxTimestamp`, then recomputes the CRC. `header` is updated to match.
pub(crate) fn set_log_append_time(batch: &mut [u8], header: &mut BatchHeader, timestamp: i64) {
    header.attributes |= TIMESTAMP_TYPE_BIT;
    header.max_timestamp = timestamp;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&header.attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&timestamp.to_be_bytes());
    header.crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&header.crc.to_be_bytes());
}

/// Sets the `partitionLeaderEpoch` of the batch starting at `batch` (which needs at least
/// the first 16 bytes). The field lies outside the CRC (which covers `[21..end)`), so the
/// batch stays valid and its CRC unchanged.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[PARTITION_LEADER_EPOCH_POS..PARTITION_LEADER_EPOCH_POS + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// A leader stamps its epoch into every batch it is about to append (Kafka sets
/// `partitionLeaderEpoch` on the leader's append): sets it in each of the concatenated
/// whole batches of `batches`, walking `batchLength`s only. Returns the number of batches
/// stamped; stops before anything that is not a whole batch (validation refuses those).
pub fn stamp_partition_leader_epoch(batches: &mut [u8], epoch: i32) -> usize {
    let (mut pos, mut n) = (0, 0);
    while let Some((_, size)) = peek_offset_and_size(&batches[pos..]) {
        if size > batches.len() - pos || size < BatchHeader::SIZE {
            break;
        }
        set_partition_leader_epoch(&mut batches[pos..], epoch);
        pos += size;
        n += 1;
    }
    n
}

/// Reads `(baseOffset, totalSize)` from the first 12 bytes of a batch, without
/// any validation. `None` if fewer than 12 bytes are available or the length
/// is not a plausible v2 batch length.
pub(crate) fn peek_offset_and_size(buf: &[u8]) -> Option<(i64, usize)> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    let length = be_i32(buf, BATCH_LENGTH_POS);
    if length < BatchHeader::MIN_BATCH_LENGTH {
        return None;
    }
    Some((be_i64(buf, BASE_OFFSET_POS), length as usize + LOG_OVERHEAD))
}

/// The offset after the last batch in `data`, walking headers only (no CRC): for data
/// this log validated on append or open, e.g. what [`crate::PartitionLog::read`] returned.
/// `None` if `data` holds no batch header.
pub fn next_offset_after(data: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut next = None;
    while let Ok(h) = BatchHeader::parse(&data[pos..]) {
        next = Some(h.next_offset());
        pos += h.total_size();
        if pos >= data.len() {
            break;
        }
    }
    next
}

/// Iterator over concatenated batches, see [`iter_batches`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(BatchHeader, Range<usize>), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        match validate_batch(&self.buf[self.pos..]) {
            Ok(header) => {
                let start = self.pos;
                self.pos += header.total_size();
                Some(Ok((header, start..self.pos)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Iterates over the concatenated batches in `buf`, fully validating each one
/// (see [`validate_batch`]) and yielding its header and byte range within
/// `buf`. After the first error the iterator yields nothing more.
///
/// A partial trailing batch yields [`BatchError::Truncated`]; callers that
/// tolerate one (e.g. consumers of Fetch responses) may treat that as the end.
pub fn iter_batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        failed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A structurally valid batch with an empty records section.
    fn empty_batch(base_offset: i64, last_offset_delta: i32, count: i32) -> Vec<u8> {
        let mut b = vec![0u8; BatchHeader::SIZE];
        b[0..8].copy_from_slice(&base_offset.to_be_bytes());
        b[8..12].copy_from_slice(&(BatchHeader::MIN_BATCH_LENGTH).to_be_bytes());
        b[12..16].copy_from_slice(&7i32.to_be_bytes());
        b[MAGIC_POS] = 2;
        b[21..23].copy_from_slice(&0x0033i16.to_be_bytes()); // lz4 + transactional + control
        b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        b[27..35].copy_from_slice(&100i64.to_be_bytes());
        b[35..43].copy_from_slice(&200i64.to_be_bytes());
        b[43..51].copy_from_slice(&42i64.to_be_bytes());
        b[51..53].copy_from_slice(&3i16.to_be_bytes());
        b[53..57].copy_from_slice(&9i32.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = compute_crc(&b);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn parses_all_fields() {
        let b = empty_batch(5, 2, 3);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.base_offset, 5);
        assert_eq!(h.total_size(), 61);
        assert_eq!(h.partition_leader_epoch, 7);
        assert_eq!(h.magic, 2);
        assert_eq!(h.last_offset(), 7);
        assert_eq!(h.next_offset(), 8);
        assert_eq!(h.base_timestamp, 100);
        assert_eq!(h.max_timestamp, 200);
        assert_eq!(h.producer_id, 42);
        assert_eq!(h.producer_epoch, 3);
        assert_eq!(h.base_sequence, 9);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.compression(), 3);
        assert!(h.is_transactional());
        assert!(h.is_control());
        assert!(!h.timestamp_type_log_append());
    }

    #[test]
    fn base_offset_and_epoch_are_outside_crc() {
        let mut b = empty_batch(5, 0, 1);
        write_base_offset(&mut b, 1234);
        b[12..16].copy_from_slice(&99i32.to_be_bytes());
        assert_eq!(validate_batch(&b).unwrap().base_offset, 1234);
    }

    #[test]
    fn rejects_bad_batches() {
        let good = empty_batch(0, 0, 1);
        assert!(matches!(
            BatchHeader::parse(&good[..60]),
            Err(BatchError::Truncated { needed: 61, .. })
        ));

        let mut bad = good.clone();
        bad[MAGIC_POS] = 1;
        assert_eq!(validate_batch(&bad), Err(BatchError::InvalidMagic(1)));

        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert_eq!(validate_batch(&bad), Err(BatchError::InvalidLength(10)));

        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&60i32.to_be_bytes());
        assert!(matches!(
            validate_batch(&bad),
            Err(BatchError::Truncated { needed: 72, .. })
        ));

        let mut bad = good.clone();
        bad[40] ^= 0xff;
        let err = validate_batch(&bad).unwrap_err();
        assert!(matches!(err, BatchError::CrcMismatch { .. }));
        assert!(err.is_corruption());

        let err = validate_batch(&empty_batch(0, -1, 1)).unwrap_err();
        assert_eq!(err, BatchError::InvalidLastOffsetDelta(-1));
        assert!(!err.is_corruption());
        assert_eq!(
            validate_batch(&empty_batch(0, 0, -1)),
            Err(BatchError::InvalidRecordsCount(-1))
        );
    }

    #[test]
    fn iterates_concatenated_batches() {
        let mut buf = empty_batch(0, 0, 1);
        buf.extend(empty_batch(1, 1, 2));
        let items: Vec<_> = iter_batches(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].1, 0..61);
        assert_eq!(items[1].1, 61..122);
        assert_eq!(items[1].0.base_offset, 1);

        // Partial trailing batch: one good batch, then an error, then nothing.
        buf.truncate(100);
        let mut it = iter_batches(&buf);
        assert!(it.next().unwrap().is_ok());
        assert!(matches!(it.next(), Some(Err(BatchError::Truncated { .. }))));
        assert!(it.next().is_none());
        assert_eq!(iter_batches(&[]).count(), 0);
    }

    #[test]
    fn stamping_the_leader_epoch_keeps_the_crc() {
        let mut buf = empty_batch(0, 0, 1);
        buf.extend(empty_batch(1, 1, 2));
        let crcs: Vec<u32> = iter_batches(&buf).map(|r| r.unwrap().0.crc).collect();
        assert_eq!(stamp_partition_leader_epoch(&mut buf, 42), 2);
        let after: Vec<BatchHeader> = iter_batches(&buf).map(|r| r.unwrap().0).collect();
        assert_eq!(after.iter().map(|h| h.crc).collect::<Vec<_>>(), crcs);
        assert!(after.iter().all(|h| h.partition_leader_epoch == 42));
        assert_eq!(
            compute_crc(&buf[..61]),
            crcs[0],
            "the CRC recomputed is the same"
        );
        // A torn trailing batch is left alone.
        let mut torn = buf.clone();
        torn.truncate(100);
        assert_eq!(stamp_partition_leader_epoch(&mut torn, 7), 1);
        assert_eq!(be_i32(&torn, PARTITION_LEADER_EPOCH_POS), 7);
        assert_eq!(be_i32(&torn, 61 + PARTITION_LEADER_EPOCH_POS), 42);
        assert_eq!(stamp_partition_leader_epoch(&mut [], 7), 0);
    }

    #[test]
    fn peek() {
        let b = empty_batch(77, 0, 1);
        assert_eq!(peek_offset_and_size(&b), Some((77, 61)));
        assert_eq!(peek_offset_and_size(&b[..11]), None);
    }
}
