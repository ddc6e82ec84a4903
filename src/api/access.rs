//! Who may do what through the API.
//!
//! - **Callers.** Callers on the unix socket are known by `SO_PEERCRED` (their
//!   uid). Callers on TCP are known by their bearer token, which has a name
//!   and a role in the token file (`NAME ROLE TOKEN`; a bare token is an
//!   unnamed admin).
//! - **Admins.** uid 0 and `admin` tokens may do everything.
//! - **Everyone else** may do only what a rule of the policy file
//!   (`--policy`) allows: no policy, nothing. A `viewer` token may never do
//!   more than get and list.
//! - **Refusals.** A refused call gets 403 `Forbidden`, naming the rule field
//!   that refused it, and touches nothing.
//! - **Load.** A caller that is not an admin may have at most
//!   [`MAX_PUTS_IN_FLIGHT`] PUTs in flight; one more gets 429
//!   `TooManyRequests` at once.
//! - **Audit.** Every mutating call leaves one audit line (target
//!   `hotmount::audit`): the caller, the verb, the dataset, the source
//!   without secrets, and the status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Deserialize;

use crate::api::listener::Peer;
use crate::api::{ApiError, ErrorCode};
use crate::spec::{MountSpec, S3Credentials, SourceSpec};

/// What a token may do at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, without a policy.
    Admin,
    /// What the policy allows.
    Operator,
    /// What the policy allows of `get` and `list`.
    Viewer,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?} (admin, operator or viewer)"
            )),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on the unix socket.
    Uid(u32),
    /// A bearer token on TCP (`None`: a bare token of the file's old format).
    Token {
        /// Its name in the token file.
        name: Option<String>,
        /// Its role.
        role: Role,
    },
    /// A Kubernetes service account, by its verified token on TCP.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The pod the token was issued to.
        pod: Option<String>,
    },
    /// Nobody known (a socket whose peer credentials could not be read).
    Unknown,
}

impl Caller {
    /// The caller a connection's peer is, before any token.
    pub fn of_peer(peer: Option<&Peer>) -> Caller {
        match peer {
            Some(Peer::Uid(uid)) => Caller::Uid(*uid),
            _ => Caller::Unknown,
        }
    }

    fn is_admin(&self) -> bool {
        matches!(
            self,
            Caller::Uid(0)
                | Caller::Token {
                    role: Role::Admin,
                    ..
                }
        )
    }

    /// How rules name this caller (`uid:1000`, `token:team-a`).
    fn id(&self) -> Option<String> {
        match self {
            Caller::Uid(uid) => Some(format!("uid:{uid}")),
            Caller::Token {
                name: Some(name), ..
            } => Some(format!("token:{name}")),
            Caller::ServiceAccount {
                namespace, name, ..
            } => Some(format!("serviceaccount:{namespace}/{name}")),
            _ => None,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Uid(uid) => write!(f, "uid:{uid}"),
            Caller::Token {
                name: Some(name), ..
            } => write!(f, "token:{name}"),
            Caller::Token { name: None, .. } => write!(f, "token:(unnamed)"),
            Caller::ServiceAccount {
                namespace,
                name,
                pod,
            } => match pod {
                Some(pod) => write!(f, "serviceaccount:{namespace}/{name} (pod {pod})"),
                None => write!(f, "serviceaccount:{namespace}/{name}"),
            },
            Caller::Unknown => write!(f, "unknown"),
        }
    }
}

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Read one dataset.
    Get,
    /// List datasets.
    List,
    /// Attach or change.
    Put,
    /// Detach.
    Delete,
    /// Fetch a dataset's paths into the node cache (or stop doing so).
    Warm,
}

impl Verb {
    /// Every verb (what a rule's `verbs` may name).
    const ALL: [Verb; 5] = [Verb::Get, Verb::List, Verb::Put, Verb::Delete, Verb::Warm];

    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Put => "put",
            Verb::Delete => "delete",
            Verb::Warm => "warm",
        }
    }
}

