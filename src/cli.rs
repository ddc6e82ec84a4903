//! The command line: `serve` runs the agent; `attach`, `detach`, `ls` and
//! `status` are clients of its API (human tables by default, `--json` for
//! scripts, a non-zero exit on failure).

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper::{Method, StatusCode};

use crate::api::{ErrorBody, MountList};
use crate::client::{Endpoint, Reply, call};
use crate::config::{DEFAULT_SOCKET, ServeArgs};
use crate::manager::MountView;
use crate::spec::{
    FileMode, MountSpec, NfsSource, NfsVersion, S3Credentials, S3Source, SourceSpec,
};

/// hotmount: live dataset mounts for running pods.
#[derive(Debug, clap::Parser)]
#[command(name = "hotmount", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[allow(clippy::large_enum_variant)] // parsed once, at start
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the agent.
    Serve(ServeArgs),
    /// Mount a dataset (S3 bucket or NFS export) under the root.
    Attach(AttachArgs),
    /// Unmount a dataset and forget it.
    Detach(DetachArgs),
    /// List datasets.
    Ls(ListArgs),
    /// Show one dataset.
    Status(StatusArgs),
    /// Fetch paths of an S3 dataset into the node cache, showing progress;
    /// Ctrl-C stops it.
    Warm(WarmArgs),
    /// Exit 0 when the agent is ready (for probes); `--alive`: when it answers.
    Ready(ReadyArgs),
    /// Print the table format this build hands over and takes over (asked
    /// by a running agent before it upgrades in place to this binary).
    #[command(hide = true)]
    HandoverFormat,
}

