//! TLS to the gateway, for `tls://host:port` (JSON lines) and
//! `wss://host:port/ws` addresses: rustls, the library the gateway serves TLS
//! with, checking the gateway's certificate against the CA certificates of
//! `--ca-cert` (a PEM file), else the system's bundle. Everything else about
//! a connection is the same as without TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::either::Either;

/// Where the system keeps its CA bundle (Debian and Alpine, Fedora and RHEL,
/// and the name some others link).
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The `--ca-cert` of this process's `client` command or gateway bench, set
/// once before it connects.
static CA_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Trust the CA certificates in `file` (PEM) instead of the system's.
pub fn trust(file: PathBuf) {
    let _ = CA_FILE.set(file);
}

/// The read half of a connection: without TLS (`Left`) or with it.
pub type ReadIo = Either<OwnedReadHalf, ReadHalf<TlsStream<TcpStream>>>;

/// The write half of a connection: without TLS (`Left`) or with it.
pub type WriteIo = Either<OwnedWriteHalf, WriteHalf<TlsStream<TcpStream>>>;

/// `stream`'s halves: as they are, or over TLS with `host` (`host:port`) as
/// the name its certificate must carry.
pub async fn halves(stream: TcpStream, host: &str, tls: bool) -> anyhow::Result<(ReadIo, WriteIo)> {
    if !tls {
        let (read, write) = stream.into_split();
        return Ok((Either::Left(read), Either::Left(write)));
    }
    let name = ServerName::try_from(server_name(host).to_owned())
        .with_context(|| format!("{host}: not a name a certificate can carry"))?;
    let stream = TlsConnector::from(config()?)
        .connect(name, stream)
        .await
        .context("TLS handshake with the gateway (is this port serving TLS?)")?;
    let (read, write) = tokio::io::split(stream);
    Ok((Either::Right(read), Either::Right(write)))
}

/// The client configuration, built at the first TLS connection and shared
/// by the rest (so they may resume its sessions).
fn config() -> anyhow::Result<Arc<ClientConfig>> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            build_config()
                .map(Arc::new)
                .map_err(|err| format!("{err:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_config() -> anyhow::Result<ClientConfig> {
    let file = match CA_FILE.get() {
        Some(file) => file.clone(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .context(
                "no CA certificates to check the gateway's certificate with: give --ca-cert <PEM file>",
            )?,
    };
    let roots = roots(&file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn roots(file: &Path) -> anyhow::Result<RootCertStore> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading CA certificates from {}", file.display()))?;
    let mut roots = RootCertStore::empty();
    // A system bundle may hold certificates rustls cannot use; skip those.
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        anyhow::bail!("{}: no CA certificate in it", file.display());
    }
    Ok(roots)
}

/// The host of `host:port` (`[v6]:port` too), as the certificate names it.
fn server_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_is_the_host_without_its_port() {
        assert_eq!(server_name("gateway.example:8081"), "gateway.example");
        assert_eq!(server_name("localhost:8081"), "localhost");
        assert_eq!(server_name("[::1]:8082"), "::1");
        assert_eq!(server_name("gateway.example"), "gateway.example");
    }
}
