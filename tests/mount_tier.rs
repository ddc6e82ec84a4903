//! Mount tier: the real agent binary and real kernel mounts, inside a private
//! mount namespace per test (the "node"), with a running "pod" in a namespace
//! of its own whose view of the root is read-only and rslave. S3 datasets come
//! from `file://` buckets here (the Garage tier is `s3_garage.rs`). Needs root
//! and /dev/fuse; fails (never skips) without them.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Agent, AgentOptions, Node, NodeNamespace, percentile, wait_readable};

fn start_node() -> Node {
    let node = Node::start(&[]);
    make_bucket(&node.buckets().join("data"));
    node
}

/// A `file://` bucket: a small tree with nested directories.
fn make_bucket(dir: &Path) {
    std::fs::create_dir_all(dir.join("train/cats")).unwrap();
    std::fs::write(dir.join("README.txt"), b"a dataset\n").unwrap();
    std::fs::write(dir.join("train/cats/1.jpg"), vec![7u8; 100_000]).unwrap();
    std::fs::write(dir.join("train/labels.csv"), b"file,label\n1.jpg,cat\n").unwrap();
}

#[test]
fn a_dataset_appears_in_a_running_pod_and_goes_on_delete() {
    let node = start_node();
    assert_eq!(node.pod.list("").unwrap(), Vec::<String>::new());
    // Nothing can be created where a dataset is missing: the root is a
    // read-only tmpfs in the pod, never the node's disk.
    assert_eq!(
        node.pod.write("images", b"x"),
        Err(libc::EROFS),
        "root is read-only in the pod"
    );

    let (status, body) = node.call("PUT", "/v1/mounts/images", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "Mounted");
    // Visible at once: 201 means mounted and visible under the root.
    assert_eq!(node.pod.read("images/README.txt").unwrap(), b"a dataset\n");
    assert_eq!(
        node.pod.read("images/train/cats/1.jpg").unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(
        node.pod.list("images").unwrap(),
        vec!["README.txt", "train"]
    );
    assert_eq!(
        node.pod.list("images/train").unwrap(),
        vec!["cats", "labels.csv"]
    );
    assert_eq!(node.pod.mount_count("images"), 1);
    assert_eq!(node.mounts_at(&node.root().join("images")), 1);
    // A read-only dataset refuses writes; a missing dataset's path is EROFS.
    assert_eq!(node.pod.write("images/new.txt", b"x"), Err(libc::EROFS));
    assert_eq!(node.pod.write("other", b"x"), Err(libc::EROFS));
    let mountinfo = node.pod.mountinfo();
    let line = mountinfo
        .lines()
        .find(|l| l.contains("fuse.hotmount"))
        .expect("the pod sees the FUSE mount");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    let (status, body) = node.call("DELETE", "/v1/mounts/images", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(node.pod.mount_count("images"), 0);
    assert!(node.pod.read("images/README.txt").is_err());
    assert_eq!(
        node.pod.list("").unwrap(),
        Vec::<String>::new(),
        "the directory went too"
    );
    assert_eq!(node.pod.write("images", b"x"), Err(libc::EROFS));
    assert_eq!(node.mounts_at(&node.root().join("images")), 0);
}

#[test]
fn a_busy_dataset_needs_force_and_then_detaches_lazily() {
    let node = start_node();
    let (status, _) = node.call("PUT", "/v1/mounts/busy", Some(&node.file_spec("data")));
    assert_eq!(status, 201);
    // Hold a file open in the pod.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let pod_pid = node.pod.pid();
    let view = node.pod.view().to_path_buf();
    let holder = std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let ns = std::fs::File::open(format!("/proc/{pod_pid}/ns/mnt")).unwrap();
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let file = std::fs::File::open(view.join("busy/README.txt")).unwrap();
        opened_tx.send(()).unwrap();
        let _ = hold_rx.recv();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &file, &mut text).map(|_| text)
    });
    opened_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (status, body) = node.call("DELETE", "/v1/mounts/busy", None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "Busy");
    let (status, body) = node.call("GET", "/v1/mounts/busy", None);
    assert_eq!((status, body["state"].as_str()), (200, Some("Mounted")));
    let (status, body) = node.call("DELETE", "/v1/mounts/busy?force=true", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(node.mounts_at(&node.root().join("busy")), 0, "detached");
    // The open file keeps working after the lazy detach.
    hold_tx.send(()).unwrap();
    assert_eq!(holder.join().unwrap().unwrap(), "a dataset\n");
}

