//! Mounting and unmounting one dataset: NFS through the kernel, S3 through
//! hotmount's FUSE filesystem. Every step runs under the mount deadline, off
//! the async threads, and a failure at any step undoes the earlier ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::manager::{Manager, ManagerError, lock};
use crate::s3fs::credentials::FileCredentialProvider;
use crate::s3fs::fs::Ownership;
use crate::s3fs::fuse::FuseAdapter;
use crate::s3fs::{FsOptions, S3Filesystem, StoreError, open_bucket};
use crate::spec::{FileMode, MountSpec, S3Credentials, S3Source, SourceSpec};
use crate::sys::{FuseMountRequest, FuseSession, MountFlags, Mounter, UnmountMode, mounts_at};
use crate::worker::WorkerLink;

/// How long requests of a FUSE dataset detached while busy may stay
/// unanswered before its connection is aborted.
const STUCK_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long health probes share one reading of the mount table.
const PROBE_TABLE_MAX_AGE: Duration = Duration::from_millis(500);

/// What is mounted for a dataset.
#[derive(Debug)]
pub enum Attached {
    /// A kernel mount (NFS): nothing to keep alive in the agent.
    Kernel,
    /// A FUSE mount served by this process.
    Fuse(FuseAttachment),
}

/// A FUSE mount this process serves: its connection and its filesystem.
#[derive(Debug)]
pub struct FuseAttachment {
    /// The connection, served by the FUSE pool.
    pub session: FuseSession,
    /// The filesystem behind it (its backend is probed directly, never
    /// through the mount: a process must not wait on a mount it serves).
    pub filesystem: Arc<S3Filesystem>,
}

impl Attached {
    fn connection(&self) -> Option<u32> {
        match self {
            Attached::Fuse(fuse) => fuse.session.connection,
            Attached::Kernel => None,
        }
    }
}

/// A detach that did not happen: why, and the mount that is still there.
pub(crate) struct DetachFailure {
    pub(crate) error: ManagerError,
    pub(crate) attached: Option<Attached>,
}

/// How many mount calls may outlive their deadline and still wait in the
/// kernel (for servers that do not answer) before new mounts are refused.
pub const MAX_MOUNTS_IN_KERNEL: usize = 32;
/// How many mounts may be stacked on one path before we stop peeling them.
const MAX_STACKED: usize = 16;
/// Pauses between retries of a normal unmount that met EBUSY, before the
/// dataset is reported busy.
const BUSY_RETRY_PAUSES_MS: [u64; 3] = [5, 20, 50];

