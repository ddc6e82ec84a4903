//! The API contract, `api/openapi.yaml`, held to the code so the two cannot
//! drift: the routes and methods the router serves ([`super::ROUTES`]) are
//! the document's paths and operations; every [`ErrorCode`] is in the
//! document's `ErrorCode` enum, and an answer of the document with the
//! code's status allows it (and no answer allows a code under another
//! status); the fields of the mount spec, of a Mount and of a warm-up's
//! progress, the states, NFS versions and credentials forms are the ones
//! serde reads and writes.
//! (`scripts/check-api-contract.sh` then runs the document against a real
//! agent with Schemathesis.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::{ErrorCode, ROUTES};
use crate::manager::{Health, MountState, MountView};
use crate::s3fs::fs::{WarmupState, WarmupStatus};
use crate::spec::{
    FileMode, InlineCredentials, MountSpec, NfsSource, NfsVersion, S3Credentials, S3Source,
    SourceSpec,
};

/// The document, as JSON (its keys are all strings).
fn document() -> Value {
    serde_yaml::from_str(include_str!("../../api/openapi.yaml"))
        .unwrap_or_else(|e| panic!("api/openapi.yaml does not parse: {e}"))
}

/// `node`, or what it refers to if it is a `{"$ref": "#/..."}`.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference}: only local references are used"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} names nothing in the document"));
            resolve(doc, target)
        }
        None => node,
    }
}

/// The named schema of `components/schemas`.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/schemas/{name}"))
        .unwrap_or_else(|| panic!("components/schemas/{name} is missing"))
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{value} is not a list"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{v} is not a string"))
                .to_string()
        })
        .collect()
}

/// The property names a schema (after `$ref`) declares.
fn properties(doc: &Value, node: &Value) -> BTreeSet<String> {
    resolve(doc, node)
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{node} declares no properties"))
        .keys()
        .cloned()
        .collect()
}

/// The keys of a serialized JSON object.
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
}

/// The error codes a response schema allows in `error.code`: None when it
/// is no error body; an `allOf` allows what all its parts allow.
fn error_codes(doc: &Value, node: &Value) -> Option<BTreeSet<String>> {
    let node = resolve(doc, node);
    if let Some(parts) = node.get("allOf").and_then(Value::as_array) {
        return parts
            .iter()
            .filter_map(|part| error_codes(doc, part))
            .reduce(|a, b| a.intersection(&b).cloned().collect());
    }
    let code = node.pointer("/properties/error/properties/code")?;
    let code = resolve(doc, code);
    Some(strings(code.get("enum").unwrap_or_else(|| {
        panic!("error.code of {node} is not an enum of codes")
    })))
}

/// Every answer of the document: (operation, status, codes its error body allows).
fn documented_errors(doc: &Value) -> Vec<(String, u16, BTreeSet<String>)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                continue;
            };
            for (status, response) in responses {
                let status: u16 = status
                    .parse()
                    .unwrap_or_else(|_| panic!("{method} {path}: status {status} is not a number"));
                let response = resolve(doc, response);
                let Some(schema) = response.pointer("/content/application~1json/schema") else {
                    continue;
                };
                if let Some(codes) = error_codes(doc, schema) {
                    found.push((format!("{} {path}", method.to_uppercase()), status, codes));
                }
            }
        }
    }
    found
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

#[test]
fn the_document_has_every_route_the_router_serves_and_no_other() {
    let doc = document();
    let served: BTreeMap<String, BTreeSet<String>> = ROUTES
        .iter()
        .map(|(path, methods)| {
            let methods = methods
                .iter()
                .map(|(method, _)| method.as_str().to_lowercase())
                .collect();
            (path.to_string(), methods)
        })
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "a path twice in ROUTES");
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect();
    assert_eq!(
        documented, served,
        "api/openapi.yaml (left) and the router's ROUTES (right) differ"
    );
    // Each operation can be named (Schemathesis reports and links use it).
    for (path, methods) in &documented {
        for method in methods {
            let id = doc["paths"][path][method]["operationId"].as_str();
            assert!(id.is_some(), "{method} {path} has no operationId");
        }
    }
}

