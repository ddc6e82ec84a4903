//! `file://` buckets confined to their directory. `object_store`'s local
//! store follows symbolic links, so a link placed in a bucket directory
//! (`leak -> /etc/shadow`, `out -> /`) served files from anywhere on the node
//! to any pod. Every path is resolved first with `openat2` beneath the bucket
//! directory and without following any symbolic link
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a path through a link is
//! refused (`EACCES` in the mount) and left out of listings.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// A local directory served as a bucket, nothing outside it.
#[derive(Debug)]
pub struct ConfinedLocalStore {
    inner: LocalFileSystem,
    root: PathBuf,
    root_fd: OwnedFd,
}

impl fmt::Display for ConfinedLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfinedLocalStore({})", self.root.display())
    }
}

impl ConfinedLocalStore {
    /// The bucket directory `root` (which must be a directory, not a link).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let inner = LocalFileSystem::new_with_prefix(root).map_err(std::io::Error::other)?;
        Ok(ConfinedLocalStore {
            inner,
            root: root.to_path_buf(),
            root_fd,
        })
    }

    /// Whether `location` (or, if it does not exist yet, its deepest
    /// existing ancestor) resolves beneath the bucket without a link.
    fn confined(&self, location: &ObjectPath) -> Result<(), object_store::Error> {
        let mut relative = PathBuf::from(location.as_ref());
        loop {
            if relative.as_os_str().is_empty() {
                return Ok(());
            }
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                );
            match openat2(&self.root_fd, &relative, how) {
                Ok(fd) => {
                    // O_PATH|O_NOFOLLOW opens a link itself: refuse that too.
                    let stat = nix::sys::stat::fstat(&fd).map_err(|e| refused(location, e))?;
                    let is_link = stat.st_mode & libc::S_IFMT == libc::S_IFLNK;
                    return if is_link {
                        Err(refused(location, Errno::ELOOP))
                    } else {
                        Ok(())
                    };
                }
                Err(Errno::ENOENT) => {
                    if !relative.pop() {
                        return Ok(());
                    }
                }
                Err(errno) => return Err(refused(location, errno)),
            }
        }
    }
}

fn refused(location: &ObjectPath, errno: Errno) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: location.to_string(),
        source: format!("{location}: not served: it resolves through a symbolic link or outside the bucket directory ({errno})").into(),
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocalStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.confined(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.confined(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.confined(location)?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        // A path through a link is refused, never passed on for deletion.
        let confined = Arc::new(ConfinedPaths {
            root_fd: self.root_fd.try_clone().ok(),
        });
        let checked = locations
            .map(move |location| {
                let location = location?;
                if confined.allows(&location) || !confined.exists(&location) {
                    Ok(location)
                } else {
                    Err(refused(&location, Errno::ELOOP))
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if let Some(prefix) = prefix
            && let Err(err) = self.confined(prefix)
        {
            return futures::stream::once(async move { Err(err) }).boxed();
        }
        let confined = Arc::new(ConfinedPaths {
            root_fd: self.root_fd.try_clone().ok(),
        });
        self.inner
            .list(prefix)
            .filter(move |item| {
                let keep = match item {
                    Ok(meta) => confined.allows(&meta.location),
                    Err(_) => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        if let Some(prefix) = prefix {
            self.confined(prefix)?;
        }
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed
            .common_prefixes
            .retain(|prefix| self.confined(prefix).is_ok());
        listed
            .objects
            .retain(|meta| self.confined(&meta.location).is_ok());
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.confined(from)?;
        self.confined(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// The check of [`ConfinedLocalStore::confined`] for a listing stream,
/// which outlives the borrow of the store.
struct ConfinedPaths {
    root_fd: Option<OwnedFd>,
}

impl ConfinedPaths {
    /// Whether anything (a link included) is at `location`, looked at
    /// without following links.
    fn exists(&self, location: &ObjectPath) -> bool {
        let Some(root_fd) = &self.root_fd else {
            return true;
        };
        nix::sys::stat::fstatat(
            root_fd,
            Path::new(location.as_ref()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    fn allows(&self, location: &ObjectPath) -> bool {
        let Some(root_fd) = &self.root_fd else {
            return false;
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(root_fd, Path::new(location.as_ref()), how)
            .and_then(|fd| nix::sys::stat::fstat(&fd))
            .is_ok_and(|stat| stat.st_mode & libc::S_IFMT != libc::S_IFLNK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn links_in_a_bucket_directory_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = dir.path().join("bucket");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(bucket.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(bucket.join("sub/ok.txt"), b"ok").unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), bucket.join("leak")).unwrap();
        std::os::unix::fs::symlink(&outside, bucket.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/ok.txt", bucket.join("inside-link")).unwrap();
        let store = ConfinedLocalStore::new(&bucket).unwrap();

        let ok = store.get(&ObjectPath::from("sub/ok.txt")).await.unwrap();
        assert_eq!(ok.bytes().await.unwrap().as_ref(), b"ok");
        for key in ["leak", "out/secret", "inside-link"] {
            let refused = store.get(&ObjectPath::from(key)).await;
            assert!(
                matches!(refused, Err(object_store::Error::PermissionDenied { .. })),
                "{key}: {refused:?}"
            );
        }
        let listed = store.list_with_delimiter(None).await.unwrap();
        let names: Vec<String> = listed
            .objects
            .iter()
            .map(|m| m.location.to_string())
            .chain(listed.common_prefixes.iter().map(ToString::to_string))
            .collect();
        assert_eq!(names, ["sub"], "links are left out of listings");
        let all: Vec<String> = store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(all, ["sub/ok.txt"]);
        let written = store
            .put(&ObjectPath::from("out/planted"), PutPayload::from("x"))
            .await;
        assert!(written.is_err(), "no write through a link");
        assert!(!outside.join("planted").exists());
        let deleted = store.delete(&ObjectPath::from("out/secret")).await;
        assert!(deleted.is_err(), "no delete through a link");
        assert!(outside.join("secret").exists());
    }
}
