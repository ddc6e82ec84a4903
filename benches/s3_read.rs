//! S3 read benchmark: the same workloads through plain ranged GETs (the
//! ceiling), a hotmount agent, s3fs and rclone mount, side by side, each from
//! a cold cache (a fresh mount and dropped page caches per workload).
//!
//! The cache columns (`hotmount+cache`: the agent with `--cache-dir`,
//! `s3fs+cache`: `-o use_cache`, `rclone+cache`: `--vfs-cache-mode full`)
//! read the small files and the sequential file twice in one mount: epoch 1
//! from a fresh mount with an empty cache directory and dropped page caches,
//! epoch 2 after dropping the page caches again (the tool's own disk cache
//! warm). Their cache directories are made fresh per workload in
//! `BENCH_CACHE_ROOT` (default /var/tmp; a disk, never a tmpfs).
//!
//! `cargo bench --bench s3_read` (or `scripts/bench-s3.sh`) runs the full
//! benchmark against a local Garage: 1 GiB sequential, 2000 x 64 KiB files,
//! `ls -l` of a 10,000-key prefix, 1 MiB random reads, four parallel readers.
//! Sizes can be changed with `BENCH_SEQ_MIB`, `BENCH_SMALL_FILES`,
//! `BENCH_LS_KEYS`, `BENCH_RANDOM_READS`, `BENCH_PARALLEL_MIB` (per reader)
//! the columns with `BENCH_TOOLS` (e.g. `ceiling,hotmount`, or
//! `hotmount+cache,s3fs+cache,rclone+cache` for the epochs only), the
//! workloads with `BENCH_WORKLOADS` (e.g. `seq,small`; the cache columns run
//! only those two), the agent's flags with `BENCH_AGENT_ARGS` (e.g.
//! `--prefetch-memory 64MiB`), its environment with `BENCH_AGENT_ENV` (e.g.
//! `MALLOC_ARENA_MAX=4`; space-separated `NAME=VALUE`s), another agent binary
//! with `BENCH_AGENT_BIN` (an A/B against a build of another commit), and
//! `BENCH_WARM=1`
//! keeps the page caches (for profiling the FUSE path without the server's
//! disk). The allocator columns `hotmount+jemalloc` and `hotmount+mimalloc`
//! (not in the default set) run the same agent with another allocator
//! preloaded.
//!
//! Every line also shows what the S3 server counted meanwhile (Garage's
//! admin `/metrics`: requests by operation, MiB read from its disk), so a
//! second epoch that still reads the bucket shows.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does a smoke
//! run of a few seconds: tiny sizes, a `file://` bucket, ceiling, hotmount
//! and hotmount+cache only, so the benchmark code itself stays working.
//!
//! Everything mounts inside a private mount namespace of this process (never
//! the host's table); every process started here is stopped at the end.
//! Needs root and /dev/fuse; the full run also needs Garage, s3fs and rclone.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use support::{cpu_seconds, object_bytes};

const MIB: u64 = 1024 * 1024;
/// Ranged GET size and concurrency of the ceiling's large reads.
const CEILING_PART: u64 = 8 * MIB;
const CEILING_IN_FLIGHT: usize = 4;
/// The ceiling's multipart upload: part size and parts in flight (what
/// hotmount's writer uses too).
const WRITE_PART: u64 = 8 * MIB;
const WRITE_IN_FLIGHT: usize = 4;
/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload sizes.
#[derive(Debug, Clone)]
struct Sizes {
    seq_mib: u64,
    small_files: usize,
    small_kib: u64,
    ls_keys: usize,
    random_reads: usize,
    parallel_mib: u64,
}

impl Sizes {
    fn full() -> Self {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
                })
                .unwrap_or(default)
        };
        Sizes {
            seq_mib: var("BENCH_SEQ_MIB", 1024),
            small_files: var("BENCH_SMALL_FILES", 2000) as usize,
            small_kib: 64,
            ls_keys: var("BENCH_LS_KEYS", 10_000) as usize,
            random_reads: var("BENCH_RANDOM_READS", 200) as usize,
            parallel_mib: var("BENCH_PARALLEL_MIB", 256),
        }
    }

    fn smoke() -> Self {
        Sizes {
            seq_mib: 8,
            small_files: 20,
            small_kib: 64,
            ls_keys: 200,
            random_reads: 8,
            parallel_mib: 2,
        }
    }
}

/// One workload's result.
#[derive(Debug, Clone, Copy)]
struct Figure {
    seconds: f64,
    /// Bytes moved (0 for listings).
    bytes: u64,
    /// Files or entries handled.
    items: u64,
}

impl Figure {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.seconds
    }
}

const WORKLOADS: [&str; 6] = ["seq", "small", "ls", "random", "parallel", "write"];

fn describe(workload: &str, sizes: &Sizes) -> String {
    match workload {
        "seq" => format!("sequential read, {} MiB", sizes.seq_mib),
        "small" => format!("{} x {} KiB files", sizes.small_files, sizes.small_kib),
        "ls" => format!("ls -l, {} keys", sizes.ls_keys),
        "random" => format!("{} x 1 MiB random reads", sizes.random_reads),
        "write" => format!("sequential write, {} MiB", sizes.seq_mib),
        _ => format!("4 parallel readers, 4 x {} MiB", sizes.parallel_mib),
    }
}

fn render(workload: &str, figure: &Figure) -> String {
    match workload {
        "small" => format!("{:.0} files/s", figure.items_per_s()),
        "ls" => format!("{:.3} s", figure.seconds),
        "random" => format!(
            "{:.0} MB/s ({:.0} reads/s)",
            figure.mb_per_s(),
            figure.items_per_s()
        ),
        _ => format!("{:.0} MB/s", figure.mb_per_s()),
    }
}

/// Higher is better for every workload's figure of merit.
fn merit(workload: &str, figure: &Figure) -> f64 {
    match workload {
        "small" => figure.items_per_s(),
        "ls" => 1.0 / figure.seconds,
        _ => figure.mb_per_s(),
    }
}

fn random_offsets(len: u64, count: usize) -> Vec<u64> {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let span = len.saturating_sub(MIB).max(1);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 4 KiB aligned, like most random readers.
            ((state >> 11) % span) & !4095
        })
        .collect()
}

