//! The thin fuser adapter: turns kernel requests into calls on [`S3Filesystem`]
//! and replies; FUSE threads never wait on the network.

use std::sync::Arc;

use crate::s3fs::fs::S3Filesystem;

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
}

impl fuser::Filesystem for FuseAdapter {}
