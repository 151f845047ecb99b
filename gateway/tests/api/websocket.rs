//! What only the WebSocket port does: the live page, the HTTP handshake and
//! its origin check, frames that break RFC 6455, pings, the close handshake,
//! and one user's devices across both transports. (Every scenario of
//! contract §5 also runs over WebSocket: see `ws`.)

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::helpers::{Client, Transport, WAIT, spawn_app, spawn_app_with, token};

/// Sends raw HTTP to the WebSocket port; returns the response's status line.
async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let text = raw_http_response(addr, request).await;
    text.lines().next().unwrap_or_default().to_owned()
}

/// The whole answer to `request`, read until the gateway closes.
async fn raw_http_response(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answered and closed in time")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn the_live_page_is_served_at_the_root() {
    let app = spawn_app().await;
    let (status, body) = testkit::http_get(app.ws_addr, "/").await.expect("GET /");
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") && body.contains("MangaHub"),
        "{body}"
    );
    let (status, _) = testkit::http_get(app.ws_addr, "/nothing-here")
        .await
        .expect("GET");
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_head_request_gets_what_a_get_would_without_the_body() {
    let app = spawn_app().await;
    let addr = app.ws_addr;
    let (_, page) = testkit::http_get(addr, "/").await.expect("GET /");
    let response = raw_http_response(addr, "HEAD / HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: text/html"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}\r\n", page.len())),
        "the page's length, {}: {head}",
        page.len()
    );
    assert!(body.is_empty(), "a HEAD answer has no body: {body:?}");
    // The same route as a GET's (the query is not part of the path).
    let query = raw_http_response(addr, "HEAD /?token=x HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert!(query.starts_with("HTTP/1.1 200 OK\r\n"), "{query}");
    for (request, status) in [
        ("HEAD /nothing-here HTTP/1.1", "404 Not Found"),
        ("HEAD /ws HTTP/1.1", "400 Bad Request"),
        ("HEAD / HTTP/1.0", "400 Bad Request"),
    ] {
        let response = raw_http_response(addr, &format!("{request}\r\nHost: gw\r\n\r\n")).await;
        // A GET's error body is its status line.
        let length = format!("{status}\n").len();
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{request}: {response}"
        );
        assert!(
            response.ends_with(&format!(
                "\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            )),
            "{request}: the GET's length and no body: {response:?}"
        );
    }
}

#[tokio::test]
async fn bad_handshakes_get_http_errors() {
    let app = spawn_app().await;
    let addr = app.ws_addr;
    let plain_get = "GET /ws HTTP/1.1\r\nHost: gw\r\n\r\n";
    assert_eq!(raw_http(addr, plain_get).await, "HTTP/1.1 400 Bad Request");
    let old_version = upgrade_request("").replace("Version: 13", "Version: 8");
    assert_eq!(
        raw_http(addr, &old_version).await,
        "HTTP/1.1 426 Upgrade Required"
    );
    let bad_key = upgrade_request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_eq!(raw_http(addr, &bad_key).await, "HTTP/1.1 400 Bad Request");
    let post = "POST /ws HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n";
    let refused = raw_http_response(addr, post).await;
    assert!(
        refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
            && refused.contains("\r\nAllow: GET, HEAD\r\n"),
        "{refused}"
    );
    let huge = format!("GET /ws HTTP/1.1\r\nX-Pad: {}\r\n\r\n", "x".repeat(10_000));
    assert_eq!(
        raw_http(addr, &huge).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        raw_http(addr, "\x16\x03\x01 not http\r\n\r\n").await,
        "HTTP/1.1 400 Bad Request"
    );
    // The port still serves good handshakes.
    let app = app.over(Transport::WebSocket);
    let mut c = app.authed("after-bad").await;
    let reply = c.request(json!({"type":"ping"})).await;
    assert_eq!(reply["type"], "pong", "{reply}");
}

/// The handshake's answer for `origin`: 101 when upgraded, else the refusal.
async fn handshake_with_origin(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header value"));
    }
    let stream = TcpStream::connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("handshake: {err}"),
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let addr = app.ws_addr;
    assert_eq!(
        handshake_with_origin(addr, None).await,
        101,
        "no Origin: an app"
    );
    let own = format!("http://{addr}");
    assert_eq!(
        handshake_with_origin(addr, Some(&own)).await,
        101,
        "the own page"
    );
    assert_eq!(
        handshake_with_origin(addr, Some("http://evil.example")).await,
        403
    );
    assert_eq!(handshake_with_origin(addr, Some("null")).await, 403);

    let app = spawn_app_with(&[
        "--ws-allowed-origins",
        "https://mangahub.example,https://m.example",
    ])
    .await;
    let addr = app.ws_addr;
    assert_eq!(
        handshake_with_origin(addr, Some("https://m.example")).await,
        101
    );
    assert_eq!(
        handshake_with_origin(addr, Some("https://mangahub.example")).await,
        101
    );
    assert_eq!(
        handshake_with_origin(addr, Some("https://mangahub.example.evil")).await,
        403
    );
    let own = format!("http://{addr}");
    assert_eq!(handshake_with_origin(addr, Some(&own)).await, 101);
}