/// The objects every workload reads, uploaded once.
fn upload(store: &Arc<dyn ObjectStore>, runtime: &tokio::runtime::Runtime, sizes: &Sizes) {
    let mut uploads: Vec<(String, u64, u64)> = vec![("seq/big".into(), 1, sizes.seq_mib * MIB)];
    for i in 0..4 {
        uploads.push((format!("par/r{i}"), 10 + i, sizes.parallel_mib * MIB));
    }
    for i in 0..sizes.small_files {
        uploads.push((
            format!("small/f{i:05}"),
            100 + i as u64,
            sizes.small_kib * 1024,
        ));
    }
    for i in 0..sizes.ls_keys {
        uploads.push((format!("ls/k{i:05}"), 0, 16));
    }
    let started = Instant::now();
    let count = uploads.len();
    runtime.block_on(async {
        futures::stream::iter(uploads)
            .map(|(key, seed, len)| {
                let store = Arc::clone(store);
                async move {
                    let path = ObjectPath::from(key.as_str());
                    if len > 64 * MIB {
                        let mut upload = store.put_multipart(&path).await?;
                        let mut done = 0;
                        while done < len {
                            let chunk = (len - done).min(16 * MIB);
                            let data = object_bytes(seed * 1_000_003 + done, chunk);
                            upload.put_part(PutPayload::from(data)).await?;
                            done += chunk;
                        }
                        upload.complete().await?;
                    } else {
                        store
                            .put(&path, PutPayload::from(object_bytes(seed, len)))
                            .await?;
                    }
                    Ok::<_, object_store::Error>(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("upload benchmark data: {e}"));
    });
    eprintln!(
        "uploaded {count} objects in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The ceiling: the same workloads as plain object_store requests.
fn ceiling(
    store: &Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Runtime,
    workload: &str,
    sizes: &Sizes,
) -> Figure {
    drop_caches();
    let started = Instant::now();
    let (bytes, items) = runtime.block_on(async {
        match workload {
            "seq" => (ranged_read(store, "seq/big", sizes.seq_mib * MIB).await, 1),
            "parallel" => {
                let readers = (0..4).map(|i| {
                    let store = Arc::clone(store);
                    let len = sizes.parallel_mib * MIB;
                    async move { ranged_read(&store, &format!("par/r{i}"), len).await }
                });
                let total: u64 = futures::future::join_all(readers).await.into_iter().sum();
                (total, 4)
            }
            "small" => {
                let listed = store
                    .list_with_delimiter(Some(&ObjectPath::from("small")))
                    .await
                    .expect("list small/");
                let mut total = 0;
                for object in &listed.objects {
                    total += store
                        .get(&object.location)
                        .await
                        .expect("get a small object")
                        .bytes()
                        .await
                        .expect("read a small object")
                        .len() as u64;
                }
                (total, listed.objects.len() as u64)
            }
            "ls" => {
                let listed = store
                    .list_with_delimiter(Some(&ObjectPath::from("ls")))
                    .await
                    .expect("list ls/");
                (0, listed.objects.len() as u64)
            }
            "write" => {
                let path = ObjectPath::from("written/ceiling");
                let len = sizes.seq_mib * MIB;
                let upload = store.put_multipart(&path).await.expect("start multipart");
                let mut writer =
                    object_store::WriteMultipart::new_with_chunk_size(upload, WRITE_PART as usize);
                let chunk = object_bytes(7, MIB);
                for _ in 0..sizes.seq_mib {
                    writer
                        .wait_for_capacity(WRITE_IN_FLIGHT)
                        .await
                        .expect("multipart capacity");
                    writer.write(&chunk);
                }
                writer.finish().await.expect("complete multipart");
                store
                    .delete(&path)
                    .await
                    .expect("delete the written object");
                (len, 1)
            }
            _ => {
                let path = ObjectPath::from("seq/big");
                let mut total = 0;
                for offset in random_offsets(sizes.seq_mib * MIB, sizes.random_reads) {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(offset..offset + MIB)),
                        ..GetOptions::default()
                    };
                    let got = store.get_opts(&path, options).await.expect("ranged get");
                    total += got.bytes().await.expect("ranged get body").len() as u64;
                }
                (total, sizes.random_reads as u64)
            }
        }
    });
    Figure {
        seconds: started.elapsed().as_secs_f64(),
        bytes,
        items,
    }
}

async fn ranged_read(store: &Arc<dyn ObjectStore>, key: &str, len: u64) -> u64 {
    let path = ObjectPath::from(key);
    let ranges: Vec<_> = (0..len.div_ceil(CEILING_PART))
        .map(|i| i * CEILING_PART..((i + 1) * CEILING_PART).min(len))
        .collect();
    futures::stream::iter(ranges)
        .map(|range| {
            let path = path.clone();
            async move {
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..GetOptions::default()
                };
                let got = store.get_opts(&path, options).await?;
                Ok::<_, object_store::Error>(got.bytes().await?.len() as u64)
            }
        })
        .buffered(CEILING_IN_FLIGHT)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await
        .unwrap_or_else(|e| panic!("ranged read of {key}: {e}"))
}

/// Whether workloads start from dropped page caches (the full run; the smoke
/// run leaves the machine's caches alone).
static COLD: AtomicBool = AtomicBool::new(false);

/// Drops the page cache (the mounts' and the S3 server's files alike).
fn drop_caches() {
    if !COLD.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .unwrap_or_else(|e| panic!("write /proc/sys/vm/drop_caches (needs root): {e}"));
}

/// Reads the whole file with 1 MiB reads; bytes read.
fn read_file(path: &Path) -> u64 {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0;
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

/// One workload through a mounted bucket at `mount`.
fn through_mount(mount: &Path, workload: &str, sizes: &Sizes) -> Figure {
    let started = Instant::now();
    let (bytes, items) = match workload {
        "seq" => (read_file(&mount.join("seq/big")), 1),
        "parallel" => {
            let readers: Vec<_> = (0..4)
                .map(|i| {
                    let path = mount.join(format!("par/r{i}"));
                    std::thread::spawn(move || read_file(&path))
                })
                .collect();
            let total = readers
                .into_iter()
                .map(|r| r.join().expect("reader thread"))
                .sum();
            (total, 4)
        }
        "small" => {
            let dir = mount.join("small");
            let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
                .map(|e| e.expect("directory entry").path())
                .collect();
            names.sort();
            let total = names.iter().map(|p| read_file(p)).sum();
            (total, names.len() as u64)
        }
        "write" => {
            let path = mount.join(format!("written-{}", std::process::id()));
            let chunk = object_bytes(7, MIB);
            let mut file = std::fs::File::create(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            for _ in 0..sizes.seq_mib {
                file.write_all(&chunk)
                    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            }
            // Done when close returns: the clients upload (or finish the
            // upload) on flush.
            file.sync_all().ok();
            drop(file);
            let written = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("stat {} after close: {e}", path.display()))
                .len();
            assert_eq!(written, sizes.seq_mib * MIB, "written size");
            let _ = std::fs::remove_file(&path);
            (written, 1)
        }
        "ls" => {
            let out = Command::new("ls")
                .arg("-l")
                .arg(mount.join("ls"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run ls -l");
            assert!(out.status.success(), "ls -l failed: {}", out.status);
            let lines = out.stdout.split(|b| *b == b'\n').count().saturating_sub(2);
            (0, lines as u64)
        }
        _ => {
            let path = mount.join("seq/big");
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            let mut buf = vec![0u8; MIB as usize];
            let mut total = 0;
            for offset in random_offsets(sizes.seq_mib * MIB, sizes.random_reads) {
                let mut done = 0;
                while done < buf.len() {
                    let n = file
                        .read_at(&mut buf[done..], offset + done as u64)
                        .unwrap_or_else(|e| panic!("pread {}: {e}", path.display()));
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                total += done as u64;
            }
            (total, sizes.random_reads as u64)
        }
    };
    let expected = match workload {
        "seq" | "random" => None,
        "parallel" => Some(4 * sizes.parallel_mib * MIB),
        "small" => Some(sizes.small_files as u64 * sizes.small_kib * 1024),
        _ => None,
    };
    if let Some(expected) = expected {
        assert_eq!(
            bytes,
            expected,
            "{workload} through {} read short",
            mount.display()
        );
    }
    if workload == "ls" {
        assert_eq!(
            items, sizes.ls_keys as u64,
            "ls -l listed the wrong number of keys"
        );
    }
    Figure {
        seconds: started.elapsed().as_secs_f64(),
        bytes,
        items,
    }
}

/// Peak resident memory of `pid` since the last reset, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resets the peak RSS counter of `pid` (clear_refs 5).
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Waits until something is mounted at `path` (this namespace).
fn wait_mounted(path: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        let table = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
        if table.lines().any(|l| l.split(' ').nth(4) == path.to_str()) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before mounting {}",
                path.display()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} did not mount {} within {MOUNT_TIMEOUT:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts `path` and stops `child`.
fn stop_fuse_process(path: &Path, mut child: Child) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    if support::wait_exit(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Named counters from a server's metrics (hotmount's `/metrics`, Garage's
/// admin `/metrics`); byte counters are kept in MiB.
type Counters = BTreeMap<String, f64>;

/// A Prometheus sample: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// The samples of a Prometheus text exposition.
fn prometheus_samples(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            // Label values here never hold quotes or commas.
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    Some((key, value.trim_matches('"')))
                })
                .collect();
            Some((name, labels, value))
        })
        .collect()
}

/// `after - before` of every counter that moved, as `key=value` text.
fn counter_delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).unwrap_or(&0.0)))
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

fn show_counters(counters: &Counters) -> String {
    counters
        .iter()
        .map(|(key, value)| format!("{key}={value:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The S3 server's own count of what it served (Garage's admin `/metrics`:
/// requests by S3 operation, bytes read from its disk): the same yardstick
/// for every column, e.g. whether a second epoch still reads the bucket.
struct ServerStats {
    admin: std::net::SocketAddr,
}

impl ServerStats {
    /// From the running Garage's configuration file (its admin address).
    fn of(garage: &support::Garage) -> ServerStats {
        let config =
            std::fs::read_to_string(garage.dir().join("garage.toml")).expect("read garage.toml");
        let admin = config
            .split("[admin]")
            .nth(1)
            .and_then(|section| {
                section
                    .lines()
                    .find_map(|l| l.strip_prefix("api_bind_addr"))
            })
            .and_then(|v| {
                v.trim()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
            })
            .expect("garage.toml: [admin] api_bind_addr");
        ServerStats { admin }
    }

    fn snapshot(&self) -> Counters {
        let (status, text) = support::http_tcp(
            self.admin,
            "GET",
            "/metrics",
            &[],
            None,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("GET garage /metrics: {e}"));
        assert_eq!(status, 200, "garage /metrics: {text}");
        let mut counters = Counters::new();
        for (name, labels, value) in prometheus_samples(&text) {
            let key = match name {
                "api_s3_request_counter" => labels
                    .iter()
                    .find(|(k, _)| *k == "api_endpoint")
                    .map(|(_, v)| v.to_string()),
                "block_bytes_read" => Some("MiB read".into()),
                _ => None,
            };
            if let Some(key) = key {
                let value = if name == "block_bytes_read" {
                    value / MIB as f64
                } else {
                    value
                };
                *counters.entry(key).or_default() += value;
            }
        }
        counters
    }
}

/// A bucket served by a mounted FUSE client for the length of one workload.
trait MountTool {
    fn name(&self) -> &'static str;
    /// Mounts the bucket fresh (writable unless `read_only`; with an empty
    /// cache directory for the cache columns); returns the mount point and
    /// the server's pid.
    fn mount(&mut self, read_only: bool) -> (PathBuf, u32);
    fn unmount(&mut self);
    /// What the server counts (hotmount: its S3 and FUSE requests and its
    /// node cache).
    fn counters(&self) -> Counters {
        Counters::new()
    }
    /// The cache directory of the current mount (the cache columns).
    fn cache_dir(&self) -> Option<&Path> {
        None
    }
}

/// Mounts the dataset `bench` of `spec` on `node`'s agent.
fn hotmount_mount(node: &support::Node, spec: &Value, read_only: bool) -> (PathBuf, u32) {
    let mut spec = spec.clone();
    spec["readOnly"] = json!(read_only);
    let (status, body) = node.call("PUT", "/v1/mounts/bench", Some(&spec));
    assert_eq!(status, 201, "hotmount mount: {body}\n{}", node.agent.log());
    let pid = node.agent.worker_pid().expect("agent pid");
    (node.root().join("bench"), pid)
}

fn hotmount_unmount(node: &support::Node) {
    let (status, body) = node.call("DELETE", "/v1/mounts/bench?force=true", None);
    assert_eq!(status, 200, "hotmount unmount: {body}");
}

/// The agent's S3 and FUSE requests for `bench` and its node cache.
fn hotmount_counters(node: &support::Node) -> Counters {
    let (_, body) = node.call("GET", "/metrics", None);
    let mut counters = Counters::new();
    for (name, labels, value) in prometheus_samples(body.as_str().unwrap_or_default()) {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| *k == key)
                .map_or("", |(_, v)| *v)
        };
        let dataset = label("name") == "bench";
        let (key, value) = match name {
            "hotmount_s3_requests_total" if dataset => {
                (format!("s3 {} {}", label("result"), label("op")), value)
            }
            "hotmount_fuse_requests_total" if dataset => (format!("fuse {}", label("op")), value),
            // Time the agent took to answer them, in ms (every dataset's).
            "hotmount_fuse_request_duration_seconds_sum" => {
                (format!("fuse ms {}", label("op")), value * 1000.0)
            }
            "hotmount_cache_requests_total" => (format!("cache {}", label("result")), value),
            "hotmount_cache_bytes_total" => (
                format!("cache MiB {}", label("direction")),
                value / MIB as f64,
            ),
            "hotmount_cache_blocks_total" => (format!("cache blocks {}", label("event")), value),
            _ => continue,
        };
        counters.insert(key, value);
    }
    counters
}

/// The agent of the benchmark's node (no node cache).
struct Hotmount<'a> {
    /// The column: `hotmount`, or an allocator column.
    name: &'static str,
    node: &'a support::Node,
    spec: Value,
}

impl MountTool for Hotmount<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn mount(&mut self, read_only: bool) -> (PathBuf, u32) {
        hotmount_mount(self.node, &self.spec, read_only)
    }
    fn unmount(&mut self) {
        hotmount_unmount(self.node);
    }
    fn counters(&self) -> Counters {
        hotmount_counters(self.node)
    }
}

