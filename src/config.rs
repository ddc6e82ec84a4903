//! `hotmount serve` configuration: flags, `HOTMOUNT_*` variables and an
//! optional TOML file (flags and variables win), validated into [`Config`].

use crate::api::listener::ListenerLimits;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::TokenSet;
use crate::manager::ManagerConfig;
use crate::s3fs::credentials::DEFAULT_CREDENTIALS_DIR;
use crate::s3fs::{CredentialsDir, FileEndpointPolicy};

/// The most entries one S3 directory listing may have by default (a million
/// entries hold about 200 MiB while listed).
const DEFAULT_MAX_DIRECTORY_ENTRIES: usize = 1_000_000;
/// Default root of the datasets.
pub const DEFAULT_ROOT: &str = "/var/lib/hotmount/mnt";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hotmount/state";
/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/hotmount/api.sock";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30s, 500ms, 2m)"))
}

/// Parses a byte size: a number with an optional unit (`K`, `M`, `G`, `T`
/// powers of 1024, spelled `K`, `KB`, `KiB`, any case), e.g. `512MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 512MiB or 1G"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use K, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// The flags of `hotmount serve` (each also from a `HOTMOUNT_*` variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// The shared root where datasets appear [default: /var/lib/hotmount/mnt].
    #[arg(long, env = "HOTMOUNT_ROOT")]
    pub root: Option<PathBuf>,
    /// Where desired state is kept [default: /var/lib/hotmount/state].
    #[arg(long, env = "HOTMOUNT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The control socket [default: /run/hotmount/api.sock].
    #[arg(long, env = "HOTMOUNT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Group that may use the socket (mode 0660).
    #[arg(long, env = "HOTMOUNT_SOCKET_GROUP")]
    pub socket_group: Option<String>,
    /// Also serve the API on TCP (needs --token-file).
    #[arg(long, env = "HOTMOUNT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Bearer tokens for the TCP listener, one per line.
    #[arg(long, env = "HOTMOUNT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A TOML file with any of these settings (kebab-case keys).
    #[arg(long, env = "HOTMOUNT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "HOTMOUNT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A directory whose subdirectories may be served as buckets through
    /// `file://` endpoints (repeatable, or comma-separated).
    #[arg(
        long = "allow-file-endpoint",
        env = "HOTMOUNT_ALLOW_FILE_ENDPOINT",
        value_delimiter = ','
    )]
    pub allow_file_endpoint: Vec<PathBuf>,
    /// An S3 endpoint host or NFS server (as specs name it) allowed although
    /// it resolves to a link-local address (repeatable).
    #[arg(
        long = "allow-endpoint",
        env = "HOTMOUNT_ALLOW_ENDPOINT",
        value_delimiter = ','
    )]
    pub allow_endpoint: Vec<String>,
    /// The only places the agent connects to for datasets: HOST[:PORT],
    /// CIDR[:PORT] or [IPv6-CIDR]:PORT (repeatable); without any, anywhere
    /// but link-local addresses.
    #[arg(
        long = "egress-allow",
        env = "HOTMOUNT_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<String>,
    /// The only directory S3 credentials files are read from: `{"secret":
    /// NAME}` is `DIR/NAME`, `{"file": PATH}` must resolve beneath it
    /// [default: /etc/hotmount/creds].
    #[arg(long, env = "HOTMOUNT_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// Deadline of one mount [default: 30s].
    #[arg(long, env = "HOTMOUNT_MOUNT_TIMEOUT", value_parser = parse_duration)]
    pub mount_timeout: Option<Duration>,
    /// Time between health probes [default: 10s].
    #[arg(long, env = "HOTMOUNT_PROBE_INTERVAL", value_parser = parse_duration)]
    pub probe_interval: Option<Duration>,
    /// Deadline of one health probe [default: 5s].
    #[arg(long, env = "HOTMOUNT_PROBE_TIMEOUT", value_parser = parse_duration)]
    pub probe_timeout: Option<Duration>,
    /// Metadata cache TTL of S3 mounts [default: 60s].
    #[arg(long, env = "HOTMOUNT_METADATA_TTL", value_parser = parse_duration)]
    pub metadata_ttl: Option<Duration>,
    /// Serve `/metrics` alone, without a token, on this address (for
    /// Prometheus; the API stays on the socket and `--listen`).
    #[arg(long, env = "HOTMOUNT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The longest a connection to the API may take to send a request head,
    /// or sit idle between requests, before it is closed [default: 10s].
    #[arg(long, env = "HOTMOUNT_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Connections each API listener serves at once; one more is closed at
    /// once [default: 256].
    #[arg(long, env = "HOTMOUNT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The most entries one S3 directory listing may have; a longer one
    /// fails (EIO) instead of growing memory without bound [default: 1000000].
    #[arg(long, env = "HOTMOUNT_MAX_DIRECTORY_ENTRIES")]
    pub max_directory_entries: Option<usize>,
    /// The unix socket's permission bits, octal [default: 0660]; with
    /// --socket-group, who may connect at all (what they may do is the
    /// policy's).
    #[arg(long, env = "HOTMOUNT_SOCKET_MODE", value_parser = parse_socket_mode)]
    pub socket_mode: Option<u32>,
    /// A PEM certificate chain for the TCP API (with --tls-key): it is then
    /// served over TLS; both files are read again when they change.
    #[arg(long, env = "HOTMOUNT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "HOTMOUNT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's service-account signing keys (the JSON of the API
    /// server's /openid/v1/jwks, read again when it changes): pods may then
    /// call the TCP API with their projected token (audience `hotmount`),
    /// as `serviceaccount:NAMESPACE/NAME` in the policy.
    #[arg(
        long,
        env = "HOTMOUNT_SA_JWKS",
        group = "sa_keys",
        requires = "sa_issuer"
    )]
    pub sa_jwks: Option<PathBuf>,
    /// Instead of --sa-jwks: fetch the signing keys from the API server
    /// (e.g. https://kubernetes.default.svc/openid/v1/jwks) with the
    /// agent's own token, again when a token names a new key and every 10
    /// minutes; a failed fetch keeps the last good keys.
    #[arg(
        long,
        env = "HOTMOUNT_SA_JWKS_URL",
        group = "sa_keys",
        requires = "sa_issuer"
    )]
    pub sa_jwks_url: Option<String>,
    /// The bearer token --sa-jwks-url is fetched with.
    #[arg(
        long,
        env = "HOTMOUNT_SA_API_TOKEN",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub sa_api_token: PathBuf,
    /// The CA certificates (PEM) --sa-jwks-url is checked against; `system`
    /// for the system's roots.
    #[arg(
        long,
        env = "HOTMOUNT_SA_API_CA",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub sa_api_ca: String,
    /// The issuer of service-account tokens (the API server's
    /// --service-account-issuer).
    #[arg(long, env = "HOTMOUNT_SA_ISSUER", requires = "sa_keys")]
    pub sa_issuer: Option<String>,
    /// The policy file (TOML): what callers other than uid 0 and admin
    /// tokens may do; read again when it changes [default: none, only
    /// admins act].
    #[arg(long, env = "HOTMOUNT_POLICY")]
    pub policy: Option<PathBuf>,
    /// How long one S3 request may take before it is tried again (and, after
    /// the retries, fails: a pod's read gets EIO) [default: 60s].
    #[arg(long, env = "HOTMOUNT_S3_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub s3_request_timeout: Option<Duration>,
    /// A worker that sends no heartbeat for this long is killed and replaced
    /// (its FUSE connections are served on by the next) [default: 10s].
    #[arg(long, env = "HOTMOUNT_WORKER_HEARTBEAT_TIMEOUT", value_parser = parse_duration)]
    pub worker_heartbeat_timeout: Option<Duration>,
    /// At an upgrade, how long files open for writing may take to be closed
    /// in the old worker before it stops (those still open then fail with
    /// EIO) [default: 30s].
    #[arg(long, env = "HOTMOUNT_TAKEOVER_WRITE_WAIT", value_parser = parse_duration)]
    pub takeover_write_wait: Option<Duration>,
    /// The table format this build claims at a takeover (tests only: to
    /// play a build whose format the running agent cannot hand over to).
    #[arg(long, hide = true, env = HANDOVER_FORMAT_ENV)]
    pub handover_format: Option<u32>,
    /// How long S3 mounts remember that a name does not exist, so a new
    /// object appears within this time; 0 turns it off [default: 1s].
    #[arg(long, env = "HOTMOUNT_NEGATIVE_TTL", value_parser = parse_duration)]
    pub negative_ttl: Option<Duration>,
    /// The most threads serving the FUSE requests of all S3 mounts (one pool:
    /// it keeps 2 and grows under load up to this) [default: 8].
    #[arg(long, env = "HOTMOUNT_FUSE_THREADS")]
    pub fuse_threads: Option<usize>,
    /// Memory for data prefetched ahead of sequential S3 readers, shared by
    /// all mounts; 0 turns prefetching off [default: 256MiB].
    #[arg(long, env = "HOTMOUNT_PREFETCH_MEMORY", value_parser = parse_size)]
    pub prefetch_memory: Option<u64>,
    /// Memory for data being written to S3 datasets, shared by all mounts;
    /// past it a write waits, then fails with ENOSPC [default: 256MiB].
    #[arg(long, env = "HOTMOUNT_WRITE_MEMORY", value_parser = parse_size)]
    pub write_memory: Option<u64>,
    /// A directory on the node's disk for the node cache: blocks of S3
    /// objects read once, shared by every dataset, kept across restarts
    /// [default: no cache].
    #[arg(long, env = "HOTMOUNT_CACHE_DIR", requires = "cache_size")]
    pub cache_dir: Option<PathBuf>,
    /// The most the node cache holds (least recently used blocks go first).
    #[arg(long, env = "HOTMOUNT_CACHE_SIZE", value_parser = parse_size, requires = "cache_dir")]
    pub cache_size: Option<u64>,
    /// Unmount FUSE mounts on SIGTERM (NFS mounts always stay).
    #[arg(long, env = "HOTMOUNT_UNMOUNT_FUSE_ON_STOP")]
    pub unmount_fuse_on_stop: bool,
}

