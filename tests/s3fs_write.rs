//! Writes through a real kernel FUSE mount (`readOnly: false`) against a real
//! S3 server (Garage): new files written sequentially become objects when
//! closed (one PUT, or a multipart upload), unlink deletes, mkdir/rmdir work
//! on empty directories, and what S3 cannot do fails with the errno
//! doc/SEMANTICS.md promises. Needs root, /dev/fuse and Garage; fails, never
//! skips, without them.

mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use support::{object_bytes, within_timeout};

const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn errno_of<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) -> i32 {
    result
        .unwrap_err_or_panic(what)
        .raw_os_error()
        .unwrap_or_else(|| panic!("{what}: an error without errno"))
}

trait ExpectErr<T> {
    fn unwrap_err_or_panic(self, what: &str) -> std::io::Error;
}

impl<T: std::fmt::Debug> ExpectErr<T> for std::io::Result<T> {
    fn unwrap_err_or_panic(self, what: &str) -> std::io::Error {
        match self {
            Ok(value) => panic!("{what} succeeded ({value:?}) but must fail"),
            Err(err) => err,
        }
    }
}

/// Garage with `bucket`, a node, and the bucket attached read-write as
/// dataset `rw` with the spec changed by `tune` (locals drop node first).
fn read_write_dataset(
    bucket: &str,
    tune: impl FnOnce(&mut serde_json::Value),
) -> (support::Garage, support::Node) {
    support::require_fuse();
    let garage = support::Garage::start();
    garage.create_bucket(bucket);
    let node = support::Node::start(&[]);
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let mut spec = garage.spec(bucket, json!({"secret": "garage"}));
    spec["readOnly"] = json!(false);
    tune(&mut spec);
    let (status, body) = node.call("PUT", "/v1/mounts/rw", Some(&spec));
    assert_eq!(status, 201, "mount: {body}\n{}", node.agent.log());
    (garage, node)
}

