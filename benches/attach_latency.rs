//! How long a dataset takes to appear in a running pod, side by side with
//! the alternatives in the same run:
//!
//! - hotmount: PUT /v1/mounts/NAME, then the first successful read of a file
//!   in the pod's view (a `file://` bucket, and a real Garage bucket);
//! - s3fs and rclone mount (Debian's packages): start the FUSE client on the
//!   same Garage bucket at the same place under the rshared root, then the
//!   first successful read in the pod;
//! - agent restart (kill -9, start, ready) until the dataset reads again.
//!
//! Everything runs inside a private mount namespace (a simulated node) with a
//! pod in another, as in the mount tier. Needs root, /dev/fuse, Garage,
//! s3fs and rclone (`scripts/setup-test-env.sh`).
//!
//! `cargo bench --bench attach_latency` runs 100 attaches per hotmount column
//! and 20 per external client; without `--bench` (as `cargo test
//! --all-targets` runs it) a smoke run of 3 each checks that it works.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{ExternalMount, Garage, Node, percentile, wait_readable};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Latencies of one column.
struct Column {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Column {
    fn row(&self) -> String {
        let mut sorted = self.samples.clone();
        sorted.sort();
        format!(
            "{:<34} {:>5} {:>10.1} {:>10.1} {:>10.1}",
            self.name,
            sorted.len(),
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.99)),
            ms(*sorted.last().unwrap_or(&Duration::ZERO)),
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// PUT, then wait for `file` to read in the pod; DELETE. Returns the time
/// from sending the PUT to the first good read.
fn hotmount_attach(node: &Node, name: &str, spec: &Value, file: &str) -> Duration {
    let started = Instant::now();
    let (status, body) = node.call("PUT", &format!("/v1/mounts/{name}"), Some(spec));
    assert_eq!(status, 201, "PUT {name}: {body}");
    wait_readable(&node.pod, &format!("{name}/{file}"), READ_TIMEOUT).unwrap();
    let took = started.elapsed();
    let (status, body) = node.call("DELETE", &format!("/v1/mounts/{name}"), None);
    assert_eq!(status, 200, "DELETE {name}: {body}");
    took
}

/// Starts `command` (a FUSE client in the foreground) on `target`, waits for
/// `file` to read in the pod, stops it. Returns the time from spawn to read.
fn external_attach(node: &Node, mut command: Command, target: &Path, file: &str) -> Duration {
    std::fs::create_dir_all(target).unwrap();
    let started = Instant::now();
    let mount = ExternalMount::spawn(&mut command, target);
    let name = target.file_name().unwrap().to_str().unwrap();
    wait_readable(&node.pod, &format!("{name}/{file}"), READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let took = started.elapsed();
    drop(mount);
    took
}

/// kill -9 of the agent, start, until `name/file` reads again in the pod.
fn restart_to_readable(node: &mut Node, name: &str, file: &str) -> Duration {
    node.agent.kill9();
    let started = Instant::now();
    node.restart();
    wait_readable(&node.pod, &format!("{name}/{file}"), READ_TIMEOUT).unwrap();
    started.elapsed()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (attaches, external) = if full { (100, 20) } else { (3, 3) };
    support::require_root();
    support::require_fuse();
    support::require_tool("s3fs", "s3fs");
    support::require_tool("rclone", "rclone");

    let garage = Garage::start();
    garage.create_bucket("data");
    garage.put_object("data", "README.txt", b"a dataset\n");
    let secrets = tempfile::tempdir().unwrap();
    let passwd = secrets.path().join("s3fs-passwd");
    garage.write_s3fs_passwd(&passwd);

    let mut node = Node::start(&[]);
    let bucket = node.buckets().join("data");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("README.txt"), b"a dataset\n").unwrap();
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let garage_spec = garage.spec("data", json!({"secret": "garage"}));

    let mut columns = Vec::new();
    let file_spec = node.file_spec("data");
    columns.push(Column {
        name: "hotmount PUT, file:// bucket",
        samples: (0..attaches)
            .map(|_| hotmount_attach(&node, "bench", &file_spec, "README.txt"))
            .collect(),
    });
    columns.push(Column {
        name: "hotmount PUT, Garage bucket",
        samples: (0..attaches)
            .map(|_| hotmount_attach(&node, "bench", &garage_spec, "README.txt"))
            .collect(),
    });
    let target = node.root().join("external");
    columns.push(Column {
        name: "s3fs mount, Garage bucket",
        samples: (0..external)
            .map(|_| {
                external_attach(
                    &node,
                    garage.s3fs_command("data", &passwd, &target),
                    &target,
                    "README.txt",
                )
            })
            .collect(),
    });
    columns.push(Column {
        name: "rclone mount, Garage bucket",
        samples: (0..external)
            .map(|_| {
                external_attach(
                    &node,
                    garage.rclone_command("data", &target, &["--read-only"]),
                    &target,
                    "README.txt",
                )
            })
            .collect(),
    });
    let (status, body) = node.call("PUT", "/v1/mounts/kept", Some(&garage_spec));
    assert_eq!(status, 201, "{body}");
    columns.push(Column {
        name: "hotmount kill -9 + restart, Garage",
        samples: (0..external.min(10))
            .map(|_| restart_to_readable(&mut node, "kept", "README.txt"))
            .collect(),
    });

    println!(
        "dataset visible in a running pod (from request/spawn to first good read; {} run)",
        if full { "full" } else { "smoke" }
    );
    println!(
        "{:<34} {:>5} {:>10} {:>10} {:>10}",
        "how", "n", "p50 ms", "p99 ms", "max ms"
    );
    for column in &columns {
        println!("{}", column.row());
    }
    let p50 = |i: usize| {
        let mut sorted = columns[i].samples.clone();
        sorted.sort();
        percentile(&sorted, 0.5).as_secs_f64()
    };
    println!(
        "ratios (p50): s3fs / hotmount-Garage = {:.1}x, rclone / hotmount-Garage = {:.1}x",
        p50(2) / p50(1),
        p50(3) / p50(1)
    );
}
