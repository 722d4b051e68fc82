use std::fs::{self, OpenOptions};
use std::io::Write;

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;
use crate::batch::{iter_batches, validate_batch};

// ---------------------------------------------------------------------------
// Building real v2 batches by hand.
// ---------------------------------------------------------------------------

use gregor_wire::varint::put_varlong as put_varint;

/// An uncompressed v2 batch holding one record per value. Timestamps are
/// `base_ts + i`. The base offset is deliberately bogus: the log must
/// rewrite it.
fn build_batch(base_ts: i64, values: &[&[u8]]) -> Vec<u8> {
    let n = values.len() as i32;
    let mut b = vec![0u8; BatchHeader::SIZE];
    b[0..8].copy_from_slice(&(-999i64).to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b[16] = 2;
    b[21..23].copy_from_slice(&0i16.to_be_bytes());
    b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
    b[27..35].copy_from_slice(&base_ts.to_be_bytes());
    b[35..43].copy_from_slice(&(base_ts + i64::from(n) - 1).to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&n.to_be_bytes());
    for (i, value) in values.iter().enumerate() {
        let mut body = Vec::new();
        body.push(0); // attributes
        put_varint(&mut body, i as i64); // timestampDelta
        put_varint(&mut body, i as i64); // offsetDelta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, value.len() as i64);
        body.extend_from_slice(value);
        put_varint(&mut body, 0); // headers
        put_varint(&mut b, body.len() as i64);
        b.extend(body);
    }
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A batch of `n` records with `value_len`-byte values.
fn batch_n(base_ts: i64, n: usize, value_len: usize) -> Vec<u8> {
    let value = vec![b'x'; value_len];
    let values: Vec<&[u8]> = (0..n).map(|_| value.as_slice()).collect();
    build_batch(base_ts, &values)
}

/// `batch` with its base offset set to `offset` (what the log should store).
fn with_offset(batch: &[u8], offset: i64) -> Vec<u8> {
    let mut b = batch.to_vec();
    b[0..8].copy_from_slice(&offset.to_be_bytes());
    b
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 200,
        ..LogConfig::default()
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// Reads the whole readable log by repeatedly fetching from the next offset.
fn read_all(log: &PartitionLog, max_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, max_bytes, i64::MAX).unwrap();
        assert!(!r.data.is_empty(), "no progress at offset {offset}");
        for item in iter_batches(&r.data) {
            let (h, _) = item.unwrap();
            offset = h.next_offset();
        }
        out.extend_from_slice(&r.data);
    }
    out
}

fn headers(data: &[u8]) -> Vec<BatchHeader> {
    iter_batches(data).map(|r| r.unwrap().0).collect()
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn append_read_roundtrip_rewrites_offsets() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert_eq!(segment_files(dir.path()), ["00000000000000000000.log"]);

    let b1 = build_batch(1000, &[b"a", b"bb", b"ccc"]);
    let b2 = build_batch(5000, &[b"d"]);
    let b3 = build_batch(2000, &[b"e", b"f"]);
    let mut first = b1.clone();
    first.extend_from_slice(&b2);

    let info = log.append(&first).unwrap();
    assert_eq!(
        info,
        AppendInfo {
            base_offset: 0,
            last_offset: 3,
            max_timestamp: 5000,
            offset_of_max_timestamp: 3,
            batches: 2,
            records: 4,
            rolled: false,
        }
    );
    let info = log.append(&b3).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (4, 5));
    assert_eq!(info.max_timestamp, 2001);
    assert_eq!(log.log_end_offset(), 6);

    let mut expected = with_offset(&b1, 0);
    expected.extend(with_offset(&b2, 3));
    expected.extend(with_offset(&b3, 4));

    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(&r.data[..], &expected[..]);
    assert_eq!((r.log_start_offset, r.log_end_offset), (0, 6));
    // Stored batches stay valid (CRC untouched by the offset rewrite).
    let hs = headers(&r.data);
    assert_eq!(
        hs.iter().map(|h| h.base_offset).collect::<Vec<_>>(),
        [0, 3, 4]
    );

    // An offset inside a batch returns that whole batch.
    let r = log.read(1, 1 << 20, i64::MAX).unwrap();
    assert_eq!(&r.data[..], &expected[..]);
    let r = log.read(5, 1 << 20, i64::MAX).unwrap();
    assert_eq!(&r.data[..], &with_offset(&b3, 4)[..]);

    // At the end: empty. Past the end: out of range.
    assert!(log.read(6, 1 << 20, i64::MAX).unwrap().data.is_empty());
    assert!(matches!(
        log.read(7, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange {
            requested: 7,
            start: 0,
            end: 6
        })
    ));
    assert!(matches!(
        log.read(-1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn read_respects_upper_bound() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let b = batch_n(0, 2, 10);
    for _ in 0..3 {
        log.append(&b).unwrap();
    }
    // Batches start at 0, 2, 4.
    let r = log.read(0, 1 << 20, 3).unwrap();
    assert_eq!(
        headers(&r.data)
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>(),
        [0, 2]
    );
    assert!(log.read(0, 1 << 20, 0).unwrap().data.is_empty());
    assert!(log.read(4, 1 << 20, 4).unwrap().data.is_empty());
    assert!(log.read(5, 1 << 20, 5).unwrap().data.is_empty());
}

#[test]
fn read_max_bytes_returns_at_least_one_batch() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let big = batch_n(0, 5, 1000);
    let small = batch_n(0, 1, 10);
    log.append(&big).unwrap();
    log.append(&small).unwrap();
    log.append(&small).unwrap();

    for max_bytes in [0, 1, 100, big.len() - 1, big.len()] {
        let r = log.read(0, max_bytes, i64::MAX).unwrap();
        assert_eq!(
            &r.data[..],
            &with_offset(&big, 0)[..],
            "max_bytes {max_bytes}"
        );
    }
    let r = log.read(0, big.len() + small.len(), i64::MAX).unwrap();
    assert_eq!(headers(&r.data).len(), 2);
    let r = log
        .read(0, big.len() + 2 * small.len() - 1, i64::MAX)
        .unwrap();
    assert_eq!(headers(&r.data).len(), 2);
    let r = log.read(5, 0, i64::MAX).unwrap();
    assert_eq!(&r.data[..], &with_offset(&small, 5)[..]);
}

#[test]
fn reopen_keeps_offsets_and_continues() {
    let dir = TempDir::new().unwrap();
    let b = build_batch(10, &[b"one", b"two"]);
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&b).unwrap();
        log.append(&b).unwrap();
        log.close().unwrap();
    }
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.append(&b).unwrap().base_offset, 4);
    let mut expected = with_offset(&b, 0);
    expected.extend(with_offset(&b, 2));
    expected.extend(with_offset(&b, 4));
    assert_eq!(read_all(&log, 1 << 20), expected);
    log.flush().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(read_all(&log, 1 << 20), expected);
}

