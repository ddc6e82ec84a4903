//! Opening the object store behind an S3 dataset: an S3 server through
//! `object_store`'s AWS client, or a `file:///DIR` endpoint whose subdirectories
//! are buckets (only directories the operator allowed). Credentials files are
//! read beforehand ([`super::credentials`]); their provider signs requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::credentials::{CredentialsError, FileCredentialProvider};
use super::local::ConfinedLocalStore;
use crate::spec::{S3Credentials, S3Source};

/// How long a connection attempt to an S3 endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one S3 request may take end to end by default (a 1 GiB GET at
/// 50 MB/s fits); `--s3-request-timeout` sets another ([`set_request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client keeps retrying one request.
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// The request timeout of S3 clients made from now on, in milliseconds.
static REQUEST_TIMEOUT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_REQUEST_TIMEOUT.as_millis() as u64);

/// Sets how long one S3 request may take (process-wide, for the clients made
/// after): a read from a server that stopped answering fails (EIO) after
/// about this long, and its retries, never hangs for good.
pub fn set_request_timeout(timeout: Duration) {
    REQUEST_TIMEOUT_MS.store(
        timeout.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn request_timeout() -> Duration {
    Duration::from_millis(REQUEST_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Which local directories `file://` endpoints may name.
#[derive(Debug, Clone, Default)]
pub struct FileEndpointPolicy {
    /// Allowed directories; an endpoint must be one of them (or below one).
    pub allowed_dirs: Vec<PathBuf>,
}

/// Why a `file://` bucket directory cannot be used.
#[derive(Debug, PartialEq, Eq)]
enum FileBucketRefusal {
    /// Not beneath an allowed directory, or reached through a symlink.
    NotAllowed,
    /// No such directory.
    Missing,
}

impl FileEndpointPolicy {
    /// The real path of bucket `bucket` of the endpoint directory `dir`,
    /// resolved beneath an allowed directory with no symlink and no `..`
    /// on the way (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a link
    /// planted inside an allowed directory never leads out of it.
    fn resolve_bucket(&self, dir: &Path, bucket: &str) -> Result<PathBuf, FileBucketRefusal> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        let mut refusal = FileBucketRefusal::NotAllowed;
        for allowed in self.allowed_dirs.iter().filter(|a| dir.starts_with(a)) {
            let Ok(relative) = dir.strip_prefix(allowed) else {
                continue;
            };
            let Ok(allowed_fd) = nix::fcntl::open(
                allowed,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) else {
                continue;
            };
            let how = OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                );
            match openat2(&allowed_fd, &relative.join(bucket), how) {
                Ok(bucket_fd) => {
                    use std::os::fd::AsRawFd;
                    let real =
                        std::fs::read_link(format!("/proc/self/fd/{}", bucket_fd.as_raw_fd()));
                    return real.map_err(|_| FileBucketRefusal::Missing);
                }
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => {
                    refusal = FileBucketRefusal::Missing;
                }
                Err(_) => {}
            }
        }
        Err(refusal)
    }
}

/// An opened bucket: the store, and the key prefix that is the mount's root.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// The object store, rooted at the bucket.
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix exposed as the root: empty, or ending in `/`.
    pub prefix: String,
    /// `bucket/prefix`, for logs and mountinfo.
    pub display: String,
}

/// Why a bucket could not be opened or reached.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `file://` endpoint outside the operator's allow-list.
    #[error("file endpoint {dir} is not allowed: start the agent with --allow-file-endpoint {dir}")]
    EndpointNotAllowed {
        /// The directory named by the endpoint.
        dir: PathBuf,
    },
    /// The credentials cannot be used (never says what a file holds).
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The client could not be configured.
    #[error("configure s3 client for bucket {bucket}: {reason}")]
    Config {
        /// The bucket.
        bucket: String,
        /// The client's reason.
        reason: String,
    },
    /// The bucket does not exist.
    #[error("bucket {bucket} does not exist at {endpoint}")]
    BucketNotFound {
        /// The bucket.
        bucket: String,
        /// Where it was looked for.
        endpoint: String,
    },
    /// The server refused the credentials.
    #[error("access to bucket {bucket} denied: {reason}")]
    AccessDenied {
        /// The bucket.
        bucket: String,
        /// The server's reason.
        reason: String,
    },
    /// The endpoint could not be reached or answered with an error.
    #[error("s3 endpoint {endpoint} failed: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The client's reason.
        reason: String,
    },
    /// The endpoint did not answer in time.
    #[error("s3 endpoint {endpoint} did not answer within {seconds}s")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The deadline.
        seconds: u64,
    },
}

