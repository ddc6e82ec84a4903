//! Warm-up: fetching chosen paths of a dataset into the node cache ahead of
//! the job that reads them (like JuiceFS `warmup` or Fluid's `DataLoad`).
//! One warm-up per dataset runs at a time, on the filesystem's runtime: it
//! lists its paths, then fetches the blocks the cache lacks of every object
//! (of one missing a single block, that block), [`WARM_PARALLELISM`]
//! objects at a time, reporting its progress as it goes;
//! cancelling it stops it at once. What it fetched is then read from the
//! node's disk.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use super::S3Filesystem;
use crate::operation::StoreRequest;
use crate::s3fs::inodes::ObjectStat;

/// Objects fetched at once by one warm-up.
pub const WARM_PARALLELISM: usize = 8;
/// The most objects one warm-up takes on (a bigger tree: warm it in parts).
pub const MAX_WARM_OBJECTS: usize = 1_000_000;

/// Where a warm-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WarmupState {
    /// Listing its paths.
    Listing,
    /// Fetching objects.
    Fetching,
    /// Every object was handled (see `failedFiles`).
    Done,
    /// Cancelled (`DELETE`, or the dataset went away).
    Cancelled,
    /// The listing failed: nothing was fetched.
    Failed,
}

/// The progress of a warm-up, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmupStatus {
    /// Where it stands.
    pub state: WarmupState,
    /// The paths asked for (relative to the dataset; empty: all of it).
    pub paths: Vec<String>,
    /// Objects found under the paths (known once the listing is done).
    pub files_total: u64,
    /// Their bytes.
    pub bytes_total: u64,
    /// Objects handled: fetched, or already whole in the cache.
    pub files_done: u64,
    /// Their bytes.
    pub bytes_done: u64,
    /// Bytes fetched from the store (the rest was cached already).
    pub bytes_fetched: u64,
    /// Objects that could not be fetched.
    pub failed_files: u64,
    /// The last error met, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl WarmupStatus {
    /// Whether it still runs.
    pub fn running(&self) -> bool {
        matches!(self.state, WarmupState::Listing | WarmupState::Fetching)
    }
}

/// A warm-up of one dataset.
#[derive(Debug)]
pub struct Warmup {
    status: Mutex<WarmupStatus>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Warmup {
    fn lock(&self) -> std::sync::MutexGuard<'_, WarmupStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its progress now.
    pub fn status(&self) -> WarmupStatus {
        self.lock().clone()
    }

    /// Stops it now (what was fetched stays cached).
    pub fn cancel(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        self.finish(WarmupState::Cancelled);
    }

    fn finish(&self, state: WarmupState) {
        let mut status = self.lock();
        if status.running() {
            status.state = state;
            status.finished_at = Some(Utc::now());
        }
    }
}

impl Drop for Warmup {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl S3Filesystem {
    /// Starts fetching `paths` (relative to the dataset, already checked:
    /// no `..`, no leading `/`; none: the whole dataset) into the node
    /// cache.
    pub fn warm(self: &Arc<Self>, paths: Vec<String>) -> Arc<Warmup> {
        let warmup = Arc::new(Warmup {
            status: Mutex::new(WarmupStatus {
                state: WarmupState::Listing,
                paths: paths.clone(),
                files_total: 0,
                bytes_total: 0,
                files_done: 0,
                bytes_done: 0,
                bytes_fetched: 0,
                failed_files: 0,
                last_error: None,
                started_at: Utc::now(),
                finished_at: None,
            }),
            task: Mutex::new(None),
        });
        let fs = Arc::clone(self);
        // The task holds the warm-up weakly: dropping it (the dataset went
        // away) aborts the task.
        let progress = Arc::downgrade(&warmup);
        let task = self.runtime().spawn(async move {
            let objects = match fs.warm_list(&paths).await {
                Ok(objects) => objects,
                Err(error) => {
                    if let Some(warmup) = progress.upgrade() {
                        warmup.lock().last_error = Some(error);
                        warmup.finish(WarmupState::Failed);
                    }
                    return;
                }
            };
            if let Some(warmup) = progress.upgrade() {
                let mut status = warmup.lock();
                status.state = WarmupState::Fetching;
                status.files_total = objects.len() as u64;
                status.bytes_total = objects.iter().map(|(_, stat)| stat.size).sum();
            }
            futures::stream::iter(objects)
                .for_each_concurrent(WARM_PARALLELISM, |(key, stat)| {
                    let fs = Arc::clone(&fs);
                    let progress = progress.clone();
                    async move {
                        let fetched = fs.reader.warm(&key, &stat).await;
                        let Some(warmup) = progress.upgrade() else {
                            return;
                        };
                        let mut status = warmup.lock();
                        match fetched {
                            Ok(bytes) => {
                                status.files_done += 1;
                                status.bytes_done += stat.size;
                                status.bytes_fetched += bytes;
                            }
                            Err(error) => {
                                status.failed_files += 1;
                                status.last_error = Some(error.to_string());
                            }
                        }
                    }
                })
                .await;
            if let Some(warmup) = progress.upgrade() {
                warmup.finish(WarmupState::Done);
            }
        });
        *warmup.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        warmup
    }

    /// Every object under `paths` (a path naming an object is that object);
    /// a path naming nothing fails the warm-up (a typo must not pass for a
    /// warm-up of nothing).
    async fn warm_list(&self, paths: &[String]) -> Result<Vec<(ObjectPath, ObjectStat)>, String> {
        let root = self.bucket.root_path();
        let whole = [String::new()];
        let paths = if paths.is_empty() { &whole[..] } else { paths };
        let mut objects = Vec::new();
        for path in paths {
            let target = if path.is_empty() {
                root.clone()
            } else {
                let joined = format!("{root}/{path}");
                ObjectPath::parse(joined.trim_matches('/')).map_err(|e| format!("{path}: {e}"))?
            };
            if !path.is_empty()
                && let Some(meta) = self.head(&target).await.map_err(|e| e.to_string())?
            {
                objects.push((meta.location.clone(), ObjectStat::from_meta(&meta)));
                continue;
            }
            let listed_before = objects.len();
            let mut listing = self.bucket.store.list(Some(&target));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| {
                    self.observe(StoreRequest::List, false);
                    format!("list {path}: {e}")
                })?;
                objects.push((meta.location.clone(), ObjectStat::from_meta(&meta)));
                if objects.len() > MAX_WARM_OBJECTS {
                    self.observe(StoreRequest::List, true);
                    return Err(format!(
                        "more than {MAX_WARM_OBJECTS} objects: warm the dataset in parts"
                    ));
                }
            }
            // Counted as a directory listing is: once, whatever its pages.
            self.observe(StoreRequest::List, true);
            if !path.is_empty() && objects.len() == listed_before {
                return Err(format!("{path}: no such file or directory in the dataset"));
            }
        }
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        objects.dedup_by(|a, b| a.0 == b.0);
        Ok(objects)
    }
}
