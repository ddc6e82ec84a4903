//! Writing new objects (`readOnly: false`): a file created through the mount
//! is written sequentially and becomes an object when it is completed. Small
//! files go up in one PUT; once more than one part has been written the
//! upload turns into a multipart upload with a few parts in flight. Writes
//! must be sequential: a write anywhere but at the current end fails with
//! EINVAL. A write after the object was completed (through a descriptor still
//! open) appends to a file sent in one PUT, which is then sent again whole at
//! the next completion; after a multipart upload it fails with EPERM.
//!
//! When an object is completed (every `close(2)` of every duplicate of the
//! descriptor sends a FLUSH; the last one is followed by a RELEASE):
//! - a flush before anything was written completes nothing (the shell, `dd`
//!   and friends open, `dup2` and close the first descriptor before writing);
//! - a flush from the process that created the file, after writes, completes
//!   the object, so that `close(2)` reports a failed upload;
//! - a flush from another process (a child that inherited the descriptor, or
//!   a parent closing its copy) only waits for the parts in flight and reports
//!   their errors: the file may still be written through the other copies, and
//!   the object is completed at release, after the last copy was closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::operation::StoreRequest;
use crate::s3fs::error::FsError;
use crate::s3fs::inodes::ObjectStat;

/// Memory for the data of files being written, shared by every read-write
/// dataset (`--write-memory`): a writer holds what it buffers (in 1 MiB
/// steps) and, once its upload is multipart, room for the parts in flight.
/// Past the budget a write waits a moment, then fails with ENOSPC, so pods
/// opening writers by the hundred cannot grow the agent's memory.
///
/// The data of write requests not yet taken into a writer's buffer (a write
/// waiting for budget holds its bytes) is bounded too: at most
/// [`WRITES_IN_FLIGHT_BYTES`] of it; a write past that fails with ENOSPC at
/// once, so the agent holds at most the budget plus that much.
#[derive(Debug)]
pub struct WriteBudget {
    capacity: u64,
    semaphore: Arc<Semaphore>,
    wait: Duration,
    in_flight: Arc<Semaphore>,
}

/// The most bytes of write requests held before their writer takes them
/// (128 writes of 128 KiB, or 16 of the largest, 1 MiB).
pub const WRITES_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// Steps in which a writer's buffer is reserved.
const RESERVE_STEP: u64 = 1024 * 1024;
/// How long a write waits for budget before it fails with ENOSPC.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

impl WriteBudget {
    /// The default budget: room for about 5 writers with 4 parts in flight.
    pub const DEFAULT_BYTES: u64 = 256 * 1024 * 1024;
    /// The smallest budget: one multipart writer (48 MiB) and room to spare.
    pub const MIN_BYTES: u64 = 64 * 1024 * 1024;

    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Arc<Self> {
        Self::with_wait(bytes, BUDGET_WAIT)
    }

    /// A budget of `bytes` whose writes wait at most `wait` for room.
    pub fn with_wait(bytes: u64, wait: Duration) -> Arc<Self> {
        let permits = usize::try_from(bytes / RESERVE_STEP)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(WriteBudget {
            capacity: permits as u64 * RESERVE_STEP,
            semaphore: Arc::new(Semaphore::new(permits)),
            wait,
            in_flight: Arc::new(Semaphore::new(WRITES_IN_FLIGHT_BYTES)),
        })
    }

    /// Room for a write request of `bytes` to be held until its writer takes
    /// it; `None` when [`WRITES_IN_FLIGHT_BYTES`] are held already (the
    /// write then fails with ENOSPC).
    pub fn admit(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.in_flight)
            .try_acquire_many_owned(bytes)
            .ok()
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held by writers right now.
    pub fn in_use(&self) -> u64 {
        self.capacity - self.semaphore.available_permits() as u64 * RESERVE_STEP
    }
}

/// Size of one multipart part (S3 wants at least 5 MiB but for the last).
pub const WRITE_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once for one file.
const PARTS_IN_FLIGHT: usize = 4;

/// Where a file being written stands.
enum WriterState {
    /// Everything written so far fits in one part and is still here.
    Buffering(Vec<u8>),
    /// A multipart upload is under way.
    Uploading(WriteMultipart),
    /// The object exists: its metadata, and for an object sent in one PUT
    /// its bytes, kept until release so that a write through another
    /// descriptor can still append (the object is then sent again, whole).
    Done(ObjectStat, Option<Bytes>),
    /// The upload failed and was aborted; every later call fails.
    Failed(String),
    /// The file was unlinked while open: nothing is uploaded, later writes
    /// go nowhere (as to an unlinked file, which lives until closed).
    Discarded,
}

