//! What a process uses, read from /proc (RSS, threads, fds, CPU seconds),
//! and the agent's whole footprint (plus FUSE connections and metric
//! series), for the benchmarks and the soak test.

use super::Node;

/// A `Key:   value` field of /proc/PID/status (kB for memory fields).
pub fn status_field(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing in /proc/{pid}/status"))
}

/// CPU seconds (user + system) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The agent's footprint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open fds.
    pub fds: usize,
    /// Open fds of the supervisor (three per FUSE connection it holds).
    pub supervisor_fds: usize,
    /// FUSE connections in the node's /sys/fs/fuse/connections (fusectl
    /// mounted with [`Node::mount_fusectl`]).
    pub fuse_connections: usize,
    /// Series `/metrics` shows.
    pub series: usize,
}

/// The agent's footprint now: its worker's (the supervisor and the spare
/// worker beside it are a constant, printed by `benches/dataset_cost.rs`).
pub fn footprint(node: &Node) -> Footprint {
    let pid = node.agent.worker_pid().expect("the agent runs");
    let fds_of = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| dir.count())
            .unwrap_or(0)
    };
    Footprint {
        rss_kib: status_field(pid, "VmRSS:"),
        threads: status_field(pid, "Threads:"),
        fds: fds_of(pid),
        supervisor_fds: fds_of(node.agent.pid().expect("the agent runs")),
        fuse_connections: std::fs::read_dir("/sys/fs/fuse/connections")
            .map(|dir| dir.count())
            .unwrap_or(0),
        series: series_names(node).len(),
    }
}

/// The series `/metrics` shows (label sets without values).
pub fn series_names(node: &Node) -> std::collections::BTreeSet<String> {
    let (_, metrics) = node.call("GET", "/metrics", None);
    metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_string()
        })
        .collect()
}
