//! hotmount patch: a FUSE connection served by the caller's own loop.
//!
//! [`crate::Session::run`] gives every connection threads of its own, each
//! with a read buffer for the largest request fuser allows (16 MiB). An agent
//! serving hundreds of mounts needs the opposite: one bounded pool of threads
//! that serves every connection, with buffers sized to what the kernel
//! negotiated. And a connection must outlive the process that answered its
//! `FUSE_INIT`: the kernel sends INIT once per connection, so a new process
//! that takes the `/dev/fuse` fd over must resume from the saved negotiation
//! ([`Connection::resume`]) instead of waiting for an INIT that never comes
//! (fuser issue #753).
//!
//! A [`Connection`] is one `/dev/fuse` fd plus its filesystem. The caller
//! reads and dispatches one request at a time with [`Connection::process`]
//! (on a non-blocking fd, from as many threads as it likes) into a
//! [`RequestBuffer`] of [`Negotiated::read_buffer_size`] bytes.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::unistd::geteuid;

use crate::Filesystem;
use crate::KernelConfig;
use crate::ReplyEmpty;
use crate::SessionACL;
use crate::channel::Channel;
use crate::dev_fuse::DevFuse;
use crate::ll::Operation;
use crate::ll::Version;
use crate::ll::flags::init_flags::InitFlags;
use crate::mnt::mount_options::Config;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::Session;
use crate::session::SessionEventLoop;

/// `FUSE_NOTIFY_RESEND`: the kernel queues again every request that was
/// read from the connection but not answered (protocol 7.40 and later).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// The bit the kernel sets in the unique id of a request it queued again
/// after `FUSE_NOTIFY_RESEND`.
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;
/// The smallest read buffer the kernel accepts (`FUSE_MIN_READ_BUFFER`).
const MIN_READ_BUFFER: usize = 8192;
/// Room for the request header and the largest fixed argument before a
/// WRITE's data.
const REQUEST_HEADER_ROOM: usize = 4096;

/// What the kernel and the filesystem agreed on at `FUSE_INIT`: what a
/// process that takes the connection over needs to serve it (the kernel
/// decides from it which requests arrive and how large they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The kernel's protocol major version.
    pub major: u32,
    /// The kernel's protocol minor version.
    pub minor: u32,
    /// The capability flags in force (offered by the kernel and requested).
    pub flags: u64,
    /// The largest WRITE the kernel sends.
    pub max_write: u32,
    /// The kernel's readahead for this connection.
    pub max_readahead: u32,
    /// Pages per request.
    pub max_pages: u16,
    /// Background requests the kernel keeps in flight.
    pub max_background: u16,
}

impl Negotiated {
    pub(crate) fn from_init(config: &KernelConfig, offered: InitFlags, kernel: Version) -> Self {
        let granted = (config.requested | InitFlags::FUSE_INIT_EXT) & offered;
        Negotiated {
            major: kernel.0,
            minor: kernel.1,
            flags: granted.bits(),
            max_write: config.max_write,
            max_readahead: config.max_readahead,
            max_pages: config.max_pages(),
            max_background: config.max_background,
        }
    }

    /// Whether the kernel takes `FUSE_NOTIFY_RESEND` (protocol 7.40+).
    pub fn supports_resend(&self) -> bool {
        (self.major, self.minor) >= (7, 40)
    }

    /// The read buffer every request of this connection fits in: the kernel
    /// refuses a read into anything smaller.
    pub fn read_buffer_size(&self) -> usize {
        (self.max_write as usize + REQUEST_HEADER_ROOM).max(MIN_READ_BUFFER)
    }
}

/// A buffer for one request, aligned for the request header.
#[derive(Debug)]
pub struct RequestBuffer {
    buffer: Vec<u8>,
}

impl RequestBuffer {
    /// A buffer with room for `size` bytes of request.
    pub fn new(size: usize) -> Self {
        RequestBuffer {
            buffer: vec![0; size + std::mem::align_of::<u64>()],
        }
    }

    /// How many bytes of request it holds.
    pub fn len(&self) -> usize {
        self.buffer.len() - std::mem::align_of::<u64>()
    }

    /// Whether it holds no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn as_mut(&mut self) -> &mut [u8] {
        let alignment = std::mem::align_of::<u64>();
        let off = (alignment - (self.buffer.as_ptr() as usize) % alignment) % alignment;
        let len = self.len();
        &mut self.buffer[off..off + len]
    }
}

/// What one [`Connection::process`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A request was read and dispatched.
    Served,
    /// No request was waiting (the fd is non-blocking).
    Idle,
    /// The connection is gone (unmounted and released, or aborted).
    Ended,
}

