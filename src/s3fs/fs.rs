//! The S3 filesystem logic (inodes, directory listings, reads, writes), independent of
//! the kernel: the FUSE adapter calls it, tests drive it directly.
//!
//! Semantics (read path):
//! - the root inode is the bucket prefix; a name is a file when the object
//!   `prefix/name` exists, a directory when any key lives under `prefix/name/`;
//!   when both exist the directory wins (the file is hidden) so that a tree of
//!   keys always stays reachable;
//! - directories have no object of their own: their mtime is the mount time;
//! - inode numbers are never reused within one mount, so one generation number
//!   is enough; an inode is dropped once the kernel forgot it;
//! - attributes, entries and negative entries are cached for `metadata_ttl`
//!   (forever when `immutable`), and the kernel gets the same TTL;
//! - an open file is pinned to the ETag it had at open: a read after the object
//!   changed fails with EIO, never returns mixed bytes (see [`crate::s3fs::prefetch`]
//!   for the read path);
//! - the kernel keeps its page cache of a file across opens only while the
//!   ETag seen at open is the one the cached pages came from.
//!
//! Semantics (`readOnly: false`, see [`crate::s3fs::write`]): new files are
//! written sequentially and become objects at flush; files and directories
//! created here are *local* inodes (never expire, merged into listings) until
//! the store has them; existing objects are never modified (EPERM); unlink
//! deletes; mkdir makes a local directory, rmdir removes an empty one.
//! doc/SEMANTICS.md lists every operation and its errno.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use fuser::{FileAttr, FileType, Generation};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};

use crate::metrics::Metrics;
use crate::operation::StoreRequest;

mod readdir;
mod scan;
mod warm;

pub use warm::{Warmup, WarmupState, WarmupStatus};

use crate::s3fs::chunked::ChunkedBytes;
pub use crate::s3fs::error::FsError;
use crate::s3fs::handles::{
    DirHandle, Handle, HandleRecord, HandleSnapshot, HandleTable, ReadHandle, WriteHandle,
};
use crate::s3fs::inodes::{Inode, InodeRecord, InodeSnapshot, InodeTable};
pub use crate::s3fs::inodes::{NodeKind, ObjectStat, ROOT_INODE};
use crate::s3fs::journal::{Entry, Journal, JournaledTable, TableGuard, lock_table};
use crate::s3fs::keys::{MAX_NAME_LEN, SkippedKeys};
use crate::s3fs::prefetch::{FileReader, PrefetchBudget, RangeReader, ReadStats};
use crate::s3fs::store::Bucket;
use crate::s3fs::write::{Completion, ObjectWriter, WriteBudget};
pub use readdir::DirEntry;
use scan::DirectoryScan;

/// Inode numbers are never reused within one mount, so one generation suffices.
pub const GENERATION: Generation = Generation(1);
/// The block size reported in attributes and statfs.
const BLOCK_SIZE: u32 = 4096;
/// The TTL handed to the kernel for immutable datasets ("forever").
const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The format of [`FsSnapshot`] this build writes and reads; a snapshot of
/// another format is refused (the process that has it keeps serving).
pub const SNAPSHOT_FORMAT: u32 = 1;

/// What a process needs to serve a connection another one served: the node
/// ids and handles the kernel holds ([`S3Filesystem::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FsSnapshot {
    /// [`SNAPSHOT_FORMAT`] of the build that took it.
    pub format: u32,
    /// When the mount was made (directories' mtime).
    pub mounted_at: DateTime<Utc>,
    /// The inode table.
    pub inodes: InodeSnapshot,
    /// The handle table.
    pub handles: HandleSnapshot,
}

/// The journals of a filesystem's two tables (memfds), as the supervisor
/// holds them.
#[derive(Debug)]
pub struct FsJournals {
    /// The inode table's.
    pub inodes: std::os::fd::OwnedFd,
    /// The handle table's.
    pub handles: std::os::fd::OwnedFd,
}

/// Options of one S3 filesystem.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// The dataset name (metrics label).
    pub dataset: String,
    /// Refuse every modification (EROFS).
    pub read_only: bool,
    /// How long attributes, entries and negative entries are cached.
    pub metadata_ttl: Duration,
    /// How long a name that does not exist is remembered (zero: not at all).
    pub negative_ttl: Duration,
    /// Cache metadata without expiry (datasets that never change).
    pub immutable: bool,
    /// The owner and permission bits every file and directory shows.
    pub ownership: Ownership,
    /// The agent-wide memory budget for prefetched data.
    pub prefetch_budget: Arc<PrefetchBudget>,
    /// The agent-wide memory budget for data being written.
    pub write_budget: Arc<WriteBudget>,
    /// The node cache, and the bucket's name in it (none: not cached).
    pub cache: Option<crate::s3fs::node_cache::CacheScope>,
}

/// The owner and permission bits of every file and directory of a mount
/// (objects have none of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Owner of everything.
    pub uid: u32,
    /// Group of everything.
    pub gid: u32,
    /// Permission bits of files.
    pub file_mode: u16,
    /// Permission bits of directories.
    pub dir_mode: u16,
}

impl Ownership {
    /// root-owned; files `0444` and directories `0555` on a read-only
    /// mount, `0644` and `0755` on a read-write one.
    pub fn defaults(read_only: bool) -> Self {
        let (file_mode, dir_mode) = if read_only {
            (0o444, 0o555)
        } else {
            (0o644, 0o755)
        };
        Ownership {
            uid: 0,
            gid: 0,
            file_mode,
            dir_mode,
        }
    }
}

/// What [`S3Filesystem::open`] hands back.
#[derive(Debug)]
pub struct OpenedFile {
    /// The file handle.
    pub fh: u64,
    /// Whether the kernel may keep the pages it cached at an earlier open:
    /// true only when they came from the same ETag.
    pub keep_cache: bool,
    /// The whole object in the node cache, checked, when the caller asked
    /// for it: the kernel may read it directly (FUSE passthrough).
    pub backing: Option<Arc<std::fs::File>>,
    /// The version the handle is pinned to.
    pub stat: ObjectStat,
}

/// A file open for reading, as the FUSE adapter needs to know it.
#[derive(Debug, Clone)]
pub struct OpenedRead {
    /// The handle.
    pub fh: u64,
    /// The file's inode.
    pub ino: u64,
    /// The version the handle is pinned to.
    pub stat: ObjectStat,
    /// The backing id the kernel reads it through (passthrough), if any.
    pub backing: Option<u32>,
}

/// Numbers for statfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Total blocks of `block_size`.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks available to unprivileged users.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Block size.
    pub block_size: u32,
    /// Longest name.
    pub name_max: u32,
}

/// One mounted bucket.
#[derive(Debug)]
pub struct S3Filesystem {
    bucket: Bucket,
    options: FsOptions,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    mounted_at: DateTime<Utc>,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HandleTable>,
    reader: Arc<RangeReader>,
    scans: Mutex<HashMap<u64, DirectoryScan>>,
    skipped_keys: SkippedKeys,
    /// Requests answered so far (a connection whose count stands still
    /// while requests wait is stuck, not busy).
    answered: std::sync::atomic::AtomicU64,
    /// Whether the kernel reads node cache files itself (FUSE passthrough:
    /// granted at INIT, and no backing file refused for good since).
    passthrough: std::sync::atomic::AtomicBool,
}

