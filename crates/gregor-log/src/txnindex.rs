//! The aborted-transaction index of a segment, `<base>.txnindex`, in Kafka's format:
//! back-to-back 34-byte entries (version i16 = 0, producer id i64, first offset i64,
//! last offset i64, last stable offset i64, all big-endian), one per ABORT marker in the
//! segment, in marker order. The log stores and prunes the entries; what they mean is the
//! caller's business (the broker's producer state).
//!
//! Entries are appended with plain writes; the file is fsynced by the next sync job of the
//! log (together with the segment data), so an entry whose marker lies below the log's
//! durable offset is durable too. A file is parsed defensively: a partial trailing entry
//! is ignored, and the first entry that is not well formed (wrong version, offsets outside
//! the segment or out of order) makes the rest of the file untrusted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::LogError;

/// Suffix of aborted-transaction index files.
pub(crate) const TXN_INDEX_SUFFIX: &str = ".txnindex";
/// Size of one entry.
pub const ENTRY_SIZE: usize = 34;
const VERSION: i16 = 0;

/// One aborted transaction: its producer, the offsets of its first record and of its
/// ABORT marker in this partition, and the last stable offset when it was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxnEntry {
    /// Producer id of the transaction.
    pub producer_id: i64,
    /// Offset of the transaction's first batch in the partition.
    pub first_offset: i64,
    /// Offset of the ABORT marker.
    pub last_offset: i64,
    /// Last stable offset right after the marker was written.
    pub last_stable_offset: i64,
}

impl AbortedTxnEntry {
    /// The 34-byte on-disk form.
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..2].copy_from_slice(&VERSION.to_be_bytes());
        b[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        b[10..18].copy_from_slice(&self.first_offset.to_be_bytes());
        b[18..26].copy_from_slice(&self.last_offset.to_be_bytes());
        b[26..34].copy_from_slice(&self.last_stable_offset.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<AbortedTxnEntry> {
        let i64_at = |at: usize| {
            b.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map(i64::from_be_bytes)
        };
        let version = i16::from_be_bytes(b.get(0..2)?.try_into().ok()?);
        if version != VERSION {
            return None;
        }
        Some(AbortedTxnEntry {
            producer_id: i64_at(2)?,
            first_offset: i64_at(10)?,
            last_offset: i64_at(18)?,
            last_stable_offset: i64_at(26)?,
        })
    }
}

/// Path of the aborted-transaction index of the segment file `log_path`.
pub(crate) fn txn_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension(&TXN_INDEX_SUFFIX[1..])
}

/// The entries of one file as read.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Well-formed entries, in order.
    pub entries: Vec<AbortedTxnEntry>,
    /// Bytes of the file the entries occupy.
    pub valid_len: u64,
    /// Something other than a torn last entry was wrong: later entries are unknown.
    pub damaged: bool,
}

/// Parses a txnindex file's bytes for a segment holding offsets `base..next`; `last`:
/// it is the log's last segment, whose file may describe markers the log lost in a crash.
pub(crate) fn parse(bytes: &[u8], base: i64, next: i64, last: bool) -> Parsed {
    let mut out = Parsed::default();
    let mut prev_last = i64::MIN;
    for chunk in bytes.chunks(ENTRY_SIZE) {
        if chunk.len() < ENTRY_SIZE {
            // A torn append: the marker it describes may be gone too; the replay above
            // the snapshot re-derives it if not.
            break;
        }
        let ok = AbortedTxnEntry::decode(chunk).filter(|e| {
            e.last_offset >= base
                && e.last_offset < next
                && e.first_offset <= e.last_offset
                && e.first_offset >= 0
                && e.last_offset > prev_last
        });
        match ok {
            Some(e) => {
                prev_last = e.last_offset;
                out.entries.push(e);
                out.valid_len += ENTRY_SIZE as u64;
            }
            None => {
                // An entry for a marker beyond the recovered log end is expected after a
                // crash (the log lost its tail); anything else is damage.
                let beyond_end = last
                    && AbortedTxnEntry::decode(chunk)
                        .is_some_and(|e| e.last_offset >= next && e.last_offset > prev_last);
                out.damaged = !beyond_end;
                break;
            }
        }
    }
    out
}

/// Reads a txnindex file (missing: empty).
pub(crate) fn read(path: &Path, base: i64, next: i64, last: bool) -> Result<Parsed, LogError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(parse(&bytes, base, next, last)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Parsed::default()),
        Err(e) => Err(e.into()),
    }
}

/// Opens a txnindex file for appending, creating it if needed; returns whether it was
/// created (the directory entry then needs an fsync).
pub(crate) fn open_for_append(path: &Path) -> Result<(File, bool), LogError> {
    match OpenOptions::new().append(true).open(path) {
        Ok(f) => Ok((f, false)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = OpenOptions::new().append(true).create(true).open(path)?;
            Ok((f, true))
        }
        Err(e) => Err(e.into()),
    }
}

/// Appends one entry.
pub(crate) fn append(file: &File, entry: &AbortedTxnEntry) -> Result<(), LogError> {
    let mut f = file;
    f.write_all(&entry.encode())?;
    Ok(())
}

#[cfg(test)]
impl AbortedTxnEntry {
    /// `pid`'s transaction over `first..=last`, its marker right after it (the last stable
    /// offset then is `last + 1`).
    pub(crate) fn ending_at(pid: i64, first: i64, last: i64) -> Self {
        AbortedTxnEntry {
            producer_id: pid,
            first_offset: first,
            last_offset: last,
            last_stable_offset: last + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: i64, first: i64, last: i64) -> AbortedTxnEntry {
        AbortedTxnEntry::ending_at(pid, first, last)
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let entries = [e(1, 100, 105), e(2, 90, 110), e(1, 111, 120)];
        let mut bytes: Vec<u8> = entries.iter().flat_map(|x| x.encode()).collect();
        assert_eq!(bytes.len(), 3 * ENTRY_SIZE);
        let p = parse(&bytes, 100, 200, true);
        assert_eq!(p.entries, entries);
        assert!(!p.damaged);
        bytes.extend_from_slice(&[0, 0, 1]);
        let p = parse(&bytes, 100, 200, true);
        assert_eq!(p.entries, entries);
        assert_eq!(p.valid_len, 3 * ENTRY_SIZE as u64);
        assert!(!p.damaged);
    }

    #[test]
    fn entries_beyond_the_log_end_are_dropped_and_garbage_is_damage() {
        let bytes: Vec<u8> = [e(1, 100, 105), e(2, 106, 150)]
            .iter()
            .flat_map(|x| x.encode())
            .collect();
        let p = parse(&bytes, 100, 120, true);
        assert_eq!(p.entries, vec![e(1, 100, 105)]);
        assert!(!p.damaged);
        // In a sealed segment an entry past its end is damage.
        assert!(parse(&bytes, 100, 120, false).damaged);
        let mut bad = bytes.clone();
        bad[ENTRY_SIZE] = 7; // version of the second entry
        let p = parse(&bad, 100, 200, true);
        assert_eq!(p.entries.len(), 1);
        assert!(p.damaged);
        // Out of order.
        let swapped: Vec<u8> = [e(2, 106, 150), e(1, 100, 105)]
            .iter()
            .flat_map(|x| x.encode())
            .collect();
        let p = parse(&swapped, 100, 200, true);
        assert_eq!(p.entries.len(), 1);
        assert!(p.damaged);
        // Never panics on arbitrary bytes.
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = parse(&junk, 0, 1000, false);
        }
    }
}
