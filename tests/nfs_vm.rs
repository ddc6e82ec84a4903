//! The nfs tier: the agent (a static `hotmount serve`) inside a Debian kernel
//! under qemu (TCG), mounting exports of nfs-ganesha on the host, driven from
//! the host over qemu's forwarded API port with a bearer token, as a sidecar
//! would. Needs root on the host (ganesha's VFS backend) and the assets of
//! `scripts/nfs-vm-assets.sh`; fails, never skips, when they are missing. The
//! host's own mount table is never touched: every mount happens in the guest.
//!
//! Booting under TCG is the slow part, so one test boots the guest once and
//! runs the cases in sequence, each announced with a `nfs-vm step:` line:
//! PUT (read-only and read-write) seen from a pod view, DELETE, the server
//! stopped (Degraded within the probe deadline, the API fast throughout; a
//! DELETE of a mount whose server is gone completes) and started again
//! (Mounted again), agent restarts (adopted, one mount on the path), an
//! export replaced under the mount (stale handle: re-mounted at the same
//! path), refused and unreachable mounts, and a hanging server (504, nothing
//! left behind). Figures are
//! printed as `figure:` lines.

#[path = "nfs_vm/agent.rs"]
mod agent;
#[path = "nfs_vm/ganesha.rs"]
mod ganesha;
#[path = "nfs_vm/guest.rs"]
mod guest;
#[path = "nfs_vm/process.rs"]
mod process;
mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use agent::{AgentApi, TOKEN};
use ganesha::{Ganesha, PSEUDO};
use guest::{Guest, check_assets};
use serde_json::{Value, json};
use support::build_static_agent;

/// The agent root in the guest, as `hotmount serve` defaults it.
const ROOT: &str = "/var/lib/hotmount/mnt";
/// The agent's state file in the guest.
const STATE_FILE: &str = "/var/lib/hotmount/state/mounts.json";
/// Probe settings of the agent under test: a dead server is noticed within
/// about interval + timeout.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The mount deadline of the agent under test.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(8);
/// How fast `GET /v1/mounts` must answer while a server is dead or a mount
/// hangs (generous for TCG: a normal call takes a few milliseconds).
const LIST_BOUND: Duration = Duration::from_secs(2);
/// How many PUTs the PUT-to-visible figure is taken over.
const LATENCY_SAMPLES: usize = 20;

fn step(vm: &Guest, what: &str) {
    println!("nfs-vm step [{:6.1}s]: {what}", vm.uptime().as_secs_f64());
}

fn nfs_spec(port: u16, export: &str, read_only: bool) -> String {
    json!({
        "source": { "nfs": { "server": "10.0.2.2", "export": export, "port": port } },
        "readOnly": read_only,
        "labels": { "tier": "nfs" }
    })
    .to_string()
}

fn p50(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Mounts at `path` in the guest's node namespace, from its mountinfo.
fn guest_mounts_at(vm: &Guest, path: &str) -> Vec<String> {
    vm.sh_ok(10, "cat /proc/self/mountinfo")
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(path))
        .map(str::to_string)
        .collect()
}

/// Panics with the agent's log appended.
fn fail_with_log(vm: &Guest, message: String) -> ! {
    let log = vm.sh(10, "agent-ctl log | tail -n 60").output;
    panic!("{message}\n---- agent log (last 60 lines) ----\n{log}");
}

fn expect_status(vm: &Guest, reply: &agent::Reply, want: u16, what: &str) {
    if reply.status != want {
        fail_with_log(
            vm,
            format!(
                "{what}: want {want}, got {} after {:?}: {}",
                reply.status, reply.took, reply.body
            ),
        );
    }
}

