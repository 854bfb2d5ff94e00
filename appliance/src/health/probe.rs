//! One probe of one target: a TCP connect to a NodePort, or an HTTP `GET` of a health path
//! (kube-proxy's `healthCheckNodePort` `/healthz`: 200 = the node has local endpoints, 503 = it
//! has none; or kube-proxy's node-level port 10256). Plain HTTP/1.1 written by hand: the answer
//! needed is one status line, and a client library would cost more than the probe.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::state::Outcome;

/// How a target is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET /healthz` answers 200 (kube-proxy's, on a `healthCheckNodePort` or its node port).
    /// The only path ever probed, so a variant rather than a path: one byte keeps a target at
    /// 20 bytes, which counts at 100,000 targets.
    Healthz,
}

impl ProbeKind {
    /// The HTTP path asked for, if the probe is HTTP.
    pub fn path(self) -> Option<&'static str> {
        match self {
            ProbeKind::Tcp => None,
            ProbeKind::Healthz => Some("/healthz"),
        }
    }
}

/// Probes `addr` once, within `timeout`; returns the outcome and how long it took.
pub async fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> (Outcome, Duration) {
    let start = Instant::now();
    let outcome = match tokio::time::timeout(timeout, probe_inner(addr, kind)).await {
        Ok(o) => o,
        Err(_) => Outcome::Failed(format!("no answer within {} ms", timeout.as_millis())),
    };
    (outcome, start.elapsed())
}

async fn probe_inner(addr: SocketAddr, kind: &ProbeKind) -> Outcome {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    let Some(path) = kind.path() else {
        return Outcome::Up;
    };
    // Nagle would hold the request back for nothing.
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgelb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Failed(format!("send: {e}"));
    }
    let mut buf = [0u8; 256];
    let mut len = 0;
    // Read until the status line is complete (or the peer closes).
    while !buf[..len].contains(&b'\n') && len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Outcome::Failed(format!("read: {e}")),
        }
    }
    match parse_status(&buf[..len]) {
        Some(200) => Outcome::Up,
        Some(code) => Outcome::Unhealthy(format!("HTTP {code}")),
        None => Outcome::Failed("the answer is not HTTP".to_owned()),
    }
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK\r\n", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: x\r\n", Some(503)),
            (b"HTTP/1.1 204\r\n", Some(204)),
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"SSH-2.0-OpenSSH\r\n", None),
            (b"HTTP/1.1 2000 x\r\n", None),
            (b"", None),
        ];
        for (head, want) in cases {
            assert_eq!(parse_status(head), *want, "{}", String::from_utf8_lossy(head));
        }
    }
}
