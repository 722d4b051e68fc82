//! Compaction of compressed and transactional batches. Input batches are built with
//! `kafka-protocol`'s encoder and the cleaned log is read back with its decoder as well as
//! with the cleaner's own parser, so the cleaner's codec framing is checked against an
//! independent implementation.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::RwLock;

use bytes::Bytes;
use gregor_protocol::batch_builder::BatchBuilder;
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use tempfile::TempDir;

use super::*;
use crate::batch::iter_batches;
use crate::LogConfig;

const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

#[derive(Clone, Copy)]
struct Producer {
    id: i64,
    epoch: i16,
    transactional: bool,
}

const PLAIN: Producer = Producer {
    id: -1,
    epoch: -1,
    transactional: false,
};

type KV<'a> = (&'a [u8], Option<&'a [u8]>);

/// One batch of `records` (key, value) encoded by `kafka-protocol`.
fn encode(
    compression: Compression,
    producer: Producer,
    base_sequence: i32,
    timestamp: i64,
    records: &[KV],
) -> Vec<u8> {
    encode_records(
        compression,
        producer,
        base_sequence,
        timestamp,
        false,
        records,
    )
}

fn encode_records(
    compression: Compression,
    producer: Producer,
    base_sequence: i32,
    timestamp: i64,
    control: bool,
    records: &[KV],
) -> Vec<u8> {
    let batch = BatchBuilder::new()
        .producer(producer.id, producer.epoch)
        .transactional(producer.transactional)
        .control(control)
        .base_sequence(base_sequence)
        .compression(compression)
        .header("h", Some(b"x"))
        .header("n", None)
        .records(records.iter().enumerate().map(|(i, (k, v))| {
            let key = Some(Bytes::copy_from_slice(k));
            (key, v.map(Bytes::copy_from_slice), timestamp + i as i64)
        }))
        .encode()
        .unwrap();
    assert_eq!(iter_batches(&batch).count(), 1, "one batch");
    batch.to_vec()
}

/// A transaction marker (control batch) of `producer`: type 0 ABORT, 1 COMMIT.
fn marker(producer: Producer, commit: bool, timestamp: i64) -> Vec<u8> {
    let key = [0, 0, 0, u8::from(commit)];
    let value = [0u8, 0, 0, 0, 0, 0];
    encode_records(
        Compression::None,
        Producer {
            transactional: true,
            ..producer
        },
        -1,
        timestamp,
        true,
        &[(&key, Some(&value))],
    )
}

/// A batch too big to fit the test logs' segments, so the ones before it are sealed.
fn pad() -> Vec<u8> {
    encode(
        Compression::None,
        PLAIN,
        0,
        1000,
        &[(b"zzz", Some(&[b'p'; 5000]))],
    )
}

fn open_log(dir: &TempDir) -> RwLock<PartitionLog> {
    RwLock::new(PartitionLog::open(dir.path(), test_log_config()).unwrap())
}

fn test_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        ..LogConfig::default()
    }
}

fn append(log: &RwLock<PartitionLog>, batch: &[u8]) {
    log.write().unwrap().append(batch).unwrap();
}

fn cfg(now_ms: i64, delete_retention_ms: i64, cap: usize) -> CleanConfig {
    CleanConfig {
        min_cleanable_dirty_ratio: 0.0,
        min_compaction_lag_ms: 0,
        delete_retention_ms,
        max_map_bytes: 1 << 20,
        io_bytes_per_sec: 0,
        max_decompressed_bytes: cap,
        now_ms,
    }
}

fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 30, i64::MAX).unwrap();
        assert!(!r.data.is_empty(), "no progress at offset {offset}");
        for item in iter_batches(&r.data) {
            offset = item.unwrap().0.next_offset();
        }
        out.extend_from_slice(&r.data);
    }
    out
}

/// A stored record: offset, key, tombstone?, raw bytes (as in the decompressed batch).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    offset: i64,
    key: Vec<u8>,
    tombstone: bool,
    raw: Vec<u8>,
}

