//! Kubernetes service-account tokens as callers of the TCP API: a pod's
//! projected token (audience `hotmount`) is verified offline against the
//! cluster's signing keys and issuer (`--sa-issuer`): signature, issuer,
//! audience and expiry. The caller is then `serviceaccount:NAMESPACE/NAME`
//! (with the pod's name from the token's claims), and the policy decides
//! what it may do.
//!
//! The keys come from one of two places:
//! - `--sa-jwks FILE`: the JSON of the API server's `/openid/v1/jwks`, read
//!   again when the file changes;
//! - `--sa-jwks-url URL`: that document fetched from the API server with the
//!   agent's own service-account token (`--sa-api-token`) over TLS checked
//!   against the cluster CA (`--sa-api-ca`). It is fetched when a token
//!   names a key not seen yet (a rotation; at most once per
//!   [`MIN_REFETCH`]) and when the keys are older than [`REFRESH_EVERY`];
//!   a failed fetch keeps the last good keys. A hostile caller cannot make
//!   the agent hammer the API server, and a slow or hostile API server
//!   costs a caller at most [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`].

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use crate::api::access::Caller;

/// The audience a token must be issued for.
pub const AUDIENCE: &str = "hotmount";
/// Keys fetched from the API server older than this are fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// The least time between two fetches from the API server.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key document accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// The cluster's signing keys and issuer.
#[derive(Debug)]
pub struct ServiceAccounts {
    source: KeySource,
    issuer: String,
    keys: Mutex<Keys>,
    /// One fetch at a time; callers that find one running wait for it.
    fetching: tokio::sync::Mutex<()>,
    min_refetch: Duration,
}

#[derive(Debug)]
enum KeySource {
    File(PathBuf),
    ApiServer(ApiServer),
}

