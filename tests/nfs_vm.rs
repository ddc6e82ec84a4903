//! The nfs tier: real kernel NFS mounts in a Debian kernel under qemu (TCG)
//! against nfs-ganesha on the host. Needs root on the host (ganesha's VFS
//! backend) and the assets of `scripts/nfs-vm-assets.sh`; fails, never skips,
//! when they are missing. The host's own mount table is never touched: every
//! mount happens inside the guest.
//!
//! `guest_kernel_mounts_ganesha_export` proves the infrastructure the
//! agent-driven cases build on (guest boot, command channel, pod view,
//! ganesha stop/start, a hanging server) with busybox `mount`; the agent is
//! not in the guest yet.

#[path = "nfs_vm/ganesha.rs"]
mod ganesha;
#[path = "nfs_vm/guest.rs"]
mod guest;
#[path = "nfs_vm/process.rs"]
mod process;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ganesha::{Ganesha, PSEUDO};
use guest::{Guest, check_assets};

/// The agent root in the guest, as `hotmount serve` defaults it.
const ROOT: &str = "/var/lib/hotmount/mnt";

fn nfs_mount_command(port: u16, target: &str, extra: &str) -> String {
    format!(
        "mkdir -p {target} && mount -t nfs4 -o vers=4.1,addr=10.0.2.2,clientaddr=10.0.2.15,\
         port={port}{extra} 10.0.2.2:{PSEUDO} {target}"
    )
}

