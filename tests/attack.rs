//! Attack tier (issue 8): every attack on the agent that issue 8 names, as
//! a test against the real agent binary on the real kernel, as root, each
//! inside a private mount namespace of its own (the "node", see
//! `support::Node`) with a running "pod". While each attack runs,
//! `support::HealthProbe` asks `/healthz` over and over (on the socket,
//! and on TCP when the attack is on TCP): every test asserts that every
//! probe answered 200 in under 100 ms and that enough probes were made
//! during the attack for that to mean something, and then that nothing was
//! mounted (the kernel's mount table of the node namespace), read or sent
//! that the policy did not allow, and where an attack aims at memory, that
//! the agent's peak resident memory (`VmHWM` of its worker) grew by less
//! than a figure derived from its limits. Needs root, /dev/fuse and (one
//! test) Garage; fails, never skips, without them.
//!
//! Gathered here from the other tiers (and run on the real agent now where
//! they ran in-process): the credentials-outside, FIFO and link-local tests
//! of `api.rs`, the root-only-file and FIFO tests of `s3_garage.rs`, and the
//! slow-header, `file://` symlink, endless-listing and other-uid tests of
//! `mount_tier.rs`.
//!
//! | attack | before issue 8 | asserted now |
//! | --- | --- | --- |
//! | credentials file outside `--credentials-dir` (`/etc/shadow`, a root-only file of valid keys, `..`, symlinks out) | read, its keys signed requests sent to a listener of the caller's choice | 403 `CredentialsNotAllowed`, the file never opened (inotify), no connection, no secret in answers or log, the same answer whether the file exists or not |
//! | a FIFO as credentials | froze the agent's async threads: `/healthz` and reads of other datasets hung | 400 `InvalidCredentials` ("not a regular file") at once; `/healthz` and another dataset's reads stay fast |
//! | a device (`/dev/zero`, a device node or bind mount in the directory, a link to one) as credentials | memory grew by 1.5 GB/s | 403 or 400 at once; peak memory grows by less than 32 MiB |
//! | S3 endpoints and NFS servers at link-local addresses (169.254.169.254, a name resolving there, fe80::, IPv4-mapped, the address as one number) | not checked: the agent connected anywhere, the cloud metadata service included | 403 `EndpointNotAllowed` naming `--allow-endpoint`; no connection reaches a listener at 169.254.169.254 (a private network namespace) |
//! | a caller of another uid on the socket | anyone on the socket could mount anything and delete anyone's dataset | only what its policy rule allows; 403 `Forbidden` (naming the field) for the rest, audited; list shows only its own |
//! | a caller of another service account (and forged tokens) on TCP | no service-account identity; one trust level: any token could do anything | another account: 403 `Forbidden`; forged, expired, wrong audience/issuer/key, `alg: none`, HS256: 401 `Unauthorized`; nothing mounted but the allowed account's |
//! | a viewer token trying to PUT or DELETE | any token could mount | 403 `Forbidden` refused by `role`, even with a policy rule allowing the verbs; nothing mounted or removed |
//! | 300 TCP connections sending unfinished headers | never closed | all closed within the 1 s header timeout; `/healthz` fast on the socket and on TCP |
//! | symlinks in `file://` buckets (to `/etc/shadow`, `/etc`), a bucket that is a link, an endpoint through a link | an unprivileged pod user read `/etc/shadow` | nothing outside the allowed directory is served or listed |
//! | a symlink planted under the root as a dataset's directory | the mount (and a re-mount) went over the link's target | the PUT fails (409 `PathOccupied`), nothing is mounted on the target; a re-mount or a forced DELETE does not follow the link |
//! | a fake S3 server sending GET bodies past the range asked for | the body was collected whole: memory without bound | the read fails (EIO) at once; peak memory bounded by the prefetch budget |
//! | a fake S3 server sending one listing page that never ends | the page was collected whole (not named in the issue) | the PUT fails; peak memory grows by less than 64 MiB |
//! | a fake S3 server refusing (403) with an error body that never ends | the body was collected whole before it was cut to an excerpt (not named in the issue) | the PUT fails with a short excerpt; peak memory grows by less than 64 MiB |
//! | a fake S3 server whose listing never ends (continuation tokens forever) | followed forever | 502 naming the limit (`more than 5000 entries` with `--max-directory-entries 5000`), after at most 7 pages, memory bounded |
//! | a pod opening 300 writers (1 MiB writes) on a read-write dataset | 40 writers held 350 MB | bytes accepted stay within `--write-memory`, writers past it get ENOSPC (no other error, no hang), peak memory grows by less than the budget + 32 MiB; the budget comes back when they close, the worker is never replaced |

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    CountingEndpoint, Garage, HealthProbe, HostileS3, Hostility, Node, OpenWatch, PrivateNetwork,
    TokenClaims,
};