/// Where the keys are fetched from, and with what.
#[derive(Debug)]
struct ApiServer {
    url: reqwest::Url,
    token: PathBuf,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Keys {
    set: JwkSet,
    /// The file's modification time when it was read.
    stamp: Option<SystemTime>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last fetch tried.
    attempted: Option<Instant>,
}

impl Default for Keys {
    fn default() -> Keys {
        Keys {
            set: JwkSet { keys: Vec::new() },
            stamp: None,
            fetched: None,
            attempted: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: Kubernetes,
}

#[derive(Debug, Deserialize)]
struct Kubernetes {
    namespace: String,
    serviceaccount: Named,
    #[serde(default)]
    pod: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

impl ServiceAccounts {
    /// Keys from the file `jwks`, tokens from `issuer`; fails if the file
    /// cannot be used now.
    pub fn from_file(jwks: PathBuf, issuer: String) -> Result<ServiceAccounts, String> {
        let set = read(&jwks)?;
        let stamp = std::fs::metadata(&jwks).and_then(|m| m.modified()).ok();
        Ok(ServiceAccounts::with_source(
            KeySource::File(jwks),
            issuer,
            Keys {
                set,
                stamp,
                ..Keys::default()
            },
        ))
    }

    /// Keys fetched from the API server at `url` (https, or http to a
    /// loopback address) with the bearer token in the file `token`, over TLS
    /// trusting only the PEM certificates in `ca` (none: the system's).
    pub fn from_api_server(
        url: &str,
        token: PathBuf,
        ca: Option<PathBuf>,
        issuer: String,
    ) -> Result<ServiceAccounts, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let loopback = match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(format!(
                    "{url}: must be https (http only to a loopback address)"
                ));
            }
        }
        let mut client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: holds no PEM certificate", ca.display()));
            }
            client = client.tls_certs_only(certs);
        }
        let client = client.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(ServiceAccounts::with_source(
            KeySource::ApiServer(ApiServer { url, token, client }),
            issuer,
            Keys::default(),
        ))
    }

    fn with_source(source: KeySource, issuer: String, keys: Keys) -> ServiceAccounts {
        ServiceAccounts {
            source,
            issuer,
            keys: Mutex::new(keys),
            fetching: tokio::sync::Mutex::new(()),
            min_refetch: MIN_REFETCH,
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The caller `token` proves to be, if it is a valid service-account
    /// token for this agent.
    pub async fn caller(&self, token: &str) -> Option<Caller> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        self.refresh(&kid).await;
        let key = DecodingKey::from_jwk(self.keys().set.find(&kid)?).ok()?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| tracing::debug!(error = %e, "service-account token refused"))
            .ok()?
            .claims;
        Some(Caller::ServiceAccount {
            namespace: claims.kubernetes.namespace,
            name: claims.kubernetes.serviceaccount.name,
            pod: claims.kubernetes.pod.map(|pod| pod.name),
        })
    }

    /// Brings the keys up to date before a token signed with `kid` is
    /// checked: the file if it changed; a fetch if the key is unknown or the
    /// keys are old, unless one was tried less than `min_refetch` ago.
    async fn refresh(&self, kid: &str) {
        let api = match &self.source {
            KeySource::File(path) => {
                self.reread(path);
                return;
            }
            KeySource::ApiServer(api) => api,
        };
        let wanted = |keys: &Keys| {
            let unknown = keys.set.find(kid).is_none();
            let stale = keys.fetched.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
            let allowed = keys
                .attempted
                .is_none_or(|at| at.elapsed() >= self.min_refetch);
            (unknown || stale) && allowed
        };
        if !wanted(&self.keys()) {
            return;
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Whoever held the gate may have fetched already.
        if !wanted(&self.keys()) {
            return;
        }
        let fetched = api.fetch().await;
        let mut keys = self.keys();
        keys.attempted = Some(Instant::now());
        match fetched {
            Ok(set) => {
                tracing::debug!(url = %api.url, keys = set.keys.len(), "service-account keys fetched");
                keys.set = set;
                keys.fetched = keys.attempted;
            }
            Err(reason) => tracing::warn!(
                url = %api.url,
                %reason,
                "cannot fetch the service-account keys; the last good ones stay"
            ),
        }
    }

    /// Reads the key file again if it changed.
    fn reread(&self, path: &PathBuf) {
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut keys = self.keys();
        if stamp == keys.stamp {
            return;
        }
        keys.stamp = stamp;
        match read(path) {
            Ok(fresh) => keys.set = fresh,
            Err(reason) => tracing::warn!(
                %reason,
                "service-account keys changed but cannot be read; the last good ones stay"
            ),
        }
    }
}