impl Manager {
    /// Mounts a dataset whose path holds nothing: makes the directory, mounts,
    /// verifies; on any failure removes what it made.
    pub(crate) async fn attach_fresh(
        &self,
        name: &str,
        spec: &MountSpec,
    ) -> Result<Attached, ManagerError> {
        let path = self.path_of(name);
        let table = self.mount_table(name).await?;
        if !mounts_at(&table, &path).is_empty() {
            return Err(ManagerError::AlreadyMounted {
                name: name.to_string(),
                path,
            });
        }
        let created = match std::fs::create_dir(&path) {
            Ok(()) => true,
            // An existing directory is reused; a symlink is never followed
            // (the mount itself goes through a descriptor opened O_NOFOLLOW).
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) =>
            {
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ManagerError::PathOccupied {
                    name: name.to_string(),
                    path,
                });
            }
            Err(source) => {
                return Err(ManagerError::Directory {
                    name: name.to_string(),
                    path,
                    source,
                });
            }
        };
        let result = self.attach(name, spec).await;
        if result.is_err() && created {
            self.remove_dir(name);
        }
        result
    }

    /// Mounts `spec` at `<root>/<name>` (the directory exists) within the
    /// mount deadline.
    pub(crate) async fn attach(
        &self,
        name: &str,
        spec: &MountSpec,
    ) -> Result<Attached, ManagerError> {
        let deadline = Instant::now() + self.inner.config.mount_timeout;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let target = self.path_of(name);
        let flags = MountFlags::dataset(spec.read_only);
        match &spec.source {
            SourceSpec::Nfs(nfs) => {
                let addr = crate::nfs::resolve(&nfs.server, remaining())
                    .await
                    .map_err(|source| ManagerError::Nfs {
                        name: name.to_string(),
                        source,
                    })?;
                self.inner
                    .config
                    .egress
                    .check(
                        &nfs.server,
                        nfs.port.unwrap_or(crate::nfs::DEFAULT_PORT),
                        &[addr],
                    )
                    .map_err(|source| ManagerError::Egress {
                        name: name.to_string(),
                        source,
                    })?;
                let request = crate::nfs::mount_request(nfs, addr, spec.read_only, &target, None);
                // The server as the kernel was asked to reach it: a timeout
                // names where the mount hung.
                let step = format!(
                    "nfs mount of {} (address {addr}, port {})",
                    request.source,
                    nfs.port.unwrap_or(crate::nfs::DEFAULT_PORT)
                );
                self.blocking_mount(name, step, remaining(), move |mounter| {
                    mounter.mount(&request).map(|()| Attached::Kernel)
                })
                .await
            }
            SourceSpec::S3(s3) => {
                self.check_s3_egress(name, s3, remaining()).await?;
                let store_error = |source| ManagerError::Store {
                    name: name.to_string(),
                    source,
                };
                let credentials = self
                    .load_credentials(s3, remaining())
                    .await
                    .map_err(store_error)?;
                let bucket = open_bucket(
                    s3,
                    &self.inner.config.file_policy,
                    credentials,
                    &self.inner.s3_clients,
                )
                .map_err(store_error)?;
                bucket.check(s3, remaining()).await.map_err(store_error)?;
                let fsname = format!("hotmount:{}", bucket.display);
                let filesystem = S3Filesystem::new(
                    bucket,
                    self.fs_options(name, spec, s3),
                    tokio::runtime::Handle::current(),
                    self.inner.metrics.clone(),
                );
                // A supervised worker journals the tables the kernel will
                // remember, from the first request on.
                let journals =
                    match self.inner.link.get() {
                        Some(_) => Some(filesystem.start_journals().map_err(|source| {
                            ManagerError::Sys {
                                name: name.to_string(),
                                source: crate::sys::SysError::FuseSession {
                                    target: target.clone(),
                                    source,
                                },
                            }
                        })?),
                        None => None,
                    };
                let request = FuseMountRequest {
                    target,
                    fsname,
                    flags,
                    threads: self.inner.config.fuse_threads,
                };
                let filesystem = Arc::new(filesystem);
                let adapter = FuseAdapter::new(Arc::clone(&filesystem));
                let mut attached = self
                    .blocking_mount(
                        name,
                        "fuse mount".to_string(),
                        remaining(),
                        move |mounter| {
                            let session = mounter.mount_fuse(&request, adapter)?;
                            Ok(Attached::Fuse(FuseAttachment {
                                session,
                                filesystem,
                            }))
                        },
                    )
                    .await?;
                if let (Some(link), Some(journals), Attached::Fuse(fuse)) =
                    (self.inner.link.get(), journals, &mut attached)
                {
                    link.hold_connection(name, spec, &mut fuse.session, journals);
                }
                Ok(attached)
            }
        }
    }

    /// The options of dataset `name`'s S3 filesystem.
    pub(crate) fn fs_options(&self, name: &str, spec: &MountSpec, s3: &S3Source) -> FsOptions {
        FsOptions {
            dataset: name.to_string(),
            read_only: spec.read_only,
            metadata_ttl: self.inner.config.metadata_ttl,
            negative_ttl: self.inner.config.negative_ttl,
            immutable: s3.immutable,
            ownership: ownership_of(s3, spec.read_only),
            prefetch_budget: self.inner.config.prefetch_budget.clone(),
            write_budget: self.inner.config.write_budget.clone(),
            cache: self.cache_scope(s3),
        }
    }

    /// The node cache as dataset `s3` uses it: none without a cache, when
    /// the spec turns it off, or for `file://` buckets (already local).
    fn cache_scope(&self, s3: &S3Source) -> Option<crate::s3fs::node_cache::CacheScope> {
        let cache = self.inner.config.node_cache.as_ref()?;
        Some(crate::s3fs::node_cache::CacheScope {
            cache: std::sync::Arc::clone(cache),
            origin: cache_origin(s3)?,
        })
    }

    /// Refuses an S3 endpoint the agent does not connect to (see
    /// [`crate::egress`]), before any connection. A name that does not
    /// resolve within `deadline` is left to the bucket check, which then
    /// fails with its own error.
    async fn check_s3_egress(
        &self,
        name: &str,
        s3: &S3Source,
        deadline: Duration,
    ) -> Result<(), ManagerError> {
        // Without an endpoint the client goes to AWS: that name is checked.
        let endpoint = s3.endpoint.clone().unwrap_or_else(|| {
            let region = s3.region.as_deref().unwrap_or("us-east-1");
            if s3.path_style {
                format!("https://s3.{region}.amazonaws.com")
            } else {
                format!("https://{}.s3.{region}.amazonaws.com", s3.bucket)
            }
        });
        let Some((host, port)) = crate::egress::endpoint_host_port(&endpoint) else {
            return Ok(());
        };
        let addrs: Vec<std::net::IpAddr> = match host.parse() {
            Ok(addr) => vec![addr],
            Err(_) => {
                match tokio::time::timeout(deadline, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    // Not resolved: the bucket check will say so, unless
                    // the egress rules refuse it by name first.
                    _ => Vec::new(),
                }
            }
        };
        self.inner
            .config
            .egress
            .check(&host, port, &addrs)
            .map_err(|source| ManagerError::Egress {
                name: name.to_string(),
                source,
            })
    }

    /// Reads the credentials file `s3` names (none for inline keys,
    /// anonymous access and `file://` endpoints) off the async threads,
    /// within `deadline`: a file outside the credentials directory is never
    /// opened, a FIFO or a device never waited on.
    pub(crate) async fn load_credentials(
        &self,
        s3: &S3Source,
        deadline: Duration,
    ) -> Result<Option<FileCredentialProvider>, StoreError> {
        let Some(credentials) = &s3.credentials else {
            return Ok(None);
        };
        if s3.file_endpoint_dir().is_some() {
            return Ok(None);
        }
        match self.inner.config.credentials_dir.locate(credentials)? {
            None => Ok(None),
            Some(file) => Ok(Some(file.load(deadline).await?)),
        }
    }

    /// Runs a mount call on a blocking thread under `deadline`. If the call
    /// outlives the deadline, a clean-up task waits for it and undoes it.
    async fn blocking_mount(
        &self,
        name: &str,
        step: String,
        deadline: Duration,
        call: impl FnOnce(&dyn Mounter) -> Result<Attached, crate::sys::SysError> + Send + 'static,
    ) -> Result<Attached, ManagerError> {
        let mounter = self.inner.mounter.clone();
        let target = self.path_of(name);
        {
            let waiting = lock(&self.inner.mounts_in_kernel);
            if waiting.contains(name) {
                return Err(ManagerError::MountInProgress {
                    name: name.to_string(),
                });
            }
            // Each call stuck in the kernel holds a blocking thread: servers
            // that never answer must not take them all.
            if waiting.len() >= MAX_MOUNTS_IN_KERNEL {
                return Err(ManagerError::TooManyHungMounts {
                    name: name.to_string(),
                    waiting: waiting.len(),
                });
            }
        }
        let changes = Arc::clone(&self.inner.mount_changes);
        let mut handle = tokio::task::spawn_blocking(move || {
            let attached = call(mounter.as_ref());
            changes.fetch_add(1, Ordering::Relaxed);
            attached
        });
        let joined = match tokio::time::timeout(deadline, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                // The call stays in the kernel until the server answers or
                // the kernel gives up; until then no other mount call on this
                // path (see `mounts_in_kernel`).
                lock(&self.inner.mounts_in_kernel).insert(name.to_string());
                let manager = self.clone();
                let dataset = name.to_string();
                tokio::spawn(async move {
                    if let Ok(Ok(attached)) = handle.await {
                        tracing::warn!(dataset, "a timed-out mount completed late; undoing it");
                        manager.detach_quietly(&dataset, Some(attached)).await;
                        manager.remove_dir(&dataset);
                    } else {
                        tracing::info!(dataset, "a timed-out mount call returned");
                    }
                    lock(&manager.inner.mounts_in_kernel).remove(&dataset);
                });
                return Err(ManagerError::Timeout {
                    name: name.to_string(),
                    step,
                    // The whole mount deadline (what the operator set),
                    // not what was left of it for this step.
                    seconds: self.inner.config.mount_timeout.as_secs().max(1),
                });
            }
        };
        let attached = joined
            .map_err(|e| ManagerError::Internal(format!("mount task: {e}")))?
            .map_err(|source| ManagerError::Sys {
                name: name.to_string(),
                source,
            })?;
        // Verify: exactly one mount on the path.
        let table = self.mount_table(name).await;
        let count = table
            .as_ref()
            .map(|t| mounts_at(t, &target).len())
            .unwrap_or(0);
        if count != 1 {
            self.detach_quietly(name, Some(attached)).await;
            return Err(ManagerError::Internal(format!(
                "mount {name}: expected one mount at {} after mounting, found {count}",
                target.display()
            )));
        }
        Ok(attached)
    }

    /// The mount table for health probes: one snapshot shared by every
    /// probe while it is younger than [`PROBE_TABLE_MAX_AGE`] and this agent
    /// mounted or unmounted nothing since it was read (a probe round of N
    /// datasets reads mountinfo about once, not N times).
    pub(crate) async fn probe_mount_table(
        &self,
        name: &str,
    ) -> Result<Arc<Vec<crate::sys::MountEntry>>, ManagerError> {
        let mut snapshot = self.inner.probe_table.lock().await;
        let changes = self.inner.mount_changes.load(Ordering::Relaxed);
        if let Some((taken, seen_changes, table)) = snapshot.as_ref()
            && *seen_changes == changes
            && taken.elapsed() < PROBE_TABLE_MAX_AGE
        {
            return Ok(Arc::clone(table));
        }
        let table = Arc::new(self.mount_table(name).await?);
        *snapshot = Some((Instant::now(), changes, Arc::clone(&table)));
        Ok(table)
    }

    pub(crate) async fn mount_table(
        &self,
        name: &str,
    ) -> Result<Vec<crate::sys::MountEntry>, ManagerError> {
        let mounter = self.inner.mounter.clone();
        tokio::task::spawn_blocking(move || mounter.mount_table())
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|source| ManagerError::Sys {
                name: name.to_string(),
                source,
            })
    }

    /// Unmounts a dataset. `force`: a busy mount is detached lazily (and NFS
    /// requests aborted). A dead backend (`degraded`) skips the polite try.
    pub(crate) async fn detach(
        &self,
        name: &str,
        attached: Option<Attached>,
        force: bool,
        degraded: bool,
    ) -> Result<(), DetachFailure> {
        let target = self.path_of(name);
        // Past a polite unmount: a FUSE mount is detached lazily (its server
        // is ours to stop), a kernel mount is forced (its server may be gone).
        let escalated = if matches!(attached, Some(Attached::Fuse(_))) {
            UnmountMode::Lazy
        } else {
            UnmountMode::Force
        };
        let first = if degraded {
            escalated
        } else {
            UnmountMode::Normal
        };
        // A mount detached while busy may still have readers inside.
        let mut detached_busy = degraded;
        match self.unmount_settling(&target, first).await {
            Ok(()) => {}
            Err(UnmountOutcome::NotMounted) => {}
            Err(UnmountOutcome::Busy) if !force => {
                return Err(DetachFailure {
                    error: ManagerError::Busy {
                        name: name.to_string(),
                    },
                    attached,
                });
            }
            Err(UnmountOutcome::Busy | UnmountOutcome::TimedOut) => {
                detached_busy = true;
                match self.unmount_with_deadline(&target, escalated).await {
                    Ok(()) | Err(UnmountOutcome::NotMounted) => {}
                    Err(other) => {
                        return Err(DetachFailure {
                            error: other.into_error(name, self.inner.config.unmount_timeout),
                            attached,
                        });
                    }
                }
            }
            Err(other) => {
                return Err(DetachFailure {
                    error: other.into_error(name, self.inner.config.unmount_timeout),
                    attached,
                });
            }
        }
        // Never leave stacked mounts behind.
        self.peel_mounts(name, &target).await;
        if let Some(Attached::Fuse(fuse)) = attached {
            // A FUSE dataset detached while busy keeps serving the files
            // still open in it, unless its readers are stuck (its backend is
            // known to be down, or requests stay unanswered): then they get
            // an error now, and the kernel's side of the connection goes.
            if detached_busy
                && let Some(connection) = fuse.session.connection
                && (degraded
                    || self
                        .requests_stay_waiting(connection, &fuse.filesystem)
                        .await)
            {
                self.abort_connection(connection).await;
            }
            finish_session(fuse.session, self.inner.link.get().cloned());
        }
        Ok(())
    }

    /// Whether FUSE connection `connection` is stuck: requests stay
    /// unanswered for [`STUCK_REQUEST_GRACE`] while `filesystem` answers
    /// none (a reader that is merely busy keeps getting answers).
    async fn requests_stay_waiting(&self, connection: u32, filesystem: &S3Filesystem) -> bool {
        let started = Instant::now();
        let answered = filesystem.answered();
        loop {
            let mounter = self.inner.mounter.clone();
            let waiting =
                tokio::task::spawn_blocking(move || mounter.fuse_requests_waiting(connection))
                    .await
                    .ok()
                    .flatten();
            if filesystem.answered() != answered {
                return false;
            }
            match waiting {
                None | Some(0) => return false,
                Some(_) if started.elapsed() >= STUCK_REQUEST_GRACE => return true,
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Aborts FUSE connection `connection` (its waiting requests fail at once).
    pub(crate) async fn abort_connection(&self, connection: u32) {
        let mounter = self.inner.mounter.clone();
        let aborted =
            tokio::task::spawn_blocking(move || mounter.abort_fuse_connection(connection)).await;
        if let Ok(Err(err)) = aborted {
            tracing::warn!(connection, error = %err, "could not abort a fuse connection");
        }
    }

    /// Detaches whatever is at the dataset's path, lazily, ignoring errors
    /// (clean-up after a failure).
    pub(crate) async fn detach_quietly(&self, name: &str, attached: Option<Attached>) {
        if let Some(connection) = attached.as_ref().and_then(Attached::connection) {
            self.abort_connection(connection).await;
        }
        let target = self.path_of(name);
        let _ = self.unmount_with_deadline(&target, UnmountMode::Lazy).await;
        self.peel_mounts(name, &target).await;
        if let Some(Attached::Fuse(fuse)) = attached {
            finish_session(fuse.session, self.inner.link.get().cloned());
        }
    }

    /// Lazily unmounts every mount left at `target`.
    pub(crate) async fn peel_mounts(&self, name: &str, target: &Path) {
        for _ in 0..MAX_STACKED {
            let Ok(table) = self.mount_table(name).await else {
                return;
            };
            if mounts_at(&table, target).is_empty() {
                return;
            }
            match self.unmount_with_deadline(target, UnmountMode::Lazy).await {
                Err(UnmountOutcome::Failed(e)) => {
                    tracing::warn!(dataset = name, error = %e, "could not detach a stacked mount");
                    return;
                }
                Err(UnmountOutcome::Crashed(e)) => {
                    tracing::warn!(dataset = name, error = %e, "unmount task failed");
                    return;
                }
                _ => {}
            }
        }
    }

    /// A unmount that gives a just-closed file a moment: the kernel drops a
    /// file's hold on the mount when its last reference goes, which can
    /// trail the `close` of a reader by a few milliseconds.
    async fn unmount_settling(
        &self,
        target: &Path,
        mode: UnmountMode,
    ) -> Result<(), UnmountOutcome> {
        let mut outcome = self.unmount_with_deadline(target, mode).await;
        for pause_ms in BUSY_RETRY_PAUSES_MS {
            if !matches!(outcome, Err(UnmountOutcome::Busy)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            outcome = self.unmount_with_deadline(target, mode).await;
        }
        outcome
    }

    async fn unmount_with_deadline(
        &self,
        target: &Path,
        mode: UnmountMode,
    ) -> Result<(), UnmountOutcome> {
        let mounter = self.inner.mounter.clone();
        let path: PathBuf = target.to_path_buf();
        let changes = Arc::clone(&self.inner.mount_changes);
        let call = tokio::task::spawn_blocking(move || {
            let unmounted = mounter.unmount(&path, mode);
            changes.fetch_add(1, Ordering::Relaxed);
            unmounted
        });
        match tokio::time::timeout(self.inner.config.unmount_timeout, call).await {
            Err(_) => Err(UnmountOutcome::TimedOut),
            Ok(Err(join)) => Err(UnmountOutcome::Crashed(join.to_string())),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => match err.errno() {
                Some(nix::errno::Errno::EBUSY) => Err(UnmountOutcome::Busy),
                Some(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {
                    Err(UnmountOutcome::NotMounted)
                }
                _ => Err(UnmountOutcome::Failed(err)),
            },
        }
    }
}

enum UnmountOutcome {
    NotMounted,
    Busy,
    TimedOut,
    Failed(crate::sys::SysError),
    /// The blocking task panicked.
    Crashed(String),
}

impl UnmountOutcome {
    fn into_error(self, name: &str, deadline: Duration) -> ManagerError {
        match self {
            UnmountOutcome::Failed(source) => ManagerError::Sys {
                name: name.to_string(),
                source,
            },
            UnmountOutcome::Busy => ManagerError::Busy {
                name: name.to_string(),
            },
            UnmountOutcome::TimedOut => ManagerError::Timeout {
                name: name.to_string(),
                step: "forced unmount".to_string(),
                seconds: deadline.as_secs(),
            },
            UnmountOutcome::Crashed(reason) => {
                ManagerError::Internal(format!("unmount {name}: {reason}"))
            }
            UnmountOutcome::NotMounted => {
                ManagerError::Internal(format!("unmount {name}: not mounted"))
            }
        }
    }
}

/// Lets a FUSE server thread finish in the background: after a lazy detach
/// it keeps serving files that are still open, and ends with the connection
/// (then the supervisor, if any, lets go of it too).
pub(crate) fn finish_session(session: FuseSession, link: Option<Arc<WorkerLink>>) {
    std::thread::Builder::new()
        .name("fuse-join".to_string())
        .spawn(move || {
            let (connection, held_id) = (session.connection, session.held_id);
            if let Err(e) = session.join() {
                tracing::debug!(error = %e, "fuse session ended with an error");
            }
            if let (Some(link), Some(connection), Some(id)) = (link, connection, held_id) {
                link.connection_ended(connection, id);
            }
            crate::memory::return_freed_memory();
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::warn!(error = %e, "could not spawn fuse join thread"));
}

/// The owner and modes an S3 dataset shows: the spec's, else the defaults.
fn ownership_of(s3: &S3Source, read_only: bool) -> Ownership {
    let defaults = Ownership::defaults(read_only);
    let mode = |given: Option<FileMode>, default: u16| given.map_or(default, |mode| mode.0 as u16);
    Ownership {
        uid: s3.uid.unwrap_or(defaults.uid),
        gid: s3.gid.unwrap_or(defaults.gid),
        file_mode: mode(s3.file_mode, defaults.file_mode),
        dir_mode: mode(s3.dir_mode, defaults.dir_mode),
    }
}

/// What the node cache names the blocks of `s3` by, besides key, ETag and
/// index: endpoint, bucket and the credentials reference that reads them
/// (Secret name, file path or access key id), so that datasets share blocks
/// only with those reading with the same credentials. None when the
/// dataset stays out of the node cache (`"cache": false`, a `file://`
/// bucket).
fn cache_origin(s3: &S3Source) -> Option<String> {
    let endpoint = s3.endpoint.as_deref().unwrap_or("aws");
    if !s3.cache || endpoint.starts_with("file://") {
        return None;
    }
    // Another dataset's blocks must not let a reader see bytes its own
    // credentials could not GET.
    let principal = match &s3.credentials {
        None | Some(S3Credentials::Anonymous) => "anonymous".to_string(),
        Some(S3Credentials::Secret(name)) => format!("secret:{name}"),
        Some(S3Credentials::File(path)) => format!("file:{}", path.display()),
        Some(S3Credentials::Inline(keys)) => format!("key:{}", keys.access_key_id),
    };
    Some(format!(
        "{}/{}#{principal}",
        endpoint.trim_end_matches('/'),
        s3.bucket
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(spec: serde_json::Value) -> S3Source {
        match serde_json::from_value::<crate::spec::MountSpec>(spec)
            .unwrap()
            .source
        {
            crate::spec::SourceSpec::S3(s3) => s3,
            other => panic!("not s3: {other:?}"),
        }
    }

    #[test]
    fn node_cache_blocks_are_shared_only_under_the_same_credentials() {
        let with = |bucket: &str, credentials: serde_json::Value| {
            cache_origin(&source(serde_json::json!({"source": {"s3": {
                "bucket": bucket, "endpoint": "http://10.0.0.9:3900", "credentials": credentials
            }}})))
        };
        let reader = with("data", serde_json::json!({"secret": "reader"}));
        assert!(reader.is_some());
        assert_eq!(
            reader,
            with("data", serde_json::json!({"secret": "reader"}))
        );
        for other in [
            with("data", serde_json::json!({"secret": "writer"})),
            with(
                "data",
                serde_json::json!({"file": "/etc/hotmount/creds/reader"}),
            ),
            with("data", serde_json::json!("anonymous")),
            with("other", serde_json::json!({"secret": "reader"})),
        ] {
            assert!(other.is_some());
            assert_ne!(other, reader);
        }
        let uncached = source(serde_json::json!({"source": {"s3": {
            "bucket": "data", "endpoint": "http://10.0.0.9:3900", "cache": false
        }}}));
        assert_eq!(cache_origin(&uncached), None);
        let local = source(serde_json::json!({"source": {"s3": {
            "bucket": "data", "endpoint": "file:///srv/buckets"
        }}}));
        assert_eq!(cache_origin(&local), None);
    }
}