/// The node cache's size for the cache column: room for every object the
/// epoch workloads read.
const CACHE_SIZE: &str = "4GiB";

/// The agent with a node cache: a node of its own per mount (a fresh agent
/// with `--cache-dir` on an empty directory), so each workload's first epoch
/// starts cold.
struct CachedHotmount<'a> {
    /// `hotmount serve` flags besides the cache's.
    args: Vec<String>,
    /// Where the fresh cache directories go.
    cache_root: PathBuf,
    /// Gives a node its S3 credentials; the dataset's spec.
    prepare: Box<dyn Fn(&support::Node) -> Value + 'a>,
    running: Option<(support::Node, tempfile::TempDir)>,
}

impl MountTool for CachedHotmount<'_> {
    fn name(&self) -> &'static str {
        "hotmount+cache"
    }
    fn mount(&mut self, read_only: bool) -> (PathBuf, u32) {
        let cache = fresh_cache_dir(&self.cache_root, "hotmount");
        let cache_arg = cache.path().display().to_string();
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(["--cache-dir", &cache_arg, "--cache-size", CACHE_SIZE]);
        let node = support::Node::start_binary(agent_binary().as_deref(), &args);
        let spec = (self.prepare)(&node);
        let mounted = hotmount_mount(&node, &spec, read_only);
        self.running = Some((node, cache));
        mounted
    }
    fn unmount(&mut self) {
        if let Some((mut node, cache)) = self.running.take() {
            hotmount_unmount(&node);
            node.agent.stop();
            // The node (its namespace) before its cache directory.
            drop(node);
            drop(cache);
        }
    }
    fn counters(&self) -> Counters {
        self.running
            .as_ref()
            .map(|(node, _)| hotmount_counters(node))
            .unwrap_or_default()
    }
    fn cache_dir(&self) -> Option<&Path> {
        self.running.as_ref().map(|(_, cache)| cache.path())
    }
}

