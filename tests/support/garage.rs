//! A real S3 server for the s3 and fault tiers: a single-node Garage on free
//! loopback ports in a temporary directory, with one access key allowed on every
//! bucket it creates. Stopped (killed and reaped) on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::http::http_tcp;

/// Where `scripts/setup-test-env.sh` installs Garage unless `HOTMOUNT_GARAGE_BIN` says otherwise.
pub const DEFAULT_GARAGE_BIN: &str = "/var/cache/hotmount/garage-2.5.0/bin/garage";
/// Bound on the server's start, layout and key setup.
pub const GARAGE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one `garage` admin command.
pub const GARAGE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one S3 request made by the helpers.
pub const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const KEY_NAME: &str = "hotmount-test";

/// A running single-node Garage with an access key.
pub struct Garage {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    log_path: PathBuf,
    s3_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_token: String,
    access_key_id: String,
    secret_access_key: String,
    dir: tempfile::TempDir,
}

impl Garage {
    /// Starts the server, waits until it answers, applies a one-node layout and
    /// creates the access key. Panics (with the server log) on any failure.
    pub fn start() -> Garage {
        let binary = garage_binary();
        let dir = tempfile::Builder::new()
            .prefix("hotmount-garage-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create garage directory: {e}"));
        let [rpc_port, s3_port, admin_port] = super::free_loopback_ports();
        let s3_addr = SocketAddr::from(([127, 0, 0, 1], s3_port));
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let admin_token = random_hex(16);
        let config = dir.path().join("garage.toml");
        let config_text = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "{s3_addr}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "{admin_addr}"
admin_token = "{admin_token}"
"#,
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
            rpc_secret = random_hex(32),
        );
        super::write_private_file(&config, config_text.as_bytes());
        let log_path = dir.path().join("garage.log");
        let child = spawn_server(&binary, &config, &log_path);
        let mut garage = Garage {
            child: Some(child),
            binary,
            config,
            log_path,
            s3_addr,
            admin_addr,
            admin_token,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            dir,
        };
        garage.bring_up();
        garage
    }

    fn bring_up(&mut self) {
        let node_id = super::poll_until(GARAGE_START_TIMEOUT, Duration::from_millis(100), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("garage server exited with {status}; log:\n{}", self.log());
            }
            // `node id` reads the key from disk and answers before the server
            // listens; `status` goes over RPC, so it answers only once it does.
            self.try_admin(&["status"])?;
            let output = self.try_admin(&["node", "id", "-q"])?;
            let id = String::from_utf8_lossy(&output.stdout);
            id.lines().next()?.split('@').next().map(str::to_owned)
        })
        .unwrap_or_else(|| {
            panic!(
                "garage did not answer `status` within {GARAGE_START_TIMEOUT:?}; log:\n{}",
                self.log()
            )
        });
        self.admin(&["layout", "assign", "-z", "dc1", "-c", "1G", &node_id]);
        self.admin(&["layout", "apply", "--version", "1"]);
        let key = self.admin(&["key", "create", KEY_NAME]);
        self.access_key_id = field_after(&key, "Key ID:");
        self.secret_access_key = field_after(&key, "Secret key:");
        self.wait_healthy();
    }

    /// Creates `bucket` and allows the test key to read, write and own it.
    pub fn create_bucket(&self, bucket: &str) {
        self.admin(&["bucket", "create", bucket]);
        self.admin(&[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", KEY_NAME,
        ]);
    }

    /// A hotmount mount spec for `bucket` on this server (path-style, its
    /// region) with `credentials` (e.g. `{"file": PATH}`); read-only unless
    /// the caller sets `readOnly`.
    pub fn spec(&self, bucket: &str, credentials: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"source": {"s3": {
            "bucket": bucket,
            "endpoint": self.endpoint(),
            "region": self.region(),
            "pathStyle": true,
            "credentials": credentials,
        }}})
    }

    /// Writes the key in s3fs's `passwd_file` format (`ID:SECRET`), mode 0600.
    pub fn write_s3fs_passwd(&self, path: &Path) {
        let text = format!("{}:{}\n", self.access_key_id, self.secret_access_key);
        super::write_private_file(path, text.as_bytes());
    }

    /// An `s3fs` command line (foreground, read-only, `allow_other`) that
    /// mounts `bucket` at `target` with the password file `passwd` (see
    /// [`Garage::write_s3fs_passwd`]).
    pub fn s3fs_command(&self, bucket: &str, passwd: &Path, target: &Path) -> Command {
        self.s3fs_command_with(bucket, passwd, target, "ro,allow_other")
    }

    /// [`Garage::s3fs_command`] with its own `-o` mount options.
    pub fn s3fs_command_with(
        &self,
        bucket: &str,
        passwd: &Path,
        target: &Path,
        options: &str,
    ) -> Command {
        let mut command = Command::new("s3fs");
        command
            .arg(bucket)
            .arg(target)
            .arg("-f")
            .args(["-o", &format!("url={}", self.endpoint())])
            .args(["-o", "use_path_request_style"])
            .args(["-o", &format!("endpoint={}", self.region())])
            .args(["-o", &format!("passwd_file={}", passwd.display())])
            .args(["-o", options]);
        command
    }

    /// An `rclone mount` command line (foreground, `--allow-other`) of
    /// `bucket` at `target`, with `extra` flags (e.g. `--read-only`).
    pub fn rclone_command(&self, bucket: &str, target: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new("rclone");
        command
            .arg("mount")
            .arg(format!(":s3:{bucket}"))
            .arg(target)
            .args(["--s3-provider", "Other"])
            .args(["--s3-endpoint", &self.endpoint()])
            .args(["--s3-region", self.region()])
            .args(["--s3-access-key-id", self.access_key_id()])
            .args(["--s3-secret-access-key", self.secret_access_key()])
            .args(["--s3-force-path-style=true", "--allow-other"])
            .args(["--config", "/dev/null"])
            .args(extra);
        command
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.s3_addr)
    }

    /// The S3 listen address.
    pub fn s3_addr(&self) -> SocketAddr {
        self.s3_addr
    }

    /// The signing region, `garage`.
    pub fn region(&self) -> &'static str {
        "garage"
    }

    /// The test key's access key id (`GK...`).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The test key's secret.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// Writes the credentials in the agent's file format (`access_key_id=...`,
    /// `secret_access_key=...`) to `path` with mode 0600.
    pub fn write_credentials_file(&self, path: &Path) {
        let text = format!(
            "access_key_id={}\nsecret_access_key={}\n",
            self.access_key_id, self.secret_access_key
        );
        super::write_private_file(path, text.as_bytes());
    }

    /// An `object_store` client for `bucket` (path-style, plain HTTP, no CA bundle).
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_region(self.region())
            .with_bucket_name(bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_virtual_hosted_style_request(false)
            .with_allow_http(true)
            .build()
            .unwrap_or_else(|e| panic!("build S3 client for {}/{bucket}: {e}", self.endpoint()));
        Arc::new(store)
    }

    /// Uploads `bytes` as `bucket/key`.
    pub fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let store = self.store(bucket);
        let location = ObjectPath::from(key);
        let payload = bytes.to_vec();
        block_on(async move { store.put(&location, payload.into()).await })
            .unwrap_or_else(|e| panic!("put s3://{bucket}/{key} to garage: {e}"));
    }

    /// Uploads `bytes` as exactly `key`, byte for byte, even where an S3
    /// library would refuse or re-encode it (control characters, `.`, `..`
    /// and empty segments): what users' own tools can upload.
    pub fn put_raw_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let raw = super::RawS3 {
            addr: self.s3_addr,
            region: self.region(),
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
        };
        match raw.put(bucket, key, bytes) {
            Ok(200) => {}
            Ok(status) => panic!("raw put of {key:?} to garage answered {status}"),
            Err(e) => panic!("raw put of {key:?} to garage: {e}"),
        }
    }

    /// Uploads many small objects, 32 at a time.
    pub fn put_objects(&self, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
        use futures::StreamExt;
        let store = self.store(bucket);
        let count = objects.len();
        block_on(async move {
            let puts = futures::stream::iter(objects).map(|(key, bytes)| {
                let store = store.clone();
                async move { store.put(&ObjectPath::from(key), bytes.into()).await }
            });
            let results: Vec<_> = puts.buffer_unordered(32).collect().await;
            results.into_iter().collect::<Result<Vec<_>, _>>().map(drop)
        })
        .unwrap_or_else(|e| panic!("put {count} objects to s3://{bucket}: {e}"));
    }

    /// Deletes `bucket/key`.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let store = self.store(bucket);
        let location = ObjectPath::from(key);
        block_on(async move { store.delete(&location).await })
            .unwrap_or_else(|e| panic!("delete s3://{bucket}/{key}: {e}"));
    }

    /// Downloads `bucket/key`.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let store = self.store(bucket);
        let location = ObjectPath::from(key);
        block_on(async move { store.get(&location).await?.bytes().await })
            .unwrap_or_else(|e| panic!("get s3://{bucket}/{key} from garage: {e}"))
            .to_vec()
    }

    /// All keys in `bucket` (under `prefix`), sorted.
    pub fn list_objects(&self, bucket: &str, prefix: Option<&str>) -> Vec<String> {
        use futures::TryStreamExt;
        let store = self.store(bucket);
        let prefix = prefix.map(ObjectPath::from);
        let mut keys = block_on(async move {
            store
                .list(prefix.as_ref())
                .map_ok(|meta| meta.location.to_string())
                .try_collect::<Vec<_>>()
                .await
        })
        .unwrap_or_else(|e| panic!("list s3://{bucket}: {e}"));
        keys.sort();
        keys
    }

    /// Runs `garage -c CONFIG ARGS...` and returns its stdout; panics on failure.
    pub fn admin(&self, args: &[&str]) -> String {
        let output = run_bounded(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(args),
            GARAGE_COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("garage {args:?}: {e}"));
        if !output.status.success() {
            panic!(
                "garage {args:?} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn try_admin(&self, args: &[&str]) -> Option<Output> {
        let output = run_bounded(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(args),
            Duration::from_secs(5),
        )
        .ok()?;
        output.status.success().then_some(output)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        super::read_log(&self.log_path)
    }

    /// The server's working directory (config, metadata, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again after [`Garage::stop`], with the same ports, data,
    /// buckets and key; returns once `/health` answers 200 (an outage that ends).
    pub fn resume(&mut self) {
        assert!(
            self.child.is_none(),
            "Garage::resume: the server is still running"
        );
        self.child = Some(spawn_server(&self.binary, &self.config, &self.log_path));
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let health = super::poll_until(GARAGE_START_TIMEOUT, Duration::from_millis(100), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("garage server exited with {status}; log:\n{}", self.log());
            }
            match http_tcp(
                self.admin_addr,
                "GET",
                "/health",
                &[],
                None,
                Duration::from_secs(2),
            ) {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        });
        if health.is_none() {
            panic!(
                "garage /health not 200 within {GARAGE_START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the
    /// kernel and never answered, like a server that hangs.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("Garage is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("send {signal} to garage: {e}"));
    }

    /// Kills the server (SIGKILL) and reaps it, e.g. to test an S3 outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- garage log ----\n{}\n---- end of garage log ----",
                self.log()
            );
        }
    }
}

