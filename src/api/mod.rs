//! The control API (v1): `fn router(state) -> Router`, so tests call it with
//! `oneshot` and no socket. Handlers parse a request into a typed command for
//! the manager; they never touch the kernel.

pub mod access;
#[cfg(test)]
mod contract;
mod error;
pub mod listener;
pub mod service_account;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

pub use error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};

use crate::api::access::{Caller, Verb};
use crate::manager::{Manager, MountState, MountView};
use crate::spec::{DatasetName, MountSpec};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `?timeout=` a waiting GET may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Bearer tokens accepted on the TCP listener, each with its name (if the
/// file gives one) and role.
#[derive(Clone, Default)]
pub struct TokenSet {
    tokens: Vec<(String, Option<String>, access::Role)>,
    /// Kubernetes service-account tokens, when the cluster's keys are given.
    service_accounts: Option<Arc<service_account::ServiceAccounts>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.tokens.len())
    }
}

/// The tokens of a token file with their line numbers (from 1): one token
/// per line; blank lines and `#` comments are skipped.
pub fn token_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(index, line)| (index + 1, line))
}

impl TokenSet {
    /// Parses a token file (see [`token_lines`]): `NAME ROLE TOKEN` per
    /// line, or a bare `TOKEN` (an unnamed admin).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (line, entry) in token_lines(text) {
            let words: Vec<&str> = entry.split_whitespace().collect();
            let (name, role, token) = match words[..] {
                [token] => (None, access::Role::Admin, token),
                [name, role, token] => (
                    Some(name.to_string()),
                    role.parse().map_err(|e| format!("line {line}: {e}"))?,
                    token,
                ),
                _ => {
                    return Err(format!("line {line} is neither TOKEN nor NAME ROLE TOKEN"));
                }
            };
            if token.len() < 16 {
                return Err(format!(
                    "token on line {line} is shorter than 16 characters"
                ));
            }
            tokens.push((token.to_string(), name, role));
        }
        if tokens.is_empty() {
            return Err("holds no token".to_string());
        }
        Ok(TokenSet {
            tokens,
            service_accounts: None,
        })
    }

    /// Also accepts Kubernetes service-account tokens verified by `accounts`.
    pub fn with_service_accounts(mut self, accounts: service_account::ServiceAccounts) -> Self {
        self.service_accounts = Some(Arc::new(accounts));
        self
    }

    /// The caller a presented token is: one of the file's, else a verified
    /// service-account token.
    async fn caller(&self, presented: &[u8]) -> Option<access::Caller> {
        if let Some(caller) = self.file_caller(presented) {
            return Some(caller);
        }
        let accounts = self.service_accounts.as_ref()?;
        accounts.caller(std::str::from_utf8(presented).ok()?).await
    }

    /// The caller a token of the file is.
    fn file_caller(&self, presented: &[u8]) -> Option<access::Caller> {
        // Constant time per token: no early exit on the first differing byte.
        self.tokens.iter().fold(None, |found, (token, name, role)| {
            let token = token.as_bytes();
            let same_len = token.len() == presented.len();
            let diff = token
                .iter()
                .zip(presented.iter().chain(std::iter::repeat(&0)))
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if same_len && diff == 0 {
                Some(access::Caller::Token {
                    name: name.clone(),
                    role: *role,
                })
            } else {
                found
            }
        })
    }
}

/// The list response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountList {
    /// Every dataset.
    pub items: Vec<MountView>,
}

/// The readiness response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the agent serves mounts.
    pub ready: bool,
    /// Things an operator should look at.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    wait: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    force: Option<bool>,
}

/// A route: its path and, for each method it serves, its handler (made for
/// that method's filter, so a method cannot get another method's handler).
type Route = (
    &'static str,
    &'static [(Method, fn(MethodFilter) -> MethodRouter<Manager>)],
);

