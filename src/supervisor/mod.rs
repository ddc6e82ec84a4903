//! The supervisor (`hotmount serve`): a small process that owns what must
//! outlive the agent's work: the listening sockets and every FUSE
//! connection with its table journals ([`handover::Handover`]). The work
//! runs in a worker, a child running the same binary ([`crate::worker`]).
//!
//! - A worker that dies is replaced at once; the new one serves every FUSE
//!   connection again (no new mount) and the kernel resends what the dead
//!   one had read but not answered.
//! - A worker that sends no heartbeat for `--worker-heartbeat-timeout` is
//!   killed and replaced the same way.
//! - A worker that keeps dying (more than [`CRASH_LOOP_RESTARTS`] times in
//!   [`CRASH_LOOP_WINDOW`]) is started again after a growing pause, and
//!   `/readyz` and `hotmount_worker_crash_loop` say so.
//! - A new supervisor started with the same state directory (an upgrade)
//!   asks this one for the node over `<state-dir>/takeover.sock`
//!   ([`takeover`]): this one quiesces its worker, hands everything over,
//!   and idles until SIGTERM, touching no mount.
//! - When the supervisor itself dies, its worker goes too (the kernel
//!   kills it); the next start mounts every dataset again at its path.

pub mod channel;
pub mod handover;
pub mod reexec;
pub mod takeover;

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::RunError;
use crate::config::Config;
use channel::{Channel, Message, StartReport};
use handover::Handover;
use takeover::SupervisorLock;

/// The window in which restarts count towards a crash loop.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);
/// Restarts within [`CRASH_LOOP_WINDOW`] before the supervisor backs off:
/// more than one a second for a minute. Each restart serves the pods again
/// at once, so a worker that dies now and then (even many times) is best
/// replaced without a pause; one that cannot stay up burns a CPU and is
/// paused.
pub const CRASH_LOOP_RESTARTS: usize = 60;
/// The longest pause between two starts of a worker that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a worker killed with SIGKILL may take to be gone before the
/// next one starts anyway (a thread stuck in the kernel can delay its end;
/// the next worker's answers are what frees it).
const KILLED_EXIT_WAIT: Duration = Duration::from_secs(2);
/// The exit code of a worker whose agent stopped with an error that a new
/// start would meet again (the root cannot propagate, a listener failed):
/// the supervisor exits too.
pub const WORKER_FATAL_EXIT: u8 = 78;
/// How long a worker has to stop after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How long a quiescing worker may take beyond the write wait.
const QUIESCE_SLACK: Duration = Duration::from_secs(15);

/// Why the supervisor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Listeners or state directory.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The running agent refused to hand the node over.
    #[error("the running agent refused to hand the node over: {0}")]
    Refused(String),
    /// The worker stopped with an error a new start would meet again.
    #[error("the worker stopped with an error (see above); not starting it again")]
    WorkerFailed,
    /// A system call failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error (in the message, not chained: printed once).
        error: std::io::Error,
    },
}

