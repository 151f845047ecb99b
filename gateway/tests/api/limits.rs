//! Rate limits, the line cap, idle timeout, and slow consumers.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpSocket;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::helpers::{Client, Transport, WAIT, spawn_app, spawn_app_with, token, token_named};

#[tokio::test]
async fn a_burst_of_200_is_partly_rate_limited_and_the_last_accepted_is_stored() {
    // A slow refill keeps the outcome independent of how fast updates commit.
    let app = spawn_app_with(&["--rate-limit-per-sec", "10", "--rate-limit-burst", "100"]).await;
    let mut c = app.authed("burst").await;
    let mut batch = String::new();
    for chapter in 1..=200 {
        batch.push_str(
            &json!({"type":"progress_update","id":chapter,"data":{"manga_id":1,"chapter":chapter}})
                .to_string(),
        );
        batch.push('\n');
    }
    c.send_raw(batch.as_bytes()).await;
    let (mut acked, mut limited, mut last_accepted) = (0, 0, 0);
    for chapter in 1..=200 {
        let reply = c.recv().await;
        assert_eq!(reply["id"], chapter, "replies in order");
        match reply["type"].as_str() {
            Some("progress_ack") => {
                acked += 1;
                last_accepted = chapter;
            }
            Some("error") => {
                assert_eq!(reply["code"], "RATE_LIMITED");
                assert_eq!(reply["message"], "Rate limit exceeded");
                limited += 1;
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    assert!(acked >= 100, "the burst is honoured: {acked}");
    assert!(limited > 0, "some were limited");
    let stored = loop {
        let reply = c
            .request(json!({"type":"get_progress","data":{"manga_id":1}}))
            .await;
        if reply["code"] == "RATE_LIMITED" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        break reply;
    };
    assert_eq!(stored["data"]["chapter"], last_accepted, "{stored}");
}

#[tokio::test]
async fn the_user_limit_spans_the_users_connections() {
    let app = spawn_app_with(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "10"]).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(app.authed("many-sockets").await);
    }
    let pings: String = (0..10)
        .map(|i| format!("{{\"type\":\"ping\",\"id\":{i}}}\n"))
        .collect();
    let mut limited = 0;
    for c in &mut conns {
        c.send_raw(pings.as_bytes()).await;
        for _ in 0..10 {
            if c.recv().await["code"] == "RATE_LIMITED" {
                limited += 1;
            }
        }
    }
    // 60 sent, 40 allowed per user (4 × burst) plus a little refill.
    assert!(limited >= 10, "the per-user bucket limited {limited} of 60");
    let mut other = app.authed("someone-else").await;
    other.send_raw(pings.as_bytes()).await;
    for _ in 0..10 {
        assert_eq!(other.recv().await["type"], "pong");
    }
}

#[tokio::test]
async fn an_oversized_line_is_rejected_early_and_the_connection_survives() {
    let app = spawn_app().await;
    let mut c = app.authed("big").await;
    // Over WebSocket the long message comes in fragments, counted together.
    let mut long = Long::new(app.transport);
    for _ in 0..8 {
        long.send(&mut c, false).await;
    }
    // Answered before the message ends: it was never buffered whole.
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "MESSAGE_TOO_LARGE");
    assert!(reply.get("id").is_none());
    for i in 0..8 {
        long.send(&mut c, i == 7).await;
    }
    c.send_raw(b"{\"type\":\"ping\",\"id\":\"still-here\"}\n")
        .await;
    let pong = c.recv().await;
    assert_eq!(pong, json!({"type":"pong","id":"still-here"}));

    // A line over the cap that does end in a newline is answered the same way.
    let app = spawn_app_with(&["--max-message-bytes", "1024"]).await;
    let mut c = app.authed("big").await;
    let long = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}\n", "x".repeat(2000));
    c.send_raw(long.as_bytes()).await;
    assert_eq!(c.recv().await["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");
}

/// A message of 256 KiB pieces: bytes of one line on TCP, fragments of one
/// text message on a WebSocket.
struct Long {
    transport: Transport,
    sent: usize,
}

impl Long {
    fn new(transport: Transport) -> Self {
        Self { transport, sent: 0 }
    }

