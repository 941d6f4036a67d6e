//! Transport addresses: the `udp://`, `tcp://` and `ws://` URLs a node listens on and dials.
//!
//! An [`Endpoint`] is a [`Transport`] (the URL scheme), a [`Host`] (an IP literal or a DNS
//! name) and a port. This module parses the URL form (`tcp://127.0.0.1:6667`,
//! `ws://[::1]:80`), writes it back ([`fmt::Display`], and `Serialize` as the same string), and
//! says why a string is not a valid URL ([`EndpointError`], each message quoting the input). It
//! is pure: no sockets and no DNS lookups; [`Endpoint::socket_addr`] answers only for IP
//! literals.
//!
//! Who uses it: [`crate::config`] parses `listeners` and `peers` with it (and adds the rules
//! that depend on the role, such as "no DNS names for listeners"); `proto::peer_table`
//! keeps and gossips known nodes' addresses as endpoints; the actors bind, dial and punch them
//! (listener, peer, discovery, relay) and [`crate::node`] picks transports. It lives outside
//! `config` so that protocol code need not import the config module to name an address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// The transport of an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Datagrams over UDP.
    Udp,
    /// A byte stream over TCP.
    Tcp,
    /// WebSocket (binary messages) over TCP.
    Ws,
}

impl Transport {
    /// The URL scheme: `"udp"`, `"tcp"` or `"ws"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }

    /// Whether the transport binds a TCP socket (so `tcp` and `ws` on one port conflict).
    pub(crate) fn uses_tcp_port(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Ws)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name, stored in lowercase.
    Name(String),
}

impl fmt::Display for Host {
    /// As it appears in a URL: IPv6 in brackets (`[::1]`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A transport URL such as `tcp://127.0.0.1:6667`, `ws://[::1]:80` or `udp://example.org:5`.
///
/// [`FromStr`] accepts a case-insensitive scheme, an IP literal (IPv6 in brackets) or DNS name,
/// a port 0-65535, and for `ws` only an optional `/` path; [`fmt::Display`] writes the same
/// form back. Whether port 0 or DNS names are acceptable depends on the use (listener or peer)
/// and is checked by the config loader.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The transport (URL scheme).
    pub transport: Transport,
    /// IP literal or DNS name.
    pub host: Host,
    /// Port number; 0 only makes sense for listeners (the OS picks one).
    pub port: u16,
}

impl Endpoint {
    /// The socket address, when the host is an IP literal (no DNS lookup is done).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.transport, self.host, self.port)
    }
}

