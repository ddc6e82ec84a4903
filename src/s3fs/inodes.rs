//! The inode table: what the kernel knows of the mount by node id (with its
//! lookup count) and by (parent, name), plus names known to be missing. The
//! kernel remembers node ids across requests, so the table is what a new
//! process serving the same connection must restore (`InodeTable::snapshot`).

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::s3fs::fs::SNAPSHOT_FORMAT;
use crate::s3fs::journal::{Journal, JournaledTable, TableJournal};

/// The inode number of the mount's root (the bucket prefix).
pub const ROOT_INODE: u64 = 1;
/// Negative entries kept at most; the cache is cleared when it grows past this.
const MAX_NEGATIVE_ENTRIES: usize = 100_000;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A key prefix.
    Directory,
    /// An object.
    File,
}

/// The object metadata an inode carries (and an open handle is pinned to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStat {
    /// The object's size in bytes.
    pub size: u64,
    /// Its modification time.
    pub last_modified: DateTime<Utc>,
    /// Its ETag, when the store has one.
    pub etag: Option<String>,
}

impl ObjectStat {
    /// The metadata of a listed or fetched object.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        ObjectStat {
            size: meta.size,
            last_modified: meta.last_modified,
            etag: meta.e_tag.clone(),
        }
    }

    pub(crate) fn directory(mounted_at: DateTime<Utc>) -> Self {
        ObjectStat {
            size: 0,
            last_modified: mounted_at,
            etag: None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Inode {
    pub(crate) parent: u64,
    pub(crate) name: String,
    /// The object key (files) or the prefix without its trailing `/` (directories).
    pub(crate) key: ObjectPath,
    pub(crate) kind: NodeKind,
    pub(crate) stat: ObjectStat,
    pub(crate) validated_at: Instant,
    /// The kernel's lookup count (lookup and readdirplus replies minus forgets).
    pub(crate) lookups: u64,
    /// The ETag of the version whose pages the kernel may hold (set at open).
    pub(crate) page_cache_etag: Option<String>,
    /// Created through this mount and not (yet) seen in the store: a file
    /// being written, or a directory made by mkdir. Never expires.
    pub(crate) local: bool,
}

/// Inodes by number and by (parent, name), plus negative entries.
#[derive(Debug)]
pub(crate) struct InodeTable {
    pub(crate) next_ino: u64,
    pub(crate) inodes: HashMap<u64, Inode>,
    pub(crate) children: HashMap<(u64, String), u64>,
    pub(crate) negative: HashMap<(u64, String), Instant>,
    /// The journal changes go to (a supervised worker's mounts).
    pub(crate) journal: Option<TableJournal>,
}

impl InodeTable {
    /// Records `name` under `parent` as `kind` with `stat`; keeps the inode
    /// number when the name is known with the same kind, otherwise allocates a
    /// new one (the old inode lives on until the kernel forgets it).
    pub(crate) fn upsert(
        &mut self,
        parent: u64,
        name: &str,
        key: ObjectPath,
        kind: NodeKind,
        stat: ObjectStat,
        local: bool,
    ) -> u64 {
        let slot = (parent, name.to_string());
        self.negative.remove(&slot);
        let now = Instant::now();
        if let Some(&ino) = self.children.get(&slot) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                if inode.kind == kind {
                    inode.stat = stat;
                    inode.validated_at = now;
                    inode.local = local;
                    self.mark(ino);
                    return ino;
                }
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_string(),
                key,
                kind,
                stat,
                validated_at: now,
                lookups: 0,
                page_cache_etag: None,
                local,
            },
        );
        if let Some(unnamed) = self.children.insert(slot, ino) {
            // The name now belongs to the new node id.
            self.mark(unnamed);
        }
        self.mark(ino);
        ino
    }

    /// Notes that `ino` changed (its lookup count, name or existence), so
    /// that the journal gets its new record.
    pub(crate) fn mark(&mut self, ino: u64) {
        if let Some(journal) = &mut self.journal {
            journal.dirty.push(ino);
        }
    }

    /// Drops `ino` if the kernel holds no reference to it.
    pub(crate) fn drop_if_unreferenced(&mut self, ino: u64) {
        if ino == ROOT_INODE {
            return;
        }
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        if inode.lookups > 0 {
            return;
        }
        let slot = (inode.parent, inode.name.clone());
        self.inodes.remove(&ino);
        if self.children.get(&slot) == Some(&ino) {
            self.children.remove(&slot);
        }
        self.mark(ino);
    }

    /// Moves inode `ino` to `name` in `parent` with `key` (a rename): the
    /// old name is gone, an inode that had the new name loses it.
    pub(crate) fn rename(&mut self, ino: u64, parent: u64, name: &str, key: ObjectPath) {
        let Some(inode) = self.inodes.get(&ino) else {
            return;
        };
        let (old_parent, old_name) = (inode.parent, inode.name.clone());
        if let Some(replaced) = self.children.insert((parent, name.to_string()), ino) {
            if replaced != ino {
                // It lost its name (the kernel may still hold it).
                self.mark(replaced);
                self.drop_if_unreferenced(replaced);
            }
        }
        self.negative.remove(&(parent, name.to_string()));
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.parent = parent;
            inode.name = name.to_string();
            inode.key = key;
            inode.validated_at = Instant::now();
        }
        let old_slot = (old_parent, old_name);
        if self.children.get(&old_slot) == Some(&ino) {
            self.children.remove(&old_slot);
        }
        self.mark(ino);
        self.negative.insert(old_slot, Instant::now());
    }

    pub(crate) fn insert_negative(&mut self, parent: u64, name: &str) {
        if self.negative.len() >= MAX_NEGATIVE_ENTRIES {
            self.negative.clear();
        }
        let slot = (parent, name.to_string());
        if let Some(ino) = self.children.remove(&slot) {
            // The name is gone; the inode stays until the kernel forgets it.
            self.mark(ino);
            self.drop_if_unreferenced(ino);
        }
        self.negative.insert(slot, Instant::now());
    }
}

