//! The `kill` action: every live session whose client address is inside the block shut down
//! (`show sess`, then `shutdown session` of each), once, when the block is decided; a block put
//! back after a restart kills nothing again. Nothing to release and nothing to read back: it
//! needs the socket at level admin, which `check` verifies.
use std::net::IpAddr;

use ipnet::IpNet;
use tracing::info;

use super::Actor;
use crate::client::ClientError;
use crate::proto::{Command, ErrorKind};

impl Actor {
    /// Shuts down every live session whose client address is inside one of `keys`: one
    /// `show sess` for all of them, the shutdowns pipelined.
    pub(super) async fn kill_all(&mut self, keys: &[IpNet]) -> Result<(), ClientError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.command().await;
        let sessions = self.client.show_sess().await?;
        let doomed: Vec<Command> = sessions
            .iter()
            .filter(|s| s.client_ip().is_some_and(|ip: IpAddr| keys.iter().any(|k| crate::net::covers_addr(k, ip))))
            .map(|s| Command::ShutdownSession { ptr: s.ptr })
            .collect();
        for _ in &doomed {
            self.command().await;
        }
        let mut killed = 0;
        for result in self.client.pipeline(&doomed).await {
            match result {
                Ok(()) => killed += 1,
                Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::NoSuchSession) => {}
                Err(e) => return Err(e),
            }
        }
        info!(target = %self.name, blocks = keys.len(), killed, "live sessions shut down");
        Ok(())
    }

    /// Shuts down every live session whose client address is inside `key`.
    pub(super) async fn kill(&mut self, key: &IpNet) -> Result<(), ClientError> {
        self.command().await;
        let sessions = self.client.show_sess().await?;
        let mut killed = 0;
        for s in sessions.iter().filter(|s| s.client_ip().is_some_and(|ip: IpAddr| crate::net::covers_addr(key, ip))) {
            self.command().await;
            match self.client.shutdown_session(s.ptr).await {
                Ok(()) => killed += 1,
                Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::NoSuchSession) => {}
                Err(e) => return Err(e),
            }
        }
        info!(target = %self.name, key = %crate::net::display(key), killed, "live sessions shut down");
        Ok(())
    }
}
