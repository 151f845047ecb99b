//! The two framings of the gateway's messages (contract §5, §6): JSON lines
//! over TCP at `host:port`, one message per WebSocket text frame at
//! `ws://host:port/ws`; each over TLS too (`tls://host:port`,
//! `wss://host:port/ws`). Which transport an address names is decided here
//! only; everything above reads and writes whole messages.

use anyhow::bail;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use tokio_util::either::Either;

use super::tls::{self, ReadIo, WriteIo};
use super::websocket::WebSocket;

/// Where the gateway's WebSocket port upgrades (`--ws` appends it).
pub const WS_PATH: &str = "/ws";

/// One gateway address and the transport it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `host:port` (or `tls://host:port`): JSON lines over TCP.
    Lines { host: &'a str, tls: bool },
    /// `ws://host:port/path` (or `wss://`): the URL, and the `host:port` in it.
    WebSocket {
        url: &'a str,
        host: &'a str,
        tls: bool,
    },
}

impl<'a> Endpoint<'a> {
    pub fn parse(addr: &'a str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = addr.split_once("://") else {
            return Ok(Self::Lines {
                host: addr,
                tls: false,
            });
        };
        let host = match rest.split(['/', '?', '#']).next() {
            Some(host) if !host.is_empty() => host,
            _ => bail!("{addr}: no host:port in the URL"),
        };
        match scheme {
            "tls" if host.len() == rest.len() => Ok(Self::Lines { host, tls: true }),
            "tls" => bail!("{addr}: a tls:// address is host:port, with no path"),
            "ws" | "wss" => Ok(Self::WebSocket {
                url: addr,
                host,
                tls: scheme == "wss",
            }),
            _ => bail!(
                "{addr}: unknown scheme {scheme}:// (give host:port for TCP, ws://host:port/ws for WebSocket; tls:// and wss:// for either over TLS)"
            ),
        }
    }

    fn host(self) -> &'a str {
        match self {
            Self::Lines { host, .. } | Self::WebSocket { host, .. } => host,
        }
    }

    fn tls(self) -> bool {
        match self {
            Self::Lines { tls, .. } | Self::WebSocket { tls, .. } => tls,
        }
    }
}

/// `--ws`: each `host:port` of a comma-separated list becomes
/// `ws://host:port/ws`, each `tls://host:port` `wss://host:port/ws`; other
/// URLs stay as given.
pub fn over_websocket(addrs: &str) -> String {
    addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            if let Some(host) = a.strip_prefix("tls://") {
                format!("wss://{host}{WS_PATH}")
            } else if a.contains("://") {
                a.to_owned()
            } else {
                format!("ws://{a}{WS_PATH}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A connected socket with its framing.
pub enum Transport {
    Lines {
        reader: BufReader<ReadIo>,
        writer: WriteIo,
        /// A read was cut off (by its caller's timeout) mid-line.
        partial: bool,
    },
    WebSocket(WebSocket),
}

impl Transport {
    /// Connects (and upgrades, for WebSocket). `read_buffer` bytes are
    /// allocated for reading, and one read asks the kernel for at most that
    /// much; a longer message still arrives whole.
    pub async fn connect(endpoint: Endpoint<'_>, read_buffer: usize) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(endpoint.host()).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = tls::halves(stream, endpoint.host(), endpoint.tls()).await?;
        match endpoint {
            Endpoint::Lines { .. } => Ok(Self::Lines {
                reader: BufReader::with_capacity(read_buffer, read),
                writer,
                partial: false,
            }),
            Endpoint::WebSocket { url, .. } => Ok(Self::WebSocket(
                WebSocket::connect(url, read, writer, read_buffer).await?,
            )),
        }
    }

    pub async fn send(&mut self, message: &str) -> anyhow::Result<()> {
        match self {
            Self::Lines { writer, .. } => {
                let mut out = Vec::with_capacity(message.len() + 1);
                out.extend_from_slice(message.as_bytes());
                out.push(b'\n');
                writer.write_all(&out).await?;
            }
            Self::WebSocket(ws) => ws.send(message).await?,
        }
        Ok(())
    }

    /// Puts the next message in `message` (a line keeps its `\n`); false
    /// when the gateway closed the connection. Cancel-safe: a read cut off
    /// mid-message continues where it stopped.
    pub async fn read(&mut self, message: &mut Vec<u8>) -> anyhow::Result<bool> {
        match self {
            Self::Lines {
                reader, partial, ..
            } => {
                if !*partial {
                    message.clear();
                }
                *partial = true;
                reader.read_until(b'\n', message).await?;
                if !message.ends_with(b"\n") {
                    return Ok(false);
                }
                *partial = false;
                Ok(true)
            }
            Self::WebSocket(ws) => ws.read(message).await,
        }
    }

    /// The bare TCP socket of a lines connection without TLS, with nothing
    /// buffered.
    pub fn into_tcp(self) -> anyhow::Result<TcpStream> {
        match self {
            Self::Lines { reader, writer, .. } => {
                if !reader.buffer().is_empty() {
                    bail!("unexpected bytes after the auth reply");
                }
                match (reader.into_inner(), writer) {
                    (Either::Left(read), Either::Left(write)) => Ok(read.reunite(write)?),
                    _ => bail!("a TLS connection has no bare socket: its session state is in it"),
                }
            }
            Self::WebSocket(_) => {
                bail!(
                    "a WebSocket connection has no bare socket: its framing state is in the connection"
                )
            }
        }
    }
}

pub async fn connect_any(addrs: &str, read_buffer: usize) -> anyhow::Result<Transport> {
    let mut failures = Vec::new();
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let endpoint = Endpoint::parse(addr)?;
        match Transport::connect(endpoint, read_buffer).await {
            Ok(transport) => return Ok(transport),
            Err(err) => {
                tracing::debug!(addr, %err, "gateway unreachable; trying the next");
                failures.push(format!("{addr}: {err:#}"));
            }
        }
    }
    if failures.is_empty() {
        bail!("no gateway address given");
    }
    bail!("connecting to the gateway: {}", failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_names_its_transport() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:8081").ok(),
            Some(Endpoint::Lines {
                host: "127.0.0.1:8081",
                tls: false
            })
        );
        assert_eq!(
            Endpoint::parse("tls://gateway.example:8081").ok(),
            Some(Endpoint::Lines {
                host: "gateway.example:8081",
                tls: true
            })
        );
        assert_eq!(
            Endpoint::parse("ws://[::1]:8082/ws").ok(),
            Some(Endpoint::WebSocket {
                url: "ws://[::1]:8082/ws",
                host: "[::1]:8082",
                tls: false
            })
        );
        assert_eq!(
            Endpoint::parse("wss://gateway.example:8082/ws").ok(),
            Some(Endpoint::WebSocket {
                url: "wss://gateway.example:8082/ws",
                host: "gateway.example:8082",
                tls: true
            })
        );
        assert!(Endpoint::parse("ws:///ws").is_err());
        assert!(Endpoint::parse("tls://gateway:8081/ws").is_err());
        assert!(Endpoint::parse("http://gateway:8082").is_err());
    }

    #[test]
    fn ws_turns_host_ports_into_websocket_urls() {
        assert_eq!(
            over_websocket("a:8082, ws://b:9/other,tls://c:8082,wss://d:1/ws"),
            "ws://a:8082/ws,ws://b:9/other,wss://c:8082/ws,wss://d:1/ws"
        );
    }
}
