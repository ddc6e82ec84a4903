//! The journals of the tables the kernel remembers (node ids with their
//! lookup counts, file handles), kept in memfds that the supervisor holds, so
//! that a worker started after a crash answers for every node id and handle
//! the dead one handed out.
//!
//! The rule that makes this safe: a table change is written to its journal
//! before the table's lock is released ([`TableGuard`]), so before any reply
//! that tells the kernel about it. A `write` into a memfd is a copy into
//! memory that survives the writer's `SIGKILL`.
//!
//! Layout of a journal file: the first page holds, in its first 8 bytes, the
//! offset of the current checkpoint; from there on, one JSON entry per line.
//! A checkpoint (the whole table) is written after the last entry when the
//! entries since the previous one outgrow it; the pages before it are then
//! punched out, so a journal costs about twice its table, never more.

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::s3fs::fs::SNAPSHOT_FORMAT;

/// The first page: the checkpoint offset and room to spare.
const HEADER_BYTES: u64 = 4096;
/// Entries written since the last checkpoint before one is considered.
const MIN_ENTRIES_BYTES_BEFORE_CHECKPOINT: u64 = 64 * 1024;

/// One journal file (a memfd).
#[derive(Debug)]
pub struct Journal {
    file: File,
    /// Where the next entry goes.
    end: u64,
    /// Bytes of the last checkpoint.
    checkpoint_bytes: u64,
    /// Bytes of entries written after it.
    entries_bytes: u64,
    /// Whether a failed write was already logged.
    failed: bool,
    /// A write failed since the last checkpoint: what follows it cannot be
    /// trusted, so the next flush writes a whole checkpoint.
    broken: bool,
}

impl Journal {
    /// A new, empty journal in a memfd named `name`.
    pub fn create(name: &str) -> io::Result<Journal> {
        let name = format!("hotmount-journal:{name}").replace('\0', "");
        let fd =
            nix::sys::memfd::memfd_create(name.as_str(), nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let file = File::from(fd);
        file.write_all_at(&HEADER_BYTES.to_le_bytes(), 0)?;
        file.set_len(HEADER_BYTES)?;
        Ok(Journal {
            file,
            end: HEADER_BYTES,
            checkpoint_bytes: 0,
            entries_bytes: 0,
            failed: false,
            broken: false,
        })
    }

    /// A journal another process wrote (its fd as the supervisor handed it
    /// over); read it with [`Journal::replay`], then write a checkpoint
    /// before new entries (the last line may be torn).
    pub fn open(fd: OwnedFd) -> io::Result<Journal> {
        let file = File::from(fd);
        let end = file.metadata()?.len().max(HEADER_BYTES);
        Ok(Journal {
            file,
            end,
            checkpoint_bytes: 0,
            entries_bytes: 0,
            failed: false,
            broken: false,
        })
    }

    /// The memfd, to hand a copy of it to the supervisor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Every entry from the last checkpoint on, in order. A line that does
    /// not parse (the torn last write of a killed process, which was never
    /// acknowledged to the kernel) is left out and counted.
    pub fn replay<E: DeserializeOwned>(&self) -> io::Result<(Vec<E>, usize)> {
        let mut offset_bytes = [0u8; 8];
        self.file.read_exact_at(&mut offset_bytes, 0)?;
        let start = u64::from_le_bytes(offset_bytes).max(HEADER_BYTES);
        let len = self.file.metadata()?.len();
        if start >= len {
            return Ok((Vec::new(), 0));
        }
        let mut text = vec![0u8; (len - start) as usize];
        self.file.read_exact_at(&mut text, start)?;
        let mut entries = Vec::new();
        let mut unreadable = 0;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(line) {
                Ok(entry) => entries.push(entry),
                Err(_) => unreadable += 1,
            }
        }
        Ok((entries, unreadable))
    }

    /// Appends `entries`, one line each, in one write.
    pub fn append<E: Serialize>(&mut self, entries: &[E]) {
        let text = lines(entries);
        let result = self.file.write_all_at(&text, self.end);
        if self.check(result) {
            self.end += text.len() as u64;
            self.entries_bytes += text.len() as u64;
        }
    }

