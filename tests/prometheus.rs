//! Prometheus tier: Debian's `prometheus` scrapes the agent's metrics
//! listener (`--metrics-listen`, no token) every second, as the DaemonSet's
//! annotations ask, while datasets come and go and the worker is killed.
//! Asserted through Prometheus' own query API: the series appear with the
//! right labels and go with the dataset, no counter resets across a worker
//! restart, and `up` stays 1 throughout. Needs root, /dev/fuse and
//! prometheus.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Node, signal, worker_of};

/// A Prometheus server scraping one target; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        support::require_tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let [port] = support::free_loopback_ports::<1>();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: hotmount\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("prometheus.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus: {e}"));
        Prometheus {
            child,
            addr,
            _dir: dir,
            log,
        }
    }

    /// The result vector of an instant query (an empty vector when nothing
    /// matches; panics on an error answer).
    fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let answer = support::http_tcp(self.addr, "GET", &path, &[], None, Duration::from_secs(10));
        let Ok((200, text)) = answer else {
            return Vec::new();
        };
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of `promql`, once it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `check` holds for the result of `promql`.
    fn wait_for(&self, promql: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if check(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {promql} gave {result:?}; prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_sees_datasets_come_and_go_and_no_counter_reset_across_a_worker_restart() {
    let [port] = support::free_loopback_ports::<1>();
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node = Node::start(&["--metrics-listen", &target.to_string()]);
    std::fs::create_dir_all(node.buckets().join("data")).unwrap();
    std::fs::write(node.buckets().join("data/hello.txt"), b"hello\n").unwrap();
    let prometheus = Prometheus::start(target);
    prometheus.wait_for("up{job=\"hotmount\"} == 1", "the agent is scraped", |r| {
        r.len() == 1
    });
    prometheus.wait_for("hotmount_ready == 1", "the agent says it is ready", |r| {
        r.len() == 1
    });

    let (status, body) = node.call("PUT", "/v1/mounts/prom", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    for _ in 0..20 {
        assert_eq!(node.pod.read("prom/hello.txt").unwrap(), b"hello\n");
    }
    let healthy = prometheus.wait_for(
        "hotmount_mount_healthy{name=\"prom\"}",
        "the dataset's series appears",
        |r| r.len() == 1 && r[0]["value"][1] == "1",
    );
    assert_eq!(healthy[0]["metric"]["backend"], "s3", "{healthy:?}");
    assert_eq!(healthy[0]["metric"]["job"], "hotmount");
    prometheus.wait_for(
        "sum(hotmount_fuse_requests_total{name=\"prom\"})",
        "FUSE requests are counted",
        |r| !r.is_empty(),
    );
    eprintln!(
        "prometheus: hotmount_mount_healthy = {:?}",
        prometheus.query("hotmount_mount_healthy")
    );

    // Enough history that a counter starting again from zero would show.
    prometheus.wait_for(
        "hotmount_http_requests_total{route=\"/metrics\"} >= 5",
        "five scrapes are counted",
        |r| r.len() == 1,
    );
    // The worker dies; the supervisor holds the metrics listener, the next
    // worker starts its counters where the last scrape saw them.
    let supervisor = node.agent.pid().unwrap();
    let worker = worker_of(supervisor, None);
    signal(worker, nix::sys::signal::Signal::SIGKILL);
    worker_of(supervisor, Some(worker));
    for _ in 0..20 {
        assert_eq!(node.pod.read("prom/hello.txt").unwrap(), b"hello\n");
    }
    prometheus.wait_for(
        "hotmount_worker_restarts_total{reason=\"signal\"}",
        "the restart is counted",
        |r| r.len() == 1 && r[0]["value"][1] == "1",
    );
    std::thread::sleep(Duration::from_secs(3));
    for counter in [
        "hotmount_fuse_requests_total",
        "hotmount_http_requests_total",
        "hotmount_mount_operations_total",
    ] {
        let resets = prometheus.value(&format!("sum(resets({counter}[5m]))"));
        eprintln!("prometheus: sum(resets({counter}[5m])) = {resets:?}");
        assert_eq!(
            resets,
            Some(0.0),
            "{counter} went down across the worker restart"
        );
    }
    let up = prometheus.value("min_over_time(up{job=\"hotmount\"}[5m])");
    eprintln!("prometheus: min_over_time(up[5m]) = {up:?}");
    assert_eq!(up, Some(1.0), "a scrape failed during the restart");

    // Detached: its series go.
    let (status, body) = node.call("DELETE", "/v1/mounts/prom", None);
    assert_eq!(status, 200, "{body}");
    prometheus.wait_for(
        "hotmount_mount_healthy{name=\"prom\"}",
        "the dataset's series goes with it",
        <[Value]>::is_empty,
    );
    prometheus.wait_for(
        "hotmount_fuse_requests_total{name=\"prom\"}",
        "its request counters go too",
        <[Value]>::is_empty,
    );
}
