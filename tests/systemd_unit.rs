//! The systemd unit as shipped (`systemd/hotmount.service`) under a real
//! systemd: systemd (252 on Debian 12) runs as PID 1 of fresh PID, mount,
//! cgroup, UTS, IPC and network namespaces (a "machine" on the host's kernel
//! and file system), starts the unit, and the test checks that the sandbox is on
//! every process of the agent (no new privileges, a seccomp filter, the
//! unit's capability bounding set, its memory limit and device policy) and
//! that the agent still does its job under it: it passes its propagation
//! proof, mounts a `file://` S3 dataset that a running pod of the machine
//! sees, and upgrades in place on `systemctl reload` (SIGHUP: re-exec).
//! An option that breaks the agent fails it, saying which way: one that gives
//! the service a mount namespace of its own (the agent starts, but its
//! datasets reach nobody), one that takes a call, capability or socket
//! family the agent needs (its start or a step fails; the agent's log, in
//! the message, says which), one that this systemd ignores. `cargo test
//! --test systemd_unit`, about 3 s.
//!
//! Nothing reaches the host. The machine's mounts are private to it; its
//! `/run`, `/var/lib` and `/usr/local/bin` are tmpfs (the agent binary is a
//! copy there); `/proc/sys` is read-only; `/etc/machine-id` is a bind of a
//! fresh id; its console is a pty this test reads; its units come from a
//! temporary directory only (`SYSTEMD_UNIT_PATH`, no generators). Its
//! cgroups are children of this process's own (cgroup v1 hierarchies) or of
//! the cgroup2 root (where `memory` can be delegated), removed at the end.
//! The only file the test adds to the unit is a drop-in setting
//! `HOTMOUNT_ALLOW_FILE_ENDPOINT` (the demo bucket's directory).
//!
//! Needs root, /dev/fuse, systemd (`/lib/systemd/systemd`, `systemctl`) and
//! util-linux (`unshare`, `nsenter`); fails, naming what is missing, without.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Where Debian's systemd package puts the manager.
const SYSTEMD_BINARY: &str = "/lib/systemd/systemd";
/// The unit's paths, as the machine sees them.
const ROOT: &str = "/var/lib/hotmount/mnt";
const SOCKET: &str = "/run/hotmount/api.sock";
const INSTALLED: &str = "/usr/local/bin/hotmount";
/// The `file://` bucket directory the machine is given, with bucket `data`.
const BUCKETS: &str = "/var/lib/hotmount/buckets";
/// Where the machine's pod sees the root.
const POD_VIEW: &str = "/run/hotmount-test-pod";
/// Prefix of the cgroups this test creates (suffix: the test's pid).
const CGROUP_PREFIX: &str = "hotmount-systemd-test-";
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Moves itself into the cgroups named before `--`, then execs the rest.
const LAUNCHER: &str = r#"while [ "$1" != -- ]; do echo $$ > "$1"; shift; done
shift
exec "$@""#;

/// PID 1 of the machine until it execs systemd: mounts what the machine
/// needs over the host's (privately), then becomes systemd.
const INIT: &str = r#"set -eu
console=$1 binary=$2 units=$3 generators=$4 machine_id=$5 systemd=$6
shift 6
mount --make-rshared /
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
mount -t tmpfs -o mode=0755 hotmount-test-run /run
if [ "$1" != "cgroup2::/sys/fs/cgroup" ]; then
  mount -t tmpfs -o mode=0755 hotmount-test-cgroup /sys/fs/cgroup