/// One inode as a [`InodeSnapshot`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    /// The node id the kernel knows.
    pub ino: u64,
    /// Its directory.
    pub parent: u64,
    /// Its name there.
    pub name: String,
    /// The object key or prefix, raw text.
    pub key: String,
    /// File or directory.
    pub kind: NodeKind,
    /// Its metadata.
    pub stat: ObjectStat,
    /// The kernel's lookup count.
    pub lookups: u64,
    /// Whether it still answers to its name (false: unlinked or replaced,
    /// kept only while the kernel holds it).
    pub named: bool,
    /// Created through this mount and not in the store: a directory made
    /// here, or a file still being written.
    pub local: bool,
}

/// The inode table in a form another process can load: every inode the
/// kernel may still name, with its lookup count. Negative entries are not
/// kept (they are a cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeSnapshot {
    /// The next node id to hand out (ids are never reused within a mount).
    pub next_ino: u64,
    /// The inodes, root included.
    pub inodes: Vec<InodeRecord>,
}

impl InodeTable {
    /// The table as another process can load it.
    pub fn snapshot(&self) -> InodeSnapshot {
        let mut inodes: Vec<InodeRecord> = self
            .inodes
            .keys()
            .filter_map(|&ino| self.record_of(ino))
            .collect();
        inodes.sort_by_key(|record| record.ino);
        InodeSnapshot {
            next_ino: self.next_ino,
            inodes,
        }
    }

    /// What a new process needs to know of `ino` (none: it is gone).
    fn record_of(&self, ino: u64) -> Option<InodeRecord> {
        let inode = self.inodes.get(&ino)?;
        Some(InodeRecord {
            ino,
            parent: inode.parent,
            name: inode.name.clone(),
            key: inode.key.to_string(),
            kind: inode.kind,
            stat: inode.stat.clone(),
            lookups: inode.lookups,
            named: ino == ROOT_INODE
                || self.children.get(&(inode.parent, inode.name.clone())) == Some(&ino),
            local: inode.local,
        })
    }

    /// Starts writing every change to `journal`, beginning with the whole
    /// table.
    pub(crate) fn start_journal(&mut self, journal: Journal) {
        let mut journal = TableJournal {
            journal,
            dirty: Vec::new(),
        };
        journal.journal.checkpoint(&self.checkpoint_entries());
        self.journal = Some(journal);
    }