/// Connection details of the S3 server for external clients.
struct S3Server {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

struct S3fs<'a> {
    server: &'a S3Server,
    dir: PathBuf,
    child: Option<Child>,
    /// The cache column (`-o use_cache`): where its fresh cache directories
    /// go, and the current one.
    cache_root: Option<PathBuf>,
    cache: Option<tempfile::TempDir>,
}

impl MountTool for S3fs<'_> {
    fn name(&self) -> &'static str {
        if self.cache_root.is_some() {
            "s3fs+cache"
        } else {
            "s3fs"
        }
    }
    fn mount(&mut self, read_only: bool) -> (PathBuf, u32) {
        let target = self.dir.join("s3fs-mnt");
        std::fs::create_dir_all(&target).unwrap();
        let passwd = self.dir.join("s3fs-passwd");
        support::write_private_file(
            &passwd,
            format!("{}:{}\n", self.server.key_id, self.server.secret).as_bytes(),
        );
        let mut options = format!(
            "url={},endpoint={},use_path_request_style,passwd_file={}{}",
            self.server.endpoint,
            self.server.region,
            passwd.display(),
            if read_only { ",ro" } else { "" }
        );
        if let Some(root) = &self.cache_root {
            let cache = fresh_cache_dir(root, "s3fs");
            options.push_str(&format!(",use_cache={}", cache.path().display()));
            self.cache = Some(cache);
        }
        let mut child = Command::new("s3fs")
            .arg(&self.server.bucket)
            .arg(&target)
            .arg("-f")
            .arg("-o")
            .arg(options)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn s3fs: {e}"));
        wait_mounted(&target, &mut child, "s3fs");
        let pid = child.id();
        self.child = Some(child);
        (target, pid)
    }
    fn unmount(&mut self) {
        if let Some(child) = self.child.take() {
            stop_fuse_process(&self.dir.join("s3fs-mnt"), child);
        }
        self.cache = None;
    }
    fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|cache| cache.path())
    }
}

/// A panicking workload must not leave an s3fs, rclone or agent process
/// behind.
impl Drop for S3fs<'_> {
    fn drop(&mut self) {
        self.unmount();
    }
}

impl Drop for Rclone<'_> {
    fn drop(&mut self) {
        self.unmount();
    }
}