/// How clients reach the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The agent's unix socket.
    #[arg(long, env = "HOTMOUNT_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// The agent's TCP address instead, e.g. http://10.0.0.7:7470 (needs --token-file).
    #[arg(long, env = "HOTMOUNT_URL", global = true)]
    pub url: Option<String>,
    /// A file holding the bearer token for --url.
    #[arg(long, env = "HOTMOUNT_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// `attach`.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The dataset name (the directory under the root).
    pub name: String,
    /// An S3 source: s3://BUCKET[/PREFIX].
    #[arg(long, conflicts_with = "nfs", required_unless_present = "nfs")]
    pub s3: Option<String>,
    /// An NFS source: SERVER:/EXPORT.
    #[arg(long)]
    pub nfs: Option<String>,
    /// S3 endpoint (http(s)://HOST:PORT, or file:///DIR).
    #[arg(long, requires = "s3")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[arg(long, requires = "s3")]
    pub region: Option<String>,
    /// S3 path-style addressing.
    #[arg(long, requires = "s3")]
    pub path_style: bool,
    /// S3 credentials file (access_key_id=..., secret_access_key=...); it
    /// must be under the agent's --credentials-dir.
    #[arg(long, requires = "s3", conflicts_with = "credentials_secret")]
    pub credentials_file: Option<PathBuf>,
    /// S3 credentials by name: the file NAME in the agent's --credentials-dir
    /// (a key of the Secret mounted there).
    #[arg(long, requires = "s3", value_name = "NAME")]
    pub credentials_secret: Option<String>,
    /// The S3 dataset never changes: cache metadata without expiry.
    #[arg(long, requires = "s3")]
    pub immutable: bool,
    /// Keep this dataset's bytes out of the node cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Owner (uid) of every file and directory of an S3 dataset [default: 0].
    #[arg(long, requires = "s3")]
    pub uid: Option<u32>,
    /// Group (gid) of every file and directory of an S3 dataset [default: 0].
    #[arg(long, requires = "s3")]
    pub gid: Option<u32>,
    /// Permission bits of files, octal [default: 0444, 0644 with --rw].
    #[arg(long, requires = "s3", value_parser = FileMode::parse)]
    pub file_mode: Option<FileMode>,
    /// Permission bits of directories, octal [default: 0555, 0755 with --rw].
    #[arg(long, requires = "s3", value_parser = FileMode::parse)]
    pub dir_mode: Option<FileMode>,
    /// NFS version: 3, 4, 4.1 or 4.2.
    #[arg(long, requires = "nfs")]
    pub nfs_version: Option<String>,
    /// Mount read-write (read-only by default).
    #[arg(long)]
    pub rw: bool,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Wait until the dataset is Mounted (up to --timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// Stay running while the dataset is used (a pod's sidecar): after the
    /// attach, wait for SIGTERM or SIGINT, then detach the dataset and exit
    /// (one that comes while it is being mounted detaches it once mounted).
    #[arg(long)]
    pub hold: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The dataset name.
    pub name: String,
    /// Detach lazily even if files are open.
    #[arg(long)]
    pub force: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `ls`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The dataset name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero unless the dataset is Mounted (for a startup probe).
    #[arg(long)]
    pub mounted: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `warm`.
#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// The dataset name.
    pub name: String,
    /// Files or directories inside the dataset [default: all of it].
    pub paths: Vec<String>,
    /// Print the progress as JSON lines (one per update) instead of a bar.
    #[arg(long)]
    pub json: bool,
    /// Start the warm-up and return at once (follow it with `warm --status`).
    #[arg(long, conflicts_with = "status")]
    pub detach: bool,
    /// Follow the warm-up already started instead of starting one.
    #[arg(long)]
    pub status: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How often `warm` asks for progress.
const WARM_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a cancel after Ctrl-C waits for the agent's answer.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `ready`.
#[derive(Debug, clap::Args)]
pub struct ReadyArgs {
    /// Only check that the agent answers (liveness), not that it is ready.
    #[arg(long)]
    pub alive: bool,
    /// Connection.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

/// A failed client command: what to print, and the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// The message.
    pub message: String,
}

impl CommandError {
    fn new(message: impl Into<String>) -> Self {
        CommandError {
            message: message.into(),
        }
    }
}

impl ConnectArgs {
    fn endpoint(&self) -> Result<Endpoint, CommandError> {
        let Some(url) = &self.url else {
            return Ok(Endpoint::Unix(self.socket.clone()));
        };
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| CommandError::new(format!("--url {url}: expected http://HOST:PORT")))?
            .trim_end_matches('/')
            .to_string();
        let token_file = self
            .token_file
            .as_ref()
            .ok_or_else(|| CommandError::new("--url needs --token-file"))?;
        let text = std::fs::read_to_string(token_file).map_err(|e| {
            CommandError::new(format!("--token-file {}: {e}", token_file.display()))
        })?;
        let token = crate::api::token_lines(&text)
            .next()
            .map(|(_, token)| token.to_string())
            .ok_or_else(|| {
                CommandError::new(format!("--token-file {}: no token", token_file.display()))
            })?;
        Ok(Endpoint::Tcp { authority, token })
    }
}

/// Builds the mount spec of `attach` from its flags.
pub fn spec_from_attach(args: &AttachArgs) -> Result<MountSpec, CommandError> {
    let source = if let Some(url) = &args.s3 {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            CommandError::new(format!("--s3 {url}: expected s3://BUCKET[/PREFIX]"))
        })?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, (!prefix.is_empty()).then(|| prefix.to_string())),
            None => (rest, None),
        };
        SourceSpec::S3(S3Source {
            bucket: bucket.to_string(),
            prefix,
            endpoint: args.endpoint.clone(),
            region: args.region.clone(),
            path_style: args.path_style,
            credentials: args
                .credentials_secret
                .clone()
                .map(S3Credentials::Secret)
                .or_else(|| args.credentials_file.clone().map(S3Credentials::File)),
            immutable: args.immutable,
            cache: !args.no_cache,
            uid: args.uid,
            gid: args.gid,
            file_mode: args.file_mode,
            dir_mode: args.dir_mode,
        })
    } else if let Some(nfs) = &args.nfs {
        let (server, export) = nfs
            .rsplit_once(":/")
            .ok_or_else(|| CommandError::new(format!("--nfs {nfs}: expected SERVER:/EXPORT")))?;
        let version = args
            .nfs_version
            .as_deref()
            .map(|v| {
                serde_json::from_value::<NfsVersion>(serde_json::Value::String(v.to_string()))
                    .map_err(|_| {
                        CommandError::new(format!("--nfs-version {v}: expected 3, 4, 4.1 or 4.2"))
                    })
            })
            .transpose()?;
        SourceSpec::Nfs(NfsSource {
            version,
            ..NfsSource::new(
                server.trim_start_matches('[').trim_end_matches(']'),
                format!("/{export}"),
            )
        })
    } else {
        return Err(CommandError::new("give --s3 or --nfs"));
    };
    let spec = MountSpec {
        source,
        read_only: !args.rw,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    spec.validate()
        .map_err(|e| CommandError::new(format!("invalid mount: {e}")))?;
    Ok(spec)
}

