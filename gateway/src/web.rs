//! HTTP on the WebSocket port, up to the upgrade: `GET /` serves the live
//! progress page (shipped inside the binary), `GET /ws` checks the `Origin`
//! and switches to WebSocket (RFC 6455 §4.2); anything else gets a plain
//! HTTP error and the connection closes. tungstenite parses the request
//! (httparse) and validates the upgrade headers; the page and errors are a
//! few fixed responses, so no HTTP server is kept per connection.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{Request, create_response, write_response};

/// The live page: plain HTML and JavaScript, no build step, no CDN.
pub const PAGE: &str = include_str!("web/page.html");

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 8 * 1024;

/// Which browser pages may open WebSocket connections (cross-site WebSocket
/// hijacking): the gateway's own page, clients that send no `Origin` (apps,
/// CLIs), and the origins of `WS_ALLOWED_ORIGINS` (`*`: any).
#[derive(Debug, Default)]
pub struct Origins {
    any: bool,
    allowed: Vec<String>,
}

impl Origins {
    pub fn new(list: &[String]) -> Self {
        let mut origins = Self::default();
        for origin in list.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            if origin == "*" {
                origins.any = true;
            } else {
                origins.allowed.push(normalize(origin));
            }
        }
        origins
    }

    /// `host`: the request's `Host`, which is where the page came from when
    /// the gateway served it (behind a TLS proxy the page may be `https`).
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = normalize(origin);
        if self.any || self.allowed.contains(&origin) {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// How the HTTP part of a connection ended.
#[derive(Debug)]
pub enum Handshake {
    /// Switched to WebSocket; what the client sent after its request.
    Upgraded(BytesMut),
    /// Answered over HTTP (the page, or an error); close the connection.
    Answered,
}

/// Reads one HTTP request and answers or upgrades it.
pub async fn handshake<S>(stream: &mut S, origins: &Origins) -> std::io::Result<Handshake>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let (len, request) = loop {
        match Request::try_parse(&buf) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if buf.len() >= MAX_HEAD => {
                return refuse(stream, "431 Request Header Fields Too Large", "").await;
            }
            Ok(None) => {}
            // Only a complete head gets here (tungstenite checks the method
            // after parsing it all, before the version).
            Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
                return match head_request(&buf) {
                    Some(Ok(path)) => match path.as_str() {
                        "/" | "/index.html" => {
                            respond(stream, "200 OK", PAGE_HEADERS, PAGE, Body::Omit).await?;
                            Ok(Handshake::Answered)
                        }
                        // `/ws` upgrades only a `GET`.
                        "/ws" => answer(stream, "400 Bad Request", "", Body::Omit).await,
                        _ => answer(stream, "404 Not Found", "", Body::Omit).await,
                    },
                    // What a `GET` like it gets: not HTTP/1.1, or no URI.
                    Some(Err(())) => answer(stream, "400 Bad Request", "", Body::Omit).await,
                    None => refuse(stream, "405 Method Not Allowed", "Allow: GET, HEAD\r\n").await,
                };
            }
            Err(err) => {
                tracing::debug!(%err, "bad HTTP request on the WebSocket port");
                return refuse(stream, "400 Bad Request", "").await;
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(Handshake::Answered);
        }
    };
    buf.advance(len);
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    match request.uri().path() {
        "/" | "/index.html" => {
            respond(stream, "200 OK", PAGE_HEADERS, PAGE, Body::Send).await?;
            Ok(Handshake::Answered)
        }
        "/ws" => {
            if !origins.allows(header("origin"), header("host")) {
                tracing::debug!(origin = header("origin"), "WebSocket origin refused");
                metrics::counter!("gateway_ws_origin_refused_total").increment(1);
                return refuse(stream, "403 Forbidden", "").await;
            }
            match create_response(&request) {
                Ok(response) => {
                    let mut head = Vec::with_capacity(160);
                    write_response(&mut head, &response).map_err(std::io::Error::other)?;
                    stream.write_all(&head).await?;
                    let leftover = if buf.is_empty() { BytesMut::new() } else { buf };
                    Ok(Handshake::Upgraded(leftover))
                }
                Err(WsError::Protocol(ProtocolError::MissingSecWebSocketVersionHeader)) => {
                    refuse(
                        stream,
                        "426 Upgrade Required",
                        "Sec-WebSocket-Version: 13\r\n",
                    )
                    .await
                }
                Err(err) => {
                    tracing::debug!(%err, "bad WebSocket handshake");
                    refuse(stream, "400 Bad Request", "").await
                }
            }
        }
        _ => refuse(stream, "404 Not Found", "").await,
    }
}

