//! Proof that nobody opened a file: an inotify watch on a directory that
//! reports every `open(2)` of a file in it (`IN_OPEN`; inotify watches
//! inodes, so opens from any mount namespace count). Start it after the
//! test wrote its files, and read it after the attack.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A watch on one directory.
pub struct OpenWatch {
    fd: OwnedFd,
}

impl OpenWatch {
    /// Watches the files of `dir` (and `dir` itself) for opens.
    pub fn start(dir: &Path) -> OpenWatch {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            raw >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: `fd` is an inotify descriptor and `path` a NUL-terminated string.
        let watch =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_OPEN) };
        assert!(
            watch >= 0,
            "inotify_add_watch {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        OpenWatch { fd }
    }

    /// Names of the files opened since the start (or the last call); `.`
    /// for the directory itself.
    pub fn opened(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads at most `buffer.len()` bytes into `buffer`.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read <= 0 {
                return names;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= read as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes
                // with the byte buffer's alignment.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast()) };
                let name = &buffer[at + header..at + header + event.len as usize];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                names.push(if name.is_empty() {
                    ".".to_string()
                } else {
                    String::from_utf8_lossy(name).into_owned()
                });
                at += header + event.len as usize;
            }
        }
    }
}