#[tokio::test]
async fn a_binary_frame_is_answered_and_the_connection_kept() {
    let app = spawn_app().await.over(Transport::WebSocket);
    let mut c = app.authed("binary").await;
    c.send_frame(Frame::message(
        vec![1, 2, 3],
        OpCode::Data(Data::Binary),
        true,
    ))
    .await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "INVALID_MESSAGE");
    assert_eq!(c.request(json!({"type":"ping","id":2})).await["id"], 2);
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let app = spawn_app().await.over(Transport::WebSocket);
    let mut c = app.authed("utf8").await;
    c.send_frame(Frame::message(
        vec![0xff, 0xfe],
        OpCode::Data(Data::Text),
        true,
    ))
    .await;
    assert_eq!(c.close_code().await, Some(1007));
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.ws_addr).await.expect("connect");
    stream
        .write_all(upgrade_request("").as_bytes())
        .await
        .expect("write");
    let mut unmasked = Vec::new();
    Frame::message(
        b"{\"type\":\"ping\"}".to_vec(),
        OpCode::Data(Data::Text),
        true,
    )
    .format(&mut unmasked)
    .expect("frame");
    stream.write_all(&unmasked).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("closed in time")
        .expect("read");
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(response.starts_with(b"HTTP/1.1 101"));
    let close = &response[head_end..];
    assert_eq!(close[0], 0x88, "a close frame: {close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1002);
}

#[tokio::test]
async fn pings_are_answered_and_keep_the_connection_open() {
    let app = spawn_app_with(&["--idle-timeout", "1s"]).await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", app.ws_addr),
        TcpStream::connect(app.ws_addr).await.expect("connect"),
    )
    .await
    .expect("handshake");
    let auth = json!({"type":"auth","data":{"token":token("pinger")}}).to_string();
    ws.send(Message::text(auth)).await.expect("send");
    let reply = ws.next().await.expect("reply").expect("frame");
    assert!(reply.to_text().expect("text").contains("\"success\":true"));
    // WebSocket pings only, for three idle timeouts: each gets its pong and
    // the connection stays open.
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    for i in 0u8..12 {
        tick.tick().await;
        ws.send(Message::Ping(Bytes::from(vec![i])))
            .await
            .expect("ping");
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("pong in time")
        {
            Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], &[i]),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Silence: closed at the idle timeout, with a close frame.
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("closed in time")
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    let app = spawn_app().await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", app.ws_addr),
        TcpStream::connect(app.ws_addr).await.expect("connect"),
    )
    .await
    .expect("handshake");
    ws.close(None).await.expect("close");
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("answered in time")
    {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close handshake to finish, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_says_so_and_closes_normally() {
    let mut app = spawn_app().await.over(Transport::WebSocket);
    let mut c = app.authed("leaving").await;
    app.shutdown().await.expect("clean shutdown");
    let notice = c.recv().await;
    assert_eq!(notice["data"]["code"], "SHUTDOWN", "{notice}");
    assert_eq!(c.close_code().await, Some(1000));
}

#[tokio::test]
async fn both_transports_share_max_connections() {
    let app = spawn_app_with(&["--max-connections", "1"]).await;
    let tcp = app.authed("first").await;
    let addr = app.ws_addr;
    let mut ws = tokio::spawn(async move { Client::connect_ws(addr).await });
    // Proving an absence: the handshake waits while the TCP client holds the slot.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut ws)
            .await
            .is_err(),
        "a WebSocket was served beyond MAX_CONNECTIONS"
    );
    drop(tcp);
    let mut ws = tokio::time::timeout(WAIT, ws)
        .await
        .expect("served once the slot frees")
        .expect("client task");
    let reply = ws
        .request(json!({"type":"auth","data":{"token":token("second")}}))
        .await;
    assert_eq!(reply["success"], true, "{reply}");
}

#[tokio::test]
async fn a_message_split_across_reads_and_sent_right_after_the_handshake_is_read() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.ws_addr).await.expect("connect");
    // The handshake and the first frame in one write, the frame's header split.
    let auth = json!({"type":"auth","data":{"token":token("eager")}}).to_string();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        mask: Some([9, 8, 7, 6]),
        ..FrameHeader::default()
    };
    let mut frame = Vec::new();
    Frame::from_payload(header, Bytes::from(auth))
        .format(&mut frame)
        .expect("frame");
    let mut first = upgrade_request("").into_bytes();
    first.extend_from_slice(&frame[..1]);
    stream.write_all(&first).await.expect("write");
    stream.write_all(&frame[1..]).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains("auth_response") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("\"success\":true"));
}