    fn checkpoint_entries(&self) -> Vec<InodeEntry> {
        let snapshot = self.snapshot();
        std::iter::once(InodeEntry::Head {
            format: SNAPSHOT_FORMAT,
            next_ino: snapshot.next_ino,
        })
        .chain(snapshot.inodes.into_iter().map(InodeEntry::Inode))
        .collect()
    }

    /// A table from a snapshot: the same node ids, names and lookup counts.
    /// A file that was being written has no object (its upload died with the
    /// process that wrote it): it keeps its node id for the kernel, not its
    /// name.
    pub fn restore(snapshot: InodeSnapshot) -> InodeTable {
        let now = Instant::now();
        let mut table = InodeTable {
            next_ino: snapshot.next_ino,
            inodes: HashMap::new(),
            children: HashMap::new(),
            negative: HashMap::new(),
            journal: None,
        };
        for record in snapshot.inodes {
            let unfinished_file = record.kind == NodeKind::File && record.local;
            if record.named && !unfinished_file {
                table
                    .children
                    .insert((record.parent, record.name.clone()), record.ino);
            }
            let key =
                ObjectPath::parse(&record.key).unwrap_or_else(|_| ObjectPath::from(record.key));
            table.inodes.insert(
                record.ino,
                Inode {
                    parent: record.parent,
                    name: record.name,
                    key,
                    kind: record.kind,
                    stat: record.stat,
                    validated_at: now,
                    lookups: record.lookups,
                    page_cache_etag: None,
                    local: record.local && record.kind == NodeKind::Directory,
                },
            );
        }
        table.children.remove(&(ROOT_INODE, String::new()));
        table
    }
}

/// One line of an inode journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeEntry {
    /// Starts a checkpoint: the format, and the next node id to hand out.
    Head {
        /// [`SNAPSHOT_FORMAT`] of the build that wrote it.
        format: u32,
        /// The next node id.
        next_ino: u64,
    },
    /// A node id as it is now.
    Inode(InodeRecord),
    /// A node id the kernel forgot.
    Gone(u64),
}

/// Why a journal cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// It was written by a build with another format.
    #[error("journal format {found}, this build reads {expected}")]
    Format {
        /// The journal's format.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// It does not start with a checkpoint.
    #[error("journal has no checkpoint")]
    NoCheckpoint,
}

impl InodeSnapshot {
    /// The table a journal describes: its last checkpoint with every entry
    /// after it applied.
    pub fn replay(entries: Vec<InodeEntry>) -> Result<InodeSnapshot, ReplayError> {
        let mut entries = entries.into_iter();
        let next_ino = match entries.next() {
            Some(InodeEntry::Head { format, next_ino }) if format == SNAPSHOT_FORMAT => next_ino,
            Some(InodeEntry::Head { format, .. }) => {
                return Err(ReplayError::Format {
                    found: format,
                    expected: SNAPSHOT_FORMAT,
                });
            }
            _ => return Err(ReplayError::NoCheckpoint),
        };
        let mut next_ino = next_ino;
        let mut inodes = std::collections::BTreeMap::new();
        for entry in entries {
            match entry {
                InodeEntry::Head { .. } => {}
                InodeEntry::Inode(record) => {
                    next_ino = next_ino.max(record.ino + 1);
                    inodes.insert(record.ino, record);
                }
                InodeEntry::Gone(ino) => {
                    next_ino = next_ino.max(ino + 1);
                    inodes.remove(&ino);
                }
            }
        }
        Ok(InodeSnapshot {
            next_ino,
            inodes: inodes.into_values().collect(),
        })
    }
}

impl JournaledTable for InodeTable {
    fn flush_journal(&mut self) {
        let Some(mut journal) = self.journal.take() else {
            return;
        };
        if !journal.dirty.is_empty() {
            let entries: Vec<InodeEntry> = journal
                .take_dirty()
                .into_iter()
                .map(|ino| match self.record_of(ino) {
                    Some(record) => InodeEntry::Inode(record),
                    None => InodeEntry::Gone(ino),
                })
                .collect();
            journal.journal.append(&entries);
            if journal.journal.wants_checkpoint() {
                journal.journal.checkpoint(&self.checkpoint_entries());
            }
        }
        self.journal = Some(journal);
    }
}
