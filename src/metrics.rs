//! Every metric hotmount exports, defined in one place (DESIGN.md §6), on a
//! registry of its own so tests can create as many agents as they like.

use crate::operation::{MountOperation, StoreRequest};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "hotmount";

/// Buckets for mount operations and probes: 1 ms to about 2 minutes.
const OPERATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for FUSE requests: 10 µs to 10 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// All of hotmount's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `hotmount_mounts{backend,state}`: mounts by backend and state.
    pub mounts: IntGaugeVec,
    /// `hotmount_mount_operations_total{backend,op,result}`.
    pub mount_operations: IntCounterVec,
    /// `hotmount_mount_operation_duration_seconds{backend,op}`.
    pub mount_operation_duration: HistogramVec,
    /// `hotmount_mount_healthy{name,backend}`: 1 when the last probe passed.
    pub mount_healthy: IntGaugeVec,
    /// `hotmount_probe_duration_seconds{backend}`.
    pub probe_duration: HistogramVec,
    /// `hotmount_recoveries_total{name,reason}`.
    pub recoveries: IntCounterVec,
    /// `hotmount_fuse_requests_total{name,op}`.
    pub fuse_requests: IntCounterVec,
    /// `hotmount_fuse_request_duration_seconds{op}`.
    pub fuse_request_duration: HistogramVec,
    /// `hotmount_s3_requests_total{name,op,result}`.
    pub s3_requests: IntCounterVec,
    /// `hotmount_s3_bytes_read_total{name}`.
    pub s3_bytes_read: IntCounterVec,
    /// `hotmount_s3_keys_skipped_total{name,reason}`: keys left out of the
    /// dataset's listings because they cannot be file names (each counted once).
    pub s3_keys_skipped: IntCounterVec,
    /// `hotmount_http_requests_total{route,method,code}`.
    pub http_requests: IntCounterVec,
    /// `hotmount_cache_requests_total{result}`: reads the node cache
    /// served whole (`hit`) or not (`miss`), and opens it handed to the
    /// kernel to read itself (`passthrough`).
    pub cache_requests: IntCounterVec,
    /// `hotmount_cache_bytes_total{direction}`: bytes `read` from and
    /// `written` to the node cache.
    pub cache_bytes: IntCounterVec,
    /// `hotmount_cache_blocks_total{event}`: blocks `evicted`, found
    /// `corrupt` (dropped, never served), or `skipped` (not written: disk
    /// full or too many writes waiting).
    pub cache_blocks: IntCounterVec,
    /// `hotmount_cache_size_bytes`: bytes in the node cache.
    pub cache_size_bytes: IntGauge,
    /// `hotmount_cache_capacity_bytes`: its size limit (`--cache-size`).
    pub cache_capacity_bytes: IntGauge,
    /// `hotmount_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `hotmount_worker_restarts_total{reason}`: workers the supervisor
    /// replaced (`exit`, `signal`, `heartbeat`), since the supervisor started.
    pub worker_restarts: IntCounterVec,
    /// `hotmount_takeovers_total`: upgrades that took the node over from
    /// an older supervisor, in this supervisor's line.
    pub takeovers: IntCounter,
    /// `hotmount_fuse_requests_resent_total`: requests a dead worker had
    /// read and the kernel queued again for this one.
    pub fuse_requests_resent: IntCounter,
    /// `hotmount_worker_restart_stall_seconds`: the longest time FUSE
    /// requests waited while a worker was replaced (crash or takeover).
    pub worker_restart_stall: Gauge,
    /// `hotmount_worker_crash_loop`: 1 while the supervisor backs off a
    /// worker that keeps dying.
    pub worker_crash_loop: IntGauge,
    /// `hotmount_ready`: 1 when `/readyz` answers 200 (started, nothing an
    /// operator must see to first).
    pub ready: IntGauge,
    /// Resent requests counted by workers before this one (the pool's own
    /// count starts at zero in each).
    resent_before: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where the carried counters are written (a supervised worker's).
    counter_sink: std::sync::Arc<std::sync::OnceLock<std::sync::Mutex<std::fs::File>>>,
}

