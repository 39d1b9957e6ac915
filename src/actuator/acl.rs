//! The `acl` action: the address or network added to the block ACL's runtime patterns (`add
//! acl`), so that HAProxy refuses the connection; released with `del acl`. HAProxy does not refuse
//! a duplicate pattern, so the ACL's patterns are read once per connection and kept up to date by
//! our own adds and deletes. Imports go in as one new version of the ACL, committed at once. What
//! the reconciler reads back of it is [`listed`].
use std::collections::HashSet;

use ipnet::IpNet;
use tracing::info;

use super::{Actor, IMPORT_CHUNK};
use crate::client::{Client, ClientError};
use crate::proto::{AclPattern, AclRef, Command, ErrorKind};

/// The networks the ACL `acl` holds: what HAProxy holds of the ACL action, for the reconciler.
pub async fn listed(client: &Client, acl: &AclRef) -> Result<HashSet<IpNet>, ClientError> {
    Ok(client.show_acl(acl).await?.iter().filter_map(|e| crate::net::parse_net(&e.pattern).ok()).collect())
}

impl Actor {
    pub(super) fn pattern(key: &IpNet) -> AclPattern {
        if crate::net::is_host(key) {
            AclPattern::addr(key.addr())
        } else {
            AclPattern::Net(*key)
        }
    }

    /// The patterns of the ACL file `file`, read once per connection.
    pub(super) async fn known_acl(&mut self, file: &str) -> Result<&mut HashSet<AclPattern>, ClientError> {
        if !self.acl_known.contains_key(file) {
            let acl: AclRef = file.parse()?;
            self.command().await;
            let entries = self.client.show_acl(&acl).await?;
            let set = entries.iter().filter_map(|e| e.pattern.parse::<AclPattern>().ok()).collect();
            self.acl_known.insert(file.to_owned(), set);
        }
        Ok(self.acl_known.entry(file.to_owned()).or_default())
    }

    pub(super) async fn add_acl(&mut self, file: &str, key: &IpNet) -> Result<(), ClientError> {
        let p = Self::pattern(key);
        if self.known_acl(file).await?.contains(&p) {
            return Ok(());
        }
        self.command().await;
        self.client.add_acl(&file.parse()?, p).await?;
        self.known_acl(file).await?.insert(p);
        Ok(())
    }

    pub(super) async fn del_acl(&mut self, file: &str, key: &IpNet) -> Result<(), ClientError> {
        let p = Self::pattern(key);
        self.command().await;
        match self.client.del_acl(&file.parse()?, p).await {
            Err(e) if !e.haproxy().is_some_and(|h| h.kind == ErrorKind::KeyNotFound) => return Err(e),
            _ => {}
        }
        if let Some(known) = self.acl_known.get_mut(file) {
            known.remove(&p);
        }
        Ok(())
    }

    pub(super) async fn import_acl(&mut self, file: &str, keys: &[IpNet]) -> Result<(), ClientError> {
        let acl: AclRef = file.parse()?;
        let known = self.known_acl(file).await?;
        let mut fresh: Vec<AclPattern> = keys.iter().map(Self::pattern).filter(|p| !known.contains(p)).collect();
        fresh.sort_unstable();
        fresh.dedup();
        let mut all: Vec<AclPattern> = known.iter().copied().collect();
        let known_len = all.len();
        all.extend(fresh);
        self.command().await;
        let version = self.client.prepare_acl(&acl).await?;
        let cmds: Vec<Command> =
            all.iter().map(|p| Command::AddAcl { acl: acl.clone(), version: Some(version), pattern: *p }).collect();
        for chunk in cmds.chunks(IMPORT_CHUNK) {
            for _ in 0..chunk.len() {
                self.command().await;
            }
            let sent = match self.leased() {
                Ok(()) => self.client.pipeline(chunk).await.into_iter().find_map(Result::err),
                Err(e) => Some(e),
            };
            if let Some(e) = sent {
                // The live version was never touched: drop the prepared one and report.
                let _ = self.client.execute(&Command::ClearAclVersion { acl: acl.clone(), version }).await;
                return Err(e);
            }
        }
        self.command().await;
        self.client.commit_acl(&acl, version).await?;
        info!(target = %self.name, added = all.len() - known_len, total = all.len(), "ACL import committed");
        self.acl_known.insert(file.to_owned(), all.into_iter().collect());
        Ok(())
    }
}
