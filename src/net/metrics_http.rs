//! The small HTTP/1.1 server behind `--metrics` (the relay's and `turn-alloc
//! --every`'s): one GET, one answer, connection closed (RFC 9112 §9.6).
//!
//! A Prometheus scrape is one short request, so the server only has to be
//! safe, not general: it reads the whole request head (up to the blank line,
//! RFC 9112 §2.1) before answering, however many pieces it arrives in, and
//! bounds everything a client can hold: the head's size ([`MAX_HEAD`], 431
//! beyond), the time from accept to the end of the head
//! ([`MetricsLimits::header_timeout`]: a slow or idle client is closed, and
//! trickling bytes buys no time), the time to write the answer, and the
//! connections held at once, in total and per source address (taken at
//! accept with [`ConnLimiter`], so a crowd of idle connections from one
//! address cannot keep a real scraper out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net::conn_limit::{ConnLimiter, ConnPermit, accept_with_backoff};

/// Largest request head read; a longer one gets 431 and the connection is closed.
pub const MAX_HEAD: usize = 8 * 1024;

/// Longest time to write an answer to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one metrics endpoint allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Connections held at once, in total and per source address.
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// From accept to the end of the request head.
    pub header_timeout: Duration,
}

impl MetricsLimits {
    /// A total cap, with an eighth of it (at least 1) per source address.
    pub fn with_cap(max_connections: usize, header_timeout: Duration) -> MetricsLimits {
        MetricsLimits { max_connections, max_per_ip: (max_connections / 8).max(1), header_timeout }
    }
}

impl Default for MetricsLimits {
    fn default() -> Self {
        MetricsLimits::with_cap(64, Duration::from_secs(5))
    }
}

/// Which paths are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paths {
    /// Any path (the relay's historical behaviour).
    Any,
    /// Only this one (the query string aside); 404 for others.
    Only(&'static str),
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Get { head_only: bool },
    WrongMethod,
    NotFound,
    Malformed,
}

/// Where the head ends (just past the blank line), once it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads the request line of a complete head.
pub fn ask(head: &[u8], paths: Paths) -> Ask {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Ask::Malformed;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Ask::Malformed;
    }
    let path = target.split('?').next().unwrap_or_default();
    if let Paths::Only(p) = paths
        && path != p
    {
        return Ask::NotFound;
    }
    match method {
        "GET" => Ask::Get { head_only: false },
        "HEAD" => Ask::Get { head_only: true },
        _ => Ask::WrongMethod,
    }
}

fn response(status: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body.as_bytes());
    }
    r
}

/// Serves `render()` until the task is dropped. `what` names the endpoint in
/// the one log line said when a cap first refuses a connection.
pub async fn serve<F>(listener: TcpListener, limits: MetricsLimits, paths: Paths, what: &'static str, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let limiter = ConnLimiter::new(limits.max_connections, limits.max_per_ip);
    let exhausted = AtomicU64::new(0);
    let refusal_said = AtomicBool::new(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            (stream, remote) = accept_with_backoff(&listener, &exhausted) => {
                let permit = match limiter.try_acquire(remote.ip()) {
                    Ok(p) => p,
                    Err(why) => {
                        if !refusal_said.swap(true, Ordering::Relaxed) {
                            tracing::warn!(%remote, "{what} metrics endpoint: connection refused ({} cap: {} in total, {} per address reached); said once", why.as_str(), limits.max_connections, limits.max_per_ip);
                        }
                        continue;
                    }
                };
                conns.spawn(answer(stream, remote, permit, limits.header_timeout, paths, render.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn answer<F: Fn() -> String>(
    mut stream: TcpStream,
    remote: SocketAddr,
    _permit: ConnPermit,
    header_timeout: Duration,
    paths: Paths,
    render: Arc<F>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // One deadline for the whole head: a client that trickles bytes gains no time.
    let read_head = async {
        loop {
            if let Some(end) = head_end(&buf) {
                return Some(Ok(end));
            }
            if buf.len() > MAX_HEAD {
                return Some(Err(()));
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let reply = match tokio::time::timeout(header_timeout, read_head).await {
        Err(_) => {
            tracing::debug!(%remote, "metrics: no complete request head within {header_timeout:?}: closed");
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(()))) => response("431 Request Header Fields Too Large", "request head too large\n", false),
        Ok(Some(Ok(end))) => match ask(&buf[..end.min(MAX_HEAD)], paths) {
            Ask::Get { head_only } => response("200 OK", &render(), head_only),
            Ask::NotFound => response("404 Not Found", "not found; metrics are at /metrics\n", false),
            Ask::WrongMethod => response("405 Method Not Allowed", "only GET\n", false),
            Ask::Malformed => response("400 Bad Request", "bad request\n", false),
        },
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_blank_line_wherever_the_pieces_were_cut() {
        let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(head_end(&req[..cut]), None, "incomplete at {cut}");
        }
        assert_eq!(head_end(req), Some(req.len()));
    }

    #[test]
    fn the_request_line_decides_the_answer() {
        let any = Paths::Any;
        let only = Paths::Only("/metrics");
        assert_eq!(ask(b"GET /metrics HTTP/1.1\r\n\r\n", only), Ask::Get { head_only: false });
        assert_eq!(ask(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", only), Ask::Get { head_only: false });
        assert_eq!(ask(b"HEAD /metrics HTTP/1.1\r\n\r\n", only), Ask::Get { head_only: true });
        assert_eq!(ask(b"GET / HTTP/1.1\r\n\r\n", only), Ask::NotFound);
        assert_eq!(ask(b"GET / HTTP/1.1\r\n\r\n", any), Ask::Get { head_only: false });
        assert_eq!(ask(b"POST /metrics HTTP/1.1\r\n\r\n", only), Ask::WrongMethod);
        assert_eq!(ask(b"GET /metrics\r\n\r\n", only), Ask::Malformed);
        assert_eq!(ask(b"\xff\xfe\r\n\r\n", any), Ask::Malformed);
    }
}
