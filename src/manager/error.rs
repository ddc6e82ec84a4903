//! The manager's errors: one variant per failing step, each naming the dataset.

use std::time::Duration;

use crate::manager::MountState;
use crate::s3fs::StoreError;
use crate::spec::SpecError;
use crate::state::StateError;
use crate::sys::SysError;

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The name is not a valid dataset name.
    #[error("invalid name: {0}")]
    InvalidName(SpecError),
    /// The spec fails validation.
    #[error("invalid spec: {0}")]
    InvalidSpec(SpecError),
    /// No dataset of that name.
    #[error("mount {name} not found")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The dataset does not read through a node cache (not S3, `"cache":
    /// false`, a `file://` bucket, or no `--cache-dir`).
    #[error("mount {name} does not read through a node cache: nothing to warm ({reason})")]
    NoNodeCache {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A warm-up of the dataset is running already.
    #[error("mount {name}: a warm-up is running already (DELETE it first)")]
    WarmupRunning {
        /// The name.
        name: String,
    },
    /// No warm-up was started for the dataset.
    #[error("mount {name}: no warm-up was started")]
    NoWarmup {
        /// The name.
        name: String,
    },
    /// The name is taken by another spec.
    #[error("mount {name} exists with a different spec: delete it first")]
    Conflict {
        /// The name.
        name: String,
    },
    /// The mount is in use and `force` was not given.
    #[error("mount {name} is busy (files open): retry later or use force=true for a lazy detach")]
    Busy {
        /// The name.
        name: String,
    },
    /// `wait` timed out.
    #[error("mount {name} did not reach {state:?} within {waited:?} (it is {current:?})")]
    WaitTimeout {
        /// The name.
        name: String,
        /// The awaited state.
        state: MountState,
        /// The state now.
        current: MountState,
        /// How long we waited.
        waited: Duration,
    },
    /// The agent has not finished starting.
    #[error("agent is starting: state not reconciled yet")]
    NotReady,
    /// Opening or checking the S3 bucket failed.
    #[error("mount {name}: {source}")]
    Store {
        /// The name.
        name: String,
        /// The store's reason.
        source: StoreError,
    },
    /// The endpoint or server is one the agent does not connect to.
    #[error("mount {name}: {source}")]
    Egress {
        /// The name.
        name: String,
        /// Why it is refused.
        source: crate::egress::EgressError,
    },
    /// Resolving the NFS server failed.
    #[error("mount {name}: {source}")]
    Nfs {
        /// The name.
        name: String,
        /// The reason.
        source: crate::nfs::NfsError,
    },
    /// A mount step did not finish within its deadline.
    #[error("mount {name}: {step} did not finish within {seconds}s")]
    Timeout {
        /// The name.
        name: String,
        /// The step, naming its object (`nfs mount of 10.0.0.5:/data`).
        step: String,
        /// The deadline.
        seconds: u64,
    },
    /// An earlier mount call for this dataset outlived its deadline and is
    /// still waiting in the kernel.
    #[error(
        "mount {name}: an earlier mount attempt is still waiting in the kernel (its server does not answer): retry later"
    )]
    MountInProgress {
        /// The name.
        name: String,
    },
    /// Too many earlier mount calls (of any dataset) still wait in the kernel.
    #[error(
        "mount {name}: {waiting} earlier mount calls still wait in the kernel for servers that do not answer: retry later"
    )]
    TooManyHungMounts {
        /// The name.
        name: String,
        /// How many wait.
        waiting: usize,
    },
    /// The path is already a mount point hotmount did not make.
    #[error("mount {name}: {path} is already a mount point")]
    AlreadyMounted {
        /// The name.
        name: String,
        /// The path.
        path: std::path::PathBuf,
    },
    /// Something that is not a directory (a symlink, a file) is at the path.
    #[error(
        "mount {name}: {path} is not a directory (a symlink there is never followed); remove it"
    )]
    PathOccupied {
        /// The name.
        name: String,
        /// The path.
        path: std::path::PathBuf,
    },
    /// A system call failed.
    #[error("mount {name}: {source}")]
    Sys {
        /// The name (or `root`).
        name: String,
        /// The failing call.
        source: SysError,
    },
    /// The mount directory could not be made.
    #[error("mount {name}: create {path}: {source}")]
    Directory {
        /// The name.
        name: String,
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The root could not be prepared.
    #[error("root {path}: {reason}")]
    Root {
        /// The root.
        path: std::path::PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The desired state could not be saved.
    #[error(transparent)]
    State(#[from] StateError),
    /// A bug or a panicked task.
    #[error("internal error: {0}")]
    Internal(String),
}
