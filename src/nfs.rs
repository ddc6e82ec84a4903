//! NFS specifics: the translation of an [`NfsSource`] into the arguments of one
//! kernel mount(2) call (pure, table-tested), resolving the server name under a
//! deadline, and recognising an existing mount of a spec in mountinfo (to adopt
//! it after an agent restart instead of stacking a second mount).
//!
//! The kernel's text mount API (mount(2) with a data string, what `mount.nfs`
//! itself uses) does no name resolution and no rpcbind negotiation of its own
//! beyond what the options allow, so everything the kernel needs is spelled out
//! here: the server's IP address in `addr=`, the protocol, and for NFSv3 where
//! to find mountd.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::spec::{NfsSource, NfsVersion};
use crate::sys::{MountEntry, MountFlags, MountRequest};

/// The version mounted when the spec names none: 4.1 has sessions (exactly-once
/// semantics, no callback port the server must reach back to, which matters
/// behind NAT and in pods) and every current server speaks it.
pub const DEFAULT_VERSION: NfsVersion = NfsVersion::V4_1;

/// The port NFS servers listen on, and the one the kernel uses for NFSv4 when
/// no `port=` is given.
pub const DEFAULT_PORT: u16 = 2049;

/// A failing NFS step; the message names the server.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// The resolver returned an error for the server name.
    #[error("resolve nfs server {server}: {source}")]
    Resolve {
        /// The server name as given in the spec.
        server: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The resolver answered, but with no address.
    #[error("resolve nfs server {server}: no address")]
    NoAddress {
        /// The server name as given in the spec.
        server: String,
    },
    /// The resolver did not answer within the deadline.
    #[error("resolve nfs server {server}: did not resolve within {}", humantime::format_duration(*.deadline))]
    ResolveTimeout {
        /// The server name as given in the spec.
        server: String,
        /// How long it was given.
        deadline: Duration,
    },
}

/// The version a spec asks for, with the default applied.
pub fn version(source: &NfsSource) -> NfsVersion {
    source.version.unwrap_or(DEFAULT_VERSION)
}

/// The filesystem type mount(2) gets for a version: `nfs` for v3, `nfs4` for
/// v4.x (the type mountinfo then shows, which [`matches`] relies on).
pub fn fstype(version: NfsVersion) -> &'static str {
    match version {
        NfsVersion::V3 => "nfs",
        NfsVersion::V4 | NfsVersion::V4_1 | NfsVersion::V4_2 => "nfs4",
    }
}

/// The `vers=` value the kernel takes and shows in mountinfo.
fn vers_option(version: NfsVersion) -> &'static str {
    match version {
        NfsVersion::V3 => "3",
        NfsVersion::V4 => "4.0",
        NfsVersion::V4_1 => "4.1",
        NfsVersion::V4_2 => "4.2",
    }
}

/// `host` as it appears before `:/export` in a mount source: IPv6 literals in
/// brackets (`[fd00::5]:/data`), so the colon before the path is unambiguous.
fn source_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

/// The mount source for a spec: `server:/export`, the server as given (a name
/// stays a name, so mountinfo shows what the operator asked for).
pub fn mount_source(source: &NfsSource) -> String {
    format!("{}:{}", source_host(&source.server), source.export)
}

