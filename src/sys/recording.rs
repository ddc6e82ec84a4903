//! A [`Mounter`] that records every call and keeps a simulated mount table,
//! for unit and API tests (injected as a value, never chosen by `cfg!(test)`).
//! Failures can be injected per operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::errno::Errno;

use super::{
    FuseMountRequest, FuseSession, MountEntry, MountRequest, Mounter, SysError, UnmountMode,
};
use crate::s3fs::fuse::FuseAdapter;

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedCall {
    /// `mount`.
    Mount(MountRequest),
    /// `mount_fuse`.
    MountFuse(FuseMountRequest),
    /// `unmount`.
    Unmount(PathBuf, UnmountMode),
    /// `make_rshared`.
    MakeRshared(PathBuf),
    /// `abort_fuse_connection`.
    AbortFuse(u32),
    /// `verify_propagation`.
    VerifyPropagation(PathBuf),
}

#[derive(Debug, Default)]
struct Inner {
    calls: Vec<RecordedCall>,
    table: Vec<MountEntry>,
    next_id: i32,
    failures: HashMap<&'static str, Errno>,
    delays: HashMap<&'static str, Duration>,
    in_flight: usize,
    max_in_flight: usize,
}

/// The recording fake. Operation names for [`RecordingMounter::fail`] and
/// [`RecordingMounter::delay`]: `mount`, `mount_fuse`, `unmount` (every mode),
/// `unmount_normal` (only a plain, non-lazy unmount), `make_rshared`,
/// `verify_propagation`.
#[derive(Debug, Default)]
pub struct RecordingMounter {
    inner: Mutex<Inner>,
}

