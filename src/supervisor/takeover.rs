//! Upgrades: a new supervisor started while an old one runs with the same
//! state directory asks the old one, over `<state-dir>/takeover.sock`, for
//! the node. The old one answers only a build that reads its table format
//! ([`crate::s3fs::fs::SNAPSHOT_FORMAT`]); otherwise it refuses, says why,
//! and keeps serving, and the new one exits with that reason.

use std::time::Duration;

use crate::config::Config;
use crate::supervisor::channel::{Channel, Message, StartReport};
use crate::supervisor::handover::Handover;
use crate::supervisor::{SupervisorError, io_error};

/// How long the old supervisor waits for a connected peer's request.
const REQUEST_WAIT: Duration = Duration::from_secs(2);

/// The new supervisor's side: the node from the running agent, if one
/// answers at the takeover socket; `None` when none runs.
pub fn request(config: &Config) -> Result<Option<(Handover, StartReport)>, SupervisorError> {
    let path = &config.supervision.takeover_socket;
    let channel = match Channel::connect(path) {
        Ok(channel) => channel,
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Ok(None);
        }
        Err(source) => {
            return Err(SupervisorError::Io {
                what: "reach the running agent's takeover socket",
                source,
            });
        }
    };
    tracing::info!(socket = %path.display(), "an agent runs with this state directory: asking it for the node");
    channel
        .send(
            &Message::TakeoverRequest {
                format: config.supervision.handover_format,
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            &[],
        )
        .map_err(io_error("ask the running agent for the node"))?;
    match Handover::receive(&channel) {
        Ok(taken) => Ok(Some(taken)),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(SupervisorError::Refused(err.to_string()))
        }
        Err(source) => Err(SupervisorError::Io {
            what: "take the node over",
            source,
        }),
    }
}

/// The old supervisor's side: whether `peer` asks for the node with a
/// format this build can hand over (if not, it is told why).
pub async fn answer(config: &Config, peer: &Channel) -> bool {
    let Ok(ready) = peer.readiness() else {
        return false;
    };
    let request = tokio::time::timeout(REQUEST_WAIT, peer.recv_async(&ready)).await;
    let Ok(Ok(Some((Message::TakeoverRequest { format, version }, _)))) = request else {
        tracing::warn!("a takeover connection sent no request; ignored");
        return false;
    };
    let ours = config.supervision.handover_format;
    if format != ours {
        let reason = format!(
            "this agent (version {}) keeps its tables in format {ours}, and the new build (version {version}) reads format {format}; the running agent keeps serving. Stop it first (its datasets are then mounted again by the new one)",
            env!("CARGO_PKG_VERSION")
        );
        tracing::warn!(%reason, "takeover refused");
        let _ = peer.send(&Message::TakeoverRefused { reason }, &[]);
        return false;
    }
    tracing::info!(version, "a new agent takes the node over");
    true
}