impl S3Filesystem {
    /// A filesystem over `bucket`; network work runs on `runtime`.
    pub fn new(
        bucket: Bucket,
        options: FsOptions,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mounted_at = Utc::now();
        let root_key = bucket.root_path();
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT_INODE,
            Inode {
                parent: ROOT_INODE,
                name: String::new(),
                key: root_key,
                kind: NodeKind::Directory,
                stat: ObjectStat::directory(mounted_at),
                validated_at: Instant::now(),
                lookups: 1,
                page_cache_etag: None,
                local: false,
            },
        );
        let table = InodeTable {
            next_ino: ROOT_INODE + 1,
            inodes,
            children: HashMap::new(),
            negative: HashMap::new(),
            journal: None,
        };
        Self::with_tables(bucket, options, runtime, metrics, mounted_at, table, |_| {
            HandleTable::default()
        })
    }

    fn with_tables(
        bucket: Bucket,
        options: FsOptions,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        mounted_at: DateTime<Utc>,
        inodes: InodeTable,
        handles: impl FnOnce(&S3Filesystem) -> HandleTable,
    ) -> Self {
        let reader = Arc::new(RangeReader::new(
            Arc::clone(&bucket.store),
            Arc::clone(&metrics),
            options.dataset.clone(),
            options.cache.clone(),
        ));
        let filesystem = S3Filesystem {
            reader,
            bucket,
            options,
            runtime,
            metrics,
            mounted_at,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HandleTable::default()),
            scans: Mutex::new(HashMap::new()),
            skipped_keys: SkippedKeys::default(),
            answered: std::sync::atomic::AtomicU64::new(0),
            passthrough: std::sync::atomic::AtomicBool::new(false),
        };
        let restored = handles(&filesystem);
        *filesystem.handles() = restored;
        filesystem
    }

    /// Starts journaling both tables into new memfds (see
    /// [`crate::s3fs::journal`]) and returns them, for the supervisor to hold.
    pub fn start_journals(&self) -> std::io::Result<FsJournals> {
        let name = &self.options.dataset;
        let inodes = Journal::create(&format!("{name}/inodes"))?;
        let handles = Journal::create(&format!("{name}/handles"))?;
        let journals = FsJournals {
            inodes: inodes.fd().try_clone_to_owned()?,
            handles: handles.fd().try_clone_to_owned()?,
        };
        self.table().start_journal(inodes);
        self.handles().start_journal(handles);
        Ok(journals)
    }

    /// A filesystem that answers for every node id and handle that the
    /// process which wrote `journals` handed out (see [`Self::restore`]),
    /// and goes on journaling into them.
    pub fn resume(
        bucket: Bucket,
        options: FsOptions,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        journals: FsJournals,
    ) -> Result<Self, FsError> {
        let replay_error = |reason: String| FsError::Journal { reason };
        let inodes = Journal::open(journals.inodes).map_err(|e| replay_error(e.to_string()))?;
        let handles = Journal::open(journals.handles).map_err(|e| replay_error(e.to_string()))?;
        let (inode_entries, torn_inodes) = inodes
            .replay::<Entry<InodeRecord>>()
            .map_err(|e| replay_error(e.to_string()))?;
        let (handle_entries, torn_handles) = handles
            .replay::<Entry<HandleRecord>>()
            .map_err(|e| replay_error(e.to_string()))?;
        if torn_inodes + torn_handles > 0 {
            tracing::info!(
                dataset = options.dataset,
                lines = torn_inodes + torn_handles,
                "journal lines left out (a write cut short by the crash)"
            );
        }
        let inode_snapshot =
            InodeSnapshot::replay(inode_entries).map_err(|e| replay_error(e.to_string()))?;
        let handle_snapshot =
            HandleSnapshot::replay(handle_entries).map_err(|e| replay_error(e.to_string()))?;
        let mounted_at = inode_snapshot
            .inodes
            .iter()
            .find(|record| record.ino == ROOT_INODE)
            .map(|root| root.stat.last_modified)
            .ok_or_else(|| replay_error("no root inode".to_string()))?;
        let filesystem = Self::restore(
            bucket,
            options,
            runtime,
            metrics,
            FsSnapshot {
                format: SNAPSHOT_FORMAT,
                mounted_at,
                inodes: inode_snapshot,
                handles: handle_snapshot,
            },
        )?;
        filesystem.table().start_journal(inodes);
        filesystem.handles().start_journal(handles);
        Ok(filesystem)
    }

    /// The inode and handle tables as another process serving the same
    /// connection can load them ([`S3Filesystem::restore`]): the kernel
    /// names node ids and handles it learnt from this one.
    pub fn snapshot(&self) -> FsSnapshot {
        FsSnapshot {
            format: SNAPSHOT_FORMAT,
            mounted_at: self.mounted_at,
            inodes: self.table().snapshot(),
            handles: self.handles().snapshot(),
        }
    }

    /// A filesystem that answers for every node id and handle of
    /// `snapshot` as the one that took it did: files open for reading keep
    /// reading their pinned version, open directories list again from the
    /// offset the kernel asks for; a file that was being written has no
    /// object and its handle fails (EIO). Refuses a snapshot of another
    /// format.
    pub fn restore(
        bucket: Bucket,
        options: FsOptions,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
        snapshot: FsSnapshot,
    ) -> Result<Self, FsError> {
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(FsError::SnapshotFormat {
                found: snapshot.format,
                expected: SNAPSHOT_FORMAT,
            });
        }
        // The journal holds each object's last known stat: it serves until
        // its TTL runs out again, without a request to the store (a resumed
        // worker answers at once, even with the backend down).
        let inodes = InodeTable::restore(snapshot.inodes);
        let keys: HashMap<u64, ObjectPath> = inodes
            .inodes
            .iter()
            .map(|(&ino, inode)| (ino, inode.key.clone()))
            .collect();
        let handles = snapshot.handles;
        Ok(Self::with_tables(
            bucket,
            options,
            runtime,
            metrics,
            snapshot.mounted_at,
            inodes,
            |fs| {
                HandleTable::restore(handles, |record| match record {
                    HandleRecord::Directory { ino, .. } => Handle::Directory(Arc::new(DirHandle {
                        ino,
                        ..DirHandle::default()
                    })),
                    HandleRecord::Read {
                        key,
                        stat,
                        ino,
                        backing,
                        ..
                    } => {
                        let key = ObjectPath::parse(&key).unwrap_or_else(|_| ObjectPath::from(key));
                        Handle::Read(ReadHandle {
                            reader: Arc::new(FileReader::new(
                                key,
                                stat,
                                Arc::clone(&fs.reader),
                                Arc::clone(&fs.options.prefetch_budget),
                                fs.runtime.clone(),
                                None,
                            )),
                            ino,
                            backing,
                        })
                    }
                    HandleRecord::Write { ino, .. } => {
                        let key = keys.get(&ino).cloned().unwrap_or_default();
                        let writer = ObjectWriter::lost(
                            Arc::clone(&fs.bucket.store),
                            key,
                            ino,
                            Arc::clone(&fs.options.write_budget),
                        );
                        Handle::Write(Arc::new(WriteHandle {
                            ino,
                            writer: tokio::sync::Mutex::new(writer),
                        }))
                    }
                })
            },
        ))
    }

    /// Counts one answered request (the FUSE adapter calls this).
    pub fn note_answered(&self) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The runtime that runs network work.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The options this filesystem was built with.
    pub fn options(&self) -> &FsOptions {
        &self.options
    }

    /// The bucket (and prefix) this filesystem serves, e.g. for mountinfo.
    pub fn bucket_display(&self) -> &str {
        &self.bucket.display
    }

    /// How long the kernel may cache entries and attributes.
    pub fn kernel_ttl(&self) -> Duration {
        if self.options.immutable {
            IMMUTABLE_TTL
        } else {
            self.options.metadata_ttl
        }
    }

    /// How many inodes are in the table (root included), for tests and debugging.
    pub fn inode_count(&self) -> usize {
        self.table().inodes.len()
    }

    fn table(&self) -> TableGuard<'_, InodeTable> {
        lock_table(&self.inodes)
    }

    fn is_fresh(&self, validated_at: Instant) -> bool {
        self.options.immutable || validated_at.elapsed() < self.options.metadata_ttl
    }

    /// Whether a name found missing at `seen_missing_at` is still missing.
    fn is_fresh_negative(&self, seen_missing_at: Instant) -> bool {
        self.options.immutable || seen_missing_at.elapsed() < self.options.negative_ttl
    }

    /// How long the kernel may remember that a name does not exist; None
    /// when it must not (`--negative-ttl 0`).
    pub fn kernel_negative_ttl(&self) -> Option<Duration> {
        if self.options.immutable {
            Some(IMMUTABLE_TTL)
        } else {
            Some(self.options.negative_ttl).filter(|ttl| !ttl.is_zero())
        }
    }

    fn inode(&self, ino: u64) -> Result<Inode, FsError> {
        self.table()
            .inodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::UnknownInode(ino))
    }

    fn attr_of(&self, ino: u64, inode: &Inode) -> FileAttr {
        let mtime: SystemTime = inode.stat.last_modified.into();
        let owner = self.options.ownership;
        let (kind, perm, nlink) = match inode.kind {
            NodeKind::Directory => (FileType::Directory, owner.dir_mode, 2),
            NodeKind::File => (FileType::RegularFile, owner.file_mode, 1),
        };
        FileAttr {
            ino: fuser::INodeNo(ino),
            size: inode.stat.size,
            blocks: inode.stat.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    fn observe(&self, op: StoreRequest, ok: bool) {
        self.metrics
            .observe_s3_request(&self.options.dataset, op, ok);
    }

    /// HEAD `key`: `Ok(None)` when it does not exist.
    async fn head(&self, key: &ObjectPath) -> Result<Option<ObjectMeta>, FsError> {
        match self.bucket.store.head(key).await {
            Ok(meta) => {
                self.observe(StoreRequest::Head, true);
                Ok(Some(meta))
            }
            Err(object_store::Error::NotFound { .. }) => {
                // A missing key is an answer, not a failed request.
                self.observe(StoreRequest::Head, true);
                Ok(None)
            }
            Err(source) => {
                self.observe(StoreRequest::Head, false);
                Err(FsError::Store {
                    op: StoreRequest::Head,
                    key: key.to_string(),
                    source,
                })
            }
        }
    }

    /// Whether any key lives strictly below `prefix` (a one-page LIST of
    /// which only the first key is used).
    async fn has_keys_below(&self, prefix: &ObjectPath) -> Result<bool, FsError> {
        let depth = prefix.parts().count();
        let mut stream = self.bucket.store.list(Some(prefix));
        while let Some(item) = stream.next().await {
            match item {
                // Stores may return the prefix itself when it is an object.
                Ok(meta) if meta.location.parts().count() > depth => {
                    self.observe(StoreRequest::List, true);
                    return Ok(true);
                }
                Ok(_) => continue,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(source) => {
                    self.observe(StoreRequest::List, false);
                    return Err(FsError::Store {
                        op: StoreRequest::List,
                        key: format!("{prefix}/"),
                        source,
                    });
                }
            }
        }
        self.observe(StoreRequest::List, true);
        Ok(false)
    }

    fn validate_name(name: &OsStr) -> Result<&str, FsError> {
        let Some(text) = name.to_str() else {
            return Err(FsError::InvalidName(name.to_string_lossy().into_owned()));
        };
        if text.len() > MAX_NAME_LEN {
            return Err(FsError::NameTooLong(text.to_string()));
        }
        if text.is_empty() || text.contains('/') || text.contains('\0') {
            return Err(FsError::InvalidName(text.to_string()));
        }
        Ok(text)
    }

    fn child_key(parent: &ObjectPath, name: &str) -> Option<ObjectPath> {
        let joined = if parent.as_ref().is_empty() {
            name.to_string()
        } else {
            format!("{parent}/{name}")
        };
        ObjectPath::parse(joined).ok()
    }

    /// Resolves `name` in directory `parent`; on success the kernel holds one
    /// more reference to the returned inode.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let parent_inode = self.inode(parent)?;
        if parent_inode.kind != NodeKind::Directory {
            return Err(FsError::NotADirectory(parent_inode.key.to_string()));
        }
        let target = match name.to_str() {
            Some(".") => Some(parent),
            Some("..") => Some(parent_inode.parent),
            _ => None,
        };
        if let Some(ino) = target {
            return self.reference(ino);
        }
        let name = Self::validate_name(name)?;
        let slot = (parent, name.to_string());
        {
            // The reference is taken under the lock that found the entry: a
            // releasedir in between could drop an unreferenced inode.
            let mut table = self.table();
            if let Some(&ino) = table.children.get(&slot) {
                let fresh = table
                    .inodes
                    .get(&ino)
                    .is_some_and(|inode| inode.local || self.is_fresh(inode.validated_at));
                if fresh {
                    return self.take_reference(&mut table, ino);
                }
            } else if let Some(at) = table.negative.get(&slot) {
                if self.is_fresh_negative(*at) {
                    return Err(FsError::NotFound {
                        key: format!("{}/{name}", parent_inode.key),
                    });
                }
            }
        }
        let Some(key) = Self::child_key(&parent_inode.key, name) else {
            // No object can have this key: a missing name.
            return Err(FsError::NotFound {
                key: format!("{}/{name}", parent_inode.key),
            });
        };
        let (object, directory) = tokio::join!(self.head(&key), self.has_keys_below(&key));
        // A directory wins over an object with the same name, so that the keys
        // under it stay reachable; the object is hidden.
        let found = if directory? {
            Some((NodeKind::Directory, ObjectStat::directory(self.mounted_at)))
        } else {
            object?.map(|meta| (NodeKind::File, ObjectStat::from_meta(&meta)))
        };
        let mut table = self.table();
        match found {
            Some((kind, stat)) => {
                let ino = table.upsert(parent, name, key, kind, stat, false);
                self.take_reference(&mut table, ino)
            }
            None => {
                table.insert_negative(parent, name);
                Err(FsError::NotFound {
                    key: key.to_string(),
                })
            }
        }
    }

    /// Adds one kernel reference to `ino` and returns its attributes.
    fn reference(&self, ino: u64) -> Result<FileAttr, FsError> {
        self.take_reference(&mut self.table(), ino)
    }

    /// [`Self::reference`] under a lock the caller already holds.
    fn take_reference(&self, table: &mut InodeTable, ino: u64) -> Result<FileAttr, FsError> {
        table.mark(ino);
        let inode = table
            .inodes
            .get_mut(&ino)
            .ok_or(FsError::UnknownInode(ino))?;
        inode.lookups += 1;
        Ok(self.attr_of(ino, inode))
    }

    /// The kernel dropped `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        let mut table = self.table();
        if let Some(inode) = table.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(count);
            table.mark(ino);
            table.drop_if_unreferenced(ino);
        }
    }

    /// The attributes of `ino`, revalidated with a HEAD when the cache expired.
    pub async fn getattr(&self, ino: u64) -> Result<FileAttr, FsError> {
        let inode = self.inode(ino)?;
        if inode.kind == NodeKind::Directory || inode.local || self.is_fresh(inode.validated_at) {
            return Ok(self.attr_of(ino, &inode));
        }
        let meta = self
            .head(&inode.key)
            .await?
            .ok_or_else(|| FsError::NotFound {
                key: inode.key.to_string(),
            })?;
        let mut table = self.table();
        table.mark(ino);
        let inode = table
            .inodes
            .get_mut(&ino)
            .ok_or(FsError::UnknownInode(ino))?;
        inode.stat = ObjectStat::from_meta(&meta);
        inode.validated_at = Instant::now();
        Ok(self.attr_of(ino, inode))
    }

    fn handles(&self) -> TableGuard<'_, HandleTable> {
        lock_table(&self.handles)
    }

    /// How many files are open for writing through this mount.
    pub fn open_writers(&self) -> usize {
        self.handles().writers()
    }

    /// Opens directory `ino`; the listing is taken at the first read.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inode(ino)?;
        if inode.kind != NodeKind::Directory {
            return Err(FsError::NotADirectory(inode.key.to_string()));
        }
        let handle = DirHandle {
            ino,
            ..DirHandle::default()
        };
        Ok(self.handles().insert(Handle::Directory(Arc::new(handle))))
    }

    /// Closes a directory handle; inodes it created that the kernel never
    /// looked up are dropped.
    pub fn releasedir(&self, fh: u64) {
        let handle = self.handles().remove(fh);
        if let Some(Handle::Directory(handle)) = handle {
            let created =
                std::mem::take(&mut *handle.created.lock().unwrap_or_else(|p| p.into_inner()));
            let mut table = self.table();
            for ino in created {
                table.drop_if_unreferenced(ino);
            }
        }
    }

    /// Refuses a modification this filesystem does not do: EROFS on a
    /// read-only mount, otherwise EOPNOTSUPP (rename, links, xattrs...).
    pub fn refuse_modification(&self, op: &'static str, target: String) -> FsError {
        if self.options.read_only {
            FsError::ReadOnly { op, target }
        } else {
            FsError::NotSupported { op, target }
        }
    }

    /// Opens file `ino` for reading with the kernel's open `flags`; the handle
    /// is pinned to the object's ETag (from the cache when still fresh).
    /// With `want_backing`, a small object whole in the node cache comes
    /// with its cache file.
    pub async fn open(
        &self,
        ino: u64,
        flags: i32,
        want_backing: bool,
    ) -> Result<OpenedFile, FsError> {
        let inode = self.inode(ino)?;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            if self.options.read_only {
                return Err(self.refuse_modification("open for writing", inode.key.to_string()));
            }
            if inode.kind == NodeKind::Directory {
                return Err(FsError::IsADirectory(inode.key.to_string()));
            }
            return Err(FsError::Overwrite {
                key: inode.key.to_string(),
            });
        }
        if inode.kind != NodeKind::File {
            return Err(FsError::IsADirectory(inode.key.to_string()));
        }
        let inode = if inode.local {
            // Created here: readable once its object is complete.
            if !self.upload_settled(ino).await {
                return Err(FsError::BeingWritten(inode.key.to_string()));
            }
            self.inode(ino)?
        } else {
            inode
        };
        let stat = if self.is_fresh(inode.validated_at) {
            inode.stat.clone()
        } else {
            let meta = self
                .head(&inode.key)
                .await?
                .ok_or_else(|| FsError::NotFound {
                    key: inode.key.to_string(),
                })?;
            ObjectStat::from_meta(&meta)
        };
        let keep_cache = {
            let mut table = self.table();
            let changed = table
                .inodes
                .get(&ino)
                .is_some_and(|cached| cached.stat != stat);
            if changed {
                table.mark(ino);
            }
            match table.inodes.get_mut(&ino) {
                Some(cached) => {
                    if changed {
                        cached.stat = stat.clone();
                        cached.validated_at = Instant::now();
                    }
                    let keep = stat.etag.is_some() && cached.page_cache_etag == stat.etag;
                    cached.page_cache_etag = stat.etag.clone();
                    keep
                }
                None => false,
            }
        };
        let (fetched, checked) = match self.note_open(inode.parent, &inode.name) {
            Some(scan::Ahead::Fetched(object)) => (Some(object), None),
            Some(scan::Ahead::Cached(listed, file)) if listed == stat => (None, Some(file)),
            _ => (None, None),
        };
        // Bytes already fetched into memory are served from there.
        let backing = if !want_backing || fetched.is_some() {
            None
        } else if let Some(file) = checked {
            file.await
        } else if let Some(scope) = &self.options.cache {
            scope.whole_file(&inode.key, &stat).await
        } else {
            None
        };
        let pinned = stat.clone();
        let reader = FileReader::new(
            inode.key,
            stat,
            Arc::clone(&self.reader),
            Arc::clone(&self.options.prefetch_budget),
            self.runtime.clone(),
            fetched,
        );
        let fh = self.handles().insert_read(Arc::new(reader), ino);
        Ok(OpenedFile {
            fh,
            keep_cache,
            backing,
            stat: pinned,
        })
    }

    /// Whether this mount reads through the node cache.
    pub fn has_node_cache(&self) -> bool {
        self.options.cache.is_some()
    }

    /// Whether the kernel may be handed node cache files to read itself.
    pub fn passthrough(&self) -> bool {
        self.has_node_cache() && self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serves with FUSE passthrough or without (what INIT negotiated, or
    /// off for good after the cache's filesystem refused a backing file).
    pub fn set_passthrough(&self, enabled: bool) {
        self.passthrough
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// The open read handles, each with its inode (after a restore: the
    /// open files of an earlier process; an older journal names no inode,
    /// and its handles are matched to the file of their key).
    pub fn open_read_handles(&self) -> Vec<OpenedRead> {
        let readers = self.handles().readers();
        let table = self.table();
        readers
            .into_iter()
            .filter_map(|reader| {
                let ino = reader.ino.or_else(|| {
                    table
                        .inodes
                        .iter()
                        .find(|(_, inode)| inode.kind == NodeKind::File && inode.key == reader.key)
                        .map(|(ino, _)| *ino)
                })?;
                Some(OpenedRead {
                    fh: reader.fh,
                    ino,
                    stat: reader.stat,
                    backing: reader.backing,
                })
            })
            .collect()
    }

    /// Records (journaled, before the kernel hears of it) that the kernel
    /// reads handle `fh` through backing id `id`.
    pub fn note_passthrough(&self, fh: u64, id: u32) {
        self.handles().set_backing(fh, id);
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<FileReader>, FsError> {
        self.handles().reader(fh).ok_or(FsError::UnknownHandle(fh))
    }

    /// Reads `[offset, offset + size)` of open file `fh`, clipped to the size
    /// seen at open; empty at or after the end.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ChunkedBytes, FsError> {
        self.file_handle(fh)?.read(offset, size).await
    }

    /// The read-path counters of open file `fh`.
    pub fn read_stats(&self, fh: u64) -> Result<ReadStats, FsError> {
        Ok(self.file_handle(fh)?.stats())
    }

    /// Closes file handle `fh`; its prefetched parts are dropped.
    pub fn release(&self, fh: u64) {
        self.handles().remove(fh);
    }

    /// The writer behind handle `fh`, if it is a file being written.
    fn writer(&self, fh: u64) -> Option<Arc<WriteHandle>> {
        self.handles().writer(fh)
    }

    /// Whether `fh` is a file being written (its release completes it).
    pub fn is_writer(&self, fh: u64) -> bool {
        self.writer(fh).is_some()
    }

    /// What `name` in `parent` is now (cache, else the store), without a
    /// kernel reference; `None` when it does not exist.
    async fn existing(&self, parent: u64, name: &OsStr) -> Result<Option<(u64, Inode)>, FsError> {
        match self.lookup(parent, name).await {
            Ok(attr) => {
                let ino = attr.ino.0;
                let inode = self.inode(ino)?;
                self.forget(ino, 1);
                Ok(Some((ino, inode)))
            }
            Err(FsError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Checks a modification of `name` in `parent`: a writable mount, a
    /// directory parent, a valid name; returns the parent and the name.
    fn modification_target<'n>(
        &self,
        op: &'static str,
        parent: u64,
        name: &'n OsStr,
    ) -> Result<(Inode, &'n str, String), FsError> {
        let parent_inode = self.inode(parent)?;
        let target = format!("{}/{}", parent_inode.key, name.to_string_lossy());
        if self.options.read_only {
            return Err(self.refuse_modification(op, target));
        }
        if parent_inode.kind != NodeKind::Directory {
            return Err(FsError::NotADirectory(parent_inode.key.to_string()));
        }
        let text = Self::validate_name(name)?;
        Ok((parent_inode, text, target))
    }

    /// Creates file `name` in `parent`, open for sequential writing, for
    /// process `created_by` (None: not known); the object appears in the
    /// bucket when it is completed (see [`crate::s3fs::write`]). The kernel
    /// holds one reference to the new inode.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        created_by: Option<u32>,
    ) -> Result<(FileAttr, u64), FsError> {
        let (parent_inode, text, target) = self.modification_target("create", parent, name)?;
        if self.existing(parent, name).await?.is_some() {
            return Err(FsError::Exists(target));
        }
        let key = Self::child_key(&parent_inode.key, text)
            .ok_or_else(|| FsError::InvalidName(text.to_string()))?;
        let stat = ObjectStat {
            size: 0,
            last_modified: Utc::now(),
            etag: None,
        };
        let (ino, attr) = {
            let mut table = self.table();
            let ino = table.upsert(parent, text, key.clone(), NodeKind::File, stat, true);
            (ino, self.take_reference(&mut table, ino)?)
        };
        let writer = ObjectWriter::new(
            Arc::clone(&self.bucket.store),
            key,
            ino,
            created_by,
            Arc::clone(&self.options.write_budget),
        );
        let handle = WriteHandle {
            ino,
            writer: tokio::sync::Mutex::new(writer),
        };
        let fh = self.handles().insert(Handle::Write(Arc::new(handle)));
        Ok((attr, fh))
    }

    /// Writes `data` at `offset` of the new file behind `fh`: only at its
    /// current end (EINVAL elsewhere). Returns the bytes taken.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let handle = self.writer(fh).ok_or(FsError::UnknownHandle(fh))?;
        let mut writer = handle.writer.lock().await;
        let size = writer.write(offset, data).await?;
        if let Some(inode) = self.table().inodes.get_mut(&writer.ino) {
            inode.stat.size = size;
        }
        Ok(data.len() as u32)
    }

    /// A `close(2)` of a descriptor of `fh` by process `closed_by` (None: not
    /// known). For a file being written this completes the object when the
    /// creating process closes it after writing, so that `close(2)` reports a
    /// failed upload; otherwise it only waits for the parts in flight and the
    /// object is completed at release ([`crate::s3fs::write`] says why).
    /// Nothing for read handles.
    pub async fn flush(&self, fh: u64, closed_by: Option<u32>) -> Result<(), FsError> {
        let Some(handle) = self.writer(fh) else {
            return Ok(());
        };
        let mut writer = handle.writer.lock().await;
        if writer.completes_at_flush(closed_by) {
            self.complete(&mut writer).await
        } else {
            let drained = writer.drain().await;
            if drained.is_err() {
                self.forget_failed_file(writer.ino);
            }
            drained
        }
    }

    /// Completes the object of `writer` (idempotent once done) and records
    /// the outcome: the object's metadata, or, when it failed, no name.
    async fn complete(&self, writer: &mut ObjectWriter) -> Result<(), FsError> {
        let completion = writer.completion();
        let finished = writer.finish().await;
        match completion {
            None => {}
            Some(Completion::Put) => self.observe(StoreRequest::Put, finished.is_ok()),
            Some(Completion::Multipart { parts }) => {
                if finished.is_ok() {
                    for _ in 0..parts {
                        self.observe(StoreRequest::PutPart, true);
                    }
                }
                self.observe(StoreRequest::CompleteMultipart, finished.is_ok());
            }
        }
        match finished {
            // Unlinked while open: nothing was uploaded, the name is gone.
            Ok(None) => Ok(()),
            Ok(Some(stat)) => {
                let mut table = self.table();
                table.mark(writer.ino);
                if let Some(inode) = table.inodes.get_mut(&writer.ino) {
                    inode.stat = stat;
                    inode.validated_at = Instant::now();
                    inode.local = false;
                }
                Ok(())
            }
            Err(err) => {
                self.forget_failed_file(writer.ino);
                Err(err)
            }
        }
    }

    /// A file whose upload failed has no object: its name goes away.
    fn forget_failed_file(&self, ino: u64) {
        let mut table = self.table();
        if let Some(inode) = table.inodes.get(&ino).cloned() {
            if inode.local {
                table.insert_negative(inode.parent, &inode.name);
            }
        }
    }

    /// The last descriptor of the written file `fh` was closed: completes the
    /// object if no flush did (a file created and closed without a write
    /// becomes an empty object here). Errors can only be logged: the kernel
    /// does not wait for a release.
    pub async fn release_writer(&self, fh: u64) {
        let Some(handle) = self.writer(fh) else {
            return;
        };
        // Completed before the handle leaves the table, so that an open of
        // the file meanwhile waits for the outcome (see `open`).
        let mut locked = handle.writer.lock().await;
        if let Err(err) = self.complete(&mut locked).await {
            tracing::warn!(error = %err, "completing a written file at release");
        }
        drop(locked);
        self.handles().remove(fh);
    }

    /// The write handle of the file `ino`, if one is open.
    fn write_handle_of(&self, ino: u64) -> Option<Arc<WriteHandle>> {
        self.handles().writer_of(ino)
    }

    /// Waits for a completion of the file `ino` that is under way and tells
    /// whether the object now exists; false while it is still being written.
    async fn upload_settled(&self, ino: u64) -> bool {
        if let Some(handle) = self.write_handle_of(ino) {
            return handle.writer.lock().await.is_done();
        }
        // No writer (any more): the inode says what the outcome was.
        self.table()
            .inodes
            .get(&ino)
            .is_some_and(|inode| !inode.local)
    }

    /// Renames file `name` in `parent` to `new_name` in `new_parent`. A file
    /// still being written (nothing sent yet) just gets its new key; an
    /// object is copied on the server (CopyObject) and the original deleted,
    /// so the rename is not atomic. A directory is refused with EXDEV (`mv`
    /// then copies it); `no_replace` (RENAME_NOREPLACE) refuses an existing
    /// target with EEXIST.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let (_, _, target) = self.modification_target("rename", parent, name)?;
        let (new_parent_inode, new_text, new_target) =
            self.modification_target("rename", new_parent, new_name)?;
        let Some((ino, inode)) = self.existing(parent, name).await? else {
            return Err(FsError::NotFound { key: target });
        };
        if inode.kind == NodeKind::Directory {
            return Err(FsError::DirectoryRename(target));
        }
        let new_key = Self::child_key(&new_parent_inode.key, new_text)
            .ok_or_else(|| FsError::InvalidName(new_text.to_string()))?;
        if let Some((existing, existing_inode)) = self.existing(new_parent, new_name).await? {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists(new_target));
            }
            if existing_inode.kind == NodeKind::Directory {
                return Err(FsError::IsADirectory(new_target));
            }
            if existing_inode.local {
                return Err(FsError::BeingWritten(new_target));
            }
        }
        if inode.local && self.rekey_unsent(ino, &new_key).await? {
            self.table().rename(ino, new_parent, new_text, new_key);
            return Ok(());
        }
        let copied = self.bucket.store.copy(&inode.key, &new_key).await;
        self.observe(StoreRequest::Copy, copied.is_ok());
        copied.map_err(|source| FsError::Store {
            op: StoreRequest::Copy,
            key: inode.key.to_string(),
            source,
        })?;
        let deleted = self.bucket.store.delete(&inode.key).await;
        self.observe(StoreRequest::Delete, deleted.is_ok());
        if let Err(err) = deleted {
            // The copy is in place; the old name stays visible too.
            tracing::warn!(key = %inode.key, error = %err, "rename: delete of the original");
        }
        // A descriptor still open for writing appends under the new name.
        if let Some(handle) = self.write_handle_of(ino) {
            handle.writer.lock().await.moved_to(new_key.clone());
        }
        self.table().rename(ino, new_parent, new_text, new_key);
        Ok(())
    }

    /// Moves the file `ino`, still being written, to `key` when nothing of
    /// it was sent yet; false when it was completed (it is then renamed like
    /// any object); EBUSY while a multipart upload under the old key runs.
    async fn rekey_unsent(&self, ino: u64, key: &ObjectPath) -> Result<bool, FsError> {
        let Some(handle) = self.write_handle_of(ino) else {
            return Ok(false);
        };
        let mut writer = handle.writer.lock().await;
        if writer.is_done() {
            return Ok(false);
        }
        if writer.rekey(key.clone()) {
            Ok(true)
        } else {
            Err(FsError::BeingWritten(key.to_string()))
        }
    }

    /// Deletes the object `name` in `parent`.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (_, text, target) = self.modification_target("unlink", parent, name)?;
        let Some((ino, inode)) = self.existing(parent, name).await? else {
            return Err(FsError::NotFound { key: target });
        };
        if inode.kind == NodeKind::Directory {
            return Err(FsError::IsADirectory(target));
        }
        // A file still open for writing (git and mkstemp users unlink files
        // they hold open) never uploads again, whatever comes through its
        // descriptors; if it had been completed meanwhile (a release racing
        // this unlink), its object is deleted like any other.
        let sent_by_writer = match self.write_handle_of(ino) {
            Some(handle) => {
                let mut writer = handle.writer.lock().await;
                let done = writer.is_done();
                writer.discard().await;
                done
            }
            None => false,
        };
        let local_now = self.inode(ino).is_ok_and(|now| now.local);
        if local_now && !sent_by_writer {
            self.table().insert_negative(parent, text);
            return Ok(());
        }
        let deleted = self.bucket.store.delete(&inode.key).await;
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.observe(StoreRequest::Delete, true)
            }
            Err(source) => {
                self.observe(StoreRequest::Delete, false);
                return Err(FsError::Store {
                    op: StoreRequest::Delete,
                    key: inode.key.to_string(),
                    source,
                });
            }
        }
        self.table().insert_negative(parent, text);
        Ok(())
    }

    /// Makes directory `name` in `parent`. S3 has no directories: it lives in
    /// this mount until a file written below it makes it a key prefix. The
    /// kernel holds one reference to the new inode.
    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> Result<FileAttr, FsError> {
        let (parent_inode, text, target) = self.modification_target("mkdir", parent, name)?;
        if self.existing(parent, name).await?.is_some() {
            return Err(FsError::Exists(target));
        }
        let key = Self::child_key(&parent_inode.key, text)
            .ok_or_else(|| FsError::InvalidName(text.to_string()))?;
        let mut table = self.table();
        let stat = ObjectStat::directory(Utc::now());
        let ino = table.upsert(parent, text, key, NodeKind::Directory, stat, true);
        self.take_reference(&mut table, ino)
    }

    /// Removes the empty directory `name` in `parent` (ENOTEMPTY while any
    /// key lives below it or anything was created in it here).
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (_, text, target) = self.modification_target("rmdir", parent, name)?;
        let Some((ino, inode)) = self.existing(parent, name).await? else {
            return Err(FsError::NotFound { key: target });
        };
        if inode.kind != NodeKind::Directory {
            return Err(FsError::NotADirectory(target));
        }
        if self.has_keys_below(&inode.key).await? {
            return Err(FsError::NotEmpty(target));
        }
        let mut table = self.table();
        let local_children = table
            .children
            .iter()
            .any(|((p, _), child)| *p == ino && table.inodes.get(child).is_some_and(|c| c.local));
        if local_children {
            return Err(FsError::NotEmpty(target));
        }
        table.insert_negative(parent, text);
        Ok(())
    }

    /// Changes attributes of `ino`. Objects keep only what S3 keeps: times,
    /// owner and mode are accepted and ignored (an object's time is its
    /// upload; owner and mode are the dataset's, see [`Ownership`]), so that
    /// `tar`, `cp -a` and `rsync -a` work; the kernel (`default_permissions`)
    /// has already refused them to callers without the right. A size equal to
    /// the current one is a no-op; a different size fails with EPERM.
    pub async fn setattr(&self, ino: u64, size: Option<u64>) -> Result<FileAttr, FsError> {
        let inode = self.inode(ino)?;
        if self.options.read_only {
            return Err(self.refuse_modification("setattr", inode.key.to_string()));
        }
        if let Some(size) = size {
            if inode.kind == NodeKind::Directory {
                return Err(FsError::IsADirectory(inode.key.to_string()));
            }
            if size != inode.stat.size {
                return Err(FsError::Overwrite {
                    key: inode.key.to_string(),
                });
            }
        }
        self.getattr(ino).await
    }

    /// Proves the backend answers for this dataset: one LIST request of the
    /// prefix (its first page; the keys are not looked at, so a bucket's
    /// content can never fail it). Health probes call this instead of going
    /// through the mount.
    pub async fn probe_backend(&self) -> Result<(), FsError> {
        let prefix = self.bucket.root_path();
        let prefix = (!prefix.as_ref().is_empty()).then_some(&prefix);
        let first = self.bucket.store.list(prefix).next().await;
        let ok = !matches!(first, Some(Err(_)));
        self.observe(StoreRequest::List, ok);
        match first {
            Some(Err(source)) => Err(FsError::Store {
                op: StoreRequest::List,
                key: format!("{}/", self.bucket.root_path()),
                source,
            }),
            _ => Ok(()),
        }
    }

    /// Numbers for statfs: an object store has no real capacity, so large
    /// constants (like mountpoint-s3) keep `df` and space checks happy.
    pub fn statfs(&self) -> FsStats {
        let blocks = 1u64 << 40; // 4 PiB of 4 KiB blocks
        let files = 1u64 << 32;
        FsStats {
            blocks,
            blocks_free: blocks,
            blocks_available: blocks,
            files,
            files_free: files,
            block_size: BLOCK_SIZE,
            name_max: MAX_NAME_LEN as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use std::fmt;
    use std::sync::atomic::Ordering;

    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, PutPayload};

    use super::*;
    use crate::s3fs::prefetch::MAX_PART;
    use crate::s3fs::test_store::CountingStore;

    struct Setup {
        read_only: bool,
        ttl: Duration,
        immutable: bool,
        prefix: &'static str,
        prefetch_memory: u64,
        cache: Option<crate::s3fs::node_cache::CacheScope>,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                read_only: true,
                ttl: Duration::from_secs(60),
                immutable: false,
                prefix: "",
                prefetch_memory: 64 * 1024 * 1024,
                cache: None,
            }
        }
    }

    impl Setup {
        fn build(self, store: Arc<dyn ObjectStore>) -> S3Filesystem {
            S3Filesystem::new(
                Bucket {
                    store,
                    prefix: self.prefix.to_string(),
                    display: "test-bucket".to_string(),
                },
                self.options(),
                tokio::runtime::Handle::current(),
                Arc::new(Metrics::new()),
            )
        }

        /// What a new worker serves from `journals` (the old one is gone).
        fn resume(self, store: Arc<dyn ObjectStore>, journals: FsJournals) -> S3Filesystem {
            S3Filesystem::resume(
                Bucket {
                    store,
                    prefix: self.prefix.to_string(),
                    display: "test-bucket".to_string(),
                },
                self.options(),
                tokio::runtime::Handle::current(),
                Arc::new(Metrics::new()),
                journals,
            )
            .unwrap()
        }

        fn options(&self) -> FsOptions {
            FsOptions {
                dataset: "test".to_string(),
                read_only: self.read_only,
                metadata_ttl: self.ttl,
                negative_ttl: self.ttl,
                immutable: self.immutable,
                ownership: Ownership::defaults(self.read_only),
                prefetch_budget: PrefetchBudget::new(self.prefetch_memory),
                write_budget: WriteBudget::new(WriteBudget::DEFAULT_BYTES),
                cache: self.cache.clone(),
            }
        }
    }

    async fn put(store: &dyn ObjectStore, key: &str, data: impl Into<Bytes>) {
        store
            .put(
                &ObjectPath::parse(key).unwrap(),
                PutPayload::from(data.into()),
            )
            .await
            .expect("put test object");
    }

    /// Deterministic, position-dependent bytes (so misplaced ranges show).
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn sample_store() -> Arc<InMemory> {
        let store = Arc::new(InMemory::new());
        put(&*store, "a.txt", "hello").await;
        put(&*store, "empty", Bytes::new()).await;
        put(&*store, "dir/b.txt", "bee").await;
        put(&*store, "dir/sub/c.txt", "sea").await;
        put(&*store, "deep/x/y/z.bin", pattern(10)).await;
        put(&*store, "both", "hidden file").await;
        put(&*store, "both/inner", "inner").await;
        store
    }

    fn errno_of<T: fmt::Debug>(result: Result<T, FsError>) -> i32 {
        result.expect_err("operation should fail").errno()
    }

    async fn open_read_all(fs: &S3Filesystem, parent: u64, name: &str) -> Vec<u8> {
        let attr = fs.lookup(parent, OsStr::new(name)).await.expect("lookup");
        let fh = fs
            .open(attr.ino.0, libc::O_RDONLY, false)
            .await
            .expect("open")
            .fh;
        let data = fs.read(fh, 0, u32::MAX).await.expect("read");
        fs.release(fh);
        data.to_bytes().to_vec()
    }

    /// No limit on entries per readdir call.
    const ALL: usize = usize::MAX;

    fn names(entries: &[DirEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[tokio::test]
    async fn lookup_resolves_files_directories_and_missing_names() {
        let fs = Setup::default().build(sample_store().await);
        let file = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(file.kind, FileType::RegularFile);
        assert_eq!(file.size, 5);
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        assert_eq!(dir.kind, FileType::Directory);
        let sub = fs.lookup(dir.ino.0, OsStr::new("sub")).await.unwrap();
        assert_eq!(sub.kind, FileType::Directory);
        let c = fs.lookup(sub.ino.0, OsStr::new("c.txt")).await.unwrap();
        assert_eq!((c.kind, c.size), (FileType::RegularFile, 3));
        // Directories inferred from keys alone, several levels deep.
        let deep = fs.lookup(ROOT_INODE, OsStr::new("deep")).await.unwrap();
        let x = fs.lookup(deep.ino.0, OsStr::new("x")).await.unwrap();
        let y = fs.lookup(x.ino.0, OsStr::new("y")).await.unwrap();
        assert_eq!(y.kind, FileType::Directory);
        assert_eq!(open_read_all(&fs, y.ino.0, "z.bin").await, pattern(10));
        // A prefix of a name is not a directory.
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("di")).await),
            libc::ENOENT
        );
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("missing")).await),
            libc::ENOENT
        );
        assert_eq!(
            errno_of(fs.lookup(dir.ino.0, OsStr::new("a.txt")).await),
            libc::ENOENT
        );
        // Same name looked up twice keeps its inode number.
        let again = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(again.ino, file.ino);
        // Lookup below a file.
        assert_eq!(
            errno_of(fs.lookup(file.ino.0, OsStr::new("x")).await),
            libc::ENOTDIR
        );
    }

    #[tokio::test]
    async fn directory_wins_over_object_with_the_same_name() {
        let fs = Setup::default().build(sample_store().await);
        let both = fs.lookup(ROOT_INODE, OsStr::new("both")).await.unwrap();
        assert_eq!(both.kind, FileType::Directory);
        let fh = fs.opendir(ROOT_INODE).unwrap();
        let entries = fs.readdir(fh, 0, ALL).await.unwrap();
        let listed: Vec<_> = entries.iter().filter(|e| e.name == "both").collect();
        assert_eq!(listed.len(), 1, "one entry for both: {:?}", names(&entries));
        assert_eq!(listed[0].attr.kind, FileType::Directory);
        assert_eq!(listed[0].attr.ino, both.ino);
    }

    #[tokio::test]
    async fn names_are_validated() {
        let fs = Setup::default().build(sample_store().await);
        let long = "n".repeat(256);
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new(&long)).await),
            libc::ENAMETOOLONG
        );
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("dir/b.txt")).await),
            libc::EINVAL
        );
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("a\0b")).await),
            libc::EINVAL
        );
        let dot = fs.lookup(ROOT_INODE, OsStr::new(".")).await.unwrap();
        assert_eq!(dot.ino.0, ROOT_INODE);
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        let up = fs.lookup(dir.ino.0, OsStr::new("..")).await.unwrap();
        assert_eq!(up.ino.0, ROOT_INODE);
        assert_eq!(
            errno_of(fs.lookup(999, OsStr::new("x")).await),
            libc::ENOENT
        );
    }

    #[tokio::test]
    async fn positive_and_negative_entries_are_cached_for_the_ttl() {
        let store = CountingStore::new(sample_store().await);
        let fs = Setup::default().build(store.clone());
        assert_eq!(fs.kernel_ttl(), Duration::from_secs(60));
        fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("nope")).await),
            libc::ENOENT
        );
        let after_first = store.requests();
        assert!(
            after_first >= 4,
            "head and list per name, got {after_first}"
        );
        fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("nope")).await),
            libc::ENOENT
        );
        assert_eq!(
            store.requests(),
            after_first,
            "cache hits must not reach the store"
        );
        // A name created after the negative entry stays hidden until expiry.
        put(&*store, "nope", "now here").await;
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("nope")).await),
            libc::ENOENT
        );
    }

    #[tokio::test]
    async fn expired_entries_go_back_to_the_store() {
        let store = CountingStore::new(sample_store().await);
        let fs = Setup {
            ttl: Duration::ZERO,
            ..Setup::default()
        }
        .build(store.clone());
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("nope")).await),
            libc::ENOENT
        );
        let before = store.requests();
        put(&*store, "nope", "now here").await;
        let attr = fs.lookup(ROOT_INODE, OsStr::new("nope")).await.unwrap();
        assert!(store.requests() > before);
        assert_eq!(attr.size, 8);
        // getattr revalidates with a HEAD and sees the new size.
        put(&*store, "nope", "longer content").await;
        let before = store.heads.load(Ordering::SeqCst);
        let attr = fs.getattr(attr.ino.0).await.unwrap();
        assert_eq!(attr.size, 14);
        assert_eq!(store.heads.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn immutable_datasets_cache_forever() {
        let store = CountingStore::new(sample_store().await);
        let fs = Setup {
            ttl: Duration::ZERO,
            immutable: true,
            ..Setup::default()
        }
        .build(store.clone());
        assert!(fs.kernel_ttl() >= Duration::from_secs(24 * 3600));
        let attr = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        let before = store.requests();
        fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        fs.getattr(attr.ino.0).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert_eq!(store.requests(), before, "no revalidation when immutable");
        assert_eq!(&fs.read(fh, 0, 100).await.unwrap().to_bytes()[..], b"hello");
    }

    #[tokio::test]
    async fn attributes_follow_object_metadata() {
        let store = Arc::new(InMemory::new());
        put(&*store, "f", pattern(1025)).await;
        put(&*store, "d/g", "x").await;
        let meta = store.head(&ObjectPath::from("f")).await.unwrap();
        let fs = Setup::default().build(store.clone());
        let file = fs.lookup(ROOT_INODE, OsStr::new("f")).await.unwrap();
        assert_eq!(file.size, 1025);
        assert_eq!(file.blocks, 3);
        assert_eq!(file.perm, 0o444);
        assert_eq!(
            (file.nlink, file.uid, file.gid, file.blksize),
            (1, 0, 0, 4096)
        );
        assert_eq!(file.mtime, SystemTime::from(meta.last_modified));
        let dir = fs.lookup(ROOT_INODE, OsStr::new("d")).await.unwrap();
        assert_eq!(
            (dir.kind, dir.perm, dir.nlink),
            (FileType::Directory, 0o555, 2)
        );
        assert_eq!(dir.mtime, SystemTime::from(fs.mounted_at));
        let root = fs.getattr(ROOT_INODE).await.unwrap();
        assert_eq!((root.kind, root.perm), (FileType::Directory, 0o555));

        let writable = Setup {
            read_only: false,
            ..Setup::default()
        }
        .build(store);
        assert_eq!(
            writable
                .lookup(ROOT_INODE, OsStr::new("f"))
                .await
                .unwrap()
                .perm,
            0o644
        );
        assert_eq!(
            writable
                .lookup(ROOT_INODE, OsStr::new("d"))
                .await
                .unwrap()
                .perm,
            0o755
        );
        assert_eq!(fs.statfs().block_size, 4096);
        assert_eq!(fs.statfs().name_max, 255);
        assert!(fs.statfs().blocks_available > 1 << 30);
    }

    #[tokio::test]
    async fn readdir_lists_directories_and_files_and_skips_markers() {
        let store = sample_store().await;
        // A directory marker object: its key is the prefix itself.
        put(&*store, "dir/", Bytes::new()).await;
        let fs = Setup::default().build(store);
        let fh = fs.opendir(ROOT_INODE).unwrap();
        let entries = fs.readdir(fh, 0, ALL).await.unwrap();
        assert_eq!(
            names(&entries),
            [".", "..", "a.txt", "both", "deep", "dir", "empty"]
        );
        let offsets: Vec<u64> = entries.iter().map(|e| e.next_offset).collect();
        assert_eq!(offsets, [1, 2, 3, 4, 5, 6, 7]);
        let listed_dir = entries.iter().find(|e| e.name == "dir").unwrap();
        assert_eq!(listed_dir.attr.kind, FileType::Directory);
        // The kernel looks a name up before opening it.
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        assert_eq!(dir.ino, listed_dir.attr.ino);
        fs.releasedir(fh);

        let fh = fs.opendir(dir.ino.0).unwrap();
        let entries = fs.readdir(fh, 0, ALL).await.unwrap();
        assert_eq!(names(&entries), [".", "..", "b.txt", "sub"]);
        assert_eq!(entries[1].attr.ino.0, ROOT_INODE);
        // The listed inode is the one lookup returns.
        let b = fs.lookup(dir.ino.0, OsStr::new("b.txt")).await.unwrap();
        assert_eq!(entries[2].attr.ino, b.ino);
        fs.releasedir(fh);
        assert_eq!(errno_of(fs.opendir(b.ino.0)), libc::ENOTDIR);
        assert_eq!(errno_of(fs.readdir(12345, 0, ALL).await), libc::EBADF);
    }

    #[tokio::test]
    async fn listing_ten_thousand_keys_costs_only_the_listing() {
        let inner = Arc::new(InMemory::new());
        for i in 0..10_000 {
            put(&*inner, &format!("k/f{i:05}"), "x").await;
        }
        let store = CountingStore::new(inner);
        let fs = Setup::default().build(store.clone());
        let dir = fs.lookup(ROOT_INODE, OsStr::new("k")).await.unwrap();
        let before = store.requests();
        // What `ls -l` does: READDIRPLUS in kernel-sized batches, then the
        // kernel's own stat (getattr) and lookups of every name.
        let fh = fs.opendir(dir.ino.0).unwrap();
        let mut offset = 0;
        let mut listed = Vec::new();
        loop {
            let batch = fs.readdirplus(fh, offset, 100).await.unwrap();
            let Some(last) = batch.last() else { break };
            offset = last.next_offset;
            listed.extend(
                batch
                    .into_iter()
                    .filter(|e| e.name != "." && e.name != ".."),
            );
        }
        assert_eq!(listed.len(), 10_000);
        for entry in &listed {
            assert_eq!(fs.getattr(entry.attr.ino.0).await.unwrap().size, 1);
            let again = fs.lookup(dir.ino.0, OsStr::new(&entry.name)).await.unwrap();
            assert_eq!(again.ino, entry.attr.ino);
        }
        fs.releasedir(fh);
        assert_eq!(
            store.requests() - before,
            1,
            "one (paginated) LIST, no HEAD or GET per entry"
        );
    }

    #[tokio::test]
    async fn readdir_offsets_are_stable_over_a_large_listing() {
        let store = Arc::new(InMemory::new());
        for i in 0..1500 {
            put(&*store, &format!("big/key-{i:05}"), "x").await;
        }
        let fs = Setup::default().build(store.clone());
        let big = fs.lookup(ROOT_INODE, OsStr::new("big")).await.unwrap();
        let fh = fs.opendir(big.ino.0).unwrap();
        let all = fs.readdir(fh, 0, ALL).await.unwrap();
        assert_eq!(all.len(), 1502);
        assert_eq!(all[2].name, "key-00000");
        assert_eq!(all[1501].name, "key-01499");
        // New keys do not shift a listing in progress.
        put(&*store, "big/key-00000a", "x").await;
        let rest = fs.readdir(fh, 700, ALL).await.unwrap();
        assert_eq!(rest.len(), 802);
        assert_eq!(rest[0].name, all[700].name);
        assert_eq!(rest[0].attr.ino, all[700].attr.ino);
        assert_eq!(rest[0].next_offset, 701);
        assert!(fs.readdir(fh, 1502, ALL).await.unwrap().is_empty());
        // Rewinding (offset 0) takes a new listing.
        assert_eq!(fs.readdir(fh, 0, ALL).await.unwrap().len(), 1503);
        // Entries the kernel never looked up go away with the handle.
        let inodes_open = fs.inode_count();
        fs.releasedir(fh);
        assert_eq!(fs.inode_count(), inodes_open - 1501);
    }

    #[tokio::test]
    async fn forget_drops_inodes_the_kernel_released() {
        let fs = Setup::default().build(sample_store().await);
        let base = fs.inode_count();
        let a = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(fs.inode_count(), base + 1);
        fs.forget(a.ino.0, 1);
        assert_eq!(fs.inode_count(), base + 1, "one reference left");
        assert_eq!(fs.getattr(a.ino.0).await.unwrap().ino, a.ino);
        fs.forget(a.ino.0, 1);
        assert_eq!(fs.inode_count(), base);
        assert_eq!(errno_of(fs.getattr(a.ino.0).await), libc::ENOENT);
        fs.forget(ROOT_INODE, 10);
        assert!(
            fs.getattr(ROOT_INODE).await.is_ok(),
            "the root is never dropped"
        );

        // readdirplus entries carry a reference and outlive the handle; the
        // ones a reply could not hold are forgotten by the caller.
        let fh = fs.opendir(ROOT_INODE).unwrap();
        let entries = fs.readdirplus(fh, 0, ALL).await.unwrap();
        assert_eq!(
            names(&entries),
            [".", "..", "a.txt", "both", "deep", "dir", "empty"]
        );
        for entry in &entries[2..] {
            if entry.name != "empty" {
                fs.forget(entry.attr.ino.0, 1);
            }
        }
        fs.releasedir(fh);
        assert_eq!(fs.inode_count(), base + 1);
        let empty = &entries[6];
        assert_eq!(fs.getattr(empty.attr.ino.0).await.unwrap().size, 0);
        fs.forget(empty.attr.ino.0, 1);
        assert_eq!(fs.inode_count(), base);
        assert!(fs.getattr(ROOT_INODE).await.is_ok());
    }

    #[tokio::test]
    async fn readdir_returns_at_most_the_requested_entries() {
        let fs = Setup::default().build(sample_store().await);
        let fh = fs.opendir(ROOT_INODE).unwrap();
        let first = fs.readdir(fh, 0, 1).await.unwrap();
        assert_eq!(names(&first), ["."]);
        let next = fs.readdir(fh, first[0].next_offset, 3).await.unwrap();
        assert_eq!(names(&next), ["..", "a.txt", "both"]);
        let rest = fs.readdir(fh, next[2].next_offset, 100).await.unwrap();
        assert_eq!(names(&rest), ["deep", "dir", "empty"]);
        assert!(fs.readdir(fh, 0, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reads_are_ranged_and_clipped_at_the_end() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let content = pattern(10_000);
        put(&*store, "data", content.clone()).await;
        put(&*store, "zero", Bytes::new()).await;
        put(&*store, "one", vec![42u8]).await;
        let fs = Setup::default().build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("data")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert_eq!(fs.read(fh, 0, 4096).await.unwrap(), content[..4096]);
        assert_eq!(fs.read(fh, 5000, 1000).await.unwrap(), content[5000..6000]);
        assert_eq!(fs.read(fh, 9000, 4096).await.unwrap(), content[9000..]);
        let gets = store.gets.load(Ordering::SeqCst);
        assert!(fs.read(fh, 10_000, 4096).await.unwrap().is_empty());
        assert!(fs.read(fh, 20_000, 4096).await.unwrap().is_empty());
        assert!(fs.read(fh, 10, 0).await.unwrap().is_empty());
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            gets,
            "no GET at or past the end"
        );
        fs.release(fh);
        assert_eq!(errno_of(fs.read(fh, 0, 1).await), libc::EBADF);
        assert_eq!(open_read_all(&fs, ROOT_INODE, "zero").await, b"");
        assert_eq!(open_read_all(&fs, ROOT_INODE, "one").await, [42]);
        let one = fs.lookup(ROOT_INODE, OsStr::new("one")).await.unwrap();
        let fh = fs.open(one.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert!(fs.read(fh, 1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_object_replaced_after_open_gives_eio() {
        let store = Arc::new(InMemory::new());
        let first = pattern(3 * MIB as usize);
        put(&*store, "v", first.clone()).await;
        let fs = Setup::default().build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("v")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert_eq!(fs.read(fh, 0, 7).await.unwrap(), first[..7]);
        // Same size, different content: only the ETag tells them apart.
        let mut second = first.clone();
        second.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        put(&*store, "v", second).await;
        // Bytes already fetched for this handle are the opened version's...
        assert_eq!(fs.read(fh, 7, 100).await.unwrap(), first[7..107]);
        // ...anything fetched from now on fails, sequential or not.
        assert_eq!(errno_of(fs.read(fh, 2 * MIB, 4096).await), libc::EIO);
        assert_eq!(errno_of(fs.read(fh, 3 * MIB - 10, 10).await), libc::EIO);
        let fresh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        // The cached metadata is still fresh: the new handle is pinned to the
        // old ETag too, and fails rather than mixing versions.
        assert_eq!(errno_of(fs.read(fresh, 0, 4096).await), libc::EIO);
    }

    #[tokio::test]
    async fn the_page_cache_is_kept_only_for_the_same_etag() {
        let store = Arc::new(InMemory::new());
        put(&*store, "f", "one").await;
        let fs = Setup {
            ttl: Duration::ZERO,
            ..Setup::default()
        }
        .build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("f")).await.unwrap();
        let first = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap();
        assert!(!first.keep_cache, "nothing cached at the first open");
        let second = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap();
        assert!(second.keep_cache, "same ETag: the cached pages are valid");
        put(&*store, "f", "two").await;
        let third = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap();
        assert!(
            !third.keep_cache,
            "new ETag: the kernel must drop its pages"
        );
        assert_eq!(
            &fs.read(third.fh, 0, 10).await.unwrap().to_bytes()[..],
            b"two"
        );
    }

    const MIB: u64 = 1024 * 1024;

    /// Reads `len` bytes of `fh` from `start` in `chunk`-sized reads.
    async fn read_range(fs: &S3Filesystem, fh: u64, start: u64, len: u64, chunk: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = start;
        while offset < start + len {
            let want = u64::from(chunk).min(start + len - offset) as u32;
            let data = fs.read(fh, offset, want).await.expect("read");
            if data.is_empty() {
                break;
            }
            offset += data.len() as u64;
            out.extend_from_slice(&data.to_bytes());
        }
        out
    }

    #[tokio::test]
    async fn sequential_reads_prefetch_a_growing_window() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let size = 40 * MIB + 12_345;
        let content = pattern(size as usize);
        put(&*store, "big", content.clone()).await;
        let budget_bytes = 64 * MIB;
        let fs = Setup {
            prefetch_memory: budget_bytes,
            ..Setup::default()
        }
        .build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("big")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        // 100_000 is no divisor of any part size: reads straddle parts.
        let data = read_range(&fs, fh, 0, size, 100_000).await;
        assert_eq!(data.len(), content.len());
        assert!(data == content, "sequential read differs from the object");
        let stats = fs.read_stats(fh).unwrap();
        let reads = size.div_ceil(100_000);
        assert_eq!(stats.direct_reads, 0, "{stats:?}");
        assert_eq!(stats.window_reads, reads, "{stats:?}");
        // 1 + 2 + 4 MiB, then 4 MiB parts: about a dozen GETs for 40 MiB.
        let gets = store.gets.load(Ordering::SeqCst) as u64;
        assert_eq!(gets, stats.parts_started);
        assert!(
            (10..=16).contains(&gets),
            "{gets} GETs for {size} bytes: the window did not grow to {MAX_PART} parts"
        );
        let budget = &fs.options().prefetch_budget;
        assert!(budget.in_use() > 0, "the window holds budget while open");
        fs.release(fh);
        assert_eq!(budget.in_use(), 0, "release gives the budget back");
    }

    #[tokio::test]
    async fn random_reads_fetch_exactly_what_they_ask() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let size = 64 * MIB;
        let content = pattern(size as usize);
        put(&*store, "big", content.clone()).await;
        let fs = Setup::default().build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("big")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        // Far apart, out of order (never within the sequential slack).
        let offsets = [37, 5, 50, 20, 62, 12, 44, 28].map(|mib| mib * MIB + 4096);
        for offset in offsets {
            let data = fs.read(fh, offset, MIB as u32).await.unwrap();
            let at = offset as usize;
            assert!(
                data == content[at..at + MIB as usize],
                "random read at {offset}"
            );
        }
        let stats = fs.read_stats(fh).unwrap();
        assert_eq!(stats.direct_reads, offsets.len() as u64, "{stats:?}");
        assert_eq!(stats.parts_started, 0, "random reads must not prefetch");
        assert_eq!(store.gets.load(Ordering::SeqCst), offsets.len());
        assert_eq!(fs.options().prefetch_budget.in_use(), 0);
        // Reading on from the last random read turns sequential again.
        let last = offsets[offsets.len() - 1] + MIB;
        let data = read_range(&fs, fh, last, 3 * MIB, 128 * 1024).await;
        assert!(data == content[last as usize..(last + 3 * MIB) as usize]);
        assert!(fs.read_stats(fh).unwrap().parts_started > 0);
    }

    #[tokio::test]
    async fn forward_seeks_within_the_window_reuse_it() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let content = pattern(8 * MIB as usize);
        put(&*store, "f", content.clone()).await;
        let fs = Setup::default().build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("f")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert!(fs.read(fh, 0, 4096).await.unwrap() == content[..4096]);
        let gets = store.gets.load(Ordering::SeqCst);
        // Inside the first window: no new GET for the bytes themselves.
        let at = 700 * 1024;
        assert!(fs.read(fh, at, 4096).await.unwrap() == content[at as usize..at as usize + 4096]);
        let stats = fs.read_stats(fh).unwrap();
        assert_eq!((stats.window_reads, stats.direct_reads), (2, 0));
        assert!(store.gets.load(Ordering::SeqCst) >= gets);
        // Concurrent readers of one handle (the kernel's async readahead).
        let chunks: Vec<u64> = (0..32).map(|i| MIB + i * 128 * 1024).collect();
        let reads = futures::future::join_all(
            chunks
                .iter()
                .rev()
                .map(|&offset| fs.read(fh, offset, 128 * 1024)),
        )
        .await;
        for (offset, data) in chunks.iter().rev().zip(reads) {
            let at = *offset as usize;
            assert!(
                data.unwrap() == content[at..at + 128 * 1024],
                "chunk at {offset}"
            );
        }
    }

    /// A store holding `d/f00`, `d/f01`... (`count` files), file `i` holding
    /// `pattern(base + i)`.
    async fn numbered_files(count: usize, base: usize) -> Arc<CountingStore> {
        let inner = Arc::new(InMemory::new());
        for i in 0..count {
            put(&*inner, &format!("d/f{i:02}"), pattern(base + i)).await;
        }
        CountingStore::new(inner)
    }

    /// A filesystem over `store` with a node cache of 64 MiB in a fresh
    /// directory (returned last, so that it outlives the cache).
    fn with_node_cache(
        store: Arc<CountingStore>,
    ) -> (
        S3Filesystem,
        Arc<crate::s3fs::node_cache::NodeCache>,
        tempfile::TempDir,
    ) {
        use crate::s3fs::node_cache::{CacheScope, NodeCache};
        let cache_dir = tempfile::tempdir().unwrap();
        let cache =
            NodeCache::open_indexed(cache_dir.path(), 64 << 20, Arc::new(Metrics::new())).unwrap();
        let fs = Setup {
            cache: Some(CacheScope {
                cache: Arc::clone(&cache),
                origin: "test".to_string(),
            }),
            ..Setup::default()
        }
        .build(store);
        (fs, cache, cache_dir)
    }

    #[tokio::test]
    async fn files_whole_in_the_node_cache_are_checked_ahead_and_handed_over_for_passthrough() {
        let store = numbered_files(12, 2000).await;
        let (fs, cache, _cache_dir) = with_node_cache(store.clone());
        // As the FUSE adapter sets it when the kernel grants passthrough.
        fs.set_passthrough(true);
        let dir = fs.lookup(ROOT_INODE, OsStr::new("d")).await.unwrap();
        let epoch = |want_backing: bool| {
            let fs = &fs;
            async move {
                let dh = fs.opendir(dir.ino.0).unwrap();
                let listed = fs.readdirplus(dh, 0, ALL).await.unwrap();
                fs.releasedir(dh);
                let mut backings = Vec::new();
                for (i, entry) in listed
                    .iter()
                    .filter(|e| e.name.starts_with('f'))
                    .enumerate()
                {
                    let opened = fs
                        .open(entry.attr.ino.0, libc::O_RDONLY, want_backing)
                        .await
                        .unwrap();
                    if !want_backing {
                        let data = fs.read(opened.fh, 0, 1 << 20).await.unwrap();
                        assert!(data == pattern(2000 + i)[..], "{}", entry.name);
                    }
                    backings.push(opened.backing);
                    fs.release(opened.fh);
                }
                backings
            }
        };
        // Epoch 1 reads through FUSE and fills the cache.
        epoch(false).await;
        for _ in 0..500 {
            if cache.size() >= 12 * 4096 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Epoch 2: every file comes with its cache file, checked (most of
        // them ahead of their open), and nothing is fetched.
        let gets_before = store.gets.load(Ordering::SeqCst);
        let backings = epoch(true).await;
        assert_eq!(store.gets.load(Ordering::SeqCst), gets_before, "no GET");
        for (i, backing) in backings.into_iter().enumerate() {
            let file = backing.unwrap_or_else(|| panic!("f{i:02} has no cache file"));
            let mut file = &*file;
            let mut bytes = Vec::new();
            std::io::Seek::rewind(&mut file).unwrap();
            std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
            assert!(bytes == pattern(2000 + i), "cache file of f{i:02}");
        }
    }

    #[tokio::test]
    async fn a_warm_up_fetches_8_objects_at_a_time() {
        let store = numbered_files(20, 3000).await;
        *store.get_delay.lock().unwrap() = Some(Duration::from_millis(50));
        let (fs, _cache, _cache_dir) = with_node_cache(store.clone());
        let fs = Arc::new(fs);
        let warmup = fs.warm(Vec::new());
        for _ in 0..500 {
            if !warmup.status().running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = warmup.status();
        assert_eq!(status.state, WarmupState::Done, "{status:?}");
        assert_eq!(status.files_done, 20);
        // As the README and the API say: 8 at a time, never more.
        assert_eq!(store.most_gets_in_flight.load(Ordering::SeqCst), 8);
        assert_eq!(warm::WARM_PARALLELISM, 8);
    }

    #[tokio::test]
    async fn a_directory_read_in_listing_order_fetches_the_next_files_ahead() {
        let store = numbered_files(20, 1000).await;
        let fs = Setup::default().build(store.clone());
        let dir = fs.lookup(ROOT_INODE, OsStr::new("d")).await.unwrap();
        let dh = fs.opendir(dir.ino.0).unwrap();
        let listed = fs.readdirplus(dh, 0, ALL).await.unwrap();
        fs.releasedir(dh);
        let files: Vec<_> = listed.iter().filter(|e| e.name.starts_with('f')).collect();
        let gets_before = store.gets.load(Ordering::SeqCst);
        let mut served_ahead = 0;
        for (i, entry) in files.iter().enumerate() {
            let fh = fs
                .open(entry.attr.ino.0, libc::O_RDONLY, false)
                .await
                .unwrap()
                .fh;
            let data = fs.read(fh, 0, 1 << 20).await.unwrap();
            assert!(data == pattern(1000 + i)[..], "content of {}", entry.name);
            if fs.read_stats(fh).unwrap().parts_started == 0 {
                served_ahead += 1;
            }
            fs.release(fh);
        }
        // The first two opens establish the order; the rest were fetched ahead,
        // each object exactly once.
        assert_eq!(served_ahead, 18);
        assert_eq!(store.gets.load(Ordering::SeqCst) - gets_before, 20);

        // Out of order: nothing is fetched ahead.
        let gets_before = store.gets.load(Ordering::SeqCst);
        let dh = fs.opendir(dir.ino.0).unwrap();
        fs.readdirplus(dh, 0, ALL).await.unwrap();
        fs.releasedir(dh);
        for entry in files.iter().rev().step_by(3) {
            let fh = fs
                .open(entry.attr.ino.0, libc::O_RDONLY, false)
                .await
                .unwrap()
                .fh;
            fs.read(fh, 0, 1 << 20).await.unwrap();
            fs.release(fh);
        }
        assert_eq!(
            store.gets.load(Ordering::SeqCst) - gets_before,
            files.iter().rev().step_by(3).count()
        );
        assert_eq!(fs.options().prefetch_budget.in_use(), 0);
    }

    #[tokio::test]
    async fn an_exhausted_budget_still_serves_every_read() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let size = 5 * MIB + 3;
        let content = pattern(size as usize);
        put(&*store, "f", content.clone()).await;
        let fs = Setup {
            prefetch_memory: 0,
            ..Setup::default()
        }
        .build(store.clone());
        let attr = fs.lookup(ROOT_INODE, OsStr::new("f")).await.unwrap();
        let fh = fs.open(attr.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        let data = read_range(&fs, fh, 0, size, 256 * 1024).await;
        assert!(data == content);
        // Nothing ahead: one GET per read, each exactly the read.
        assert_eq!(
            store.gets.load(Ordering::SeqCst) as u64,
            size.div_ceil(256 * 1024)
        );
    }

    fn permission_denied() -> object_store::Error {
        object_store::Error::PermissionDenied {
            path: "x".to_string(),
            source: "access denied".into(),
        }
    }

    fn server_error() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "503 slow down".into(),
        }
    }

    #[tokio::test]
    async fn store_failures_map_to_errnos() {
        let store = CountingStore::new(sample_store().await);
        let fs = Setup {
            ttl: Duration::ZERO,
            ..Setup::default()
        }
        .build(store.clone());
        let file = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        let fh = fs.open(file.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        let dir_fh = fs.opendir(ROOT_INODE).unwrap();

        store.fail_with(Some(permission_denied));
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("dir")).await),
            libc::EACCES
        );
        assert_eq!(errno_of(fs.getattr(file.ino.0).await), libc::EACCES);
        assert_eq!(errno_of(fs.read(fh, 0, 5).await), libc::EACCES);

        store.fail_with(Some(server_error));
        let err = fs.read(fh, 0, 5).await.unwrap_err();
        assert_eq!(err.errno(), libc::EIO);
        assert!(!err.is_expected());
        assert!(err.to_string().starts_with("get a.txt: "), "{err}");
        assert_eq!(errno_of(fs.readdir(dir_fh, 0, ALL).await), libc::EIO);
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("other")).await),
            libc::EIO
        );
        // A failed lookup is not cached as a negative entry.
        store.fail_with(None);
        assert!(fs.lookup(ROOT_INODE, OsStr::new("dir")).await.is_ok());
        assert_eq!(&fs.read(fh, 0, 5).await.unwrap().to_bytes()[..], b"hello");
        assert_eq!(fs.readdir(dir_fh, 0, ALL).await.unwrap().len(), 7);
    }

    #[tokio::test]
    async fn keys_with_special_characters_keep_their_names() {
        let store = Arc::new(InMemory::new());
        put(&*store, "p#q [x]/#hash [1]%.txt", "special").await;
        put(&*store, "p#q [x]/ünï/x", "x").await;
        let fs = Setup {
            prefix: "p#q [x]/",
            ..Setup::default()
        }
        .build(store);
        let fh = fs.opendir(ROOT_INODE).unwrap();
        let entries = fs.readdir(fh, 0, ALL).await.unwrap();
        assert_eq!(names(&entries), [".", "..", "#hash [1]%.txt", "ünï"]);
        assert_eq!(
            open_read_all(&fs, ROOT_INODE, "#hash [1]%.txt").await,
            b"special"
        );
        let dir = fs.lookup(ROOT_INODE, OsStr::new("ünï")).await.unwrap();
        assert_eq!(dir.kind, FileType::Directory);
    }

    #[tokio::test]
    async fn modifications_are_refused() {
        let fs = Setup::default().build(sample_store().await);
        let file = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(
            errno_of(fs.open(file.ino.0, libc::O_WRONLY, false).await),
            libc::EROFS
        );
        assert_eq!(
            errno_of(fs.open(file.ino.0, libc::O_RDWR, false).await),
            libc::EROFS
        );
        assert_eq!(
            errno_of(
                fs.open(file.ino.0, libc::O_RDONLY | libc::O_TRUNC, false)
                    .await
            ),
            libc::EROFS
        );
        assert_eq!(
            fs.refuse_modification("mkdir", "x".into()).errno(),
            libc::EROFS
        );
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        assert_eq!(
            errno_of(fs.open(dir.ino.0, libc::O_RDONLY, false).await),
            libc::EISDIR
        );

        let writable = Setup {
            read_only: false,
            ..Setup::default()
        }
        .build(sample_store().await);
        assert_eq!(
            writable.refuse_modification("rename", "x".into()).errno(),
            libc::EOPNOTSUPP
        );
    }

    fn writable() -> Setup {
        Setup {
            read_only: false,
            ..Setup::default()
        }
    }

    #[tokio::test]
    async fn read_only_mounts_refuse_every_write_operation() {
        let fs = Setup::default().build(sample_store().await);
        let name = OsStr::new("new");
        assert_eq!(
            errno_of(fs.create(ROOT_INODE, name, None).await),
            libc::EROFS
        );
        assert_eq!(errno_of(fs.mkdir(ROOT_INODE, name).await), libc::EROFS);
        assert_eq!(
            errno_of(fs.unlink(ROOT_INODE, OsStr::new("a.txt")).await),
            libc::EROFS
        );
        assert_eq!(
            errno_of(fs.rmdir(ROOT_INODE, OsStr::new("dir")).await),
            libc::EROFS
        );
        let file = fs.lookup(ROOT_INODE, OsStr::new("a.txt")).await.unwrap();
        assert_eq!(errno_of(fs.setattr(file.ino.0, Some(0)).await), libc::EROFS);
    }

    #[tokio::test]
    async fn new_files_are_written_sequentially_and_appear_on_flush() {
        let store = Arc::new(InMemory::new());
        put(&*store, "dir/old", "old").await;
        let fs = writable().build(store.clone());
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        // Small: one PUT at flush. Large: a multipart upload of several parts.
        let small = pattern(1000);
        let large = pattern(2 * crate::s3fs::write::WRITE_PART_SIZE + 12_345);
        for (name, content) in [("small", &small), ("large", &large), ("empty", &vec![])] {
            let (attr, fh) = fs.create(dir.ino.0, OsStr::new(name), None).await.unwrap();
            assert_eq!(attr.size, 0);
            for chunk in content.chunks(1 << 20) {
                let at = fs.getattr(attr.ino.0).await.unwrap().size;
                assert_eq!(fs.write(fh, at, chunk).await.unwrap() as usize, chunk.len());
            }
            // Visible in the mount while written, not yet in the bucket.
            let listing = {
                let dh = fs.opendir(dir.ino.0).unwrap();
                let entries = fs.readdir(dh, 0, ALL).await.unwrap();
                fs.releasedir(dh);
                entries
            };
            assert!(names(&listing).contains(&name), "{:?}", names(&listing));
            let key = ObjectPath::from(format!("dir/{name}"));
            assert!(
                store.head(&key).await.is_err(),
                "{name} uploaded before flush"
            );
            fs.flush(fh, None).await.unwrap();
            fs.release_writer(fh).await;
            let stored = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert!(stored == content[..], "stored {name} differs");
            assert_eq!(open_read_all(&fs, dir.ino.0, name).await, *content);
        }
    }

    /// The object `key` of `store`, or None.
    async fn stored(store: &InMemory, key: &str) -> Option<Vec<u8>> {
        let got = store.get(&ObjectPath::parse(key).unwrap()).await.ok()?;
        Some(got.bytes().await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn a_flush_before_any_write_completes_nothing() {
        // `cmd > file`, `dd of=file`: open, dup2, close the first descriptor
        // (a flush with nothing written), then write through the duplicate.
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let shell = Some(100);
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("out"), shell)
            .await
            .unwrap();
        fs.flush(fh, shell).await.unwrap();
        assert_eq!(stored(&store, "out").await, None, "no empty object");
        fs.write(fh, 0, b"hello ").await.unwrap();
        fs.write(fh, 6, b"world").await.unwrap();
        fs.flush(fh, shell).await.unwrap();
        assert_eq!(stored(&store, "out").await.unwrap(), b"hello world");
        fs.release_writer(fh).await;
        assert_eq!(open_read_all(&fs, ROOT_INODE, "out").await, b"hello world");
    }

    #[tokio::test]
    async fn a_flush_from_another_process_leaves_completion_to_release() {
        // A parent creates the file and hands the descriptor to a child; the
        // parent's close comes between the child's writes.
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let (parent, child) = (Some(100), Some(200));
        let (attr, fh) = fs
            .create(ROOT_INODE, OsStr::new("log"), parent)
            .await
            .unwrap();
        fs.write(fh, 0, b"one ").await.unwrap();
        fs.flush(fh, child).await.unwrap();
        fs.write(fh, 4, b"two ").await.unwrap();
        fs.flush(fh, child).await.unwrap();
        assert_eq!(stored(&store, "log").await, None, "completed too early");
        // While it is still open somewhere, it cannot be read yet.
        assert_eq!(
            errno_of(fs.open(attr.ino.0, libc::O_RDONLY, false).await),
            libc::EBUSY
        );
        fs.write(fh, 8, b"three").await.unwrap();
        fs.release_writer(fh).await;
        assert_eq!(stored(&store, "log").await.unwrap(), b"one two three");
        assert_eq!(
            open_read_all(&fs, ROOT_INODE, "log").await,
            b"one two three"
        );
    }

    #[tokio::test]
    async fn a_file_closed_without_a_write_is_an_empty_object_at_release() {
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("touched"), Some(7))
            .await
            .unwrap();
        fs.flush(fh, Some(7)).await.unwrap();
        assert_eq!(stored(&store, "touched").await, None);
        fs.release_writer(fh).await;
        assert_eq!(stored(&store, "touched").await.unwrap(), b"");
    }

    #[tokio::test]
    async fn renames_move_objects_and_files_being_written() {
        let store = Arc::new(InMemory::new());
        put(&*store, "a", "alpha").await;
        put(&*store, "taken", "taken").await;
        put(&*store, "dir/x", "x").await;
        let fs = writable().build(store.clone());
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        // An object: copied, then the original deleted; the inode moves.
        let a = fs.lookup(ROOT_INODE, OsStr::new("a")).await.unwrap();
        fs.rename(
            ROOT_INODE,
            OsStr::new("a"),
            dir.ino.0,
            OsStr::new("b"),
            false,
        )
        .await
        .unwrap();
        assert_eq!(stored(&store, "a").await, None);
        assert_eq!(stored(&store, "dir/b").await.unwrap(), b"alpha");
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("a")).await),
            libc::ENOENT
        );
        let b = fs.lookup(dir.ino.0, OsStr::new("b")).await.unwrap();
        assert_eq!(b.ino, a.ino, "the kernel's inode follows the rename");
        // RENAME_NOREPLACE refuses an existing target; a plain rename replaces it.
        assert_eq!(
            errno_of(
                fs.rename(
                    dir.ino.0,
                    OsStr::new("b"),
                    ROOT_INODE,
                    OsStr::new("taken"),
                    true
                )
                .await
            ),
            libc::EEXIST
        );
        fs.rename(
            dir.ino.0,
            OsStr::new("b"),
            ROOT_INODE,
            OsStr::new("taken"),
            false,
        )
        .await
        .unwrap();
        assert_eq!(stored(&store, "taken").await.unwrap(), b"alpha");
        // A directory: EXDEV (mv then copies it).
        assert_eq!(
            errno_of(
                fs.rename(
                    ROOT_INODE,
                    OsStr::new("dir"),
                    ROOT_INODE,
                    OsStr::new("d2"),
                    false
                )
                .await
            ),
            libc::EXDEV
        );
        // A file being written (rsync's temporary file before its close, or
        // a rename of an open file): it is completed under its new name.
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new(".tmp"), None)
            .await
            .unwrap();
        fs.write(fh, 0, b"partial").await.unwrap();
        fs.rename(
            ROOT_INODE,
            OsStr::new(".tmp"),
            ROOT_INODE,
            OsStr::new("final"),
            false,
        )
        .await
        .unwrap();
        fs.release_writer(fh).await;
        assert_eq!(stored(&store, ".tmp").await, None);
        assert_eq!(stored(&store, "final").await.unwrap(), b"partial");
        assert_eq!(open_read_all(&fs, ROOT_INODE, "final").await, b"partial");
    }

    #[tokio::test]
    async fn a_file_unlinked_while_open_is_never_uploaded() {
        // git's lock files and mkstemp users: create, (write,) unlink while
        // the descriptor is open, close later.
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("config.lock"), Some(9))
            .await
            .unwrap();
        fs.write(fh, 0, b"draft").await.unwrap();
        fs.unlink(ROOT_INODE, OsStr::new("config.lock"))
            .await
            .unwrap();
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("config.lock")).await),
            libc::ENOENT
        );
        // The name is free again at once.
        let (_, again) = fs
            .create(ROOT_INODE, OsStr::new("config.lock"), Some(9))
            .await
            .unwrap();
        fs.write(fh, 5, b" more").await.unwrap();
        fs.flush(fh, Some(9)).await.unwrap();
        fs.release_writer(fh).await;
        assert_eq!(
            stored(&store, "config.lock").await,
            None,
            "nothing uploaded"
        );
        fs.write(again, 0, b"kept").await.unwrap();
        fs.flush(again, Some(9)).await.unwrap();
        fs.release_writer(again).await;
        assert_eq!(stored(&store, "config.lock").await.unwrap(), b"kept");
    }

    /// How the tables reach the process that takes a connection over.
    #[derive(Debug, Clone, Copy)]
    enum Handover {
        /// A snapshot taken at handover.
        Snapshot,
        /// The journals written all along (what survives a crash).
        Journals,
    }

    #[tokio::test]
    async fn a_restored_snapshot_answers_for_every_node_id_and_handle() {
        takes_over_every_node_id_and_handle(Handover::Snapshot).await;
    }

    #[tokio::test]
    async fn journals_written_all_along_answer_for_every_node_id_and_handle() {
        takes_over_every_node_id_and_handle(Handover::Journals).await;
    }

    async fn takes_over_every_node_id_and_handle(handover: Handover) {
        let store = Arc::new(InMemory::new());
        put(&*store, "dir/a.bin", pattern(100_000)).await;
        put(&*store, "dir/b.txt", "bee").await;
        put(&*store, "top.txt", "top").await;
        let fs = writable().build(store.clone());
        // The supervisor's copies of the journals.
        let journals = match handover {
            Handover::Journals => Some(fs.start_journals().unwrap()),
            Handover::Snapshot => None,
        };
        // Lookups and handles the kernel gave back before the handover.
        let gone = fs.lookup(ROOT_INODE, OsStr::new("top.txt")).await.unwrap();
        let closed = fs.open(gone.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        fs.release(closed);
        fs.forget(gone.ino.0, 1);
        // What the kernel holds: looked-up inodes, a file open for reading
        // (partly read), an open directory (partly listed), a file being written.
        let dir = fs.lookup(ROOT_INODE, OsStr::new("dir")).await.unwrap();
        let a = fs.lookup(dir.ino.0, OsStr::new("a.bin")).await.unwrap();
        let opened = fs.open(a.ino.0, libc::O_RDONLY, false).await.unwrap();
        assert_eq!(
            fs.read(opened.fh, 0, 10).await.unwrap().to_bytes()[..],
            pattern(100_000)[..10]
        );
        let dh = fs.opendir(dir.ino.0).unwrap();
        let first = fs.readdir(dh, 0, 3).await.unwrap();
        let (written, wfh) = fs
            .create(ROOT_INODE, OsStr::new("new.txt"), None)
            .await
            .unwrap();
        fs.write(wfh, 0, b"half").await.unwrap();

        let counting = CountingStore::new(store.clone());
        let setup = writable();
        let bucket = Bucket {
            store: counting.clone(),
            prefix: String::new(),
            display: "test-bucket".to_string(),
        };
        let options = FsOptions {
            dataset: "test".to_string(),
            read_only: setup.read_only,
            metadata_ttl: setup.ttl,
            negative_ttl: setup.ttl,
            immutable: false,
            ownership: Ownership::defaults(false),
            prefetch_budget: PrefetchBudget::new(setup.prefetch_memory),
            write_budget: WriteBudget::new(WriteBudget::DEFAULT_BYTES),
            cache: None,
        };
        let runtime = tokio::runtime::Handle::current();
        let restored = match journals {
            None => {
                // Through text, as it crosses to another process.
                let text = serde_json::to_string(&fs.snapshot()).unwrap();
                let snapshot: FsSnapshot = serde_json::from_str(&text).unwrap();
                S3Filesystem::restore(bucket, options, runtime, Arc::new(Metrics::new()), snapshot)
            }
            Some(journals) => {
                // The old process dies without a word.
                drop(fs);
                S3Filesystem::resume(bucket, options, runtime, Arc::new(Metrics::new()), journals)
            }
        }
        .unwrap();
        // The same node ids with the same attributes, without a request.
        assert_eq!(restored.getattr(a.ino.0).await.unwrap(), a);
        assert_eq!(restored.getattr(dir.ino.0).await.unwrap().ino, dir.ino);
        let again = restored
            .lookup(dir.ino.0, OsStr::new("a.bin"))
            .await
            .unwrap();
        assert_eq!(again.ino, a.ino);
        assert_eq!(counting.requests(), 0, "nothing asked of the store");
        // The open file reads on, pinned to the version it opened.
        assert_eq!(
            restored
                .read(opened.fh, 10, 90_000)
                .await
                .unwrap()
                .to_bytes()[..],
            pattern(100_000)[10..90_010]
        );
        // The open directory lists on from where the kernel was.
        let rest = restored
            .readdir(dh, first.last().unwrap().next_offset, ALL)
            .await
            .unwrap();
        let mut all = names(&first);
        all.extend(names(&rest));
        assert_eq!(all, [".", "..", "a.bin", "b.txt"]);
        // The file being written: its upload died with the old process.
        assert_eq!(errno_of(restored.write(wfh, 4, b"more").await), libc::EIO);
        assert_eq!(errno_of(restored.flush(wfh, None).await), libc::EIO);
        restored.release_writer(wfh).await;
        assert_eq!(stored(&store, "new.txt").await, None);
        assert_eq!(
            errno_of(restored.lookup(ROOT_INODE, OsStr::new("new.txt")).await),
            libc::ENOENT
        );
        restored.forget(written.ino.0, 1);
        // New node ids and handles never collide with the restored ones.
        let top = restored
            .lookup(ROOT_INODE, OsStr::new("top.txt"))
            .await
            .unwrap();
        assert!(top.ino.0 > written.ino.0);
        let fh = restored
            .open(top.ino.0, libc::O_RDONLY, false)
            .await
            .unwrap()
            .fh;
        assert!(fh > wfh && fh != opened.fh && fh != dh);
        // Forgets bring the restored lookup counts down to nothing.
        restored.forget(a.ino.0, 2);
        restored.release(opened.fh);
        assert_eq!(errno_of(restored.getattr(a.ino.0).await), libc::ENOENT);
    }

    #[tokio::test]
    async fn a_file_written_and_closed_before_a_crash_is_whole_in_the_next_worker() {
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let journals = fs.start_journals().unwrap();
        let (created, fh) = fs
            .create(ROOT_INODE, OsStr::new("out.txt"), Some(7))
            .await
            .unwrap();
        fs.write(fh, 0, b"hello world").await.unwrap();
        fs.flush(fh, Some(7)).await.unwrap();
        fs.release_writer(fh).await;
        // The kernel still holds the node id when the worker dies.
        drop(fs);
        let next = writable().resume(store, journals);
        let attr = next.getattr(created.ino.0).await.unwrap();
        assert_eq!(attr.size, 11, "the completed object's size");
        let opened = next
            .open(created.ino.0, libc::O_RDONLY, false)
            .await
            .unwrap();
        assert_eq!(
            &next.read(opened.fh, 0, 100).await.unwrap().to_bytes()[..],
            b"hello world"
        );
        let again = next
            .lookup(ROOT_INODE, OsStr::new("out.txt"))
            .await
            .unwrap();
        assert_eq!(again.ino, created.ino, "the same node id by name");
    }

    #[tokio::test]
    async fn a_rename_over_a_looked_up_name_is_what_the_next_worker_knows() {
        let store = Arc::new(InMemory::new());
        put(&*store, "a", "twelve bytes").await;
        put(&*store, "b", "old").await;
        let fs = writable().build(store.clone());
        let journals = fs.start_journals().unwrap();
        let a = fs.lookup(ROOT_INODE, OsStr::new("a")).await.unwrap();
        let b = fs.lookup(ROOT_INODE, OsStr::new("b")).await.unwrap();
        fs.rename(
            ROOT_INODE,
            OsStr::new("a"),
            ROOT_INODE,
            OsStr::new("b"),
            false,
        )
        .await
        .unwrap();
        drop(fs);
        let next = writable().resume(store, journals);
        let now_b = next.lookup(ROOT_INODE, OsStr::new("b")).await.unwrap();
        assert_eq!(now_b.ino, a.ino, "b is the renamed file, not {:?}", b.ino);
        assert_eq!(now_b.size, 12);
    }

    #[tokio::test]
    async fn a_snapshot_of_another_format_is_refused() {
        let fs = Setup::default().build(sample_store().await);
        let mut snapshot = fs.snapshot();
        snapshot.format = SNAPSHOT_FORMAT + 1;
        let refused = S3Filesystem::restore(
            Bucket {
                store: Arc::new(InMemory::new()),
                prefix: String::new(),
                display: "test-bucket".to_string(),
            },
            fs.options().clone(),
            tokio::runtime::Handle::current(),
            Arc::new(Metrics::new()),
            snapshot,
        );
        assert!(matches!(refused, Err(FsError::SnapshotFormat { .. })));
    }

    #[tokio::test]
    async fn an_unlinked_file_still_open_never_comes_back() {
        let store = Arc::new(InMemory::new());
        let fs = writable().build(store.clone());
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("f"), Some(1))
            .await
            .unwrap();
        fs.write(fh, 0, b"x").await.unwrap();
        fs.flush(fh, Some(1)).await.unwrap();
        assert_eq!(stored(&store, "f").await.unwrap(), b"x");
        // Completed, still open: unlink deletes the object, and an append
        // through the open descriptor does not bring it back.
        fs.unlink(ROOT_INODE, OsStr::new("f")).await.unwrap();
        assert_eq!(stored(&store, "f").await, None);
        fs.write(fh, 1, b"y").await.unwrap();
        fs.flush(fh, Some(1)).await.unwrap();
        fs.release_writer(fh).await;
        assert_eq!(
            stored(&store, "f").await,
            None,
            "the unlinked object stays gone"
        );
    }

    #[tokio::test]
    async fn a_listing_taken_earlier_never_undoes_a_completed_upload() {
        let store = Arc::new(InMemory::new());
        for i in 0..40 {
            put(&*store, &format!("d/f{i:02}"), "x").await;
        }
        let fs = writable().build(store.clone());
        let dir = fs.lookup(ROOT_INODE, OsStr::new("d")).await.unwrap();
        let (_, fh) = fs
            .create(dir.ino.0, OsStr::new("zz"), Some(1))
            .await
            .unwrap();
        let dh = fs.opendir(dir.ino.0).unwrap();
        let first = fs.readdir(dh, 0, 5).await.unwrap();
        // zz completes while the directory is being listed in pages.
        fs.write(fh, 0, b"done").await.unwrap();
        fs.flush(fh, Some(1)).await.unwrap();
        fs.release_writer(fh).await;
        let rest = fs
            .readdirplus(dh, first.last().unwrap().next_offset, ALL)
            .await
            .unwrap();
        let zz = rest.iter().find(|e| e.name == "zz").expect("zz listed");
        assert_eq!(zz.attr.size, 4, "the completed size, not the listing's");
        assert_eq!(open_read_all(&fs, dir.ino.0, "zz").await, b"done");
    }

    #[tokio::test]
    async fn a_failed_multipart_start_leaves_no_object() {
        let inner = Arc::new(InMemory::new());
        let store = CountingStore::new(inner.clone());
        let fs = writable().build(store.clone());
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("big"), Some(1))
            .await
            .unwrap();
        store.fail_with(Some(server_error));
        let part = pattern(crate::s3fs::write::WRITE_PART_SIZE + 1);
        assert_eq!(errno_of(fs.write(fh, 0, &part).await), libc::EIO);
        store.fail_with(None);
        assert_eq!(errno_of(fs.flush(fh, Some(1)).await), libc::EIO);
        fs.release_writer(fh).await;
        assert_eq!(
            stored(&inner, "big").await,
            None,
            "no object of bytes that failed"
        );
    }

    #[tokio::test]
    async fn keys_that_cannot_be_names_are_left_out_and_counted_once() {
        let inner = sample_store().await;
        let store = CountingStore::new(inner);
        *store.unparseable.lock().unwrap() =
            vec!["bad\nkey".into(), "x/../y".into(), "dir//z".into()];
        let fs = Setup::default().build(store.clone());
        for _ in 0..2 {
            let dh = fs.opendir(ROOT_INODE).unwrap();
            let entries = fs.readdir(dh, 0, ALL).await.unwrap();
            fs.releasedir(dh);
            assert_eq!(
                names(&entries),
                [".", "..", "a.txt", "both", "deep", "dir", "empty"],
                "siblings are listed"
            );
        }
        assert_eq!(open_read_all(&fs, ROOT_INODE, "a.txt").await, b"hello");
        let count = |reason: &str| {
            fs.metrics()
                .s3_keys_skipped
                .with_label_values(&["test", reason])
                .get()
        };
        assert_eq!(count("control_character"), 1);
        assert_eq!(count("dot_segment"), 1);
        assert_eq!(count("empty_segment"), 1);
    }

    #[tokio::test]
    async fn writes_that_s3_cannot_do_fail_with_clear_errnos() {
        let store = Arc::new(InMemory::new());
        put(&*store, "old", "old").await;
        put(&*store, "full/x", "x").await;
        let fs = writable().build(store.clone());
        let old = fs.lookup(ROOT_INODE, OsStr::new("old")).await.unwrap();
        // Overwrite in place, truncate, reopen for writing: EPERM.
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(
                errno_of(fs.open(old.ino.0, flags, false).await),
                libc::EPERM
            );
        }
        assert_eq!(errno_of(fs.setattr(old.ino.0, Some(0)).await), libc::EPERM);
        // Times, owner and mode are accepted (and ignored), as is the same size.
        let unchanged = fs.setattr(old.ino.0, None).await.unwrap();
        assert_eq!((unchanged.uid, unchanged.perm), (0, 0o644));
        assert_eq!(fs.setattr(old.ino.0, Some(3)).await.unwrap().size, 3);
        // Creating an existing name: EEXIST.
        assert_eq!(
            errno_of(fs.create(ROOT_INODE, OsStr::new("old"), None).await),
            libc::EEXIST
        );
        assert_eq!(
            errno_of(fs.mkdir(ROOT_INODE, OsStr::new("full")).await),
            libc::EEXIST
        );
        // Random writes: EINVAL; the file stays writable at its end.
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("seq"), None)
            .await
            .unwrap();
        fs.write(fh, 0, b"abc").await.unwrap();
        assert_eq!(errno_of(fs.write(fh, 10, b"x").await), libc::EINVAL);
        assert_eq!(errno_of(fs.write(fh, 1, b"x").await), libc::EINVAL);
        fs.write(fh, 3, b"def").await.unwrap();
        fs.flush(fh, None).await.unwrap();
        assert_eq!(stored(&store, "seq").await.unwrap(), b"abcdef");
        // A write through a descriptor still open after completion: a file
        // sent in one PUT is sent again, whole; a multipart one is not
        // appended to (EPERM).
        fs.write(fh, 6, b"g").await.unwrap();
        fs.release_writer(fh).await;
        assert_eq!(stored(&store, "seq").await.unwrap(), b"abcdefg");
        assert_eq!(open_read_all(&fs, ROOT_INODE, "seq").await, b"abcdefg");
        let big = pattern(crate::s3fs::write::WRITE_PART_SIZE + 1);
        let (_, fh) = fs
            .create(ROOT_INODE, OsStr::new("big"), None)
            .await
            .unwrap();
        fs.write(fh, 0, &big).await.unwrap();
        fs.flush(fh, None).await.unwrap();
        let end = big.len() as u64;
        assert_eq!(errno_of(fs.write(fh, end, b"x").await), libc::EPERM);
        fs.release_writer(fh).await;
        assert_eq!(stored(&store, "big").await.unwrap(), big);
        // Non-empty directory: ENOTEMPTY; unlink of a directory: EISDIR;
        // rmdir of a file: ENOTDIR; missing names: ENOENT.
        assert_eq!(
            errno_of(fs.rmdir(ROOT_INODE, OsStr::new("full")).await),
            libc::ENOTEMPTY
        );
        assert_eq!(
            errno_of(fs.unlink(ROOT_INODE, OsStr::new("full")).await),
            libc::EISDIR
        );
        assert_eq!(
            errno_of(fs.rmdir(ROOT_INODE, OsStr::new("old")).await),
            libc::ENOTDIR
        );
        assert_eq!(
            errno_of(fs.unlink(ROOT_INODE, OsStr::new("nope")).await),
            libc::ENOENT
        );
        assert_eq!(
            fs.refuse_modification("rename", "x".into()).errno(),
            libc::EOPNOTSUPP
        );
    }

    #[tokio::test]
    async fn unlink_mkdir_and_rmdir() {
        let store = Arc::new(InMemory::new());
        put(&*store, "a", "a").await;
        let fs = writable().build(store.clone());
        fs.unlink(ROOT_INODE, OsStr::new("a")).await.unwrap();
        assert!(store.head(&ObjectPath::from("a")).await.is_err());
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("a")).await),
            libc::ENOENT
        );
        // A new directory lives in the mount, a file written in it makes it a prefix.
        let made = fs.mkdir(ROOT_INODE, OsStr::new("d")).await.unwrap();
        assert_eq!(made.kind, FileType::Directory);
        let found = fs.lookup(ROOT_INODE, OsStr::new("d")).await.unwrap();
        assert_eq!(found.ino, made.ino);
        let (_, fh) = fs.create(made.ino.0, OsStr::new("f"), None).await.unwrap();
        assert_eq!(
            errno_of(fs.rmdir(ROOT_INODE, OsStr::new("d")).await),
            libc::ENOTEMPTY,
            "a file being written keeps its directory"
        );
        fs.write(fh, 0, b"data").await.unwrap();
        fs.release_writer(fh).await;
        assert_eq!(
            store
                .get(&ObjectPath::from("d/f"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            "data"
        );
        assert_eq!(
            errno_of(fs.rmdir(ROOT_INODE, OsStr::new("d")).await),
            libc::ENOTEMPTY
        );
        fs.unlink(made.ino.0, OsStr::new("f")).await.unwrap();
        fs.rmdir(ROOT_INODE, OsStr::new("d")).await.unwrap();
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("d")).await),
            libc::ENOENT
        );
        // An empty new directory goes with rmdir too.
        fs.mkdir(ROOT_INODE, OsStr::new("e")).await.unwrap();
        fs.rmdir(ROOT_INODE, OsStr::new("e")).await.unwrap();
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("e")).await),
            libc::ENOENT
        );
    }

    #[tokio::test]
    async fn local_filesystem_buckets_work_the_same() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        std::fs::create_dir_all(root.join("data/nested/deeper")).unwrap();
        std::fs::write(root.join("data/top.bin"), pattern(5000)).unwrap();
        std::fs::write(root.join("data/nested/deeper/leaf.txt"), "leaf").unwrap();
        std::fs::write(root.join("data/empty"), "").unwrap();
        std::fs::write(root.join("outside.txt"), "not under the prefix").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(root).unwrap());
        let fs = Setup {
            prefix: "data/",
            ..Setup::default()
        }
        .build(store);

        let fh = fs.opendir(ROOT_INODE).unwrap();
        let entries = fs.readdir(fh, 0, ALL).await.unwrap();
        assert_eq!(names(&entries), [".", "..", "empty", "nested", "top.bin"]);
        fs.releasedir(fh);
        assert_eq!(
            errno_of(fs.lookup(ROOT_INODE, OsStr::new("outside.txt")).await),
            libc::ENOENT
        );
        let top = fs.lookup(ROOT_INODE, OsStr::new("top.bin")).await.unwrap();
        assert_eq!((top.kind, top.size), (FileType::RegularFile, 5000));
        assert_eq!(
            open_read_all(&fs, ROOT_INODE, "top.bin").await,
            pattern(5000)
        );
        assert_eq!(open_read_all(&fs, ROOT_INODE, "empty").await, b"");
        let nested = fs.lookup(ROOT_INODE, OsStr::new("nested")).await.unwrap();
        assert_eq!(nested.kind, FileType::Directory);
        let deeper = fs.lookup(nested.ino.0, OsStr::new("deeper")).await.unwrap();
        assert_eq!(open_read_all(&fs, deeper.ino.0, "leaf.txt").await, b"leaf");
        // A file is not a directory, even though the local store could list it.
        assert_eq!(
            fs.lookup(ROOT_INODE, OsStr::new("top.bin"))
                .await
                .unwrap()
                .kind,
            FileType::RegularFile
        );

        let fh = fs.open(top.ino.0, libc::O_RDONLY, false).await.unwrap().fh;
        assert_eq!(fs.read(fh, 4990, 100).await.unwrap(), pattern(5000)[4990..]);
        // Replace the file (new inode, new size): the pinned handle refuses it.
        std::fs::write(root.join("data/top.new"), pattern(6000)).unwrap();
        std::fs::rename(root.join("data/top.new"), root.join("data/top.bin")).unwrap();
        assert_eq!(errno_of(fs.read(fh, 0, 100).await), libc::EIO);
    }
}