/// Every route [`router`] serves, with its methods: the one list of them
/// (`api/openapi.yaml` documents each; the `contract` test holds the two
/// together). A GET route also answers HEAD.
const ROUTES: &[Route] = &[
    ("/v1/mounts", &[(Method::GET, |f| on(f, list_mounts))]),
    (
        "/v1/mounts/{name}",
        &[
            (Method::GET, |f| on(f, get_mount)),
            (Method::PUT, |f| on(f, put_mount)),
            (Method::DELETE, |f| on(f, delete_mount)),
        ],
    ),
    (
        "/v1/mounts/{name}/warm",
        &[
            (Method::POST, |f| on(f, start_warm)),
            (Method::GET, |f| on(f, get_warm)),
            (Method::DELETE, |f| on(f, cancel_warm)),
        ],
    ),
    ("/healthz", &[(Method::GET, |f| on(f, healthz))]),
    ("/readyz", &[(Method::GET, |f| on(f, readyz))]),
    ("/metrics", &[(Method::GET, |f| on(f, metrics))]),
];

/// The router of the unix-socket listener: callers are known by their uid
/// (uid 0 may do everything, others what the policy allows).
pub fn router(manager: Manager) -> Router {
    routes(manager, None)
}

/// The routes of [`ROUTES`], behind a token check when `tokens` are given;
/// every request is counted, refused ones (401) included.
fn routes(manager: Manager, tokens: Option<TokenSet>) -> Router {
    let router = ROUTES
        .iter()
        .fold(Router::new(), |router, (path, methods)| {
            let handlers = methods
                .iter()
                .fold(MethodRouter::new(), |all, (method, handler)| {
                    let filter = MethodFilter::try_from(method.clone())
                        .unwrap_or_else(|e| panic!("ROUTES: {method} {path}: {e}"));
                    all.merge(handler(filter))
                });
            router.route(path, handlers)
        })
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(identify));
    let router = match tokens {
        Some(tokens) => router.layer(middleware::from_fn_with_state(
            Arc::new(tokens),
            require_token,
        )),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            manager.clone(),
            count_requests,
        ))
        .with_state(manager)
}

/// The router of the metrics listener (`--metrics-listen`): `/metrics` only,
/// with no token, for Prometheus; nothing else is served there.
pub fn metrics_router(manager: Manager) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            manager.clone(),
            count_requests,
        ))
        .with_state(manager)
}

/// The router of the TCP listener: every call needs a bearer token.
pub fn router_with_tokens(manager: Manager, tokens: TokenSet) -> Router {
    routes(manager, Some(tokens))
}

