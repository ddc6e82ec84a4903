//! The read path of open files: ranged GETs pinned to the ETag seen at open,
//! and a per-handle prefetcher.
//!
//! How a handle reads:
//! - the first read at offset 0, a read inside the parts already fetched or in
//!   flight, and a read within [`SEQUENTIAL_SLACK`] of the furthest byte served
//!   so far are *sequential*; anything else is *random*;
//! - a sequential read keeps a window of parts in flight ahead of it: the
//!   window starts at [`INITIAL_WINDOW`] and doubles each time a part has been
//!   read through, up to [`MAX_WINDOW`]; parts are at most [`MAX_PART`] long,
//!   so a full window keeps several GETs in flight;
//! - a random read fetches exactly what was asked, drops the window and starts
//!   it again small (random reads never prefetch);
//! - prefetched bytes are counted against one [`PrefetchBudget`] shared by all
//!   mounts of the agent: when it is spent, reads still get the bytes they ask
//!   for, only nothing more is fetched ahead;
//! - when a directory is read file after file in listing order, the next few
//!   small files are fetched whole before they are opened
//!   ([`PrefetchedObject`], same budget, same ETag pinning);
//! - a GET's body of more than 1 MiB is kept in the chunks the HTTP client
//!   received ([`ChunkedBytes`]): a read slices them and the FUSE reply
//!   writes them with one vectored write, so those bytes are not copied in
//!   the agent (shorter bodies are copied once, into a buffer of their
//!   size);
//! - every GET carries `If-Match` with the ETag seen at open (or
//!   `If-Unmodified-Since` without one), and the reply's metadata is checked
//!   again: an object replaced under an open handle fails the read with EIO.
//!   Bytes already fetched for the handle came from the opened version and
//!   may still be served.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::operation::StoreRequest;
use crate::s3fs::chunked::{ChunkCollector, ChunkedBytes};
use crate::s3fs::error::FsError;
use crate::s3fs::inodes::ObjectStat;
use crate::s3fs::node_cache::{BLOCK_SIZE, CacheScope, ObjectId};

/// The default agent-wide budget for prefetched data (`--prefetch-memory`):
/// with the write budget, the node cache's and the agent itself it keeps
/// the DaemonSet inside its 1 GiB limit (doc/SCALE.md, "The budget in the
/// manifest"); four sequential readers at full speed need about 150 MiB of
/// it (4 x a 32 MiB window, a 4 MiB part and 2 MiB of slack).
pub const DEFAULT_PREFETCH_MEMORY: u64 = 256 * 1024 * 1024;
/// The ranged GETs of a warm-up (whole node cache blocks).
pub const WARM_RANGE: u64 = 4 * crate::s3fs::node_cache::BLOCK_SIZE;
/// The first prefetch window of a sequential reader.
pub const INITIAL_WINDOW: u64 = 1024 * 1024;
/// The largest prefetch window of one handle.
pub const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// The longest single ranged GET a prefetch issues.
pub const MAX_PART: u64 = 4 * 1024 * 1024;
/// How far from the furthest byte served a read may land and still count as
/// sequential: the kernel sends readahead requests concurrently, and they
/// reach the filesystem slightly out of order. Parts are also kept this long
/// after they were read through, for the stragglers.
pub const SEQUENTIAL_SLACK: u64 = 2 * 1024 * 1024;

/// The agent-wide memory budget for prefetched data.
#[derive(Debug)]
pub struct PrefetchBudget {
    capacity: u64,
    semaphore: Arc<Semaphore>,
}

impl PrefetchBudget {
    /// A budget of `bytes` (0 turns prefetching off).
    pub fn new(bytes: u64) -> Arc<Self> {
        let permits = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(PrefetchBudget {
            capacity: permits as u64,
            semaphore: Arc::new(Semaphore::new(permits)),
        })
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held by prefetched parts right now.
    pub fn in_use(&self) -> u64 {
        self.capacity - self.semaphore.available_permits() as u64
    }

    /// Reserves `bytes`, or `None` when the budget cannot cover them now.
    fn try_reserve(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.semaphore)
            .try_acquire_many_owned(bytes)
            .ok()
    }
}

/// Fetches byte ranges of objects, pinned to the version a handle opened:
/// from the node cache when it holds them, else from the store (and then
/// into the cache).
#[derive(Debug)]
pub struct RangeReader {
    store: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
    dataset: String,
    cache: Option<CacheScope>,
}

