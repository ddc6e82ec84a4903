//! The S3 read path through a real kernel FUSE mount, against a real S3
//! server (Garage): the agent mounts a bucket in a private node namespace and
//! the test reads it the ways datasets get read — sequentially, 1 MiB at random
//! offsets, four readers at once, across prefetch part and window boundaries —
//! and compares every byte (sha256) with the object. Also: an object replaced
//! under an open handle fails with EIO (never mixed bytes), and a rotated
//! credentials file is picked up without a remount (within the agent's
//! once-a-second look at the file).
//!
//! Needs root, /dev/fuse and Garage (scripts/setup-test-env.sh); fails, never
//! skips, without them.

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotmount::s3fs::prefetch::{INITIAL_WINDOW, MAX_PART};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{object_bytes, within_timeout};

/// How long any single step against the mount may take before the test
/// fails (a wedged mount must not hang the run).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Drops the kernel's cached pages of `path`, so the next read goes to the
/// filesystem again.
fn drop_page_cache(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: fadvise on a valid open descriptor; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED) on {}", path.display());
}

/// A Garage bucket mounted by a running agent in a private node namespace.
struct MountedBucket {
    node: support::Node,
    garage: support::Garage,
}

impl MountedBucket {
    fn start(bucket: &str) -> MountedBucket {
        support::require_fuse();
        let garage = support::Garage::start();
        garage.create_bucket(bucket);
        let node = support::Node::start(&["--metadata-ttl", "2s"]);
        MountedBucket { node, garage }
    }

    /// In the agent's credentials directory, named by path in the spec.
    fn credentials_file(&self) -> PathBuf {
        self.node.credentials_dir().join("credentials")
    }

    fn mount(&self, name: &str, bucket: &str) -> PathBuf {
        if !self.credentials_file().exists() {
            self.garage.write_credentials_file(&self.credentials_file());
        }
        let mut spec = self
            .garage
            .spec(bucket, json!({"file": self.credentials_file()}));
        spec["readOnly"] = json!(true);
        let (status, body) = self
            .node
            .call("PUT", &format!("/v1/mounts/{name}"), Some(&spec));
        assert_eq!(
            status,
            201,
            "mount {name}: {body}\n{}",
            self.node.agent.log()
        );
        self.node.root().join(name)
    }

    fn unmount(&self, name: &str) {
        let (status, body): (u16, Value) =
            self.node
                .call("DELETE", &format!("/v1/mounts/{name}?force=true"), None);
        assert_eq!(status, 200, "unmount {name}: {body}");
    }
}

/// Sizes around the prefetcher's part and window boundaries.
fn interesting_sizes() -> Vec<(String, u64)> {
    vec![
        ("empty".into(), 0),
        ("one".into(), 1),
        ("part-minus-1".into(), MAX_PART - 1),
        ("part".into(), MAX_PART),
        ("part-plus-1".into(), MAX_PART + 1),
        ("window-plus-1".into(), INITIAL_WINDOW + 1),
        ("large".into(), 48 * MIB + 4097),
    ]
}

/// Offsets of 1 MiB random reads inside `len` (deterministic, unordered).
fn random_offsets(len: u64, count: usize) -> Vec<u64> {
    if len == 0 {
        return vec![0];
    }
    let mut state = len | 1;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 17) % len
        })
        .collect()
}

/// Offsets where reads straddle the boundaries of the prefetch parts as the
/// window grows (1, 2, 4 MiB, then 4 MiB parts).
fn boundary_offsets(len: u64) -> Vec<u64> {
    let mut edges = vec![
        INITIAL_WINDOW,
        3 * MIB,
        7 * MIB,
        11 * MIB,
        15 * MIB,
        31 * MIB,
    ];
    edges.retain(|&edge| edge < len);
    edges
        .iter()
        .map(|edge| edge.saturating_sub(4096 + 17))
        .collect()
}

