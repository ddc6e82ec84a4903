//! The agent under test as a real process: `hotmount serve` started from the
//! calling thread (so inside its [`super::NodeNamespace`]), output captured to a
//! log file that is printed when a test fails, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::http::http_with_timeout;

/// How long [`Agent::stop`] waits after SIGTERM before it sends SIGKILL.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the agent keeps its root, state and socket, plus extra `serve` flags.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `--root`: the shared directory datasets are mounted under.
    pub root: PathBuf,
    /// `--state-dir`: desired state and audit log.
    pub state_dir: PathBuf,
    /// `--socket`: the control API's unix socket.
    pub socket: PathBuf,
    /// `--credentials-dir`: where tests write S3 credentials files (created
    /// mode 0700 at start).
    pub credentials_dir: PathBuf,
    /// Appended after the standard flags, e.g. `["--allow-file-endpoint", "/srv"]`.
    pub extra_args: Vec<String>,
    /// The binary to run instead of the one cargo built (an installed copy
    /// that a test replaces, as a package upgrade does).
    pub binary: Option<PathBuf>,
    /// Environment variables set for the agent alone (the benchmark's
    /// allocator columns: `LD_PRELOAD`).
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// Root, state, socket and credentials inside `dir` (`dir/mnt`,
    /// `dir/state`, `dir/api.sock`, `dir/creds`).
    pub fn in_dir(dir: &Path) -> AgentOptions {
        AgentOptions {
            root: dir.join("mnt"),
            state_dir: dir.join("state"),
            socket: dir.join("api.sock"),
            credentials_dir: dir.join("creds"),
            extra_args: Vec::new(),
            binary: None,
            env: Vec::new(),
        }
    }
}

/// A running `hotmount serve`; killed (SIGKILL) and reaped on drop.
pub struct Agent {
    child: Option<Child>,
    options: AgentOptions,
    log_path: PathBuf,
}

impl Agent {
    /// Spawns `hotmount serve --root R --state-dir S --socket P
    /// --credentials-dir C [extra]`, creating the state directory, the
    /// credentials directory and the socket's parent. Output goes to
    /// `<state_dir>/../agent-<pid>.log` (see [`Agent::log`]).
    pub fn start(options: AgentOptions) -> Agent {
        let binary = options
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hotmount")));
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--root")
            .arg(&options.root)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .arg("--socket")
            .arg(&options.socket)
            .arg("--credentials-dir")
            .arg(&options.credentials_dir)
            .args(&options.extra_args)
            .envs(options.env.iter().map(|(k, v)| (k, v)));
        Agent::start_command(command, options)
    }

    /// Starts `command` as the agent (for harness self-tests with a stand-in
    /// server); `options` only tell the harness where the socket and state are.
    pub fn start_command(mut command: Command, options: AgentOptions) -> Agent {
        for dir in [
            Some(options.state_dir.as_path()),
            options.socket.parent(),
            options.root.parent(),
        ]
        .into_iter()
        .flatten()
        {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {} for the agent: {e}", dir.display()));
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            let creds = &options.credentials_dir;
            match std::fs::DirBuilder::new().mode(0o700).create(creds) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("create {} for the agent: {e}", creds.display()),
            }
        }
        let log_dir = options
            .state_dir
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .to_path_buf();
        let log_path = log_dir.join(format!(
            "agent-{}-{}.log",
            std::process::id(),
            unique_suffix()
        ));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create agent log {}: {e}", log_path.display()));
        let log_for_stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("dup agent log handle: {e}"));
        let child = command
            .env_remove("AWS_CA_BUNDLE")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn agent {command:?}: {e}"));
        Agent {
            child: Some(child),
            options,
            log_path,
        }
    }

    /// Polls `GET /readyz` on the socket until it answers 200. Panics with the
    /// agent's log if the process exits or `timeout` passes first.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "agent exited with {status} before it was ready; log {}:\n{}",
                    self.log_path.display(),
                    self.log()
                );
            }
            match http_with_timeout(
                &self.options.socket,
                "GET",
                "/readyz",
                None,
                Duration::from_secs(2),
            ) {
                Ok((200, _)) => return,
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent not ready within {timeout:?} (last /readyz: {last}); log {}:\n{}",
            self.log_path.display(),
            self.log()
        );
    }

    /// The options it was started with.
    pub fn options(&self) -> &AgentOptions {
        &self.options
    }

    /// The control API socket.
    pub fn socket(&self) -> &Path {
        &self.options.socket
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The pid of the agent's serving worker (the supervisor's child that
    /// does the work: what memory, threads and CPU are measured on).
    pub fn worker_pid(&self) -> Option<u32> {
        self.pid()
            .map(|supervisor| super::worker_of(supervisor, None))
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        super::read_log(&self.log_path)
    }

    /// SIGKILL, then reaps it: simulates a crash (mounts stay in place).
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = child.kill();
        child
            .wait()
            .unwrap_or_else(|e| panic!("wait for killed agent: {e}"))
    }

    /// SIGTERM and waits for a graceful exit; panics with the log if it takes
    /// longer than [`AGENT_STOP_TIMEOUT`] (the agent is then SIGKILLed).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        if let Err(e) = kill(pid, Signal::SIGTERM) {
            panic!("SIGTERM agent {pid}: {e}");
        }
        let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "agent did not exit within {AGENT_STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                        self.log()
                    );
                }
                Err(e) => panic!("wait for agent: {e}"),
            }
        }
    }

    /// `Some(status)` once the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for agent: {e}"))?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- agent log {} ----\n{}\n---- end of agent log ----",
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// Distinguishes several agents started by one test process.
fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
