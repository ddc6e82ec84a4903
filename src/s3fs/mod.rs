//! hotmount's S3 filesystem, by room: the object store and its clients
//! ([`store`], [`credentials`], [`local`] for `file://` buckets); the filesystem logic that tests drive
//! without the kernel ([`fs`], with its directory listings and scan-ahead);
//! the tables the kernel's node ids and handles refer to ([`inodes`],
//! [`handles`], which a new process can restore from a snapshot); which keys
//! can be names ([`keys`]); the read path ([`prefetch`], whose bytes stay
//! in the HTTP client's chunks: [`chunked`]) and the write path
//! ([`write`](self::write)); errors and their errnos ([`error`]); and the thin fuser
//! adapter ([`fuse`]).

pub mod chunked;
pub mod credentials;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod handles;
pub mod inodes;
pub mod journal;
pub mod keys;
pub mod local;
pub mod node_cache;
pub mod prefetch;
pub mod store;
#[cfg(test)]
pub(crate) mod test_store;
pub mod write;

pub use credentials::{CredentialsDir, CredentialsError};
pub use fs::{FsOptions, S3Filesystem};
pub use prefetch::PrefetchBudget;
pub use store::{Bucket, FileEndpointPolicy, SharedClients, StoreError, open_bucket};
