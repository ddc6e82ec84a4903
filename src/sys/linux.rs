//! The real [`Mounter`]: mount(2), umount2(2), /dev/fuse and mountinfo, through
//! nix, procfs and fuser.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::{
    FuseMountRequest, FuseSession, MountEntry, MountFlags, MountRequest, Mounter, SysError,
    UnmountMode,
};
use crate::s3fs::fuse::FuseAdapter;
use crate::sys::{FusePool, PooledConnection};

/// Where the kernel exposes FUSE connections (fusectl).
const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// The [`Mounter`] that talks to the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

fn ms_flags(flags: MountFlags) -> MsFlags {
    let mut ms = MsFlags::empty();
    ms.set(MsFlags::MS_RDONLY, flags.read_only);
    ms.set(MsFlags::MS_NOSUID, flags.nosuid);
    ms.set(MsFlags::MS_NODEV, flags.nodev);
    ms.set(MsFlags::MS_NOEXEC, flags.noexec);
    ms
}

fn io_errno(err: &std::io::Error) -> Errno {
    err.raw_os_error()
        .map(Errno::from_raw)
        .unwrap_or(Errno::EIO)
}

/// Opens a mount point as an `O_PATH` descriptor without following a symlink
/// in its last component: the directory the caller checked is the one that
/// gets mounted on, even if a symlink is planted there in between.
fn open_mount_point(target: &Path) -> Result<OwnedFd, SysError> {
    let fail = |errno| SysError::MountPoint {
        target: target.to_path_buf(),
        errno,
    };
    // O_NOFOLLOW applies to the last component only: the parents (the
    // root's path, the operator's) resolve as usual.
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::open(target, flags, Mode::empty()).map_err(fail)
}

