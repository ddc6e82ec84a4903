//! Why a filesystem operation failed, and the one place a failure becomes
//! the errno the kernel gets ([`FsError::errno`]; doc/SEMANTICS.md lists
//! them).

use crate::operation::StoreRequest;
use std::sync::Arc;

/// Why a filesystem operation failed; [`FsError::errno`] is what the kernel gets.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The name does not exist (a negative entry).
    #[error("{key}: no such file or directory")]
    NotFound {
        /// The key that was looked for.
        key: String,
    },
    /// The kernel named an inode this filesystem does not know (any more).
    #[error("inode {0} is unknown")]
    UnknownInode(u64),
    /// The kernel named a handle this filesystem does not know.
    #[error("handle {0} is unknown")]
    UnknownHandle(u64),
    /// A name longer than 255 bytes.
    #[error("name {0:?} is longer than 255 bytes")]
    NameTooLong(String),
    /// A name that cannot be a key segment (`/`, NUL, not UTF-8).
    #[error("name {0:?} is not a valid entry name")]
    InvalidName(String),
    /// A directory operation on a file.
    #[error("{0} is not a directory")]
    NotADirectory(String),
    /// A file operation on a directory.
    #[error("{0} is a directory")]
    IsADirectory(String),
    /// A modification on a read-only mount.
    #[error("{op} {target}: read-only filesystem")]
    ReadOnly {
        /// The refused operation.
        op: &'static str,
        /// What it was aimed at.
        target: String,
    },
    /// A modification this filesystem does not implement yet.
    #[error("{op} {target}: not supported by the s3 filesystem")]
    NotSupported {
        /// The refused operation.
        op: &'static str,
        /// What it was aimed at.
        target: String,
    },
    /// The object changed since it was opened.
    #[error("read {key}: object changed since open ({detail})")]
    ObjectChanged {
        /// The object.
        key: String,
        /// What differed.
        detail: String,
    },
    /// A write anywhere but at the end of a file being written.
    #[error("write {key} at {offset}: files are written sequentially, the end is at {end}")]
    NotSequential {
        /// The object.
        key: String,
        /// Where the write was aimed.
        offset: u64,
        /// Where the file ends.
        end: u64,
    },
    /// Overwriting (or truncating, or reopening for writing) an object.
    #[error("{key}: existing objects cannot be overwritten or modified")]
    Overwrite {
        /// The object.
        key: String,
    },
    /// The name exists already.
    #[error("{0}: file exists")]
    Exists(String),
    /// A directory that still holds entries.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// A rename of a directory: S3 has none to rename, and EXDEV makes `mv`
    /// copy the tree instead.
    #[error("{0}: directories cannot be renamed (EXDEV: mv copies them)")]
    DirectoryRename(String),
    /// A file created through this mount whose object is not complete yet.
    #[error("{0}: still being written (readable once its last descriptor is closed)")]
    BeingWritten(String),
    /// A prefetched part failed; every read that waited for it gets this.
    #[error("{0}")]
    Shared(Arc<FsError>),
    /// A prefetch task ended without an answer (the runtime shut down).
    #[error("read {key}: prefetch ended early ({detail})")]
    PrefetchAborted {
        /// The object.
        key: String,
        /// Why.
        detail: String,
    },
    /// The agent-wide write budget stayed spent.
    #[error(
        "write {key}: no room in the {budget}-byte write budget (files being written use it all)"
    )]
    NoSpace {
        /// The object.
        key: String,
        /// The budget in bytes.
        budget: u64,
    },
    /// A filesystem snapshot written by a build with another format.
    #[error(
        "filesystem snapshot format {found} cannot be loaded (this build reads format {expected})"
    )]
    SnapshotFormat {
        /// The snapshot's format.
        found: u32,
        /// The format this build reads.
        expected: u32,
    },
    /// A table journal handed over by the supervisor cannot be loaded.
    #[error("cannot load the table journals: {reason}")]
    Journal {
        /// Why.
        reason: String,
    },
    /// The object store refused or failed a request.
    #[error("{op} {key}: {source}")]
    Store {
        /// The request.
        op: StoreRequest,
        /// The key or prefix.
        key: String,
        /// The store's error.
        source: object_store::Error,
    },
}

impl FsError {
    /// The errno the kernel gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound { .. } | FsError::UnknownInode(_) => libc::ENOENT,
            FsError::UnknownHandle(_) => libc::EBADF,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::InvalidName(_) => libc::EINVAL,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::ReadOnly { .. } => libc::EROFS,
            FsError::NotSupported { .. } => libc::EOPNOTSUPP,
            FsError::ObjectChanged { .. }
            | FsError::PrefetchAborted { .. }
            | FsError::SnapshotFormat { .. }
            | FsError::Journal { .. } => libc::EIO,
            FsError::NotSequential { .. } => libc::EINVAL,
            FsError::Overwrite { .. } => libc::EPERM,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NoSpace { .. } => libc::ENOSPC,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::BeingWritten(_) => libc::EBUSY,
            FsError::DirectoryRename(_) => libc::EXDEV,
            FsError::Shared(inner) => inner.errno(),
            FsError::Store { source, .. } => match source {
                object_store::Error::NotFound { .. } => libc::ENOENT,
                object_store::Error::Precondition { .. } => libc::EIO,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => libc::EACCES,
                _ => libc::EIO,
            },
        }
    }

    /// Whether this is an expected answer (a missing name, a refused
    /// modification) rather than a failure worth a log line.
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno(),
            libc::ENOENT
                | libc::ENAMETOOLONG
                | libc::EROFS
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::EPERM
                | libc::EBUSY
                | libc::EXDEV
                | libc::EOPNOTSUPP
        )
    }
}
