//! Child processes the nfs tier owns (qemu, ganesha): spawned so that the
//! kernel kills them if the test process dies (PR_SET_PDEATHSIG), stopped by
//! pid with a bounded wait, and free loopback ports for them.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Spawns `command`; the child gets SIGKILL when the spawning thread ends, so
/// nothing outlives a test even if it is killed before its Drop runs.
pub fn spawn_owned(command: &mut Command, what: &str) -> Child {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e} (run scripts/nfs-vm-assets.sh)"))
}

/// SIGTERM, wait up to `grace`, then SIGKILL and reap.
pub fn stop_child(mut child: Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if crate::support::wait_exit(&mut child, grace).is_some() {
            return;
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}
