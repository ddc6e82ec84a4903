//! The thin fuser adapter: turns kernel requests into calls on [`S3Filesystem`]
//! and replies; FUSE threads never wait on the network (every operation that
//! may touch the store runs on the filesystem's tokio runtime). Errors become
//! errnos here, and only here.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::IoSlice;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier,
    RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::s3fs::chunked::MAX_REPLY_SLICES;
use crate::s3fs::fs::{FsError, GENERATION, S3Filesystem};

/// Largest read and write the kernel may send (and readahead we ask for).
const MAX_IO_SIZE: u32 = 1024 * 1024;
/// Background requests (readahead, async reads) the kernel may keep in flight.
const MAX_BACKGROUND: u16 = 64;
/// Entries prepared per READDIR(PLUS) reply; the kernel's buffer (one page
/// to a few) holds fewer, so this only bounds the work per call.
const MAX_DIR_ENTRIES_PER_REPLY: usize = 512;
/// Background requests after which the kernel considers the mount congested.
const CONGESTION_THRESHOLD: u16 = 48;

/// How the open files of one inode do their I/O. The kernel wants all of
/// them read through this filesystem (its page cache) or all passed through
/// to one backing file: it fails an open of another mode, or with another
/// backing file (EIO to the caller).
#[derive(Debug)]
enum InodeIo {
    /// Opens read through this filesystem.
    Cached(usize),
    /// Opens the kernel reads from a node cache file itself, all through
    /// one backing id (closed when the last of them is released), so all of
    /// one version of the object.
    Passthrough(usize, Backing, Version),
}

/// The version of an object a backing file holds.
type Version = (Option<String>, u64);

fn version_of(stat: &crate::s3fs::fs::ObjectStat) -> Version {
    (stat.etag.clone(), stat.size)
}

/// A backing id of the connection.
#[derive(Debug)]
enum Backing {
    /// Opened, or taken over, by this process: closed when dropped.
    Owned(fuser::BackingId),
    /// Opened by an earlier process serving the connection (from the
    /// journal): still registered in the kernel, taken over at the next
    /// open of the file, or closed (by number, on the connection's fd) when
    /// the file's last handle is released.
    Restored(u32),
}

impl InodeIo {
    fn count(&mut self) -> &mut usize {
        match self {
            InodeIo::Cached(n) | InodeIo::Passthrough(n, ..) => n,
        }
    }
}

/// The I/O mode of every inode with open files, and the inode of each
/// handle counted in it.
#[derive(Debug, Default)]
struct IoModes {
    inodes: HashMap<u64, InodeIo>,
    handles: HashMap<u64, u64>,
}

impl IoModes {
    /// Counts handle `fh` of `ino` in the inode's mode (`mode` if it has
    /// none yet).
    fn add(&mut self, fh: u64, ino: u64, mode: impl FnOnce() -> InodeIo) {
        self.handles.insert(fh, ino);
        *self.inodes.entry(ino).or_insert_with(mode).count() += 1;
    }

    /// Forgets handle `fh`; the inode's mode (and backing id) goes with its
    /// last handle: a restored id nobody took over is returned, to close.
    fn remove(&mut self, fh: u64) -> Option<u32> {
        let ino = self.handles.remove(&fh)?;
        let io = self.inodes.get_mut(&ino)?;
        let count = io.count();
        *count = count.saturating_sub(1);
        if *count > 0 {
            return None;
        }
        match self.inodes.remove(&ino)? {
            InodeIo::Passthrough(_, Backing::Restored(id), _) => Some(id),
            _ => None,
        }
    }
}

/// The `fuser::Filesystem` for one mount.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<S3Filesystem>,
    /// The unsupported requests already logged (each kind once per mount).
    unsupported_seen: Mutex<HashSet<&'static str>>,
    io_modes: Arc<Mutex<IoModes>>,
    /// The connection's fd, once resumed: to close backing ids an earlier
    /// process opened that no open takes over.
    device: Arc<std::sync::OnceLock<std::os::fd::OwnedFd>>,
}