/// How long each attack goes on at least (the probes need time to count).
const ATTACK_TIME: Duration = Duration::from_secs(1);
/// Probes of each target that must have been made during an attack.
const MIN_PROBES: usize = 20;
/// How long a refused call may take: well under any deadline the agent has.
const REFUSED_AT_ONCE: Duration = Duration::from_secs(2);

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// PUTs dataset `name` with `spec` and asserts it is refused with 403
/// `code` within [`REFUSED_AT_ONCE`]; the answer.
fn refused_at_once(node: &Node, name: &str, spec: &Value, code: &str) -> Value {
    let asked = Instant::now();
    let (status, body) = node.call("PUT", &format!("/v1/mounts/{name}"), Some(spec));
    assert!(
        asked.elapsed() < REFUSED_AT_ONCE,
        "{name}: took {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 403, "{name}: {body}");
    assert_eq!(error_code(&body), code, "{name}: {body}");
    body
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {body}"))
}

/// A `file://` bucket `name` with a small tree.
fn make_bucket(node: &Node, name: &str) -> PathBuf {
    let dir = node.buckets().join(name);
    std::fs::create_dir_all(dir.join("train/cats")).unwrap();
    std::fs::write(dir.join("README.txt"), b"a dataset\n").unwrap();
    std::fs::write(dir.join("train/labels.csv"), b"file,label\n1.jpg,cat\n").unwrap();
    dir
}

/// The worker's peak resident memory, KiB.
fn peak_kib(node: &Node) -> u64 {
    support::peak_rss_kib(node.agent.worker_pid().expect("the agent runs"))
}

/// Whether the worker's peak memory grew by less than `bound_mib` since
/// `before` (KiB): the complaint if not; prints the figure.
fn memory_problem(node: &Node, attack: &str, before: u64, bound_mib: u64) -> Option<String> {
    let after = peak_kib(node);
    let grown = after.saturating_sub(before) / 1024;
    eprintln!(
        "figure: {attack}: peak RSS {} -> {} MiB (+{grown} MiB, bound {bound_mib} MiB)",
        before / 1024,
        after / 1024
    );
    (grown >= bound_mib).then(|| {
        format!(
            "{attack}: the agent's peak RSS grew by {grown} MiB ({} -> {} MiB), bound {bound_mib} MiB",
            before / 1024,
            after / 1024
        )
    })
}

/// Asserts that `/healthz` stayed fast (see `HealthReport::assert_healthy`)
/// and the worker's peak memory grew by less than `bound_mib` since
/// `before`, reporting both findings together.
fn assert_healthy_and_bounded(
    node: &Node,
    report: &support::HealthReport,
    attack: &str,
    before: u64,
    bound_mib: u64,
) {
    let mut problems = report.problems(attack, MIN_PROBES);
    problems.extend(memory_problem(node, attack, before, bound_mib));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Keys that must never be used or shown: those of a file outside the
/// credentials directory.
const OUTSIDE_KEYS: &str = "access_key_id=AKOUTSIDEKEY\nsecret_access_key=outside-secret-value\n";

#[test]
fn credentials_outside_the_credentials_dir_are_refused_unopened_and_sign_nothing() {
    support::require_fuse();
    let garage = Garage::start();
    garage.create_bucket("data");
    garage.put_object("data", "a.txt", b"secret data\n");
    let node = Node::start(&["--mount-timeout", "4s"]);
    let creds = node.credentials_dir().to_path_buf();
    let node_dir = creds.parent().unwrap().to_path_buf();
    // Valid keys in a root-only file outside the directory, and other keys beside.
    let outside = tempfile::tempdir().unwrap();
    let root_only = outside.path().join("root-only-keys");
    garage.write_credentials_file(&root_only);
    assert_eq!(std::fs::metadata(&root_only).unwrap().mode() & 0o777, 0o600);
    std::fs::write(outside.path().join("keys"), OUTSIDE_KEYS).unwrap();
    let sibling = node_dir.join("creds-other");
    std::fs::create_dir(&sibling).unwrap();
    std::fs::write(sibling.join("keys"), OUTSIDE_KEYS).unwrap();
    // Links out of the directory: absolute, and relative through `..`.
    std::os::unix::fs::symlink(&root_only, creds.join("escape")).unwrap();
    let relative = Path::new("..")
        .join(
            node_dir
                .components()
                .skip(1)
                .map(|_| "..")
                .collect::<PathBuf>(),
        )
        .join(root_only.strip_prefix("/").unwrap());
    std::os::unix::fs::symlink(&relative, creds.join("escape-relative")).unwrap();
    let recorder = CountingEndpoint::start();
    let secret = garage.secret_access_key().to_string();
    let shown = creds.display().to_string();
    let to_recorder = |credentials: Value| {
        let mut spec = garage.spec("data", credentials);
        spec["source"]["s3"]["endpoint"] = json!(recorder.url());
        spec
    };
    let up = node_dir
        .components()
        .skip(1)
        .map(|_| "..")
        .collect::<PathBuf>();
    let dotdot = format!(
        "{shown}/../{}/{}",
        up.display(),
        outside
            .path()
            .join("keys")
            .strip_prefix("/")
            .unwrap()
            .display()
    );
    // (name, spec, the path the caller named when it named one)
    let cases: Vec<(&str, Value, Option<String>)> = vec![
        (
            "shadow",
            to_recorder(json!({"file": "/etc/shadow"})),
            Some("/etc/shadow".into()),
        ),
        (
            "outside-garage",
            garage.spec("data", json!({"file": root_only})),
            Some(root_only.display().to_string()),
        ),
        (
            "outside-recorded",
            to_recorder(json!({"file": root_only})),
            Some(root_only.display().to_string()),
        ),
        (
            "existing",
            to_recorder(json!({"file": outside.path().join("keys")})),
            Some(outside.path().join("keys").display().to_string()),
        ),
        (
            "missing",
            to_recorder(json!({"file": outside.path().join("nope")})),
            Some(outside.path().join("nope").display().to_string()),
        ),
        (
            "dotdot",
            to_recorder(json!({"file": dotdot})),
            Some(dotdot.clone()),
        ),
        (
            "the-dir",
            to_recorder(json!({"file": creds})),
            Some(shown.clone()),
        ),
        (
            "sibling",
            to_recorder(json!({"file": sibling.join("keys")})),
            Some(sibling.join("keys").display().to_string()),
        ),
        (
            "symlink-recorded",
            to_recorder(json!({"secret": "escape"})),
            None,
        ),
        (
            "symlink-relative",
            to_recorder(json!({"secret": "escape-relative"})),
            None,
        ),
    ];
    // From here on, any open of these files is the agent's.
    let watches = [OpenWatch::start(outside.path()), OpenWatch::start(&sibling)];
    let probe = HealthProbe::start(node.agent.socket());
    let mut messages = std::collections::HashMap::new();
    let rounds = support::repeat_for(ATTACK_TIME, |_| {
        for (name, spec, path) in &cases {
            let body = refused_at_once(&node, name, spec, "CredentialsNotAllowed");
            let message = error_message(&body);
            match path {
                Some(path) => {
                    assert!(message.contains(path.as_str()), "{name}: {message}");
                    assert!(message.contains(&shown), "names the directory: {message}");
                    messages.insert(
                        *name,
                        message.replace(path.as_str(), "PATH").replace(name, "NAME"),
                    );
                }
                None => assert!(
                    message.contains(
                        spec["source"]["s3"]["credentials"]["secret"]
                            .as_str()
                            .unwrap()
                    ),
                    "{message}"
                ),
            }
            let text = body.to_string();
            for content in [secret.as_str(), "AKOUTSIDEKEY", "outside-secret", "root:"] {
                assert!(
                    !text.contains(content),
                    "{name}: file content in the answer: {text}"
                );
            }
            node.assert_nothing_left(name);
        }
    });
    let report = probe.finish();
    report.assert_healthy("credentials outside the directory", MIN_PROBES);
    assert_eq!(
        messages["existing"], messages["missing"],
        "the answer does not tell whether a file outside exists"
    );
    for watch in &watches {
        assert_eq!(
            watch.opened(),
            Vec::<String>::new(),
            "the agent opened a file outside the credentials directory"
        );
    }
    assert_eq!(
        recorder.connections(),
        0,
        "no request was sent, so none was signed with the outside keys"
    );
    assert!(
        !node.agent.log().contains(&secret),
        "the secret is in the agent log"
    );
    assert_eq!(node.mounted_datasets(), Vec::<String>::new());
    eprintln!(
        "figure: {} refused PUTs in {rounds} rounds",
        rounds * cases.len()
    );
}

/// A spec whose credentials are `credentials` against a closed port:
/// credentials that can be read get as far as 502 `BackendUnreachable`.
fn closed_endpoint_spec(credentials: Value) -> Value {
    json!({"source": {"s3": {"bucket": "data", "endpoint": "http://127.0.0.1:9",
        "pathStyle": true, "credentials": credentials}}})
}

/// Sends `specs` as PUTs of `prefix-N` all at once (more than the agent has
/// async threads); each answer with how long it took.
fn concurrent_puts(
    node: &Node,
    prefix: &str,
    specs: &[Value],
) -> Vec<(String, u16, Value, Duration)> {
    let threads: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let socket = node.agent.socket().to_path_buf();
            let name = format!("{prefix}-{i}");
            let body = spec.to_string();
            std::thread::spawn(move || {
                let asked = Instant::now();
                let answer = support::http_with_timeout(
                    &socket,
                    "PUT",
                    &format!("/v1/mounts/{name}"),
                    Some(&body),
                    Duration::from_secs(20),
                );
                (name, answer, asked.elapsed())
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| {
            let (name, answer, took) = thread.join().unwrap();
            let (status, body) = answer.unwrap_or_else(|e| panic!("PUT {name}: {e}"));
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            (name, status, body, took)
        })
        .collect()
}

#[test]
fn a_fifo_as_credentials_is_refused_at_once_and_freezes_nothing() {
    let node = Node::start(&["--mount-timeout", "4s"]);
    make_bucket(&node, "data");
    let (status, body) = node.call("PUT", "/v1/mounts/other", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    let fifo = node.credentials_dir().join("fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    // More PUTs at once than the agent has async worker threads, by name and
    // by path: a blocking open of a FIFO nobody writes would hold them all.
    let specs: Vec<Value> = (0..8)
        .map(|i| {
            closed_endpoint_spec(if i % 2 == 0 {
                json!({"secret": "fifo"})
            } else {
                json!({"file": fifo})
            })
        })
        .collect();
    let probe = HealthProbe::start(node.agent.socket());
    let mut slowest_read = Duration::ZERO;
    let rounds = support::repeat_for(ATTACK_TIME, |round| {
        // Another dataset reads meanwhile (it used to hang).
        let reader = {
            let started = Instant::now();
            let read = node
                .pod
                .spawn(|view| std::fs::read(view.join("other/README.txt")));
            (started, read)
        };
        for (name, status, body, took) in concurrent_puts(&node, &format!("fifo{round}"), &specs) {
            assert_eq!(status, 400, "{name}: {body}");
            assert_eq!(error_code(&body), "InvalidCredentials", "{name}: {body}");
            assert!(
                error_message(&body).ends_with("not a regular file"),
                "{name}: {body}"
            );
            assert!(
                took < REFUSED_AT_ONCE,
                "{name} answered {took:?} after the PUT, well under the 4 s deadline"
            );
            node.assert_nothing_left(&name);
        }
        let (started, read) = reader;
        assert_eq!(read.join().unwrap().unwrap(), b"a dataset\n");
        slowest_read = slowest_read.max(started.elapsed());
    });
    let report = probe.finish();
    report.assert_healthy("a FIFO as credentials", MIN_PROBES);
    eprintln!(
        "figure: {} FIFO PUTs in {rounds} rounds; slowest read of another dataset {slowest_read:?}",
        rounds * specs.len()
    );
    assert!(
        slowest_read < Duration::from_secs(1),
        "reads of another dataset took {slowest_read:?}"
    );
    let (status, body) = node.call("PUT", "/v1/mounts/after", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    assert_eq!(node.pod.read("after/README.txt").unwrap(), b"a dataset\n");
    assert_eq!(node.mounted_datasets(), ["after", "other"]);
}

#[test]
fn a_device_as_credentials_is_refused_at_once_and_memory_stays_flat() {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let node = Node::start(&["--mount-timeout", "4s"]);
    let creds = node.credentials_dir().to_path_buf();
    // Inside the directory: device nodes of /dev/zero and /dev/urandom, a
    // bind mount of /dev/zero over a file (in the node's namespace), and a
    // link to /dev/zero.
    mknod(
        &creds.join("zero"),
        SFlag::S_IFCHR,
        Mode::S_IRUSR,
        makedev(1, 5),
    )
    .unwrap();
    mknod(
        &creds.join("urandom"),
        SFlag::S_IFCHR,
        Mode::S_IRUSR,
        makedev(1, 9),
    )
    .unwrap();
    std::fs::write(creds.join("bound"), b"").unwrap();
    nix::mount::mount(
        Some("/dev/zero"),
        &creds.join("bound"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/zero", creds.join("link")).unwrap();
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"file": "/dev/zero"}), 403, "CredentialsNotAllowed"),
        (json!({"secret": "link"}), 403, "CredentialsNotAllowed"),
        (json!({"secret": "zero"}), 400, "InvalidCredentials"),
        (
            json!({"file": creds.join("zero")}),
            400,
            "InvalidCredentials",
        ),
        (json!({"secret": "urandom"}), 400, "InvalidCredentials"),
        (json!({"secret": "bound"}), 400, "InvalidCredentials"),
    ];
    let specs: Vec<Value> = cases
        .iter()
        .map(|(credentials, _, _)| closed_endpoint_spec(credentials.clone()))
        .collect();
    let before = peak_kib(&node);
    let probe = HealthProbe::start(node.agent.socket());
    let rounds = support::repeat_for(ATTACK_TIME, |round| {
        for (i, (name, status, body, took)) in
            concurrent_puts(&node, &format!("dev{round}"), &specs)
                .into_iter()
                .enumerate()
        {
            let (_, want_status, want_code) = &cases[i];
            assert_eq!(status, *want_status, "{name} ({}): {body}", cases[i].0);
            assert_eq!(error_code(&body), *want_code, "{name}: {body}");
            if *want_status == 400 {
                assert!(
                    error_message(&body).ends_with("not a regular file"),
                    "{name}: {body}"
                );
            }
            assert!(took < REFUSED_AT_ONCE, "{name} took {took:?}");
            node.assert_nothing_left(&name);
        }
    });
    let report = probe.finish();
    eprintln!(
        "figure: {} device-credential PUTs in {rounds} rounds",
        rounds * specs.len()
    );
    // Credentials are at most 64 KiB: a few PUTs at once hold next to nothing.
    assert_healthy_and_bounded(&node, &report, "a device as credentials", before, 32);
    assert_eq!(node.mounted_datasets(), Vec::<String>::new());
}

#[test]
fn link_local_endpoints_are_refused_before_any_connection() {
    // The metadata address on the loopback of a private network (the host's
    // is never touched), with listeners that count what reaches them.
    let metadata = "169.254.169.254";
    let _network = PrivateNetwork::enter(&["169.254.169.254/32"]);
    let listeners: Vec<CountingEndpoint> = [80u16, 111, 2049, 9000]
        .iter()
        .map(|port| CountingEndpoint::bind(format!("{metadata}:{port}").parse().unwrap()))
        .collect();
    // The listeners work: a connection from here is counted.
    std::net::TcpStream::connect(format!("{metadata}:80")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        listeners[0].connections(),
        1,
        "the metadata listener counts connections"
    );
    let node = Node::start(&[]);
    let agent_net =
        std::fs::read_link(format!("/proc/{}/ns/net", node.agent.worker_pid().unwrap())).unwrap();
    assert_eq!(
        agent_net,
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        "the agent is in the private network"
    );
    // A name resolving to the metadata address: /etc/hosts of the node
    // namespace only (a bind mount there).
    let hosts_dir = tempfile::tempdir().unwrap();
    let hosts = hosts_dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{metadata} metadata.attack.test\n"),
    )
    .unwrap();
    nix::mount::mount(
        Some(&hosts),
        "/etc/hosts",
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let s3 = |endpoint: &str| {
        json!({"source": {"s3": {"bucket": "creds", "endpoint": endpoint,
            "pathStyle": true, "credentials": "anonymous"}}})
    };
    let nfs = |server: &str| json!({"source": {"nfs": {"server": server, "export": "/x"}}});
    let cases = [
        ("meta-s3", s3("http://169.254.169.254")),
        ("meta-s3-port", s3("http://169.254.169.254:9000")),
        ("meta-nfs", nfs(metadata)),
        ("meta-v6", s3("http://[fe80::1]:9000")),
        ("meta-mapped", s3("http://[::ffff:169.254.169.254]:9000")),
        ("meta-name", s3("http://metadata.attack.test")),
        ("meta-name-nfs", nfs("metadata.attack.test")),
        ("meta-number", s3("http://2852039166")),
    ];
    let probe = HealthProbe::start(node.agent.socket());
    support::repeat_for(ATTACK_TIME, |_| {
        for (name, spec) in &cases {
            let body = refused_at_once(&node, name, spec, "EndpointNotAllowed");
            assert!(
                error_message(&body).contains("--allow-endpoint"),
                "the error says how to allow it: {body}"
            );
            node.assert_nothing_left(name);
        }
    });
    let report = probe.finish();
    report.assert_healthy("link-local endpoints", MIN_PROBES);
    for listener in &listeners {
        assert_eq!(
            listener.connections(),
            0,
            "the agent connected to {}",
            listener.url()
        );
    }
    assert_eq!(node.mounted_datasets(), Vec::<String>::new());
    assert!(
        !support::thread_mountinfo().contains(metadata),
        "an NFS mount of the metadata address:\n{}",
        support::thread_mountinfo()
    );
}

#[test]
fn a_caller_of_another_uid_may_do_only_what_the_policy_allows() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.toml");
    // The buckets' directory is known only once the node runs: write the
    // rule with a placeholder glob first, then the real one (read again
    // when it changes).
    std::fs::write(&policy, "").unwrap();
    let node = Node::start(&[
        "--socket-mode",
        "0666",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    std::fs::create_dir_all(node.buckets().join("data")).unwrap();
    std::fs::write(node.buckets().join("data/x.txt"), b"team a\n").unwrap();
    let socket_dir = node.agent.socket().parent().unwrap().to_path_buf();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let endpoint = format!("file://{}", node.buckets().display());
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\ncallers = [\"uid:1000\"]\nverbs = [\"get\", \"list\", \"put\", \"delete\"]\n\
             names = [\"team-a-*\"]\ns3 = [\"{endpoint}/data/*\"]\n"
        ),
    )
    .unwrap();
    support::mark_changed(&policy, Duration::from_secs(2));
    let socket = node.agent.socket().to_str().unwrap().to_string();
    let as_user = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
            .args(args)
            .args(["--socket", &socket])
            .uid(1000)
            .gid(1000)
            .output()
            .unwrap()
    };
    // Root (uid 0) may do everything: a dataset of its own.
    let (status, body) = node.call("PUT", "/v1/mounts/root-only", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");

    let probe = HealthProbe::start(node.agent.socket());
    let started = Instant::now();
    let mine = as_user(&[
        "attach",
        "team-a-x",
        "--s3",
        "s3://data",
        "--endpoint",
        &endpoint,
    ]);
    assert!(mine.status.success(), "{mine:?}");
    let (_, view) = node.call("GET", "/v1/mounts/team-a-x", None);
    assert_eq!(
        view["createdBy"], "uid:1000",
        "who asked is recorded: {view}"
    );
    let named_wrong = as_user(&[
        "attach",
        "other",
        "--s3",
        "s3://data",
        "--endpoint",
        &endpoint,
    ]);
    let text = String::from_utf8_lossy(&named_wrong.stderr);
    assert!(
        !named_wrong.status.success() && text.contains("names"),
        "{text}"
    );
    let listed = as_user(&["ls", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a-x"], "only what uid 1000 may get");
    let theirs = as_user(&["detach", "root-only"]);
    assert!(!theirs.status.success(), "{theirs:?}");
    let (status, _) = node.call("GET", "/v1/mounts/root-only", None);
    assert_eq!(status, 200, "refused, and nothing touched");
    assert_eq!(
        node.mounted_datasets(),
        ["root-only", "team-a-x"],
        "the kernel's mount table: nothing but what was allowed"
    );
    assert!(as_user(&["detach", "team-a-x"]).status.success());
    // Keep the probes going for the whole attack time.
    std::thread::sleep(ATTACK_TIME.saturating_sub(started.elapsed()));
    let report = probe.finish();
    report.assert_healthy("a caller of another uid", MIN_PROBES);
    let log = node.agent.log();
    assert!(
        log.contains("hotmount::audit") && log.contains("uid:1000") && log.contains("team-a-x"),
        "mutating calls are audited:\n{log}"
    );
    // And in the state directory's audit log, refusals included.
    let audit = std::fs::read_to_string(node.agent.options().state_dir.join("audit.log")).unwrap();
    let calls: Vec<Value> = audit
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &Value| event["caller"] == "uid:1000")
        .collect();
    let seen: Vec<(String, String, u64)> = calls
        .iter()
        .map(|event| {
            (
                event["op"].as_str().unwrap().to_string(),
                event["name"].as_str().unwrap().to_string(),
                event["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("api:put".to_string(), "team-a-x".to_string(), 201),
            ("api:put".to_string(), "other".to_string(), 403),
            ("api:delete".to_string(), "root-only".to_string(), 403),
            ("api:delete".to_string(), "team-a-x".to_string(), 200),
        ],
        "{audit}"
    );
    node.assert_nothing_left("team-a-x");
    node.assert_nothing_left("other");
    // A broken change keeps the last good policy (it does not open the
    // agent up), and /readyz says so.
    std::fs::write(
        &policy,
        "[[rule]]\ncallers = [\"uid:1000\"]\nverbs = [\"fly\"]\n",
    )
    .unwrap();
    support::mark_changed(&policy, Duration::from_secs(4));
    let (_, readiness) = node.call("GET", "/readyz", None);
    assert!(
        readiness
            .to_string()
            .contains("last good one stays in force"),
        "{readiness}"
    );
    let again = as_user(&[
        "attach",
        "team-a-y",
        "--s3",
        "s3://data",
        "--endpoint",
        &endpoint,
    ]);
    assert!(
        again.status.success(),
        "the last good policy still allows it: {again:?}"
    );
    let still_not = as_user(&["detach", "root-only"]);
    assert!(
        !still_not.status.success(),
        "and still refuses the rest: {still_not:?}"
    );
    assert_eq!(node.mounted_datasets(), ["root-only", "team-a-y"]);
}

/// A node with the TCP API on a free loopback port, `tokens` as its token
/// file and `policy` as its policy (written before the start), plus `extra`
/// flags; its address.
fn tcp_node(
    dir: &Path,
    tokens: &str,
    policy: &str,
    extra: &[&str],
) -> (Node, std::net::SocketAddr) {
    let token_file = dir.join("tokens");
    support::write_private_file(&token_file, tokens.as_bytes());
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let [port] = support::free_loopback_ports::<1>();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listen = addr.to_string();
    let mut args = vec![
        "--listen",
        &listen,
        "--token-file",
        token_file.to_str().unwrap(),
        "--policy",
        policy_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (Node::start(&args), addr)
}

/// One call on TCP with `token`; the body parsed as JSON (or kept as a string).
fn tcp_call(
    addr: std::net::SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = body.map(Value::to_string);
    let (status, text) = support::http_tcp(
        addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_deref(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A token for the TCP `/healthz` probes (a viewer: it needs no more).
const PROBE_TOKEN: &str = "probe-token-for-the-attack-tier";

#[test]
fn a_service_account_of_another_namespace_or_a_forged_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    support::write_test_jwks(&jwks);
    let policy = "[[rule]]\ncallers = [\"serviceaccount:team-a/loader\"]\n\
                  verbs = [\"get\", \"list\", \"put\", \"delete\"]\nnames = [\"team-a-*\"]\ns3 = [\"file://*/data/*\"]\n";
    let (node, addr) = tcp_node(
        dir.path(),
        &format!("probe viewer {PROBE_TOKEN}\n"),
        policy,
        &[
            "--sa-jwks",
            jwks.to_str().unwrap(),
            "--sa-issuer",
            support::TEST_ISSUER,
        ],
    );
    make_bucket(&node, "data");
    let spec = node.file_spec("data");
    let team_a = TokenClaims::valid("team-a", "loader").mint();
    let team_b = TokenClaims::valid("team-b", "loader").mint();
    let other_account = TokenClaims::valid("team-a", "intruder").mint();
    let forged: Vec<(&str, String)> = vec![
        (
            "audience",
            TokenClaims {
                audience: "vault",
                ..TokenClaims::valid("team-a", "loader")
            }
            .mint(),
        ),
        (
            "issuer",
            TokenClaims {
                issuer: "https://elsewhere",
                ..TokenClaims::valid("team-a", "loader")
            }
            .mint(),
        ),
        (
            "expired",
            TokenClaims {
                expires_in: -3600,
                ..TokenClaims::valid("team-a", "loader")
            }
            .mint(),
        ),
        (
            "unknown-key",
            TokenClaims {
                kid: "other-cluster",
                ..TokenClaims::valid("team-a", "loader")
            }
            .mint(),
        ),
        (
            "spliced",
            support::splice(&TokenClaims::valid("team-a", "loader").mint(), &team_b),
        ),
        (
            "hs256",
            TokenClaims::valid("team-a", "loader").mint_hmac(support::TEST_JWKS.as_bytes()),
        ),
        (
            "alg-none",
            TokenClaims::valid("team-a", "loader").unsigned(),
        ),
        ("garbage", "not.a.jwt".to_string()),
    ];
    // The allowed account mounts its dataset: the policy works.
    let (status, body) = tcp_call(addr, &team_a, "PUT", "/v1/mounts/team-a-x", Some(&spec));
    assert_eq!(status, 201, "{body}");
    assert!(
        body["createdBy"]
            .as_str()
            .is_some_and(|by| by.starts_with("serviceaccount:team-a/loader")),
        "{body}"
    );
    let probe = HealthProbe::start(node.agent.socket()).and_tcp(addr, PROBE_TOKEN);
    support::repeat_for(ATTACK_TIME, |round| {
        for (who, token) in [
            ("team-b/loader", &team_b),
            ("team-a/intruder", &other_account),
        ] {
            for (method, path, body) in [
                ("PUT", format!("/v1/mounts/team-a-{round}"), Some(&spec)),
                ("PUT", "/v1/mounts/team-b-x".to_string(), Some(&spec)),
                ("DELETE", "/v1/mounts/team-a-x?force=true".to_string(), None),
                ("GET", "/v1/mounts/team-a-x".to_string(), None),
                ("GET", "/v1/mounts".to_string(), None),
            ] {
                let (status, answer) = tcp_call(addr, token, method, &path, body);
                assert_eq!(status, 403, "{who} {method} {path}: {answer}");
                assert_eq!(error_code(&answer), "Forbidden", "{answer}");
                assert!(
                    error_message(&answer).contains(&format!("serviceaccount:{who}"))
                        && error_message(&answer).contains("refused by `callers`"),
                    "the refusal names the caller and the field: {answer}"
                );
            }
        }
        for (how, token) in &forged {
            let (status, answer) = tcp_call(
                addr,
                token,
                "PUT",
                &format!("/v1/mounts/team-a-{how}"),
                Some(&spec),
            );
            assert_eq!(status, 401, "a {how} token: {answer}");
            assert_eq!(error_code(&answer), "Unauthorized", "{answer}");
        }
    });
    let report = probe.finish();
    report.assert_healthy(
        "a service account of another namespace, forged tokens",
        MIN_PROBES,
    );
    assert_eq!(
        node.mounted_datasets(),
        ["team-a-x"],
        "nothing but the allowed account's dataset"
    );
    let audit = std::fs::read_to_string(node.agent.options().state_dir.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|line| line.contains("serviceaccount:team-b/loader")
                && line.contains("\"status\":403")),
        "refusals are audited: {audit}"
    );
    let (status, body) = tcp_call(addr, &team_a, "DELETE", "/v1/mounts/team-a-x", None);
    assert_eq!(status, 200, "{body}");
    node.assert_nothing_left("team-a-x");
}

#[test]
fn a_viewer_token_trying_to_put_or_delete_gets_403_and_nothing_is_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let viewer = "viewer-token-of-the-watcher";
    let admin = "admin-token-of-the-operator";
    // A rule that would allow the viewer everything: its role still refuses.
    let policy = "[[rule]]\ncallers = [\"token:watch\"]\nverbs = [\"get\", \"list\", \"put\", \"delete\"]\n\
                  names = [\"*\"]\ns3 = [\"*\"]\nnfs = [\"*\"]\nreadWrite = true\n";
    let (node, addr) = tcp_node(
        dir.path(),
        &format!("watch viewer {viewer}\nops admin {admin}\n"),
        policy,
        &[],
    );
    make_bucket(&node, "data");
    let spec = node.file_spec("data");
    let (status, body) = tcp_call(addr, admin, "PUT", "/v1/mounts/kept", Some(&spec));
    assert_eq!(status, 201, "{body}");
    let probe = HealthProbe::start(node.agent.socket()).and_tcp(addr, viewer);
    support::repeat_for(ATTACK_TIME, |round| {
        for (method, path, body) in [
            ("PUT", format!("/v1/mounts/viewer-{round}"), Some(&spec)),
            ("PUT", "/v1/mounts/kept".to_string(), Some(&spec)),
            ("DELETE", "/v1/mounts/kept".to_string(), None),
            ("DELETE", "/v1/mounts/kept?force=true".to_string(), None),
        ] {
            let (status, answer) = tcp_call(addr, viewer, method, &path, body);
            assert_eq!(status, 403, "viewer {method} {path}: {answer}");
            assert_eq!(error_code(&answer), "Forbidden", "{answer}");
            assert!(
                error_message(&answer).contains("token:watch")
                    && error_message(&answer).contains("refused by `role`"),
                "{answer}"
            );
        }
        node.assert_nothing_left(&format!("viewer-{round}"));
        // What a viewer may do, it does.
        let (status, view) = tcp_call(addr, viewer, "GET", "/v1/mounts/kept", None);
        assert_eq!(status, 200, "{view}");
    });
    let report = probe.finish();
    report.assert_healthy("a viewer token trying to PUT", MIN_PROBES);
    assert_eq!(
        node.mounted_datasets(),
        ["kept"],
        "nothing mounted or removed by the viewer"
    );
    assert_eq!(node.pod.read("kept/README.txt").unwrap(), b"a dataset\n");
}

#[test]
fn slow_header_connections_are_closed_and_never_starve_the_api() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    support::write_private_file(
        &tokens,
        format!("an-admin-token-for-the-test\nprobe viewer {PROBE_TOKEN}\n").as_bytes(),
    );
    let [port] = support::free_loopback_ports::<1>();
    let listen = format!("127.0.0.1:{port}");
    let node = Node::start(&[
        "--listen",
        &listen,
        "--token-file",
        tokens.to_str().unwrap(),
        "--header-read-timeout",
        "1s",
    ]);
    // The probes come from 127.0.0.2: another peer than the attacker's.
    let probe =
        HealthProbe::start(node.agent.socket()).and_tcp(listen.parse().unwrap(), PROBE_TOKEN);
    // 300 TCP connections that send half a request head and wait, as an
    // attacker's would (they used to be held forever).
    let mut attackers: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| {
            let mut stream = std::net::TcpStream::connect(&listen).ok()?;
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            Some(stream)
        })
        .collect();
    // Every attacking connection is closed by the agent: past the per-peer
    // limit at once, the others when the header timeout runs out.
    let started = Instant::now();
    for stream in &mut attackers {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        // End of stream (or a reset): the agent closed it. A timeout: it
        // is still held open.
        match stream.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "a slow connection is still open after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    let took = started.elapsed();
    let report = probe.finish();
    report.assert_healthy("300 slow-header connections", MIN_PROBES);
    assert!(
        took < Duration::from_secs(4),
        "slow connections were closed within the 1 s header timeout (all after {took:?})"
    );
    eprintln!("figure: 300 slow-header connections all closed {took:?} after the check");
    assert_eq!(node.mounted_datasets(), Vec::<String>::new());
}

#[test]
fn symlinks_in_file_buckets_never_serve_a_file_outside_the_allowed_directory() {
    let node = Node::start(&[]);
    let bucket = make_bucket(&node, "data");
    std::os::unix::fs::symlink("/etc/shadow", bucket.join("shadow")).unwrap();
    std::os::unix::fs::symlink("/etc", bucket.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../../../../../..", bucket.join("up")).unwrap();
    // A bucket that is itself a link, and an endpoint through a link.
    std::os::unix::fs::symlink("/etc", node.buckets().join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/", node.buckets().join("escape")).unwrap();
    let through_link = json!({"source": {"s3": {"bucket": "etc",
        "endpoint": format!("file://{}", node.buckets().join("escape").display())}}});
    let probe = HealthProbe::start(node.agent.socket());
    let started = Instant::now();
    let (status, body) = node.call("PUT", "/v1/mounts/linked", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    // An unprivileged pod user read /etc/shadow through such a link.
    let view = node.pod.view().join("linked");
    let run = node.pod.exec(
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sh",
            "-c",
            &format!(
                "ls {v}; cat {v}/shadow; cat {v}/etc/passwd; cat {v}/up/etc/passwd; cat {v}/README.txt",
                v = view.display()
            ),
        ],
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        !stdout.contains("root:"),
        "nothing outside the bucket: {stdout}"
    );
    assert!(
        stdout.contains("a dataset"),
        "the bucket's own files read: {stdout}"
    );
    for link in ["shadow", "etc/passwd", "up/etc/passwd"] {
        let read = node.pod.read(Path::new("linked").join(link));
        assert!(
            read.is_err(),
            "root in the pod read {link} through a link: {read:?}"
        );
    }
    let listed = node.pod.list("linked").unwrap();
    assert_eq!(listed, vec!["README.txt", "train"], "links are not listed");
    let mut escapes = Vec::new();
    for (name, spec) in [
        ("bucket-link", node.file_spec("etc-link")),
        ("endpoint-link", through_link),
    ] {
        let (status, body) = node.call("PUT", &format!("/v1/mounts/{name}"), Some(&spec));
        if status < 400 {
            let shadow = node.pod.exec(
                &[
                    "setpriv",
                    "--reuid",
                    "65534",
                    "--regid",
                    "65534",
                    "--clear-groups",
                    "head",
                    "-c",
                    "12",
                ]
                .iter()
                .copied()
                .chain([node.pod.view().join(name).join("shadow").to_str().unwrap()])
                .collect::<Vec<_>>(),
                Duration::from_secs(30),
            );
            escapes.push(format!(
                "{name}: a bucket outside the allowed directory was mounted ({status} {body}); \
                 an unprivileged pod user reading shadow through it got {:?} {:?}",
                String::from_utf8_lossy(&shadow.stdout),
                String::from_utf8_lossy(&shadow.stderr)
            ));
            let (status, body) = node.call("DELETE", &format!("/v1/mounts/{name}"), None);
            assert_eq!(status, 200, "{body}");
        }
        node.assert_nothing_left(name);
    }
    std::thread::sleep(ATTACK_TIME.saturating_sub(started.elapsed()));
    let report = probe.finish();
    let mut problems = report.problems("symlinks in file:// buckets", MIN_PROBES);
    problems.extend(escapes);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(node.mounted_datasets(), ["linked"]);
}

#[test]
fn a_symlink_planted_under_the_root_never_redirects_a_mount() {
    let node = Node::start(&[]);
    make_bucket(&node, "data");
    let root = node.root();
    let node_dir = root.parent().unwrap().to_path_buf();
    // Directories a planted link points at, each with a file of its own.
    let victims: Vec<PathBuf> = ["victim-abs", "victim-rel", "victim-swap"]
        .iter()
        .map(|name| {
            let dir = node_dir.join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("precious.txt"), b"mine\n").unwrap();
            dir
        })
        .collect();
    std::os::unix::fs::symlink(&victims[0], root.join("evil")).unwrap();
    std::os::unix::fs::symlink("../victim-rel", root.join("evil-rel")).unwrap();
    let probe = HealthProbe::start(node.agent.socket());
    let started = Instant::now();
    for (name, victim) in [("evil", &victims[0]), ("evil-rel", &victims[1])] {
        let (status, body) = node.call(
            "PUT",
            &format!("/v1/mounts/{name}"),
            Some(&node.file_spec("data")),
        );
        assert_eq!(
            node.mounts_below(&node_dir)
                .iter()
                .filter(|p| p.starts_with(victim))
                .count(),
            0,
            "{name}: the PUT mounted over the link's target {} ({status} {body})",
            victim.display()
        );
        assert_eq!(status, 409, "{name}: {body}");
        assert_eq!(error_code(&body), "PathOccupied", "{name}: {body}");
        assert_eq!(
            std::fs::read_dir(victim).unwrap().count(),
            1,
            "{name}: the target is as it was"
        );
        assert!(
            std::fs::symlink_metadata(root.join(name))
                .unwrap()
                .is_symlink(),
            "{name}: the link is left alone"
        );
    }
    // A dataset whose directory is swapped for a link after its mount
    // vanished: the probe's re-mount, and a forced DELETE, must not follow it.
    let swap_victim = &victims[2];
    nix::mount::mount(
        Some("victim"),
        swap_victim,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(swap_victim.join("precious.txt"), b"mine\n").unwrap();
    let (status, body) = node.call("PUT", "/v1/mounts/swap", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    let swap = root.join("swap");
    let planted = (0..20).any(|_| {
        let _ = nix::mount::umount2(&swap, nix::mount::MntFlags::MNT_DETACH);
        let swapped = std::fs::remove_dir(&swap).is_ok()
            && std::os::unix::fs::symlink(swap_victim, &swap).is_ok();
        if !swapped {
            std::thread::sleep(Duration::from_millis(20));
        }
        swapped
    });
    assert!(planted, "could not swap the dataset's directory for a link");
    // Several probe intervals (200 ms) for the agent to try its re-mount.
    std::thread::sleep(Duration::from_millis(1000));
    let on_victim = node
        .mounts_below(&node_dir)
        .into_iter()
        .filter(|p| p.starts_with(swap_victim))
        .count();
    assert_eq!(
        (on_victim, node.mounts_at(swap_victim)),
        (1, 1),
        "the re-mount went over the link's target (only the test's tmpfs may be there)"
    );
    let (status, body) = node.call("DELETE", "/v1/mounts/swap?force=true", None);
    eprintln!(
        "figure: forced DELETE of the swapped dataset: {status} {}",
        body["error"]["code"].as_str().unwrap_or("(no error)")
    );
    assert_eq!(
        node.mounts_at(swap_victim),
        1,
        "the DELETE unmounted the link's target"
    );
    assert_eq!(
        std::fs::read(swap_victim.join("precious.txt")).unwrap(),
        b"mine\n"
    );
    std::thread::sleep(ATTACK_TIME.saturating_sub(started.elapsed()));
    let report = probe.finish();
    report.assert_healthy("a symlink planted under the root", MIN_PROBES);
    assert_eq!(
        node.mounted_datasets(),
        Vec::<String>::new(),
        "nothing mounted under the root"
    );
}

#[test]
fn an_oversized_get_body_fails_the_read_with_bounded_memory() {
    let server = HostileS3::start(Hostility::OversizedBodies);
    let node = Node::start(&["--prefetch-memory", "64MiB", "--s3-request-timeout", "10s"]);
    let (status, body) = node.call("PUT", "/v1/mounts/oversized", Some(&server.spec("bucket")));
    assert_eq!(status, 201, "{body}");
    let size = node
        .pod
        .run(|view| std::fs::metadata(view.join("oversized/big")).map(|m| m.len()));
    assert_eq!(size.unwrap(), support::OBJECT_SIZE);
    let before = peak_kib(&node);
    let probe = HealthProbe::start(node.agent.socket());
    let mut slowest = Duration::ZERO;
    let rounds = support::repeat_for(ATTACK_TIME, |round| {
        let offset = (round as u64 % 4) * 16 * 1024 * 1024;
        let started = Instant::now();
        let read = node.pod.run(move |view| {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(view.join("oversized/big"))?;
            let mut buffer = vec![0u8; 1024 * 1024];
            file.read_at(&mut buffer, offset)
        });
        slowest = slowest.max(started.elapsed());
        let errno = read
            .expect_err("a read of a body past its range must fail")
            .raw_os_error();
        assert_eq!(errno, Some(libc::EIO), "the read fails cleanly with EIO");
    });
    let report = probe.finish();
    eprintln!(
        "figure: {rounds} reads of oversized bodies failed, slowest {slowest:?}; {} GETs, largest body sent {} KiB",
        server.gets(),
        server.largest_body_sent() / 1024
    );
    assert!(server.gets() > 0, "the reads reached the server");
    assert!(slowest < Duration::from_secs(5), "a read took {slowest:?}");
    // The prefetch budget bounds what is fetched; the rest is slack.
    assert_healthy_and_bounded(&node, &report, "oversized GET bodies", before, 64 + 32);
    let (status, _) = node.call("GET", "/v1/mounts/oversized", None);
    assert_eq!(status, 200, "the dataset stays");
}

/// What [`a_put_against`] leaves for its caller to look at.
struct HostilePut {
    node: Node,
    server: HostileS3,
    status: u16,
    body: Value,
    took: Duration,
}

/// PUTs dataset `name` (agent flags `args`) served by a hostile S3 server
/// (`hostility`) while /healthz is probed for the whole attack; asserts the
/// PUT fails within its deadline, leaves nothing, and the agent stayed
/// healthy with its memory grown by at most `bound_mib`.
fn a_put_against(
    hostility: Hostility,
    name: &str,
    attack: &str,
    args: &[&str],
    bound_mib: u64,
) -> HostilePut {
    let server = HostileS3::start(hostility);
    let node = Node::start(args);
    let before = peak_kib(&node);
    let probe = HealthProbe::start(node.agent.socket());
    let asked = Instant::now();
    let (status, body) = node.call(
        "PUT",
        &format!("/v1/mounts/{name}"),
        Some(&server.spec(name)),
    );
    let took = asked.elapsed();
    std::thread::sleep(ATTACK_TIME.saturating_sub(took));
    let report = probe.finish();
    eprintln!(
        "figure: {attack}: PUT answered {status} in {took:?}; {} KiB sent",
        server.largest_body_sent() / 1024
    );
    assert!(status >= 400, "{body}");
    assert!(took < Duration::from_secs(10), "the PUT took {took:?}");
    node.assert_nothing_left(name);
    assert_healthy_and_bounded(&node, &report, attack, before, bound_mib);
    HostilePut {
        node,
        server,
        status,
        body,
        took,
    }
}

/// The flags of the agent under a hostile server's oversized answers.
const HOSTILE_PUT_ARGS: &[&str] = &["--mount-timeout", "20s", "--s3-request-timeout", "10s"];

#[test]
fn an_oversized_listing_page_fails_the_put_with_bounded_memory() {
    a_put_against(
        Hostility::OversizedListingPage,
        "page",
        "an oversized listing page",
        HOSTILE_PUT_ARGS,
        64,
    );
}

#[test]
fn an_oversized_error_body_fails_the_put_with_bounded_memory() {
    let body = a_put_against(
        Hostility::OversizedErrorBody,
        "refused",
        "an oversized error body",
        HOSTILE_PUT_ARGS,
        64,
    )
    .body;
    assert!(
        body.to_string().len() < 2048,
        "the error reaching the caller is a short excerpt: {} bytes",
        body.to_string().len()
    );
}

#[test]
fn an_endless_listing_fails_instead_of_growing_memory() {
    let put = a_put_against(
        Hostility::EndlessListing,
        "endless",
        "an endless listing",
        &["--max-directory-entries", "5000", "--mount-timeout", "20s"],
        32,
    );
    assert_eq!(put.status, 502, "{}", put.body);
    assert!(
        error_message(&put.body).contains("more than 5000 entries"),
        "the error names the cause: {}",
        put.body
    );
    assert!(
        put.server.pages_sent() <= 7,
        "it stopped at the limit ({} pages)",
        put.server.pages_sent()
    );
    let rss = support::status_field(put.node.agent.worker_pid().unwrap(), "VmRSS:");
    assert!(rss < 100 * 1024, "RSS {rss} KiB");
    eprintln!(
        "figure: endless listing refused after {} pages in {:?}, agent RSS {} MiB",
        put.server.pages_sent(),
        put.took,
        rss / 1024
    );
}

/// What one writer of [`hundreds_of_writers_past_the_write_budget_get_enospc_with_bounded_memory`] got.
#[derive(Debug)]
struct Written {
    accepted: u64,
    error: Option<i32>,
}

#[test]
fn hundreds_of_writers_past_the_write_budget_get_enospc_with_bounded_memory() {
    const WRITERS: usize = 300;
    // The largest write the mount takes (its max_write), as `dd bs=1M` does.
    const CHUNK: usize = 1024 * 1024;
    const PER_WRITER: u64 = 4 * 1024 * 1024;
    const BUDGET_MIB: u64 = 64;
    let node = Node::start(&["--write-memory", "64MiB"]);
    make_bucket(&node, "scratch");
    let mut spec = node.file_spec("scratch");
    spec["readOnly"] = json!(false);
    let (status, body) = node.call("PUT", "/v1/mounts/rw", Some(&spec));
    assert_eq!(status, 201, "{body}");
    let worker = node.agent.worker_pid().unwrap();
    let before = peak_kib(&node);
    let probe = HealthProbe::start(node.agent.socket());
    // Each writer writes until it has written PER_WRITER bytes or fails,
    // then keeps its file open until every writer got there.
    let done = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (done, release) = (Arc::clone(&done), Arc::clone(&release));
            node.pod.spawn(move |view| {
                use std::io::Write;
                let mut written = Written {
                    accepted: 0,
                    error: None,
                };
                let file = std::fs::File::create(view.join(format!("rw/w-{i:03}")));
                let mut file = match file {
                    Ok(file) => file,
                    Err(e) => {
                        written.error = e.raw_os_error();
                        done.fetch_add(1, Ordering::SeqCst);
                        return written;
                    }
                };
                let chunk = vec![i as u8; CHUNK];
                while written.accepted < PER_WRITER {
                    match file.write(&chunk) {
                        Ok(n) => written.accepted += n as u64,
                        Err(e) => {
                            written.error = e.raw_os_error();
                            break;
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                drop(file);
                written
            })
        })
        .collect();
    let all_done = support::poll_until(Duration::from_secs(60), Duration::from_millis(20), || {
        (done.load(Ordering::SeqCst) == WRITERS).then_some(())
    });
    let attack_took = started.elapsed();
    release.store(true, Ordering::SeqCst);
    assert!(
        all_done.is_some(),
        "only {} of {WRITERS} writers finished or failed within 60 s: writes hang",
        done.load(Ordering::SeqCst)
    );
    let results: Vec<Written> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let report = probe.finish();
    let accepted: u64 = results.iter().map(|w| w.accepted).sum();
    let enospc = results
        .iter()
        .filter(|w| w.error == Some(libc::ENOSPC))
        .count();
    let whole = results.iter().filter(|w| w.error.is_none()).count();
    eprintln!(
        "figure: {WRITERS} writers in {attack_took:?}: {whole} wrote {} MiB each, {enospc} got ENOSPC; {} MiB accepted in all (budget {BUDGET_MIB} MiB)",
        PER_WRITER >> 20,
        accepted >> 20
    );
    let others: Vec<&Written> = results
        .iter()
        .filter(|w| !matches!(w.error, None | Some(libc::ENOSPC)))
        .collect();
    assert!(
        others.is_empty(),
        "writers failed otherwise than with ENOSPC: {others:?}"
    );
    assert!(
        enospc > 0,
        "no writer met the budget: the attack did not reach it"
    );
    assert!(
        accepted <= BUDGET_MIB << 20,
        "the writers' data held at once ({} MiB) is over the budget",
        accepted >> 20
    );
    // The budget is what writers may hold, however many there are; the
    // rest is slack (a writer waiting for room must not hold memory of its
    // own, or a pod with more writers grows the agent without bound).
    let bound = BUDGET_MIB + 32;
    // Closed, they gave the budget back: a new writer writes.
    let wrote = node.pod.write("rw/after", &vec![1u8; 2 * 1024 * 1024]);
    assert_eq!(wrote, Ok(()), "a writer after the attack");
    assert_eq!(
        node.agent.worker_pid(),
        Some(worker),
        "the worker was never replaced"
    );
    assert_eq!(node.mounted_datasets(), ["rw"]);
    assert_healthy_and_bounded(&node, &report, "hundreds of writers", before, bound);
}