/// The optional config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    allow_file_endpoint: Vec<PathBuf>,
    #[serde(default)]
    allow_endpoint: Vec<String>,
    credentials_dir: Option<PathBuf>,
    mount_timeout: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    metadata_ttl: Option<String>,
    negative_ttl: Option<String>,
    header_read_timeout: Option<String>,
    metrics_listen: Option<SocketAddr>,
    max_connections: Option<usize>,
    max_directory_entries: Option<usize>,
    fuse_threads: Option<usize>,
    prefetch_memory: Option<String>,
    write_memory: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    unmount_fuse_on_stop: Option<bool>,
}

/// Where the node cache lives, and how much it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Its directory.
    pub dir: PathBuf,
    /// Its size limit in bytes.
    pub size: u64,
}

/// A size from its flag, else from the config file's text.
fn size_setting(
    flag: &'static str,
    from_flag: Option<u64>,
    from_file: &Option<String>,
) -> Result<Option<u64>, ConfigError> {
    match (from_flag, from_file) {
        (Some(bytes), _) => Ok(Some(bytes)),
        (None, Some(text)) => parse_size(text).map(Some).map_err(|e| invalid(flag, e)),
        (None, None) => Ok(None),
    }
}

/// A bad setting: which one, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting is invalid.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The flag name.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// The service-account key source the flags name, if any.
fn service_accounts(
    args: &ServeArgs,
) -> Result<Option<crate::api::service_account::ServiceAccounts>, ConfigError> {
    use crate::api::service_account::ServiceAccounts;
    let Some(issuer) = args.sa_issuer.clone() else {
        return Ok(None);
    };
    if let Some(jwks) = &args.sa_jwks {
        return ServiceAccounts::from_file(jwks.clone(), issuer)
            .map(Some)
            .map_err(|e| invalid("--sa-jwks", e));
    }
    let Some(url) = &args.sa_jwks_url else {
        return Ok(None);
    };
    let ca = (args.sa_api_ca != "system").then(|| PathBuf::from(&args.sa_api_ca));
    ServiceAccounts::from_api_server(url, args.sa_api_token.clone(), ca, issuer)
        .map(Some)
        .map_err(|e| invalid("--sa-jwks-url", e))
}