#[test]
fn rolls_segments_and_reads_across_them() {
    let dir = TempDir::new().unwrap();
    let config = small_config();
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let mut expected = Vec::new();
    let mut offset = 0;
    for i in 0..40 {
        let b = batch_n(i, 1 + (i as usize % 3), 50);
        let info = log.append(&b).unwrap();
        assert_eq!(info.base_offset, offset);
        expected.extend(with_offset(&b, offset));
        offset = info.last_offset + 1;
    }
    let files = segment_files(dir.path());
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let len = fs::metadata(dir.path().join(f)).unwrap().len();
        assert!(len <= config.segment_bytes, "{f} has {len} bytes");
        // Every segment starts with the batch at its base offset.
        let data = fs::read(dir.path().join(f)).unwrap();
        let base: i64 = f.trim_end_matches(".log").parse().unwrap();
        assert_eq!(validate_batch(&data).unwrap().base_offset, base);
    }

    // A read returns batches of one segment only; walking reaches the end.
    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert!(r.data.len() as u64 <= config.segment_bytes);
    assert_eq!(read_all(&log, 1 << 20), expected);
    assert_eq!(read_all(&log, 1), expected);

    // Every offset can be located, in whichever segment it lives.
    for o in 0..log.log_end_offset() {
        let r = log.read(o, 1, i64::MAX).unwrap();
        let h = validate_batch(&r.data).unwrap();
        assert!(h.base_offset <= o && o <= h.last_offset(), "offset {o}");
    }

    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(segment_files(dir.path()), files);
    assert_eq!(read_all(&log, 1 << 20), expected);
}

#[test]
fn append_larger_than_segment_gets_its_own_segment() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    log.append(&batch_n(0, 1, 10)).unwrap();
    let big = batch_n(0, 3, 500);
    assert!(big.len() > 1000);
    log.append(&big).unwrap();
    log.append(&batch_n(0, 1, 10)).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        [
            "00000000000000000000.log",
            "00000000000000000001.log",
            "00000000000000000004.log"
        ]
    );
}

#[test]
fn invalid_appends_write_nothing() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        max_batch_bytes: 500,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config).unwrap();
    let good = batch_n(0, 2, 10);
    log.append(&good).unwrap();
    let seg = dir.path().join("00000000000000000000.log");
    let size_before = fs::metadata(&seg).unwrap().len();

    // Second batch of the set has a bad CRC: nothing at all is written.
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut set = good.clone();
    set.extend(&bad_crc);
    assert!(matches!(log.append(&set), Err(LogError::CorruptBatch(_))));

    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    assert!(matches!(
        log.append(&bad_magic),
        Err(LogError::CorruptBatch(_))
    ));

    // Trailing partial batch.
    let mut partial = good.clone();
    partial.extend(&good[..good.len() - 1]);
    assert!(matches!(
        log.append(&partial),
        Err(LogError::CorruptBatch(_))
    ));
    assert!(matches!(
        log.append(&good[..30]),
        Err(LogError::CorruptBatch(_))
    ));

    // Too large.
    let big = batch_n(0, 1, 600);
    assert!(matches!(
        log.append(&big),
        Err(LogError::BatchTooLarge { max: 500, .. })
    ));

    // lastOffsetDelta inconsistent with recordsCount (CRC recomputed).
    let mut inconsistent = good.clone();
    inconsistent[23..27].copy_from_slice(&5i32.to_be_bytes());
    let crc = crc32c::crc32c(&inconsistent[21..]);
    inconsistent[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        log.append(&inconsistent),
        Err(LogError::InvalidRecord(_))
    ));

    // Zero records.
    let mut empty = good[..61].to_vec();
    empty[8..12].copy_from_slice(&49i32.to_be_bytes());
    empty[23..27].copy_from_slice(&(-1i32).to_be_bytes());
    empty[57..61].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&empty[21..]);
    empty[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        log.append(&empty),
        Err(LogError::InvalidRecord(_))
    ));
    assert!(matches!(log.append(&[]), Err(LogError::InvalidRecord(_))));

    assert_eq!(fs::metadata(&seg).unwrap().len(), size_before);
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(log.append(&good).unwrap().base_offset, 2);
}

