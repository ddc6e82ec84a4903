//! Where the agent may connect for a dataset. A caller names S3 endpoints
//! and NFS servers, and the agent connects to them as root from the node's
//! network: never, then, to a link-local address (169.254.0.0/16,
//! fe80::/10), where the cloud metadata services live and hand out the
//! node's own credentials, unless the operator allows that endpoint by name
//! (`--allow-endpoint HOST`). The check runs before any connection is made.

use std::net::IpAddr;

/// The endpoints the operator allowed despite the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names or addresses, as written in specs (`--allow-endpoint`).
    pub allowed_hosts: Vec<String>,
}

/// A refused endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The endpoint resolves to a link-local address.
    #[error(
        "endpoint {host} resolves to the link-local address {addr}, where cloud metadata \
         services live: refused (start the agent with --allow-endpoint {host} to allow it)"
    )]
    LinkLocal {
        /// The host as the spec names it.
        host: String,
        /// The link-local address it resolved to.
        addr: IpAddr,
    },
}

impl EgressPolicy {
    /// Whether the agent may connect to `host`, which resolved to `addrs`.
    pub fn check(&self, host: &str, addrs: &[IpAddr]) -> Result<(), EgressError> {
        if self.allowed_hosts.iter().any(|allowed| allowed == host) {
            return Ok(());
        }
        match addrs.iter().find(|addr| is_link_local(**addr)) {
            Some(addr) => Err(EgressError::LinkLocal {
                host: host.to_string(),
                addr: *addr,
            }),
            None => Ok(()),
        }
    }
}

/// 169.254.0.0/16, fe80::/10, and those as IPv4-mapped IPv6.
fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_link_local(),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}

/// The host and port of an `http(s)://HOST[:PORT][/...]` endpoint (the port
/// the scheme implies when none is given); None for anything else.
pub fn endpoint_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (rest, default_port) = if let Some(rest) = endpoint.strip_prefix("http://") {
        (rest, 80)
    } else {
        (endpoint.strip_prefix("https://")?, 443)
    };
    let authority = rest.split('/').next()?;
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(default_port), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_are_refused_unless_allowed_by_name() {
        let policy = EgressPolicy::default();
        for addr in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            assert!(
                matches!(
                    policy.check("meta", &[addr]),
                    Err(EgressError::LinkLocal { .. })
                ),
                "{addr}"
            );
        }
        for addr in ["10.0.0.9", "127.0.0.1", "::1", "2001:db8::1", "169.255.0.1"] {
            assert_eq!(
                policy.check("s3", &[addr.parse().unwrap()]),
                Ok(()),
                "{addr}"
            );
        }
        let allowing = EgressPolicy {
            allowed_hosts: vec!["169.254.169.254".to_string()],
        };
        assert_eq!(
            allowing.check("169.254.169.254", &["169.254.169.254".parse().unwrap()]),
            Ok(())
        );
    }

    #[test]
    fn endpoints_give_their_host_and_port() {
        let cases = [
            ("http://10.0.0.9:3900", Some(("10.0.0.9", 3900))),
            ("https://s3.example.com", Some(("s3.example.com", 443))),
            ("http://minio/path", Some(("minio", 80))),
            ("http://[fe80::1]:9000", Some(("fe80::1", 9000))),
            ("http://[::1]", Some(("::1", 80))),
            ("file:///srv/buckets", None),
            ("http://host:notaport", None),
        ];
        for (endpoint, want) in cases {
            let got = endpoint_host_port(endpoint);
            assert_eq!(
                got.as_ref().map(|(h, p)| (h.as_str(), *p)),
                want,
                "{endpoint}"
            );
        }
    }
}
