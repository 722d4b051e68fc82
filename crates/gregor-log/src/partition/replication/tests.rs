use std::path::Path;

use gregor_wire::varint::put_varlong;
use proptest::prelude::*;
use tempfile::TempDir;

use crate::batch::iter_batches;
use crate::{LogConfig, LogError, PartitionLog};

/// An uncompressed v2 batch of `n` records (`value_len`-byte values) at `base_offset`,
/// stamped with leader epoch `epoch`, timestamps from `ts`.
pub(crate) fn batch(base_offset: i64, epoch: i32, n: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let mut b = vec![0u8; 61];
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&(n as i32 - 1).to_be_bytes());
    b[27..35].copy_from_slice(&ts.to_be_bytes());
    b[35..43].copy_from_slice(&(ts + n as i64 - 1).to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes());
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes());
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    b[57..61].copy_from_slice(&(n as i32).to_be_bytes());
    for i in 0..n {
        let mut body = vec![0u8];
        put_varlong(&mut body, i as i64);
        put_varlong(&mut body, i as i64);
        put_varlong(&mut body, -1);
        put_varlong(&mut body, value_len as i64);
        body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, value_len));
        put_varlong(&mut body, 0);
        put_varlong(&mut b, body.len() as i64);
        b.extend(body);
    }
    finish(&mut b);
    b
}

/// Sets `batchLength` and the CRC of a hand-built batch.
pub(crate) fn finish(b: &mut [u8]) {
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A batch whose records compaction removed: `recordsCount` 0 but an offset span of
/// `span` (`lastOffsetDelta` = span - 1), as `clean.rs` leaves them.
pub(crate) fn emptied_batch(base_offset: i64, span: i32) -> Vec<u8> {
    let mut b = batch(base_offset, 0, 1, 1, 0);
    b.truncate(61);
    b[23..27].copy_from_slice(&(span - 1).to_be_bytes());
    b[57..61].copy_from_slice(&0i32.to_be_bytes());
    finish(&mut b);
    b
}

pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 200,
        ..LogConfig::default()
    }
}

/// Every batch of the log, from its start, read through `read` as a fetch would.
pub(crate) fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 700, i64::MAX).unwrap();
        assert!(!r.data.is_empty(), "no progress at {offset}");
        offset = crate::batch::next_offset_after(&r.data).unwrap();
        out.extend_from_slice(&r.data);
    }
    out
}

pub(crate) fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

/// Copies the leader's log to the follower the way a fetcher would: fetch from the
/// follower's log end offset, append what came back, `chunk` bytes at a time.
fn replicate(leader: &PartitionLog, follower: &mut PartitionLog, chunk: usize) {
    while follower.log_end_offset() < leader.log_end_offset() {
        let r = leader
            .read(follower.log_end_offset(), chunk, i64::MAX)
            .unwrap();
        let info = follower.append_replicated(&r.data).unwrap();
        assert_eq!(info.last_offset + 1, follower.log_end_offset());
    }
}

#[test]
fn follower_keeps_the_leaders_offsets_and_bytes() {
    let (ld, fd) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut leader = PartitionLog::open(ld.path(), small_config()).unwrap();
    for i in 0..20 {
        // Offsets the producer put there are bogus: the leader assigns its own.
        leader
            .append(&batch(-7, 3, 1 + i % 4, 30, 1000 + i as i64))
            .unwrap();
    }
    let mut follower = PartitionLog::open(fd.path(), small_config()).unwrap();
    replicate(&leader, &mut follower, 300);
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(read_all(&follower), read_all(&leader));
    assert!(segment_count(fd.path()) > 1, "segments roll as for appends");
    // Reads by offset find every batch through the follower's index.
    for o in 0..leader.log_end_offset() {
        assert_eq!(
            follower.read(o, 1, i64::MAX).unwrap().data,
            leader.read(o, 1, i64::MAX).unwrap().data
        );
    }
    let ts = leader.find_batch_by_timestamp(1010).unwrap().unwrap();
    assert_eq!(follower.find_batch_by_timestamp(1010).unwrap().unwrap(), ts);
    // Durable through the usual sync job, and whole after a reopen (full validation).
    follower.flush().unwrap();
    assert_eq!(follower.durable_offset(), follower.log_end_offset());
    let expected = read_all(&follower);
    drop(follower);
    let follower = PartitionLog::open(fd.path(), small_config()).unwrap();
    assert_eq!(read_all(&follower), expected);
}