/// Every batch header and every record of the log (control batches' records included).
fn stored(log: &PartitionLog) -> (Vec<(BatchHeader, Vec<u8>)>, Vec<Stored>) {
    let data = read_all(log);
    let mut batches = Vec::new();
    let mut records = Vec::new();
    for item in iter_batches(&data) {
        let (h, range) = item.unwrap();
        let bytes = &data[range];
        let section = records_section(bytes, &h, 1 << 30).unwrap();
        walk_records(&section, h.records_count, |r| {
            records.push(Stored {
                offset: h.base_offset + r.offset_delta,
                key: r.key.unwrap().to_vec(),
                tombstone: r.tombstone,
                raw: r.bytes.to_vec(),
            })
        })
        .unwrap();
        batches.push((h, bytes.to_vec()));
    }
    // The independent decoder agrees (CRCs, framing, codecs).
    let mut buf = Bytes::from(data);
    let decoded: Vec<(i64, Vec<u8>)> = RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| (r.offset, r.key.unwrap().to_vec()))
        .collect();
    let ours: Vec<(i64, Vec<u8>)> = records.iter().map(|r| (r.offset, r.key.clone())).collect();
    assert_eq!(decoded, ours);
    (batches, records)
}

fn active_base(log: &RwLock<PartitionLog>) -> i64 {
    log.read().unwrap().segments.last().unwrap().base_offset()
}

/// What compaction must not change in a batch header.
fn fixed_fields(h: &BatchHeader) -> (i64, i32, i64, i64, i64, i16, i32, bool, bool) {
    (
        h.base_offset,
        h.last_offset_delta,
        h.base_timestamp,
        h.max_timestamp,
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
        h.is_transactional(),
        h.is_control(),
    )
}

/// Headers after cleaning: same batches, same fixed fields; a batch with records keeps its
/// codec, an emptied one is a bare uncompressed header.
fn check_headers(before: &[(BatchHeader, Vec<u8>)], after: &[(BatchHeader, Vec<u8>)]) {
    assert_eq!(before.len(), after.len());
    for ((b, _), (a, bytes)) in before.iter().zip(after) {
        assert_eq!(fixed_fields(b), fixed_fields(a));
        if a.records_count > 0 {
            assert_eq!(
                a.compression(),
                b.compression(),
                "codec changed at {}",
                a.base_offset
            );
        } else {
            assert_eq!(a.compression(), 0);
            assert_eq!(bytes.len(), BatchHeader::SIZE);
        }
    }
}

#[test]
fn compressed_batches_are_compacted_and_keep_their_codec() {
    for codec in CODECS {
        let dir = TempDir::new().unwrap();
        let log = open_log(&dir);
        let producer = Producer {
            id: 42,
            epoch: 3,
            transactional: false,
        };
        let mut latest = HashMap::new();
        let mut offset = 0i64;
        for round in 0..60 {
            let keys: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("key{}", (round * 10 + i) % 13).into_bytes())
                .collect();
            let values: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("value-{round}-{i}-{}", "x".repeat(50)).into_bytes())
                .collect();
            let recs: Vec<KV> = (0..10)
                .map(|i| (keys[i].as_slice(), Some(values[i].as_slice())))
                .collect();
            for k in &keys {
                latest.insert(k.clone(), offset);
                offset += 1;
            }
            append(&log, &encode(codec, producer, round * 10, 1000, &recs));
        }
        append(
            &log,
            &encode(codec, producer, 600, 1000, &[(b"key0", None)]),
        );
        latest.insert(b"key0".to_vec(), offset);
        append(&log, &pad());
        append(&log, &pad());
        let (batches_before, before) = stored(&log.read().unwrap());
        let end = log.read().unwrap().log_end_offset();

        // Tombstones still young: kept.
        let stats = clean(&log, &cfg(2000, 1_000_000, 1 << 20))
            .unwrap()
            .unwrap();
        assert!(stats.records_removed > 400, "{codec:?} {stats:?}");
        assert_eq!(stats.tombstones_removed, 0);
        assert_eq!(stats.batches_kept_verbatim, 0);
        assert!(stats.bytes_after < stats.bytes_before);
        let (batches_after, after) = stored(&log.read().unwrap());
        assert_eq!(log.read().unwrap().log_end_offset(), end);
        check_headers(&batches_before, &batches_after);
        for r in &after {
            assert!(
                before.contains(r),
                "{codec:?}: record at {} changed",
                r.offset
            );
        }
        let sealed_end = active_base(&log);
        let sealed: Vec<&Stored> = after
            .iter()
            .filter(|r| r.offset < sealed_end && r.key != b"zzz")
            .collect();
        assert_eq!(sealed.len(), 13, "{codec:?}: one record per key");
        for r in &sealed {
            assert_eq!(latest[&r.key], r.offset, "{codec:?}: stale {:?}", r.key);
        }
        assert!(sealed.iter().any(|r| r.key == b"key0" && r.tombstone));
        // Some batches still hold compressed records.
        assert!(batches_after
            .iter()
            .any(|(h, _)| h.records_count > 0 && h.compression() == codec as u8));

        // Reopening reads the same log.
        drop(log);
        let log = open_log(&dir);
        assert_eq!(stored(&log.read().unwrap()).1, after);

        // After delete.retention.ms the tombstone goes too.
        append(&log, &pad());
        append(&log, &pad());
        let stats = clean(&log, &cfg(10_000_000, 1000, 1 << 20))
            .unwrap()
            .unwrap();
        assert_eq!(stats.tombstones_removed, 1, "{codec:?} {stats:?}");
        let (_, after2) = stored(&log.read().unwrap());
        assert!(!after2.iter().any(|r| r.key == b"key0"));
        assert_eq!(after2.iter().filter(|r| r.key != b"zzz").count(), 12);
    }
}

