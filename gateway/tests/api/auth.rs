//! The first message must be a valid `auth`; everything else closes the connection.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::helpers::{SECRET, base64url, fixture, now, sign, spawn_app, spawn_app_with, token};

fn hs256(claims: &Value) -> String {
    sign(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

async fn assert_rejected(app: &crate::helpers::TestApp, token: &str) {
    let mut c = app.client().await;
    let reply = c
        .request(json!({"type":"auth","id":"a","data":{"token":token}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"auth_response","id":"a","success":false,"error":"invalid token"})
    );
    assert!(
        c.until_closed().await.is_empty(),
        "connection closed after a bad token"
    );
}

#[tokio::test]
async fn a_good_token_authenticates() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let reply = c
        .request(json!({"type":"auth","data":{"token":token("alice")}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"auth_response","success":true,"user_id":"alice","username":"alice-name"})
    );
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");

    // No username claim: omitted. No user_id claim: `sub` is the user.
    let mut c = app.client().await;
    let reply = c
        .request(
            json!({"type":"auth","data":{"token":hs256(&json!({"sub":"bob","exp":now()+60}))}}),
        )
        .await;
    assert_eq!(
        reply,
        json!({"type":"auth_response","success":true,"user_id":"bob"})
    );

    // An integer user id is its digits.
    let mut c = app.client().await;
    let numeric = hs256(&json!({"user_id":12345,"exp":now()+60}));
    let reply = c
        .request(json!({"type":"auth","data":{"token":numeric}}))
        .await;
    assert_eq!(reply["user_id"], "12345", "{reply}");
}

#[tokio::test]
async fn bad_tokens_are_rejected_and_the_connection_closed() {
    let app = spawn_app().await;
    let claims = json!({"user_id":"mallory","exp":now()+3600});
    let wrong_key = sign(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other secret"),
    );
    assert_rejected(&app, &wrong_key).await;

    let expired = hs256(&json!({"user_id":"mallory","exp":now()-120}));
    assert_rejected(&app, &expired).await;

    let no_exp = hs256(&json!({"user_id":"mallory"}));
    assert_rejected(&app, &no_exp).await;

    let no_user = hs256(&json!({"username":"nobody","exp":now()+3600}));
    assert_rejected(&app, &no_user).await;

    // A user id that is not a string or an integer is refused, not turned
    // into text (`12345.0`) or passed over for `sub`.
    for bad in [json!(12345.0), json!(true), json!({"id":1})] {
        let token = hs256(&json!({"user_id":bad,"sub":"someone","exp":now()+3600}));
        assert_rejected(&app, &token).await;
    }

    // Contract §6: no control characters in user ids.
    let control = hs256(&json!({"user_id":"mal\u{0}lory","exp":now()+3600}));
    assert_rejected(&app, &control).await;

    let none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    );
    assert_rejected(&app, &none).await;

    let hs512 = sign(
        &claims,
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert_rejected(&app, &hs512).await;

    let ed_key = std::fs::read(fixture("jwt-ed25519-private.pem")).expect("fixture");
    let eddsa = sign(
        &claims,
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(&ed_key).expect("ed25519 key"),
    );
    assert_rejected(&app, &eddsa).await;

    assert_rejected(&app, "not-a-jwt").await;
    let mut c = app.client().await;
    let reply = c.request(json!({"type":"auth","data":{}})).await;
    assert_eq!(reply["success"], false);
}

#[tokio::test]
async fn a_public_key_is_accepted_and_cannot_be_used_as_an_hmac_secret() {
    let public = fixture("jwt-ed25519-public.pem");
    let public_path = public.to_str().expect("utf-8 path");
    let app = spawn_app_with(&["--jwt-public-key", public_path]).await;
    let claims = json!({"user_id":"pk-user","exp":now()+3600});
    let ed_key = std::fs::read(fixture("jwt-ed25519-private.pem")).expect("fixture");
    let eddsa = sign(
        &claims,
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(&ed_key).expect("ed25519 key"),
    );
    let mut c = app.client().await;
    let reply = c
        .request(json!({"type":"auth","data":{"token":eddsa}}))
        .await;
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["user_id"], "pk-user");

    // Algorithm confusion: HS256 keyed with the public key's bytes.
    let public_pem = std::fs::read(&public).expect("fixture");
    let confused = sign(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
    );
    assert_rejected(&app, &confused).await;
    // The shared secret still works beside the key.
    app.authed("hs-user").await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(&["--jwt-issuer", "accounts", "--jwt-audience", "mangahub"]).await;
    let good = hs256(&json!({"user_id":"u","iss":"accounts","aud":"mangahub","exp":now()+60}));
    let mut c = app.client().await;
    let reply = c
        .request(json!({"type":"auth","data":{"token":good}}))
        .await;
    assert_eq!(reply["success"], true, "{reply}");
    for claims in [
        json!({"user_id":"u","iss":"evil","aud":"mangahub","exp":now()+60}),
        json!({"user_id":"u","iss":"accounts","aud":"other","exp":now()+60}),
        json!({"user_id":"u","aud":"mangahub","exp":now()+60}),
        json!({"user_id":"u","iss":"accounts","exp":now()+60}),
    ] {
        assert_rejected(&app, &hs256(&claims)).await;
    }
}

