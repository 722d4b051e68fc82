//! Durable storage for the metadata quorum: openraft's `RaftLogStorage` over an append-only file
//! of CRC frames, and `RaftStateMachine` over [`MetadataImage`] with atomic snapshot files.
//!
//! Layout of the metadata directory (`<data-dir>/__cluster_metadata/`):
//! - `raft.log`: frames `[len: u32 BE][crc32c(payload): u32 BE][payload: JSON of one Raft
//!   entry]`. An append is fsynced before openraft is told it is flushed. On open, a torn or
//!   corrupt tail (short frame, bad CRC) is cut off: it was never acknowledged. Truncation
//!   (a conflicting suffix) cuts the file and fsyncs; a purge (entries in a snapshot) rewrites
//!   the file without them (temp file, fsync, rename, fsync dir).
//! - `vote.json`: the Raft vote, written atomically and fsynced before it is used.
//! - `purged.json`: the last purged log id (atomic).
//! - `committed.json`: the last known committed log id, a hint so that a restarted node applies
//!   its log at once (not fsynced; a lost one only delays applying until the leader says so).
//! - `snapshot.json`: the last snapshot: its meta and the serialized image (atomic).
//!
//! The I/O is synchronous inside the async trait methods: metadata writes are small and rare,
//! and the order of writes is then the order of calls.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;

use crate::image::MetadataImage;
use crate::TypeConfig;

type NodeId = u64;
type SErr = StorageError<NodeId>;

/// What applying one log entry gave (the same on every node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Why the batch was refused (the image is unchanged), if it was.
    pub error: Option<String>,
    /// Refused because it was decided on a stale image (retry with a fresh decision).
    #[serde(default)]
    pub stale: bool,
}

/// Largest frame accepted when reading the log back (a larger length is a corrupt tail).
const MAX_FRAME: usize = 64 << 20;

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path:?}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn frame(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) {
    let payload = serde_json::to_vec(entry).expect("entries serialize");
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
}

/// Reads frames from `bytes`; returns the entries with their frame offsets and the length of
/// the valid prefix.
fn read_frames(bytes: &[u8]) -> (Vec<(Entry<TypeConfig>, u64)>, u64) {
    let mut pos = 0usize;
    let mut out = vec![];
    while bytes.len() - pos >= 8 {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len > MAX_FRAME || bytes.len() - pos - 8 < len {
            break;
        }
        let payload = &bytes[pos + 8..pos + 8 + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(payload) else {
            break;
        };
        out.push((entry, pos as u64));
        pos += 8 + len;
    }
    (out, pos as u64)
}

struct LogInner {
    dir: PathBuf,
    file: File,
    /// Entry by index, with the offset of its frame in `raft.log`.
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    /// Length of `raft.log`.
    end: u64,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The Raft log in `raft.log` (see the module docs). Clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut bytes = vec![];
        file.read_to_end(&mut bytes)?;
        let (frames, valid) = read_frames(&bytes);
        if valid < bytes.len() as u64 {
            tracing::warn!(
                "{path:?}: cutting {} bytes of torn or corrupt tail",
                bytes.len() as u64 - valid
            );
            file.set_len(valid)?;
            file.sync_all()?;
        }
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join("purged.json"))?;
        let vote = read_json(&dir.join("vote.json"))?;
        // A torn committed hint is only a hint.
        let committed = read_json(&dir.join("committed.json")).unwrap_or(None);
        let mut entries = BTreeMap::new();
        for (e, off) in frames {
            if Some(e.log_id.index) <= last_purged.map(|l| l.index) {
                continue;
            }
            entries.insert(e.log_id.index, (e, off));
        }
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                entries,
                end: valid,
                last_purged,
                vote,
                committed,
            })),
        })
    }

    /// Whether the log has never been written (no entries, no vote, nothing purged).
    pub fn is_pristine(&self) -> bool {
        let g = self.inner.lock().expect("log lock");
        g.entries.is_empty() && g.vote.is_none() && g.last_purged.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("log lock")
    }
}

