//! The `map:CLASS` action: the address or network set in the block map with the response class
//! as its value (`add map`, or `set map` when the key is there with another class), so that
//! HAProxy's configuration answers the client as that class says (tarpit, throttle, challenge,
//! deny); released with `del map`. HAProxy adds a duplicate key as a second entry, so the map's
//! entries are read once per connection and kept up to date by our own changes. What the
//! reconciler reads back of it is [`mapped`].

use std::collections::HashMap;

use ipnet::IpNet;

use super::Actor;
use crate::client::{Client, ClientError};
use crate::key::Key;
use crate::proto::{AclRef, Command, ErrorKind, MapKey};
use crate::rules::MapClass;

/// The keys of the map `map` and their values: what HAProxy holds of the map action, for the
/// reconciler.
pub async fn mapped(client: &Client, map: &AclRef) -> Result<HashMap<IpNet, String>, ClientError> {
    Ok(client
        .show_map(map)
        .await?
        .into_iter()
        .filter_map(|e| Some((crate::net::parse_net(&e.key).ok()?, e.value)))
        .collect())
}

impl Actor {
    /// How `key` is written in a map: the address pattern, or the table key's text.
    fn map_key(key: &Key) -> MapKey {
        match key {
            Key::Net(net) => MapKey::Pattern(Self::pattern(net)),
            Key::Table(t) => MapKey::Text(t.key.clone()),
        }
    }

    /// The entries of the map file `file`, read once per connection.
    pub(super) async fn known_map(&mut self, file: &str) -> Result<&mut HashMap<MapKey, String>, ClientError> {
        if !self.map_known.contains_key(file) {
            let map: AclRef = file.parse()?;
            self.command().await;
            let entries = self.client.show_map(&map).await?;
            let known = entries.into_iter().map(|e| (MapKey::listed(&e.key), e.value)).collect();
            self.map_known.insert(file.to_owned(), known);
        }
        Ok(self.map_known.entry(file.to_owned()).or_default())
    }

    /// The command that gives `key` the value `class` in `file`, if it does not have it already.
    pub(super) async fn map_command(
        &mut self,
        file: &str,
        key: &Key,
        class: MapClass,
    ) -> Result<Option<Command>, ClientError> {
        let map: AclRef = file.parse()?;
        let pattern = Self::map_key(key);
        let value = class.as_str().to_owned();
        Ok(match self.known_map(file).await?.get(&pattern) {
            Some(v) if *v == value => None,
            Some(_) => Some(Command::SetMap { map, key: pattern.clone(), value }),
            None => Some(Command::AddMap { map, key: pattern, value }),
        })
    }

    /// What HAProxy confirmed of a map command, remembered.
    pub(super) fn map_done(&mut self, file: &str, cmd: &Command) {
        if let Command::AddMap { key, value, .. } | Command::SetMap { key, value, .. } = cmd {
            self.map_known.entry(file.to_owned()).or_default().insert(key.clone(), value.clone());
        }
    }

    pub(super) async fn set_map(&mut self, file: &str, key: &Key, class: MapClass) -> Result<(), ClientError> {
        let Some(cmd) = self.map_command(file, key, class).await? else { return Ok(()) };
        self.command().await;
        self.client.execute(&cmd).await?;
        self.map_done(file, &cmd);
        Ok(())
    }

    pub(super) async fn del_map(&mut self, file: &str, key: &Key) -> Result<(), ClientError> {
        let map: AclRef = file.parse()?;
        let pattern = Self::map_key(key);
        self.command().await;
        match self.client.execute(&Command::DelMap { map, key: pattern.clone() }).await {
            Ok(_) => {}
            // Not there: nothing to remove.
            Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
        if let Some(known) = self.map_known.get_mut(file) {
            known.remove(&pattern);
        }
        Ok(())
    }
}