#[test]
fn every_error_code_is_documented_with_its_status_and_only_there() {
    // The variants as declared in error.rs: ErrorCode::ALL may miss none.
    let source = include_str!("error.rs");
    let body = source
        .split("pub enum ErrorCode {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("error.rs declares `pub enum ErrorCode { ... }`");
    let declared: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//") && !line.starts_with('#'))
        .map(|line| line.trim_end_matches(','))
        .collect();
    let listed: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        declared, listed,
        "ErrorCode::ALL must list every variant of the enum, in order"
    );

    let doc = document();
    let enumerated = strings(&schema(&doc, "ErrorCode")["enum"]);
    let codes: BTreeSet<String> = listed.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        enumerated, codes,
        "the document's ErrorCode enum (left) and ErrorCode::ALL (right) differ"
    );

    let answers = documented_errors(&doc);
    for code in ErrorCode::ALL {
        let status = code.status().as_u16();
        assert!(
            answers
                .iter()
                .any(|(_, s, allowed)| *s == status && allowed.contains(code.as_str())),
            "{} ({status}) is in no {status} answer of api/openapi.yaml",
            code.as_str()
        );
    }
    for (operation, status, allowed) in &answers {
        assert!(!allowed.is_empty(), "{operation} {status} allows no code");
        for name in allowed {
            let code = ErrorCode::ALL
                .iter()
                .find(|c| c.as_str() == name)
                .unwrap_or_else(|| panic!("{operation} {status}: {name} is no ErrorCode"));
            assert_eq!(
                code.status().as_u16(),
                *status,
                "{operation} answers {name} with {status}, the code says {}",
                code.status()
            );
        }
    }
}

#[test]
fn the_spec_schemas_have_the_fields_the_parser_reads() {
    let doc = document();
    let s3 = S3Source {
        bucket: "datasets".into(),
        prefix: Some("imagenet/".into()),
        endpoint: Some("http://10.0.0.9:3900".into()),
        region: Some("garage".into()),
        path_style: true,
        credentials: Some(S3Credentials::Secret("datasets".into())),
        immutable: true,
        cache: false,
        uid: Some(1000),
        gid: Some(1000),
        file_mode: Some(FileMode(0o644)),
        dir_mode: Some(FileMode(0o755)),
    };
    let nfs = NfsSource {
        version: Some(NfsVersion::V4_1),
        nconnect: Some(4),
        soft: Some(true),
        timeo_seconds: Some(60),
        retrans: Some(3),
        rsize: Some(1 << 20),
        wsize: Some(1 << 20),
        port: Some(2049),
        ..NfsSource::new("10.0.0.5", "/exports/imagenet")
    };
    let spec = MountSpec {
        source: SourceSpec::S3(s3.clone()),
        read_only: true,
        labels: [("team".to_string(), "vision".to_string())].into(),
    };
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(properties(&doc, schema(&doc, "MountSpec")), keys(&json));
    let nfs_spec = MountSpec {
        source: SourceSpec::Nfs(nfs.clone()),
        read_only: false,
        labels: Default::default(),
    };
    for spec in [&spec, &nfs_spec] {
        spec.validate().expect("the test's specs are valid");
    }
    let sources = properties(&doc, schema(&doc, "Source"));
    let tags: BTreeSet<String> = [SourceSpec::S3(s3.clone()), SourceSpec::Nfs(nfs.clone())]
        .iter()
        .flat_map(|source| keys(&serde_json::to_value(source).unwrap()))
        .collect();
    assert_eq!(sources, tags, "the backends");
    assert_eq!(
        properties(&doc, schema(&doc, "S3Source")),
        keys(&serde_json::to_value(&s3).unwrap()),
        "the fields of an s3 source"
    );
    assert_eq!(
        properties(&doc, schema(&doc, "NfsSource")),
        keys(&serde_json::to_value(&nfs).unwrap()),
        "the fields of an nfs source"
    );
    let versions = [
        NfsVersion::V3,
        NfsVersion::V4,
        NfsVersion::V4_1,
        NfsVersion::V4_2,
    ]
    .map(|v| {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    });
    // The versions, and null (an absent version).
    let documented = schema(&doc, "NfsSource")["properties"]["version"]["enum"]
        .as_array()
        .expect("the NFS versions are an enum");
    assert!(documented.contains(&Value::Null), "version may be null");
    assert_eq!(
        documented
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect::<BTreeSet<_>>(),
        versions.into_iter().collect(),
        "the NFS versions"
    );
    let inline = InlineCredentials {
        access_key_id: "AKID".into(),
        secret_access_key: "secret".into(),
        session_token: Some("token".into()),
    };
    assert_eq!(
        properties(&doc, schema(&doc, "InlineCredentials")),
        keys(&serde_json::to_value(&inline).unwrap()),
        "the fields of inline credentials"
    );
    // Each form of credentials is one of the document's: a constant, or an
    // object with exactly that one key.
    let forms = schema(&doc, "S3Credentials")["oneOf"]
        .as_array()
        .expect("S3Credentials is a oneOf");
    let credentials = [
        S3Credentials::Secret("datasets".into()),
        S3Credentials::File(PathBuf::from("/etc/hotmount/creds/datasets")),
        S3Credentials::Inline(inline),
        S3Credentials::Anonymous,
    ];
    assert_eq!(forms.len(), credentials.len(), "the credentials forms");
    for form in credentials {
        let json = serde_json::to_value(&form).unwrap();
        let matching = forms
            .iter()
            .filter(|candidate| match &json {
                Value::String(_) => candidate.get("const") == Some(&json),
                Value::Object(map) => {
                    candidate.get("required")
                        == Some(&serde_json::json!(map.keys().collect::<Vec<_>>()))
                        && properties(&doc, candidate) == keys(&json)
                }
                _ => false,
            })
            .count();
        assert_eq!(matching, 1, "credentials {json} match {matching} forms");
    }
}

