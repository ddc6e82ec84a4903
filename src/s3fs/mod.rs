//! hotmount's S3 filesystem: the object store ([`store`]) and its credentials
//! files ([`credentials`]), the filesystem logic that tests drive without the
//! kernel ([`fs`]), and the thin fuser adapter ([`fuse`]).

pub mod credentials;
pub mod fs;
pub mod fuse;
pub mod keys;
pub mod prefetch;
pub mod store;
pub mod write;

pub use credentials::{CredentialsDir, CredentialsError};
pub use fs::{FsOptions, S3Filesystem};
pub use prefetch::PrefetchBudget;
pub use store::{Bucket, FileEndpointPolicy, SharedClients, StoreError, open_bucket};
