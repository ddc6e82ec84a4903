//! The thin fuser adapter: turns kernel requests into calls on [`S3Filesystem`]
//! and replies; FUSE threads never wait on the network (every operation that
//! may touch the store runs on the filesystem's tokio runtime). Errors become
//! errnos here, and only here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::s3fs::fs::{FsError, GENERATION, S3Filesystem};

/// Largest read and write the kernel may send (and readahead we ask for).
const MAX_IO_SIZE: u32 = 1024 * 1024;
/// Background requests (readahead, async reads) the kernel may keep in flight.
const MAX_BACKGROUND: u16 = 64;
/// Background requests after which the kernel considers the mount congested.
const CONGESTION_THRESHOLD: u16 = 48;

/// The `fuser::Filesystem` for one mount.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<S3Filesystem>,
}

impl FuseAdapter {
    /// Wraps a filesystem.
    pub fn new(fs: Arc<S3Filesystem>) -> Self {
        FuseAdapter { fs }
    }

    /// Runs `work` on the filesystem's runtime, timing it as FUSE op `op`.
    fn spawn<F>(&self, op: &'static str, work: impl FnOnce(Arc<S3Filesystem>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fs = Arc::clone(&self.fs);
        let started = Instant::now();
        let task = work(Arc::clone(&fs));
        self.fs.runtime().spawn(async move {
            task.await;
            fs.metrics()
                .observe_fuse_request(&fs.options().dataset, op, started.elapsed());
        });
    }

    /// Times a FUSE op answered without the network.
    fn observe(&self, op: &'static str, started: Instant) {
        self.fs
            .metrics()
            .observe_fuse_request(&self.fs.options().dataset, op, started.elapsed());
    }

    fn refuse(&self, op: &'static str, target: String) -> Errno {
        errno(op, &self.fs.refuse_modification(op, target))
    }

    fn describe(&self, parent: INodeNo, name: &OsStr) -> String {
        format!("{}/{}", parent.0, name.to_string_lossy())
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
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_MAX_PAGES;
        let offered = config.capabilities() & wanted;
        if let Err(unsupported) = config.add_capabilities(offered) {
            tracing::debug!(?unsupported, "kernel refused fuse capabilities");
        }
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
                Err(FsError::NotFound { .. }) => {
                    reply.entry(&ttl, &negative_entry_attr(), fuser::Generation(0))
                }
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
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
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
        reply.error(self.refuse("setattr", format!("inode {}", ino.0)));
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
        reply.error(self.refuse("mkdir", self.describe(parent, name)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse("unlink", self.describe(parent, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse("rmdir", self.describe(parent, name)));
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
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse("rename", self.describe(parent, name)));
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
        self.spawn("open", move |fs| async move {
            let open_flags = if fs.options().immutable {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            match fs.open(ino.0, flags.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), open_flags),
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
                Ok(data) => reply.data(&data),
                Err(err) => reply.error(errno("read", &err)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(self.refuse("write", format!("inode {}", ino.0)));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered on the read path.
        reply.ok();
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
        let started = Instant::now();
        self.fs.release(fh.0);
        reply.ok();
        self.observe("release", started);
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
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(err) => reply.error(errno("opendir", &err)),
        }
        self.observe("opendir", started);
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
            match fs.readdir(fh.0, offset).await {
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
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    for entry in entries {
                        let full = reply.add(
                            entry.attr.ino,
                            entry.next_offset,
                            &entry.name,
                            &ttl,
                            &entry.attr,
                            GENERATION,
                        );
                        if full {
                            break;
                        }
                        // The kernel takes a reference for every entry but
                        // `.` and `..`.
                        if entry.name != "." && entry.name != ".." {
                            fs.remember_lookup(entry.attr.ino.0);
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
        // Objects carry no extended attributes.
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
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
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(self.refuse("create", self.describe(parent, name)));
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
