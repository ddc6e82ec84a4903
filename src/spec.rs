//! The mount spec: what a caller asks for in `PUT /v1/mounts/{name}`, its
//! validation (every error names the field), and its redacted form for responses.
//!
//! Options are typed fields, never raw mount-option strings; the mount path is
//! always `<root>/<name>`, chosen by the agent.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest accepted dataset name.
pub const MAX_NAME_LEN: usize = 63;

/// A mount request: where the data comes from and how it is exposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountSpec {
    /// The backend and its options.
    pub source: SourceSpec,
    /// Mount read-only (the default): datasets are read by pods, not written.
    #[serde(default = "default_read_only")]
    pub read_only: bool,
    /// Free-form labels, echoed back (e.g. team, owner).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_read_only() -> bool {
    true
}

/// The backend of a mount; exactly one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SourceSpec {
    /// A kernel NFS mount.
    Nfs(NfsSource),
    /// An S3 bucket served by hotmount's FUSE filesystem.
    S3(S3Source),
}

impl SourceSpec {
    /// The backend label used in metrics and listings.
    pub fn backend(&self) -> Backend {
        match self {
            SourceSpec::Nfs(_) => Backend::Nfs,
            SourceSpec::S3(_) => Backend::S3,
        }
    }
}

/// Backend kinds, as they appear in metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Kernel NFS client.
    Nfs,
    /// hotmount's S3 FUSE filesystem.
    S3,
}

impl Backend {
    /// Every backend, for metrics that report all of them.
    pub const ALL: [Backend; 2] = [Backend::Nfs, Backend::S3];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nfs => "nfs",
            Backend::S3 => "s3",
        }
    }
}

/// NFS protocol versions hotmount mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NfsVersion {
    /// NFSv3 (needs the server's rpcbind/mountd).
    #[serde(rename = "3")]
    V3,
    /// NFSv4.0.
    #[serde(rename = "4")]
    V4,
    /// NFSv4.1 (the default).
    #[serde(rename = "4.1")]
    V4_1,
    /// NFSv4.2.
    #[serde(rename = "4.2")]
    V4_2,
}

/// An NFS export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NfsSource {
    /// Server host name or IP address.
    pub server: String,
    /// Exported path on the server, absolute.
    pub export: String,
    /// Protocol version; 4.1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<NfsVersion>,
    /// TCP connections per server (1-16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nconnect: Option<u8>,
    /// Soft mount: give up after `retrans` retries instead of hanging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<bool>,
    /// RPC timeout in seconds (1-600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeo_seconds: Option<u32>,
    /// Retries before a soft mount fails a call (0-10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrans: Option<u32>,
    /// Read size in bytes (4 KiB-1 MiB, a power of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsize: Option<u32>,
    /// Write size in bytes (4 KiB-1 MiB, a power of two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wsize: Option<u32>,
    /// Server port; 2049 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl NfsSource {
    /// `server:export` with every option at its default.
    pub fn new(server: impl Into<String>, export: impl Into<String>) -> Self {
        NfsSource {
            server: server.into(),
            export: export.into(),
            version: None,
            nconnect: None,
            soft: None,
            timeo_seconds: None,
            retrans: None,
            rsize: None,
            wsize: None,
            port: None,
        }
    }
}

/// An S3 bucket (or a prefix of one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Source {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix to expose as the mount's root, e.g. `imagenet/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `http(s)://host:port` of the S3 server, or `file:///DIR` for a local
    /// directory whose subdirectories are buckets. AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Signing region; `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`host/bucket/key`), as most non-AWS servers need.
    #[serde(default)]
    pub path_style: bool,
    /// How to authenticate; anonymous when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3Credentials>,
    /// Cache metadata without expiry: for datasets that never change.
    #[serde(default)]
    pub immutable: bool,
    /// Read through the node cache (`--cache-dir`) when the agent has one;
    /// `false` keeps this dataset's bytes out of it.
    #[serde(default = "cached_by_default", skip_serializing_if = "Clone::clone")]
    pub cache: bool,
    /// Owner (uid) of every file and directory; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group (gid) of every file and directory; 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Permission bits of files, as octal text (`"0644"`); `0444` when
    /// absent (`0644` when `readOnly` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<FileMode>,
    /// Permission bits of directories, as octal text (`"0755"`); `0555`
    /// when absent (`0755` when `readOnly` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_mode: Option<FileMode>,
}

