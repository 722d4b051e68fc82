use std::path::Path;

use tempfile::TempDir;

use crate::batch::stamp_partition_leader_epoch;
use crate::epoch::FILE_NAME;
use crate::partition::replication::tests::{batch, read_all, small_config};
use crate::{LogError, PartitionLog};

fn pairs(log: &PartitionLog) -> Vec<(i32, i64)> {
    log.leader_epochs()
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

fn file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(FILE_NAME)).unwrap()
}

/// A follower log holding batches of 2 records in epochs 1, 1, 3, 3, 5 (offsets 0..10).
fn follower(dir: &Path) -> PartitionLog {
    let mut log = PartitionLog::open(dir, small_config()).unwrap();
    for (i, epoch) in [1, 1, 3, 3, 5].into_iter().enumerate() {
        log.append_replicated(&batch(2 * i as i64, epoch, 2, 20, 0))
            .unwrap();
    }
    log
}

#[test]
fn replicated_batches_fill_the_cache_and_the_file() {
    let dir = TempDir::new().unwrap();
    let log = follower(dir.path());
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)]);
    assert_eq!(file(dir.path()), "0\n3\n1 0\n3 4\n5 8\n");
    assert_eq!(log.latest_leader_epoch(), Some(5));
    assert_eq!(log.end_offset_for_leader_epoch(5), (5, 10));
    assert_eq!(log.end_offset_for_leader_epoch(4), (3, 8));
    assert_eq!(log.end_offset_for_leader_epoch(1), (1, 4));
    assert_eq!(log.end_offset_for_leader_epoch(0), (0, 0));
    assert_eq!(log.end_offset_for_leader_epoch(6), (-1, -1));
    drop(log);
    // Loaded from the file; rebuilt from the batches when it is missing or damaged.
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)]);
    drop(log);
    for damage in [None, Some("garbage"), Some("0\n3\n1 0\n")] {
        match damage {
            None => std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap(),
            Some(text) => std::fs::write(dir.path().join(FILE_NAME), text).unwrap(),
        }
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)], "{damage:?}");
        assert_eq!(file(dir.path()), "0\n3\n1 0\n3 4\n5 8\n");
    }
}

#[test]
fn an_older_epoch_in_replicated_batches_is_stored_but_not_cached() {
    let dir = TempDir::new().unwrap();
    let mut log = follower(dir.path());
    log.append_replicated(&batch(10, 2, 1, 1, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 11);
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)]);
    // Batches with no epoch (-1) change nothing either.
    log.append_replicated(&batch(11, -1, 1, 1, 0)).unwrap();
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)]);
}

#[test]
fn truncation_trims_the_cache_and_a_crash_before_the_file_is_rewritten_is_harmless() {
    let dir = TempDir::new().unwrap();
    let mut log = follower(dir.path());
    let before = file(dir.path());
    log.truncate_to(5).unwrap();
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(pairs(&log), [(1, 0)]);
    assert_eq!(file(dir.path()), "0\n1\n1 0\n");
    drop(log);
    // A crash between the log's truncation and the file's: the old file, the cut log.
    std::fs::write(dir.path().join(FILE_NAME), before).unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(pairs(&log), [(1, 0)]);
    assert_eq!(file(dir.path()), "0\n1\n1 0\n");
    // The new leader's epoch 4 from offset 4.
    log.append_replicated(&batch(4, 4, 3, 5, 0)).unwrap();
    assert_eq!(pairs(&log), [(1, 0), (4, 4)]);
}

#[test]
fn a_leader_assigns_its_epoch_at_the_log_end_and_stamps_its_batches() {
    let dir = TempDir::new().unwrap();
    let mut log = PartitionLog::open(dir.path(), small_config()).unwrap();
    log.assign_leader_epoch(2).unwrap();
    let mut b = batch(0, -1, 3, 5, 0);
    assert_eq!(stamp_partition_leader_epoch(&mut b, 2), 1);
    log.append(&b).unwrap();
    log.assign_leader_epoch(2).unwrap(); // the same epoch again: no change
    assert_eq!(pairs(&log), [(2, 0)]);
    assert!(matches!(
        log.assign_leader_epoch(1),
        Err(LogError::StaleLeaderEpoch {
            epoch: 1,
            latest: 2
        })
    ));
    log.assign_leader_epoch(7).unwrap();
    assert_eq!(pairs(&log), [(2, 0), (7, 3)]);
    assert_eq!(log.end_offset_for_leader_epoch(2), (2, 3));
    assert_eq!(log.end_offset_for_leader_epoch(7), (7, 3));
    // The stored batch carries the epoch, and a rebuild finds it.
    let data = log.read(0, 1000, i64::MAX).unwrap().data;
    assert_eq!(i32::from_be_bytes(data[12..16].try_into().unwrap()), 2);
    drop(log);
    std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        pairs(&log),
        [(2, 0)],
        "epoch 7 wrote nothing: gone, as in Kafka"
    );
}

