//! `jwt`: the gateway's token verification, on arbitrary token strings and on
//! arbitrary header and claims bytes signed with the configured HS256 secret.
//! It never panics, and an identity only ever comes from a token whose
//! header says HS256, whose `exp` is present and not past, whose `nbf` and
//! `iat` are not in the future (all within the leeway), and whose user id
//! is the claimed one and valid.
//!
//! Input: `[mode][rest…]`. Mode 0: `rest` is the token. Mode 1: `rest` is
//! `header\nclaims`, encoded and signed. Mode 2: `rest` is the claims under
//! a fixed HS256 header, signed.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use gateway::auth::{Authenticator, Identity};
use gateway::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Deserialize;
use serde_json::Value;

const SECRET: &str = "fuzz-secret";
const LEEWAY_SECS: u64 = 5;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let config = Config::try_parse_from([
            "gateway",
            "--jwt-secret",
            SECRET,
            "--jwt-leeway",
            &format!("{LEEWAY_SECS}s"),
        ])
        .expect("fuzz config");
        Authenticator::from_config(&config).expect("fuzz authenticator")
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HMAC");
    format!("{message}.{signature}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn check(data: &[u8]) {
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => {
            let at = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            signed(&rest[..at], rest.get(at + 1..).unwrap_or_default())
        }
        _ => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
    };
    let before = unix_now();
    let verdict = authenticator().verify(&token);
    let after = unix_now();
    if let Ok(identity) = verdict {
        check_accepted(&token, &identity, before, after);
    }
}

/// The claims the rules look at, read the way the gateway reads them
/// (other claims are skipped unread, so they may even hold invalid UTF-8).
#[derive(Debug, Deserialize)]
struct Seen {
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    user_id: Option<Value>,
    sub: Option<Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// A claim that must be a number of seconds when present (`null` counts as
/// absent), as `jsonwebtoken` reads it.
fn seconds(claim: Option<&Value>, name: &str) -> Option<f64> {
    claim.map(|v| {
        let secs = v.as_f64().unwrap_or_else(|| panic!("{name} {v} accepted"));
        assert!(secs >= 0.0, "negative {name} accepted");
        secs.round()
    })
}

fn check_accepted(token: &str, identity: &Identity, before: u64, after: u64) {
    let part = |i: usize| {
        let text = token.split('.').nth(i).expect("three parts");
        URL_SAFE_NO_PAD.decode(text).expect("base64url")
    };
    let header: Header = serde_json::from_slice(&part(0)).expect("header JSON");
    assert_eq!(header.alg, "HS256", "{token}");
    let claims: Seen = serde_json::from_slice(&part(1)).expect("claims JSON");
    let leeway = LEEWAY_SECS as f64;
    let exp = seconds(claims.exp.as_ref(), "exp").expect("a token without exp was accepted");
    assert!(
        exp + leeway >= before as f64,
        "expired token accepted: {claims:?}"
    );
    for (name, claim) in [("nbf", &claims.nbf), ("iat", &claims.iat)] {
        if let Some(at) = seconds(claim.as_ref(), name) {
            assert!(
                at <= (after as f64) + leeway,
                "future {name} accepted: {claims:?}"
            );
        }
    }
    // `user_id` when present (a string or an integer; anything else is
    // refused), else `sub`.
    let claimed = match &claims.user_id {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => {
            assert!(
                n.is_i64() || n.is_u64(),
                "a non-integer user id accepted: {claims:?}"
            );
            Some(n.to_string())
        }
        Some(other) => panic!("a user id {other} accepted: {claims:?}"),
        None => claims
            .sub
            .as_ref()
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    assert_eq!(claimed.as_deref(), Some(&*identity.user_id), "{claims:?}");
    let valid = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    assert!(
        valid(&identity.user_id) && identity.user_id.len() <= 128,
        "{claims:?}"
    );
    if let Some(name) = &identity.username {
        assert!(valid(name), "{name:?}");
    }
}
