use std::sync::Arc;

use bytes::Bytes;
use gregor_log::{LogConfig, RecoveryHint};
use gregor_protocol::batch_builder::BatchBuilder;
use gregor_txn::records::{marker_key, marker_value};
use gregor_txn::Verdict;
use tempfile::TempDir;

use super::*;
use crate::partition::{Partition, ProduceError};

/// One v2 batch of `n` records from `pid` at `epoch` starting at sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, n: i32, transactional: bool) -> Bytes {
    batch_at(pid, epoch, seq, n, transactional, 1000)
}

/// [`batch`] with the records (so the batch's `maxTimestamp`) at `ts`.
fn batch_at(pid: i64, epoch: i16, seq: i32, n: i32, transactional: bool, ts: i64) -> Bytes {
    BatchBuilder::new()
        .producer(pid, epoch)
        .base_sequence(seq)
        .transactional(transactional)
        .records((0..n).map(|_| (None, Some(Bytes::from(vec![b'x'; 40])), ts)))
        .encode()
        .unwrap()
}

fn marker(pid: i64, epoch: i16, commit: bool) -> Bytes {
    marker_at(pid, epoch, commit, 1000)
}

fn marker_at(pid: i64, epoch: i16, commit: bool, ts: i64) -> Bytes {
    crate::internal_topics::encode_internal_batch(
        [(
            Bytes::copy_from_slice(&marker_key(commit)),
            Some(Bytes::copy_from_slice(&marker_value(0))),
        )],
        ts,
        Some((pid, epoch)),
        true,
    )
    .unwrap()
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        ..LogConfig::default()
    }
}

/// No expiry: the test batches are stamped long ago (1970).
const NO_EXPIRY: LoadExpiry = LoadExpiry {
    now_ms: 0,
    expiration_ms: i64::MAX,
};

const DAY: i64 = 86_400_000;

fn open(dir: &Path, clean: bool) -> (Partition, Loaded) {
    open_with(dir, clean, NO_EXPIRY)
}

/// Opens as the broker does (`state::open_partition_with`).
fn open_with(dir: &Path, clean: bool, expiry: LoadExpiry) -> (Partition, Loaded) {
    let mut log = PartitionLog::open_with(
        dir,
        config(),
        RecoveryHint {
            recovery_point: None,
            clean,
        },
    )
    .unwrap();
    let loaded = load(dir, &mut log, expiry).unwrap();
    let p = Partition::new("t", 0, dir.to_path_buf(), log, loaded.table.snapshot_copy());
    p.producers
        .lock()
        .unwrap()
        .set_aborted(loaded.table.aborted_between(0, i64::MAX));
    *p.snapshot_write.lock().unwrap() = loaded
        .snapshot_offset
        .filter(|_| loaded.filled_timestamps == 0);
    (p, loaded)
}

fn append(p: &Partition, records: &[u8]) -> gregor_log::AppendInfo {
    p.append_internal(records).unwrap()
}

/// What a producer-state table decides and reports, for comparisons.
fn summary(t: &ProducerStateTable) -> String {
    // Every producer's retained batches and epoch, open transactions (a JSON value compares
    // maps regardless of order), and the aborted index.
    let state = serde_json::to_value(t).unwrap();
    format!("{state} {:?}", t.aborted_between(0, i64::MAX))
}

/// How many aborted transactions the log's `.txnindex` files hold.
fn aborted_txns_on_disk(p: &Partition) -> usize {
    let log = p.log.read().unwrap();
    log.read_aborted_txns().unwrap().entries.len()
}

