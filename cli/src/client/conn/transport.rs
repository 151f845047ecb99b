//! The two framings of the gateway's messages (contract §5, §6): JSON lines
//! over TCP at `host:port`, one message per WebSocket text frame at
//! `ws://host:port/ws`. Which transport an address names is decided here
//! only; everything above reads and writes whole messages.

use anyhow::bail;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::websocket::WebSocket;

/// Where the gateway's WebSocket port upgrades (`--ws` appends it).
pub const WS_PATH: &str = "/ws";

/// One gateway address and the transport it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `host:port`: JSON lines over TCP.
    Lines(&'a str),
    /// `ws://host:port/path`: the URL, and the `host:port` in it.
    WebSocket { url: &'a str, host: &'a str },
}

impl<'a> Endpoint<'a> {
    pub fn parse(addr: &'a str) -> anyhow::Result<Self> {
        match addr.split_once("://") {
            None => Ok(Self::Lines(addr)),
            Some(("ws", rest)) => match rest.split(['/', '?', '#']).next() {
                Some(host) if !host.is_empty() => Ok(Self::WebSocket { url: addr, host }),
                _ => bail!("{addr}: no host:port in the URL"),
            },
            Some(("wss", _)) => bail!("{addr}: this client has no TLS (wss://) yet; use ws://"),
            Some((scheme, _)) => {
                bail!(
                    "{addr}: unknown scheme {scheme}:// (give host:port for TCP, ws://host:port/ws for WebSocket)"
                )
            }
        }
    }

    fn host(self) -> &'a str {
        match self {
            Self::Lines(host) | Self::WebSocket { host, .. } => host,
        }
    }
}

/// `--ws`: each `host:port` of a comma-separated list becomes
/// `ws://host:port/ws`; URLs stay as given.
pub fn over_websocket(addrs: &str) -> String {
    addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.contains("://") {
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
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
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
        match endpoint {
            Endpoint::Lines(_) => {
                let (read, writer) = stream.into_split();
                Ok(Self::Lines {
                    reader: BufReader::with_capacity(read_buffer, read),
                    writer,
                    partial: false,
                })
            }
            Endpoint::WebSocket { url, .. } => Ok(Self::WebSocket(
                WebSocket::connect(url, stream, read_buffer).await?,
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

    /// The bare TCP socket of a lines connection with nothing buffered.
    pub fn into_tcp(self) -> anyhow::Result<TcpStream> {
        match self {
            Self::Lines { reader, writer, .. } => {
                if !reader.buffer().is_empty() {
                    bail!("unexpected bytes after the auth reply");
                }
                Ok(reader.into_inner().reunite(writer)?)
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
            Some(Endpoint::Lines("127.0.0.1:8081"))
        );
        assert_eq!(
            Endpoint::parse("ws://[::1]:8082/ws").ok(),
            Some(Endpoint::WebSocket {
                url: "ws://[::1]:8082/ws",
                host: "[::1]:8082"
            })
        );
        assert!(Endpoint::parse("ws:///ws").is_err());
        assert!(Endpoint::parse("http://gateway:8082").is_err());
    }

    #[test]
    fn ws_turns_host_ports_into_websocket_urls() {
        assert_eq!(
            over_websocket("a:8082, ws://b:9/other,"),
            "ws://a:8082/ws,ws://b:9/other"
        );
    }
}