    /// Whether the entries since the last checkpoint outgrew it, or a
    /// write failed since.
    pub fn wants_checkpoint(&self) -> bool {
        self.broken
            || (self.entries_bytes > MIN_ENTRIES_BYTES_BEFORE_CHECKPOINT
                && self.entries_bytes > 2 * self.checkpoint_bytes)
    }

    /// Writes `entries` (a whole table) as the new starting point and frees
    /// what came before it.
    pub fn checkpoint<E: Serialize>(&mut self, entries: &[E]) {
        // A newline first ends a torn line left by a killed writer.
        let mut text = vec![b'\n'];
        text.extend_from_slice(&lines(entries));
        let start = self.end.next_multiple_of(HEADER_BYTES);
        let written = self.file.write_all_at(&text, start);
        if !self.check(written) {
            return;
        }
        let moved = self.file.write_all_at(&start.to_le_bytes(), 0);
        if !self.check(moved) {
            return;
        }
        if start > HEADER_BYTES {
            // Best effort: the old entries only cost memory.
            let _ = nix::fcntl::fallocate(
                &self.file,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                HEADER_BYTES as i64,
                (start - HEADER_BYTES) as i64,
            );
        }
        self.end = start + text.len() as u64;
        self.checkpoint_bytes = text.len() as u64;
        self.entries_bytes = 0;
        self.broken = false;
    }

    /// Logs the first failed write: a worker started later would answer
    /// for stale node ids (the mount keeps working meanwhile).
    fn check(&mut self, result: io::Result<()>) -> bool {
        match result {
            Ok(()) => true,
            Err(err) => {
                // A partial write must not be followed by newer entries
                // that a replay would read before older ones: cut it off.
                let _ = self.file.set_len(self.end);
                self.broken = true;
                if !self.failed {
                    tracing::warn!(error = %err, "cannot write a table journal; a worker restart would lose track of open files");
                    self.failed = true;
                }
                false
            }
        }
    }

    /// Memory the journal holds (its pages in use), for tests.
    pub fn resident_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }
}

fn lines<E: Serialize>(entries: &[E]) -> Vec<u8> {
    let mut text = Vec::with_capacity(entries.len() * 128);
    for entry in entries {
        // Serializing plain data into a Vec cannot fail.
        if serde_json::to_writer(&mut text, entry).is_ok() {
            text.push(b'\n');
        }
    }
    text
}

/// What a journal files a table's record under (a node id, a handle number).
pub(crate) trait Keyed {
    /// The record's key.
    fn key(&self) -> u64;
}

/// One line of a table journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry<R> {
    /// Starts a checkpoint: the format, and the next key to hand out.
    Head {
        /// [`SNAPSHOT_FORMAT`] of the build that wrote it.
        format: u32,
        /// The next key (keys are never reused within a mount). Builds
        /// before the tables shared this type wrote `next_ino` in inode
        /// journals: a worker of this build takes their connections over.
        #[serde(alias = "next_ino")]
        next: u64,
    },
    /// A record as it is now (`Inode` or `Handle` in older builds).
    #[serde(alias = "Inode", alias = "Handle")]
    Record(R),
    /// A key the kernel let go of.
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

/// The table a journal describes (the next key, the records by key): its
/// last checkpoint with every entry after it applied.
pub(crate) fn replay<R: Keyed>(entries: Vec<Entry<R>>) -> Result<(u64, Vec<R>), ReplayError> {
    let mut entries = entries.into_iter();
    let mut next = match entries.next() {
        Some(Entry::Head { format, next }) if format == SNAPSHOT_FORMAT => next,
        Some(Entry::Head { format, .. }) => {
            return Err(ReplayError::Format {
                found: format,
                expected: SNAPSHOT_FORMAT,
            });
        }
        _ => return Err(ReplayError::NoCheckpoint),
    };
    let mut records = std::collections::BTreeMap::new();
    for entry in entries {
        match entry {
            Entry::Head { .. } => {}
            Entry::Record(record) => {
                next = next.max(record.key() + 1);
                records.insert(record.key(), record);
            }
            Entry::Gone(key) => {
                next = next.max(key + 1);
                records.remove(&key);
            }
        }
    }
    Ok((next, records.into_values().collect()))
}

