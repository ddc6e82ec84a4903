//! How the agent's work grows with the number of datasets it holds: at 1, 10,
//! 100 and 1,000 idle `file://` datasets, the time of
//!
//! - an attach (PUT of one more dataset until it is Mounted; p50 of 10);
//! - `GET /v1/mounts` and `GET /metrics` (p50 of 20 each);
//! - a restart: kill -9, start, until `/readyz` says ready with every
//!   dataset re-created;
//! - a probe round: the agent's CPU time per probe interval (1 s here, every
//!   dataset probed once per round) and the slowest probe of the round.
//!
//! Everything runs inside a private mount namespace (a simulated node).
//! `cargo bench --bench scale` runs 1, 10, 100 and 1,000; without `--bench`
//! (as `cargo test --all-targets` runs it) a smoke run of 1 and 10.
//! `BENCH_SCALE=1,10,100` picks the counts. Needs root and /dev/fuse.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Node, cpu_seconds, percentile};

/// The probe interval of the measured agent.
const PROBE_INTERVAL: &str = "1s";

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn put(node: &Node, name: &str, spec: &Value) -> Duration {
    let started = Instant::now();
    let (status, body) = node.call("PUT", &format!("/v1/mounts/{name}"), Some(spec));
    assert_eq!(status, 201, "PUT {name}: {body}");
    started.elapsed()
}

fn timed_get(node: &Node, path: &str) -> Duration {
    let started = Instant::now();
    let (status, _) = node.call("GET", path, None);
    assert_eq!(status, 200, "GET {path}");
    started.elapsed()
}

struct Row {
    datasets: usize,
    attach: Duration,
    list: Duration,
    metrics: Duration,
    restart: Duration,
    probe_cpu: f64,
    slowest_probe: f64,
}

fn measure(count: usize) -> Row {
    let mut node = Node::start(&["--probe-interval", PROBE_INTERVAL]);
    let bucket = node.buckets().join("data");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("README.txt"), b"a dataset\n").unwrap();
    let spec = node.file_spec("data");
    for i in 0..count.saturating_sub(1) {
        put(&node, &format!("ds-{i}"), &spec);
    }
    // Attaching one more to `count - 1` datasets (then detached again).
    let attach = p50((0..10)
        .map(|_| {
            let took = put(&node, "probe-attach", &spec);
            let (status, _) = node.call("DELETE", "/v1/mounts/probe-attach", None);
            assert_eq!(status, 200);
            took
        })
        .collect());
    put(&node, &format!("ds-{}", count - 1), &spec);
    let list = p50((0..20).map(|_| timed_get(&node, "/v1/mounts")).collect());
    let metrics = p50((0..20).map(|_| timed_get(&node, "/metrics")).collect());

    // A probe round: CPU per interval over 5 intervals, and the slowest
    // probe latency the datasets report.
    let pid = node.agent.worker_pid().expect("agent runs");
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let probe_cpu = (cpu_seconds(pid) - cpu_before) / 5.0;
    let (_, listed) = node.call("GET", "/v1/mounts", None);
    let slowest_probe = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["health"]["latencySeconds"].as_f64())
        .fold(0.0, f64::max);

    node.agent.kill9();
    let started = Instant::now();
    node.restart();
    let restart = started.elapsed();
    let (_, listed) = node.call("GET", "/v1/mounts", None);
    let mounted = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "Mounted")
        .count();
    assert_eq!(mounted, count, "every dataset back after the restart");
    Row {
        datasets: count,
        attach,
        list,
        metrics,
        restart,
        probe_cpu,
        slowest_probe,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let counts: Vec<usize> = std::env::var("BENCH_SCALE")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| {
            if full {
                vec![1, 10, 100, 1000]
            } else {
                vec![1, 10]
            }
        });
    support::require_root();
    support::require_fuse();
    let rows: Vec<Row> = counts.iter().map(|&count| measure(count)).collect();
    println!(
        "time by number of idle file:// datasets (probe interval {PROBE_INTERVAL}; {} run)",
        if full { "full" } else { "smoke" }
    );
    println!(
        "{:>9} {:>11} {:>11} {:>11} {:>11} {:>15} {:>13}",
        "datasets",
        "attach ms",
        "list ms",
        "metrics ms",
        "restart ms",
        "probe CPU s/s",
        "slowest probe"
    );
    for row in rows {
        println!(
            "{:>9} {:>11.1} {:>11.1} {:>11.1} {:>11.0} {:>15.3} {:>11.1}ms",
            row.datasets,
            ms(row.attach),
            ms(row.list),
            ms(row.metrics),
            ms(row.restart),
            row.probe_cpu,
            row.slowest_probe * 1000.0
        );
    }
}