impl Drop for CachedHotmount<'_> {
    fn drop(&mut self) {
        // Dropping the node stops its agent; no API call (this may run
        // while a panic unwinds).
        self.running = None;
    }
}

struct Rclone<'a> {
    server: &'a S3Server,
    dir: PathBuf,
    child: Option<Child>,
    /// The cache column (`--vfs-cache-mode full`): where its fresh cache
    /// directories go, and the current one.
    cache_root: Option<PathBuf>,
    cache: Option<tempfile::TempDir>,
}

impl MountTool for Rclone<'_> {
    fn name(&self) -> &'static str {
        if self.cache_root.is_some() {
            "rclone+cache"
        } else {
            "rclone"
        }
    }
    fn mount(&mut self, read_only: bool) -> (PathBuf, u32) {
        let target = self.dir.join("rclone-mnt");
        std::fs::create_dir_all(&target).unwrap();
        let mut cache_args: Vec<String> = Vec::new();
        if let Some(root) = &self.cache_root {
            let cache = fresh_cache_dir(root, "rclone");
            // Every byte read goes to the cache's sparse file; items live
            // far longer than the run (the default max age is 1h, the
            // directory cache 5m: a slow machine could reach the latter),
            // and the size limit matches the agent's.
            cache_args.extend(
                [
                    "--vfs-cache-mode",
                    "full",
                    "--vfs-cache-max-age",
                    "24h",
                    "--vfs-cache-max-size",
                    "4G",
                    "--dir-cache-time",
                    "24h",
                    "--cache-dir",
                ]
                .map(String::from),
            );
            cache_args.push(cache.path().display().to_string());
            self.cache = Some(cache);
        }
        let mut child = Command::new("rclone")
            .arg("mount")
            .arg(format!(":s3:{}", self.server.bucket))
            .arg(&target)
            .args(read_only.then_some("--read-only"))
            .args(&cache_args)
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_S3_PROVIDER", "Other")
            .env("RCLONE_S3_ENDPOINT", &self.server.endpoint)
            .env("RCLONE_S3_REGION", &self.server.region)
            .env("RCLONE_S3_FORCE_PATH_STYLE", "true")
            .env("RCLONE_S3_ACCESS_KEY_ID", &self.server.key_id)
            .env("RCLONE_S3_SECRET_ACCESS_KEY", &self.server.secret)
            .env("RCLONE_CONFIG", self.dir.join("rclone.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn rclone mount: {e}"));
        wait_mounted(&target, &mut child, "rclone mount");
        let pid = child.id();
        self.child = Some(child);
        (target, pid)
    }
    fn unmount(&mut self) {
        if let Some(child) = self.child.take() {
            stop_fuse_process(&self.dir.join("rclone-mnt"), child);
        }
        self.cache = None;
    }
    fn cache_dir(&self) -> Option<&Path> {
        self.cache.as_ref().map(|cache| cache.path())
    }
}

/// Where the cache columns make their fresh cache directories
/// (`BENCH_CACHE_ROOT`, /var/tmp by default): the machine's disk, never a
/// tmpfs (that would be the page cache again).
fn cache_root() -> PathBuf {
    let root = PathBuf::from(std::env::var("BENCH_CACHE_ROOT").unwrap_or("/var/tmp".into()));
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|e| panic!("create BENCH_CACHE_ROOT {}: {e}", root.display()));
    let fs = nix::sys::statfs::statfs(&root)
        .unwrap_or_else(|e| panic!("statfs {}: {e}", root.display()));
    assert!(
        fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC,
        "BENCH_CACHE_ROOT {} is a tmpfs: the caches must be on a disk",
        root.display()
    );
    root
}

fn fresh_cache_dir(root: &Path, tool: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("bench-{tool}-cache-"))
        .tempdir_in(root)
        .unwrap_or_else(|e| panic!("create a cache directory in {}: {e}", root.display()))
}

/// Disk space the files below `dir` take (allocated blocks: rclone's cache
/// files are sparse), in MiB.
fn disk_usage_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() => walk(&entry.path()),
                Ok(meta) => meta.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / MIB as f64
}

/// The regular files below `dir` read with 1 MiB reads from dropped page
/// caches, in file-name order (hotmount's block files are named
/// OBJECT-INDEX-CRC: each object's blocks in order); `items` is what the
/// workload counts (files or one file). None when there are none.
fn read_cache_files(dir: &Path, items: u64) -> Option<Figure> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => walk(&entry.path(), files),
                Ok(kind) if kind.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    if files.is_empty() {
        return None;
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    drop_caches();
    let started = Instant::now();
    let bytes = files.iter().map(|path| read_file(path)).sum();
    Some(Figure {
        seconds: started.elapsed().as_secs_f64(),
        bytes,
        items,
    })
}

/// Waits until the cache directory stops growing (writes behind the reads
/// land), at most 30 s; its size in MiB.
fn settle(dir: &Path) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = disk_usage_mib(dir);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = disk_usage_mib(dir);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// One workload through one mount, measured.
#[derive(Debug, Clone)]
struct Run {
    figure: Figure,
    /// Peak RSS of the FUSE server during the workload, MiB.
    rss_mib: f64,
    /// CPU seconds (user + system) of the FUSE server.
    cpu_seconds: f64,
    /// What the server counted meanwhile ([`MountTool::counters`]).
    client: Counters,
    /// What the S3 server counted meanwhile (none: not measured).
    server: Option<Counters>,
}

/// Runs `workload` through `mount` (served by `pid`) from dropped page
/// caches.
fn measure(
    tool: &dyn MountTool,
    mount: &Path,
    pid: u32,
    workload: &str,
    sizes: &Sizes,
    server: Option<&ServerStats>,
) -> Run {
    drop_caches();
    reset_peak_rss(pid);
    let client_before = tool.counters();
    let server_before = server.map(ServerStats::snapshot);
    let cpu_before = cpu_seconds(pid);
    let figure = through_mount(mount, workload, sizes);
    let cpu = cpu_seconds(pid) - cpu_before;
    let rss = peak_rss_mib(pid);
    let server_counted = server
        .zip(server_before)
        .map(|(server, before)| counter_delta(&before, &server.snapshot()));
    Run {
        figure,
        rss_mib: rss,
        cpu_seconds: cpu,
        client: counter_delta(&client_before, &tool.counters()),
        server: server_counted,
    }
}

