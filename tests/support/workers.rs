//! The agent's processes as tests see them: `hotmount serve` is a
//! supervisor whose child, the worker, does the work; tests kill, stop and
//! wait for workers by pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The process name of a serving worker (a standby, started ahead to take
/// over, is `hotmount-spare`).
const WORKER_NAME: &str = "hotmount-worker";

/// The live (not zombie) workers serving for supervisor `pid` (the standby
/// waiting beside them is not one).
pub fn children_of(pid: u32) -> Vec<u32> {
    processes_of(pid, |name, state| state != 'Z' && name == WORKER_NAME)
}

/// The children of `pid` that ended and were not reaped (zombies).
pub fn zombies_of(pid: u32) -> Vec<u32> {
    processes_of(pid, |_, state| state == 'Z')
}

/// The children of `pid` whose name and state letter `keep` takes.
fn processes_of(pid: u32, keep: impl Fn(&str, char) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            name_state_and_parent(*child)
                .is_some_and(|(name, state, parent)| parent == pid && keep(&name, state))
        })
        .collect()
}

/// A process's name, state letter and parent pid, from `/proc/PID/stat`.
fn name_state_and_parent(pid: u32) -> Option<(String, char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    // After the name (which may hold spaces): state, ppid, ...
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ');
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((name, state, parent))
}

/// The worker of `supervisor` once one runs that is not `previous`;
/// panics after 20 s.
pub fn worker_of(supervisor: u32, previous: Option<u32>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = children_of(supervisor)
            .into_iter()
            .find(|pid| Some(*pid) != previous)
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "supervisor {supervisor} started no worker within 20s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` to `pid`; panics if it cannot.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    nix::sys::signal::kill(target, signal)
        .unwrap_or_else(|e| panic!("signal {signal} to {pid}: {e}"));
}

/// Builds hotmount as a static executable with `scripts/build-static-agent.sh`
/// (incremental: a second run only checks) and returns its path. The script
/// picks the target directory (`HOTMOUNT_STATIC_TARGET_DIR`, else `static/` in
/// `CARGO_TARGET_DIR` or `target/`).
/// (Another build of the same source: a release, statically linked binary,
/// which tests also use as the "new version" in an upgrade.)
pub fn build_static_agent() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-static-agent.sh");
    let mut command = Command::new(&script);
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/build-static-agent.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        path.is_file(),
        "build-static-agent.sh named {} which is not a file",
        path.display()
    );
    println!(
        "static agent {} ready in {:.1}s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}