impl FuseAdapter {
    /// Wraps a filesystem. Read handles it already has (restored from an
    /// earlier process) keep the I/O mode the journal recorded.
    pub fn new(fs: Arc<S3Filesystem>) -> Self {
        let mut io_modes = IoModes::default();
        let mut restored = fs.open_read_handles();
        // Handles with a backing id first: if the handles of one file
        // disagree (one was never answered), the kernel's mode is the
        // passthrough one.
        restored.sort_by_key(|open| open.backing.is_none());
        for open in restored {
            let version = version_of(&open.stat);
            io_modes.add(open.fh, open.ino, || match open.backing {
                Some(id) => InodeIo::Passthrough(0, Backing::Restored(id), version),
                None => InodeIo::Cached(0),
            });
        }
        FuseAdapter {
            fs,
            unsupported_seen: Mutex::new(HashSet::new()),
            io_modes: Arc::new(Mutex::new(io_modes)),
            device: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The resumed connection's fd (see [`Backing::Restored`]).
    pub fn set_device(&self, device: std::os::fd::OwnedFd) {
        let _ = self.device.set(device);
    }

    /// Forgets handle `fh` in the I/O modes, closing a restored backing id
    /// that went with it.
    fn forget_handle(
        io_modes: &Mutex<IoModes>,
        device: &std::sync::OnceLock<std::os::fd::OwnedFd>,
        fh: u64,
    ) {
        let Some(id) = lock_io(io_modes).remove(fh) else {
            return;
        };
        if let Some(device) = device.get()
            && let Err(error) = fuser::BackingId::close_raw(device, id)
        {
            tracing::warn!(id, %error, "cannot close a backing id of an earlier worker");
        }
    }

    /// Serves with FUSE passthrough or without (a resumed connection keeps
    /// what its INIT negotiated).
    pub fn set_passthrough(&self, enabled: bool) {
        self.fs.set_passthrough(enabled);
    }

    /// Answers a request this filesystem does not serve with `errno`,
    /// quietly: programs send some on every open (Python's `open()` asks
    /// whether the file is a terminal), so it is logged once per kind.
    fn unsupported(&self, op: &'static str, errno: Errno) -> Errno {
        let started = Instant::now();
        let first = self
            .unsupported_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(op);
        if first {
            tracing::info!(
                op,
                errno = ?errno,
                bucket = self.fs.bucket_display(),
                "fuse request not supported by the s3 filesystem (logged once per mount)"
            );
        }
        self.observe(op, started);
        errno
    }

    /// Runs `work`, timing it as FUSE op `op`: first on this thread, up to
    /// where it has to wait (a read from bytes already prefetched, an open
    /// of a file checked ahead: answered here, start to finish), and the
    /// rest, if any, on the filesystem's runtime. Handing every request to
    /// a runtime thread cost a thread wake-up and switch each.
    fn spawn<F>(&self, op: &'static str, work: impl FnOnce(Arc<S3Filesystem>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fs = Arc::clone(&self.fs);
        let started = Instant::now();
        fs.metrics().count_fuse_request(&fs.options().dataset, op);
        let task = work(Arc::clone(&fs));
        let mut task = Box::pin(async move {
            task.await;
            fs.note_answered();
            fs.metrics().observe_fuse_duration(op, started.elapsed());
        });
        let runtime = self.fs.runtime();
        let _inside = runtime.enter();
        // Polled once with a waker that does nothing: a task that is not
        // done goes to the runtime, whose next poll registers its own (a
        // future wakes only the waker of its latest poll). A panic stays
        // with its request (its reply, dropped, answers EIO), as it did in a
        // runtime task, instead of taking the pool's thread.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::FutureExt::now_or_never(task.as_mut())
        }));
        match polled {
            Ok(None) => {
                runtime.spawn(task);
            }
            Ok(Some(())) => {}
            Err(_) => tracing::error!(op, "fuse request handler panicked"),
        }
    }

    /// Counts and times a FUSE op answered without the network.
    fn observe(&self, op: &'static str, started: Instant) {
        self.fs.note_answered();
        let metrics = self.fs.metrics();
        metrics.count_fuse_request(&self.fs.options().dataset, op);
        metrics.observe_fuse_duration(op, started.elapsed());
    }

    fn refuse(&self, op: &'static str, target: String) -> Errno {
        errno(op, &self.fs.refuse_modification(op, target))
    }

    fn describe(&self, parent: INodeNo, name: &OsStr) -> String {
        format!("{}/{}", parent.0, name.to_string_lossy())
    }
}

fn lock_io(io_modes: &Mutex<IoModes>) -> std::sync::MutexGuard<'_, IoModes> {
    io_modes.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers an open in the I/O mode the inode's other open files have:
/// passthrough to the node cache file when the inode has no other mode and
/// the file came with one, else through this filesystem. The backing id is
/// journaled before the reply goes out, and the reply goes out under the
/// lock, so a release cannot close the id it names in between. True when
/// the open passes through.
fn reply_open(
    fs: &S3Filesystem,
    io_modes: &Mutex<IoModes>,
    ino: u64,
    opened: crate::s3fs::fs::OpenedFile,
    reply: ReplyOpen,
) -> bool {
    let fh = opened.fh;
    // Nothing is buffered on the read path, so a close needs no FLUSH: the
    // kernel (5.16 and later) skips that round trip, which the closing
    // reader waits for.
    let read_flags = FopenFlags::FOPEN_NOFLUSH;
    // Pages cached from the same ETag stay; otherwise the kernel drops them
    // at this open.
    let cached_flags = if opened.keep_cache {
        read_flags | FopenFlags::FOPEN_KEEP_CACHE
    } else {
        read_flags
    };
    let version = version_of(&opened.stat);
    let mut io = lock_io(io_modes);
    if !io.inodes.contains_key(&ino)
        && let Some(file) = &opened.backing
    {
        match reply.open_backing(file) {
            Ok(backing) => {
                io.inodes.insert(
                    ino,
                    InodeIo::Passthrough(0, Backing::Owned(backing), version.clone()),
                );
            }
            Err(error) => {
                let lasting = matches!(
                    error.raw_os_error(),
                    Some(libc::EPERM | libc::EINVAL | libc::ELOOP | libc::EOPNOTSUPP)
                );
                if lasting {
                    // The cache's filesystem cannot back FUSE files (a
                    // stacked one, say): read through FUSE from now on.
                    fs.set_passthrough(false);
                }
                tracing::warn!(%error, lasting, "fuse passthrough refused; this file is read through fuse");
            }
        }
    }
    if let Some(InodeIo::Passthrough(_, _, held)) = io.inodes.get(&ino)
        && *held != version
    {
        // The object changed while the kernel reads its old version through
        // a backing file: it takes no other file and no other mode for the
        // inode until those opens close, and the old bytes are not this
        // version's. As with any read of a replaced object: EIO.
        drop(io);
        fs.release(fh);
        tracing::warn!(
            ino,
            "an object replaced while open with passthrough cannot be opened in its new version until the old opens close"
        );
        reply.error(Errno::EIO);
        return false;
    }
    io.add(fh, ino, || InodeIo::Cached(0));
    if let Some(InodeIo::Passthrough(_, backing, _)) = io.inodes.get_mut(&ino)
        && let Backing::Restored(id) = *backing
    {
        // SAFETY: `id` was opened on this connection by an earlier process
        // (recorded in the journal before its reply); processes that serve
        // a connection never close ids as they end (they die or are killed
        // once quiesced), and this value is now the only owner: it closes
        // the id when the file's last handle is released.
        *backing = Backing::Owned(unsafe { reply.wrap_backing(id) });
    }
    match io.inodes.get(&ino) {
        Some(InodeIo::Passthrough(_, Backing::Owned(backing), _)) => {
            fs.note_passthrough(fh, backing.raw());
            reply.opened_passthrough(FileHandle(fh), read_flags, backing);
            true
        }
        _ => {
            reply.opened(FileHandle(fh), cached_flags);
            false
        }
    }
}

