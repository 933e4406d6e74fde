//! The egress proxy of one kernel: an HTTP proxy listening on a Unix socket in the kernel's
//! run directory (one host) or on the server's address on the kernel's own overlay (Swarm),
//! the kernel's only way out, which takes `CONNECT host:port` and plain
//! `GET http://host/...` requests, asks the guard, and relays bytes to the address the guard
//! checked or answers with a refusal that names the target and the allowlist. Each outcome
//! is logged with session and tenant and counted. It reads only request heads; what flows
//! through a tunnel is never looked at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::allowlist::Allowlist;
use super::guard::{self, Addresses, Reached, Refusal};
use crate::metrics::Metrics;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one kernel may have open through the proxy at once.
const MAX_CONNECTIONS: usize = 64;
/// Headers meant for the proxy, not passed on.
const HOP_HEADERS: [&str; 4] = [
    "proxy-connection",
    "proxy-authorization",
    "connection",
    "keep-alive",
];

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("could not listen for the kernel's egress at {at}: {source}")]
    Listen {
        at: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a kernel's egress proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAt {
    /// A Unix socket (a stale one there is replaced), made connectable for the kernel's user.
    Unix(PathBuf),
    /// A TCP address only the kernel's network reaches.
    Tcp(SocketAddr),
}

impl std::fmt::Display for ListenAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp(address) => write!(f, "{address}"),
        }
    }
}

/// A bound listener of either kind.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A byte stream from a kernel, from either kind of listener.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

impl Listener {
    async fn bind(at: &ListenAt) -> Result<Self, ProxyError> {
        let failed = |source| ProxyError::Listen {
            at: at.to_string(),
            source,
        };
        match at {
            ListenAt::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(failed(error)),
                }
                let listener = UnixListener::bind(path).map_err(failed)?;
                // The kernel runs as another user: it must be able to connect.
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                    .map_err(failed)?;
                Ok(Self::Unix(listener))
            }
            ListenAt::Tcp(address) => {
                Ok(Self::Tcp(TcpListener::bind(address).await.map_err(failed)?))
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Box<dyn ClientStream>> {
        Ok(match self {
            Self::Unix(listener) => Box::new(listener.accept().await?.0),
            Self::Tcp(listener) => Box::new(listener.accept().await?.0),
        })
    }
}

/// Whose proxy this is and what it lets through.
#[derive(Debug, Clone)]
pub struct ProxyScope {
    pub session_id: String,
    pub tenant: String,
    pub allowlist: Arc<Allowlist>,
    /// Names on the list may resolve to any address: the operator named them (the package
    /// index of `--pip-index-url`, which may well be on a private network).
    pub names_resolve_anywhere: bool,
}

/// Starts the proxy listening `at`; it serves until `stop` is cancelled, its tasks on
/// `tasks`.
pub async fn serve(
    at: &ListenAt,
    scope: ProxyScope,
    metrics: Arc<Metrics>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), ProxyError> {
    let listener = Listener::bind(at).await?;
    let scope = Arc::new(scope);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let inner_tasks = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let client = match accepted {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(session_id = %scope.session_id, %error, "egress proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let scope = scope.clone();
            let metrics = metrics.clone();
            let stop = stop.clone();
            let permit = connections.clone().try_acquire_owned();
            inner_tasks.spawn(async move {
                let mut client = client;
                match permit {
                    Ok(_permit) => tokio::select! {
                        () = stop.cancelled() => {}
                        () = handle(&mut client, &scope, &metrics) => {}
                    },
                    Err(_) => {
                        let message = format!(
                            "this kernel already has {MAX_CONNECTIONS} connections open through the egress proxy"
                        );
                        respond(&mut client, 503, &message).await;
                    }
                }
            });
        }
    });
    Ok(())
}

/// What the client asked for.
struct Ask {
    host: String,
    port: u16,
    /// `None` for CONNECT; else the request head to send on, in origin form.
    forward: Option<Vec<u8>>,
}

async fn handle(client: &mut Box<dyn ClientStream>, scope: &ProxyScope, metrics: &Metrics) {
    let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(client)).await {
        Ok(Ok(read)) => read,
        Ok(Err(message)) => return respond(client, 400, &message).await,
        Err(_) => return respond(client, 408, "no request head within 30 s").await,
    };
    let ask = match parse(&head) {
        Ok(ask) => ask,
        Err(message) => return respond(client, 400, &message).await,
    };
    let target = format!("{}:{}", ask.host, ask.port);
    let addresses = if scope.names_resolve_anywhere {
        Addresses::Any
    } else {
        Addresses::PublicOrNamed
    };
    match guard::connect(&scope.allowlist, addresses, &ask.host, ask.port).await {
        Ok(Reached {
            mut stream,
            address,
        }) => {
            tracing::info!(
                session_id = %scope.session_id,
                tenant = %scope.tenant,
                target = %printable(&target),
                %address,
                "egress allowed"
            );
            metrics.egress_connections.increment("allowed");
            let sent = match &ask.forward {
                None => client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok(),
                Some(head) => stream.write_all(head).await.is_ok(),
            };
            if sent && stream.write_all(&rest).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(client, &mut stream).await;
            }
        }
        Err(refusal) => {
            let (outcome, status) = if refusal.is_policy() {
                ("refused", 403)
            } else {
                ("failed", 502)
            };
            tracing::info!(
                session_id = %scope.session_id,
                tenant = %scope.tenant,
                target = %printable(&target),
                reason = %printable(&refusal.to_string()),
                "egress {outcome}"
            );
            metrics.egress_connections.increment(outcome);
            respond(client, status, &refusal_message(&refusal)).await;
        }
    }
}

