//! The durable store of desired mounts: `mounts.json` (0600) in the state
//! directory, written as write-tmp, fsync, rename, fsync-dir, so a crash leaves
//! either the old or the new file; the previous good file is kept beside it
//! as `mounts.json.prev`. A corrupt file is moved aside and reported, never
//! silently dropped: the agent falls back to the previous file, and says
//! whether what it loaded can be trusted to remove mounts it does not know.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::operation::MountOperation;
use crate::spec::MountSpec;

const STATE_FILE: &str = "mounts.json";
const PREVIOUS_FILE: &str = "mounts.json.prev";
const CHECK_FILE: &str = ".mounts.json.check";
const AUDIT_FILE: &str = "audit.log";
const FORMAT_VERSION: u32 = 1;

/// One desired mount as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMount {
    /// What was asked for (secrets included: the file is 0600).
    pub spec: MountSpec,
    /// When it was first requested.
    pub created_at: DateTime<Utc>,
    /// Bumped on every re-mount.
    pub generation: u64,
    /// Who asked for it (`uid:N`, `token:NAME`), when it came through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// One line of the audit log (`audit.log`, JSON lines, 0600): who changed
/// what and how it ended. Never holds secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// When.
    pub time: DateTime<Utc>,
    /// `mount`, `unmount`, `recover` or `restore`.
    pub op: String,
    /// The dataset.
    pub name: String,
    /// `success` or `error`.
    pub result: String,
    /// The error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who asked (API calls: `uid:N`, `token:NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The source asked for, without secrets (API calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The HTTP status the call got (API calls, refusals included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    mounts: BTreeMap<String, StoredMount>,
}

/// What loading found.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// The desired mounts.
    pub mounts: BTreeMap<String, StoredMount>,
    /// Where a corrupt state file was moved, if it was.
    pub quarantined: Option<(PathBuf, String)>,
    /// The previous good file was loaded instead of a corrupt one.
    pub from_previous: bool,
}

impl LoadedState {
    /// Whether the state says all that is desired, so that a mount under the
    /// root that it does not name may be removed: not when the state file was
    /// corrupt (the previous file may miss the last change), nor while a
    /// quarantined file from an earlier start waits for an operator.
    pub fn complete(&self, store: &StateStore) -> bool {
        self.quarantined.is_none() && !self.from_previous && store.quarantined_files().is_empty()
    }
}