fn io_error(what: &'static str) -> impl Fn(std::io::Error) -> SupervisorError {
    move |error| SupervisorError::Io { what, error }
}

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// How one worker's life ended.
enum Ended {
    /// It died (the reason label: `exit` or `signal`).
    Died(&'static str, String),
    /// It stopped with an error a new start would meet again.
    Fatal,
    /// Its heartbeat stopped; it was killed.
    Hung,
    /// SIGTERM or SIGINT: stop everything.
    Terminate,
    /// A newer supervisor takes the node over.
    Takeover(Channel),
    /// SIGHUP: become the binary now installed at our path (systemd's
    /// `reload`), if it reads our table format.
    Upgrade,
}

/// A running worker.
struct Worker {
    child: tokio::process::Child,
    channel: Channel,
    ready: AsyncFd<std::os::fd::OwnedFd>,
}

/// Runs the supervisor until SIGTERM (or until a newer one took over and
/// SIGTERM came).
pub async fn supervise(config: Config) -> Result<(), SupervisorError> {
    std::fs::create_dir_all(&config.state_dir).map_err(io_error("create the state directory"))?;
    let binary = reexec::own_binary();
    let inherited = reexec::inherited().map_err(io_error("take over from the previous binary"))?;
    let (mut held, mut report, lock) = match inherited {
        // An in-place upgrade: this pid already held everything.
        Some((mut held, report, lock)) => {
            held.bind_missing(&config)?;
            let lock = match lock {
                Some(lock) => lock,
                None => SupervisorLock::wait(&config)?,
            };
            (held, report, lock)
        }
        None => match SupervisorLock::try_acquire(&config)
            .map_err(io_error("take the supervisor lock"))?
        {
            Some(lock) => (Handover::bind(&config)?, StartReport::default(), lock),
            // Another supervisor serves this state directory: take over.
            None => {
                let (mut held, report, channel) = takeover::request(&config)?;
                held.bind_missing(&config)?;
                takeover::confirm(&channel)?;
                let lock = SupervisorLock::wait(&config)?;
                tracing::info!(
                    connections = held.connections.len(),
                    "took the node over from the running agent"
                );
                (held, report, lock)
            }
        },
    };
    held.ensure_counters()
        .map_err(io_error("make the counters memfd"))?;
    let takeover_listener = channel::watch_readable(
        Channel::listen(&config.supervision.takeover_socket)
            .map_err(io_error("listen for takeovers"))?,
    )
    .map_err(io_error("listen for takeovers"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io_error("install a SIGTERM handler"))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(io_error("install a SIGHUP handler"))?;
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut standby: Option<Worker> = None;
    loop {
        // The standby (started and waiting) takes over at once; a new one
        // is started to wait for the next time.
        let ready_standby = standby
            .take()
            .and_then(|mut worker| worker.is_running().then_some(worker));
        let launched = match ready_standby {
            Some(worker) => Ok(worker),
            None => launch_worker(),
        };
        let mut worker = match launched {
            Ok(worker) => worker,
            Err(err) => {
                tracing::error!(error = %err, "cannot start a worker; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        worker.hand(&held, &report);
        report.stalled_since_ns = None;
        standby = launch_worker()
            .inspect_err(|err| tracing::warn!(error = %err, "cannot start a standby worker"))
            .ok();
        let ended = watch_worker(
            &config,
            binary.as_deref(),
            &mut worker,
            &mut held,
            &mut report,
            &takeover_listener,
            &mut term,
            &mut hangup,
        )
        .await;
        match ended {
            Ended::Terminate => {
                discard(&mut standby).await;
                stop_worker(&mut worker).await;
                let _ = std::fs::remove_file(&config.socket);
                let _ = std::fs::remove_file(&config.supervision.takeover_socket);
                return Ok(());
            }
            Ended::Fatal => {
                discard(&mut standby).await;
                let _ = std::fs::remove_file(&config.socket);
                let _ = std::fs::remove_file(&config.supervision.takeover_socket);
                return Err(SupervisorError::WorkerFailed);
            }
            Ended::Takeover(peer) => {
                match hand_over(&config, worker, &mut held, &mut report, &peer).await {
                    Ok(()) => {
                        // The new supervisor has everything: let go.
                        drop(lock);
                        discard(&mut standby).await;
                        drop(held);
                        drop(takeover_listener);
                        tracing::info!("the node is handed over; idle until SIGTERM");
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                        return Ok(());
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the handover failed; serving on");
                        report.stalled_since_ns = Some(monotonic_ns());
                        continue;
                    }
                }
            }
            Ended::Upgrade => {
                discard(&mut standby).await;
                let handed = stop_for_handover(&config, worker, &mut held, &mut report).await;
                let binary = binary
                    .as_deref()
                    .expect("an upgrade needs the binary's path");
                let failed = reexec::exec(binary, &held, &handed, &lock);
                // Still here: the exec failed; serve on with a new worker.
                tracing::error!(error = %failed, binary = %binary.display(), "cannot start the new binary; serving on");
                report.stalled_since_ns = handed.stalled_since_ns;
            }
            Ended::Hung | Ended::Died(..) => {
                let reason = match &ended {
                    Ended::Died(reason, how) => {
                        tracing::error!(how, "worker died; starting another");
                        *reason
                    }
                    _ => {
                        tracing::error!("worker stopped sending heartbeats; killed it");
                        "heartbeat"
                    }
                };
                *report.restarts.entry(reason.to_string()).or_default() += 1;
                report.stalled_since_ns = Some(monotonic_ns());
                let now = Instant::now();
                restarts.push_back(now);
                while restarts
                    .front()
                    .is_some_and(|at| now.duration_since(*at) > CRASH_LOOP_WINDOW)
                {
                    restarts.pop_front();
                }
                if restarts.len() > CRASH_LOOP_RESTARTS {
                    let extra = (restarts.len() - CRASH_LOOP_RESTARTS - 1).min(4) as u32;
                    let pause = (Duration::from_secs(1) * 2u32.pow(extra)).min(MAX_BACKOFF);
                    let problem = format!(
                        "the worker died {} times in {}s (last: {reason}); next start after {pause:?}",
                        restarts.len(),
                        CRASH_LOOP_WINDOW.as_secs()
                    );
                    tracing::error!("{problem}");
                    report.crash_loop = Some(problem);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = term.recv() => return Ok(()),
                    }
                } else {
                    report.crash_loop = None;
                }
            }
        }
    }
}

/// Starts a worker (this binary, same arguments). It waits for its
/// handover ([`Worker::hand`]): started ahead as a standby, it takes a dead
/// worker's place within milliseconds.
fn launch_worker() -> std::io::Result<Worker> {
    let (ours, theirs) = Channel::pair()?;
    let fd = theirs.fd().as_raw_fd();
    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .args(std::env::args_os().skip(1))
        .env_remove(reexec::STATE_ENV)
        .env(crate::worker::CHANNEL_ENV, fd.to_string());
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // prctl) on values captured by copy.
    unsafe {
        command.pre_exec(move || {
            // The channel survives exec; the worker dies with its supervisor.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(command).spawn()?;
    drop(theirs);
    let ready = ours.readiness()?;
    Ok(Worker {
        child,
        channel: ours,
        ready,
    })
}

impl Worker {
    /// Whether the process still runs (a standby may have been killed).
    fn is_running(&mut self) -> bool {
        // Reaps it if it exited.
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Hands the worker everything it serves. If it cannot take it (it
    /// died meanwhile), it is stopped; its end is seen, and counted, like
    /// any other.
    fn hand(&mut self, held: &Handover, report: &StartReport) {
        if let Err(err) = held.send(&self.channel, report) {
            tracing::warn!(error = %err, "cannot hand the worker what it needs; stopping it");
            let _ = self.child.start_kill();
        }
    }
}

/// Watches a worker until it ends, holding the connections it reports.
#[allow(clippy::too_many_arguments)]
async fn watch_worker(
    config: &Config,
    binary: Option<&std::path::Path>,
    worker: &mut Worker,
    held: &mut Handover,
    report: &mut StartReport,
    takeover_listener: &AsyncFd<std::os::fd::OwnedFd>,
    term: &mut tokio::signal::unix::Signal,
    hangup: &mut tokio::signal::unix::Signal,
) -> Ended {
    let timeout = config.supervision.heartbeat_timeout;
    let mut last_sign = Instant::now();
    loop {
        tokio::select! {
            status = worker.child.wait() => {
                drain(worker, held, report);
                return died(status);
            }
            message = worker.channel.recv_async(&worker.ready) => match message {
                Ok(Some((message, fds))) => {
                    last_sign = Instant::now();
                    apply(message, fds, held, report);
                }
                Ok(None) => {
                    // Its fds are closed: it is dying. Wait for its status.
                    let status = tokio::time::timeout(KILLED_EXIT_WAIT, worker.child.wait()).await;
                    return match status {
                        Ok(status) => died(status),
                        Err(_) => Ended::Died("exit", "closed its channel".to_string()),
                    };
                }
                Err(err) => tracing::warn!(error = %err, "unreadable message from the worker"),
            },
            () = tokio::time::sleep_until((last_sign + timeout).into()) => {
                kill(worker).await;
                drain(worker, held, report);
                return Ended::Hung;
            }
            _ = term.recv() => return Ended::Terminate,
            _ = tokio::signal::ctrl_c() => return Ended::Terminate,
            _ = hangup.recv() => {
                if let Some(binary) = binary {
                    let checked = reexec::check_format(binary, config.supervision.handover_format).await;
                    // The worker's heartbeats queued meanwhile are read next.
                    last_sign = Instant::now();
                    match checked {
                        Ok(()) => return Ended::Upgrade,
                        Err(reason) => tracing::error!(%reason, binary = %binary.display(), "upgrade refused; serving on"),
                    }
                } else {
                    tracing::error!("SIGHUP: this process does not know its binary's path; no upgrade");
                }
            }
            accepted = takeover_listener.readable() => {
                if let Ok(mut guard) = accepted {
                    guard.clear_ready();
                }
                if let Ok(peer) = Channel::accept(takeover_listener.get_ref().as_fd())
                    && takeover::answer(config, &peer).await
                {
                    return Ended::Takeover(peer);
                }
            }
        }
    }
}

fn died(status: std::io::Result<std::process::ExitStatus>) -> Ended {
    match status {
        Ok(status) if status.code() == Some(i32::from(WORKER_FATAL_EXIT)) => Ended::Fatal,
        Ok(status) => match status.signal() {
            Some(signal) => Ended::Died("signal", format!("killed by signal {signal}")),
            None => Ended::Died("exit", format!("exited with {status}")),
        },
        Err(err) => Ended::Died("exit", format!("cannot wait for it: {err}")),
    }
}

/// Applies one message of the worker.
fn apply(
    message: Message,
    fds: Vec<std::os::fd::OwnedFd>,
    held: &mut Handover,
    report: &mut StartReport,
) {
    match message {
        Message::FuseOpened(connection) => {
            tracing::debug!(
                dataset = connection.name,
                connection = connection.connection,
                "holding a fuse connection"
            );
            if let Err(err) = held.hold(connection, fds) {
                tracing::warn!(error = %err, "cannot hold a fuse connection");
            }
        }
        Message::FuseEnded { connection, id } => held.release(connection, id),
        Message::Resumed { stall_seconds } => {
            tracing::info!(
                stall_ms = stall_seconds * 1e3,
                "the worker serves every fuse connection again"
            );
            report.longest_stall_seconds = report.longest_stall_seconds.max(stall_seconds);
        }
        Message::Heartbeat | Message::Quiesced { .. } => {}
        other => tracing::warn!(message = ?other, "unexpected message from the worker"),
    }
}

/// Kills the spare worker, if one waits, and reaps it (left to tokio's
/// orphan reaping, it could stay a zombie for as long as an idle supervisor
/// lives; and before an exec, the next binary knows no child of ours).
async fn discard(standby: &mut Option<Worker>) {
    if let Some(mut standby) = standby.take() {
        kill(&mut standby).await;
    }
}

/// Applies every message the worker queued before it ended.
fn drain(worker: &Worker, held: &mut Handover, report: &mut StartReport) {
    while let Ok(Some((message, fds))) = worker.channel.try_recv() {
        apply(message, fds, held, report);
    }
}

/// SIGKILL, and a bounded wait for the end; marks when serving stopped.
async fn kill(worker: &mut Worker) {
    let _ = worker.child.start_kill();
    let _ = tokio::time::timeout(KILLED_EXIT_WAIT, worker.child.wait()).await;
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn stop_worker(worker: &mut Worker) {
    if let Some(pid) = worker.child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_WAIT, worker.child.wait())
        .await
        .is_err()
    {
        kill(worker).await;
    }
}

/// The old supervisor's side of a takeover: quiesce the worker, stop it,
/// send everything to `peer`. On failure the caller starts a worker again.
async fn hand_over(
    config: &Config,
    worker: Worker,
    held: &mut Handover,
    report: &mut StartReport,
    peer: &Channel,
) -> std::io::Result<()> {
    let handed = stop_for_handover(config, worker, held, report).await;
    held.send(peer, &handed)?;
    // Until the new one confirms, this one can still serve on.
    let ready = peer.readiness()?;
    match tokio::time::timeout(takeover::CONFIRM_WAIT, peer.recv_async(&ready)).await {
        Ok(Ok(Some((Message::TakenOver, _)))) => Ok(()),
        Ok(Ok(other)) => Err(std::io::Error::other(format!(
            "the new agent did not confirm the takeover: {other:?}"
        ))),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the new agent did not confirm the takeover",
        )),
    }
}

/// Quiesces the worker (open writers finish, bounded), stops it, and gives
/// the report the next supervisor starts from.
async fn stop_for_handover(
    config: &Config,
    mut worker: Worker,
    held: &mut Handover,
    report: &mut StartReport,
) -> StartReport {
    let wait = config.supervision.takeover_write_wait;
    let quiesce = Message::Quiesce {
        write_wait_ms: wait.as_millis() as u64,
    };
    if worker.channel.send(&quiesce, &[]).is_ok() {
        let deadline = tokio::time::Instant::now() + wait + QUIESCE_SLACK;
        loop {
            tokio::select! {
                message = worker.channel.recv_async(&worker.ready) => match message {
                    Ok(Some((Message::Quiesced { writers_left }, _))) => {
                        tracing::info!(writers_left, "worker quiesced");
                        break;
                    }
                    Ok(Some((message, fds))) => apply(message, fds, held, report),
                    Ok(None) | Err(_) => break,
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("worker did not quiesce in time; stopping it");
                    break;
                }
            }
        }
    }
    kill(&mut worker).await;
    let stalled_since = monotonic_ns();
    drain(&worker, held, report);
    let mut handed = report.clone();
    handed.takeovers += 1;
    handed.stalled_since_ns = Some(stalled_since);
    handed.crash_loop = None;
    handed
}