#[test]
fn torn_tail_is_truncated_on_reopen() {
    let dir = TempDir::new().unwrap();
    let b = batch_n(0, 3, 40);
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        for _ in 0..3 {
            log.append(&b).unwrap();
        }
        log.close().unwrap();
    }
    let seg = dir.path().join("00000000000000000000.log");
    let full = b.len() as u64;

    // Cut the third batch in half.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(2 * full + full / 2)
        .unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 6);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 2 * full);
        assert_eq!(log.append(&b).unwrap().base_offset, 6);
        log.close().unwrap();
    }

    // Garbage after whole batches.
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[0xAB; 100])
        .unwrap();
    {
        let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 9);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 3 * full);
    }

    // A flipped bit inside the last batch: CRC catches it.
    let mut data = fs::read(&seg).unwrap();
    let i = data.len() - 5;
    data[i] ^= 0x10;
    fs::write(&seg, &data).unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    let mut expected = with_offset(&b, 0);
    expected.extend(with_offset(&b, 3));
    assert_eq!(read_all(&log, 1 << 20), expected);
}

#[test]
fn corruption_in_earlier_segment_drops_later_segments() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for _ in 0..30 {
            log.append(&batch_n(0, 1, 100)).unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let second = dir.path().join(&files[1]);
    let len = fs::metadata(&second).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(segment_files(dir.path()), files[..2]);
    let end = log.log_end_offset();
    assert_eq!(read_all(&log, 1 << 20).len() as u64, {
        let first = fs::metadata(dir.path().join(&files[0])).unwrap().len();
        first + fs::metadata(&second).unwrap().len()
    });
    assert_eq!(log.append(&batch_n(0, 1, 1)).unwrap().base_offset, end);
}

#[test]
fn missing_middle_segment_drops_later_segments() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for _ in 0..30 {
            log.append(&batch_n(0, 1, 100)).unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    fs::remove_file(dir.path().join(&files[1])).unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(segment_files(dir.path()), files[..1]);
    let second_base: i64 = files[1].trim_end_matches(".log").parse().unwrap();
    assert_eq!(log.log_end_offset(), second_base);
}

#[test]
fn start_offset_beyond_recovered_end_restarts_log_there() {
    let dir = TempDir::new().unwrap();
    let b = batch_n(0, 3, 10);
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&b).unwrap();
        log.append(&b).unwrap();
        log.advance_log_start_offset(4).unwrap();
        log.close().unwrap();
    }
    // Lose the second batch, which held the start offset.
    let seg = dir.path().join(segment::file_name(0));
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(b.len() as u64 + 10)
        .unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (4, 4));
    assert_eq!(segment_files(dir.path()), [segment::file_name(4)]);
    assert_eq!(log.append(&b).unwrap().base_offset, 4);
}

#[test]
fn advance_log_start_offset_deletes_segments_and_persists() {
    let dir = TempDir::new().unwrap();
    let config = small_config();
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..30 {
        log.append(&batch_n(i, 2, 100)).unwrap();
    }
    let end = log.log_end_offset();
    assert_eq!(end, 60);
    let files = segment_files(dir.path());
    let bases: Vec<i64> = files
        .iter()
        .map(|f| f.trim_end_matches(".log").parse().unwrap())
        .collect();
    assert!(bases.len() >= 4, "{bases:?}");

    // Lower / equal: no-op.
    assert_eq!(log.advance_log_start_offset(-5).unwrap(), 0);
    assert_eq!(log.advance_log_start_offset(0).unwrap(), 0);
    // Beyond the end: error.
    assert!(matches!(
        log.advance_log_start_offset(end + 1),
        Err(LogError::OffsetOutOfRange { .. })
    ));

    // Into the middle of the third segment (not at a batch boundary).
    let target = bases[2] + 1;
    assert_eq!(log.advance_log_start_offset(target).unwrap(), target);
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(segment_files(dir.path()), files[2..]);
    assert!(matches!(
        log.read(target - 1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { start, .. }) if start == target
    ));
    assert!(matches!(
        log.read(0, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // The batch containing the start offset is still served whole.
    let r = log.read(target, 1, i64::MAX).unwrap();
    assert_eq!(validate_batch(&r.data).unwrap().base_offset, bases[2]);
    assert_eq!(r.log_start_offset, target);
    // Going backwards is ignored.
    assert_eq!(log.advance_log_start_offset(3).unwrap(), target);
    log.close().unwrap();

    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(log.log_start_offset(), target);
    assert_eq!(log.log_end_offset(), end);
    assert!(matches!(
        log.read(target - 1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));

    // Up to the end: every segment goes, a fresh one starts at the end.
    assert_eq!(log.advance_log_start_offset(end).unwrap(), end);
    assert_eq!(segment_files(dir.path()), [segment::file_name(end)]);
    assert!(log.read(end, 100, i64::MAX).unwrap().data.is_empty());
    assert!(log.find_max_timestamp_batch().unwrap().is_none());
    assert!(log.find_batch_by_timestamp(0).unwrap().is_none());
    assert_eq!(log.append(&batch_n(0, 1, 1)).unwrap().base_offset, end);
    log.close().unwrap();

    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (end, end + 1)
    );
}

#[test]
fn empty_log_reopens_at_checkpointed_start() {
    let dir = TempDir::new().unwrap();
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&batch_n(0, 5, 1)).unwrap();
        log.advance_log_start_offset(5).unwrap();
        log.close().unwrap();
    }
    // Simulate losing every segment file.
    for f in segment_files(dir.path()) {
        fs::remove_file(dir.path().join(f)).unwrap();
    }
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (5, 5));
}

