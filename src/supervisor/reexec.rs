//! Upgrades in place, for systemd (`systemctl reload hotmount`, which sends
//! SIGHUP): the supervisor asks the binary now installed at its own path
//! which table format it reads, refuses (and serves on) if it is not its
//! own, else quiesces and stops its worker and `exec`s that binary with the
//! same pid and arguments. The listening sockets and the FUSE connections
//! cross the `exec` as inherited fds, described in a memfd whose number is
//! in [`STATE_ENV`] (a variable would cap the datasets at a few hundred); the new
//! binary's supervisor picks them up ([`inherited`]) and starts its worker,
//! which serves every connection again as after a crash.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::supervisor::channel::{HeldConnection, ListenerKind, StartReport};
use crate::supervisor::handover::{Handover, HeldFds};
use crate::supervisor::takeover::SupervisorLock;

/// The variable that names the memfd describing the inherited fds.
pub const STATE_ENV: &str = "HOTMOUNT_REEXEC_STATE";
/// How long the new binary may take to say its format.
const FORMAT_QUERY_WAIT: Duration = Duration::from_secs(10);

/// What crosses the `exec`: fd numbers and what they are.
#[derive(Debug, Serialize, Deserialize)]
struct Inherited {
    listeners: Vec<(ListenerKind, RawFd)>,
    connections: Vec<(HeldConnection, [RawFd; 3])>,
    counters: Option<RawFd>,
    lock: Option<RawFd>,
    report: StartReport,
}

/// The path this process was started from (what a package upgrade
/// replaces), if it can be known.
pub fn own_binary() -> Option<PathBuf> {
    let first = std::env::args_os().next().map(PathBuf::from);
    match first {
        Some(path) if path.is_absolute() => Some(path),
        _ => std::env::current_exe().ok(),
    }
}

/// Whether `binary` reads table format `ours` (it is asked: `hotmount
/// handover-format`).
pub async fn check_format(binary: &Path, ours: u32) -> Result<(), String> {
    let query = tokio::process::Command::new(binary)
        .arg("handover-format")
        .env_remove(STATE_ENV)
        .env_remove(crate::worker::CHANNEL_ENV)
        .output();
    let output = tokio::time::timeout(FORMAT_QUERY_WAIT, query)
        .await
        .map_err(|_| {
            format!(
                "{} did not say its format within {FORMAT_QUERY_WAIT:?}",
                binary.display()
            )
        })?
        .map_err(|e| format!("run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let theirs: u32 = text.trim().parse().map_err(|_| {
        format!(
            "{} handover-format answered {:?} (exit {}); is it hotmount?",
            binary.display(),
            text.trim(),
            output.status
        )
    })?;
    if theirs != ours {
        return Err(format!(
            "this agent keeps its tables in format {ours}, and {} reads format {theirs}",
            binary.display()
        ));
    }
    Ok(())
}

/// Becomes `binary` (same pid, same arguments) handing it `held`; returns
/// only if that fails.
pub fn exec(
    binary: &Path,
    held: &Handover,
    report: &StartReport,
    lock: &SupervisorLock,
) -> std::io::Error {
    let inherited = Inherited {
        listeners: held
            .listeners
            .iter()
            .map(|(kind, fd)| (*kind, fd.as_raw_fd()))
            .collect(),
        connections: held
            .connections
            .values()
            .map(|held| {
                (
                    held.held.clone(),
                    [
                        held.device.as_raw_fd(),
                        held.inodes.as_raw_fd(),
                        held.handles.as_raw_fd(),
                    ],
                )
            })
            .collect(),
        counters: held.counters.as_ref().map(AsRawFd::as_raw_fd),
        lock: Some(lock.fd().as_raw_fd()),
        report: report.clone(),
    };
    let fds = held
        .listeners
        .iter()
        .map(|(_, fd)| fd.as_fd())
        .chain(held.connections.values().flat_map(|held| {
            [
                held.device.as_fd(),
                held.inodes.as_fd(),
                held.handles.as_fd(),
            ]
        }))
        .chain(held.counters.as_ref().map(AsFd::as_fd))
        .chain(std::iter::once(lock.fd()));
    let fds: Vec<_> = fds.collect();
    let described = match describe(&inherited) {
        Ok(described) => described,
        Err(err) => return err,
    };
    let inheritable = fds
        .iter()
        .copied()
        .chain(std::iter::once(described.as_fd()))
        .try_for_each(|fd| set_cloexec(fd, false));
    if let Err(err) = inheritable {
        return undo(&fds, err);
    }
    tracing::info!(binary = %binary.display(), "upgrading in place: exec of the new binary");
    let failed = std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env(STATE_ENV, described.as_raw_fd().to_string())
        .exec();
    // Still here: nothing may leak into the workers started next.
    undo(&fds, failed)
}

/// The description of what crosses the `exec`, in a memfd.
fn describe(inherited: &Inherited) -> std::io::Result<OwnedFd> {
    let text = serde_json::to_vec(inherited).map_err(std::io::Error::other)?;
    let fd =
        nix::sys::memfd::memfd_create("hotmount-reexec", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    std::io::Write::write_all(&mut std::fs::File::from(fd.try_clone()?), &text)?;
    Ok(fd)
}

/// Closes `fds` to exec again (a failed upgrade), then gives `err` back.
fn undo(fds: &[std::os::fd::BorrowedFd<'_>], err: std::io::Error) -> std::io::Error {
    for fd in fds {
        let _ = set_cloexec(*fd, true);
    }
    err
}

/// What the binary before this one (same pid) handed over, if this process
/// was started by its `exec`.
pub fn inherited() -> std::io::Result<Option<(Handover, StartReport, Option<SupervisorLock>)>> {
    let Some(described) = std::env::var(STATE_ENV)
        .ok()
        .and_then(|fd| fd.parse::<RawFd>().ok())
    else {
        return Ok(None);
    };
    // SAFETY: the binary before this one left this fd open for us alone.
    let described = unsafe { OwnedFd::from_raw_fd(described) };
    let described = std::fs::File::from(described);
    let mut text = vec![0u8; described.metadata()?.len() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&described, &mut text, 0)?;
    let inherited: Inherited = serde_json::from_slice(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let take = |fd: RawFd| -> std::io::Result<OwnedFd> {
        // SAFETY: the binary before this one left these fds open for us
        // alone, and each number is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(owned.as_fd(), true)?;
        Ok(owned)
    };
    let mut handover = Handover::default();
    for (kind, fd) in inherited.listeners {
        handover.listeners.push((kind, take(fd)?));
    }
    for (held, [device, inodes, handles]) in inherited.connections {
        let held = HeldFds {
            held,
            device: take(device)?,
            inodes: take(inodes)?,
            handles: take(handles)?,
        };
        handover.connections.insert(held.held.connection, held);
    }
    if let Some(fd) = inherited.counters {
        handover.counters = Some(take(fd)?);
    }
    let lock = match inherited.lock {
        Some(fd) => SupervisorLock::inherited(take(fd)?)?,
        None => None,
    };
    tracing::info!(
        connections = handover.connections.len(),
        "took the node over from the binary before this one (same pid)"
    );
    Ok(Some((handover, inherited.report, lock)))
}

fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    let flags = if on {
        nix::fcntl::FdFlag::FD_CLOEXEC
    } else {
        nix::fcntl::FdFlag::empty()
    };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
    Ok(())
}
