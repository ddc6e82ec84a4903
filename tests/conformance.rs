//! Conformance: the same operations, run by the ordinary tools a pod runs,
//! against hotmount, s3fs and rclone mount on one Garage bucket, and a table
//! of the results side by side (like `scripts/bench-s3.sh` for speed). Key
//! names (unicode, spaces and `%+#?&=`, control characters, dot segments,
//! 255- and 256-byte components), file/directory collisions and markers,
//! sizes at the prefetch edges, listings past 1,000 entries, a new object
//! appearing, every common writer, a non-root user and parallel readers.
//!
//! hotmount must pass every case (doc/SEMANTICS.md promises each of them);
//! the peers' results are printed, not asserted. `pip download` is left out:
//! it needs a package index, and tests reach no network. Peers run as users configure them for
//! this: s3fs with `allow_other` and the pod user's uid/gid, rclone mount with
//! `--vfs-cache-mode writes` (without it rclone refuses most writers) and the
//! same uid/gid. Needs root, /dev/fuse, Garage, s3fs, rclone, rsync.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::{ExternalMount, Garage, Node, object_bytes, wait_readable};

/// The pod user every dataset is given to.
const POD_UID: u32 = 65534;
/// Object sizes at the read path's edges: empty, one byte, around a 4 MiB
/// part, past the 32 MiB window.
const SIZES: [u64; 6] = [0, 1, 4_194_303, 4_194_304, 4_194_305, 33_554_433];
/// Keys in one directory (two listing pages).
const MANY: usize = 1500;