fn endpoint_label(source: &S3Source) -> String {
    source
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://s3.amazonaws.com".to_string())
}

/// S3 clients shared by the datasets that have the same endpoint, region,
/// addressing, bucket and credentials: one connection pool and one TLS set-up
/// for all of them. A client lives as long as a dataset uses it.
#[derive(Debug, Default)]
pub struct SharedClients {
    clients: Mutex<HashMap<ClientKey, Weak<dyn ObjectStore>>>,
}

/// What makes two datasets' S3 clients interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    endpoint: Option<String>,
    region: Option<String>,
    path_style: bool,
    bucket: String,
    credentials: ClientCredentials,
}

/// The credentials part of a [`ClientKey`] (secrets only as a hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientCredentials {
    Anonymous,
    File(PathBuf),
    Inline {
        access_key_id: String,
        secret_hash: u64,
    },
}

impl ClientKey {
    fn of(source: &S3Source, file_credentials: Option<&FileCredentialProvider>) -> Self {
        let credentials = match (&source.credentials, file_credentials) {
            (_, Some(file)) => ClientCredentials::File(file.path()),
            (Some(S3Credentials::Inline(inline)), None) => {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                (&inline.secret_access_key, &inline.session_token).hash(&mut hasher);
                ClientCredentials::Inline {
                    access_key_id: inline.access_key_id.clone(),
                    secret_hash: hasher.finish(),
                }
            }
            _ => ClientCredentials::Anonymous,
        };
        ClientKey {
            endpoint: source.endpoint.clone(),
            region: source.region.clone(),
            path_style: source.path_style,
            bucket: source.bucket.clone(),
            credentials,
        }
    }
}

impl SharedClients {
    /// The client for `source`: a live one another dataset uses, or a new one.
    fn client(
        &self,
        source: &S3Source,
        file_credentials: Option<FileCredentialProvider>,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let key = ClientKey::of(source, file_credentials.as_ref());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key).and_then(Weak::upgrade) {
            return Ok(client);
        }
        let client: Arc<dyn ObjectStore> =
            Arc::new(s3_builder(source, file_credentials)?.build().map_err(|e| {
                StoreError::Config {
                    bucket: source.bucket.clone(),
                    reason: e.to_string(),
                }
            })?);
        clients.retain(|_, client| client.strong_count() > 0);
        clients.insert(key, Arc::downgrade(&client));
        Ok(client)
    }

    /// Clients alive (shared or not).
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|client| client.strong_count() > 0)
            .count()
    }

    /// Whether no client is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens the store for `source`, signing with `file_credentials` when the
/// spec names a credentials file (loaded beforehand, see
/// [`super::credentials::CredentialsFile::load`]); an S3 client is taken
/// from `clients` when another dataset has one for the same endpoint,
/// bucket and credentials. Does no network I/O; see [`Bucket::check`].
pub fn open_bucket(
    source: &S3Source,
    policy: &FileEndpointPolicy,
    file_credentials: Option<FileCredentialProvider>,
    clients: &SharedClients,
) -> Result<Bucket, StoreError> {
    let prefix = source.normalized_prefix();
    let display = format!("{}/{}", source.bucket, prefix.trim_end_matches('/'))
        .trim_end_matches('/')
        .to_string();
    let store: Arc<dyn ObjectStore> = match source.file_endpoint_dir() {
        Some(dir) => {
            let bucket_dir = match policy.resolve_bucket(&dir, &source.bucket) {
                Ok(bucket_dir) => bucket_dir,
                Err(FileBucketRefusal::NotAllowed) => {
                    return Err(StoreError::EndpointNotAllowed { dir });
                }
                Err(FileBucketRefusal::Missing) => {
                    return Err(StoreError::BucketNotFound {
                        bucket: source.bucket.clone(),
                        endpoint: endpoint_label(source),
                    });
                }
            };
            Arc::new(
                ConfinedLocalStore::new(&bucket_dir).map_err(|e| StoreError::Config {
                    bucket: source.bucket.clone(),
                    reason: e.to_string(),
                })?,
            )
        }
        None => clients.client(source, file_credentials)?,
    };
    Ok(Bucket {
        store,
        prefix,
        display,
    })
}