#[test]
fn compressed_batches_over_the_cap_are_kept_verbatim() {
    for codec in CODECS {
        let dir = TempDir::new().unwrap();
        let log = open_log(&dir);
        let big = vec![b'z'; 100_000];
        append(
            &log,
            &encode(codec, PLAIN, 0, 1000, &[(b"b", Some(b"old"))]),
        );
        // Decompresses to ~200 KB, over the 64 KiB cap; its key "b" is newer.
        let over = encode(
            codec,
            PLAIN,
            0,
            1000,
            &[(b"b", Some(&big)), (b"c", Some(&big))],
        );
        append(&log, &over);
        append(
            &log,
            &encode(codec, PLAIN, 0, 1000, &[(b"c", Some(b"new"))]),
        );
        append(&log, &pad());
        append(&log, &pad());
        let stats = clean(&log, &cfg(2000, 1_000_000, 64 * 1024))
            .unwrap()
            .unwrap();
        assert!(stats.batches_kept_verbatim >= 1, "{codec:?} {stats:?}");
        let (batches, records) = stored(&log.read().unwrap());
        // The oversized batch is byte for byte what was appended (but for its offset).
        assert_eq!(batches[1].1[12..], over[12..], "{codec:?}");
        // Its keys were not mapped: the older "b" stays (keeping more is always safe).
        let keys: Vec<(i64, &[u8])> = records.iter().map(|r| (r.offset, &r.key[..])).collect();
        assert!(keys.contains(&(0, b"b")), "{codec:?} {keys:?}");
        assert!(keys.contains(&(2, b"c")) && keys.contains(&(3, b"c")));
    }
}

