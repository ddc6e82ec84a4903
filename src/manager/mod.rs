//! The manager: desired state, per-name serialisation, mounting with deadlines,
//! health probes with recovery, and the start-up reconcile. The API hands it
//! typed commands; it never blocks the API on a mount or a probe.

mod attach;
mod error;
mod probe;
mod reconcile;
mod resume;
mod root;
mod warm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use attach::{Attached, FuseAttachment, MAX_MOUNTS_IN_KERNEL};
pub use error::ManagerError;
pub use resume::Resumable;

use crate::metrics::Metrics;
use crate::operation::MountOperation;
use crate::s3fs::{CredentialsDir, FileEndpointPolicy};
use crate::spec::{DatasetName, MountSpec, S3Source, SourceSpec};
use crate::state::{StateStore, StoredMount};
use crate::sys::Mounter;

/// Health probes running at once across all datasets: a probe round of a
/// thousand datasets queues instead of starting a thousand requests.
const MAX_PROBES_IN_FLIGHT: usize = 16;

/// Room proven for the state file beyond its current size before a change
/// (one more dataset's entry, with room to spare).
const STATE_HEADROOM: usize = 64 * 1024;
/// Lifecycle states of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MountState {
    /// Being mounted.
    Pending,
    /// Mounted and its last probe passed.
    Mounted,
    /// Mounted but its last probe failed; recovery is under way.
    Degraded,
    /// Not mounted; recovery keeps trying with backoff.
    Failed,
    /// Being unmounted.
    Unmounting,
}

impl MountState {
    /// Every state, for the `mounts` gauge.
    pub const ALL: [MountState; 5] = [
        MountState::Pending,
        MountState::Mounted,
        MountState::Degraded,
        MountState::Failed,
        MountState::Unmounting,
    ];

    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MountState::Pending => "Pending",
            MountState::Mounted => "Mounted",
            MountState::Degraded => "Degraded",
            MountState::Failed => "Failed",
            MountState::Unmounting => "Unmounting",
        }
    }
}

impl std::str::FromStr for MountState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MountState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}: expected Pending, Mounted, Degraded, Failed or Unmounting"
                )
            })
    }
}

/// The result of the last health probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// When the last probe finished.
    pub last_probe: Option<DateTime<Utc>>,
    /// How long it took.
    pub latency_seconds: Option<f64>,
}

/// A dataset as the API shows it (secrets redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountView {
    /// The dataset name.
    pub name: String,
    /// Where it is mounted: `<root>/<name>`.
    pub path: PathBuf,
    /// The source, with secrets redacted.
    pub source: SourceSpec,
    /// Whether it is mounted read-only.
    pub read_only: bool,
    /// The caller's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifecycle state.
    pub state: MountState,
    /// The last error (mount, probe or recovery), if any.
    pub last_error: Option<String>,
    /// The last probe.
    pub health: Health,
    /// When the dataset was first requested.
    pub created_at: DateTime<Utc>,
    /// Who asked for it (`uid:N`, `token:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Bumped on every re-mount.
    pub generation: u64,
}

/// Tunables of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The shared root; datasets live at `<root>/<name>`.
    pub root: PathBuf,
    /// Deadline for one whole mount (resolve, check, mount, verify).
    pub mount_timeout: Duration,
    /// Deadline for one unmount before it is escalated to a forced detach.
    pub unmount_timeout: Duration,
    /// Time between health probes of one dataset.
    pub probe_interval: Duration,
    /// Deadline for one health probe.
    pub probe_timeout: Duration,
    /// Longest wait between recovery attempts.
    pub max_backoff: Duration,
    /// The most threads of the FUSE serving pool (shared by all S3 mounts).
    pub fuse_threads: usize,
    /// Metadata cache TTL of S3 mounts (unless `immutable`).
    pub metadata_ttl: Duration,
    /// How long S3 mounts cache a name that does not exist (unless `immutable`).
    pub negative_ttl: Duration,
    /// The memory budget for prefetched S3 data, shared by all mounts.
    pub prefetch_budget: std::sync::Arc<crate::s3fs::PrefetchBudget>,
    /// The memory budget for S3 data being written, shared by all mounts.
    pub write_budget: std::sync::Arc<crate::s3fs::write::WriteBudget>,
    /// The node cache shared by all S3 mounts (`--cache-dir`; none: off).
    pub node_cache: Option<std::sync::Arc<crate::s3fs::node_cache::NodeCache>>,
    /// Endpoints allowed despite the egress rules (`--allow-endpoint`).
    pub egress: crate::egress::EgressPolicy,
    /// Which `file://` endpoints are allowed.
    pub file_policy: FileEndpointPolicy,
    /// The one directory S3 credentials files may be read from.
    pub credentials_dir: CredentialsDir,
    /// Unmount FUSE mounts on a graceful stop (NFS mounts always stay).
    pub unmount_fuse_on_stop: bool,
    /// Who may do what through the API (`--policy`).
    pub access: std::sync::Arc<crate::api::access::Access>,
}