fn s3_builder(
    source: &S3Source,
    file_credentials: Option<FileCredentialProvider>,
) -> Result<AmazonS3Builder, StoreError> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&source.bucket)
        .with_region(source.region.as_deref().unwrap_or("us-east-1"))
        .with_virtual_hosted_style_request(!source.path_style)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(request_timeout())
                .with_pool_max_idle_per_host(64)
                .with_allow_http(true),
        )
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: RETRY_TIMEOUT,
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &source.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(true);
    }
    builder = match (&source.credentials, file_credentials) {
        (_, Some(provider)) => builder.with_credentials(Arc::new(provider)),
        (None | Some(S3Credentials::Anonymous), None) => builder.with_skip_signature(true),
        (Some(S3Credentials::Inline(inline)), None) => builder.with_credentials(Arc::new(
            object_store::StaticCredentialProvider::new(AwsCredential {
                key_id: inline.access_key_id.clone(),
                secret_key: inline.secret_access_key.clone(),
                token: inline.session_token.clone(),
            }),
        )),
        (Some(S3Credentials::File(_) | S3Credentials::Secret(_)), None) => {
            return Err(StoreError::Config {
                bucket: source.bucket.clone(),
                reason: "the credentials file was not loaded".to_string(),
            });
        }
    };
    Ok(builder)
}

impl Bucket {
    /// The prefix as an object path of raw key text, as listings return it
    /// (`Path::from` would percent-encode special characters).
    pub fn root_path(&self) -> object_store::path::Path {
        let prefix = self.prefix.trim_end_matches('/');
        object_store::path::Path::parse(prefix)
            .unwrap_or_else(|_| object_store::path::Path::from(prefix))
    }

