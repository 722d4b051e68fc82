//! What survives a restart besides the logs: the recovery-point checkpoint
//! (`<data-dir>/recovery-point-offset-checkpoint`, one line `<topic> <partition> <offset>`
//! per partition: every record below `offset` was fsynced) and the clean-shutdown marker
//! (`<data-dir>/clean-shutdown`, present only between a clean shutdown and the next start).
//! Both tell the next open how much of each log to rescan ([`RecoveryState`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::registry::{RecoveryState, Topic};
use gregor_os::fs::replace_file as write_atomically;

/// `<data-dir>/recovery-point-offset-checkpoint`: one line per partition,
/// `<topic> <partition> <offset>`, every record below `offset` was fsynced.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
/// The recovery-point checkpoint re-indexes an active segment once it grew this much.
const ACTIVE_INDEX_MIN_GROWTH: u64 = 1 << 20;
/// `<data-dir>/clean-shutdown`: present only between a clean shutdown and the next start.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// What the last process left: a clean-shutdown marker means every log was flushed and
/// indexed at exit; otherwise the recovery points say how much was fsynced.
pub fn read_recovery_state(data_dir: &Path) -> anyhow::Result<RecoveryState> {
    Ok(RecoveryState {
        clean: data_dir.join(CLEAN_SHUTDOWN_FILE).exists(),
        recovery_points: read_recovery_points(data_dir)?,
    })
}

/// Writes the checkpoint files of one data directory.
pub struct Checkpoints {
    data_dir: PathBuf,
    /// Serializes recovery-point checkpoint writes.
    write: Mutex<()>,
}

impl Checkpoints {
    pub fn new(data_dir: &Path) -> Checkpoints {
        Checkpoints {
            data_dir: data_dir.to_path_buf(),
            write: Mutex::new(()),
        }
    }

    /// Writes the recovery-point checkpoint: each partition's durable offset.
    pub fn write_recovery_points(&self, topics: &[Arc<Topic>]) -> std::io::Result<()> {
        let _guard = self.write.lock().expect("checkpoint lock");
        let mut text = String::new();
        for t in topics {
            for p in &t.partitions {
                let durable = p.checkpoint(ACTIVE_INDEX_MIN_GROWTH);
                text.push_str(&format!("{} {} {}\n", t.name, p.index, durable));
            }
        }
        write_atomically(&self.data_dir.join(RECOVERY_POINT_FILE), text.as_bytes())
    }

    /// The logs are about to change: removes the clean-shutdown marker (durably), so that
    /// it cannot survive a crash.
    pub fn remove_clean_marker(&self) -> std::io::Result<()> {
        let path = self.data_dir.join(CLEAN_SHUTDOWN_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(&self.data_dir)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every log was flushed, indexed and checkpointed: the next open needs no recovery.
    pub fn write_clean_marker(&self) -> std::io::Result<()> {
        write_atomically(&self.data_dir.join(CLEAN_SHUTDOWN_FILE), b"")
    }
}

/// Reads the recovery-point checkpoint (missing file: no recovery points).
fn read_recovery_points(data_dir: &Path) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let text = match std::fs::read_to_string(data_dir.join(RECOVERY_POINT_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut it = line.split(' ');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(t), Some(p), Some(o), None) => match (p.parse(), o.parse()) {
                (Ok(p), Ok(o)) => {
                    out.insert((t.to_string(), p), o);
                }
                _ => tracing::warn!(line, "ignoring malformed recovery-point line"),
            },
            _ => tracing::warn!(line, "ignoring malformed recovery-point line"),
        }
    }
    Ok(out)
}
