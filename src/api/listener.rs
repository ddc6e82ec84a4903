//! Serving the API on a listener (the unix socket, TCP) with limits, so that
//! no caller can hold the agent's attention for free: at most
//! `max_connections` connections at once, and a quarter of that from one
//! peer (a uid on the socket, an address on TCP), so that one caller cannot
//! take every slot (a connection past a limit is closed at once); and a
//! connection that does not send a whole request head within
//! `header_read_timeout` (slow headers, or idle between requests) is closed.
//! A graceful stop stops accepting and lets requests in flight finish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::api::tls::MaybeTls;

/// How long a graceful stop waits for the connections still open.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; one more is closed as soon as accepted.
    pub max_connections: usize,
    /// The longest a connection may take to send a request head (and the
    /// longest it may sit idle between requests).
    pub header_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Who is at the other end of a connection, for the per-peer limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A process on the unix socket, by uid.
    Uid(u32),
    /// A TCP client, by address.
    Address(std::net::IpAddr),
    /// Not known.
    Unknown,
}

/// A listener the API can be served on.
pub trait Listener: Send + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (io, _) = tokio::net::UnixListener::accept(self).await?;
        let peer = io
            .peer_cred()
            .map_or(Peer::Unknown, |cred| Peer::Uid(cred.uid()));
        Ok((io, peer))
    }
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (io, address) = tokio::net::TcpListener::accept(self).await?;
        Ok((io, Peer::Address(address.ip())))
    }
}

/// Connections open per peer.
#[derive(Debug, Default)]
struct PeerCounts(Mutex<HashMap<Peer, usize>>);

impl PeerCounts {
    /// Counts one more connection of `peer` unless it has `max` already.
    fn try_add(&self, peer: &Peer, max: usize) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(peer.clone()).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self, peer: &Peer) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(peer);
            }
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then waits for the requests in flight.
pub async fn serve<L: Listener>(
    listener: L,
    router: Router,
    limits: ListenerLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_peer = (limits.max_connections / 4).max(1);
    let peers = Arc::new(PeerCounts::default());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of fds, or a connection reset before accept: go on.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if !peers.try_add(&peer, per_peer) {
            tracing::warn!(
                ?peer,
                max = per_peer,
                "connection refused: too many from one peer"
            );
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            peers.remove(&peer);
            tracing::warn!(
                max = limits.max_connections,
                "connection refused: too many connections"
            );
            continue;
        };
        // Handlers learn who is calling from the peer.
        // One small wrapper, not `Router::layer` (which rebuilds every route
        // for every connection, in the accept loop).
        let service = TowerToHyperService::new(tower::Layer::layer(
            &axum::Extension(peer.clone()),
            router.clone(),
        ));
        let watcher = graceful.watcher();
        let peers = Arc::clone(&peers);
        let tls = tls.clone();
        tokio::spawn(async move {
            // The TLS handshake, in this connection's task and within the
            // header-read timeout (a stalled one costs this slot only).
            let io = match tls {
                None => Some(MaybeTls::Plain(io)),
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(stream)) => Some(MaybeTls::Tls(Box::new(stream))),
                        Ok(Err(err)) => {
                            tracing::debug!(error = %err, "tls handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!("tls handshake timed out");
                            None
                        }
                    }
                }
            };
            if let Some(io) = io {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(TokioIo::new(io), service);
                if let Err(err) = watcher.watch(connection).await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
            peers.remove(&peer);
            drop(slot);
        });
    }
    // Requests in flight finish; a client that never reads its response
    // does not hold the stop up for long.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_take_every_slot() {
        let counts = PeerCounts::default();
        let (a, b) = (Peer::Uid(1000), Peer::Uid(1001));
        assert!((0..3).all(|_| counts.try_add(&a, 3)));
        assert!(!counts.try_add(&a, 3), "a fourth from the same peer");
        assert!(counts.try_add(&b, 3), "another peer still gets in");
        counts.remove(&a);
        assert!(counts.try_add(&a, 3), "a slot freed by a closed connection");
    }
}