fn cached_by_default() -> bool {
    true
}

/// Permission bits (at most `0o777`), written as octal text in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    /// Parses octal text (`"644"`, `"0644"` or `"0o644"`) of at most `0777`.
    pub fn parse(text: &str) -> Result<FileMode, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        // Octal digits only: from_str_radix alone would take a leading `+`.
        let bits = u32::from_str_radix(digits, 8)
            .ok()
            .filter(|_| (1..=4).contains(&digits.len()))
            .filter(|_| digits.bytes().all(|b| matches!(b, b'0'..=b'7')))
            .ok_or_else(|| format!("{text:?} is not an octal mode like \"0644\""))?;
        if bits > 0o777 {
            return Err(format!(
                "{text:?} has bits beyond 0777 (setuid, setgid and sticky are not allowed)"
            ));
        }
        Ok(FileMode(bits))
    }
}

impl Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FileMode::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl S3Source {
    /// The prefix normalised to end in `/` (or empty for the whole bucket).
    pub fn normalized_prefix(&self) -> String {
        match self.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("{p}/"),
        }
    }
}

/// Longest accepted credentials secret name (a Kubernetes Secret key).
pub const MAX_SECRET_NAME_LEN: usize = 253;

/// S3 credentials: a file in the agent's credentials directory (re-read when
/// it changes), inline keys, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum S3Credentials {
    /// The file `NAME` in the agent's `--credentials-dir` (a key of the
    /// Secret mounted there). Same format as [`S3Credentials::File`].
    Secret(String),
    /// A file with `access_key_id=...` and `secret_access_key=...` lines
    /// (optionally `session_token=...`); AWS-style upper-case names work too.
    /// It must resolve beneath the agent's `--credentials-dir`.
    File(PathBuf),
    /// Keys given in the request; stored in the 0600 state file, never echoed.
    Inline(InlineCredentials),
    /// Unsigned requests, for public buckets.
    Anonymous,
}

/// Keys given inline in a mount request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineCredentials {
    /// Access key id (not secret; shown in responses).
    pub access_key_id: String,
    /// Secret key; never shown in responses or logs.
    pub secret_access_key: String,
    /// Session token; never shown in responses or logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

/// What responses show instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl fmt::Debug for InlineCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &REDACTED)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| REDACTED),
            )
            .finish()
    }
}

impl MountSpec {
    /// A copy safe to show: inline secrets replaced by [`REDACTED`].
    pub fn redacted(&self) -> MountSpec {
        let mut copy = self.clone();
        if let SourceSpec::S3(S3Source {
            credentials: Some(S3Credentials::Inline(inline)),
            ..
        }) = &mut copy.source
        {
            inline.secret_access_key = REDACTED.to_string();
            if inline.session_token.is_some() {
                inline.session_token = Some(REDACTED.to_string());
            }
        }
        copy
    }

    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.labels.len() > 64 {
            return Err(SpecError::new("labels", "at most 64 labels"));
        }
        for (key, value) in &self.labels {
            if key.is_empty() || key.len() > 63 || value.len() > 253 {
                return Err(SpecError::new(
                    format!("labels.{key}"),
                    "keys are 1-63 characters, values at most 253",
                ));
            }
        }
        match &self.source {
            SourceSpec::Nfs(nfs) => nfs.validate(),
            SourceSpec::S3(s3) => s3.validate(),
        }
    }
}