#[test]
fn every_read_pattern_returns_the_object_byte_for_byte() {
    let fixture = MountedBucket::start("patterns");
    let mut expected = Vec::new();
    for (seed, (name, len)) in interesting_sizes().into_iter().enumerate() {
        let data = object_bytes(seed as u64 + 1, len);
        fixture
            .garage
            .put_object("patterns", &format!("set/{name}"), &data);
        expected.push((name, data));
    }
    let root = fixture.mount("patterns", "patterns").join("set");

    for (name, data) in &expected {
        let path = root.join(name);
        let len = data.len() as u64;

        // Sequential, whole file.
        drop_page_cache(&path);
        let read = within_timeout(STEP_TIMEOUT, "sequential read", {
            let path = path.clone();
            move || std::fs::read(path)
        })
        .unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_eq!(sha(&read), sha(data), "sequential read of {name}");

        // 1 MiB at random offsets, on one handle.
        drop_page_cache(&path);
        let offsets = random_offsets(len, 12);
        let chunks = within_timeout(STEP_TIMEOUT, "random reads", {
            let path = path.clone();
            let offsets = offsets.clone();
            move || {
                let file = File::open(&path).expect("open for random reads");
                offsets
                    .iter()
                    .map(|&offset| {
                        let mut buf = vec![0u8; MIB as usize];
                        let n = file.read_at(&mut buf, offset).expect("pread");
                        buf.truncate(n);
                        buf
                    })
                    .collect::<Vec<_>>()
            }
        });
        for (offset, chunk) in offsets.iter().zip(chunks) {
            let start = (*offset).min(len) as usize;
            let end = (offset + MIB).min(len) as usize;
            assert_eq!(
                sha(&chunk),
                sha(&data[start..end]),
                "1 MiB random read of {name} at {offset}"
            );
        }

        // Reads straddling part and window boundaries, sequential from 0 so
        // the window has grown when they arrive.
        drop_page_cache(&path);
        let boundaries = boundary_offsets(len);
        let straddling = within_timeout(STEP_TIMEOUT, "boundary reads", {
            let path = path.clone();
            let boundaries = boundaries.clone();
            move || {
                let file = File::open(&path).expect("open for boundary reads");
                let mut buf = vec![0u8; 300_000];
                let mut out = Vec::new();
                let mut offset = 0;
                // Odd-sized reads from 0, past every boundary in turn.
                for &edge in &boundaries {
                    while offset < edge {
                        let n = file.read_at(&mut buf, offset).expect("pread");
                        offset += n as u64;
                    }
                    let n = file.read_at(&mut buf, edge).expect("pread at a boundary");
                    out.push((edge, buf[..n].to_vec()));
                }
                out
            }
        });
        for (edge, chunk) in straddling {
            let end = (edge as usize + 300_000).min(data.len());
            assert_eq!(
                sha(&chunk),
                sha(&data[edge as usize..end]),
                "read of {name} across the boundary near {edge}"
            );
        }

        // Four readers of the whole file at once.
        drop_page_cache(&path);
        let parallel = within_timeout(STEP_TIMEOUT, "parallel readers", {
            let path = path.clone();
            move || {
                let readers: Vec<_> = (0..4)
                    .map(|_| {
                        let path = path.clone();
                        std::thread::spawn(move || std::fs::read(path))
                    })
                    .collect();
                readers
                    .into_iter()
                    .map(|r| r.join().expect("reader thread").expect("parallel read"))
                    .collect::<Vec<_>>()
            }
        });
        for read in parallel {
            assert_eq!(sha(&read), sha(data), "parallel reader of {name}");
        }
    }
    fixture.unmount("patterns");
}