/// One rule of the policy file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// `uid:N` and `token:NAME` the rule is for.
    pub callers: Vec<String>,
    /// `get`, `list`, `put`, `delete`, `warm`.
    pub verbs: Vec<String>,
    /// Globs (`*`) of the dataset names it covers.
    #[serde(default)]
    pub names: Vec<String>,
    /// Globs of `ENDPOINT/BUCKET/PREFIX` (`s3://BUCKET/PREFIX` without an
    /// endpoint) the caller may mount.
    #[serde(default)]
    pub s3: Vec<String>,
    /// Globs of `SERVER:/EXPORT`.
    #[serde(default)]
    pub nfs: Vec<String>,
    /// Globs of credential names under `--credentials-dir` (a `file`
    /// path is never allowed by a rule).
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Whether read-write datasets are allowed.
    #[serde(default)]
    pub read_write: bool,
    /// The most datasets whose names the rule covers.
    #[serde(default)]
    pub max_mounts: Option<usize>,
}

/// The policy file's content.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The rules; a call is allowed when one allows it.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        for (index, rule) in policy.rules.iter().enumerate() {
            for verb in &rule.verbs {
                if !Verb::ALL.iter().any(|known| known.as_str() == verb) {
                    return Err(format!("rule {}: unknown verb {verb:?}", index + 1));
                }
            }
            for caller in &rule.callers {
                let known = ["uid:", "token:", "serviceaccount:"];
                if !known.iter().any(|kind| caller.starts_with(kind)) {
                    return Err(format!(
                        "rule {}: caller {caller:?} is not uid:N, token:NAME or serviceaccount:NAMESPACE/NAME",
                        index + 1
                    ));
                }
            }
        }
        Ok(policy)
    }

    /// Whether `caller` may `verb` dataset `name` (with `spec`, for a put),
    /// `existing` datasets being there: the field of the closest rule that
    /// refused it otherwise.
    pub fn allows(
        &self,
        caller: &Caller,
        verb: Verb,
        name: &str,
        spec: Option<&MountSpec>,
        existing: &[String],
    ) -> Result<(), &'static str> {
        let Some(id) = caller.id() else {
            return Err("callers");
        };
        let mut refused = "callers";
        for rule in self.rules.iter().filter(|r| r.callers.contains(&id)) {
            match rule.check(verb, name, spec, existing) {
                Ok(()) => return Ok(()),
                Err(field) => refused = field,
            }
        }
        Err(refused)
    }
}

impl Rule {
    fn check(
        &self,
        verb: Verb,
        name: &str,
        spec: Option<&MountSpec>,
        existing: &[String],
    ) -> Result<(), &'static str> {
        if !self.verbs.iter().any(|v| v == verb.as_str()) {
            return Err("verbs");
        }
        if verb == Verb::List {
            return Ok(());
        }
        if !any_glob(&self.names, name) {
            return Err("names");
        }
        let Some(spec) = spec else {
            return Ok(());
        };
        match &spec.source {
            SourceSpec::S3(s3) => {
                let subject = match &s3.endpoint {
                    Some(endpoint) => format!(
                        "{}/{}/{}",
                        endpoint.trim_end_matches('/'),
                        s3.bucket,
                        s3.normalized_prefix()
                    ),
                    None => format!("s3://{}/{}", s3.bucket, s3.normalized_prefix()),
                };
                if !any_glob(&self.s3, &subject) {
                    return Err("s3");
                }
                match &s3.credentials {
                    Some(S3Credentials::Secret(secret)) if !any_glob(&self.credentials, secret) => {
                        return Err("credentials");
                    }
                    Some(S3Credentials::File(_)) => return Err("credentials"),
                    _ => {}
                }
            }
            SourceSpec::Nfs(nfs) => {
                if !any_glob(&self.nfs, &format!("{}:{}", nfs.server, nfs.export)) {
                    return Err("nfs");
                }
            }
        }
        if !spec.read_only && !self.read_write {
            return Err("readWrite");
        }
        if let Some(max) = self.max_mounts {
            let covered = existing
                .iter()
                .filter(|other| other.as_str() != name && any_glob(&self.names, other))
                .count();
            if covered >= max {
                return Err("maxMounts");
            }
        }
        Ok(())
    }
}

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|pattern| glob_match(pattern, text))
}

/// `*` matches any run of characters (`/` included); everything else
/// matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The policy file, read again when it changes; a broken file keeps the
/// last good policy (and says so in `/readyz`).
#[derive(Debug)]
pub struct Access {
    path: Option<PathBuf>,
    loaded: Mutex<Loaded>,
    /// PUTs in flight by caller (admins are not counted).
    puts_in_flight: Mutex<HashMap<String, usize>>,
}

