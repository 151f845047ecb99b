//! The same protocol over TLS, on the TCP port and on the WebSocket port (`wss://`).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{WAIT, fixture, spawn_app_with, token};

fn tls_flags() -> [String; 4] {
    [
        "--tls-cert".to_owned(),
        fixture("tls-cert.pem").display().to_string(),
        "--tls-key".to_owned(),
        fixture("tls-key.pem").display().to_string(),
    ]
}

/// A TLS client session with `addr` that trusts the test certificate.
async fn tls_connect(addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("tls-cert.pem")).expect("cert file") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

#[tokio::test]
async fn tls_speaks_the_same_protocol() {
    let flags = tls_flags();
    let app = spawn_app_with(&flags.each_ref().map(String::as_str)).await;
    let stream = tls_connect(app.addr).await;
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut roundtrip = async |message: Value| -> Value {
        let mut line = message.to_string();
        line.push('\n');
        writer.write_all(line.as_bytes()).await.expect("write");
        let mut reply = String::new();
        tokio::time::timeout(WAIT, reader.read_line(&mut reply))
            .await
            .expect("reply in time")
            .expect("read");
        serde_json::from_str(&reply).expect("JSON reply")
    };
    let auth = roundtrip(json!({"type":"auth","data":{"token":token("tls-user")}})).await;
    assert_eq!(auth["success"], true, "{auth}");
    let ack =
        roundtrip(json!({"type":"progress_update","data":{"manga_id":1,"chapter":2.5}})).await;
    assert_eq!(ack["type"], "progress_ack");
    assert_eq!(ack["data"]["chapter"], 2.5);

    // A plain-text client on the TLS port gets nothing useful and is closed.
    let mut plain = app.client().await;
    plain.send(json!({"type":"ping"})).await;
    let line = plain.recv_line_within(WAIT).await;
    assert!(line.is_none_or(|l| serde_json::from_str::<Value>(&l).is_err()));
}

#[tokio::test]
async fn wss_speaks_the_same_protocol_with_the_same_certificate() {
    let flags = tls_flags();
    let app = spawn_app_with(&flags.each_ref().map(String::as_str)).await;
    let stream = tls_connect(app.ws_addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .expect("WebSocket handshake over TLS");
    let mut roundtrip = async |message: Value| -> Value {
        ws.send(Message::text(message.to_string()))
            .await
            .expect("send");
        let reply = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("frame");
        serde_json::from_str(reply.to_text().expect("text")).expect("JSON reply")
    };
    let auth = roundtrip(json!({"type":"auth","data":{"token":token("wss-user")}})).await;
    assert_eq!(auth["success"], true, "{auth}");
    let ack = roundtrip(json!({"type":"progress_update","data":{"manga_id":2,"chapter":3}})).await;
    assert_eq!(ack["type"], "progress_ack", "{ack}");

    // The page over HTTPS, too.
    let mut page = tls_connect(app.ws_addr).await;
    page.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, page.read_to_end(&mut response))
        .await
        .expect("page in time")
        .expect("read");
    assert!(response.starts_with(b"HTTP/1.1 200 OK"));
}