fi
for spec; do
  type=${spec%%:*}; rest=${spec#*:}; options=${rest%%:*}; where=${rest#*:}
  mkdir -p "$where"
  mount -t "$type" ${options:+-o "$options"} "$type" "$where"
done
mount -t tmpfs -o mode=0755 hotmount-test-varlib /var/lib
mkdir -p /var/lib/hotmount/buckets/data/train
printf 'a dataset\n' > /var/lib/hotmount/buckets/data/README.txt
printf 'file,label\n' > /var/lib/hotmount/buckets/data/train/labels.csv
mount -t tmpfs -o mode=0755 hotmount-test-bin /usr/local/bin
cp "$binary" /usr/local/bin/hotmount
printf '%s\n' "$machine_id" > /run/machine-id
mount --bind /run/machine-id /etc/machine-id
mount --bind "$console" /dev/console
exec env -i container=hotmount-test PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  SYSTEMD_UNIT_PATH="$units" SYSTEMD_GENERATOR_PATH="$generators" \
  SYSTEMD_ENVIRONMENT_GENERATOR_PATH="$generators" \
  "$systemd" --unit=hotmount-test.target --log-target=console --log-level=info \
  --log-color=no --show-status=no --default-standard-output=tty --default-standard-error=tty"#;

/// A pod of the machine: a mount namespace of its own whose view of the
/// root is a read-only rslave bind (as kubelet gives a pod).
const POD: &str = r#"set -e
mkdir -p "$2"
mount --rbind "$1" "$2"
mount -o remount,bind,ro "$2"
mount --make-rslave "$2"
echo "ready $$"
exec sleep infinity"#;

/// The units the machine knows besides hotmount.service: the targets its
/// default dependencies name, and the slice services go to.
const MACHINE_UNITS: [&str; 7] = [
    "hotmount-test.target",
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "network-online.target",
    "multi-user.target",
    "system.slice",
];

/// Capability names by number (linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The `[Service]` assignments of a unit file, continuation lines joined.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut settings = Vec::new();
    let mut pending: Option<String> = None;
    for raw in unit.lines() {
        let line = raw.trim();
        if let Some(mut joined) = pending.take() {
            if line.starts_with('#') || line.starts_with(';') {
                pending = Some(joined);
                continue;
            }
            joined.push(' ');
            match line.strip_suffix('\\') {
                Some(part) => {
                    joined.push_str(part.trim());
                    pending = Some(joined);
                }
                None => {
                    joined.push_str(line);
                    settings.push(joined);
                }
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending = Some(part.trim().to_string()),
            None => settings.push(line.to_string()),
        }
    }
    settings
        .into_iter()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The last value the unit assigns to `key`.
fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The bounding set the unit asks for, as the `CapBnd:` mask of
/// /proc/PID/status (every line ORed; an empty one resets).
fn bounding_set(settings: &[(String, String)]) -> u64 {
    let mut mask: Option<u64> = None;
    for (key, value) in settings {
        if key != "CapabilityBoundingSet" {
            continue;
        }
        if value.is_empty() {
            mask = Some(0);
            continue;
        }
        assert!(
            !value.starts_with('~'),
            "CapabilityBoundingSet={value}: this test reads only allow-lists"
        );
        for name in value.split_whitespace() {
            let bit = CAPABILITIES
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("CapabilityBoundingSet names unknown {name}"));
            *mask.get_or_insert(0) |= 1 << bit;
        }
    }
    mask.expect("the unit has no CapabilityBoundingSet= line")
}

fn capability_names(mask: u64) -> Vec<&'static str> {
    (0..CAPABILITIES.len())
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| CAPABILITIES[bit])
        .collect()
}

/// Bytes of a systemd size (`2G`, `1536M`, `1048576`): base 1024.
fn bytes(value: &str) -> u64 {
    let (digits, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let number: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("cannot read the size {value:?}"));
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => panic!("cannot read the size {value:?} (suffix {unit:?})"),
    };
    number * scale
}

/// One field (`Name:\tvalue`) of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {name}"))
        .trim()
        .to_string()
}

