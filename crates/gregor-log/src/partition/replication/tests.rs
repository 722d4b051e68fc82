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

/// A log of `n` batches of 1..=3 records (batch `k` holds `k % 3 + 1`), rolled often.
fn filled(dir: &Path, n: usize) -> (PartitionLog, Vec<Vec<u8>>) {
    let mut log = PartitionLog::open(dir, small_config()).unwrap();
    let mut stored = Vec::new();
    for k in 0..n {
        let info = log.append(&batch(0, 1, k % 3 + 1, 40, k as i64)).unwrap();
        let r = log.read(info.base_offset, 1, i64::MAX).unwrap();
        stored.push(r.data.to_vec());
    }
    (log, stored)
}

/// The stored batches whose base offset is below `end`, concatenated.
fn prefix(stored: &[Vec<u8>], end: i64) -> Vec<u8> {
    stored
        .iter()
        .filter(|b| i64::from_be_bytes(b[0..8].try_into().unwrap()) < end)
        .flatten()
        .copied()
        .collect()
}

#[test]
fn truncation_cuts_at_the_batch_holding_the_offset() {
    let dir = TempDir::new().unwrap();
    let (mut log, stored) = filled(dir.path(), 30);
    let segments = segment_count(dir.path());
    assert!(segments > 4);
    let end = log.log_end_offset();
    // Batch 10 holds offsets 19..=20 (batch k holds k % 3 + 1 records): 20 straddles.
    let holding = log.read(20, 1, i64::MAX).unwrap();
    let base = i64::from_be_bytes(holding.data[0..8].try_into().unwrap());
    assert!(base < 20);
    log.flush().unwrap();
    log.truncate_to(20).unwrap();
    assert_eq!(log.log_end_offset(), base);
    assert_eq!(log.durable_offset(), base);
    assert_eq!(read_all(&log), prefix(&stored, base));
    assert!(segment_count(dir.path()) < segments);
    assert!(matches!(
        log.read(base + 1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // At or past the end: nothing changes.
    log.truncate_to(base).unwrap();
    log.truncate_to(end).unwrap();
    assert_eq!(log.log_end_offset(), base);

    // The log goes on from there, and reopens (full validation, then clean from index
    // files) to the same bytes.
    let more = batch(base, 2, 2, 10, 99);
    log.append_replicated(&more).unwrap();
    let mut expected = prefix(&stored, base);
    expected.extend_from_slice(&more);
    assert_eq!(read_all(&log), expected);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(read_all(&log), expected);
    log.close().unwrap();
    let hint = crate::RecoveryHint {
        recovery_point: None,
        clean: true,
    };
    let log = PartitionLog::open_with(dir.path(), small_config(), hint).unwrap();
    assert_eq!(log.scanned_on_open(), 0);
    assert_eq!(read_all(&log), expected);
}

#[test]
fn truncation_at_a_segment_base_and_to_the_start() {
    let dir = TempDir::new().unwrap();
    let (mut log, stored) = filled(dir.path(), 30);
    let second = log.segments[1].base_offset();
    log.truncate_to(second).unwrap();
    assert_eq!(log.log_end_offset(), second);
    assert_eq!(read_all(&log), prefix(&stored, second));
    log.truncate_to(0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert_eq!(segment_count(dir.path()), 1);
    log.append_replicated(&batch(0, 5, 1, 1, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 1);
}

#[test]
fn truncation_never_goes_below_the_log_start() {
    let dir = TempDir::new().unwrap();
    let (mut log, _) = filled(dir.path(), 30);
    // Batch 3 holds offsets 6..=6, batch 4 7..=8: a start offset inside batch 4.
    log.advance_log_start_offset(8).unwrap();
    let end = log.log_end_offset();
    for bad in [0, 7] {
        assert!(matches!(
            log.truncate_to(bad),
            Err(LogError::OffsetOutOfRange { .. })
        ));
    }
    // 8 lies in the batch 7..=8, which begins below the start: refused too.
    assert!(matches!(
        log.truncate_to(8),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.log_end_offset(), end);
    log.truncate_to(9).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (8, 9));
}

#[test]
fn truncation_trims_the_aborted_transaction_index() {
    let dir = TempDir::new().unwrap();
    let (mut log, _) = filled(dir.path(), 30);
    let entry = |last: i64| crate::AbortedTxnEntry {
        producer_id: 7,
        first_offset: last - 1,
        last_offset: last,
        last_stable_offset: last + 1,
    };
    for last in [3, 12, 25, 40] {
        log.append_aborted_txn(&entry(last)).unwrap();
    }
    log.truncate_to(25).unwrap();
    let end = log.log_end_offset();
    let kept: Vec<i64> = log
        .read_aborted_txns()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.last_offset)
        .collect();
    assert_eq!(
        kept,
        [3, 12].into_iter().filter(|o| *o < end).collect::<Vec<_>>()
    );
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.read_aborted_txns().unwrap().entries.len(), 2);
}

#[test]
fn a_sync_job_taken_before_a_truncation_does_not_move_the_durable_offset() {
    let dir = TempDir::new().unwrap();
    let (mut log, _) = filled(dir.path(), 10);
    log.flush().unwrap();
    log.append(&batch(0, 1, 2, 10, 0)).unwrap();
    let job = log.take_sync_job();
    assert_eq!(job.up_to(), log.log_end_offset());
    log.truncate_to(5).unwrap();
    let end = log.log_end_offset();
    assert!(end <= 5);
    assert_eq!(log.durable_offset(), end);
    // New data at the old offsets, not fsynced yet.
    log.append(&batch(0, 1, 3, 10, 0)).unwrap();
    job.run().unwrap();
    log.complete_sync(&job, Ok(()));
    assert_eq!(log.durable_offset(), end);
    log.flush().unwrap();
    assert_eq!(log.durable_offset(), log.log_end_offset());
}

/// Copies the files of `from` into a fresh directory.
fn copy_dir(from: &Path) -> TempDir {
    let to = TempDir::new().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

#[test]
fn a_crash_in_the_middle_of_a_truncation_leaves_a_prefix() {
    let dir = TempDir::new().unwrap();
    let (mut log, stored) = filled(dir.path(), 30);
    log.flush_for_shutdown().unwrap();
    let all = prefix(&stored, i64::MAX);
    let mut segs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    segs.sort();
    // The files as truncate_to leaves them step by step: the last segments gone one by
    // one (the holding segment not cut yet), in any order the directory made durable.
    for gone in 1..segs.len() {
        for skip_first in [false, true] {
            let copy = copy_dir(dir.path());
            let mut victims: Vec<&String> = segs[segs.len() - gone..].iter().collect();
            if skip_first && victims.len() > 1 {
                // Unlinks reordered by a crash: a later one survived, an earlier went.
                victims.remove(victims.len() - 1);
            }
            for v in victims {
                std::fs::remove_file(copy.path().join(v)).unwrap();
                let _ = std::fs::remove_file(copy.path().join(v.replace(".log", ".index")));
            }
            for clean in [false, true] {
                let hint = crate::RecoveryHint {
                    recovery_point: None,
                    clean,
                };
                let l = PartitionLog::open_with(copy.path(), small_config(), hint).unwrap();
                let got = read_all(&l);
                assert!(
                    all.starts_with(&got),
                    "not a prefix ({gone} gone, clean {clean})"
                );
                assert_eq!(got, prefix(&stored, l.log_end_offset()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any log, truncated anywhere at or above its start, then appended to (new batches at
    /// the reused offsets), holds the batches below the cut plus the new ones — live and
    /// after a reopen with full validation.
    #[test]
    fn truncate_then_append_is_a_prefix_plus_the_new_batches(
        n in 1usize..40,
        cut in 0.0f64..1.2,
        start in 0.0f64..0.5,
        more in prop::collection::vec(1usize..4, 0..10),
    ) {
        let dir = TempDir::new().unwrap();
        let (mut log, stored) = filled(dir.path(), n);
        let end = log.log_end_offset();
        let first_batch_at_or_above = |o: i64| stored
            .iter()
            .map(|b| i64::from_be_bytes(b[0..8].try_into().unwrap()))
            .find(|b| *b >= o)
            .unwrap_or(end);
        let start = first_batch_at_or_above((end as f64 * start) as i64);
        log.advance_log_start_offset(start).unwrap();
        let offset = start + ((end - start) as f64 * cut) as i64;
        log.truncate_to(offset).unwrap();
        let new_end = log.log_end_offset();
        prop_assert!(new_end <= offset.max(start) && new_end >= start);
        prop_assert!(offset >= end || new_end <= offset);
        let mut expected: Vec<u8> = stored
            .iter()
            .filter(|b| {
                let base = i64::from_be_bytes(b[0..8].try_into().unwrap());
                base >= start && base < new_end
            })
            .flatten()
            .copied()
            .collect();
        for k in &more {
            let b = batch(log.log_end_offset(), 9, *k, 25, 7);
            log.append_replicated(&b).unwrap();
            expected.extend_from_slice(&b);
        }
        prop_assert_eq!(read_all(&log), expected.clone());
        drop(log);
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        prop_assert_eq!(read_all(&log), expected);
    }

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

/// A follower whose log ends below its leader's log start drops everything and goes on
/// from the leader's start; the log reopens there, clean or after a crash.
#[test]
fn full_truncation_starts_the_log_again_at_the_leaders_start() {
    let dir = TempDir::new().unwrap();
    let (mut log, _) = filled(dir.path(), 30);
    let old_end = log.log_end_offset();
    log.flush().unwrap();
    let start = old_end + 100;
    log.truncate_fully_and_start_at(start).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (start, start)
    );
    assert_eq!(log.durable_offset(), start);
    assert_eq!(segment_count(dir.path()), 1);
    assert!(log.epochs.entries().is_empty());
    assert!(matches!(
        log.read(0, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let more = batch(start, 7, 3, 10, 99);
    log.append_replicated(&more).unwrap();
    assert_eq!(log.log_end_offset(), start + 3);
    assert_eq!(read_all(&log), more);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (start, start + 3)
    );
    assert_eq!(read_all(&log), more);
    assert_eq!(log.latest_leader_epoch(), Some(7));
}