impl NfsSource {
    fn validate(&self) -> Result<(), SpecError> {
        let field = |name: &str| format!("source.nfs.{name}");
        if !is_host(&self.server) {
            return Err(SpecError::new(
                field("server"),
                "must be a host name or an IP address",
            ));
        }
        if !self.export.starts_with('/')
            || self.export.len() > 1024
            || self.export.contains(['\0', ',', '\n'])
            || self.export.split('/').any(|part| part == "..")
        {
            return Err(SpecError::new(
                field("export"),
                "must be an absolute path without '..', ',' or control characters",
            ));
        }
        if let Some(n) = self.nconnect
            && !(1..=16).contains(&n)
        {
            return Err(SpecError::new(
                field("nconnect"),
                "must be between 1 and 16",
            ));
        }
        if let Some(t) = self.timeo_seconds
            && !(1..=600).contains(&t)
        {
            return Err(SpecError::new(
                field("timeoSeconds"),
                "must be between 1 and 600",
            ));
        }
        if let Some(r) = self.retrans
            && r > 10
        {
            return Err(SpecError::new(field("retrans"), "must be at most 10"));
        }
        for (name, size) in [("rsize", self.rsize), ("wsize", self.wsize)] {
            if let Some(size) = size
                && (!(4096..=1 << 20).contains(&size) || !size.is_power_of_two())
            {
                return Err(SpecError::new(
                    field(name),
                    "must be a power of two between 4096 and 1048576",
                ));
            }
        }
        if self.port == Some(0) {
            return Err(SpecError::new(field("port"), "must be between 1 and 65535"));
        }
        Ok(())
    }
}