/// The parent pid and name of `pid`, from /proc/PID/stat.
fn parent_and_name(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_string();
    let parent = stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((parent, name))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn mount_namespace(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|link| link.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Runs `command`, bounded by `timeout`; its output.
fn run(mut command: Command, timeout: Duration, what: &str) -> Output {
    command.stdin(Stdio::null());
    support::within_timeout(timeout, what, move || command.output())
        .unwrap_or_else(|e| panic!("run {what}: {e}"))
}

/// Text of an output, both streams.
fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A pty whose slave is the machine's /dev/console: what systemd and the
/// services it starts write there is collected here.
struct Console {
    slave_path: PathBuf,
    _slave: File,
    text: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    fn open() -> Console {
        let mut master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/ptmx")
            .unwrap_or_else(|e| panic!("open /dev/ptmx for the machine's console: {e}"));
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one c_int through the pointer, which is
        // valid for the call; the fd is an open pty master.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
        assert_eq!(
            rc,
            0,
            "unlock the console pty: {}",
            std::io::Error::last_os_error()
        );
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int through the pointer,
        // which is valid for the call; the fd is an open pty master.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) };
        assert_eq!(
            rc,
            0,
            "number of the console pty: {}",
            std::io::Error::last_os_error()
        );
        let slave_path = PathBuf::from(format!("/dev/pts/{number}"));
        // Held open so that reads block (rather than fail) until the end.
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&slave_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", slave_path.display()));
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&text);
        // Ends by itself once every holder of the slave is gone (EIO).
        std::thread::spawn(move || {
            let mut buffer = [0u8; 65536];
            while let Ok(n @ 1..) = master.read(&mut buffer) {
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Console {
            slave_path,
            _slave: slave,
            text,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).replace('\r', "")
    }
}

/// A cgroup hierarchy of the host and the cgroup this test made in it for
/// the machine.
struct Hierarchy {
    /// `cgroup` (v1) or `cgroup2`.
    fstype: String,
    /// The controllers field of /proc/self/cgroup (`memory`,
    /// `name=systemd`; empty for cgroup2).
    controllers: String,
    /// Where the host mounts it.
    mount: PathBuf,
    /// The machine's cgroup (its cgroup namespace root).
    dir: PathBuf,
}

impl Hierarchy {
    /// How the machine mounts it again: `TYPE:OPTIONS:MOUNTPOINT`.
    fn mount_spec(&self) -> String {
        let options = match self.controllers.as_str() {
            "" => String::new(),
            name if name.starts_with("name=") => format!("none,{name}"),
            controllers => controllers.to_string(),
        };
        format!("{}:{options}:{}", self.fstype, self.mount.display())
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }
}

/// Every cgroup hierarchy this process is in, each with a fresh child
/// cgroup for the machine (`name`).
fn make_cgroups(name: &str) -> Vec<Hierarchy> {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mounts: Vec<(String, PathBuf, String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let options = right.get(2)?.split(',').map(str::to_string).collect();
            Some((
                left.get(3)?.to_string(),
                PathBuf::from(left.get(4)?),
                right.first()?.to_string(),
                options,
            ))
        })
        .filter(|(_, point, fstype, _)| {
            point.starts_with("/sys/fs/cgroup") && (fstype == "cgroup" || fstype == "cgroup2")
        })
        .collect();
    let mut hierarchies = Vec::new();
    for line in own.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        let fstype = if id == "0" { "cgroup2" } else { "cgroup" };
        let Some((root, mount, _, _)) = mounts.iter().find(|(_, _, t, options)| {
            t == fstype
                && controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .all(|c| options.iter().any(|o| o == c))
        }) else {
            panic!(
                "cgroup hierarchy {line:?} of this process is not mounted under /sys/fs/cgroup: \
                 the machine could not be given its cgroups"
            );
        };
        // cgroup2: a child of the root, where `memory` can be handed down
        // (this process's own cgroup has processes, so it cannot); cgroup v1:
        // a child of this process's own cgroup.
        let parent = if fstype == "cgroup2" {
            mount.clone()
        } else {
            let relative = Path::new(path)
                .strip_prefix(root)
                .unwrap_or_else(|_| panic!("cgroup {path} is outside its mount's root {root}"));
            mount.join(relative)
        };
        remove_stale_cgroups(&parent);
        if fstype == "cgroup2" {
            delegate_memory(&parent);
        }
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("create the machine's cgroup {}: {e}", dir.display()));
        if controllers.split(',').any(|c| c == "cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read(parent.join(file)).unwrap_or_default();
                std::fs::write(dir.join(file), value)
                    .unwrap_or_else(|e| panic!("write {}/{file}: {e}", dir.display()));
            }
        }
        hierarchies.push(Hierarchy {
            fstype: fstype.to_string(),
            controllers: controllers.to_string(),
            mount: mount.clone(),
            dir,
        });
    }
    assert!(
        !hierarchies.is_empty(),
        "/proc/self/cgroup names no hierarchy"
    );
    hierarchies
}

/// Enables the memory controller for the children of cgroup2 `parent`
/// when the kernel offers it there.
fn delegate_memory(parent: &Path) {
    let offered = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |text: &str| text.split_whitespace().any(|c| c == "memory");
    if has(&offered) && !has(&enabled) {
        std::fs::write(parent.join("cgroup.subtree_control"), "+memory").unwrap_or_else(|e| {
            panic!(
                "enable the memory controller in {}/cgroup.subtree_control (MemoryMax= needs it): {e}",
                parent.display()
            )
        });
    }
}

/// Removes what earlier runs of this test left under `parent` (cgroups
/// whose processes are gone); best effort.
fn remove_stale_cgroups(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        {
            let _ = remove_cgroup_tree(&entry.path());
        }
    }
}

/// rmdir of `dir` and every cgroup below it, deepest first.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// systemd as PID 1 of fresh namespaces, with the unit under test loaded.
struct Machine {
    launcher: Child,
    launcher_log: PathBuf,
    /// systemd's pid in the host's PID namespace.
    pid1: u32,
    console: Console,
    cgroups: Vec<Hierarchy>,
    down: bool,
    _dir: tempfile::TempDir,
}