/// Writes a workload over many segments: an idempotent producer (pid 1), a transaction
/// of pid 2 aborted early, one of pid 3 committed, and one of pid 4 left open. Returns the
/// number of batches and the last idempotent batch with its offset.
fn workload(p: &Partition) -> (u64, i32, i64) {
    let mut batches = 0u64;
    let mut seq = 0;
    let mut last = (-1, -1);
    let mut idem = |p: &Partition, batches: &mut u64| {
        let info = append(p, &batch(1, 0, seq, 2, false));
        last = (seq, info.base_offset);
        seq += 2;
        *batches += 1;
    };
    for _ in 0..3 {
        idem(p, &mut batches);
    }
    append(p, &batch(2, 0, 0, 1, true));
    append(p, &batch(2, 0, 1, 1, true));
    idem(p, &mut batches);
    append(p, &marker(2, 0, false));
    append(p, &batch(3, 0, 0, 1, true));
    append(p, &marker(3, 0, true));
    batches += 5;
    for _ in 0..20 {
        idem(p, &mut batches);
    }
    append(p, &batch(4, 0, 0, 1, true));
    batches += 1;
    for _ in 0..3 {
        idem(p, &mut batches);
    }
    (batches, last.0, last.1)
}

fn flush(p: &Partition) {
    p.log.write().unwrap().flush().unwrap();
    p.write_due_snapshots();
}

#[test]
fn snapshot_encoding_round_trips_and_rejects_damage() {
    let mut t = ProducerStateTable::new();
    t.record(&ProducerBatch::new(7, 1, 0, 3), 10, 13, 1_700_000_000_000);
    t.record_transactional(8, 14);
    let bytes = encode_snapshot(14, &t).unwrap();
    assert_eq!(summary(&decode_snapshot(&bytes, 14).unwrap()), summary(&t));
    assert!(
        decode_snapshot(&bytes, 15).is_err(),
        "named for another offset"
    );
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(decode_snapshot(&bad, 14).is_err(), "flipped byte {i}");
    }
    for len in 0..bytes.len() {
        assert!(decode_snapshot(&bytes[..len], 14).is_err());
    }
}

#[test]
fn unclean_reopen_replays_only_after_the_newest_snapshot() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    let (batches, last_seq, last_offset) = workload(&p);
    flush(&p);
    let live = summary(&p.producers.lock().unwrap());
    let segments = p.log.read().unwrap().segment_count();
    assert!(segments > 5, "{segments}");
    let snaps = list_snapshots(dir.path()).unwrap();
    assert_eq!(snaps.len(), SNAPSHOTS_KEPT);
    let end = p.log.read().unwrap().log_end_offset();
    drop(p);

    // As after kill -9: no snapshot at the end.
    let (p, loaded) = open(dir.path(), false);
    assert_eq!(loaded.snapshot_offset, Some(snaps.last().unwrap().0));
    assert!(loaded.replayed_batches > 0 && loaded.replayed_batches < batches / 4);
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    // The aborted transaction lies in an older segment and is still known.
    let aborted = p.producers.lock().unwrap().aborted_between(0, end);
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].producer_id, 2);
    // Dedup still works.
    let pb = ProducerBatch::new(1, 0, last_seq, 1);
    assert_eq!(
        p.producers.lock().unwrap().check(&pb),
        Ok(Verdict::Duplicate {
            first_offset: last_offset,
            last_offset: last_offset + 1
        })
    );
    // No duplicated .txnindex entries after the replay re-derived what was above it.
    assert_eq!(aborted_txns_on_disk(&p), 1);
    drop(p);

    // Without any snapshot: full replay, same state.
    for (_, path) in list_snapshots(dir.path()).unwrap() {
        std::fs::remove_file(path).unwrap();
    }
    let (p, loaded) = open(dir.path(), false);
    assert_eq!(loaded.snapshot_offset, None);
    assert_eq!(loaded.replayed_batches, batches);
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    assert_eq!(aborted_txns_on_disk(&p), 1);
}