async fn require_token(
    State(tokens): State<Arc<TokenSet>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match presented {
        Some(token) => tokens.caller(token.as_bytes()).await,
        None => None,
    };
    match caller {
        Some(caller) => {
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            let mut response = ApiError::new(
                ErrorCode::Unauthorized,
                "a valid bearer token is required (Authorization: Bearer TOKEN)",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn count_requests(State(manager): State<Manager>, request: Request, next: Next) -> Response {
    // MatchedPath is an Arc<str>: cloning it allocates nothing.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    manager
        .metrics()
        .http_requests
        .with_label_values(&[route, method.as_str(), response.status().as_str()])
        .inc();
    response
}

/// The dataset name of a request path, checked once here (a segment that
/// does not even decode, such as `%FF`, is no name either).
fn dataset_name(path: Result<Path<String>, PathRejection>) -> Result<DatasetName, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(ErrorCode::InvalidName, e.body_text()))?;
    DatasetName::parse(&name).map_err(|e| ApiError::new(ErrorCode::InvalidName, e.to_string()))
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {method} {}", uri.path()),
    )
}

/// Makes sure every request knows its caller: a token's (set by
/// [`require_token`]), else the connection peer's (set by the listener);
/// a request with neither is nobody's.
async fn identify(mut request: Request, next: Next) -> Response {
    if request.extensions().get::<Caller>().is_none() {
        let caller = Caller::of_peer(request.extensions().get::<listener::Peer>());
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

async fn put_mount(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = dataset_name(name)?;
    let body = body?;
    let spec = parse_spec(&body)?;
    let allowed = manager.access().authorize(
        &caller,
        Verb::Put,
        name.as_str(),
        Some(&spec),
        &manager.names(),
    );
    let result = match allowed.and_then(|()| manager.access().begin_put(&caller)) {
        Ok(_in_flight) => manager
            .put_by(&name, spec.clone(), Some(caller.to_string()))
            .await
            .map_err(ApiError::from),
        Err(refused) => Err(refused),
    };
    let (status, response) = match result {
        Ok(outcome) => {
            let status = if outcome.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, (status, Json(outcome.mount)).into_response())
        }
        Err(err) => {
            let response = err.into_response();
            (response.status(), response)
        }
    };
    access::audit(
        manager.store(),
        &caller,
        Verb::Put,
        name.as_str(),
        Some(&spec),
        status.as_u16(),
    );
    Ok(response)
}

/// The first byte of a request body that is not white space: a body must
/// be a JSON object (`{`), since serde would also take a struct as an
/// array of its fields.
fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Parses a mount spec; the error names the JSON path of the bad field.
pub fn parse_spec(body: &[u8]) -> Result<MountSpec, ApiError> {
    if first_byte(body) != Some(b'{') {
        return Err(ApiError::new(
            ErrorCode::InvalidSpec,
            "request body: expected a JSON object",
        ));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    let spec: MountSpec = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path.is_empty() || path == "." || path == "?" {
            format!("request body: {inner}")
        } else {
            format!("{path}: {inner}")
        };
        ApiError::new(ErrorCode::InvalidSpec, message)
    })?;
    spec.validate()
        .map_err(|e| ApiError::new(ErrorCode::InvalidSpec, e.to_string()))?;
    Ok(spec)
}

async fn get_mount(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<MountView>, ApiError> {
    let Query(query) = query?;
    let name = dataset_name(name)?;
    manager
        .access()
        .authorize(&caller, Verb::Get, name.as_str(), None, &[])?;
    let Some(wait) = query.wait else {
        if query.timeout.is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "timeout: only valid together with wait=STATE",
            ));
        }
        return Ok(Json(manager.get(&name)?));
    };
    let state: MountState = wait
        .parse()
        .map_err(|e: String| ApiError::new(ErrorCode::InvalidQuery, format!("wait: {e}")))?;
    let timeout = match query.timeout.as_deref() {
        None => Duration::from_secs(30),
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| *d <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("timeout: {text:?} is not a duration up to 600s (e.g. 30s, 2m)"),
                )
            })?,
    };
    Ok(Json(manager.wait_for(&name, state, timeout).await?))
}

async fn delete_mount(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Json<MountView>, ApiError> {
    let Query(query) = query?;
    let name = dataset_name(name)?;
    let result = match manager
        .access()
        .authorize(&caller, Verb::Delete, name.as_str(), None, &[])
    {
        Ok(()) => manager
            .delete(&name, query.force.unwrap_or(false))
            .await
            .map_err(ApiError::from),
        Err(refused) => Err(refused),
    };
    let view = audited(
        &manager,
        &caller,
        Verb::Delete,
        &name,
        StatusCode::OK,
        result,
    )?;
    Ok(Json(view))
}

/// Writes the audit line of call `verb` on `name` by `caller` (`success`:
/// the status it answers with when `result` is Ok), and passes `result` on.
fn audited<T>(
    manager: &Manager,
    caller: &Caller,
    verb: Verb,
    name: &DatasetName,
    success: StatusCode,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let status = match &result {
        Ok(_) => success,
        Err(err) => err.status(),
    };
    access::audit(
        manager.store(),
        caller,
        verb,
        name.as_str(),
        None,
        status.as_u16(),
    );
    result
}

/// The body of `POST /v1/mounts/{name}/warm`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmRequest {
    /// Paths relative to the dataset (files or directories); none: all.
    #[serde(default)]
    paths: Vec<String>,
}

/// The most paths one warm-up may name.
const MAX_WARM_PATHS: usize = 1000;