impl Machine {
    /// Boots a machine that runs `binary` as /usr/local/bin/hotmount and
    /// knows `unit` as hotmount.service.
    fn boot(binary: &Path, unit: &str) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("hotmount-systemd-")
            .tempdir()
            .expect("create the machine's directory");
        let units = dir.path().join("units");
        let generators = dir.path().join("generators");
        std::fs::create_dir_all(units.join("hotmount.service.d")).unwrap();
        std::fs::create_dir_all(&generators).unwrap();
        std::fs::write(units.join("hotmount.service"), unit).unwrap();
        std::fs::write(
            units.join("hotmount.service.d/test.conf"),
            format!("[Service]\nEnvironment=HOTMOUNT_ALLOW_FILE_ENDPOINT={BUCKETS}\n"),
        )
        .unwrap();
        for name in MACHINE_UNITS {
            std::fs::write(
                units.join(name),
                format!("[Unit]\nDescription={name} of the test machine\n"),
            )
            .unwrap();
        }
        let machine_id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .expect("read a random uuid")
            .trim()
            .replace('-', "");
        let console = Console::open();
        let cgroups = make_cgroups(&format!("{CGROUP_PREFIX}{}", std::process::id()));
        let launcher_log = dir.path().join("launcher.log");
        let log = File::create(&launcher_log).expect("create the launcher log");
        let mut command = Command::new("sh");
        command
            .args(["-c", LAUNCHER, "launcher"])
            .args(cgroups.iter().map(|h| h.dir.join("cgroup.procs")))
            .args(["--", "unshare", "--pid", "--fork", "--kill-child=SIGKILL"])
            .args(["--mount-proc", "--mount", "--propagation", "private"])
            .args(["--cgroup", "--uts", "--ipc", "--net", "--"])
            .args(["sh", "-c", INIT, "init"])
            .arg(&console.slave_path)
            .arg(binary)
            .arg(&units)
            .arg(&generators)
            .arg(&machine_id)
            .arg(SYSTEMD_BINARY)
            .args(cgroups.iter().map(Hierarchy::mount_spec))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: between fork and exec only prctl(2), which is
        // async-signal-safe: the machine dies with the test.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let launcher = command
            .spawn()
            .unwrap_or_else(|e| panic!("start the machine (sh, unshare): {e}"));
        let mut machine = Machine {
            launcher,
            launcher_log,
            pid1: 0,
            console,
            cgroups,
            down: false,
            _dir: dir,
        };
        machine.pid1 = machine.wait_for_systemd();
        machine
    }

    /// systemd's host pid once it listens on its private socket.
    fn wait_for_systemd(&mut self) -> u32 {
        let systemd = std::fs::canonicalize(SYSTEMD_BINARY).expect("canonicalize systemd");
        let launcher = self.launcher.id();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.launcher.try_wait() {
                panic!(
                    "the machine stopped while booting ({status}):\n{}",
                    self.diagnostics()
                );
            }
            let pid1 = all_pids().into_iter().find(|pid| {
                parent_and_name(*pid).is_some_and(|(parent, _)| parent == launcher)
                    && std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|exe| exe == systemd)
            });
            if let Some(pid1) = pid1
                && Path::new(&format!("/proc/{pid1}/root/run/systemd/private")).exists()
            {
                return pid1;
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not come up as the machine's PID 1 within {BOOT_TIMEOUT:?}:\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A path inside the machine, as the host reaches it.
    fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid1))
    }

    fn socket(&self) -> PathBuf {
        self.path(SOCKET)
    }

    /// `systemctl ARGS` inside the machine.
    fn systemctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new("nsenter");
        command
            .args(["--target", &self.pid1.to_string(), "--mount", "--pid", "--"])
            .args(["systemctl", "--no-pager"])
            .args(args);
        run(command, SYSTEMCTL_TIMEOUT, &format!("systemctl {args:?}"))
    }

    /// `systemctl ARGS`, which must succeed.
    fn systemctl_ok(&self, args: &[&str]) {
        let output = self.systemctl(args);
        assert!(
            output.status.success(),
            "systemctl {args:?} failed ({}): {}\n{}",
            output.status,
            output_text(&output),
            self.diagnostics()
        );
    }

    /// A property of hotmount.service (`systemctl show -p NAME --value`).
    fn property(&self, name: &str) -> String {
        let output = self.systemctl(&["show", "-p", name, "--value", "hotmount.service"]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The host pid of the process that is `ns_pid` in the machine.
    fn host_pid(&self, ns_pid: u32) -> u32 {
        let namespace = std::fs::read_link(format!("/proc/{}/ns/pid", self.pid1))
            .expect("read the machine's pid namespace");
        all_pids()
            .into_iter()
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace)
                    && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix("NSpid:"))
                            .and_then(|pids| pids.split_whitespace().last()?.parse().ok())
                            == Some(ns_pid)
                    })
            })
            .unwrap_or_else(|| panic!("no process is pid {ns_pid} of the machine"))
    }

    /// The agent's supervisor (systemd's MainPID), as a host pid.
    fn main_pid(&self) -> u32 {
        let main: u32 = self.property("MainPID").parse().unwrap_or(0);
        assert!(
            main > 0,
            "hotmount.service has no main process:\n{}",
            self.diagnostics()
        );
        self.host_pid(main)
    }

    /// The hierarchy with `controller` (v1), if the host has one.
    fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.cgroups
            .iter()
            .find(|h| h.fstype == "cgroup" && h.has(controller))
    }

    /// The directory of `pid`'s cgroup in `hierarchy`.
    fn cgroup_of(&self, pid: u32, hierarchy: &Hierarchy) -> PathBuf {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/cgroup: {e}"));
        let path = cgroups
            .lines()
            .find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (id, controllers) = (fields.next()?, fields.next()?);
                let matches = if hierarchy.fstype == "cgroup2" {
                    id == "0"
                } else {
                    controllers == hierarchy.controllers
                };
                matches.then(|| fields.next().map(str::to_string))?
            })
            .unwrap_or_else(|| {
                panic!(
                    "/proc/{pid}/cgroup has no line for {}",
                    hierarchy.mount.display()
                )
            });
        hierarchy.mount.join(path.trim_start_matches('/'))
    }

    /// Every process of hotmount.service (host pids), from its cgroup.
    fn service_processes(&self, supervisor: u32) -> Vec<u32> {
        let tracking = self
            .cgroups
            .iter()
            .find(|h| h.fstype == "cgroup2")
            .or_else(|| self.v1("name=systemd"))
            .expect("neither cgroup2 nor a name=systemd hierarchy");
        let procs = self.cgroup_of(supervisor, tracking).join("cgroup.procs");
        std::fs::read_to_string(&procs)
            .unwrap_or_else(|e| panic!("read {}: {e}", procs.display()))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `systemctl status hotmount.service`, never failing (for messages).
    fn status(&self) -> String {
        let mut command = Command::new("nsenter");
        command
            .args(["--target", &self.pid1.to_string(), "--mount", "--pid", "--"])
            .args([
                "systemctl",
                "--no-pager",
                "status",
                "hotmount.service",
                "-n",
                "0",
            ])
            .stdin(Stdio::null());
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(command.output());
        });
        match result.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(output)) => output_text(&output),
            Ok(Err(e)) => format!("<systemctl status: {e}>"),
            Err(_) => String::from("<systemctl status did not answer within 5s>"),
        }
    }

    /// The console (systemd's messages and the agent's log).
    fn log(&self) -> String {
        self.console.text()
    }

    /// What a failure message shows: the service's status, the console, the
    /// launcher's output.
    fn diagnostics(&self) -> String {
        let status = if self.pid1 != 0 && !self.down {
            self.status()
        } else {
            String::from("<systemd is not running>")
        };
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!(
            "--- systemctl status hotmount.service:\n{status}\n--- console (systemd and the agent), last 80 lines:\n{tail}\n--- launcher:\n{}",
            support::read_log(&self.launcher_log)
        )
    }

    /// Kills every process of the machine and removes its cgroups; says
    /// what was left if anything was.
    fn shutdown(&mut self) -> Result<(), String> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        if self.pid1 != 0 {
            // SIGKILL to a PID namespace's init ends every process in it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid1 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if support::wait_exit(&mut self.launcher, Duration::from_secs(10)).is_none() {
            let _ = self.launcher.kill();
            let _ = self.launcher.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left: Vec<String> = Vec::new();
        for hierarchy in &self.cgroups {
            loop {
                match remove_cgroup_tree(&hierarchy.dir) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        left.push(format!("{}: {e}", hierarchy.dir.display()));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cgroups left behind (processes still in them?): {left:?}"
            ))
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warning: {e}");
        }
    }
}

