//! The syscall boundary: the only place that calls mount(2)/umount2(2), opens
//! /dev/fuse or reads /proc/self/mountinfo. Everything above receives a
//! [`Mounter`] as a value (`Arc<dyn Mounter>`), so tests inject the
//! [`RecordingMounter`] without `cfg!(test)`.

pub mod fuse_pool;
mod linux;
mod recording;

use std::path::{Path, PathBuf};

pub use fuse_pool::{FusePool, PooledConnection};
pub use linux::{LinuxMounter, resume_fuse};
pub use recording::{RecordedCall, RecordingMounter};

use crate::s3fs::fuse::FuseAdapter;

/// Flags for one mount(2) call, as typed values (no raw strings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// MS_RDONLY.
    pub read_only: bool,
    /// MS_NOSUID (hotmount sets it on every dataset).
    pub nosuid: bool,
    /// MS_NODEV (hotmount sets it on every dataset).
    pub nodev: bool,
    /// MS_NOEXEC.
    pub noexec: bool,
}

impl MountFlags {
    /// The flags every dataset mount gets: nosuid, nodev, and ro if asked.
    pub fn dataset(read_only: bool) -> Self {
        MountFlags {
            read_only,
            nosuid: true,
            nodev: true,
            noexec: false,
        }
    }
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    /// The source string (`server:/export`, `tmpfs`, ...).
    pub source: String,
    /// The mount point.
    pub target: PathBuf,
    /// The filesystem type (`nfs4`, `tmpfs`, ...).
    pub fstype: String,
    /// Generic flags.
    pub flags: MountFlags,
    /// Filesystem-specific data (comma-separated `key=value` options).
    pub data: String,
}

/// How to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmountMode {
    /// Plain umount2(0): fails with EBUSY while in use.
    Normal,
    /// MNT_DETACH: detach now, clean up when no longer busy.
    Lazy,
    /// MNT_FORCE | MNT_DETACH: abort pending requests (NFS) and detach.
    Force,
}

/// A FUSE mount to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuseMountRequest {
    /// The mount point.
    pub target: PathBuf,
    /// Shown as the source in mountinfo, e.g. `hotmount:bucket/prefix`.
    pub fsname: String,
    /// Mount flags.
    pub flags: MountFlags,
    /// The most threads the FUSE serving pool may grow to for this mount.
    pub threads: usize,
}

/// One line of /proc/self/mountinfo, the parts hotmount uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount id (field 1).
    pub mount_id: i32,
    /// Parent mount id (field 2).
    pub parent_id: i32,
    /// `major:minor` of the filesystem's device.
    pub major_minor: (u32, u32),
    /// Root of the mount within its filesystem.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `ro`, `nosuid`, ...).
    pub mount_options: Vec<String>,
    /// Optional fields; `shared:N` marks a shared mount.
    pub optional_fields: Vec<String>,
    /// Filesystem type, e.g. `nfs4`, `fuse.hotmount`, `tmpfs`.
    pub fstype: String,
    /// Mount source, e.g. `10.0.0.5:/exports/x`.
    pub source: String,
    /// Super-block options (`addr=...`, `vers=4.1`, ...).
    pub super_options: Vec<String>,
}

impl MountEntry {
    /// Whether this mount is a shared peer group member (`shared:N`).
    pub fn is_shared(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("shared:"))
    }

    /// Whether this mount receives propagation from a master (`master:N`).
    pub fn is_slave(&self) -> bool {
        self.optional_fields
            .iter()
            .any(|f| f.starts_with("master:"))
    }

    /// Whether this mount is read-only.
    pub fn is_read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro")
    }

    /// The value of a super-block option such as `addr` or `vers`.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find_map(|o| o.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

/// A running FUSE server for one mount. Dropping it does not unmount: unmount
/// the path (or abort the connection), then [`FuseSession::join`].
#[derive(Debug)]
pub struct FuseSession {
    served: Option<PooledConnection>,
    /// The connection number under /sys/fs/fuse/connections (the device minor).
    pub connection: Option<u32>,
    /// What was negotiated at INIT (what a process taking the connection
    /// over needs); none for a session nothing serves.
    pub negotiated: Option<fuser::Negotiated>,
    /// A duplicate of the connection's `/dev/fuse` fd, for the supervisor
    /// to hold (taken when it is handed over).
    pub device: Option<std::os::fd::OwnedFd>,
    /// The id under which the supervisor holds it.
    pub held_id: Option<u64>,
}

impl FuseSession {
    /// A session that nothing serves (what the recording fake returns).
    pub fn detached() -> Self {
        FuseSession {
            served: None,
            connection: None,
            negotiated: None,
            device: None,
            held_id: None,
        }
    }

    /// Whether the connection is still being served (a session nothing
    /// serves has nothing that could end).
    pub fn is_serving(&self) -> bool {
        self.served
            .as_ref()
            .is_none_or(PooledConnection::is_serving)
    }

