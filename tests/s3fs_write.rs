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

#[test]
fn writes_through_a_real_mount_become_objects() {
    support::require_fuse();
    let garage = support::Garage::start();
    garage.create_bucket("writable");
    garage.put_object("writable", "existing", b"old bytes");
    garage.put_object("writable", "full/inner", b"x");
    let node = support::Node::start(&[]);
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let mut spec = garage.spec("writable", json!({"secret": "garage"}));
    spec["readOnly"] = json!(false);
    let (status, body) = node.call("PUT", "/v1/mounts/rw", Some(&spec));
    assert_eq!(status, 201, "mount: {body}\n{}", node.agent.log());
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
    assert!(garage.get_object("writable", "empty").is_empty());

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
            let rename = std::fs::rename(&existing, root.join("renamed"));
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
    assert_eq!(errno_of("rename", rename), libc::EOPNOTSUPP);
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