impl std::fmt::Debug for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterState::Buffering(buffer) => write!(f, "Buffering({} bytes)", buffer.len()),
            WriterState::Uploading(_) => write!(f, "Uploading"),
            WriterState::Done(stat, _) => write!(f, "Done({stat:?})"),
            WriterState::Failed(reason) => write!(f, "Failed({reason})"),
            WriterState::Discarded => write!(f, "Discarded"),
        }
    }
}

/// How a finished object reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// One PUT of the buffered bytes.
    Put,
    /// A multipart upload of `parts` parts, then its completion.
    Multipart {
        /// Parts of [`WRITE_PART_SIZE`] (the last one shorter).
        parts: u64,
    },
}

/// One new object being written through an open file handle.
#[derive(Debug)]
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    /// The inode the file has in the mount.
    pub ino: u64,
    /// The process (thread group) that created the file, when the kernel
    /// named one this agent can see.
    created_by: Option<u32>,
    written: u64,
    state: WriterState,
    budget: Arc<WriteBudget>,
    /// The budget this writer holds, in [`RESERVE_STEP`]s.
    held: Option<OwnedSemaphorePermit>,
}

impl ObjectWriter {
    /// A writer of the new object `key` (inode `ino`), created by process
    /// `created_by` (None: unknown).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: ObjectPath,
        ino: u64,
        created_by: Option<u32>,
        budget: Arc<WriteBudget>,
    ) -> Self {
        ObjectWriter {
            store,
            key,
            ino,
            created_by,
            written: 0,
            state: WriterState::Buffering(Vec::new()),
            budget,
            held: None,
        }
    }

    /// Holds budget for `bytes` of this writer's data in all (waiting a
    /// moment for room): ENOSPC when there is none.
    async fn hold(&mut self, bytes: u64) -> Result<(), FsError> {
        let steps = u32::try_from(bytes.div_ceil(RESERVE_STEP)).unwrap_or(u32::MAX);
        let held = self
            .held
            .as_ref()
            .map_or(0, |permit| permit.num_permits() as u32);
        if steps <= held {
            return Ok(());
        }
        // One step at a time: the semaphore is first come, first served, so
        // a writer waiting for its multipart room does not hold every small
        // writer behind it. A refused write gives back what it got.
        let deadline = tokio::time::Instant::now() + self.budget.wait;
        let mut taken: Option<OwnedSemaphorePermit> = None;
        for _ in held..steps {
            let step = Arc::clone(&self.budget.semaphore).acquire_many_owned(1);
            match tokio::time::timeout_at(deadline, step).await {
                Ok(Ok(permit)) => match &mut taken {
                    Some(taken) => taken.merge(permit),
                    None => taken = Some(permit),
                },
                _ => {
                    return Err(FsError::NoSpace {
                        key: self.key.to_string(),
                        budget: self.budget.capacity,
                    });
                }
            }
        }
        if let Some(taken) = taken {
            match &mut self.held {
                Some(held) => held.merge(taken),
                None => self.held = Some(taken),
            }
        }
        Ok(())
    }

    /// The writer of a handle whose upload died with the process that held
    /// it (a restored handle): every later call fails (EIO), nothing is
    /// uploaded, and the multipart upload it may have started is left to the
    /// bucket's lifecycle rules (its id died too).
    pub fn lost(
        store: Arc<dyn ObjectStore>,
        key: ObjectPath,
        ino: u64,
        budget: Arc<WriteBudget>,
    ) -> Self {
        let mut writer = ObjectWriter::new(store, key, ino, None, budget);
        writer.state = WriterState::Failed(
            "the agent restarted while this file was being written; nothing was uploaded"
                .to_string(),
        );
        writer
    }

    /// Whether a flush from process `closed_by` completes the object (see the
    /// module header): something was written, and the flush comes from the
    /// creating process (or either process is unknown: a pid outside the
    /// agent's pid namespace reads as 0, and then the first flush after
    /// writes completes, as it always did).
    pub fn completes_at_flush(&self, closed_by: Option<u32>) -> bool {
        let written = self.written > 0;
        let same_process = match (self.created_by, closed_by) {
            (Some(created), Some(closed)) => created == closed,
            _ => true,
        };
        written && same_process
    }

    /// Gives the object still to be written another key (a rename before
    /// completion); false once anything was sent under the old one.
    pub fn rekey(&mut self, key: ObjectPath) -> bool {
        if matches!(self.state, WriterState::Buffering(_)) {
            self.key = key;
            true
        } else {
            false
        }
    }

    /// The object was renamed (copied) to `key` after it was completed: a
    /// late append sends it there.
    pub fn moved_to(&mut self, key: ObjectPath) {
        self.key = key;
    }

    /// Whether the object is in the store (completed).
    pub fn is_done(&self) -> bool {
        matches!(self.state, WriterState::Done(..))
    }

    /// Waits until every part in flight has been uploaded, without
    /// completing the object; a failed part fails (and aborts) the upload.
    pub async fn drain(&mut self) -> Result<(), FsError> {
        match &mut self.state {
            WriterState::Uploading(multipart) => match multipart.wait_for_capacity(0).await {
                Ok(()) => Ok(()),
                Err(source) => Err(self.fail(source).await),
            },
            WriterState::Failed(reason) => {
                let reason = reason.clone();
                Err(self.failed(&reason))
            }
            WriterState::Buffering(_) | WriterState::Done(..) | WriterState::Discarded => Ok(()),
        }
    }

    fn failed(&self, reason: &str) -> FsError {
        FsError::Store {
            op: StoreRequest::Put,
            key: self.key.to_string(),
            source: object_store::Error::Generic {
                store: "hotmount",
                source: reason.to_string().into(),
            },
        }
    }

    /// Appends `data` at `offset`, which must be the current end.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, FsError> {
        if let WriterState::Failed(reason) = &self.state {
            let reason = reason.clone();
            return Err(self.failed(&reason));
        }
        if offset != self.written {
            return Err(FsError::NotSequential {
                key: self.key.to_string(),
                offset,
                end: self.written,
            });
        }
        let after = self.written + data.len() as u64;
        let needed = match &self.state {
            WriterState::Buffering(_) | WriterState::Done(_, Some(_))
                if after <= WRITE_PART_SIZE as u64 =>
            {
                after
            }
            WriterState::Discarded | WriterState::Done(_, None) | WriterState::Failed(_) => 0,
            // A multipart upload: the part being filled and those in flight.
            _ => (PARTS_IN_FLIGHT as u64 + 2) * WRITE_PART_SIZE as u64,
        };
        self.hold(needed).await?;
        match &mut self.state {
            WriterState::Buffering(buffer) => {
                buffer.extend_from_slice(data);
                if buffer.len() > WRITE_PART_SIZE {
                    let upload = match self.store.put_multipart(&self.key).await {
                        Ok(upload) => upload,
                        // The write fails and so does the file: no object
                        // with bytes the program was told were not written.
                        Err(source) => return Err(self.fail(source).await),
                    };
                    let mut multipart =
                        WriteMultipart::new_with_chunk_size(upload, WRITE_PART_SIZE);
                    multipart.put(Bytes::from(std::mem::take(buffer)));
                    self.state = WriterState::Uploading(multipart);
                }
            }
            WriterState::Uploading(multipart) => {
                if let Err(source) = multipart.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    return Err(self.fail(source).await);
                }
                if let WriterState::Uploading(multipart) = &mut self.state {
                    multipart.write(data);
                }
            }
            WriterState::Done(_, Some(sent)) => {
                let mut buffer = Vec::with_capacity(sent.len() + data.len());
                buffer.extend_from_slice(sent);
                buffer.extend_from_slice(data);
                self.state = WriterState::Buffering(buffer);
            }
            WriterState::Done(_, None) => {
                return Err(FsError::Overwrite {
                    key: self.key.to_string(),
                });
            }
            WriterState::Failed(reason) => {
                let reason = reason.clone();
                return Err(self.failed(&reason));
            }
            WriterState::Discarded => {}
        }
        self.written += data.len() as u64;
        Ok(self.written)
    }

    /// Aborts a multipart upload after `source` failed it.
    async fn fail(&mut self, source: object_store::Error) -> FsError {
        self.held = None;
        let reason = source.to_string();
        let state = std::mem::replace(&mut self.state, WriterState::Failed(reason));
        if let WriterState::Uploading(multipart) = state {
            if let Err(err) = multipart.abort().await {
                tracing::warn!(key = %self.key, error = %err, "abort multipart upload");
            }
        }
        FsError::Store {
            op: StoreRequest::Put,
            key: self.key.to_string(),
            source,
        }
    }

    /// The S3 requests [`Self::finish`] is about to complete: none once the
    /// object is done or the upload failed (a later flush sends nothing).
    pub fn completion(&self) -> Option<Completion> {
        match self.state {
            WriterState::Buffering(_) => Some(Completion::Put),
            WriterState::Uploading(_) => Some(Completion::Multipart {
                parts: self.written.div_ceil(WRITE_PART_SIZE as u64),
            }),
            WriterState::Done(..) | WriterState::Failed(_) | WriterState::Discarded => None,
        }
    }

    /// Drops what was written of a file unlinked while open: a multipart
    /// upload under way is aborted, and nothing is ever uploaded.
    pub async fn discard(&mut self) {
        self.held = None;
        let state = std::mem::replace(&mut self.state, WriterState::Discarded);
        if let WriterState::Uploading(multipart) = state
            && let Err(err) = multipart.abort().await
        {
            tracing::warn!(key = %self.key, error = %err, "abort multipart upload");
        }
    }

    /// Completes the object (PUT, or the multipart upload's last parts and
    /// completion); idempotent once done. Returns the object's metadata, or
    /// None for a discarded file (nothing uploaded).
    pub async fn finish(&mut self) -> Result<Option<ObjectStat>, FsError> {
        let state = std::mem::replace(&mut self.state, WriterState::Buffering(Vec::new()));
        let (put, sent) = match state {
            WriterState::Done(stat, sent) => {
                self.state = WriterState::Done(stat.clone(), sent);
                return Ok(Some(stat));
            }
            WriterState::Failed(reason) => {
                let err = self.failed(&reason);
                self.state = WriterState::Failed(reason);
                return Err(err);
            }
            WriterState::Discarded => {
                self.state = WriterState::Discarded;
                return Ok(None);
            }
            WriterState::Buffering(buffer) => {
                let bytes = Bytes::from(buffer);
                let put = self.store.put(&self.key, PutPayload::from(bytes.clone()));
                (put.await, Some(bytes))
            }
            WriterState::Uploading(multipart) => (multipart.finish().await, None),
        };
        match put {
            Ok(result) => {
                let stat = ObjectStat {
                    size: self.written,
                    last_modified: Utc::now(),
                    etag: result.e_tag,
                };
                // What stays is the bytes of a one-PUT object (kept until
                // release for a late append); a multipart upload's parts went.
                let kept = sent.as_ref().map_or(0, |bytes| bytes.len() as u64);
                if kept == 0 {
                    self.held = None;
                }
                self.state = WriterState::Done(stat.clone(), sent);
                Ok(Some(stat))
            }
            Err(source) => {
                self.held = None;
                self.state = WriterState::Failed(source.to_string());
                Err(FsError::Store {
                    op: StoreRequest::Put,
                    key: self.key.to_string(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn write_requests_waiting_for_budget_hold_at_most_16_mib_then_fail_at_once() {
        let budget = WriteBudget::new(WriteBudget::MIN_BYTES);
        let largest = 1024 * 1024;
        let waiting: Vec<_> = (0..16)
            .map(|n| {
                budget
                    .admit(largest)
                    .unwrap_or_else(|| panic!("write {n} of 1 MiB refused"))
            })
            .collect();
        assert_eq!(WRITES_IN_FLIGHT_BYTES, 16 * largest);
        // No wait: the FUSE thread answers ENOSPC right away.
        assert!(budget.admit(1).is_none(), "a 17th MiB was held");
        drop(waiting);
        assert!(budget.admit(largest).is_some(), "room once they were taken");
    }

    #[tokio::test]
    async fn writers_share_one_budget_and_get_enospc_past_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let budget = WriteBudget::with_wait(3 * RESERVE_STEP, Duration::from_millis(100));
        let mut first = ObjectWriter::new(
            Arc::clone(&store),
            ObjectPath::from("first"),
            2,
            None,
            Arc::clone(&budget),
        );
        let mut second = ObjectWriter::new(
            Arc::clone(&store),
            ObjectPath::from("second"),
            3,
            None,
            Arc::clone(&budget),
        );
        let two_mib = vec![1u8; 2 * RESERVE_STEP as usize];
        first.write(0, &two_mib).await.unwrap();
        assert_eq!(budget.in_use(), 2 * RESERVE_STEP);
        // The second writer needs two more steps; one is left: ENOSPC after
        // a moment, and nothing of it was taken.
        let refused = second.write(0, &two_mib).await.unwrap_err();
        assert_eq!(refused.errno(), libc::ENOSPC, "{refused}");
        assert_eq!(budget.in_use(), 2 * RESERVE_STEP);
        // Small writes still fit.
        second.write(0, b"small").await.unwrap();
        first.finish().await.unwrap();
        drop(first);
        assert_eq!(
            budget.in_use(),
            RESERVE_STEP,
            "a closed writer gives its budget back"
        );
        second.write(5, &two_mib).await.unwrap();
        second.finish().await.unwrap();
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }
}
