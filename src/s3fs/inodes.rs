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

use crate::s3fs::journal::{Entry, JournaledTable, Keyed, ReplayError, TableJournal, replay};

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

impl Keyed for InodeRecord {
    fn key(&self) -> u64 {
        self.ino
    }
}

impl InodeSnapshot {
    /// The table a journal describes: its last checkpoint with every entry
    /// after it applied.
    pub fn replay(entries: Vec<Entry<InodeRecord>>) -> Result<InodeSnapshot, ReplayError> {
        let (next_ino, inodes) = replay(entries)?;
        Ok(InodeSnapshot { next_ino, inodes })
    }
}

impl JournaledTable for InodeTable {
    type Record = InodeRecord;

    fn journal_mut(&mut self) -> &mut Option<TableJournal> {
        &mut self.journal
    }

    fn record_of(&self, ino: u64) -> Option<InodeRecord> {
        InodeTable::record_of(self, ino)
    }

    fn records(&self) -> (u64, Vec<InodeRecord>) {
        let snapshot = self.snapshot();
        (snapshot.next_ino, snapshot.inodes)
    }
}