#[test]
fn find_batches_by_timestamp() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert!(log.find_batch_by_timestamp(0).unwrap().is_none());
    assert!(log.find_max_timestamp_batch().unwrap().is_none());

    // Timestamps are not monotonic: batch i covers [ts_i, ts_i + 1].
    let ts = [100, 300, 200, 500, 400, 600, 50, 700, 650, 100];
    let mut batches = Vec::new();
    for (i, t) in ts.iter().enumerate() {
        let b = batch_n(*t, 2, 150);
        log.append(&b).unwrap();
        batches.push(with_offset(&b, 2 * i as i64));
    }
    assert!(segment_files(dir.path()).len() > 1);

    let check = |log: &PartitionLog, query: i64, expected: Option<usize>| {
        let found = log.find_batch_by_timestamp(query).unwrap();
        match (found, expected) {
            (None, None) => {}
            (Some((h, data)), Some(i)) => {
                assert_eq!(&data[..], &batches[i][..], "query {query}");
                assert_eq!(h.base_offset, 2 * i as i64);
            }
            (found, expected) => {
                panic!("query {query}: found {found:?}, expected {expected:?}")
            }
        }
    };
    check(&log, i64::MIN, Some(0));
    check(&log, 101, Some(0));
    check(&log, 102, Some(1));
    check(&log, 301, Some(1));
    check(&log, 302, Some(3));
    check(&log, 502, Some(5));
    check(&log, 602, Some(7));
    check(&log, 701, Some(7));
    check(&log, 702, None);

    let (h, data) = log.find_max_timestamp_batch().unwrap().unwrap();
    assert_eq!(h.max_timestamp, 701);
    assert_eq!(&data[..], &batches[7][..]);

    // Below the start offset nothing is found.
    log.advance_log_start_offset(8).unwrap();
    check(&log, 0, Some(4));
    check(&log, 101, Some(4));
    check(&log, 502, Some(5));

    // The maximum lies below the start offset: the next largest visible
    // batch is found instead.
    log.advance_log_start_offset(16).unwrap();
    let (h, data) = log.find_max_timestamp_batch().unwrap().unwrap();
    assert_eq!(h.max_timestamp, 651);
    assert_eq!(&data[..], &batches[8][..]);
    check(&log, 0, Some(8));
    check(&log, 652, None);
}

#[test]
fn log_append_time_stamps_batches() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let mut set = batch_n(10, 2, 5);
    set.extend(batch_n(20, 3, 5));
    let info = log.append_with_log_append_time(&set, Some(9999)).unwrap();
    assert_eq!(
        (info.max_timestamp, info.offset_of_max_timestamp),
        (9999, 1)
    );
    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    let hs = headers(&r.data); // also re-validates the recomputed CRCs
    assert_eq!(hs.len(), 2);
    for h in hs {
        assert!(h.timestamp_type_log_append());
        assert_eq!(h.max_timestamp, 9999);
    }
    let (h, _) = log.find_batch_by_timestamp(9999).unwrap().unwrap();
    assert_eq!(h.base_offset, 0);
}

#[test]
fn partition_log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PartitionLog>();
}

#[test]
fn delete_removes_directory() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("topic-0");
    let mut log = PartitionLog::open(&dir, LogConfig::default()).unwrap();
    log.append(&batch_n(0, 1, 1)).unwrap();
    log.flush().unwrap();
    log.delete().unwrap();
    assert!(!dir.exists());
}

// ---------------------------------------------------------------------------
// Property test.
// ---------------------------------------------------------------------------

