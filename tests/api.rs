//! API tier: the real router and manager, driven with `oneshot` requests, over
//! the recording fake Mounter (no kernel, no root). Covers the contract of
//! DESIGN.md §3: status codes, error bodies, idempotency, serialisation,
//! nothing left behind on failure, reconcile on start, probes and recovery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use hotmount::api::{TokenSet, router, router_with_tokens};
use hotmount::manager::{Manager, ManagerConfig};
use hotmount::metrics::Metrics;
use hotmount::s3fs::{CredentialsDir, FileEndpointPolicy};
use hotmount::state::StateStore;
use hotmount::sys::{MountEntry, Mounter, RecordedCall, RecordingMounter, UnmountMode};
use http_body_util::BodyExt;
use nix::errno::Errno;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    dir: tempfile::TempDir,
    fake: Arc<RecordingMounter>,
    manager: Manager,
    app: Router,
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn buckets(&self) -> PathBuf {
        self.dir.path().join("buckets")
    }

    /// The agent's `--credentials-dir`.
    fn creds(&self) -> PathBuf {
        self.dir.path().join("creds")
    }

    /// An S3 spec with `credentials` against an endpoint nothing listens on:
    /// credentials that can be read get as far as 502 `BackendUnreachable`.
    fn s3_spec_with(&self, credentials: Value) -> Value {
        json!({"source": {"s3": {"bucket": "data", "endpoint": "http://127.0.0.1:9",
            "pathStyle": true, "credentials": credentials}}})
    }

    /// Asserts a failed PUT of `name` left no directory, no entry, no state.
    async fn assert_nothing_left(&self, name: &str) {
        assert!(!self.root().join(name).exists(), "{name}: directory left");
        let (status, _) = self
            .send(Method::GET, &format!("/v1/mounts/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}: still listed");
        let state = std::fs::read_to_string(self.state_file()).unwrap_or_default();
        assert!(!state.contains(&format!("\"{name}\"")), "{name}: {state}");
        assert!(
            !self
                .fake
                .calls()
                .iter()
                .any(|c| matches!(c, RecordedCall::MountFuse(_))),
            "{name}: nothing was mounted"
        );
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/mounts.json")
    }

    fn s3_spec(&self, bucket: &str) -> Value {
        json!({"source": {"s3": {"bucket": bucket, "endpoint": format!("file://{}", self.buckets().display())}}})
    }

    fn mounts_at(&self, path: &Path) -> Vec<MountEntry> {
        self.fake
            .mount_table()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_point == path)
            .collect()
    }

    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        send(
            &self.app,
            method,
            uri,
            body.map(|b| b.to_string().into_bytes()),
            None,
        )
        .await
    }
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    } else {
        // As the unix socket's listener says: root on the node.
        request = request.extension(hotmount::api::listener::Peer::Uid(0));
    }
    let request = request.body(Body::from(body.unwrap_or_default())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn config_for(dir: &Path) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir.join("root"));
    config.file_policy = FileEndpointPolicy {
        allowed_dirs: vec![dir.join("buckets")],
    };
    config.credentials_dir = CredentialsDir::new(dir.join("creds"));
    config.probe_interval = Duration::from_millis(100);
    config.probe_timeout = Duration::from_secs(2);
    config.mount_timeout = Duration::from_secs(5);
    config
}

