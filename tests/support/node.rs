//! A whole simulated node for mount-tier tests: a private namespace whose
//! test directory is shared (like /var/lib/hotmount), a running agent with a
//! `file://` bucket directory allowed, and a running pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Agent, AgentOptions, NodeNamespace, Pod};

/// A simulated node. Fields drop top to bottom: the pod and the agent go
/// before the namespace and the directory.
pub struct Node {
    /// The running pod (read-only rslave view of the root).
    pub pod: Pod,
    /// The running agent.
    pub agent: Agent,
    _node: NodeNamespace,
    buckets: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node; `extra_args` go to `hotmount serve` (probes every
    /// 200 ms unless they set `--probe-interval`).
    pub fn start(extra_args: &[&str]) -> Node {
        Node::start_binary(None, extra_args)
    }

    /// [`Node::start`] running `binary` (an installed copy) instead of the
    /// one cargo built.
    pub fn start_binary(binary: Option<&Path>, extra_args: &[&str]) -> Node {
        Node::start_with_env(binary, extra_args, &[])
    }

    /// [`Node::start_binary`] with environment variables for the agent
    /// alone.
    pub fn start_with_env(
        binary: Option<&Path>,
        extra_args: &[&str],
        env: &[(String, String)],
    ) -> Node {
        super::require_root();
        super::require_fuse();
        let dir = tempfile::tempdir().unwrap();
        let node = NodeNamespace::enter();
        node.share_dir(dir.path());
        let buckets = dir.path().join("buckets");
        std::fs::create_dir_all(&buckets).unwrap();
        let mut options = AgentOptions::in_dir(dir.path());
        let probes = if extra_args.contains(&"--probe-interval") {
            &[][..]
        } else {
            &["--probe-interval", "200ms"][..]
        };
        options.extra_args = ["--allow-file-endpoint", buckets.to_str().unwrap()]
            .iter()
            .chain(probes)
            .chain(extra_args)
            .map(|s| s.to_string())
            .collect();
        options.binary = binary.map(Path::to_path_buf);
        options.env = env.to_vec();
        let mut agent = Agent::start(options);
        agent.wait_ready(Duration::from_secs(30));
        let pod = Pod::start(&agent.options().root);
        Node {
            pod,
            agent,
            _node: node,
            buckets,
            _dir: dir,
        }
    }

    /// The agent's root, as the node sees it.
    pub fn root(&self) -> PathBuf {
        self.agent.options().root.clone()
    }

    /// The agent's `--credentials-dir`: S3 credentials files go here.
    pub fn credentials_dir(&self) -> &Path {
        &self.agent.options().credentials_dir
    }

    /// The directory whose subdirectories are `file://` buckets.
    pub fn buckets(&self) -> &Path {
        &self.buckets
    }

    /// A spec for the `file://` bucket `bucket`.
    pub fn file_spec(&self, bucket: &str) -> Value {
        json!({"source": {"s3": {"bucket": bucket, "endpoint": format!("file://{}", self.buckets.display())}}})
    }

    /// One API call; the body parsed as JSON (or kept as a string).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let (status, text) = super::http(self.agent.socket(), method, path, body.as_deref());
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The value of one metric series (`name{labels}` as `/metrics` shows
    /// it), 0 if absent.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, metrics) = self.call("GET", "/metrics", None);
        let series = format!("{series} ");
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .map_or(0, |value| value.trim().parse().unwrap_or(0))
    }

    /// Mounts stacked at exactly `path` in the node's namespace.
    pub fn mounts_at(&self, path: &Path) -> usize {
        super::thread_mountinfo()
            .lines()
            .filter(|line| line.split(' ').nth(4) == path.to_str())
            .count()
    }

    /// Mount points strictly below `dir` in the node's namespace (read on
    /// the test thread, which is in it), sorted.
    pub fn mounts_below(&self, dir: &Path) -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = super::namespace::mount_points(&super::thread_mountinfo())
            .into_iter()
            .filter(|point| point.starts_with(dir) && point != dir)
            .collect();
        points.sort();
        points.dedup();
        points
    }

    /// The names of the datasets mounted under the root in the node's
    /// namespace (the kernel's mount table, not the agent's word), sorted.
    pub fn mounted_datasets(&self) -> Vec<String> {
        let root = self.root();
        self.mounts_below(&root)
            .iter()
            .filter_map(|point| point.strip_prefix(&root).ok())
            .map(|rel| rel.to_string_lossy().into_owned())
            .collect()
    }

    /// The FUSE connection number (device minor) of the mount at `path`.
    pub fn fuse_connection(&self, path: &Path) -> Option<u32> {
        super::thread_mountinfo()
            .lines()
            .find(|l| l.split(' ').nth(4) == path.to_str())
            .and_then(|l| l.split(' ').nth(2)?.split(':').nth(1)?.parse().ok())
    }

    /// Asserts that a failed PUT of `name` left nothing behind.
    pub fn assert_nothing_left(&self, name: &str) {
        let path = self.root().join(name);
        assert!(!path.exists(), "{} was left behind", path.display());
        assert_eq!(
            self.mounts_at(&path),
            0,
            "a mount was left at {}",
            path.display()
        );
        let (status, _) = self.call("GET", &format!("/v1/mounts/{name}"), None);
        assert_eq!(status, 404, "{name} is still listed");
        let state = std::fs::read_to_string(self.agent.options().state_dir.join("mounts.json"))
            .unwrap_or_default();
        assert!(
            !state.contains(&format!("\"{name}\"")),
            "{name} is in the state file: {state}"
        );
    }

    /// Starts the agent again with the same options (after a kill or stop).
    pub fn restart(&mut self) {
        let options = self.agent.options().clone();
        self.agent = Agent::start(options);
        self.agent.wait_ready(Duration::from_secs(30));
    }

    /// Mounts fusectl in this node's namespace (to watch FUSE connections).
    pub fn mount_fusectl(&self) {
        std::fs::create_dir_all("/sys/fs/fuse/connections").ok();
        match nix::mount::mount(
            Some("fusectl"),
            "/sys/fs/fuse/connections",
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => panic!("cannot mount fusectl on /sys/fs/fuse/connections: {e}"),
        }
    }
}

/// Polls until `<view>/<rel>` reads in the pod; how long that took.
pub fn wait_readable(pod: &Pod, rel: &str, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match pod.read(rel) {
            Ok(_) => return Ok(started.elapsed()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "{rel} not readable in the pod within {timeout:?}: {last}"
    ))
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
