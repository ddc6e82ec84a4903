//! The nfs tier's guest: a Debian kernel under qemu (TCG) booted from the
//! initramfs of `scripts/nfs-vm-initramfs.sh`, its serial console collected,
//! and the command channel that runs shell commands in the guest's node or pod
//! mount namespace.
//!
//! Network (qemu user mode): the guest is 10.0.2.15, the host's 127.0.0.1 is
//! 10.0.2.2 from inside. Two forwards from host loopback ports into the guest:
//! the agent's HTTP API (guest tcp/7470) and the command channel (guest
//! tcp/7471).
//!
//! Command channel protocol (guest side: `scripts/nfs-vm-guest/guest-cmd`): one
//! TCP connection per command; the host sends one line `MODE SECS COMMAND`
//! (MODE `sh`: the guest's initial mount namespace, i.e. the node; `pod`: the
//! pod view made by `/bin/pod-view`), the guest runs `sh -c COMMAND` killed
//! after SECS, replies with its output and a last line `HOTMOUNT-EXIT CODE`,
//! and closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::process::{spawn_owned, stop_child};

/// The guest port of the agent's HTTP API.
pub const GUEST_API_PORT: u16 = 7470;
/// The guest port of the command channel.
pub const GUEST_CMD_PORT: u16 = 7471;
/// The line /init prints when the network and the command channel are up.
pub const READY_MARKER: &str = "HOTMOUNT-GUEST READY";

/// Where the nfs tier's kernel and modules are cached (scripts/nfs-vm-assets.sh).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOTMOUNT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hotmount"))
        .join("nfs-vm")
}

/// Everything the tier needs on the host, or a message saying what is missing
/// and which script installs it.
pub fn check_assets() -> Result<(), String> {
    let mut missing = Vec::new();
    for program in ["qemu-system-x86_64", "ganesha.nfsd", "cpio", "gzip"] {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        });
        if !found {
            missing.push(program.to_string());
        }
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so").exists()
        && !Path::new("/usr/lib/ganesha/libfsalvfs.so").exists()
    {
        missing.push("nfs-ganesha-vfs (libfsalvfs.so)".to_string());
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".to_string());
    }
    let cache = cache_dir();
    for file in ["vmlinuz", "modules.order"] {
        if !cache.join(file).is_file() {
            missing.push(cache.join(file).display().to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the nfs test tier needs {}: run `sudo scripts/nfs-vm-assets.sh` (installs \
             qemu-system-x86, busybox-static, cpio, nfs-ganesha, nfs-ganesha-vfs and caches \
             the Debian kernel and its NFS modules in {})",
            missing.join(", "),
            cache.display()
        ))
    }
}

