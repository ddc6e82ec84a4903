//! Upgrades: a new supervisor started while an old one runs with the same
//! state directory asks the old one, over `<state-dir>/takeover.sock`, for
//! the node. The old one answers only a build that reads its table format
//! ([`crate::s3fs::fs::SNAPSHOT_FORMAT`]); otherwise it refuses, says why,
//! and keeps serving, and the new one exits with that reason.
//!
//! One supervisor per state directory: each holds an exclusive `flock` on
//! `<state-dir>/supervisor.lock` ([`SupervisorLock`]) for as long as it
//! serves (across an in-place upgrade too). A new one that cannot take it
//! asks the holder for the node, confirms once everything arrived
//! ([`Message::TakenOver`]; until then the old one can serve on), and takes
//! the lock when the old one lets go.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::supervisor::channel::{Channel, Message, StartReport};
use crate::supervisor::handover::Handover;
use crate::supervisor::{SupervisorError, io_error};

/// How long the old supervisor waits for a connected peer's request.
const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How long a new supervisor tries to reach the one that holds the lock
/// (it may be starting, or upgrading in place), and then waits for it to
/// let go of the lock.
const HOLDER_WAIT: Duration = Duration::from_secs(20);
/// How long the old supervisor waits for the new one to confirm.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// The exclusive lock of a state directory's supervisor (released when
/// dropped).
#[derive(Debug)]
pub struct SupervisorLock {
    file: nix::fcntl::Flock<std::fs::File>,
}

impl SupervisorLock {
    fn path(config: &Config) -> PathBuf {
        config.state_dir.join("supervisor.lock")
    }

    /// The lock, if no other supervisor holds it.
    pub fn try_acquire(config: &Config) -> std::io::Result<Option<SupervisorLock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::path(config))?;
        Self::lock(file)
    }

    fn lock(file: std::fs::File) -> std::io::Result<Option<SupervisorLock>> {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(file) => Ok(Some(SupervisorLock { file })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, err)) => Err(err.into()),
        }
    }

    /// Waits (bounded) for the previous holder to let go.
    pub fn wait(config: &Config) -> Result<SupervisorLock, SupervisorError> {
        let deadline = Instant::now() + HOLDER_WAIT;
        loop {
            if let Some(lock) =
                Self::try_acquire(config).map_err(io_error("take the supervisor lock"))?
            {
                return Ok(lock);
            }
            if Instant::now() >= deadline {
                return Err(SupervisorError::Io {
                    what: "take the supervisor lock (the previous agent kept it)",
                    error: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The lock a binary before this one (same pid) held, carried across
    /// the `exec` (its open file still holds it; locking again keeps it).
    pub fn inherited(fd: OwnedFd) -> std::io::Result<Option<SupervisorLock>> {
        Self::lock(std::fs::File::from(fd))
    }

    /// Its fd (to carry it across an in-place upgrade).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Connects to the takeover socket, retrying while the holder of the lock
/// is not listening yet (starting, or in the middle of an in-place upgrade).
fn connect_to_holder(path: &Path) -> Result<Channel, SupervisorError> {
    let deadline = Instant::now() + HOLDER_WAIT;
    loop {
        match Channel::connect(path) {
            Ok(channel) => return Ok(channel),
            Err(err)
                if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => {
                return Err(SupervisorError::Io {
                    what: "reach the running agent (it holds the supervisor lock) at its takeover socket",
                    error,
                });
            }
        }
    }
}

/// The new supervisor's side, when another holds the lock: the node from
/// it, and the channel to confirm on ([`confirm`]).
pub fn request(config: &Config) -> Result<(Handover, StartReport, Channel), SupervisorError> {
    let path = &config.supervision.takeover_socket;
    let channel = connect_to_holder(path)?;
    tracing::info!(socket = %path.display(), "an agent runs with this state directory: asking it for the node");
    channel
        .send(
            &Message::TakeoverRequest {
                format: config.supervision.handover_format,
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            &[],
        )
        .map_err(io_error("ask the running agent for the node"))?;
    match Handover::receive(&channel) {
        Ok((held, report)) => Ok((held, report, channel)),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(SupervisorError::Refused(err.to_string()))
        }
        Err(error) => Err(SupervisorError::Io {
            what: "take the node over",
            error,
        }),
    }
}

/// Tells the old supervisor everything arrived and this one is ready to
/// serve: it lets go (of the fds and the lock).
pub fn confirm(channel: &Channel) -> Result<(), SupervisorError> {
    channel
        .send(&Message::TakenOver, &[])
        .map_err(io_error("confirm the takeover"))
}

/// The old supervisor's side: whether `peer` asks for the node with a
/// format this build can hand over (if not, it is told why).
pub async fn answer(config: &Config, peer: &Channel) -> bool {
    let Ok(ready) = peer.readiness() else {
        return false;
    };
    let request = tokio::time::timeout(REQUEST_WAIT, peer.recv_async(&ready)).await;
    let Ok(Ok(Some((Message::TakeoverRequest { format, version }, _)))) = request else {
        tracing::warn!("a takeover connection sent no request; ignored");
        return false;
    };
    let ours = config.supervision.handover_format;
    if format != ours {
        let reason = format!(
            "this agent (version {}) keeps its tables in format {ours}, and the new build (version {version}) reads format {format}; the running agent keeps serving. Stop it first (its datasets are then mounted again by the new one)",
            env!("CARGO_PKG_VERSION")
        );
        tracing::warn!(%reason, "takeover refused");
        let _ = peer.send(&Message::TakeoverRefused { reason }, &[]);
        return false;
    }
    tracing::info!(version, "a new agent takes the node over");
    true
}