/// A table kept with a journal: it knows which of its records changed since
/// the last flush, and writes them.
pub(crate) trait JournaledTable {
    /// What the journal keeps of one entry of the table.
    type Record: Serialize + Keyed;

    /// The journal, if the table has one.
    fn journal_mut(&mut self) -> &mut Option<TableJournal>;

    /// What a new process needs to know of `key` (none: it is gone).
    fn record_of(&self, key: u64) -> Option<Self::Record>;

    /// The next key and every record, in key order.
    fn records(&self) -> (u64, Vec<Self::Record>);

    /// Starts writing every change to `journal`, beginning with the whole
    /// table.
    fn start_journal(&mut self, journal: Journal) {
        let mut journal = TableJournal {
            journal,
            dirty: Vec::new(),
        };
        journal.journal.checkpoint(&checkpoint_entries(self));
        *self.journal_mut() = Some(journal);
    }

    /// Writes what changed to the journal (nothing without one).
    fn flush_journal(&mut self) {
        let Some(mut journal) = self.journal_mut().take() else {
            return;
        };
        if !journal.dirty.is_empty() {
            let entries: Vec<Entry<Self::Record>> = journal
                .take_dirty()
                .into_iter()
                .map(|key| match self.record_of(key) {
                    Some(record) => Entry::Record(record),
                    None => Entry::Gone(key),
                })
                .collect();
            journal.journal.append(&entries);
            if journal.journal.wants_checkpoint() {
                journal.journal.checkpoint(&checkpoint_entries(self));
            }
        }
        *self.journal_mut() = Some(journal);
    }
}

/// The whole table as journal lines: a head, then every record.
fn checkpoint_entries<T: JournaledTable + ?Sized>(table: &T) -> Vec<Entry<T::Record>> {
    let (next, records) = table.records();
    std::iter::once(Entry::Head {
        format: SNAPSHOT_FORMAT,
        next,
    })
    .chain(records.into_iter().map(Entry::Record))
    .collect()
}

/// The lock of a journaled table: what changed under it is in the journal
/// before the lock is released, hence before the kernel hears of it.
pub(crate) struct TableGuard<'a, T: JournaledTable>(MutexGuard<'a, T>);

/// Locks `table` (a poisoned lock still gives the table: every change to it
/// is one step that leaves it consistent).
pub(crate) fn lock_table<T: JournaledTable>(table: &Mutex<T>) -> TableGuard<'_, T> {
    TableGuard(
        table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

impl<T: JournaledTable> Deref for TableGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: JournaledTable> DerefMut for TableGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: JournaledTable> Drop for TableGuard<'_, T> {
    fn drop(&mut self) {
        self.0.flush_journal();
    }
}

/// A table's journal and the keys changed since it was last written.
#[derive(Debug)]
pub(crate) struct TableJournal {
    pub(crate) journal: Journal,
    pub(crate) dirty: Vec<u64>,
}

impl TableJournal {
    /// The changed keys, each once, in order; none left changed.
    pub(crate) fn take_dirty(&mut self) -> Vec<u64> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        dirty
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Entry {
        key: u64,
        text: String,
    }

    fn entry(key: u64) -> Entry {
        Entry {
            key,
            text: "x".repeat(100),
        }
    }

    fn reopen(journal: &Journal) -> Journal {
        Journal::open(journal.fd().try_clone_to_owned().unwrap()).unwrap()
    }

    impl Keyed for Entry {
        fn key(&self) -> u64 {
            self.key
        }
    }

