//! How long a pod's reads stall when the agent goes away, side by side in
//! the same run:
//!
//! - worker crash: the worker is killed with SIGKILL; the supervisor starts
//!   another, which serves the same FUSE connection again (the read in
//!   flight is resent by the kernel);
//! - takeover: a second `hotmount serve` takes the node over (an upgrade);
//! - re-mount (before the supervisor, and still the fallback when the
//!   supervisor itself dies): the whole agent is killed and started again;
//!   the pod's open file is dead and it must open the file again.
//!
//! A pod thread reads 64 KiB at a time from a file it holds open (each
//! read goes to FUSE: the range is dropped from the page cache first), and
//! the stall of one run is the longest read that overlapped the event (for
//! the re-mount: from the kill to the first good read through a new open).
//! Real kernel, real Garage, inside a private mount namespace.
//!
//! `cargo bench --bench restart_stall` runs 50 crashes (more than 60 in a
//! minute would be a crash loop, which the supervisor backs off on purpose),
//! 20 takeovers and 10 re-mounts; without `--bench` (as `cargo test
//! --all-targets` runs it) a smoke run of 3, 2 and 1.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Agent, Garage, Node, object_bytes, percentile, signal, worker_of};

const FILE_SIZE: u64 = 16 << 20;
const READ_SIZE: usize = 64 << 10;
/// How long after an event its reads are looked at.
const SETTLE: Duration = Duration::from_millis(300);

/// The calls of the pod's reader: (start, end, ok).
type Calls = Arc<Mutex<Vec<(Instant, Instant, bool)>>>;

/// A pod thread reading `file` until stopped; on a failed read it opens the
/// file again (as a program that retries would).
fn start_reader(
    node: &Node,
    file: &'static str,
    stop: Arc<AtomicBool>,
) -> (Calls, std::thread::JoinHandle<()>) {
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&calls);
    let handle = node.pod.spawn(move |view: &Path| {
        let path: PathBuf = view.join(file);
        let mut handle = std::fs::File::open(&path).ok();
        let mut buffer = vec![0u8; READ_SIZE];
        let mut offset = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let ok = match &handle {
                Some(open) => {
                    let _ = nix::fcntl::posix_fadvise(
                        open.as_fd(),
                        offset as i64,
                        READ_SIZE as i64,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                    open.read_at(&mut buffer, offset).is_ok_and(|n| n > 0)
                }
                None => false,
            };
            recorded.lock().unwrap().push((started, Instant::now(), ok));
            if ok {
                offset = (offset + READ_SIZE as u64) % FILE_SIZE;
            } else {
                handle = std::fs::File::open(&path).ok();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    (calls, handle)
}

/// The stall of an event at `at`: the longest read that overlapped it, or,
/// if reads failed, the time from the event to the end of the first good
/// read after the last failure.
fn stall_after(calls: &Calls, at: Instant) -> (Duration, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(10));
        assert!(Instant::now() < deadline, "the reader never read again");
        if Instant::now() < at + SETTLE {
            continue;
        }
        let calls = calls.lock().unwrap();
        let after: Vec<_> = calls.iter().filter(|(_, end, _)| *end >= at).collect();
        let last_failure = after
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(_, end, _)| *end)
            .max();
        let failed = after.iter().filter(|(_, _, ok)| !ok).count();
        let Some(last_failure) = last_failure else {
            // Nothing failed: the longest call that overlapped the event.
            let longest = after
                .iter()
                .filter(|(start, _, _)| *start <= at + SETTLE)
                .map(|(start, end, _)| end.duration_since(*start))
                .max()
                .unwrap_or_default();
            return (longest, 0);
        };
        if let Some((_, end, _)) = after
            .iter()
            .find(|(start, _, ok)| *ok && *start >= last_failure)
        {
            return (end.duration_since(at), failed);
        }
    }
}

struct Column {
    name: &'static str,
    stalls: Vec<Duration>,
    failed_reads: usize,
}

impl Column {
    fn new(name: &'static str) -> Column {
        Column {
            name,
            stalls: Vec::new(),
            failed_reads: 0,
        }
    }

    fn add(&mut self, (stall, failed): (Duration, usize)) {
        self.stalls.push(stall);
        self.failed_reads += failed;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (crashes, takeovers, remounts) = if full { (50, 20, 10) } else { (3, 2, 1) };
    support::require_root();
    support::require_fuse();
    let garage = Garage::start();
    garage.create_bucket("data");
    garage.put_objects(
        "data",
        vec![("big.bin".to_string(), object_bytes(7, FILE_SIZE))],
    );
    let mut node = Node::start(&[]);
    let credentials = node.credentials_dir().join("credentials");
    garage.write_credentials_file(&credentials);
    let spec = garage.spec("data", json!({"file": credentials}));
    let (status, body) = node.call("PUT", "/v1/mounts/train", Some(&spec));
    assert_eq!(status, 201, "{body}");

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, reader) = start_reader(&node, "train/big.bin", Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(200));

    let mut baseline = Column::new("nothing happens (a read's own time)");
    for _ in 0..crashes.min(20) {
        baseline.add(stall_after(&calls, Instant::now()));
    }

    let mut crash = Column::new("worker crash (SIGKILL), resumed");
    for _ in 0..crashes {
        let supervisor = node.agent.pid().unwrap();
        let worker = worker_of(supervisor, None);
        let at = Instant::now();
        signal(worker, nix::sys::signal::Signal::SIGKILL);
        worker_of(supervisor, Some(worker));
        crash.add(stall_after(&calls, at));
    }

    let mut takeover = Column::new("takeover (new hotmount serve)");
    for _ in 0..takeovers {
        let old_supervisor = node.agent.pid().unwrap();
        let at = Instant::now();
        let mut newer = Agent::start(node.agent.options().clone());
        worker_of(newer.pid().unwrap(), None);
        while !support::children_of(old_supervisor).is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        takeover.add(stall_after(&calls, at));
        std::mem::swap(&mut node.agent, &mut newer);
        assert!(newer.stop().success(), "the old supervisor exits cleanly");
    }

    let mut remount = Column::new("re-mount (agent killed, restarted)");
    for _ in 0..remounts {
        let at = Instant::now();
        node.agent.kill9();
        node.restart();
        remount.add(stall_after(&calls, at));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();

    println!("\nread stall of a pod holding a file open (ms):");
    println!(
        "{:<38} {:>5} {:>9} {:>9} {:>9} {:>13}",
        "event", "runs", "p50", "p99", "max", "failed reads"
    );
    for column in [&baseline, &crash, &takeover, &remount] {
        let mut sorted = column.stalls.clone();
        sorted.sort();
        println!(
            "{:<38} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>13}",
            column.name,
            sorted.len(),
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.99)),
            ms(*sorted.last().unwrap()),
            column.failed_reads,
        );
    }
    println!("(a failed read: the pod's open file broke and it had to open it again)");
}