fn report(tool: &str, label: &str, workload: &str, run: &Run) {
    let server = match &run.server {
        Some(counted) if counted.is_empty() => " | S3 server: no requests".to_string(),
        Some(counted) => format!(" | S3 server: {}", show_counters(counted)),
        None => String::new(),
    };
    eprintln!(
        "{tool:>14} {label:<34} {}  (peak RSS {:.0} MiB, cpu {:.2}s) {}{server}",
        render(workload, &run.figure),
        run.rss_mib,
        run.cpu_seconds,
        show_counters(&run.client)
    );
}

/// The agent's columns with another allocator preloaded (`LD_PRELOAD`, the
/// Debian packages `libjemalloc2` and `libmimalloc2.0`, in
/// `/usr/lib/ARCH-linux-gnu/`) in place of glibc's malloc as `src/memory.rs`
/// tunes it: the same binary, so the columns differ in the allocator alone.
const ALLOCATOR_COLUMNS: [(&str, &str); 2] = [
    ("hotmount+jemalloc", "libjemalloc.so.2"),
    ("hotmount+mimalloc", "libmimalloc.so.2"),
];

/// What a server process cost during one workload.
#[derive(Debug, Clone, Copy)]
struct Cost {
    peak_rss_mib: f64,
    cpu_seconds: f64,
}

type Results = BTreeMap<(&'static str, &'static str), (Figure, Option<Cost>)>;

/// Both epochs of a workload through a cache column.
#[derive(Debug)]
struct Epochs {
    runs: [Run; 2],
    /// The cache directory's size on disk after epoch 1, MiB.
    cached_mib: f64,
    /// hotmount+cache only (its cache files hold the objects' bytes and
    /// nothing else): those files read straight from the disk after epoch 2,
    /// page cache dropped, what epoch 2 would be without FUSE and the agent.
    direct: Option<Figure>,
}

type EpochResults = BTreeMap<(&'static str, &'static str), Epochs>;

/// The agent binary to run instead of this build's (`BENCH_AGENT_BIN`, e.g.
/// a build of another commit, for an A/B in alternation).
fn agent_binary() -> Option<PathBuf> {
    let binary = PathBuf::from(std::env::var_os("BENCH_AGENT_BIN")?);
    assert!(
        binary.is_file(),
        "BENCH_AGENT_BIN {} is not a file",
        binary.display()
    );
    Some(binary)
}

/// The workloads to run (`BENCH_WORKLOADS`, e.g. `seq,small`; all by default).
fn selected_workloads() -> Vec<&'static str> {
    let wanted = std::env::var("BENCH_WORKLOADS").unwrap_or_default();
    WORKLOADS
        .into_iter()
        .filter(|w| wanted.is_empty() || wanted.split(',').any(|x| x == *w))
        .collect()
}

/// The workloads of the cache columns: read twice in one mount.
const EPOCH_WORKLOADS: [&str; 2] = ["small", "seq"];

fn run_tool(
    tool: &mut dyn MountTool,
    sizes: &Sizes,
    server: Option<&ServerStats>,
    results: &mut Results,
) {
    for workload in selected_workloads() {
        let (mount, pid) = tool.mount(workload != "write");
        let run = measure(&*tool, &mount, pid, workload, sizes, server);
        tool.unmount();
        report(tool.name(), &describe(workload, sizes), workload, &run);
        let cost = Cost {
            peak_rss_mib: run.rss_mib,
            cpu_seconds: run.cpu_seconds,
        };
        results.insert((tool.name(), workload), (run.figure, Some(cost)));
    }
}

/// The epoch workloads through a cache column: epoch 1 from a fresh mount
/// with an empty cache, epoch 2 in the same mount after dropping the page
/// cache again (the tool's own disk cache warm).
fn run_epochs(
    tool: &mut dyn MountTool,
    sizes: &Sizes,
    server: Option<&ServerStats>,
    results: &mut EpochResults,
) {
    for workload in selected_workloads() {
        if !EPOCH_WORKLOADS.contains(&workload) {
            continue;
        }
        let (mount, pid) = tool.mount(true);
        let first = measure(&*tool, &mount, pid, workload, sizes, server);
        report(
            tool.name(),
            &format!("{}, epoch 1", describe(workload, sizes)),
            workload,
            &first,
        );
        let cached_mib = tool.cache_dir().map_or(f64::NAN, settle);
        let second = measure(&*tool, &mount, pid, workload, sizes, server);
        report(
            tool.name(),
            &format!("{}, epoch 2", describe(workload, sizes)),
            workload,
            &second,
        );
        let direct = match tool.cache_dir() {
            Some(dir) if tool.name() == "hotmount+cache" => {
                read_cache_files(dir, second.figure.items)
            }
            _ => None,
        };
        tool.unmount();
        eprintln!(
            "{:>14} cache on disk after epoch 1: {cached_mib:.0} MiB; epoch 2 / epoch 1: {:.2}x{}",
            tool.name(),
            merit(workload, &second.figure) / merit(workload, &first.figure),
            direct.as_ref().map_or(String::new(), |figure| format!(
                "; its cache files read directly: {}",
                render(workload, figure)
            ))
        );
        let epochs = Epochs {
            runs: [first, second],
            cached_mib,
            direct,
        };
        results.insert((tool.name(), workload), epochs);
    }
}

