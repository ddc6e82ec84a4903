//! The simulated node: a private mount namespace for the calling test thread.
//!
//! `unshare(CLONE_NEWNS)` on one thread of the multi-threaded test process is
//! allowed (the kernel also unshares that thread's `CLONE_FS`); only that thread
//! and the processes and threads it spawns afterwards live in the new namespace.
//! Hence: read this thread's mounts from `/proc/thread-self/mountinfo`, never
//! `/proc/self/...`, which is the main thread and still the host's namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

/// Guard for a test thread that moved into its own private mount namespace.
///
/// Dropping it moves the thread back to the namespace it came from; the private
/// namespace, and every mount in it, goes away when its last process exits.
/// Must be dropped on the thread that entered it (it is `!Send`).
pub struct NodeNamespace {
    original: File,
    namespace_id: PathBuf,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl NodeNamespace {
    /// Moves the calling thread into a new mount namespace in which `/` is
    /// recursively private, so nothing done here reaches the host's mount table.
    pub fn enter() -> NodeNamespace {
        super::require_root();
        let original = File::open("/proc/thread-self/ns/mnt")
            .unwrap_or_else(|e| panic!("open /proc/thread-self/ns/mnt: {e}"));
        unshare(CloneFlags::CLONE_NEWNS)
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNS) for the node namespace: {e}"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("make / rprivate in the node namespace: {e}"));
        NodeNamespace {
            original,
            namespace_id: current_mount_namespace(),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Makes `dir` what `/var/lib/hotmount` is on a real node: a mount whose
    /// propagation is shared (a fresh tmpfs, made rshared), so the agent's root
    /// below it can propagate. Call after `enter`, before starting the agent.
    pub fn share_dir(&self, dir: &Path) {
        mount(
            Some("hotmount-node"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .unwrap_or_else(|e| panic!("mount the node's tmpfs on {}: {e}", dir.display()));
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("make {} rshared: {e}", dir.display()));
    }

    /// The namespace's identity, e.g. `mnt:[4026532581]`.
    pub fn id(&self) -> &Path {
        &self.namespace_id
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        // The thread's fs_struct is private since unshare, so setns is allowed.
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNS) {
            eprintln!(
                "warning: could not return the test thread to its original mount namespace: {e}"
            );
        }
    }
}

/// The mount namespace of the calling thread, e.g. `mnt:[4026531841]`.
pub fn current_mount_namespace() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/mnt")
        .unwrap_or_else(|e| panic!("readlink /proc/thread-self/ns/mnt: {e}"))
}

/// The calling thread's mount table (`/proc/thread-self/mountinfo`).
pub fn thread_mountinfo() -> String {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap_or_else(|e| panic!("read /proc/thread-self/mountinfo: {e}"))
}

/// Mount points in a mountinfo text, with `\040`-style escapes decoded.
pub(crate) fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// Optional fields (e.g. `shared:12`, `master:3`) of the topmost mount at `point`.
pub(crate) fn propagation_of(mountinfo: &str, point: &Path) -> Option<Vec<String>> {
    mountinfo
        .lines()
        .rev()
        .find(|line| line.split(' ').nth(4).map(unescape_mountinfo).as_deref() == point.to_str())
        .map(|line| {
            line.split(' ')
                .skip(6)
                .take_while(|field| *field != "-")
                .map(str::to_owned)
                .collect()
        })
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && octal.is_some_and(|d| d.iter().all(|b| (b'0'..=b'7').contains(b))) {
            let d = octal.unwrap_or_default();
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
