//! Self-tests of the shared test harness (`tests/support`): the node namespace,
//! the pod view and its propagation, the HTTP client, the agent process handle,
//! Garage and promtool. These are the foundations of the mount, s3 and fault tiers.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use support::{
    Agent, AgentOptions, Garage, NodeNamespace, Pod, current_mount_namespace, http, promtool_check,
    promtool_check_metrics, require_root, thread_mountinfo,
};

/// Set (to a socket path) when this binary is re-executed as a stand-in agent.
const FAKE_AGENT_SOCKET_ENV: &str = "HOTMOUNT_SELFTEST_FAKE_AGENT_SOCKET";

fn mount_tmpfs(target: &Path) {
    std::fs::create_dir_all(target).unwrap();
    mount(
        Some("hotmount-test"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .unwrap_or_else(|e| panic!("mount tmpfs at {}: {e}", target.display()));
}

fn mountinfo_mentions(mountinfo: &str, point: &Path) -> bool {
    let point = point.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(point))
}

#[test]
fn node_namespace_is_private_to_the_test_thread_and_its_children() {
    require_root();
    let host_namespace = current_mount_namespace();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("node-only");

    let node = NodeNamespace::enter();
    assert_ne!(node.id(), host_namespace, "unshare gave no new namespace");
    // The main thread (/proc/self) and pid 1 stay in the host's namespace.
    let main_thread_namespace = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(main_thread_namespace, node.id());

    let child = Command::new("readlink")
        .arg("/proc/self/ns/mnt")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&child.stdout).trim(),
        node.id().to_str().unwrap(),
        "a process spawned from the test thread must inherit the node namespace"
    );
    let spawned_thread_namespace = std::thread::spawn(current_mount_namespace).join().unwrap();
    assert_eq!(
        spawned_thread_namespace,
        node.id(),
        "threads spawned after enter() inherit it"
    );

    mount_tmpfs(&target);
    assert!(mountinfo_mentions(&thread_mountinfo(), &target));
    let child_mountinfo = Command::new("cat")
        .arg("/proc/self/mountinfo")
        .output()
        .unwrap();
    assert!(mountinfo_mentions(
        &String::from_utf8_lossy(&child_mountinfo.stdout),
        &target
    ));
    for host_view in ["/proc/1/mountinfo", "/proc/self/mountinfo"] {
        let text = std::fs::read_to_string(host_view).unwrap();
        assert!(
            !mountinfo_mentions(&text, &target),
            "{host_view} shows the node's tmpfs"
        );
    }

    drop(node);
    assert_eq!(
        current_mount_namespace(),
        host_namespace,
        "drop returns the thread"
    );
    assert!(!mountinfo_mentions(&thread_mountinfo(), &target));
}

#[test]
fn pod_view_follows_mounts_under_the_root_and_is_read_only_elsewhere() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mnt");
    let node = NodeNamespace::enter();
    // What the agent does to its root: a tmpfs made rshared.
    std::fs::create_dir_all(&root).unwrap();
    node.share_dir(&root);
    std::fs::create_dir(root.join("missing")).unwrap();

    let started = Instant::now();
    let pod = Pod::start(&root);
    eprintln!("pod started in {:?}", started.elapsed());
    assert_eq!(pod.list("").unwrap(), vec!["missing".to_string()]);
    assert_eq!(
        pod.write("missing/file", b"x"),
        Err(libc::EROFS),
        "nothing mounted: EROFS"
    );
    assert_eq!(pod.write("top-level", b"x"), Err(libc::EROFS));

    // A dataset mounted after the pod started appears in it, writable.
    let dataset = root.join("ds1");
    mount_tmpfs(&dataset);
    std::fs::write(dataset.join("hello.txt"), b"hello from the node").unwrap();
    assert_eq!(pod.mount_count("ds1"), 1);
    assert_eq!(
        pod.list("").unwrap(),
        vec!["ds1".to_string(), "missing".to_string()]
    );
    assert_eq!(pod.read("ds1/hello.txt").unwrap(), b"hello from the node");
    assert_eq!(pod.write("ds1/from-pod", b"written in the pod"), Ok(()));
    assert_eq!(
        std::fs::read(dataset.join("from-pod")).unwrap(),
        b"written in the pod"
    );
    let cat = pod.exec(
        &["cat", pod.view().join("ds1/hello.txt").to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, b"hello from the node");

    // Its unmount propagates too: the pod sees the empty, read-only directory.
    umount2(&dataset, MntFlags::empty()).unwrap();
    assert_eq!(pod.mount_count("ds1"), 0);
    assert_eq!(pod.list("ds1").unwrap(), Vec::<String>::new());
    assert_eq!(
        pod.read("ds1/hello.txt").unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(pod.write("ds1/after-unmount", b"x"), Err(libc::EROFS));
}

#[test]
#[should_panic(expected = "must be a shared mount point")]
fn pod_refuses_a_root_that_is_not_shared() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeNamespace::enter();
    let _pod = Pod::start(dir.path());
}