impl ManagerConfig {
    /// Defaults for a root.
    pub fn new(root: PathBuf) -> Self {
        ManagerConfig {
            root,
            mount_timeout: Duration::from_secs(30),
            unmount_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
            fuse_threads: 8,
            metadata_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            prefetch_budget: crate::s3fs::PrefetchBudget::new(
                crate::s3fs::prefetch::DEFAULT_PREFETCH_MEMORY,
            ),
            write_budget: crate::s3fs::write::WriteBudget::new(
                crate::s3fs::write::WriteBudget::DEFAULT_BYTES,
            ),
            node_cache: None,
            egress: crate::egress::EgressPolicy::default(),
            file_policy: FileEndpointPolicy::default(),
            credentials_dir: CredentialsDir::default(),
            unmount_fuse_on_stop: false,
            access: std::sync::Arc::new(
                crate::api::access::Access::new(None).expect("no policy file to read"),
            ),
        }
    }
}

/// What a PUT did.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The dataset now.
    pub mount: MountView,
    /// True when this call mounted it (201), false when it was already there (200).
    pub created: bool,
}

/// The runtime record of one dataset.
#[derive(Debug, Clone)]
struct Record {
    spec: MountSpec,
    state: MountState,
    last_error: Option<String>,
    health: Health,
    created_at: DateTime<Utc>,
    created_by: Option<String>,
    generation: u64,
}

/// A reading of the mount table shared by health probes: when it was read,
/// the `mount_changes` it had seen, the table.
type MountTableSnapshot = (Instant, u64, Arc<Vec<crate::sys::MountEntry>>);

/// One dataset's slot: its operation lock, its record, its kernel mount.
#[derive(Debug)]
struct Slot {
    /// Serialises PUT, DELETE and recovery of this name.
    op: tokio::sync::Mutex<()>,
    record: watch::Sender<Record>,
    attached: Mutex<Option<Attached>>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by a probe's blocking call while it runs inside the mount (a hung
    /// server holds one thread, and this, until it answers).
    probe_gate: Arc<tokio::sync::Mutex<()>>,
    /// The latest warm-up of the dataset (dropped, and so stopped, with it).
    warmup: Mutex<Option<Arc<crate::s3fs::fs::Warmup>>>,
}

impl Slot {
    fn new(record: Record) -> Arc<Self> {
        Arc::new(Slot {
            op: tokio::sync::Mutex::new(()),
            record: watch::channel(record).0,
            attached: Mutex::new(None),
            probe: Mutex::new(None),
            probe_gate: Arc::new(tokio::sync::Mutex::new(())),
            warmup: Mutex::new(None),
        })
    }

    fn record(&self) -> Record {
        self.record.borrow().clone()
    }

    fn take_attached(&self) -> Option<Attached> {
        lock(&self.attached).take()
    }

    fn set_attached(&self, attached: Attached) {
        *lock(&self.attached) = Some(attached);
    }