/// `$HOTMOUNT_GARAGE_BIN` or the cache path; panics if it is not there.
pub fn garage_binary() -> PathBuf {
    let binary = std::env::var_os("HOTMOUNT_GARAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GARAGE_BIN));
    if !binary.is_file() {
        panic!(
            "garage binary {} not found: run {} as root (it builds Garage 2.5.0 into \
             /var/cache/hotmount), or point HOTMOUNT_GARAGE_BIN at a garage binary",
            binary.display(),
            super::SETUP_SCRIPT
        );
    }
    binary
}

/// Spawns `garage -c CONFIG server` with output appended to `log_path`.
fn spawn_server(binary: &Path, config: &Path, log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("open garage log {}: {e}", log_path.display()));
    let log_for_stderr = log.try_clone().expect("dup garage log handle");
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} server: {e}", binary.display()))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut buffer).expect("read /dev/urandom");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

fn field_after(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("no {label:?} in garage output:\n{text}"))
}

/// Runs `command` with stdin closed; kills it if it outlives `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {timeout:?}"),
            ))
        }
    }
}

/// Runs a future on a private current-thread runtime, bounded by [`S3_REQUEST_TIMEOUT`].
fn block_on<T>(
    future: impl std::future::Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime for an S3 helper");
    runtime.block_on(async {
        match tokio::time::timeout(S3_REQUEST_TIMEOUT, future).await {
            Ok(result) => result,
            Err(_) => Err(object_store::Error::Generic {
                store: "garage",
                source: format!("no answer within {S3_REQUEST_TIMEOUT:?}").into(),
            }),
        }
    })
}
