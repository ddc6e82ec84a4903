//! The control channel between a supervisor and its worker, and between an
//! old and a new supervisor at an upgrade: a `SOCK_SEQPACKET` unix socket,
//! one JSON [`Message`] per packet, with file descriptors passed alongside
//! (`SCM_RIGHTS`). Packets keep their boundaries and their order, and a
//! message queued by a process that dies right after is still delivered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

use crate::spec::MountSpec;

/// The largest message (the JSON text); a dataset spec is far smaller.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The most fds one message carries.
const MAX_FDS: usize = 8;
/// The longest a send waits for the peer to make room.
pub const SEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a listening socket the supervisor holds is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerKind {
    /// The API's unix socket.
    Unix,
    /// The API on TCP (tokens required).
    Api,
    /// `/metrics` alone on TCP.
    Metrics,
}

/// What was negotiated at a connection's `FUSE_INIT`, as it crosses
/// processes (mirrors `fuser::Negotiated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NegotiatedRecord {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// Capability flags in force.
    pub flags: u64,
    /// Largest WRITE.
    pub max_write: u32,
    /// Readahead.
    pub max_readahead: u32,
    /// Pages per request.
    pub max_pages: u16,
    /// Background requests.
    pub max_background: u16,
}

impl From<fuser::Negotiated> for NegotiatedRecord {
    fn from(n: fuser::Negotiated) -> Self {
        NegotiatedRecord {
            major: n.major,
            minor: n.minor,
            flags: n.flags,
            max_write: n.max_write,
            max_readahead: n.max_readahead,
            max_pages: n.max_pages,
            max_background: n.max_background,
        }
    }
}

impl From<NegotiatedRecord> for fuser::Negotiated {
    fn from(n: NegotiatedRecord) -> Self {
        fuser::Negotiated {
            major: n.major,
            minor: n.minor,
            flags: n.flags,
            max_write: n.max_write,
            max_readahead: n.max_readahead,
            max_pages: n.max_pages,
            max_background: n.max_background,
        }
    }
}

/// A FUSE connection the supervisor holds for a worker: which dataset it
/// serves and how. Travels with three fds: the `/dev/fuse` connection, the
/// inode journal and the handle journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldConnection {
    /// Which opening of the connection this is (the kernel reuses a
    /// connection number once its connection ended).
    pub id: u64,
    /// The dataset.
    pub name: String,
    /// The connection number (`/sys/fs/fuse/connections/N`).
    pub connection: u32,
    /// What INIT negotiated.
    pub negotiated: NegotiatedRecord,
    /// The dataset's spec when it was mounted (enough to serve it again
    /// even if it has since been detached while files stay open).
    pub spec: MountSpec,
}

/// What the supervisor tells a worker it starts about the workers before it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartReport {
    /// Workers replaced so far, by reason.
    pub restarts: std::collections::BTreeMap<String, u64>,
    /// Upgrades this line of supervisors took over.
    pub takeovers: u64,
    /// Set while the supervisor backs off a worker that keeps dying.
    pub crash_loop: Option<String>,
    /// When (CLOCK_MONOTONIC, ns) the worker before this one stopped
    /// serving, if this one replaces it: the stall ends when this one serves.
    pub stalled_since_ns: Option<u64>,
    /// The longest stall so far (seconds).
    pub longest_stall_seconds: f64,
}

