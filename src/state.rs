//! The durable store of desired mounts: `mounts.json` (0600) in the state
//! directory, written as write-tmp, fsync, rename, fsync-dir, so a crash leaves
//! either the old or the new file. A corrupt file is moved aside and reported,
//! never silently dropped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::spec::MountSpec;

const STATE_FILE: &str = "mounts.json";
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
    /// does not parse is renamed to `mounts.json.corrupt-<time>` and reported.
    pub fn load(&self) -> Result<LoadedState, StateError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoadedState::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let parsed: Result<StateFile, String> = serde_json::from_slice::<StateFile>(&text)
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
        match parsed {
            Ok(file) => Ok(LoadedState {
                mounts: file.mounts,
                quarantined: None,
            }),
            Err(reason) => {
                let aside = self.dir.join(format!(
                    "{STATE_FILE}.corrupt-{}",
                    Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
                ));
                fs::rename(&path, &aside).map_err(|source| StateError::Write {
                    path: aside.clone(),
                    source,
                })?;
                tracing::error!(
                    file = %path.display(), moved_to = %aside.display(), %reason,
                    "state file is corrupt; moved aside, starting with no desired mounts"
                );
                Ok(LoadedState {
                    mounts: BTreeMap::new(),
                    quarantined: Some((aside, reason)),
                })
            }
        }
    }

    /// Appends one event to the audit log (best effort: a full disk must not
    /// fail a mount, so a failure is logged, not returned).
    pub fn audit(&self, op: &str, name: &str, error: Option<String>) {
        let event = AuditEvent {
            time: Utc::now(),
            op: op.to_string(),
            name: name.to_string(),
            result: if error.is_some() { "error" } else { "success" }.to_string(),
            error,
        };
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
        store.audit("mount", "ds", None);
        store.audit("unmount", "ds", Some("busy".into()));
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
