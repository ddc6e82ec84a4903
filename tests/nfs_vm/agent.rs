//! The agent inside the guest, seen from the host as a sidecar sees it: its
//! HTTP API over qemu's forwarded port with a bearer token; plus building the
//! static binary that goes into the guest's initramfs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http_tcp;

/// The bearer token the test writes into the guest (`/etc/hotmount/token`).
pub const TOKEN: &str = "nfs-tier-token-0123456789abcdef";

/// One API reply.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON for everything but /metrics).
    pub body: String,
    /// How long the call took, as the caller saw it.
    pub took: Duration,
}

impl Reply {
    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }

    /// `error.code` of an error reply.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// The agent's API at a forwarded host address.
#[derive(Clone, Copy)]
pub struct AgentApi {
    addr: SocketAddr,
}

impl AgentApi {
    /// The API reached through `addr` (qemu's hostfwd to guest tcp/7470).
    pub fn new(addr: SocketAddr) -> AgentApi {
        AgentApi { addr }
    }

    /// One call with the bearer token; `Err` on a transport failure.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<Reply> {
        let auth = format!("Bearer {TOKEN}");
        let started = Instant::now();
        let (status, body) = http_tcp(
            self.addr,
            method,
            path,
            &[("Authorization", auth.as_str())],
            body,
            timeout,
        )?;
        Ok(Reply {
            status,
            body,
            took: started.elapsed(),
        })
    }

    /// One call, panicking on a transport failure.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.try_call(method, path, body, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{method} {path} via {}: {e}", self.addr))
    }

    /// `GET /v1/mounts/{name}` as JSON, or None on 404.
    pub fn mount(&self, name: &str) -> Option<Value> {
        let reply = self.call("GET", &format!("/v1/mounts/{name}"), None);
        match reply.status {
            200 => Some(reply.json()),
            404 => None,
            other => panic!("GET /v1/mounts/{name}: {other} {}", reply.body),
        }
    }

    /// The `state` of a dataset (panics if it does not exist).
    pub fn state(&self, name: &str) -> String {
        let mount = self
            .mount(name)
            .unwrap_or_else(|| panic!("dataset {name} does not exist"));
        mount["state"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until `/readyz` answers 200 (connection errors while the agent
    /// starts are retried).
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match self.try_call("GET", "/readyz", None, Duration::from_secs(10)) {
                Ok(reply) if reply.status == 200 => return Ok(started.elapsed()),
                Ok(reply) => last = format!("{} {}", reply.status, reply.body),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("agent not ready within {timeout:?}; last: {last}"))
    }

    /// Polls until `name` is in `state`, asserting on the way that every
    /// `GET /v1/mounts` answers within `list_bound`; returns the time it took
    /// and the slowest list call.
    pub fn wait_state(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
        list_bound: Duration,
    ) -> Result<(Duration, Duration), String> {
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut last = String::new();
        while started.elapsed() < timeout {
            let list = self.call("GET", "/v1/mounts", None);
            assert_eq!(list.status, 200, "GET /v1/mounts: {}", list.body);
            slowest = slowest.max(list.took);
            assert!(
                list.took <= list_bound,
                "GET /v1/mounts took {:?} (bound {list_bound:?}) while waiting for {name} \
                 to be {state}",
                list.took
            );
            let items = list.json()["items"].clone();
            let found = items
                .as_array()
                .and_then(|items| items.iter().find(|m| m["name"] == name).cloned());
            if let Some(mount) = found {
                if mount["state"] == state {
                    return Ok((started.elapsed(), slowest));
                }
                last = mount.to_string();
            } else {
                last = format!("{name} not listed");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "{name} not {state} within {timeout:?}; last: {last}"
        ))
    }
}
