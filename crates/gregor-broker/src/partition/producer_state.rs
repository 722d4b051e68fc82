//! Persistence of a partition's producer state: periodic snapshots, the per-segment
//! aborted-transaction index, and the replay that rebuilds the rest on open.
//!
//! **Snapshots.** `<dir>/<offset as 20 digits>.snapshot` holds the producer state (each
//! producer's epoch and last batches, open transactions — not the aborted index) as of
//! exactly `offset`: every batch below it applied, none above. Format: magic `GRPSNAP1`,
//! offset (i64 BE), payload length (u32 BE), payload (serde JSON of
//! [`ProducerStateTable`]), CRC-32C (u32 BE) of everything before it. A snapshot is taken
//! whenever a segment rolls (the state at the new segment's base offset, cloned under the
//! log lock, before the rolling append is applied) and at clean shutdown (at the log end).
//! A roll only *queues* the copy on the partition ([`Partition::queue_snapshot`](super::Partition::queue_snapshot)); the
//! file is written — tmp, fsync, rename, fsync dir — by the group-commit flusher thread
//! after the round that made the log durable past that offset (or by the coordinators'
//! sync path, or at shutdown), never under the log lock and never on the produce path.
//! So a snapshot on disk never lies above the durable data, and every `.txnindex` entry
//! below it was fsynced by the same sync job. The newest [`SNAPSHOTS_KEPT`] are kept.
//!
//! **Aborted index.** Each ABORT marker that closes an open transaction appends a Kafka
//! `.txnindex` entry to the segment holding the marker ([`gregor_log::txnindex`]); the
//! segment's deletion (retention, DeleteRecords) deletes the file, and
//! [`Partition::segments_deleted`](super::Partition::segments_deleted) drops the entries from memory.
//!
//! **Open** ([`load`]): delete snapshots above the recovered log end (the log lost its
//! tail), take the newest readable snapshot within `[log start, log end]` (and not above
//! a damaged `.txnindex`), load the aborted entries below it from the `.txnindex` files
//! (truncating those at or above it), then replay only the batches from the snapshot to
//! the log end through [`apply_batch`] — the same function the append path uses — which
//! re-derives (and re-appends) the aborted entries above the snapshot. No usable
//! snapshot: an empty table and a replay from the log start.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use gregor_log::{batch::iter_batches, AbortedTxnEntry, BatchHeader, PartitionLog};
use gregor_txn::{AbortedTxn, ProducerBatch, ProducerStateTable};

/// Suffix of snapshot files.
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Snapshots kept per partition (newest first); older ones are deleted.
pub const SNAPSHOTS_KEPT: usize = 3;
const SNAPSHOT_MAGIC: &[u8; 8] = b"GRPSNAP1";
/// The single clean-shutdown snapshot of earlier versions; deleted on open.
const LEGACY_SNAPSHOT_FILE: &str = "producer-state.snapshot";

