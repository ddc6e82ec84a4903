//! The S3 filesystem logic (inodes, directory listings, reads), independent of
//! the kernel: the FUSE adapter calls it, tests drive it directly.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::s3fs::store::Bucket;

/// Options of one S3 filesystem.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// The dataset name (metrics label).
    pub dataset: String,
    /// Refuse every modification (EROFS).
    pub read_only: bool,
    /// How long attributes, entries and negative entries are cached.
    pub metadata_ttl: Duration,
    /// Cache metadata without expiry (datasets that never change).
    pub immutable: bool,
}

/// One mounted bucket.
#[derive(Debug)]
pub struct S3Filesystem {
    bucket: Bucket,
    options: FsOptions,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
}

impl S3Filesystem {
    /// A filesystem over `bucket`; network work runs on `runtime`.
    pub fn new(
        bucket: Bucket,
        options: FsOptions,
        runtime: tokio::runtime::Handle,
        metrics: Arc<Metrics>,
    ) -> Self {
        S3Filesystem {
            bucket,
            options,
            runtime,
            metrics,
        }
    }
}
