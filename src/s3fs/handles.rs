//! The handle table: one table of the directory, read and write handles the
//! kernel holds (it names them by number in every READ, READDIR, WRITE,
//! FLUSH and RELEASE), so that a new process serving the same connection can
//! restore them (`HandleTable::snapshot`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::s3fs::inodes::{NodeKind, ObjectStat};
use crate::s3fs::journal::{Entry, JournaledTable, Keyed, ReplayError, TableJournal, replay};
use crate::s3fs::prefetch::FileReader;
use crate::s3fs::write::ObjectWriter;

/// One entry of a directory listing snapshot.
#[derive(Debug, Clone)]
pub(crate) struct ListedEntry {
    pub(crate) name: String,
    pub(crate) key: ObjectPath,
    pub(crate) kind: NodeKind,
    pub(crate) stat: ObjectStat,
    /// Created through this mount, not in the store's listing (yet).
    pub(crate) local: bool,
}

/// An open directory: the listing taken at the first read (offset 0), so that
/// offsets stay stable across calls.
#[derive(Debug, Default)]
pub(crate) struct DirHandle {
    pub(crate) ino: u64,
    pub(crate) snapshot: tokio::sync::Mutex<Option<Arc<Vec<ListedEntry>>>>,
    /// Inodes created for this handle's entries; dropped at release if the
    /// kernel never looked them up.
    pub(crate) created: Mutex<Vec<u64>>,
}

/// A file being written through one open file handle.
#[derive(Debug)]
pub(crate) struct WriteHandle {
    /// The file's inode (also in the writer; here it needs no lock).
    pub(crate) ino: u64,
    pub(crate) writer: tokio::sync::Mutex<ObjectWriter>,
}

/// A file open for reading, as [`HandleTable::readers`] lists it.
#[derive(Debug, Clone)]
pub(crate) struct OpenReader {
    pub(crate) fh: u64,
    /// Its inode (unknown for handles restored from an older journal).
    pub(crate) ino: Option<u64>,
    pub(crate) key: ObjectPath,
    /// The version it is pinned to.
    pub(crate) stat: ObjectStat,
    /// The backing id the kernel reads it through, if it does.
    pub(crate) backing: Option<u32>,
}

/// A file open for reading.
#[derive(Debug, Clone)]
pub(crate) struct ReadHandle {
    pub(crate) reader: Arc<FileReader>,
    /// Its inode (unknown for handles restored from an older journal).
    pub(crate) ino: Option<u64>,
    /// The FUSE backing id the kernel reads it through (passthrough): it
    /// belongs to the connection, not the process, so the next process
    /// must reuse it for every open of the same file.
    pub(crate) backing: Option<u32>,
}

/// What a handle number stands for.
#[derive(Debug, Clone)]
pub(crate) enum Handle {
    /// An open directory.
    Directory(Arc<DirHandle>),
    /// A file open for reading.
    Read(ReadHandle),
    /// A new file being written.
    Write(Arc<WriteHandle>),
}

/// Every open handle of one mount, by number (never reused within a mount).
#[derive(Debug)]
pub(crate) struct HandleTable {
    next: u64,
    handles: HashMap<u64, Handle>,
    /// The journal changes go to (a supervised worker's mounts).
    journal: Option<TableJournal>,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            next: 1,
            handles: HashMap::new(),
            journal: None,
        }
    }
}

impl HandleTable {
    /// Adds `handle` under a new number.
    pub(crate) fn insert(&mut self, handle: Handle) -> u64 {
        let fh = self.next;
        self.next += 1;
        self.handles.insert(fh, handle);
        self.mark(fh);
        fh
    }

    /// Adds file `ino` open for reading through `reader` under a new number.
    pub(crate) fn insert_read(&mut self, reader: Arc<FileReader>, ino: u64) -> u64 {
        self.insert(Handle::Read(ReadHandle {
            reader,
            ino: Some(ino),
            backing: None,
        }))
    }

    /// The open directory `fh`.
    pub(crate) fn directory(&self, fh: u64) -> Option<Arc<DirHandle>> {
        match self.handles.get(&fh) {
            Some(Handle::Directory(dir)) => Some(Arc::clone(dir)),
            _ => None,
        }
    }

    /// The file `fh` open for reading.
    pub(crate) fn reader(&self, fh: u64) -> Option<Arc<FileReader>> {
        match self.handles.get(&fh) {
            Some(Handle::Read(read)) => Some(Arc::clone(&read.reader)),
            _ => None,
        }
    }

    /// The file `fh` being written.
    pub(crate) fn writer(&self, fh: u64) -> Option<Arc<WriteHandle>> {
        match self.handles.get(&fh) {
            Some(Handle::Write(writer)) => Some(Arc::clone(writer)),
            _ => None,
        }
    }

    /// A handle writing the file `ino`, if one is open.
    pub(crate) fn writer_of(&self, ino: u64) -> Option<Arc<WriteHandle>> {
        self.handles.values().find_map(|handle| match handle {
            Handle::Write(writer) if writer.ino == ino => Some(Arc::clone(writer)),
            _ => None,
        })
    }

