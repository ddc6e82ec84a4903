//! Preparing the shared root: a tmpfs (so a missing dataset is never the
//! node's disk), made rshared, with propagation to other mount namespaces
//! proven by a canary before the agent reports ready.

use std::path::Path;

use crate::manager::{Manager, ManagerError};
use crate::sys::{MountFlags, MountRequest, Mounter, mounts_at};

const HOW_TO_FIX: &str = "run the agent in the host mount namespace (systemd: no MountFlags=slave|private and no PrivateMounts=yes in the unit) or, in Kubernetes, give the agent a hostPath volume of the root's parent with mountPropagation: Bidirectional and privileged: true";

impl Manager {
    pub(crate) async fn prepare_root(&self) -> Result<(), ManagerError> {
        let mounter = self.inner.mounter.clone();
        let root = self.inner.config.root.clone();
        tokio::task::spawn_blocking(move || prepare_root(mounter.as_ref(), &root))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
    }
}

/// Set by systemd for every service it runs.
const SYSTEMD_SERVICE_ENV: &str = "INVOCATION_ID";

fn prepare_root(mounter: &dyn Mounter, root: &Path) -> Result<(), ManagerError> {
    let fail = |reason: String| ManagerError::Root {
        path: root.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(root).map_err(|e| fail(format!("create: {e}")))?;
    let table = mounter.mount_table().map_err(|e| fail(e.to_string()))?;
    let mounted_here = mounts_at(&table, root).is_empty();
    if mounted_here {
        mounter
            .mount(&MountRequest {
                source: "hotmount-root".to_string(),
                target: root.to_path_buf(),
                fstype: "tmpfs".to_string(),
                flags: MountFlags {
                    read_only: false,
                    nosuid: true,
                    nodev: true,
                    noexec: true,
                },
                data: "mode=0755,size=1m".to_string(),
            })
            .map_err(|e| fail(format!("mount a tmpfs on it: {e}")))?;
    }
    mounter
        .make_rshared(root)
        .map_err(|e| fail(format!("{e}; {HOW_TO_FIX}")))?;
    let table = mounter.mount_table().map_err(|e| fail(e.to_string()))?;
    let Some(top) = mounts_at(&table, root).last().copied() else {
        return Err(fail("is not a mount point after mounting it".to_string()));
    };
    if !top.is_shared() {
        return Err(fail(format!(
            "is not a shared mount after MS_SHARED (mountinfo: {}); {HOW_TO_FIX}",
            top.optional_fields.join(" ")
        )));
    }
    // The mount the datasets propagate through: the root's parent if the
    // tmpfs is ours, else the root itself.
    let carrier = if mounted_here {
        table.iter().find(|m| m.mount_id == top.parent_id)
    } else {
        Some(top)
    };
    if let Some(carrier) = carrier
        && carrier.is_slave()
        && std::env::var_os(SYSTEMD_SERVICE_ENV).is_some()
    {
        // A systemd service given a mount namespace of its own (PrivateTmp=,
        // ProtectSystem=, ...): its mounts are slaves of the host's, made
        // shared again, so the canary below would propagate inside that
        // namespace while no dataset ever reaches the host or a pod.
        if mounted_here {
            let _ = mounter.unmount(root, crate::sys::UnmountMode::Lazy);
        }
        return Err(fail(format!(
            "this systemd service runs in a mount namespace of its own ({} is a slave: {}), so its mounts never reach the host; remove the unit's PrivateTmp=, PrivateMounts=, MountFlags=, ProtectSystem=, ProtectHome=, *Paths= and the other options that give it one",
            carrier.mount_point.display(),
            carrier.optional_fields.join(" ")
        )));
    }
    // Our tmpfs reaches the host only if the mount holding it is shared.
    if mounted_here
        && let Some(parent) = carrier
        && !parent.is_shared()
    {
        let _ = mounter.unmount(root, crate::sys::UnmountMode::Lazy);
        return Err(fail(format!(
            "its parent mount {} is not shared (propagation: {}), so datasets mounted here would stay invisible outside this mount namespace; {HOW_TO_FIX}",
            parent.mount_point.display(),
            if parent.optional_fields.is_empty() {
                "private".to_string()
            } else {
                parent.optional_fields.join(" ")
            }
        )));
    }
    mounter
        .verify_propagation(root)
        .map_err(|e| fail(format!("propagation check failed: {e}; {HOW_TO_FIX}")))?;
    tracing::info!(root = %root.display(), "root is an rshared mount; propagation verified with a canary");
    Ok(())
}