impl RangeReader {
    /// A reader over `store`, counting requests and bytes for `dataset`,
    /// through `cache` if any.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        metrics: Arc<Metrics>,
        dataset: String,
        cache: Option<CacheScope>,
    ) -> Self {
        RangeReader {
            store,
            metrics,
            dataset,
            cache,
        }
    }

    /// The node cache and its name for `key` at `stat`, if it is cached.
    fn cached(&self, key: &ObjectPath, stat: &ObjectStat) -> Option<(&CacheScope, ObjectId)> {
        let scope = self.cache.as_ref()?;
        Some((scope, scope.object(key, stat)?))
    }

    /// The bytes `range` (inside the object) of `key` as it was at open
    /// (`stat`).
    pub async fn get(
        &self,
        key: &ObjectPath,
        stat: &ObjectStat,
        range: Range<u64>,
    ) -> Result<ChunkedBytes, FsError> {
        let Some((scope, id)) = self.cached(key, stat) else {
            return self.fetch(key, stat, range).await;
        };
        if let Some(cached) = scope.cache.read(id, range.clone(), stat.size).await {
            return Ok(cached);
        }
        let fetched = self.fetch(key, stat, range.clone()).await?;
        scope.cache.store(id, range.start, &fetched, stat.size);
        Ok(fetched)
    }

    /// Fetches the blocks the node cache lacks of `key` (as `stat`) into
    /// it, runs of missing blocks in ranges of at most [`WARM_RANGE`],
    /// waiting for every block to be written; the bytes fetched (none when
    /// it was whole already, or without a cache or an ETag).
    pub async fn warm(&self, key: &ObjectPath, stat: &ObjectStat) -> Result<u64, FsError> {
        let Some((scope, id)) = self.cached(key, stat) else {
            return Ok(0);
        };
        let blocks = stat.size.div_ceil(BLOCK_SIZE);
        let mut fetched = 0;
        let mut block = 0;
        while block < blocks {
            if scope.cache.holds_block(id, block) {
                block += 1;
                continue;
            }
            // The run of missing blocks from here, at most a warm range.
            let mut end = block + 1;
            while end < blocks
                && (end - block) * BLOCK_SIZE < WARM_RANGE
                && !scope.cache.holds_block(id, end)
            {
                end += 1;
            }
            let range = block * BLOCK_SIZE..(end * BLOCK_SIZE).min(stat.size);
            let _room = scope.cache.warm_room(range.end - range.start).await;
            let data = self.fetch(key, stat, range.clone()).await?;
            fetched += data.len() as u64;
            scope
                .cache
                .store_now(id, range.start, &data, stat.size)
                .await;
            block = end;
        }
        Ok(fetched)
    }

    /// One ranged GET of `range` of `key` as it was at open (`stat`).
    async fn fetch(
        &self,
        key: &ObjectPath,
        stat: &ObjectStat,
        range: Range<u64>,
    ) -> Result<ChunkedBytes, FsError> {
        let options = GetOptions {
            if_match: stat.etag.clone(),
            // Without an ETag, the modification time pins the version.
            if_unmodified_since: stat.etag.is_none().then_some(stat.last_modified),
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let fetched = async {
            let result = self.store.get_opts(key, options).await?;
            let meta = result.meta.clone();
            let served = result.range.clone();
            let data = collect_at_most(result, range.end - range.start).await?;
            Ok::<_, object_store::Error>((meta, served, data))
        }
        .await;
        self.metrics
            .observe_s3_request(&self.dataset, StoreRequest::Get, fetched.is_ok());
        let (meta, served, data) = fetched.map_err(|source| match source {
            object_store::Error::Precondition { .. } => FsError::ObjectChanged {
                key: key.to_string(),
                detail: "etag no longer matches".to_string(),
            },
            // An open file whose object was deleted: EIO, like a change.
            object_store::Error::NotFound { .. } => FsError::ObjectChanged {
                key: key.to_string(),
                detail: "object deleted".to_string(),
            },
            source => FsError::Store {
                op: StoreRequest::Get,
                key: key.to_string(),
                source,
            },
        })?;
        // Stores that ignore preconditions still report what they served.
        let now = ObjectStat::from_meta(&meta);
        let changed = (stat.etag.is_some() && now.etag.is_some() && now.etag != stat.etag)
            || now.size != stat.size
            || (stat.etag.is_none() && now.last_modified != stat.last_modified);
        if changed || served != range || data.len() as u64 != range.end - range.start {
            return Err(FsError::ObjectChanged {
                key: key.to_string(),
                detail: format!(
                    "served {} bytes of size {} etag {:?}, opened at size {} etag {:?}",
                    data.len(),
                    now.size,
                    now.etag,
                    stat.size,
                    stat.etag
                ),
            });
        }
        self.metrics
            .s3_bytes_read
            .with_label_values(&[self.dataset.as_str()])
            .inc_by(data.len() as u64);
        Ok(data)
    }
}

