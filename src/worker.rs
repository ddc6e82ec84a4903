//! The worker: the process that does the agent's work (API, manager,
//! probes, FUSE serving, S3) under a supervisor (`hotmount serve`), which
//! starts it with the listening sockets and the FUSE connections of the
//! worker before it. It hands every FUSE connection it opens to the
//! supervisor with its table journals ([`WorkerLink`]), sends a heartbeat,
//! and at an upgrade quiesces on request.

use std::os::fd::{AsFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::manager::{Manager, Resumable};
use crate::s3fs::fs::FsJournals;
use crate::spec::MountSpec;
use crate::supervisor::channel::{Channel, HeldConnection, Message, StartReport};
use crate::supervisor::handover::Handover;
use crate::supervisor::{CRASH_LOOP_WINDOW, monotonic_ns};
use crate::sys::{FuseSession, LinuxMounter};
use crate::{RunError, run_with};

/// The variable that tells a worker which fd is its channel to the supervisor.
pub const CHANNEL_ENV: &str = "HOTMOUNT_WORKER_CHANNEL";
/// The process name (`comm`) of a worker that serves.
pub const WORKER_NAME: &str = "hotmount-worker";
/// The process name of a worker started ahead, waiting to take over.
pub const STANDBY_NAME: &str = "hotmount-spare";
/// How often the worker says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Heartbeats between two saves of the counters (each scrape saves them too).
const COUNTERS_SAVED_EVERY_BEATS: u64 = 5;
/// How often a quiescing worker looks whether open writers are done.
const WRITERS_POLL: Duration = Duration::from_millis(50);

/// The worker's end of the channel to its supervisor.
#[derive(Debug)]
pub struct WorkerLink {
    channel: Channel,
}

impl WorkerLink {
    fn send(&self, message: &Message, fds: &[std::os::fd::BorrowedFd<'_>]) {
        if let Err(err) = self.channel.send(message, fds) {
            tracing::warn!(error = %err, ?message, "cannot reach the supervisor");
        }
    }

    /// Hands a new FUSE connection to the supervisor to hold: its fd (taken
    /// from `session`) and its table journals.
    pub fn hold_connection(
        &self,
        name: &str,
        spec: &MountSpec,
        session: &mut FuseSession,
        journals: FsJournals,
    ) {
        let (Some(connection), Some(negotiated), Some(device)) = (
            session.connection,
            session.negotiated,
            session.device.take(),
        ) else {
            return;
        };
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // Unique among the connections a supervisor holds: this process's
        // pid, and a count.
        let id = (u64::from(std::process::id()) << 32)
            | OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        session.held_id = Some(id);
        let held = HeldConnection {
            id,
            name: name.to_string(),
            connection,
            negotiated: negotiated.into(),
            spec: spec.clone(),
        };
        self.send(
            &Message::FuseOpened(held),
            &[
                device.as_fd(),
                journals.inodes.as_fd(),
                journals.handles.as_fd(),
            ],
        );
    }

    /// Tells the supervisor that connection `connection` (held as `id`) ended.
    pub fn connection_ended(&self, connection: u32, id: u64) {
        self.send(&Message::FuseEnded { connection, id }, &[]);
    }
}

/// What a supervised worker is given, for [`run_with`].
#[derive(Debug)]
pub struct Supervision {
    link: Arc<WorkerLink>,
    resumables: Vec<Resumable>,
    report: StartReport,
    counters: Option<std::os::fd::OwnedFd>,
    quiesce: tokio::sync::watch::Receiver<Option<Duration>>,
}

/// A worker that may be asked to quiesce (see [`Supervision::begin`]).
#[derive(Debug)]
pub struct Quiesce {
    link: Arc<WorkerLink>,
    quiesce: tokio::sync::watch::Receiver<Option<Duration>>,
}

impl Supervision {
    /// Starts `metrics` from the counters the worker before saved, and
    /// saves them there from now on. Before anything is served: no scrape
    /// may see a counter below what an earlier one saw.
    pub fn carry_counters(&mut self, metrics: &crate::metrics::Metrics) {
        if let Some(counters) = self.counters.take() {
            let previous = metrics.carry_counters_in(std::fs::File::from(counters));
            metrics.restore_counters(&previous);
        }
        // The supervisor's own counts.
        for (reason, count) in &self.report.restarts {
            metrics
                .worker_restarts
                .with_label_values(&[reason])
                .inc_by(*count);
        }
        metrics.takeovers.inc_by(self.report.takeovers);
        metrics
            .worker_restart_stall
            .set(self.report.longest_stall_seconds);
    }

    /// Serves again the connections of the worker before (before the
    /// manager starts, so pods wait as little as possible), reports the
    /// supervisor's figures, and starts the heartbeat.
    pub async fn begin(self, manager: &Manager) -> Quiesce {
        let Supervision {
            link,
            resumables,
            report,
            counters: _,
            quiesce,
        } = self;
        manager.set_link(Arc::clone(&link));
        let metrics = manager.metrics();
        let heartbeat = Arc::clone(&link);
        let saved = Arc::clone(metrics);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            for beat in 0u64.. {
                every.tick().await;
                heartbeat.send(&Message::Heartbeat, &[]);
                if beat % COUNTERS_SAVED_EVERY_BEATS == 0 {
                    saved.save_counters();
                }
            }
        });
        if let Some(problem) = &report.crash_loop {
            metrics.worker_crash_loop.set(1);
            manager.set_supervision_problem(Some(problem.clone()));
            let manager = manager.clone();
            tokio::spawn(async move {
                tokio::time::sleep(CRASH_LOOP_WINDOW).await;
                manager.metrics().worker_crash_loop.set(0);
                manager.set_supervision_problem(None);
            });
        }
        let count = resumables.len();
        let started = Instant::now();
        manager.resume(resumables).await;
        if count > 0 {
            tracing::info!(connections = count, took = ?started.elapsed(), "fuse connections served again");
        }
        if let (Some(since), true) = (report.stalled_since_ns, count > 0) {
            let stall = monotonic_ns().saturating_sub(since) as f64 / 1e9;
            let longest = report.longest_stall_seconds.max(stall);
            metrics.worker_restart_stall.set(longest);
            link.send(
                &Message::Resumed {
                    stall_seconds: stall,
                },
                &[],
            );
        }
        Quiesce { link, quiesce }
    }
}