#[test]
fn http_client_reads_content_length_chunked_and_eof_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("http.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let responses: [&[u8]; 3] = [
            b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            b"HTTP/1.1 409 Conflict\r\n\r\n{\"error\":{}}",
        ];
        let mut requests = Vec::new();
        for response in responses {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let mut body = vec![0; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            requests.push((head, String::from_utf8(body).unwrap()));
            let mut stream = reader.into_inner();
            stream.write_all(response).unwrap();
        }
        requests
    });
    assert_eq!(
        http(&sock, "PUT", "/v1/mounts/a", Some(r#"{"x":1}"#)),
        (201, "hello world".to_string())
    );
    assert_eq!(
        http(&sock, "GET", "/v1/mounts", None),
        (200, "hello world".to_string())
    );
    assert_eq!(
        http(&sock, "DELETE", "/v1/mounts/a", None),
        (409, r#"{"error":{}}"#.to_string())
    );
    let requests = server.join().unwrap();
    assert!(requests[0].0.starts_with("PUT /v1/mounts/a HTTP/1.1\r\n"));
    assert!(requests[0].0.contains("Content-Type: application/json\r\n"));
    assert_eq!(requests[0].1, r#"{"x":1}"#);
    assert!(requests[1].0.contains("Connection: close\r\n"));
}

/// Runs as a stand-in agent when re-executed with [`FAKE_AGENT_SOCKET_ENV`]: answers
/// every request 200 until killed. Otherwise it passes at once.
#[test]
fn fake_agent_server() {
    let Some(sock) = std::env::var_os(FAKE_AGENT_SOCKET_ENV) else {
        return;
    };
    // Not ready for the first 300 ms, like an agent loading state.
    std::thread::sleep(Duration::from_millis(300));
    let listener = UnixListener::bind(&sock).unwrap();
    eprintln!("fake agent listening on {}", Path::new(&sock).display());
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        let body = format!("ok {}", line.trim());
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

#[test]
fn agent_handle_waits_for_readiness_stops_and_kills() {
    let dir = tempfile::tempdir().unwrap();
    let options = AgentOptions::in_dir(dir.path());
    let stand_in = || {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "fake_agent_server",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(FAKE_AGENT_SOCKET_ENV, &options.socket);
        command
    };

    let mut agent = Agent::start_command(stand_in(), options.clone());
    agent.wait_ready(Duration::from_secs(20));
    assert_eq!(http(agent.socket(), "GET", "/healthz", None).0, 200);
    assert!(
        agent.log().contains("fake agent listening"),
        "log: {}",
        agent.log()
    );
    let status = agent.stop();
    assert!(!status.success(), "SIGTERM ends the stand-in: {status}");

    std::fs::remove_file(&options.socket).unwrap();
    let mut agent = Agent::start_command(stand_in(), options.clone());
    agent.wait_ready(Duration::from_secs(20));
    let pid = agent.pid().unwrap();
    let status = agent.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "killed agent was reaped"
    );
}

#[test]
#[should_panic(expected = "agent exited with")]
fn agent_wait_ready_reports_an_early_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("sh");
    command.args(["-c", "echo agent failed to load state >&2; exit 3"]);
    let mut agent = Agent::start_command(command, AgentOptions::in_dir(dir.path()));
    agent.wait_ready(Duration::from_secs(10));
}

#[test]
fn garage_serves_objects_and_stops() {
    let started = Instant::now();
    let mut garage = Garage::start();
    eprintln!("garage started in {:?}", started.elapsed());
    garage.create_bucket("datasets");
    garage.put_object("datasets", "imagenet/train/0001.jpg", b"not really a jpeg");
    garage.put_object("datasets", "imagenet/README", b"readme");
    assert_eq!(
        garage.list_objects("datasets", Some("imagenet")),
        vec![
            "imagenet/README".to_string(),
            "imagenet/train/0001.jpg".to_string()
        ]
    );
    assert_eq!(
        garage.get_object("datasets", "imagenet/train/0001.jpg"),
        b"not really a jpeg"
    );
    assert!(garage.endpoint().starts_with("http://127.0.0.1:"));
    assert!(garage.access_key_id().starts_with("GK"));

    let credentials = garage.dir().join("credentials");
    garage.write_credentials_file(&credentials);
    let text = std::fs::read_to_string(&credentials).unwrap();
    assert_eq!(
        text,
        format!(
            "access_key_id={}\nsecret_access_key={}\n",
            garage.access_key_id(),
            garage.secret_access_key()
        )
    );
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let addr = garage.s3_addr();
    garage.stop();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "garage still listening after stop"
    );
    let resumed = Instant::now();
    garage.resume();
    eprintln!("garage resumed in {:?}", resumed.elapsed());
    assert_eq!(garage.get_object("datasets", "imagenet/README"), b"readme");
}

#[test]
fn fuse_is_available() {
    support::require_fuse();
}

#[test]
fn promtool_accepts_a_valid_exposition_and_rejects_an_invalid_one() {
    promtool_check_metrics(
        "# HELP hotmount_mount_operations_total Mount operations by result.\n\
         # TYPE hotmount_mount_operations_total counter\n\
         hotmount_mount_operations_total{backend=\"s3\",op=\"mount\",result=\"ok\"} 3\n",
    );
    // A counter without the _total suffix is a lint failure.
    let findings = promtool_check(
        "# HELP hotmount_mounts_done Mounts.\n# TYPE hotmount_mounts_done counter\nhotmount_mounts_done 1\n",
    )
    .unwrap_err();
    assert!(findings.contains("_total"), "{findings}");
    assert!(promtool_check("this is not { an exposition\n").is_err());
}