/// The mount(2) call for `source`, whose server resolved to `addr`, at `target`.
///
/// `client_addr` is this node's address as the server sees it; NFSv4 uses it
/// for callbacks (`clientaddr=`). Every mount is `nosuid,nodev` (plus `ro` when
/// `read_only`); see the comments in the body for each data option.
pub fn mount_request(
    source: &NfsSource,
    addr: IpAddr,
    read_only: bool,
    target: &Path,
    client_addr: Option<IpAddr>,
) -> MountRequest {
    let version = version(source);
    // Always TCP, never UDP (UDP corrupts data under load with large rsize, and
    // NFSv4 requires a reliable transport). The kernel checks that proto=
    // matches the address family of addr=, hence tcp6 for IPv6 servers.
    let proto = if addr.is_ipv6() { "tcp6" } else { "tcp" };
    let mut options = vec![
        format!("vers={}", vers_option(version)),
        format!("proto={proto}"),
    ];
    if version == NfsVersion::V3 {
        // NFSv3 mounts go through the MOUNT protocol first. Over TCP like NFS
        // itself; the kernel asks the server's rpcbind for mountd's port unless
        // mountport= is set. A spec with an explicit port is a server without
        // rpcbind (the only way to reach v3 on a non-standard port), which then
        // serves MOUNT on that same port (nfs-ganesha does), so mountport=port.
        options.push(format!("mountproto={proto}"));
        if let Some(port) = source.port {
            options.push(format!("mountport={port}"));
        }
        // NLM locking needs rpc.statd on this node to receive reboot
        // notifications; a container has none, and without it the mount
        // fails. Locks stay local to this node (datasets are read, not locked).
        options.push("nolock".to_string());
    }
    // The kernel's text mount API takes only an IP address here: it does not
    // resolve names (mount.nfs resolves before calling mount(2), and so do we,
    // under a deadline: see resolve()).
    options.push(format!("addr={addr}"));
    if version != NfsVersion::V3
        && let Some(client) = client_addr
    {
        // NFSv4.0 callbacks (delegations) connect back to this address; 4.1+
        // use the session's back channel but the kernel still records it.
        // Without it the kernel guesses from the routing table, which is
        // wrong behind NAT.
        options.push(format!("clientaddr={client}"));
    }
    if let Some(port) = source.port {
        options.push(format!("port={port}"));
    }
    if let Some(n) = source.nconnect {
        // Several TCP connections to the server: throughput on fast links.
        options.push(format!("nconnect={n}"));
    }
    if let Some(rsize) = source.rsize {
        options.push(format!("rsize={rsize}"));
    }
    if let Some(wsize) = source.wsize {
        options.push(format!("wsize={wsize}"));
    }
    // hard is the kernel's default, written out so mountinfo and the recorded
    // request say what the mount does: with hard, I/O waits for a server that
    // comes back (no silent EIO in training jobs); soft gives up after retrans.
    options.push(
        if source.soft == Some(true) {
            "soft"
        } else {
            "hard"
        }
        .to_string(),
    );
    if let Some(seconds) = source.timeo_seconds {
        // timeo= counts deciseconds.
        options.push(format!("timeo={}", u64::from(seconds) * 10));
    }
    if let Some(retrans) = source.retrans {
        options.push(format!("retrans={retrans}"));
    }
    MountRequest {
        source: mount_source(source),
        target: target.to_path_buf(),
        fstype: fstype(version).to_string(),
        flags: MountFlags::dataset(read_only),
        data: options.join(","),
    }
}

/// Resolves the spec's server to one address within `deadline`. An IP literal
/// is returned as is, without asking the resolver.
pub async fn resolve(server: &str, deadline: Duration) -> Result<IpAddr, NfsError> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(ip);
    }
    let lookup = tokio::net::lookup_host((server, DEFAULT_PORT));
    resolve_with(server, deadline, async move {
        lookup.await.map(|addrs| addrs.map(|a| a.ip()).collect())
    })
    .await
}

/// [`resolve`] with the lookup given, so tests can supply a resolver that
/// hangs or fails.
async fn resolve_with(
    server: &str,
    deadline: Duration,
    lookup: impl Future<Output = std::io::Result<Vec<IpAddr>>>,
) -> Result<IpAddr, NfsError> {
    match tokio::time::timeout(deadline, lookup).await {
        Err(_) => Err(NfsError::ResolveTimeout {
            server: server.to_string(),
            deadline,
        }),
        Ok(Err(source)) => Err(NfsError::Resolve {
            server: server.to_string(),
            source,
        }),
        Ok(Ok(addrs)) => addrs.first().copied().ok_or_else(|| NfsError::NoAddress {
            server: server.to_string(),
        }),
    }
}