#[test]
fn writes_through_a_real_mount_become_objects() {
    let (garage, node) = read_write_dataset("writable", |_| {});
    garage.put_object("writable", "existing", b"old bytes");
    garage.put_object("writable", "full/inner", b"x");
    let root: PathBuf = node.root().join("rw");

    // New files: small (one PUT) and large (multipart), written with plain writes.
    let small = object_bytes(1, 1000);
    let large = object_bytes(2, 20 * 1024 * 1024 + 333);
    for (name, content) in [("small", small.clone()), ("large", large.clone())] {
        let path = root.join(name);
        within_timeout(STEP_TIMEOUT, "write a new file", move || {
            std::fs::write(path, content)
        })
        .unwrap_or_else(|e| panic!("write {name}: {e}"));
        assert!(
            garage.get_object("writable", name)
                == if name == "small" { &small } else { &large }[..],
            "object {name} differs from what was written"
        );
        let path = root.join(name);
        let read = within_timeout(STEP_TIMEOUT, "read back", move || std::fs::read(path))
            .expect("read back");
        assert_eq!(
            read.len(),
            if name == "small" {
                small.len()
            } else {
                large.len()
            }
        );
    }
    // The metrics count S3 requests, not FUSE writes: one PUT for the small
    // file, three 8 MiB parts and a completion for the large one.
    let (_, metrics) = node.call("GET", "/metrics", None);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for series in [
        r#"hotmount_s3_requests_total{name="rw",op="put",result="success"} 1"#,
        r#"hotmount_s3_requests_total{name="rw",op="put_part",result="success"} 3"#,
        r#"hotmount_s3_requests_total{name="rw",op="complete_multipart",result="success"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing in\n{metrics}");
    }
    let empty = root.join("empty");
    within_timeout(STEP_TIMEOUT, "create an empty file", move || {
        std::fs::File::create(empty).map(drop)
    })
    .expect("create an empty file");
    // Created and closed without a write: an empty object, completed at release.
    wait_object(&garage, "writable", "empty", b"");

    // mkdir, a file inside, rmdir refused until it is empty.
    let sub = root.join("sub");
    within_timeout(STEP_TIMEOUT, "mkdir", {
        let sub = sub.clone();
        move || std::fs::create_dir(sub)
    })
    .expect("mkdir");
    within_timeout(STEP_TIMEOUT, "write in the new directory", {
        let sub = sub.clone();
        move || std::fs::write(sub.join("f"), b"in sub")
    })
    .expect("write in the new directory");
    assert_eq!(garage.get_object("writable", "sub/f"), b"in sub");
    let not_empty = within_timeout(STEP_TIMEOUT, "rmdir non-empty", {
        let sub = sub.clone();
        move || std::fs::remove_dir(sub)
    });
    assert_eq!(
        errno_of("rmdir of a non-empty directory", not_empty),
        libc::ENOTEMPTY
    );
    within_timeout(STEP_TIMEOUT, "unlink", {
        let sub = sub.clone();
        move || std::fs::remove_file(sub.join("f"))
    })
    .expect("unlink sub/f");
    assert!(
        !garage
            .list_objects("writable", None)
            .contains(&"sub/f".to_string()),
        "sub/f still in the bucket after unlink"
    );
    within_timeout(STEP_TIMEOUT, "rmdir", {
        let sub = sub.clone();
        move || std::fs::remove_dir(sub)
    })
    .expect("rmdir of the emptied directory");
    let empty_dir = root.join("made-and-removed");
    within_timeout(STEP_TIMEOUT, "mkdir + rmdir", move || {
        std::fs::create_dir(&empty_dir)?;
        std::fs::remove_dir(&empty_dir)
    })
    .expect("mkdir then rmdir of an empty directory");

    // What S3 cannot do, and its errno.
    let existing = root.join("existing");
    let results = within_timeout(STEP_TIMEOUT, "refused writes", {
        let root = root.clone();
        move || {
            let overwrite = std::fs::File::create(&existing).map(drop);
            let append = OpenOptions::new().append(true).open(&existing).map(drop);
            let rename = std::fs::rename(root.join("full"), root.join("renamed"));
            let random = (|| {
                let mut file = std::fs::File::create(root.join("random"))?;
                file.write_all(b"start")?;
                file.write_at(b"far away", 1 << 20)
            })();
            let rmdir_full = std::fs::remove_dir(root.join("full"));
            let unlink_dir = std::fs::remove_file(root.join("full"));
            (overwrite, append, rename, random, rmdir_full, unlink_dir)
        }
    });
    let (overwrite, append, rename, random, rmdir_full, unlink_dir) = results;
    assert_eq!(
        errno_of("overwrite of an existing object", overwrite),
        libc::EPERM
    );
    assert_eq!(
        errno_of("append to an existing object", append),
        libc::EPERM
    );
    assert_eq!(errno_of("rename of a directory", rename), libc::EXDEV);
    assert_eq!(errno_of("random write", random), libc::EINVAL);
    assert_eq!(
        errno_of("rmdir of a key prefix", rmdir_full),
        libc::ENOTEMPTY
    );
    assert_eq!(errno_of("unlink of a directory", unlink_dir), libc::EISDIR);
    assert_eq!(garage.get_object("writable", "existing"), b"old bytes");
    // The random writer's sequential part still became an object at close.
    assert_eq!(garage.get_object("writable", "random"), b"start");

    let (status, body) = node.call("DELETE", "/v1/mounts/rw?force=true", None);
    assert_eq!(status, 200, "unmount: {body}");
}

/// Waits until `bucket/key` holds exactly `want` (an object completed at
/// release appears just after the last close: the kernel does not wait for it).
fn wait_object(garage: &support::Garage, bucket: &str, key: &str, want: &[u8]) {
    let found = support::poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        garage
            .list_objects(bucket, None)
            .contains(&key.to_string())
            .then(|| garage.get_object(bucket, key))
            .filter(|got| got == want)
    });
    assert!(
        found.is_some(),
        "{key}: want {} bytes, bucket has {:?}",
        want.len(),
        garage
            .list_objects(bucket, None)
            .contains(&key.to_string())
            .then(|| garage.get_object(bucket, key).len())
    );
}