    fn stop_probe(&self) {
        if let Some(handle) = lock(&self.probe).take() {
            handle.abort();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stop_probe();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct Inner {
    config: ManagerConfig,
    mounter: Arc<dyn Mounter>,
    store: StateStore,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// The desired state as on disk; locked only to update and save it.
    desired: tokio::sync::Mutex<BTreeMap<String, StoredMount>>,
    ready: AtomicBool,
    warnings: Mutex<Vec<String>>,
    /// Datasets whose mount call outlived its deadline and is still inside
    /// the kernel (a server that never answers): no second mount call on the
    /// same path until it returns, so hung calls do not pile up and a late
    /// completion is undone before anything else is mounted there.
    mounts_in_kernel: Mutex<HashSet<String>>,
    /// Probes running at once, across all datasets.
    probes_in_flight: tokio::sync::Semaphore,
    /// Mount and unmount calls this agent has made (a probe's shared
    /// mount-table snapshot is stale once this moved).
    mount_changes: Arc<AtomicU64>,
    /// The probes' shared mount-table snapshot.
    probe_table: tokio::sync::Mutex<Option<MountTableSnapshot>>,
    /// S3 clients shared by datasets of the same endpoint and credentials.
    s3_clients: crate::s3fs::SharedClients,
    /// The supervisor, when this process is a supervised worker: it holds
    /// every FUSE connection this process opens.
    link: std::sync::OnceLock<Arc<crate::worker::WorkerLink>>,
    /// FUSE connections a dead worker served, served again and waiting for
    /// the reconcile to give them to their datasets.
    resumed: Mutex<HashMap<String, Vec<FuseAttachment>>>,
    /// Why the supervisor's workers keep dying, while it backs off.
    supervision_problem: Mutex<Option<String>>,
}

/// The manager handle (cheap to clone).
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("root", &self.inner.config.root)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager over `mounter` and `store`; call [`Manager::start`] next.
    pub fn new(
        config: ManagerConfig,
        mounter: Arc<dyn Mounter>,
        store: StateStore,
        metrics: Arc<Metrics>,
    ) -> Self {
        Manager {
            inner: Arc::new(Inner {
                config,
                mounter,
                store,
                metrics,
                slots: Mutex::new(HashMap::new()),
                desired: tokio::sync::Mutex::new(BTreeMap::new()),
                ready: AtomicBool::new(false),
                warnings: Mutex::new(Vec::new()),
                mounts_in_kernel: Mutex::new(HashSet::new()),
                probes_in_flight: tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT),
                mount_changes: Arc::new(AtomicU64::new(0)),
                probe_table: tokio::sync::Mutex::new(None),
                s3_clients: crate::s3fs::SharedClients::default(),
                link: std::sync::OnceLock::new(),
                resumed: Mutex::new(HashMap::new()),
                supervision_problem: Mutex::new(None),
            }),
        }
    }

    /// Prepares the root (tmpfs, rshared, propagation proven by a canary),
    /// loads the desired state and reconciles it with the mount table. On
    /// success the manager is ready.
    pub async fn start(&self) -> Result<(), ManagerError> {
        self.prepare_root().await?;
        self.reconcile().await?;
        self.inner.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether start-up finished (and the supervisor is not backing off a
    /// worker that keeps dying).
    pub fn is_ready(&self) -> bool {
        self.restored() && lock(&self.inner.supervision_problem).is_none()
    }

    /// Things an operator should know about (e.g. a corrupt state file).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = lock(&self.inner.warnings).clone();
        warnings.extend(lock(&self.inner.supervision_problem).clone());
        warnings.extend(self.inner.config.access.problem());
        warnings
    }

    /// Reports (or clears) a problem of the supervision in `/readyz`.
    pub fn set_supervision_problem(&self, problem: Option<String>) {
        *lock(&self.inner.supervision_problem) = problem;
    }

    /// Makes this manager a supervised worker's: every FUSE connection it
    /// opens is handed to the supervisor, with its table journals.
    pub fn set_link(&self, link: Arc<crate::worker::WorkerLink>) {
        let _ = self.inner.link.set(link);
    }

    /// The names of every dataset (for per-rule limits).
    pub fn names(&self) -> Vec<String> {
        lock(&self.inner.slots).keys().cloned().collect()
    }

    /// The state store (the API appends its audit lines there).
    pub fn store(&self) -> &StateStore {
        &self.inner.store
    }

    /// Who may do what through the API.
    pub fn access(&self) -> &crate::api::access::Access {
        &self.inner.config.access
    }

    /// Files open for writing in every FUSE dataset.
    pub fn open_writers(&self) -> usize {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).values().cloned().collect();
        slots
            .iter()
            .map(|slot| match &*lock(&slot.attached) {
                Some(Attached::Fuse(fuse)) => fuse.filesystem.open_writers(),
                _ => 0,
            })
            .sum()
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.inner.config.root
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.inner.config.root.join(name)
    }

    fn view(&self, name: &str, record: &Record) -> MountView {
        let spec = record.spec.redacted();
        MountView {
            name: name.to_string(),
            path: self.path_of(name),
            source: spec.source,
            read_only: spec.read_only,
            labels: spec.labels,
            state: record.state,
            last_error: record.last_error.clone(),
            health: record.health.clone(),
            created_at: record.created_at,
            created_by: record.created_by.clone(),
            generation: record.generation,
        }
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        lock(&self.inner.slots).get(name).cloned()
    }

    fn is_current(&self, name: &str, slot: &Arc<Slot>) -> bool {
        self.slot(name)
            .is_some_and(|current| Arc::ptr_eq(&current, slot))
    }

    fn remove_slot(&self, name: &str, slot: &Arc<Slot>) {
        let mut slots = lock(&self.inner.slots);
        if slots
            .get(name)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            slots.remove(name);
        }
        drop(slots);
        self.refresh_state_gauge();
    }