#[test]
fn an_object_replaced_under_an_open_handle_gives_eio() {
    let fixture = MountedBucket::start("changing");
    let len = 24 * MIB;
    let first = object_bytes(7, len);
    let second = object_bytes(8, len);
    fixture.garage.put_object("changing", "obj", &first);
    let root = fixture.mount("changing", "changing");
    let path = root.join("obj");

    let file = within_timeout(STEP_TIMEOUT, "open", {
        let path = path.clone();
        move || File::open(path).expect("open obj")
    });
    let file = std::sync::Arc::new(file);
    let head = within_timeout(STEP_TIMEOUT, "first read", {
        let file = file.clone();
        move || {
            let mut buf = vec![0u8; 64 * 1024];
            let n = file.read_at(&mut buf, 0).expect("read the opened version");
            buf.truncate(n);
            buf
        }
    });
    assert_eq!(sha(&head), sha(&first[..64 * 1024]));

    // Same size, other bytes: only the ETag differs.
    fixture.garage.put_object("changing", "obj", &second);
    let outcome = within_timeout(STEP_TIMEOUT, "read after replace", {
        let file = file.clone();
        move || {
            let mut buf = vec![0u8; MIB as usize];
            file.read_at(&mut buf, 20 * MIB).map(|n| buf[..n].to_vec())
        }
    });
    match outcome {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "read after replace: {e}"),
        Ok(bytes) => panic!(
            "read after the object was replaced returned {} bytes ({}) instead of EIO",
            bytes.len(),
            if bytes == second[20 * MIB as usize..21 * MIB as usize] {
                "the new version's"
            } else if bytes == first[20 * MIB as usize..21 * MIB as usize] {
                "the old version's"
            } else {
                "unknown"
            }
        ),
    }
    drop(file);

    // Once the metadata TTL (2s) has passed, a new open sees the new version,
    // whole and unmixed.
    std::thread::sleep(Duration::from_millis(2500));
    drop_page_cache(&path);
    let reread = within_timeout(STEP_TIMEOUT, "read the new version", {
        let path = path.clone();
        move || std::fs::read(path)
    })
    .expect("read after reopening");
    assert_eq!(
        sha(&reread),
        sha(&second),
        "a new open must see the new object"
    );
    fixture.unmount("changing");
}

#[test]
fn a_rotated_credentials_file_is_used_without_remount() {
    let fixture = MountedBucket::start("rotating");
    for i in 0..3 {
        fixture
            .garage
            .put_object("rotating", &format!("f{i}"), &object_bytes(i, 1000));
    }
    let root = fixture.mount("rotating", "rotating");
    let connection = fixture.node.fuse_connection(&root);
    assert!(
        connection.is_some(),
        "no fuse connection at {}",
        root.display()
    );
    let read = |name: &str| {
        let path = root.join(name);
        within_timeout(STEP_TIMEOUT, "read", move || std::fs::read(path))
    };
    assert_eq!(
        read("f0").expect("read with the first key"),
        object_bytes(0, 1000)
    );

    // A second key, allowed on the bucket; then the first key goes away.
    let created = fixture.garage.admin(&["key", "create", "rotated-key"]);
    let field = |label: &str| {
        created
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix(label)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {label:?} in `garage key create` output:\n{created}"))
    };
    let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
    fixture.garage.admin(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "rotating",
        "--key",
        "rotated-key",
    ]);
    fixture
        .garage
        .admin(&["key", "delete", "--yes", fixture.garage.access_key_id()]);
    // The mount still signs with the deleted key: a name it has not seen yet
    // cannot be looked up (this is what makes the next step meaningful).
    let denied = read("f1").expect_err("a read signed with a deleted key must fail");
    assert!(
        matches!(denied.raw_os_error(), Some(libc::EACCES) | Some(libc::EIO)),
        "read with a deleted key: {denied}"
    );

    // Rotate the file in place (write a temporary file, rename over).
    let creds = fixture.credentials_file();
    let temporary = creds.with_extension("new");
    std::fs::write(
        &temporary,
        format!("access_key_id={key_id}\nsecret_access_key={secret}\n"),
    )
    .unwrap();
    std::fs::rename(&temporary, &creds).unwrap();
    // f2 was never looked up; f1's failed lookup was not cached. The agent
    // looks at the file at most once a second: until then reads fail.
    let rotated = std::time::Instant::now();
    let f2 = support::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        read("f2").ok()
    })
    .expect("read after rotating the credentials file");
    eprintln!(
        "figure: rotated credentials used after {:?}",
        rotated.elapsed()
    );
    assert_eq!(f2, object_bytes(2, 1000));
    assert_eq!(
        read("f1").expect("read after rotating the credentials file"),
        object_bytes(1, 1000)
    );
    // Same mount all along: one mount at the path, the same FUSE connection.
    assert_eq!(fixture.node.mounts_at(&root), 1);
    assert_eq!(
        fixture.node.fuse_connection(&root),
        connection,
        "the dataset was re-mounted\n{}",
        fixture.node.agent.log()
    );
    fixture.unmount("rotating");
}
