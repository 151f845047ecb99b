//! Settings: every one a flag with an environment fallback (contract §1).
//! Secrets never show up in `Debug` output or `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use mangahub_ops::{LogFormat, Secret};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gateway",
    version,
    about = "MangaHub TCP gateway: JSON lines, JWT auth, rate limits, subscriptions, fan-out"
)]
pub struct Config {
    /// TCP listen address (JSON lines, optionally TLS).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// WebSocket listen address: `/ws` speaks the same protocol, one JSON
    /// message per text frame, and `/` serves the live progress page; `off`
    /// disables it. TLS (`wss://`) with the same --tls-cert/--tls-key.
    #[arg(long, env = "WS_LISTEN", default_value = "0.0.0.0:8082", value_parser = parse_listen)]
    pub ws_listen: Listen,

    /// Extra origins (`scheme://host[:port]`, comma-separated; `*` for any)
    /// whose pages may open WebSocket connections. The gateway's own page
    /// and clients that send no `Origin` (apps, CLIs) are always allowed.
    #[arg(long, env = "WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Vec<String>,

    /// Listen backlog of the TCP port: connections the kernel completes before
    /// the gateway accepts them (reconnect storms). Capped by the kernel at
    /// net.core.somaxconn; a larger value is logged and silently lowered.
    #[arg(long, env = "LISTEN_BACKLOG", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub listen_backlog: u32,

    /// gRPC address(es) of the progress service; several (comma-separated) are load-balanced.
    #[arg(
        long,
        env = "PROGRESS_URL",
        default_value = "http://127.0.0.1:8083",
        value_delimiter = ','
    )]
    pub progress_url: Vec<String>,

    /// Sent as `authorization: Bearer <token>` on every gRPC call.
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<Secret>,

    /// HS256 secret shared with the account service. Required unless --jwt-public-key is set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM public key (RSA for RS256, Ed25519 for EdDSA) accepted besides the HS256 secret.
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this `aud`.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[arg(long, env = "JWT_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// How long a new connection has to send its `auth` message.
    #[arg(long, env = "AUTH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// A connection that sends nothing for this long is closed.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Longest accepted line; longer ones are answered MESSAGE_TOO_LARGE and skipped.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(64..=64 * 1024 * 1024))]
    pub max_message_bytes: u64,

    /// Messages per second per connection (token bucket refill).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_sec: u32,

    /// Token bucket size per connection.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// Messages per second per user across all their connections [default: 4 × RATE_LIMIT_PER_SEC].
    #[arg(long, env = "RATE_LIMIT_USER_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_user_per_sec: Option<u32>,

    /// Token bucket size per user [default: 4 × RATE_LIMIT_BURST].
    #[arg(long, env = "RATE_LIMIT_USER_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_user_burst: Option<u32>,

    /// Subscriptions (manga channels + global) per connection.
    #[arg(long, env = "MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Connections held at once; further clients wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "SHUTDOWN_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,

    /// Bytes queued for one connection before it is dropped as a slow
    /// consumer (1 KiB to 4 GiB - 1).
    #[arg(long, env = "OUTBOUND_QUEUE_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1024..))]
    pub outbound_queue_bytes: u32,

    /// Deadline of one gRPC call to the progress service.
    #[arg(long, env = "GRPC_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub grpc_timeout: Duration,

    /// Deadline for connecting to the progress service.
    #[arg(long, env = "GRPC_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub grpc_connect_timeout: Duration,

    /// Longest pause between attempts to re-open the event stream.
    #[arg(long, env = "WATCH_RETRY_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    pub watch_retry_max: Duration,

    /// Longest pause between health probes of an unreachable progress-service
    /// replica (a restarted replica rejoins within about this long).
    #[arg(long, env = "HEALTH_RETRY_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_retry_max: Duration,

    /// PEM certificate chain; with --tls-key the port speaks TLS.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Admin HTTP address for /metrics, /healthz and /readyz (unset = no admin port).
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format: human text or JSON lines.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A listen address that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    On(SocketAddr),
    Off,
}

impl Listen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::On(addr) => Some(addr),
            Listen::Off => None,
        }
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    text.parse()
        .map(Listen::On)
        .map_err(|err| format!("{err}: expected host:port or `off`"))
}

impl Config {
    pub(crate) fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }

    pub(crate) fn max_connections(&self) -> usize {
        usize::try_from(self.max_connections)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS)
    }

    pub(crate) fn user_rate(&self) -> (u32, u32) {
        (
            self.rate_limit_user_per_sec
                .unwrap_or(self.rate_limit_per_sec.saturating_mul(4)),
            self.rate_limit_user_burst
                .unwrap_or(self.rate_limit_burst.saturating_mul(4)),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use clap::Parser;

    use super::Config;

    #[test]
    fn help_lists_every_setting_of_the_contract() {
        let help = Config::command().render_long_help().to_string();
        for name in [
            "GATEWAY_LISTEN",
            "LISTEN_BACKLOG",
            "PROGRESS_URL",
            "SERVICE_TOKEN",
            "JWT_SECRET",
            "AUTH_TIMEOUT",
            "IDLE_TIMEOUT",
            "MAX_MESSAGE_BYTES",
            "RATE_LIMIT_PER_SEC",
            "RATE_LIMIT_BURST",
            "RATE_LIMIT_USER_PER_SEC",
            "MAX_SUBSCRIPTIONS",
            "MAX_CONNECTIONS",
            "SHUTDOWN_DRAIN",
            "OUTBOUND_QUEUE_BYTES",
            "LOG_FORMAT",
            "TLS_CERT",
            "WS_LISTEN",
            "WS_ALLOWED_ORIGINS",
        ] {
            assert!(help.contains(name), "--help lacks {name}");
        }
    }

    #[test]
    fn outbound_queue_bytes_is_refused_outside_its_range() {
        for (value, ok) in [
            ("1023", false),
            ("1024", true),
            ("4294967295", true),
            ("4294967296", false),
        ] {
            let parsed = Config::try_parse_from(["gateway", "--outbound-queue-bytes", value]);
            assert_eq!(parsed.is_ok(), ok, "--outbound-queue-bytes {value}");
        }
    }

    #[test]
    fn the_websocket_port_can_be_switched_off() {
        let config = Config::try_parse_from(["gateway", "--ws-listen", "off"]).expect("config");
        assert_eq!(config.ws_listen.addr(), None);
        assert!(Config::try_parse_from(["gateway", "--ws-listen", "nowhere"]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let config = Config::try_parse_from([
            "gateway",
            "--jwt-secret",
            "hunter2",
            "--service-token",
            "tok-123",
        ])
        .expect("config");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("tok-123"),
            "{debug}"
        );
        assert_eq!(config.rate_limit_per_sec, 50);
        assert_eq!(config.listen_backlog, 4096);
        assert_eq!(
            config.ws_listen,
            super::Listen::On(([0, 0, 0, 0], 8082).into())
        );
        assert_eq!(config.user_rate(), (200, 400));
    }
}