#[test]
fn a_hundred_attach_detach_cycles_leave_nothing_behind() {
    let node = start_node();
    // fusectl in this node namespace, to see FUSE connections come and go.
    node.mount_fusectl();
    let path = node.root().join("cycle");
    let mut latencies = Vec::new();
    let mut connections = Vec::new();
    for round in 0..100 {
        let (status, body) = node.call("PUT", "/v1/mounts/cycle", Some(&node.file_spec("data")));
        assert_eq!(status, 201, "round {round}: {body}");
        latencies
            .push(wait_readable(&node.pod, "cycle/README.txt", Duration::from_secs(10)).unwrap());
        let minor = node
            .fuse_connection(&path)
            .expect("the mount is in the node's mountinfo");
        connections.push(minor);
        let (status, body) = node.call("DELETE", "/v1/mounts/cycle", None);
        assert_eq!(status, 200, "round {round}: {body}");
    }
    assert_eq!(node.mounts_at(&path), 0, "no mount left");
    assert_eq!(node.pod.mount_count("cycle"), 0);
    assert!(!path.exists(), "no directory left");
    let (_, list) = node.call("GET", "/v1/mounts", None);
    assert_eq!(list["items"], json!([]), "no dataset left");
    let state: Value = serde_json::from_slice(
        &std::fs::read(node.agent.options().state_dir.join("mounts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["mounts"], json!({}), "no state entry left");
    let leaked: Vec<u32> =
        support::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            let alive: Vec<u32> = connections
                .iter()
                .copied()
                .filter(|c| Path::new(&format!("/sys/fs/fuse/connections/{c}")).exists())
                .collect();
            alive.is_empty().then_some(alive)
        })
        .unwrap_or_else(|| {
            connections
                .iter()
                .copied()
                .filter(|c| Path::new(&format!("/sys/fs/fuse/connections/{c}")).exists())
                .collect()
        });
    assert!(leaked.is_empty(), "FUSE connections leaked: {leaked:?}");
    let threads = std::fs::read_dir(format!("/proc/{}/task", node.agent.worker_pid().unwrap()))
        .unwrap()
        .count();
    assert!(
        threads < 64,
        "agent threads should not grow with cycles: {threads}"
    );
    latencies.sort();
    eprintln!(
        "figure: PUT returned -> file readable in the pod (file://, 100 attaches): p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

#[test]
fn after_kill_9_the_dataset_comes_back_in_the_pod_by_itself() {
    let mut node = start_node();
    let (status, body) = node.call("PUT", "/v1/mounts/survivor", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    assert!(node.pod.read("survivor/README.txt").is_ok());
    node.agent.kill9();
    // The FUSE server died with the agent: the pod's opens fail meanwhile.
    assert!(node.pod.read("survivor/README.txt").is_err());
    let restarted = Instant::now();
    node.restart();
    let readable =
        wait_readable(&node.pod, "survivor/README.txt", Duration::from_secs(30)).unwrap();
    eprintln!(
        "figure: agent restart -> dataset readable again in the pod: {:?} (of which {:?} after ready)",
        restarted.elapsed(),
        readable
    );
    assert_eq!(
        node.pod.read("survivor/train/labels.csv").unwrap(),
        b"file,label\n1.jpg,cat\n"
    );
    let path = node.root().join("survivor");
    assert_eq!(node.mounts_at(&path), 1, "exactly one mount on the path");
    assert_eq!(
        node.pod.mount_count("survivor"),
        1,
        "exactly one mount in the pod"
    );
    let (status, body) = node.call("GET", "/v1/mounts/survivor", None);
    assert_eq!(status, 200);
    assert_eq!(body["state"], "Mounted", "{body}");
    assert_eq!(body["generation"], 2, "{body}");
    let metrics = support::http(node.agent.socket(), "GET", "/metrics", None).1;
    assert!(
        metrics.contains(r#"hotmount_recoveries_total{name="survivor",reason="restart"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_fuse_server_wedged_and_aborted_is_recovered() {
    let node = start_node();
    let (status, _) = node.call("PUT", "/v1/mounts/wedge", Some(&node.file_spec("data")));
    assert_eq!(status, 201);
    let path = node.root().join("wedge");
    let minor = node.fuse_connection(&path).unwrap();
    node.mount_fusectl();
    std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), b"1").unwrap();
    let (status, body) = node.call("GET", "/v1/mounts/wedge?wait=Degraded&timeout=10s", None);
    assert_eq!(status, 200, "the probe notices: {body}");
    let (status, body) = node.call("GET", "/v1/mounts/wedge?wait=Mounted&timeout=20s", None);
    assert_eq!(status, 200, "and recovers: {body}");
    wait_readable(&node.pod, "wedge/README.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(node.mounts_at(&path), 1);
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let node = start_node();
    node.call("PUT", "/v1/mounts/m1", Some(&node.file_spec("data")));
    node.pod.read("m1/train/cats/1.jpg").unwrap();
    node.call("PUT", "/v1/mounts/m2", Some(&node.file_spec("missing")));
    let wanted = [
        r#"hotmount_mounts{backend="s3",state="Mounted"} 1"#,
        r#"hotmount_mount_operations_total{backend="s3",op="mount",result="error"} 1"#,
        r#"hotmount_fuse_requests_total{name="m1",op="read"}"#,
        r#"hotmount_s3_bytes_read_total{name="m1"} 100000"#,
    ];
    let (status, text) = support::http(node.agent.socket(), "GET", "/metrics", None);
    assert_eq!(status, 200);
    support::promtool_check_metrics(&text);
    for series in wanted {
        assert!(text.contains(series), "{series} missing in\n{text}");
    }
}

#[test]
fn ctrl_c_ends_hotmount_warm_even_when_the_agent_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // An agent that takes connections and never answers.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let next_connection = || {
        support::poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
            listener.accept().ok().map(|(stream, _)| stream)
        })
        .expect("hotmount warm did not connect")
    };
    let warm = std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
        .args(["warm", "data", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its POST is here, unanswered; Ctrl-C sends the cancel...
    let _post = next_connection();
    support::signal(warm.id(), nix::sys::signal::Signal::SIGINT);
    let _cancel = next_connection();
    // ...which is not answered either: a second Ctrl-C ends it at once.
    let asked = Instant::now();
    support::signal(warm.id(), nix::sys::signal::Signal::SIGINT);
    let (exited, output) = support::exit_and_output(warm, Duration::from_secs(10));
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "it waited for the cancel's answer"
    );
    assert_eq!(exited.and_then(|s| s.code()), Some(1), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("stopped before the agent confirmed the cancel")
            && said.contains("hotmount warm data --status"),
        "{said}"
    );
}

#[test]
fn the_cli_drives_the_agent_and_fails_loudly() {
    let node = start_node();
    let socket = node.agent.socket().to_str().unwrap().to_string();
    let endpoint = format!("file://{}", node.buckets().display());
    let hotmount = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hotmount"))
            .args(args)
            .args(["--socket", &socket])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = hotmount(&[
        "attach",
        "cli-ds",
        "--s3",
        "s3://data/train",
        "--endpoint",
        &endpoint,
        "--wait",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("cli-ds mounted at"), "{out}");
    assert_eq!(
        node.pod.list("cli-ds").unwrap(),
        vec!["cats", "labels.csv"],
        "the prefix is the root"
    );
    let (ok, out, _) = hotmount(&["ls"]);
    assert!(
        ok && out.contains("cli-ds") && out.contains("Mounted") && out.starts_with("NAME"),
        "{out}"
    );
    let (ok, out, _) = hotmount(&["ls", "--json"]);
    assert!(ok);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["name"], "cli-ds");
    let (ok, out, _) = hotmount(&["status", "cli-ds", "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "Mounted"
    );
    let (ok, _, err) = hotmount(&[
        "attach",
        "bad",
        "--s3",
        "s3://nope",
        "--endpoint",
        &endpoint,
    ]);
    assert!(!ok, "a failed attach exits non-zero");
    assert!(err.contains("BucketNotFound"), "{err}");
    let (ok, _, err) = hotmount(&["status", "nothing"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, out, err) = hotmount(&["detach", "cli-ds"]);
    assert!(ok, "{err}");
    assert!(out.contains("unmounted"), "{out}");
    let (ok, _, _) = hotmount(&["ready"]);
    assert!(ok);
}

#[test]
fn sigterm_keeps_desired_state_for_the_next_start() {
    let mut node = start_node();
    let (status, _) = node.call("PUT", "/v1/mounts/kept", Some(&node.file_spec("data")));
    assert_eq!(status, 201);
    let exit = node.agent.stop();
    assert!(
        exit.success(),
        "a graceful stop exits 0: {exit:?}\n{}",
        node.agent.log()
    );
    assert!(
        !node.agent.options().socket.exists(),
        "the socket is removed"
    );
    node.restart();
    wait_readable(&node.pod, "kept/README.txt", Duration::from_secs(30)).unwrap();
    assert_eq!(node.mounts_at(&node.root().join("kept")), 1);
}

#[test]
fn an_agent_whose_root_cannot_propagate_refuses_to_start() {
    support::require_root();
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeNamespace::enter();
    // No share_dir: the root's parent is private, as under MountFlags=slave.
    let mut agent = Agent::start(AgentOptions::in_dir(dir.path()));
    let status = support::poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        agent.try_exit_status()
    })
    .expect("the agent exits");
    assert!(!status.success());
    let log = agent.log();
    assert!(
        log.contains("not shared") && log.contains("MountFlags"),
        "{log}"
    );
    // Each cause printed once per line (an error chain used to repeat it).
    for line in log.lines() {
        assert!(line.matches("not shared").count() <= 1, "{line}");
    }
}

/// Bind-mounts `dir` read-only over itself (in the test's node namespace).
fn make_read_only(dir: &Path) {
    use nix::mount::{MsFlags, mount};
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
}

#[test]
fn a_state_that_cannot_be_written_changes_nothing() {
    let node = start_node();
    let (status, body) = node.call("PUT", "/v1/mounts/kept", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    let state_dir = node.agent.options().state_dir.clone();
    make_read_only(&state_dir);

    // A PUT: refused before anything is made (it used to mount, answer 500
    // and leave the directory behind).
    let (status, body) = node.call("PUT", "/v1/mounts/new", Some(&node.file_spec("data")));
    assert_eq!(status, 500, "{body}");
    assert!(!node.root().join("new").exists(), "no directory");
    assert_eq!(node.mounts_at(&node.root().join("new")), 0, "no mount");
    let (status, _) = node.call("GET", "/v1/mounts/new", None);
    assert_eq!(status, 404, "no dataset");
    // A DELETE: refused before the unmount (it used to unmount, answer 500,
    // and the dataset came back at the next start).
    let (status, body) = node.call("DELETE", "/v1/mounts/kept", None);
    assert_eq!(status, 500, "{body}");
    assert_eq!(node.pod.read("kept/README.txt").unwrap(), b"a dataset\n");
    let (_, body) = node.call("GET", "/v1/mounts/kept", None);
    assert_eq!(body["state"], "Mounted", "{body}");

    nix::mount::umount2(&state_dir, nix::mount::MntFlags::MNT_DETACH).unwrap();
    let (status, body) = node.call("PUT", "/v1/mounts/new", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "writable again: {body}");
    let (status, body) = node.call("DELETE", "/v1/mounts/kept", None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_corrupt_state_file_costs_no_pod_its_data() {
    let mut node = start_node();
    for name in ["first", "second"] {
        let (status, body) = node.call(
            "PUT",
            &format!("/v1/mounts/{name}"),
            Some(&node.file_spec("data")),
        );
        assert_eq!(status, 201, "{body}");
    }
    node.agent.kill9();
    let state = node.agent.options().state_dir.join("mounts.json");
    let text = std::fs::read(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    node.restart();
    // The previous good state (before the last PUT) is back in the pod...
    wait_readable(&node.pod, "first/README.txt", Duration::from_secs(30)).unwrap();
    // ...and the dataset only the corrupt file knew is not removed (it used
    // to be unmounted from every pod as an "orphan").
    assert_eq!(node.mounts_at(&node.root().join("second")), 1);
    let (_, ready) = node.call("GET", "/readyz", None);
    let warnings = ready["warnings"].to_string();
    assert!(
        warnings.contains("previous good state") && warnings.contains("none is removed"),
        "{ready}"
    );
    // The operator removes the corrupt file and restarts: the state is
    // complete again, the mount it does not name is cleaned up, and the
    // dataset can be attached again.
    for entry in std::fs::read_dir(node.agent.options().state_dir.clone())
        .unwrap()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("mounts.json.corrupt-")
        {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    node.agent.stop();
    node.restart();
    let (_, ready) = node.call("GET", "/readyz", None);
    assert_eq!(ready["warnings"], serde_json::json!([]), "{ready}");
    assert_eq!(node.mounts_at(&node.root().join("second")), 0);
    let (status, body) = node.call("PUT", "/v1/mounts/second", Some(&node.file_spec("data")));
    assert_eq!(status, 201, "{body}");
    wait_readable(&node.pod, "second/README.txt", Duration::from_secs(30)).unwrap();
}

#[test]
fn the_metrics_listener_serves_metrics_alone_without_a_token() {
    let [port] = support::free_loopback_ports::<1>();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node = Node::start(&["--metrics-listen", &addr.to_string()]);
    make_bucket(&node.buckets().join("data"));
    let (status, _) = node.call("PUT", "/v1/mounts/seen", Some(&node.file_spec("data")));
    assert_eq!(status, 201);
    let timeout = Duration::from_secs(10);
    let (status, text) = support::http_tcp(addr, "GET", "/metrics", &[], None, timeout).unwrap();
    assert_eq!(status, 200, "no token needed: {text}");
    support::promtool_check_metrics(&text);
    assert!(
        text.contains(r#"hotmount_mount_healthy{backend="s3",name="seen"} 1"#),
        "{text}"
    );
    // Nothing but /metrics there: not the API.
    for (method, path) in [
        ("GET", "/v1/mounts"),
        ("PUT", "/v1/mounts/x"),
        ("GET", "/readyz"),
    ] {
        let (status, _) = support::http_tcp(addr, method, path, &[], None, timeout).unwrap();
        assert_eq!(status, 404, "{method} {path}");
    }
}

#[test]
fn a_sidecar_holds_its_dataset_until_it_is_stopped() {
    let node = Node::start(&[]);
    std::fs::create_dir_all(node.buckets().join("data")).unwrap();
    std::fs::write(node.buckets().join("data/x.txt"), b"held\n").unwrap();
    let hotmount = env!("CARGO_BIN_EXE_hotmount");
    let socket = node.agent.socket().to_str().unwrap().to_string();
    let endpoint = format!("file://{}", node.buckets().display());
    // As the sidecar of deploy/examples/sidecar.yaml runs it.
    let mut sidecar = std::process::Command::new(hotmount)
        .args([
            "attach",
            "held",
            "--s3",
            "s3://data",
            "--endpoint",
            &endpoint,
        ])
        .args(["--wait", "--hold", "--socket", &socket])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_readable(&node.pod, "held/x.txt", Duration::from_secs(20)).unwrap();
    let probe = std::process::Command::new(hotmount)
        .args(["status", "held", "--mounted", "--socket", &socket])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");
    let missing = std::process::Command::new(hotmount)
        .args(["status", "other", "--mounted", "--socket", &socket])
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "no such dataset: the probe fails"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sidecar.try_wait().unwrap().is_none(),
        "the sidecar holds on"
    );
    // The pod ends: SIGTERM.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sidecar.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = sidecar.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("held mounted at") && text.contains("held unmounted from"),
        "{text}"
    );
    let (status, _) = node.call("GET", "/v1/mounts/held", None);
    assert_eq!(status, 404);
    node.assert_nothing_left("held");
}

/// A self-signed certificate for 127.0.0.1 in `dir` (cert.pem, key.pem).
fn self_signed(dir: &Path, name: &str) {
    support::require_tool("openssl", "openssl");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem.new"))
        .arg("-out")
        .arg(dir.join("cert.pem.new"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // Replaced as a certificate manager does: rename over.
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
}

#[test]
fn the_tcp_api_speaks_tls_and_follows_a_renewed_certificate() {
    support::require_tool("curl", "curl");
    let tls = tempfile::tempdir().unwrap();
    self_signed(tls.path(), "first");
    let tokens = tls.path().join("tokens");
    support::write_private_file(&tokens, b"ops operator aaaaaaaaaaaaaaaaaaaaaaaa\n");
    let [port] = support::free_loopback_ports::<1>();
    let addr = format!("127.0.0.1:{port}");
    let node = Node::start(&[
        "--listen",
        &addr,
        "--token-file",
        tokens.to_str().unwrap(),
        "--tls-cert",
        tls.path().join("cert.pem").to_str().unwrap(),
        "--tls-key",
        tls.path().join("key.pem").to_str().unwrap(),
    ]);
    let ca = tls.path().join("ca.pem");
    let curl = |url: &str| {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args(["-H", "Authorization: Bearer aaaaaaaaaaaaaaaaaaaaaaaa", url])
            .output()
            .unwrap()
    };
    std::fs::copy(tls.path().join("cert.pem"), &ca).unwrap();
    let https = format!("https://{addr}/readyz");
    let answered = curl(&https);
    assert_eq!(
        String::from_utf8_lossy(&answered.stdout),
        "200",
        "{answered:?}"
    );
    // In the clear: no answer.
    let plain = curl(&format!("http://{addr}/readyz"));
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "{plain:?}");
    // An operator token without a policy may not mount.
    let spec = node.file_spec("data").to_string();
    let refused = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            "Authorization: Bearer aaaaaaaaaaaaaaaaaaaaaaaa",
            "-X",
            "PUT",
            "-d",
            &spec,
        ])
        .arg(format!("https://{addr}/v1/mounts/nope"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&refused.stdout);
    assert!(
        body.contains("Forbidden") && body.contains("token:ops"),
        "{body}"
    );
    // A renewed certificate is served without a restart.
    self_signed(tls.path(), "second");
    std::fs::copy(tls.path().join("cert.pem"), &ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answered = curl(&https);
        if String::from_utf8_lossy(&answered.stdout) == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served: {answered:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A broken pair (a key that is not one) keeps the last good certificate.
    std::fs::write(tls.path().join("key.pem"), b"not a key\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let answered = curl(&https);
    assert_eq!(
        String::from_utf8_lossy(&answered.stdout),
        "200",
        "{answered:?}"
    );
}
