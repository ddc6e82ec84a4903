//! hotmount: a node-local agent that mounts NFS exports and S3 buckets (served by
//! its own FUSE filesystem) under one rshared root, so running pods see datasets
//! appear and disappear live.
pub mod metrics;
pub mod nfs;
pub mod s3fs;
pub mod spec;
pub mod sys;
