//! The one shared helper of the integration tests: a real `haproxy` in a temp dir with Unix
//! sockets and loopback ports, killed on drop (see `stickwarden::sandbox`), plus a connected client.

#![allow(dead_code)] // each test binary uses its own part of the helper

use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::{Client, ClientOptions};

/// Starts the standard sandbox. A missing `haproxy` fails the test: `make test` installs it.
pub fn haproxy() -> Sandbox {
    haproxy_with(&SandboxOptions::default())
}

pub fn haproxy_with(opts: &SandboxOptions) -> Sandbox {
    Sandbox::start(opts).unwrap_or_else(|e| panic!("cannot start haproxy for the test: {e}"))
}

/// A client on the sandbox's socket at `level admin`.
pub async fn admin(sb: &Sandbox) -> Client {
    Client::connect(sb.admin().parse().unwrap(), ClientOptions::default()).await.expect("connect to the sandbox")
}

/// Major and minor version of the sandbox's HAProxy, e.g. (2, 6).
pub fn version(sb: &Sandbox) -> (u32, u32) {
    let mut it = sb.version.split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}
