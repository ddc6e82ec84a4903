//! Health probes and recovery. Each dataset has one probe task: a statfs and a
//! readdir of its path on a blocking thread under a deadline (at most one in
//! flight, so a hung server costs one thread), plus mount-table checks.
//! Failures mark the dataset Degraded; structural failures (gone, stacked,
//! stale, FUSE server ended) or repeated I/O failures of a FUSE mount trigger a
//! re-mount at the same path (lazy detach, fresh mount: both propagate to
//! pods), with backoff. An NFS mount whose server is down stays Degraded until
//! a probe passes again.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::manager::{Attached, Manager, ManagerError, MountState, Slot, lock};
use crate::spec::{MountSpec, SourceSpec};
use crate::sys::mounts_at;

/// Consecutive I/O failures before a dataset is re-mounted.
const IO_FAILURES_BEFORE_REMOUNT: u32 = 3;

/// Why a probe failed.
#[derive(Debug, Clone)]
pub(crate) struct ProbeFailure {
    /// The `reason` label of `recoveries_total`.
    reason: &'static str,
    /// The operator-facing message.
    message: String,
    /// Whether the mount is certainly broken (re-mount at once).
    structural: bool,
}

impl ProbeFailure {
    fn structural(reason: &'static str, message: String) -> Self {
        ProbeFailure {
            reason,
            message,
            structural: true,
        }
    }

    fn transient(reason: &'static str, message: String) -> Self {
        ProbeFailure {
            reason,
            message,
            structural: false,
        }
    }
}

impl Manager {
    /// Starts (or restarts) the probe task of a dataset.
    pub(super) fn spawn_probe(&self, name: &str, slot: &Arc<Slot>) {
        let manager = self.clone();
        let dataset = name.to_string();
        let weak = Arc::downgrade(slot);
        let handle = tokio::spawn(async move { manager.probe_loop(dataset, weak).await });
        if let Some(old) = lock(&slot.probe).replace(handle) {
            old.abort();
        }
    }

    /// Waits (at most one probe deadline) for a probe's blocking call that
    /// is still inside the mount: its open directory would make a normal
    /// unmount fail with EBUSY. False if it is still there: the backend does
    /// not answer (the probe holds the mount busy until it does).
    pub(super) async fn settle_probe(&self, slot: &Slot) -> bool {
        tokio::time::timeout(self.inner.config.probe_timeout, slot.probe_gate.lock())
            .await
            .is_ok()
    }

    fn backoff(&self, failures: u32) -> Duration {
        let config = &self.inner.config;
        let base = config.probe_interval.min(Duration::from_secs(1));
        let exp = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
        exp.min(config.max_backoff).max(base)
    }

    async fn probe_loop(self, name: String, slot: Weak<Slot>) {
        let mut failures: u32 = 0;
        loop {
            let wait = if failures == 0 {
                self.inner.config.probe_interval
            } else {
                self.backoff(failures)
            };
            tokio::time::sleep(wait).await;
            let Some(slot) = slot.upgrade() else { return };
            if !self.is_current(&name, &slot) {
                return;
            }
            let record = slot.record();
            let outcome = if record.state == MountState::Failed {
                Err(ProbeFailure::structural(
                    "not_mounted",
                    record
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not mounted".to_string()),
                ))
            } else {
                self.probe_once(&name, &slot).await
            };
            let backend = record.spec.source.backend().as_str();
            match outcome {
                Ok(latency) => {
                    failures = 0;
                    slot.record.send_modify(|r| {
                        r.health.last_probe = Some(Utc::now());
                        r.health.latency_seconds = Some(latency.as_secs_f64());
                    });
                    if record.state != MountState::Mounted {
                        tracing::info!(dataset = name, "probe passed; dataset healthy again");
                        self.set_state(&slot, MountState::Mounted, None);
                    }
                    self.set_healthy(&name, &record.spec, true);
                    self.inner
                        .metrics
                        .probe_duration
                        .with_label_values(&[backend])
                        .observe(latency.as_secs_f64());
                }
                Err(failure) => {
                    failures = failures.saturating_add(1);
                    self.set_healthy(&name, &record.spec, false);
                    slot.record
                        .send_modify(|r| r.health.last_probe = Some(Utc::now()));
                    if record.state != MountState::Failed {
                        tracing::warn!(dataset = name, reason = failure.reason, error = %failure.message, "probe failed");
                        self.set_state(&slot, MountState::Degraded, Some(failure.message.clone()));
                    }
                    // A kernel NFS mount whose server is slow or down heals
                    // by itself when the server answers again (the kernel
                    // retries and recovers its state): re-mounting it would
                    // only pile up mount calls stuck in the kernel on the same
                    // path. It is re-mounted only when broken (gone, stacked,
                    // stale file handle).
                    let heals_itself = matches!(record.spec.source, SourceSpec::Nfs(_));
                    if failure.structural
                        || (!heals_itself && failures >= IO_FAILURES_BEFORE_REMOUNT)
                    {
                        self.recover(&name, &slot, failure.reason).await;
                    }
                }
            }
        }
    }