impl ApiServer {
    /// One fetch of the key document, bounded in time and size.
    async fn fetch(&self) -> Result<JwkSet, String> {
        let token = std::fs::read_to_string(&self.token)
            .map_err(|e| format!("token {}: {e}", self.token.display()))?;
        let mut response = self
            .client
            .get(self.url.clone())
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the API server answered {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{e:#}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the key document is over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("the key document: {e}"))
    }
}

fn read(path: &PathBuf) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A P-256 key made for these tests only, and its public half as a JWK.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZiSQZQ0di9U+n8h6
pY+MkRyUVTbfEqlHXoRpBpqTGbqhRANCAAS8qwG3N5hKRcv+KPX3oWXfvZsAnlHW
OsjqIlAvhd90DvvFtttXF9ktyapEVT5g5mN3hfDMaJy9olCIlrumvdzQ
-----END PRIVATE KEY-----
";
    const TEST_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "cluster-1", "use": "sig", "alg": "ES256",
        "x": "vKsBtzeYSkXL_ij196Fl372bAJ5R1jrI6iJQL4XfdA4", "y": "-8W221cX2S3JqkRVPmDmY3eF8MxonL2iUIiWu6a93NA"}]}"#;
    pub(crate) const ISSUER: &str = "https://kubernetes.default.svc";

    pub(crate) fn token(kid: &str, issuer: &str, audience: &str, expires_in: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": issuer, "aud": [audience], "exp": now + expires_in, "iat": now,
            "sub": "system:serviceaccount:team-a:loader",
            "kubernetes.io": {
                "namespace": "team-a",
                "serviceaccount": {"name": "loader", "uid": "1"},
                "pod": {"name": "trainer-0", "uid": "2"}
            }
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(TEST_KEY.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    pub(crate) fn accounts() -> (tempfile::TempDir, ServiceAccounts) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, TEST_JWKS).unwrap();
        let accounts = ServiceAccounts::from_file(path, ISSUER.to_string()).unwrap();
        (dir, accounts)
    }

    #[tokio::test]
    async fn a_valid_token_is_its_service_account_and_pod() {
        let (_dir, accounts) = accounts();
        assert_eq!(
            accounts
                .caller(&token("cluster-1", ISSUER, AUDIENCE, 600))
                .await,
            Some(Caller::ServiceAccount {
                namespace: "team-a".to_string(),
                name: "loader".to_string(),
                pod: Some("trainer-0".to_string()),
            })
        );
    }

    #[tokio::test]
    async fn a_token_of_another_issuer_audience_key_or_time_is_nobody() {
        let (_dir, accounts) = accounts();
        let refused = [
            token("cluster-1", "https://elsewhere", AUDIENCE, 600),
            token("cluster-1", ISSUER, "vault", 600),
            token("unknown-key", ISSUER, AUDIENCE, 600),
            token("cluster-1", ISSUER, AUDIENCE, -3600),
        ];
        for token in refused {
            assert_eq!(accounts.caller(&token).await, None);
        }
        let good = token("cluster-1", ISSUER, AUDIENCE, 600);
        let (head, rest) = good.split_once('.').unwrap();
        let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
        assert_eq!(accounts.caller(&tampered).await, None, "a changed payload");
        assert_eq!(accounts.caller("not.a.jwt").await, None);
    }

    #[tokio::test]
    async fn a_rotated_key_file_is_read_again_and_a_broken_one_keeps_the_last_good_keys() {
        let (dir, accounts) = accounts();
        let path = dir.path().join("jwks.json");
        let rotated = token("cluster-2", ISSUER, AUDIENCE, 600);
        assert_eq!(accounts.caller(&rotated).await, None, "an unknown key id");
        // The cluster rotates its key (the same key pair under a new id
        // here); the file is replaced, as a Secret or a ConfigMap is.
        let stamp = |path: &PathBuf, seconds: u64| {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            file.set_modified(at).unwrap();
        };
        std::fs::write(&path, TEST_JWKS.replace("cluster-1", "cluster-2")).unwrap();
        stamp(&path, 1_000_000);
        assert!(
            accounts.caller(&rotated).await.is_some(),
            "the new key was not read"
        );
        let retired = token("cluster-1", ISSUER, AUDIENCE, 600);
        assert_eq!(accounts.caller(&retired).await, None, "a retired key");
        // A half-written file: the keys read last stay.
        std::fs::write(&path, "{\"keys\": [").unwrap();
        stamp(&path, 2_000_000);
        assert!(accounts.caller(&rotated).await.is_some());
    }

    /// A stand-in for the API server's `/openid/v1/jwks`: it serves `keys`
    /// to the bearer of `AGENT_TOKEN` only, and counts the fetches.
    struct FakeApiServer {
        keys: Arc<Mutex<String>>,
        fetches: Arc<AtomicUsize>,
        url: String,
        _task: tokio::task::JoinHandle<()>,
    }

    const AGENT_TOKEN: &str = "the-agent-s-own-token";

    async fn fake_api_server(keys: &str) -> FakeApiServer {
        let keys = Arc::new(Mutex::new(keys.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&keys), Arc::clone(&fetches));
        let app = axum::Router::new().route(
            "/openid/v1/jwks",
            axum::routing::get(move |headers: axum::http::HeaderMap| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if bearer.as_deref() != Some(&format!("Bearer {AGENT_TOKEN}")) {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                let body = served.lock().unwrap().clone();
                (axum::http::StatusCode::OK, body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeApiServer {
            keys,
            fetches,
            url,
            _task: task,
        }
    }

    fn from_api_server(
        server: &FakeApiServer,
        token: &str,
    ) -> (tempfile::TempDir, ServiceAccounts) {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let mut accounts =
            ServiceAccounts::from_api_server(&server.url, token_file, None, ISSUER.to_string())
                .unwrap();
        accounts.min_refetch = Duration::from_millis(200);
        (dir, accounts)
    }

    #[tokio::test]
    async fn keys_are_fetched_from_the_api_server_once_and_again_on_rotation() {
        let server = fake_api_server(TEST_JWKS).await;
        let (_dir, accounts) = from_api_server(&server, AGENT_TOKEN);
        let first = token("cluster-1", ISSUER, AUDIENCE, 600);
        assert!(
            accounts.caller(&first).await.is_some(),
            "keys fetched at first use"
        );
        assert!(accounts.caller(&first).await.is_some());
        assert_eq!(
            server.fetches.load(Ordering::SeqCst),
            1,
            "known keys are not fetched again"
        );

        // A rotation: the cluster signs with a key the agent has not seen.
        *server.keys.lock().unwrap() = TEST_JWKS.replace("cluster-1", "cluster-2");
        let rotated = token("cluster-2", ISSUER, AUDIENCE, 600);
        assert_eq!(
            accounts.caller(&rotated).await,
            None,
            "a fetch was tried less than min_refetch ago: no new one yet"
        );
        assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            accounts.caller(&rotated).await.is_some(),
            "the new key is fetched"
        );
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

        // Unknown keys cannot make the agent hammer the API server.
        let forged: Vec<_> = (0..50)
            .map(|n| token(&format!("forged-{n}"), ISSUER, AUDIENCE, 600))
            .collect();
        for forged in &forged {
            assert_eq!(accounts.caller(forged).await, None);
        }
        assert!(
            server.fetches.load(Ordering::SeqCst) <= 3,
            "fifty unknown keys at once cost at most one more fetch"
        );
    }

    #[tokio::test]
    async fn a_broken_key_document_or_refused_token_keeps_the_last_good_keys() {
        let server = fake_api_server(TEST_JWKS).await;
        let (_dir, accounts) = from_api_server(&server, AGENT_TOKEN);
        let good = token("cluster-1", ISSUER, AUDIENCE, 600);
        assert!(accounts.caller(&good).await.is_some());
        *server.keys.lock().unwrap() = "{not json".to_string();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let unknown = token("cluster-9", ISSUER, AUDIENCE, 600);
        assert_eq!(accounts.caller(&unknown).await, None);
        assert_eq!(
            server.fetches.load(Ordering::SeqCst),
            2,
            "the broken document was fetched"
        );
        assert!(
            accounts.caller(&good).await.is_some(),
            "the last good keys stay"
        );

        let (_dir, refused) = from_api_server(&server, "not-the-agent-s-token");
        assert_eq!(refused.caller(&good).await, None, "no keys, no caller");
    }

    #[test]
    fn a_key_url_must_be_https_unless_it_is_loopback() {
        let token = PathBuf::from("/nonexistent");
        let issuer = ISSUER.to_string();
        for url in ["http://kubernetes.default.svc/openid/v1/jwks", "ftp://x/"] {
            let refused =
                ServiceAccounts::from_api_server(url, token.clone(), None, issuer.clone());
            assert!(refused.unwrap_err().contains("must be https"), "{url}");
        }
        for url in [
            "https://kubernetes.default.svc/openid/v1/jwks",
            "http://127.0.0.1:8001/openid/v1/jwks",
            "http://[::1]:8001/openid/v1/jwks",
        ] {
            assert!(
                ServiceAccounts::from_api_server(url, token.clone(), None, issuer.clone()).is_ok(),
                "{url}"
            );
        }
    }
}