/// An export path without trailing slashes (`/` stays `/`), for comparing the
/// spec with what mountinfo shows.
fn normalize_export(export: &str) -> &str {
    let trimmed = export.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// Whether `entry` (a line of mountinfo) is a mount of `source`: same
/// filesystem type and version, same server (as the name given or the address
/// the kernel connected to) and export, and the same port. Used to adopt mounts
/// that survived an agent restart.
///
/// Options the kernel negotiates or that do not change what is mounted
/// (rsize, nconnect, timeo, ...) are not compared; read-only is a per-mount
/// flag the caller checks with [`MountEntry::is_read_only`].
pub fn matches(source: &NfsSource, entry: &MountEntry) -> bool {
    let version = version(source);
    if entry.fstype != fstype(version) {
        return false;
    }
    let vers_ok = match (version, entry.super_option("vers")) {
        (NfsVersion::V3, Some(v)) => v == "3",
        (NfsVersion::V4, Some(v)) => v == "4.0" || v == "4",
        (NfsVersion::V4_1, Some(v)) => v == "4.1",
        (NfsVersion::V4_2, Some(v)) => v == "4.2",
        (_, None) => false,
    };
    if !vers_ok {
        return false;
    }
    let Some((host, export)) = split_source(&entry.source) else {
        return false;
    };
    if normalize_export(export) != normalize_export(&source.export) {
        return false;
    }
    let by_name = host_eq(host, &source.server);
    let by_addr = entry.super_option("addr").is_some_and(|addr| {
        host_eq(host, addr) && host_eq(addr, &resolved_or(&source.server, addr))
    });
    if !(by_name || by_addr) {
        return false;
    }
    // v4 always reports its port; v3 reports the one rpcbind gave, so only an
    // explicit port in the spec is compared there.
    let port = entry
        .super_option("port")
        .and_then(|p| p.parse::<u16>().ok());
    match (source.port, version) {
        (Some(want), _) => port == Some(want),
        (None, NfsVersion::V3) => true,
        (None, _) => port.is_none_or(|p| p == DEFAULT_PORT),
    }
}

/// For the by-address comparison: a spec whose server is an IP literal must
/// name that very address; a host name may have resolved to any address, so
/// the kernel's `addr=` is taken as its resolution.
fn resolved_or(server: &str, addr: &str) -> String {
    match server.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => addr.to_string(),
    }
}

/// Splits a mount source `host:/export` (host possibly `[v6]`).
fn split_source(source: &str) -> Option<(&str, &str)> {
    if let Some(rest) = source.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let export = after.strip_prefix(':')?;
        return Some((host, export));
    }
    source.split_once(':')
}

/// Host equality: IP addresses by value (so `fd00::0:5` equals `fd00::5`),
/// names case-insensitively.
fn host_eq(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim_start_matches('[').trim_end_matches(']').to_string();
    let (a, b) = (strip(a), strip(b));
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(&b),
    }
}