    /// One probe: the FUSE server alive, exactly one mount on the path, and a
    /// statfs plus readdir answered within the deadline.
    async fn probe_once(&self, name: &str, slot: &Slot) -> Result<Duration, ProbeFailure> {
        let path = self.path_of(name);
        if let Some(Attached::Fuse(session)) = lock(&slot.attached).as_ref()
            && !session.is_serving()
        {
            return Err(ProbeFailure::structural(
                "session_ended",
                "fuse server stopped".to_string(),
            ));
        }
        let table = self
            .mount_table(name)
            .await
            .map_err(|e| ProbeFailure::transient("mountinfo", e.to_string()))?;
        match mounts_at(&table, &path).len() {
            1 => {}
            0 => {
                return Err(ProbeFailure::structural(
                    "unmounted",
                    format!("nothing is mounted at {}", path.display()),
                ));
            }
            n => {
                return Err(ProbeFailure::structural(
                    "stacked",
                    format!("{n} mounts stacked at {}", path.display()),
                ));
            }
        }
        let Ok(gate) = Arc::clone(&slot.probe_gate).try_lock_owned() else {
            return Err(ProbeFailure::transient(
                "timeout",
                "an earlier probe is still waiting for the backend".to_string(),
            ));
        };
        let started = Instant::now();
        let probe_path = path.clone();
        let call = tokio::task::spawn_blocking(move || {
            let result = nix::sys::statvfs::statvfs(&probe_path)
                .map_err(std::io::Error::from)
                .and_then(|_| std::fs::read_dir(&probe_path).map(|mut d| d.next().transpose()))
                .and_then(|entry| entry.map(drop));
            drop(gate);
            result
        });
        let deadline = self.inner.config.probe_timeout;
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(ProbeFailure::transient(
                "timeout",
                format!(
                    "probe of {} did not answer within {deadline:?}",
                    path.display()
                ),
            )),
            Ok(Err(join)) => Err(ProbeFailure::transient("io_error", join.to_string())),
            Ok(Ok(Ok(()))) => Ok(started.elapsed()),
            Ok(Ok(Err(err))) => {
                let errno = err.raw_os_error().unwrap_or(libc::EIO);
                let message = format!("probe of {}: {err}", path.display());
                if errno == libc::ENOTCONN {
                    Err(ProbeFailure::structural("disconnected", message))
                } else if errno == libc::ESTALE {
                    Err(ProbeFailure::structural("stale", message))
                } else {
                    Err(ProbeFailure::transient("io_error", message))
                }
            }
        }
    }

    /// Mounts `spec` at the dataset's path (nothing is mounted there now) and
    /// records it: attached, the next generation (persisted), Mounted and
    /// healthy. Returns the new generation.
    pub(super) async fn mount_again(
        &self,
        name: &str,
        slot: &Slot,
        spec: &MountSpec,
        generation: u64,
    ) -> Result<u64, ManagerError> {
        if let Err(e) = std::fs::create_dir_all(self.path_of(name)) {
            tracing::warn!(dataset = name, error = %e, "could not create mount directory");
        }
        let attached = self.attach(name, spec).await?;
        slot.set_attached(attached);
        let generation = generation + 1;
        slot.record.send_modify(|r| r.generation = generation);
        let _ = self
            .persist(|desired| {
                if let Some(stored) = desired.get_mut(name) {
                    stored.generation = generation;
                }
            })
            .await;
        self.set_state(slot, MountState::Mounted, None);
        self.set_healthy(name, spec, true);
        Ok(generation)
    }

    /// Re-mounts a broken dataset at the same path.
    pub(super) async fn recover(&self, name: &str, slot: &Arc<Slot>, reason: &'static str) {
        let _op = slot.op.lock().await;
        if !self.is_current(name, slot) {
            return;
        }
        let record = slot.record();
        let backend = record.spec.source.backend().as_str();
        let started = Instant::now();
        let attached = slot.take_attached();
        self.detach_quietly(name, attached).await;
        match self
            .mount_again(name, slot, &record.spec, record.generation)
            .await
        {
            Ok(generation) => {
                self.inner
                    .metrics
                    .recoveries
                    .with_label_values(&[name, reason])
                    .inc();
                self.inner
                    .metrics
                    .observe_operation(backend, "recover", true, started.elapsed());
                self.inner.store.audit("recover", name, None);
                tracing::info!(dataset = name, reason, generation, "re-mounted");
            }
            Err(err) => {
                self.inner
                    .metrics
                    .observe_operation(backend, "recover", false, started.elapsed());
                tracing::warn!(dataset = name, reason, error = %err, "re-mount failed; will retry");
                self.inner
                    .store
                    .audit("recover", name, Some(err.to_string()));
                self.set_state(slot, MountState::Failed, Some(err.to_string()));
            }
        }
    }
}