    /// Closes `fh`.
    pub(crate) fn remove(&mut self, fh: u64) -> Option<Handle> {
        self.mark(fh);
        self.handles.remove(&fh)
    }

    /// Records that the kernel reads `fh` through backing id `id`.
    pub(crate) fn set_backing(&mut self, fh: u64, id: u32) {
        if let Some(Handle::Read(read)) = self.handles.get_mut(&fh) {
            read.backing = Some(id);
            self.mark(fh);
        }
    }

    /// Every file open for reading.
    pub(crate) fn readers(&self) -> Vec<OpenReader> {
        self.handles
            .iter()
            .filter_map(|(fh, handle)| match handle {
                Handle::Read(read) => Some(OpenReader {
                    fh: *fh,
                    ino: read.ino,
                    key: read.reader.key().clone(),
                    stat: read.reader.stat().clone(),
                    backing: read.backing,
                }),
                _ => None,
            })
            .collect()
    }

    /// How many files are open for writing.
    pub(crate) fn writers(&self) -> usize {
        self.handles
            .values()
            .filter(|handle| matches!(handle, Handle::Write(_)))
            .count()
    }

    fn mark(&mut self, fh: u64) {
        if let Some(journal) = &mut self.journal {
            journal.dirty.push(fh);
        }
    }
}

/// One open handle as a [`HandleSnapshot`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum HandleRecord {
    /// An open directory (its listing is taken again at the next read).
    Directory {
        /// The handle number.
        fh: u64,
        /// The directory's inode.
        ino: u64,
    },
    /// A file open for reading, pinned to one version of its object.
    Read {
        /// The handle number.
        fh: u64,
        /// The object key, raw text.
        key: String,
        /// The pinned version.
        stat: ObjectStat,
        /// The FUSE backing id the kernel reads the file through
        /// (passthrough), if it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backing: Option<u32>,
        /// The file's inode (absent in journals of older builds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ino: Option<u64>,
    },
    /// A new file that was being written: its upload cannot survive the
    /// process that held it, so the handle fails from then on (EIO).
    Write {
        /// The handle number.
        fh: u64,
        /// The file's inode.
        ino: u64,
    },
}

/// The handle table in a form another process can load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleSnapshot {
    /// The next handle number (numbers are never reused within a mount).
    pub next: u64,
    /// Every open handle.
    pub handles: Vec<HandleRecord>,
}

impl HandleTable {
    /// The table as another process can load it.
    pub(crate) fn snapshot(&self) -> HandleSnapshot {
        let mut handles: Vec<HandleRecord> = self
            .handles
            .keys()
            .filter_map(|&fh| self.record_of(fh))
            .collect();
        handles.sort_by_key(HandleRecord::fh);
        HandleSnapshot {
            next: self.next,
            handles,
        }
    }

    /// A table of the same numbers, each handle made by `restore` from its
    /// record.
    pub(crate) fn restore(
        snapshot: HandleSnapshot,
        mut restore: impl FnMut(HandleRecord) -> Handle,
    ) -> HandleTable {
        let mut table = HandleTable {
            next: snapshot.next,
            handles: HashMap::new(),
            journal: None,
        };
        for record in snapshot.handles {
            table.handles.insert(record.fh(), restore(record));
        }
        table
    }
}

impl HandleRecord {
    /// The handle's number.
    pub fn fh(&self) -> u64 {
        match self {
            HandleRecord::Directory { fh, .. }
            | HandleRecord::Read { fh, .. }
            | HandleRecord::Write { fh, .. } => *fh,
        }
    }
}

impl HandleTable {
    /// What a new process needs to know of `fh` (none: it is closed).
    fn record_of(&self, fh: u64) -> Option<HandleRecord> {
        Some(match self.handles.get(&fh)? {
            Handle::Directory(dir) => HandleRecord::Directory { fh, ino: dir.ino },
            Handle::Read(read) => HandleRecord::Read {
                fh,
                key: read.reader.key().to_string(),
                stat: read.reader.stat().clone(),
                backing: read.backing,
                ino: read.ino,
            },
            Handle::Write(writer) => HandleRecord::Write {
                fh,
                ino: writer.ino,
            },
        })
    }
}

impl Keyed for HandleRecord {
    fn key(&self) -> u64 {
        self.fh()
    }
}

impl HandleSnapshot {
    /// The table a journal describes: its last checkpoint with every entry
    /// after it applied.
    pub fn replay(entries: Vec<Entry<HandleRecord>>) -> Result<HandleSnapshot, ReplayError> {
        let (next, handles) = replay(entries)?;
        Ok(HandleSnapshot { next, handles })
    }
}

impl JournaledTable for HandleTable {
    type Record = HandleRecord;

    fn journal_mut(&mut self) -> &mut Option<TableJournal> {
        &mut self.journal
    }

    fn record_of(&self, fh: u64) -> Option<HandleRecord> {
        HandleTable::record_of(self, fh)
    }

    fn records(&self) -> (u64, Vec<HandleRecord>) {
        let snapshot = self.snapshot();
        (snapshot.next, snapshot.handles)
    }
}
