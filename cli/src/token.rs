//! `mangahub token`: HS256 tokens with the claims the gateway reads.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user the token speaks for (claims `user_id` and `sub`).
    #[arg(long)]
    pub user: String,
    /// Optional display name (claim `username`).
    #[arg(long)]
    pub username: Option<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Shared HS256 secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    iat: i64,
    exp: i64,
}

pub fn mint(
    secret: &str,
    user: &str,
    username: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user,
        user_id: user,
        username,
        iat: now,
        exp: now + i64::try_from(ttl.as_secs())?,
    };
    Ok(jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[allow(clippy::print_stdout)]
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    println!(
        "{}",
        mint(
            &args.jwt_secret,
            &args.user,
            args.username.as_deref(),
            args.ttl
        )?
    );
    Ok(())
}