/// One append: a list of batches, each a list of value lengths.
fn append_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(prop::collection::vec(0usize..300, 1..6), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn appends_survive_reopen(
        appends in prop::collection::vec(append_strategy(), 1..40),
        segment_bytes in 200u64..4000,
        index_interval_bytes in 1u64..2000,
        max_bytes in 0usize..3000,
    ) {
        let dir = TempDir::new().unwrap();
        let config = LogConfig { segment_bytes, index_interval_bytes, ..LogConfig::default() };
        let mut expected = Vec::new();
        // (base offset, last offset) of every stored batch.
        let mut ranges = Vec::new();
        {
            let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
            for (i, append) in appends.iter().enumerate() {
                let mut set = Vec::new();
                let mut stored = Vec::new();
                let mut offset = log.log_end_offset();
                for (j, lens) in append.iter().enumerate() {
                    let values: Vec<Vec<u8>> = lens
                        .iter()
                        .map(|&n| vec![(i * 7 + j) as u8; n])
                        .collect();
                    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                    let b = build_batch(i as i64, &refs);
                    stored.extend(with_offset(&b, offset));
                    ranges.push((offset, offset + lens.len() as i64 - 1));
                    offset += lens.len() as i64;
                    set.extend(b);
                }
                let info = log.append(&set).unwrap();
                prop_assert_eq!(info.last_offset + 1, offset);
                expected.extend(stored);
            }
            prop_assert_eq!(read_all(&log, max_bytes), expected.clone());
        }
        let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
        prop_assert_eq!(log.log_end_offset(), ranges.last().unwrap().1 + 1);
        prop_assert_eq!(read_all(&log, max_bytes), expected.clone());
        log.close().unwrap();
        // A clean start loads every segment from its index file: same log.
        let hint = RecoveryHint { recovery_point: None, clean: true };
        let log = PartitionLog::open_with(dir.path(), config, hint).unwrap();
        prop_assert_eq!(log.log_end_offset(), ranges.last().unwrap().1 + 1);
        prop_assert_eq!(read_all(&log, max_bytes), expected);
        for &(base, last) in &ranges {
            for o in [base, last] {
                let r = log.read(o, 0, i64::MAX).unwrap();
                let h = validate_batch(&r.data).unwrap();
                prop_assert_eq!((h.base_offset, h.last_offset()), (base, last));
                prop_assert_eq!(r.data.len(), h.total_size());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Recovery points, index files, group-commit sync jobs, retention.
// ---------------------------------------------------------------------------

fn flip_byte(path: &Path, at_from_end: usize) {
    let mut data = fs::read(path).unwrap();
    let i = data.len() - at_from_end;
    data[i] ^= 0x10;
    fs::write(path, &data).unwrap();
}

#[test]
fn trusted_segments_are_loaded_from_index_files_not_scanned() {
    let dir = TempDir::new().unwrap();
    let b = batch_n(0, 3, 100);
    {
        let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for _ in 0..10 {
            log.append(&b).unwrap();
        }
        log.close().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let index_files = crate::partition::replication::tests::files_ending(dir.path(), ".index");
    assert_eq!(index_files, files.len());
    // Damage the first (sealed) segment. A start that trusts the recovery
    // point does not read it; a full validation does.
    let first = dir.path().join(&files[0]);
    flip_byte(&first, 5);
    let second_base: i64 = files[1][..20].parse().unwrap();
    let hint = RecoveryHint {
        recovery_point: Some(second_base),
        clean: false,
    };
    let log = PartitionLog::open_with(dir.path(), small_config(), hint).unwrap();
    assert_eq!(log.log_end_offset(), 30);
    assert_eq!(log.durable_offset(), 30);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert!(log.log_end_offset() < second_base);
}

#[test]
fn unclean_start_scans_and_truncates_active_segment_even_with_stale_index() {
    let dir = TempDir::new().unwrap();
    let b = batch_n(0, 2, 50);
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&b).unwrap();
        log.close().unwrap(); // writes an index for the active segment
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        log.append(&b).unwrap();
        log.append(&b).unwrap();
        // "crash": no close
    }
    let seg = dir.path().join("00000000000000000000.log");
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let hint = RecoveryHint {
        recovery_point: Some(2),
        clean: false,
    };
    let log = PartitionLog::open_with(dir.path(), LogConfig::default(), hint).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.durable_offset(), 4);
}

#[test]
fn sync_job_advances_durable_offset_without_holding_the_log() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.durable_offset(), 0);
    for _ in 0..4 {
        log.append(&batch_n(0, 2, 150)).unwrap();
    }
    assert_eq!(log.unflushed().0, 8);
    let job = log.take_sync_job();
    assert!(!job.is_empty());
    assert_eq!(job.up_to(), 8);
    // Appends continue while the job runs.
    log.append(&batch_n(0, 2, 150)).unwrap();
    job.run().unwrap();
    log.complete_sync(&job, Ok(()));
    assert_eq!(log.durable_offset(), 8);
    let job = log.take_sync_job();
    assert_eq!(job.up_to(), 10);
    log.complete_sync(&job, Err("EIO".into()));
    assert!(matches!(
        log.append(&batch_n(0, 1, 1)),
        Err(LogError::StorageFailed(_))
    ));
    assert_eq!(log.durable_offset(), 8);
}