    fn set_state(&self, slot: &Slot, state: MountState, error: Option<String>) {
        slot.record.send_modify(|record| {
            record.state = state;
            if error.is_some() || state == MountState::Mounted {
                record.last_error = error;
            }
        });
        self.refresh_state_gauge();
    }

    fn refresh_state_gauge(&self) {
        let mut counts: HashMap<(&'static str, MountState), i64> = HashMap::new();
        for slot in lock(&self.inner.slots).values() {
            let record = slot.record.borrow();
            *counts
                .entry((record.spec.source.backend().as_str(), record.state))
                .or_default() += 1;
        }
        for backend in crate::spec::Backend::ALL {
            for state in MountState::ALL {
                let n = counts.get(&(backend.as_str(), state)).copied().unwrap_or(0);
                self.inner
                    .metrics
                    .mounts
                    .with_label_values(&[backend.as_str(), state.as_str()])
                    .set(n);
            }
        }
    }

    /// Every dataset, sorted by name.
    pub fn list(&self) -> Vec<MountView> {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.inner.slots)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect();
        let mut views: Vec<MountView> = slots
            .iter()
            .map(|(name, slot)| self.view(name, &slot.record()))
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// One dataset.
    pub fn get(&self, name: &DatasetName) -> Result<MountView, ManagerError> {
        let slot = self.known_slot(name)?;
        Ok(self.view(name, &slot.record()))
    }

    /// Whether the start has restored every dataset of the state.
    fn restored(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// The slot of `name`; while starting, a name not restored yet may still
    /// be in the state: NotReady, not NotFound.
    fn known_slot(&self, name: &str) -> Result<Arc<Slot>, ManagerError> {
        match self.slot(name) {
            Some(slot) => Ok(slot),
            None if !self.restored() => Err(ManagerError::NotReady),
            None => Err(ManagerError::NotFound {
                name: name.to_string(),
            }),
        }
    }

    /// Waits until the dataset reaches `state`, or `timeout` passes.
    pub async fn wait_for(
        &self,
        name: &DatasetName,
        state: MountState,
        timeout: Duration,
    ) -> Result<MountView, ManagerError> {
        let name = name.as_str();
        let slot = self.known_slot(name)?;
        let mut receiver = slot.record.subscribe();
        let reached = tokio::time::timeout(timeout, receiver.wait_for(|r| r.state == state)).await;
        match reached {
            Ok(Ok(record)) => Ok(self.view(name, &record)),
            // The sender is gone: the dataset was deleted meanwhile.
            Ok(Err(_)) => Err(ManagerError::NotFound {
                name: name.to_string(),
            }),
            Err(_) => Err(ManagerError::WaitTimeout {
                name: name.to_string(),
                state,
                current: slot.record().state,
                waited: timeout,
            }),
        }
    }

    /// Mounts `spec` as `name` (PUT) on behalf of `caller` (recorded as the
    /// creator of a new dataset). Identical spec: the existing dataset;
    /// another spec under the name: conflict. A failure leaves nothing behind.
    pub async fn put_by(
        &self,
        name: &DatasetName,
        spec: MountSpec,
        caller: Option<String>,
    ) -> Result<PutOutcome, ManagerError> {
        let name = name.as_str();
        spec.validate().map_err(ManagerError::InvalidSpec)?;
        // A credentials file outside the credentials directory is refused
        // here, before anything is made or opened.
        if let SourceSpec::S3(S3Source {
            credentials: Some(credentials),
            ..
        }) = &spec.source
        {
            self.inner
                .config
                .credentials_dir
                .locate(credentials)
                .map_err(|e| ManagerError::Store {
                    name: name.to_string(),
                    source: e.into(),
                })?;
        }
        if !self.is_ready() {
            return Err(ManagerError::NotReady);
        }
        loop {
            let (slot, is_new) = self.slot_or_insert(name, &spec, caller.clone());
            if is_new {
                self.refresh_state_gauge();
                return self.put_new(name, spec, slot).await;
            }
            let _op = slot.op.lock().await;
            if !self.is_current(name, &slot) {
                // Deleted (or failed) while we waited: try again from scratch.
                continue;
            }
            let record = slot.record();
            return if record.spec == spec {
                Ok(PutOutcome {
                    mount: self.view(name, &record),
                    created: false,
                })
            } else {
                Err(ManagerError::Conflict {
                    name: name.to_string(),
                })
            };
        }
    }

    /// The slot of `name`, or a new Pending one (true) registered for it.
    fn slot_or_insert(
        &self,
        name: &str,
        spec: &MountSpec,
        caller: Option<String>,
    ) -> (Arc<Slot>, bool) {
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(name) {
            return (slot.clone(), false);
        }
        let slot = Slot::new(Record {
            spec: spec.clone(),
            state: MountState::Pending,
            last_error: None,
            health: Health::default(),
            created_at: Utc::now(),
            created_by: caller,
            generation: 1,
        });
        slots.insert(name.to_string(), slot.clone());
        (slot, true)
    }

    async fn put_new(
        &self,
        name: &str,
        spec: MountSpec,
        slot: Arc<Slot>,
    ) -> Result<PutOutcome, ManagerError> {
        let _op = slot.op.lock().await;
        let backend = spec.source.backend().as_str();
        let started = Instant::now();
        // Nothing changes unless the intent can be made durable.
        if let Err(err) = self.check_state_writable().await {
            self.remove_slot(name, &slot);
            self.inner
                .store
                .audit(MountOperation::Mount, name, Some(err.to_string()));
            return Err(err);
        }
        let attached = match self.attach_fresh(name, &spec).await {
            Ok(attached) => attached,
            Err(err) => {
                self.inner.metrics.observe_operation(
                    backend,
                    MountOperation::Mount,
                    false,
                    started.elapsed(),
                );
                self.remove_slot(name, &slot);
                tracing::warn!(dataset = name, error = %err, "mount failed; nothing left behind");
                self.inner
                    .store
                    .audit(MountOperation::Mount, name, Some(err.to_string()));
                return Err(err);
            }
        };
        let record = slot.record();
        let stored = StoredMount {
            spec: spec.clone(),
            created_at: record.created_at,
            generation: record.generation,
            created_by: record.created_by.clone(),
        };
        if let Err(err) = self
            .persist(|desired| {
                desired.insert(name.to_string(), stored);
            })
            .await
        {
            self.detach_quietly(name, Some(attached)).await;
            self.remove_dir(name);
            self.remove_slot(name, &slot);
            self.inner.metrics.observe_operation(
                backend,
                MountOperation::Mount,
                false,
                started.elapsed(),
            );
            return Err(err);
        }
        slot.set_attached(attached);
        self.set_state(&slot, MountState::Mounted, None);
        self.set_healthy(name, &spec, true);
        self.inner.metrics.observe_operation(
            backend,
            MountOperation::Mount,
            true,
            started.elapsed(),
        );
        self.spawn_probe(name, &slot);
        self.inner.store.audit(MountOperation::Mount, name, None);
        tracing::info!(dataset = name, path = %self.path_of(name).display(), took_ms = started.elapsed().as_millis() as u64, "mounted");
        Ok(PutOutcome {
            mount: self.view(name, &slot.record()),
            created: true,
        })
    }

    /// Unmounts and forgets `name` (DELETE). Busy: an error unless `force`,
    /// which detaches lazily.
    pub async fn delete(&self, name: &DatasetName, force: bool) -> Result<MountView, ManagerError> {
        let name = name.as_str();
        let not_found = || ManagerError::NotFound {
            name: name.to_string(),
        };
        let slot = self.known_slot(name)?;
        let _op = slot.op.lock().await;
        if !self.is_current(name, &slot) {
            return Err(not_found());
        }
        let before = slot.record();
        let backend = before.spec.source.backend().as_str();
        let started = Instant::now();
        // Nothing is unmounted unless the intent can be made durable.
        self.check_state_writable().await?;
        slot.stop_probe();
        // A dataset already known to be unhealthy is detached without the
        // polite try, so there is nothing to wait for. Otherwise a probe still
        // in the mount would make that try fail with EBUSY: wait for it, and
        // if it stays stuck the backend is dead even if no probe has said so.
        let degraded = matches!(before.state, MountState::Degraded | MountState::Failed)
            || !self.settle_probe(&slot).await;
        self.set_state(&slot, MountState::Unmounting, None);
        let attached = slot.take_attached();
        if let Err(failure) = self.detach(name, attached, force, degraded).await {
            self.inner.metrics.observe_operation(
                backend,
                MountOperation::Unmount,
                false,
                started.elapsed(),
            );
            // Still mounted: put the dataset back as it was.
            if let Some(attached) = failure.attached {
                slot.set_attached(attached);
            }
            slot.record
                .send_modify(|record| record.state = before.state);
            self.refresh_state_gauge();
            self.spawn_probe(name, &slot);
            return Err(failure.error);
        }
        self.remove_dir(name);
        let persisted = self
            .persist(|desired| {
                desired.remove(name);
            })
            .await;
        self.remove_slot(name, &slot);
        self.inner
            .metrics
            .forget_dataset(name, before.spec.source.backend().as_str());
        self.inner.metrics.observe_operation(
            backend,
            MountOperation::Unmount,
            persisted.is_ok(),
            started.elapsed(),
        );
        self.inner.store.audit(
            MountOperation::Unmount,
            name,
            persisted.as_ref().err().map(ToString::to_string),
        );
        persisted?;
        tracing::info!(dataset = name, force, "unmounted");
        let mut record = before;
        record.state = MountState::Unmounting;
        Ok(self.view(name, &record))
    }

    /// A graceful stop: probes end; FUSE mounts are unmounted only if
    /// configured; kernel (NFS) mounts always stay for the next start.
    pub async fn shutdown(&self) {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.inner.slots)
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, slot) in slots {
            slot.stop_probe();
            if !self.inner.config.unmount_fuse_on_stop {
                continue;
            }
            let _op = slot.op.lock().await;
            let attached = slot.take_attached();
            if matches!(attached, Some(Attached::Fuse(_))) {
                self.detach_quietly(&name, attached).await;
                tracing::info!(dataset = name, "fuse mount unmounted on stop");
            } else if let Some(attached) = attached {
                slot.set_attached(attached);
            }
        }
    }

    /// Proves that the state file can be written now (directory writable,
    /// room for it), before a PUT or DELETE changes anything.
    async fn check_state_writable(&self) -> Result<(), ManagerError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.check_writable(store.size() + STATE_HEADROOM))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(ManagerError::State)
    }

    /// Updates the desired state and saves it before returning.
    async fn persist(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredMount>),
    ) -> Result<(), ManagerError> {
        let mut desired = self.inner.desired.lock().await;
        let mut next = desired.clone();
        change(&mut next);
        let store = self.inner.store.clone();
        let to_save = next.clone();
        tokio::task::spawn_blocking(move || store.save(&to_save))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(ManagerError::State)?;
        *desired = next;
        Ok(())
    }

    fn set_healthy(&self, name: &str, spec: &MountSpec, healthy: bool) {
        self.inner
            .metrics
            .mount_healthy
            .with_label_values(&[name, spec.source.backend().as_str()])
            .set(i64::from(healthy));
    }

    fn remove_dir(&self, name: &str) {
        let path = self.path_of(name);
        match std::fs::remove_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove mount directory")
            }
        }
    }
}