#[test]
fn clean_shutdown_snapshot_replays_nothing() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    workload(&p);
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    p.snapshot_at_shutdown().unwrap();
    let live = summary(&p.producers.lock().unwrap());
    let end = p.log.read().unwrap().log_end_offset();
    drop(p);
    let (p, loaded) = open(dir.path(), true);
    assert_eq!(loaded.snapshot_offset, Some(end));
    assert_eq!(loaded.replayed_batches, 0);
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    // A second shutdown with nothing new does not rewrite it.
    let before = std::fs::metadata(snapshot_path(dir.path(), end))
        .unwrap()
        .modified()
        .unwrap();
    p.snapshot_at_shutdown().unwrap();
    let after = std::fs::metadata(snapshot_path(dir.path(), end))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn corrupt_and_too_new_snapshots_are_skipped() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    workload(&p);
    flush(&p);
    let live = summary(&p.producers.lock().unwrap());
    let end = p.log.read().unwrap().log_end_offset();
    drop(p);
    let snaps = list_snapshots(dir.path()).unwrap();
    // The newest is damaged; one claims an offset beyond the log (the log lost its tail).
    let (newest, newest_path) = snaps.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest_path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&newest_path, bytes).unwrap();
    let beyond = snapshot_path(dir.path(), end + 100);
    std::fs::copy(&snaps[0].1, &beyond).unwrap();
    std::fs::write(dir.path().join(LEGACY_SNAPSHOT_FILE), b"{}").unwrap();

    let (p, loaded) = open(dir.path(), false);
    assert_eq!(loaded.snapshot_offset, Some(snaps[snaps.len() - 2].0));
    assert!(loaded.snapshot_offset < Some(newest));
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    assert!(!beyond.exists());
    assert!(!newest_path.exists());
    assert!(!dir.path().join(LEGACY_SNAPSHOT_FILE).exists());
}

#[test]
fn truncated_log_drops_snapshots_and_aborted_entries_above_it() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    for s in 0..4 {
        append(&p, &batch(1, 0, s, 1, false));
    }
    append(&p, &batch(2, 0, 0, 1, true));
    append(&p, &marker(2, 0, false));
    let marker_offset = p.log.read().unwrap().log_end_offset() - 1;
    flush(&p);
    let (end, active) = {
        let log = p.log.read().unwrap();
        (log.log_end_offset(), log.segment_count())
    };
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    p.snapshot_at_shutdown().unwrap();
    drop(p);
    assert!(snapshot_path(dir.path(), end).exists());
    assert!(active >= 2);
    // Cut the last segment (holding the marker) in the middle of its last batch.
    let mut logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let last = logs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (p, loaded) = open(dir.path(), false);
    let new_end = p.log.read().unwrap().log_end_offset();
    assert!(new_end <= marker_offset);
    assert!(!snapshot_path(dir.path(), end).exists());
    assert!(loaded.snapshot_offset.is_none_or(|o| o <= new_end));
    let t = p.producers.lock().unwrap();
    assert_eq!(t.aborted_len(), 0);
    assert!(t.in_transaction(2));
    drop(t);
    assert_eq!(aborted_txns_on_disk(&p), 0);
}

#[test]
fn deleting_segments_drops_their_aborted_transactions() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    workload(&p);
    flush(&p);
    assert_eq!(p.producers.lock().unwrap().aborted_len(), 1);
    let end = p.log.read().unwrap().log_end_offset();
    {
        let mut log = p.log.write().unwrap();
        log.advance_log_start_offset(end - 2).unwrap();
        p.segments_deleted(&log);
    }
    assert_eq!(p.producers.lock().unwrap().aborted_len(), 0);
    drop(p);
    let (p, _) = open(dir.path(), false);
    assert_eq!(p.producers.lock().unwrap().aborted_len(), 0);
    assert!(list_snapshots(dir.path())
        .unwrap()
        .iter()
        .all(|(o, _)| *o >= end - 2));
    let _ = Arc::new(p);
}