#[test]
fn segment_ms_rolls_old_active_segment() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        segment_ms: 200,
        ..LogConfig::default()
    };
    let clock = gregor_os::ManualClock::new(1_000_000);
    let mut log =
        PartitionLog::open_with_clock(dir.path(), config, RecoveryHint::default(), clock.clone())
            .unwrap();
    log.append(&batch_n(0, 1, 10)).unwrap();
    clock.advance(199);
    log.append(&batch_n(0, 1, 10)).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance(1);
    log.append(&batch_n(0, 1, 10)).unwrap();
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn retention_by_time_and_size_deletes_whole_segments() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    // Ten segments of ~one 3-record batch each; timestamps 1000, 2000, ...
    for i in 0..10 {
        log.append(&batch_n(1000 * (i + 1), 3, 300)).unwrap();
    }
    let n = log.segment_count();
    assert_eq!(n, 10);
    // Size: keep at least 4 batches' worth.
    let seg_size = log.size_bytes() / 10;
    assert_eq!(
        log.apply_retention(-1, (seg_size * 4) as i64, 0).unwrap(),
        6
    );
    assert_eq!(log.log_start_offset(), 18);
    assert!(matches!(
        log.read(0, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Time: everything with maxTimestamp < 9000 goes (batch 8 has max 8002).
    assert_eq!(log.apply_retention(10_000, -1, 19_000).unwrap(), 2);
    assert_eq!(log.log_start_offset(), 24);
    // Everything expired: the active segment goes too, the log stays at its end.
    assert_eq!(log.apply_retention(0, -1, i64::MAX).unwrap(), 2);
    assert_eq!(log.log_start_offset(), 30);
    assert_eq!(log.log_end_offset(), 30);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_start_offset(), 30);
}

// ---------------------------------------------------------------------------
// Compaction.
// ---------------------------------------------------------------------------

/// An uncompressed batch of keyed records (`None` value = tombstone), with a
/// repeated header key on every record to check headers survive byte for byte.
fn keyed_batch(base_ts: i64, records: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let n = records.len() as i32;
    let mut b = build_batch(base_ts, &[b"x"]);
    b.truncate(BatchHeader::SIZE);
    b[23..27].copy_from_slice(&(n - 1).to_be_bytes());
    b[35..43].copy_from_slice(&(base_ts + i64::from(n) - 1).to_be_bytes());
    b[57..61].copy_from_slice(&n.to_be_bytes());
    for (i, (key, value)) in records.iter().enumerate() {
        let mut body = vec![0u8];
        put_varint(&mut body, i as i64);
        put_varint(&mut body, i as i64);
        put_varint(&mut body, key.len() as i64);
        body.extend_from_slice(key);
        match value {
            Some(v) => {
                put_varint(&mut body, v.len() as i64);
                body.extend_from_slice(v);
            }
            None => put_varint(&mut body, -1),
        }
        put_varint(&mut body, 2);
        for hv in [b"1", b"2"] {
            put_varint(&mut body, 1);
            body.push(b'h');
            put_varint(&mut body, 1);
            body.extend_from_slice(hv);
        }
        put_varint(&mut b, body.len() as i64);
        b.extend(body);
    }
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Every record in the log: (offset, key, value, raw record bytes).
#[allow(clippy::type_complexity)]
fn all_records(log: &PartitionLog) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>, Vec<u8>)> {
    let data = read_all(log, 1 << 20);
    let mut out = Vec::new();
    for item in iter_batches(&data) {
        let (h, range) = item.unwrap();
        for r in crate::clean::parse_records(&data[range], &h).unwrap() {
            out.push((
                h.base_offset + r.offset_delta,
                r.key.unwrap().to_vec(),
                (!r.tombstone).then(Vec::new),
                r.bytes.to_vec(),
            ));
        }
    }
    out
}

fn clean_cfg(now_ms: i64, delete_retention_ms: i64) -> crate::clean::CleanConfig {
    crate::clean::CleanConfig {
        min_cleanable_dirty_ratio: 0.0,
        min_compaction_lag_ms: 0,
        delete_retention_ms,
        max_map_bytes: 1 << 20,
        io_bytes_per_sec: 0,
        max_decompressed_bytes: 1 << 20,
        now_ms,
    }
}

#[test]
fn compaction_keeps_latest_per_key_offsets_and_raw_records() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        segment_bytes: 2000,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let log = std::sync::RwLock::new(log);
    let keys: Vec<Vec<u8>> = (0..7).map(|k| format!("key{k}").into_bytes()).collect();
    let mut latest = std::collections::HashMap::new();
    let mut offset = 0i64;
    for round in 0..40 {
        let vals: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("v{round}-{i}").into_bytes())
            .collect();
        let recs: Vec<(&[u8], Option<&[u8]>)> = (0..5)
            .map(|i| {
                let k = &keys[(round * 5 + i) % keys.len()];
                (k.as_slice(), Some(vals[i].as_slice()))
            })
            .collect();
        for (k, _) in &recs {
            latest.insert(k.to_vec(), offset);
            offset += 1;
        }
        log.write()
            .unwrap()
            .append(&keyed_batch(1000, &recs))
            .unwrap();
    }
    // A tombstone for key0 (old timestamp 1000) in a later, sealed segment.
    log.write()
        .unwrap()
        .append(&keyed_batch(1000, &[(b"key0", None)]))
        .unwrap();
    latest.insert(b"key0".to_vec(), offset);
    offset += 1;
    // Roll so everything above is sealed.
    let pad = vec![b'p'; 1500];
    for _ in 0..2 {
        log.write()
            .unwrap()
            .append(&keyed_batch(1000, &[(b"zzz", Some(&pad))]))
            .unwrap();
        offset += 1;
    }
    let before = all_records(&log.read().unwrap());
    let end_before = log.read().unwrap().log_end_offset();
    let size_before = log.read().unwrap().size_bytes();

    // Tombstones still young (delete.retention.ms not passed): kept.
    let stats = crate::clean::clean(&log, &clean_cfg(2000, 1_000_000))
        .unwrap()
        .unwrap();
    assert!(stats.records_removed > 100, "{stats:?}");
    assert_eq!(stats.tombstones_removed, 0);
    let l = log.read().unwrap();
    assert_eq!(l.log_end_offset(), end_before);
    assert!(l.size_bytes() < size_before);
    let after = all_records(&l);
    drop(l);
    // Every surviving record is unchanged byte for byte at its offset.
    for rec in &after {
        assert!(before.contains(rec), "record at {} changed", rec.0);
    }
    // key -> offset of its surviving records in the cleaned (sealed) part.
    let sealed_keys: Vec<_> = after.iter().filter(|r| r.1 != b"zzz").collect();
    for r in &sealed_keys {
        assert_eq!(latest[&r.1], r.0, "key {:?} kept a stale record", r.1);
    }
    assert_eq!(sealed_keys.len(), keys.len());
    assert!(sealed_keys.iter().any(|r| r.1 == b"key0" && r.2.is_none()));

    // Reopen (unclean and clean) keeps the compacted log.
    let reopened = PartitionLog::open(dir.path(), config.clone()).unwrap();
    assert_eq!(all_records(&reopened), after);
    drop(reopened);

    // Later, after delete.retention.ms: a new pass drops the tombstone itself.
    for _ in 0..2 {
        log.write()
            .unwrap()
            .append(&keyed_batch(1000, &[(b"zzz", Some(&pad))]))
            .unwrap();
    }
    let stats = crate::clean::clean(&log, &clean_cfg(10_000_000, 1000))
        .unwrap()
        .unwrap();
    assert_eq!(stats.tombstones_removed, 1, "{stats:?}");
    let l = log.read().unwrap();
    let after2 = all_records(&l);
    assert!(!after2.iter().any(|r| r.1 == b"key0"));
    assert_eq!(l.log_end_offset(), offset + 2);
    // Offsets still readable from the start; empty batches keep them dense.
    let r = l.read(0, 1 << 20, i64::MAX).unwrap();
    assert_eq!(validate_batch(&r.data).unwrap().base_offset, 0);
}

