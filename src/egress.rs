//! Where the agent may connect for a dataset. A caller names S3 endpoints
//! and NFS servers, and the agent connects to them as root from the node's
//! network: never, then, to a link-local address (169.254.0.0/16,
//! fe80::/10), where the cloud metadata services live and hand out the
//! node's own credentials, unless the operator allows that endpoint by name
//! (`--allow-endpoint HOST`). With `--egress-allow` rules (host names or
//! CIDRs, each with an optional port) the agent connects only where one
//! matches. The check runs before any connection is made.

use std::net::IpAddr;

/// Where the agent may connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names or addresses allowed despite the link-local rule, as
    /// written in specs (`--allow-endpoint`).
    pub allowed_hosts: Vec<String>,
    /// When not empty, the only places the agent connects to
    /// (`--egress-allow`).
    pub only: Vec<EgressRule>,
}

/// One `--egress-allow` rule: `HOST[:PORT]`, `CIDR[:PORT]`, or for IPv6
/// `[CIDR]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    target: Target,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Host(String),
    Net(IpAddr, u8),
}

impl std::str::FromStr for EgressRule {
    type Err = String;
    fn from_str(text: &str) -> Result<EgressRule, String> {
        let bad = |why: &str| format!("egress rule {text:?}: {why}");
        let (target, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("text after ]")),
            };
            (inside, port)
        } else if let Some((net, rest)) = text.split_once('/') {
            match rest.split_once(':') {
                Some((len, port)) => (&text[..net.len() + 1 + len.len()], Some(port)),
                None => (text, None),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (text, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))
            })
            .transpose()?;
        let target = match target.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad("not an address before /"))?;
                let len: u8 = len
                    .parse()
                    .map_err(|_| bad("the prefix length is not a number"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(bad("the prefix length is too long"));
                }
                Target::Net(addr, len)
            }
            None if target.is_empty() => return Err(bad("no host")),
            None => match target.parse::<IpAddr>() {
                Ok(addr) => Target::Net(addr, if addr.is_ipv4() { 32 } else { 128 }),
                Err(_) => Target::Host(target.to_string()),
            },
        };
        Ok(EgressRule { target, port })
    }
}

impl EgressRule {
    fn allows(&self, host: &str, port: u16, addrs: &[IpAddr]) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.target {
            Target::Host(name) => name.eq_ignore_ascii_case(host),
            Target::Net(net, len) => {
                !addrs.is_empty() && addrs.iter().all(|addr| contains(*net, *len, *addr))
            }
        }
    }
}

/// Whether `addr` is in `net/len` (IPv4-mapped IPv6 counts as IPv4).
fn contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match (net, addr) {
        (IpAddr::V4(net), IpAddr::V4(addr)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(net) & mask == u32::from(addr) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(addr)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(net) & mask == u128::from(addr) & mask
        }
        _ => false,
    }
}

/// A refused endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// No `--egress-allow` rule matches.
    #[error("endpoint {host} port {port} matches no --egress-allow rule of this agent: refused")]
    NotAllowed {
        /// The host as the spec names it.
        host: String,
        /// The port.
        port: u16,
    },
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
    /// Whether the agent may connect to `host` on `port`, which resolved
    /// to `addrs` (empty: it did not resolve; only a rule by name allows it
    /// then).
    pub fn check(&self, host: &str, port: u16, addrs: &[IpAddr]) -> Result<(), EgressError> {
        if self.allowed_hosts.iter().any(|allowed| allowed == host) {
            return Ok(());
        }
        if !self.only.is_empty() {
            // A matching rule is the operator's word, link-local included.
            return if self.only.iter().any(|rule| rule.allows(host, port, addrs)) {
                Ok(())
            } else {
                Err(EgressError::NotAllowed {
                    host: host.to_string(),
                    port,
                })
            };
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
                    policy.check("meta", 80, &[addr]),
                    Err(EgressError::LinkLocal { .. })
                ),
                "{addr}"
            );
        }
        for addr in ["10.0.0.9", "127.0.0.1", "::1", "2001:db8::1", "169.255.0.1"] {
            assert_eq!(
                policy.check("s3", 80, &[addr.parse().unwrap()]),
                Ok(()),
                "{addr}"
            );
        }
        let allowing = EgressPolicy {
            allowed_hosts: vec!["169.254.169.254".to_string()],
            only: Vec::new(),
        };
        assert_eq!(
            allowing.check("169.254.169.254", 80, &["169.254.169.254".parse().unwrap()]),
            Ok(())
        );
    }

    fn only(rules: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allowed_hosts: Vec::new(),
            only: rules.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn egress_rules_allow_exactly_their_hosts_networks_and_ports() {
        let policy = only(&[
            "10.0.0.0/8:3900",
            "s3.example.com",
            "[fd00::/8]:443",
            "192.168.1.7",
        ]);
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        assert_eq!(policy.check("garage", 3900, &[ip("10.1.2.3")]), Ok(()));
        assert!(
            policy.check("garage", 80, &[ip("10.1.2.3")]).is_err(),
            "another port"
        );
        assert!(
            policy
                .check("garage", 3900, &[ip("10.1.2.3"), ip("11.0.0.1")])
                .is_err(),
            "every address must be inside"
        );
        assert!(
            policy.check("garage", 3900, &[]).is_err(),
            "unresolved: only by name"
        );
        assert_eq!(
            policy.check("S3.example.com", 443, &[]),
            Ok(()),
            "any port, by name"
        );
        assert_eq!(policy.check("v6", 443, &[ip("fd12::1")]), Ok(()));
        assert_eq!(policy.check("one", 2049, &[ip("192.168.1.7")]), Ok(()));
        assert!(policy.check("two", 2049, &[ip("192.168.1.8")]).is_err());
        assert_eq!(
            policy.check("mapped", 3900, &[ip("::ffff:10.0.0.1")]),
            Ok(())
        );
        assert!(matches!(
            policy.check("meta", 80, &[ip("169.254.169.254")]),
            Err(EgressError::NotAllowed { .. })
        ));
        let metadata = only(&["169.254.169.254/32"]);
        assert_eq!(
            metadata.check("meta", 80, &[ip("169.254.169.254")]),
            Ok(()),
            "the operator's word"
        );
        for bad in ["10.0.0.0/33", "x/8", "host:port", "[fd00::", ""] {
            assert!(bad.parse::<EgressRule>().is_err(), "{bad}");
        }
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