#[test]
fn common_tools_write_through_duplicated_descriptors() {
    let (garage, node) = read_write_dataset("tools", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let big_source = dir.path().join("big-source");
    let big = object_bytes(5, 20 * 1024 * 1024 + 7);
    std::fs::write(&big_source, &big).unwrap();

    // Each line is what a pod's scripts do; before, the shell's and dd's
    // first close (of the descriptor they dup2 onto stdout) completed an
    // empty object and every later write failed with EPERM.
    let script = format!(
        r#"set -e
cd {view}/rw
echo hello > redirect.txt
{{ echo one; echo two; }} > grouped.txt
head -c 3000000 /dev/zero | tr '\0' x | dd of=dd.bin bs=65536 iflag=fullblock status=none
exec 3> fd3.txt; echo parent1 >&3; (echo child >&3); echo parent2 >&3; exec 3>&-
sh -c 'echo from-child' > child.txt
python3 -c "import sys; f = open('py.txt', 'w'); f.write('py'); f.close()"
cp {big_source} big.bin
: > empty.txt
"#,
        view = node.pod.view().display(),
        big_source = big_source.display(),
    );
    let run = node
        .pod
        .exec(&["sh", "-c", &script], Duration::from_secs(120));
    assert!(
        run.status.success(),
        "script failed: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        node.agent.log()
    );
    wait_object(&garage, "tools", "redirect.txt", b"hello\n");
    wait_object(&garage, "tools", "grouped.txt", b"one\ntwo\n");
    wait_object(&garage, "tools", "dd.bin", &vec![b'x'; 3_000_000]);
    wait_object(&garage, "tools", "fd3.txt", b"parent1\nchild\nparent2\n");
    wait_object(&garage, "tools", "child.txt", b"from-child\n");
    wait_object(&garage, "tools", "py.txt", b"py");
    wait_object(&garage, "tools", "big.bin", &big);
    wait_object(&garage, "tools", "empty.txt", b"");
    // And the pod reads back what it wrote.
    assert_eq!(
        node.pod.read("rw/fd3.txt").unwrap(),
        b"parent1\nchild\nparent2\n"
    );
    assert_eq!(node.pod.read("rw/big.bin").unwrap().len(), big.len());

    let (status, body) = node.call("DELETE", "/v1/mounts/rw?force=true", None);
    assert_eq!(status, 200, "unmount: {body}");
}

#[test]
fn a_readers_close_waits_for_no_flush_and_a_writers_close_still_reports() {
    let (garage, node) = read_write_dataset("closes", |_| {});
    garage.put_object("closes", "existing", b"old bytes");
    let flushes = || node.metric(r#"hotmount_fuse_requests_total{name="rw",op="flush"}"#);
    let opens = || node.metric(r#"hotmount_fuse_requests_total{name="rw",op="open"}"#);

    // A writer's close comes to the agent as FLUSH, which completes the
    // object, so that close(2) can report a failed upload.
    let written = node.root().join("rw/written");
    within_timeout(STEP_TIMEOUT, "write a new file", move || {
        std::fs::write(written, b"new bytes")
    })
    .unwrap_or_else(|e| panic!("write: {e}"));
    wait_object(&garage, "closes", "written", b"new bytes");
    let after_writing = flushes();
    assert!(after_writing >= 1, "a writer's close sent no FLUSH");

    // A reader's does not: nothing is buffered on the read path, and its
    // close(2) would wait for the agent's answer.
    let before_reading = opens();
    for _ in 0..5 {
        assert_eq!(node.pod.read("rw/existing").unwrap(), b"old bytes");
    }
    assert!(opens() >= before_reading + 5, "each read opened the file");
    assert_eq!(flushes(), after_writing, "a reader's close sent FLUSH");
}

/// Runs `script` with `sh -c` in the pod (as root unless it says otherwise)
/// and panics with its output and the agent's log if it fails.
fn pod_sh(node: &support::Node, script: &str) -> String {
    let run = node.pod.exec(
        &["sh", "-c", &format!("set -e\n{script}")],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{script}\nfailed ({}): {stdout}\n{}\nagent log:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        node.agent.log()
    );
    stdout
}

#[test]
fn pod_users_and_archive_tools_write_into_a_read_write_dataset() {
    support::require_tool("rsync", "rsync");
    let (garage, node) = read_write_dataset("team", |spec| {
        spec["source"]["s3"]["uid"] = json!(65534);
        spec["source"]["s3"]["gid"] = json!(65534);
    });
    let dir = tempfile::tempdir().unwrap();
    let view = node.pod.view().join("rw");
    let view = view.display();

    // A pod that does not run as root writes into the dataset given to it
    // (EACCES before: directories were 0755 root).
    let owner = pod_sh(
        &node,
        &format!(
            "setpriv --reuid 65534 --regid 65534 --clear-groups sh -c 'echo mine > {view}/by-nobody.txt'
stat -c %u:%g:%a {view}/by-nobody.txt {view}"
        ),
    );
    assert_eq!(owner, "65534:65534:644\n65534:65534:755\n");
    assert_eq!(garage.get_object("team", "by-nobody.txt"), b"mine\n");

    // A source tree with another owner and executable modes.
    let source = dir.path().join("src");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let payload = object_bytes(9, 3 * 1024 * 1024 + 5);
    std::fs::write(source.join("data.bin"), &payload).unwrap();
    std::fs::write(source.join("sub/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    let source = source.display();
    let archive = dir.path().join("tree.tar");
    let archive = archive.display();
    // tar as root keeps owners and modes by default, cp -a and rsync -a
    // preserve them: each changes owner and mode (accepted without effect,
    // as SEMANTICS.md says) and exits 0. rsync renames its temporary file;
    // mv of a directory gets EXDEV and copies it.
    pod_sh(
        &node,
        &format!(
            "chmod 0755 {source}/sub/run.sh
tar --owner=1234 --group=1234 -C {source} -cf {archive} .
mkdir {view}/untar && tar -xf {archive} -C {view}/untar
cp -a {source} {view}/cpa
rsync -a {source}/ {view}/rsynced/
mv {view}/cpa {view}/moved"
        ),
    );
    for copy in ["untar", "rsynced", "moved"] {
        wait_object(&garage, "team", &format!("{copy}/data.bin"), &payload);
        wait_object(
            &garage,
            "team",
            &format!("{copy}/sub/run.sh"),
            b"#!/bin/sh\necho run\n",
        );
    }
    let keys = garage.list_objects("team", None);
    assert!(
        !keys
            .iter()
            .any(|key| key.starts_with("cpa/") || key.contains("/.")),
        "no moved-away or temporary objects left: {keys:?}"
    );

    // A name looked up before it existed appears within the negative TTL
    // (1 s by default), not the 60 s metadata TTL.
    let missing = node.pod.read("rw/late.txt");
    assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    garage.put_object("team", "late.txt", b"late\n");
    let appeared = support::wait_readable(&node.pod, "rw/late.txt", Duration::from_secs(10))
        .expect("a new object appears");
    eprintln!("figure: new object readable {appeared:?} after a cached miss (negative TTL 1s)");
    assert!(appeared < Duration::from_secs(3), "took {appeared:?}");

    // Python's open() asks whether the file is a terminal (an ioctl): the
    // answer is ENOTTY, logged once, not once per open.
    pod_sh(
        &node,
        &format!(
            "/usr/bin/python3 -c \"[open('{view}/by-nobody.txt').read() for _ in range(50)]\""
        ),
    );
    let log = node.agent.log();
    let ioctl_lines = log
        .lines()
        .filter(|line| line.contains("not supported") && line.contains("ioctl"))
        .count();
    assert!(ioctl_lines <= 1, "ioctl logged {ioctl_lines} times:\n{log}");
    assert!(!log.contains("Not Implemented"), "{log}");
}
