//! Soak: many attaches and detaches (names reused, a few at once) while a few
//! datasets stay attached and are read from a pod the whole time. The agent's
//! memory, threads, fds, FUSE connections and metric series must come back to
//! their baseline, and no read of a kept dataset may fail. Real kernel mounts
//! in a private namespace (`file://` buckets); needs root and /dev/fuse.
//!
//! `cargo test --test soak` runs the short form CI runs (300 cycles);
//! `HOTMOUNT_SOAK_CYCLES=2000 cargo test --release --test soak -- --nocapture`
//! the full one, with its figures.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Node, footprint, poll_until, series_names};

/// Datasets kept attached (and read) throughout.
const KEPT: usize = 3;
/// Distinct names the cycles use (so names are detached and reused).
const NAMES: usize = 40;
/// RSS the agent may keep above its baseline after the cycles.
const RSS_SLACK_KIB: u64 = 32 * 1024;

fn attach(node: &Node, name: &str) {
    let (status, body) = node.call(
        "PUT",
        &format!("/v1/mounts/{name}"),
        Some(&node.file_spec("data")),
    );
    assert_eq!(status, 201, "PUT {name}: {body}\n{}", node.agent.log());
}

fn detach(node: &Node, name: &str) {
    let (status, body) = node.call("DELETE", &format!("/v1/mounts/{name}"), None);
    assert_eq!(status, 200, "DELETE {name}: {body}\n{}", node.agent.log());
}

#[test]
fn attach_and_detach_cycles_return_to_the_baseline() {
    let cycles: usize = std::env::var("HOTMOUNT_SOAK_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let node = Node::start(&[]);
    node.mount_fusectl();
    let bucket = node.buckets().join("data");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("README.txt"), b"a dataset\n").unwrap();
    for kept in 0..KEPT {
        attach(&node, &format!("kept-{kept}"));
    }
    // Warm-up: every name once, so lazily made things (metric families,
    // pool threads, allocator arenas) count in the baseline.
    for i in 0..NAMES {
        attach(&node, &format!("cycle-{i}"));
    }
    for i in 0..NAMES {
        detach(&node, &format!("cycle-{i}"));
    }

    // Readers in the pod, reading the kept datasets throughout: one shell
    // loop per kept dataset, printing a line per read, until `stop` exists.
    let scratch = tempfile::tempdir().unwrap();
    let stop = scratch.path().join("stop");
    let readers: Vec<_> = (0..KEPT)
        .map(|kept| {
            let file = node.pod.view().join(format!("kept-{kept}/README.txt"));
            let script = format!(
                "while [ ! -e {stop} ]; do \
                   if [ \"$(cat {file})\" = 'a dataset' ]; then echo ok; else echo FAIL; fi; \
                   sleep 0.005; done",
                stop = stop.display(),
                file = file.display()
            );
            Command::new("nsenter")
                .args([
                    "-t",
                    &node.pod.pid().to_string(),
                    "-m",
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a reader in the pod")
        })
        .collect();
    // The baseline once the readers run (their requests make series of
    // their own, which stay).
    std::thread::sleep(Duration::from_secs(1));
    // (The first scrape adds the series counting scrapes.)
    let _ = series_names(&node);
    let baseline_series = series_names(&node);
    let baseline = footprint(&node);

    let started = Instant::now();
    let mut attached = std::collections::VecDeque::new();
    for cycle in 0..cycles {
        let name = format!("cycle-{}", cycle % NAMES);
        attach(&node, &name);
        attached.push_back(name);
        // Up to five attached at once; the oldest goes first.
        if attached.len() > 1 + cycle % 5 {
            while let Some(name) = attached.pop_front() {
                detach(&node, &name);
                if attached.len() <= cycle % 3 {
                    break;
                }
            }
        }
    }
    for name in attached {
        detach(&node, &name);
    }
    let took = started.elapsed();
    std::fs::write(&stop, b"").unwrap();
    let (mut reads, mut failed) = (0, 0);
    for reader in readers {
        let output = reader.wait_with_output().expect("reader in the pod");
        let text = String::from_utf8_lossy(&output.stdout);
        reads += text.lines().count();
        failed += text.lines().filter(|line| *line != "ok").count();
    }
    assert!(reads > 0, "the readers read nothing");
    assert_eq!(
        failed, 0,
        "{failed} of {reads} reads of kept datasets failed"
    );

    // Threads of the blocking pool and freed memory go back in the background.
    let settled = poll_until(Duration::from_secs(20), Duration::from_millis(250), || {
        let now = footprint(&node);
        // One fd may be the API connection of the call that measures.
        (now.threads <= baseline.threads + 2
            && now.fds <= baseline.fds + 1
            && now.supervisor_fds == baseline.supervisor_fds
            && now.fuse_connections == baseline.fuse_connections
            && series_names(&node).is_subset(&baseline_series)
            && now.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB)
            .then_some(now)
    });
    let after = footprint(&node);
    eprintln!(
        "figure: soak {cycles} attach/detach cycles in {took:?} with {KEPT} datasets read \
         throughout ({reads} reads, 0 failed): baseline {baseline:?}, after {after:?}"
    );
    let added: Vec<String> = series_names(&node)
        .difference(&baseline_series)
        .cloned()
        .collect();
    assert!(
        settled.is_some(),
        "the agent did not return to its baseline:\n  baseline {baseline:?}\n  after    {after:?}\n  series added: {added:?}"
    );
    for kept in 0..KEPT {
        assert_eq!(node.mounts_at(&node.root().join(format!("kept-{kept}"))), 1);
    }
    assert!(
        !Path::new(&node.root().join("cycle-0")).exists(),
        "no directory left"
    );
}
