//! The node cache: blocks of object content on a local disk
//! (`--cache-dir`, `--cache-size`), shared by every S3 dataset of the node,
//! so the second epoch of a training job reads the node's disk instead of
//! the object store.
//!
//! - **Keys.** A block is named by the object it belongs to (a SHA-256 of
//!   the endpoint, bucket, reading credentials, key and ETag: datasets over
//!   one bucket with the same credentials share blocks, a dataset never
//!   reads bytes its own credentials could not GET, and a new version of an
//!   object never meets the old one's bytes) and its index ([`BLOCK_SIZE`]
//!   each; the last one of an object is shorter). Objects without an ETag
//!   are not cached.
//! - **Files.** One file per block, `DIR/v1/XX/OBJECT-INDEX-CRC`: the raw
//!   bytes (so a whole small object is a plain file of its content), with
//!   the CRC-32C of the bytes in the name. It is written to a temporary
//!   file and renamed into place; a torn or corrupted file fails its
//!   checksum.
//! - **Reads.** Every block is checked against its CRC on every read; a
//!   block that fails is deleted, counted (`hotmount_cache_blocks_total
//!   {event="corrupt"}`) and fetched from the store again: it is never
//!   served.
//! - **Size.** Least-recently-used blocks are evicted to stay within the
//!   size. A write that would leave the disk with less free than its
//!   reserve ([`MIN_FREE_BYTES`] or 1% of it, whichever is more, at most a
//!   quarter of it) is skipped: a full disk costs a read its cache, never
//!   an error.
//! - **Restarts.** The index is rebuilt from the directory at start (in the
//!   background: reads meanwhile miss), oldest files first in the LRU.
//! - **Memory.** Blocks being written wait in at most
//!   [`MAX_PENDING_WRITE_BYTES`]; past that, a fetched block is simply not
//!   cached. Warm-ups fetch within [`WARM_MEMORY`] for the whole node.
//! - **Passthrough.** An object of one block is a plain file of its bytes:
//!   [`NodeCache::whole_object`] checks it and hands it out for the kernel
//!   to read itself.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::s3fs::chunked::ChunkedBytes;

/// The size of a cached block (the last block of an object is shorter).
pub const BLOCK_SIZE: u64 = 1024 * 1024;
/// The least free space a cache write leaves on the disk.
pub const MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;
/// Fetched blocks waiting to be written, at most.
pub const MAX_PENDING_WRITE_BYTES: u64 = 64 * 1024 * 1024;
/// What the size accounting rounds every block file up to.
const DISK_BLOCK: u64 = 4096;
/// The most fetched bytes all warm-ups together hold at once.
pub const WARM_MEMORY: u64 = 64 * 1024 * 1024;
/// A temporary file older than this is left over from a dead process.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);
/// The layout version: a directory of another layout is left alone.
const LAYOUT: &str = "v1";

/// An object version, as the cache names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The id of `key` at `etag` in the bucket `origin` (endpoint and
    /// bucket).
    pub fn new(origin: &str, key: &str, etag: &str) -> ObjectId {
        let mut hash = Sha256::new();
        for part in [origin, key, etag] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        ObjectId(hash.finalize().into())
    }

    fn hex(&self) -> String {
        use std::fmt::Write;
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            let _ = write!(hex, "{byte:02x}");
        }
        hex
    }

    fn parse(hex: &str) -> Option<ObjectId> {
        if hex.len() != 64 {
            return None;
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ObjectId(id))
    }
}

/// The node cache as one dataset uses it: the bucket its keys are in.
#[derive(Debug, Clone)]
pub struct CacheScope {
    /// The node's cache.
    pub cache: Arc<NodeCache>,
    /// The endpoint and bucket (`http://10.0.0.9:3900/datasets`).
    pub origin: String,
}

impl CacheScope {
    /// The cache's name for `key` at the version `stat` (none without an
    /// ETag: such objects are not cached).
    pub fn object(
        &self,
        key: &object_store::path::Path,
        stat: &crate::s3fs::inodes::ObjectStat,
    ) -> Option<ObjectId> {
        Some(ObjectId::new(
            &self.origin,
            key.as_ref(),
            stat.etag.as_ref()?,
        ))
    }