fn log_err(e: io::Error) -> SErr {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let g = self.lock();
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(g.entries
            .range((start, end))
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let g = self.lock();
        let last = g
            .entries
            .values()
            .next_back()
            .map(|(e, _)| e.log_id)
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let mut g = self.lock();
        let bytes = serde_json::to_vec(vote).expect("vote serializes");
        write_atomic(&g.dir, "vote.json", &bytes).map_err(|e| StorageIOError::write_vote(&e))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let mut g = self.lock();
        g.committed = committed;
        // A hint: written without fsync.
        let bytes = serde_json::to_vec(&committed).expect("log id serializes");
        fs::write(g.dir.join("committed.json"), bytes).map_err(log_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.lock();
        let mut buf = vec![];
        let mut placed = vec![];
        for e in entries {
            let off = g.end + buf.len() as u64;
            frame(&e, &mut buf);
            placed.push((e, off));
        }
        let res = g.file.write_all(&buf).and_then(|_| g.file.sync_data());
        match res {
            Ok(()) => {
                g.end += buf.len() as u64;
                for (e, off) in placed {
                    g.entries.insert(e.log_id.index, (e, off));
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = log_err(io::Error::new(e.kind(), e.to_string()));
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut g = self.lock();
        let Some((_, off)) = g.entries.get(&log_id.index).map(|(e, o)| (e.log_id, *o)) else {
            return Ok(());
        };
        g.file
            .set_len(off)
            .and_then(|_| g.file.sync_all())
            .map_err(log_err)?;
        g.end = off;
        g.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut g = self.lock();
        let bytes = serde_json::to_vec(&Some(log_id)).expect("log id serializes");
        write_atomic(&g.dir, "purged.json", &bytes).map_err(log_err)?;
        g.last_purged = Some(log_id);
        let keep = g.entries.split_off(&(log_id.index + 1));
        // Rewrite the file with the kept entries.
        let mut buf = vec![];
        let mut entries = BTreeMap::new();
        for (i, (e, _)) in keep {
            let off = buf.len() as u64;
            frame(&e, &mut buf);
            entries.insert(i, (e, off));
        }
        let dir = g.dir.clone();
        write_atomic(&dir, "raft.log", &buf).map_err(log_err)?;
        g.file = OpenOptions::new()
            .append(true)
            .open(dir.join("raft.log"))
            .map_err(log_err)?;
        g.end = buf.len() as u64;
        g.entries = entries;
        Ok(())
    }
}

/// A snapshot as stored in `snapshot.json` and sent to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    image: MetadataImage,
}

struct SmInner {
    dir: PathBuf,
    image: MetadataImage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The last snapshot, serialized.
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    tx: watch::Sender<Arc<MetadataImage>>,
    snapshots_built: u64,
}

/// The state machine: the image, applied from the log, published on a watch channel.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<SmInner>>,
}

fn sm_err(e: io::Error) -> SErr {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from `snapshot.json` if there is one.
    pub fn open(dir: &Path) -> io::Result<(Self, watch::Receiver<Arc<MetadataImage>>)> {
        fs::create_dir_all(dir)?;
        let stored: Option<StoredSnapshot> = read_json(&dir.join("snapshot.json"))?;
        let (image, last_applied, membership, snapshot) = match stored {
            Some(s) => {
                let bytes = serde_json::to_vec(&s).expect("snapshot serializes");
                (
                    s.image,
                    s.meta.last_log_id,
                    s.meta.last_membership.clone(),
                    Some((s.meta, bytes)),
                )
            }
            None => (
                MetadataImage::default(),
                None,
                StoredMembership::default(),
                None,
            ),
        };
        let (tx, rx) = watch::channel(Arc::new(image.clone()));
        Ok((
            StateMachine {
                inner: Arc::new(Mutex::new(SmInner {
                    dir: dir.to_path_buf(),
                    image,
                    last_applied,
                    membership,
                    snapshot,
                    tx,
                    snapshots_built: 0,
                })),
            },
            rx,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.inner.lock().expect("state machine lock")
    }

    // The error type is openraft's.
    #[allow(clippy::result_large_err)]
    fn install(
        g: &mut SmInner,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        bytes: Vec<u8>,
    ) -> Result<(), SErr> {
        let s: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &io::Error::other(e))
        })?;
        write_atomic(&g.dir, "snapshot.json", &bytes).map_err(sm_err)?;
        g.image = s.image;
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.snapshot = Some((meta.clone(), bytes));
        g.tx.send_replace(Arc::new(g.image.clone()));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let mut g = self.lock();
        g.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                g.last_applied.map(|l| l.index).unwrap_or(0),
                g.snapshots_built
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            image: g.image.clone(),
        };
        let bytes = serde_json::to_vec(&stored).expect("snapshot serializes");
        write_atomic(&g.dir, "snapshot.json", &bytes).map_err(sm_err)?;
        g.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        SErr,
    > {
        let g = self.lock();
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.lock();
        let mut out = vec![];
        for e in entries {
            g.last_applied = Some(e.log_id);
            let mut applied = Applied::default();
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => match g.image.apply_batch(&batch, e.log_id.index) {
                    Ok(()) => {}
                    Err(err @ crate::image::ApplyError::Stale { .. }) => {
                        tracing::info!("metadata batch at {} refused: {err}", e.log_id);
                        applied.error = Some(err.to_string());
                        applied.stale = true;
                    }
                    Err(err) => {
                        tracing::error!("metadata batch at {} refused: {err}", e.log_id);
                        applied.error = Some(err.to_string());
                    }
                },
                EntryPayload::Membership(m) => {
                    g.membership = StoredMembership::new(Some(e.log_id), m);
                }
            }
            g.image.applied_index = e.log_id.index;
            out.push(applied);
        }
        let image = Arc::new(g.image.clone());
        g.tx.send_replace(image);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(vec![])))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let mut g = self.lock();
        Self::install(&mut g, meta, snapshot.into_inner())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let g = self.lock();
        Ok(g.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(entries).await.unwrap();
    }

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(dir.path()).unwrap();
            let (sm, _) = StateMachine::open(dir.path()).unwrap();
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations.
    #[test]
    fn openraft_storage_suite() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }

    #[tokio::test]
    async fn log_survives_reopen_truncate_purge_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        assert!(log.is_pristine());
        append(&mut log, (1..=5).map(|i| entry(1, i)).collect()).await;
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        append(&mut log, vec![entry(2, 4)]).await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        drop(log);
        // A torn frame at the end is cut on open.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("raft.log"))
            .unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let mut log = LogStore::open(dir.path()).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.unwrap().index, 4);
        assert_eq!(st.last_log_id.unwrap().leader_id.term, 2);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        append(&mut log, vec![entry(2, 5)]).await;
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        let got: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(got, vec![3, 4, 5]);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id.unwrap().index, 2);
    }
}