/// The validated configuration of `hotmount serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The unix socket.
    pub socket: PathBuf,
    /// Group owning the socket.
    pub socket_group: Option<String>,
    /// The TCP listener, with its tokens.
    pub listen: Option<(SocketAddr, TokenSet)>,
    /// Log format.
    pub log_format: LogFormat,
    /// The manager's settings (root included).
    pub manager: ManagerConfig,
    /// Limits of every API listener.
    pub listener_limits: ListenerLimits,
    /// Where `/metrics` is served alone, without a token.
    pub metrics_listen: Option<SocketAddr>,
    /// The most entries one S3 directory listing may have.
    pub max_directory_entries: usize,
    /// How the supervisor runs its worker.
    pub supervision: SupervisionConfig,
    /// How long one S3 request may take.
    pub s3_request_timeout: Duration,
    /// The node cache (`--cache-dir`, `--cache-size`).
    pub cache: Option<CacheSettings>,
    /// The unix socket's permission bits.
    pub socket_mode: u32,
    /// TLS for the TCP API.
    pub tls: Option<crate::api::tls::TlsFiles>,
}

/// The variable behind `--handover-format` (tests only).
pub const HANDOVER_FORMAT_ENV: &str = "HOTMOUNT_HANDOVER_FORMAT";

/// The table format this build claims (`--handover-format` or
/// [`HANDOVER_FORMAT_ENV`] for tests, else [`crate::s3fs::fs::SNAPSHOT_FORMAT`]).
pub fn handover_format_from_env() -> u32 {
    std::env::var(HANDOVER_FORMAT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::s3fs::fs::SNAPSHOT_FORMAT)
}