impl S3Source {
    fn validate(&self) -> Result<(), SpecError> {
        let field = |name: &str| format!("source.s3.{name}");
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && self.bucket.as_bytes()[0].is_ascii_alphanumeric()
            && self.bucket.as_bytes()[self.bucket.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(SpecError::new(
                field("bucket"),
                "must be 3-63 characters of a-z, 0-9, '.', '-', starting and ending alphanumeric",
            ));
        }
        if let Some(prefix) = &self.prefix
            && (prefix.len() > 1024
                || prefix.contains('\0')
                || prefix.split('/').any(|part| part == ".." || part == "."))
        {
            return Err(SpecError::new(
                field("prefix"),
                "must be at most 1024 bytes with no '.' or '..' segments",
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            let ok = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['@', ' ']))
                || endpoint
                    .strip_prefix("file://")
                    .is_some_and(|dir| dir.starts_with('/') && !dir.split('/').any(|p| p == ".."));
            if !ok {
                return Err(SpecError::new(
                    field("endpoint"),
                    "must be http://HOST[:PORT], https://HOST[:PORT] or file:///ABSOLUTE/DIR",
                ));
            }
        }
        for (name, id) in [("uid", self.uid), ("gid", self.gid)] {
            if id == Some(u32::MAX) {
                return Err(SpecError::new(field(name), "must be below 4294967295"));
            }
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || region.len() > 64
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(SpecError::new(
                field("region"),
                "must be 1-64 characters of a-z, 0-9, '-', '_'",
            ));
        }
        match &self.credentials {
            Some(S3Credentials::Secret(name)) => validate_secret_name(name)
                .map_err(|message| SpecError::new(field("credentials.secret"), message)),
            Some(S3Credentials::File(path)) if !path.is_absolute() => Err(SpecError::new(
                field("credentials.file"),
                "must be an absolute path",
            )),
            Some(S3Credentials::Inline(inline))
                if inline.access_key_id.is_empty() || inline.secret_access_key.is_empty() =>
            {
                Err(SpecError::new(
                    field("credentials.inline"),
                    "accessKeyId and secretAccessKey must not be empty",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The local directory of a `file://` endpoint, if that is what this is.
    pub fn file_endpoint_dir(&self) -> Option<PathBuf> {
        self.endpoint
            .as_deref()
            .and_then(|e| e.strip_prefix("file://"))
            .map(PathBuf::from)
    }
}

fn is_host(server: &str) -> bool {
    if server.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    (1..=253).contains(&server.len())
        && server.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A dataset name, checked once where it enters (the API's path, a stored
/// state): 1-63 characters of `[a-z0-9._-]`, alphanumeric at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetName(String);

impl DatasetName {
    /// Checks `text` and makes it a name.
    pub fn parse(text: &str) -> Result<DatasetName, SpecError> {
        validate_name(text)?;
        Ok(DatasetName(text.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for DatasetName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a dataset name: 1-63 chars of `[a-z0-9._-]`, alphanumeric at both ends.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let bytes = name.as_bytes();
    let ok = (1..=MAX_NAME_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            "must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting and ending with a letter or digit",
        ))
    }
}

/// Checks a credentials secret name: a plain file name of 1-253 characters of
/// `[-._a-zA-Z0-9]`, not `.` and not starting with `..` (the rule of
/// Kubernetes Secret keys; `..data` and its siblings are the Secret volume's
/// own entries).
pub fn validate_secret_name(name: &str) -> Result<(), &'static str> {
    let ok = (1..=MAX_SECRET_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && name != "."
        && !name.starts_with("..");
    if ok {
        Ok(())
    } else {
        Err(
            "must be a file name of 1-253 characters of a-z, A-Z, 0-9, '-', '_', '.', not '.' and not starting with '..'",
        )
    }
}

/// A spec that fails validation: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The JSON path of the field, e.g. `source.nfs.nconnect`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(json: &str) -> Result<MountSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn names_follow_the_dns_label_rule() {
        for good in ["a", "imagenet", "set-1.v2", "a_b", &"x".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good} should be accepted");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "..",
            ".a",
            "a b",
            &"x".repeat(64),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn design_examples_parse_and_validate() {
        let nfs = parse(
            r#"{ "source": { "nfs": { "server": "10.0.0.5", "export": "/exports/imagenet",
                 "version": "4.1", "nconnect": 4, "soft": true, "timeoSeconds": 60 } },
                 "readOnly": true, "labels": { "team": "vision" } }"#,
        )
        .unwrap();
        nfs.validate().unwrap();
        let s3 = parse(
            r#"{ "source": { "s3": { "bucket": "datasets", "prefix": "imagenet/",
                 "endpoint": "http://10.0.0.9:3900", "region": "garage", "pathStyle": true,
                 "credentials": { "file": "/etc/hotmount/creds/datasets" } } },
                 "readOnly": true }"#,
        )
        .unwrap();
        s3.validate().unwrap();
        assert_eq!(s3.source.backend(), Backend::S3);
    }

    #[test]
    fn read_only_is_the_default() {
        let spec = parse(r#"{"source":{"s3":{"bucket":"abc"}}}"#).unwrap();
        assert!(spec.read_only);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = parse(r#"{"source":{"s3":{"bucket":"abc","bogus":1}}}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        assert!(parse(r#"{"source":{"s3":{"bucket":"abc"}},"options":"rw"}"#).is_err());
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                r#"{"source":{"nfs":{"server":"a b","export":"/x"}}}"#,
                "source.nfs.server",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"x"}}}"#,
                "source.nfs.export",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"/x,rw"}}}"#,
                "source.nfs.export",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"/x/../etc"}}}"#,
                "source.nfs.export",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"/x","nconnect":17}}}"#,
                "source.nfs.nconnect",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"/x","rsize":5000}}}"#,
                "source.nfs.rsize",
            ),
            (
                r#"{"source":{"nfs":{"server":"h","export":"/x","timeoSeconds":0}}}"#,
                "source.nfs.timeoSeconds",
            ),
            (r#"{"source":{"s3":{"bucket":"AB"}}}"#, "source.s3.bucket"),
            (
                r#"{"source":{"s3":{"bucket":"abc","endpoint":"ftp://x"}}}"#,
                "source.s3.endpoint",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","prefix":"a/../b"}}}"#,
                "source.s3.prefix",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","credentials":{"file":"rel"}}}}"#,
                "source.s3.credentials.file",
            ),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap().validate().unwrap_err();
            assert_eq!(err.field, field, "{json}");
        }
    }

    #[test]
    fn secret_names_are_plain_file_names() {
        let long = "k".repeat(MAX_SECRET_NAME_LEN);
        for good in [
            "datasets",
            "a",
            "AWS.creds",
            "team-a_v2",
            ".hidden",
            "a..b",
            &long,
        ] {
            assert_eq!(
                validate_secret_name(good),
                Ok(()),
                "{good:?} should be accepted"
            );
        }
        let too_long = "k".repeat(MAX_SECRET_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "..data",
            "a/b",
            "/etc/shadow",
            "x/..",
            "a b",
            "a\0b",
            "é",
            "name\n",
            &too_long,
        ] {
            assert!(
                validate_secret_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn a_bad_secret_name_names_its_field() {
        for name in ["../x", "", "a/b", "..data"] {
            let json =
                json!({"source": {"s3": {"bucket": "abc", "credentials": {"secret": name}}}});
            let err = parse(&json.to_string()).unwrap().validate().unwrap_err();
            assert_eq!(err.field, "source.s3.credentials.secret", "{name:?}");
        }
        let ok =
            json!({"source": {"s3": {"bucket": "abc", "credentials": {"secret": "datasets"}}}});
        parse(&ok.to_string()).unwrap().validate().unwrap();
    }

    #[test]
    fn secrets_are_redacted_and_not_debug_printed() {
        let spec = parse(
            r#"{"source":{"s3":{"bucket":"abc","credentials":{"inline":
               {"accessKeyId":"AKID","secretAccessKey":"s3cr3t","sessionToken":"tok"}}}}}"#,
        )
        .unwrap();
        let shown = serde_json::to_string(&spec.redacted()).unwrap();
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok\""),
            "{shown}"
        );
        assert!(shown.contains("AKID"));
        let debug = format!("{spec:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("\"tok\""),
            "{debug}"
        );
    }

    #[test]
    fn anonymous_credentials_are_a_plain_string() {
        let spec =
            parse(r#"{"source":{"s3":{"bucket":"abc","credentials":"anonymous"}}}"#).unwrap();
        let SourceSpec::S3(s3) = spec.source else {
            panic!()
        };
        assert_eq!(s3.credentials, Some(S3Credentials::Anonymous));
    }

    #[test]
    fn ownership_and_modes_parse_and_are_checked() {
        let spec = parse(
            r#"{"source":{"s3":{"bucket":"abc","uid":65534,"gid":100,"fileMode":"0664","dirMode":"775"}},"readOnly":false}"#,
        )
        .unwrap();
        let SourceSpec::S3(s3) = &spec.source else {
            panic!()
        };
        assert_eq!((s3.uid, s3.gid), (Some(65534), Some(100)));
        assert_eq!(s3.file_mode, Some(FileMode(0o664)));
        assert_eq!(s3.dir_mode, Some(FileMode(0o775)));
        let shown = serde_json::to_value(&spec).unwrap();
        assert_eq!(shown["source"]["s3"]["dirMode"], "0775");
        for (body, field) in [
            (
                r#"{"source":{"s3":{"bucket":"abc","fileMode":"4755"}}}"#,
                "fileMode",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","dirMode":"rwx"}}}"#,
                "dirMode",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","fileMode":"+644"}}}"#,
                "fileMode",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","fileMode":644}}}"#,
                "fileMode",
            ),
            (
                r#"{"source":{"s3":{"bucket":"abc","uid":4294967295}}}"#,
                "uid",
            ),
            (r#"{"source":{"s3":{"bucket":"abc","gid":-1}}}"#, "gid"),
        ] {
            let deserializer = &mut serde_json::Deserializer::from_str(body);
            let err = serde_path_to_error::deserialize::<_, MountSpec>(deserializer)
                .map(|spec| spec.validate())
                .map_or_else(|e| e.path().to_string(), |v| format!("{v:?}"));
            assert!(err.contains(field), "{body}: {err}");
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        let mut s3 = S3Source {
            bucket: "abc".into(),
            prefix: None,
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            immutable: false,
            cache: true,
            uid: None,
            gid: None,
            file_mode: None,
            dir_mode: None,
        };
        assert_eq!(s3.normalized_prefix(), "");
        s3.prefix = Some("/a/b".into());
        assert_eq!(s3.normalized_prefix(), "a/b/");
        s3.prefix = Some("a/".into());
        assert_eq!(s3.normalized_prefix(), "a/");
    }
}
