//! S3 tier: the real agent mounts buckets of a real S3 server (Garage, set
//! up by `scripts/setup-test-env.sh`) inside a private node namespace, and a
//! running pod reads them. Byte-exact reads, prefixes, every way a backend can
//! refuse a PUT (each leaving nothing behind), inline credentials that never
//! show, credentials by secret name (in the Kubernetes layout), an outage
//! that degrades and heals, and a kill -9 that heals by itself (credentials
//! from outside the credentials directory and FIFOs as credentials are
//! attacks: `attack.rs`). Needs root, /dev/fuse and the Garage binary; fails
//! without them.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Garage, Node, object_bytes, wait_readable};

/// The agent's PUT deadline in these tests: long enough for Garage on a busy
/// machine, short enough that the hanging-endpoint case stays quick.
const MOUNT_TIMEOUT: &str = "4s";

/// A node and a Garage server with one bucket, `data`, and a credentials
/// file the agent reads (in its credentials directory). Drops the node
/// (agent, pod, namespace) first.
struct S3Node {
    node: Node,
    garage: Garage,
    credentials: PathBuf,
}

impl S3Node {
    fn start(extra_args: &[&str]) -> S3Node {
        support::require_root();
        support::require_fuse();
        let garage = Garage::start();
        garage.create_bucket("data");
        let args: Vec<&str> = ["--mount-timeout", MOUNT_TIMEOUT]
            .into_iter()
            .chain(extra_args.iter().copied())
            .collect();
        let node = Node::start(&args);
        let credentials = node.credentials_dir().join("credentials");
        garage.write_credentials_file(&credentials);
        S3Node {
            node,
            garage,
            credentials,
        }
    }

    /// A node whose agent has a node cache of `size` in a fresh directory
    /// (returned second, so that it outlives the node).
    fn with_cache(size: &str, extra_args: &[&str]) -> (S3Node, tempfile::TempDir) {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().to_str().unwrap().to_string();
        let args: Vec<&str> = ["--cache-dir", dir.as_str(), "--cache-size", size]
            .into_iter()
            .chain(extra_args.iter().copied())
            .collect();
        (S3Node::start(&args), cache)
    }

    /// A spec for `bucket` on Garage, credentials from the file (by path).
    fn spec(&self, bucket: &str) -> Value {
        self.spec_with(bucket, json!({"file": self.credentials}))
    }

    fn spec_with(&self, bucket: &str, credentials: Value) -> Value {
        self.garage.spec(bucket, credentials)
    }

    fn put(&self, name: &str, spec: &Value) -> (u16, Value) {
        self.node
            .call("PUT", &format!("/v1/mounts/{name}"), Some(spec))
    }

    /// Uploads `content` as `f.bin`, mounts the bucket as `dataset`, reads
    /// the file once in the pod and waits until the node cache holds it.
    fn cached_file(&self, dataset: &str, content: &[u8]) {
        self.garage.put_object("data", "f.bin", content);
        let (status, body) = self.put(dataset, &self.spec("data"));
        assert_eq!(status, 201, "{body}");
        let read = self.node.pod.read(format!("{dataset}/f.bin")).unwrap();
        assert!(read == content, "epoch 1 read different bytes");
        wait_cached(&self.node, content.len() as u64);
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn garage_objects_read_byte_exact_in_a_running_pod() {
    let s3 = S3Node::start(&[]);
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("empty.bin", Vec::new()),
        ("one.bin", vec![0x5a]),
        ("train/cats/1.jpg", object_bytes(1, 300_001)),
        ("train/cats/2.jpg", object_bytes(2, 65_536)),
        ("train/labels.csv", b"file,label\n1.jpg,cat\n".to_vec()),
        ("big/shard-000.tar", object_bytes(3, 24 << 20)),
        ("odd names/a+b=c&d.txt", b"special characters\n".to_vec()),
    ];
    for (key, bytes) in &objects {
        s3.garage.put_object("data", key, bytes);
    }

    let (status, body) = s3.put("train", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "Mounted");
    for (key, bytes) in &objects {
        let read = s3
            .node
            .pod
            .read(format!("train/{key}"))
            .unwrap_or_else(|e| panic!("read {key} in the pod: {e}"));
        assert_eq!(read.len(), bytes.len(), "size of {key}");
        assert_eq!(sha256(&read), sha256(bytes), "content of {key}");
    }
    assert_eq!(
        s3.node.pod.list("train").unwrap(),
        vec!["big", "empty.bin", "odd names", "one.bin", "train"]
    );
    assert_eq!(
        s3.node.pod.list("train/train").unwrap(),
        vec!["cats", "labels.csv"]
    );
    // Sizes and mtimes as stat shows them, without reading.
    let (size, mtime, is_dir) = s3.node.pod.run(|view| {
        let file = std::fs::metadata(view.join("train/train/cats/1.jpg")).unwrap();
        let dir = std::fs::metadata(view.join("train/train/cats")).unwrap();
        (file.size(), file.mtime(), dir.is_dir())
    });
    assert_eq!(size, 300_001);
    assert!(is_dir, "a common prefix is a directory");
    let now = chrono::Utc::now().timestamp();
    assert!(
        (now - mtime).abs() < 600,
        "mtime is the object's LastModified ({mtime}), near now ({now})"
    );
    // Reads in the middle of a large object: ranged, exact.
    let big = &objects[5].1;
    let slice = s3.node.pod.run(|view| {
        let mut file = std::fs::File::open(view.join("train/big/shard-000.tar")).unwrap();
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(10_000_003)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        file.read_exact(&mut buf).unwrap();
        buf
    });
    assert_eq!(slice, big[10_000_003..10_000_003 + (1 << 20)]);
    // Read-only: the pod cannot write into the dataset.
    assert_eq!(s3.node.pod.write("train/new.txt", b"x"), Err(libc::EROFS));

    // A prefix mounts a subtree.
    let mut spec = s3.spec("data");
    spec["source"]["s3"]["prefix"] = json!("train/cats");
    let (status, body) = s3.put("cats", &spec);
    assert_eq!(status, 201, "{body}");
    assert_eq!(s3.node.pod.list("cats").unwrap(), vec!["1.jpg", "2.jpg"]);
    assert_eq!(
        sha256(&s3.node.pod.read("cats/2.jpg").unwrap()),
        sha256(&objects[3].1)
    );

    for name in ["train", "cats"] {
        let (status, body) = s3.node.call("DELETE", &format!("/v1/mounts/{name}"), None);
        assert_eq!(status, 200, "{body}");
        assert!(s3.node.pod.list(name).is_err(), "{name} gone from the pod");
    }
}

/// A port that accepts connections and never answers.
fn hanging_endpoint() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    (listener, endpoint)
}

