//! `mangahub client` over TLS: `tls://host:port` (JSON lines) and
//! `wss://host:port/ws` to a gateway serving TLS on both ports, checking the
//! gateway's certificate against `--ca-cert`; and a gateway bench with the
//! same option.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::helpers::{SECRET, mangahub, output, stdout};
use crate::in_process::{Gateway, progress_service};

/// The gateway tests' self-signed certificate for `localhost`, and its key.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway/tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn the_client_speaks_tls_on_both_ports_and_checks_the_certificate() {
    // A progress service and a gateway with TLS on both ports, in this process.
    let dir = tempfile::tempdir().expect("temp dir");
    let progress = progress_service(dir.path()).await;
    let (cert, key) = (fixture("tls-cert.pem"), fixture("tls-key.pem"));
    let gateway = Gateway::start(
        progress.local_addr(),
        SECRET,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &[
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    )
    .await;
    let ca = fixture("tls-cert.pem");
    // The certificate names `localhost` and 127.0.0.1: one address of each
    // kind.
    let tcp = format!("tls://127.0.0.1:{}", gateway.tcp.port());
    let ws = format!("wss://localhost:{}/ws", gateway.ws.port());
    for (chapter, addr) in [("1", &tcp), ("2", &ws)] {
        let mut update = mangahub();
        update
            .args(["client", "--addr", addr, "--ca-cert"])
            .arg(&ca)
            .args(["--user", "reader", "--jwt-secret", SECRET])
            .args(["update", "--manga", "7", "--chapter", chapter]);
        let out = output(&mut update).await;
        assert!(
            out.status.success(),
            "{addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout(&out).starts_with(&format!("saved: manga 7: chapter {chapter}, ")),
            "{addr}: {}",
            stdout(&out)
        );
    }

    // Checked against other CAs (this machine's bundle, or the JWT test
    // key's PEM file, which holds none), the handshake is refused, and the
    // error says why.
    let system = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let (other, why) = if system.is_file() {
        (
            system.to_path_buf(),
            "invalid peer certificate: UnknownIssuer",
        )
    } else {
        (fixture("jwt-ed25519-public.pem"), "no CA certificate in it")
    };
    let mut get = mangahub();
    get.args(["client", "--addr", &tcp, "--ca-cert"])
        .arg(&other)
        .args(["--user", "reader", "--jwt-secret", SECRET])
        .args(["get", "--manga", "7"]);
    let out = output(&mut get).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "connected without the CA: {err}");
    assert!(err.contains(why), "{err}");

    // The gateway benches take the same `--ca-cert`: refused with the other
    // CA, acknowledged updates with the gateway's.
    let bench = |ca: &std::path::Path| {
        let mut bench = mangahub();
        bench
            .args(["bench", "tcp-updates", "--addr", &tcp, "--ca-cert"])
            .arg(ca)
            .args(["--jwt-secret", SECRET, "--connections", "2"])
            .args(["--duration", "300ms", "--warmup", "0s"]);
        bench
    };
    let out = output(&mut bench(&other)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the bench connected without the CA: {err}"
    );
    assert!(err.contains(why), "{err}");
    let out = output(&mut bench(&ca)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = stdout(&out);
    // | connections | acked updates/s | p50 | p99 | max | not applied | rate limited | errors |
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("| 2 |"))
        .unwrap_or_else(|| panic!("no result row in {table}"))
        .split('|')
        .map(str::trim)
        .collect();
    let acked: f64 = row[2].parse().expect("acked updates/s");
    assert!(acked > 0.0, "no update acknowledged over TLS: {table}");
    assert_eq!(row[8], "0", "errors over TLS: {table}");
    gateway.stop().await;
    progress.stop().await.expect("the progress service stops");
}