/// Stops the agent (`stop`: SIGTERM, which must end it within agent-ctl's
/// 10 s; `kill`: SIGKILL), checks that the NFS mounts outlive it, starts it
/// again with the same flags and checks that it adopted what was mounted.
fn restart_agent(vm: &Guest, api: &AgentApi, command: &str) {
    let adopted_before = vm
        .sh_ok(10, "agent-ctl log")
        .matches("adopted the mount already in place")
        .count();
    let kernel_mounts = |vm: &Guest| {
        vm.sh_ok(
            10,
            &format!("grep -c ' {ROOT}/' /proc/self/mountinfo || true"),
        )
    };
    let before = kernel_mounts(vm);
    let stop = vm.sh(20, &format!("agent-ctl {command}"));
    if stop.code != 0 {
        fail_with_log(vm, format!("agent-ctl {command}: {}", stop.output));
    }
    assert_eq!(kernel_mounts(vm), before, "NFS mounts outlive the agent");
    vm.sh_ok(10, "agent-ctl start");
    api.wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| fail_with_log(vm, e));
    let log = vm.sh_ok(10, "agent-ctl log");
    let adopted = log.matches("adopted the mount already in place").count();
    let datasets = api.call("GET", "/v1/mounts", None).json()["items"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        adopted - adopted_before,
        datasets,
        "every dataset adopted, none re-mounted:\n{log}"
    );
}