/// A loopback port with nothing listening.
fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    endpoint
}

#[test]
fn a_refusing_backend_fails_the_put_and_leaves_nothing_behind() {
    let s3 = S3Node::start(&[]);
    s3.garage.put_object("data", "a.txt", b"a");

    // Each failure: status, error code, a message that gives the reason.
    let wrong_secret = s3.spec_with(
        "data",
        json!({"inline": {
            "accessKeyId": s3.garage.access_key_id(),
            "secretAccessKey": "not-the-secret-at-all-0123456789abcdef",
        }}),
    );
    let mut unreachable = s3.spec("data");
    unreachable["source"]["s3"]["endpoint"] = json!(closed_endpoint());
    let (_hang, hanging) = hanging_endpoint();
    let mut hangs = s3.spec("data");
    hangs["source"]["s3"]["endpoint"] = json!(hanging);
    let mut no_such_file = s3.spec("data");
    no_such_file["source"]["s3"]["credentials"] =
        json!({"file": s3.node.credentials_dir().join("nonexistent")});
    let mut outside = s3.spec("data");
    outside["source"]["s3"]["credentials"] = json!({"file": "/nonexistent/credentials"});
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "missing-bucket",
            s3.spec("no-such-bucket"),
            502,
            "BucketNotFound",
            "no-such-bucket",
        ),
        (
            "wrong-secret",
            wrong_secret,
            502,
            "BackendAccessDenied",
            "data",
        ),
        (
            "unreachable",
            unreachable,
            502,
            "BackendUnreachable",
            "127.0.0.1",
        ),
        (
            "hanging",
            hangs,
            504,
            "BackendTimeout",
            "did not answer within",
        ),
        (
            "no-credentials",
            no_such_file,
            400,
            "InvalidCredentials",
            "nonexistent: No such file",
        ),
        (
            "outside-credentials",
            outside,
            403,
            "CredentialsNotAllowed",
            "/nonexistent/credentials is not allowed",
        ),
    ];
    for (name, spec, want_status, want_code, want_in_message) in cases {
        let started = Instant::now();
        let (status, body) = s3.put(name, &spec);
        let took = started.elapsed();
        assert_eq!(status, want_status, "{name}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(want_in_message),
            "{name}: the message names {want_in_message:?}: {message}"
        );
        assert!(
            took < Duration::from_secs(15),
            "{name}: the PUT answered within its deadline (took {took:?})"
        );
        s3.node.assert_nothing_left(name);
        assert!(
            !message.contains("not-the-secret"),
            "{name}: no secret in errors"
        );
    }
    // The agent is unharmed: a good PUT still works.
    let (status, body) = s3.put("good", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(s3.node.pod.read("good/a.txt").unwrap(), b"a");
}

#[test]
fn inline_credentials_work_and_never_show() {
    let s3 = S3Node::start(&[]);
    s3.garage.put_object("data", "a.txt", b"inline\n");
    let secret = s3.garage.secret_access_key().to_string();
    let spec = s3.spec_with(
        "data",
        json!({"inline": {
            "accessKeyId": s3.garage.access_key_id(),
            "secretAccessKey": secret,
        }}),
    );
    let (status, body) = s3.put("inline", &spec);
    assert_eq!(status, 201, "{body}");
    assert_eq!(s3.node.pod.read("inline/a.txt").unwrap(), b"inline\n");
    // The same spec again is idempotent (compared with the secret, not shown).
    let (status, again) = s3.put("inline", &spec);
    assert_eq!(status, 200, "{again}");

    let (_, one) = s3.node.call("GET", "/v1/mounts/inline", None);
    let (_, list) = s3.node.call("GET", "/v1/mounts", None);
    let (_, metrics) = s3.node.call("GET", "/metrics", None);
    for (what, text) in [
        ("PUT response", body.to_string()),
        ("second PUT response", again.to_string()),
        ("GET", one.to_string()),
        ("list", list.to_string()),
        ("metrics", metrics.to_string()),
        ("agent log", s3.node.agent.log()),
        (
            "audit log",
            std::fs::read_to_string(s3.node.agent.options().state_dir.join("audit.log"))
                .unwrap_or_default(),
        ),
    ] {
        assert!(!text.contains(&secret), "the secret shows in the {what}");
    }
    assert_eq!(
        one["source"]["s3"]["credentials"]["inline"]["secretAccessKey"],
        "<redacted>"
    );
    assert_eq!(
        one["source"]["s3"]["credentials"]["inline"]["accessKeyId"],
        s3.garage.access_key_id()
    );
    // The state file keeps it (to mount again after a restart), readable by
    // root only.
    let state = s3.node.agent.options().state_dir.join("mounts.json");
    let mode = std::fs::metadata(&state).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "state file mode");
}