/// The errno for `err`, logging the cause once unless it is an expected answer.
fn errno(op: &str, err: &FsError) -> Errno {
    if err.is_expected() {
        tracing::debug!(op, error = %err, "fuse request refused");
    } else {
        tracing::warn!(op, error = %err, "fuse request failed");
    }
    Errno::from_i32(err.errno())
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        if let Err(nearest) = config.set_max_readahead(MAX_IO_SIZE) {
            let _ = config.set_max_readahead(nearest);
        }
        if let Err(nearest) = config.set_max_write(MAX_IO_SIZE) {
            let _ = config.set_max_write(nearest);
        }
        let wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_MAX_PAGES;
        // Not FUSE_READDIRPLUS_AUTO: attributes come with the listing for
        // free, and in auto mode the kernel falls back to plain READDIR after
        // the first batch, so every later open costs a LOOKUP (HEAD + LIST).
        // The kernel reads node cache files itself (Linux 6.9 and later);
        // the cache files must sit on a filesystem that is not stacked.
        let wanted = if self.fs.has_node_cache() && config.set_max_stack_depth(1).is_ok() {
            wanted | InitFlags::FUSE_PASSTHROUGH
        } else {
            wanted
        };
        let offered = config.capabilities() & wanted;
        if let Err(unsupported) = config.add_capabilities(offered) {
            tracing::debug!(?unsupported, "kernel refused fuse capabilities");
        }
        self.set_passthrough(offered.contains(InitFlags::FUSE_PASSTHROUGH));
        tracing::info!(
            bucket = self.fs.bucket_display(),
            capabilities = ?offered,
            "fuse session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn("lookup", move |fs| async move {
            let ttl = fs.kernel_ttl();
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&ttl, &attr, GENERATION),
                // Inode 0 is a negative entry the kernel caches for the TTL.
                Err(FsError::NotFound { .. }) => match fs.kernel_negative_ttl() {
                    Some(ttl) => reply.entry(&ttl, &negative_entry_attr(), fuser::Generation(0)),
                    None => reply.error(Errno::ENOENT),
                },
                Err(err) => reply.error(errno("lookup", &err)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn("getattr", move |fs| async move {
            match fs.getattr(ino.0).await {
                Ok(attr) => reply.attr(&fs.kernel_ttl(), &attr),
                Err(err) => reply.error(errno("getattr", &err)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
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
        // Owner and mode are the dataset's: a change is accepted without
        // effect (the kernel has checked the caller's right to make it).
        let _ = (mode, uid, gid);
        self.spawn("setattr", move |fs| async move {
            match fs.setattr(ino.0, size).await {
                Ok(attr) => reply.attr(&fs.kernel_ttl(), &attr),
                Err(err) => reply.error(errno("setattr", &err)),
            }
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse("mknod", self.describe(parent, name)));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        self.spawn("mkdir", move |fs| async move {
            match fs.mkdir(parent.0, &name).await {
                Ok(attr) => reply.entry(&fs.kernel_ttl(), &attr, GENERATION),
                Err(err) => reply.error(errno("mkdir", &err)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn("unlink", move |fs| async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(errno("unlink", &err)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn("rmdir", move |fs| async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(errno("rmdir", &err)),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse("symlink", self.describe(parent, link_name)));
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
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(self.unsupported("rename_exchange", Errno::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn("rename", move |fs| async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, no_replace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(errno("rename", &err)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse("link", self.describe(newparent, newname)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let io_modes = Arc::clone(&self.io_modes);
        // A file open in another mode cannot pass through: no need to look.
        let want_backing =
            self.fs.passthrough() && !lock_io(&self.io_modes).inodes.contains_key(&ino.0);
        self.spawn("open", move |fs| async move {
            match fs.open(ino.0, flags.0, want_backing).await {
                Ok(opened) => {
                    if reply_open(&fs, &io_modes, ino.0, opened, reply) {
                        fs.metrics()
                            .cache_requests
                            .with_label_values(&["passthrough"])
                            .inc();
                    }
                }
                Err(err) => reply.error(errno("open", &err)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn("read", move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => {
                    let data = data.within_chunks(MAX_REPLY_SLICES);
                    let slices: Vec<IoSlice<'_>> =
                        data.chunks().iter().map(|c| IoSlice::new(c)).collect();
                    reply.data_vectored(&slices);
                }
                Err(err) => reply.error(errno("read", &err)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The copy waits here until the writer takes it: bounded.
        let Some(admitted) = self.fs.options().write_budget.admit(data.len()) else {
            reply.error(Errno::ENOSPC);
            return;
        };
        let data = data.to_vec();
        self.spawn("write", move |fs| async move {
            let written = fs.write(fh.0, offset, &data).await;
            drop(admitted);
            match written {
                Ok(written) => reply.written(written),
                Err(err) => reply.error(errno("write", &err)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if !self.fs.is_writer(fh.0) {
            // Nothing is buffered on the read path (a reader is opened with
            // FOPEN_NOFLUSH: this comes only from a kernel older than 5.16,
            // or for handles of an earlier worker, opened without it).
            self.observe("flush", Instant::now());
            reply.ok();
            return;
        }
        // Completes the object when its creator closes it after writing, so
        // that close(2) reports a failed upload (see s3fs::write). The
        // process is looked up now, while it waits in close(2).
        let closed_by = process_of(req.pid());
        self.spawn("flush", move |fs| async move {
            match fs.flush(fh.0, closed_by).await {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(errno("flush", &err)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.fs.is_writer(fh.0) {
            let io_modes = Arc::clone(&self.io_modes);
            let device = Arc::clone(&self.device);
            self.spawn("release", move |fs| async move {
                fs.release_writer(fh.0).await;
                Self::forget_handle(&io_modes, &device, fh.0);
                reply.ok();
            });
            return;
        }
        let started = Instant::now();
        self.fs.release(fh.0);
        Self::forget_handle(&self.io_modes, &self.device, fh.0);
        self.observe("release", started);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let started = Instant::now();
        let opened = self.fs.opendir(ino.0);
        self.observe("opendir", started);
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(err) => reply.error(errno("opendir", &err)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn("readdir", move |fs| async move {
            match fs.readdir(fh.0, offset, MAX_DIR_ENTRIES_PER_REPLY).await {
                Ok(entries) => {
                    for entry in entries {
                        if reply.add(
                            entry.attr.ino,
                            entry.next_offset,
                            entry.attr.kind,
                            &entry.name,
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(err) => reply.error(errno("readdir", &err)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.spawn("readdirplus", move |fs| async move {
            let ttl = fs.kernel_ttl();
            match fs
                .readdirplus(fh.0, offset, MAX_DIR_ENTRIES_PER_REPLY)
                .await
            {
                Ok(entries) => {
                    let mut full = false;
                    for entry in entries {
                        full = full
                            || reply.add(
                                entry.attr.ino,
                                entry.next_offset,
                                &entry.name,
                                &ttl,
                                &entry.attr,
                                GENERATION,
                            );
                        // The kernel takes a reference for every entry it
                        // receives but `.` and `..`; give back the others.
                        if full && entry.name != "." && entry.name != ".." {
                            fs.forget(entry.attr.ino.0, 1);
                        }
                    }
                    reply.ok();
                }
                Err(err) => reply.error(errno("readdirplus", &err)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
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
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.fs.statfs();
        reply.statfs(
            stats.blocks,
            stats.blocks_free,
            stats.blocks_available,
            stats.files,
            stats.files_free,
            stats.block_size,
            stats.name_max,
            stats.block_size,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse("setxattr", format!("inode {}", ino.0)));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // Objects carry no extended attributes. ENOSYS makes the kernel stop
        // asking (and answer EOPNOTSUPP itself), so `ls -l` of a large
        // directory costs no round trip per entry.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse("removexattr", format!("inode {}", ino.0)));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The mount uses default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let created_by = process_of(req.pid());
        let io_modes = Arc::clone(&self.io_modes);
        self.spawn("create", move |fs| async move {
            match fs.create(parent.0, &name, created_by).await {
                Ok((attr, fh)) => {
                    // A file being written reads through this filesystem.
                    lock_io(&io_modes).add(fh, attr.ino.0, || InodeIo::Cached(0));
                    reply.created(
                        &fs.kernel_ttl(),
                        &attr,
                        GENERATION,
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(err) => reply.error(errno("create", &err)),
            }
        });
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // There are no symbolic links: readlink(2) of anything is EINVAL.
        reply.error(self.unsupported("readlink", Errno::EINVAL));
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // What a regular file answers to a terminal or device ioctl.
        reply.error(self.unsupported("ioctl", Errno::ENOTTY));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and treats files as always ready.
        reply.error(self.unsupported("poll", Errno::ENOSYS));
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(self.unsupported("bmap", Errno::ENOSYS));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // ENOSYS: the kernel seeks by itself from then on (files have no holes).
        reply.error(self.unsupported("lseek", Errno::ENOSYS));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS: the kernel falls back to reads and writes.
        reply.error(self.unsupported("copy_file_range", Errno::ENOSYS));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse("fallocate", format!("inode {}", ino.0)));
    }
}

/// The process (thread group id) of the thread `tid` that sent a request,
/// as this agent's pid namespace sees it; None for 0 (a process outside it)
/// or a thread already gone.
fn process_of(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = procfs::process::Process::new(i32::try_from(tid).ok()?)
        .and_then(|process| process.status())
        .ok()?;
    u32::try_from(status.tgid).ok()
}

/// The attributes of a negative entry: inode 0, which the kernel caches as
/// "does not exist" for the entry TTL.
fn negative_entry_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    //! A real FUSE mount in a private mount namespace of the test thread.
    //! Needs root and /dev/fuse: it fails (never skips) without them.

    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::mount::MsFlags;
    use nix::sched::CloneFlags;
    use object_store::local::LocalFileSystem;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::metrics::Metrics;
    use crate::s3fs::fs::FsOptions;
    use crate::s3fs::store::Bucket;
    use crate::sys::{
        FuseMountRequest, FuseSession, LinuxMounter, MountFlags, Mounter, UnmountMode,
    };

    /// How long any single step against the mount may take.
    const STEP_TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs `work` on a helper thread (same mount namespace) and fails the
    /// test if it does not finish in time, so a wedged mount cannot hang it.
    fn within_timeout<T: Send + 'static>(
        what: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(work());
        });
        result
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_TIMEOUT:?}"))
    }

    /// The mount; unmounted (lazily) and its server joined when dropped.
    struct MountedAdapter {
        target: PathBuf,
        session: Option<FuseSession>,
    }

    impl MountedAdapter {
        fn unmount_and_join(&mut self) -> Result<(), String> {
            let Some(session) = self.session.take() else {
                return Ok(());
            };
            let connection = session.connection;
            LinuxMounter
                .unmount(&self.target, UnmountMode::Lazy)
                .map_err(|e| e.to_string())?;
            let (done, joined) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(session.join());
            });
            let outcome = match joined.recv_timeout(STEP_TIMEOUT) {
                Ok(outcome) => outcome,
                Err(_) => {
                    // Still serving: abort the connection, then wait once more.
                    if let Some(connection) = connection {
                        let _ = LinuxMounter.abort_fuse_connection(connection);
                    }
                    joined
                        .recv_timeout(STEP_TIMEOUT)
                        .map_err(|_| "fuse server did not stop after abort".to_string())?
                }
            };
            outcome.map_err(|e| format!("fuse server ended with an error: {e}"))
        }
    }

    impl Drop for MountedAdapter {
        fn drop(&mut self) {
            if let Err(err) = self.unmount_and_join() {
                eprintln!("cleanup of {}: {err}", self.target.display());
            }
        }
    }

    #[test]
    fn a_real_mount_lists_and_reads_a_local_bucket() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the real fuse mount test needs root (run the tests as root)"
        );
        assert!(
            std::path::Path::new("/dev/fuse").exists(),
            "the real fuse mount test needs /dev/fuse (modprobe fuse, or pass the device in)"
        );
        // Only this thread (and threads it starts) sees the mounts below.
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private in the new namespace");

        let bucket_dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
            .map(|i: usize| (i % 251) as u8)
            .collect();
        std::fs::create_dir_all(bucket_dir.path().join("nested/deeper")).unwrap();
        std::fs::write(bucket_dir.path().join("hello.txt"), "hello, fuse\n").unwrap();
        std::fs::write(bucket_dir.path().join("big.bin"), &big).unwrap();
        std::fs::write(bucket_dir.path().join("nested/deeper/leaf"), "leaf").unwrap();
        let mount_point = tempfile::tempdir().unwrap();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = LocalFileSystem::new_with_prefix(bucket_dir.path()).unwrap();
        let fs = Arc::new(S3Filesystem::new(
            Bucket {
                store: Arc::new(store),
                prefix: String::new(),
                display: "local/".to_string(),
            },
            FsOptions {
                dataset: "realmount".to_string(),
                read_only: true,
                metadata_ttl: Duration::from_secs(1),
                negative_ttl: Duration::from_secs(1),
                immutable: false,
                ownership: crate::s3fs::fs::Ownership::defaults(true),
                prefetch_budget: crate::s3fs::PrefetchBudget::new(64 * 1024 * 1024),
                write_budget: crate::s3fs::write::WriteBudget::new(
                    crate::s3fs::write::WriteBudget::DEFAULT_BYTES,
                ),
                cache: None,
            },
            runtime.handle().clone(),
            Arc::clone(&metrics),
        ));
        let session = LinuxMounter
            .mount_fuse(
                &FuseMountRequest {
                    target: mount_point.path().to_path_buf(),
                    fsname: "hotmount:local/".to_string(),
                    // Not MS_RDONLY: writes must reach the filesystem and be refused there.
                    flags: MountFlags::dataset(false),
                    threads: 2,
                },
                FuseAdapter::new(fs),
            )
            .expect("mount the fuse adapter");
        let mut mounted = MountedAdapter {
            target: mount_point.path().to_path_buf(),
            session: Some(session),
        };

        let root = mount_point.path().to_path_buf();
        let names = within_timeout("read_dir", {
            let root = root.clone();
            move || {
                let mut names: Vec<String> = std::fs::read_dir(&root)
                    .expect("read_dir of the mount")
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                names.sort();
                names
            }
        });
        assert_eq!(names, ["big.bin", "hello.txt", "nested"]);
        // Attributes of listed entries (READDIRPLUS feeds them), twice: the
        // second round must find the same inodes.
        let modes = within_timeout("stat listed entries", {
            let root = root.clone();
            move || {
                use std::os::unix::fs::MetadataExt;
                let mut rounds = Vec::new();
                for _ in 0..2 {
                    let round: Vec<(String, u32, u64)> = std::fs::read_dir(&root)
                        .expect("read_dir of the mount")
                        .map(|e| {
                            let e = e.unwrap();
                            let meta = e.metadata().expect("stat a listed entry");
                            (
                                e.file_name().into_string().unwrap(),
                                meta.mode(),
                                meta.ino(),
                            )
                        })
                        .collect();
                    rounds.push(round);
                }
                rounds
            }
        });
        assert_eq!(modes[0], modes[1]);
        for (name, mode, _) in &modes[0] {
            let expected = if name == "nested" { 0o40555 } else { 0o100444 };
            assert_eq!(*mode, expected, "mode of {name}");
        }

        let hello = within_timeout("read hello.txt", {
            let root = root.clone();
            move || std::fs::read(root.join("hello.txt"))
        });
        assert_eq!(hello.expect("read hello.txt"), b"hello, fuse\n");
        let leaf = within_timeout("read nested leaf", {
            let root = root.clone();
            move || std::fs::read(root.join("nested/deeper/leaf"))
        });
        assert_eq!(leaf.expect("read nested/deeper/leaf"), b"leaf");
        let big_read = within_timeout("read big.bin", {
            let root = root.clone();
            move || std::fs::read(root.join("big.bin"))
        })
        .expect("read big.bin");
        assert_eq!(Sha256::digest(&big_read), Sha256::digest(&big));
        // Several readers at once, each reading the whole object.
        let parallel = within_timeout("parallel reads of big.bin", {
            let root = root.clone();
            move || {
                let readers: Vec<_> = (0..4)
                    .map(|_| {
                        let path = root.join("big.bin");
                        std::thread::spawn(move || std::fs::read(path))
                    })
                    .collect();
                readers
                    .into_iter()
                    .map(|r| r.join().expect("reader thread").expect("parallel read"))
                    .collect::<Vec<_>>()
            }
        });
        for data in parallel {
            assert_eq!(Sha256::digest(&data), Sha256::digest(&big));
        }

        let (meta, missing, created) = within_timeout("stat and create", {
            let root = root.clone();
            move || {
                (
                    std::fs::metadata(root.join("big.bin")),
                    std::fs::metadata(root.join("missing")),
                    std::fs::File::create(root.join("new-file")),
                )
            }
        });
        let meta = meta.expect("stat big.bin");
        assert_eq!(meta.len(), big.len() as u64);
        assert_eq!(
            missing.expect_err("missing file").kind(),
            std::io::ErrorKind::NotFound
        );
        assert_eq!(
            created
                .expect_err("create on a read-only dataset")
                .raw_os_error(),
            Some(libc::EROFS)
        );

        mounted
            .unmount_and_join()
            .expect("unmount and stop the fuse server");
        let rendered = metrics.render();
        assert!(
            rendered.contains(r#"hotmount_fuse_requests_total{name="realmount",op="read"}"#),
            "fuse reads were not counted"
        );
        assert!(
            rendered.contains(r#"hotmount_fuse_requests_total{name="realmount",op="readdirplus"}"#),
            "the kernel did not use readdirplus"
        );
        assert!(rendered.contains(r#"hotmount_s3_bytes_read_total{name="realmount"}"#));
    }
}
