//! Shared harness for hotmount's integration tests (included with `mod support;`).
//!
//! Tests run as root on a machine prepared by `scripts/setup-test-env.sh`. Every
//! helper fails loudly, naming what is missing and which script installs it: a
//! test never skips silently. Everything that mounts happens inside a private
//! [`NodeNamespace`]; every process a helper starts is killed when its handle drops.
//!
//! A mount-tier test, in order (enter the namespace before starting anything that
//! mounts; handles drop in reverse order, so the pod and agent die first):
//!
//! ```text
//! mod support;
//! use std::time::Duration;
//!
//! #[test]
//! fn dataset_appears_in_a_running_pod() {
//!     support::require_root();
//!     let dir = tempfile::tempdir().unwrap();
//!     let node = support::NodeNamespace::enter();           // this thread + its children
//!     node.share_dir(dir.path());                           // like /var/lib/hotmount on a node
//!     let options = support::AgentOptions::in_dir(dir.path()); // dir/mnt, dir/state, dir/api.sock
//!     let mut agent = support::Agent::start(options);
//!     agent.wait_ready(Duration::from_secs(30));            // GET /readyz == 200
//!     let pod = support::Pod::start(&agent.options().root); // root must be rshared by now
//!     let (status, body) = support::http(agent.socket(), "PUT", "/v1/mounts/ds", Some(SPEC));
//!     assert_eq!(status, 201, "{body}");
//!     assert_eq!(pod.mount_count("ds"), 1);
//!     assert_eq!(pod.write("missing/x", b"x"), Err(libc::EROFS));
//! }
//! ```
//!
//! S3 tests add `let garage = support::Garage::start(); garage.create_bucket("b");`,
//! `garage.put_object(..)` and `garage.write_credentials_file(path)` (call
//! `support::require_fuse()` first); metrics tests pass the `/metrics` body to
//! `support::promtool_check_metrics`.
//!
//! Attack-tier tests (`attack.rs`) run each attack between
//! `support::HealthProbe::start` and `finish`, and assert the report with
//! `assert_healthy` (every `/healthz` probe 200 in under 100 ms, enough
//! probes made); hostile servers are `HostileS3` and `CountingEndpoint`,
//! service-account tokens come from `TokenClaims`, a private network
//! (for link-local addresses) from `PrivateNetwork`, and `OpenWatch` proves
//! a file was never opened.
// Each test file uses a different part of the harness.
#![allow(dead_code, unused_imports)]

mod agent;
mod external;
mod footprint;
mod garage;
mod health;
mod hostile_s3;
mod http;
mod namespace;
mod network;
mod node;
mod opens;
mod pod;
mod promtool;
mod raw_s3;
mod service_account;
mod workers;

use std::path::Path;
use std::time::{Duration, Instant};

pub use agent::{Agent, AgentOptions};
pub use external::ExternalMount;
pub use footprint::{Footprint, cpu_seconds, footprint, series_names, status_field};
pub use garage::Garage;
pub use health::{HEALTHZ_BOUND, HealthProbe, HealthReport, peak_rss_kib, repeat_for};
pub use hostile_s3::{CountingEndpoint, HostileS3, Hostility, OBJECT_SIZE};
/// One request over loopback TCP with extra headers (the nfs tier's forwarded API port).
pub(crate) use http::http_tcp;
pub use http::{http, http_with_timeout};
pub use namespace::{NodeNamespace, current_mount_namespace, thread_mountinfo};
pub use network::PrivateNetwork;
pub use node::{Node, percentile, wait_readable};
pub use opens::OpenWatch;
pub use pod::Pod;
pub use promtool::{promtool_check, promtool_check_metrics};
pub use raw_s3::RawS3;
pub use service_account::{TEST_ISSUER, TEST_JWKS, TokenClaims, splice, write_test_jwks};
pub use workers::{build_static_agent, children_of, signal, worker_of, zombies_of};

/// The script that installs everything these tests need.
pub const SETUP_SCRIPT: &str = "scripts/setup-test-env.sh";

/// Panics unless the test process runs as root (mount tier and above need it).
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (mount namespaces, mounts): run it as root, e.g. via scripts/test.sh"
        );
    }
}

/// Panics unless FUSE is usable: `/dev/fuse` opens read-write and `fusermount3` exists.
pub fn require_fuse() {
    require_root();
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!(
            "/dev/fuse cannot be opened ({e}): the s3 tier needs FUSE (package fuse3, installed by {SETUP_SCRIPT}) and a kernel with FUSE"
        );
    }
    require_tool("fusermount3", "fuse3");
}

/// Panics unless `tool` is on PATH, naming the Debian `package` that provides it.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        panic!("`{tool}` is not on PATH: install package {package} (run {SETUP_SCRIPT} as root)");
    }
}

/// Runs `work` on a helper thread (same mount namespace) and panics if it
/// does not finish within `timeout`: a wedged mount cannot hang the test.
pub fn within_timeout<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("{what} did not finish within {timeout:?}"))
}

/// Waits up to `within` for `child` to exit by itself; its status, or `None`
/// if it is still running.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    poll_until(within, Duration::from_millis(20), || {
        child.try_wait().ok().flatten()
    })
}

/// Waits up to `within` for `child` to exit by itself (killed if it does
/// not); how it exited if it did by itself, and all it printed.
pub fn exit_and_output(
    mut child: std::process::Child,
    within: Duration,
) -> (Option<std::process::ExitStatus>, std::process::Output) {
    let exited = wait_exit(&mut child, within);
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect the output");
    (exited, output)
}

/// `N` distinct loopback TCP ports that were free a moment ago (held together
/// while chosen, so they differ; released just before the caller binds them).
pub fn free_loopback_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Writes `bytes` to `path`, created with mode 0600 (never readable by others,
/// not even for a moment).
pub fn write_private_file(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::io::Write::write_all(&mut file, bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Deterministic, incompressible bytes that differ per `seed` and position.
pub fn object_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// Polls `check` every `interval` until it returns `Some`, or returns `None` after `timeout`.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Reads a captured log file for a failure message; never fails itself.
pub(crate) fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Gives `path` a modification time `ahead` in the future, so that a
/// watcher comparing times sees a change even within one clock tick.
pub fn mark_changed(path: &Path, ahead: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(std::time::SystemTime::now() + ahead))
        .unwrap_or_else(|e| panic!("set the modification time of {}: {e}", path.display()));
}