async fn start(
    dir: tempfile::TempDir,
    fake: Arc<RecordingMounter>,
    tune: impl FnOnce(&mut ManagerConfig),
) -> Result<Fixture, hotmount::manager::ManagerError> {
    std::fs::create_dir_all(dir.path().join("buckets/data/images")).unwrap();
    std::fs::write(dir.path().join("buckets/data/images/cat.jpg"), b"meow").unwrap();
    std::fs::create_dir_all(dir.path().join("buckets/other")).unwrap();
    std::fs::create_dir_all(dir.path().join("creds")).unwrap();
    let mut config = config_for(dir.path());
    tune(&mut config);
    let store = StateStore::open(&dir.path().join("state")).unwrap();
    let manager = Manager::new(config, fake.clone(), store, Arc::new(Metrics::new()));
    manager.start().await?;
    let app = router(manager.clone());
    Ok(Fixture {
        dir,
        fake,
        manager,
        app,
    })
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// [`fixture`] with its configuration changed by `tune`.
async fn fixture_with(tune: impl FnOnce(&mut ManagerConfig)) -> Fixture {
    start(
        tempfile::tempdir().unwrap(),
        Arc::new(RecordingMounter::new()),
        tune,
    )
    .await
    .unwrap()
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let f = fixture().await;
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/images", Some(f.s3_spec("data")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "Mounted");
    assert_eq!(body["path"], f.root().join("images").display().to_string());
    assert_eq!(body["readOnly"], true);
    assert_eq!(body["generation"], 1);
    assert!(f.root().join("images").is_dir());
    assert_eq!(f.mounts_at(&f.root().join("images")).len(), 1);
    let state: Value = serde_json::from_slice(&std::fs::read(f.state_file()).unwrap()).unwrap();
    assert!(
        state["mounts"]["images"].is_object(),
        "acknowledged only once on disk: {state}"
    );

    let (status, body) = f.send(Method::GET, "/v1/mounts/images", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "images");
    let (status, body) = f.send(Method::GET, "/v1/mounts", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    let (status, _) = f.send(Method::DELETE, "/v1/mounts/images", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = f.send(Method::GET, "/v1/mounts/images", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NotFound");
    assert!(
        !f.root().join("images").exists(),
        "the directory goes with the mount"
    );
    assert!(f.mounts_at(&f.root().join("images")).is_empty());
    let state: Value = serde_json::from_slice(&std::fs::read(f.state_file()).unwrap()).unwrap();
    assert!(state["mounts"]["images"].is_null());
    let (status, _) = f.send(Method::DELETE, "/v1/mounts/images", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn put_is_idempotent_and_conflicts_on_another_spec() {
    let f = fixture().await;
    let spec = f.s3_spec("data");
    let (status, _) = f
        .send(Method::PUT, "/v1/mounts/ds", Some(spec.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = f.send(Method::PUT, "/v1/mounts/ds", Some(spec)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("other")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "SpecConflict");
    let mounts = f
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, RecordedCall::MountFuse(_)))
        .count();
    assert_eq!(mounts, 1, "an identical PUT must not mount again");
}

#[tokio::test]
async fn bad_inputs_get_clear_errors_and_leave_nothing() {
    let f = fixture().await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        ("/v1/mounts/Bad_Name", f.s3_spec("data").to_string().into_bytes(), StatusCode::BAD_REQUEST, "InvalidName", "name"),
        ("/v1/mounts/-x", f.s3_spec("data").to_string().into_bytes(), StatusCode::BAD_REQUEST, "InvalidName", "name"),
        ("/v1/mounts/ok", br#"{"source":{"s3":{"bucket":"data","extra":1}}}"#.to_vec(), StatusCode::BAD_REQUEST, "InvalidSpec", "source.s3"),
        ("/v1/mounts/ok", br#"{"source":{"nfs":{"server":"10.0.0.5","export":"/x","nconnect":99}}}"#.to_vec(), StatusCode::BAD_REQUEST, "InvalidSpec", "source.nfs.nconnect"),
        ("/v1/mounts/ok", br#"{"source":{"nfs":{"server":"10.0.0.5","export":"/x","options":"rw,suid"}}}"#.to_vec(), StatusCode::BAD_REQUEST, "InvalidSpec", "options"),
        ("/v1/mounts/ok", b"{not json".to_vec(), StatusCode::BAD_REQUEST, "InvalidSpec", "request body"),
        ("/v1/mounts/ok", br#"{"source":{}}"#.to_vec(), StatusCode::BAD_REQUEST, "InvalidSpec", "source"),
        ("/v1/mounts/ok", vec![b' '; 70 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "bytes"),
        ("/v1/mounts/ok", br#"{"source":{"s3":{"bucket":"missing","endpoint":"file:///nonexistent"}}}"#.to_vec(), StatusCode::FORBIDDEN, "EndpointNotAllowed", "--allow-file-endpoint"),
        ("/v1/mounts/ok", f.s3_spec("missing").to_string().into_bytes(), StatusCode::BAD_GATEWAY, "BucketNotFound", "missing"),
        ("/v1/mounts/ok", br#"{"source":{"s3":{"bucket":"data","endpoint":"http://127.0.0.1:9","pathStyle":true,"credentials":{"file":"/nonexistent/creds"}}}}"#.to_vec(), StatusCode::FORBIDDEN, "CredentialsNotAllowed", "/nonexistent/creds"),
        ("/v1/mounts/ok", br#"{"source":{"s3":{"bucket":"data","endpoint":"http://127.0.0.1:9","pathStyle":true,"credentials":{"secret":"nonexistent"}}}}"#.to_vec(), StatusCode::BAD_REQUEST, "InvalidCredentials", "nonexistent"),
    ];
    for (uri, body, status, code, mentions) in cases {
        let (got, reply) = send(&f.app, Method::PUT, uri, Some(body), None).await;
        assert_eq!(got, status, "{uri}: {reply}");
        assert_eq!(error_code(&reply), code, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }
    assert!(
        std::fs::read_dir(f.root()).unwrap().next().is_none(),
        "no directory left behind"
    );
    let (_, list) = f.send(Method::GET, "/v1/mounts", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    assert!(
        !f.state_file().exists()
            || !std::fs::read_to_string(f.state_file())
                .unwrap()
                .contains("\"ok\"")
    );
}

#[tokio::test]
async fn a_failing_mount_leaves_no_directory_state_or_entry() {
    let f = fixture().await;
    f.fake.fail("mount_fuse", Errno::EIO);
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(error_code(&body), "MountFailed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/dev/fuse"),
        "{body}"
    );
    assert!(!f.root().join("ds").exists());
    let (status, _) = f.send(Method::GET, "/v1/mounts/ds", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    f.fake.heal();
    let (status, _) = f
        .send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a retry after the failure works"
    );
}

#[tokio::test]
async fn a_hanging_mount_times_out_and_is_undone_when_it_completes() {
    let f = fixture_with(|c| c.mount_timeout = Duration::from_millis(300)).await;
    f.fake.delay("mount", Duration::from_millis(1200));
    let spec = json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/data"}}});
    let started = std::time::Instant::now();
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/slow", Some(spec.clone()))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(error_code(&body), "MountTimeout");
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "the API answers at the deadline"
    );
    // The API keeps answering while the mount hangs.
    let (status, _) = f.send(Method::GET, "/v1/mounts", None).await;
    assert_eq!(status, StatusCode::OK);
    // No second mount call on the path while the first is in the kernel.
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/slow", Some(spec.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "MountInProgress");
    let mount_calls = || {
        f.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, RecordedCall::Mount(r) if r.fstype == "nfs4"))
            .count()
    };
    // The late mount completes and is undone: nothing remains.
    let path = f.root().join("slow");
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if f.mounts_at(&path).is_empty()
            && !path.exists()
            && started.elapsed() > Duration::from_millis(1300)
        {
            break;
        }
    }
    assert!(f.mounts_at(&path).is_empty(), "late mount was undone");
    assert!(!path.exists(), "directory removed");
    assert_eq!(mount_calls(), 1, "one mount call, not two");
    let (status, _) = f.send(Method::GET, "/v1/mounts/slow", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Once the call has returned, the path takes a mount again.
    // (The clean-up task clears the guard right after removing the directory.)
    f.fake.heal();
    let mut reply = f
        .send(Method::PUT, "/v1/mounts/slow", Some(spec.clone()))
        .await;
    for _ in 0..40 {
        if reply.0 != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = f
            .send(Method::PUT, "/v1/mounts/slow", Some(spec.clone()))
            .await;
    }
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);
    assert_eq!(mount_calls(), 2);
}

#[tokio::test]
async fn mount_calls_stuck_in_the_kernel_are_capped_and_the_cap_frees_itself() {
    use hotmount::manager::MAX_MOUNTS_IN_KERNEL;
    let f = fixture_with(|c| c.mount_timeout = Duration::from_millis(200)).await;
    // NFS servers that never answer: every mount call stays in the kernel.
    f.fake.delay("mount", Duration::from_secs(3));
    let spec =
        |n: usize| json!({"source": {"nfs": {"server": format!("10.0.2.{n}"), "export": "/data"}}});
    let stuck = futures::future::join_all((0..MAX_MOUNTS_IN_KERNEL).map(|n| {
        let spec = spec(n);
        let f = &f;
        async move {
            f.send(Method::PUT, &format!("/v1/mounts/hung-{n}"), Some(spec))
                .await
        }
    }))
    .await;
    for (status, body) in &stuck {
        assert_eq!(*status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    }
    // One more, of any name, is refused at once: no blocking thread is spent.
    let started = std::time::Instant::now();
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/one-more", Some(spec(200)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "TooManyHungMounts");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "refused without waiting"
    );
    assert!(!f.root().join("one-more").exists(), "nothing left behind");
    // The API answers meanwhile.
    let (status, _) = f.send(Method::GET, "/v1/mounts", None).await;
    assert_eq!(status, StatusCode::OK);
    // Once the kernel gives the calls back, mounts work again.
    f.fake.heal();
    let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = f
            .send(Method::PUT, "/v1/mounts/one-more", Some(spec(200)))
            .await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
    }
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
}

#[tokio::test]
async fn same_name_calls_are_serialised_and_different_names_run_in_parallel() {
    let f = fixture().await;
    f.fake.delay("mount_fuse", Duration::from_millis(300));
    let spec = f.s3_spec("data");
    let same = futures::future::join_all(
        (0..3).map(|_| f.send(Method::PUT, "/v1/mounts/same", Some(spec.clone()))),
    )
    .await;
    let mut statuses: Vec<u16> = same.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 201]);
    assert_eq!(
        f.fake.max_concurrent_calls(),
        1,
        "one name: one mount at a time"
    );
    let names = ["a1", "a2", "a3"];
    let different = futures::future::join_all(names.iter().map(|n| {
        f.send(
            Method::PUT,
            Box::leak(format!("/v1/mounts/{n}").into_boxed_str()),
            Some(spec.clone()),
        )
    }))
    .await;
    assert!(different.iter().all(|(s, _)| *s == StatusCode::CREATED));
    assert!(
        f.fake.max_concurrent_calls() >= 2,
        "different names proceed in parallel"
    );
}

#[tokio::test]
async fn wait_returns_at_the_state_or_times_out() {
    let f = fixture().await;
    f.send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Mounted&timeout=1s", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Failed&timeout=150ms", None)
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(error_code(&body), "WaitTimeout");
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Sleeping", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("wait"));
    let (status, _) = f
        .send(
            Method::GET,
            "/v1/mounts/ds?wait=Mounted&timeout=forever",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = f.send(Method::GET, "/v1/mounts/ds?bogus=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_busy_mount_is_kept_unless_forced() {
    let f = fixture().await;
    f.send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    f.fake.fail("unmount_normal", Errno::EBUSY);
    let (status, body) = f.send(Method::DELETE, "/v1/mounts/ds", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "Busy");
    let (status, body) = f.send(Method::GET, "/v1/mounts/ds", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["state"], "Mounted",
        "a refused DELETE leaves the dataset as it was"
    );
    assert_eq!(f.mounts_at(&f.root().join("ds")).len(), 1);
    let (status, _) = f
        .send(Method::DELETE, "/v1/mounts/ds?force=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.mounts_at(&f.root().join("ds")).is_empty());
    assert!(f.fake.calls().contains(&RecordedCall::Unmount(
        f.root().join("ds"),
        UnmountMode::Lazy
    )));
}

#[tokio::test]
async fn nfs_mounts_get_typed_kernel_options() {
    let f = fixture().await;
    let spec = json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/data", "version": "4.1",
        "nconnect": 4, "soft": true, "timeoSeconds": 60}}, "readOnly": false});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/nfs-ds", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mount = f
        .fake
        .calls()
        .into_iter()
        .find_map(|c| match c {
            RecordedCall::Mount(m) if m.fstype == "nfs4" => Some(m),
            _ => None,
        })
        .expect("an nfs4 mount");
    assert_eq!(mount.source, "10.0.2.2:/data");
    assert_eq!(mount.target, f.root().join("nfs-ds"));
    assert!(mount.flags.nosuid && mount.flags.nodev && !mount.flags.read_only);
    for option in [
        "vers=4.1",
        "addr=10.0.2.2",
        "nconnect=4",
        "soft",
        "timeo=600",
    ] {
        assert!(
            mount.data.split(',').any(|o| o == option),
            "{option} missing in {}",
            mount.data
        );
    }
}

/// Keys that must never be used or shown: those of a file outside the
/// credentials directory.
const OUTSIDE_KEYS: &str = "access_key_id=AKOUTSIDEKEY\nsecret_access_key=outside-secret-value\n";

#[tokio::test]
async fn credentials_by_secret_name() {
    let f = fixture().await;
    std::fs::write(
        f.creds().join("datasets"),
        "access_key_id=AKINSIDE\nsecret_access_key=inside-secret\n",
    )
    .unwrap();
    std::fs::write(
        f.creds().join("garbage"),
        "root:$6$hashedpassword:19000::\n",
    )
    .unwrap();
    std::fs::write(f.dir.path().join("outside-keys"), OUTSIDE_KEYS).unwrap();
    std::os::unix::fs::symlink(f.dir.path().join("outside-keys"), f.creds().join("escape"))
        .unwrap();
    std::os::unix::fs::symlink("../outside-keys", f.creds().join("escape-relative")).unwrap();
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        // Read, used to sign, and the (closed) endpoint is what fails.
        (
            "good",
            json!({"secret": "datasets"}),
            StatusCode::BAD_GATEWAY,
            "BackendUnreachable",
            "127.0.0.1:9",
        ),
        (
            "good-path",
            json!({"file": f.creds().join("datasets")}),
            StatusCode::BAD_GATEWAY,
            "BackendUnreachable",
            "127.0.0.1:9",
        ),
        (
            "dotdot",
            json!({"secret": "../x"}),
            StatusCode::BAD_REQUEST,
            "InvalidSpec",
            "source.s3.credentials.secret",
        ),
        (
            "slash",
            json!({"secret": "a/b"}),
            StatusCode::BAD_REQUEST,
            "InvalidSpec",
            "source.s3.credentials.secret",
        ),
        (
            "absolute",
            json!({"secret": "/etc/shadow"}),
            StatusCode::BAD_REQUEST,
            "InvalidSpec",
            "source.s3.credentials.secret",
        ),
        (
            "missing",
            json!({"secret": "nope"}),
            StatusCode::BAD_REQUEST,
            "InvalidCredentials",
            "credentials secret nope",
        ),
        (
            "garbage",
            json!({"secret": "garbage"}),
            StatusCode::BAD_REQUEST,
            "InvalidCredentials",
            "line 1",
        ),
        (
            "escape",
            json!({"secret": "escape"}),
            StatusCode::FORBIDDEN,
            "CredentialsNotAllowed",
            "escape",
        ),
        (
            "escape-rel",
            json!({"secret": "escape-relative"}),
            StatusCode::FORBIDDEN,
            "CredentialsNotAllowed",
            "escape-relative",
        ),
    ];
    for (name, credentials, want, code, mentions) in cases {
        let (status, body) = f
            .send(
                Method::PUT,
                &format!("/v1/mounts/{name}"),
                Some(f.s3_spec_with(credentials)),
            )
            .await;
        assert_eq!(status, want, "{name}: {body}");
        assert_eq!(error_code(&body), code, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mentions),
            "{name}: {message:?} should mention {mentions:?}"
        );
        let text = body.to_string();
        for content in [
            "inside-secret",
            "AKOUTSIDEKEY",
            "outside-secret",
            "hashedpassword",
            "root:",
        ] {
            assert!(
                !text.contains(content),
                "{name}: file content in the answer: {text}"
            );
        }
        f.assert_nothing_left(name).await;
    }
}

#[tokio::test]
async fn secrets_are_never_echoed() {
    let f = fixture().await;
    let spec = json!({"source": {"s3": {"bucket": "data", "endpoint": format!("file://{}", f.buckets().display()),
        "credentials": {"inline": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "very-secret-value"}}}}});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/sec", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = f.send(Method::GET, "/v1/mounts", None).await;
    for text in [body.to_string(), list.to_string()] {
        assert!(!text.contains("very-secret-value"), "{text}");
        assert!(text.contains("AKIAEXAMPLE"));
    }
    let (_, metrics) = send(&f.app, Method::GET, "/metrics", None, None).await;
    assert!(!metrics.to_string().contains("very-secret-value"));
}

#[tokio::test]
async fn tcp_router_requires_a_bearer_token() {
    let f = fixture().await;
    let token = "0123456789abcdef0123";
    let app = router_with_tokens(f.manager.clone(), TokenSet::parse(token).unwrap());
    let (status, body) = send(&app, Method::GET, "/v1/mounts", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "Unauthorized");
    let (status, _) = send(
        &app,
        Method::GET,
        "/v1/mounts",
        None,
        Some("wrong-token-wrong-token"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&app, Method::GET, "/v1/mounts", None, Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    // Refused calls are counted too (an operator sees a token gone wrong).
    let (_, metrics) = send(&app, Method::GET, "/metrics", None, Some(token)).await;
    let refused = r#"hotmount_http_requests_total{code="401",method="GET",route="/v1/mounts"} 2"#;
    assert!(
        metrics.as_str().unwrap_or_default().contains(refused),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_ready_metrics_and_unknown_routes() {
    let f = fixture().await;
    let (status, _) = f.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = f.send(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    f.send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    let (status, text) = send(&f.app, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains(r#"hotmount_mounts{backend="s3",state="Mounted"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"hotmount_mount_operations_total{backend="s3",op="mount",result="success"} 1"#
    ));
    assert!(
        text.contains(
            r#"hotmount_http_requests_total{code="201",method="PUT",route="/v1/mounts/{name}"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("hotmount_build_info{version="));
    let (status, body) = f.send(Method::GET, "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NotFound");
}

#[tokio::test]
async fn a_vanished_mount_is_recovered_at_the_same_path() {
    let f = fixture().await;
    f.send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    let path = f.root().join("ds");
    // Somebody unmounts it behind the agent's back.
    f.fake.unmount(&path, UnmountMode::Lazy).unwrap();
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Degraded&timeout=5s", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Mounted&timeout=10s", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["generation"], 2, "a re-mount bumps the generation");
    assert_eq!(f.mounts_at(&path).len(), 1, "exactly one mount again");
    let text = f.manager.metrics().render();
    assert!(
        text.contains(r#"hotmount_recoveries_total{name="ds",reason="unmounted"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_stacked_mount_is_peeled_to_one() {
    let f = fixture().await;
    f.send(Method::PUT, "/v1/mounts/ds", Some(f.s3_spec("data")))
        .await;
    let path = f.root().join("ds");
    f.fake.preload("tmpfs", "intruder", &path, &[]);
    assert_eq!(f.mounts_at(&path).len(), 2);
    let (status, body) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Degraded&timeout=5s", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = f
        .send(Method::GET, "/v1/mounts/ds?wait=Mounted&timeout=10s", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let entries = f.mounts_at(&path);
    assert_eq!(entries.len(), 1, "never two mounts on one path");
    assert_eq!(entries[0].fstype, "fuse.hotmount");
}

#[tokio::test]
async fn restart_adopts_recreates_and_removes_orphans() {
    let f = fixture().await;
    let nfs = json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/data"}}});
    f.send(Method::PUT, "/v1/mounts/nfs-ds", Some(nfs)).await;
    f.send(Method::PUT, "/v1/mounts/s3-ds", Some(f.s3_spec("data")))
        .await;
    let Fixture {
        dir, fake, manager, ..
    } = f;
    manager.shutdown().await;
    drop(manager);
    // The old process died: its FUSE mount stays in the table, dead; an
    // orphan was mounted by hand.
    std::fs::create_dir_all(dir.path().join("root/orphan")).unwrap();
    fake.preload("tmpfs", "stray", &dir.path().join("root/orphan"), &[]);
    let calls_before = fake.calls().len();
    let f = start(dir, fake, |_| {}).await.unwrap();
    let new_calls = f.fake.calls()[calls_before..].to_vec();
    let root = f.root();
    assert!(
        !new_calls
            .iter()
            .any(|c| matches!(c, RecordedCall::Mount(m) if m.fstype == "nfs4")),
        "the NFS mount is adopted, not mounted twice: {new_calls:?}"
    );
    assert!(
        new_calls.contains(&RecordedCall::Unmount(
            root.join("s3-ds"),
            UnmountMode::Lazy
        )),
        "{new_calls:?}"
    );
    assert!(
        new_calls
            .iter()
            .any(|c| matches!(c, RecordedCall::MountFuse(r) if r.target == root.join("s3-ds")))
    );
    assert!(new_calls.contains(&RecordedCall::Unmount(
        root.join("orphan"),
        UnmountMode::Lazy
    )));
    assert!(!root.join("orphan").exists(), "orphan directory removed");
    for name in ["nfs-ds", "s3-ds"] {
        assert_eq!(
            f.mounts_at(&root.join(name)).len(),
            1,
            "{name}: exactly one mount"
        );
        let (status, body) = f
            .send(Method::GET, &format!("/v1/mounts/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["state"], "Mounted", "{body}");
    }
}

#[tokio::test]
async fn a_read_write_nfs_mount_is_not_adopted_for_a_read_only_dataset() {
    let f = fixture().await;
    let spec = json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/data"}},
                      "readOnly": false});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/ds", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let Fixture {
        dir, fake, manager, ..
    } = f;
    manager.shutdown().await;
    drop(manager);
    // While the agent is down the dataset becomes read-only in the state
    // file; the read-write mount is still in place.
    let state_file = dir.path().join("state/mounts.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    state["mounts"]["ds"]["spec"]["readOnly"] = json!(true);
    std::fs::write(&state_file, state.to_string()).unwrap();
    let calls_before = fake.calls().len();
    let f = start(dir, fake, |_| {}).await.unwrap();
    let remounts: Vec<_> = f.fake.calls()[calls_before..]
        .iter()
        .filter_map(|c| match c {
            RecordedCall::Mount(m) if m.fstype == "nfs4" => Some(m.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(remounts.len(), 1, "re-created, not adopted: {remounts:?}");
    assert!(remounts[0].flags.read_only, "{:?}", remounts[0]);
    let path = f.root().join("ds");
    let table = f.mounts_at(&path);
    assert_eq!(table.len(), 1, "exactly one mount: {table:?}");
    assert!(table[0].is_read_only());
    let (status, body) = f.send(Method::GET, "/v1/mounts/ds", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "Mounted", "{body}");
    assert_eq!(body["generation"], 2, "{body}");
}

#[tokio::test]
async fn a_corrupt_state_file_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/mounts.json"),
        b"{\"version\": 1, \"mounts\": [",
    )
    .unwrap();
    let f = start(dir, Arc::new(RecordingMounter::new()), |_| {})
        .await
        .unwrap();
    let (status, body) = f.send(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let warning = body["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.contains("corrupt") && warning.contains("mounts.json.corrupt-"),
        "{warning}"
    );
    let kept = std::fs::read_dir(f.dir.path().join("state"))
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("mounts.json.corrupt-")
        });
    assert!(kept, "the corrupt file is kept for the operator");
}

#[tokio::test]
async fn a_root_that_cannot_be_shared_refuses_to_start() {
    let fake = Arc::new(RecordingMounter::new());
    fake.fail("make_rshared", Errno::EINVAL);
    let err = start(tempfile::tempdir().unwrap(), fake, |_| {})
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("MountFlags") && message.contains("Bidirectional"),
        "{message}"
    );
    let fake = Arc::new(RecordingMounter::new());
    fake.fail("verify_propagation", Errno::EIO);
    let err = start(tempfile::tempdir().unwrap(), fake, |_| {})
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("propagation"), "{err}");
}

#[tokio::test]
async fn an_endpoint_allowed_by_name_passes_the_egress_check() {
    let f = fixture_with(|config| {
        config.egress = hotmount::egress::EgressPolicy {
            allowed_hosts: vec!["169.254.169.254".to_string()],
            only: Vec::new(),
        };
    })
    .await;
    let nfs = json!({"source": {"nfs": {"server": "169.254.169.254", "export": "/x"}}});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/allowed", Some(nfs)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn with_egress_rules_only_their_servers_are_reached() {
    let f = fixture_with(|config| {
        config.egress = hotmount::egress::EgressPolicy {
            allowed_hosts: Vec::new(),
            only: vec!["10.0.0.0/8:2049".parse().unwrap()],
        };
    })
    .await;
    let inside = json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/x"}}});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/inside", Some(inside)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let outside = json!({"source": {"nfs": {"server": "192.168.7.7", "export": "/x"}}});
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/outside", Some(outside))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "EndpointNotAllowed");
    let other_port =
        json!({"source": {"nfs": {"server": "10.0.2.2", "export": "/x", "port": 2050}}});
    let (status, _) = f
        .send(Method::PUT, "/v1/mounts/port", Some(other_port))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let attempted = f.fake.calls().iter().any(|call| {
        matches!(call, hotmount::sys::RecordedCall::Mount(request)
            if request.source.contains("192.168.7.7") || request.data.contains("port=2050"))
    });
    assert!(!attempted, "no mount was attempted for a refused server");
    // No endpoint means AWS, which the rules do not name either.
    let aws = json!({"source": {"s3": {"bucket": "datasets", "region": "eu-west-1"}}});
    let (status, body) = f.send(Method::PUT, "/v1/mounts/aws", Some(aws)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "EndpointNotAllowed");
    assert!(
        body.to_string().contains("amazonaws.com"),
        "the refusal names the host: {body}"
    );
}

#[tokio::test]
async fn before_the_start_finished_a_name_not_restored_yet_is_not_ready_not_missing() {
    // A new worker answers while it restores datasets: a name it has not
    // restored yet may well be in the state, so "not found" would be a lie
    // (a client would think its DELETE done).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("creds")).unwrap();
    let fake = Arc::new(RecordingMounter::new());
    let store = StateStore::open(&dir.path().join("state")).unwrap();
    let manager = Manager::new(
        config_for(dir.path()),
        fake.clone(),
        store,
        Arc::new(Metrics::new()),
    );
    let app = router(manager.clone());
    let f = Fixture {
        dir,
        fake,
        manager,
        app,
    };
    for (method, path) in [
        (Method::GET, "/v1/mounts/images"),
        (Method::GET, "/v1/mounts/images?wait=Mounted&timeout=1s"),
        (Method::DELETE, "/v1/mounts/images"),
        (Method::POST, "/v1/mounts/images/warm"),
        (Method::GET, "/v1/mounts/images/warm"),
        (Method::DELETE, "/v1/mounts/images/warm"),
    ] {
        let (status, body) = f.send(method.clone(), path, None).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {body}"
        );
        assert_eq!(error_code(&body), "NotReady", "{method} {path}");
    }
    // A PUT too: a spec the state may already hold under that name.
    let (status, body) = f
        .send(Method::PUT, "/v1/mounts/images", Some(f.s3_spec("data")))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "PUT: {body}");
    assert_eq!(error_code(&body), "NotReady");
    f.manager.start().await.unwrap();
    let (status, body) = f.send(Method::GET, "/v1/mounts/images", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_name_that_does_not_decode_is_an_invalid_name_in_a_json_error() {
    // `%FF` is no UTF-8: the path extractor's own plain-text 400 would break
    // the contract that every error is `{"error": {"code", "message"}}`.
    let f = fixture().await;
    let spec = f.s3_spec("data").to_string().into_bytes();
    for (method, uri, body) in [
        (Method::GET, "/v1/mounts/%FF", None),
        (Method::GET, "/v1/mounts/%C3%28?wait=Mounted", None),
        (Method::PUT, "/v1/mounts/%FF", Some(spec)),
        (Method::DELETE, "/v1/mounts/a%FFb", None),
    ] {
        let (status, reply) = send(&f.app, method.clone(), uri, body, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {reply}");
        assert_eq!(error_code(&reply), "InvalidName", "{method} {uri}: {reply}");
    }
}
