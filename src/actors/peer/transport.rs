//! Setting up a PeerActor's connection: name resolution, TCP connect, the WebSocket upgrade,
//! and the choice of UDP socket to dial from. Bounded in time; errors are one-line strings for
//! `/status`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::actors::messages::UdpEndpoint;
use crate::addr::{Endpoint, Transport};

use super::CONNECT_TIMEOUT_MS;

/// Result of connecting a stream transport.
pub(super) enum Connected {
    Tcp(TcpStream, SocketAddr),
    Ws(
        Box<tokio_tungstenite::WebSocketStream<TcpStream>>,
        SocketAddr,
    ),
}

/// The socket address of `target`, resolving a DNS name (the first address wins).
pub(super) async fn resolve(target: &Endpoint) -> Result<SocketAddr, String> {
    if let Some(addr) = target.socket_addr() {
        return Ok(addr);
    }
    let host = target.host.to_string();
    tokio::net::lookup_host(format!("{host}:{}", target.port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))
}

/// Connects a `tcp://` or `ws://` target, each step bounded by [`CONNECT_TIMEOUT_MS`].
pub(super) async fn connect_stream(
    target: &Endpoint,
    ws_config: WebSocketConfig,
) -> Result<Connected, String> {
    let addr = resolve(target).await?;
    let stream = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    if target.transport == Transport::Tcp {
        return Ok(Connected::Tcp(stream, addr));
    }
    let url = format!("ws://{addr}/");
    let upgrade = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config));
    let (ws, _response) = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), upgrade)
        .await
        .map_err(|_| "websocket upgrade timed out".to_string())?
        .map_err(|e| format!("websocket upgrade: {e}"))?;
    Ok(Connected::Ws(Box::new(ws), addr))
}

/// A UDP socket of the same address family that can reach `remote` (a socket bound to loopback
/// only reaches loopback).
pub(super) fn pick_udp(sockets: &[UdpEndpoint], remote: SocketAddr) -> Option<UdpEndpoint> {
    sockets
        .iter()
        .filter(|s| s.local.is_ipv4() == remote.is_ipv4())
        .find(|s| !s.local.ip().is_loopback() || remote.ip().is_loopback())
        .cloned()
}