    /// [`NodeCache::whole_object`] of `key` at `stat`.
    pub async fn whole_file(
        &self,
        key: &object_store::path::Path,
        stat: &crate::s3fs::inodes::ObjectStat,
    ) -> Option<Arc<std::fs::File>> {
        let id = self.object(key, stat)?;
        self.cache.whole_object(id, stat.size).await
    }
}

/// One block of one object version.
type BlockKey = (ObjectId, u64);

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    crc: u32,
    /// Its place in the LRU order.
    tick: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<BlockKey, Entry>,
    by_age: BTreeMap<u64, BlockKey>,
    bytes: u64,
    next_tick: u64,
}

impl Index {
    fn insert(&mut self, key: BlockKey, bytes: u64, crc: u32) {
        self.remove(&key);
        // What the file takes on disk (whole filesystem blocks), not its
        // length: small files are what passthrough serves.
        let bytes = bytes.div_ceil(DISK_BLOCK) * DISK_BLOCK;
        let tick = self.next_tick;
        self.next_tick += 1;
        self.entries.insert(key, Entry { bytes, crc, tick });
        self.by_age.insert(tick, key);
        self.bytes += bytes;
    }

    fn remove(&mut self, key: &BlockKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_age.remove(&entry.tick);
        self.bytes -= entry.bytes;
        Some(entry)
    }

    /// Marks `key` used now.
    fn touch(&mut self, key: &BlockKey) -> Option<Entry> {
        let entry = self.entries.get_mut(key)?;
        self.by_age.remove(&entry.tick);
        entry.tick = self.next_tick;
        self.next_tick += 1;
        self.by_age.insert(entry.tick, *key);
        Some(*entry)
    }

    /// The least recently used block.
    fn oldest(&self) -> Option<BlockKey> {
        self.by_age.values().next().copied()
    }
}

/// The node cache (one per agent).
#[derive(Debug)]
pub struct NodeCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    pending_writes: Arc<Semaphore>,
    /// Memory for the bytes warm-ups fetch ([`WARM_MEMORY`]).
    warm_memory: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    temporaries: AtomicU64,
    /// Bytes of blocks being written right now (counted as gone from the
    /// disk by the reserve check of every other write).
    writing: AtomicU64,
}

impl NodeCache {
    /// A cache of at most `capacity` bytes in `dir` (made if missing). What
    /// earlier runs left there is indexed by a background thread.
    pub fn open(dir: &Path, capacity: u64, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        let cache = NodeCache::create(dir, capacity, metrics)?;
        let scanning = Arc::clone(&cache);
        std::thread::Builder::new()
            .name("cache-index".to_string())
            .spawn(move || scanning.rebuild_index())?;
        Ok(cache)
    }

    /// Like [`NodeCache::open`], with the index rebuilt before it returns.
    pub fn open_indexed(
        dir: &Path,
        capacity: u64,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        let cache = NodeCache::create(dir, capacity, metrics)?;
        cache.rebuild_index();
        Ok(cache)
    }

