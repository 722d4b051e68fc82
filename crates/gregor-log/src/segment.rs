//! One segment file: an append-only sequence of whole batches, plus the
//! in-memory sparse offset/time index rebuilt from it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader};
use crate::LogError;
use gregor_wire::{be_i64, be_u64};

/// Suffix of segment data files.
pub(crate) const LOG_SUFFIX: &str = ".log";
/// Suffix of persisted offset/time index files.
pub(crate) const INDEX_SUFFIX: &str = ".index";
/// First bytes of an index file (format version 1).
const INDEX_MAGIC: &[u8; 8] = b"GRIDX001";
/// Fixed part of an index file: magic, size, next offset, first timestamp,
/// max timestamp (ts, position, last offset), entry count.
const INDEX_HEADER: usize = 8 + 8 + 8 + 8 + 24 + 4;
const INDEX_ENTRY: usize = 24;

/// How many bytes a [`HeaderScanner`] reads at a time.
const SCAN_CHUNK: usize = 16 * 1024;

/// Read buffer used when validating a segment on open.
const RECOVERY_BUFFER: usize = 1024 * 1024;

/// A sparse index entry: the batch starting at `position` has base offset
/// `offset`, and every batch before it in the segment has a `maxTimestamp`
/// of at most `max_timestamp_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: i64,
    pub position: u64,
    pub max_timestamp_before: i64,
}

/// Where the batch with the largest `maxTimestamp` in a segment lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaxTimestamp {
    pub timestamp: i64,
    pub position: u64,
    pub last_offset: i64,
}

/// Result of validating an existing segment file on open.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// Bytes removed from the end of the file (0 if it was intact).
    pub bytes_dropped: u64,
    /// Bytes read and validated.
    pub scanned_bytes: u64,
    /// Why the tail was dropped, if it was.
    pub reason: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    base_offset: i64,
    path: PathBuf,
    /// Shared so that the group-commit flusher can fsync a clone of the
    /// handle without holding the partition's lock.
    file: Arc<File>,
    /// Bytes of whole, validated batches; the file is never read past this.
    size: u64,
    /// Offset after the last record in the segment (`base_offset` if empty).
    next_offset: i64,
    index: Vec<IndexEntry>,
    bytes_since_index: u64,
    max_timestamp: Option<MaxTimestamp>,
    /// When the segment got its first batch (ms since the epoch): the wall
    /// clock of that append, or the file's creation time for a segment
    /// found on disk. Drives `segment.ms` rolling.
    first_append_ms: Option<i64>,
    /// Written since the last fdatasync.
    dirty: bool,
    /// An index file describing the segment as it is now exists.
    persisted_index: bool,
    /// Segment size described by the index file this process last wrote or
    /// loaded (0 if none).
    indexed_size: u64,
}

/// File name of the segment starting at `base_offset`.
pub(crate) fn file_name(base_offset: i64) -> String {
    format!("{base_offset:020}{LOG_SUFFIX}")
}

/// Path of the index file belonging to the segment file `log_path`.
pub(crate) fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension(&INDEX_SUFFIX[1..])
}