/// Peak resident memory of this process since the last reset, in bytes (Linux only).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A zstd zip bomb: one record whose value is `n` zero bytes, compressed by streaming so the
/// test itself never holds the expanded data.
fn zstd_bomb(n: usize) -> Vec<u8> {
    use gregor_wire::varint::put_varlong as varint;
    let mut inner = vec![0u8]; // attributes
    varint(&mut inner, 0); // timestamp delta
    varint(&mut inner, 0); // offset delta
    varint(&mut inner, 1);
    inner.push(b'b');
    varint(&mut inner, n as i64);
    let body_len = inner.len() + n + 1;
    let mut prefix = Vec::new();
    varint(&mut prefix, body_len as i64);
    prefix.extend_from_slice(&inner);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.write_all(&prefix).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(n as u64), &mut enc).unwrap();
    enc.write_all(&[0]).unwrap(); // no headers
    let payload = enc.finish().unwrap();
    let mut batch = encode(Compression::None, PLAIN, 0, 1000, &[(b"b", Some(b"x"))]);
    batch.truncate(BatchHeader::SIZE);
    batch[batch::ATTRIBUTES_POS + 1] |= 4;
    batch.extend_from_slice(&payload);
    let len = (batch.len() - batch::LOG_OVERHEAD) as i32;
    batch[batch::BATCH_LENGTH_POS..batch::BATCH_LENGTH_POS + 4].copy_from_slice(&len.to_be_bytes());
    let crc = batch::compute_crc(&batch);
    batch[batch::CRC_POS..batch::CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

use std::io::Read as _;

/// The peak-memory check reads this process's peak RSS, which other tests running in
/// parallel threads would inflate: the test re-runs itself alone in a child process.
#[test]
fn zip_bomb_does_not_expand_beyond_the_cap() {
    const CHILD: &str = "GREGOR_ZIP_BOMB_ALONE";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "clean::tests::zip_bomb_does_not_expand_beyond_the_cap",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("re-run the test in a process of its own");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    const EXPANDED: usize = 512 << 20;
    let bomb = zstd_bomb(EXPANDED);
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    // It is a real batch: with a big enough cap it decompresses to its full size.
    let dir = TempDir::new().unwrap();
    let log = open_log(&dir);
    append(
        &log,
        &encode(Compression::None, PLAIN, 0, 1000, &[(b"b", Some(b"old"))]),
    );
    append(&log, &bomb);
    append(
        &log,
        &encode(Compression::Zstd, PLAIN, 0, 1000, &[(b"b", Some(b"new"))]),
    );
    append(&log, &pad());
    append(&log, &pad());
    // Reset the peak RSS counter (Linux >= 4.0), then clean with a 1 MiB cap.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let base = peak_rss();
    let stats = clean(&log, &cfg(2000, 1_000_000, 1 << 20))
        .unwrap()
        .unwrap();
    let peak = peak_rss();
    assert_eq!(stats.batches_kept_verbatim, 1, "{stats:?}");
    // The old "b" is superseded by the newest one; the bomb stays as it was.
    let data = read_all(&log.read().unwrap());
    let batches: Vec<_> = iter_batches(&data).map(|b| b.unwrap()).collect();
    assert_eq!(batches[0].0.records_count, 0);
    assert_eq!(data[batches[1].1.clone()][12..], bomb[12..]);
    if let (true, Some(base), Some(peak)) = (reset, base, peak) {
        let grew = peak.saturating_sub(base);
        assert!(
            grew < 128 << 20,
            "peak RSS grew by {grew} bytes while cleaning"
        );
    }
}

/// Headers and raw bytes of the batches whose base offsets are `offsets`.
fn batches_at(log: &RwLock<PartitionLog>, offsets: &[i64]) -> Vec<(BatchHeader, Vec<u8>)> {
    let (batches, _) = stored(&log.read().unwrap());
    offsets
        .iter()
        .map(|o| {
            batches
                .iter()
                .find(|(h, _)| h.base_offset == *o)
                .unwrap()
                .clone()
        })
        .collect()
}

fn kept(log: &RwLock<PartitionLog>) -> Vec<(i64, String)> {
    stored(&log.read().unwrap())
        .1
        .into_iter()
        .filter(|r| r.key != b"zzz")
        .map(|r| {
            let key = match r.key[..] {
                [0, 0, 0, 1] => "COMMIT".to_string(),
                [0, 0, 0, 0] => "ABORT".to_string(),
                _ => String::from_utf8(r.key).unwrap(),
            };
            (r.offset, key)
        })
        .collect()
}

#[test]
fn aborted_transactions_are_removed_committed_cleaned_open_untouched() {
    let dir = TempDir::new().unwrap();
    let log = open_log(&dir);
    let txn = |id| Producer {
        id,
        epoch: 5,
        transactional: true,
    };
    let (a, b, c) = (txn(1), txn(2), txn(3));
    let gz = Compression::Gzip;
    append(&log, &encode(gz, PLAIN, 0, 1000, &[(b"k1", Some(b"v0"))])); // 0
    append(
        &log,
        &encode(
            gz,
            a,
            0,
            1000,
            &[(b"k1", Some(b"a1")), (b"k2", Some(b"a2"))],
        ),
    ); // 1, 2
    append(&log, &marker(a, true, 1000)); // 3
                                          // An aborted transaction, compressed: removed, and its k1 must not hide a1.
    append(
        &log,
        &encode(
            Compression::Lz4,
            b,
            0,
            1000,
            &[(b"k1", Some(b"x")), (b"k3", Some(b"x"))],
        ),
    ); // 4, 5
    append(&log, &marker(b, false, 1000)); // 6
    append(&log, &encode(gz, PLAIN, 0, 1000, &[(b"k2", Some(b"new"))])); // 7
                                                                         // Still open: nothing from here on is touched.
    append(
        &log,
        &encode(
            gz,
            c,
            0,
            1000,
            &[(b"k3", Some(b"c3")), (b"k1", Some(b"c1"))],
        ),
    ); // 8, 9
    append(&log, &encode(gz, PLAIN, 0, 1000, &[(b"k3", Some(b"p3"))])); // 10
    append(&log, &encode(gz, PLAIN, 0, 1000, &[(b"k2", Some(b"p2"))])); // 11
    append(&log, &pad());
    append(&log, &pad());
    let (before, _) = stored(&log.read().unwrap());
    let stats = clean(&log, &cfg(2000, i64::MAX, 1 << 20)).unwrap().unwrap();
    assert_eq!(stats.cleaned_up_to, 8, "{stats:?}");
    assert_eq!(stats.aborted_records_removed, 2, "{stats:?}");
    assert_eq!(stats.records_removed, 4, "{stats:?}");
    let (after, _) = stored(&log.read().unwrap());
    check_headers(&before, &after);
    let k = kept(&log);
    assert_eq!(
        k,
        [
            (1, "k1".into()),
            (3, "COMMIT".into()),
            (6, "ABORT".into()),
            (7, "k2".into()),
            (8, "k3".into()),
            (9, "k1".into()),
            (10, "k3".into()),
            (11, "k2".into()),
        ]
    );
    // The aborted batch is an empty transactional batch that keeps its producer fields;
    // markers and everything from the open transaction on are byte for byte unchanged.
    let emptied = &batches_at(&log, &[4])[0].0;
    assert_eq!(
        (
            emptied.records_count,
            emptied.producer_id,
            emptied.producer_epoch
        ),
        (0, 2, 5)
    );
    assert!(emptied.is_transactional());
    for o in [3, 6, 8, 10, 11] {
        let now = &batches_at(&log, &[o])[0].1;
        let was = &before.iter().find(|(h, _)| h.base_offset == o).unwrap().1;
        assert_eq!(now, was, "batch at {o} changed");
    }

    // Once C commits, its records are cleaned like any others.
    append(&log, &marker(c, true, 1000));
    append(&log, &pad());
    append(&log, &pad());
    let stats = clean(&log, &cfg(2000, i64::MAX, 1 << 20)).unwrap().unwrap();
    assert!(stats.cleaned_up_to > 14, "{stats:?}");
    let k = kept(&log);
    assert_eq!(
        k,
        [
            (3, "COMMIT".into()),
            (6, "ABORT".into()),
            (9, "k1".into()),
            (10, "k3".into()),
            (11, "k2".into()),
            (14, "COMMIT".into()),
        ]
    );
}

#[test]
fn unreadable_marker_keeps_its_transaction_as_it_is() {
    let dir = TempDir::new().unwrap();
    let log = open_log(&dir);
    let p = Producer {
        id: 9,
        epoch: 0,
        transactional: true,
    };
    append(
        &log,
        &encode(Compression::Snappy, PLAIN, 0, 1000, &[(b"k1", Some(b"v0"))]),
    ); // 0
    append(
        &log,
        &encode(Compression::Snappy, p, 0, 1000, &[(b"k1", Some(b"t1"))]),
    ); // 1
       // A control batch whose key is too short to be a marker.
    append(
        &log,
        &encode_records(Compression::None, p, -1, 1000, true, &[(b"\0", Some(b""))]),
    ); // 2
    append(
        &log,
        &encode(Compression::Snappy, PLAIN, 0, 1000, &[(b"k2", Some(b"v"))]),
    ); // 3
    append(&log, &pad());
    append(&log, &pad());
    let (before, _) = stored(&log.read().unwrap());
    let stats = clean(&log, &cfg(2000, i64::MAX, 1 << 20)).unwrap().unwrap();
    // Neither mapped nor removed: v0 stays, t1 stays.
    assert_eq!(stats.records_removed, 0, "{stats:?}");
    let (after, _) = stored(&log.read().unwrap());
    assert_eq!(before, after);
}

#[test]
fn reads_continue_past_segments_holding_only_empty_batches() {
    let dir = TempDir::new().unwrap();
    let log = open_log(&dir);
    let big = vec![b'v'; 3000];
    // One superseded "k" per segment, then the latest.
    for _ in 0..6 {
        append(
            &log,
            &encode(Compression::None, PLAIN, 0, 1000, &[(b"k", Some(&big))]),
        );
    }
    append(
        &log,
        &encode(Compression::None, PLAIN, 0, 1000, &[(b"k", Some(b"last"))]),
    );
    append(&log, &pad());
    let stats = clean(&log, &cfg(2000, i64::MAX, 1 << 20)).unwrap().unwrap();
    assert_eq!(stats.records_removed, 6, "{stats:?}");
    let l = log.read().unwrap();
    assert!(l.segment_count() > 3);
    // From offset 0 the read goes on to the first segment with a record.
    let data = l.read(0, 1 << 20, i64::MAX).unwrap().data;
    let headers: Vec<BatchHeader> = iter_batches(&data).map(|b| b.unwrap().0).collect();
    assert_eq!(headers.first().unwrap().base_offset, 0);
    assert_eq!(headers.last().unwrap().records_count, 1);
    assert!(headers[..headers.len() - 1]
        .iter()
        .all(|h| h.records_count == 0));
    // ... within max_bytes (but the first batch is always whole).
    let data = l.read(0, 100, i64::MAX).unwrap().data;
    assert_eq!(data.len(), BatchHeader::SIZE);
    // ... and never past the upper bound.
    let data = l.read(0, 1 << 20, 3).unwrap().data;
    assert!(iter_batches(&data).all(|b| b.unwrap().0.base_offset < 3));
}

/// A CRC-valid batch of `codec` whose records section is `payload` (anything).
fn garbage_batch(codec: u8, attributes: i16, count: i32, producer: i64, payload: &[u8]) -> Vec<u8> {
    let mut b = encode(Compression::None, PLAIN, 0, 1000, &[(b"g", Some(b"x"))]);
    b.truncate(BatchHeader::SIZE);
    let attrs = (attributes & !COMPRESSION_BITS) | i16::from(codec);
    b[batch::ATTRIBUTES_POS..batch::ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    b[batch::RECORDS_COUNT_POS..batch::RECORDS_COUNT_POS + 4].copy_from_slice(&count.to_be_bytes());
    b[batch::PRODUCER_ID_POS..batch::PRODUCER_ID_POS + 8].copy_from_slice(&producer.to_be_bytes());
    b.extend_from_slice(payload);
    let len = (b.len() - batch::LOG_OVERHEAD) as i32;
    b[batch::BATCH_LENGTH_POS..batch::BATCH_LENGTH_POS + 4].copy_from_slice(&len.to_be_bytes());
    let crc = batch::compute_crc(&b);
    b[batch::CRC_POS..batch::CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// CRC-valid batches with arbitrary records sections, codecs, counts and flags
    /// (transactional, control) among real ones: a pass never fails or panics, and
    /// every such batch whose records cannot be read comes out byte for byte.
    #[test]
    fn garbage_records_never_panic_and_are_kept(
        garbage in proptest::collection::vec(
            (0u8..6, proptest::prelude::any::<i16>(), -2i32..4, 0i64..3,
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
            1..6),
    ) {
        let dir = TempDir::new().unwrap();
        let log = open_log(&dir);
        let mut appended = Vec::new();
        for (i, (codec, attrs, count, pid, payload)) in garbage.iter().enumerate() {
            let v = format!("v{i}");
            append(&log, &encode(Compression::Lz4, PLAIN, 0, 1000, &[(b"g", Some(v.as_bytes()))]));
            let g = garbage_batch(*codec, *attrs, *count, *pid, payload);
            // The log refuses some headers (negative counts); those are simply not there.
            if log.write().unwrap().append(&g).is_ok() {
                appended.push(g);
            }
        }
        append(&log, &pad());
        append(&log, &pad());
        let _ = clean(&log, &cfg(2000, 0, 1 << 16)).unwrap();
        let data = read_all(&log.read().unwrap());
        for g in &appended {
            let h = BatchHeader::parse(g).unwrap();
            let readable = records_section(g, &h, 1 << 16)
                .ok()
                .is_some_and(|d| walk_records(&d, h.records_count, |_| ()).is_some());
            if !readable {
                let found = iter_batches(&data)
                    .map(|b| b.unwrap().1)
                    .any(|r| data[r][12..] == g[12..]);
                proptest::prop_assert!(found, "unreadable batch changed");
            }
        }
    }
}