#[test]
fn a_gap_or_an_overlap_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let mut two = batch(0, 1, 2, 10, 0);
    two.extend(batch(2, 1, 3, 10, 0));
    let info = log.append_replicated(&two).unwrap();
    assert_eq!(
        (
            info.base_offset,
            info.last_offset,
            info.batches,
            info.records
        ),
        (0, 4, 2, 5)
    );
    let before = read_all(&log);

    let gap = log.append_replicated(&batch(6, 1, 1, 10, 0)).unwrap_err();
    assert!(
        matches!(
            gap,
            LogError::OffsetMismatch {
                expected: 5,
                found: 6
            }
        ),
        "{gap}"
    );
    let overlap = log.append_replicated(&batch(4, 1, 1, 10, 0)).unwrap_err();
    assert!(matches!(
        overlap,
        LogError::OffsetMismatch {
            expected: 5,
            found: 4
        }
    ));
    // A gap between two batches of one append: the first is not written either.
    let mut set = batch(5, 1, 1, 10, 0);
    set.extend(batch(7, 1, 1, 10, 0));
    let inner = log.append_replicated(&set).unwrap_err();
    assert!(matches!(
        inner,
        LogError::OffsetMismatch {
            expected: 6,
            found: 7
        }
    ));
    // A damaged batch (CRC), a torn one, and an empty set.
    let mut bad = batch(5, 1, 1, 10, 0);
    bad[70] ^= 1;
    assert!(matches!(
        log.append_replicated(&bad),
        Err(LogError::CorruptBatch(_))
    ));
    let torn = batch(5, 1, 2, 10, 0);
    assert!(matches!(
        log.append_replicated(&torn[..torn.len() - 1]),
        Err(LogError::CorruptBatch(_))
    ));
    assert!(matches!(
        log.append_replicated(&[]),
        Err(LogError::InvalidRecord(_))
    ));
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(read_all(&log), before);
    // The right batch still goes in.
    log.append_replicated(&batch(5, 1, 1, 10, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 6);
}

#[test]
fn offsets_past_i64_are_refused() {
    let dir = TempDir::new().unwrap();
    // A log starting near the top of the offset space (checkpointed start offset).
    std::fs::write(
        dir.path().join("log-start-offset"),
        format!("{}\n", i64::MAX - 10),
    )
    .unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), i64::MAX - 10);
    let mut far = batch(i64::MAX - 10, 1, 1, 10, 0);
    far[23..27].copy_from_slice(&100i32.to_be_bytes());
    finish(&mut far);
    assert!(matches!(
        log.append_replicated(&far),
        Err(LogError::InvalidRecord(_))
    ));
    assert_eq!(log.log_end_offset(), i64::MAX - 10);
}

#[test]
fn batches_emptied_by_compaction_replicate_as_they_are() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let mut data = emptied_batch(0, 4);
    data.extend(batch(4, 2, 1, 5, 0));
    let info = log.append_replicated(&data).unwrap();
    assert_eq!((info.last_offset, info.records), (4, 1));
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(read_all(&log), data);
    let hs: Vec<_> = iter_batches(&data)
        .map(|r| r.unwrap().0.base_offset)
        .collect();
    assert_eq!(hs, [0, 4]);
}

#[test]
fn an_offline_log_refuses_replicated_appends() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    log.append_replicated(&batch(0, 0, 1, 1, 0)).unwrap();
    let job = log.take_sync_job();
    log.complete_sync(&job, Err("EIO".into()));
    assert!(matches!(
        log.append_replicated(&batch(1, 0, 1, 1, 0)),
        Err(LogError::StorageFailed(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever the batches, segment size and fetch size, a follower fed from the leader's
    /// reads ends with the leader's bytes at the leader's offsets, also after a reopen.
    #[test]
    fn follower_is_a_byte_copy_of_the_leader(
        sizes in prop::collection::vec((1usize..6, 0usize..120), 1..40),
        segment_bytes in 200u64..3000,
        chunk in 1usize..2000,
    ) {
        let config = LogConfig { segment_bytes, index_interval_bytes: 150, ..LogConfig::default() };
        let (ld, fd) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let mut leader = PartitionLog::open(ld.path(), config.clone()).unwrap();
        for (i, (n, len)) in sizes.iter().enumerate() {
            leader.append(&batch(0, 0, *n, *len, i as i64)).unwrap();
        }
        let mut follower = PartitionLog::open(fd.path(), config.clone()).unwrap();
        replicate(&leader, &mut follower, chunk);
        let expected = read_all(&leader);
        prop_assert_eq!(read_all(&follower), expected.clone());
        drop(follower);
        let follower = PartitionLog::open(fd.path(), config).unwrap();
        prop_assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        prop_assert_eq!(read_all(&follower), expected);
    }
}