fn refusal_message(refusal: &Refusal) -> String {
    format!("kernelbox egress: {refusal}")
}

/// Reads up to the end of the request head; returns it and whatever came after it.
async fn read_head(client: &mut Box<dyn ClientStream>) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let read = client
            .read(&mut chunk)
            .await
            .map_err(|error| format!("reading the request failed: {error}"))?;
        if read == 0 {
            return Err("the connection closed before a whole request head".to_string());
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok((buffer, rest));
        }
        if buffer.len() > MAX_HEAD {
            return Err(format!("the request head is longer than {MAX_HEAD} bytes"));
        }
    }
}

fn parse(head: &[u8]) -> Result<Ask, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("the request head is incomplete".into()),
        Err(error) => return Err(format!("the request head is not HTTP/1: {error}")),
    }
    let method = request.method.unwrap_or_default();
    let uri = request.path.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(uri, None)?;
        return Ok(Ask {
            host,
            port,
            forward: None,
        });
    }
    let lower = uri.to_ascii_lowercase();
    let Some(after_scheme) = lower.strip_prefix("http://").map(|_| &uri[7..]) else {
        return Err(format!(
            "{method} {} is not a proxy request: use CONNECT host:port, or an absolute http:// URL",
            printable(uri)
        ));
    };
    let split = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    let (authority, path) = after_scheme.split_at(split);
    let (host, port) = split_authority(authority, Some(80))?;
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let mut forward = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for header in request.headers.iter() {
        if HOP_HEADERS
            .iter()
            .any(|hop| header.name.eq_ignore_ascii_case(hop))
        {
            continue;
        }
        forward.extend_from_slice(header.name.as_bytes());
        forward.extend_from_slice(b": ");
        forward.extend_from_slice(header.value);
        forward.extend_from_slice(b"\r\n");
    }
    forward.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Ask {
        host,
        port,
        forward: Some(forward),
    })
}

/// `host:port` (IPv6 hosts in brackets); the port may be left out when `default` is given.
fn split_authority(authority: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let bad = || {
        format!(
            "{:?} is not host:port (a host name or address, and a port from 1 to 65535)",
            printable(authority)
        )
    };
    if authority.contains('@') {
        return Err(format!(
            "{:?} carries credentials; the egress proxy takes none",
            printable(authority)
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let port = match (port, default) {
        (Some(port), _) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?,
        (None, Some(port)) => port,
        (None, None) => return Err(bad()),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if !host_ok {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Text from a kernel, safe for a status line or a log: printable ASCII, at most 300 chars.
fn printable(text: &str) -> String {
    text.chars()
        .take(300)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

async fn respond(client: &mut Box<dyn ClientStream>, status: u16, message: &str) {
    let reason = printable(message);
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(head: &str) -> Result<Ask, String> {
        parse(head.as_bytes())
    }

    #[test]
    fn connect_takes_host_and_port() {
        let parsed = ask("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("pypi.org", 443));
        assert!(parsed.forward.is_none());
        let v6 = ask("CONNECT [::1]:80 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 80));
        assert!(ask("CONNECT pypi.org HTTP/1.1\r\n\r\n").is_err());
        assert!(ask("CONNECT pypi.org:0 HTTP/1.1\r\n\r\n").is_err());
        assert!(ask("CONNECT user@pypi.org:443 HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn plain_requests_go_on_in_origin_form_without_proxy_headers() {
        let parsed = ask(
            "GET http://Example.com:8080/a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("Example.com", 8080));
        assert_eq!(
            String::from_utf8(parsed.forward.unwrap()).unwrap(),
            "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let bare = ask("GET http://example.com?q HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(bare.port, 80);
        assert!(
            String::from_utf8(bare.forward.unwrap())
                .unwrap()
                .starts_with("GET /?q HTTP/1.1\r\n")
        );
    }

    #[test]
    fn other_requests_are_refused_with_a_reason() {
        for head in [
            "GET /local HTTP/1.1\r\n\r\n",
            "GET https://example.com/ HTTP/1.1\r\n\r\n",
            "GET http://exa mple.com/ HTTP/1.1\r\n\r\n",
            "not http\r\n\r\n",
        ] {
            assert!(ask(head).is_err(), "{head}");
        }
    }

    proptest::proptest! {
        #[test]
        fn request_heads_of_any_shape_parse_or_fail_cleanly(
            method in "(CONNECT|GET|POST|[A-Z]{0,8})",
            target in ".{0,60}",
            headers in proptest::collection::vec("[A-Za-z-]{0,12}: .{0,30}", 0..4)
        ) {
            let head = format!("{method} {target} HTTP/1.1\r\n{}\r\n", headers.join("\r\n") + "\r\n");
            if let Ok(parsed) = parse(head.as_bytes()) {
                proptest::prop_assert!(parsed.port > 0);
                proptest::prop_assert!(!parsed.host.is_empty() && !parsed.host.contains('@'));
            }
        }
    }

    #[test]
    fn kernel_text_is_made_printable() {
        assert_eq!(printable("a\r\nb\u{7f}é"), "a??b??");
        assert_eq!(printable(&"x".repeat(400)).len(), 300);
    }
}