fn api_error(reply: &Reply) -> CommandError {
    match serde_json::from_slice::<ErrorBody>(&reply.body) {
        Ok(body) => CommandError::new(format!(
            "{} ({}): {}",
            body.error.code,
            reply.status.as_u16(),
            body.error.message
        )),
        Err(_) => CommandError::new(format!(
            "agent answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )),
    }
}

async fn request(
    connect: &ConnectArgs,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, CommandError> {
    let endpoint = connect.endpoint()?;
    call(&endpoint, method, path, body)
        .await
        .map_err(|e| CommandError::new(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(reply: &Reply) -> Result<T, CommandError> {
    if !reply.status.is_success() {
        return Err(api_error(reply));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| CommandError::new(format!("unexpected answer from the agent: {e}")))
}

/// Runs a client command; returns what to print.
pub async fn run_client(command: Command) -> Result<String, CommandError> {
    match command {
        Command::Serve(_) => Err(CommandError::new("serve is not a client command")),
        Command::HandoverFormat => Ok(crate::config::handover_format_from_env().to_string()),
        Command::Attach(args) => {
            let spec = spec_from_attach(&args)?;
            let body = serde_json::to_vec(&spec).expect("a spec serialises");
            let path = format!("/v1/mounts/{}", args.name);
            // Caught before the PUT: a pod that ends while its dataset is
            // being mounted still detaches it.
            let mut signals = args.hold.then(StopSignals::catch).transpose()?;
            let reply = request(&args.connect, Method::PUT, &path, Some(body)).await?;
            let mut view: MountView = decode(&reply)?;
            if args.wait && view.state != crate::manager::MountState::Mounted {
                let wait_path = format!("{path}?wait=Mounted&timeout={}", args.timeout);
                let waited = request(&args.connect, Method::GET, &wait_path, None);
                let reply = match signals.as_mut() {
                    Some(signals) => match signals.unless_stopped(waited).await {
                        Some(reply) => reply?,
                        None => return detach(&args.connect, &path).await,
                    },
                    None => waited.await?,
                };
                view = decode(&reply)?;
            }
            let attached = if args.json {
                serde_json::to_string_pretty(&view).expect("views serialise")
            } else {
                let verb = if reply.status == StatusCode::CREATED {
                    "mounted"
                } else {
                    "already mounted"
                };
                format!(
                    "{} {verb} at {} ({})",
                    view.name,
                    view.path.display(),
                    view.state.as_str()
                )
            };
            let Some(mut signals) = signals else {
                return Ok(attached);
            };
            println!("{attached}");
            signals.stopped().await;
            detach(&args.connect, &path).await
        }
        Command::Detach(args) => {
            let path = format!(
                "/v1/mounts/{}{}",
                args.name,
                if args.force { "?force=true" } else { "" }
            );
            detach(&args.connect, &path).await
        }
        Command::Ls(args) => {
            let reply = request(&args.connect, Method::GET, "/v1/mounts", None).await?;
            let list: MountList = decode(&reply)?;
            if args.json {
                return Ok(serde_json::to_string_pretty(&list).expect("lists serialise"));
            }
            Ok(render_table(&list.items))
        }
        Command::Ready(args) => {
            let path = if args.alive { "/healthz" } else { "/readyz" };
            let reply = request(&args.connect, Method::GET, path, None).await?;
            if reply.status.is_success() {
                Ok(String::new())
            } else {
                Err(CommandError::new(format!(
                    "agent is not ready ({}): {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                )))
            }
        }
        Command::Warm(args) => warm(&args).await,
        Command::Status(args) => {
            let reply = request(
                &args.connect,
                Method::GET,
                &format!("/v1/mounts/{}", args.name),
                None,
            )
            .await?;
            let view: MountView = decode(&reply)?;
            if args.mounted && view.state != crate::manager::MountState::Mounted {
                return Err(CommandError::new(format!(
                    "{} is {}, not Mounted",
                    view.name,
                    view.state.as_str()
                )));
            }
            if args.json {
                return Ok(serde_json::to_string_pretty(&view).expect("views serialise"));
            }
            Ok(render_status(&view))
        }
    }
}

/// `warm`: starts a warm-up (unless `--status`), then follows it to its end
/// with a progress line on a terminal or JSON lines; Ctrl-C or SIGTERM
/// cancels it. Fails unless it ends `Done` with no failed file.
async fn warm(args: &WarmArgs) -> Result<String, CommandError> {
    use crate::s3fs::fs::{WarmupState, WarmupStatus};
    use std::io::{IsTerminal, Write};
    let path = format!("/v1/mounts/{}/warm", args.name);
    // Caught before the warm-up starts: a Ctrl-C from then on cancels it,
    // whatever the command is waiting for.
    let mut signals = StopSignals::catch()?;
    let bar = !args.json && std::io::stderr().is_terminal();
    if !args.status {
        let body = serde_json::to_vec(&serde_json::json!({ "paths": args.paths }))
            .expect("paths serialise");
        let posted = request(&args.connect, Method::POST, &path, Some(body));
        let Some(reply) = signals.unless_stopped(posted).await else {
            return cancel_warm(args, &path, &mut signals, false).await;
        };
        let started: WarmupStatus = decode(&reply?)?;
        if args.detach {
            return Ok(render_warm(&started));
        }
    }
    let follow = async {
        loop {
            let reply = request(&args.connect, Method::GET, &path, None).await?;
            let status: WarmupStatus = decode(&reply)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&status).expect("statuses serialise")
                );
            } else if bar {
                eprint!("\r\x1b[2K{}", render_warm(&status));
                let _ = std::io::stderr().flush();
            }
            if !status.running() {
                return Ok::<_, CommandError>(status);
            }
            tokio::time::sleep(WARM_POLL).await;
        }
    };
    let Some(followed) = signals.unless_stopped(follow).await else {
        return cancel_warm(args, &path, &mut signals, bar).await;
    };
    let status = followed?;
    if bar {
        eprintln!();
    }
    let summary = render_warm(&status);
    match status.state {
        WarmupState::Done if status.failed_files == 0 => {
            Ok(if args.json { String::new() } else { summary })
        }
        _ => Err(CommandError::new(summary)),
    }
}

/// Cancels the warm-up at `path` after a stop signal. A second signal, or
/// an agent that does not answer within [`CANCEL_WAIT`], ends the wait: the
/// command must not hang on Ctrl-C.
async fn cancel_warm(
    args: &WarmArgs,
    path: &str,
    signals: &mut StopSignals,
    bar: bool,
) -> Result<String, CommandError> {
    use crate::s3fs::fs::WarmupStatus;
    if bar {
        eprintln!();
    }
    let cancel = request(&args.connect, Method::DELETE, path, None);
    match tokio::time::timeout(CANCEL_WAIT, signals.unless_stopped(cancel)).await {
        Ok(Some(reply)) => {
            let cancelled: WarmupStatus = decode(&reply?)?;
            Err(CommandError::new(format!(
                "cancelled: {}",
                render_warm(&cancelled)
            )))
        }
        _ => Err(CommandError::new(format!(
            "stopped before the agent confirmed the cancel; `hotmount warm {} --status` shows whether it still runs",
            args.name
        ))),
    }
}

/// One line of warm-up progress: files, bytes, rate, time left.
pub fn render_warm(status: &crate::s3fs::fs::WarmupStatus) -> String {
    let elapsed = (status.finished_at.unwrap_or_else(chrono::Utc::now) - status.started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64()
        .max(0.001);
    let rate = status.bytes_fetched as f64 / elapsed;
    let left = status.bytes_total.saturating_sub(status.bytes_done) as f64;
    let eta = if status.running() && rate > 0.0 {
        format!(", {:.0}s left", left / rate)
    } else {
        String::new()
    };
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let failed = match (status.failed_files, status.last_error.as_deref()) {
        (0, Some(error)) => format!(" ({error})"),
        (0, None) => String::new(),
        (files, error) => format!(", {files} failed ({})", error.unwrap_or("")),
    };
    format!(
        "{:?}: {}/{} files, {:.1}/{:.1} MiB ({:.1} MiB fetched) at {:.1} MiB/s{eta}{failed}",
        status.state,
        status.files_done,
        status.files_total,
        mib(status.bytes_done),
        mib(status.bytes_total),
        mib(status.bytes_fetched),
        rate / (1024.0 * 1024.0),
    )
}

/// DELETEs `path`; what to print.
async fn detach(connect: &ConnectArgs, path: &str) -> Result<String, CommandError> {
    let reply = request(connect, Method::DELETE, path, None).await?;
    let view: MountView = decode(&reply)?;
    Ok(format!(
        "{} unmounted from {}",
        view.name,
        view.path.display()
    ))
}

/// SIGTERM (a pod ending) and SIGINT (Ctrl-C), caught from the moment this
/// is made: one that comes while a request is under way waits for
/// [`StopSignals::stopped`] instead of ending the process by its default
/// action before it cleans up (a dataset left attached by a sidecar whose
/// pod ended while it was being mounted, a warm-up left running).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn catch() -> Result<StopSignals, CommandError> {
        use tokio::signal::unix::{SignalKind, signal};
        let caught = |kind| {
            signal(kind)
                .map_err(|e| CommandError::new(format!("cannot catch SIGTERM and SIGINT: {e}")))
        };
        Ok(StopSignals {
            term: caught(SignalKind::terminate())?,
            interrupt: caught(SignalKind::interrupt())?,
        })
    }

    /// Waits for either (at once if one came already).
    async fn stopped(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    /// What `work` gives, unless a signal comes first (`None`).
    async fn unless_stopped<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.stopped() => None,
        }
    }
}

/// A short description of a source.
pub fn describe_source(source: &SourceSpec) -> String {
    match source {
        SourceSpec::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.normalized_prefix()),
        SourceSpec::Nfs(nfs) => crate::nfs::mount_source(nfs),
    }
}

/// The `ls` table.
pub fn render_table(items: &[MountView]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "BACKEND".to_string(),
        "STATE".to_string(),
        "MODE".to_string(),
        "SOURCE".to_string(),
        "PATH".to_string(),
    ]];
    for item in items {
        rows.push([
            item.name.clone(),
            item.source.backend().as_str().to_string(),
            item.state.as_str().to_string(),
            if item.read_only { "ro" } else { "rw" }.to_string(),
            describe_source(&item.source),
            item.path.display().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `status` view.
pub fn render_status(view: &MountView) -> String {
    let mut lines = vec![
        format!("name:        {}", view.name),
        format!("path:        {}", view.path.display()),
        format!("source:      {}", describe_source(&view.source)),
        format!("backend:     {}", view.source.backend().as_str()),
        format!(
            "mode:        {}",
            if view.read_only {
                "read-only"
            } else {
                "read-write"
            }
        ),
        format!("state:       {}", view.state.as_str()),
        format!("generation:  {}", view.generation),
        format!("created:     {}", view.created_at.to_rfc3339()),
    ];
    if let Some(probe) = view.health.last_probe {
        let latency = view.health.latency_seconds.unwrap_or_default() * 1000.0;
        lines.push(format!(
            "last probe:  {} ({latency:.1} ms)",
            probe.to_rfc3339()
        ));
    }
    if let Some(error) = &view.last_error {
        lines.push(format!("last error:  {error}"));
    }
    for (key, value) in &view.labels {
        lines.push(format!("label:       {key}={value}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn attach(argv: &[&str]) -> Result<MountSpec, String> {
        let mut full = vec!["hotmount", "attach"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        let Command::Attach(args) = cli.command else {
            panic!()
        };
        spec_from_attach(&args).map_err(|e| e.to_string())
    }

    #[test]
    fn attach_builds_s3_specs() {
        let spec = attach(&[
            "ds",
            "--s3",
            "s3://bucket/a/b",
            "--endpoint",
            "file:///srv/buckets",
            "--rw",
        ])
        .unwrap();
        assert!(!spec.read_only);
        let SourceSpec::S3(s3) = spec.source else {
            panic!()
        };
        assert_eq!(s3.bucket, "bucket");
        assert_eq!(s3.prefix.as_deref(), Some("a/b"));
        assert_eq!(s3.endpoint.as_deref(), Some("file:///srv/buckets"));
        assert!(s3.cache, "through the node cache unless told otherwise");
        let uncached = attach(&["ds", "--s3", "s3://bucket", "--no-cache"]).unwrap();
        let SourceSpec::S3(s3) = uncached.source else {
            panic!()
        };
        assert!(!s3.cache, "--no-cache");
    }

    #[test]
    fn attach_takes_credentials_by_secret_name_or_file() {
        let s3_credentials = |spec: MountSpec| match spec.source {
            SourceSpec::S3(s3) => s3.credentials,
            SourceSpec::Nfs(_) => panic!("not s3"),
        };
        let by_name = attach(&[
            "ds",
            "--s3",
            "s3://bucket",
            "--credentials-secret",
            "datasets",
        ]);
        assert_eq!(
            s3_credentials(by_name.unwrap()),
            Some(S3Credentials::Secret("datasets".into()))
        );
        let by_file = attach(&[
            "ds",
            "--s3",
            "s3://bucket",
            "--credentials-file",
            "/etc/hotmount/creds/datasets",
        ]);
        assert_eq!(
            s3_credentials(by_file.unwrap()),
            Some(S3Credentials::File("/etc/hotmount/creds/datasets".into()))
        );
        let bad = attach(&["ds", "--s3", "s3://bucket", "--credentials-secret", "../x"]);
        assert!(
            bad.unwrap_err().contains("source.s3.credentials.secret"),
            "a bad name is refused before the call"
        );
        let both = attach(&[
            "ds",
            "--s3",
            "s3://bucket",
            "--credentials-secret",
            "a",
            "--credentials-file",
            "/etc/hotmount/creds/a",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn attach_builds_nfs_specs() {
        let spec = attach(&[
            "ds",
            "--nfs",
            "10.0.0.5:/exports/x",
            "--nfs-version",
            "4.2",
            "--label",
            "team=a",
        ])
        .unwrap();
        assert!(spec.read_only);
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("a"));
        let SourceSpec::Nfs(nfs) = spec.source else {
            panic!()
        };
        assert_eq!(
            (nfs.server.as_str(), nfs.export.as_str()),
            ("10.0.0.5", "/exports/x")
        );
        assert_eq!(nfs.version, Some(NfsVersion::V4_2));
    }

    #[test]
    fn attach_rejects_bad_sources() {
        assert!(
            attach(&["ds", "--s3", "http://bucket"])
                .unwrap_err()
                .contains("s3://")
        );
        assert!(
            attach(&["ds", "--nfs", "server-no-export"])
                .unwrap_err()
                .contains("SERVER:/EXPORT")
        );
        assert!(
            attach(&["ds", "--nfs", "h:/x", "--nfs-version", "5"])
                .unwrap_err()
                .contains("--nfs-version")
        );
        assert!(attach(&["ds"]).is_err());
        assert!(attach(&["ds", "--s3", "s3://b", "--nfs", "h:/x"]).is_err());
        assert!(
            attach(&["ds", "--s3", "s3://AB"])
                .unwrap_err()
                .contains("source.s3.bucket")
        );
    }
}