/// The body of `result` in the chunks it arrived in, refused as soon as it
/// grows past `limit` bytes (the range asked for): a server that sends more
/// cannot grow the agent's memory.
async fn collect_at_most(
    result: GetResult,
    limit: u64,
) -> Result<ChunkedBytes, object_store::Error> {
    let mut body = result.into_stream();
    let mut collected = ChunkCollector::new(limit);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (collected.len() + chunk.len()) as u64 > limit {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: format!("the server sent more than the {limit} bytes asked for").into(),
            });
        }
        collected.push(chunk);
    }
    Ok(collected.finish())
}

/// A part being fetched (or fetched): its bytes, once, for every reader.
type PartData = Shared<BoxFuture<'static, Result<Arc<ChunkedBytes>, Arc<FsError>>>>;

/// One prefetched range of the object.
#[derive(Debug)]
struct Part {
    range: Range<u64>,
    data: PartData,
    /// The budget this part holds (none for bytes a read asked for itself).
    _permit: Option<OwnedSemaphorePermit>,
}

/// What a handle knows about its reader's pattern.
#[derive(Debug)]
struct ReadState {
    /// Consecutive, ascending parts, fetched or in flight.
    parts: VecDeque<Part>,
    /// The end of the furthest read served, once any read was.
    frontier: Option<u64>,
    /// The current prefetch window.
    window: u64,
    /// Counters of the reads planned so far.
    stats: ReadStats,
}

/// How one read will be served.
enum Plan {
    /// One GET of exactly the asked range, outside the window.
    Direct,
    /// Slices of these parts, in order.
    Parts(Vec<(Range<u64>, PartData)>),
}

/// Counters of one handle's read path (for tests and debugging).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads served from the prefetch window.
    pub window_reads: u64,
    /// Reads served by a GET of exactly their range.
    pub direct_reads: u64,
    /// Parts (ranged GETs) the window started.
    pub parts_started: u64,
}

/// The read path of one open file.
#[derive(Debug)]
pub struct FileReader {
    key: ObjectPath,
    stat: ObjectStat,
    reader: Arc<RangeReader>,
    budget: Arc<PrefetchBudget>,
    runtime: tokio::runtime::Handle,
    state: Mutex<ReadState>,
}

impl FileReader {
    /// A reader of `key` pinned to `stat`; `ahead` is the object fetched
    /// before the open, used if it is the same version.
    pub fn new(
        key: ObjectPath,
        stat: ObjectStat,
        reader: Arc<RangeReader>,
        budget: Arc<PrefetchBudget>,
        runtime: tokio::runtime::Handle,
        ahead: Option<PrefetchedObject>,
    ) -> Self {
        let mut parts = VecDeque::new();
        if let Some(ahead) = ahead.filter(|a| a.stat == stat) {
            parts.push_back(ahead.part);
        }
        FileReader {
            key,
            stat,
            reader,
            budget,
            runtime,
            state: Mutex::new(ReadState {
                parts,
                frontier: None,
                window: INITIAL_WINDOW,
                stats: ReadStats::default(),
            }),
        }
    }

    /// The object this handle reads.
    pub fn key(&self) -> &ObjectPath {
        &self.key
    }

    /// The version this handle is pinned to.
    pub fn stat(&self) -> &ObjectStat {
        &self.stat
    }