impl Serialize for Endpoint {
    /// Serialized as its URL string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a string is not a valid [`Endpoint`] URL. Each message quotes the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `scheme://` prefix.
    #[error("missing scheme in {input:?} (expected udp://, tcp:// or ws://)")]
    MissingScheme {
        /// The whole URL.
        input: String,
    },
    /// A scheme other than udp, tcp or ws.
    #[error("unknown scheme {scheme:?} (expected udp, tcp or ws)")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// `user@` before the host.
    #[error("user info is not allowed in {input:?}")]
    UserInfo {
        /// The whole URL.
        input: String,
    },
    /// Nothing between `://` and the port.
    #[error("missing host in {input:?}")]
    MissingHost {
        /// The whole URL.
        input: String,
    },
    /// The host is neither an IPv4 address nor a DNS name.
    #[error("invalid host {host:?} in {input:?} (expected an IP address or a DNS name)")]
    InvalidHost {
        /// The host as written.
        host: String,
        /// The whole URL.
        input: String,
    },
    /// A bracketed host that is not an IPv6 address.
    #[error("invalid IPv6 address {host:?} in {input:?}")]
    InvalidIpv6 {
        /// The bracketed host as written.
        host: String,
        /// The whole URL.
        input: String,
    },
    /// An IPv6 address without brackets.
    #[error("IPv6 address must be in brackets (e.g. \"tcp://[::1]:6667\") in {input:?}")]
    UnbracketedIpv6 {
        /// The whole URL.
        input: String,
    },
    /// No `:port`, or an empty one.
    #[error("missing port in {input:?}")]
    MissingPort {
        /// The whole URL.
        input: String,
    },
    /// The port is not a number in 0-65535.
    #[error("invalid port {port:?} in {input:?} (expected a number 0-65535)")]
    InvalidPort {
        /// The port as written.
        port: String,
        /// The whole URL.
        input: String,
    },
    /// A path on a udp or tcp URL.
    #[error("a path ({path:?}) is only allowed for ws URLs, found in {input:?}")]
    PathNotAllowed {
        /// The path as written.
        path: String,
        /// The whole URL.
        input: String,
    },
    /// A ws path other than `/`.
    #[error("ws path {path:?} is not supported yet (only \"/\" or none) in {input:?}")]
    UnsupportedWsPath {
        /// The path as written.
        path: String,
        /// The whole URL.
        input: String,
    },
    /// A `?query` part.
    #[error("a query string is not allowed in {input:?}")]
    Query {
        /// The whole URL.
        input: String,
    },
    /// A `#fragment` part.
    #[error("a fragment is not allowed in {input:?}")]
    Fragment {
        /// The whole URL.
        input: String,
    },
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_string();
        let (scheme, rest) = match input.split_once("://") {
            Some((scheme, rest)) if !scheme.is_empty() => (scheme, rest),
            _ => return Err(EndpointError::MissingScheme { input: owned() }),
        };
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "ws" => Transport::Ws,
            _ => {
                return Err(EndpointError::UnknownScheme {
                    scheme: scheme.to_string(),
                })
            }
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(EndpointError::UserInfo { input: owned() });
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let invalid_v6 = |host: &str| EndpointError::InvalidIpv6 {
                host: host.to_string(),
                input: owned(),
            };
            let Some((inside, after)) = bracketed.split_once(']') else {
                return Err(invalid_v6(authority));
            };
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| invalid_v6(&format!("[{inside}]")))?;
            let port = if after.is_empty() {
                None
            } else if let Some(port) = after.strip_prefix(':') {
                Some(port)
            } else {
                return Err(invalid_v6(authority));
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.contains(':') {
                return Err(EndpointError::UnbracketedIpv6 { input: owned() });
            }
            (parse_plain_host(host, input)?, port)
        };

        let port = match port {
            None | Some("") => return Err(EndpointError::MissingPort { input: owned() }),
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u16>().map_err(|_| EndpointError::InvalidPort {
                    port: p.to_string(),
                    input: owned(),
                })?
            }
            Some(p) => {
                return Err(EndpointError::InvalidPort {
                    port: p.to_string(),
                    input: owned(),
                })
            }
        };

        if tail.contains('#') {
            return Err(EndpointError::Fragment { input: owned() });
        }
        if tail.contains('?') {
            return Err(EndpointError::Query { input: owned() });
        }
        match (transport, tail) {
            (_, "") | (Transport::Ws, "/") => {}
            (Transport::Ws, path) => {
                return Err(EndpointError::UnsupportedWsPath {
                    path: path.to_string(),
                    input: owned(),
                })
            }
            (_, path) => {
                return Err(EndpointError::PathNotAllowed {
                    path: path.to_string(),
                    input: owned(),
                })
            }
        }

        Ok(Endpoint {
            transport,
            host,
            port,
        })
    }
}

