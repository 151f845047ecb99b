//! The compose topology, natively: a private Redis with AOF and a private
//! Postgres, the real `progress-service` (hybrid) and `gateway` binaries run
//! with the compose file's environment (addresses swapped for free loopback
//! ports, secrets from `.env.example`), and a scenario through `mangahub client`
//! and a WebSocket client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{PrivatePostgres, PrivateRedis, free_port, http_get, wait_until};
use yaml_rust2::Yaml;

use crate::binaries::{self, GATEWAY, MANGAHUB, PROGRESS_SERVICE};
use crate::compose;
use crate::process::{self, Background, Service};

const STARTUP: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")))
}

/// The service's compose environment with the given settings replaced (each
/// must be one the compose file sets: the test runs what compose runs).
fn environment(service: &Yaml, replace: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut env = compose::environment(service);
    for (key, value) in replace {
        assert!(env.contains_key(*key), "compose sets no {key}");
        env.insert((*key).to_owned(), value.clone());
    }
    env
}

/// A service's compose healthcheck (`mangahub …`) with `flag`'s value replaced;
/// returns the arguments after `mangahub`.
fn healthcheck(service: &Yaml, flag: &str, value: String) -> Vec<String> {
    let mut probe = compose::healthcheck_command(service).expect("healthcheck");
    assert_eq!(probe.first().map(String::as_str), Some(MANGAHUB));
    let at = probe.iter().position(|a| a == flag).expect(flag) + 1;
    probe[at] = value;
    probe.split_off(1)
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The only line a one-shot `mangahub client --json` command prints.
fn reply(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one reply line expected: {stdout}");
    parse(lines[0])
}

async fn stored(pool: &PgPool, user: &str, manga: i64) -> Option<(String, i64)> {
    sqlx::query_as(
        "SELECT current_chapter::text, version FROM user_progress WHERE user_id = $1 AND manga_id = $2",
    )
    .bind(user)
    .bind(manga)
    .fetch_optional(pool)
    .await
    .expect("querying user_progress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_a_full_scenario_natively() {
    let secrets = compose::env_file(".env.example");
    let doc = compose::interpolate_tree(&compose::base(), &secrets);
    let mangahub = binaries::path(MANGAHUB);

    // PrivateRedis::start(true) runs exactly this persistence setting.
    let redis_cmd = compose::words(&compose::service(&doc, "redis")["command"]).join(" ");
    assert!(
        redis_cmd.contains("--appendonly yes --appendfsync everysec"),
        "{redis_cmd}"
    );
    let redis = PrivateRedis::start(true).await.expect("private Redis");
    let postgres = PrivatePostgres::start().await.expect("private Postgres");
    let database_url = postgres.fresh_database().await.expect("fresh database");

    let progress_def = compose::service(&doc, "progress-service");
    let grpc = loopback();
    let progress_admin = loopback();
    let mut progress = Service::start(
        PROGRESS_SERVICE,
        &binaries::path(PROGRESS_SERVICE),
        &environment(
            &progress_def,
            &[
                ("DATABASE_URL", database_url.clone()),
                ("REDIS_URL", redis.url()),
                ("PROGRESS_LISTEN", grpc.to_string()),
                ("METRICS_LISTEN", progress_admin.to_string()),
            ],
        ),
    );

    // Ready when the compose healthcheck, pointed at this port, passes.
    let probe = healthcheck(&progress_def, "--url", format!("http://{grpc}"));
    let no_env = BTreeMap::new();
    progress
        .wait_ready(STARTUP, || process::succeeds(&mangahub, &probe, &no_env))
        .await;
    let (status, body) = http_get(progress_admin, "/readyz").await.expect("/readyz");
    assert_eq!(status, 200, "progress service /readyz: {body}");

    let gateway_def = compose::service(&doc, "gateway");
    let tcp = loopback();
    let ws = loopback();
    let gateway_admin = loopback();
    let mut gateway = Service::start(
        GATEWAY,
        &binaries::path(GATEWAY),
        &environment(
            &gateway_def,
            &[
                ("GATEWAY_LISTEN", tcp.to_string()),
                ("WS_LISTEN", ws.to_string()),
                ("METRICS_LISTEN", gateway_admin.to_string()),
                ("PROGRESS_URL", format!("http://{grpc}")),
            ],
        ),
    );
    // Ready when the compose healthcheck, pointed at this admin port, passes.
    let gateway_probe = healthcheck(
        &gateway_def,
        "--http",
        format!("http://{gateway_admin}/readyz"),
    );
    gateway
        .wait_ready(STARTUP, || {
            process::succeeds(&mangahub, &gateway_probe, &no_env)
        })
        .await;

    let client_env: BTreeMap<String, String> =
        [("JWT_SECRET".to_owned(), secrets["JWT_SECRET"].clone())].into();
    let addr = tcp.to_string();
    let as_user = |user: &'static str, rest: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["client", "--addr", &addr, "--json", "--user", user]
            .map(str::to_owned)
            .to_vec();
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    };
    let client = |user: &'static str, rest: &'static [&'static str]| {
        let args = as_user(user, rest);
        let (mangahub, env) = (mangahub.clone(), client_env.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            reply(&process::run(&mangahub, &args, &env).await)
        }
    };
    let background = |user: &'static str, rest: &[&'static str]| {
        let args = as_user(user, rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Background::start(&mangahub, &args, &client_env)
    };

    // The live page is served, and Alice's browser tab is on the WebSocket.
    let (status, page) = http_get(ws, "/")
        .await
        .expect("GET / on the WebSocket port");
    assert_eq!(status, 200, "{page}");
    let mut browser = testkit::LineClient::connect_ws(ws).await;
    let token = gateway::auth::mint_hs256(
        secrets["JWT_SECRET"].as_bytes(),
        "alice",
        None,
        Duration::from_secs(600),
    )
    .expect("token");
    let auth = browser
        .request(json!({"type":"auth","data":{"token":token,"device":"web"}}))
        .await;
    assert_eq!(auth["success"], true, "{auth}");

    // Alice's tablet (also on manga:42) and Bob on the global channel.
    let tablet = background("alice", &["watch", "--manga", "42", "--count", "1"]);
    let bob = background("bob", &["watch", "--global", "--count", "1"]);
    let subscribed = |w: &Background| w.lines().iter().any(|l| parse(l)["type"] == "subscribed");
    wait_until(STEP, "both watchers to subscribe", || {
        let done = subscribed(&tablet) && subscribed(&bob);
        async move { done }
    })
    .await
    .expect("watchers subscribed");

    let ack = client("alice", &["update", "--manga", "42", "--chapter", "76.5"]).await;
    assert_eq!(ack["type"], "progress_ack", "{ack}");
    assert_eq!(ack["applied"], true, "{ack}");
    let record = &ack["data"];
    assert_eq!(
        (&record["user_id"], &record["manga_id"], &record["chapter"]),
        (&json!("alice"), &json!(42), &json!(76.5)),
        "{ack}"
    );
    assert_eq!(record["version"], 1, "{ack}");
    assert_eq!(record["status"], "reading", "{ack}");

    let seen = browser.recv_type("progress_broadcast").await;
    assert_eq!(seen["channel"], "user", "{seen}");
    assert_eq!(seen["data"]["chapter"], json!(76.5), "{seen}");

    let got = client("alice", &["get", "--manga", "42"]).await;
    assert_eq!(got["type"], "progress", "{got}");
    assert_eq!(got["data"]["chapter"], json!(76.5), "{got}");
    assert_eq!(got["data"]["version"], 1, "{got}");

    let listed = client("alice", &["list"]).await;
    assert_eq!(listed["type"], "progress_list", "{listed}");
    let items = listed["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["manga_id"], 42, "{listed}");
    assert_eq!(listed["data"]["next_cursor"], Value::Null, "{listed}");

    for (who, watcher, channels) in [
        ("alice's tablet", tablet, &["user", "manga:42"][..]),
        ("bob", bob, &["global"][..]),
    ] {
        let (status, lines) = watcher.finish(STEP).await;
        assert!(status.success(), "{who}'s watch failed: {lines:?}");
        let event = parse(lines.last().expect("an event"));
        assert_eq!(event["type"], "progress_broadcast", "{who}: {event}");
        let channel = event["channel"].as_str().unwrap_or_default();
        assert!(channels.contains(&channel), "{who}: channel {channel}");
        assert_eq!(event["data"]["user_id"], "alice", "{who}: {event}");
        assert_eq!(event["data"]["manga_id"], 42, "{who}: {event}");
        assert_eq!(event["data"]["chapter"], json!(76.5), "{who}: {event}");
    }

    // The batch writer moves the write-behind queue to Postgres.
    let pool = PgPool::connect(&database_url).await.expect("Postgres pool");
    wait_until(STEP, "manga 42 to reach Postgres", || {
        let pool = pool.clone();
        async move { stored(&pool, "alice", 42).await == Some(("76.50".into(), 1)) }
    })
    .await
    .expect("flushed to Postgres");

    let deleted = client("alice", &["delete", "--manga", "42"]).await;
    assert_eq!(deleted["type"], "progress_deleted", "{deleted}");
    assert_eq!(deleted["data"]["manga_id"], 42, "{deleted}");

    // Written just before SIGTERM: the shutdown flush must carry it (and the delete).
    let last = client("alice", &["update", "--manga", "7", "--chapter", "12.25"]).await;
    assert_eq!(last["applied"], true, "{last}");

    progress.terminate();
    let status = progress.wait(STEP).await;
    assert!(status.success(), "progress-service exited with {status}");
    // Without its progress service the gateway reports unready, and the
    // compose probe says unhealthy.
    wait_until(STEP, "the gateway healthcheck to fail", || {
        let (mangahub, probe) = (&mangahub, &gateway_probe);
        async move { !process::succeeds(mangahub, probe, &BTreeMap::new()).await }
    })
    .await
    .expect("gateway unhealthy without the progress service");
    gateway.terminate();
    let status = gateway.wait(STEP).await;
    assert!(status.success(), "gateway exited with {status}");

    assert_eq!(stored(&pool, "alice", 7).await, Some(("12.25".into(), 1)));
    assert_eq!(
        stored(&pool, "alice", 42).await,
        None,
        "the delete reached Postgres"
    );
    pool.close().await;
    assert!(progress.has_exited() && gateway.has_exited());
}