    #[test]
    fn journals_of_builds_before_the_shared_entry_type_replay() {
        // What those builds wrote: `Inode`/`Handle` records, and `next_ino`
        // in the head of inode journals.
        let lines = [
            format!(r#"{{"Head":{{"format":{SNAPSHOT_FORMAT},"next_ino":9}}}}"#),
            r#"{"Inode":{"key":3,"text":"x"}}"#.to_string(),
            r#"{"Handle":{"key":5,"text":"y"}}"#.to_string(),
            r#"{"Gone":3}"#.to_string(),
        ];
        let entries: Vec<super::Entry<Entry>> = lines
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let (next, records) = replay(entries).unwrap();
        assert_eq!(next, 9);
        assert_eq!(
            records,
            vec![Entry {
                key: 5,
                text: "y".to_string()
            }]
        );
    }

    #[test]
    fn entries_read_back_in_order_through_another_descriptor() {
        let mut journal = Journal::create("test").unwrap();
        journal.checkpoint(&[entry(1)]);
        journal.append(&[entry(2), entry(3)]);
        journal.append(&[entry(4)]);
        let (entries, unreadable) = reopen(&journal).replay::<Entry>().unwrap();
        assert_eq!(unreadable, 0);
        assert_eq!(
            entries.iter().map(|e| e.key).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_the_next_checkpoint_starts_clean() {
        let mut journal = Journal::create("test").unwrap();
        journal.checkpoint(&[entry(1)]);
        journal.append(&[entry(2)]);
        // A writer killed in the middle of its last write.
        journal
            .file
            .write_all_at(b"{\"key\":3,\"te", journal.end)
            .unwrap();
        let mut resumed = reopen(&journal);
        let (entries, unreadable) = resumed.replay::<Entry>().unwrap();
        assert_eq!(entries, vec![entry(1), entry(2)]);
        assert_eq!(unreadable, 1);
        resumed.checkpoint(&entries);
        resumed.append(&[entry(5)]);
        let (entries, unreadable) = reopen(&resumed).replay::<Entry>().unwrap();
        assert_eq!(unreadable, 0);
        assert_eq!(
            entries.iter().map(|e| e.key).collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
    }

    #[test]
    fn checkpoints_free_the_entries_before_them() {
        let mut journal = Journal::create("test").unwrap();
        for round in 0..200u64 {
            journal.append(&(0..100).map(|k| entry(round * 100 + k)).collect::<Vec<_>>());
            if journal.wants_checkpoint() {
                journal.checkpoint(&[entry(round)]);
            }
        }
        // 200 rounds of 100 entries of ~120 bytes wrote 2.4 MB; what is
        // kept is the last checkpoint and the entries after it.
        let resident = journal.resident_bytes();
        assert!(resident < 512 * 1024, "journal keeps {resident} bytes");
        let (entries, _) = reopen(&journal).replay::<Entry>().unwrap();
        assert!(entries.len() < 1_000, "{} entries replayed", entries.len());
    }

    #[test]
    fn a_failed_write_is_cut_off_and_the_next_flush_writes_a_whole_checkpoint() {
        let mut journal = Journal::create("test").unwrap();
        journal.checkpoint(&[entry(1)]);
        journal.append(&[entry(2)]);
        assert!(!journal.wants_checkpoint());
        let length = journal.file.metadata().unwrap().len();
        // The same memfd, read-only: every write fails.
        let read_only = File::open(format!("/proc/self/fd/{}", journal.fd().as_raw_fd())).unwrap();
        let writable = std::mem::replace(&mut journal.file, read_only);
        journal.append(&[entry(3)]);
        assert!(
            journal.wants_checkpoint(),
            "the next flush rewrites the table"
        );
        journal.file = writable;
        assert_eq!(
            journal.file.metadata().unwrap().len(),
            length,
            "nothing half-written"
        );
        journal.checkpoint(&[entry(1), entry(2), entry(3)]);
        assert!(!journal.wants_checkpoint());
        let (entries, unreadable) = reopen(&journal).replay::<Entry>().unwrap();
        assert_eq!((entries.len(), unreadable), (3, 0));
    }
}
