//! NFS: from a typed spec to kernel mount arguments (pure), server name
//! resolution with a deadline, and matching mountinfo entries for adoption.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::spec::{NfsSource, NfsVersion};
use crate::sys::{MountEntry, MountFlags, MountRequest};

/// A failing NFS step.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// The server name did not resolve.
    #[error("resolve nfs server {server}: {reason}")]
    Resolve {
        /// The name.
        server: String,
        /// The resolver's reason.
        reason: String,
    },
    /// The resolver did not answer in time.
    #[error("resolve nfs server {server}: no answer within {seconds}s")]
    ResolveTimeout {
        /// The name.
        server: String,
        /// The deadline.
        seconds: u64,
    },
}

/// Resolves `server` to an address (IP literals as they are) within `deadline`.
pub async fn resolve(server: &str, deadline: Duration) -> Result<IpAddr, NfsError> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(ip);
    }
    let lookup = tokio::net::lookup_host((server, 2049));
    match tokio::time::timeout(deadline, lookup).await {
        Err(_) => Err(NfsError::ResolveTimeout {
            server: server.to_string(),
            seconds: deadline.as_secs(),
        }),
        Ok(Err(e)) => Err(NfsError::Resolve {
            server: server.to_string(),
            reason: e.to_string(),
        }),
        Ok(Ok(mut addrs)) => addrs
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| NfsError::Resolve {
                server: server.to_string(),
                reason: "no addresses".to_string(),
            }),
    }
}

fn host_part(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// The mount(2) call for an NFS source.
pub fn mount_request(
    source: &NfsSource,
    addr: IpAddr,
    read_only: bool,
    target: &Path,
    client_addr: Option<IpAddr>,
) -> MountRequest {
    let version = source.version.unwrap_or(NfsVersion::V4_1);
    let mut options = Vec::new();
    let fstype = match version {
        NfsVersion::V3 => {
            options.extend(["vers=3", "proto=tcp", "mountproto=tcp", "nolock"].map(String::from));
            "nfs"
        }
        NfsVersion::V4 => {
            options.push("vers=4.0".to_string());
            "nfs4"
        }
        NfsVersion::V4_1 => {
            options.push("vers=4.1".to_string());
            "nfs4"
        }
        NfsVersion::V4_2 => {
            options.push("vers=4.2".to_string());
            "nfs4"
        }
    };
    options.push(format!("addr={addr}"));
    if let (Some(client), false) = (client_addr, version == NfsVersion::V3) {
        options.push(format!("clientaddr={client}"));
    }
    if source.soft == Some(true) {
        options.push("soft".to_string());
    } else {
        options.push("hard".to_string());
    }
    if let Some(t) = source.timeo_seconds {
        options.push(format!("timeo={}", t * 10));
    }
    if let Some(r) = source.retrans {
        options.push(format!("retrans={r}"));
    }
    if let Some(n) = source.nconnect {
        options.push(format!("nconnect={n}"));
    }
    if let Some(r) = source.rsize {
        options.push(format!("rsize={r}"));
    }
    if let Some(w) = source.wsize {
        options.push(format!("wsize={w}"));
    }
    if let Some(p) = source.port {
        options.push(format!("port={p}"));
    }
    MountRequest {
        source: format!("{}:{}", host_part(&source.server), source.export),
        target: target.to_path_buf(),
        fstype: fstype.to_string(),
        flags: MountFlags::dataset(read_only),
        data: options.join(","),
    }
}

/// Whether a mountinfo entry is the mount of `source` (for adoption).
pub fn matches(source: &NfsSource, entry: &MountEntry) -> bool {
    let version = source.version.unwrap_or(NfsVersion::V4_1);
    let fstype_ok = match version {
        NfsVersion::V3 => entry.fstype == "nfs",
        _ => entry.fstype == "nfs4",
    };
    let Some((host, export)) = entry.source.rsplit_once(":/") else {
        return false;
    };
    let export = format!("/{export}");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_ok = host == source.server || entry.super_option("addr") == Some(host);
    fstype_ok && host_ok && export.trim_end_matches('/') == source.export.trim_end_matches('/')
}
