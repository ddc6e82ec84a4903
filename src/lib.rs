//! hotmount: a node-local agent that mounts NFS exports and S3 buckets (served by
//! its own FUSE filesystem) under one rshared root, so running pods see datasets
//! appear and disappear live. [`run`] wires the pieces together.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod egress;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod nfs;
pub mod operation;
pub mod s3fs;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod worker;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::manager::{Manager, ManagerError};
use crate::metrics::Metrics;
use crate::state::{StateError, StateStore};
use crate::sys::Mounter;

/// Why the agent stopped with an error. Each message carries its causes
/// itself (none is chained as a `source`), so a report prints each cause
/// once.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be set up.
    #[error("listen on {what}: {error}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// Start-up (root, reconcile) failed.
    #[error("start: {0}")]
    Start(ManagerError),
    /// A server failed.
    #[error("serve: {0}")]
    Serve(std::io::Error),
    /// The node cache directory cannot be used.
    #[error("node cache {dir}: {error}")]
    Cache {
        /// The directory.
        dir: std::path::PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

impl From<ManagerError> for RunError {
    fn from(error: ManagerError) -> Self {
        RunError::Start(error)
    }
}

/// The listening sockets of the API: bound by the agent itself, or by the
/// supervisor, which hands them to each worker.
#[derive(Debug)]
pub struct Listeners {
    /// The unix socket.
    pub unix: std::os::unix::net::UnixListener,
    /// The TCP API (`--listen`).
    pub api: Option<std::net::TcpListener>,
    /// `/metrics` alone (`--metrics-listen`).
    pub metrics: Option<std::net::TcpListener>,
}

/// Binds every listener `config` asks for.
pub fn bind_listeners(config: &Config) -> Result<Listeners, RunError> {
    Ok(Listeners {
        unix: bind_socket(config)?,
        api: config
            .listen
            .as_ref()
            .map(|(addr, _)| bind_tcp(*addr))
            .transpose()?,
        metrics: config.metrics_listen.map(bind_tcp).transpose()?,
    })
}

/// Binds a TCP listener on `addr`.
pub(crate) fn bind_tcp(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, RunError> {
    let fail = |error| RunError::Listen {
        what: addr.to_string(),
        error,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    deepen_backlog(&listener).map_err(fail)?;
    Ok(listener)
}

/// Gives a listener the system's longest accept queue (std's is 128): a
/// burst of connections (an attacker's, closed at once by the per-peer
/// limit) must not overflow it, or a legitimate client's SYN is dropped
/// and retried only a second later.
fn deepen_backlog(listener: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    nix::sys::socket::listen(listener, nix::sys::socket::Backlog::MAXCONN)
        .map_err(std::io::Error::from)
}

/// Runs the agent until `shutdown` completes: serves the API (answering
/// `/readyz` 503 while starting), prepares the root, reconciles, then serves;
/// on shutdown finishes in-flight calls and stops the manager.
pub async fn run(
    config: Config,
    mounter: Arc<dyn Mounter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listeners = bind_listeners(&config)?;
    let socket = config.socket.clone();
    let result = run_with(config, mounter, listeners, None, shutdown).await;
    let _ = std::fs::remove_file(socket);
    result
}

/// [`run`] on listeners already bound; `supervision` when this process is
/// a supervisor's worker (the connections to serve again, the link).
pub async fn run_with(
    config: Config,
    mounter: Arc<dyn Mounter>,
    listeners: Listeners,
    mut supervision: Option<worker::Supervision>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    object_store::list::set_max_list_entries(config.max_directory_entries);
    s3fs::store::set_request_timeout(config.s3_request_timeout);
    let metrics = Arc::new(Metrics::new());
    if let Some(supervision) = &mut supervision {
        supervision.carry_counters(&metrics);
    }
    let store = StateStore::open(&config.state_dir)?;
    let mut manager_config = config.manager.clone();
    if let Some(cache) = &config.cache {
        let opened =
            s3fs::node_cache::NodeCache::open(&cache.dir, cache.size, Arc::clone(&metrics))
                .map_err(|error| RunError::Cache {
                    dir: cache.dir.clone(),
                    error,
                })?;
        manager_config.node_cache = Some(opened);
    }
    let manager = Manager::new(manager_config, mounter, store, metrics);
    let serve_error = |source: std::io::Error| RunError::Listen {
        what: "a listener".to_string(),
        error: source,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    let limits = config.listener_limits;
    listeners.unix.set_nonblocking(true).map_err(serve_error)?;
    let unix = tokio::net::UnixListener::from_std(listeners.unix).map_err(serve_error)?;
    servers.spawn(api::listener::serve(
        unix,
        api::router(manager.clone()),
        limits,
        None,
        stopped(stop_rx.clone()),
    ));
    // TLS, for the API on TCP only (the metrics listener stays plain).
    let tls = match &config.tls {
        Some(files) => Some(
            api::tls::acceptor(files).map_err(|reason| RunError::Listen {
                what: "TLS".to_string(),
                error: std::io::Error::other(reason),
            })?,
        ),
        None => None,
    };
    let tcp = [
        listeners
            .api
            .zip(config.listen.as_ref())
            .map(|(listener, (_, tokens))| {
                let router = api::router_with_tokens(manager.clone(), tokens.clone());
                (
                    listener,
                    router,
                    "the API (bearer tokens required)",
                    tls.clone(),
                )
            }),
        listeners.metrics.map(|listener| {
            (
                listener,
                api::metrics_router(manager.clone()),
                "/metrics (no token)",
                None,
            )
        }),
    ];
    for (listener, router, what, tls) in tcp.into_iter().flatten() {
        listener.set_nonblocking(true).map_err(serve_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(serve_error)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving {what} on TCP");
        }
        servers.spawn(api::listener::serve(
            listener,
            router,
            limits,
            tls,
            stopped(stop_rx.clone()),
        ));
    }
    tracing::info!(socket = %config.socket.display(), root = %manager.root().display(), "hotmount starting");

    let quiesce = match supervision {
        Some(supervision) => Some(supervision.begin(&manager).await),
        None => None,
    };
    let started = manager.start().await;
    if let Err(err) = started {
        let _ = stop_tx.send(true);
        while servers.join_next().await.is_some() {}
        return Err(err.into());
    }
    tracing::info!(datasets = manager.list().len(), "ready");

    let mut shutdown = std::pin::pin!(shutdown);
    let failure = tokio::select! {
        () = &mut shutdown => None,
        Some(result) = servers.join_next() => Some(result),
    };
    tracing::info!("stopping: finishing in-flight calls");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    manager.shutdown().await;
    if let Some(quiesce) = quiesce {
        quiesce.finish(&manager).await;
    }
    match failure {
        Some(Ok(Err(e))) => Err(RunError::Serve(e)),
        Some(Err(join)) => Err(RunError::Serve(std::io::Error::other(join))),
        _ => Ok(()),
    }
}

/// Binds the unix socket (a stale one is replaced), with its mode and group.
pub(crate) fn bind_socket(config: &Config) -> Result<std::os::unix::net::UnixListener, RunError> {
    let path: &PathBuf = &config.socket;
    let fail = |source| RunError::Listen {
        what: path.display().to_string(),
        error: source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(fail)?;
    deepen_backlog(&listener).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(fail)?;
    if let Some(group) = &config.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .map_err(|e| fail(std::io::Error::from(e)))?
            .ok_or_else(|| fail(std::io::Error::other(format!("no group named {group}"))))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| fail(std::io::Error::from(e)))?;
    }
    Ok(listener)
}