/// A pod of the machine (see [`POD`]): started in the machine's mount and
/// PID namespaces, read by the host through /proc/PID/root.
struct MachinePod {
    child: Child,
    pid: u32,
}

impl MachinePod {
    fn start(machine: &Machine) -> MachinePod {
        let mut child = Command::new("nsenter")
            .args([
                "--target",
                &machine.pid1.to_string(),
                "--mount",
                "--pid",
                "--",
            ])
            .args(["unshare", "--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", POD, "pod", ROOT, POD_VIEW])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start the pod (nsenter, unshare): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let line = support::within_timeout(Duration::from_secs(10), "the pod's start", move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            line
        });
        let ns_pid: u32 = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| {
                let mut stderr = String::new();
                let _ = child
                    .stderr
                    .take()
                    .map(|mut s| s.read_to_string(&mut stderr));
                panic!(
                    "the pod did not start ({line:?}): {stderr}\n{}",
                    machine.diagnostics()
                )
            });
        MachinePod {
            pid: machine.host_pid(ns_pid),
            child,
        }
    }

    /// Reads `<view>/<rel>` as the pod sees it.
    fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        let path = PathBuf::from(format!("/proc/{}/root{POD_VIEW}/{rel}", self.pid));
        support::within_timeout(Duration::from_secs(30), "a read in the pod", move || {
            std::fs::read(path)
        })
    }

    /// Mounts at exactly `<view>/<rel>` in the pod.
    fn mounts_at(&self, rel: &str) -> usize {
        mounts_at(self.pid, &format!("{POD_VIEW}/{rel}"))
    }
}

