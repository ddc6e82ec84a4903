//! The FUSE serving pool: every FUSE connection of the process is served by
//! one bounded set of threads, whatever the number of mounts. Each
//! connection's `/dev/fuse` fd is non-blocking and registered (one-shot) in
//! one epoll set; an idle thread takes the next ready connection, reads one
//! request into its own buffer (sized to the largest `max_write` the kernel
//! negotiated, not fuser's 16 MiB), dispatches it, and re-arms the fd. The
//! filesystems answer on their tokio runtime, so a dispatch is short and a
//! few threads serve hundreds of mounts; the pool grows by a thread when
//! every thread is busy (up to its limit) and shrinks back when threads idle.
//!
//! A dataset used to cost its own session thread, four reader threads and
//! four 16 MiB buffers; now it costs one registration.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Filesystem, RequestBuffer, Step};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Threads the pool keeps even when idle.
const MIN_THREADS: usize = 2;
/// The most threads unless a mount asks for more (`--fuse-threads`).
const DEFAULT_MAX_THREADS: usize = 8;
/// A thread above the minimum that waited this long for work exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A FUSE connection the pool can serve (a `fuser::Connection` of any filesystem).
pub trait ServedConnection: Send + Sync {
    /// Reads and dispatches one request (see `fuser::Connection::process`).
    fn process(&self, buffer: &mut RequestBuffer) -> std::io::Result<Step>;
    /// The `/dev/fuse` fd.
    fn fd(&self) -> BorrowedFd<'_>;
    /// The buffer every request of this connection fits in.
    fn read_buffer_size(&self) -> usize;
    /// Requests that came again after a resend notification.
    fn resent_requests(&self) -> u64;
}

impl<FS: Filesystem> ServedConnection for fuser::Connection<FS> {
    fn process(&self, buffer: &mut RequestBuffer) -> std::io::Result<Step> {
        fuser::Connection::process(self, buffer)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        fuser::Connection::fd(self)
    }

    fn read_buffer_size(&self) -> usize {
        self.negotiated().read_buffer_size()
    }

    fn resent_requests(&self) -> u64 {
        fuser::Connection::resent_requests(self)
    }
}

/// Set when a connection ended (its kernel side is gone, or it failed).
#[derive(Debug, Default)]
struct EndSignal {
    outcome: Mutex<Option<Result<(), String>>>,
    changed: Condvar,
}

impl EndSignal {
    fn end(&self, outcome: Result<(), String>) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.changed.notify_all();
    }
}

/// A connection being served; tells whether it still is and waits for its end.
#[derive(Debug)]
pub struct PooledConnection {
    ended: Arc<EndSignal>,
}

impl PooledConnection {
    /// Whether the connection is still being served.
    pub fn is_serving(&self) -> bool {
        self.ended
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Waits until the connection ended (after its mount is gone); the
    /// error that ended it, if any.
    pub fn join(self) -> std::io::Result<()> {
        let mut outcome = self.ended.outcome.lock().unwrap_or_else(|p| p.into_inner());
        while outcome.is_none() {
            outcome = self
                .ended
                .changed
                .wait(outcome)
                .unwrap_or_else(|p| p.into_inner());
        }
        outcome
            .clone()
            .unwrap_or(Ok(()))
            .map_err(std::io::Error::other)
    }
}

struct Registered {
    connection: Arc<dyn ServedConnection>,
    ended: Arc<EndSignal>,
}

/// The pool (one per process: [`FusePool::global`]).
pub struct FusePool {
    epoll: Epoll,
    connections: Mutex<HashMap<u64, Registered>>,
    next_token: AtomicU64,
    /// Threads alive, and how many of them wait for work.
    threads: AtomicUsize,
    idle: AtomicUsize,
    max_threads: AtomicUsize,
    /// The buffer size every thread needs (the largest connection's).
    buffer_size: AtomicUsize,
    /// Resent requests of connections that ended.
    retired_resent: AtomicU64,
}

impl std::fmt::Debug for FusePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusePool")
            .field("threads", &self.threads.load(Ordering::Relaxed))
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl FusePool {
    /// The process's pool, started on first use.
    pub fn global() -> &'static Arc<FusePool> {
        static POOL: OnceLock<Arc<FusePool>> = OnceLock::new();
        POOL.get_or_init(|| {
            let pool = Arc::new(FusePool {
                epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                    .expect("epoll_create1 never fails with valid flags and free fds"),
                connections: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(1),
                threads: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
                max_threads: AtomicUsize::new(DEFAULT_MAX_THREADS),
                buffer_size: AtomicUsize::new(0),
                retired_resent: AtomicU64::new(0),
            });
            for _ in 0..MIN_THREADS {
                pool.threads.fetch_add(1, Ordering::Relaxed);
                pool.spawn_thread();
            }
            pool
        })
    }