/// A one-line description of a request (`nfs4 h:/x on /m ro nosuid nodev (...)`), for logs.
pub fn describe(request: &MountRequest) -> String {
    let mut out = format!(
        "{} {} on {}",
        request.fstype,
        request.source,
        request.target.display()
    );
    let flags = request.flags;
    for (set, name) in [
        (flags.read_only, "ro"),
        (flags.nosuid, "nosuid"),
        (flags.nodev, "nodev"),
        (flags.noexec, "noexec"),
    ] {
        if set {
            let _ = write!(out, " {name}");
        }
    }
    let _ = write!(out, " ({})", request.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::PathBuf;

    fn src(server: &str, export: &str) -> NfsSource {
        NfsSource::new(server, export)
    }

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15));

    #[test]
    fn mount_requests_by_spec() {
        let v6: IpAddr = "fd00::5".parse().unwrap();
        type Case = (
            &'static str,
            NfsSource,
            IpAddr,
            Option<IpAddr>,
            &'static str,
            &'static str,
            &'static str,
        );
        let with = |f: fn(&mut NfsSource)| {
            let mut s = src("nas.example", "/exports/x");
            f(&mut s);
            s
        };
        let cases: Vec<Case> = vec![
            (
                "defaults: v4.1, hard, clientaddr",
                src("10.0.0.5", "/data"),
                V4,
                Some(CLIENT),
                "nfs4",
                "10.0.0.5:/data",
                "vers=4.1,proto=tcp,addr=10.0.0.5,clientaddr=10.0.2.15,hard",
            ),
            (
                "no client address",
                src("10.0.0.5", "/data"),
                V4,
                None,
                "nfs4",
                "10.0.0.5:/data",
                "vers=4.1,proto=tcp,addr=10.0.0.5,hard",
            ),
            (
                "a name keeps its name in the source, addr is the resolution",
                src("nas.example", "/exports/x"),
                V4,
                None,
                "nfs4",
                "nas.example:/exports/x",
                "vers=4.1,proto=tcp,addr=10.0.0.5,hard",
            ),
            (
                "v3 without port: rpcbind finds mountd; nolock; no clientaddr",
                with(|s| s.version = Some(NfsVersion::V3)),
                V4,
                Some(CLIENT),
                "nfs",
                "nas.example:/exports/x",
                "vers=3,proto=tcp,mountproto=tcp,nolock,addr=10.0.0.5,hard",
            ),
            (
                "v3 with port: mountd on the same port",
                with(|s| {
                    s.version = Some(NfsVersion::V3);
                    s.port = Some(20490);
                }),
                V4,
                None,
                "nfs",
                "nas.example:/exports/x",
                "vers=3,proto=tcp,mountproto=tcp,mountport=20490,nolock,addr=10.0.0.5,port=20490,hard",
            ),
            (
                "v4.0",
                with(|s| s.version = Some(NfsVersion::V4)),
                V4,
                Some(CLIENT),
                "nfs4",
                "nas.example:/exports/x",
                "vers=4.0,proto=tcp,addr=10.0.0.5,clientaddr=10.0.2.15,hard",
            ),
            (
                "v4.2",
                with(|s| s.version = Some(NfsVersion::V4_2)),
                V4,
                None,
                "nfs4",
                "nas.example:/exports/x",
                "vers=4.2,proto=tcp,addr=10.0.0.5,hard",
            ),
            (
                "every option",
                with(|s| {
                    s.version = Some(NfsVersion::V4_1);
                    s.nconnect = Some(4);
                    s.rsize = Some(1 << 20);
                    s.wsize = Some(65536);
                    s.soft = Some(true);
                    s.timeo_seconds = Some(60);
                    s.retrans = Some(3);
                    s.port = Some(20490);
                }),
                V4,
                Some(CLIENT),
                "nfs4",
                "nas.example:/exports/x",
                "vers=4.1,proto=tcp,addr=10.0.0.5,clientaddr=10.0.2.15,port=20490,nconnect=4,\
                 rsize=1048576,wsize=65536,soft,timeo=600,retrans=3",
            ),
            (
                "soft: false is hard; timeo in deciseconds",
                with(|s| {
                    s.soft = Some(false);
                    s.timeo_seconds = Some(1);
                }),
                V4,
                None,
                "nfs4",
                "nas.example:/exports/x",
                "vers=4.1,proto=tcp,addr=10.0.0.5,hard,timeo=10",
            ),
            (
                "IPv6 server: brackets in the source, tcp6, bare addr",
                src("fd00::5", "/data"),
                v6,
                Some("fd00::15".parse().unwrap()),
                "nfs4",
                "[fd00::5]:/data",
                "vers=4.1,proto=tcp6,addr=fd00::5,clientaddr=fd00::15,hard",
            ),
            (
                "IPv6 v3: mountproto tcp6 too",
                NfsSource {
                    version: Some(NfsVersion::V3),
                    ..src("nas.example", "/d")
                },
                v6,
                None,
                "nfs",
                "nas.example:/d",
                "vers=3,proto=tcp6,mountproto=tcp6,nolock,addr=fd00::5,hard",
            ),
        ];
        for (what, source, addr, client, fstype, mount_source, data) in cases {
            let target = PathBuf::from("/var/lib/hotmount/mnt/x");
            let req = mount_request(&source, addr, true, &target, client);
            assert_eq!(req.fstype, fstype, "{what}");
            assert_eq!(req.source, mount_source, "{what}");
            assert_eq!(req.data, data.replace(' ', ""), "{what}");
            assert_eq!(req.target, target, "{what}");
            assert_eq!(req.flags, MountFlags::dataset(true), "{what}");
        }
    }

    #[test]
    fn flags_are_always_nosuid_nodev_and_ro_only_when_asked() {
        for read_only in [true, false] {
            let req = mount_request(&src("h", "/x"), V4, read_only, Path::new("/m"), None);
            assert!(req.flags.nosuid && req.flags.nodev && !req.flags.noexec);
            assert_eq!(req.flags.read_only, read_only);
        }
        let shown = describe(&mount_request(
            &src("h", "/x"),
            V4,
            true,
            Path::new("/m"),
            None,
        ));
        assert_eq!(
            shown,
            "nfs4 h:/x on /m ro nosuid nodev (vers=4.1,proto=tcp,addr=10.0.0.5,hard)"
        );
    }

    #[test]
    fn export_with_spaces_is_kept_verbatim() {
        // Validation forbids ',' in exports; other characters pass through.
        let req = mount_request(&src("h", "/a b"), V4, true, Path::new("/m"), None);
        assert_eq!(req.source, "h:/a b");
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves() {
        let cases = [
            ("10.0.2.2", IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2))),
            ("::1", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ("fd00::5", "fd00::5".parse().unwrap()),
        ];
        for (server, want) in cases {
            // A zero deadline proves no lookup happens.
            assert_eq!(
                resolve(server, Duration::ZERO).await.unwrap(),
                want,
                "{server}"
            );
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let ip = resolve("localhost", Duration::from_secs(5)).await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }

    #[tokio::test]
    async fn resolve_errors_name_the_server() {
        let hang = resolve_with("nas", Duration::from_millis(50), std::future::pending());
        let err = hang.await.unwrap_err();
        assert!(matches!(err, NfsError::ResolveTimeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "resolve nfs server nas: did not resolve within 50ms"
        );
        let failing = async { Err(std::io::Error::other("name or service not known")) };
        let err = resolve_with("nas", Duration::from_secs(5), failing)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "resolve nfs server nas: name or service not known"
        );
        let empty = async { Ok(Vec::new()) };
        let err = resolve_with("nas", Duration::from_secs(5), empty)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "resolve nfs server nas: no address");
        let first = async { Ok(vec![V4, CLIENT]) };
        assert_eq!(
            resolve_with("nas", Duration::from_secs(5), first)
                .await
                .unwrap(),
            V4
        );
        // `.invalid` never resolves (RFC 6761): a real lookup fails, bounded.
        let err = resolve("no-such-host.invalid", Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("resolve nfs server no-such-host.invalid: "),
            "{err}"
        );
    }

    fn entry(fstype: &str, source: &str, super_options: &str) -> MountEntry {
        MountEntry {
            mount_id: 37,
            parent_id: 26,
            major_minor: (0, 25),
            root: "/".into(),
            mount_point: "/var/lib/hotmount/mnt/data".into(),
            mount_options: vec!["rw".into(), "nosuid".into(), "nodev".into()],
            optional_fields: vec!["shared:2".into()],
            fstype: fstype.into(),
            source: source.into(),
            super_options: super_options.split(',').map(str::to_string).collect(),
        }
    }

    /// Super options as the 6.1 kernel showed them for a v4.1 mount of
    /// nfs-ganesha in the nfs tier's guest.
    const SEEN_V41: &str = "rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,\
                            port=20490,timeo=600,retrans=2,sec=sys,clientaddr=10.0.2.15,\
                            local_lock=none,addr=10.0.2.2";

    #[test]
    fn matching_mountinfo_entries() {
        let ganesha = NfsSource {
            port: Some(20490),
            ..src("10.0.2.2", "/data")
        };
        let named = NfsSource {
            port: Some(20490),
            ..src("NAS.example", "/data")
        };
        let v3 = NfsSource {
            version: Some(NfsVersion::V3),
            ..src("nas", "/exports/x")
        };
        let v40 = NfsSource {
            version: Some(NfsVersion::V4),
            ..src("nas", "/x")
        };
        let v42 = NfsSource {
            version: Some(NfsVersion::V4_2),
            ..src("nas", "/x")
        };
        let six = src("fd00::5", "/x");
        let other_ip = src("10.0.2.9", "/data");
        let plain = src("nas", "/x");
        let cases: Vec<(&str, &NfsSource, MountEntry, bool)> = vec![
            (
                "as seen in the guest",
                &ganesha,
                entry("nfs4", "10.0.2.2:/data", SEEN_V41),
                true,
            ),
            (
                "trailing slash",
                &ganesha,
                entry("nfs4", "10.0.2.2:/data/", SEEN_V41),
                true,
            ),
            (
                "name shown as given",
                &named,
                entry("nfs4", "nas.example:/data", SEEN_V41),
                true,
            ),
            (
                "name shown as address",
                &named,
                entry("nfs4", "10.0.2.2:/data", SEEN_V41),
                true,
            ),
            (
                "other export",
                &ganesha,
                entry("nfs4", "10.0.2.2:/other", SEEN_V41),
                false,
            ),
            (
                "other server",
                &ganesha,
                entry("nfs4", "10.0.2.3:/data", SEEN_V41),
                false,
            ),
            (
                "address shown but spec names another address",
                &other_ip,
                entry("nfs4", "10.0.2.2:/data", "vers=4.1,addr=10.0.2.2"),
                false,
            ),
            (
                "other port",
                &ganesha,
                entry("nfs4", "10.0.2.2:/data", &SEEN_V41.replace("20490", "2049")),
                false,
            ),
            (
                "default port",
                &plain,
                entry("nfs4", "nas:/x", "vers=4.1,port=2049,addr=10.0.0.5"),
                true,
            ),
            (
                "default port, mounted elsewhere",
                &plain,
                entry("nfs4", "nas:/x", "vers=4.1,port=20490,addr=10.0.0.5"),
                false,
            ),
            (
                "other version",
                &ganesha,
                entry("nfs4", "10.0.2.2:/data", &SEEN_V41.replace("4.1", "4.2")),
                false,
            ),
            (
                "no version shown",
                &ganesha,
                entry("nfs4", "10.0.2.2:/data", "port=20490"),
                false,
            ),
            (
                "not nfs",
                &ganesha,
                entry("tmpfs", "10.0.2.2:/data", SEEN_V41),
                false,
            ),
            (
                "v4 spec, v3 type",
                &ganesha,
                entry("nfs", "10.0.2.2:/data", SEEN_V41),
                false,
            ),
            (
                "v3",
                &v3,
                entry(
                    "nfs",
                    "nas:/exports/x",
                    "vers=3,port=2049,mountport=635,addr=10.0.0.5",
                ),
                true,
            ),
            (
                "v3, rpcbind port",
                &v3,
                entry("nfs", "nas:/exports/x", "vers=3,port=40000,addr=10.0.0.5"),
                true,
            ),
            (
                "v3 spec, v4 mount",
                &v3,
                entry("nfs4", "nas:/exports/x", "vers=4.1,addr=10.0.0.5"),
                false,
            ),
            (
                "v4.0 as 4.0",
                &v40,
                entry("nfs4", "nas:/x", "vers=4.0,addr=10.0.0.5"),
                true,
            ),
            (
                "v4.0 as 4",
                &v40,
                entry("nfs4", "nas:/x", "vers=4,addr=10.0.0.5"),
                true,
            ),
            (
                "v4.0 spec, v4.1 mount",
                &v40,
                entry("nfs4", "nas:/x", "vers=4.1,addr=10.0.0.5"),
                false,
            ),
            (
                "v4.2",
                &v42,
                entry("nfs4", "nas:/x", "vers=4.2,addr=10.0.0.5"),
                true,
            ),
            (
                "IPv6 in brackets",
                &six,
                entry("nfs4", "[fd00::5]:/x", "vers=4.1,addr=fd00::5"),
                true,
            ),
            (
                "IPv6 long form",
                &six,
                entry("nfs4", "[fd00:0::5]:/x", "vers=4.1,addr=fd00::5"),
                true,
            ),
            (
                "IPv6 other export",
                &six,
                entry("nfs4", "[fd00::5]:/y", "vers=4.1,addr=fd00::5"),
                false,
            ),
            (
                "garbage source",
                &six,
                entry("nfs4", "fd00", "vers=4.1,addr=fd00::5"),
                false,
            ),
        ];
        for (what, source, entry, want) in cases {
            assert_eq!(matches(source, &entry), want, "{what}");
        }
    }

    #[test]
    fn a_request_matches_what_the_kernel_shows_for_it() {
        // Round trip: the source we mount with is recognised when shown back.
        for version in [
            NfsVersion::V3,
            NfsVersion::V4,
            NfsVersion::V4_1,
            NfsVersion::V4_2,
        ] {
            let source = NfsSource {
                version: Some(version),
                port: Some(20490),
                ..src("10.0.2.2", "/data")
            };
            let req = mount_request(
                &source,
                "10.0.2.2".parse().unwrap(),
                true,
                Path::new("/m"),
                Some(CLIENT),
            );
            let shown = format!(
                "{},port=20490,addr=10.0.2.2",
                req.data.split(',').next().unwrap()
            );
            assert!(
                matches(&source, &entry(&req.fstype, &req.source, &shown)),
                "{version:?}"
            );
        }
    }
}