/// Packs the guest initramfs with `scripts/nfs-vm-initramfs.sh`; `agent` is a
/// static hotmount binary to include as /bin/hotmount, if any.
pub fn build_initramfs(out: &Path, agent: Option<&Path>, extra_init: Option<&Path>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nfs-vm-initramfs.sh");
    let mut command = Command::new(&script);
    command
        .arg(agent.map_or_else(|| "none".into(), |p| p.display().to_string()))
        .arg(out);
    if let Some(extra) = extra_init {
        command.arg(extra);
    }
    let output = command.output().expect("run scripts/nfs-vm-initramfs.sh");
    assert!(
        output.status.success(),
        "scripts/nfs-vm-initramfs.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct CommandOutput {
    /// stdout and stderr, interleaved.
    pub output: String,
    /// The exit code; 143 when killed by its timeout.
    pub code: i32,
}

/// Collected serial console lines.
#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// A running guest; qemu is killed on Drop.
pub struct Guest {
    child: Option<Child>,
    console: Arc<(Mutex<Console>, Condvar)>,
    api_port: u16,
    cmd_port: u16,
    started: Instant,
    /// From spawning qemu to the READY line.
    pub boot_time: Duration,
}

impl Guest {
    /// Boots the guest from `initrd` and waits (up to `deadline`) for READY.
    pub fn boot(initrd: &Path, deadline: Duration) -> Guest {
        let [api_port, cmd_port] = crate::support::free_loopback_ports();
        let kernel = cache_dir().join("vmlinuz");
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-accel", "tcg", "-m", "512", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{api_port}-:{GUEST_API_PORT},\
                 hostfwd=tcp:127.0.0.1:{cmd_port}-:{GUEST_CMD_PORT}"
            ))
            .args(["-device", "e1000,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = spawn_owned(&mut command, "qemu-system-x86_64");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        collect(
            child.stdout.take().expect("qemu stdout"),
            console.clone(),
            true,
        );
        collect(
            child.stderr.take().expect("qemu stderr"),
            console.clone(),
            false,
        );
        let mut guest = Guest {
            child: Some(child),
            console,
            api_port,
            cmd_port,
            started,
            boot_time: Duration::ZERO,
        };
        if let Err(e) = guest.wait_for_console(READY_MARKER, deadline) {
            panic!(
                "guest did not boot: {e}\nconsole:\n{}",
                guest.console_text()
            );
        }
        guest.boot_time = started.elapsed();
        guest
    }

    /// The host address of the guest's agent API (hostfwd to guest tcp/7470).
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.api_port))
    }

    /// Time since qemu was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the console showed so far.
    pub fn console_text(&self) -> String {
        self.console.0.lock().unwrap().lines.join("\n")
    }

    /// Waits until a console line contains `marker`.
    pub fn wait_for_console(&self, marker: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            if let Some(line) = console.lines.iter().find(|l| l.contains(marker)) {
                return Ok(line.clone());
            }
            if console.closed {
                return Err(format!("qemu exited before `{marker}`"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no `{marker}` within {timeout:?}"));
            }
            console = changed.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Runs `command` in the guest's node mount namespace, killed after `secs`.
    pub fn sh(&self, secs: u32, command: &str) -> CommandOutput {
        self.run("sh", secs, command)
    }

    /// Runs `command` in the pod view's mount namespace, killed after `secs`.
    pub fn pod(&self, secs: u32, command: &str) -> CommandOutput {
        self.run("pod", secs, command)
    }

    /// Like [`Guest::sh`], panicking with the output unless it exits 0.
    pub fn sh_ok(&self, secs: u32, command: &str) -> String {
        let out = self.sh(secs, command);
        assert_eq!(out.code, 0, "guest `{command}` failed:\n{}", out.output);
        out.output
    }

    /// Like [`Guest::pod`], panicking with the output unless it exits 0.
    pub fn pod_ok(&self, secs: u32, command: &str) -> String {
        let out = self.pod(secs, command);
        assert_eq!(out.code, 0, "pod `{command}` failed:\n{}", out.output);
        out.output
    }

    fn run(&self, mode: &str, secs: u32, command: &str) -> CommandOutput {
        assert!(
            !command.contains('\n'),
            "one-line commands only: {command:?}"
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], self.cmd_port));
        // The guest kills the command after `secs`; allow for TCG slowness.
        let budget = Duration::from_secs(u64::from(secs) + 30);
        let fail = |what: String| -> ! {
            panic!(
                "command channel, `{mode} {command}`: {what}\nconsole:\n{}",
                self.console_text()
            )
        };
        let started = Instant::now();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
        stream
            .set_read_timeout(Some(budget))
            .expect("set_read_timeout");
        stream
            .write_all(format!("{mode} {secs} {command}\n").as_bytes())
            .unwrap_or_else(|e| fail(format!("send: {e}")));
        let mut reply = String::new();
        let deadline = Instant::now() + budget;
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => fail(format!("read: {e} (after {:?})", budget)),
            }
            if Instant::now() > deadline {
                fail(format!(
                    "no end of reply within {budget:?}; so far:\n{reply}"
                ));
            }
        }
        let trimmed = reply.trim_end();
        let (output, last) = trimmed.rsplit_once('\n').unwrap_or(("", trimmed));
        let code = last
            .strip_prefix("HOTMOUNT-EXIT ")
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| fail(format!("reply without exit line:\n{reply}")));
        // Shown with the test's output: a step-by-step trace with timings.
        println!(
            "nfs-vm guest [{:6.1}s] {mode} `{command}` -> {code} in {:.2}s",
            self.started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        CommandOutput {
            output: output.to_string(),
            code,
        }
    }

    /// Powers the guest off and waits for qemu to exit (killing it after 20 s).
    pub fn shutdown(&mut self) {
        if let Some(child) = self.child.take() {
            // The reply never comes: the guest is gone before it is sent.
            let addr = SocketAddr::from(([127, 0, 0, 1], self.cmd_port));
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                let _ = stream.write_all(b"sh 5 poweroff -f\n");
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.read(&mut [0u8; 64]);
            }
            stop_child_after(child, Duration::from_secs(20));
        }
    }
}

/// Waits for qemu to exit by itself for up to `wait`, then stops it.
fn stop_child_after(mut child: Child, wait: Duration) {
    if crate::support::wait_exit(&mut child, wait).is_none() {
        stop_child(child, Duration::from_secs(2));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // On the failure path (panic): no clean poweroff, just stop qemu.
            stop_child(child, Duration::from_secs(2));
        }
    }
}

/// Reads lines of a qemu pipe into the console until it closes.
fn collect(
    pipe: impl Read + Send + 'static,
    console: Arc<(Mutex<Console>, Condvar)>,
    is_stdout: bool,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                    let (lock, changed) = &*console;
                    lock.lock().unwrap().lines.push(line);
                    changed.notify_all();
                }
            }
        }
        if is_stdout {
            let (lock, changed) = &*console;
            lock.lock().unwrap().closed = true;
            changed.notify_all();
        }
    });
}