/// Base offset encoded in a segment file name, if `name` is one.
pub(crate) fn parse_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(LOG_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn corrupt(segment: &Path, position: u64, what: impl std::fmt::Display) -> LogError {
    LogError::CorruptBatch(format!(
        "{} at position {position}: {what}",
        segment.display()
    ))
}

impl Segment {
    /// Creates a new, empty segment file. Fails if it already exists.
    pub fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let path = dir.join(file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Segment::empty(path, file, base_offset))
    }

    fn empty(path: PathBuf, file: File, base_offset: i64) -> Segment {
        Segment {
            base_offset,
            path,
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            index: Vec::new(),
            bytes_since_index: 0,
            max_timestamp: None,
            first_append_ms: None,
            dirty: false,
            persisted_index: false,
            indexed_size: 0,
        }
    }

    /// Opens an existing segment from its persisted index file without
    /// reading the segment's data. Returns `None` (caller falls back to
    /// [`Segment::recover`]) if the index file is missing, damaged, or does
    /// not describe a file of exactly the current length.
    ///
    /// The caller must only use this when the segment's contents are known
    /// to be durable and unchanged since the index was written (below the
    /// recovery point, or after a clean shutdown).
    ///
    /// With `prefix_ok(next_offset)` true, an index describing only a prefix
    /// of the file is accepted too (the segment was appended to after the
    /// index was written; the caller knows that prefix is durable, e.g.
    /// `next_offset <= recovery point`); the caller then validates the rest
    /// with [`Segment::scan_tail`].
    pub fn load_indexed(
        path: PathBuf,
        base_offset: i64,
        prefix_ok: impl Fn(i64) -> bool,
    ) -> Result<Option<Segment>, LogError> {
        let bytes = match std::fs::read(index_path(&path)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(parsed) = parse_index(&bytes) else {
            return Ok(None);
        };
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < parsed.size || (len > parsed.size && !prefix_ok(parsed.next_offset)) {
            return Ok(None);
        }
        if parsed
            .index
            .first()
            .is_some_and(|e| e.offset != base_offset)
            || parsed.next_offset < base_offset
            || (parsed.size == 0) != (parsed.next_offset == base_offset)
            || (parsed.size == 0) != parsed.index.is_empty()
        {
            return Ok(None);
        }
        let mut seg = Segment::empty(path, file, base_offset);
        seg.size = parsed.size;
        seg.next_offset = parsed.next_offset;
        seg.index = parsed.index;
        seg.max_timestamp = parsed.max_timestamp;
        seg.first_append_ms = parsed.first_timestamp;
        // Resume index spacing conservatively: next append gets an entry.
        seg.bytes_since_index = u64::MAX / 2;
        seg.persisted_index = len == parsed.size;
        seg.indexed_size = parsed.size;
        Ok(Some(seg))
    }

    /// Writes the index file describing the segment as it is now (write a
    /// temporary file, rename). Not fsynced: the file carries its own
    /// checksum and the segment length it describes, and a missing or stale
    /// index only costs a rescan.
    pub fn write_index(&mut self) -> Result<(), LogError> {
        let mut buf = Vec::with_capacity(INDEX_HEADER + self.index.len() * INDEX_ENTRY + 4);
        buf.extend_from_slice(INDEX_MAGIC);
        buf.extend_from_slice(&self.size.to_be_bytes());
        buf.extend_from_slice(&self.next_offset.to_be_bytes());
        buf.extend_from_slice(&self.first_append_ms.unwrap_or(i64::MIN).to_be_bytes());
        let (ts, pos, last) = self.max_timestamp.map_or((i64::MIN, u64::MAX, -1), |m| {
            (m.timestamp, m.position, m.last_offset)
        });
        buf.extend_from_slice(&ts.to_be_bytes());
        buf.extend_from_slice(&pos.to_be_bytes());
        buf.extend_from_slice(&last.to_be_bytes());
        buf.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        for e in &self.index {
            buf.extend_from_slice(&e.offset.to_be_bytes());
            buf.extend_from_slice(&e.position.to_be_bytes());
            buf.extend_from_slice(&e.max_timestamp_before.to_be_bytes());
        }
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_be_bytes());
        let path = index_path(&self.path);
        let tmp = path.with_extension("index.tmp");
        std::fs::write(&tmp, &buf)?;
        std::fs::rename(&tmp, &path)?;
        self.persisted_index = true;
        self.indexed_size = self.size;
        Ok(())
    }

    /// Segment size described by the last index file written or loaded.
    pub fn indexed_size(&self) -> u64 {
        self.indexed_size
    }

    /// Whether an index file describing the current contents exists.
    pub fn has_persisted_index(&self) -> bool {
        self.persisted_index
    }

    /// Marks the segment as needing an fsync (e.g. data found on disk by
    /// recovery that may only be in the page cache).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A shared handle to the segment file (for reads without the log lock).
    pub fn file_handle(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Renames the segment in memory after its file was renamed.
    pub fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// When this segment received its first batch, if it has one.
    pub fn first_append_ms(&self) -> Option<i64> {
        self.first_append_ms
    }

    /// A handle to fsync if the segment was written since the last call;
    /// the segment is considered clean from now on (the caller must make
    /// the sync happen or fail the log).
    pub fn take_dirty_file(&mut self) -> Option<Arc<File>> {
        if self.dirty {
            self.dirty = false;
            Some(self.file.clone())
        } else {
            None
        }
    }

    /// Opens an existing segment, validating every batch (length, magic,
    /// CRC, dense offsets starting at `base_offset`) and rebuilding the
    /// index. A torn or corrupt tail is cut off the file.
    pub fn recover(
        path: PathBuf,
        base_offset: i64,
        index_interval: u64,
        now_ms: i64,
    ) -> Result<(Segment, Recovery), LogError> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut segment = Segment::empty(path, file, base_offset);
        let recovery = segment.scan_tail(index_interval, now_ms)?;
        Ok((segment, recovery))
    }

    /// Validates the file from `self.size` (the end of what is already
    /// known) to its end, batch by batch (length, magic, CRC, dense offsets),
    /// extending the in-memory state; a torn or corrupt tail is cut off the
    /// file (and fsynced), and the index file is removed durably first, since
    /// it may describe bytes that are going away. `now_ms` is the segment's
    /// age origin if the file system cannot tell when the file was created.
    pub fn scan_tail(&mut self, index_interval: u64, now_ms: i64) -> Result<Recovery, LogError> {
        let segment = self;
        let file_len = segment.file.metadata()?.len();
        let start = segment.size;
        // A dup of the descriptor, so the reader does not borrow `segment`.
        let mut dup = segment.file.try_clone()?;
        io::Seek::seek(&mut dup, io::SeekFrom::Start(start))?;
        let mut reader = BufReader::with_capacity(RECOVERY_BUFFER, dup);
        let mut header_buf = [0u8; BatchHeader::SIZE];
        let mut pos = start;
        let mut reason = None;
        while pos < file_len {
            let remaining = file_len - pos;
            if remaining < BatchHeader::SIZE as u64 {
                reason = Some(format!("{remaining} trailing bytes, less than a header"));
                break;
            }
            reader.read_exact(&mut header_buf)?;
            let header = match BatchHeader::parse(&header_buf) {
                Ok(h) => h,
                Err(e) => {
                    reason = Some(e.to_string());
                    break;
                }
            };
            if header.base_offset != segment.next_offset {
                reason = Some(format!(
                    "batch base offset {} where {} was expected",
                    header.base_offset, segment.next_offset
                ));
                break;
            }
            let size = header.total_size() as u64;
            if size > remaining {
                reason = Some(format!(
                    "batch of {size} bytes but only {remaining} bytes left"
                ));
                break;
            }
            // Checksum the body while streaming it; never buffer a whole batch.
            let mut crc = crc32c::crc32c(&header_buf[batch::ATTRIBUTES_POS..]);
            let mut body_left = size - BatchHeader::SIZE as u64;
            while body_left > 0 {
                let chunk = reader.fill_buf()?;
                if chunk.is_empty() {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                let n = chunk
                    .len()
                    .min(usize::try_from(body_left).unwrap_or(usize::MAX));
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                reader.consume(n);
                body_left -= n as u64;
            }
            if let Err(e) = batch::validate_streamed(&header, crc) {
                reason = Some(e.to_string());
                break;
            }
            segment.track_batch(&header, pos, index_interval);
            pos += size;
        }
        segment.size = pos;
        if pos > 0 && segment.first_append_ms.is_none() {
            // Age for `segment.ms`: when the file was created (batch
            // timestamps are the producers' and may be anything).
            let created = segment.file.metadata().and_then(|m| m.created()).ok();
            segment.first_append_ms = Some(created.map_or(now_ms, |t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64)
            }));
        }
        let bytes_dropped = file_len - pos;
        if bytes_dropped > 0 {
            remove_if_exists(&index_path(&segment.path))?;
            if let Some(dir) = segment.path.parent() {
                crate::checkpoint::sync_dir(dir)?;
            }
            segment.persisted_index = false;
            segment.file.set_len(pos)?;
            segment.file.sync_all()?;
        }
        Ok(Recovery {
            bytes_dropped,
            scanned_bytes: pos - start,
            reason,
        })
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    pub fn max_timestamp(&self) -> Option<MaxTimestamp> {
        self.max_timestamp
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a batch (already on disk at `position`) in the in-memory state.
    fn track_batch(&mut self, header: &BatchHeader, position: u64, index_interval: u64) {
        debug_assert_eq!(
            header.base_offset, self.next_offset,
            "offsets must be dense"
        );
        if self.index.is_empty() || self.bytes_since_index >= index_interval {
            self.index.push(IndexEntry {
                offset: header.base_offset,
                position,
                max_timestamp_before: self.max_timestamp.map_or(i64::MIN, |m| m.timestamp),
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.total_size() as u64;
        if self
            .max_timestamp
            .is_none_or(|m| header.max_timestamp > m.timestamp)
        {
            self.max_timestamp = Some(MaxTimestamp {
                timestamp: header.max_timestamp,
                position,
                last_offset: header.last_offset(),
            });
        }
        self.next_offset = header.next_offset();
    }

    /// Appends `data` (whole batches whose base offsets are already
    /// assigned; `headers` lists them with their positions within `data`)
    /// with a single positioned write at the end of the segment.
    pub fn append(
        &mut self,
        data: &[u8],
        headers: &[(BatchHeader, usize)],
        index_interval: u64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        // An index file on disk now describes a prefix of the segment (the
        // file only grows); it is still correct as such.
        self.persisted_index = false;
        if let Err(e) = self.file.write_all_at(data, self.size) {
            // Don't leave a partial batch behind; if this fails too the
            // garbage is past `size`, is overwritten by the next append and
            // is cut off by recovery.
            let _ = self.file.set_len(self.size);
            return Err(e.into());
        }
        self.dirty = true;
        if self.first_append_ms.is_none() {
            self.first_append_ms = Some(now_ms);
        }
        for (header, start) in headers {
            self.track_batch(header, self.size + *start as u64, index_interval);
        }
        self.size += data.len() as u64;
        Ok(())
    }

    /// Reads exactly `len` bytes at `position` into a fresh buffer.
    pub fn read_vec(&self, position: u64, len: usize) -> Result<Vec<u8>, LogError> {
        debug_assert!(position + len as u64 <= self.size);
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, position)?;
        Ok(buf)
    }

    /// Reads the whole batch starting at `position`.
    pub fn read_batch(&self, position: u64) -> Result<(BatchHeader, Vec<u8>), LogError> {
        let mut scanner = self.scanner(position);
        let (pos, header) = scanner
            .next_header()?
            .ok_or_else(|| corrupt(&self.path, position, "no batch at position"))?;
        Ok((header, self.read_vec(pos, header.total_size())?))
    }

    /// A forward scanner over batch headers starting at `position`, which
    /// must be a batch boundary.
    pub fn scanner(&self, position: u64) -> HeaderScanner<'_> {
        HeaderScanner {
            segment: self,
            buf: Vec::new(),
            buf_start: 0,
            pos: position,
        }
    }

    /// Index entry to start scanning from for `offset`: the last one whose
    /// batch starts at or before `offset`.
    fn index_entry_for_offset(&self, offset: i64) -> Option<&IndexEntry> {
        let i = self.index.partition_point(|e| e.offset <= offset);
        self.index.get(i.saturating_sub(1))
    }

    /// Position and header of the batch containing `offset`, or `None` if
    /// the segment holds no such batch.
    pub fn locate(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, LogError> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let Some(entry) = self.index_entry_for_offset(offset) else {
            return Ok(None);
        };
        let mut scanner = self.scanner(entry.position);
        while let Some((pos, header)) = scanner.next_header()? {
            if header.last_offset() >= offset {
                return Ok(Some((pos, header)));
            }
        }
        Ok(None)
    }

    /// A batch boundary at or before the first batch whose `maxTimestamp` is
    /// `>= timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let i = self
            .index
            .partition_point(|e| e.max_timestamp_before < timestamp);
        self.index
            .get(i.saturating_sub(1))
            .map_or(0, |e| e.position)
    }

    /// Cuts the segment to its first `position` bytes, which must be a batch boundary
    /// (replication's truncation, `PartitionLog::truncate_to`), durably: the index file
    /// is removed first (and the directory fsynced), since it describes bytes going away;
    /// then the file is cut and fsynced (which also makes the kept bytes durable). The
    /// in-memory index and maximum timestamp are rebuilt from the kept batch headers (no
    /// CRC: they were validated when they were written or loaded).
    pub fn truncate_to(&mut self, position: u64, index_interval: u64) -> Result<(), LogError> {
        debug_assert!(position <= self.size);
        remove_if_exists(&index_path(&self.path))?;
        if let Some(dir) = self.path.parent() {
            crate::checkpoint::sync_dir(dir)?;
        }
        self.persisted_index = false;
        self.indexed_size = 0;
        self.file.set_len(position)?;
        self.file.sync_all()?;
        self.dirty = false;
        self.size = position;
        let mut kept = Vec::new();
        let mut scanner = self.scanner(0);
        while let Some(item) = scanner.next_header()? {
            kept.push(item);
        }
        self.index.clear();
        self.bytes_since_index = 0;
        self.max_timestamp = None;
        self.next_offset = self.base_offset;
        for (pos, header) in kept {
            self.track_batch(&header, pos, index_interval);
        }
        if position == 0 {
            self.first_append_ms = None;
        }
        Ok(())
    }

    /// Deletes the segment file.
    pub fn delete(self) -> Result<(), LogError> {
        let Segment { path, file, .. } = self;
        drop(file);
        remove_if_exists(&index_path(&path))?;
        remove_if_exists(&crate::txnindex::txn_index_path(&path))?;
        remove_if_exists(&path)
    }
}

fn remove_if_exists(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

struct ParsedIndex {
    size: u64,
    next_offset: i64,
    first_timestamp: Option<i64>,
    max_timestamp: Option<MaxTimestamp>,
    index: Vec<IndexEntry>,
}

/// Parses an index file; `None` if it is not exactly a valid one. The entry
/// count is checked against the file length before anything is allocated.
fn parse_index(b: &[u8]) -> Option<ParsedIndex> {
    if b.len() < INDEX_HEADER + 4 || &b[..8] != INDEX_MAGIC {
        return None;
    }
    let body = b.len() - 4;
    let stored = u32::from_be_bytes(b[body..].try_into().ok()?);
    if crc32c::crc32c(&b[..body]) != stored {
        return None;
    }
    let count = u32::from_be_bytes(b[INDEX_HEADER - 4..INDEX_HEADER].try_into().ok()?) as usize;
    if count.checked_mul(INDEX_ENTRY)? != body - INDEX_HEADER {
        return None;
    }
    let first_ts = be_i64(b, 24);
    let ts = be_i64(b, 32);
    let pos = be_u64(b, 40);
    let last = be_i64(b, 48);
    let mut index = Vec::with_capacity(count);
    for i in 0..count {
        let at = INDEX_HEADER + i * INDEX_ENTRY;
        index.push(IndexEntry {
            offset: be_i64(b, at),
            position: be_u64(b, at + 8),
            max_timestamp_before: be_i64(b, at + 16),
        });
    }
    Some(ParsedIndex {
        size: be_u64(b, 8),
        next_offset: be_i64(b, 16),
        first_timestamp: (first_ts != i64::MIN).then_some(first_ts),
        max_timestamp: (pos != u64::MAX).then_some(MaxTimestamp {
            timestamp: ts,
            position: pos,
            last_offset: last,
        }),
        index,
    })
}

/// Reads batch headers sequentially, fetching [`SCAN_CHUNK`] bytes per
/// positioned read so runs of small batches cost one syscall.
pub(crate) struct HeaderScanner<'a> {
    segment: &'a Segment,
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
}

impl HeaderScanner<'_> {
    /// Header of the next batch and its position, or `None` at the end of
    /// the segment.
    pub fn next_header(&mut self) -> Result<Option<(u64, BatchHeader)>, LogError> {
        let seg = self.segment;
        if self.pos >= seg.size {
            return Ok(None);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + BatchHeader::SIZE as u64 > buf_end {
            let len = (seg.size - self.pos).min(SCAN_CHUNK as u64) as usize;
            if len < BatchHeader::SIZE {
                return Err(corrupt(&seg.path, self.pos, "truncated batch header"));
            }
            self.buf.resize(len, 0);
            seg.file.read_exact_at(&mut self.buf, self.pos)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let header =
            BatchHeader::parse(&self.buf[at..]).map_err(|e| corrupt(&seg.path, self.pos, e))?;
        let pos = self.pos;
        self.pos += header.total_size() as u64;
        if self.pos > seg.size {
            return Err(corrupt(&seg.path, pos, "batch extends past end of segment"));
        }
        Ok(Some((pos, header)))
    }
}
