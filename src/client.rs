//! A small HTTP/1.1 client for the control API, over the unix socket or TCP
//! (with a bearer token): what the CLI and sidecars' scripts use.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Where the agent listens.
#[derive(Clone)]
pub enum Endpoint {
    /// The unix socket.
    Unix(PathBuf),
    /// `host:port` over TCP, with a bearer token.
    Tcp {
        /// `host:port`.
        authority: String,
        /// The bearer token.
        token: String,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "http://{authority}"),
        }
    }
}

/// A failed call (not an error status: those come back as responses).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("connect to the agent at {endpoint:?}: {source} (is `hotmount serve` running?)")]
    Connect {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talk to the agent at {endpoint:?}: {reason}")]
    Http {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        reason: String,
    },
}

/// One response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// Sends one request and reads the whole response.
pub async fn call(
    endpoint: &Endpoint,
    method: Method,
    path_and_query: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, ClientError> {
    let http = |reason: String| ClientError::Http {
        endpoint: endpoint.clone(),
        reason,
    };
    let connect = |source| ClientError::Connect {
        endpoint: endpoint.clone(),
        source,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "localhost");
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    if let Endpoint::Tcp { token, .. } = endpoint {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(e.to_string()))?;
    let (status, body) = match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect)?;
            exchange(stream, request).await
        }
        Endpoint::Tcp { authority, .. } => {
            let stream = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map_err(connect)?;
            exchange(stream, request).await
        }
    }
    .map_err(|e| http(e.to_string()))?;
    Ok(Reply { status, body })
}

/// One request on a fresh HTTP/1.1 connection over `stream`: the status and
/// the whole body.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((status, body))
}
