//! What the supervisor holds for its worker, and hands to each new worker
//! (after a crash) or to a new supervisor (at an upgrade): the listening
//! sockets and every FUSE connection with its table journals. Sent as a
//! sequence of messages on a [`Channel`], one per socket or connection,
//! ended by [`Message::Start`].

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::config::Config;
use crate::manager::Resumable;
use crate::s3fs::fs::FsJournals;
use crate::supervisor::channel::{Channel, HeldConnection, ListenerKind, Message, StartReport};
use crate::{Listeners, RunError};

/// A held FUSE connection and its fds: the connection, the inode journal,
/// the handle journal.
#[derive(Debug)]
pub struct HeldFds {
    /// What it is.
    pub held: HeldConnection,
    /// `/dev/fuse`.
    pub device: OwnedFd,
    /// The inode journal.
    pub inodes: OwnedFd,
    /// The handle journal.
    pub handles: OwnedFd,
}

impl HeldFds {
    /// Takes the three fds of a connection message.
    pub fn from_message(held: HeldConnection, fds: Vec<OwnedFd>) -> io::Result<HeldFds> {
        let [device, inodes, handles]: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<_>| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a held connection comes with 3 fds, not {}", fds.len()),
            )
        })?;
        Ok(HeldFds {
            held,
            device,
            inodes,
            handles,
        })
    }

    fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.device.as_fd(),
            self.inodes.as_fd(),
            self.handles.as_fd(),
        ]
    }
}

/// Everything that outlives a worker.
#[derive(Debug, Default)]
pub struct Handover {
    /// The listening sockets.
    pub listeners: Vec<(ListenerKind, OwnedFd)>,
    /// The FUSE connections, by connection number.
    pub connections: BTreeMap<u32, HeldFds>,
    /// The memfd each worker keeps its counters in, for the next one
    /// ([`crate::metrics::CounterSnapshot`]).
    pub counters: Option<OwnedFd>,
}

impl Handover {
    /// Binds the listeners `config` asks for (nothing held yet).
    pub fn bind(config: &Config) -> Result<Handover, RunError> {
        let mut handover = Handover::default();
        handover.bind_missing(config)?;
        Ok(handover)
    }

    /// Makes the counters memfd if none was handed over (a first start, or
    /// an older supervisor that had none).
    pub fn ensure_counters(&mut self) -> io::Result<()> {
        if self.counters.is_none() {
            let fd = nix::sys::memfd::memfd_create(
                "hotmount-counters",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )?;
            self.counters = Some(fd);
        }
        Ok(())
    }

    /// Makes the held listeners those `config` asks for: binds the missing
    /// ones, lets go of those it does not want or wants elsewhere (a new
    /// build may be configured differently from the one it took over from).
    pub fn bind_missing(&mut self, config: &Config) -> Result<(), RunError> {
        let wanted = |kind: ListenerKind| match kind {
            ListenerKind::Unix => Some(None),
            ListenerKind::Api => config.listen.as_ref().map(|(addr, _)| Some(*addr)),
            ListenerKind::Metrics => config.metrics_listen.map(Some),
        };
        self.listeners.retain(|(kind, fd)| match wanted(*kind) {
            None => false,
            Some(None) => true,
            Some(Some(addr)) => fd
                .try_clone()
                .map(std::net::TcpListener::from)
                .and_then(|listener| listener.local_addr())
                .is_ok_and(|bound| bound == addr),
        });
        for kind in [ListenerKind::Unix, ListenerKind::Api, ListenerKind::Metrics] {
            if self.listeners.iter().any(|(held, _)| *held == kind) {
                continue;
            }
            let fd: OwnedFd = match wanted(kind) {
                None => continue,
                Some(None) => crate::bind_socket(config)?.into(),
                Some(Some(addr)) => crate::bind_tcp(addr)?.into(),
            };
            self.listeners.push((kind, fd));
        }
        Ok(())
    }

    /// Sends everything on `channel`, then `report`.
    pub fn send(&self, channel: &Channel, report: &StartReport) -> io::Result<()> {
        for (kind, fd) in &self.listeners {
            channel.send(&Message::Listener(*kind), &[fd.as_fd()])?;
        }
        for held in self.connections.values() {
            channel.send(&Message::Connection(held.held.clone()), &held.fds())?;
        }
        if let Some(counters) = &self.counters {
            channel.send(&Message::Counters, &[counters.as_fd()])?;
        }
        channel.send(&Message::Start(report.clone()), &[])
    }