    /// Waits until the connection ended (after the mount is gone).
    pub fn join(mut self) -> std::io::Result<()> {
        match self.served.take() {
            Some(served) => served.join(),
            None => Ok(()),
        }
    }
}

/// A failing system call: which step, on what, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// mount(2) failed.
    #[error("mount {fstype} {source_name} at {target}: {errno}")]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Mount source.
        source_name: String,
        /// Mount point.
        target: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// The mount point is not a plain directory: a symlink there is never
    /// followed, so a planted link cannot redirect a mount.
    #[error("mount point {target} is not a plain directory (symlinks are never followed): {errno}")]
    MountPoint {
        /// Mount point.
        target: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// umount2(2) failed.
    #[error("unmount {target}: {errno}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// Changing propagation failed.
    #[error("make {target} rshared: {errno}")]
    Propagation {
        /// Mount point.
        target: PathBuf,
        /// The error.
        errno: nix::errno::Errno,
    },
    /// Reading mountinfo failed.
    #[error("read /proc/self/mountinfo: {0}")]
    MountInfo(String),
    /// Opening /dev/fuse failed.
    #[error("open /dev/fuse: {0}")]
    FuseDevice(nix::errno::Errno),
    /// The canary mount did not propagate.
    #[error("canary under {root}: {reason}")]
    Canary {
        /// The root.
        root: PathBuf,
        /// What was seen.
        reason: String,
    },
    /// The FUSE handshake or server start failed.
    #[error("start fuse server for {target}: {source}")]
    FuseSession {
        /// Mount point.
        target: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl SysError {
    /// The errno behind this error, if one.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            SysError::Mount { errno, .. }
            | SysError::MountPoint { errno, .. }
            | SysError::Unmount { errno, .. }
            | SysError::Propagation { errno, .. }
            | SysError::FuseDevice(errno) => Some(*errno),
            SysError::FuseSession { source, .. } => {
                source.raw_os_error().map(nix::errno::Errno::from_raw)
            }
            SysError::MountInfo(_) | SysError::Canary { .. } => None,
        }
    }
}

/// The kernel operations hotmount needs. Blocking: call from a blocking thread.
pub trait Mounter: Send + Sync + 'static {
    /// mount(2) a filesystem.
    fn mount(&self, request: &MountRequest) -> Result<(), SysError>;
    /// Opens /dev/fuse, mounts it at the target and starts `adapter` serving it.
    fn mount_fuse(
        &self,
        request: &FuseMountRequest,
        adapter: FuseAdapter,
    ) -> Result<FuseSession, SysError>;
    /// umount2(2).
    fn unmount(&self, target: &Path, mode: UnmountMode) -> Result<(), SysError>;
    /// Makes `target` (a mount point) recursively shared.
    fn make_rshared(&self, target: &Path) -> Result<(), SysError>;
    /// The current mount table of this mount namespace.
    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError>;
    /// Aborts a FUSE connection through /sys/fs/fuse/connections/N/abort.
    fn abort_fuse_connection(&self, connection: u32) -> Result<(), SysError>;
    /// Requests of FUSE connection `connection` not answered yet
    /// (/sys/fs/fuse/connections/N/waiting); None when it cannot be read.
    fn fuse_requests_waiting(&self, connection: u32) -> Option<u32>;
    /// Proves that mounts under `root` propagate into other mount namespaces:
    /// a canary mounted under it must appear in, and vanish from, a fresh
    /// namespace whose copy of the root is a slave (as a pod's is).
    fn verify_propagation(&self, root: &Path) -> Result<(), SysError>;
}

/// The mounts at exactly `path`, bottom first.
pub fn mounts_at<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    table.iter().filter(|m| m.mount_point == path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        point: &str,
        optional: &[&str],
        options: &[&str],
        super_options: &[&str],
    ) -> MountEntry {
        MountEntry {
            mount_id: 1,
            parent_id: 0,
            major_minor: (0, 51),
            root: "/".into(),
            mount_point: point.into(),
            mount_options: options.iter().map(|s| s.to_string()).collect(),
            optional_fields: optional.iter().map(|s| s.to_string()).collect(),
            fstype: "nfs4".into(),
            source: "10.0.2.2:/data".into(),
            super_options: super_options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn entry_accessors_read_the_fields() {
        let e = entry(
            "/r/x",
            &["shared:7"],
            &["ro", "nosuid"],
            &["vers=4.1", "addr=10.0.2.2"],
        );
        assert!(e.is_shared());
        assert!(e.is_read_only());
        assert_eq!(e.super_option("vers"), Some("4.1"));
        assert_eq!(e.super_option("addr"), Some("10.0.2.2"));
        assert_eq!(e.super_option("add"), None);
        let slave = entry("/r/y", &["master:5"], &["rw"], &[]);
        assert!(!slave.is_shared() && !slave.is_read_only());
        let table = vec![e, slave];
        assert_eq!(mounts_at(&table, Path::new("/r/x")).len(), 1);
        assert!(mounts_at(&table, Path::new("/r")).is_empty());
    }
}