/// Removes the snapshots of offsets above `offset` (after a truncation there).
pub fn remove_snapshots_above(dir: &Path, offset: i64) -> std::io::Result<()> {
    for (o, path) in list_snapshots(dir)? {
        if o > offset {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Path of the snapshot at `offset`.
pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SNAPSHOT_SUFFIX}"))
}

fn parse_snapshot_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The bytes of a snapshot file.
pub fn encode_snapshot(offset: i64, table: &ProducerStateTable) -> anyhow::Result<Vec<u8>> {
    frame_snapshot(offset, &serde_json::to_vec(table)?)
}

/// Frames a snapshot payload (magic, offset, length, payload, CRC).
fn frame_snapshot(offset: i64, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u32::try_from(payload.len())?;
    let mut buf = Vec::with_capacity(payload.len() + 24);
    buf.extend_from_slice(SNAPSHOT_MAGIC);
    buf.extend_from_slice(&offset.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// Parses a snapshot file; `Err` says why it is unusable.
pub fn decode_snapshot(bytes: &[u8], offset: i64) -> Result<ProducerStateTable, String> {
    if bytes.len() < 24 {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes(crc.try_into().map_err(|_| "no crc")?);
    if crc32c::crc32c(body) != crc {
        return Err("CRC mismatch".into());
    }
    if &body[..8] != SNAPSHOT_MAGIC {
        return Err("unknown magic/version".into());
    }
    let stored = i64::from_be_bytes(body[8..16].try_into().map_err(|_| "no offset")?);
    if stored != offset {
        return Err(format!("holds offset {stored}, named {offset}"));
    }
    let len = u32::from_be_bytes(body[16..20].try_into().map_err(|_| "no length")?) as usize;
    if len != body.len() - 20 {
        return Err(format!("payload length {len} does not match the file"));
    }
    serde_json::from_slice(&body[20..]).map_err(|e| e.to_string())
}

/// Writes the snapshot at `offset` durably ([`gregor_os::fs::replace_file`]: tmp file
/// `<offset>.snapshot.tmp`, fsync, rename, fsync the directory).
pub fn write_snapshot(dir: &Path, offset: i64, table: &ProducerStateTable) -> anyhow::Result<()> {
    let bytes = encode_snapshot(offset, table)?;
    gregor_os::fs::replace_file(&snapshot_path(dir, offset), &bytes)?;
    Ok(())
}

/// The snapshot files in `dir`, by offset; removes leftover temporary files.
pub fn list_snapshots(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(offset) = parse_snapshot_name(name) {
            out.push((offset, entry.path()));
        } else if name.ends_with(".snapshot.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    out.sort_unstable_by_key(|(o, _)| *o);
    Ok(out)
}

/// Deletes snapshots below `log_start` (useless: the replay could not start there) and
/// all but the newest [`SNAPSHOTS_KEPT`].
pub fn prune_snapshots(dir: &Path, log_start: i64) -> std::io::Result<()> {
    let snaps = list_snapshots(dir)?;
    let excess = snaps.len().saturating_sub(SNAPSHOTS_KEPT);
    for (i, (offset, path)) in snaps.iter().enumerate() {
        if i < excess || *offset < log_start {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// How one stored batch changes the producer state: sequences of idempotent batches,
/// open transactions, COMMIT/ABORT markers, and each producer's last timestamp (the
/// header's `maxTimestamp`, for data batches and markers alike; Kafka takes a marker's
/// record timestamp, which equals it for the one-record markers written here).
/// `header` must be the batch as stored: `base_offset` its offset in the log, and
/// `max_timestamp` the stored one. Returns the transaction an ABORT marker closed. Used
/// by every append and by the replay on open, so both derive the same state.
pub fn apply_batch(
    table: &mut ProducerStateTable,
    header: &BatchHeader,
    batch: &[u8],
) -> Option<AbortedTxn> {
    if header.is_control() {
        match read_marker(batch) {
            Some((commit, coordinator_epoch)) => {
                return table.record_marker(
                    header.producer_id,
                    header.producer_epoch,
                    coordinator_epoch,
                    header.base_offset,
                    commit,
                    header.max_timestamp,
                )
            }
            None => tracing::warn!(
                offset = header.base_offset,
                "unreadable control batch skipped"
            ),
        }
    } else if header.producer_id >= 0 {
        if header.is_transactional() {
            table.record_transactional(header.producer_id, header.base_offset);
        }
        let batch = ProducerBatch::new(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            header.last_offset_delta,
        );
        table.record(
            &batch,
            header.base_offset,
            header.last_offset(),
            header.max_timestamp,
        );
    }
    None
}

/// The `.txnindex` entry for an aborted transaction just applied to `table`.
pub fn txn_index_entry(table: &ProducerStateTable, a: &AbortedTxn) -> AbortedTxnEntry {
    AbortedTxnEntry {
        producer_id: a.producer_id,
        first_offset: a.first_offset,
        last_offset: a.last_offset,
        last_stable_offset: table.first_unstable_offset().unwrap_or(a.last_offset + 1),
    }
}

/// A partition's producer state as loaded on open.
pub struct Loaded {
    pub table: ProducerStateTable,
    /// The snapshot the state started from (`None`: empty, from the log start).
    pub snapshot_offset: Option<i64>,
    /// Batches replayed after the snapshot.
    pub replayed_batches: u64,
    /// Producers removed after the replay because they were idle for
    /// `producer.id.expiration.ms`.
    pub expired_producers: usize,
    /// Producers of a snapshot of an earlier version (no timestamps) that got the load
    /// time as their last timestamp. If any, that snapshot should be rewritten: the
    /// caller must not count it as the newest snapshot written.
    pub filled_timestamps: usize,
}

/// How [`load`] treats producer expiry: the load time, and `producer.id.expiration.ms`.
#[derive(Debug, Clone, Copy)]
pub struct LoadExpiry {
    /// Wall-clock milliseconds of the load. Producers of snapshots written before
    /// timestamps were kept get this as their last timestamp.
    pub now_ms: i64,
    /// Producers idle this long (and without an open transaction) are dropped after the
    /// replay, as Kafka does on load, so a replay does not resurrect them.
    pub expiration_ms: i64,
}

/// Loads the producer state of a freshly opened log (see the module docs).
pub fn load(dir: &Path, log: &mut PartitionLog, expiry: LoadExpiry) -> anyhow::Result<Loaded> {
    match std::fs::remove_file(dir.join(LEGACY_SNAPSHOT_FILE)) {
        Ok(()) => tracing::info!(dir = %dir.display(), "removed the old producer-state.snapshot"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    let mut snaps = list_snapshots(dir)?;
    let mut removed = false;
    snaps.retain(|(offset, path)| {
        if *offset > end {
            tracing::warn!(snapshot = %path.display(), log_end_offset = end, "deleting producer snapshot above the log end");
            removed |= std::fs::remove_file(path).is_ok();
            false
        } else {
            true
        }
    });
    if removed {
        // Before anything is appended above it again.
        std::fs::File::open(dir)?.sync_all()?;
    }
    let on_disk = log.read_aborted_txns()?;
    let limit = on_disk.damaged_from.map_or(end, |d| d.min(end));
    let mut chosen = None;
    for (offset, path) in snaps.iter().rev() {
        if *offset > limit || *offset < start {
            continue;
        }
        let decoded = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode_snapshot(&b, *offset));
        match decoded {
            Ok(table) => {
                chosen = Some((*offset, table));
                break;
            }
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), error = %e, "ignoring unreadable producer snapshot");
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let snapshot_offset = chosen.as_ref().map(|(o, _)| *o);
    let (from, mut table) = chosen.unwrap_or_else(|| (start, ProducerStateTable::new()));
    // Snapshots of earlier versions have no timestamps: count idle time from now.
    let filled_timestamps = table.fill_missing_timestamps(expiry.now_ms);
    log.truncate_aborted_txns(from)?;
    table.set_aborted(
        on_disk
            .entries
            .iter()
            .filter(|e| e.last_offset < from)
            .map(|e| AbortedTxn {
                producer_id: e.producer_id,
                first_offset: e.first_offset,
                last_offset: e.last_offset,
            })
            .collect(),
    );
    let mut replayed_batches = 0u64;
    let mut new_entries = Vec::new();
    {
        let log_ref: &PartitionLog = log;
        let read = |offset: i64| Ok(log_ref.read(offset, 1 << 20, end)?.data);
        replay_batches(from, read, |header, batch| {
            replayed_batches += 1;
            if let Some(a) = apply_batch(&mut table, header, &batch) {
                new_entries.push(txn_index_entry(&table, &a));
            }
            Ok(())
        })?;
    }
    for e in &new_entries {
        log.append_aborted_txn(e)?;
    }
    prune_snapshots(dir, start)?;
    let expired_producers = table.expire(expiry.now_ms, expiry.expiration_ms);
    Ok(Loaded {
        table,
        snapshot_offset,
        replayed_batches,
        expired_producers,
        filled_timestamps,
    })
}

/// Calls `f` for every batch from offset `start` on, in offset order. `read` returns the
/// whole batches at an offset (nothing at the end of the log); the caller decides locking.
pub fn replay_batches(
    start: i64,
    mut read: impl FnMut(i64) -> anyhow::Result<Bytes>,
    mut f: impl FnMut(&BatchHeader, Bytes) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut offset = start;
    loop {
        let data = read(offset)?;
        if data.is_empty() {
            return Ok(());
        }
        let before = offset;
        for item in iter_batches(&data) {
            let (header, range) = item.map_err(|e| anyhow::anyhow!("{e}"))?;
            offset = header.next_offset();
            f(&header, data.slice(range))?;
        }
        if offset <= before {
            anyhow::bail!("log replay made no progress at offset {before}");
        }
    }
}

/// Reads whether a stored control batch is a COMMIT (`Some(true)`) or ABORT marker, from
/// the key of its first record (uncompressed, as markers are written), and the
/// coordinator epoch in its value (-1 when the value is missing or short).
pub fn read_marker(batch: &[u8]) -> Option<(bool, i32)> {
    let mut pos = gregor_log::BatchHeader::SIZE;
    let varint = |pos: &mut usize| gregor_wire::varint::read_varlong(batch, pos).ok();
    let _length = varint(&mut pos)?;
    pos += 1; // attributes
    let _ts = varint(&mut pos)?;
    let _delta = varint(&mut pos)?;
    let key_len = varint(&mut pos)?;
    let key_len = usize::try_from(key_len).ok()?;
    let key = batch.get(pos..pos.checked_add(key_len)?)?;
    let commit = gregor_txn::records::decode_marker_key(key)?;
    pos += key_len;
    let coordinator_epoch = varint(&mut pos)
        .and_then(|len| usize::try_from(len).ok())
        .and_then(|len| batch.get(pos..pos.checked_add(len)?))
        .and_then(gregor_txn::records::decode_marker_value)
        .unwrap_or(-1);
    Some((commit, coordinator_epoch))
}

#[cfg(test)]
mod tests;
