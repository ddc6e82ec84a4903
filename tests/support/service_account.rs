//! Kubernetes service-account tokens for tests of `--sa-jwks`: a signing key
//! made for tests only (the one of `src/api/service_account.rs`'s unit
//! tests), its public half as the cluster's JWKS, and tokens minted with
//! any namespace, account, audience, lifetime, key id or algorithm, as a
//! cluster's API server (or an attacker) would make them.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A P-256 private key for tests only.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZiSQZQ0di9U+n8h6
pY+MkRyUVTbfEqlHXoRpBpqTGbqhRANCAAS8qwG3N5hKRcv+KPX3oWXfvZsAnlHW
OsjqIlAvhd90DvvFtttXF9ktyapEVT5g5mN3hfDMaJy9olCIlrumvdzQ
-----END PRIVATE KEY-----
";
/// Its public half, as the API server's `/openid/v1/jwks` serves it.
pub const TEST_JWKS: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "kid": "cluster-1", "use": "sig", "alg": "ES256",
    "x": "vKsBtzeYSkXL_ij196Fl372bAJ5R1jrI6iJQL4XfdA4", "y": "-8W221cX2S3JqkRVPmDmY3eF8MxonL2iUIiWu6a93NA"}]}"#;
/// The key id of [`TEST_JWKS`]'s key.
pub const TEST_KID: &str = "cluster-1";
/// The issuer the agent is told (`--sa-issuer`).
pub const TEST_ISSUER: &str = "https://kubernetes.default.svc";
/// The audience the agent wants.
pub const AUDIENCE: &str = "hotmount";

/// Writes [`TEST_JWKS`] to `path` (for `--sa-jwks`).
pub fn write_test_jwks(path: &Path) {
    super::write_private_file(path, TEST_JWKS.as_bytes());
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenClaims<'a> {
    /// `kubernetes.io.namespace`.
    pub namespace: &'a str,
    /// `kubernetes.io.serviceaccount.name`.
    pub account: &'a str,
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Seconds from now to `exp` (negative: expired).
    pub expires_in: i64,
    /// The header's `kid`.
    pub kid: &'a str,
}

impl<'a> TokenClaims<'a> {
    /// A valid token's claims for `namespace/account`.
    pub fn valid(namespace: &'a str, account: &'a str) -> TokenClaims<'a> {
        TokenClaims {
            namespace,
            account,
            issuer: TEST_ISSUER,
            audience: AUDIENCE,
            expires_in: 600,
            kid: TEST_KID,
        }
    }

    fn json(&self) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        serde_json::json!({
            "iss": self.issuer, "aud": [self.audience], "exp": now + self.expires_in, "iat": now,
            "sub": format!("system:serviceaccount:{}:{}", self.namespace, self.account),
            "kubernetes.io": {
                "namespace": self.namespace,
                "serviceaccount": {"name": self.account, "uid": "1"},
                "pod": {"name": format!("{}-0", self.account), "uid": "2"}
            }
        })
    }

    /// The token, signed ES256 with the test key.
    pub fn mint(&self) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(
            &header,
            &self.json(),
            &EncodingKey::from_ec_pem(TEST_KEY.as_bytes()).expect("the test key parses"),
        )
        .expect("sign a test token")
    }

    /// The token signed HS256 with `secret` (an algorithm-confusion forgery).
    pub fn mint_hmac(&self, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&header, &self.json(), &EncodingKey::from_secret(secret))
            .expect("sign a test token")
    }

    /// The token with `"alg": "none"` and no signature.
    pub fn unsigned(&self) -> String {
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": self.kid});
        format!(
            "{}.{}.",
            base64url(header.to_string().as_bytes()),
            base64url(self.json().to_string().as_bytes())
        )
    }
}

/// `token`'s header and claims with `other`'s signature: a payload the
/// signer never signed.
pub fn splice(token: &str, other: &str) -> String {
    let (signed, _) = token.rsplit_once('.').expect("a JWT");
    let (_, signature) = other.rsplit_once('.').expect("a JWT");
    format!("{signed}.{signature}")
}

/// Unpadded base64url (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}