    /// Proves the bucket is reachable with these credentials: one LIST of the
    /// prefix, within `deadline`.
    pub async fn check(&self, source: &S3Source, deadline: Duration) -> Result<(), StoreError> {
        let prefix = self.root_path();
        let prefix = (!self.prefix.is_empty()).then_some(&prefix);
        match tokio::time::timeout(deadline, self.store.list_with_delimiter(prefix)).await {
            Err(_) => Err(StoreError::Timeout {
                endpoint: endpoint_label(source),
                seconds: deadline.as_secs(),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(classify(source, err)),
        }
    }
}

/// Maps an object_store error on the bucket check to the step that failed.
pub fn classify(source: &S3Source, err: object_store::Error) -> StoreError {
    let bucket = source.bucket.clone();
    let endpoint = endpoint_label(source);
    match err {
        object_store::Error::NotFound { .. } => StoreError::BucketNotFound { bucket, endpoint },
        object_store::Error::PermissionDenied { source, .. }
        | object_store::Error::Unauthenticated { source, .. } => StoreError::AccessDenied {
            bucket,
            reason: excerpt(&error_chain(source.as_ref())),
        },
        other => {
            let reason = excerpt(&error_chain(&other));
            if reason.contains("NoSuchBucket") {
                StoreError::BucketNotFound { bucket, endpoint }
            } else if reason.contains("AccessDenied")
                || reason.contains("InvalidAccessKeyId")
                || reason.contains("SignatureDoesNotMatch")
                || reason.contains("403 Forbidden")
            {
                StoreError::AccessDenied { bucket, reason }
            } else {
                StoreError::Unreachable { endpoint, reason }
            }
        }
    }
}

/// The most characters of a backend's words that reach a caller.
const MAX_EXCERPT_CHARS: usize = 300;

/// A backend's error text as a caller may see it: printable, on one line,
/// and short (an S3 server chooses its error bodies; a hostile one could
/// send megabytes or terminal escapes).
pub fn excerpt(text: &str) -> String {
    let mut out = String::with_capacity(MAX_EXCERPT_CHARS + 3);
    let mut chars = 0;
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if chars == MAX_EXCERPT_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        chars += 1;
    }
    out.trim_end().to_string()
}

/// The whole `source()` chain of an error on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_buckets_resolve_only_beneath_an_allowed_directory_without_links() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("buckets");
        std::fs::create_dir_all(allowed.join("data")).unwrap();
        std::fs::create_dir_all(allowed.join("nested/inner")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere/etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), allowed.join("escape")).unwrap();
        std::os::unix::fs::symlink("data", allowed.join("alias")).unwrap();
        let policy = FileEndpointPolicy {
            allowed_dirs: vec![allowed.clone()],
        };
        let real = |p: &Path| p.canonicalize().unwrap();
        assert_eq!(
            policy.resolve_bucket(&allowed, "data"),
            Ok(real(&allowed.join("data")))
        );
        assert_eq!(
            policy.resolve_bucket(&allowed.join("nested"), "inner"),
            Ok(real(&allowed.join("nested/inner")))
        );
        let refused = [
            (allowed.join("escape"), "etc"),
            (allowed.clone(), "alias"),
            (allowed.join(".."), "elsewhere"),
            (dir.path().join("elsewhere"), "etc"),
        ];
        for (endpoint, bucket) in refused {
            assert_eq!(
                policy.resolve_bucket(&endpoint, bucket),
                Err(FileBucketRefusal::NotAllowed),
                "{} {bucket}",
                endpoint.display()
            );
        }
        assert_eq!(
            policy.resolve_bucket(&allowed, "missing"),
            Err(FileBucketRefusal::Missing)
        );
    }

    fn source(endpoint: &str, bucket: &str) -> S3Source {
        S3Source {
            bucket: bucket.into(),
            prefix: Some("sub/".into()),
            endpoint: Some(endpoint.into()),
            region: None,
            path_style: true,
            credentials: None,
            immutable: false,
            cache: true,
            uid: None,
            gid: None,
            file_mode: None,
            dir_mode: None,
        }
    }

    #[test]
    fn datasets_of_one_endpoint_bucket_and_credentials_share_a_client() {
        let clients = SharedClients::default();
        let policy = FileEndpointPolicy::default();
        let open = |bucket: &str, prefix: &str| {
            let mut s3 = source("http://127.0.0.1:9", bucket);
            s3.prefix = Some(prefix.into());
            open_bucket(&s3, &policy, None, &clients).unwrap()
        };
        let a = open("data", "a/");
        let b = open("data", "b/");
        let other = open("other", "a/");
        assert!(Arc::ptr_eq(&a.store, &b.store), "same bucket: one client");
        assert!(
            !Arc::ptr_eq(&a.store, &other.store),
            "another bucket: its own"
        );
        assert_eq!(clients.len(), 2);
        drop((a, b, other));
        assert!(
            clients.is_empty(),
            "a client lives only while a dataset uses it"
        );
    }

    #[test]
    fn file_endpoints_must_be_allowed_and_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bucket")).unwrap();
        let endpoint = format!("file://{}", dir.path().display());
        let denied = open_bucket(
            &source(&endpoint, "bucket"),
            &FileEndpointPolicy::default(),
            None,
            &SharedClients::default(),
        );
        assert!(matches!(denied, Err(StoreError::EndpointNotAllowed { .. })));
        let policy = FileEndpointPolicy {
            allowed_dirs: vec![dir.path().to_path_buf()],
        };
        let missing = open_bucket(
            &source(&endpoint, "nope"),
            &policy,
            None,
            &SharedClients::default(),
        );
        assert!(matches!(missing, Err(StoreError::BucketNotFound { .. })));
        let bucket = open_bucket(
            &source(&endpoint, "bucket"),
            &policy,
            None,
            &SharedClients::default(),
        )
        .unwrap();
        assert_eq!(bucket.prefix, "sub/");
        assert_eq!(bucket.display, "bucket/sub");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_reported_as_such() {
        // A port nothing listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let src = source(&format!("http://127.0.0.1:{port}"), "bucket");
        let bucket = open_bucket(
            &src,
            &FileEndpointPolicy::default(),
            None,
            &SharedClients::default(),
        )
        .unwrap();
        let err = bucket
            .check(&src, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn backend_words_reach_a_caller_short_printable_and_on_one_line() {
        let hostile = format!(
            "AccessDenied\x1b[31m\r\n<Message>{}</Message>\u{7}",
            "x".repeat(5_000)
        );
        let shown = excerpt(&hostile);
        assert!(
            shown.chars().count() <= MAX_EXCERPT_CHARS + 1,
            "{}",
            shown.len()
        );
        assert!(shown.ends_with('…'));
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.starts_with("AccessDenied [31m <Message>"),
            "{shown:?}"
        );
        assert_eq!(excerpt("bucket  gone\n"), "bucket gone");
    }
}
