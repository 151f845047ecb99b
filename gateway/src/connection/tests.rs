//! One connection served over in-memory and loopback streams: the size of an
//! idle connection's future, and the auth and idle deadlines on Tokio's
//! paused clock (no real waiting).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use super::*;

const SECRET: &str = "connection-unit-test-secret";

fn shared(extra: &[&str]) -> Arc<Shared> {
    let mut args = vec![
        "gateway",
        "--jwt-secret",
        SECRET,
        // Never called by these tests: replicas connect lazily.
        "--progress-url",
        "http://127.0.0.1:1",
    ];
    args.extend_from_slice(extra);
    let config = Config::try_parse_from(args).unwrap();
    let replicas = Arc::new(Replicas::new(&config).unwrap());
    Arc::new(Shared::new(&config, replicas).unwrap())
}

fn slot() -> OwnedSemaphorePermit {
    Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
}

/// The server side of a loopback connection, and its client (keep it open).
async fn accepted() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

#[tokio::test]
async fn an_idle_tcp_connections_future_stays_within_its_budget() {
    let (server, _client) = accepted().await;
    let (read, write) = server.into_split();
    let future = serve(
        shared(&[]),
        read,
        write,
        1,
        CancellationToken::new(),
        slot(),
    );
    let size = std::mem::size_of_val(&future);
    assert!(
        size <= IDLE_FUTURE_BUDGET,
        "a connection's future is {size} bytes, over its budget of {IDLE_FUTURE_BUDGET}: \
         see the notes at IDLE_FUTURE_BUDGET for what keeps it small"
    );
}

#[tokio::test]
async fn an_idle_websocket_connections_future_stays_within_its_budget() {
    let (server, _client) = accepted().await;
    let (read, write) = server.into_split();
    let future = serve_websocket(
        shared(&[]),
        read,
        BytesMut::new(),
        write,
        1,
        CancellationToken::new(),
        slot(),
    );
    let size = std::mem::size_of_val(&future);
    assert!(
        size <= IDLE_FUTURE_BUDGET,
        "a WebSocket connection's future is {size} bytes, over its budget of \
         {IDLE_FUTURE_BUDGET}: see the notes at IDLE_FUTURE_BUDGET"
    );
}

/// Reads lines until the server closes; returns them.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(reader: R) -> Vec<String> {
    let mut lines = BufReader::new(reader).lines();
    let mut seen = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        seen.push(line);
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn silence_before_auth_is_closed_at_the_auth_deadline() {
    let shared = shared(&["--auth-timeout", "10s"]);
    let (client, server) = tokio::io::duplex(4096);
    let (read, write) = tokio::io::split(server);
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(serve(
        shared,
        read,
        write,
        1,
        CancellationToken::new(),
        slot(),
    ));
    let (client_read, _client_write) = tokio::io::split(client);
    let said = read_to_close(client_read).await;
    let waited = started.elapsed();
    assert!(said.is_empty(), "nothing is said to silence: {said:?}");
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "closed after {waited:?}"
    );
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_authenticated_connection_without_traffic_is_closed_at_the_idle_timeout() {
    let shared = shared(&["--idle-timeout", "60s"]);
    let stop = CancellationToken::new();
    let flushers = shared.flushers.spawn();
    let sweeper = tokio::spawn(sweep_idle(shared.clone(), stop.clone()));
    let (client, server) = tokio::io::duplex(4096);
    let (read, write) = tokio::io::split(server);
    let task = tokio::spawn(serve(shared, read, write, 1, stop.child_token(), slot()));
    let (client_read, mut client_write) = tokio::io::split(client);
    let token =
        crate::auth::mint_hs256(SECRET.as_bytes(), "ida", None, Duration::from_secs(3600)).unwrap();
    let auth = format!("{{\"type\":\"auth\",\"data\":{{\"token\":\"{token}\"}}}}\n");
    client_write.write_all(auth.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let said = read_to_close(client_read).await;
    let waited = started.elapsed();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("\"success\":true"), "{said:?}");
    // The sweeper looks every eighth of the timeout.
    assert!(
        waited >= Duration::from_secs(60) && waited <= Duration::from_secs(60 + 60 / 8 + 1),
        "closed after {waited:?}"
    );
    task.await.unwrap();
    stop.cancel();
    sweeper.await.unwrap();
    for flusher in flushers {
        flusher.abort();
    }
}
