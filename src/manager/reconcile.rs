//! The start-up reconcile: desired state against the mount table. Adopt NFS
//! mounts that match, and the FUSE connections a dead worker served (already
//! resumed); re-create missing or broken ones at the same path (a dead FUSE
//! mount from a previous run is detached lazily first); remove orphans under
//! the root. Never stack two mounts on one path.

use crate::manager::{Attached, Health, Manager, ManagerError, MountState, Record, Slot, lock};
use crate::spec::SourceSpec;
use crate::state::StoredMount;
use crate::sys::{MountEntry, mounts_at};

impl Manager {
    pub(crate) async fn reconcile(&self) -> Result<(), ManagerError> {
        let store = self.inner.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))??;
        if let Some((aside, reason)) = &loaded.quarantined {
            let loaded_instead = if loaded.from_previous {
                format!(
                    "loaded the previous good state ({} datasets)",
                    loaded.mounts.len()
                )
            } else {
                "there was no previous good state, so no dataset was restored".to_string()
            };
            lock(&self.inner.warnings).push(format!(
                "state file was corrupt ({reason}); moved to {}; {loaded_instead}",
                aside.display()
            ));
        }
        let complete = loaded.complete(&self.inner.store);
        *self.inner.desired.lock().await = loaded.mounts.clone();
        let table = self.mount_table("root").await?;
        if complete {
            self.remove_orphans(&table, &loaded.mounts).await;
        } else {
            let quarantined = self.inner.store.quarantined_files();
            lock(&self.inner.warnings).push(format!(
                "mounts under the root that the state does not name are kept, none is removed, \
                 while a corrupt state file waits in the state directory ({}); remove it (or \
                 put a repaired copy back as mounts.json) and restart to let the agent clean up",
                quarantined
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let restores = loaded
            .mounts
            .into_iter()
            .map(|(name, stored)| self.restore(name, stored, &table));
        let generations: Vec<(String, u64)> = futures::future::join_all(restores)
            .await
            .into_iter()
            .flatten()
            .collect();
        self.persist_generations(&generations).await;
        self.release_unclaimed_resumed();
        Ok(())
    }

    async fn remove_orphans(
        &self,
        table: &[MountEntry],
        desired: &std::collections::BTreeMap<String, StoredMount>,
    ) {
        let root = self.inner.config.root.clone();
        let mut orphans: Vec<String> = table
            .iter()
            .filter(|entry| entry.mount_point.parent() == Some(root.as_path()))
            .filter_map(|entry| entry.mount_point.file_name()?.to_str().map(str::to_string))
            .filter(|name| !desired.contains_key(name))
            .collect();
        if let Ok(dir) = std::fs::read_dir(&root) {
            for entry in dir.flatten() {
                if let Some(name) = entry.file_name().to_str()
                    && !desired.contains_key(name)
                    && !orphans.iter().any(|o| o == name)
                {
                    orphans.push(name.to_string());
                }
            }
        }
        for name in orphans {
            let path = root.join(&name);
            tracing::info!(path = %path.display(), "removing orphan under the root");
            self.peel_mounts(&name, &path).await;
            if let Err(e) = std::fs::remove_dir(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove orphan directory");
            }
        }
    }

    /// Adopts or re-creates one dataset; the new generation of one that was
    /// mounted again (saved with the others once all are restored).
    async fn restore(
        &self,
        name: String,
        stored: StoredMount,
        table: &[MountEntry],
    ) -> Option<(String, u64)> {
        let spec = stored.spec.clone();
        let slot = Slot::new(Record {
            spec: spec.clone(),
            state: MountState::Pending,
            last_error: None,
            health: Health::default(),
            created_at: stored.created_at,
            created_by: stored.created_by.clone(),
            generation: stored.generation,
        });
        lock(&self.inner.slots).insert(name.clone(), slot.clone());
        self.refresh_state_gauge();
        let _op = slot.op.lock().await;
        let path = self.path_of(&name);
        let existing = mounts_at(table, &path);
        let adoptable = match &spec.source {
            // Read-only is a per-mount flag, not part of what nfs::matches
            // compares: a read-write mount never passes for a read-only
            // dataset (nor the other way round).
            SourceSpec::Nfs(nfs) => {
                existing.len() == 1
                    && crate::nfs::matches(nfs, existing[0])
                    && existing[0].is_read_only() == spec.read_only
            }
            SourceSpec::S3(_) => false,
        };
        let resumed = match &spec.source {
            SourceSpec::S3(_) => self.take_resumed(&name, &existing),
            SourceSpec::Nfs(_) => None,
        };
        // The connection a dead worker served (served again), or a kernel
        // mount already in place.
        let kept = match resumed {
            Some(fuse) => Some((
                Attached::Fuse(fuse),
                "kept the mount, served by this worker",
            )),
            None if adoptable => Some((Attached::Kernel, "adopted the mount already in place")),
            None => None,
        };
        if let Some((attached, how)) = kept {
            slot.set_attached(attached);
            self.set_state(&slot, MountState::Mounted, None);
            self.set_healthy(&name, &spec, true);
            tracing::info!(dataset = name, "{how}");
            drop(_op);
            self.spawn_probe(&name, &slot);
            return None;
        }
        let broken = !existing.is_empty();
        if broken {
            tracing::info!(
                dataset = name,
                mounts = existing.len(),
                "mount from a previous run is not adoptable; re-creating it"
            );
            self.detach_quietly(&name, None).await;
        }
        let remounted = match self
            .mount_again(&name, &slot, &spec, stored.generation)
            .await
        {
            Ok(generation) => {
                self.mounted_again(&name, &slot, &spec);
                if broken {
                    self.inner
                        .metrics
                        .recoveries
                        .with_label_values(&[&name, "restart"])
                        .inc();
                }
                tracing::info!(dataset = name, "restored");
                Some((name.clone(), generation))
            }
            Err(err) => {
                tracing::warn!(dataset = name, error = %err, "restore failed; will retry with backoff");
                self.set_state(&slot, MountState::Failed, Some(err.to_string()));
                self.set_healthy(&name, &spec, false);
                None
            }
        };
        drop(_op);
        self.spawn_probe(&name, &slot);
        remounted
    }
}
