//! A private network namespace for the calling test thread (and what it
//! starts afterwards: the agent, probe threads, listeners): a loopback of
//! its own that can carry addresses the host must never get, such as the
//! cloud metadata address 169.254.169.254, so a test can listen there and
//! count what reaches it. Nothing is changed on the host's network.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

use nix::sched::{CloneFlags, setns, unshare};

/// Guard for a test thread in its own network namespace; dropping it moves
/// the thread back (the namespace goes when its last process exits).
pub struct PrivateNetwork {
    original: File,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl PrivateNetwork {
    /// Moves the calling thread into a new network namespace whose loopback
    /// is up with `127.0.0.1/8` and `::1`, plus `extra` addresses (CIDR
    /// notation, e.g. `169.254.169.254/32`). Enter it before starting the
    /// node, so the agent lives in it too.
    pub fn enter(extra: &[&str]) -> PrivateNetwork {
        super::require_root();
        super::require_tool("ip", "iproute2");
        let original = File::open("/proc/thread-self/ns/net")
            .unwrap_or_else(|e| panic!("open /proc/thread-self/ns/net: {e}"));
        unshare(CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET) for a private network: {e}"));
        let guard = PrivateNetwork {
            original,
            _not_send: std::marker::PhantomData,
        };
        // `ip` forked from this thread runs in the new namespace.
        ip(&["link", "set", "lo", "up"]);
        for address in extra {
            ip(&["addr", "add", address, "dev", "lo"]);
        }
        guard
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} in the private network failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for PrivateNetwork {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("warning: could not return the test thread to its network namespace: {e}");
        }
    }
}