/// How many PUTs one caller that is not an admin may have in flight: a PUT
/// may wait for a slow server for the whole mount deadline, and a tenant
/// must not keep the agent's mount machinery to itself.
pub const MAX_PUTS_IN_FLIGHT: usize = 8;

/// One PUT counted against its caller until dropped.
#[derive(Debug)]
pub struct PutInFlight<'a> {
    access: &'a Access,
    caller: Option<String>,
}

impl Drop for PutInFlight<'_> {
    fn drop(&mut self) {
        let Some(caller) = self.caller.take() else {
            return;
        };
        let mut counts = self.access.in_flight();
        if let Some(count) = counts.get_mut(&caller) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&caller);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Loaded {
    modified: Option<SystemTime>,
    policy: Policy,
    problem: Option<String>,
}

impl Access {
    /// Access with the policy at `path` (none: only admins may act).
    pub fn new(path: Option<PathBuf>) -> Result<Access, String> {
        let access = Access {
            path,
            loaded: Mutex::new(Loaded::default()),
            puts_in_flight: Mutex::new(HashMap::new()),
        };
        if let Some(path) = &access.path {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("policy {}: {e}", path.display()))?;
            let policy =
                Policy::parse(&text).map_err(|e| format!("policy {}: {e}", path.display()))?;
            let mut loaded = access.lock();
            loaded.policy = policy;
            loaded.modified = modified(path);
        }
        Ok(access)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.puts_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a PUT of `caller` until the returned guard is dropped; refuses
    /// it with 429 `TooManyRequests` if the caller already has
    /// [`MAX_PUTS_IN_FLIGHT`] (admins are never refused).
    pub fn begin_put(&self, caller: &Caller) -> Result<PutInFlight<'_>, ApiError> {
        if caller.is_admin() {
            return Ok(PutInFlight {
                access: self,
                caller: None,
            });
        }
        let key = caller.to_string();
        let mut counts = self.in_flight();
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= MAX_PUTS_IN_FLIGHT {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{key} already has {MAX_PUTS_IN_FLIGHT} mount requests in flight; retry when one has finished"
                ),
            ));
        }
        *count += 1;
        Ok(PutInFlight {
            access: self,
            caller: Some(key),
        })
    }

    /// What an operator should know of the policy file (a broken change).
    pub fn problem(&self) -> Option<String> {
        self.refresh();
        self.lock().problem.clone()
    }

    fn refresh(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let now = modified(path);
        let mut loaded = self.lock();
        if now == loaded.modified {
            return;
        }
        loaded.modified = now;
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Policy::parse(&text))
        {
            Ok(policy) => {
                tracing::info!(path = %path.display(), rules = policy.rules.len(), "policy loaded");
                loaded.policy = policy;
                loaded.problem = None;
            }
            Err(reason) => {
                let problem = format!(
                    "policy {} is broken ({reason}); the last good one stays in force",
                    path.display()
                );
                tracing::warn!("{problem}");
                loaded.problem = Some(problem);
            }
        }
    }

    /// Whether `caller` may `verb` dataset `name`: 403 `Forbidden` naming
    /// the field that refused it otherwise.
    pub fn authorize(
        &self,
        caller: &Caller,
        verb: Verb,
        name: &str,
        spec: Option<&MountSpec>,
        existing: &[String],
    ) -> Result<(), ApiError> {
        if caller.is_admin() {
            return Ok(());
        }
        let viewer = matches!(
            caller,
            Caller::Token {
                role: Role::Viewer,
                ..
            }
        );
        if viewer && !matches!(verb, Verb::Get | Verb::List) {
            return Err(forbidden(caller, verb, name, "role"));
        }
        self.refresh();
        self.lock()
            .policy
            .allows(caller, verb, name, spec, existing)
            .map_err(|field| forbidden(caller, verb, name, field))
    }
}

impl Access {
    /// The `items` (named by `name`) that `caller` may get: the policy is
    /// looked at once for all of them.
    pub fn retain_gettable<T>(
        &self,
        caller: &Caller,
        mut items: Vec<T>,
        name: impl Fn(&T) -> &str,
    ) -> Vec<T> {
        if caller.is_admin() {
            return items;
        }
        self.refresh();
        let loaded = self.lock();
        items.retain(|item| {
            loaded
                .policy
                .allows(caller, Verb::Get, name(item), None, &[])
                .is_ok()
        });
        items
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn forbidden(caller: &Caller, verb: Verb, name: &str, field: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "{caller} may not {} {name:?}: no policy rule allows it (refused by `{field}`)",
            verb.as_str()
        ),
    )
}

