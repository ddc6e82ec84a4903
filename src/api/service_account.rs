//! Kubernetes service-account tokens as callers of the TCP API: a pod's
//! projected token (audience `hotmount`) is verified offline against the
//! cluster's signing keys (`--sa-jwks FILE`, the JSON of the API server's
//! `/openid/v1/jwks`, read again when it changes) and issuer
//! (`--sa-issuer`): signature, issuer, audience and expiry. The caller is
//! then `serviceaccount:NAMESPACE/NAME` (with the pod's name from the
//! token's claims), and the policy decides what it may do.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use crate::api::access::Caller;

/// The audience a token must be issued for.
pub const AUDIENCE: &str = "hotmount";

/// The cluster's signing keys and issuer.
#[derive(Debug)]
pub struct ServiceAccounts {
    jwks: PathBuf,
    issuer: String,
    keys: Mutex<(Option<SystemTime>, JwkSet)>,
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
    /// Keys from `jwks`, tokens from `issuer`; fails if the file cannot be
    /// used now.
    pub fn new(jwks: PathBuf, issuer: String) -> Result<ServiceAccounts, String> {
        let keys = read(&jwks)?;
        let stamp = std::fs::metadata(&jwks).and_then(|m| m.modified()).ok();
        Ok(ServiceAccounts {
            jwks,
            issuer,
            keys: Mutex::new((stamp, keys)),
        })
    }

    /// The caller `token` proves to be, if it is a valid service-account
    /// token for this agent.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let key = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            let stamp = std::fs::metadata(&self.jwks)
                .and_then(|m| m.modified())
                .ok();
            if stamp != keys.0 {
                match read(&self.jwks) {
                    Ok(fresh) => *keys = (stamp, fresh),
                    Err(reason) => {
                        tracing::warn!(%reason, "service-account keys changed but cannot be read; the last good ones stay");
                        keys.0 = stamp;
                    }
                }
            }
            DecodingKey::from_jwk(keys.1.find(&kid)?).ok()?
        };
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
}

fn read(path: &PathBuf) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

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
        let accounts = ServiceAccounts::new(path, ISSUER.to_string()).unwrap();
        (dir, accounts)
    }

    #[test]
    fn a_valid_token_is_its_service_account_and_pod() {
        let (_dir, accounts) = accounts();
        assert_eq!(
            accounts.caller(&token("cluster-1", ISSUER, AUDIENCE, 600)),
            Some(Caller::ServiceAccount {
                namespace: "team-a".to_string(),
                name: "loader".to_string(),
                pod: Some("trainer-0".to_string()),
            })
        );
    }

    #[test]
    fn a_token_of_another_issuer_audience_key_or_time_is_nobody() {
        let (_dir, accounts) = accounts();
        let refused = [
            token("cluster-1", "https://elsewhere", AUDIENCE, 600),
            token("cluster-1", ISSUER, "vault", 600),
            token("unknown-key", ISSUER, AUDIENCE, 600),
            token("cluster-1", ISSUER, AUDIENCE, -3600),
        ];
        for token in refused {
            assert_eq!(accounts.caller(&token), None);
        }
        let good = token("cluster-1", ISSUER, AUDIENCE, 600);
        let (head, rest) = good.split_once('.').unwrap();
        let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
        assert_eq!(accounts.caller(&tampered), None, "a changed payload");
        assert_eq!(accounts.caller("not.a.jwt"), None);
    }
}
