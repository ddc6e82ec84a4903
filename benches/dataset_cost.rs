//! What a dataset costs the agent, and whether that cost comes back:
//!
//! - the idle agent (no dataset): RSS, threads, fds, FUSE connections, series;
//! - N idle `file://` datasets attached (nobody reads them);
//! - after each of 3 rounds of detaching all N and attaching them again, and
//!   after the last detach: back to the idle agent's figures?
//! - beside it, in the same run: one s3fs mount of a Garage bucket after a read
//!   (Debian's s3fs), the RSS an operator compares a dataset with.
//!
//! Everything runs inside a private mount namespace (a simulated node), as in
//! the mount tier. `cargo bench --bench dataset_cost` attaches 200 datasets;
//! without `--bench` (as `cargo test --all-targets` runs it) a smoke run of 5
//! checks that it works. `BENCH_DATASETS=N` overrides the count. Needs root,
//! /dev/fuse, Garage and s3fs (`scripts/setup-test-env.sh`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{ExternalMount, Footprint, Garage, Node, footprint, status_field, wait_readable};

/// The agent's threads, counted by name (`comm`), most first.
fn thread_names(node: &Node) -> String {
    let pid = node.agent.worker_pid().expect("the agent runs");
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(task) = task else { continue };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *counts.entry(name.trim().to_string()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    counts
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(what: &str, f: Footprint) {
    println!(
        "{what:<40} {:>9.1} {:>8} {:>6} {:>6} {:>7}",
        f.rss_kib as f64 / 1024.0,
        f.threads,
        f.fds,
        f.fuse_connections,
        f.series
    );
}

fn attach_all(node: &Node, spec: &Value, count: usize) -> Duration {
    let started = Instant::now();
    for i in 0..count {
        let (status, body) = node.call("PUT", &format!("/v1/mounts/ds-{i}"), Some(spec));
        assert_eq!(status, 201, "PUT ds-{i}: {body}");
    }
    started.elapsed()
}

fn detach_all(node: &Node, count: usize) {
    for i in 0..count {
        let (status, body) = node.call("DELETE", &format!("/v1/mounts/ds-{i}"), None);
        assert_eq!(status, 200, "DELETE ds-{i}: {body}");
    }
}

/// Waits until the agent's RSS stops falling (freed memory is returned in
/// the background: allocator trimming, threads exiting).
fn settled(node: &Node) -> Footprint {
    let mut last = footprint(node);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = footprint(node);
        if now.rss_kib >= last.rss_kib && now.threads >= last.threads {
            return now;
        }
        last = now;
    }
    last
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let count: usize = std::env::var("BENCH_DATASETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full { 200 } else { 5 });
    support::require_root();
    support::require_fuse();
    support::require_tool("s3fs", "s3fs");

    // The node probes every dataset every 200 ms: an idle dataset costs
    // what it costs in production, with probes in flight.
    let node = Node::start(&[]);
    node.mount_fusectl();
    let bucket = node.buckets().join("data");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("README.txt"), b"a dataset\n").unwrap();
    let spec = node.file_spec("data");

    println!(
        "cost of idle datasets ({count} file:// datasets, {} run)",
        if full { "full" } else { "smoke" }
    );
    println!(
        "{:<40} {:>9} {:>8} {:>6} {:>6} {:>7}",
        "state", "RSS MiB", "threads", "fds", "fuse", "series"
    );
    let idle = settled(&node);
    row("idle agent, no dataset", idle);
    // Beside the worker (what the rows measure): the supervisor and the
    // spare worker waiting to take over, a constant whatever the datasets.
    let supervisor = node.agent.pid().expect("the agent runs");
    let spare = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.contains("(hotmount-spare)")
                    && stat
                        .split(") ")
                        .nth(1)
                        .and_then(|rest| rest.split(' ').nth(1))
                        == Some(supervisor.to_string().as_str())
            })
        });
    for (what, pid) in [("supervisor", Some(supervisor)), ("spare worker", spare)] {
        if let Some(pid) = pid {
            // Much of their RSS is the binary's text, shared with the
            // worker: PSS says what each really adds.
            let pss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Pss:")?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            println!(
                "{:<40} {:>9.1} {:>8}   (PSS {:.1} MiB)",
                what,
                status_field(pid, "VmRSS:") as f64 / 1024.0,
                status_field(pid, "Threads:"),
                pss_kib as f64 / 1024.0
            );
        }
    }
    let took = attach_all(&node, &spec, count);
    wait_readable(&node.pod, "ds-0/README.txt", Duration::from_secs(10)).unwrap();
    let attached = settled(&node);
    row(&format!("{count} datasets attached"), attached);
    let mut after = idle;
    for round in 1..=3 {
        detach_all(&node, count);
        after = settled(&node);
        row(&format!("round {round}: all detached"), after);
        if round < 3 {
            attach_all(&node, &spec, count);
        }
    }
    println!("threads by name after 3 rounds: {}", thread_names(&node));
    let per_dataset = (attached.rss_kib.saturating_sub(idle.rss_kib)) as f64 / count as f64;
    println!(
        "per dataset: {:.1} KiB RSS, {:.2} threads; attach of {count}: {:.1} ms each",
        per_dataset,
        (attached.threads as f64 - idle.threads as f64) / count as f64,
        took.as_secs_f64() * 1000.0 / count as f64
    );
    println!(
        "after 3 rounds: RSS {:+.1} MiB against the idle agent, threads {:+}, fds {:+}, fuse {:+}, series {:+}",
        (after.rss_kib as f64 - idle.rss_kib as f64) / 1024.0,
        after.threads as i64 - idle.threads as i64,
        after.fds as i64 - idle.fds as i64,
        after.fuse_connections as i64 - idle.fuse_connections as i64,
        after.series as i64 - idle.series as i64,
    );

    // The same with S3 datasets of one Garage bucket (same endpoint and
    // credentials), each read once.
    let garage = Garage::start();
    garage.create_bucket("data");
    garage.put_object("data", "README.txt", b"a dataset\n");
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let garage_spec = garage.spec("data", serde_json::json!({"secret": "garage"}));
    let before = settled(&node);
    attach_all(&node, &garage_spec, count);
    for i in 0..count {
        wait_readable(
            &node.pod,
            &format!("ds-{i}/README.txt"),
            Duration::from_secs(10),
        )
        .unwrap();
    }
    let s3_attached = settled(&node);
    row(
        &format!("{count} S3 datasets attached, each read"),
        s3_attached,
    );
    detach_all(&node, count);
    row("all S3 datasets detached", settled(&node));
    println!(
        "per S3 dataset: {:.1} KiB RSS",
        (s3_attached.rss_kib.saturating_sub(before.rss_kib)) as f64 / count as f64
    );

    // s3fs, one mount of the same bucket, after a read.
    let secrets = tempfile::tempdir().unwrap();
    let passwd = secrets.path().join("s3fs-passwd");
    garage.write_s3fs_passwd(&passwd);
    let target = node.root().join("s3fs");
    let s3fs = ExternalMount::spawn(&mut garage.s3fs_command("data", &passwd, &target), &target);
    wait_readable(&node.pod, "s3fs/README.txt", Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "s3fs 1 mount after a read: RSS {:.1} MiB, {} threads",
        status_field(s3fs.pid(), "VmRSS:") as f64 / 1024.0,
        status_field(s3fs.pid(), "Threads:")
    );
}