    fn create(dir: &Path, capacity: u64, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        let blocks = dir.join(LAYOUT);
        std::fs::create_dir_all(&blocks)?;
        metrics.cache_capacity_bytes.set(capacity as i64);
        Ok(Arc::new(NodeCache {
            dir: blocks,
            capacity,
            index: Mutex::new(Index::default()),
            pending_writes: Arc::new(Semaphore::new(MAX_PENDING_WRITE_BYTES as usize)),
            warm_memory: Arc::new(Semaphore::new(WARM_MEMORY as usize)),
            metrics,
            temporaries: AtomicU64::new(0),
            writing: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of blocks in the cache.
    pub fn size(&self) -> u64 {
        self.lock().bytes
    }

    fn path_of(&self, key: &BlockKey, crc: u32) -> PathBuf {
        let name = format!("{}-{:08x}-{crc:08x}", key.0.hex(), key.1);
        self.dir.join(&name[..2]).join(&name)
    }

    /// Indexes the block files on disk, oldest first; removes temporaries
    /// and files of no known shape.
    fn rebuild_index(&self) {
        let mut found: Vec<(std::time::SystemTime, BlockKey, u64, u32)> = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for shard in shards.flatten() {
            if shard.file_type().is_ok_and(|kind| kind.is_file()) {
                // A temporary of a write that never finished (one a live
                // process is still writing is younger than this).
                let stale = shard
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMPORARY);
                if stale {
                    let _ = std::fs::remove_file(shard.path());
                }
                continue;
            }
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name();
                let parsed = name.to_str().and_then(parse_block_name);
                let meta = file.metadata();
                match (parsed, meta) {
                    (Some((key, crc)), Ok(meta)) if meta.is_file() => {
                        let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((modified, key, meta.len(), crc));
                    }
                    _ => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        {
            let mut index = self.lock();
            // Blocks written since the scan started are newer: keep them.
            let written_meanwhile = std::mem::take(&mut *index);
            for (_, key, bytes, crc) in found {
                index.insert(key, bytes, crc);
            }
            for (key, entry) in written_meanwhile.entries {
                index.insert(key, entry.bytes, entry.crc);
            }
        }
        self.evict();
        tracing::info!(
            dir = %self.dir.display(),
            bytes = self.size(),
            "node cache indexed"
        );
    }

    /// The bytes `range` of the object `id` (of `size` bytes), if every
    /// block they lie in is cached and intact.
    pub async fn read(
        self: &Arc<Self>,
        id: ObjectId,
        range: Range<u64>,
        size: u64,
    ) -> Option<ChunkedBytes> {
        if range.is_empty() {
            return None;
        }
        let blocks = block_span(&range);
        let wanted: Option<Vec<(BlockKey, Entry)>> = {
            let mut index = self.lock();
            blocks
                .clone()
                .map(|block| {
                    let key = (id, block);
                    index.touch(&key).map(|entry| (key, entry))
                })
                .collect()
        };
        let Some(wanted) = wanted else {
            self.metrics
                .cache_requests
                .with_label_values(&["miss"])
                .inc();
            return None;
        };
        let cache = Arc::clone(self);
        let read = tokio::task::spawn_blocking(move || cache.read_blocks(&wanted, range, size))
            .await
            .ok()
            .flatten();
        let result = if read.is_some() { "hit" } else { "miss" };
        self.metrics
            .cache_requests
            .with_label_values(&[result])
            .inc();
        if let Some(bytes) = &read {
            self.metrics
                .cache_bytes
                .with_label_values(&["read"])
                .inc_by(bytes.len() as u64);
        }
        read
    }

    /// The cache file holding all of the object `id` (of `size` bytes, at
    /// most one block), open for reading and checked against its CRC: what
    /// the kernel may read directly (FUSE passthrough; the caller counts
    /// `hotmount_cache_requests_total{result="passthrough"}` if it does).
    pub async fn whole_object(
        self: &Arc<Self>,
        id: ObjectId,
        size: u64,
    ) -> Option<Arc<std::fs::File>> {
        self.start_whole_object(&tokio::runtime::Handle::current(), id, size)
            .await
    }

    /// [`Self::whole_object`], started now on `runtime`'s blocking pool
    /// (not when the future is first polled): a check ahead of the open
    /// that takes it.
    pub fn start_whole_object(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        id: ObjectId,
        size: u64,
    ) -> impl Future<Output = Option<Arc<std::fs::File>>> + Send + 'static {
        let cache = Arc::clone(self);
        let checking = runtime.spawn_blocking(move || cache.whole_object_blocking(id, size));
        async move { checking.await.ok().flatten() }
    }

    /// [`Self::whole_object`] on the calling thread, which it blocks on the
    /// disk.
    fn whole_object_blocking(&self, id: ObjectId, size: u64) -> Option<Arc<std::fs::File>> {
        if size == 0 || size > BLOCK_SIZE {
            return None;
        }
        let key = (id, 0);
        let entry = self.lock().touch(&key)?;
        let path = self.path_of(&key, entry.crc);
        match check_file(&path, size, entry.crc) {
            Ok(file) => Some(Arc::new(file)),
            Err(fault) => {
                self.drop_block(&key, &path, fault);
                self.metrics
                    .cache_requests
                    .with_label_values(&["miss"])
                    .inc();
                None
            }
        }
    }

    /// Forgets a block whose file is gone or failed its check (deleted,
    /// under the index lock so that a block written meanwhile at the same
    /// path is not lost from the index), and counts a corrupt one.
    fn drop_block(&self, key: &BlockKey, path: &Path, fault: BlockFault) {
        if fault == BlockFault::Corrupt {
            tracing::warn!(path = %path.display(), "corrupt cache block dropped");
            self.metrics
                .cache_blocks
                .with_label_values(&["corrupt"])
                .inc();
        }
        let mut index = self.lock();
        index.remove(key);
        let _ = std::fs::remove_file(path);
        self.metrics.cache_size_bytes.set(index.bytes as i64);
    }

    /// Reads and checks the blocks of `range`; `None` if one is missing or
    /// corrupt (a corrupt one is deleted).
    fn read_blocks(
        &self,
        blocks: &[(BlockKey, Entry)],
        range: Range<u64>,
        size: u64,
    ) -> Option<ChunkedBytes> {
        let mut out = ChunkedBytes::new();
        for (key, entry) in blocks {
            let block_start = key.1 * BLOCK_SIZE;
            let expected = block_len(key.1, size);
            let path = self.path_of(key, entry.crc);
            let data = match read_checked(&path, expected, entry.crc) {
                Ok(data) => data,
                Err(fault) => {
                    self.drop_block(key, &path, fault);
                    return None;
                }
            };
            let from = range.start.max(block_start) - block_start;
            let to = range.end.min(block_start + expected) - block_start;
            out.push(Bytes::from(data).slice(from as usize..to as usize));
        }
        Some(out)
    }

    /// Caches the whole blocks of the object `id` (of `size` bytes) that
    /// `data`, fetched at `start`, covers. In the background; skipped when
    /// too much is waiting to be written.
    pub fn store(self: &Arc<Self>, id: ObjectId, start: u64, data: &ChunkedBytes, size: u64) {
        let blocks = self.new_whole_blocks(id, start, data, size);
        let bytes: u64 = blocks.iter().map(|(_, b)| b.len() as u64).sum();
        if bytes == 0 {
            return;
        }
        let Ok(permit) = Arc::clone(&self.pending_writes).try_acquire_many_owned(bytes as u32)
        else {
            self.metrics
                .cache_blocks
                .with_label_values(&["skipped"])
                .inc_by(blocks.len() as u64);
            return;
        };
        self.write_blocks(blocks, Some(permit));
    }

    /// Writes `blocks` on a blocking thread, then lets `room` go.
    fn write_blocks(
        self: &Arc<Self>,
        blocks: Vec<(BlockKey, ChunkedBytes)>,
        room: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> tokio::task::JoinHandle<()> {
        let cache = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            for (key, data) in blocks {
                cache.write_block(key, &data);
            }
            drop(room);
        })
    }

    /// The blocks of the object `id` (of `size` bytes) that lie whole in
    /// `data`, fetched at `start`, and are not cached yet (slices of `data`,
    /// not copies).
    fn new_whole_blocks(
        &self,
        id: ObjectId,
        start: u64,
        data: &ChunkedBytes,
        size: u64,
    ) -> Vec<(BlockKey, ChunkedBytes)> {
        let end = start + data.len() as u64;
        let index = self.lock();
        block_span(&(start..end))
            .filter_map(|block| {
                let block_start = block * BLOCK_SIZE;
                let block_end = block_start + block_len(block, size);
                let whole = block_start >= start && block_end <= end;
                (whole && !index.entries.contains_key(&(id, block))).then(|| {
                    let slice =
                        data.slice((block_start - start) as usize..(block_end - start) as usize);
                    ((id, block), slice)
                })
            })
            .collect()
    }

    /// Whether every block of the object `id` (of `size` bytes) is cached.
    pub fn holds(&self, id: ObjectId, size: u64) -> bool {
        let index = self.lock();
        block_span(&(0..size)).all(|block| index.entries.contains_key(&(id, block)))
    }

    /// Whether block `block` of the object `id` is cached.
    pub fn holds_block(&self, id: ObjectId, block: u64) -> bool {
        self.lock().entries.contains_key(&(id, block))
    }

    /// Room for a warm-up to fetch `bytes` (all warm-ups of the node share
    /// [`WARM_MEMORY`]); held until the fetched bytes are written.
    pub async fn warm_room(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes.min(WARM_MEMORY)).ok()?;
        Arc::clone(&self.warm_memory)
            .acquire_many_owned(bytes)
            .await
            .ok()
    }

    /// Like [`NodeCache::store`], but writes the blocks before it returns
    /// (a warm-up must not skip any; its memory is its own, see
    /// [`NodeCache::warm_room`]).
    pub async fn store_now(
        self: &Arc<Self>,
        id: ObjectId,
        start: u64,
        data: &ChunkedBytes,
        size: u64,
    ) {
        let blocks = self.new_whole_blocks(id, start, data, size);
        let _ = self.write_blocks(blocks, None).await;
    }

    /// Writes one block (temporary file, then rename) if the disk keeps its
    /// reserve, and evicts to stay within the size.
    fn write_block(&self, key: BlockKey, data: &ChunkedBytes) {
        let len = data.len() as u64;
        // What other writes are putting on the disk now counts as gone: two
        // writes must not both pass a check that only one of them fits.
        let writing = Writing::start(&self.writing, len);
        let written = self.room_on_disk(writing.others + len) && self.write_block_file(key, data);
        drop(writing);
        if !written {
            self.metrics
                .cache_blocks
                .with_label_values(&["skipped"])
                .inc();
            return;
        }
        self.metrics
            .cache_bytes
            .with_label_values(&["written"])
            .inc_by(len);
        self.evict();
    }

    /// Puts the block's file in place and in the index; false if it could
    /// not be written (nothing of it is left).
    fn write_block_file(&self, key: BlockKey, data: &ChunkedBytes) -> bool {
        let crc = data
            .chunks()
            .iter()
            .fold(0, |crc, chunk| crc32c::crc32c_append(crc, chunk));
        let path = self.path_of(&key, crc);
        let temporary = self.dir.join(format!(
            "{}.{}.tmp",
            std::process::id(),
            self.temporaries.fetch_add(1, Ordering::Relaxed)
        ));
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write_chunks(&temporary, data))
            .and_then(|()| {
                // In place and in the index at once: an eviction of the
                // same path cannot fall in between.
                let mut index = self.lock();
                std::fs::rename(&temporary, &path)?;
                index.insert(key, data.len() as u64, crc);
                Ok(())
            });
        if let Err(error) = &written {
            let _ = std::fs::remove_file(&temporary);
            tracing::debug!(%error, "cache block not written");
        }
        written.is_ok()
    }

    /// Whether the disk keeps its reserve after writing `bytes`.
    fn room_on_disk(&self, bytes: u64) -> bool {
        let Ok(stat) = nix::sys::statvfs::statvfs(&self.dir) else {
            return false;
        };
        let fragment = stat.fragment_size();
        let available = stat.blocks_available() * fragment;
        let total = stat.blocks() * fragment;
        available >= bytes + reserve_of(total)
    }

    /// Deletes least-recently-used blocks until the cache fits its size.
    fn evict(&self) {
        let mut index = self.lock();
        while index.bytes > self.capacity {
            let Some(key) = index.oldest() else {
                break;
            };
            if let Some(entry) = index.remove(&key) {
                // Under the lock: a write of the same path waits for it.
                let _ = std::fs::remove_file(self.path_of(&key, entry.crc));
                self.metrics
                    .cache_blocks
                    .with_label_values(&["evicted"])
                    .inc();
            }
        }
        self.metrics.cache_size_bytes.set(index.bytes as i64);
    }
}

/// A block being written, counted in [`NodeCache`]'s `writing` while this
/// lives (given back on drop, a panic included: a count left behind would
/// skip every later block).
struct Writing<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
    /// What other writes were putting on the disk when this one started.
    others: u64,
}

