//! Opening the object store behind an S3 dataset: an S3 server through
//! `object_store`'s AWS client, or a `file:///DIR` endpoint whose subdirectories
//! are buckets (only directories the operator allowed). Credentials from a file
//! are re-read when the file changes, so secrets rotate without a remount.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::{ClientOptions, CredentialProvider, ObjectStore, RetryConfig};

use crate::spec::{S3Credentials, S3Source};

/// How long a connection attempt to an S3 endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one S3 request may take end to end (a 1 GiB GET at 50 MB/s fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client keeps retrying one request.
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// Which local directories `file://` endpoints may name.
#[derive(Debug, Clone, Default)]
pub struct FileEndpointPolicy {
    /// Allowed directories; an endpoint must be one of them (or below one).
    pub allowed_dirs: Vec<PathBuf>,
}

impl FileEndpointPolicy {
    fn allows(&self, dir: &Path) -> bool {
        self.allowed_dirs
            .iter()
            .any(|allowed| dir.starts_with(allowed))
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
    /// The credentials file cannot be used.
    #[error("credentials file {path}: {reason}")]
    CredentialsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
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

/// Opens the store for `source`. Does no network I/O; see [`Bucket::check`].
pub fn open_bucket(source: &S3Source, policy: &FileEndpointPolicy) -> Result<Bucket, StoreError> {
    let prefix = source.normalized_prefix();
    let display = format!("{}/{}", source.bucket, prefix.trim_end_matches('/'))
        .trim_end_matches('/')
        .to_string();
    let store: Arc<dyn ObjectStore> = match source.file_endpoint_dir() {
        Some(dir) => {
            if !policy.allows(&dir) {
                return Err(StoreError::EndpointNotAllowed { dir });
            }
            let bucket_dir = dir.join(&source.bucket);
            if !bucket_dir.is_dir() {
                return Err(StoreError::BucketNotFound {
                    bucket: source.bucket.clone(),
                    endpoint: endpoint_label(source),
                });
            }
            Arc::new(LocalFileSystem::new_with_prefix(&bucket_dir).map_err(|e| {
                StoreError::Config {
                    bucket: source.bucket.clone(),
                    reason: e.to_string(),
                }
            })?)
        }
        None => Arc::new(
            s3_builder(source)?
                .build()
                .map_err(|e| StoreError::Config {
                    bucket: source.bucket.clone(),
                    reason: e.to_string(),
                })?,
        ),
    };
    Ok(Bucket {
        store,
        prefix,
        display,
    })
}

fn s3_builder(source: &S3Source) -> Result<AmazonS3Builder, StoreError> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&source.bucket)
        .with_region(source.region.as_deref().unwrap_or("us-east-1"))
        .with_virtual_hosted_style_request(!source.path_style)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
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
    builder = match &source.credentials {
        None | Some(S3Credentials::Anonymous) => builder.with_skip_signature(true),
        Some(S3Credentials::Inline(inline)) => builder.with_credentials(Arc::new(
            object_store::StaticCredentialProvider::new(AwsCredential {
                key_id: inline.access_key_id.clone(),
                secret_key: inline.secret_access_key.clone(),
                token: inline.session_token.clone(),
            }),
        )),
        Some(S3Credentials::File(path)) => {
            let provider = FileCredentialProvider::new(path.clone())?;
            builder.with_credentials(Arc::new(provider))
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
            reason: error_chain(source.as_ref()),
        },
        other => {
            let reason = error_chain(&other);
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

/// Credentials read from a file, re-read whenever its modification time or
/// size changes (secret rotation without remount).
#[derive(Debug)]
pub struct FileCredentialProvider {
    path: PathBuf,
    cached: Mutex<(FileStamp, Arc<AwsCredential>)>,
}

type FileStamp = (SystemTime, u64);

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

impl FileCredentialProvider {
    /// Reads the file now: a missing or malformed file fails the mount early.
    pub fn new(path: PathBuf) -> Result<Self, StoreError> {
        let (file_stamp, credential) = read_credentials_file(&path)?;
        Ok(FileCredentialProvider {
            path,
            cached: Mutex::new((file_stamp, Arc::new(credential))),
        })
    }

    fn current(&self) -> Result<Arc<AwsCredential>, StoreError> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.path).map_err(|e| StoreError::CredentialsFile {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if now != cached.0 {
            let (file_stamp, credential) = read_credentials_file(&self.path)?;
            tracing::info!(path = %self.path.display(), "credentials file changed; reloaded");
            *cached = (file_stamp, Arc::new(credential));
        }
        Ok(cached.1.clone())
    }
}

#[async_trait::async_trait]
impl CredentialProvider for FileCredentialProvider {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.current()
            .map_err(|e| object_store::Error::Unauthenticated {
                path: self.path.display().to_string(),
                source: Box::new(e),
            })
    }
}

/// Parses a credentials file: `key=value` lines (`#` comments), with the keys
/// `access_key_id`, `secret_access_key`, `session_token` in any case, with or
/// without an `aws_` prefix.
pub fn read_credentials_file(path: &Path) -> Result<(FileStamp, AwsCredential), StoreError> {
    let fail = |reason: String| StoreError::CredentialsFile {
        path: path.to_path_buf(),
        reason,
    };
    let before = stamp(path).map_err(|e| fail(e.to_string()))?;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let credential = parse_credentials(&text).map_err(fail)?;
    Ok((before, credential))
}

fn parse_credentials(text: &str) -> Result<AwsCredential, String> {
    let mut key_id = None;
    let mut secret_key = None;
    let mut token = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected key=value", number + 1));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_string();
        match key.strip_prefix("aws_").unwrap_or(&key) {
            "access_key_id" => key_id = Some(value),
            "secret_access_key" => secret_key = Some(value),
            "session_token" => token = Some(value),
            other => return Err(format!("line {}: unknown key {other}", number + 1)),
        }
    }
    match (key_id, secret_key) {
        (Some(key_id), Some(secret_key)) if !key_id.is_empty() && !secret_key.is_empty() => {
            Ok(AwsCredential {
                key_id,
                secret_key,
                token,
            })
        }
        _ => Err("needs access_key_id and secret_access_key".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(endpoint: &str, bucket: &str) -> S3Source {
        S3Source {
            bucket: bucket.into(),
            prefix: Some("sub/".into()),
            endpoint: Some(endpoint.into()),
            region: None,
            path_style: true,
            credentials: None,
            immutable: false,
            uid: None,
            gid: None,
            file_mode: None,
            dir_mode: None,
        }
    }

    #[test]
    fn credentials_files_parse_in_both_spellings() {
        let c = parse_credentials("# key\naccess_key_id = AK\nsecret_access_key=\"SK\"\n").unwrap();
        assert_eq!((c.key_id.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        let c = parse_credentials(
            "[default]\nAWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=S\nAWS_SESSION_TOKEN=T",
        )
        .unwrap();
        assert_eq!(c.token.as_deref(), Some("T"));
        assert!(parse_credentials("access_key_id=A").is_err());
        let err = parse_credentials("password=x").unwrap_err();
        assert!(err.contains("unknown key password"), "{err}");
        assert!(!err.contains('x'), "the value must not be echoed: {err}");
    }

    #[test]
    fn rotated_credentials_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "access_key_id=OLD\nsecret_access_key=S\n").unwrap();
        let provider = FileCredentialProvider::new(path.clone()).unwrap();
        assert_eq!(provider.current().unwrap().key_id, "OLD");
        std::fs::write(&path, "access_key_id=NEWER\nsecret_access_key=S2\n").unwrap();
        assert_eq!(provider.current().unwrap().key_id, "NEWER");
        std::fs::remove_file(&path).unwrap();
        assert!(provider.current().is_err());
    }

    #[test]
    fn file_endpoints_must_be_allowed_and_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bucket")).unwrap();
        let endpoint = format!("file://{}", dir.path().display());
        let denied = open_bucket(&source(&endpoint, "bucket"), &FileEndpointPolicy::default());
        assert!(matches!(denied, Err(StoreError::EndpointNotAllowed { .. })));
        let policy = FileEndpointPolicy {
            allowed_dirs: vec![dir.path().to_path_buf()],
        };
        let missing = open_bucket(&source(&endpoint, "nope"), &policy);
        assert!(matches!(missing, Err(StoreError::BucketNotFound { .. })));
        let bucket = open_bucket(&source(&endpoint, "bucket"), &policy).unwrap();
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
        let bucket = open_bucket(&src, &FileEndpointPolicy::default()).unwrap();
        let err = bucket
            .check(&src, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    }
}
