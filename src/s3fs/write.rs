//! Writing new objects (`readOnly: false`): a file created through the mount
//! is written sequentially and becomes an object when it is flushed (closed).
//! Small files go up in one PUT; once more than one part has been written the
//! upload turns into a multipart upload with a few parts in flight. Writes
//! must be sequential: a write anywhere but at the current end fails with
//! EINVAL, a write after the object was completed with EPERM.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::s3fs::fs::{FsError, ObjectStat};

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
    /// The object exists: its metadata.
    Done(ObjectStat),
    /// The upload failed and was aborted; every later call fails.
    Failed(String),
}

impl std::fmt::Debug for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterState::Buffering(buffer) => write!(f, "Buffering({} bytes)", buffer.len()),
            WriterState::Uploading(_) => write!(f, "Uploading"),
            WriterState::Done(stat) => write!(f, "Done({stat:?})"),
            WriterState::Failed(reason) => write!(f, "Failed({reason})"),
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
    written: u64,
    state: WriterState,
}

impl ObjectWriter {
    /// A writer of the new object `key` (inode `ino`).
    pub fn new(store: Arc<dyn ObjectStore>, key: ObjectPath, ino: u64) -> Self {
        ObjectWriter {
            store,
            key,
            ino,
            written: 0,
            state: WriterState::Buffering(Vec::new()),
        }
    }

    fn failed(&self, reason: &str) -> FsError {
        FsError::Store {
            op: "put",
            key: self.key.to_string(),
            source: object_store::Error::Generic {
                store: "hotmount",
                source: reason.to_string().into(),
            },
        }
    }

    /// Appends `data` at `offset`, which must be the current end.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<u64, FsError> {
        if offset != self.written {
            return Err(FsError::NotSequential {
                key: self.key.to_string(),
                offset,
                end: self.written,
            });
        }
        match &mut self.state {
            WriterState::Buffering(buffer) => {
                buffer.extend_from_slice(data);
                if buffer.len() > WRITE_PART_SIZE {
                    let upload = self
                        .store
                        .put_multipart(&self.key)
                        .await
                        .map_err(|source| FsError::Store {
                            op: "put",
                            key: self.key.to_string(),
                            source,
                        })?;
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
            WriterState::Done(_) => {
                return Err(FsError::Overwrite {
                    key: self.key.to_string(),
                });
            }
            WriterState::Failed(reason) => {
                let reason = reason.clone();
                return Err(self.failed(&reason));
            }
        }
        self.written += data.len() as u64;
        Ok(self.written)
    }

    /// Aborts a multipart upload after `source` failed it.
    async fn fail(&mut self, source: object_store::Error) -> FsError {
        let reason = source.to_string();
        let state = std::mem::replace(&mut self.state, WriterState::Failed(reason));
        if let WriterState::Uploading(multipart) = state {
            if let Err(err) = multipart.abort().await {
                tracing::warn!(key = %self.key, error = %err, "abort multipart upload");
            }
        }
        FsError::Store {
            op: "put",
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
            WriterState::Done(_) | WriterState::Failed(_) => None,
        }
    }

    /// Completes the object (PUT, or the multipart upload's last parts and
    /// completion); idempotent once done. Returns the object's metadata.
    pub async fn finish(&mut self) -> Result<ObjectStat, FsError> {
        let state = std::mem::replace(&mut self.state, WriterState::Buffering(Vec::new()));
        let put = match state {
            WriterState::Done(stat) => {
                self.state = WriterState::Done(stat.clone());
                return Ok(stat);
            }
            WriterState::Failed(reason) => {
                let err = self.failed(&reason);
                self.state = WriterState::Failed(reason);
                return Err(err);
            }
            WriterState::Buffering(buffer) => {
                self.store.put(&self.key, PutPayload::from(buffer)).await
            }
            WriterState::Uploading(multipart) => multipart.finish().await,
        };
        match put {
            Ok(result) => {
                let stat = ObjectStat {
                    size: self.written,
                    last_modified: Utc::now(),
                    etag: result.e_tag,
                };
                self.state = WriterState::Done(stat.clone());
                Ok(stat)
            }
            Err(source) => {
                self.state = WriterState::Failed(source.to_string());
                Err(FsError::Store {
                    op: "put",
                    key: self.key.to_string(),
                    source,
                })
            }
        }
    }
}