impl Drop for MachinePod {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mount lines of `pid`'s namespace at exactly `point` whose type is
/// `fuse.hotmount`.
fn mounts_at(pid: u32, point: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(point) && line.contains(" - fuse.hotmount "))
        .count()
}

/// Waits until /readyz answers 200; fails at once if systemd restarts the
/// agent (it exits under the sandbox).
fn wait_ready(machine: &Machine, restarts_before: u32) {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut checked_unit = Instant::now();
    loop {
        let last = match support::http_with_timeout(
            &machine.socket(),
            "GET",
            "/readyz",
            None,
            Duration::from_secs(2),
        ) {
            Ok((200, _)) => return,
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => e.to_string(),
        };
        if checked_unit.elapsed() > Duration::from_millis(500) {
            checked_unit = Instant::now();
            let restarts: u32 = machine.property("NRestarts").parse().unwrap_or(0);
            let state = machine.property("ActiveState");
            assert!(
                restarts == restarts_before && state != "failed",
                "hotmount.service is {state} and was restarted {} time(s): the agent exits under the unit's sandbox (last /readyz: {last}):\n{}",
                restarts - restarts_before.min(restarts),
                machine.diagnostics()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the agent under systemd was not ready within {READY_TIMEOUT:?} (last /readyz: {last}):\n{}",
            machine.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that every process of the service runs sandboxed as the unit says.
fn assert_sandboxed(machine: &Machine, processes: &[u32], bounding: u64) {
    assert!(
        processes.len() >= 2,
        "hotmount.service should have a supervisor and a worker, has {processes:?}"
    );
    for &pid in processes {
        let name = parent_and_name(pid).map(|(_, n)| n).unwrap_or_default();
        let no_new_privs = status_field(pid, "NoNewPrivs");
        let seccomp = status_field(pid, "Seccomp");
        let capbnd = u64::from_str_radix(&status_field(pid, "CapBnd"), 16).expect("CapBnd is hex");
        let capprm = u64::from_str_radix(&status_field(pid, "CapPrm"), 16).expect("CapPrm is hex");
        assert_eq!(
            no_new_privs,
            "1",
            "{name} ({pid}) runs without no_new_privs (NoNewPrivileges=yes)\n{}",
            machine.diagnostics()
        );
        assert_eq!(
            seccomp,
            "2",
            "{name} ({pid}) runs without a seccomp filter (SystemCallFilter=)\n{}",
            machine.diagnostics()
        );
        assert_eq!(
            capbnd,
            bounding,
            "{name} ({pid}) has the bounding set {:?}, the unit says {:?}",
            capability_names(capbnd),
            capability_names(bounding)
        );
        assert_eq!(
            capprm & !bounding,
            0,
            "{name} ({pid}) holds capabilities outside its bounding set: {:?}",
            capability_names(capprm & !bounding)
        );
    }
}

/// Asserts that the unit's memory limit is on the agent's cgroup.
fn assert_memory_limit(machine: &Machine, supervisor: u32, settings: &[(String, String)]) {
    let max = bytes(setting(settings, "MemoryMax").expect("the unit has no MemoryMax="));
    if let Some(memory) = machine.v1("memory") {
        // cgroup v1: systemd writes MemoryMax= as memory.limit_in_bytes.
        let file = machine
            .cgroup_of(supervisor, memory)
            .join("memory.limit_in_bytes");
        let value = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        assert_eq!(
            value.trim(),
            max.to_string(),
            "{} of the agent's cgroup is not the unit's MemoryMax",
            file.display()
        );
        println!("memory: {} = {}", file.display(), value.trim());
        return;
    }
    let unified = machine
        .cgroups
        .iter()
        .find(|h| h.fstype == "cgroup2")
        .expect("no memory hierarchy at all");
    let dir = machine.cgroup_of(supervisor, unified);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!(
                "read {}/{file} (is the memory controller delegated to the machine?): {e}",
                dir.display()
            )
        })
    };
    assert_eq!(
        read("memory.max").trim(),
        max.to_string(),
        "memory.max of {}",
        dir.display()
    );
    if let Some(high) = setting(settings, "MemoryHigh") {
        assert_eq!(
            read("memory.high").trim(),
            bytes(high).to_string(),
            "memory.high of {}",
            dir.display()
        );
    }
    println!("memory: {}/memory.max = {max}", dir.display());
}

/// Asserts the unit's device policy where the kernel shows it (the cgroup
/// v1 devices controller); on cgroup2 it is a BPF program, and /dev/fuse
/// working is what shows it lets the agent's device through.
fn assert_device_policy(machine: &Machine, supervisor: u32, settings: &[(String, String)]) {
    let Some(policy) = setting(settings, "DevicePolicy") else {
        return;
    };
    let Some(devices) = machine.v1("devices") else {
        println!(
            "devices: DevicePolicy={policy} is a BPF program on cgroup2; checked only by /dev/fuse working"
        );
        return;
    };
    let file = machine.cgroup_of(supervisor, devices).join("devices.list");
    let list =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    assert!(
        !list.lines().any(|l| l.starts_with("a ")),
        "DevicePolicy={policy}, yet {} allows every device:\n{list}",
        file.display()
    );
    assert!(
        list.lines().any(|l| l.trim() == "c 10:229 rw"),
        "{} does not allow /dev/fuse (c 10:229 rw):\n{list}",
        file.display()
    );
    println!(
        "devices: {} has {} rules, /dev/fuse rw",
        file.display(),
        list.lines().count()
    );
}

/// Lines where systemd complains about a line of the unit or the drop-in
/// (an option it ignores or rejects would make the test prove nothing).
fn unit_complaints(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| {
            ["hotmount.service:", "test.conf:"].iter().any(|file| {
                line.split(file)
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
        .map(str::to_string)
        .collect()
}

fn wait_for_log(machine: &Machine, text: &str, occurrences: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while machine.log().matches(text).count() < occurrences {
        assert!(
            Instant::now() < deadline,
            "the agent never logged {text:?}:\n{}",
            machine.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn call(machine: &Machine, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let body = body.map(Value::to_string);
    let (status, text) = support::http(&machine.socket(), method, path, body.as_deref());
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Installs `binary` at the unit's path in the machine as a package
/// upgrade does (a new file renamed over the old); its inode.
fn install(machine: &Machine, binary: &Path) -> u64 {
    let target = machine.path(INSTALLED);
    let new = machine.path(&format!("{INSTALLED}.new"));
    std::fs::copy(binary, &new)
        .unwrap_or_else(|e| panic!("copy the agent to {}: {e}", new.display()));
    std::fs::rename(&new, &target)
        .unwrap_or_else(|e| panic!("rename over {}: {e}", target.display()));
    std::fs::metadata(&target)
        .expect("stat the installed agent")
        .ino()
}

#[test]
fn the_shipped_unit_sandboxes_the_agent_and_it_still_mounts_and_upgrades_under_systemd() {
    let started = Instant::now();
    support::require_root();
    support::require_fuse();
    support::require_tool("unshare", "util-linux");
    support::require_tool("nsenter", "util-linux");
    support::require_tool("systemctl", "systemd");
    assert!(
        Path::new(SYSTEMD_BINARY).is_file(),
        "{SYSTEMD_BINARY} is missing: install package systemd (run {} as root)",
        support::SETUP_SCRIPT
    );
    assert!(
        Path::new("/etc/machine-id").is_file()
            && Path::new(INSTALLED).parent().is_some_and(Path::is_dir),
        "the machine binds over /etc/machine-id and mounts over /usr/local/bin: both must exist on the host"
    );
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hotmount.service");
    let unit = std::fs::read_to_string(&unit_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", unit_path.display()));
    let settings = service_settings(&unit);
    let bounding = bounding_set(&settings);
    let binary = Path::new(env!("CARGO_BIN_EXE_hotmount"));

    let mut machine = Machine::boot(binary, &unit);
    let booted = started.elapsed();
    machine.systemctl_ok(&["start", "hotmount.service"]);
    wait_ready(&machine, 0);
    let ready = started.elapsed();
    let complaints = unit_complaints(&machine.log());
    assert!(
        complaints.is_empty(),
        "systemd ignored or rejected lines of the unit (so the test would not prove them):\n{}",
        complaints.join("\n")
    );
    assert!(
        machine.log().contains("propagation verified with a canary"),
        "the agent is ready but never said it proved propagation:\n{}",
        machine.diagnostics()
    );

    // The sandbox is on every process: supervisor, worker, standby.
    let supervisor = machine.main_pid();
    let processes = machine.service_processes(supervisor);
    assert_sandboxed(&machine, &processes, bounding);
    assert_memory_limit(&machine, supervisor, &settings);
    assert_device_policy(&machine, supervisor, &settings);

    // The network stays usable (RestrictAddressFamilies=, no AF_NETLINK):
    // an S3 endpoint given by name is resolved and connected to; nothing
    // listens there, so the answer is "refused", not "address family not
    // supported".
    let unreachable = json!({"source": {"s3": {"bucket": "nothing", "endpoint": "http://localhost:9",
        "region": "test", "credentials": "anonymous"}}});
    let (status, body) = call(
        &machine,
        "PUT",
        "/v1/mounts/unreachable",
        Some(&unreachable),
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        status == 502 && message.contains("Connection refused"),
        "an S3 endpoint on localhost with nothing listening should be refused (502), got {status}: {body}"
    );

    // A dataset reaches the host's mount namespace (systemd's) and a pod
    // that was running before it was attached.
    let pod = MachinePod::start(&machine);
    let spec =
        json!({"source": {"s3": {"bucket": "data", "endpoint": format!("file://{BUCKETS}")}}});
    let (status, body) = call(&machine, "PUT", "/v1/mounts/ds", Some(&spec));
    assert_eq!(
        status,
        201,
        "PUT of a file:// dataset under the sandbox: {body}\n{}",
        machine.diagnostics()
    );
    let dataset = format!("{ROOT}/ds");
    assert_eq!(
        mounts_at(machine.pid1, &dataset),
        1,
        "PUT answered 201, yet {dataset} is no fuse.hotmount mount in the host's mount namespace \
         (systemd's, {}); the agent runs in {}: an option of the unit gives the service a mount \
         namespace of its own, and its datasets reach nobody\n{}",
        mount_namespace(machine.pid1),
        mount_namespace(supervisor),
        machine.diagnostics()
    );
    assert_eq!(
        pod.read("ds/README.txt").unwrap_or_else(|e| panic!(
            "a pod of the host cannot read the dataset: {e}\n{}",
            machine.diagnostics()
        )),
        b"a dataset\n"
    );
    assert_eq!(pod.read("ds/train/labels.csv").unwrap(), b"file,label\n");
    assert_eq!(
        mount_namespace(supervisor),
        mount_namespace(machine.pid1),
        "the agent runs in a mount namespace of its own"
    );

    // `systemctl reload`: SIGHUP, the supervisor execs the binary now at its
    // path (same pid), the FUSE connection crosses over.
    let worker_before = support::worker_of(supervisor, None);
    let new_inode = install(&machine, binary);
    let old_inode = std::fs::metadata(format!("/proc/{supervisor}/exe"))
        .unwrap()
        .ino();
    assert_ne!(old_inode, new_inode, "the reinstalled binary is a new file");
    machine.systemctl_ok(&["reload", "hotmount.service"]);
    wait_for_log(
        &machine,
        "took the node over from the binary before this one",
        1,
    );
    wait_ready(&machine, 0);
    assert_eq!(
        machine.main_pid(),
        supervisor,
        "same pid: systemd's main process"
    );
    assert_eq!(
        std::fs::metadata(format!("/proc/{supervisor}/exe"))
            .unwrap()
            .ino(),
        new_inode,
        "the supervisor runs the binary installed before the reload"
    );
    let worker_after = support::worker_of(supervisor, Some(worker_before));
    assert_eq!(machine.property("ActiveState"), "active");
    assert_eq!(
        machine.property("NRestarts"),
        "0",
        "the reload restarted nothing"
    );
    let processes = machine.service_processes(supervisor);
    assert!(
        processes.contains(&worker_after),
        "the new worker is in the service's cgroup"
    );
    assert_sandboxed(&machine, &processes, bounding);
    assert_eq!(
        pod.read("ds/README.txt").unwrap_or_else(|e| panic!(
            "after the reload the pod cannot read the dataset: {e}\n{}",
            machine.diagnostics()
        )),
        b"a dataset\n"
    );
    assert_eq!(pod.mounts_at("ds"), 1, "still one mount in the pod");

    let (status, body) = call(&machine, "DELETE", "/v1/mounts/ds", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(mounts_at(machine.pid1, &dataset), 0, "detached on the host");
    assert_eq!(pod.mounts_at("ds"), 0, "detached in the pod");

    drop(pod);
    machine
        .shutdown()
        .unwrap_or_else(|e| panic!("stopping the machine: {e}"));
    println!(
        "figure: systemd up {booted:?}, agent ready {ready:?}, whole check {:?}",
        started.elapsed()
    );
}
