//! A minimal HTTP/1.1 client for the node's API: keep-alive connections, one request at a time
//! per connection, `Content-Length` bodies only (what actix-web sends for `/send` and `/status`).
//!
//! Written by hand rather than taken from a crate on purpose: the client shares the machine's
//! two cores with the nodes it measures, so it must cost as little as possible per request
//! (one `write` and usually one `read`, no allocation in the steady state). [`Conn`] is the
//! blocking form (sequential round trips), [`AsyncConn`] the tokio form (many connections on one
//! thread). Both only ever connect to 127.0.0.1.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head accepted; actix-web's heads are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body accepted (a `/status` of a 50-node mesh is ~100 KB).
const MAX_BODY_BYTES: usize = 16 << 20;
/// Bodies up to this size are copied behind the head so a request is one `write`.
const COALESCE_BYTES: usize = 64 * 1024;

/// The loopback address every connection goes to.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The head of `POST /send` to `target` with a body of `len` bytes and a `timeout` header.
pub fn send_head(target: &str, len: usize, timeout_ms: u64) -> Vec<u8> {
    format!(
        "POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\ntarget: {target}\r\ntimeout: {timeout_ms}\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// [`send_head`] with a `ttl` header (seconds): a durable message.
pub fn send_head_ttl(target: &str, len: usize, timeout_ms: u64, ttl_s: u64) -> Vec<u8> {
    format!(
        "POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\ntarget: {target}\r\ntimeout: {timeout_ms}\r\n\
         ttl: {ttl_s}\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a `GET` of `path`.
pub fn get_head(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// A complete response found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Framed {
    /// Status code.
    status: u16,
    /// Where the body starts.
    body_start: usize,
    /// Where the response ends (the next one would start here).
    end: usize,
    /// The server said `Connection: close`.
    close: bool,
}

/// Looks for one complete response at the start of `buf`: `Ok(None)` when more bytes are needed.
fn frame(buf: &[u8]) -> io::Result<Option<Framed>> {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::other("response head too large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| io::Error::other("response head is not text"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::other("chunked responses are not supported"));
        }
    }
    let length = length.ok_or_else(|| io::Error::other("response without content-length"))?;
    if length > MAX_BODY_BYTES {
        return Err(io::Error::other("response body too large"));
    }
    let body_start = head_len + 4;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    Ok(Some(Framed {
        status,
        body_start,
        end: body_start + length,
        close,
    }))
}

/// A blocking keep-alive connection; reconnects by itself after the server closes it.
pub struct Conn {
    /// Port of the node's API on 127.0.0.1.
    port: u16,
    /// Bound on every read and write.
    io_timeout: Duration,
    /// The socket; `None` after a close, until the next request.
    stream: Option<TcpStream>,
    /// Received bytes; the last response occupies `body` within it.
    buf: Vec<u8>,
    /// Body of the last response within `buf`.
    body: std::ops::Range<usize>,
    /// Scratch for head + small body, so a request is one write.
    out: Vec<u8>,
}

impl Conn {
    /// Connects to the API on 127.0.0.1:`port`.
    pub fn connect(port: u16, io_timeout: Duration) -> io::Result<Conn> {
        let mut c = Conn {
            port,
            io_timeout,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            body: 0..0,
            out: Vec::with_capacity(4096),
        };
        c.reconnect()?;
        Ok(c)
    }

    fn reconnect(&mut self) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&loopback(self.port), self.io_timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(self.io_timeout))?;
        s.set_write_timeout(Some(self.io_timeout))?;
        self.stream = Some(s);
        Ok(())
    }

    /// Sends one request (`head` as built by [`send_head`] or [`get_head`], then `body`) and
    /// reads the response; returns its status. The body is then in [`Conn::body`].
    pub fn request(&mut self, head: &[u8], body: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            self.reconnect()?;
        }
        let r = self.exchange(head, body);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, head: &[u8], body: &[u8]) -> io::Result<u16> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        if body.len() <= COALESCE_BYTES {
            self.out.clear();
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(body);
            stream.write_all(&self.out)?;
        } else {
            stream.write_all(head)?;
            stream.write_all(body)?;
        }
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(f) = frame(&self.buf)? {
                self.body = f.body_start..f.end;
                if f.close {
                    self.stream = None;
                }
                return Ok(f.status);
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body.clone()).unwrap_or(&[])
    }
}

/// `GET path` on a fresh connection, parsed as JSON; `Err` on any failure or a non-200 status.
pub fn get_json(port: u16, path: &str, io_timeout: Duration) -> io::Result<Value> {
    let mut c = Conn::connect(port, io_timeout)?;
    let status = c.request(&get_head(path), b"")?;
    if status != 200 {
        return Err(io::Error::other(format!("GET {path}: status {status}")));
    }
    serde_json::from_slice(c.body()).map_err(io::Error::other)
}

/// The error code of an API error body (`{"error": "<code>", ..}`), for tallies.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// The tokio form of [`Conn`], for many concurrent connections on one thread.
pub struct AsyncConn {
    /// Port of the node's API on 127.0.0.1.
    port: u16,
    /// The socket; `None` after a close, until the next request.
    stream: Option<tokio::net::TcpStream>,
    /// Received bytes; the last response occupies `body` within it.
    buf: Vec<u8>,
    /// Body of the last response within `buf`.
    body: std::ops::Range<usize>,
    /// Scratch for head + small body, so a request is one write.
    out: Vec<u8>,
}

impl AsyncConn {
    /// Connects to the API on 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> io::Result<AsyncConn> {
        let mut c = AsyncConn {
            port,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            body: 0..0,
            out: Vec::with_capacity(4096),
        };
        c.reconnect().await?;
        Ok(c)
    }

    async fn reconnect(&mut self) -> io::Result<()> {
        let s = tokio::net::TcpStream::connect(loopback(self.port)).await?;
        s.set_nodelay(true)?;
        self.stream = Some(s);
        Ok(())
    }

    /// As [`Conn::request`]; the caller bounds it with a timeout.
    pub async fn request(&mut self, head: &[u8], body: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            self.reconnect().await?;
        }
        let r = self.exchange(head, body).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn exchange(&mut self, head: &[u8], body: &[u8]) -> io::Result<u16> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        if body.len() <= COALESCE_BYTES {
            self.out.clear();
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(body);
            stream.write_all(&self.out).await?;
        } else {
            stream.write_all(head).await?;
            stream.write_all(body).await?;
        }
        self.buf.clear();
        loop {
            if let Some(f) = frame(&self.buf)? {
                self.body = f.body_start..f.end;
                if f.close {
                    self.stream = None;
                }
                return Ok(f.status);
            }
            self.buf.reserve(16 * 1024);
            let n = stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
        }
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body.clone()).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_a_complete_response_and_waits_for_a_partial_one() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: x\r\n\r\nhello";
        let f = frame(r).expect("ok").expect("complete");
        assert_eq!(f.status, 200);
        assert_eq!(&r[f.body_start..f.end], b"hello");
        assert!(!f.close);
        assert_eq!(frame(&r[..r.len() - 1]).expect("ok"), None);
        assert_eq!(frame(&r[..10]).expect("ok"), None);
    }

    #[test]
    fn notices_close_and_refuses_chunked() {
        let r = b"HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let f = frame(r).expect("ok").expect("complete");
        assert_eq!((f.status, f.close), (504, true));
        let c = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(frame(c).is_err());
    }
}
