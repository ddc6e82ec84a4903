//! The operations hotmount names in metric labels, audit lines and errors:
//! one enum per family, so the same operation is spelled the same way in a
//! counter, an audit line and the error a caller reads.

use std::fmt;

/// What the agent does to a dataset's mount (label `op` of
/// `hotmount_mount_operations_total`, the `op` of an audit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountOperation {
    /// A dataset is mounted (a PUT, or a restore at start).
    Mount,
    /// A dataset is unmounted (a DELETE).
    Unmount,
    /// A broken or vanished mount is mounted again by the prober.
    Recover,
}

impl MountOperation {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MountOperation::Mount => "mount",
            MountOperation::Unmount => "unmount",
            MountOperation::Recover => "recover",
        }
    }
}

impl fmt::Display for MountOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the S3 filesystem makes of its object store (label `op` of
/// `hotmount_s3_requests_total`, and the request named in a store error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreRequest {
    /// A ranged GET of an object.
    Get,
    /// A HEAD of an object.
    Head,
    /// One listing (all its pages).
    List,
    /// A single-request upload.
    Put,
    /// One part of a multipart upload.
    PutPart,
    /// The completion of a multipart upload.
    CompleteMultipart,
    /// A server-side copy (rename).
    Copy,
    /// A DELETE of an object.
    Delete,
}

impl StoreRequest {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreRequest::Get => "get",
            StoreRequest::Head => "head",
            StoreRequest::List => "list",
            StoreRequest::Put => "put",
            StoreRequest::PutPart => "put_part",
            StoreRequest::CompleteMultipart => "complete_multipart",
            StoreRequest::Copy => "copy",
            StoreRequest::Delete => "delete",
        }
    }
}

impl fmt::Display for StoreRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
