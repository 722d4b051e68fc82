//! `gregor-lazyfs MOUNTPOINT`: an in-memory FUSE file system for power-cut tests, after
//! LazyFS (the file system Jepsen uses to check fsync). Every write lands in memory at once,
//! as in the page cache; `fsync`/`fdatasync` of a file makes what it holds now *durable*.
//! The command `cut` on stdin simulates a power cut: every file goes back to its durable
//! content (and length); what was written but not fsynced is gone.
//!
//! Model (documented simplification): the namespace — creating, renaming, unlinking files
//! and directories — is durable at once (a journaling file system in ordered mode comes
//! close); only file *data* waits for fsync. So the tests observe exactly one thing: that
//! acknowledged data was fsynced before it was acknowledged.
//!
//! Commands on stdin, one per line, each answered on stdout: `cut` → `cut: N bytes lost`,
//! `stats` → `bytes: written W, durable D`. EOF or `quit` unmounts and exits. The first
//! line on stdout, `lazyfs mounted at PATH`, says the mount is ready.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes and entries are never cached by the kernel: sizes change under it at a cut.
const TTL: Duration = Duration::ZERO;

enum Kind {
    /// `data` is what reads see; `durable` what survives a cut. `data[..dirty_from]` equals
    /// `durable[..dirty_from]`, so an fsync copies only the tail written since the last one.
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        dirty_from: usize,
    },
    Dir {
        parent: u64,
        entries: BTreeMap<OsString, u64>,
    },
}

struct Node {
    kind: Kind,
    perm: u16,
    mtime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// uid and gid of this process: every file belongs to whoever mounted it.
    owner: (u32, u32),
}

impl State {
    fn new() -> State {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                kind: Kind::Dir {
                    parent: 1,
                    entries: BTreeMap::new(),
                },
                perm: 0o755,
                mtime: SystemTime::now(),
            },
        );
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").expect("/proc/self");
        State {
            nodes,
            next_ino: 2,
            owner: (me.uid(), me.gid()),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &n.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind,
            perm: n.perm,
            nlink,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                mtime: SystemTime::now(),
            },
        );
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Makes every file's current content durable (fsync).
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File {
                data,
                durable,
                dirty_from,
            }) => {
                durable.truncate(*dirty_from);
                durable.extend_from_slice(&data[*dirty_from..]);
                *dirty_from = data.len();
                Ok(())
            }
            Some(Kind::Dir { .. }) => Ok(()),
            None => Err(Errno::ENOENT),
        }
    }

    /// The power cut: every file loses what was not fsynced. Returns the bytes lost.
    fn cut(&mut self) -> u64 {
        let mut lost = 0u64;
        for n in self.nodes.values_mut() {
            if let Kind::File {
                data,
                durable,
                dirty_from,
            } = &mut n.kind
            {
                lost += data.len().saturating_sub(*dirty_from) as u64;
                *data = durable.clone();
                *dirty_from = data.len();
            }
        }
        lost
    }

    fn totals(&self) -> (u64, u64) {
        let mut t = (0, 0);
        for n in self.nodes.values() {
            if let Kind::File { data, durable, .. } = &n.kind {
                t.0 += data.len() as u64;
                t.1 += durable.len() as u64;
            }
        }
        t
    }
}

struct LazyFs(Arc<Mutex<State>>);