/// A failing state-store step.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created or secured.
    #[error("prepare state directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading the state file failed (not corruption: I/O).
    #[error("read state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Writing the state file failed; the previous file is intact.
    #[error("write state file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating, 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let fail = |source| StateError::Directory {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(fail)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the desired mounts. A missing file is an empty state; a file that
    /// does not parse is renamed to `mounts.json.corrupt-<time>`, reported,
    /// and the previous good file (`mounts.json.prev`) loaded instead.
    pub fn load(&self) -> Result<LoadedState, StateError> {
        let path = self.path();
        let previous = self.dir.join(PREVIOUS_FILE);
        let Some(parsed) = self.read_state(&path)? else {
            // No state file but a previous one: a crash between moving a
            // corrupt file aside and saving again. The previous one counts.
            return match self.read_state(&previous)? {
                Some(Ok(file)) => Ok(LoadedState {
                    mounts: file.mounts,
                    quarantined: None,
                    from_previous: true,
                }),
                _ => Ok(LoadedState::default()),
            };
        };
        let reason = match parsed {
            Ok(file) => {
                return Ok(LoadedState {
                    mounts: file.mounts,
                    ..LoadedState::default()
                });
            }
            Err(reason) => reason,
        };
        let aside = self.dir.join(format!(
            "{STATE_FILE}.corrupt-{}",
            Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        fs::rename(&path, &aside).map_err(|source| StateError::Write {
            path: aside.clone(),
            source,
        })?;
        match self.read_state(&previous)? {
            Some(Ok(file)) => {
                tracing::error!(
                    file = %path.display(), moved_to = %aside.display(), %reason,
                    previous = %previous.display(), datasets = file.mounts.len(),
                    "state file is corrupt; moved aside, loaded the previous good state"
                );
                Ok(LoadedState {
                    mounts: file.mounts,
                    quarantined: Some((aside, reason)),
                    from_previous: true,
                })
            }
            _ => {
                tracing::error!(
                    file = %path.display(), moved_to = %aside.display(), %reason,
                    "state file is corrupt and there is no previous good state; \
                     mounts under the root are kept, none is removed"
                );
                Ok(LoadedState {
                    mounts: BTreeMap::new(),
                    quarantined: Some((aside, reason)),
                    from_previous: false,
                })
            }
        }
    }

    /// Reads and checks one state file: None when it does not exist.
    fn read_state(&self, path: &Path) -> Result<Option<Result<StateFile, String>>, StateError> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let parsed = serde_json::from_slice::<StateFile>(&text)
            .map_err(|e| e.to_string())
            .and_then(|file| {
                if file.version == FORMAT_VERSION {
                    Ok(file)
                } else {
                    Err(format!("unknown format version {}", file.version))
                }
            })
            .and_then(|file| {
                for (name, stored) in &file.mounts {
                    crate::spec::validate_name(name).map_err(|e| format!("mount {name:?}: {e}"))?;
                    stored
                        .spec
                        .validate()
                        .map_err(|e| format!("mount {name}: {e}"))?;
                }
                Ok(file)
            });
        Ok(Some(parsed))
    }

    /// Corrupt state files moved aside and still in the state directory.
    pub fn quarantined_files(&self) -> Vec<PathBuf> {
        let prefix = format!("{STATE_FILE}.corrupt-");
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path())
            .collect();
        files.sort();
        files
    }

    /// Proves that a state of about `bytes` bytes can be written now (the
    /// directory is writable and has room): writes, syncs and removes a file
    /// of that size. A PUT or DELETE checks this before it changes anything.
    pub fn check_writable(&self, bytes: usize) -> Result<(), StateError> {
        // A file of its own per check: PUTs of different names run at once.
        static CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let check = CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{CHECK_FILE}-{}-{check}", std::process::id()));
        let fail = |source| StateError::Write {
            path: self.path(),
            source,
        };
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&vec![b' '; bytes])?;
                file.sync_all()
            });
        let removed = fs::remove_file(&path);
        written.map_err(fail)?;
        removed.map_err(fail)
    }

    /// The size of the state file now (0 when there is none).
    pub fn size(&self) -> usize {
        fs::metadata(self.path()).map_or(0, |meta| meta.len() as usize)
    }

    /// Appends one event to the audit log (best effort: a full disk must not
    /// fail a mount, so a failure is logged, not returned).
    pub fn audit(&self, op: MountOperation, name: &str, error: Option<String>) {
        self.append_audit(AuditEvent {
            time: Utc::now(),
            op: op.to_string(),
            name: name.to_string(),
            result: if error.is_some() { "error" } else { "success" }.to_string(),
            error,
            caller: None,
            source: None,
            status: None,
        });
    }

    /// Appends one API call to the audit log: who, what, on which source,
    /// and the status it got (refusals included).
    pub fn audit_call(
        &self,
        caller: &str,
        op: &str,
        name: &str,
        source: Option<String>,
        status: u16,
    ) {
        let result = if status < 400 { "success" } else { "error" };
        self.append_audit(AuditEvent {
            time: Utc::now(),
            op: op.to_string(),
            name: name.to_string(),
            result: result.to_string(),
            error: None,
            caller: Some(caller.to_string()),
            source,
            status: Some(status),
        });
    }

    fn append_audit(&self, event: AuditEvent) {
        let path = self.dir.join(AUDIT_FILE);
        let written = serde_json::to_vec(&event)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)?
                    .write_all(&line)
            });
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not write the audit log");
        }
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, mounts: &BTreeMap<String, StoredMount>) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let fail = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&StateFile {
            version: FORMAT_VERSION,
            mounts: mounts.clone(),
        })
        .map_err(|e| fail(std::io::Error::other(e)))?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
        file.write_all(&body).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        drop(file);
        // The current file becomes the previous one (a hard link: at every
        // moment a good state file exists under one of the two names).
        // With no current file (it was corrupt and moved aside), the
        // previous one stays what it is.
        let previous = self.dir.join(PREVIOUS_FILE);
        if path.exists() {
            match fs::remove_file(&previous) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            }
            fs::hard_link(&path, &previous).map_err(fail)?;
        }
        fs::rename(&tmp, &path).map_err(fail)?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spec() -> MountSpec {
        serde_json::from_str(r#"{"source":{"s3":{"bucket":"abc","credentials":{"inline":{"accessKeyId":"A","secretAccessKey":"S"}}}}}"#).unwrap()
    }

    #[test]
    fn saved_state_loads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().mounts.is_empty());
        let mut mounts = BTreeMap::new();
        mounts.insert(
            "ds".to_string(),
            StoredMount {
                spec: spec(),
                created_at: Utc::now(),
                generation: 3,
                created_by: Some("uid:1000".to_string()),
            },
        );
        store.save(&mounts).unwrap();
        assert_eq!(store.load().unwrap().mounts, mounts);
        let mode = fs::metadata(store.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.path().join("state")).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("state")).unwrap().collect();
        assert_eq!(names.len(), 1);
        store.audit(MountOperation::Mount, "ds", None);
        store.audit(MountOperation::Unmount, "ds", Some("busy".into()));
        let log = fs::read_to_string(dir.path().join("state/audit.log")).unwrap();
        let events: Vec<AuditEvent> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[1].op.as_str(), events[1].result.as_str()),
            ("unmount", "error")
        );
        let mode = fs::metadata(dir.path().join("state/audit.log"))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"{\"version\":1,\"mounts\":{\"x\":").unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.mounts.is_empty());
        let (aside, reason) = loaded.quarantined.expect("reported");
        assert!(aside.exists(), "the corrupt file is kept for the operator");
        assert!(reason.contains("EOF"), "{reason}");
        assert!(!store.path().exists());
    }

    fn stored() -> StoredMount {
        StoredMount {
            spec: spec(),
            created_at: Utc::now(),
            generation: 1,
            created_by: None,
        }
    }

    #[test]
    fn a_corrupt_file_falls_back_to_the_previous_good_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut mounts = BTreeMap::new();
        mounts.insert("a".to_string(), stored());
        store.save(&mounts).unwrap();
        mounts.insert("b".to_string(), stored());
        store.save(&mounts).unwrap();
        let clean = store.load().unwrap();
        assert_eq!(clean.mounts.len(), 2);
        assert!(clean.complete(&store), "a clean load may remove orphans");

        fs::write(store.path(), b"{\"version\":1,\"mou").unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.from_previous);
        assert_eq!(
            loaded.mounts.keys().collect::<Vec<_>>(),
            ["a"],
            "the state before the last change"
        );
        assert!(loaded.quarantined.is_some());
        assert!(!loaded.complete(&store), "it may miss the last change");
        // Later starts load a good file, yet remove nothing while the
        // corrupt one waits for an operator.
        store.save(&loaded.mounts).unwrap();
        let later = store.load().unwrap();
        assert!(later.quarantined.is_none() && !later.from_previous);
        assert!(!later.complete(&store));
        for file in store.quarantined_files() {
            fs::remove_file(file).unwrap();
        }
        assert!(store.load().unwrap().complete(&store));
        // No state file, a previous one: it is loaded, and not trusted to
        // remove anything.
        fs::remove_file(store.path()).unwrap();
        let fallback = store.load().unwrap();
        assert!(fallback.from_previous && !fallback.mounts.is_empty());
        assert!(!fallback.complete(&store));
    }

    #[test]
    fn with_no_good_state_nothing_is_restored_and_nothing_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"garbage").unwrap();
        fs::write(dir.path().join(PREVIOUS_FILE), b"also garbage").unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.mounts.is_empty() && !loaded.from_previous);
        assert!(!loaded.complete(&store));
    }

    #[test]
    fn a_state_that_cannot_be_written_is_found_before_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state")).unwrap();
        store.check_writable(store.size() + 4096).unwrap();
        let leftovers = fs::read_dir(dir.path().join("state")).unwrap().count();
        assert_eq!(leftovers, 0, "the check leaves no file");
        // A state directory that is gone (or not a directory) cannot be written.
        fs::remove_dir_all(dir.path().join("state")).unwrap();
        fs::write(dir.path().join("state"), b"not a directory").unwrap();
        assert!(matches!(
            store.check_writable(4096),
            Err(StateError::Write { .. })
        ));
    }

    #[test]
    fn an_invalid_entry_counts_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let text = r#"{"version":1,"mounts":{"Bad Name":{"spec":{"source":{"s3":{"bucket":"abc"}}},"createdAt":"2026-01-01T00:00:00Z","generation":1}}}"#;
        fs::write(store.path(), text).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.quarantined.unwrap().1.contains("Bad Name"));
    }
}