/// One case: a shell script run in the pod as root (`M` is the mount, `W` a
/// directory of the mount for this tool's writes, `SRC` a local source tree),
/// exit 0 for a pass.
struct Case {
    name: &'static str,
    script: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "unicode key",
        script: r#"[ "$(cat "$M/keys/unicode/données-日本.txt")" = u ]"#,
    },
    Case {
        name: "spaces and %+#?&= in a key",
        script: r#"[ "$(cat "$M/keys/special/a b%+#?&=.txt")" = s ]"#,
    },
    Case {
        name: "a control-character key: siblings list and read",
        script: r#"ls "$M/keys/ctrl" | grep -qx ok.txt && [ "$(cat "$M/keys/ctrl/ok.txt")" = ok ]"#,
    },
    Case {
        name: "dot and empty segments: siblings list",
        script: r#"ls "$M/keys/dots" | grep -qx ok.txt && [ "$(cat "$M/keys/dots/ok.txt")" = ok ]"#,
    },
    Case {
        name: "a 255-byte name reads",
        script: r#"[ "$(cat "$M/keys/long/$(printf 'n%.0s' $(seq 255))")" = l ]"#,
    },
    Case {
        name: "a 256-byte name: its directory lists",
        script: r#"ls "$M/keys/long" | grep -qx "$(printf 'n%.0s' $(seq 255))""#,
    },
    Case {
        name: "find over all odd keys exits 0",
        script: r#"find "$M/keys" >/dev/null"#,
    },
    Case {
        name: "object x and keys below x/: a directory",
        script: r#"[ -d "$M/keys/collide/x" ] && [ "$(cat "$M/keys/collide/x/y")" = y ]"#,
    },
    Case {
        name: "folder marker: a directory, not a file",
        script: r#"[ -d "$M/keys/marker" ] && [ "$(ls "$M/keys/marker")" = in.txt ]"#,
    },
    Case {
        name: "sizes 0, 1, 4Mi-1, 4Mi, 4Mi+1, 32Mi+1 byte for byte",
        script: r#"for f in "$SRC"/sizes/*; do cmp "$f" "$M/keys/sizes/$(basename "$f")" || exit 1; done"#,
    },
    Case {
        name: "a listing of 1,500 keys",
        script: r#"[ "$(ls "$M/keys/many" | wc -l)" = 1500 ]"#,
    },
    Case {
        name: "4 parallel readers of one 32 MiB file",
        script: r#"pids=; for i in 1 2 3 4; do cmp "$SRC/sizes/s-33554433" "$M/keys/sizes/s-33554433" & pids="$pids $!"; done; for p in $pids; do wait "$p" || exit 1; done"#,
    },
    Case {
        name: "a new object appears within 2 s",
        script: r#"ls "$M/keys/fresh" >/dev/null 2>&1; cat "$M/keys/fresh/new" 2>/dev/null; touch "$SRC/fresh-$TOOL"; for i in $(seq 40); do [ "$(cat "$M/keys/fresh/new" 2>/dev/null)" = new ] && exit 0; sleep 0.05; done; exit 1"#,
    },
    Case {
        name: "shell redirection",
        script: r#"echo hi > "$W/redirect" && { echo a; echo b; } > "$W/group" && [ "$(cat "$W/redirect")" = hi ] && [ "$(cat "$W/group")" = "$(printf 'a\nb')" ]"#,
    },
    Case {
        name: "dd of=",
        script: r#"head -c 3000000 /dev/zero | dd of="$W/dd" bs=65536 iflag=fullblock status=none && [ "$(wc -c < "$W/dd")" = 3000000 ]"#,
    },
    Case {
        name: "exec 3> and a child writing through it",
        script: r#"exec 3> "$W/fd3"; echo one >&3; (echo two >&3); echo three >&3; exec 3>&-; [ "$(cat "$W/fd3")" = "$(printf 'one\ntwo\nthree')" ]"#,
    },
    Case {
        name: "python write",
        script: r#"/usr/bin/python3 -c "open('$W/py', 'w').write('py')" && [ "$(cat "$W/py")" = py ]"#,
    },
    Case {
        name: "cp of a 20 MiB file",
        script: r#"cp "$SRC/tree/data.bin" "$W/cp.bin" && cmp "$SRC/tree/data.bin" "$W/cp.bin""#,
    },
    Case {
        name: "tar xf (as root: owners and modes)",
        script: r#"mkdir "$W/tar" && tar -xf "$SRC/tree.tar" -C "$W/tar" && cmp "$SRC/tree/data.bin" "$W/tar/data.bin""#,
    },
    Case {
        name: "cp -a",
        script: r#"cp -a "$SRC/tree" "$W/cpa" && cmp "$SRC/tree/sub/run.sh" "$W/cpa/sub/run.sh""#,
    },
    Case {
        name: "rsync -a",
        script: r#"rsync -a "$SRC/tree/" "$W/rsync/" && cmp "$SRC/tree/data.bin" "$W/rsync/data.bin""#,
    },
    Case {
        name: "mv of a file",
        script: r#"echo m > "$W/mv1" && mv "$W/mv1" "$W/mv2" && [ "$(cat "$W/mv2")" = m ] && [ ! -e "$W/mv1" ]"#,
    },
    Case {
        name: "mv of a directory",
        script: r#"mkdir "$W/d1" && echo x > "$W/d1/f" && mv "$W/d1" "$W/d2" && [ "$(cat "$W/d2/f")" = x ] && [ ! -e "$W/d1" ]"#,
    },
    Case {
        name: "non-root pod user writes and reads back",
        script: r#"setpriv --reuid 65534 --regid 65534 --clear-groups sh -c "echo n > '$W/nobody' && [ \"\$(cat '$W/nobody')\" = n ]""#,
    },
    Case {
        name: "git clone",
        script: r#"git clone -q "$SRC/repo" "$W/repo" && cmp "$SRC/repo/README" "$W/repo/README" && git -c safe.directory='*' -C "$W/repo" log --oneline | grep -q first"#,
    },
    Case {
        name: "unlink, mkdir, rmdir",
        script: r#"echo u > "$W/gone" && rm "$W/gone" && [ ! -e "$W/gone" ] && mkdir "$W/empty" && rmdir "$W/empty""#,
    },
];