impl<'a> Writing<'a> {
    fn start(counter: &'a AtomicU64, bytes: u64) -> Writing<'a> {
        let others = counter.fetch_add(bytes, Ordering::SeqCst);
        Writing {
            counter,
            bytes,
            others,
        }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The free space a disk of `total` bytes keeps: [`MIN_FREE_BYTES`] or 1%
/// of it, whichever is more, and at most a quarter of it (a small disk
/// still caches).
fn reserve_of(total: u64) -> u64 {
    MIN_FREE_BYTES.max(total / 100).min(total / 4)
}

/// Why a block could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockFault {
    /// Its file is gone (evicted by another process sharing the directory).
    Missing,
    /// Its file has another length or fails its CRC.
    Corrupt,
}

/// The block file at `path`, open, if it is `len` bytes (looked at before
/// reading: a stray big file costs no memory).
fn open_block(path: &Path, len: u64) -> Result<std::fs::File, BlockFault> {
    let file = std::fs::File::open(path).map_err(|_| BlockFault::Missing)?;
    let on_disk = file.metadata().map_err(|_| BlockFault::Missing)?.len();
    if on_disk != len {
        return Err(BlockFault::Corrupt);
    }
    Ok(file)
}

/// The block file at `path` read whole, if it is `len` bytes with CRC `crc`.
fn read_checked(path: &Path, len: u64, crc: u32) -> Result<Vec<u8>, BlockFault> {
    use std::io::Read;
    let mut file = open_block(path, len)?;
    let mut data = Vec::with_capacity(len as usize);
    file.read_to_end(&mut data)
        .map_err(|_| BlockFault::Missing)?;
    if data.len() as u64 != len || crc32c::crc32c(&data) != crc {
        return Err(BlockFault::Corrupt);
    }
    Ok(data)
}

/// The block file at `path`, open, if it is `len` bytes with CRC `crc`:
/// checked through a small buffer, its bytes not kept (the kernel reads
/// them through passthrough).
fn check_file(path: &Path, len: u64, crc: u32) -> Result<std::fs::File, BlockFault> {
    use std::io::Read;
    let mut file = open_block(path, len)?;
    let mut buffer = [0u8; 64 * 1024];
    let (mut read, mut sum) = (0u64, 0u32);
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                read += n as u64;
                sum = crc32c::crc32c_append(sum, &buffer[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(BlockFault::Missing),
        }
    }
    if read != len || sum != crc {
        return Err(BlockFault::Corrupt);
    }
    Ok(file)
}

/// The blocks `range` touches.
fn block_span(range: &Range<u64>) -> Range<u64> {
    if range.is_empty() {
        return 0..0;
    }
    range.start / BLOCK_SIZE..(range.end - 1) / BLOCK_SIZE + 1
}

/// The length of block `block` of an object of `size` bytes.
fn block_len(block: u64, size: u64) -> u64 {
    size.saturating_sub(block * BLOCK_SIZE).min(BLOCK_SIZE)
}

/// `OBJECT-INDEX-CRC` of a block file.
fn parse_block_name(name: &str) -> Option<(BlockKey, u32)> {
    let mut parts = name.split('-');
    let id = ObjectId::parse(parts.next()?)?;
    let block = u64::from_str_radix(parts.next()?, 16).ok()?;
    let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some(((id, block), crc))
}

/// Writes `data` as the whole content of a new file at `path`.
fn write_chunks(path: &Path, data: &ChunkedBytes) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for chunk in data.chunks() {
        file.write_all(chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = BLOCK_SIZE;

    fn object(len: u64, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    }

    fn open(dir: &Path, capacity: u64) -> (Arc<NodeCache>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let cache = NodeCache::open_indexed(dir, capacity, Arc::clone(&metrics)).unwrap();
        (cache, metrics)
    }

    /// Waits for the background writes of `store` to land, then checks
    /// the cache holds `bytes`.
    async fn settled(cache: &NodeCache, bytes: u64) {
        for _ in 0..500 {
            if cache.pending_writes.available_permits() == MAX_PENDING_WRITE_BYTES as usize {
                assert_eq!(cache.size(), bytes);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("cache writes did not finish");
    }

    fn counter(metrics: &Metrics, vec: &prometheus::IntCounterVec, label: &str) -> u64 {
        let _ = metrics;
        vec.with_label_values(&[label]).get()
    }

    #[tokio::test]
    async fn whole_blocks_are_stored_and_served_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, metrics) = open(dir.path(), 64 * MIB);
        let size = 2 * MIB + 1000;
        let data = object(size, 1);
        let id = ObjectId::new("http://s3:3900/b", "train/x.bin", "\"etag-1\"");
        assert_eq!(cache.read(id, 0..10, size).await, None, "empty cache");
        // A fetch of half a block then of the rest: only whole blocks (and
        // the short last one) are kept.
        cache.store(
            id,
            0,
            &ChunkedBytes::from(data.slice(..(MIB / 2) as usize)),
            size,
        );
        cache.store(
            id,
            MIB / 2,
            &ChunkedBytes::from(data.slice((MIB / 2) as usize..)),
            size,
        );
        settled(&cache, MIB + DISK_BLOCK).await;
        assert_eq!(
            cache.read(id, 0..10, size).await,
            None,
            "block 0 was never whole"
        );
        let tail = cache.read(id, MIB + 5..size, size).await.unwrap();
        assert_eq!(tail, data.slice((MIB + 5) as usize..)[..]);
        cache.store(id, 0, &ChunkedBytes::from(data.slice(..MIB as usize)), size);
        settled(&cache, 2 * MIB + DISK_BLOCK).await;
        let across = cache.read(id, 100..2 * MIB + 10, size).await.unwrap();
        assert_eq!(
            across,
            data.slice(100..(2 * MIB + 10) as usize)[..],
            "across three blocks"
        );
        assert!(counter(&metrics, &metrics.cache_requests, "hit") >= 2);
        assert_eq!(
            metrics.cache_size_bytes.get() as u64,
            2 * MIB + DISK_BLOCK,
            "sizes count whole filesystem blocks"
        );
    }

    #[tokio::test]
    async fn blocks_being_written_count_against_the_disk_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, metrics) = open(dir.path(), 64 * MIB);
        let id = ObjectId::new("http://s3:3900/b", "x.bin", "\"etag-1\"");
        let data = object(1000, 3);
        // Other writes under way would take all the disk has left: this
        // one must not pass the check too.
        let stat = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        let free = stat.blocks_available() * stat.fragment_size();
        cache.writing.store(free, Ordering::SeqCst);
        cache
            .store_now(id, 0, &ChunkedBytes::from(data.clone()), 1000)
            .await;
        assert_eq!(counter(&metrics, &metrics.cache_blocks, "skipped"), 1);
        assert_eq!(cache.read(id, 0..1000, 1000).await, None);
        // Once they are done, it fits.
        cache.writing.store(0, Ordering::SeqCst);
        cache
            .store_now(id, 0, &ChunkedBytes::from(data.clone()), 1000)
            .await;
        assert_eq!(cache.read(id, 0..1000, 1000).await.unwrap(), data[..]);
    }

    #[tokio::test]
    async fn another_etag_or_bucket_never_gets_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = open(dir.path(), 64 * MIB);
        let data = object(1000, 2);
        let id = ObjectId::new("http://s3:3900/b", "k", "\"v1\"");
        cache.store(id, 0, &ChunkedBytes::from(data.clone()), 1000);
        settled(&cache, DISK_BLOCK).await;
        for other in [
            ObjectId::new("http://s3:3900/b", "k", "\"v2\""),
            ObjectId::new("http://s3:3900/c", "k", "\"v1\""),
            ObjectId::new("http://s3:3900/b", "k2", "\"v1\""),
        ] {
            assert_eq!(cache.read(other, 0..1000, 1000).await, None);
        }
        assert_eq!(cache.read(id, 0..1000, 1000).await, Some(data.into()));
    }