/// Reads what the guest's listener on the API port sends, retrying briefly
/// while it starts (qemu accepts on the host side before the guest listens).
fn read_forwarded(vm: &Guest) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = String::new();
        if let Ok(mut stream) = TcpStream::connect_timeout(&vm.api_addr(), Duration::from_secs(2)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = stream.read_to_string(&mut got);
        }
        if !got.is_empty() || Instant::now() > deadline {
            return got.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn guest_kernel_mounts_ganesha_export() {
    let test_start = Instant::now();
    if let Err(missing) = check_assets() {
        panic!("{missing}");
    }
    let work = tempfile::Builder::new()
        .prefix("hotmount-nfs-vm-")
        .tempdir()
        .expect("temp dir");
    let initrd = work.path().join("initrd.gz");
    guest::build_initramfs(&initrd, None, None);

    let mut server = Ganesha::start();
    let export = server.export_dir();
    std::fs::write(export.join("hello.txt"), "written on the server\n").unwrap();

    let mut vm = Guest::boot(&initrd, Duration::from_secs(120));
    let boot_time = vm.boot_time;

    // The agent API forward reaches the guest (a stand-in listener on 7470).
    vm.sh_ok(
        10,
        "nc -l -p 7470 -e echo api-forward-ok </dev/null >/dev/null 2>&1 &",
    );
    assert_eq!(read_forwarded(&vm), "api-forward-ok");

    // What the agent will do at start: a tmpfs root, made rshared. Then the
    // pod: a second mount namespace with /datasets an rslave, read-only rbind.
    vm.sh_ok(
        20,
        &format!("mount -t tmpfs -o mode=0755 hotmount-root {ROOT} && mount --make-rshared {ROOT}"),
    );
    let pod = vm.sh_ok(20, "pod-view");
    assert!(pod.contains("pod view ready"), "{pod}");

    // A dataset mounted after the pod view exists appears in it.
    let before_mount = vm.uptime();
    println!(
        "nfs-vm: root and pod view ready at {:.1}s",
        before_mount.as_secs_f64()
    );
    vm.sh_ok(
        60,
        &nfs_mount_command(server.port(), &format!("{ROOT}/data"), ""),
    );
    let mounted_at = vm.uptime();
    let mountinfo = vm.sh_ok(10, &format!("grep ' {ROOT}/data ' /proc/self/mountinfo"));
    assert!(
        mountinfo.contains(" nfs4 10.0.2.2:/data ") && mountinfo.contains("vers=4.1"),
        "{mountinfo}"
    );

    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/hello.txt"),
        "written on the server"
    );
    std::fs::write(export.join("later.txt"), "written after the mount\n").unwrap();
    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/later.txt"),
        "written after the mount"
    );

    // A read-write dataset is writable from the pod; the write lands on the server.
    vm.pod_ok(
        20,
        "echo written in the pod > /datasets/data/from-pod.txt && sync",
    );
    assert_eq!(
        std::fs::read_to_string(export.join("from-pod.txt")).unwrap(),
        "written in the pod\n"
    );
    // The pod's view of the root itself is read-only: no writes to the node.
    let denied = vm.pod(10, "touch /datasets/not-a-dataset");
    assert_ne!(denied.code, 0);
    assert!(
        denied.output.contains("Read-only file system"),
        "{}",
        denied.output
    );
    let pod_mounts = vm.pod_ok(10, "grep ' /datasets' /proc/self/mountinfo");
    assert!(
        pod_mounts.contains("/datasets/data ") && pod_mounts.contains("master:"),
        "{pod_mounts}"
    );

    // The server stops: I/O on a hard mount blocks (a probe needs a deadline);
    // it starts again: the same mount serves again.
    server.stop();
    let hung = vm.sh(5, &format!("stat -f {ROOT}/data"));
    assert_eq!(
        hung.code, 143,
        "statfs with the server down should block: {}",
        hung.output
    );
    server.start_again();
    let restarted = Instant::now();
    let recovery = loop {
        if vm.sh(5, &format!("stat -f {ROOT}/data >/dev/null")).code == 0 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(120),
            "mount did not recover within 120s of the server restart; ganesha log:\n{}",
            server.log()
        );
    };
    assert_eq!(
        vm.pod_ok(20, "cat /datasets/data/hello.txt"),
        "written on the server"
    );

    // Unmounted under the root: gone from the pod view.
    vm.sh_ok(30, &format!("umount {ROOT}/data && rmdir {ROOT}/data"));
    let gone = vm.pod(10, "ls /datasets/data");
    assert_ne!(gone.code, 0, "{}", gone.output);
    assert!(!vm.pod_ok(10, "cat /proc/self/mountinfo").contains("nfs4"));

    // A server that accepts and never answers: a bounded mount attempt is
    // killed and leaves no mount behind.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_port = hanging.local_addr().unwrap().port();
    let hang_target = format!("{ROOT}/hang");
    let hang_start = Instant::now();
    let attempt = vm.sh(
        10,
        &nfs_mount_command(hang_port, &hang_target, ",soft,timeo=20,retrans=1"),
    );
    let hang_time = hang_start.elapsed();
    assert_ne!(
        attempt.code, 0,
        "mount of a hanging server succeeded: {}",
        attempt.output
    );
    let left = vm.sh_ok(
        10,
        &format!("grep -c ' {hang_target} ' /proc/self/mountinfo || true"),
    );
    assert_eq!(left, "0", "a failed mount left a mount behind");
    drop(hanging);

    // Command channel sanity: commands are bounded by their timeout.
    let slow = Instant::now();
    assert_eq!(vm.sh(1, "sleep 30").code, 143);
    assert!(slow.elapsed() < Duration::from_secs(15));

    vm.shutdown();
    drop(server);
    println!(
        "nfs-vm timings: boot to READY {:.1}s; nfs mount {:.1}s (boot to mounted {:.1}s); \
         recovery after server restart {:.1}s; hanging-server mount attempt: exit {} after \
         {:.1}s ({}); total {:.1}s",
        boot_time.as_secs_f64(),
        (mounted_at - before_mount).as_secs_f64(),
        mounted_at.as_secs_f64(),
        recovery.as_secs_f64(),
        attempt.code,
        hang_time.as_secs_f64(),
        attempt.output.trim(),
        test_start.elapsed().as_secs_f64()
    );
}
