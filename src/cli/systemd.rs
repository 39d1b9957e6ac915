//! systemd's notify protocol, for `Type=notify` units: `READY=1` once the store is open, the API
//! listens and every HAProxy target has answered, `STOPPING=1` at shutdown. A datagram to the
//! socket `NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace); without it (not
//! started by systemd) nothing is sent.

use std::time::Duration;

use crate::client::Client;

/// Sends `state` (`READY=1`, ...) to systemd; `Ok(false)` when not started by systemd.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), &path)?;
        }
    }
    Ok(true)
}

/// Says `READY=1` once every target has answered `show info` (each asked again every 500 ms
/// until it does): a unit that starts stickwarden is started when it can block.
pub async fn ready_when_targets_answer(clients: Vec<(String, Client)>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    for (name, client) in &clients {
        let mut logged = false;
        while client.show_info().await.is_err() {
            if !logged {
                tracing::warn!(target = %name, "not ready for systemd yet: the target does not answer");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let status = format!("READY=1\nSTATUS=enforcing on {} target(s)", clients.len());
    if let Err(e) = notify(&status) {
        tracing::warn!(error = %e, "cannot tell systemd the daemon is ready");
    }
}