/// Schema `name` has exactly the fields of `json` (a value with every
/// field set), and requires all but `optional`.
fn assert_fields(doc: &Value, name: &str, json: &Value, optional: &[&str]) {
    let schema = schema(doc, name);
    assert_eq!(
        properties(doc, schema),
        keys(json),
        "the fields of a {name}"
    );
    let mut always = keys(json);
    for field in optional {
        always.remove(*field);
    }
    assert_eq!(
        strings(&schema["required"]),
        always,
        "the fields every {name} has"
    );
}

#[test]
fn the_mount_schema_has_the_fields_a_mount_shows() {
    let doc = document();
    let view = MountView {
        name: "demo".into(),
        path: PathBuf::from("/var/lib/hotmount/mnt/demo"),
        source: SourceSpec::Nfs(NfsSource::new("10.0.0.5", "/exports/imagenet")),
        read_only: true,
        labels: Default::default(),
        state: MountState::Mounted,
        last_error: None,
        health: Health {
            last_probe: Some(chrono::Utc::now()),
            latency_seconds: Some(0.002),
        },
        created_at: chrono::Utc::now(),
        created_by: Some("uid:0".into()),
        generation: 1,
    };
    let json = serde_json::to_value(&view).unwrap();
    let mount = schema(&doc, "Mount");
    assert_fields(&doc, "Mount", &json, &["createdBy"]);
    assert_eq!(
        properties(&doc, &mount["properties"]["health"]),
        keys(&json["health"]),
        "the fields of health"
    );
    let states: BTreeSet<String> = MountState::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(strings(&schema(&doc, "MountState")["enum"]), states);
}

#[test]
fn the_warmup_schema_has_the_fields_a_warmup_shows() {
    let doc = document();
    let ended = WarmupStatus {
        state: WarmupState::Failed,
        paths: vec!["train".into()],
        files_total: 2,
        bytes_total: 10,
        files_done: 1,
        bytes_done: 5,
        bytes_fetched: 5,
        failed_files: 1,
        last_error: Some("train/b: denied".into()),
        started_at: chrono::Utc::now(),
        finished_at: Some(chrono::Utc::now()),
    };
    let json = serde_json::to_value(&ended).unwrap();
    assert_fields(&doc, "WarmupStatus", &json, &["lastError", "finishedAt"]);
    // A new state does not compile here until it is in the list below.
    let _every_state = |state: WarmupState| match state {
        WarmupState::Listing
        | WarmupState::Fetching
        | WarmupState::Done
        | WarmupState::Cancelled
        | WarmupState::Failed => (),
    };
    let states = [
        WarmupState::Listing,
        WarmupState::Fetching,
        WarmupState::Done,
        WarmupState::Cancelled,
        WarmupState::Failed,
    ]
    .iter()
    .map(|state| {
        serde_json::to_value(state)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect::<BTreeSet<_>>();
    assert_eq!(strings(&schema(&doc, "WarmupState")["enum"]), states);
}
