//! Property tests of the inputs a caller controls: dataset names, mount
//! specs, and the NFS mount options built from them. Whatever a caller
//! sends, a name is accepted exactly when it follows the rule, a spec that
//! validates reads back the same, and NFS options carry only the agent's own
//! keys with values from typed fields (never a caller's text).

use std::net::IpAddr;
use std::path::Path;

use hotmount::spec::{DatasetName, MountSpec, NfsSource, NfsVersion};
use proptest::prelude::*;
use serde_json::json;

/// The name rule, written out independently of the code under test.
fn follows_the_name_rule(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Option keys the agent itself writes into an NFS mount's data.
const NFS_KEYS: &[&str] = &[
    "vers",
    "proto",
    "mountproto",
    "mountport",
    "nolock",
    "addr",
    "clientaddr",
    "port",
    "nconnect",
    "rsize",
    "wsize",
    "hard",
    "soft",
    "timeo",
    "retrans",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names_are_accepted_exactly_when_they_follow_the_rule(
        name in "[a-z0-9._A-Z/ é-]{0,70}"
    ) {
        prop_assert_eq!(DatasetName::parse(&name).is_ok(), follows_the_name_rule(&name));
    }

    #[test]
    fn arbitrary_bodies_never_panic_the_spec_parser(body in ".{0,200}") {
        if let Ok(spec) = serde_json::from_str::<MountSpec>(&body) {
            let _ = spec.validate();
        }
    }

    #[test]
    fn s3_specs_that_validate_read_back_the_same(
        bucket in "[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]",
        prefix in proptest::option::of("[a-zA-Z0-9_/-]{0,30}"),
        uid in proptest::option::of(0u32..100_000),
        mode in proptest::option::of(0u32..0o1000),
        read_only in any::<bool>(),
    ) {
        let mut s3 = json!({"bucket": bucket, "endpoint": "http://10.0.0.9:3900",
                            "pathStyle": true, "credentials": "anonymous"});
        if let Some(prefix) = &prefix {
            s3["prefix"] = json!(prefix);
        }
        if let Some(uid) = uid {
            s3["uid"] = json!(uid);
        }
        if let Some(mode) = mode {
            s3["fileMode"] = json!(format!("{mode:04o}"));
        }
        let body = json!({"source": {"s3": s3}, "readOnly": read_only});
        let spec: MountSpec = serde_json::from_value(body).unwrap();
        if spec.validate().is_ok() {
            let again: MountSpec =
                serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
            prop_assert_eq!(again, spec);
        }
    }

    #[test]
    fn nfs_options_carry_only_the_agents_own_keys(
        server in "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}",
        export in "/[a-zA-Z0-9_,=./ -]{0,30}",
        version in prop_oneof![
            Just(NfsVersion::V3), Just(NfsVersion::V4), Just(NfsVersion::V4_1), Just(NfsVersion::V4_2)
        ],
        nconnect in proptest::option::of(1u8..=16),
        port in proptest::option::of(1u16..),
        soft in proptest::option::of(any::<bool>()),
        v6 in any::<bool>(),
    ) {
        let mut source = NfsSource::new(server.clone(), export.clone());
        source.version = Some(version);
        source.nconnect = nconnect;
        source.port = port;
        source.soft = soft;
        let spec = MountSpec {
            source: hotmount::spec::SourceSpec::Nfs(source.clone()),
            read_only: true,
            labels: Default::default(),
        };
        prop_assume!(spec.validate().is_ok());
        let addr: IpAddr = if v6 { "fd00::5".parse().unwrap() } else { "10.0.0.5".parse().unwrap() };
        let request = hotmount::nfs::mount_request(&source, addr, true, Path::new("/mnt/x"), None);
        prop_assert!(request.flags.nosuid && request.flags.nodev && request.flags.read_only);
        for option in request.data.split(',') {
            let key = option.split('=').next().unwrap_or_default();
            prop_assert!(NFS_KEYS.contains(&key), "unexpected option {:?} in {:?}", option, request.data);
        }
        let addr_option = format!("addr={addr}");
        prop_assert!(request.data.split(',').any(|option| option == addr_option));
    }
}