/// Parses an unbracketed host: an IPv4 literal or a DNS name (RFC 1123 labels; underscores
/// tolerated; the last label must not be all digits, so `1.2.3.999` is rejected).
fn parse_plain_host(host: &str, input: &str) -> Result<Host, EndpointError> {
    if host.is_empty() {
        return Err(EndpointError::MissingHost {
            input: input.to_string(),
        });
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let last_label_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if host.len() > 253 || !host.split('.').all(label_ok) || last_label_numeric {
        return Err(EndpointError::InvalidHost {
            host: host.to_string(),
            input: input.to_string(),
        });
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_err(url: &str) -> String {
        match url.parse::<Endpoint>() {
            Ok(e) => panic!("expected {url:?} to be rejected, got {e}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn url_missing_scheme() {
        assert_eq!(
            url_err("127.0.0.1:5"),
            r#"missing scheme in "127.0.0.1:5" (expected udp://, tcp:// or ws://)"#
        );
        url_err("://127.0.0.1:5");
    }

    #[test]
    fn url_bad_port() {
        assert_eq!(
            url_err("tcp://1.2.3.4:70000"),
            r#"invalid port "70000" in "tcp://1.2.3.4:70000" (expected a number 0-65535)"#
        );
        url_err("tcp://1.2.3.4:abc");
        url_err("tcp://1.2.3.4:+5");
        url_err("tcp://1.2.3.4:-1");
        assert_eq!(
            url_err("tcp://1.2.3.4:"),
            r#"missing port in "tcp://1.2.3.4:""#
        );
    }

    #[test]
    fn url_bad_ipv6() {
        assert_eq!(
            url_err("tcp://[::g]:5"),
            r#"invalid IPv6 address "[::g]" in "tcp://[::g]:5""#
        );
        url_err("tcp://[::1:5");
        url_err("tcp://[::1]5");
        url_err("tcp://[1.2.3.4]:5");
        assert_eq!(
            url_err("tcp://::1:5"),
            r#"IPv6 address must be in brackets (e.g. "tcp://[::1]:6667") in "tcp://::1:5""#
        );
    }

    #[test]
    fn url_unknown_scheme() {
        assert_eq!(
            url_err("http://1.2.3.4:5"),
            r#"unknown scheme "http" (expected udp, tcp or ws)"#
        );
        let e: Endpoint = "TCP://1.2.3.4:5".parse().unwrap();
        assert_eq!(e.transport, Transport::Tcp);
        assert_eq!(
            "Ws://1.2.3.4:5".parse::<Endpoint>().unwrap().transport,
            Transport::Ws
        );
    }

    #[test]
    fn url_paths() {
        assert_eq!(
            url_err("tcp://1.2.3.4:5/x"),
            r#"a path ("/x") is only allowed for ws URLs, found in "tcp://1.2.3.4:5/x""#
        );
        url_err("udp://1.2.3.4:5/");
        assert_eq!(
            url_err("ws://1.2.3.4:5/chat"),
            r#"ws path "/chat" is not supported yet (only "/" or none) in "ws://1.2.3.4:5/chat""#
        );
        let e: Endpoint = "ws://1.2.3.4:5/".parse().unwrap();
        assert_eq!(e.to_string(), "ws://1.2.3.4:5");
    }

    #[test]
    fn url_userinfo_query_fragment_host() {
        assert_eq!(
            url_err("tcp://me@1.2.3.4:5"),
            r#"user info is not allowed in "tcp://me@1.2.3.4:5""#
        );
        assert_eq!(
            url_err("ws://1.2.3.4:5/?a=b"),
            r#"a query string is not allowed in "ws://1.2.3.4:5/?a=b""#
        );
        assert_eq!(
            url_err("tcp://1.2.3.4:5#x"),
            r#"a fragment is not allowed in "tcp://1.2.3.4:5#x""#
        );
        assert_eq!(url_err("tcp://:5"), r#"missing host in "tcp://:5""#);
        assert_eq!(
            url_err("tcp://1.2.3.999:5"),
            r#"invalid host "1.2.3.999" in "tcp://1.2.3.999:5" (expected an IP address or a DNS name)"#
        );
        url_err("tcp://bad host:5");
        url_err("tcp://-bad.example:5");
        url_err("tcp://a..b:5");
    }

    #[test]
    fn endpoint_display_from_str_round_trip() {
        for url in [
            "tcp://127.0.0.1:6667",
            "ws://[::1]:80",
            "udp://example.org:5",
            "udp://0.0.0.0:0",
            "ws://[fe80::1:2]:65535",
            "tcp://node-1.lan:1",
        ] {
            let e: Endpoint = url.parse().unwrap();
            assert_eq!(e.to_string(), url);
            assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
        }
        let e = Endpoint {
            transport: Transport::Ws,
            host: Host::Ip("::1".parse().unwrap()),
            port: 80,
        };
        assert_eq!(e.to_string(), "ws://[::1]:80");
        assert_eq!(e.socket_addr(), Some("[::1]:80".parse().unwrap()));
        assert_eq!(serde_json::to_value(e).unwrap(), "ws://[::1]:80");
        assert_eq!(serde_json::to_value(Transport::Udp).unwrap(), "udp");
        assert_eq!(Transport::Tcp.to_string(), "tcp");
    }
}