impl Quiesce {
    /// After the worker stopped serving the API: if the supervisor asked
    /// for a quiesce, waits (bounded) for files open for writing to close,
    /// says so, and waits to be stopped (its FUSE connections are served
    /// until then). Otherwise returns at once.
    pub async fn finish(self, manager: &Manager) {
        let Some(wait) = *self.quiesce.borrow() else {
            return;
        };
        let deadline = Instant::now() + wait;
        let mut writers = manager.open_writers();
        while writers > 0 && Instant::now() < deadline {
            tokio::time::sleep(WRITERS_POLL).await;
            writers = manager.open_writers();
        }
        if writers > 0 {
            tracing::warn!(
                writers,
                "files still open for writing at the takeover; their next call fails (EIO)"
            );
        }
        self.link.send(
            &Message::Quiesced {
                writers_left: writers,
            },
            &[],
        );
        std::future::pending::<()>().await;
    }
}

/// The channel fd the supervisor passed in [`CHANNEL_ENV`], if any.
pub fn channel_from_env() -> Option<Channel> {
    let fd: RawFd = std::env::var(CHANNEL_ENV).ok()?.parse().ok()?;
    // SAFETY: the supervisor passed this fd, open and for us alone, and we
    // take it once (the variable is read at start-up only).
    let channel = unsafe { Channel::from_raw_fd(fd) };
    // Not for the programs this process runs.
    let _ = nix::fcntl::fcntl(
        channel.fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(channel)
}

/// Runs the worker: takes the supervisor's handover, then the agent, until
/// SIGTERM (or a quiesce, at an upgrade).
pub async fn run_worker(config: Config, channel: Channel) -> Result<(), RunError> {
    let handover_failed = |source| RunError::Listen {
        what: "the supervisor's handover".to_string(),
        error: source,
    };
    // A standby until the handover comes (`ps` tells them apart).
    name_process(STANDBY_NAME);
    let (handover, report) = Handover::receive(&channel).map_err(handover_failed)?;
    name_process(WORKER_NAME);
    let (listeners, resumables, counters) = handover.into_worker_parts()?;
    let readiness = channel.readiness().map_err(handover_failed)?;
    let link = Arc::new(WorkerLink { channel });
    let (quiesce_tx, quiesce_rx) = tokio::sync::watch::channel(None);
    let reader = Arc::clone(&link);
    tokio::spawn(async move {
        loop {
            match reader.channel.recv_async(&readiness).await {
                Ok(Some((Message::Quiesce { write_wait_ms }, _))) => {
                    tracing::info!("the supervisor hands the node over: quiescing");
                    let _ = quiesce_tx.send(Some(Duration::from_millis(write_wait_ms)));
                }
                Ok(Some((other, _))) => {
                    tracing::warn!(message = ?other, "unexpected message from the supervisor")
                }
                Ok(None) | Err(_) => {
                    // Without its supervisor nothing would hold the FUSE
                    // connections at the next crash; stop now.
                    tracing::error!("the supervisor is gone; the worker stops");
                    std::process::exit(1);
                }
            }
        }
    });
    let mut quiesced = quiesce_rx.clone();
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = quiesced.wait_for(Option::is_some) => {}
        }
    };
    let supervision = Supervision {
        link,
        resumables,
        report,
        counters,
        quiesce: quiesce_rx,
    };
    run_with(
        config,
        Arc::new(LinuxMounter),
        listeners,
        Some(supervision),
        shutdown,
    )
    .await
}

/// Names this process (its main thread: what `ps` and `/proc/PID/stat` show).
fn name_process(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}