    async fn send(&mut self, c: &mut Client, last: bool) {
        let chunk = vec![b'a'; 256 * 1024];
        match self.transport {
            Transport::Tcp => {
                c.send_raw(&chunk).await;
                if last {
                    c.send_raw(b"\n").await;
                }
            }
            Transport::WebSocket => {
                let opcode = if self.sent == 0 {
                    OpCode::Data(Data::Text)
                } else {
                    OpCode::Data(Data::Continue)
                };
                c.send_frame(Frame::message(chunk, opcode, last)).await;
            }
        }
        self.sent += 1;
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_ping_keeps_it_open() {
    let app = spawn_app_with(&["--idle-timeout", "600ms"]).await;
    let mut c = app.authed("idle").await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");
    }
    let started = Instant::now();
    assert!(c.until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_stay_on_time() {
    // 2 MiB of queue: room for the bursts of pipelined publishers (a batch of
    // up to 128 updates commits at once: 4 × 128 events of ~2 KB), and a
    // quarter of the ~8 MB the publishers send the reader that never reads.
    let app = spawn_app_with(&[
        "--outbound-queue-bytes",
        "2097152",
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ])
    .await;

    // A reader with a tiny receive window that never reads.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(app.client_addr()).await.expect("connect");
    let mut slow = Client::over_stream(app.transport, stream).await;
    let auth = slow
        .request(json!({"type":"auth","data":{"token":token("slow")}}))
        .await;
    assert_eq!(auth["success"], true);
    slow.subscribe(json!({"channel":"global"})).await;

    // Publishers send in rounds and wait for the reading subscriber to catch
    // up before the next one, so its backlog stays one round (4 × 100 events
    // of ~2 KB) whatever the machine's load; the one that never reads gets all
    // ~8 MB.
    const PUBLISHERS: i64 = 4;
    const ROUNDS: i64 = 10;
    const PER_ROUND: i64 = 100;
    let total = PUBLISHERS * ROUNDS * PER_ROUND;
    let mut fast = app.authed("fast").await;
    fast.subscribe(json!({"channel":"global"})).await;
    let (progress, mut caught_up) = tokio::sync::watch::channel(0);
    let fast_task = tokio::spawn(async move {
        let mut last_at = Instant::now();
        for received in 1..=total {
            // A cheap check keeps this reader fast even in a debug build.
            let event = fast.recv_line().await;
            assert!(
                event.starts_with(r#"{"type":"progress_broadcast""#),
                "{}",
                &event[..event.len().min(200)]
            );
            last_at = Instant::now();
            progress.send_replace(received);
        }
        last_at
    });

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        // Long names make big events, so the kernel's socket buffers fill quickly.
        let user = format!("publisher-{p}");
        let name = format!("{user}-{}", "n".repeat(2000));
        publishers.push(app.authed_as(&user, &token_named(&user, &name)).await);
    }
    for round in 0..ROUNDS {
        for (p, c) in (0..).zip(publishers.iter_mut()) {
            let mut batch = String::new();
            for i in 0..PER_ROUND {
                let manga = 100_000 * (p + 1) + PER_ROUND * round + i;
                batch.push_str(
                    &json!({"type":"progress_update","data":{"manga_id":manga,"chapter":1}})
                        .to_string(),
                );
                batch.push('\n');
            }
            c.send_raw(batch.as_bytes()).await;
        }
        for c in &mut publishers {
            for _ in 0..PER_ROUND {
                assert_eq!(c.recv().await["type"], "progress_ack");
            }
        }
        if round + 1 < ROUNDS {
            let sent = (round + 1) * PUBLISHERS * PER_ROUND;
            tokio::time::timeout(WAIT, caught_up.wait_for(|n| *n >= sent))
                .await
                .expect("the reading subscriber keeps up")
                .expect("reader running");
        }
    }
    let published_at = Instant::now();
    let last_delivery = tokio::time::timeout(WAIT, fast_task)
        .await
        .expect("the fast subscriber got every event in time")
        .expect("fast subscriber");
    let lag = last_delivery.saturating_duration_since(published_at);
    assert!(
        lag < Duration::from_secs(3),
        "fast subscriber lagged {lag:?}"
    );

    // The slow one was disconnected: what it can still read ends in a close.
    let seen = slow.until_closed().await;
    assert!(
        (seen.len() as i64) < total,
        "the slow consumer cannot have been sent everything"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_a_slot_frees() {
    let app = spawn_app_with(&["--max-connections", "2"]).await;
    let first = app.authed("one").await;
    let _second = app.authed("two").await;
    let (transport, addr) = (app.transport, app.client_addr());
    let mut third = tokio::spawn(async move {
        let mut third = Client::connect_over(transport, addr).await;
        third
            .request(json!({"type":"auth","data":{"token":token("three")}}))
            .await
    });
    // Proving an absence: not served while both slots are taken (a TCP
    // connect completes in the backlog, a WebSocket handshake waits).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served"
    );
    drop(first);
    let reply = tokio::time::timeout(WAIT, third)
        .await
        .expect("served once a slot frees")
        .expect("client task");
    assert_eq!(reply["success"], true, "{reply}");
}
