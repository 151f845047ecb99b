//! The same protocol over TLS on the same port.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

use crate::helpers::{WAIT, fixture, spawn_app_with, token};

#[tokio::test]
async fn tls_speaks_the_same_protocol() {
    let cert = fixture("tls-cert.pem");
    let key = fixture("tls-key.pem");
    let app = spawn_app_with(&[
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ])
    .await;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).expect("cert file") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
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