#[test]
fn an_epoch_that_wrote_nothing_is_dropped_on_open() {
    let dir = TempDir::new().unwrap();
    let mut log = follower(dir.path());
    log.assign_leader_epoch(9).unwrap();
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8), (9, 10)]);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(pairs(&log), [(1, 0), (3, 4), (5, 8)]);
}

#[test]
fn the_log_start_moving_trims_the_cache() {
    let dir = TempDir::new().unwrap();
    let mut log = follower(dir.path());
    log.advance_log_start_offset(6).unwrap();
    assert_eq!(pairs(&log), [(3, 6), (5, 8)]);
    assert_eq!(file(dir.path()), "0\n2\n3 6\n5 8\n");
    assert_eq!(log.end_offset_for_leader_epoch(1), (1, 6));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(pairs(&log), [(3, 6), (5, 8)]);
}

/// KIP-101 end to end on two real logs: a follower that kept batches its old leader never
/// got replicated asks the new leader where its epoch ended, truncates there and fetches:
/// the logs are then identical.
#[test]
fn a_diverged_follower_truncates_to_the_epoch_boundary_and_converges() {
    let (ld, fd) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut leader = PartitionLog::open(ld.path(), small_config()).unwrap();
    let mut follower = PartitionLog::open(fd.path(), small_config()).unwrap();
    // Epoch 1: both logs get offsets 0..6.
    for i in 0..3 {
        let b = batch(2 * i, 1, 2, 30, 0);
        leader.append_replicated(&b).unwrap();
        follower.append_replicated(&b).unwrap();
    }
    // The old leader (now the follower) wrote 6..10 in epoch 1 alone, then died.
    follower.append_replicated(&batch(6, 1, 4, 30, 1)).unwrap();
    // The new leader, epoch 2, wrote 6..9.
    leader.assign_leader_epoch(2).unwrap();
    let mut b = batch(0, -1, 3, 30, 2);
    stamp_partition_leader_epoch(&mut b, 2);
    leader.append(&b).unwrap();

    let latest = follower.latest_leader_epoch().unwrap();
    let (epoch, end) = leader.end_offset_for_leader_epoch(latest);
    assert_eq!((epoch, end), (1, 6));
    follower
        .truncate_to(end.min(follower.log_end_offset()))
        .unwrap();
    assert_eq!(follower.log_end_offset(), 6);
    let r = leader.read(6, 10_000, i64::MAX).unwrap();
    follower.append_replicated(&r.data).unwrap();
    assert_eq!(read_all(&follower), read_all(&leader));
    assert_eq!(pairs(&follower), [(1, 0), (2, 6)]);
    assert_eq!(pairs(&leader), [(1, 0), (2, 6)]);
}

/// A leader that assigned its epoch and lost the leadership before its first append keeps an
/// entry at its log end; the new leader never heard of that epoch and answers with the
/// epoch before it, ending where the follower's log ends: nothing to cut. The empty entry
/// must go (`truncate_epochs_to_end`), or the follower asks about it forever and never
/// fetches (seen in the 3-node fault harness, seed 2: a restarted ex-leader out of the ISR
/// for minutes).
#[test]
fn an_epoch_assigned_but_never_written_is_dropped_and_the_follower_converges() {
    let (ld, fd) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut leader = PartitionLog::open(ld.path(), small_config()).unwrap();
    let mut follower = PartitionLog::open(fd.path(), small_config()).unwrap();
    for i in 0..3 {
        let b = batch(2 * i, 1, 2, 30, 0);
        leader.append_replicated(&b).unwrap();
        follower.append_replicated(&b).unwrap();
    }
    // The follower led epoch 2 from offset 6 and wrote nothing; the leader leads epoch 3.
    follower.assign_leader_epoch(2).unwrap();
    leader.assign_leader_epoch(3).unwrap();
    let mut b = batch(0, -1, 3, 30, 2);
    stamp_partition_leader_epoch(&mut b, 3);
    leader.append(&b).unwrap();

    let latest = follower.latest_leader_epoch().unwrap();
    assert_eq!(latest, 2);
    let (epoch, end) = leader.end_offset_for_leader_epoch(latest);
    assert_eq!((epoch, end), (1, 6));
    let (_, own_end) = follower.end_offset_for_leader_epoch(epoch);
    follower.truncate_to(end.min(own_end)).unwrap();
    assert_eq!(follower.log_end_offset(), 6);
    assert_eq!(
        follower.latest_leader_epoch(),
        Some(2),
        "nothing cut: the entry is still there"
    );
    assert!(follower.truncate_epochs_to_end().unwrap());
    assert!(!follower.truncate_epochs_to_end().unwrap());
    assert_eq!(file(fd.path()), "0\n1\n1 0\n");
    // Now the follower's last epoch is one the leader ends where the follower does.
    let latest = follower.latest_leader_epoch().unwrap();
    assert_eq!(leader.end_offset_for_leader_epoch(latest), (1, 6));
    let r = leader.read(6, 10_000, i64::MAX).unwrap();
    follower.append_replicated(&r.data).unwrap();
    assert_eq!(read_all(&follower), read_all(&leader));
    assert_eq!(pairs(&follower), [(1, 0), (3, 6)]);
}