    /// Receives what [`Handover::send`] sent. A takeover refusal arrives as
    /// an error of kind `PermissionDenied` carrying the reason.
    pub fn receive(channel: &Channel) -> io::Result<(Handover, StartReport)> {
        let mut handover = Handover::default();
        loop {
            let Some((message, mut fds)) = channel.recv()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer went away during the handover",
                ));
            };
            match message {
                Message::Listener(kind) => {
                    let fd = fds.pop().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "a listener without its fd")
                    })?;
                    handover.listeners.push((kind, fd));
                }
                Message::Connection(held) => handover.hold(held, fds)?,
                Message::Counters => handover.counters = fds.pop(),
                Message::Start(report) => return Ok((handover, report)),
                Message::TakeoverRefused { reason } => {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected message during a handover: {other:?}"),
                    ));
                }
            }
        }
    }

    /// Holds a connection a worker opened.
    pub fn hold(&mut self, held: HeldConnection, fds: Vec<OwnedFd>) -> io::Result<()> {
        let held = HeldFds::from_message(held, fds)?;
        self.connections.insert(held.held.connection, held);
        Ok(())
    }

    /// Lets go of a connection that ended (if its number was not reused
    /// meanwhile by a connection opened since).
    pub fn release(&mut self, connection: u32, id: u64) {
        if self
            .connections
            .get(&connection)
            .is_some_and(|held| held.held.id == id)
        {
            self.connections.remove(&connection);
        }
    }

    /// The worker's side: the listeners to serve, the connections to
    /// resume, and the counters memfd.
    pub fn into_worker_parts(
        self,
    ) -> Result<(Listeners, Vec<Resumable>, Option<OwnedFd>), RunError> {
        let missing = || RunError::Listen {
            what: "the supervisor's unix socket".to_string(),
            error: io::Error::new(io::ErrorKind::NotFound, "not handed over"),
        };
        let mut unix = None;
        let (mut api, mut metrics) = (None, None);
        for (kind, fd) in self.listeners {
            match kind {
                ListenerKind::Unix => unix = Some(std::os::unix::net::UnixListener::from(fd)),
                ListenerKind::Api => api = Some(std::net::TcpListener::from(fd)),
                ListenerKind::Metrics => metrics = Some(std::net::TcpListener::from(fd)),
            }
        }
        let listeners = Listeners {
            unix: unix.ok_or_else(missing)?,
            api,
            metrics,
        };
        let resumables = self
            .connections
            .into_values()
            .map(|held| Resumable {
                held: held.held,
                device: held.device,
                journals: FsJournals {
                    inodes: held.inodes,
                    handles: held.handles,
                },
            })
            .collect();
        Ok((listeners, resumables, self.counters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::channel::NegotiatedRecord;

    fn held(connection: u32, id: u64) -> (HeldConnection, Vec<OwnedFd>) {
        let spec: crate::spec::MountSpec = serde_json::from_value(serde_json::json!(
            {"source": {"s3": {"bucket": "b", "endpoint": "file:///srv"}}}
        ))
        .unwrap();
        let fds = (0..3)
            .map(|_| OwnedFd::from(tempfile::tempfile().unwrap()))
            .collect();
        let record = HeldConnection {
            id,
            name: "data".to_string(),
            connection,
            negotiated: NegotiatedRecord {
                major: 7,
                minor: 45,
                flags: 0,
                max_write: 1 << 20,
                max_readahead: 1 << 20,
                max_pages: 256,
                max_background: 64,
            },
            spec,
        };
        (record, fds)
    }

    #[test]
    fn the_end_of_a_connection_never_releases_a_newer_one_with_its_number() {
        let mut handover = Handover::default();
        let (old, fds) = held(41, 1);
        handover.hold(old, fds).unwrap();
        // The kernel reused number 41 for a new mount before the old
        // connection's end was reported.
        let (new, fds) = held(41, 2);
        handover.hold(new, fds).unwrap();
        handover.release(41, 1);
        assert_eq!(handover.connections[&41].held.id, 2, "the new one is kept");
        handover.release(41, 2);
        assert!(handover.connections.is_empty());
    }

    #[test]
    fn a_held_connection_needs_its_three_fds() {
        let mut handover = Handover::default();
        let (record, mut fds) = held(7, 1);
        fds.pop();
        assert!(handover.hold(record, fds).is_err());
        assert!(handover.connections.is_empty());
    }
}
