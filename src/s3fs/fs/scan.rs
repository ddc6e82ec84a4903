//! Directory scan-ahead: a directory whose files are opened one after
//! another in listing order gets its next small files fetched whole before
//! they are opened (from the prefetch budget; an idle scan gives it back).
//! A file already whole in the node cache is not fetched again: its cache
//! file is opened and checked ahead instead, ready to be handed to the
//! kernel (passthrough), so the disk reads several files at once while the
//! reader takes them one by one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use super::S3Filesystem;
use crate::s3fs::handles::ListedEntry;
use crate::s3fs::inodes::NodeKind;
use crate::s3fs::inodes::ObjectStat;
use crate::s3fs::node_cache::BLOCK_SIZE;
use crate::s3fs::prefetch::PrefetchedObject;

/// A cache file being opened and checked ahead of its open.
pub(crate) type CheckedFile = Shared<BoxFuture<'static, Option<Arc<std::fs::File>>>>;

/// A file a directory scan got ready before its open.
#[derive(Debug)]
pub(crate) enum Ahead {
    /// Its bytes, fetched.
    Fetched(PrefetchedObject),
    /// Whole in the node cache: its cache file, checked (for passthrough),
    /// of the version listed.
    Cached(ObjectStat, CheckedFile),
}

/// Directories whose latest listing is kept for scan detection.
const MAX_SCANNED_DIRECTORIES: usize = 64;
/// How many files ahead a directory scan fetches.
const SCAN_AHEAD_FILES: usize = 8;
/// Files up to this size are fetched ahead of a directory scan.
const SCAN_AHEAD_MAX_SIZE: u64 = 1024 * 1024;
/// A scan that has not moved for this long gives its fetched-ahead files
/// (and their budget) back.
const SCAN_IDLE: Duration = Duration::from_secs(5);

/// A directory being read file after file in listing order.
#[derive(Debug, Default)]
pub(super) struct DirectoryScan {
    /// The directory's latest listing (sorted by name).
    listing: Arc<Vec<ListedEntry>>,
    /// The listing index of the latest open.
    last_open: Option<usize>,
    /// Files fetched ahead, by listing index.
    ahead: HashMap<usize, Ahead>,
    /// When the scan last moved.
    last_active: Option<Instant>,
}

impl S3Filesystem {
    /// Keeps the latest listing of directory `ino` for scan detection (a new
    /// listing starts a new scan).
    pub(super) fn remember_listing(&self, ino: u64, listing: Arc<Vec<ListedEntry>>) {
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        if scans.len() >= MAX_SCANNED_DIRECTORIES && !scans.contains_key(&ino) {
            scans.clear();
        }
        scans.insert(
            ino,
            DirectoryScan {
                listing,
                ..DirectoryScan::default()
            },
        );
    }
    /// Records an open of `name` in directory `parent`: hands back the object
    /// if it was fetched ahead, and when the opens follow the listing order
    /// (this one right after the previous), fetches the next small files.
    pub(super) fn note_open(&self, parent: u64, name: &str) -> Option<Ahead> {
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        for scan in scans.values_mut() {
            if scan.last_active.is_some_and(|at| at.elapsed() > SCAN_IDLE) {
                scan.ahead.clear();
            }
        }
        let scan = scans.get_mut(&parent)?;
        scan.last_active = Some(Instant::now());
        let index = scan
            .listing
            .binary_search_by(|entry| entry.name.as_str().cmp(name))
            .ok()?;
        let mine = scan.ahead.remove(&index);
        let in_order = scan.last_open.is_some_and(|last| index == last + 1);
        scan.last_open = Some(index);
        // Fetched-ahead files the scan went past are not coming back.
        scan.ahead
            .retain(|&i, _| i > index && i <= index + SCAN_AHEAD_FILES);
        if in_order {
            let listing = Arc::clone(&scan.listing);
            for (i, entry) in listing
                .iter()
                .enumerate()
                .skip(index + 1)
                .take(SCAN_AHEAD_FILES)
            {
                if entry.kind != NodeKind::File
                    || entry.stat.size == 0
                    || entry.stat.size > SCAN_AHEAD_MAX_SIZE
                    || scan.ahead.contains_key(&i)
                {
                    continue;
                }
                if let Some(file) = self.check_ahead(&entry.key, &entry.stat) {
                    scan.ahead
                        .insert(i, Ahead::Cached(entry.stat.clone(), file));
                    continue;
                }
                let Some(fetched) = PrefetchedObject::start(
                    &self.reader,
                    &self.options.prefetch_budget,
                    &self.runtime,
                    &entry.key,
                    &entry.stat,
                ) else {
                    break;
                };
                scan.ahead.insert(i, Ahead::Fetched(fetched));
            }
        }
        mine
    }

    /// Starts opening and checking the cache file of `key` (as `stat`) if
    /// the node cache holds it whole in one block (what passthrough serves).
    fn check_ahead(
        &self,
        key: &object_store::path::Path,
        stat: &ObjectStat,
    ) -> Option<CheckedFile> {
        if !self.passthrough() {
            // Without passthrough the bytes are wanted, fetched ahead.
            return None;
        }
        let scope = self.options.cache.as_ref()?;
        let id = scope.object(key, stat)?;
        if stat.size > BLOCK_SIZE || !scope.cache.holds(id, stat.size) {
            return None;
        }
        // Started now, not at the open: that is the point. Straight on the
        // blocking pool: the open that takes it finds it done and answers
        // on its own thread, and no runtime thread is woken in between.
        let checking = scope.cache.start_whole_object(&self.runtime, id, stat.size);
        Some(checking.boxed().shared())
    }
}