/// One message on a control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Message {
    /// A listening socket (one fd). Handover, from the supervisor.
    Listener(ListenerKind),
    /// A FUSE connection (three fds). Handover, from the supervisor.
    Connection(HeldConnection),
    /// The memfd the workers keep their counters in (one fd). Handover.
    Counters,
    /// The end of a handover.
    Start(StartReport),
    /// Worker: a new FUSE connection to hold (three fds).
    FuseOpened(HeldConnection),
    /// Worker: a connection ended (its mount is gone); drop it.
    FuseEnded {
        /// The connection number.
        connection: u32,
        /// Its [`HeldConnection::id`].
        id: u64,
    },
    /// Worker: every held connection is served again, `stall_seconds` after
    /// the worker before stopped.
    Resumed {
        /// How long requests waited.
        stall_seconds: f64,
    },
    /// Worker: alive and making progress.
    Heartbeat,
    /// Supervisor: stop serving the API and probes, let open writers finish
    /// (up to `write_wait_ms`), then answer [`Message::Quiesced`].
    Quiesce {
        /// The longest wait for files open for writing.
        write_wait_ms: u64,
    },
    /// Worker: quiesced; the supervisor may stop it.
    Quiesced {
        /// Files still open for writing when the wait ended (they fail
        /// with EIO in the next worker).
        writers_left: usize,
    },
    /// New supervisor to old: hand the node over.
    TakeoverRequest {
        /// The table format the new build reads.
        format: u32,
        /// The new build's version.
        version: String,
    },
    /// New supervisor: everything arrived and its listeners are in place;
    /// the old one may let go (until then it can still serve on).
    TakenOver,
    /// Old supervisor: no (the reason says why); it keeps serving.
    TakeoverRefused {
        /// Why.
        reason: String,
    },
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (supervisor end, worker end), close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// The channel on an fd this process inherited.
    ///
    /// # Safety
    /// `fd` must be an open seqpacket socket that nothing else owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        // SAFETY: the caller guarantees the fd is open and owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Channel { fd }
    }

    /// Connects to a supervisor's takeover socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Channel> {
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Channel { fd })
    }

    /// Listens on `path` (a stale socket there is replaced), mode 0600.
    pub fn listen(path: &Path) -> io::Result<OwnedFd> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        nix::sys::socket::listen(&fd, Backlog::new(4).map_err(io::Error::from)?)?;
        Ok(fd)
    }

    /// Accepts one connection on a socket from [`Channel::listen`]
    /// (`WouldBlock` when none waits).
    pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Channel> {
        let fd = nix::sys::socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Channel { fd })
    }

    /// The socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends `message` with `fds`, waiting for room at most
    /// [`SEND_DEADLINE`] (a peer alive but not reading never freezes the
    /// sender: it fails with `TimedOut`).
    pub fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let deadline = std::time::Instant::now() + SEND_DEADLINE;
        let text = serde_json::to_vec(message).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let control: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [io::IoSlice::new(&text)];
        loop {
            match nix::sys::socket::sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                control,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer takes no message",
                        ));
                    }
                    wait_ready(self.fd.as_fd(), nix::poll::PollFlags::POLLOUT, Some(left))?
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Receives one message, waiting for it; `None` when the peer is gone.
    pub fn recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        loop {
            match self.try_recv() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    wait_ready(self.fd.as_fd(), nix::poll::PollFlags::POLLIN, None)?
                }
                other => return other,
            }
        }
    }

    /// Receives one message if one waits (`WouldBlock` otherwise); `None`
    /// when the peer is gone.
    pub fn try_recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut text = vec![0u8; MAX_MESSAGE_BYTES];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds, truncated) = loop {
            let mut iov = [io::IoSliceMut::new(&mut text)];
            match nix::sys::socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for cmsg in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            // SAFETY: the kernel just installed these fds for us.
                            fds.extend(
                                received
                                    .into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    break (msg.bytes, fds, truncated);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
            }
        };
        if len == 0 {
            return Ok(None);
        }
        if truncated {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control message too large",
            ));
        }
        let message = serde_json::from_slice(&text[..len]).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("control message: {e}"))
        })?;
        Ok(Some((message, fds)))
    }

    /// Receives one message without blocking a runtime thread.
    pub async fn recv_async(
        &self,
        ready: &tokio::io::unix::AsyncFd<OwnedFd>,
    ) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        loop {
            let mut guard = ready.readable().await?;
            match self.try_recv() {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// A duplicate of the socket to wait on with tokio (see
    /// [`Channel::recv_async`]).
    pub fn readiness(&self) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
        watch_readable(self.fd.try_clone()?)
    }
}

/// `fd` registered with tokio for readability (a socket to accept on, or a
/// duplicate of a channel).
pub fn watch_readable(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open, and its as_raw_fd() is the same fd for as
    // long as the AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Waits until `fd` has `events` (or `limit` passed, or a signal came).
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    limit: Option<std::time::Duration>,
) -> io::Result<()> {
    let mut poll = [nix::poll::PollFd::new(fd, events)];
    let timeout = match limit {
        None => nix::poll::PollTimeout::NONE,
        Some(limit) => nix::poll::PollTimeout::try_from(limit.as_millis().min(60_000) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX),
    };
    match nix::poll::poll(&mut poll, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_in_order_and_eof_is_seen() {
        let (a, b) = Channel::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &file, b"held").unwrap();
        a.send(&Message::Heartbeat, &[]).unwrap();
        a.send(
            &Message::FuseEnded {
                connection: 7,
                id: 1,
            },
            &[file.as_fd(), file.as_fd()],
        )
        .unwrap();
        drop(a);
        let (first, fds) = b.recv().unwrap().unwrap();
        assert_eq!(first, Message::Heartbeat);
        assert!(fds.is_empty());
        let (second, fds) = b.recv().unwrap().unwrap();
        assert_eq!(
            second,
            Message::FuseEnded {
                connection: 7,
                id: 1
            }
        );
        assert_eq!(fds.len(), 2);
        let mut text = String::new();
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        std::io::Seek::rewind(&mut received).unwrap();
        std::io::Read::read_to_string(&mut received, &mut text).unwrap();
        assert_eq!(text, "held");
        assert!(b.recv().unwrap().is_none(), "the peer is gone");
    }
}
