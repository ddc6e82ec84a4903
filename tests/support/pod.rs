//! A simulated workload pod: a long-lived process in its own mount namespace
//! whose view of the agent's root is what kubelet gives a pod with
//! `mountPropagation: HostToContainer` and `readOnly: true` (an rslave, read-only
//! recursive bind). File operations run on a helper thread that `setns`es into
//! the pod, so they return the kernel's real errno.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns, unshare};

use super::namespace::{mount_points, propagation_of, thread_mountinfo};

/// Bound on one file operation inside the pod (a wedged mount fails the test).
pub const POD_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the pod's namespace setup.
pub const POD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The pod process; killed and reaped on drop.
pub struct Pod {
    child: Child,
    view: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pod {
    /// Starts a pod from the calling thread's (node) namespace that sees `root`
    /// read-only at [`Pod::view`], receiving later mounts and unmounts under it.
    ///
    /// `root` must already be a shared mount (the agent makes it one before
    /// `/readyz` answers 200): a pod started earlier would never see datasets.
    pub fn start(root: &Path) -> Pod {
        super::require_root();
        super::require_tool("unshare", "util-linux");
        super::require_tool("nsenter", "util-linux");
        let node_mounts = thread_mountinfo();
        match propagation_of(&node_mounts, root) {
            Some(fields) if fields.iter().any(|f| f.starts_with("shared:")) => {}
            other => panic!(
                "Pod::start: {} must be a shared mount point in this thread's namespace \
                 (found {other:?}); start the pod after the agent is ready",
                root.display()
            ),
        }
        let dir = tempfile::Builder::new()
            .prefix("hotmount-pod-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create pod directory: {e}"));
        let view = dir.path().join("datasets");
        std::fs::create_dir(&view)
            .unwrap_or_else(|e| panic!("create pod view {}: {e}", view.display()));
        let log_path = dir.path().join("pod.log");
        let log = File::create(&log_path).unwrap_or_else(|e| panic!("create pod log: {e}"));
        let script = r#"set -e
mount --rbind "$1" "$2"
mount -o remount,bind,ro "$2"
mount --make-rslave "$2"
echo ready
exec sleep infinity"#;
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
                script,
                "pod",
            ])
            .arg(root)
            .arg(&view)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the pod (unshare --mount): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
        let ready = ready_rx.recv_timeout(POD_START_TIMEOUT);
        let pod = Pod {
            child,
            view,
            _dir: dir,
        };
        if ready.as_deref().map(str::trim) != Ok("ready") {
            panic!(
                "pod did not become ready within {POD_START_TIMEOUT:?} ({ready:?}); its stderr:\n{}",
                super::read_log(&log_path)
            );
        }
        pod
    }

    /// The pod's view of the root, a path valid inside the pod (like `/datasets`).
    pub fn view(&self) -> &Path {
        &self.view
    }

    /// The pod process id (its namespace is `/proc/PID/ns/mnt`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `operation` with the view path on a thread inside the pod's mount
    /// namespace; panics if it takes longer than [`POD_OPERATION_TIMEOUT`].
    pub fn run<T: Send + 'static>(&self, operation: impl FnOnce(&Path) -> T + Send + 'static) -> T {
        let namespace_path = format!("/proc/{}/ns/mnt", self.pid());
        let namespace = File::open(&namespace_path)
            .unwrap_or_else(|e| panic!("open {namespace_path} (is the pod alive?): {e}"));
        let view = self.view.clone();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // setns(CLONE_NEWNS) needs a thread-private fs_struct (root and cwd).
            unshare(CloneFlags::CLONE_FS)
                .unwrap_or_else(|e| panic!("unshare(CLONE_FS) for a pod thread: {e}"));
            setns(namespace.as_fd(), CloneFlags::CLONE_NEWNS)
                .unwrap_or_else(|e| panic!("setns into the pod's mount namespace: {e}"));
            let _ = done_tx.send(operation(&view));
        });
        match done_rx.recv_timeout(POD_OPERATION_TIMEOUT) {
            Ok(value) => value,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "operation in the pod did not finish within {POD_OPERATION_TIMEOUT:?} (wedged mount?)"
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("operation in the pod panicked (see the thread's message above)")
            }
        }
    }

    /// Starts `operation` on a thread of its own inside the pod's mount
    /// namespace, with no deadline (a workload that runs until told to stop).
    pub fn spawn<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Path) -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let namespace_path = format!("/proc/{}/ns/mnt", self.pid());
        let namespace = File::open(&namespace_path)
            .unwrap_or_else(|e| panic!("open {namespace_path} (is the pod alive?): {e}"));
        let view = self.view.clone();
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_FS)
                .unwrap_or_else(|e| panic!("unshare(CLONE_FS) for a pod thread: {e}"));
            setns(namespace.as_fd(), CloneFlags::CLONE_NEWNS)
                .unwrap_or_else(|e| panic!("setns into the pod's mount namespace: {e}"));
            operation(&view)
        })
    }

    /// Reads `<view>/<rel>` as the pod sees it.
    pub fn read(&self, rel: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
        let rel = rel.as_ref().to_path_buf();
        self.run(move |view| std::fs::read(view.join(rel)))
    }

    /// Sorted entry names of the directory `<view>/<rel>` as the pod sees it.
    pub fn list(&self, rel: impl AsRef<Path>) -> std::io::Result<Vec<String>> {
        let rel = rel.as_ref().to_path_buf();
        self.run(move |view| {
            let mut names = std::fs::read_dir(view.join(rel))?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<_>>>()?;
            names.sort();
            Ok(names)
        })
    }

    /// Creates (or truncates) `<view>/<rel>` and writes `bytes`, closing the file;
    /// `Err(errno)` on failure, e.g. `libc::EROFS` where no dataset is mounted.
    pub fn write(&self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<(), i32> {
        let rel = rel.as_ref().to_path_buf();
        let bytes = bytes.to_vec();
        self.run(move |view| {
            let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
            let mut file = File::create(view.join(rel)).map_err(errno)?;
            file.write_all(&bytes).map_err(errno)?;
            // close(2) reports the flush (e.g. an upload on close), which drop ignores.
            nix::unistd::close(std::os::fd::OwnedFd::from(file)).map_err(|e| e as i32)
        })
    }

    /// Number of mounts stacked exactly at `<view>/<rel>` in the pod's namespace.
    pub fn mount_count(&self, rel: impl AsRef<Path>) -> usize {
        let point = self.view.join(rel);
        let point = point.components().collect::<PathBuf>();
        mount_points(&self.mountinfo())
            .iter()
            .filter(|p| **p == point)
            .count()
    }

    /// The pod's mount table (`/proc/PID/mountinfo`).
    pub fn mountinfo(&self) -> String {
        let path = format!("/proc/{}/mountinfo", self.pid());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    /// Runs a command inside the pod with `nsenter -t PID -m -- ARGS`, for checks
    /// that need a separate process (e.g. `sha256sum`); bounded by `timeout`
    /// through coreutils' `timeout -s KILL`.
    pub fn exec(&self, args: &[&str], timeout: Duration) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--", "timeout", "-s", "KILL"])
            .arg(format!("{}s", timeout.as_secs().max(1)))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run nsenter {args:?} in the pod: {e}"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