fn producer_ids(p: &Partition) -> Vec<i64> {
    let mut ids: Vec<i64> = p
        .producers
        .lock()
        .unwrap()
        .producers()
        .iter()
        .map(|s| s.producer_id)
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn expired_producers_stay_expired_after_reopen() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    let t0 = 1_000;
    // pid 1 idle since t0 (over many segments, so roll snapshots hold it), pid 3 with a
    // transaction open since t0, pid 2 writing half a day later.
    for s in 0..30 {
        append(&p, &batch_at(1, 0, s * 2, 2, false, t0));
    }
    append(&p, &batch_at(3, 0, 0, 1, true, t0));
    append(&p, &batch_at(2, 0, 0, 1, false, t0 + DAY / 2));
    flush(&p);
    assert!(!list_snapshots(dir.path()).unwrap().is_empty());
    let now = t0 + DAY;
    assert_eq!(p.expire_producers(now - 1, DAY), 0);
    assert_eq!(p.expire_producers(now, DAY), 1);
    assert_eq!(producer_ids(&p), vec![2, 3]);
    let live = summary(&p.producers.lock().unwrap());
    drop(p);

    // kill -9: the replay from a roll snapshot brings pid 1 back; the load expires it.
    let expiry = LoadExpiry {
        now_ms: now,
        expiration_ms: DAY,
    };
    let (p, loaded) = open_with(dir.path(), false, expiry);
    assert!(loaded.snapshot_offset.is_some() && loaded.replayed_batches > 0);
    assert_eq!(loaded.expired_producers, 1);
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    // Clean shutdown: the snapshot at the log end leaves pid 1 out.
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    p.snapshot_at_shutdown().unwrap();
    drop(p);
    let (p, loaded) = open_with(dir.path(), true, expiry);
    assert_eq!((loaded.replayed_batches, loaded.expired_producers), (0, 0));
    assert_eq!(summary(&p.producers.lock().unwrap()), live);
    drop(p);
    // Much later: pid 2 is gone too; pid 3 stays while its transaction is open.
    let later = LoadExpiry {
        now_ms: t0 + 3 * DAY,
        expiration_ms: DAY,
    };
    let (p, loaded) = open_with(dir.path(), true, later);
    assert_eq!(loaded.expired_producers, 1);
    assert_eq!(producer_ids(&p), vec![3]);
    assert!(p.producers.lock().unwrap().in_transaction(3));
}

#[test]
fn snapshot_of_an_earlier_version_loads_and_is_rewritten_at_shutdown() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    append(&p, &batch_at(7, 0, 0, 4, false, 1000));
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    drop(p);
    // What the previous version wrote at its clean shutdown: no timestamps.
    let old = br#"{"producers":{"7":{"epoch":0,"batches":[{"first_sequence":0,"last_sequence":3,"first_offset":0,"last_offset":3}]}},"ongoing":{}}"#;
    std::fs::write(
        snapshot_path(dir.path(), 4),
        frame_snapshot(4, old).unwrap(),
    )
    .unwrap();
    let expiry = LoadExpiry {
        now_ms: 5 * DAY,
        expiration_ms: DAY,
    };
    let (p, loaded) = open_with(dir.path(), true, expiry);
    assert_eq!(loaded.snapshot_offset, Some(4));
    assert_eq!(loaded.replayed_batches, 0);
    assert_eq!((loaded.filled_timestamps, loaded.expired_producers), (1, 0));
    let summary_of = |t: &ProducerStateTable| t.producers()[0];
    assert_eq!(
        summary_of(&p.producers.lock().unwrap()).last_timestamp,
        5 * DAY
    );
    assert_eq!(
        p.producers
            .lock()
            .unwrap()
            .check(&ProducerBatch::new(7, 0, 0, 3)),
        Ok(Verdict::Duplicate {
            first_offset: 0,
            last_offset: 3
        })
    );
    // Nothing appended, yet the clean shutdown rewrites it with the timestamps.
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    p.snapshot_at_shutdown().unwrap();
    let bytes = std::fs::read(snapshot_path(dir.path(), 4)).unwrap();
    let table = decode_snapshot(&bytes, 4).unwrap();
    assert_eq!(summary_of(&table).last_timestamp, 5 * DAY);
}