#[test]
fn agent_in_guest_kernel_serves_nfs_datasets() {
    let tier_start = Instant::now();
    if let Err(missing) = check_assets() {
        panic!("{missing}");
    }
    let agent_binary = build_static_agent();
    let work = tempfile::Builder::new()
        .prefix("hotmount-nfs-vm-")
        .tempdir()
        .expect("temp dir");
    let initrd = work.path().join("initrd.gz");
    guest::build_initramfs(&initrd, Some(&agent_binary), None);

    let mut server = Ganesha::start();
    let export = server.export_dir();
    std::fs::write(export.join("hello.txt"), "written on the server\n").unwrap();
    let port = server.port();
    let ro_spec = nfs_spec(port, PSEUDO, true);
    let rw_spec = nfs_spec(port, PSEUDO, false);

    let mut vm = Guest::boot(&initrd, Duration::from_secs(180));
    let boot_time = vm.boot_time;
    let api = AgentApi::new(vm.api_addr());

    step(&vm, "start the agent in the guest");
    vm.sh_ok(
        10,
        &format!("umask 077 && echo {TOKEN} > /etc/hotmount/token"),
    );
    let serve_flags = format!(
        "--probe-interval {}ms --probe-timeout {}ms --mount-timeout {}ms",
        PROBE_INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_millis(),
        MOUNT_TIMEOUT.as_millis()
    );
    vm.sh_ok(10, &format!("agent-ctl start {serve_flags}"));
    let ready = api
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| fail_with_log(&vm, e));
    println!("nfs-vm: agent ready {:.1}s after start", secs(ready));
    let unauthorized = support::http_tcp(
        vm.api_addr(),
        "GET",
        "/v1/mounts",
        &[],
        None,
        Duration::from_secs(30),
    )
    .expect("GET without a token");
    assert_eq!(
        unauthorized.0, 401,
        "a call without token: {}",
        unauthorized.1
    );
    // The root is the agent's tmpfs, rshared; the pod sees it read-only, rslave.
    let root_mounts = guest_mounts_at(&vm, ROOT);
    assert!(
        root_mounts.len() == 1 && root_mounts[0].contains(" shared:"),
        "{root_mounts:?}"
    );
    let pod = vm.sh_ok(20, "pod-view");
    assert!(pod.contains("pod view ready"), "{pod}");

    step(
        &vm,
        "PUT a read-only NFS dataset; the pod reads the server's files",
    );
    let put = api.call("PUT", "/v1/mounts/data", Some(&ro_spec));
    expect_status(&vm, &put, 201, "PUT data");
    let mount = put.json();
    assert_eq!(mount["state"], "Mounted", "{mount}");
    assert_eq!(mount["path"], format!("{ROOT}/data"), "{mount}");
    assert_eq!(mount["source"]["nfs"]["server"], "10.0.2.2", "{mount}");
    let generation = mount["generation"].clone();
    let data_mounts = guest_mounts_at(&vm, &format!("{ROOT}/data"));
    assert_eq!(data_mounts.len(), 1, "{data_mounts:?}");
    assert!(
        data_mounts[0].contains(" nfs4 10.0.2.2:/data ")
            && data_mounts[0].contains("vers=4.1")
            && data_mounts[0].contains(" ro,nosuid,nodev"),
        "{}",
        data_mounts[0]
    );
    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/hello.txt"),
        "written on the server"
    );
    // The pod's copy of the dataset came by propagation: its /datasets is a
    // slave of the agent's root, in a mount namespace of its own.
    let pod_mounts = vm.pod_ok(10, "grep ' /datasets' /proc/self/mountinfo");
    assert!(
        pod_mounts.lines().any(|l| l.contains(" /datasets/data ")
            && l.contains(" master:")
            && l.contains(" nfs4 10.0.2.2:/data ")),
        "{pod_mounts}"
    );
    let node_ns = vm.sh_ok(10, "readlink /proc/self/ns/mnt");
    let pod_ns = vm.pod_ok(10, "readlink /proc/self/ns/mnt");
    assert_ne!(node_ns, pod_ns, "the pod has a mount namespace of its own");
    std::fs::write(export.join("later.txt"), "written after the mount\n").unwrap();
    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/later.txt"),
        "written after the mount"
    );
    let denied = vm.pod(10, "touch /datasets/data/nope");
    assert!(
        denied.code != 0 && denied.output.contains("Read-only file system"),
        "a write to a read-only dataset: {denied:?}"
    );
    let same = api.call("PUT", "/v1/mounts/data", Some(&ro_spec));
    expect_status(&vm, &same, 200, "PUT data again, same spec");
    let other = api.call("PUT", "/v1/mounts/data", Some(&rw_spec));
    expect_status(&vm, &other, 409, "PUT data with another spec");

    step(
        &vm,
        "PUT a read-write dataset; a pod write lands on the server",
    );
    let put = api.call("PUT", "/v1/mounts/scratch", Some(&rw_spec));
    expect_status(&vm, &put, 201, "PUT scratch");
    vm.pod_ok(
        20,
        "echo written in the pod > /datasets/scratch/from-pod.txt && sync",
    );
    assert_eq!(
        std::fs::read_to_string(export.join("from-pod.txt")).unwrap(),
        "written in the pod\n"
    );
    let denied = vm.pod(10, "touch /datasets/not-a-dataset");
    assert!(
        denied.code != 0 && denied.output.contains("Read-only file system"),
        "the pod's view of the root must be read-only: {denied:?}"
    );

    step(&vm, "DELETE scratch: gone from the pod view and the guest");
    let delete = api.call("DELETE", "/v1/mounts/scratch", None);
    expect_status(&vm, &delete, 200, "DELETE scratch");
    let gone = vm.pod(10, "ls /datasets/scratch");
    assert_ne!(gone.code, 0, "still in the pod view: {}", gone.output);
    assert!(guest_mounts_at(&vm, &format!("{ROOT}/scratch")).is_empty());
    assert!(api.mount("scratch").is_none());
    vm.sh_ok(10, &format!("test ! -e {ROOT}/scratch"));

    step(
        &vm,
        &format!("{LATENCY_SAMPLES} x (PUT, read in the pod, DELETE, gone in the pod)"),
    );
    // The pod command's own round trip (host -> guest shell -> nsenter), to
    // tell the mount's latency from the channel's.
    let mut channel = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        vm.pod_ok(10, "true");
        channel.push(started.elapsed());
    }
    let (mut put_latency, mut visible_latency, mut delete_latency) =
        (Vec::new(), Vec::new(), Vec::new());
    for i in 0..LATENCY_SAMPLES {
        let name = format!("lat-{i}");
        let started = Instant::now();
        let put = api.call("PUT", &format!("/v1/mounts/{name}"), Some(&ro_spec));
        expect_status(&vm, &put, 201, &format!("PUT {name}"));
        put_latency.push(put.took);
        // One try, no retry loop: 201 means visible to pods already.
        let read = vm.pod(10, &format!("cat /datasets/{name}/hello.txt"));
        assert_eq!(
            (read.code, read.output.as_str()),
            (0, "written on the server"),
            "{name} not readable in the pod right after its PUT"
        );
        visible_latency.push(started.elapsed());
        let started = Instant::now();
        let delete = api.call("DELETE", &format!("/v1/mounts/{name}"), None);
        expect_status(&vm, &delete, 200, &format!("DELETE {name}"));
        let gone = vm.pod(10, &format!("test ! -e /datasets/{name}"));
        assert_eq!(gone.code, 0, "{name} still in the pod after DELETE");
        delete_latency.push(started.elapsed());
    }
    let list = api.call("GET", "/v1/mounts", None).json();
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "only data should be left: {list}"
    );

    step(&vm, "metrics of NFS mounts");
    let metrics = api.call("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    for line in [
        "hotmount_mounts{backend=\"nfs\",state=\"Mounted\"} 1".to_string(),
        "hotmount_mount_healthy{backend=\"nfs\",name=\"data\"} 1".to_string(),
        format!(
            "hotmount_mount_operations_total{{backend=\"nfs\",op=\"mount\",result=\"success\"}} {}",
            LATENCY_SAMPLES + 2
        ),
        format!(
            "hotmount_mount_operations_total{{backend=\"nfs\",op=\"unmount\",result=\"success\"}} {}",
            LATENCY_SAMPLES + 1
        ),
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "/metrics has no `{line}`:\n{}",
            metrics.body
        );
    }
    support::promtool_check_metrics(&metrics.body);
    assert!(
        metrics
            .body
            .contains("hotmount_probe_duration_seconds_count{backend=\"nfs\"}"),
        "no NFS probes counted:\n{}",
        metrics.body
    );

    step(
        &vm,
        "ganesha stops: Degraded within the probe deadline, the API stays fast",
    );
    // A read-write dataset (a superblock of its own) to DELETE while the
    // server is gone.
    let put = api.call("PUT", "/v1/mounts/orphaned", Some(&rw_spec));
    expect_status(&vm, &put, 201, "PUT orphaned");
    server.stop();
    let stopped = Instant::now();
    let (detect, slowest_list) = api
        .wait_state(
            "data",
            "Degraded",
            PROBE_INTERVAL + PROBE_TIMEOUT + Duration::from_secs(10),
            LIST_BOUND,
        )
        .unwrap_or_else(|e| fail_with_log(&vm, e));
    let detect_time = stopped.elapsed();
    let degraded = api.mount("data").unwrap();
    assert!(
        degraded["lastError"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "a Degraded mount says why: {degraded}"
    );
    let metrics = api.call("GET", "/metrics", None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "hotmount_mount_healthy{backend=\"nfs\",name=\"data\"} 0"),
        "{metrics}"
    );
    println!(
        "nfs-vm: Degraded after {:.1}s (polling saw it after {:.1}s); slowest GET /v1/mounts {:.3}s",
        secs(detect_time),
        secs(detect),
        secs(slowest_list)
    );

    step(&vm, "DELETE of a mount whose server is gone completes");
    let delete = api.call("DELETE", "/v1/mounts/orphaned", None);
    expect_status(&vm, &delete, 200, "DELETE orphaned with the server down");
    assert!(
        delete.took < Duration::from_secs(15),
        "DELETE with the server gone took {:?}",
        delete.took
    );
    assert!(guest_mounts_at(&vm, &format!("{ROOT}/orphaned")).is_empty());
    vm.sh_ok(10, &format!("test ! -e {ROOT}/orphaned"));
    let gone = vm.pod(10, "test ! -e /datasets/orphaned");
    assert_eq!(gone.code, 0, "orphaned still in the pod view");
    let list = api.call("GET", "/v1/mounts", None);
    assert!(
        list.took <= LIST_BOUND,
        "GET /v1/mounts took {:?}",
        list.took
    );

    step(
        &vm,
        "agent restarted (SIGTERM) while the server is down: exits at once, adopts data",
    );
    restart_agent(&vm, &api, "stop");
    let after = api.mount("data").expect("data after the restart");
    assert!(
        after["state"] == "Mounted" || after["state"] == "Degraded",
        "{after}"
    );
    assert_eq!(after["generation"], generation, "adopted: {after}");
    assert_eq!(guest_mounts_at(&vm, &format!("{ROOT}/data")).len(), 1);
    api.wait_state(
        "data",
        "Degraded",
        PROBE_INTERVAL + PROBE_TIMEOUT + Duration::from_secs(10),
        LIST_BOUND,
    )
    .unwrap_or_else(|e| fail_with_log(&vm, e));

    step(&vm, "ganesha starts again: data is Mounted again");
    server.start_again();
    let restarted = Instant::now();
    api.wait_state("data", "Mounted", Duration::from_secs(150), LIST_BOUND)
        .unwrap_or_else(|e| fail_with_log(&vm, format!("{e}\nganesha log:\n{}", server.log())));
    let recovery_time = restarted.elapsed();
    let healed = api.mount("data").unwrap();
    assert_eq!(
        healed["generation"], generation,
        "the kernel mount healed by itself, it was not re-mounted: {healed}"
    );
    assert_eq!(
        vm.pod_ok(30, "cat /datasets/data/hello.txt"),
        "written on the server"
    );
    assert_eq!(guest_mounts_at(&vm, &format!("{ROOT}/data")).len(), 1);

    for (how, command) in [("SIGTERM", "stop"), ("SIGKILL", "kill")] {
        step(&vm, &format!("agent restarted ({how}): data is adopted"));
        restart_agent(&vm, &api, command);
        let adopted = api.mount("data").expect("data after the restart");
        assert_eq!(adopted["state"], "Mounted", "{adopted}");
        assert_eq!(
            adopted["generation"], generation,
            "adopted, not re-mounted: {adopted}"
        );
        let mounts = guest_mounts_at(&vm, &format!("{ROOT}/data"));
        assert_eq!(mounts.len(), 1, "exactly one mount on the path: {mounts:?}");
        assert_eq!(
            vm.pod_ok(20, "cat /datasets/data/hello.txt"),
            "written on the server"
        );
    }

    // The supervisor's worker dies, or a new agent takes the node over: a
    // kernel mount is never touched (not re-mounted, not stacked).
    for (what, command) in [
        ("worker killed (SIGKILL)", "kill-worker"),
        (
            "upgrade: a second hotmount serve takes the node over",
            "upgrade",
        ),
    ] {
        step(&vm, &format!("{what}: the NFS mount is left alone"));
        let done = vm.sh(40, &format!("agent-ctl {command}"));
        if done.code != 0 {
            fail_with_log(&vm, format!("agent-ctl {command}: {}", done.output));
        }
        api.wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| fail_with_log(&vm, e));
        let kept = api.mount("data").expect("data after the worker changed");
        assert_eq!(kept["state"], "Mounted", "{kept}");
        assert_eq!(kept["generation"], generation, "not re-mounted: {kept}");
        let mounts = guest_mounts_at(&vm, &format!("{ROOT}/data"));
        assert_eq!(mounts.len(), 1, "exactly one mount on the path: {mounts:?}");
        assert_eq!(
            vm.pod_ok(20, "cat /datasets/data/hello.txt"),
            "written on the server"
        );
    }

    step(
        &vm,
        "the export is replaced on the server: stale handle, re-mounted at the same path",
    );
    // A new directory (new inode and generation) behind the same export: the
    // mount's root file handle is stale once the server is back.
    server.stop();
    std::fs::remove_dir_all(&export).unwrap();
    std::fs::create_dir(&export).unwrap();
    std::fs::write(export.join("hello.txt"), "written on the server\n").unwrap();
    std::fs::write(export.join("replaced.txt"), "the new export\n").unwrap();
    server.start_again();
    let replaced = Instant::now();
    let before = generation.as_u64().expect("generation is a number");
    let remounted = loop {
        let mount = api.mount("data").expect("data");
        if mount["state"] == "Mounted" && mount["generation"].as_u64() > Some(before) {
            break mount;
        }
        if replaced.elapsed() > Duration::from_secs(90) {
            fail_with_log(
                &vm,
                format!("data not re-mounted after its export was replaced: {mount}"),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stale_recovery = replaced.elapsed();
    assert_eq!(remounted["generation"], before + 1, "{remounted}");
    assert_eq!(guest_mounts_at(&vm, &format!("{ROOT}/data")).len(), 1);
    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/replaced.txt"),
        "the new export"
    );
    let metrics = api.call("GET", "/metrics", None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "hotmount_recoveries_total{name=\"data\",reason=\"stale\"} 1"),
        "{metrics}"
    );
    println!(
        "nfs-vm: re-mounted {:.1}s after the server came back with a replaced export",
        secs(stale_recovery)
    );

    step(&vm, "refused mounts: a missing export, a closed port");
    let missing = api.call(
        "PUT",
        "/v1/mounts/missing",
        Some(&nfs_spec(port, "/no-such-export", true)),
    );
    assert_eq!(missing.status, 502, "{}", missing.body);
    assert_eq!(missing.error_code(), "MountRefused", "{}", missing.body);
    assert!(
        missing.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.0.2.2:/no-such-export")),
        "{}",
        missing.body
    );
    let [closed_port] = support::free_loopback_ports();
    let refused = api.call(
        "PUT",
        "/v1/mounts/refused",
        Some(&nfs_spec(closed_port, PSEUDO, true)),
    );
    assert!(
        matches!(refused.status, 502 | 504),
        "a closed port: {} {}",
        refused.status,
        refused.body
    );
    println!(
        "nfs-vm: missing export -> {} in {:.2}s: {}; closed port -> {} in {:.2}s: {}",
        missing.status,
        secs(missing.took),
        missing.body,
        refused.status,
        secs(refused.took),
        refused.body
    );
    // TEST-NET-1: nothing answers there (qemu's user network gives up on
    // the connection, or the host has no route): a clear error either way,
    // naming the server, within the mount deadline.
    let unreachable_spec = json!({
        "source": { "nfs": { "server": "192.0.2.1", "export": "/data" } },
        "readOnly": true
    })
    .to_string();
    let unreachable = api.call("PUT", "/v1/mounts/unreachable", Some(&unreachable_spec));
    assert!(
        matches!(unreachable.status, 502 | 504)
            && unreachable.body.contains("192.0.2.1")
            && unreachable.took < MOUNT_TIMEOUT + Duration::from_secs(10),
        "an unreachable server: {} after {:?}: {}",
        unreachable.status,
        unreachable.took,
        unreachable.body
    );
    println!(
        "nfs-vm: unreachable server -> {} in {:.2}s: {}",
        unreachable.status,
        secs(unreachable.took),
        unreachable.body
    );
    for name in ["missing", "refused", "unreachable"] {
        assert!(api.mount(name).is_none());
        vm.sh_ok(10, &format!("test ! -e {ROOT}/{name}"));
    }

    step(
        &vm,
        "a hanging server: PUT fails within its deadline, nothing left behind",
    );
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hanging.local_addr().unwrap().port();
    let lister = std::thread::spawn(move || {
        // The API keeps answering while the mount hangs.
        std::thread::sleep(Duration::from_secs(2));
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let list = api.call("GET", "/v1/mounts", None);
            assert_eq!(list.status, 200);
            slowest = slowest.max(list.took);
            std::thread::sleep(Duration::from_millis(300));
        }
        slowest
    });
    let hang = api.call(
        "PUT",
        "/v1/mounts/hang",
        Some(&nfs_spec(hang_port, PSEUDO, true)),
    );
    expect_status(&vm, &hang, 504, "PUT hang");
    assert_eq!(hang.error_code(), "MountTimeout", "{}", hang.body);
    assert!(
        hang.body.contains(&format!(
            "10.0.2.2:/data (address 10.0.2.2, port {hang_port}) did not finish within {}s",
            MOUNT_TIMEOUT.as_secs()
        )),
        "the timeout names the server: {}",
        hang.body
    );
    assert!(
        hang.took >= MOUNT_TIMEOUT && hang.took < MOUNT_TIMEOUT + Duration::from_secs(10),
        "PUT hang answered after {:?} (deadline {MOUNT_TIMEOUT:?})",
        hang.took
    );
    let slowest_during_hang = lister.join().expect("lister thread");
    assert!(
        slowest_during_hang <= LIST_BOUND,
        "GET /v1/mounts took {slowest_during_hang:?} while a mount hung"
    );
    assert!(api.mount("hang").is_none(), "hang has a state entry");
    vm.sh_ok(10, &format!("test ! -e {ROOT}/hang"));
    assert!(guest_mounts_at(&vm, &format!("{ROOT}/hang")).is_empty());
    let state: Value = serde_json::from_str(&vm.sh_ok(10, &format!("cat {STATE_FILE}; echo")))
        .expect("state file is JSON");
    assert!(
        !state.to_string().contains("\"hang\""),
        "hang in the state file: {state}"
    );
    assert!(state.to_string().contains("\"data\""), "{state}");
    // The first call is still in the guest kernel: a retry does not start a
    // second one on the same path.
    let again = api.call(
        "PUT",
        "/v1/mounts/hang",
        Some(&nfs_spec(hang_port, PSEUDO, true)),
    );
    expect_status(&vm, &again, 409, "PUT hang while its first mount hangs");
    assert_eq!(again.error_code(), "MountInProgress", "{}", again.body);
    assert!(again.took < LIST_BOUND, "took {:?}", again.took);
    vm.sh_ok(10, &format!("test ! -e {ROOT}/hang"));
    // SIGTERM does not wait for the call stuck in the kernel.
    restart_agent(&vm, &api, "stop");
    assert!(api.mount("hang").is_none(), "hang after the restart");
    assert_eq!(api.state("data"), "Mounted");
    // The server goes away: the kernel's mount call ends (connection
    // refused), nothing is left behind, and the name takes a mount call again.
    drop(hanging);
    let released = Instant::now();
    let after = loop {
        let reply = api.call(
            "PUT",
            "/v1/mounts/hang",
            Some(&nfs_spec(hang_port, PSEUDO, true)),
        );
        if reply.status != 409 || released.elapsed() > Duration::from_secs(60) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "nfs-vm: after the hanging server closed, PUT hang -> {} {:.1}s later: {}",
        after.status,
        secs(released.elapsed()),
        after.body
    );
    expect_status(&vm, &after, 502, "PUT hang once its server is gone");
    assert!(guest_mounts_at(&vm, &format!("{ROOT}/hang")).is_empty());
    vm.sh_ok(10, &format!("test ! -e {ROOT}/hang"));
    assert!(api.mount("hang").is_none());
    assert_eq!(api.state("data"), "Mounted");

    step(
        &vm,
        "command channel sanity: commands are bounded by their timeout",
    );
    let slow = Instant::now();
    assert_eq!(vm.sh(1, "sleep 30").code, 143);
    assert!(slow.elapsed() < Duration::from_secs(15));

    // For the reader of the test output: what the agent found worth a warning.
    let log = vm.sh_ok(10, "agent-ctl log");
    for line in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    {
        println!("nfs-vm agent: {line}");
    }
    vm.shutdown();
    drop(server);
    let channel_p50 = p50(&mut channel);
    println!(
        "figure: nfs PUT latency in the guest, p50 over {LATENCY_SAMPLES}: {:.3}s",
        secs(p50(&mut put_latency))
    );
    println!(
        "figure: nfs PUT to readable in the pod view, p50 over {LATENCY_SAMPLES}: {:.3}s \
         (includes one command-channel round trip, p50 {:.3}s)",
        secs(p50(&mut visible_latency)),
        secs(channel_p50)
    );
    println!(
        "figure: nfs DELETE to gone from the pod view, p50 over {LATENCY_SAMPLES}: {:.3}s",
        secs(p50(&mut delete_latency))
    );
    println!(
        "figure: nfs dead server detected (Degraded) {:.1}s after ganesha stopped \
         (probe interval {PROBE_INTERVAL:?}, timeout {PROBE_TIMEOUT:?})",
        secs(detect_time)
    );
    println!(
        "figure: nfs Mounted again {:.1}s after ganesha restarted",
        secs(recovery_time)
    );
    println!(
        "figure: nfs stale export re-mounted {:.1}s after the server came back",
        secs(stale_recovery)
    );
    println!(
        "figure: nfs hanging server PUT -> {} after {:.1}s (deadline {MOUNT_TIMEOUT:?})",
        hang.status,
        secs(hang.took)
    );
    println!(
        "figure: nfs tier: guest boot {:.1}s, whole test {:.1}s",
        secs(boot_time),
        secs(tier_start.elapsed())
    );
}