/// Plants the keys the read cases look at, under `keys/`.
fn plant_keys(garage: &Garage, src: &Path) {
    let bucket = "shared";
    // Raw: object_store percent-encodes non-ASCII bytes and %#? in keys.
    garage.put_raw_object(bucket, "keys/unicode/données-日本.txt", b"u");
    garage.put_raw_object(bucket, "keys/special/a b%+#?&=.txt", b"s");
    for key in ["keys/ctrl/ok.txt", "keys/dots/ok.txt"] {
        garage.put_object(bucket, key, b"ok");
    }
    for key in [
        "keys/ctrl/bad\nname",
        "keys/ctrl/tab\there",
        "keys/dots/../escape",
        "keys/dots//double",
        "keys/dots/./self",
    ] {
        garage.put_raw_object(bucket, key, b"planted");
    }
    garage.put_object(bucket, &format!("keys/long/{}", "n".repeat(255)), b"l");
    garage.put_object(
        bucket,
        &format!("keys/long/{}", "n".repeat(256)),
        b"too long",
    );
    garage.put_object(
        bucket,
        "keys/collide/x",
        b"an object hidden by the directory",
    );
    garage.put_object(bucket, "keys/collide/x/y", b"y");
    garage.put_raw_object(bucket, "keys/marker/", b"");
    garage.put_object(bucket, "keys/marker/in.txt", b"in");
    std::fs::create_dir_all(src.join("sizes")).unwrap();
    for (seed, size) in SIZES.iter().enumerate() {
        let bytes = object_bytes(seed as u64 + 100, *size);
        garage.put_object(bucket, &format!("keys/sizes/s-{size}"), &bytes);
        std::fs::write(src.join(format!("sizes/s-{size}")), &bytes).unwrap();
    }
    let many = (0..MANY)
        .map(|i| (format!("keys/many/f-{i:04}"), b"m".to_vec()))
        .collect();
    garage.put_objects(bucket, many);
}

/// The local source tree of the writer cases (and a tar of it with another
/// owner), under `src`.
fn make_source_tree(src: &Path) {
    let tree = src.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("data.bin"), object_bytes(7, 20 * 1024 * 1024)).unwrap();
    std::fs::write(tree.join("sub/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "chmod 0755 {tree}/sub/run.sh && tar --owner=1234 --group=1234 -C {tree} -cf {src}/tree.tar . \
             && git init -q {src}/repo && echo readme > {src}/repo/README \
             && git -C {src}/repo add README \
             && git -C {src}/repo -c user.name=t -c user.email=t@t commit -q -m first",
            tree = tree.display(),
            src = src.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "make the source tar");
}

/// A mounted tool: its mount point in the pod's view.
struct Mounted {
    name: &'static str,
    in_pod: PathBuf,
    _external: Option<ExternalMount>,
}