#[derive(Debug, Clone)]
enum Op {
    Idempotent { pid: i64, n: i32 },
    Transactional { pid: i64 },
    Marker { pid: i64, commit: bool },
    Flush,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1i64..4, 1i32..4).prop_map(|(pid, n)| Op::Idempotent { pid, n }),
        2 => (10i64..13).prop_map(|pid| Op::Transactional { pid }),
        1 => (10i64..13, any::<bool>()).prop_map(|(pid, commit)| Op::Marker { pid, commit }),
        1 => Just(Op::Flush),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Whatever was appended, with snapshots written at whatever points, a reopen after an
    /// unclean stop and after a clean one rebuilds exactly the live producer state, and a
    /// second reopen does too (no duplicated `.txnindex` entries).
    #[test]
    fn reopen_rebuilds_the_live_state(ops in proptest::collection::vec((op(), 0i64..1_000_000), 1..120),
                                      clean in proptest::prelude::any::<bool>()) {
        let dir = TempDir::new().unwrap();
        let (p, _) = open(dir.path(), false);
        let mut seqs = std::collections::HashMap::new();
        // Every batch and marker has its own timestamp (not monotonic, as client clocks):
        // the reopened table must hold each producer's last one, as the live one does.
        for (op, ts) in &ops {
            match *op {
                Op::Idempotent { pid, n } => {
                    let seq = seqs.entry(pid).or_insert(0);
                    append(&p, &batch_at(pid, 0, *seq, n, false, *ts));
                    *seq += n;
                }
                Op::Transactional { pid } => {
                    let seq = seqs.entry(pid).or_insert(0);
                    append(&p, &batch_at(pid, 0, *seq, 1, true, *ts));
                    *seq += 1;
                }
                Op::Marker { pid, commit } => {
                    append(&p, &marker_at(pid, 0, commit, *ts));
                }
                Op::Flush => flush(&p),
            }
        }
        let live = summary(&p.producers.lock().unwrap());
        if clean {
            p.log.write().unwrap().flush_for_shutdown().unwrap();
            p.snapshot_at_shutdown().unwrap();
        }
        drop(p);
        let (p, loaded) = open(dir.path(), clean);
        proptest::prop_assert_eq!(summary(&p.producers.lock().unwrap()), live.clone());
        if clean {
            proptest::prop_assert_eq!(loaded.replayed_batches, 0);
        }
        drop(p);
        let (p, _) = open(dir.path(), false);
        proptest::prop_assert_eq!(summary(&p.producers.lock().unwrap()), live);
    }
}

/// A client's produce through the idempotence check, as the Produce handler calls it.
fn produce(p: &Partition, records: &Bytes) -> Result<i64, crate::partition::ProduceError> {
    let batches =
        gregor_log::ValidatedBatches::validate(records, |_, _| Ok::<(), gregor_log::LogError>(()))
            .unwrap();
    p.append_produced(&batches, |_| Ok(()))
        .map(|a| a.base_offset)
}

