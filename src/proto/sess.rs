//! Parser of `show sess`: one stream per line, of which only the stable prefix is read:
//! `0x557345712c10: proto=tcpv4 src=127.0.0.1:60918 fe=fe_main ...`. HAProxy offers no filter on
//! the source address, so callers filter the parsed list; pointers are reused at once, so a list
//! is only good right before a `shutdown session`.

use std::net::{IpAddr, SocketAddr};

/// Where a stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSource {
    Inet(SocketAddr),
    /// `src=unix:N`, a Unix-socket client (the CLI itself, for one).
    Unix(String),
    /// Anything else HAProxy prints there.
    Other(String),
}

/// One stream of `show sess`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub ptr: u64,
    pub proto: Option<String>,
    /// `None` for internal streams, which have no `src=`.
    pub src: Option<SessionSource>,
    pub frontend: Option<String>,
}

impl Session {
    /// The client address, IPv4-mapped IPv6 folded to IPv4.
    pub fn client_ip(&self) -> Option<IpAddr> {
        match &self.src {
            Some(SessionSource::Inet(sa)) => Some(sa.ip().to_canonical()),
            _ => None,
        }
    }
}

/// Parses a whole `show sess` answer; a line that does not start with `0x...:` is an error.
pub fn parse_sessions(body: &[u8]) -> Result<Vec<Session>, String> {
    let text = String::from_utf8_lossy(body);
    text.lines().filter(|l| !l.is_empty()).map(parse_session).collect()
}

fn parse_session(line: &str) -> Result<Session, String> {
    let (ptr, rest) = line.split_once(": ").ok_or_else(|| format!("unexpected 'show sess' line: {line}"))?;
    let ptr = super::parse_ptr(ptr).ok_or_else(|| format!("unexpected 'show sess' pointer: {line}"))?;
    let mut s = Session { ptr, proto: None, src: None, frontend: None };
    for word in rest.split(' ') {
        if let Some(p) = word.strip_prefix("proto=") {
            s.proto = Some(p.to_owned());
        } else if let Some(src) = word.strip_prefix("src=") {
            s.src = Some(parse_source(src));
        } else if let Some(fe) = word.strip_prefix("fe=") {
            s.frontend = Some(fe.to_owned());
            break; // everything after fe= changes between versions
        }
    }
    Ok(s)
}

/// `127.0.0.1:60918`, `2001:db8::1:443` (no brackets: split on the last colon), `unix:1`.
fn parse_source(src: &str) -> SessionSource {
    if src.starts_with("unix:") {
        return SessionSource::Unix(src.to_owned());
    }
    let parsed = src.rsplit_once(':').and_then(|(ip, port)| {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
    });
    match parsed {
        Some(sa) => SessionSource::Inet(sa),
        None => SessionSource::Other(src.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::{fixture, VERSIONS};
    use proptest::prelude::*;

    #[test]
    fn both_versions() {
        for v in VERSIONS {
            let s = parse_sessions(&fixture(v, "show-sess")).unwrap();
            assert_eq!(s.len(), 3, "{v}");
            assert_eq!(s[0].proto.as_deref(), Some("tcpv4"));
            assert_eq!(s[0].client_ip(), Some("127.0.0.1".parse().unwrap()));
            assert_eq!(s[0].frontend.as_deref(), Some("ft_tcp"));
            assert_eq!(s[2].src, Some(SessionSource::Unix("unix:1".into())));
            assert_eq!(s[2].client_ip(), None);
        }
    }

    #[test]
    fn ipv6_and_internal_streams() {
        let body = b"0x1: proto=tcpv6 src=2001:db8::1:443 fe=f be=b\n0x2: proto=? fe=GLOBAL\n0x3: proto=tcpv6 src=::ffff:10.0.0.1:5 fe=f\n";
        let s = parse_sessions(body).unwrap();
        assert_eq!(s[0].src, Some(SessionSource::Inet("[2001:db8::1]:443".parse().unwrap())));
        assert_eq!(s[1].src, None);
        assert_eq!(s[2].client_ip(), Some("10.0.0.1".parse().unwrap()));
        assert!(parse_sessions(b"garbage\n").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_sessions(&body);
        }
    }
}
