//! Serving again the FUSE connections a dead worker served (the supervisor
//! held them): same mounts, same node ids and handles, no change to any
//! mount table. The reconcile then gives each to its dataset; a connection
//! that cannot be resumed is aborted, and its dataset is mounted again at
//! the same path as after a full restart.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::manager::attach::{FuseAttachment, finish_session};
use crate::manager::{Manager, lock};
use crate::s3fs::fs::FsJournals;
use crate::s3fs::fuse::FuseAdapter;
use crate::s3fs::{S3Filesystem, open_bucket};
use crate::spec::SourceSpec;
use crate::supervisor::channel::HeldConnection;
use crate::sys::MountEntry;

/// How long loading a resumed dataset's credentials may take.
const RESUME_CREDENTIALS_DEADLINE: Duration = Duration::from_secs(10);

/// A connection handed over by the supervisor: what it is and its three fds
/// (the `/dev/fuse` connection, the inode journal, the handle journal).
#[derive(Debug)]
pub struct Resumable {
    /// What the supervisor knows of it.
    pub held: HeldConnection,
    /// The connection's fd.
    pub device: OwnedFd,
    /// Its table journals.
    pub journals: FsJournals,
}

impl Manager {
    /// Serves every connection in `resumables` again, all at once; call
    /// before [`Manager::start`], which gives them to their datasets.
    pub async fn resume(&self, resumables: Vec<Resumable>) {
        let resumes = resumables.into_iter().map(|resumable| async move {
            let name = resumable.held.name.clone();
            let connection = resumable.held.connection;
            let id = resumable.held.id;
            match self.resume_one(resumable).await {
                Ok(fuse) => {
                    tracing::info!(dataset = name, connection, "fuse connection resumed");
                    lock(&self.inner.resumed)
                        .entry(name)
                        .or_default()
                        .push(fuse);
                }
                Err(reason) => {
                    // Its fds close here and in the supervisor: the kernel
                    // then ends the connection (no abort by number, which
                    // may by now name another connection).
                    tracing::warn!(
                        dataset = name,
                        connection,
                        reason,
                        "cannot resume a fuse connection; letting it go (the dataset is mounted again)"
                    );
                    if let Some(link) = self.inner.link.get() {
                        link.connection_ended(connection, id);
                    }
                }
            }
        });
        futures::future::join_all(resumes).await;
    }

    async fn resume_one(&self, resumable: Resumable) -> Result<FuseAttachment, String> {
        let Resumable {
            held,
            device,
            journals,
        } = resumable;
        let SourceSpec::S3(s3) = &held.spec.source else {
            return Err("only S3 datasets have FUSE connections".to_string());
        };
        let credentials = self
            .load_credentials(s3, RESUME_CREDENTIALS_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        let bucket = open_bucket(
            s3,
            &self.inner.config.file_policy,
            credentials,
            &self.inner.s3_clients,
        )
        .map_err(|e| e.to_string())?;
        let filesystem = S3Filesystem::resume(
            bucket,
            self.fs_options(&held.name, &held.spec, s3),
            tokio::runtime::Handle::current(),
            self.inner.metrics.clone(),
            journals,
        )
        .map_err(|e| e.to_string())?;
        let filesystem = Arc::new(filesystem);
        let adapter = FuseAdapter::new(Arc::clone(&filesystem));
        let threads = self.inner.config.fuse_threads;
        let connection = held.connection;
        let negotiated = held.negotiated.into();
        let mut session = tokio::task::spawn_blocking(move || {
            crate::sys::resume_fuse(device, connection, negotiated, adapter, threads)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        // The supervisor still holds its copy of the fd, under this id.
        session.device = None;
        session.held_id = Some(held.id);
        Ok(FuseAttachment {
            session,
            filesystem,
        })
    }

    /// The resumed connection of dataset `name` if it is the one mounted at
    /// its path (`existing`: the mounts there).
    pub(crate) fn take_resumed(
        &self,
        name: &str,
        existing: &[&MountEntry],
    ) -> Option<FuseAttachment> {
        let [mounted] = existing else {
            return None;
        };
        let mut resumed = lock(&self.inner.resumed);
        let candidates = resumed.get_mut(name)?;
        let index = candidates
            .iter()
            .position(|fuse| fuse.session.connection == Some(mounted.major_minor.1))?;
        Some(candidates.swap_remove(index))
    }

    /// Resumed connections no dataset took (detached while files were still
    /// open in them): served until their last file closes.
    pub(crate) fn release_unclaimed_resumed(&self) {
        let unclaimed: Vec<FuseAttachment> = lock(&self.inner.resumed)
            .drain()
            .flat_map(|(_, list)| list)
            .collect();
        for fuse in unclaimed {
            finish_session(fuse.session, self.inner.link.get().cloned());
        }
    }
}
