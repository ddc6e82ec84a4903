//! Health probes and recovery. Each dataset has one probe task, its rounds
//! spread over the interval (a start offset drawn from the name), with a
//! bounded number of probes in flight across all datasets. A probe checks
//! that exactly one mount is on the path, then:
//! - a FUSE (S3) dataset: its connection is still served by the pool, and
//!   its backend answers one LIST, asked directly: the agent never waits on
//!   a mount it serves itself;
//! - a kernel (NFS) mount: a statfs and a readdir of its path on a blocking
//!   thread under a deadline (at most one in flight, so a hung server costs
//!   one thread).
//!
//! Failures mark the dataset Degraded. Only structural failures (gone,
//! stacked, stale, FUSE server ended) trigger a re-mount at the same path
//! (lazy detach, fresh mount: both propagate to pods), with backoff; a
//! backend outage leaves the mount and its open files in place until the
//! backend answers again.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::manager::{Attached, Manager, ManagerError, MountState, Slot, lock};
use crate::operation::MountOperation;
use crate::s3fs::S3Filesystem;
use crate::spec::MountSpec;
use crate::sys::mounts_at;

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
        // Datasets attached together (a restart, a batch of PUTs) do not
        // probe together.
        tokio::time::sleep(spread_offset(&name, self.inner.config.probe_interval)).await;
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
                    // A dataset whose backend is slow or down heals by
                    // itself when the backend answers again (the kernel
                    // retries an NFS server; the same FUSE connection serves
                    // again): re-mounting it would take it away from the
                    // pods, and for NFS pile up mount calls stuck in the
                    // kernel. It is re-mounted only when the mount itself is
                    // broken (gone, stacked, stale, its server ended).
                    if failure.structural {
                        self.recover(&name, &slot, failure.reason).await;
                    }
                }
            }
        }
    }

    /// One probe: exactly one mount on the path, and then for a FUSE
    /// dataset its connection still served and its backend answering (asked
    /// directly: this process never waits on a mount it serves, or it could
    /// deadlock with itself when it dies); for a kernel (NFS) mount a statfs
    /// plus readdir answered within the deadline, on a blocking thread.
    async fn probe_once(&self, name: &str, slot: &Slot) -> Result<Duration, ProbeFailure> {
        let path = self.path_of(name);
        let fuse = match lock(&slot.attached).as_ref() {
            Some(Attached::Fuse(fuse)) => {
                if !fuse.session.is_serving() {
                    return Err(ProbeFailure::structural(
                        "session_ended",
                        "fuse server stopped".to_string(),
                    ));
                }
                Some(Arc::clone(&fuse.filesystem))
            }
            _ => None,
        };
        let table = self
            .probe_mount_table(name)
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
        let _permit = self
            .inner
            .probes_in_flight
            .acquire()
            .await
            .map_err(|e| ProbeFailure::transient("probe_slots", e.to_string()))?;
        match fuse {
            Some(filesystem) => self.probe_backend(&path, &filesystem).await,
            None => self.probe_kernel_mount(&path, slot).await,
        }
    }

    /// A FUSE dataset's backend, asked directly within the deadline. A
    /// failure is transient: the mount and its connection stay (reads fail
    /// with EIO meanwhile) and serve again when the backend answers.
    async fn probe_backend(
        &self,
        path: &std::path::Path,
        filesystem: &S3Filesystem,
    ) -> Result<Duration, ProbeFailure> {
        let started = Instant::now();
        let deadline = self.inner.config.probe_timeout;
        match tokio::time::timeout(deadline, filesystem.probe_backend()).await {
            Err(_) => Err(ProbeFailure::transient(
                "timeout",
                format!(
                    "backend of {} did not answer within {deadline:?}",
                    path.display()
                ),
            )),
            Ok(Err(err)) => Err(ProbeFailure::transient(
                "backend",
                format!("backend of {}: {err}", path.display()),
            )),
            Ok(Ok(())) => Ok(started.elapsed()),
        }
    }

    /// A kernel mount: statfs plus readdir of the path on a blocking thread
    /// under the deadline (at most one in flight per dataset).
    async fn probe_kernel_mount(
        &self,
        path: &std::path::Path,
        slot: &Slot,
    ) -> Result<Duration, ProbeFailure> {
        let Ok(gate) = Arc::clone(&slot.probe_gate).try_lock_owned() else {
            return Err(ProbeFailure::transient(
                "timeout",
                "an earlier probe is still waiting for the backend".to_string(),
            ));
        };
        let started = Instant::now();
        let probe_path = path.to_path_buf();
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
        Ok(generation)
    }

    /// Marks a dataset mounted again Mounted and healthy.
    pub(super) fn mounted_again(&self, name: &str, slot: &Slot, spec: &MountSpec) {
        self.set_state(slot, MountState::Mounted, None);
        self.set_healthy(name, spec, true);
    }

    /// Saves the generations of re-mounted datasets (one write for a whole
    /// start-up reconcile); a failure is only logged: the mounts are in
    /// place, and the next re-mount saves again.
    pub(super) async fn persist_generations(&self, generations: &[(String, u64)]) {
        if generations.is_empty() {
            return;
        }
        let saved = self
            .persist(|desired| {
                for (name, generation) in generations {
                    if let Some(stored) = desired.get_mut(name) {
                        stored.generation = *generation;
                    }
                }
            })
            .await;
        if let Err(err) = saved {
            tracing::warn!(error = %err, "could not save the generations of re-mounted datasets");
        }
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
                self.inner.metrics.observe_operation(
                    backend,
                    MountOperation::Recover,
                    true,
                    started.elapsed(),
                );
                self.inner.store.audit(MountOperation::Recover, name, None);
                self.persist_generations(&[(name.to_string(), generation)])
                    .await;
                self.mounted_again(name, slot, &record.spec);
                tracing::info!(dataset = name, reason, generation, "re-mounted");
            }
            Err(err) => {
                self.inner.metrics.observe_operation(
                    backend,
                    MountOperation::Recover,
                    false,
                    started.elapsed(),
                );
                tracing::warn!(dataset = name, reason, error = %err, "re-mount failed; will retry");
                self.inner
                    .store
                    .audit(MountOperation::Recover, name, Some(err.to_string()));
                self.set_state(slot, MountState::Failed, Some(err.to_string()));
            }
        }
    }
}

/// Where in the probe interval the probes of dataset `name` fall: a fixed
/// offset drawn from the name, so that probes of many datasets are spread
/// over the interval.
fn spread_offset(name: &str, interval: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    let fraction = (hasher.finish() % 1000) as u32;
    interval * fraction / 1000
}