const PAGE_HEADERS: &str = "Content-Type: text/html; charset=utf-8\r\n\
    Cache-Control: no-cache\r\n\
    X-Content-Type-Options: nosniff\r\n\
    Referrer-Policy: no-referrer\r\n\
    Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; \
    frame-ancestors 'none'\r\n";

const TEXT_HEADERS: &str = "Content-Type: text/plain; charset=utf-8\r\n";

/// Whether an answer carries its body: not for `HEAD`, which gets the same
/// headers (`Content-Length` included) and no body (RFC 9110 §9.3.2).
#[derive(Clone, Copy)]
enum Body {
    Send,
    Omit,
}

/// For a complete `HEAD` request head, the path of its target, or `Err` when
/// a `GET` like it would be refused as bad (not HTTP/1.1, no URI); `None`
/// for another method. Monitors and link checkers ask for the page with
/// `HEAD`.
fn head_request(buf: &[u8]) -> Option<Result<String, ()>> {
    // As many as tungstenite parsed the head with.
    let mut headers = [httparse::EMPTY_HEADER; tungstenite::handshake::headers::MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(buf).ok()?;
    if request.method? != "HEAD" {
        return None;
    }
    let uri = request
        .path
        .and_then(|target| target.parse::<tungstenite::http::Uri>().ok());
    Some(match (request.version, uri) {
        (Some(1), Some(uri)) => Ok(uri.path().to_owned()),
        _ => Err(()),
    })
}

/// An HTTP error with its status line as the body.
async fn refuse<S>(stream: &mut S, status: &str, headers: &str) -> std::io::Result<Handshake>
where
    S: AsyncWrite + Unpin,
{
    answer(stream, status, headers, Body::Send).await
}

/// [`refuse`], with or without its body.
async fn answer<S>(
    stream: &mut S,
    status: &str,
    headers: &str,
    body: Body,
) -> std::io::Result<Handshake>
where
    S: AsyncWrite + Unpin,
{
    let text = format!("{status}\n");
    let headers = format!("{TEXT_HEADERS}{headers}");
    respond(stream, status, &headers, &text, body).await?;
    Ok(Handshake::Answered)
}

async fn respond<S>(
    stream: &mut S,
    status: &str,
    headers: &str,
    content: &str,
    body: Body,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut response = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    );
    if let Body::Send = body {
        response.push_str(content);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_default_to_the_own_page_and_no_origin() {
        let origins = Origins::new(&[]);
        assert!(origins.allows(None, Some("gw:8082")));
        assert!(origins.allows(Some("http://gw:8082"), Some("gw:8082")));
        assert!(origins.allows(Some("https://GW:8082/"), Some("gw:8082")));
        assert!(!origins.allows(Some("http://evil.example"), Some("gw:8082")));
        assert!(!origins.allows(Some("http://gw:8083"), Some("gw:8082")));
        assert!(!origins.allows(Some("null"), Some("gw:8082")));
        assert!(!origins.allows(Some("http://gw:8082"), None));
    }

    #[test]
    fn listed_origins_and_the_wildcard_are_allowed() {
        let origins = Origins::new(&["https://mangahub.example/".to_owned(), " ".to_owned()]);
        assert!(origins.allows(Some("https://MangaHub.example"), Some("gw:8082")));
        assert!(!origins.allows(Some("http://mangahub.example.evil"), Some("gw:8082")));
        assert!(Origins::new(&["*".to_owned()]).allows(Some("http://any"), None));
    }
}
