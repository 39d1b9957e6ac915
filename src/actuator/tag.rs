//! The `tag` action: the block table's tag column set for the address (`set table ... data.gpt0
//! 1`), so that HAProxy's `deny if { sc0_get_gpt0 gt 0 }` refuses it; released by setting it back
//! to 0 and clearing the entry (an entry in use is cleared later, or left to HAProxy's expiry with
//! its tag at 0). Addresses only: a network has no entry. What the reconciler reads back of it is
//! [`tagged`].
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use crate::key::Key;
use tracing::{debug, warn};

use super::{Actor, CLEAR_PATIENCE};
use crate::client::{Client, ClientError, TableItem};
use crate::proto::{DataField, ErrorKind, Filter, FilterOp, TableKey, TableSelect};
use crate::store::TagPlace;

/// The addresses of `table` whose tag column (`field`, as HAProxy filters it) is at least
/// `value`: what HAProxy holds of the tags, for the reconciler.
pub async fn tagged(
    client: &Client,
    table: &str,
    field: DataField,
    value: u32,
) -> Result<HashSet<IpAddr>, ClientError> {
    let filter = Filter { field, op: FilterOp::Ge, value: i64::from(value) };
    let mut set = HashSet::new();
    client
        .show_table(table, TableSelect::Filters(vec![filter]))
        .await?
        .for_each(|item| {
            if let TableItem::Entry(e) = item {
                set.extend(e.key_addr());
            }
        })
        .await?;
    Ok(set)
}

impl Actor {
    /// The key of a block in `table` (an address, or a key of a table keyed otherwise), if it can
    /// be tagged there.
    pub(super) async fn table_key(&mut self, table: &str, key: &Key) -> Result<Option<TableKey>, ClientError> {
        if !key.is_single() {
            return Ok(None); // networks are blocked through the ACL only
        }
        let ty = match self.key_types.get(table) {
            Some(t) => *t,
            None => {
                self.command().await;
                let t = self.client.table_key_type(table).await?;
                self.key_types.insert(table.to_owned(), t);
                t
            }
        };
        let parsed = match (key, key.addr()) {
            (_, Some(addr)) => TableKey::from_addr(ty, addr),
            (Key::Table(t), None) => TableKey::parse(ty, &t.key),
            (Key::Net(_), None) => return Ok(None),
        };
        match parsed {
            Ok(k) => Ok(Some(k)),
            Err(e) => {
                warn!(target = %self.name, %key, table, error = %e, "cannot tag this key in the table");
                Ok(None)
            }
        }
    }

    /// Sets the tag to `value` where `tag` says; returns the key it used.
    pub(super) async fn set_tag(
        &mut self,
        tag: &TagPlace,
        key: &Key,
        value: u32,
    ) -> Result<Option<TableKey>, ClientError> {
        let Some(k) = self.table_key(&tag.table, key).await? else { return Ok(None) };
        let field: DataField = tag.column.parse()?;
        self.command().await;
        self.client.set_table(&tag.table, k.clone(), &[(field, u64::from(value))]).await?;
        Ok(Some(k))
    }

    pub(super) async fn clear(&mut self, table: &str, k: TableKey) -> Result<(), ClientError> {
        self.command().await;
        match self.client.clear_table_key(table, k.clone()).await {
            Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::EntryInUse) => {
                debug!(target = %self.name, key = %k, "entry in use; clearing it later");
                self.pending_clears.push((table.to_owned(), k, Instant::now()));
                Ok(())
            }
            other => other,
        }
    }

    pub(super) async fn retry_clears(&mut self) {
        let pending = std::mem::take(&mut self.pending_clears);
        for (table, k, first) in pending {
            self.command().await;
            match self.client.clear_table_key(&table, k.clone()).await {
                Ok(()) => debug!(target = %self.name, key = %k, "cleared"),
                Err(e) if first.elapsed() > CLEAR_PATIENCE => {
                    warn!(target = %self.name, key = %k, error = %e, "giving up clearing an untagged entry; HAProxy's expiry will")
                }
                Err(_) => self.pending_clears.push((table, k, first)),
            }
        }
    }
}