impl LazyFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn name_ok(name: &OsStr) -> bool {
    name != "." && name != ".."
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.state();
        match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => match s.attr(ino) {
                Some(a) => reply.entry(&TTL, &a, Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(len) = size {
            match &mut n.kind {
                Kind::File {
                    data, dirty_from, ..
                } => {
                    let len = len as usize;
                    data.resize(len, 0);
                    *dirty_from = (*dirty_from).min(len);
                    n.mtime = SystemTime::now();
                }
                Kind::Dir { .. } => return reply.error(Errno::EISDIR),
            }
        }
        match s.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let kind = Kind::Dir {
            parent: parent.0,
            entries: BTreeMap::new(),
        };
        match s.add(parent.0, name, kind, (mode & 0o7777) as u16) {
            Ok(ino) => reply.entry(&TTL, &s.attr(ino).expect("just added"), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let ino = match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        if matches!(s.nodes.get(&ino).map(|n| &n.kind), Some(Kind::Dir { .. })) {
            return reply.error(Errno::EISDIR);
        }
        s.entries_mut(parent.0).expect("checked").remove(name);
        // Open handles may still use the node; it stays (tests are short).
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let ino = match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match s.entries(ino) {
            Ok(e) if !e.is_empty() => return reply.error(Errno::ENOTEMPTY),
            Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        s.entries_mut(parent.0).expect("checked").remove(name);
        s.nodes.remove(&ino);
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let ino = match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        let target = match s.entries(newparent.0) {
            Ok(e) => e.get(newname).copied(),
            Err(e) => return reply.error(e),
        };
        if target.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EEXIST);
        }
        if let Some(t) = target {
            if let Ok(e) = s.entries(t) {
                if !e.is_empty() {
                    return reply.error(Errno::ENOTEMPTY);
                }
            }
        }
        s.entries_mut(parent.0).expect("checked").remove(name);
        s.entries_mut(newparent.0)
            .expect("checked")
            .insert(newname.to_owned(), ino);
        if let Some(Node {
            kind: Kind::Dir { parent: p, .. },
            ..
        }) = s.nodes.get_mut(&ino)
        {
            *p = newparent.0;
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.state().nodes.contains_key(&ino.0) {
            // Without FOPEN_KEEP_CACHE the kernel drops its cached pages at every open, so
            // a process started after a cut reads what the cut left.
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let existing = match s.entries(parent.0) {
            Ok(e) => e.get(name).copied(),
            Err(e) => return reply.error(e),
        };
        let ino = match existing {
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
            Some(ino) => ino,
            None => {
                if !name_ok(name) {
                    return reply.error(Errno::EINVAL);
                }
                let kind = Kind::File {
                    data: Vec::new(),
                    durable: Vec::new(),
                    dirty_from: 0,
                };
                match s.add(parent.0, name, kind, (mode & 0o7777) as u16) {
                    Ok(ino) => ino,
                    Err(e) => return reply.error(e),
                }
            }
        };
        if flags & libc::O_TRUNC != 0 {
            if let Some(Node {
                kind: Kind::File {
                    data, dirty_from, ..
                },
                ..
            }) = s.nodes.get_mut(&ino)
            {
                data.clear();
                *dirty_from = 0;
            }
        }
        match s.attr(ino) {
            Some(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        match s.nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Some(Kind::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let Some(n) = s.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match &mut n.kind {
            Kind::File {
                data, dirty_from, ..
            } => {
                let start = offset as usize;
                let end = start + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[start..end].copy_from_slice(bytes);
                *dirty_from = (*dirty_from).min(start);
                n.mtime = SystemTime::now();
                reply.written(bytes.len() as u32);
            }
            Kind::Dir { .. } => reply.error(Errno::EISDIR),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state();
        let (parent, entries) = match s.nodes.get(&ino.0).map(|n| &n.kind) {
            Some(Kind::Dir { parent, entries }) => (*parent, entries),
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let mut all: Vec<(u64, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        for (name, &child) in entries {
            let kind = match s.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // the namespace is durable at once (see the module docs)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }
}

fn main() {
    let Some(mountpoint) = std::env::args_os().nth(1) else {
        eprintln!("usage: gregor-lazyfs MOUNTPOINT (commands on stdin: cut, stats, quit)");
        std::process::exit(2);
    };
    let state = Arc::new(Mutex::new(State::new()));
    let mut config = fuser::Config::default();
    config
        .mount_options
        .extend([MountOption::FSName("lazyfs".into()), MountOption::RW]);
    let session = match fuser::spawn_mount(LazyFs(state.clone()), &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gregor-lazyfs: cannot mount at {mountpoint:?}: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lazyfs mounted at {}", mountpoint.to_string_lossy());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match line.trim() {
            "cut" => format!("cut: {} bytes lost", s.cut()),
            "stats" => {
                let (w, d) = s.totals();
                format!("bytes: written {w}, durable {d}")
            }
            "quit" => break,
            other => format!("unknown command {other:?}"),
        };
        drop(s);
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    drop(session); // unmounts
}