/// How the supervisor runs its worker and hands the node over.
#[derive(Debug, Clone)]
pub struct SupervisionConfig {
    /// A worker silent for this long is replaced.
    pub heartbeat_timeout: Duration,
    /// At an upgrade, the longest wait for open writers.
    pub takeover_write_wait: Duration,
    /// The table format this build hands over and takes over.
    pub handover_format: u32,
    /// Where a new supervisor asks the running one for the node.
    pub takeover_socket: PathBuf,
}

impl Config {
    /// Merges flags, variables and the file, and validates the result.
    pub fn from_args(args: ServeArgs) -> Result<Config, ConfigError> {
        let accounts = service_accounts(&args)?;
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        let file_duration = |setting: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| parse_duration(v).map_err(|e| invalid(setting, e)))
                .transpose()
        };
        let root = args
            .root
            .or(file.root)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let socket = args
            .socket
            .or(file.socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let credentials_dir = args
            .credentials_dir
            .or(file.credentials_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS_DIR));
        for (setting, path) in [
            ("--root", &root),
            ("--state-dir", &state_dir),
            ("--socket", &socket),
            ("--credentials-dir", &credentials_dir),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    setting,
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }
        if root == Path::new("/") || state_dir.starts_with(&root) || root.starts_with(&state_dir) {
            return Err(invalid(
                "--root",
                "must not be / and must not contain or sit inside --state-dir",
            ));
        }
        let listen = args.listen.or(file.listen);
        let token_file = args.token_file.or(file.token_file);
        let listen = match (listen, token_file) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "--listen",
                    "needs --token-file: every TCP call needs a bearer token",
                ));
            }
            (Some(addr), Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("--token-file", format!("{}: {e}", path.display())))?;
                let mut tokens = TokenSet::parse(&text)
                    .map_err(|e| invalid("--token-file", format!("{}: {e}", path.display())))?;
                if let Some(accounts) = accounts {
                    tokens = tokens.with_service_accounts(accounts);
                }
                Some((addr, tokens))
            }
        };
        if listen.is_none() && (args.sa_jwks.is_some() || args.sa_jwks_url.is_some()) {
            return Err(invalid(
                "--sa-jwks",
                "service-account tokens are for the TCP API: it needs --listen",
            ));
        }
        if listen.is_none() && args.tls_cert.is_some() {
            return Err(invalid(
                "--tls-cert",
                "TLS is for the TCP API: it needs --listen",
            ));
        }
        let mut allowed = args.allow_file_endpoint;
        allowed.extend(file.allow_file_endpoint);
        for dir in &allowed {
            if !dir.is_absolute() || !dir.is_dir() {
                return Err(invalid(
                    "--allow-file-endpoint",
                    format!("{} must be an existing absolute directory", dir.display()),
                ));
            }
        }
        let mut manager = ManagerConfig::new(root);
        manager.file_policy = FileEndpointPolicy {
            allowed_dirs: allowed,
        };
        let mut allowed_hosts = args.allow_endpoint;
        allowed_hosts.extend(file.allow_endpoint);
        let only = args
            .egress_allow
            .iter()
            .map(|rule| {
                rule.parse()
                    .map_err(|e: String| invalid("--egress-allow", e))
            })
            .collect::<Result<_, _>>()?;
        manager.egress = crate::egress::EgressPolicy {
            allowed_hosts,
            only,
        };
        // Need not exist yet: a Secret volume may come later, and until
        // then credentials files are refused with a clear error.
        manager.credentials_dir = CredentialsDir::new(credentials_dir);
        let durations = [
            ("--mount-timeout", args.mount_timeout, &file.mount_timeout),
            (
                "--probe-interval",
                args.probe_interval,
                &file.probe_interval,
            ),
            ("--probe-timeout", args.probe_timeout, &file.probe_timeout),
            ("--metadata-ttl", args.metadata_ttl, &file.metadata_ttl),
            ("--negative-ttl", args.negative_ttl, &file.negative_ttl),
            (
                "--header-read-timeout",
                args.header_read_timeout,
                &file.header_read_timeout,
            ),
        ];
        let mut listener_limits = ListenerLimits::default();
        for (setting, flag, from_file) in durations {
            let Some(value) = flag
                .map(Ok)
                .or_else(|| file_duration(setting, from_file).transpose())
            else {
                continue;
            };
            let value = value?;
            let may_be_zero = matches!(setting, "--metadata-ttl" | "--negative-ttl");
            if value.is_zero() && !may_be_zero {
                return Err(invalid(setting, "must be greater than zero"));
            }
            match setting {
                "--mount-timeout" => manager.mount_timeout = value,
                "--probe-interval" => manager.probe_interval = value,
                "--probe-timeout" => manager.probe_timeout = value,
                "--negative-ttl" => manager.negative_ttl = value,
                "--header-read-timeout" => listener_limits.header_read_timeout = value,
                _ => manager.metadata_ttl = value,
            }
        }
        if let Some(max) = args.max_connections.or(file.max_connections) {
            if max == 0 {
                return Err(invalid("--max-connections", "must be greater than zero"));
            }
            listener_limits.max_connections = max;
        }
        let max_directory_entries = args
            .max_directory_entries
            .or(file.max_directory_entries)
            .unwrap_or(DEFAULT_MAX_DIRECTORY_ENTRIES);
        if max_directory_entries == 0 {
            return Err(invalid(
                "--max-directory-entries",
                "must be greater than zero",
            ));
        }
        if let Some(threads) = args.fuse_threads.or(file.fuse_threads) {
            if !(1..=64).contains(&threads) {
                return Err(invalid("--fuse-threads", "must be between 1 and 64"));
            }
            manager.fuse_threads = threads;
        }
        let prefetch_memory = size_setting(
            "--prefetch-memory",
            args.prefetch_memory,
            &file.prefetch_memory,
        )?;
        if let Some(bytes) = prefetch_memory {
            manager.prefetch_budget = crate::s3fs::PrefetchBudget::new(bytes);
        }
        let cache_dir = args.cache_dir.or(file.cache_dir);
        let cache_size = size_setting("--cache-size", args.cache_size, &file.cache_size)?;
        let cache = match (cache_dir, cache_size) {
            (None, None) => None,
            (Some(dir), Some(size)) => {
                if dir.starts_with(&manager.root) || manager.root.starts_with(&dir) {
                    return Err(invalid(
                        "--cache-dir",
                        "must not contain or sit inside --root (pods would see it)",
                    ));
                }
                Some(CacheSettings { dir, size })
            }
            (Some(_), None) => return Err(invalid("--cache-dir", "needs --cache-size")),
            (None, Some(_)) => return Err(invalid("--cache-size", "needs --cache-dir")),
        };
        let write_memory = size_setting("--write-memory", args.write_memory, &file.write_memory)?;
        if let Some(bytes) = write_memory {
            if bytes < crate::s3fs::write::WriteBudget::MIN_BYTES {
                return Err(invalid(
                    "--write-memory",
                    "must hold at least one multipart writer (64MiB)",
                ));
            }
            manager.write_budget = crate::s3fs::write::WriteBudget::new(bytes);
        }
        if let Some(path) = &args.policy {
            manager.access = std::sync::Arc::new(
                crate::api::access::Access::new(Some(path.clone()))
                    .map_err(|reason| invalid("--policy", reason))?,
            );
        }
        manager.unmount_fuse_on_stop =
            args.unmount_fuse_on_stop || file.unmount_fuse_on_stop.unwrap_or(false);
        Ok(Config {
            cache,
            socket,
            socket_group: args.socket_group.or(file.socket_group),
            listen,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            manager,
            listener_limits,
            max_directory_entries,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            socket_mode: args.socket_mode.unwrap_or(0o660),
            tls: match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => {
                    let files = crate::api::tls::TlsFiles { cert, key };
                    crate::api::tls::acceptor(&files).map_err(|e| invalid("--tls-cert", e))?;
                    Some(files)
                }
                _ => None,
            },
            s3_request_timeout: positive(
                "--s3-request-timeout",
                args.s3_request_timeout,
                crate::s3fs::store::DEFAULT_REQUEST_TIMEOUT,
            )?,
            supervision: SupervisionConfig {
                heartbeat_timeout: positive(
                    "--worker-heartbeat-timeout",
                    args.worker_heartbeat_timeout,
                    Duration::from_secs(10),
                )?,
                takeover_write_wait: args.takeover_write_wait.unwrap_or(Duration::from_secs(30)),
                handover_format: args
                    .handover_format
                    .unwrap_or(crate::s3fs::fs::SNAPSHOT_FORMAT),
                takeover_socket: state_dir.join("takeover.sock"),
            },
            state_dir,
        })
    }
}