/// Issue 17 (fault kind `fsync_fail`): a batch whose fsync failed stays in the segment
/// (the page cache keeps it through kill -9) and is recovered by the restart. The
/// idempotent client keeps retrying it with its sequence, which the replayed producer state
/// matches with the recovered copy — unless, while the log was offline, the broker answered
/// a later batch OUT_OF_ORDER_SEQUENCE_NUMBER (the sequence check ran before the offline
/// check): librdkafka then bumps its epoch and re-sends everything unacknowledged at
/// sequence 0, which no check can match with the old copy, and the batch was in the log
/// twice. So while offline every produce is refused before the sequence check, a retry of
/// the undurable batch is answered "possibly written" (never a success), and after the
/// restart the retry gets the recovered copy's offsets.
#[test]
fn a_batch_whose_fsync_failed_is_written_once() {
    use crate::partition::ProduceError;
    use gregor_log::LogError;

    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    let durable = batch(7, 0, 0, 2, false);
    assert_eq!(produce(&p, &durable).unwrap(), 0);
    flush(&p);
    // Appended, then the flusher's fsync of it fails: the log goes offline.
    let failed = batch(7, 0, 2, 2, false);
    assert_eq!(produce(&p, &failed).unwrap(), 2);
    let job = p.take_sync_job();
    p.complete_sync(&job, Err("Input/output error (os error 5)".into()));
    assert!(p.offline_error().is_some());

    // Its retry: possibly written. The durable batch's retry: its offsets.
    assert!(matches!(
        produce(&p, &failed),
        Err(ProduceError::NotDurable { first_offset: 2 })
    ));
    assert_eq!(produce(&p, &durable).unwrap(), 0);
    // Anything else, in sequence or not, a new epoch or a new producer: not written, and
    // never out of order.
    for b in [
        batch(7, 0, 4, 2, false),
        batch(7, 0, 6, 2, false),
        batch(7, 1, 0, 2, false),
        batch(8, 0, 0, 1, false),
    ] {
        match produce(&p, &b) {
            Err(ProduceError::Log(LogError::StorageFailed(_))) => {}
            other => panic!("offline log answered {other:?}"),
        }
    }
    // An fsync that succeeds later proves nothing: the log stays offline, durable below it.
    assert!(p.flush().is_err());
    assert_eq!(p.durable_offset(), 2);
    assert_eq!(p.log_end_offset(), 4);
    drop(p);

    // kill -9 and restart: the page cache still holds the batch; recovery keeps it.
    let (p, _) = open(dir.path(), false);
    assert_eq!(p.log_end_offset(), 4);
    assert_eq!(
        produce(&p, &failed).unwrap(),
        2,
        "the retry gets the recovered copy"
    );
    assert_eq!(produce(&p, &batch(7, 0, 4, 2, false)).unwrap(), 4);
    let data = p.read(0, 1 << 20, p.log_end_offset()).unwrap().data;
    let sequences: Vec<(i16, i32)> = gregor_log::batch::iter_batches(&data)
        .map(|b| {
            let (h, _) = b.unwrap();
            (h.producer_epoch, h.base_sequence)
        })
        .collect();
    assert_eq!(sequences, vec![(0, 0), (0, 2), (0, 4)]);
}

/// A marker of coordinator epoch `coordinator_epoch`.
fn marker_from(pid: i64, epoch: i16, commit: bool, coordinator_epoch: i32) -> Bytes {
    crate::internal_topics::encode_internal_batch(
        [(
            Bytes::copy_from_slice(&marker_key(commit)),
            Some(Bytes::copy_from_slice(&marker_value(coordinator_epoch))),
        )],
        1000,
        Some((pid, epoch)),
        true,
    )
    .unwrap()
}

#[test]
fn markers_of_a_zombie_coordinator_or_an_older_producer_epoch_are_refused() {
    let dir = TempDir::new().unwrap();
    let (p, _) = open(dir.path(), false);
    append(&p, &batch(7, 2, 0, 3, true));
    p.append_marker(&marker_from(7, 2, true, 4), 7, 2, 4)
        .unwrap();
    append(&p, &batch(7, 2, 3, 3, true));
    // The coordinator that lost its partition (epoch 3) must not close the transaction.
    let end = p.log.read().unwrap().log_end_offset();
    let fenced = p.append_marker(&marker_from(7, 2, false, 3), 7, 2, 3);
    assert!(matches!(
        fenced,
        Err(ProduceError::Producer(
            gregor_txn::ProducerError::CoordinatorFenced { current: 4, .. }
        ))
    ));
    let stale = p.append_marker(&marker_from(7, 1, false, 5), 7, 1, 5);
    assert!(matches!(
        stale,
        Err(ProduceError::Producer(
            gregor_txn::ProducerError::InvalidEpoch { .. }
        ))
    ));
    assert_eq!(
        p.log.read().unwrap().log_end_offset(),
        end,
        "nothing written"
    );
    assert!(p.producers.lock().unwrap().in_transaction(7));
    // The coordinator epoch is rebuilt from the log on reopen.
    p.log.write().unwrap().flush_for_shutdown().unwrap();
    drop(p);
    let (p, _) = open(dir.path(), false);
    assert!(p
        .append_marker(&marker_from(7, 2, false, 3), 7, 2, 3)
        .is_err());
    p.append_marker(&marker_from(7, 2, false, 4), 7, 2, 4)
        .unwrap();
    assert!(!p.producers.lock().unwrap().in_transaction(7));
}
