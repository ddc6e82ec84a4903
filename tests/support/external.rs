//! FUSE clients of other projects (s3fs, rclone mount) run beside hotmount
//! for side-by-side figures: a process serving a mount point, unmounted and
//! reaped when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A FUSE client process serving `target`; unmounted and reaped on drop.
pub struct ExternalMount {
    child: Child,
    target: PathBuf,
}

impl ExternalMount {
    /// Starts `command` (a FUSE client that stays in the foreground) after
    /// creating `target`; its output is discarded.
    pub fn spawn(command: &mut Command, target: &Path) -> ExternalMount {
        std::fs::create_dir_all(target).unwrap();
        let child = command
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        ExternalMount {
            child,
            target: target.to_path_buf(),
        }
    }

    /// The client's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ExternalMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.target);
    }
}