/// Writes the audit line of a mutating call: to the log, and to the state
/// directory's `audit.log`.
pub fn audit(
    store: &crate::state::StateStore,
    caller: &Caller,
    verb: Verb,
    name: &str,
    spec: Option<&MountSpec>,
    status: u16,
) {
    let source = spec.map(|spec| crate::cli::describe_source(&spec.source));
    store.audit_call(
        &caller.to_string(),
        &format!("api:{}", verb.as_str()),
        name,
        source.clone(),
        status,
    );
    tracing::info!(
        target: "hotmount::audit",
        caller = %caller,
        verb = verb.as_str(),
        dataset = name,
        source = source.as_deref().unwrap_or(""),
        status,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> MountSpec {
        serde_json::from_value(json).unwrap()
    }

    fn team_a() -> Policy {
        Policy::parse(
            r#"
            [[rule]]
            callers = ["uid:1000", "token:team-a"]
            verbs = ["get", "list", "put", "delete"]
            names = ["team-a-*"]
            s3 = ["http://10.0.0.9:3900/datasets/team-a/*"]
            nfs = ["10.0.0.5:/exports/team-a/*"]
            credentials = ["team-a-*"]
            maxMounts = 2
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_caller_past_its_puts_in_flight_is_refused_until_one_finishes() {
        let access = Access::new(None).unwrap();
        let tenant = Caller::Uid(1000);
        let held: Vec<_> = (0..MAX_PUTS_IN_FLIGHT)
            .map(|_| access.begin_put(&tenant).unwrap())
            .collect();
        let refused = access.begin_put(&tenant).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::TooManyRequests);
        assert!(
            refused.message().contains("uid:1000"),
            "{}",
            refused.message()
        );
        // Another caller, and an admin, are not held up by this one.
        assert!(access.begin_put(&Caller::Uid(1001)).is_ok());
        let admins: Vec<_> = (0..3 * MAX_PUTS_IN_FLIGHT)
            .map(|_| access.begin_put(&Caller::Uid(0)).unwrap())
            .collect();
        drop(admins);
        drop(held);
        assert!(
            access.in_flight().is_empty(),
            "nothing counted once all ended"
        );
        assert!(access.begin_put(&tenant).is_ok());
    }

    #[test]
    fn globs_match_what_they_say() {
        assert!(glob_match("team-a-*", "team-a-x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("team-a-*", "team-b-x"));
        assert!(glob_match("exact", "exact"));
        assert!(
            !glob_match("ab*ba", "aba"),
            "no overlap of prefix and suffix"
        );
    }

    #[test]
    fn a_rule_allows_exactly_its_callers_names_and_sources() {
        let policy = team_a();
        let uid = Caller::Uid(1000);
        let mine = spec(serde_json::json!({"source": {"s3": {
            "bucket": "datasets", "prefix": "team-a/images",
            "endpoint": "http://10.0.0.9:3900",
            "credentials": {"secret": "team-a-reader"}}}}));
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-x", Some(&mine), &[]),
            Ok(())
        );
        assert_eq!(
            policy.allows(&Caller::Uid(1001), Verb::Put, "team-a-x", Some(&mine), &[]),
            Err("callers")
        );
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-b-x", Some(&mine), &[]),
            Err("names")
        );
        let theirs = spec(serde_json::json!({"source": {"s3": {
            "bucket": "datasets", "prefix": "team-b", "endpoint": "http://10.0.0.9:3900"}}}));
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-x", Some(&theirs), &[]),
            Err("s3")
        );
        let other_secret = spec(serde_json::json!({"source": {"s3": {
            "bucket": "datasets", "prefix": "team-a/x", "endpoint": "http://10.0.0.9:3900",
            "credentials": {"secret": "admin-keys"}}}}));
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-x", Some(&other_secret), &[]),
            Err("credentials")
        );
        let writable = spec(serde_json::json!({"readOnly": false, "source": {"nfs": {
            "server": "10.0.0.5", "export": "/exports/team-a/scratch"}}}));
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-x", Some(&writable), &[]),
            Err("readWrite")
        );
        let existing = [
            "team-a-1".to_string(),
            "team-a-2".to_string(),
            "other".to_string(),
        ];
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-3", Some(&mine), &existing),
            Err("maxMounts")
        );
        assert_eq!(
            policy.allows(&uid, Verb::Put, "team-a-2", Some(&mine), &existing),
            Ok(()),
            "a change of one it has"
        );
        let token = Caller::Token {
            name: Some("team-a".to_string()),
            role: Role::Operator,
        };
        assert_eq!(
            policy.allows(&token, Verb::Delete, "team-a-1", None, &[]),
            Ok(())
        );
    }

    #[test]
    fn without_a_policy_only_admins_act_and_viewers_never_change_anything() {
        let access = Access::new(None).unwrap();
        assert!(
            access
                .authorize(&Caller::Uid(0), Verb::Put, "x", None, &[])
                .is_ok()
        );
        let admin = Caller::Token {
            name: None,
            role: Role::Admin,
        };
        assert!(
            access
                .authorize(&admin, Verb::Delete, "x", None, &[])
                .is_ok()
        );
        assert!(
            access
                .authorize(&Caller::Uid(1000), Verb::Get, "x", None, &[])
                .is_err()
        );
        assert!(
            access
                .authorize(&Caller::Unknown, Verb::List, "", None, &[])
                .is_err()
        );
        let (_dir, path) = policy_file(
            "[[rule]]\ncallers = [\"token:ro\"]\nverbs = [\"get\", \"put\"]\nnames = [\"*\"]\n",
        );
        let access = Access::new(Some(path)).unwrap();
        let viewer = Caller::Token {
            name: Some("ro".to_string()),
            role: Role::Viewer,
        };
        assert!(access.authorize(&viewer, Verb::Get, "x", None, &[]).is_ok());
        let refused = access
            .authorize(&viewer, Verb::Put, "x", None, &[])
            .unwrap_err();
        assert!(format!("{refused:?}").contains("role"), "{refused:?}");
    }

    /// A policy file holding `text`, in a fresh directory (returned first,
    /// so that it outlives the path's use).
    fn policy_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn warming_needs_the_warm_verb_and_a_viewer_never_warms() {
        let (_dir, path) = policy_file(
            "[[rule]]\ncallers = [\"uid:1000\", \"token:ro\"]\nverbs = [\"get\", \"warm\"]\nnames = [\"a-*\"]\n\n\
             [[rule]]\ncallers = [\"uid:1001\"]\nverbs = [\"get\", \"put\", \"delete\"]\nnames = [\"*\"]\n",
        );
        let access = Access::new(Some(path)).unwrap();
        let warm = |caller: &Caller, name: &str| {
            access
                .authorize(caller, Verb::Warm, name, None, &[])
                .is_ok()
        };
        assert!(warm(&Caller::Uid(1000), "a-1"), "a rule with warm");
        assert!(!warm(&Caller::Uid(1000), "b-1"), "outside its names");
        assert!(
            !warm(&Caller::Uid(1001), "a-1"),
            "put and delete are not warm"
        );
        let viewer = Caller::Token {
            name: Some("ro".to_string()),
            role: Role::Viewer,
        };
        assert!(!warm(&viewer, "a-1"), "a viewer never warms");
    }

    #[test]
    fn the_load_limits_are_the_documented_ones() {
        // README ("Load") and SECURITY.md ("Callers") name these figures.
        assert_eq!(MAX_PUTS_IN_FLIGHT, 8);
        assert_eq!(crate::manager::MAX_MOUNTS_IN_KERNEL, 32);
    }

    #[test]
    fn a_broken_policy_change_keeps_the_last_good_one_and_says_so() {
        let (_dir, path) =
            policy_file("[[rule]]\ncallers = [\"uid:7\"]\nverbs = [\"get\"]\nnames = [\"*\"]\n");
        let access = Access::new(Some(path.clone())).unwrap();
        assert!(
            access
                .authorize(&Caller::Uid(7), Verb::Get, "x", None, &[])
                .is_ok()
        );
        std::fs::write(
            &path,
            "[[rule]]\ncallers = [\"uid:7\"]\nverbs = [\"fly\"]\n",
        )
        .unwrap();
        // A later modification time than the first write.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(
            access
                .authorize(&Caller::Uid(7), Verb::Get, "x", None, &[])
                .is_ok(),
            "the last good one"
        );
        assert!(access.problem().unwrap().contains("unknown verb"));
        assert!(
            Access::new(Some(path)).is_err(),
            "a broken file at start is an error"
        );
    }
}