fn mount_tools(node: &Node, garage: &Garage, secrets: &Path) -> Vec<Mounted> {
    let mut tools = Vec::new();
    let mut spec = garage.spec("shared", json!({"secret": "garage"}));
    spec["readOnly"] = json!(false);
    spec["source"]["s3"]["uid"] = json!(POD_UID);
    spec["source"]["s3"]["gid"] = json!(POD_UID);
    let (status, body) = node.call("PUT", "/v1/mounts/hotmount", Some(&spec));
    assert_eq!(status, 201, "mount hotmount: {body}");
    tools.push(Mounted {
        name: "hotmount",
        in_pod: node.pod.view().join("hotmount"),
        _external: None,
    });

    let passwd = secrets.join("s3fs-passwd");
    garage.write_s3fs_passwd(&passwd);
    let target = node.root().join("s3fs");
    let options = format!("allow_other,uid={POD_UID},gid={POD_UID},umask=0022,mp_umask=0022");
    let s3fs = ExternalMount::spawn(
        &mut garage.s3fs_command_with("shared", &passwd, &target, &options),
        &target,
    );
    tools.push(Mounted {
        name: "s3fs",
        in_pod: node.pod.view().join("s3fs"),
        _external: Some(s3fs),
    });

    let target = node.root().join("rclone");
    let uid = POD_UID.to_string();
    let rclone = ExternalMount::spawn(
        &mut garage.rclone_command(
            "shared",
            &target,
            &["--vfs-cache-mode", "writes", "--uid", &uid, "--gid", &uid],
        ),
        &target,
    );
    tools.push(Mounted {
        name: "rclone",
        in_pod: node.pod.view().join("rclone"),
        _external: Some(rclone),
    });
    for tool in &tools {
        wait_readable(
            &node.pod,
            &format!("{}/keys/ctrl/ok.txt", tool.name),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{} did not mount: {e}", tool.name));
    }
    tools
}

#[test]
fn the_same_operations_against_hotmount_s3fs_and_rclone() {
    support::require_fuse();
    for (tool, package) in [("s3fs", "s3fs"), ("rclone", "rclone"), ("rsync", "rsync")] {
        support::require_tool(tool, package);
    }
    let garage = Garage::start();
    garage.create_bucket("shared");
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    plant_keys(&garage, &src);
    make_source_tree(&src);
    let node = Node::start(&["--metadata-ttl", "1s"]);
    garage.write_credentials_file(&node.credentials_dir().join("garage"));
    let tools = mount_tools(&node, &garage, scratch.path());

    // results[case][tool]: None = pass, Some(why) = fail.
    let mut results: Vec<Vec<Option<String>>> = Vec::new();
    for case in CASES {
        let mut row = Vec::new();
        for tool in &tools {
            let write_dir = tool.in_pod.join(format!("w-{}", tool.name));
            let fresh = src.join(format!("fresh-{}", tool.name));
            let plant_fresh = case.name.starts_with("a new object");
            let script = format!(
                "export M='{m}' W='{w}' SRC='{src}' TOOL='{tool}'\nmkdir -p \"$W\"\n{body}",
                m = tool.in_pod.display(),
                w = write_dir.display(),
                src = src.display(),
                tool = tool.name,
                body = case.script
            );
            let run = if plant_fresh {
                // The object is uploaded while the script polls for it (the
                // script primes the caches, then signals with a file).
                let pid = node.pod.pid().to_string();
                let child = std::process::Command::new("nsenter")
                    .args([
                        "-t", &pid, "-m", "--", "timeout", "-s", "KILL", "60", "bash", "-c",
                    ])
                    .arg(&script)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                support::poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
                    fresh.exists().then_some(())
                });
                garage.put_object("shared", "keys/fresh/new", b"new");
                let output = child.wait_with_output().unwrap();
                garage.delete_object("shared", "keys/fresh/new");
                let _ = std::fs::remove_file(&fresh);
                output
            } else {
                node.pod
                    .exec(&["bash", "-c", &script], Duration::from_secs(120))
            };
            row.push((!run.status.success()).then(|| {
                let stderr = String::from_utf8_lossy(&run.stderr);
                let line = stderr.lines().last().unwrap_or("").trim();
                format!(
                    "exit {:?} {}",
                    run.status.code(),
                    line.chars().take(80).collect::<String>()
                )
            }));
        }
        results.push(row);
    }

    println!("\nconformance on one Garage bucket (✓ passes, ✗ fails)");
    println!(
        "| case | {} |",
        tools.iter().map(|t| t.name).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(tools.len()));
    for (case, row) in CASES.iter().zip(&results) {
        let cells: Vec<&str> = row
            .iter()
            .map(|r| if r.is_none() { "✓" } else { "✗" })
            .collect();
        println!("| {} | {} |", case.name, cells.join(" | "));
    }
    for (case, row) in CASES.iter().zip(&results) {
        for (tool, result) in tools.iter().zip(row) {
            if let Some(why) = result {
                println!("  {} / {}: {why}", case.name, tool.name);
            }
        }
    }
    let passes = |i: usize| results.iter().filter(|row| row[i].is_none()).count();
    println!(
        "passed: {}",
        tools
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{} {}/{}", t.name, passes(i), CASES.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failed: Vec<String> = CASES
        .iter()
        .zip(&results)
        .filter_map(|(case, row)| row[0].as_ref().map(|why| format!("{}: {why}", case.name)))
        .collect();
    assert!(
        failed.is_empty(),
        "hotmount fails cases doc/SEMANTICS.md promises:\n{}\nagent log:\n{}",
        failed.join("\n"),
        node.agent.log()
    );
}
