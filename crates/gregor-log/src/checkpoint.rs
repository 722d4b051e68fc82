//! The `log-start-offset` checkpoint file.
//!
//! Format: a single line holding the decimal log start offset. It is replaced
//! atomically: write `log-start-offset.tmp`, fsync it, rename it over the old
//! file, fsync the directory.

use std::fs;
use std::io;
use std::path::Path;

/// Name of the checkpoint file inside the partition directory.
pub(crate) const FILE_NAME: &str = "log-start-offset";
/// Name of the temporary file used while replacing the checkpoint.
pub(crate) const TMP_FILE_NAME: &str = "log-start-offset.tmp";

/// Reads the checkpoint; `None` if it does not exist.
pub(crate) fn read(dir: &Path) -> io::Result<Option<i64>> {
    let text = match fs::read_to_string(dir.join(FILE_NAME)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match text.trim().parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(Some(offset)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "invalid log start offset checkpoint {:?} in {}",
                text,
                dir.display()
            ),
        )),
    }
}

/// Durably replaces the checkpoint with `offset` (see [`gregor_os::fs::replace_file`]).
pub(crate) fn write(dir: &Path, offset: i64) -> io::Result<()> {
    gregor_os::fs::replace_file(&dir.join(FILE_NAME), format!("{offset}\n").as_bytes())
}

pub(crate) use gregor_os::fs::sync_dir;