/// One FUSE connection: its `/dev/fuse` fd and the filesystem serving it.
pub struct Connection<FS: Filesystem> {
    event_loop: SessionEventLoop<FS>,
    negotiated: Negotiated,
    /// hotmount patch: requests that came again after a resend notification.
    resent: std::sync::atomic::AtomicU64,
}

impl<FS: Filesystem> std::fmt::Debug for Connection<FS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl<FS: Filesystem> Connection<FS> {
    /// Answers the kernel's `FUSE_INIT` on `fd` (a freshly mounted
    /// connection; blocks until INIT arrives) through `filesystem.init`.
    pub fn new(filesystem: FS, fd: OwnedFd, acl: SessionACL) -> io::Result<Self> {
        let session = Session::from_fd(filesystem, fd, acl, Config::default())?;
        let negotiated = session
            .negotiated
            .ok_or_else(|| io::Error::other("FUSE_INIT ended without a negotiation"))?;
        Ok(Connection {
            event_loop: SessionEventLoop {
                thread_name: "fuse-pool".to_string(),
                ch: session.ch.clone(),
                filesystem: Arc::new(FilesystemHolder {
                    fs: session.into_filesystem(),
                }),
                allowed: acl,
                session_owner: geteuid(),
            },
            negotiated,
            resent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Serves a connection whose INIT an earlier process answered with
    /// `negotiated`, without waiting for an INIT. `filesystem.init` is not
    /// called. The caller asks for the requests the earlier process read
    /// but did not answer with [`Connection::request_resend`].
    pub fn resume(
        filesystem: FS,
        fd: OwnedFd,
        acl: SessionACL,
        negotiated: Negotiated,
    ) -> Self {
        let ch = Channel::new(Arc::new(DevFuse(File::from(fd))));
        Connection {
            event_loop: SessionEventLoop {
                thread_name: "fuse-pool".to_string(),
                ch,
                filesystem: Arc::new(FilesystemHolder {
                    fs: Some(filesystem),
                }),
                allowed: acl,
                session_owner: geteuid(),
            },
            negotiated,
            resent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Asks the kernel to queue again every request that was read from this
    /// connection but never answered (`FUSE_NOTIFY_RESEND`). They come back
    /// with bit 63 set in their unique id, which the replies echo. Fails
    /// with `Unsupported` before protocol 7.40.
    pub fn request_resend(&self) -> io::Result<()> {
        if !self.negotiated.supports_resend() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "FUSE_NOTIFY_RESEND needs protocol 7.40, the kernel speaks {}.{}",
                    self.negotiated.major, self.negotiated.minor
                ),
            ));
        }
        // A bare fuse_out_header: len 16, error = the notification code, unique 0.
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&16u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
        self.event_loop
            .ch
            .sender()
            .send(&[io::IoSlice::new(&header)])
    }

    /// How many requests arrived again after [`Connection::request_resend`]
    /// (their unique id has bit 63 set).
    pub fn resent_requests(&self) -> u64 {
        self.resent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What was negotiated at INIT.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// The connection's `/dev/fuse` fd (to poll it, or to hand a duplicate
    /// of it to another process).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.event_loop.ch.as_fd()
    }

    /// Reads one request into `buffer` and dispatches it to the filesystem.
    /// On a non-blocking fd, returns [`Step::Idle`] when nothing is waiting.
    /// `buffer` must hold [`Negotiated::read_buffer_size`] bytes.
    pub fn process(&self, buffer: &mut RequestBuffer) -> io::Result<Step> {
        let buf = buffer.as_mut();
        let size = loop {
            match self.event_loop.ch.receive_once(buf) {
                Ok(size) => break size,
                // ENOENT: the request was interrupted before it was read.
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ENOENT) => continue,
                Err(nix::errno::Errno::EAGAIN) => return Ok(Step::Idle),
                Err(nix::errno::Errno::ENODEV) => return Ok(Step::Ended),
                Err(err) => return Err(err.into()),
            }
        };
        let Some(request) = RequestWithSender::new(self.event_loop.ch.sender(), &buf[..size])
        else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid FUSE request",
            ));
        };
        if let Ok(Operation::Destroy(_)) = request.request.operation() {
            request.reply::<ReplyEmpty>().ok();
            return Ok(Step::Ended);
        }
        if request.request.unique().0 & FUSE_UNIQUE_RESEND != 0 {
            self.resent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        request.dispatch(&self.event_loop);
        Ok(Step::Served)
    }
}