/// Octal permission bits for the socket (`0660`, `666`).
fn parse_socket_mode(text: &str) -> Result<u32, String> {
    crate::spec::FileMode::parse(text).map(|mode| mode.0)
}

/// `value` (or `default`), refused when zero.
fn positive(
    setting: &'static str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(value) if value.is_zero() => Err(invalid(setting, "must be greater than zero")),
        Some(value) => Ok(value),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let config = Config::from_args(ServeArgs::default()).unwrap();
        assert_eq!(config.manager.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET));
        assert!(config.listen.is_none());
        assert_eq!(config.manager.mount_timeout, Duration::from_secs(30));
        assert_eq!(
            config.manager.credentials_dir.path(),
            Path::new(DEFAULT_CREDENTIALS_DIR)
        );
    }

    /// The agent container of daemonset.yaml's DaemonSet.
    fn daemonset_agent() -> serde_yaml::Value {
        let text = include_str!("../daemonset.yaml");
        let daemonset = serde_yaml::Deserializer::from_str(text)
            .map(|document| serde_yaml::Value::deserialize(document).unwrap())
            .find(|document| document["kind"] == "DaemonSet")
            .expect("daemonset.yaml has a DaemonSet");
        daemonset["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|container| container["name"] == "agent")
            .expect("a container named agent")
            .clone()
    }

    #[test]
    fn the_daemonsets_args_are_a_valid_configuration() {
        use clap::Parser;
        let agent = daemonset_agent();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "ops admin s3cr3t-token-of-32-bytes-or-more!!\n").unwrap();
        let args = agent["args"].as_sequence().unwrap().iter().map(|arg| {
            let arg = arg.as_str().unwrap().replace("$(NODE_IP)", "10.0.0.7");
            // The Secret the pod mounts, here where the test can write it.
            match arg.strip_prefix("--token-file=") {
                Some(_) => format!("--token-file={}", tokens.display()),
                None => arg,
            }
        });
        // The cluster CA the pod projects (checked below to be where the
        // default looks) is not on this machine: the system's roots stand in.
        let args = std::iter::once("hotmount".to_string())
            .chain(args)
            .chain(["--sa-api-ca=system".to_string()]);
        let cli = crate::cli::Cli::try_parse_from(args)
            .unwrap_or_else(|e| panic!("daemonset.yaml's args do not parse: {e}"));
        let crate::cli::Command::Serve(serve) = cli.command else {
            panic!("daemonset.yaml does not run serve");
        };
        let token = serve.sa_api_token.clone();
        let ca = match crate::cli::Cli::parse_from(["hotmount", "serve"]).command {
            crate::cli::Command::Serve(defaults) => defaults.sa_api_ca,
            _ => unreachable!("parsed serve"),
        };
        let config = Config::from_args(serve)
            .unwrap_or_else(|e| panic!("daemonset.yaml's args are refused: {e}"));
        let cache = config.cache.expect("the DaemonSet runs a node cache");
        assert_eq!(cache.dir, Path::new("/var/lib/hotmount/cache"));
        assert_eq!(cache.size, 20 << 30);
        assert_eq!(config.manager.root, Path::new("/var/lib/hotmount/mnt"));
        let listen = config.listen.map(|(address, _)| address.to_string());
        assert_eq!(listen.as_deref(), Some("10.0.0.7:7470"));
        let metrics = config.metrics_listen.map(|address| address.to_string());
        assert_eq!(metrics.as_deref(), Some("10.0.0.7:9470"));

        // Every path the agent reads or writes is in a volume of the pod.
        let mounted: Vec<PathBuf> = agent["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|mount| PathBuf::from(mount["mountPath"].as_str().unwrap()))
            .collect();
        for path in [
            cache.dir.as_path(),
            &config.manager.root,
            &config.state_dir,
            &config.socket,
            config.manager.credentials_dir.path(),
            &token,
            Path::new(&ca),
        ] {
            assert!(
                mounted.iter().any(|volume| path.starts_with(volume)),
                "{} is in no volume of the agent's pod",
                path.display()
            );
        }
    }

    #[test]
    fn the_example_sidecar_outlasts_a_mount_when_its_pod_ends() {
        // A sidecar stopped while its dataset is being mounted waits for
        // the mount (at most --mount-timeout) and then detaches it.
        let sidecar: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../deploy/examples/sidecar.yaml")).unwrap();
        let grace = sidecar["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("a grace period");
        let mount_timeout = Config::from_args(ServeArgs::default())
            .unwrap()
            .manager
            .mount_timeout;
        assert!(
            Duration::from_secs(grace) > mount_timeout,
            "{grace} s is not longer than the mount timeout, {mount_timeout:?}"
        );
    }

    #[test]
    fn the_read_and_write_budgets_are_the_documented_defaults() {
        // README (serve's flags), doc/SCALE.md and daemonset.yaml add these up
        // against the DaemonSet's 1 GiB limit.
        assert_eq!(
            crate::s3fs::prefetch::DEFAULT_PREFETCH_MEMORY,
            256 * 1024 * 1024
        );
        assert_eq!(
            crate::s3fs::write::WriteBudget::DEFAULT_BYTES,
            256 * 1024 * 1024
        );
        // The node cache's 128 MiB in the same sum.
        assert_eq!(
            crate::s3fs::node_cache::MAX_PENDING_WRITE_BYTES + crate::s3fs::node_cache::WARM_MEMORY,
            128 * 1024 * 1024
        );
    }

    #[test]
    fn the_credentials_dir_comes_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hotmount.toml");
        std::fs::write(&file, "credentials-dir = \"/srv/creds/\"\n").unwrap();
        let from_file = Config::from_args(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            from_file.manager.credentials_dir.path(),
            Path::new("/srv/creds")
        );
        let from_flag = Config::from_args(ServeArgs {
            config: Some(file),
            credentials_dir: Some("/run/secrets/s3".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            from_flag.manager.credentials_dir.path(),
            Path::new("/run/secrets/s3")
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hotmount.toml");
        std::fs::write(
            &file,
            "root = \"/srv/file-root\"\nprobe-interval = \"3s\"\nfuse-threads = 6\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            root: Some("/srv/flag-root".into()),
            ..ServeArgs::default()
        };
        let config = Config::from_args(args).unwrap();
        assert_eq!(config.manager.root, PathBuf::from("/srv/flag-root"));
        assert_eq!(config.manager.probe_interval, Duration::from_secs(3));
        assert_eq!(config.manager.fuse_threads, 6);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (
                ServeArgs {
                    root: Some("rel".into()),
                    ..Default::default()
                },
                "--root",
            ),
            (
                ServeArgs {
                    listen: Some("127.0.0.1:7470".parse().unwrap()),
                    ..Default::default()
                },
                "--listen",
            ),
            (
                ServeArgs {
                    fuse_threads: Some(0),
                    ..Default::default()
                },
                "--fuse-threads",
            ),
            (
                ServeArgs {
                    probe_interval: Some(Duration::ZERO),
                    ..Default::default()
                },
                "--probe-interval",
            ),
            (
                ServeArgs {
                    allow_file_endpoint: vec!["/nonexistent/dir".into()],
                    ..Default::default()
                },
                "--allow-file-endpoint",
            ),
            (
                ServeArgs {
                    root: Some("/var/lib/hotmount/state/x".into()),
                    ..Default::default()
                },
                "--root",
            ),
            (
                ServeArgs {
                    credentials_dir: Some("creds".into()),
                    ..Default::default()
                },
                "--credentials-dir",
            ),
        ];
        for (args, setting) in cases {
            let err = Config::from_args(args).unwrap_err();
            assert!(err.to_string().starts_with(setting), "{err}");
        }
    }

    #[test]
    fn prefetch_memory_takes_sizes_from_flag_or_file() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("MiB").is_err());
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        let config = Config::from_args(ServeArgs::default()).unwrap();
        assert_eq!(
            config.manager.prefetch_budget.capacity(),
            crate::s3fs::prefetch::DEFAULT_PREFETCH_MEMORY
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hotmount.toml");
        std::fs::write(&file, "prefetch-memory = \"64MiB\"\n").unwrap();
        let from_file = Config::from_args(ServeArgs {
            config: Some(file.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.manager.prefetch_budget.capacity(), 64 << 20);
        let from_flag = Config::from_args(ServeArgs {
            config: Some(file.clone()),
            prefetch_memory: Some(8 << 20),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_flag.manager.prefetch_budget.capacity(), 8 << 20);
        std::fs::write(&file, "prefetch-memory = \"lots\"\n").unwrap();
        let err = Config::from_args(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--prefetch-memory"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hotmount.toml");
        std::fs::write(&file, "rooot = \"/x\"\n").unwrap();
        let err = Config::from_args(ServeArgs {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("rooot"), "{err}");
    }
}