impl RecordingMounter {
    /// An empty mount table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.lock().calls.clone()
    }

    /// Makes every later call of `op` fail with `errno` (until [`Self::heal`]).
    pub fn fail(&self, op: &'static str, errno: Errno) {
        self.lock().failures.insert(op, errno);
    }

    /// Makes every later call of `op` sleep first (a hanging server).
    pub fn delay(&self, op: &'static str, delay: Duration) {
        self.lock().delays.insert(op, delay);
    }

    /// Removes injected failures and delays.
    pub fn heal(&self) {
        let mut inner = self.lock();
        inner.failures.clear();
        inner.delays.clear();
    }

    /// Adds a mount to the table without recording a call (a mount that was
    /// already there when the agent started).
    pub fn preload(&self, fstype: &str, source: &str, target: &Path, super_options: &[&str]) {
        let mut inner = self.lock();
        let entry = inner.entry(fstype, source, target, super_options);
        inner.table.push(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most mount/unmount calls that were ever under way at once.
    pub fn max_concurrent_calls(&self) -> usize {
        self.lock().max_in_flight
    }

    fn before(&self, op: &'static str) -> Option<Errno> {
        let delay = {
            let mut inner = self.lock();
            inner.in_flight += 1;
            inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
            inner.delays.get(op).copied()
        };
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut inner = self.lock();
        inner.in_flight -= 1;
        inner.failures.get(op).copied()
    }
}

impl Inner {
    fn entry(
        &mut self,
        fstype: &str,
        source: &str,
        target: &Path,
        super_options: &[&str],
    ) -> MountEntry {
        self.next_id += 1;
        MountEntry {
            mount_id: 1000 + self.next_id,
            parent_id: 1,
            major_minor: (0, 100 + self.next_id as u32),
            root: PathBuf::from("/"),
            mount_point: target.to_path_buf(),
            mount_options: vec!["rw".to_string()],
            optional_fields: Vec::new(),
            fstype: fstype.to_string(),
            source: source.to_string(),
            super_options: super_options.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Mounter for RecordingMounter {
    fn mount(&self, request: &MountRequest) -> Result<(), SysError> {
        let failure = self.before("mount");
        let mut inner = self.lock();
        inner.calls.push(RecordedCall::Mount(request.clone()));
        if let Some(errno) = failure {
            return Err(SysError::Mount {
                fstype: request.fstype.clone(),
                source_name: request.source.clone(),
                target: request.target.clone(),
                errno,
            });
        }
        let options: Vec<&str> = request.data.split(',').filter(|s| !s.is_empty()).collect();
        let mut entry = inner.entry(&request.fstype, &request.source, &request.target, &options);
        if request.flags.read_only {
            entry.mount_options = vec!["ro".to_string()];
        }
        inner.table.push(entry);
        Ok(())
    }

    fn mount_fuse(
        &self,
        request: &FuseMountRequest,
        adapter: FuseAdapter,
    ) -> Result<FuseSession, SysError> {
        drop(adapter);
        let failure = self.before("mount_fuse");
        let mut inner = self.lock();
        inner.calls.push(RecordedCall::MountFuse(request.clone()));
        if let Some(errno) = failure {
            return Err(SysError::FuseDevice(errno));
        }
        let entry = inner.entry("fuse.hotmount", &request.fsname, &request.target, &[]);
        inner.table.push(entry);
        Ok(FuseSession::detached())
    }

    fn unmount(&self, target: &Path, mode: UnmountMode) -> Result<(), SysError> {
        let failure = self.before("unmount").or_else(|| {
            (mode == UnmountMode::Normal)
                .then(|| self.lock().failures.get("unmount_normal").copied())
                .flatten()
        });
        let mut inner = self.lock();
        inner
            .calls
            .push(RecordedCall::Unmount(target.to_path_buf(), mode));
        if let Some(errno) = failure {
            return Err(SysError::Unmount {
                target: target.to_path_buf(),
                errno,
            });
        }
        match inner.table.iter().rposition(|m| m.mount_point == target) {
            Some(index) => {
                inner.table.remove(index);
                Ok(())
            }
            None => Err(SysError::Unmount {
                target: target.to_path_buf(),
                errno: Errno::EINVAL,
            }),
        }
    }

    fn make_rshared(&self, target: &Path) -> Result<(), SysError> {
        let failure = self.before("make_rshared");
        let mut inner = self.lock();
        inner
            .calls
            .push(RecordedCall::MakeRshared(target.to_path_buf()));
        if let Some(errno) = failure {
            return Err(SysError::Propagation {
                target: target.to_path_buf(),
                errno,
            });
        }
        let Some(entry) = inner.table.iter_mut().find(|m| m.mount_point == target) else {
            return Err(SysError::Propagation {
                target: target.to_path_buf(),
                errno: Errno::EINVAL,
            });
        };
        if !entry.is_shared() {
            entry.optional_fields.push("shared:1".to_string());
        }
        Ok(())
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError> {
        Ok(self.lock().table.clone())
    }

    fn abort_fuse_connection(&self, connection: u32) -> Result<(), SysError> {
        self.lock().calls.push(RecordedCall::AbortFuse(connection));
        Ok(())
    }

    fn fuse_requests_waiting(&self, _connection: u32) -> Option<u32> {
        None
    }

    fn verify_propagation(&self, root: &Path) -> Result<(), SysError> {
        let failure = self.before("verify_propagation");
        self.lock()
            .calls
            .push(RecordedCall::VerifyPropagation(root.to_path_buf()));
        match failure {
            Some(errno) => Err(SysError::Canary {
                root: root.to_path_buf(),
                reason: format!("did not appear in a slave namespace ({errno})"),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::MountFlags;

    fn request(target: &str) -> MountRequest {
        MountRequest {
            source: "10.0.0.5:/x".into(),
            target: target.into(),
            fstype: "nfs4".into(),
            flags: MountFlags::dataset(true),
            data: "vers=4.1,addr=10.0.0.5".into(),
        }
    }

    #[test]
    fn mounts_appear_in_the_table_and_unmounts_remove_them() {
        let fake = RecordingMounter::new();
        fake.mount(&request("/r/a")).unwrap();
        let table = fake.mount_table().unwrap();
        assert_eq!(table.len(), 1);
        assert!(table[0].is_read_only());
        assert_eq!(table[0].super_option("vers"), Some("4.1"));
        fake.unmount(Path::new("/r/a"), UnmountMode::Normal)
            .unwrap();
        assert!(fake.mount_table().unwrap().is_empty());
        assert!(
            fake.unmount(Path::new("/r/a"), UnmountMode::Normal)
                .is_err()
        );
        assert_eq!(fake.calls().len(), 3);
    }

    #[test]
    fn injected_failures_fail_until_healed() {
        let fake = RecordingMounter::new();
        fake.fail("mount", Errno::ECONNREFUSED);
        let err = fake.mount(&request("/r/a")).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ECONNREFUSED));
        assert!(fake.mount_table().unwrap().is_empty());
        fake.heal();
        fake.mount(&request("/r/a")).unwrap();
    }
}