#[test]
fn compaction_respects_lag_and_dirty_ratio() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        segment_bytes: 600,
        ..LogConfig::default()
    };
    let log = std::sync::RwLock::new(PartitionLog::open(dir.path(), config).unwrap());
    for i in 0..30i64 {
        let v = format!("v{i}");
        log.write()
            .unwrap()
            .append(&keyed_batch(1000 * i, &[(b"k", Some(v.as_bytes()))]))
            .unwrap();
    }
    // Lag: nothing is old enough at now = 1000 with a lag of 1 000 000 ms.
    let mut cfg = clean_cfg(1000, i64::MAX);
    cfg.min_compaction_lag_ms = 1_000_000;
    assert_eq!(crate::clean::clean(&log, &cfg).unwrap(), None);
    // Dirty ratio above 1 can never be reached.
    let mut cfg = clean_cfg(i64::MAX / 2, i64::MAX);
    cfg.min_cleanable_dirty_ratio = 1.01;
    assert_eq!(crate::clean::clean(&log, &cfg).unwrap(), None);
    // A tiny map budget still makes progress, one bounded step at a time.
    let mut cfg = clean_cfg(i64::MAX / 2, i64::MAX);
    cfg.max_map_bytes = 1;
    let first = crate::clean::clean(&log, &cfg).unwrap().unwrap();
    let second = crate::clean::clean(&log, &cfg).unwrap().unwrap();
    assert!(second.cleaned_up_to > first.cleaned_up_to);
    // With a real budget it converges: only one "k" record left in the sealed part.
    let cfg = clean_cfg(i64::MAX / 2, i64::MAX);
    while crate::clean::clean(&log, &cfg)
        .unwrap()
        .is_some_and(|s| s.records_removed > 0)
    {}
    let l = log.read().unwrap();
    let active_base = l.segments.last().unwrap().base_offset();
    let sealed: Vec<_> = all_records(&l)
        .into_iter()
        .filter(|r| r.0 < active_base)
        .collect();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].0, active_base - 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random keyed appends (with tombstones), one compaction pass: offsets and the log
    /// end never change, kept records are byte-identical, and in the sealed part every
    /// key keeps exactly its latest record (tombstones kept: delete.retention.ms = inf).
    #[test]
    fn compaction_keeps_exactly_the_latest_per_key(
        appends in prop::collection::vec(
            prop::collection::vec((0u8..12, prop::bool::weighted(0.1)), 1..8), 5..60),
        segment_bytes in 300u64..3000,
    ) {
        let dir = TempDir::new().unwrap();
        let config = LogConfig { segment_bytes, ..LogConfig::default() };
        let log = std::sync::RwLock::new(PartitionLog::open(dir.path(), config).unwrap());
        let mut latest = std::collections::HashMap::new();
        let mut offset = 0i64;
        for (i, recs) in appends.iter().enumerate() {
            let keys: Vec<Vec<u8>> = recs.iter().map(|(k, _)| vec![b'a' + k]).collect();
            let vals: Vec<Vec<u8>> = recs.iter().map(|_| format!("value-{i}").into_bytes()).collect();
            let batch: Vec<(&[u8], Option<&[u8]>)> = recs
                .iter()
                .enumerate()
                .map(|(j, (_, tomb))| (keys[j].as_slice(), (!tomb).then_some(vals[j].as_slice())))
                .collect();
            for k in &keys {
                latest.insert(k.clone(), offset);
                offset += 1;
            }
            log.write().unwrap().append(&keyed_batch(1000, &batch)).unwrap();
        }
        let before = all_records(&log.read().unwrap());
        let _ = crate::clean::clean(&log, &clean_cfg(2000, i64::MAX)).unwrap();
        let l = log.read().unwrap();
        prop_assert_eq!(l.log_end_offset(), offset);
        let after = all_records(&l);
        for r in &after {
            prop_assert!(before.contains(r));
        }
        let active_base = l.segments.last().unwrap().base_offset();
        for r in after.iter().filter(|r| r.0 < active_base) {
            // A sealed-part survivor is either the latest of its key, or the latest
            // record of its key lies in the (uncleaned) active segment.
            prop_assert!(latest[&r.1] == r.0 || latest[&r.1] >= active_base);
        }
        for (k, &o) in &latest {
            // Every key's latest record survives.
            prop_assert!(after.iter().any(|r| &r.1 == k && r.0 == o), "latest of {:?} lost", k);
        }
        drop(l);
        let reopened = PartitionLog::open(dir.path(), LogConfig { segment_bytes, ..LogConfig::default() }).unwrap();
        prop_assert_eq!(all_records(&reopened), after);
    }
}