    /// Lets the pool grow to at least `threads` threads under load.
    pub fn allow_threads(&self, threads: usize) {
        self.max_threads
            .fetch_max(threads.max(MIN_THREADS), Ordering::Relaxed);
    }

    /// Connections being served.
    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Threads alive.
    pub fn thread_count(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Starts serving `connection` (its fd is made non-blocking).
    pub fn serve(
        self: &Arc<Self>,
        connection: Arc<dyn ServedConnection>,
    ) -> std::io::Result<PooledConnection> {
        set_nonblocking(connection.fd())?;
        self.buffer_size
            .fetch_max(connection.read_buffer_size(), Ordering::Relaxed);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let ended = Arc::new(EndSignal::default());
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                token,
                Registered {
                    connection: Arc::clone(&connection),
                    ended: Arc::clone(&ended),
                },
            );
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token);
        if let Err(errno) = self.epoll.add(connection.fd(), event) {
            self.connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&token);
            return Err(errno.into());
        }
        Ok(PooledConnection { ended })
    }

    /// Starts a thread the caller has already counted in `threads`.
    fn spawn_thread(self: &Arc<Self>) {
        let pool = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("fuse-pool".to_string())
            .spawn(move || pool.serve_loop());
        if let Err(err) = spawned {
            self.threads.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "cannot start a fuse pool thread");
        }
    }

    fn serve_loop(self: Arc<Self>) {
        let mut buffer = RequestBuffer::new(0);
        let mut events = [EpollEvent::empty()];
        loop {
            self.idle.fetch_add(1, Ordering::Relaxed);
            let waited = self.epoll.wait(
                &mut events,
                EpollTimeout::try_from(IDLE_EXIT).unwrap_or(EpollTimeout::NONE),
            );
            let idle_now = self.idle.fetch_sub(1, Ordering::Relaxed) - 1;
            match waited {
                Ok(0) => {
                    if self.retire_if_surplus() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::error!(%errno, "fuse pool: epoll_wait failed");
                    self.threads.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
            let max = self.max_threads();
            let grow = idle_now == 0
                && self
                    .threads
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < max).then_some(n + 1)
                    })
                    .is_ok();
            if grow {
                // Every thread is busy: one more for the next request.
                self.spawn_thread();
            }
            let token = events[0].data();
            let registered = self
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&token)
                .map(|r| (Arc::clone(&r.connection), Arc::clone(&r.ended)));
            let Some((connection, ended)) = registered else {
                continue;
            };
            let wanted = self.buffer_size.load(Ordering::Relaxed);
            if buffer.len() < wanted {
                buffer = RequestBuffer::new(wanted);
            }
            match connection.process(&mut buffer) {
                Ok(Step::Served | Step::Idle) => {
                    if let Err(errno) = self.rearm(&*connection, token) {
                        // Never served again: say so (the probe re-mounts it).
                        let reason = format!("cannot re-arm the connection in epoll: {errno}");
                        tracing::error!(%errno, "fuse pool: a connection can no longer be served");
                        self.retire_connection(token, &*connection, &ended, Err(reason));
                    }
                }
                Ok(Step::Ended) => self.retire_connection(token, &*connection, &ended, Ok(())),
                Err(err) => {
                    tracing::warn!(error = %err, "fuse connection failed; no longer served");
                    self.retire_connection(token, &*connection, &ended, Err(err.to_string()));
                }
            }
        }
    }

    fn max_threads(&self) -> usize {
        self.max_threads.load(Ordering::Relaxed)
    }

    /// Ends this thread if the pool has more than it keeps when idle.
    fn retire_if_surplus(&self) -> bool {
        self.threads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > MIN_THREADS).then(|| n - 1)
            })
            .is_ok()
    }

    /// Requests the kernel sent again after a resend notification, over
    /// every connection this pool served.
    pub fn resent_requests(&self) -> u64 {
        let live: u64 = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|registered| registered.connection.resent_requests())
            .sum();
        live + self.retired_resent.load(Ordering::Relaxed)
    }

    fn rearm(&self, connection: &dyn ServedConnection, token: u64) -> nix::Result<()> {
        let mut event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token);
        self.epoll.modify(connection.fd(), &mut event)
    }

    fn retire_connection(
        &self,
        token: u64,
        connection: &dyn ServedConnection,
        ended: &EndSignal,
        outcome: Result<(), String>,
    ) {
        let _ = self.epoll.delete(connection.fd());
        self.retired_resent
            .fetch_add(connection.resent_requests(), Ordering::Relaxed);
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
        ended.end(outcome);
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(())
}