#[test]
fn credentials_by_secret_name_work_in_the_kubernetes_layout() {
    let s3 = S3Node::start(&[]);
    s3.garage.put_object("data", "a.txt", b"by name\n");
    let creds = s3.node.credentials_dir();
    // Plain file.
    s3.garage.write_credentials_file(&creds.join("garage"));
    // What the kubelet makes of a Secret with the key `k8s`.
    let stamped = creds.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&stamped).unwrap();
    s3.garage.write_credentials_file(&stamped.join("k8s"));
    std::os::unix::fs::symlink(stamped.file_name().unwrap(), creds.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/k8s", creds.join("k8s")).unwrap();
    for (name, secret) in [("by-name", "garage"), ("kubelet", "k8s")] {
        let (status, body) = s3.put(name, &s3.spec_with("data", json!({"secret": secret})));
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(body["source"]["s3"]["credentials"]["secret"], secret);
        assert_eq!(
            s3.node.pod.read(format!("{name}/a.txt")).unwrap(),
            b"by name\n"
        );
    }
    // The kubelet's rotation: a new timestamped directory, ..data swapped.
    // (Same key here: the mount keeps reading.)
    let next = creds.join("..2026_01_02_00_00_00.000000002");
    std::fs::create_dir(&next).unwrap();
    s3.garage.write_credentials_file(&next.join("k8s"));
    let swap = creds.join("..data_tmp");
    std::os::unix::fs::symlink(next.file_name().unwrap(), &swap).unwrap();
    std::fs::rename(&swap, creds.join("..data")).unwrap();
    std::fs::remove_dir_all(&stamped).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s3.garage.put_object("data", "b.txt", b"after the swap\n");
    wait_readable(&s3.node.pod, "kubelet/b.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(
        s3.node.pod.read("kubelet/b.txt").unwrap(),
        b"after the swap\n"
    );
}

fn wait_state(node: &Node, name: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < timeout {
        let asked = Instant::now();
        let (status, body) = node.call("GET", &format!("/v1/mounts/{name}"), None);
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "GET answers fast during an outage (took {:?})",
            asked.elapsed()
        );
        if status == 200 && body["state"] == want {
            return started.elapsed();
        }
        last = body;
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{name} not {want} within {timeout:?}; last: {last}");
}

