//! Where a HAProxy Runtime API listens: `unix:/path/to.sock`, `tcp:host:port`, a bare path (a
//! Unix socket), or `master:/path/to/master.sock`, the master CLI of a master-worker HAProxy
//! (`haproxy -W -S ...`), through which each command reaches the current worker as `@1 command`
//! (so a reload never leaves stickwarden talking to an old worker). Parsed and checked before any
//! connection is tried.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A Runtime API address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Unix(PathBuf),
    /// Host (name, IPv4, or IPv6 in brackets) and port.
    Tcp {
        host: String,
        port: u16,
    },
    /// A master CLI socket; commands go to the current worker with `@1`.
    Master(PathBuf),
}

impl Target {
    /// What goes before every command line sent to this target.
    pub fn command_prefix(&self) -> &'static [u8] {
        match self {
            Target::Master(_) => b"@1 ",
            _ => b"",
        }
    }
}

/// Why a target address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty HAProxy address (expected unix:/path, tcp:host:port or a socket path)")]
    Empty,
    #[error("'{0}': expected tcp:host:port")]
    TcpForm(String),
    #[error("'{0}': port must be a number from 1 to 65535")]
    Port(String),
    #[error("'{0}': unknown scheme (expected unix:, tcp: or master:)")]
    Scheme(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(path) = s.strip_prefix("master:") {
            return if path.is_empty() { Err(TargetError::Empty) } else { Ok(Target::Master(path.into())) };
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return if path.is_empty() { Err(TargetError::Empty) } else { Ok(Target::Unix(path.into())) };
        }
        if let Some(hp) = s.strip_prefix("tcp:") {
            let (host, port) = hp.rsplit_once(':').ok_or_else(|| TargetError::TcpForm(s.to_owned()))?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.is_empty() || (bare.contains(':') && !host.starts_with('[')) {
                return Err(TargetError::TcpForm(s.to_owned()));
            }
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| TargetError::Port(s.to_owned()))?;
            return Ok(Target::Tcp { host: bare.to_owned(), port });
        }
        // `ipv4@...`, `http://...` and the like are not paths: refuse them rather than try a file.
        if let Some((scheme, _)) = s.split_once(':') {
            if !scheme.contains('/') && !scheme.is_empty() {
                return Err(TargetError::Scheme(s.to_owned()));
            }
        }
        Ok(Target::Unix(s.into()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Master(p) => write!(f, "master:{}", p.display()),
            Target::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!("unix:/run/h.sock".parse(), Ok(Target::Unix("/run/h.sock".into())));
        assert_eq!("/run/h.sock".parse(), Ok(Target::Unix("/run/h.sock".into())));
        assert_eq!("rel/h.sock".parse(), Ok(Target::Unix("rel/h.sock".into())));
        let m: Target = "master:/run/haproxy-master.sock".parse().unwrap();
        assert_eq!(m, Target::Master("/run/haproxy-master.sock".into()));
        assert_eq!(m.to_string(), "master:/run/haproxy-master.sock");
        assert_eq!(m.command_prefix(), b"@1 ");
        assert_eq!("master:".parse::<Target>(), Err(TargetError::Empty));
        assert_eq!("tcp:127.0.0.1:9999".parse(), Ok(Target::Tcp { host: "127.0.0.1".into(), port: 9999 }));
        let v6: Target = "tcp:[::1]:9999".parse().unwrap();
        assert_eq!(v6, Target::Tcp { host: "::1".into(), port: 9999 });
        assert_eq!(v6.to_string(), "tcp:[::1]:9999");
    }

    #[test]
    fn refusals() {
        assert_eq!("".parse::<Target>(), Err(TargetError::Empty));
        assert_eq!("unix:".parse::<Target>(), Err(TargetError::Empty));
        assert!(matches!("tcp:localhost".parse::<Target>(), Err(TargetError::TcpForm(_))));
        assert!(matches!("tcp::1:99".parse::<Target>(), Err(TargetError::TcpForm(_))));
        assert!(matches!("tcp:h:0".parse::<Target>(), Err(TargetError::Port(_))));
        assert!(matches!("tcp:h:99999".parse::<Target>(), Err(TargetError::Port(_))));
        assert!(matches!("ipv4@127.0.0.1:1".parse::<Target>(), Err(TargetError::Scheme(_))));
    }
}