/// The path through which the kernel reaches exactly the directory `fd` holds.
fn descriptor_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Mounter for LinuxMounter {
    fn mount(&self, request: &MountRequest) -> Result<(), SysError> {
        let mount_point = open_mount_point(&request.target)?;
        nix::mount::mount(
            Some(request.source.as_str()),
            &descriptor_path(&mount_point),
            Some(request.fstype.as_str()),
            ms_flags(request.flags),
            Some(request.data.as_str()),
        )
        .map_err(|errno| SysError::Mount {
            fstype: request.fstype.clone(),
            source_name: request.source.clone(),
            target: request.target.clone(),
            errno,
        })
    }

    fn mount_fuse(
        &self,
        request: &FuseMountRequest,
        adapter: FuseAdapter,
    ) -> Result<FuseSession, SysError> {
        let device: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .map_err(|e| SysError::FuseDevice(io_errno(&e)))?
            .into();
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            device.as_raw_fd()
        );
        self.mount(&MountRequest {
            source: request.fsname.clone(),
            target: request.target.clone(),
            fstype: "fuse.hotmount".to_string(),
            flags: request.flags,
            data,
        })?;
        // The connection number is the device minor. Read it from mountinfo:
        // a stat of the mount point would wait for the INIT reply, which only
        // the handshake below sends.
        let connection = self.mount_table().ok().and_then(|table| {
            super::mounts_at(&table, &request.target)
                .last()
                .map(|entry| entry.major_minor.1)
        });
        let started = start_fuse_server(device, adapter, request.threads);
        if let (Ok(_), Some(minor)) = (&started, connection) {
            raise_readahead(minor);
        }
        match started {
            Ok((served, negotiated, device)) => Ok(FuseSession {
                served: Some(served),
                connection,
                negotiated: Some(negotiated),
                device: Some(device),
                held_id: None,
            }),
            Err(source) => {
                // Nothing half-done: the mount without a server goes again.
                let _ = self.unmount(&request.target, UnmountMode::Lazy);
                Err(SysError::FuseSession {
                    target: request.target.clone(),
                    source,
                })
            }
        }
    }

    fn unmount(&self, target: &Path, mode: UnmountMode) -> Result<(), SysError> {
        let flags = match mode {
            UnmountMode::Normal => MntFlags::empty(),
            UnmountMode::Lazy => MntFlags::MNT_DETACH,
            UnmountMode::Force => MntFlags::MNT_FORCE | MntFlags::MNT_DETACH,
        } | MntFlags::UMOUNT_NOFOLLOW;
        nix::mount::umount2(target, flags).map_err(|errno| SysError::Unmount {
            target: target.to_path_buf(),
            errno,
        })
    }

    fn make_rshared(&self, target: &Path) -> Result<(), SysError> {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|errno| SysError::Propagation {
            target: target.to_path_buf(),
            errno,
        })
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError> {
        let infos = procfs::process::Process::myself()
            .and_then(|me| me.mountinfo())
            .map_err(|e| SysError::MountInfo(e.to_string()))?;
        Ok(infos.into_iter().map(MountEntry::from).collect())
    }

    fn verify_propagation(&self, root: &Path) -> Result<(), SysError> {
        let canary = root.join(format!(".hotmount-canary-{}", std::process::id()));
        let fail = |reason: String| SysError::Canary {
            root: root.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(&canary)
            .map_err(|e| fail(format!("create {}: {e}", canary.display())))?;
        let result = self.canary_check(root, &canary).map_err(fail);
        let _ = std::fs::remove_dir(&canary);
        result
    }

    fn fuse_requests_waiting(&self, connection: u32) -> Option<u32> {
        ensure_fusectl(connection);
        std::fs::read_to_string(format!("{FUSE_CONNECTIONS}/{connection}/waiting"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn abort_fuse_connection(&self, connection: u32) -> Result<(), SysError> {
        let path = PathBuf::from(format!("{FUSE_CONNECTIONS}/{connection}/abort"));
        ensure_fusectl(connection);
        std::fs::write(&path, b"1").map_err(|e| SysError::FuseSession {
            target: path,
            source: e,
        })
    }
}

/// Mounts fusectl on /sys/fs/fuse/connections when connection `connection`
/// is not to be seen there (it may not be mounted in this namespace yet).
fn ensure_fusectl(connection: u32) {
    if !Path::new(FUSE_CONNECTIONS)
        .join(connection.to_string())
        .exists()
    {
        let _ = nix::mount::mount(
            Some("fusectl"),
            FUSE_CONNECTIONS,
            Some("fusectl"),
            MsFlags::empty(),
            None::<&str>,
        );
    }
}

/// How long each side of the canary check waits for the other.
const CANARY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn canary_visible(canary: &Path) -> Result<bool, String> {
    // The calling thread's own namespace, not the process's.
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").map_err(|e| e.to_string())?;
    let wanted = canary.to_string_lossy();
    Ok(text
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref())))
}

/// The "pod" side of the canary check, on a thread of its own: unshare the
/// mount namespace, make the root a slave, report what it sees.
fn canary_viewer(
    root: PathBuf,
    canary: PathBuf,
    steps: std::sync::mpsc::Receiver<()>,
    seen: std::sync::mpsc::Sender<Result<bool, String>>,
) {
    let setup = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare a viewer namespace: {e}"))
        .and_then(|()| {
            nix::mount::mount(
                None::<&str>,
                &root,
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("make the viewer's root a slave: {e}"))
        });
    let failed = setup.is_err();
    if seen.send(setup.map(|()| true)).is_err() || failed {
        return;
    }
    for _ in 0..2 {
        if steps.recv_timeout(CANARY_WAIT).is_err() {
            return;
        }
        if seen.send(canary_visible(&canary)).is_err() {
            return;
        }
    }
}

impl LinuxMounter {
    fn canary_check(&self, root: &Path, canary: &Path) -> Result<(), String> {
        let (step_tx, step_rx) = std::sync::mpsc::channel();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (viewer_root, viewer_canary) = (root.to_path_buf(), canary.to_path_buf());
        let viewer = std::thread::Builder::new()
            .name("canary-viewer".to_string())
            .spawn(move || canary_viewer(viewer_root, viewer_canary, step_rx, seen_tx))
            .map_err(|e| e.to_string())?;
        let wait = |what: &str| {
            seen_rx
                .recv_timeout(CANARY_WAIT)
                .map_err(|_| format!("viewer did not answer ({what})"))?
        };
        let result = (|| {
            wait("setup")?;
            self.mount(&MountRequest {
                source: "hotmount-canary".to_string(),
                target: canary.to_path_buf(),
                fstype: "tmpfs".to_string(),
                flags: MountFlags::dataset(true),
                data: "size=4k".to_string(),
            })
            .map_err(|e| e.to_string())?;
            let _ = step_tx.send(());
            let appeared = wait("mount");
            let unmounted = self.unmount(canary, UnmountMode::Lazy);
            let _ = step_tx.send(());
            let vanished = wait("unmount");
            unmounted.map_err(|e| e.to_string())?;
            if !appeared? {
                return Err("a canary mount did not appear in a slave namespace".to_string());
            }
            if vanished? {
                return Err("a canary unmount did not propagate to a slave namespace".to_string());
            }
            Ok(())
        })();
        drop(step_tx);
        let _ = viewer.join();
        result
    }
}

/// The kernel readahead (KiB) of FUSE mounts: the bdi default is 128 KiB and
/// FUSE_INIT can only lower it, so sequential reads would reach the
/// filesystem 128 KiB at a time. 1 MiB matches the largest read.
const FUSE_READAHEAD_KIB: u32 = 1024;

/// Raises the readahead of the FUSE connection `minor` (device 0:minor);
/// best effort: a mount without it works, only with smaller reads.
fn raise_readahead(minor: u32) {
    let path = format!("/sys/class/bdi/0:{minor}/read_ahead_kb");
    if let Err(err) = std::fs::write(&path, FUSE_READAHEAD_KIB.to_string()) {
        tracing::warn!(path, error = %err, "cannot raise fuse readahead");
    }
}

/// Answers the new connection's INIT and hands it to the process's FUSE
/// serving pool (which may grow to `threads` threads under load); also
/// gives what was negotiated and a duplicate of the fd (for the supervisor).
fn start_fuse_server(
    device: OwnedFd,
    adapter: FuseAdapter,
    threads: usize,
) -> std::io::Result<(PooledConnection, fuser::Negotiated, OwnedFd)> {
    let connection = fuser::Connection::new(adapter, device, fuser::SessionACL::All)?;
    let negotiated = connection.negotiated();
    let duplicate = connection.fd().try_clone_to_owned()?;
    let pool = FusePool::global();
    pool.allow_threads(threads);
    Ok((pool.serve(Arc::new(connection))?, negotiated, duplicate))
}

/// Serves connection number `connection` (its fd `device`) that another
/// process answered INIT for with `negotiated`, and asks the kernel to send
/// again every request that process read and did not answer. No mount is
/// made or changed. Fails on kernels without `FUSE_NOTIFY_RESEND` (before
/// Linux 6.9): a request the dead process had read would never be answered.
pub fn resume_fuse(
    device: OwnedFd,
    connection: u32,
    negotiated: fuser::Negotiated,
    adapter: FuseAdapter,
    threads: usize,
) -> std::io::Result<FuseSession> {
    if !negotiated.supports_resend() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!(
                "the kernel speaks FUSE {}.{}; resending lost requests needs 7.40 (Linux 6.9)",
                negotiated.major, negotiated.minor
            ),
        ));
    }
    let duplicate = device.try_clone()?;
    adapter.set_passthrough(negotiated.flags & fuser::InitFlags::FUSE_PASSTHROUGH.bits() != 0);
    adapter.set_device(device.try_clone()?);
    let resumed = fuser::Connection::resume(adapter, device, fuser::SessionACL::All, negotiated);
    resumed.request_resend()?;
    let pool = FusePool::global();
    pool.allow_threads(threads);
    let served = pool.serve(Arc::new(resumed))?;
    Ok(FuseSession {
        served: Some(served),
        connection: Some(connection),
        negotiated: Some(negotiated),
        device: Some(duplicate),
        held_id: None,
    })
}

impl From<procfs::process::MountInfo> for MountEntry {
    fn from(info: procfs::process::MountInfo) -> Self {
        use procfs::process::MountOptFields;
        let options = |map: std::collections::HashMap<String, Option<String>>| {
            let mut list: Vec<String> = map
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect();
            list.sort();
            list
        };
        let (major, minor) = info.majmin.split_once(':').unwrap_or(("0", "0"));
        MountEntry {
            mount_id: info.mnt_id,
            parent_id: info.pid,
            major_minor: (major.parse().unwrap_or(0), minor.parse().unwrap_or(0)),
            root: PathBuf::from(info.root),
            mount_point: info.mount_point,
            mount_options: options(info.mount_options),
            optional_fields: info
                .opt_fields
                .iter()
                .map(|field| match field {
                    MountOptFields::Shared(n) => format!("shared:{n}"),
                    MountOptFields::Master(n) => format!("master:{n}"),
                    MountOptFields::PropagateFrom(n) => format!("propagate_from:{n}"),
                    MountOptFields::Unbindable => "unbindable".to_string(),
                })
                .collect(),
            fstype: info.fs_type,
            source: info.mount_source.unwrap_or_default(),
            super_options: options(info.super_options),
        }
    }
}