#[tokio::test]
async fn any_other_first_message_gets_auth_required_and_a_close() {
    let app = spawn_app().await;
    for first in [
        json!({"type":"ping","id":1}),
        json!({"type":"progress_update","data":{"manga_id":1,"chapter":1}}),
        json!({"type":"bogus"}),
    ] {
        let mut c = app.client().await;
        let reply = c.request(first.clone()).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "AUTH_REQUIRED");
        if first.get("id").is_some() {
            assert_eq!(reply["id"], 1);
        }
        assert!(c.until_closed().await.is_empty());
    }
    let mut c = app.client().await;
    c.send_raw(b"garbage\n").await;
    assert_eq!(c.recv().await["code"], "AUTH_REQUIRED");
    assert!(c.until_closed().await.is_empty());
}

#[tokio::test]
async fn silence_is_closed_at_the_auth_deadline() {
    let app = spawn_app_with(&["--auth-timeout", "300ms"]).await;
    let mut c = app.client().await;
    let started = Instant::now();
    assert!(c.until_closed().await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
}

/// A fresh connection's `auth` with `token`: the reply's `success`.
async fn auth_succeeds(app: &crate::helpers::TestApp, token: &str) -> bool {
    let mut c = app.client().await;
    let reply = c
        .request(json!({"type":"auth","data":{"token":token}}))
        .await;
    reply["success"] == json!(true)
}

// Leeway 10 s. "Inside" sits one second under the edge (the gateway's clock
// can only be later than the one that minted the token); "outside" three
// seconds over it, so a second ticking between mint and check can't flip it.
const LEEWAY: u64 = 10;

#[tokio::test]
async fn nbf_is_honoured_with_the_leeway() {
    let app = spawn_app_with(&["--jwt-leeway", "10s"]).await;
    let past = hs256(&json!({"user_id":"n","nbf":now()-3600,"exp":now()+3600}));
    assert!(auth_succeeds(&app, &past).await, "nbf in the past");
    let inside = hs256(&json!({"user_id":"n","nbf":now()+LEEWAY-1,"exp":now()+3600}));
    assert!(auth_succeeds(&app, &inside).await, "nbf within the leeway");

    let outside = hs256(&json!({"user_id":"n","nbf":now()+LEEWAY+3,"exp":now()+3600}));
    assert_rejected(&app, &outside).await;
    let hour = hs256(&json!({"user_id":"n","nbf":now()+3600,"exp":now()+7200}));
    assert_rejected(&app, &hour).await;
    let malformed = hs256(&json!({"user_id":"n","nbf":"soon","exp":now()+3600}));
    assert_rejected(&app, &malformed).await;
}

#[tokio::test]
async fn an_iat_in_the_future_beyond_the_leeway_is_refused() {
    let app = spawn_app_with(&["--jwt-leeway", "10s"]).await;
    let normal = hs256(&json!({"user_id":"i","iat":now(),"exp":now()+3600}));
    assert!(auth_succeeds(&app, &normal).await, "iat now");
    let inside = hs256(&json!({"user_id":"i","iat":now()+LEEWAY-1,"exp":now()+3600}));
    assert!(auth_succeeds(&app, &inside).await, "iat within the leeway");
    #[allow(clippy::cast_precision_loss)]
    let fractional =
        hs256(&json!({"user_id":"i","iat":(now() + LEEWAY - 1) as f64 + 0.5,"exp":now()+3600}));
    assert!(
        auth_succeeds(&app, &fractional).await,
        "fractional iat within"
    );

    let outside = hs256(&json!({"user_id":"i","iat":now()+LEEWAY+3,"exp":now()+3600}));
    assert_rejected(&app, &outside).await;
    let far = hs256(&json!({"user_id":"i","iat":now()+86_400,"exp":now()+90_000}));
    assert_rejected(&app, &far).await;
    let malformed = hs256(&json!({"user_id":"i","iat":"yesterday","exp":now()+3600}));
    assert_rejected(&app, &malformed).await;
}

#[tokio::test]
async fn control_characters_in_user_ids_and_usernames_are_refused() {
    let app = spawn_app().await;
    for bad in [
        "nul\u{0}byte",
        "new\nline",
        "tab\there",
        "esc\u{1b}[0m",
        "del\u{7f}",
        "c1\u{85}next",
    ] {
        let by_user_id = hs256(&json!({"user_id":bad,"exp":now()+3600}));
        assert_rejected(&app, &by_user_id).await;
        let by_sub = hs256(&json!({"sub":bad,"exp":now()+3600}));
        assert_rejected(&app, &by_sub).await;
        let by_username = hs256(&json!({"user_id":"fine","username":bad,"exp":now()+3600}));
        assert_rejected(&app, &by_username).await;
    }
    // Non-ASCII that is not a control character is fine in both.
    let mut c = app.client().await;
    let good = hs256(&json!({"user_id":"ユーザー 1","username":"Zoë 🐱","exp":now()+3600}));
    let reply = c
        .request(json!({"type":"auth","data":{"token":good}}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"auth_response","success":true,"user_id":"ユーザー 1","username":"Zoë 🐱"})
    );
}