#[test]
fn an_s3_outage_degrades_the_dataset_and_it_heals_by_itself() {
    let mut s3 = S3Node::start(&["--metadata-ttl", "0s", "--probe-timeout", "1s"]);
    s3.garage.put_object("data", "a.txt", b"before\n");
    let (status, body) = s3.put("flaky", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(s3.node.pod.read("flaky/a.txt").unwrap(), b"before\n");

    s3.garage.stop();
    let detected = wait_state(&s3.node, "flaky", "Degraded", Duration::from_secs(20));
    eprintln!("figure: S3 outage -> Degraded in {detected:?} (probe every 200ms, deadline 1s)");
    let (_, body) = s3.node.call("GET", "/v1/mounts/flaky", None);
    assert!(
        body["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "a Degraded dataset says why: {body}"
    );

    s3.garage.resume();
    let healed = wait_state(&s3.node, "flaky", "Mounted", Duration::from_secs(30));
    eprintln!("figure: S3 back -> Mounted in {healed:?}");
    s3.garage.put_object("data", "b.txt", b"after\n");
    wait_readable(&s3.node.pod, "flaky/b.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(s3.node.pod.read("flaky/b.txt").unwrap(), b"after\n");
    assert_eq!(s3.node.pod.mount_count("flaky"), 1, "one mount, in place");
}

#[test]
fn after_kill_9_a_garage_dataset_comes_back_in_the_pod() {
    let mut s3 = S3Node::start(&[]);
    s3.garage.put_object("data", "a.txt", b"survives\n");
    let (status, body) = s3.put("survivor", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    s3.node.agent.kill9();
    let restarted = Instant::now();
    s3.node.restart();
    let readable = restarted.elapsed()
        + wait_readable(&s3.node.pod, "survivor/a.txt", Duration::from_secs(10)).unwrap();
    eprintln!("figure: agent restart (Garage) -> readable in the pod: {readable:?}");
    assert_eq!(s3.node.pod.read("survivor/a.txt").unwrap(), b"survives\n");
    assert_eq!(s3.node.mounts_at(&s3.node.root().join("survivor")), 1);
    assert_eq!(s3.node.pod.mount_count("survivor"), 1);
}

/// The `hotmount_s3_keys_skipped_total` value of dataset `name` for `reason`.
fn skipped_keys(node: &Node, name: &str, reason: &str) -> u64 {
    node.metric(&format!(
        r#"hotmount_s3_keys_skipped_total{{name="{name}",reason="{reason}"}}"#
    ))
}

/// GETs dataset `name` sent to the store so far.
fn object_gets(node: &Node, name: &str) -> u64 {
    node.metric(&format!(
        r#"hotmount_s3_requests_total{{name="{name}",op="get",result="success"}}"#
    ))
}

/// The block files in a node cache directory.
fn cache_blocks(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir(dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
        .collect();
    files.sort();
    files
}

fn walkdir(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walkdir(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Bytes the node has written to its node cache.
fn cache_written(node: &Node) -> u64 {
    node.metric(r#"hotmount_cache_bytes_total{direction="written"}"#)
}

/// Waits until the node cache has taken `bytes` in (written in the
/// background after a read); fails after 10 s.
fn wait_cached(node: &Node, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache_written(node) < bytes {
        assert!(
            Instant::now() < deadline,
            "the node cache took {} of {bytes} bytes in",
            cache_written(node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `hotmount_cache_requests_total{result="passthrough"}`: opens the kernel
/// was handed a node cache file for.
fn passthrough_opens(node: &Node) -> u64 {
    node.metric(r#"hotmount_cache_requests_total{result="passthrough"}"#)
}

/// Opens `rel` in the pod once it opens with passthrough: the RELEASE of
/// an earlier open reaches the agent after close(2) returns, and until it
/// does the file is still open in the other mode.
fn open_with_passthrough(node: &Node, rel: &str) -> std::fs::File {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = passthrough_opens(node);
        let path = rel.to_string();
        let file = node
            .pod
            .run(move |view| std::fs::File::open(view.join(path)))
            .unwrap();
        if passthrough_opens(node) > before {
            return file;
        }
        drop(file);
        assert!(
            Instant::now() < deadline,
            "{rel} never opened with passthrough"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn opens_of_one_file_never_mix_passthrough_with_reads_through_fuse() {
    let (s3, _cache) = S3Node::with_cache("64MiB", &[]);
    let content = object_bytes(7, 300_000);
    s3.garage.put_object("data", "f.bin", &content);
    let (status, body) = s3.put("modes", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    // The kernel refuses an open in one mode while the file is open in the
    // other (EIO): every open below must succeed and read right.
    let expected = content.clone();
    let opened_while_cached = s3.node.pod.run(move |view| {
        use std::io::Read;
        let path = view.join("modes/f.bin");
        let mut first = std::fs::File::open(&path)?;
        let mut bytes = Vec::new();
        first.read_to_end(&mut bytes)?;
        assert!(bytes == expected, "first read");
        // The object is now in the node cache; the first open still reads
        // through FUSE, so this one must too.
        std::thread::sleep(Duration::from_millis(300));
        let mut second = std::fs::File::open(&path)?;
        bytes.clear();
        second.read_to_end(&mut bytes)?;
        Ok::<_, std::io::Error>(bytes == expected)
    });
    assert!(
        opened_while_cached.unwrap(),
        "second read, beside a cached open"
    );
    assert_eq!(
        passthrough_opens(&s3.node),
        0,
        "no passthrough beside a cached open"
    );
    // All closed: the next opens pass through, sharing one backing file.
    let one = open_with_passthrough(&s3.node, "modes/f.bin");
    let two = s3
        .node
        .pod
        .run(|view| std::fs::File::open(view.join("modes/f.bin")))
        .unwrap();
    for file in [one, two] {
        use std::os::unix::fs::FileExt;
        let mut read = vec![0u8; content.len()];
        file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == content, "a passthrough open reads the object");
    }
    assert!(
        passthrough_opens(&s3.node) >= 2,
        "both opens passed through"
    );
}

#[test]
fn a_file_open_in_passthrough_outlives_its_worker_and_the_next_opens_still_read() {
    use std::os::unix::fs::FileExt;
    let (s3, _cache) = S3Node::with_cache("64MiB", &[]);
    let content = object_bytes(8, 200_000);
    s3.cached_file("held", &content);
    // A reader holds the file open in passthrough mode...
    let held = open_with_passthrough(&s3.node, "held/f.bin");
    // ...while the worker that opened it dies.
    let supervisor = s3.node.agent.pid().unwrap();
    let worker = support::worker_of(supervisor, None);
    support::signal(worker, nix::sys::signal::Signal::SIGKILL);
    support::worker_of(supervisor, Some(worker));
    let mut read = vec![0u8; content.len()];
    held.read_exact_at(&mut read, 0).unwrap();
    assert!(
        read == content,
        "the held file reads on (the kernel reads the cache file)"
    );
    // The kernel accepts no other mode (nor another backing file) for the
    // file while it is open: the new worker reuses the backing id the
    // journal recorded, and new opens read right.
    wait_readable(&s3.node.pod, "held/f.bin", Duration::from_secs(10)).unwrap();
    let before = passthrough_opens(&s3.node);
    assert_eq!(s3.node.pod.read("held/f.bin").unwrap(), content);
    assert!(
        passthrough_opens(&s3.node) > before,
        "the new opens passed through"
    );
    // Once every handle is closed the id is closed, and the next opens get
    // a new one.
    // (Each close's RELEASE comes in the background: an open racing it is
    // read through FUSE, hence the wait for a passthrough open.)
    drop(held);
    for _ in 0..3 {
        let file = open_with_passthrough(&s3.node, "held/f.bin");
        let mut read = vec![0u8; content.len()];
        file.read_exact_at(&mut read, 0).unwrap();
        assert!(read == content, "a new passthrough open reads right");
    }
}

#[test]
fn a_sidecar_stopped_while_its_dataset_is_being_mounted_still_detaches_it() {
    let s3 = S3Node::start(&[]);
    // The server hangs: the sidecar's PUT waits on the mount.
    s3.garage.freeze();
    let mut sidecar = std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
        .args(["attach", "late", "--s3", "s3://data", "--path-style"])
        .args(["--endpoint", &s3.garage.endpoint()])
        .args(["--region", s3.garage.region()])
        .arg("--credentials-file")
        .arg(&s3.credentials)
        .args(["--wait", "--hold", "--socket"])
        .arg(s3.node.agent.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its PUT has come (the dataset is Pending): the sidecar waits on it.
    let asked = support::poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
        (s3.node.call("GET", "/v1/mounts/late", None).0 == 200).then_some(())
    });
    let waiting = asked.is_some() && sidecar.try_wait().unwrap().is_none();
    // The pod ends while its dataset is still being mounted; then the
    // server answers again and the mount completes.
    support::signal(sidecar.id(), nix::sys::signal::Signal::SIGTERM);
    s3.garage.thaw();
    let (exited, output) = support::exit_and_output(sidecar, Duration::from_secs(30));
    assert!(
        waiting,
        "the sidecar did not wait for the mount: {output:?}"
    );
    assert!(exited.is_some_and(|s| s.success()), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("late unmounted from"), "{said}");
    let (status, body) = s3.node.call("GET", "/v1/mounts/late", None);
    assert_eq!(status, 404, "the dataset was left behind: {body}");
    s3.node.assert_nothing_left("late");
}

/// Waits for the warm-up of `name` to end; its last status.
fn warm_done(node: &Node, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = node.call("GET", &format!("/v1/mounts/{name}/warm"), None);
        assert_eq!(status, 200, "{body}");
        if !matches!(body["state"].as_str(), Some("Listing" | "Fetching")) {
            return body;
        }
        assert!(Instant::now() < deadline, "the warm-up never ended: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_warm_up_fetches_chosen_paths_into_the_node_cache_and_can_be_cancelled() {
    // No health probe meanwhile: the S3 requests counted are the warm-up's.
    let (s3, _cache) = S3Node::with_cache("256MiB", &["--probe-interval", "1h"]);
    let train: Vec<(String, Vec<u8>)> = (0..30)
        .map(|n| {
            (
                format!("train/{n:02}.bin"),
                object_bytes(n, 50_000 + n * 1_001),
            )
        })
        .chain([("train/big.tar".to_string(), object_bytes(77, (9 << 20) + 3))])
        .collect();
    let val = vec![("val/0.bin".to_string(), object_bytes(90, 70_000))];
    s3.garage
        .put_objects("data", train.iter().chain(&val).cloned().collect());
    let (status, body) = s3.put("warmed", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");

    // Bad input, and a dataset never warmed.
    for bad in [
        json!({"paths": ["../x"]}),
        json!({"paths": ["/etc"]}),
        json!({"pathz": []}),
    ] {
        let (status, body) = s3.node.call("POST", "/v1/mounts/warmed/warm", Some(&bad));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = s3.node.call("GET", "/v1/mounts/warmed/warm", None);
    assert_eq!(status, 404);

    // The CLI warms train/ and follows it to its end (JSON lines).
    let lists = || {
        s3.node
            .metric(r#"hotmount_s3_requests_total{name="warmed",op="list",result="success"}"#)
    };
    let lists_before = lists();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
        .args(["warm", "warmed", "train", "--json", "--socket"])
        .arg(s3.node.agent.socket())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let last = lines.last().expect("progress lines");
    let bytes: u64 = train.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(last["state"], "Done", "{last}");
    assert_eq!(last["filesTotal"], train.len() as u64);
    assert_eq!(last["filesDone"], train.len() as u64);
    assert_eq!(last["bytesTotal"], bytes);
    assert_eq!(last["bytesFetched"], bytes);
    assert_eq!(last["failedFiles"], 0);
    assert_eq!(
        lists(),
        lists_before + 1,
        "the warm-up's listing of train/ is counted once"
    );

    // What it fetched is read from the node cache: not one GET.
    let gets = object_gets(&s3.node, "warmed");
    for (key, content) in &train {
        assert!(
            s3.node.pod.read(format!("warmed/{key}")).unwrap() == *content,
            "{key}"
        );
    }
    assert_eq!(
        object_gets(&s3.node, "warmed"),
        gets,
        "train/ came from the cache"
    );
    assert_eq!(s3.node.pod.read("warmed/val/0.bin").unwrap(), val[0].1);
    assert!(
        object_gets(&s3.node, "warmed") > gets,
        "val/ was not warmed"
    );

    // `--detach` starts one and returns; `--status` follows it to its end.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
            .args(args)
            .arg("--socket")
            .arg(s3.node.agent.socket())
            .output()
            .unwrap()
    };
    let detached = cli(&["warm", "warmed", "val", "--detach"]);
    assert!(detached.status.success(), "{detached:?}");
    let followed = cli(&["warm", "warmed", "--status", "--json"]);
    assert!(followed.status.success(), "{followed:?}");
    let last: Value = serde_json::from_str(
        String::from_utf8_lossy(&followed.stdout)
            .lines()
            .last()
            .expect("progress lines"),
    )
    .unwrap();
    assert_eq!(last["state"], "Done", "{last}");
    assert_eq!(last["paths"], json!(["val"]));

    // A path that names nothing (a typo) fails, and says which.
    let typo = cli(&["warm", "warmed", "trian"]);
    assert!(!typo.status.success(), "{typo:?}");
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("Failed") && said.contains("trian: no such file or directory"),
        "{said}"
    );

    // Warming it again fetches nothing.
    let (status, body) = s3.node.call(
        "POST",
        "/v1/mounts/warmed/warm",
        Some(&json!({"paths": ["train/"]})),
    );
    assert_eq!(status, 202, "{body}");
    let again = warm_done(&s3.node, "warmed");
    assert_eq!(again["state"], "Done");
    assert_eq!(again["bytesFetched"], 0, "{again}");

    // A warm-up stuck on a server that stopped answering: one at a time,
    // and DELETE stops it at once.
    s3.garage
        .put_object("data", "slow/x.bin", &object_bytes(5, 100_000));
    s3.garage.freeze();
    // Ctrl-C on `hotmount warm` cancels the warm-up it follows, in the
    // agent too.
    let mut following = std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
        .args(["warm", "warmed", "--json", "--socket"])
        .arg(s3.node.agent.socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(following.stdout.as_mut().unwrap()),
        &mut first_line,
    )
    .unwrap();
    assert!(first_line.contains("\"state\""), "{first_line}");
    support::signal(following.id(), nix::sys::signal::Signal::SIGINT);
    let (exited, output) = support::exit_and_output(following, Duration::from_secs(10));
    assert!(exited.is_some_and(|s| !s.success()), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("cancelled"), "{said}");
    assert_eq!(warm_done(&s3.node, "warmed")["state"], "Cancelled");
    let (status, body) = s3.node.call("POST", "/v1/mounts/warmed/warm", None);
    assert_eq!(status, 202, "{body}");
    let (status, body) = s3.node.call("POST", "/v1/mounts/warmed/warm", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "WarmupRunning");
    let started = Instant::now();
    let (status, body) = s3.node.call("DELETE", "/v1/mounts/warmed/warm", None);
    s3.garage.thaw();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "Cancelled", "{body}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(warm_done(&s3.node, "warmed")["state"], "Cancelled");
}

#[test]
fn a_dataset_without_a_node_cache_has_nothing_to_warm() {
    let s3 = S3Node::start(&[]);
    let (status, body) = s3.put("plain", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    let (status, body) = s3.node.call("POST", "/v1/mounts/plain/warm", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "NoNodeCache");
    let (status, _) = s3.node.call("POST", "/v1/mounts/nothing/warm", None);
    assert_eq!(status, 404);
}

#[test]
fn a_dataset_with_cache_false_stays_out_of_the_node_cache() {
    let (s3, _cache) = S3Node::with_cache("64MiB", &[]);
    let uncached = object_bytes(13, 150_000);
    let cached = object_bytes(14, 170_000);
    s3.garage.put_object("data", "u.bin", &uncached);
    s3.garage.put_object("data", "c.bin", &cached);
    let mut spec = s3.spec("data");
    spec["source"]["s3"]["cache"] = json!(false);
    let (status, body) = s3.put("uncached", &spec);
    assert_eq!(status, 201, "{body}");
    let (status, body) = s3.put("cached", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    // Read through the dataset without the cache first: once the other
    // one's bytes are in, anything the first had sent would be too.
    assert_eq!(s3.node.pod.read("uncached/u.bin").unwrap(), uncached);
    assert_eq!(s3.node.pod.read("cached/c.bin").unwrap(), cached);
    wait_cached(&s3.node, cached.len() as u64);
    assert_eq!(
        cache_written(&s3.node),
        cached.len() as u64,
        "only the cached dataset's bytes"
    );
    let (status, body) = s3.node.call("POST", "/v1/mounts/uncached/warm", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "NoNodeCache");
}

#[test]
fn a_full_cache_disk_costs_reads_their_cache_never_their_bytes() {
    let (mut s3, cache) = S3Node::with_cache("1GiB", &[]);
    // The cache on a 64 MiB filesystem of its own (in the node's private
    // namespace), filled to 14 MiB free: under the reserve of a disk that
    // size (a quarter of it, 16 MiB), so no block may be written.
    nix::mount::mount(
        Some("hotmount-cache"),
        cache.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", cache.path().display()));
    let ballast = cache.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 50 << 20]).unwrap();
    // The agent starts again on it (killed first: `restart` is for an agent
    // that is gone, else the new one would race the old one's end).
    s3.node.agent.kill9();
    s3.node.restart();
    let first = object_bytes(15, 300_000);
    let second = object_bytes(16, 200_000);
    s3.garage.put_object("data", "first.bin", &first);
    s3.garage.put_object("data", "second.bin", &second);
    let (status, body) = s3.put("full", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");

    assert!(s3.node.pod.read("full/first.bin").unwrap() == first);
    let skipped = || {
        s3.node
            .metric(r#"hotmount_cache_blocks_total{event="skipped"}"#)
    };
    support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        (skipped() > 0).then_some(())
    })
    .expect("the block past the disk's reserve was counted as skipped");
    assert_eq!(cache_written(&s3.node), 0, "a block went past the reserve");

    // Room again: the next read is cached (the check looks at the disk
    // each time, not once).
    std::fs::remove_file(&ballast).unwrap();
    assert!(s3.node.pod.read("full/second.bin").unwrap() == second);
    wait_cached(&s3.node, second.len() as u64);
    // (The tmpfs goes with the node's namespace.)
}

#[test]
fn a_node_cache_on_overlayfs_is_read_through_fuse_instead_of_passthrough() {
    let (mut s3, cache) = S3Node::with_cache("64MiB", &[]);
    // The cache directory on an overlay (in the node's private namespace):
    // a stacked filesystem, whose files the kernel takes as no backing file.
    let layers = tempfile::tempdir().unwrap();
    for layer in ["lower", "upper", "work"] {
        std::fs::create_dir(layers.path().join(layer)).unwrap();
    }
    let options = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        layers.path().display()
    );
    nix::mount::mount(
        Some("overlay"),
        cache.path(),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount an overlay on {}: {e}", cache.path().display()));
    s3.node.agent.kill9();
    s3.node.restart();
    let content = object_bytes(17, 100_000);
    s3.cached_file("stacked", &content);
    // Whole in the cache, but not passed through: read through FUSE, from
    // the cache, and the right bytes every time.
    let gets = object_gets(&s3.node, "stacked");
    for _ in 0..3 {
        assert_eq!(s3.node.pod.read("stacked/f.bin").unwrap(), content);
    }
    assert_eq!(passthrough_opens(&s3.node), 0, "passed through an overlay");
    assert_eq!(object_gets(&s3.node, "stacked"), gets, "not from the cache");
    let log = s3.node.agent.log();
    assert!(log.contains("fuse passthrough refused"), "{log}");
}

#[test]
fn an_object_replaced_while_open_with_passthrough_is_never_read_in_its_old_bytes() {
    let (s3, _cache) = S3Node::with_cache("64MiB", &["--metadata-ttl", "200ms"]);
    let old = object_bytes(11, 100_000);
    s3.cached_file("replaced", &old);
    let held = open_with_passthrough(&s3.node, "replaced/f.bin");
    // The object is replaced; once the metadata expires an open pins the
    // new version, which the kernel cannot read through the old backing
    // file, nor in another mode while the held open lasts: EIO, never the
    // old bytes under the new version's name.
    let new = object_bytes(12, 120_000);
    s3.garage.put_object("data", "f.bin", &new);
    std::thread::sleep(Duration::from_millis(400));
    match s3.node.pod.read("replaced/f.bin") {
        Ok(bytes) => panic!("read {} bytes (old: {})", bytes.len(), bytes == old),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    // Once the old open is closed, the new version reads right.
    drop(held);
    assert!(s3.node.pod.read("replaced/f.bin").unwrap() == new);
}

#[test]
fn the_node_cache_serves_the_next_epoch_across_restarts_and_never_a_corrupt_block() {
    let (mut s3, cache) = S3Node::with_cache("256MiB", &[]);
    let objects: Vec<(String, Vec<u8>)> = (0..20)
        .map(|n| {
            (
                format!("train/{n:03}.jpg"),
                object_bytes(n, 40_000 + n * 997),
            )
        })
        .chain([(
            "shard.tar".to_string(),
            object_bytes(99, (3 << 20) + 12_345),
        )])
        .collect();
    s3.garage.put_objects("data", objects.clone());
    let total: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
    let (status, body) = s3.put("epochs", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    let read_all = |s3: &S3Node| {
        for (key, bytes) in &objects {
            let read = s3.node.pod.read(format!("epochs/{key}")).unwrap();
            assert!(read == *bytes, "{key} read back different bytes");
        }
    };
    // Epoch 1: from Garage, and into the cache.
    read_all(&s3);
    let first_gets = object_gets(&s3.node, "epochs");
    assert!(first_gets >= objects.len() as u64, "{first_gets} GETs");
    wait_cached(&s3.node, total);
    assert_eq!(cache_written(&s3.node), total, "every byte cached once");

    // Epoch 2, after the agent was killed and started again (a new FUSE
    // connection: nothing in the kernel's page cache): no GET at all.
    s3.node.agent.kill9();
    s3.node.restart();
    wait_readable(&s3.node.pod, "epochs/shard.tar", Duration::from_secs(10)).unwrap();
    let gets_before = object_gets(&s3.node, "epochs");
    read_all(&s3);
    assert_eq!(
        object_gets(&s3.node, "epochs"),
        gets_before,
        "the second epoch came from the node cache"
    );
    assert!(
        s3.node
            .metric(r#"hotmount_cache_requests_total{result="hit"}"#)
            > 0
    );
    // The small files (one block each) were handed to the kernel to read
    // from the cache file itself (FUSE passthrough).
    assert!(
        s3.node
            .metric(r#"hotmount_cache_requests_total{result="passthrough"}"#)
            >= 20,
        "small files opened with passthrough"
    );

    // A block corrupted on disk is detected, dropped and fetched again:
    // the pod still reads the right bytes.
    // One block of the shard, and a small file's only block (checked before
    // its file is handed to the kernel).
    let mut blocks = cache_blocks(cache.path());
    blocks.sort_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()));
    for victim in [blocks.first().unwrap(), blocks.last().unwrap()] {
        let mut bytes = std::fs::read(victim).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(victim, bytes).unwrap();
    }
    s3.node.agent.kill9();
    s3.node.restart();
    // (Not 000.jpg, the smallest file, nor the shard: their blocks are bad.)
    wait_readable(
        &s3.node.pod,
        "epochs/train/010.jpg",
        Duration::from_secs(10),
    )
    .unwrap();
    let gets_before = object_gets(&s3.node, "epochs");
    read_all(&s3);
    assert_eq!(
        s3.node
            .metric(r#"hotmount_cache_blocks_total{event="corrupt"}"#),
        2,
        "both corrupt blocks were found"
    );
    let refetched = object_gets(&s3.node, "epochs") - gets_before;
    assert!(
        (2..=3).contains(&refetched),
        "only the corrupt blocks' ranges were fetched again ({refetched} GETs)"
    );
}

#[test]
fn keys_that_cannot_be_file_names_never_break_a_dataset() {
    let s3 = S3Node::start(&["--probe-timeout", "1s"]);
    s3.garage.put_object("data", "good.txt", b"good\n");
    s3.garage.put_object("data", "dir/ok.txt", b"ok\n");
    let long_name = "n".repeat(256);
    let planted = [
        "bad\nname".to_string(),
        "tab\there".to_string(),
        "cr\r".to_string(),
        "./dot".to_string(),
        "dir/../up".to_string(),
        "dir//double".to_string(),
        "dir/./x".to_string(),
        format!("dir/{long_name}"),
    ];
    for key in &planted {
        s3.garage.put_raw_object("data", key, b"planted\n");
    }

    // Attaching works (it answered 502 BackendUnreachable with such a key at the root).
    let (status, body) = s3.put("odd", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(s3.node.pod.list("odd").unwrap(), vec!["dir", "good.txt"]);
    assert_eq!(s3.node.pod.list("odd/dir").unwrap(), vec!["ok.txt"]);
    assert_eq!(s3.node.pod.read("odd/good.txt").unwrap(), b"good\n");
    assert_eq!(s3.node.pod.read("odd/dir/ok.txt").unwrap(), b"ok\n");
    // `find` walks the whole dataset without an error.
    let find = s3.node.pod.exec(
        &["find", s3.node.pod.view().join("odd").to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        find.status.success(),
        "find over the dataset: {}",
        String::from_utf8_lossy(&find.stderr)
    );
    // Each key is counted once, however often its directory is listed.
    s3.node.pod.list("odd").unwrap();
    s3.node.pod.list("odd/dir").unwrap();
    for (reason, count) in [
        ("control_character", 3),
        ("dot_segment", 3),
        ("empty_segment", 1),
        ("name_too_long", 1),
    ] {
        assert_eq!(skipped_keys(&s3.node, "odd", reason), count, "{reason}");
    }

    // A key planted into the root of a mounted dataset does not take it down.
    s3.garage.put_raw_object("data", "late\nkey", b"planted\n");
    std::thread::sleep(Duration::from_secs(2));
    let (_, body) = s3.node.call("GET", "/v1/mounts/odd", None);
    assert_eq!(body["state"], "Mounted", "{body}");
    assert_eq!(s3.node.pod.read("odd/good.txt").unwrap(), b"good\n");
    assert_eq!(s3.node.pod.mount_count("odd"), 1);
}

/// Starts `script` in the pod (bash, as root) without waiting for it.
fn spawn_in_pod(node: &Node, script: &str) -> std::process::Child {
    std::process::Command::new("nsenter")
        .args([
            "-t",
            &node.pod.pid().to_string(),
            "-m",
            "--",
            "bash",
            "-c",
            script,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a process in the pod")
}

#[test]
fn a_hanging_backend_keeps_the_mount_and_its_open_files() {
    let s3 = S3Node::start(&["--probe-timeout", "1s"]);
    let big = object_bytes(11, 24 << 20);
    s3.garage.put_object("data", "big.bin", &big);
    let (status, body) = s3.put("steady", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    let scratch = tempfile::tempdir().unwrap();
    let go = scratch.path().join("go");
    let file = s3.node.pod.view().join("steady/big.bin");
    // A pod holds the file open, reads its first MiB, waits, reads the rest.
    let reader = spawn_in_pod(
        &s3.node,
        &format!(
            "exec 3< {file}; head -c 1048576 <&3 > /dev/null; \
             while [ ! -e {go} ]; do sleep 0.05; done; \
             {{ cat {file} | head -c 1048576; cat <&3; }} | sha256sum",
            file = file.display(),
            go = go.display()
        ),
    );
    std::thread::sleep(Duration::from_millis(500));

    // The S3 server hangs for 6 s: probes fail, the dataset is Degraded, and
    // it stays mounted (it used to be re-mounted after three failed probes,
    // which broke every open file).
    s3.garage.freeze();
    let degraded = wait_state(&s3.node, "steady", "Degraded", Duration::from_secs(10));
    let frozen_at = Instant::now();
    while frozen_at.elapsed() < Duration::from_secs(6) {
        assert_eq!(s3.node.pod.mount_count("steady"), 1, "the mount stays");
        std::thread::sleep(Duration::from_millis(250));
    }
    s3.garage.thaw();
    let healed = wait_state(&s3.node, "steady", "Mounted", Duration::from_secs(30));
    eprintln!("figure: hanging S3 -> Degraded in {degraded:?}; back -> Mounted in {healed:?}");
    std::fs::write(&go, b"").unwrap();
    let output = reader.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the held file reads on: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next(),
        Some(sha256(&big).as_str()),
        "every byte right, through the handle held across the outage"
    );
    let (_, body) = s3.node.call("GET", "/v1/mounts/steady", None);
    assert_eq!(body["generation"], 1, "never re-mounted: {body}");
    assert_eq!(s3.node.mounts_at(&s3.node.root().join("steady")), 1);
}

#[test]
fn a_forced_detach_frees_readers_blocked_on_a_hanging_backend() {
    let s3 = S3Node::start(&["--probe-timeout", "1s"]);
    s3.node.mount_fusectl();
    s3.garage
        .put_object("data", "big.bin", &object_bytes(12, 24 << 20));
    let (status, body) = s3.put("stuck", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    let connection = s3
        .node
        .fuse_connection(&s3.node.root().join("stuck"))
        .expect("a fuse connection");
    s3.garage.freeze();
    let reader = spawn_in_pod(
        &s3.node,
        &format!(
            "cat {} > /dev/null",
            s3.node.pod.view().join("stuck/big.bin").display()
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    let (status, body) = s3.node.call("DELETE", "/v1/mounts/stuck?force=true", None);
    assert_eq!(status, 200, "{body}");
    let mut reader = reader;
    let exited = support::wait_exit(&mut reader, Duration::from_secs(5));
    let freed = asked.elapsed();
    s3.garage.thaw();
    let status = exited.expect("the blocked reader got an error instead of hanging");
    assert!(!status.success(), "the read failed (the dataset is gone)");
    eprintln!("figure: forced detach -> blocked reader freed in {freed:?}");
    let gone = support::poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        (!std::path::Path::new(&format!("/sys/fs/fuse/connections/{connection}")).exists())
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "the kernel's side of the connection is gone"
    );
}

#[test]
fn a_stopped_s3_server_fails_reads_with_eio_never_enoent_and_the_same_handles_read_again() {
    use std::os::unix::fs::FileExt;
    use std::sync::mpsc;
    let s3 = S3Node::start(&["--probe-timeout", "1s", "--s3-request-timeout", "2s"]);
    let big = object_bytes(12, 24 << 20);
    s3.garage.put_object("data", "big.bin", &big);
    let (status, body) = s3.put("outage", &s3.spec("data"));
    assert_eq!(status, 201, "{body}");
    let (to_pod, in_pod) = mpsc::channel::<&'static str>();
    let (from_pod, seen) = mpsc::channel::<String>();
    let expected = big.clone();
    let pod = s3.node.pod.spawn(move |view: &std::path::Path| {
        let file = std::fs::File::open(view.join("outage/big.bin")).unwrap();
        let mut buffer = vec![0u8; 1 << 20];
        file.read_at(&mut buffer, 0).unwrap();
        from_pod.send("holding".to_string()).unwrap();
        // The server stops: a read that needs it, and a name never seen.
        assert_eq!(in_pod.recv().unwrap(), "stopped");
        let started = Instant::now();
        let read = file.read_at(&mut buffer, 20 << 20);
        let stat = std::fs::metadata(view.join("outage/never-seen.txt"));
        from_pod
            .send(format!(
                "read {:?} stat {:?} after {:?}",
                read.map_err(|e| e.raw_os_error()),
                stat.map(|_| ()).map_err(|e| e.raw_os_error()),
                started.elapsed()
            ))
            .unwrap();
        // The server is back: the same handle reads every byte.
        assert_eq!(in_pod.recv().unwrap(), "back");
        let mut all = vec![0u8; expected.len()];
        let mut offset = 0;
        while offset < all.len() {
            let n = file.read_at(&mut all[offset..], offset as u64).unwrap();
            assert!(n > 0, "short read at {offset}");
            offset += n;
        }
        assert!(all == expected, "every byte right through the held handle");
        "read again".to_string()
    });
    assert_eq!(seen.recv().unwrap(), "holding");
    s3.garage.freeze();
    to_pod.send("stopped").unwrap();
    let during = seen
        .recv_timeout(Duration::from_secs(60))
        .expect("calls during the outage return (bounded)");
    eprintln!("figure: S3 stopped: {during}");
    assert!(
        during.starts_with(&format!(
            "read Err(Some({})) stat Err(Some({}))",
            libc::EIO,
            libc::EIO
        )),
        "EIO, never ENOENT: {during}"
    );
    assert_eq!(s3.node.pod.mount_count("outage"), 1, "the mount stays");
    s3.garage.thaw();
    to_pod.send("back").unwrap();
    assert_eq!(pod.join().unwrap(), "read again");
    let (_, body) = s3.node.call("GET", "/v1/mounts/outage", None);
    assert_eq!(body["generation"], 1, "never re-mounted: {body}");
}