    /// This handle's counters so far.
    pub fn stats(&self) -> ReadStats {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// Reads `[offset, offset + size)`, clipped to the size seen at open;
    /// empty at or after the end.
    pub async fn read(&self, offset: u64, size: u32) -> Result<ChunkedBytes, FsError> {
        let end = offset.saturating_add(u64::from(size)).min(self.stat.size);
        if offset >= end {
            return Ok(ChunkedBytes::new());
        }
        match self.plan(offset..end) {
            Plan::Direct => self.reader.get(&self.key, &self.stat, offset..end).await,
            Plan::Parts(pieces) => {
                let mut data = ChunkedBytes::new();
                for (range, part) in pieces {
                    let bytes = match part.await {
                        Ok(bytes) => bytes,
                        Err(err) => {
                            // A failed part is not kept: the next read asks again.
                            self.forget_part(&range);
                            return Err(FsError::Shared(err));
                        }
                    };
                    let part_start = range.start;
                    let from =
                        usize::try_from(offset.max(part_start) - part_start).unwrap_or(usize::MAX);
                    let to = usize::try_from(end.min(range.end) - part_start).unwrap_or(usize::MAX);
                    // (`slice` cuts at the part's end: a short part shows in the length check.)
                    data.extend(bytes.slice(from..to));
                }
                if data.len() as u64 != end - offset {
                    return Err(FsError::ObjectChanged {
                        key: self.key.to_string(),
                        detail: format!(
                            "prefetched parts held {} of {} bytes at {offset}",
                            data.len(),
                            end - offset
                        ),
                    });
                }
                Ok(data)
            }
        }
    }

    /// Drops the part covering `range` (if still held) and everything after it.
    fn forget_part(&self, range: &Range<u64>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = state.parts.iter().position(|p| p.range == *range) {
            state.parts.truncate(index);
        }
    }

    /// Classifies the read, moves the window and says where the bytes come from.
    fn plan(&self, wanted: Range<u64>) -> Plan {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = match (state.parts.front(), state.parts.back()) {
            (Some(front), Some(back)) => Some(front.range.start..back.range.end),
            _ => None,
        };
        let in_window = held
            .as_ref()
            .is_some_and(|held| held.contains(&wanted.start));
        let near_frontier = match state.frontier {
            None => wanted.start == 0,
            Some(frontier) => {
                wanted.start.saturating_add(SEQUENTIAL_SLACK) >= frontier
                    && wanted.start <= frontier.saturating_add(SEQUENTIAL_SLACK)
            }
        };
        if !in_window && !near_frontier {
            // Random: exactly what was asked, and the window starts over.
            state.parts.clear();
            state.window = INITIAL_WINDOW;
            state.frontier = Some(wanted.end);
            state.stats.direct_reads += 1;
            return Plan::Direct;
        }
        if !in_window && held.as_ref().is_some_and(|h| wanted.start < h.start) {
            // A straggler behind the window: serve it, leave the window be.
            state.stats.direct_reads += 1;
            return Plan::Direct;
        }
        state.frontier = Some(state.frontier.unwrap_or(0).max(wanted.end));
        // Parts read through (and past the stragglers' slack) are done; each
        // one read through grows the window.
        while let Some(front) = state.parts.front() {
            if front.range.end.saturating_add(SEQUENTIAL_SLACK) > wanted.start {
                break;
            }
            state.parts.pop_front();
            state.window = (state.window * 2).min(MAX_WINDOW);
        }
        if state
            .parts
            .back()
            .is_some_and(|back| back.range.end < wanted.start)
        {
            // A forward jump past the window: start it again from here.
            state.parts.clear();
        }
        let target = wanted.end.saturating_add(state.window).min(self.stat.size);
        let mut next = state
            .parts
            .back()
            .map_or(wanted.start, |back| back.range.end);
        let mut started = 0;
        while next < target {
            let mut part_len = state.window.min(MAX_PART).min(self.stat.size - next);
            let permit = self.budget.try_reserve(part_len);
            if permit.is_none() {
                if next >= wanted.end {
                    // Out of budget: nothing more ahead...
                    break;
                }
                // ...but the read itself goes on, with exactly its bytes.
                part_len = part_len.min(wanted.end - next);
            }
            let range = next..next + part_len;
            state.parts.push_back(Part {
                data: self.start_part(range.clone()),
                range,
                _permit: permit,
            });
            next += part_len;
            started += 1;
        }
        state.stats.parts_started += started;
        state.stats.window_reads += 1;
        let pieces = state
            .parts
            .iter()
            .filter(|part| part.range.start < wanted.end && part.range.end > wanted.start)
            .map(|part| (part.range.clone(), part.data.clone()))
            .collect();
        Plan::Parts(pieces)
    }

    /// Starts the GET of `range` on the runtime, so it proceeds whether or
    /// not anybody waits for it yet.
    fn start_part(&self, range: Range<u64>) -> PartData {
        spawn_part(&self.reader, &self.runtime, &self.key, &self.stat, range)
    }
}

fn spawn_part(
    reader: &Arc<RangeReader>,
    runtime: &tokio::runtime::Handle,
    key: &ObjectPath,
    stat: &ObjectStat,
    range: Range<u64>,
) -> PartData {
    let reader = Arc::clone(reader);
    let task_key = key.clone();
    let task_stat = stat.clone();
    let task = runtime.spawn(async move {
        reader
            .get(&task_key, &task_stat, range)
            .await
            .map(Arc::new)
            .map_err(Arc::new)
    });
    let key = key.to_string();
    async move {
        match task.await {
            Ok(result) => result,
            Err(join) => Err(Arc::new(FsError::PrefetchAborted {
                key,
                detail: format!("prefetch task ended: {join}"),
            })),
        }
    }
    .boxed()
    .shared()
}

/// A whole small object fetched ahead of its open, because its directory is
/// being read file after file in listing order.
#[derive(Debug)]
pub struct PrefetchedObject {
    stat: ObjectStat,
    part: Part,
}

impl PrefetchedObject {
    /// Starts fetching all of `key` (pinned to `stat`, as listed) if the budget
    /// allows; `None` otherwise.
    pub fn start(
        reader: &Arc<RangeReader>,
        budget: &PrefetchBudget,
        runtime: &tokio::runtime::Handle,
        key: &ObjectPath,
        stat: &ObjectStat,
    ) -> Option<Self> {
        let permit = budget.try_reserve(stat.size)?;
        let range = 0..stat.size;
        Some(PrefetchedObject {
            stat: stat.clone(),
            part: Part {
                data: spawn_part(reader, runtime, key, stat, range.clone()),
                range,
                _permit: Some(permit),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::s3fs::test_store::CountingStore;

    #[tokio::test]
    async fn a_warm_up_fetches_only_the_blocks_the_node_cache_lacks() {
        use crate::s3fs::node_cache::NodeCache;
        let dir = tempfile::tempdir().unwrap();
        let store = CountingStore::new(Arc::new(InMemory::new()));
        let key = ObjectPath::from("shard.tar");
        // Six blocks: two warm ranges.
        let size = 5 * BLOCK_SIZE + 10;
        store
            .put(&key, PutPayload::from(vec![3u8; size as usize]))
            .await
            .unwrap();
        let stat = ObjectStat::from_meta(&store.head(&key).await.unwrap());
        let open_cache = || {
            NodeCache::open_indexed(dir.path(), 64 * BLOCK_SIZE, Arc::new(Metrics::new())).unwrap()
        };
        let reader = |cache: Arc<NodeCache>| {
            let scope = CacheScope {
                cache,
                origin: "memory:///bucket".to_string(),
            };
            let metrics = Arc::new(Metrics::new());
            RangeReader::new(store.clone(), metrics, "test".to_string(), Some(scope))
        };
        let cache = open_cache();
        assert_eq!(
            reader(Arc::clone(&cache)).warm(&key, &stat).await.unwrap(),
            size
        );
        assert_eq!(
            reader(cache).warm(&key, &stat).await.unwrap(),
            0,
            "whole already"
        );
        // One block's file is lost (a disk fault): the index rebuilt at the
        // next start no longer has it.
        let lost = walk(dir.path())
            .into_iter()
            .find(|path| path.to_string_lossy().contains("-00000003-"))
            .expect("block 3 on disk");
        std::fs::remove_file(lost).unwrap();
        let gets = store.gets.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            reader(open_cache()).warm(&key, &stat).await.unwrap(),
            BLOCK_SIZE,
            "only the missing block is fetched"
        );
        assert_eq!(
            store.gets.load(std::sync::atomic::Ordering::SeqCst),
            gets + 1
        );
    }

    /// Every file below `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|entry| {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    vec![path]
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_body_larger_than_the_range_asked_for_is_refused() {
        let store = CountingStore::new(Arc::new(InMemory::new()));
        store
            .oversend
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let key = ObjectPath::from("big");
        store
            .put(&key, PutPayload::from(vec![7u8; 1 << 20]))
            .await
            .unwrap();
        let meta = store.head(&key).await.unwrap();
        let reader = RangeReader::new(store, Arc::new(Metrics::new()), "test".to_string(), None);
        let got = reader
            .get(&key, &ObjectStat::from_meta(&meta), 0..4096)
            .await;
        let err = got.expect_err("more than asked for");
        assert_eq!(err.errno(), libc::EIO);
        assert!(
            err.to_string().contains("more than the 4096 bytes"),
            "{err}"
        );
    }
}