/// The counters a worker hands to the next one (through a memfd the
/// supervisor holds), so that no counter ever goes down across a worker
/// restart: what Prometheus scraped is always in it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CounterSnapshot {
    /// Every counter series.
    pub series: Vec<CounterSeries>,
}

/// One counter series: metric name, labels (name, value), value.
pub type CounterSeries = (String, Vec<(String, String)>, u64);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .namespace(NAMESPACE)
                .buckets(buckets.to_vec())
        };
        let metrics = Metrics {
            mounts: IntGaugeVec::new(
                opts("mounts", "Datasets by backend and state."),
                &["backend", "state"],
            )
            .expect("valid metric"),
            mount_operations: IntCounterVec::new(
                opts(
                    "mount_operations_total",
                    "Mount, unmount and recovery operations by result.",
                ),
                &["backend", "op", "result"],
            )
            .expect("valid metric"),
            mount_operation_duration: HistogramVec::new(
                histogram(
                    "mount_operation_duration_seconds",
                    "Time taken by mount operations.",
                    OPERATION_BUCKETS,
                ),
                &["backend", "op"],
            )
            .expect("valid metric"),
            mount_healthy: IntGaugeVec::new(
                opts(
                    "mount_healthy",
                    "1 when the dataset's last health probe passed, else 0.",
                ),
                &["name", "backend"],
            )
            .expect("valid metric"),
            probe_duration: HistogramVec::new(
                histogram(
                    "probe_duration_seconds",
                    "Time taken by health probes.",
                    OPERATION_BUCKETS,
                ),
                &["backend"],
            )
            .expect("valid metric"),
            recoveries: IntCounterVec::new(
                opts(
                    "recoveries_total",
                    "Re-mounts of broken datasets by reason.",
                ),
                &["name", "reason"],
            )
            .expect("valid metric"),
            fuse_requests: IntCounterVec::new(
                opts("fuse_requests_total", "FUSE requests served by operation."),
                &["name", "op"],
            )
            .expect("valid metric"),
            fuse_request_duration: HistogramVec::new(
                histogram(
                    "fuse_request_duration_seconds",
                    "Time taken to answer FUSE requests.",
                    REQUEST_BUCKETS,
                ),
                &["op"],
            )
            .expect("valid metric"),
            s3_requests: IntCounterVec::new(
                opts(
                    "s3_requests_total",
                    "Object store requests by operation and result.",
                ),
                &["name", "op", "result"],
            )
            .expect("valid metric"),
            cache_requests: IntCounterVec::new(
                opts(
                    "cache_requests_total",
                    "Reads the node cache served whole (hit) or not (miss), and files it handed to the kernel (passthrough).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            cache_bytes: IntCounterVec::new(
                opts(
                    "cache_bytes_total",
                    "Bytes read from and written to the node cache.",
                ),
                &["direction"],
            )
            .expect("valid metric"),
            cache_blocks: IntCounterVec::new(
                opts(
                    "cache_blocks_total",
                    "Node cache blocks evicted, found corrupt (never served), or not written (skipped).",
                ),
                &["event"],
            )
            .expect("valid metric"),
            cache_size_bytes: IntGauge::with_opts(opts(
                "cache_size_bytes",
                "Bytes in the node cache.",
            ))
            .expect("valid metric"),
            cache_capacity_bytes: IntGauge::with_opts(opts(
                "cache_capacity_bytes",
                "The node cache's size limit (0: no cache).",
            ))
            .expect("valid metric"),
            s3_bytes_read: IntCounterVec::new(
                opts("s3_bytes_read_total", "Bytes read from the object store."),
                &["name"],
            )
            .expect("valid metric"),
            s3_keys_skipped: IntCounterVec::new(
                opts(
                    "s3_keys_skipped_total",
                    "Object keys left out of listings because they cannot be file names, by reason.",
                ),
                &["name", "reason"],
            )
            .expect("valid metric"),
            http_requests: IntCounterVec::new(
                opts(
                    "http_requests_total",
                    "Control API requests by route and status.",
                ),
                &["route", "method", "code"],
            )
            .expect("valid metric"),
            build_info: IntGaugeVec::new(
                opts(
                    "build_info",
                    "Always 1; the version label says which build runs.",
                ),
                &["version"],
            )
            .expect("valid metric"),
            worker_restarts: IntCounterVec::new(
                opts(
                    "worker_restarts_total",
                    "Workers the supervisor replaced, by reason (exit, signal, heartbeat).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            takeovers: IntCounter::with_opts(opts(
                "takeovers_total",
                "Upgrades in which this agent took the node over from an older one.",
            ))
            .expect("valid metric"),
            fuse_requests_resent: IntCounter::with_opts(opts(
                "fuse_requests_resent_total",
                "FUSE requests a dead worker had read, queued again by the kernel and answered.",
            ))
            .expect("valid metric"),
            worker_restart_stall: Gauge::with_opts(opts(
                "worker_restart_stall_seconds",
                "The longest time FUSE requests waited while a worker was replaced.",
            ))
            .expect("valid metric"),
            worker_crash_loop: IntGauge::with_opts(opts(
                "worker_crash_loop",
                "1 while the supervisor backs off a worker that keeps dying.",
            ))
            .expect("valid metric"),
            ready: IntGauge::with_opts(opts(
                "ready",
                "1 when the agent is ready (GET /readyz answers 200), else 0.",
            ))
            .expect("valid metric"),
            resent_before: Default::default(),
            counter_sink: Default::default(),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.mounts.clone()),
            Box::new(metrics.mount_operations.clone()),
            Box::new(metrics.mount_operation_duration.clone()),
            Box::new(metrics.mount_healthy.clone()),
            Box::new(metrics.probe_duration.clone()),
            Box::new(metrics.recoveries.clone()),
            Box::new(metrics.fuse_requests.clone()),
            Box::new(metrics.fuse_request_duration.clone()),
            Box::new(metrics.s3_requests.clone()),
            Box::new(metrics.s3_bytes_read.clone()),
            Box::new(metrics.s3_keys_skipped.clone()),
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.cache_requests.clone()),
            Box::new(metrics.cache_bytes.clone()),
            Box::new(metrics.cache_blocks.clone()),
            Box::new(metrics.cache_size_bytes.clone()),
            Box::new(metrics.cache_capacity_bytes.clone()),
            Box::new(metrics.build_info.clone()),
            Box::new(metrics.worker_restarts.clone()),
            Box::new(metrics.takeovers.clone()),
            Box::new(metrics.fuse_requests_resent.clone()),
            Box::new(metrics.worker_restart_stall.clone()),
            Box::new(metrics.worker_crash_loop.clone()),
            Box::new(metrics.ready.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
    }

    /// Counts one mount operation and its duration.
    pub fn observe_operation(&self, backend: &str, op: MountOperation, ok: bool, took: Duration) {
        let op = op.as_str();
        let result = if ok { "success" } else { "error" };
        self.mount_operations
            .with_label_values(&[backend, op, result])
            .inc();
        self.mount_operation_duration
            .with_label_values(&[backend, op])
            .observe(took.as_secs_f64());
    }

    /// Counts one object-store request for dataset `name`.
    pub fn observe_s3_request(&self, name: &str, op: StoreRequest, ok: bool) {
        let op = op.as_str();
        let result = if ok { "success" } else { "error" };
        self.s3_requests
            .with_label_values(&[name, op, result])
            .inc();
    }

    /// Counts one FUSE request for dataset `name` as it arrives (before its
    /// reply, so a scrape after the reply always includes it).
    pub fn count_fuse_request(&self, name: &str, op: &str) {
        self.fuse_requests.with_label_values(&[name, op]).inc();
    }

    /// Records how long a FUSE request took to answer.
    pub fn observe_fuse_duration(&self, op: &str, took: Duration) {
        self.fuse_request_duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }

    /// Drops the per-dataset series of a dataset that is gone.
    pub fn forget_dataset(&self, name: &str, backend: &str) {
        let _ = self.mount_healthy.remove_label_values(&[name, backend]);
        let _ = self.s3_bytes_read.remove_label_values(&[name]);
        remove_series_of(&self.fuse_requests, name);
        remove_series_of(&self.s3_requests, name);
        remove_series_of(&self.recoveries, name);
        remove_series_of(&self.s3_keys_skipped, name);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let resent = crate::sys::FusePool::global().resent_requests()
            + self
                .resent_before
                .load(std::sync::atomic::Ordering::Relaxed);
        let counted = self.fuse_requests_resent.get();
        if resent > counted {
            self.fuse_requests_resent.inc_by(resent - counted);
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        // What a scrape shows is always in the snapshot the next worker
        // starts from: taken after the values shown (counters only grow).
        self.save_counters();
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Metrics {
    /// The counters carried from one worker to the next (the supervisor's
    /// own counts, restarts and takeovers, travel in its start report).
    fn carried(&self) -> Vec<(&'static str, Carried<'_>)> {
        vec![
            (
                "hotmount_mount_operations_total",
                Carried::Vec(&self.mount_operations),
            ),
            ("hotmount_recoveries_total", Carried::Vec(&self.recoveries)),
            (
                "hotmount_fuse_requests_total",
                Carried::Vec(&self.fuse_requests),
            ),
            (
                "hotmount_s3_requests_total",
                Carried::Vec(&self.s3_requests),
            ),
            (
                "hotmount_s3_bytes_read_total",
                Carried::Vec(&self.s3_bytes_read),
            ),
            (
                "hotmount_s3_keys_skipped_total",
                Carried::Vec(&self.s3_keys_skipped),
            ),
            (
                "hotmount_http_requests_total",
                Carried::Vec(&self.http_requests),
            ),
            (
                "hotmount_cache_requests_total",
                Carried::Vec(&self.cache_requests),
            ),
            (
                "hotmount_cache_bytes_total",
                Carried::Vec(&self.cache_bytes),
            ),
            (
                "hotmount_cache_blocks_total",
                Carried::Vec(&self.cache_blocks),
            ),
            ("hotmount_fuse_requests_resent_total", Carried::Resent),
        ]
    }

    /// Every carried counter series now.
    pub fn counter_snapshot(&self) -> CounterSnapshot {
        use prometheus::core::Collector;
        let mut series = Vec::new();
        for (name, carried) in self.carried() {
            let families = match carried {
                Carried::Vec(vec) => vec.collect(),
                Carried::Resent => self.fuse_requests_resent.collect(),
            };
            for family in families {
                for metric in family.get_metric() {
                    let labels = metric
                        .get_label()
                        .iter()
                        .map(|pair| (pair.name().to_string(), pair.value().to_string()))
                        .collect();
                    let value = metric.get_counter().get_value() as u64;
                    series.push((name.to_string(), labels, value));
                }
            }
        }
        CounterSnapshot { series }
    }

    /// Carried counters go to `file` from now on ([`Self::save_counters`]);
    /// returns what it held (the worker before this one's), to restore.
    pub fn carry_counters_in(&self, file: std::fs::File) -> CounterSnapshot {
        use std::os::unix::fs::FileExt;
        // At offset 0: the offset is shared with every process holding it.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut text = vec![0u8; len as usize];
        if file.read_exact_at(&mut text, 0).is_err() {
            text.clear();
        }
        // A write cut short leaves the old tail after a complete value.
        let previous = serde_json::Deserializer::from_slice(&text)
            .into_iter::<CounterSnapshot>()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default();
        let _ = self.counter_sink.set(std::sync::Mutex::new(file));
        previous
    }

    /// Writes the carried counters to the file given to
    /// [`Self::carry_counters_in`], if any.
    pub fn save_counters(&self) {
        use std::os::unix::fs::FileExt;
        let Some(sink) = self.counter_sink.get() else {
            return;
        };
        let Ok(text) = serde_json::to_vec(&self.counter_snapshot()) else {
            return;
        };
        let file = sink.lock().unwrap_or_else(|p| p.into_inner());
        if file.write_all_at(&text, 0).is_ok() {
            let _ = file.set_len(text.len() as u64);
        }
    }

    /// Starts every carried counter from `snapshot` (a fresh registry).
    pub fn restore_counters(&self, snapshot: &CounterSnapshot) {
        let carried = self.carried();
        for (name, labels, value) in &snapshot.series {
            let Some((_, target)) = carried.iter().find(|(known, _)| known == name) else {
                continue;
            };
            match target {
                Carried::Vec(vec) => {
                    let labels: std::collections::HashMap<&str, &str> = labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    if let Ok(counter) = vec.get_metric_with(&labels) {
                        counter.inc_by(*value);
                    }
                }
                Carried::Resent => {
                    self.resent_before
                        .fetch_add(*value, std::sync::atomic::Ordering::Relaxed);
                    self.fuse_requests_resent.inc_by(*value);
                }
            }
        }
    }
}

/// Where a carried counter lives.
enum Carried<'a> {
    Vec(&'a IntCounterVec),
    /// `fuse_requests_resent_total`, kept in step with the FUSE pool.
    Resent,
}

/// Removes every series of `vec` whose `name` label is `dataset` (the other
/// labels, e.g. `op` and `result`, take whatever values were seen).
fn remove_series_of(vec: &IntCounterVec, dataset: &str) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: std::collections::HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get("name") == Some(&dataset) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_with_the_prefix() {
        let metrics = Metrics::new();
        metrics.observe_operation("s3", MountOperation::Mount, true, Duration::from_millis(3));
        metrics.observe_s3_request("ds", StoreRequest::Get, true);
        metrics.count_fuse_request("ds", "read");
        metrics.observe_fuse_duration("read", Duration::from_micros(50));
        metrics
            .mount_healthy
            .with_label_values(&["ds", "s3"])
            .set(1);
        metrics.mounts.with_label_values(&["s3", "Mounted"]).set(1);
        metrics.recoveries.with_label_values(&["ds", "probe"]).inc();
        metrics
            .probe_duration
            .with_label_values(&["s3"])
            .observe(0.01);
        metrics.s3_bytes_read.with_label_values(&["ds"]).inc_by(10);
        metrics
            .s3_keys_skipped
            .with_label_values(&["ds", "control_character"])
            .inc();
        metrics
            .http_requests
            .with_label_values(&["/v1/mounts", "GET", "200"])
            .inc();
        let text = metrics.render();
        for family in [
            "hotmount_mounts",
            "hotmount_mount_operations_total",
            "hotmount_mount_operation_duration_seconds",
            "hotmount_mount_healthy",
            "hotmount_probe_duration_seconds",
            "hotmount_recoveries_total",
            "hotmount_fuse_requests_total",
            "hotmount_fuse_request_duration_seconds",
            "hotmount_s3_requests_total",
            "hotmount_s3_bytes_read_total",
            "hotmount_s3_keys_skipped_total",
            "hotmount_http_requests_total",
            "hotmount_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        metrics.observe_s3_request("other", StoreRequest::Get, true);
        metrics.forget_dataset("ds", "s3");
        let text = metrics.render();
        for gone in ["hotmount_mount_healthy{", r#"name="ds""#] {
            assert!(!text.contains(gone), "{gone} still there:\n{text}");
        }
        assert!(
            text.contains(
                r#"hotmount_s3_requests_total{name="other",op="get",result="success"} 1"#
            ),
            "another dataset's series stay:\n{text}"
        );
    }

    #[test]
    fn carried_counters_start_the_next_worker_where_the_last_one_was() {
        let memfd = tempfile::tempfile().unwrap();
        let first = Metrics::new();
        assert_eq!(
            first.carry_counters_in(memfd.try_clone().unwrap()),
            CounterSnapshot::default()
        );
        first.count_fuse_request("data", "read");
        first.count_fuse_request("data", "read");
        first.observe_s3_request("data", StoreRequest::Get, false);
        first
            .s3_bytes_read
            .with_label_values(&["data"])
            .inc_by(4096);
        let scraped = first.render();
        // The next worker, in a fresh process.
        let next = Metrics::new();
        let previous = next.carry_counters_in(memfd);
        next.restore_counters(&previous);
        let shown = next.render();
        for series in [
            "hotmount_fuse_requests_total{name=\"data\",op=\"read\"} 2",
            "hotmount_s3_requests_total{name=\"data\",op=\"get\",result=\"error\"} 1",
            "hotmount_s3_bytes_read_total{name=\"data\"} 4096",
        ] {
            assert!(scraped.contains(series), "{scraped}");
            assert!(shown.contains(series), "{series} carried over:\n{shown}");
        }
    }
}
