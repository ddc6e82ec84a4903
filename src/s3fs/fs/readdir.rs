//! Directory listings: a directory is its prefix's `ListObjectsV2` pages
//! (delimiter `/`), taken when a handle reads offset 0 and kept for the
//! handle so that offsets stay stable; every entry carries its attributes
//! (READDIRPLUS); directories and files made here are merged in.

use std::sync::Arc;

use fuser::FileAttr;
use object_store::path::Path as ObjectPath;

use super::S3Filesystem;
use crate::operation::StoreRequest;
use crate::s3fs::error::FsError;
use crate::s3fs::handles::ListedEntry;
use crate::s3fs::inodes::{NodeKind, ObjectStat};
use crate::s3fs::keys::{MAX_NAME_LEN, SkipReason};

/// One entry returned by [`S3Filesystem::readdir`].
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// The offset of the entry after this one (what the kernel sends next).
    pub next_offset: u64,
    /// The entry's name.
    pub name: String,
    /// Its attributes (inode number included).
    pub attr: FileAttr,
}

impl S3Filesystem {
    /// Lists directory `prefix` completely (the store follows continuation
    /// tokens), sorted by name. Keys that cannot be file names are left out
    /// (and counted once, see [`crate::s3fs::keys`]); they never fail the listing.
    pub(super) async fn list_directory(
        &self,
        prefix: &ObjectPath,
    ) -> Result<Vec<ListedEntry>, FsError> {
        let listed = if prefix.as_ref().is_empty() {
            self.bucket.store.list_with_delimiter(None).await
        } else {
            self.bucket.store.list_with_delimiter(Some(prefix)).await
        };
        self.observe(StoreRequest::List, listed.is_ok());
        let listed = listed.map_err(|source| FsError::Store {
            op: StoreRequest::List,
            key: format!("{prefix}/"),
            source,
        })?;
        let skip = |key: &str, reason: SkipReason| {
            self.skipped_keys
                .note(&self.metrics, &self.options.dataset, key, reason);
        };
        if let Some(unparseable) = listed.extensions.get::<object_store::list::SkippedKeys>() {
            for key in &unparseable.0 {
                skip(key, SkipReason::of_unparseable(key));
            }
        }
        let mut entries: Vec<ListedEntry> = Vec::new();
        let mut directories = std::collections::HashSet::new();
        for common in listed.common_prefixes {
            let Some(name) = common.filename() else {
                continue;
            };
            if name.len() > MAX_NAME_LEN {
                skip(common.as_ref(), SkipReason::NameTooLong);
                continue;
            }
            directories.insert(name.to_string());
            entries.push(ListedEntry {
                name: name.to_string(),
                kind: NodeKind::Directory,
                stat: ObjectStat::directory(self.mounted_at),
                key: common,
                local: false,
            });
        }
        for object in listed.objects {
            // The marker whose key is the prefix itself (`dir/`) is not an
            // entry (a `Path` never ends in `/`: `dir/` parses as `dir`).
            if object.location == *prefix {
                continue;
            }
            let Some(name) = object.location.filename() else {
                continue;
            };
            if name.len() > MAX_NAME_LEN {
                skip(object.location.as_ref(), SkipReason::NameTooLong);
                continue;
            }
            if directories.contains(name) {
                continue;
            }
            entries.push(ListedEntry {
                name: name.to_string(),
                kind: NodeKind::File,
                stat: ObjectStat::from_meta(&object),
                key: object.location.clone(),
                local: false,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
    /// At most `max_entries` entries of open directory `fh` from `offset` on:
    /// offset 0 is `.`, 1 is `..`, then the listing taken when offset 0 was
    /// read (re-read on every read at offset 0, i.e. rewinddir). Each entry
    /// carries its inode attributes; the listing refreshes the metadata cache.
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        self.directory_entries(fh, offset, max_entries, false).await
    }
    /// Like [`S3Filesystem::readdir`], for READDIRPLUS: every entry but `.`
    /// and `..` carries one kernel reference, taken atomically with its inode.
    /// The caller must [`S3Filesystem::forget`] once each entry its reply
    /// could not hold.
    pub async fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        self.directory_entries(fh, offset, max_entries, true).await
    }
    pub(super) async fn directory_entries(
        &self,
        fh: u64,
        offset: u64,
        max_entries: usize,
        take_references: bool,
    ) -> Result<Vec<DirEntry>, FsError> {
        let handle = self
            .handles()
            .directory(fh)
            .ok_or(FsError::UnknownHandle(fh))?;
        let dir = self.inode(handle.ino)?;
        let snapshot = {
            let mut snapshot = handle.snapshot.lock().await;
            if offset == 0 || snapshot.is_none() {
                let mut listing = self.list_directory(&dir.key).await?;
                self.add_local_children(handle.ino, &mut listing);
                let listing = Arc::new(listing);
                self.remember_listing(handle.ino, Arc::clone(&listing));
                *snapshot = Some(listing);
            }
            snapshot.clone().unwrap_or_default()
        };
        let mut out = Vec::new();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start < 2 {
            let parent = self.inode(dir.parent)?;
            let dots = [(".", handle.ino, &dir), ("..", dir.parent, &parent)];
            for (index, (name, ino, inode)) in dots.into_iter().enumerate().skip(start) {
                out.push(DirEntry {
                    next_offset: index as u64 + 1,
                    name: name.to_string(),
                    attr: self.attr_of(ino, inode),
                });
            }
        }
        let mut table = self.table();
        let mut created = Vec::new();
        let room = max_entries.saturating_sub(out.len());
        out.truncate(max_entries);
        let listed = snapshot
            .iter()
            .enumerate()
            .skip(start.saturating_sub(2))
            .take(room);
        for (index, entry) in listed {
            // The listing was taken at offset 0; what this mount made or
            // completed since is newer than it.
            let current = table
                .children
                .get(&(handle.ino, entry.name.clone()))
                .copied();
            let current_is_local = current
                .and_then(|ino| table.inodes.get(&ino))
                .is_some_and(|inode| inode.local);
            let ino = match current {
                // Made here (still being written, or a directory the store
                // does not have), or made here and completed since.
                Some(ino) if current_is_local || entry.local => ino,
                // Made here and gone since (unlinked, or its upload failed).
                None if entry.local => continue,
                _ => {
                    let ino = table.upsert(
                        handle.ino,
                        &entry.name,
                        entry.key.clone(),
                        entry.kind,
                        entry.stat.clone(),
                        false,
                    );
                    if current.is_none() {
                        created.push(ino);
                    }
                    ino
                }
            };
            if take_references {
                table.mark(ino);
            }
            let inode = table
                .inodes
                .get_mut(&ino)
                .ok_or(FsError::UnknownInode(ino))?;
            if take_references {
                inode.lookups += 1;
            }
            out.push(DirEntry {
                next_offset: index as u64 + 3,
                name: entry.name.clone(),
                attr: self.attr_of(ino, inode),
            });
        }
        drop(table);
        handle
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(created);
        Ok(out)
    }
    /// Adds the children of directory `ino` created through this mount and
    /// not in the store's listing (yet) to `listing`.
    pub(super) fn add_local_children(&self, ino: u64, listing: &mut Vec<ListedEntry>) {
        let table = self.table();
        let mut added = false;
        for ((parent, name), child) in &table.children {
            if *parent != ino {
                continue;
            }
            let Some(inode) = table.inodes.get(child) else {
                continue;
            };
            if !inode.local || listing.iter().any(|entry| &entry.name == name) {
                continue;
            }
            listing.push(ListedEntry {
                name: name.clone(),
                key: inode.key.clone(),
                kind: inode.kind,
                stat: inode.stat.clone(),
                local: true,
            });
            added = true;
        }
        if added {
            listing.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}