/// The paths of a warm-up request, checked: relative, no `.` or `..`
/// segment, no empty segment but a trailing `/`.
fn warm_paths(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let invalid = |e: String| ApiError::new(ErrorCode::InvalidBody, format!("request body: {e}"));
    let request: WarmRequest = match first_byte(body) {
        None => WarmRequest::default(),
        Some(b'{') => serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?,
        Some(_) => return Err(invalid("expected a JSON object".to_string())),
    };
    if request.paths.len() > MAX_WARM_PATHS {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("paths: at most {MAX_WARM_PATHS}"),
        ));
    }
    request
        .paths
        .into_iter()
        .map(|path| {
            let trimmed = path.strip_suffix('/').unwrap_or(&path);
            let bad = path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(char::is_control)
                || (!trimmed.is_empty()
                    && trimmed
                        .split('/')
                        .any(|segment| matches!(segment, "" | "." | "..")));
            if bad {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    format!(
                        "paths: {path:?} is not a path inside the dataset (relative, no . or .. or empty segments, at most 1024 bytes)"
                    ),
                ));
            }
            Ok(trimmed.to_string())
        })
        .collect()
}

async fn start_warm(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = dataset_name(name)?;
    let paths = warm_paths(&body?)?;
    let result = manager
        .access()
        .authorize(&caller, Verb::Warm, name.as_str(), None, &[])
        .and_then(|()| manager.warm(&name, paths).map_err(ApiError::from));
    let started = audited(
        &manager,
        &caller,
        Verb::Warm,
        &name,
        StatusCode::ACCEPTED,
        result,
    )?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

async fn get_warm(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::s3fs::fs::WarmupStatus>, ApiError> {
    let name = dataset_name(name)?;
    manager
        .access()
        .authorize(&caller, Verb::Get, name.as_str(), None, &[])?;
    Ok(Json(manager.warm_status(&name)?))
}

async fn cancel_warm(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::s3fs::fs::WarmupStatus>, ApiError> {
    let name = dataset_name(name)?;
    let result = manager
        .access()
        .authorize(&caller, Verb::Warm, name.as_str(), None, &[])
        .and_then(|()| manager.cancel_warm(&name).map_err(ApiError::from));
    let cancelled = audited(&manager, &caller, Verb::Warm, &name, StatusCode::OK, result)?;
    Ok(Json(cancelled))
}

async fn list_mounts(
    State(manager): State<Manager>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<MountList>, ApiError> {
    let access = manager.access();
    access.authorize(&caller, Verb::List, "", None, &[])?;
    // Only what the caller may get.
    let items = access.retain_gettable(&caller, manager.list(), |view| view.name.as_str());
    Ok(Json(MountList { items }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(manager): State<Manager>) -> Response {
    let readiness = Readiness {
        ready: manager.is_ready(),
        warnings: manager.warnings(),
    };
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn metrics(State(manager): State<Manager>) -> Response {
    manager.metrics().ready.set(i64::from(manager.is_ready()));
    let mut response = Response::new(Body::from(manager.metrics().render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_requests_are_objects_of_paths_inside_the_dataset() {
        assert_eq!(warm_paths(b"").unwrap(), Vec::<String>::new());
        assert_eq!(warm_paths(b" {} ").unwrap(), Vec::<String>::new());
        assert_eq!(
            warm_paths(br#"{"paths": ["train/", "a.csv"]}"#).unwrap(),
            vec!["train", "a.csv"]
        );
        // The limits the API document states: no control character, at
        // most 1024 bytes, no empty or `.` segment, at most 1000 paths.
        let long = serde_json::json!({ "paths": ["x".repeat(1025)] }).to_string();
        let many = serde_json::json!({ "paths": vec!["x"; 1001] }).to_string();
        for bad in [
            &b"[]"[..],
            br#"[["x"]]"#,
            b"null",
            br#"{"paths": ["../x"]}"#,
            br#"{"paths": ["/etc"]}"#,
            br#"{"pathz": []}"#,
            br#"{"paths": ["a\nb"]}"#,
            br#"{"paths": ["a//b"]}"#,
            br#"{"paths": ["./x"]}"#,
            long.as_bytes(),
            many.as_bytes(),
        ] {
            let refused = warm_paths(bad).unwrap_err();
            assert_eq!(
                refused.code(),
                ErrorCode::InvalidBody,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_spec_as_an_array_is_refused() {
        let err = parse_spec(br#"[{"nfs": {"server": "10.0.0.5", "export": "/x"}}]"#);
        assert!(err.is_err(), "{err:?}");
    }

    #[test]
    fn token_files_need_long_tokens() {
        let set = TokenSet::parse("# operators\nabcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert_eq!(
            set.file_caller(b"abcdefghijklmnopqrstuvwxyz"),
            Some(Caller::Token {
                name: None,
                role: access::Role::Admin
            }),
            "a bare token is an unnamed admin"
        );
        assert!(set.file_caller(b"abcdefghijklmnopqrstuvwxy").is_none());
        assert!(set.file_caller(b"").is_none());
        assert!(TokenSet::parse("\n# none\n").is_err());
        assert!(TokenSet::parse("short").unwrap_err().contains("line 1"));
        // Line numbers count the file's lines, comments and blanks included.
        let error = TokenSet::parse("# ops\n\nabcdefghijklmnopqrstuvwxyz\nshort\n").unwrap_err();
        assert!(error.contains("line 4"), "{error}");
    }

    #[test]
    fn named_tokens_carry_their_role() {
        let set = TokenSet::parse(
            "team-a operator aaaaaaaaaaaaaaaaaaaa\nwatch viewer bbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        assert_eq!(
            set.file_caller(b"bbbbbbbbbbbbbbbbbbbb"),
            Some(Caller::Token {
                name: Some("watch".to_string()),
                role: access::Role::Viewer
            })
        );
        assert!(
            TokenSet::parse("a god cccccccccccccccccccc")
                .unwrap_err()
                .contains("unknown role")
        );
        assert!(TokenSet::parse("a b").unwrap_err().contains("line 1"));
    }

    #[tokio::test]
    async fn a_service_account_token_is_a_caller_the_policy_can_name() {
        use crate::api::service_account::tests::{ISSUER, accounts, token};
        let (_dir, accounts) = accounts();
        let set = TokenSet::parse("aaaaaaaaaaaaaaaaaaaa\n")
            .unwrap()
            .with_service_accounts(accounts);
        let jwt = token("cluster-1", ISSUER, service_account::AUDIENCE, 600);
        let caller = set.caller(jwt.as_bytes()).await.expect("a verified token");
        let policy = access::Policy::parse(
            "[[rule]]\ncallers = [\"serviceaccount:team-a/loader\"]\nverbs = [\"get\"]\nnames = [\"team-a-*\"]\n",
        )
        .unwrap();
        assert_eq!(
            policy.allows(&caller, access::Verb::Get, "team-a-x", None, &[]),
            Ok(())
        );
        assert_eq!(
            caller.to_string(),
            "serviceaccount:team-a/loader (pod trainer-0)"
        );
        // The file's tokens still work beside it.
        assert!(set.caller(b"aaaaaaaaaaaaaaaaaaaa").await.is_some());
        assert!(set.caller(b"bbbbbbbbbbbbbbbbbbbb").await.is_none());
    }

    #[test]
    fn spec_errors_name_the_field_path() {
        let err = parse_spec(br#"{"source":{"s3":{"bucket":"abc","bogus":1}}}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(err.message().contains("source.s3"), "{}", err.message());
        assert!(err.message().contains("bogus"), "{}", err.message());
        let err = parse_spec(br#"{"source":{"nfs":{"server":"h","export":"/x","nconnect":"4"}}}"#)
            .unwrap_err();
        assert!(
            err.message().contains("source.nfs.nconnect"),
            "{}",
            err.message()
        );
        let err = parse_spec(b"not json").unwrap_err();
        assert!(
            err.message().starts_with("request body"),
            "{}",
            err.message()
        );
    }
}
