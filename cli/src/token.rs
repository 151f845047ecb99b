//! `mangahub token`: HS256 tokens with the claims the gateway reads.

use std::time::Duration;

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

/// An HS256 token with the claims the gateway reads.
pub fn mint(
    secret: &str,
    user: &str,
    username: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    Ok(gateway::auth::mint_hs256(
        secret.as_bytes(),
        user,
        username,
        ttl,
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
