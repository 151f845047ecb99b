//! Verifies the JWT of the `auth` message: HS256 with the shared secret, or
//! RS256/EdDSA with a configured public key. `exp` is required; `nbf` and
//! `iat`, when present, may lie at most `JWT_LEEWAY` in the future; `alg: none`
//! and any algorithm without a configured key are rejected before any
//! signature check, so a public key can never be used as an HMAC secret.
//! User ids and usernames are checked by `mangahub_model`'s rules (no NUL or
//! other control characters; user ids 1..128 bytes).

use std::sync::Arc;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mangahub_model::{validate_user_id, validate_username};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Who a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Arc<str>,
    pub username: Option<Arc<str>>,
}

/// Why a token was refused (a metrics label; clients only see "invalid token").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("claims rejected")]
    Claims,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token names no user")]
    NoUser,
}

impl AuthError {
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::Claims => "claims",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::NoUser => "no_user",
        }
    }
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

pub struct Authenticator {
    hmac: Option<Verifier>,
    public: Option<(Algorithm, Verifier)>,
    /// `JWT_LEEWAY` in seconds, for the `iat` check.
    leeway: u64,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    user_id: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    username: Option<String>,
    /// Checked here: `Validation` has no `iat` option.
    #[serde(default)]
    iat: Option<serde_json::Value>,
}

/// The claims of a token this service accepts, as an issuer writes them.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// An HS256 token for `user` valid for `ttl`, as the account service
/// issues them (`mangahub token`, `mangahub dev` and the tests use this).
pub fn mint_hs256(
    secret: &[u8],
    user: &str,
    username: Option<&str>,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let claims = IssuedClaims {
        sub: user,
        user_id: user,
        username,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = config.jwt_leeway.as_secs();
            v.validate_exp = true;
            // RFC 7519 §4.1.5: not accepted before `nbf` (minus the leeway).
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &config.jwt_issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &config.jwt_audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            v
        };
        let hmac = config.jwt_secret.as_ref().map(|secret| Verifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation: validation(Algorithm::HS256),
        });
        let public = match &config.jwt_public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the JWT public key {}", path.display()))?;
                let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (Algorithm::RS256, key)
                } else {
                    let key = DecodingKey::from_ed_pem(&pem).context(
                        "the JWT public key is neither an RSA nor an Ed25519 PEM public key",
                    )?;
                    (Algorithm::EdDSA, key)
                };
                Some((
                    alg,
                    Verifier {
                        key,
                        validation: validation(alg),
                    },
                ))
            }
        };
        if hmac.is_none() && public.is_none() {
            anyhow::bail!("JWT_SECRET (or --jwt-public-key) is required");
        }
        if config
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            anyhow::bail!("JWT_SECRET must not be empty");
        }
        Ok(Self {
            hmac,
            public,
            leeway: config.jwt_leeway.as_secs(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let verifier = match (header.alg, &self.hmac, &self.public) {
            (Algorithm::HS256, Some(v), _) => v,
            (alg, _, Some((public_alg, v))) if alg == *public_alg => v,
            _ => return Err(AuthError::Algorithm),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.kind() {
                    ErrorKind::InvalidSignature => AuthError::Signature,
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::Algorithm
                    }
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                        AuthError::Malformed
                    }
                    _ => AuthError::Claims,
                }
            })?;
        let claims = data.claims;
        // A token issued in the future (beyond the clock skew) was not
        // minted by an honest issuer with a sane clock: refuse it like `nbf`.
        match &claims.iat {
            None => {}
            Some(serde_json::Value::Number(iat)) => {
                let iat = iat.as_f64().ok_or(AuthError::Claims)?;
                let latest = unix_now().saturating_add(self.leeway) as f64;
                if iat > latest {
                    return Err(AuthError::NotYetValid);
                }
            }
            Some(_) => return Err(AuthError::Claims),
        }
        // `user_id` when present (a string, or an integer as its digits:
        // `12345.0` is no user id), else `sub`.
        let user_id = match claims.user_id {
            None => claims.sub,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Some(_) => return Err(AuthError::Claims),
        }
        .filter(|u| validate_user_id(u).is_ok())
        .ok_or(AuthError::NoUser)?;
        let username = claims.username.filter(|u| !u.is_empty());
        if username
            .as_deref()
            .is_some_and(|u| validate_username(u).is_err())
        {
            return Err(AuthError::Claims);
        }
        Ok(Identity {
            user_id: user_id.into(),
            username: username.map(Into::into),
        })
    }
}