#[test]
fn unclean_start_validates_only_the_tail_past_the_active_index_checkpoint() {
    let dir = TempDir::new().unwrap();
    let b = batch_n(0, 2, 100);
    let seg = dir.path().join("00000000000000000000.log");
    {
        let mut log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
        for _ in 0..5 {
            log.append(&b).unwrap();
        }
        log.flush().unwrap();
        log.checkpoint_active_index(1).unwrap(); // describes offsets [0, 10)
        log.checkpoint_active_index(1).unwrap(); // no growth: no rewrite
        for _ in 0..3 {
            log.append(&b).unwrap();
        }
        // crash: no close
    }
    // Damage the first batch (inside the checkpointed prefix) and tear the tail.
    let mut data = fs::read(&seg).unwrap();
    data[100] ^= 0x01;
    fs::write(&seg, &data).unwrap();
    let len = data.len() as u64;
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let hint = RecoveryHint {
        recovery_point: Some(10),
        clean: false,
    };
    // The prefix is trusted (not re-read), the tail validated: one torn batch dropped.
    let log = PartitionLog::open_with(dir.path(), LogConfig::default(), hint).unwrap();
    assert_eq!(log.log_end_offset(), 14);
    drop(log);
    // Without the recovery point the prefix is validated too, and the damage found.
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end_offset(), 0);
}

fn aborted(pid: i64, first: i64, last: i64) -> AbortedTxnEntry {
    AbortedTxnEntry::ending_at(pid, first, last)
}

#[test]
fn txn_index_round_trip_truncation_and_retention() {
    let dir = TempDir::new().unwrap();
    let config = LogConfig {
        segment_bytes: 200,
        ..LogConfig::default()
    };
    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let b = build_batch(1000, &[b"0123456789012345678901234567890123456789"]);
    let mut rolls = 0;
    for _ in 0..10 {
        rolls += usize::from(log.append(&b).unwrap().rolled);
    }
    assert!(rolls >= 3, "{rolls}");
    assert!(
        log.append_aborted_txn(&aborted(1, 0, 10)).is_err(),
        "beyond the end"
    );
    let entries = [aborted(1, 0, 1), aborted(2, 2, 3), aborted(3, 4, 8)];
    for e in &entries {
        log.append_aborted_txn(e).unwrap();
    }
    let job = log.take_sync_job();
    assert!(!job.is_empty());
    log.complete_sync(&job, job.run().map_err(|e| e.to_string()));
    drop(log);

    let mut log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    let on_disk = log.read_aborted_txns().unwrap();
    assert_eq!(on_disk.entries, entries);
    assert_eq!(on_disk.damaged_from, None);
    // A replay from offset 3 will re-derive the entries of markers at 3 and 8.
    log.truncate_aborted_txns(3).unwrap();
    assert_eq!(log.read_aborted_txns().unwrap().entries, entries[..1]);
    log.append_aborted_txn(&entries[1]).unwrap();
    log.append_aborted_txn(&entries[2]).unwrap();
    assert_eq!(log.read_aborted_txns().unwrap().entries, entries);
    let files = |d: &Path| {
        fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .ends_with(".txnindex")
            })
            .count()
    };
    let before = files(dir.path());
    // Retention of the segments holding the first two markers removes their files.
    log.advance_log_start_offset(4).unwrap();
    assert!(log.oldest_segment_base() > 3);
    assert_eq!(log.read_aborted_txns().unwrap().entries, entries[2..]);
    assert!(files(dir.path()) < before);

    // A torn entry and garbage: the valid prefix is kept, damage is reported.
    let seg_of_8 = log
        .segments
        .iter()
        .find(|s| s.base_offset() <= 8 && 8 < s.next_offset())
        .unwrap()
        .path()
        .to_path_buf();
    let path = crate::txnindex::txn_index_path(&seg_of_8);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0u8; 10]).unwrap();
    assert_eq!(log.read_aborted_txns().unwrap().damaged_from, None);
    f.write_all(&[9u8; 30]).unwrap();
    let on_disk = log.read_aborted_txns().unwrap();
    assert_eq!(on_disk.entries, entries[2..]);
    assert!(on_disk.damaged_from.is_some());
    log.truncate_aborted_txns(i64::MAX).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        crate::txnindex::ENTRY_SIZE as u64
    );
}