fn print_table(results: &Results, sizes: &Sizes, tools: &[&'static str]) {
    println!();
    print!("| workload |");
    for tool in tools {
        print!(" {tool} |");
    }
    println!(" hotmount / ceiling | hotmount / s3fs | hotmount / rclone |");
    print!("|---|");
    for _ in tools {
        print!("---|");
    }
    println!("---|---|---|");
    for workload in WORKLOADS {
        print!("| {} |", describe(workload, sizes));
        for tool in tools {
            match results.get(&(*tool, workload)) {
                Some((figure, _)) => print!(" {} |", render(workload, figure)),
                None => print!(" - |"),
            }
        }
        let hot = results.get(&("hotmount", workload));
        for other in ["ceiling", "s3fs", "rclone"] {
            match (hot, results.get(&(other, workload))) {
                (Some((h, _)), Some((o, _))) => {
                    print!(" {:.2}x |", merit(workload, h) / merit(workload, o))
                }
                _ => print!(" - |"),
            }
        }
        println!();
    }
    print!("| peak RSS of the FUSE server (max over workloads) |");
    for tool in tools {
        let peak = WORKLOADS
            .iter()
            .filter_map(|w| results.get(&(*tool, *w)).and_then(|(_, cost)| *cost))
            .map(|cost| cost.peak_rss_mib)
            .fold(f64::NAN, f64::max);
        if peak.is_nan() {
            print!(" - |");
        } else {
            print!(" {peak:.0} MiB |");
        }
    }
    println!(" | | |");
    print_cost_table(results, sizes, tools);
}

/// Peak RSS and CPU-seconds of each column's server per workload (and CPU
/// per GiB moved, for the workloads that move bytes).
fn print_cost_table(results: &Results, sizes: &Sizes, tools: &[&'static str]) {
    let measured: Vec<&'static str> = tools
        .iter()
        .copied()
        .filter(|tool| *tool != "ceiling")
        .collect();
    if measured.is_empty() {
        return;
    }
    println!();
    print!("| workload: peak RSS, CPU-s (CPU-s per GiB) |");
    for tool in &measured {
        print!(" {tool} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(measured.len()));
    for workload in WORKLOADS {
        print!("| {} |", describe(workload, sizes));
        for tool in &measured {
            match results.get(&(*tool, workload)) {
                Some((figure, Some(cost))) => {
                    let per_gib = if figure.bytes > 0 {
                        format!(
                            " ({:.2})",
                            cost.cpu_seconds / (figure.bytes as f64 / (1024.0 * MIB as f64))
                        )
                    } else {
                        String::new()
                    };
                    print!(
                        " {:.0} MiB, {:.2} s{per_gib} |",
                        cost.peak_rss_mib, cost.cpu_seconds
                    );
                }
                _ => print!(" - |"),
            }
        }
        println!();
    }
}

/// The second-epoch table, and how hotmount+cache stands against the goal
/// (epoch 2 at least 5x epoch 1 for the small files, at least the best
/// peer's epoch 2 for both workloads).
fn print_epoch_table(results: &EpochResults, sizes: &Sizes, tools: &[&'static str]) {
    let server = |run: &Run, key: &str| match &run.server {
        Some(counted) => format!("{:.0}", counted.get(key).unwrap_or(&0.0)),
        None => "-".to_string(),
    };
    println!();
    println!(
        "| workload | column | epoch 1 | epoch 2 | epoch 2 / epoch 1 | peak RSS e1 / e2 | CPU-s e1 / e2 | S3 GETs e1 / e2 | S3 server MiB read e1 / e2 | cache on disk | cache files read directly |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for workload in EPOCH_WORKLOADS {
        for tool in tools {
            let Some(epochs) = results.get(&(*tool, workload)) else {
                continue;
            };
            let [first, second] = &epochs.runs;
            let direct = epochs
                .direct
                .as_ref()
                .map_or("-".to_string(), |figure| render(workload, figure));
            println!(
                "| {} | {tool} | {} | {} | {:.2}x | {:.0} / {:.0} MiB | {:.2} / {:.2} | {} / {} | {} / {} | {:.0} MiB | {direct} |",
                describe(workload, sizes),
                render(workload, &first.figure),
                render(workload, &second.figure),
                merit(workload, &second.figure) / merit(workload, &first.figure),
                first.rss_mib,
                second.rss_mib,
                first.cpu_seconds,
                second.cpu_seconds,
                server(first, "GetObject"),
                server(second, "GetObject"),
                server(first, "MiB read"),
                server(second, "MiB read"),
                epochs.cached_mib,
            );
        }
    }
    for workload in EPOCH_WORKLOADS {
        let Some(Epochs {
            runs: [first, second],
            ..
        }) = results.get(&("hotmount+cache", workload))
        else {
            continue;
        };
        let ratio = merit(workload, &second.figure) / merit(workload, &first.figure);
        let best_peer = ["s3fs+cache", "rclone+cache"]
            .iter()
            .filter_map(|peer| {
                let [_, peer_second] = &results.get(&(*peer, workload))?.runs;
                Some((*peer, merit(workload, &peer_second.figure)))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let against_peer = match best_peer {
            Some((peer, figure)) => format!(
                "{:.2}x the best peer's epoch 2 ({peer})",
                merit(workload, &second.figure) / figure
            ),
            None => "no peer column ran".into(),
        };
        println!(
            "hotmount+cache, {}: epoch 2 / epoch 1 {ratio:.2}x; {against_peer}",
            describe(workload, sizes)
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Node::start (below) moves this thread into a private mount namespace;
    // every mount and every FUSE client process lives there.
    support::require_root();
    support::require_fuse();
    COLD.store(
        full && std::env::var("BENCH_WARM").is_err(),
        Ordering::Relaxed,
    );
    // The agent logs at info: per-request debug lines would be measured too.
    // SAFETY: single-threaded at this point; nothing else reads the environment.
    unsafe { std::env::set_var("RUST_LOG", "warn") };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Results::new();
    if !full {
        smoke(&runtime, &mut results);
        return;
    }
    let sizes = Sizes::full();
    let wanted: Vec<String> = std::env::var("BENCH_TOOLS")
        .unwrap_or_else(|_| {
            "ceiling,hotmount,s3fs,rclone,hotmount+cache,s3fs+cache,rclone+cache".into()
        })
        .split(',')
        .map(str::to_string)
        .collect();
    for tool in &wanted {
        if tool.starts_with("s3fs") {
            support::require_tool("s3fs", "s3fs");
        }
        if tool.starts_with("rclone") {
            support::require_tool("rclone", "rclone");
        }
    }
    let caches = wanted
        .iter()
        .any(|tool| tool.ends_with("+cache"))
        .then(cache_root);
    let garage = support::Garage::start();
    garage.create_bucket("bench");
    let store = garage.store("bench");
    upload(&store, &runtime, &sizes);
    let stats = ServerStats::of(&garage);
    let server = S3Server {
        endpoint: garage.endpoint(),
        region: garage.region().to_string(),
        bucket: "bench".into(),
        key_id: garage.access_key_id().to_string(),
        secret: garage.secret_access_key().to_string(),
    };
    // BENCH_AGENT_ARGS, e.g. "--prefetch-memory 64MiB": flags for the agent.
    let agent_args = std::env::var("BENCH_AGENT_ARGS").unwrap_or_default();
    let agent_args: Vec<&str> = agent_args.split_whitespace().collect();
    if !agent_args.is_empty() {
        eprintln!("hotmount serve flags: {}", agent_args.join(" "));
    }
    let agent_env: Vec<(String, String)> = std::env::var("BENCH_AGENT_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let node = support::Node::start_with_env(agent_binary().as_deref(), &agent_args, &agent_env);
    let work = tempfile::tempdir().expect("work directory");
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let mut tools: Vec<&'static str> = Vec::new();
    let mut epochs = EpochResults::new();
    let mut epoch_tools: Vec<&'static str> = Vec::new();
    let s3fs = |cache_root: Option<PathBuf>| S3fs {
        server: &server,
        dir: work.path().to_path_buf(),
        child: None,
        cache_root,
        cache: None,
    };
    let rclone = |cache_root: Option<PathBuf>| Rclone {
        server: &server,
        dir: work.path().to_path_buf(),
        child: None,
        cache_root,
        cache: None,
    };
    for tool in &wanted {
        match tool.as_str() {
            "ceiling" => {
                for workload in selected_workloads() {
                    let figure = ceiling(&store, &runtime, workload, &sizes);
                    eprintln!(
                        "{:>14} {:<34} {}",
                        "ceiling",
                        describe(workload, &sizes),
                        render(workload, &figure)
                    );
                    results.insert(("ceiling", workload), (figure, None));
                }
                tools.push("ceiling");
            }
            "hotmount" => {
                let spec = garage.spec("bench", json!({"secret": "garage"}));
                let mut hotmount = Hotmount {
                    name: "hotmount",
                    node: &node,
                    spec,
                };
                run_tool(&mut hotmount, &sizes, Some(&stats), &mut results);
                tools.push("hotmount");
            }
            column if ALLOCATOR_COLUMNS.iter().any(|(name, _)| *name == column) => {
                let (name, library) = ALLOCATOR_COLUMNS
                    .into_iter()
                    .find(|(name, _)| *name == column)
                    .expect("an allocator column");
                let library = format!("/usr/lib/{}-linux-gnu/{library}", std::env::consts::ARCH);
                assert!(
                    Path::new(&library).exists(),
                    "{name}: {library} is missing (scripts/setup-test-env.sh installs libjemalloc2 and libmimalloc2.0)"
                );
                let mut env = agent_env.clone();
                env.push(("LD_PRELOAD".to_string(), library));
                let node =
                    support::Node::start_with_env(agent_binary().as_deref(), &agent_args, &env);
                garage.write_credentials_file(&node.credentials_dir().join("garage"));
                let spec = garage.spec("bench", json!({"secret": "garage"}));
                let mut hotmount = Hotmount {
                    name,
                    node: &node,
                    spec,
                };
                run_tool(&mut hotmount, &sizes, Some(&stats), &mut results);
                tools.push(name);
            }
            "s3fs" => {
                run_tool(&mut s3fs(None), &sizes, Some(&stats), &mut results);
                tools.push("s3fs");
            }
            "rclone" => {
                run_tool(&mut rclone(None), &sizes, Some(&stats), &mut results);
                tools.push("rclone");
            }
            "hotmount+cache" => {
                let mut cached = CachedHotmount {
                    args: agent_args.iter().map(|a| a.to_string()).collect(),
                    cache_root: caches.clone().expect("cache root"),
                    prepare: Box::new(|node| {
                        garage.write_credentials_file(&node.credentials_dir().join("garage"));
                        garage.spec("bench", json!({"secret": "garage"}))
                    }),
                    running: None,
                };
                run_epochs(&mut cached, &sizes, Some(&stats), &mut epochs);
                epoch_tools.push("hotmount+cache");
            }
            "s3fs+cache" => {
                run_epochs(&mut s3fs(caches.clone()), &sizes, Some(&stats), &mut epochs);
                epoch_tools.push("s3fs+cache");
            }
            "rclone+cache" => {
                run_epochs(
                    &mut rclone(caches.clone()),
                    &sizes,
                    Some(&stats),
                    &mut epochs,
                );
                epoch_tools.push("rclone+cache");
            }
            other => panic!(
                "BENCH_TOOLS: unknown column {other:?} (ceiling,hotmount,s3fs,rclone,hotmount+cache,s3fs+cache,rclone+cache,hotmount+jemalloc,hotmount+mimalloc)"
            ),
        }
    }
    if !tools.is_empty() {
        print_table(&results, &sizes, &tools);
    }
    if !epoch_tools.is_empty() {
        print_epoch_table(&epochs, &sizes, &epoch_tools);
    }
}

/// A few seconds: tiny sizes, a `file://` bucket, ceiling, hotmount and
/// hotmount+cache.
fn smoke(runtime: &tokio::runtime::Runtime, results: &mut Results) {
    let sizes = Sizes::smoke();
    let node = support::Node::start(&[]);
    std::fs::create_dir_all(node.buckets().join("bench")).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(node.buckets().join("bench"))
            .expect("local bucket"),
    );
    upload(&store, runtime, &sizes);
    for workload in WORKLOADS {
        results.insert(
            ("ceiling", workload),
            (ceiling(&store, runtime, workload, &sizes), None),
        );
    }
    let spec = node.file_spec("bench");
    run_tool(
        &mut Hotmount {
            name: "hotmount",
            node: &node,
            spec: spec.clone(),
        },
        &sizes,
        None,
        results,
    );
    print_table(results, &sizes, &["ceiling", "hotmount"]);
    // The cache column's code, on its own node serving the first node's
    // bucket directory (the agent does not cache `file://` buckets: the
    // full run against Garage is what measures the cache).
    let caches = tempfile::tempdir().expect("cache root");
    let mut epochs = EpochResults::new();
    let mut cached = CachedHotmount {
        args: vec![
            "--allow-file-endpoint".into(),
            node.buckets().display().to_string(),
        ],
        cache_root: caches.path().to_path_buf(),
        prepare: Box::new(move |_| spec.clone()),
        running: None,
    };
    run_epochs(&mut cached, &sizes, None, &mut epochs);
    drop(cached);
    print_epoch_table(&epochs, &sizes, &["hotmount+cache"]);
}