    #[tokio::test]
    async fn a_corrupt_or_truncated_block_is_dropped_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, metrics) = open(dir.path(), 64 * MIB);
        let size = 2 * MIB;
        let data = object(size, 3);
        let id = ObjectId::new("o", "k", "e");
        cache.store(id, 0, &ChunkedBytes::from(data.clone()), size);
        settled(&cache, size).await;
        let files: Vec<PathBuf> = walk(&cache.dir);
        assert_eq!(files.len(), 2);
        // One flipped byte in one block, the other cut short.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        bytes[12345] ^= 0x40;
        std::fs::write(&files[0], bytes).unwrap();
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(&files[1])
            .unwrap();
        cut.set_len(MIB - 1).unwrap();
        assert_eq!(cache.read(id, 0..MIB, size).await, None);
        assert_eq!(cache.read(id, MIB..size, size).await, None);
        assert_eq!(counter(&metrics, &metrics.cache_blocks, "corrupt"), 2);
        assert!(walk(&cache.dir).is_empty(), "corrupt files deleted");
        assert_eq!(cache.size(), 0);
        // Fetched again, it is good again.
        cache.store(id, 0, &ChunkedBytes::from(data.clone()), size);
        settled(&cache, size).await;
        assert_eq!(cache.read(id, 0..size, size).await, Some(data.into()));
    }

    #[tokio::test]
    async fn the_least_recently_used_blocks_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, metrics) = open(dir.path(), 2 * MIB + MIB / 2);
        let ids: Vec<ObjectId> = (0..3)
            .map(|n| ObjectId::new("o", &format!("k{n}"), "e"))
            .collect();
        let data = object(MIB, 4);
        cache.store(ids[0], 0, &ChunkedBytes::from(data.clone()), MIB);
        settled(&cache, MIB).await;
        cache.store(ids[1], 0, &ChunkedBytes::from(data.clone()), MIB);
        settled(&cache, 2 * MIB).await;
        assert!(
            cache.read(ids[0], 0..1, MIB).await.is_some(),
            "k0 used again"
        );
        cache.store(ids[2], 0, &ChunkedBytes::from(data.clone()), MIB);
        settled(&cache, 2 * MIB).await;
        assert!(
            cache.read(ids[1], 0..1, MIB).await.is_none(),
            "k1 was the oldest"
        );
        assert!(cache.read(ids[0], 0..1, MIB).await.is_some());
        assert!(cache.read(ids[2], 0..1, MIB).await.is_some());
        assert_eq!(counter(&metrics, &metrics.cache_blocks, "evicted"), 1);
        assert_eq!(walk(&cache.dir).len(), 2);
    }

    #[tokio::test]
    async fn a_reopened_cache_serves_what_the_last_run_stored() {
        let dir = tempfile::tempdir().unwrap();
        let data = object(3 * MIB, 5);
        let id = ObjectId::new("o", "k", "e");
        {
            let (cache, _) = open(dir.path(), 64 * MIB);
            cache.store(id, 0, &ChunkedBytes::from(data.clone()), 3 * MIB);
            settled(&cache, 3 * MIB).await;
        }
        // Leftovers of a dead writer and stray files are cleaned up.
        std::fs::write(dir.path().join(LAYOUT).join("ab"), b"not a shard").unwrap();
        let (cache, _) = open(dir.path(), 64 * MIB);
        assert_eq!(cache.size(), 3 * MIB);
        assert_eq!(cache.read(id, 0..3 * MIB, 3 * MIB).await, Some(data.into()));
        // A smaller size on restart evicts down to it.
        drop(cache);
        let (cache, _) = open(dir.path(), MIB);
        assert_eq!(cache.size(), MIB);
    }

    #[test]
    fn the_disk_reserve_is_256_mib_or_one_percent_at_most_a_quarter() {
        const GIB: u64 = 1024 * MIB;
        assert_eq!(reserve_of(10 * GIB), 256 * MIB);
        assert_eq!(reserve_of(100 * GIB), GIB);
        assert_eq!(reserve_of(512 * MIB), 128 * MIB);
    }

    #[test]
    fn block_names_round_trip_and_strangers_are_refused() {
        let id = ObjectId::new("o", "k", "e");
        let name = format!("{}-{:08x}-{:08x}", id.hex(), 7, 0xdead_beef_u32);
        assert_eq!(parse_block_name(&name), Some(((id, 7), 0xdead_beef)));
        for bad in [
            "",
            "x-1-2",
            &format!("{}-1", id.hex()),
            &format!("{name}-9"),
        ] {
            assert_eq!(parse_block_name(bad), None, "{bad}");
        }
        assert_eq!(block_span(&(0..1)), 0..1);
        assert_eq!(block_span(&(MIB - 1..MIB + 1)), 0..2);
        assert_eq!(block_span(&(MIB..2 * MIB)), 1..2);
        assert_eq!(block_len(2, 2 * MIB + 5), 5);
        assert_eq!(block_len(3, 2 * MIB + 5), 0);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for shard in std::fs::read_dir(dir).unwrap().flatten() {
            if shard.path().is_dir() {
                for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
                    files.push(file.path());
                }
            }
        }
        files.sort();
        files
    }
}
