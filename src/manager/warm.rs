//! Warm-ups through the manager: one per dataset at a time, found by name,
//! stopped when the dataset goes.

use std::sync::Arc;

use super::{Attached, Manager, ManagerError, lock};
use crate::s3fs::fs::{Warmup, WarmupStatus};

impl Manager {
    /// Starts fetching `paths` of dataset `name` into the node cache.
    pub fn warm(&self, name: &str, paths: Vec<String>) -> Result<WarmupStatus, ManagerError> {
        let slot = self.known_slot(name)?;
        let no_cache = |reason: &str| ManagerError::NoNodeCache {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let filesystem = match &*lock(&slot.attached) {
            Some(Attached::Fuse(fuse)) => Arc::clone(&fuse.filesystem),
            Some(Attached::Kernel) => return Err(no_cache("an NFS dataset")),
            // Restored, not mounted again yet: ask again, not a refusal.
            None if !self.restored() => return Err(ManagerError::NotReady),
            None => return Err(no_cache("not mounted now")),
        };
        if !filesystem.has_node_cache() {
            return Err(no_cache(
                "the agent has no --cache-dir, the spec says \"cache\": false, or the bucket is file://",
            ));
        }
        let mut current = lock(&slot.warmup);
        if current.as_ref().is_some_and(|w| w.status().running()) {
            return Err(ManagerError::WarmupRunning {
                name: name.to_string(),
            });
        }
        let warmup = filesystem.warm(paths);
        let status = warmup.status();
        *current = Some(warmup);
        Ok(status)
    }

    /// The latest warm-up of dataset `name`.
    pub fn warm_status(&self, name: &str) -> Result<WarmupStatus, ManagerError> {
        Ok(self.warmup_of(name)?.status())
    }

    /// Stops the warm-up of dataset `name` (what it fetched stays cached).
    pub fn cancel_warm(&self, name: &str) -> Result<WarmupStatus, ManagerError> {
        let warmup = self.warmup_of(name)?;
        warmup.cancel();
        Ok(warmup.status())
    }

    fn warmup_of(&self, name: &str) -> Result<Arc<Warmup>, ManagerError> {
        let slot = self.known_slot(name)?;
        let warmup = lock(&slot.warmup).clone();
        warmup.ok_or_else(|| ManagerError::NoWarmup {
            name: name.to_string(),
        })
    }
}
