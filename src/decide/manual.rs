//! Operator actions, decided: block (overriding any automatic decision), unblock (with an
//! optional grace period, an allowlist entry), extend, allowlist additions and removals (releasing
//! the blocks they cover), and imports into the ACL. Each is checked before anything changes (a
//! table key against its table's declared type) and written durably before HAProxy is touched.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tracing::info;

use super::{Decider, Effects, MANUAL_RULE};
use crate::actuator::Job;
use crate::allowlist::Allowlist;
use crate::key::Key;
use crate::net;
use crate::ops::{BlockView, Manual, OpError};
use crate::rules::{Action, Actions};
use crate::store::{AllowEntry, AuditRecord, Block, Event, Origin, Place, Write};
use crate::time::{ms, Millis};

impl Decider {
    pub(super) fn manual(&mut self, op: Manual, actor: &str, now: Millis, fx: &mut Effects) -> Result<(), OpError> {
        match op {
            Manual::Block { key, duration, reason, allow_broad } => {
                let key = crate::ops::checked_key(&self.cfg, &key)?;
                if let Some(n) = key.net() {
                    self.cfg.safety.check_breadth(n, allow_broad).map_err(|m| OpError::bad("too_broad", m))?;
                }
                self.manual_block(key, duration, reason, actor, now, fx)
            }
            Manual::Unblock { key, reason, grace } => {
                let key = crate::ops::checked_key(&self.cfg, &key)?;
                if !self.active.contains_key(&key) {
                    return Err(OpError::NotFound(format!("{key} is not blocked")));
                }
                if let Some(g) = grace {
                    let Some(net) = key.net() else {
                        return Err(OpError::bad(
                            "invalid_grace",
                            "a grace period is an allowlist entry, for addresses only: not for a table key",
                        ));
                    };
                    let entry = AllowEntry {
                        net: *net,
                        reason: format!("grace after unblock: {reason}"),
                        actor: actor.to_owned(),
                        since: now,
                        until: Some(now + ms(g)),
                    };
                    self.add_allow(entry, now, fx);
                }
                self.unblock(key, actor, &reason, now, fx);
                Ok(())
            }
            Manual::Extend { key, duration, reason } => {
                let key = crate::ops::checked_key(&self.cfg, &key)?;
                let Some(old) = self.active.get(&key).cloned() else {
                    return Err(OpError::NotFound(format!("{key} is not blocked")));
                };
                if self.releasing.contains_key(&key) {
                    return Err(OpError::Conflict(format!("the block of {key} is being released")));
                }
                let block = Block { until: now + ms(duration), ..old.clone() };
                let mut rec = AuditRecord::of(Event::ExpiryChanged, &block, now);
                (rec.actor, rec.reason, rec.source) = (actor.to_owned(), reason, Origin::Manual);
                rec.duration_ms = ms(duration);
                fx.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
                fx.durable = true;
                info!(
                    %key,
                    actor,
                    was = %crate::time::rfc3339(old.until),
                    until = %crate::time::rfc3339(block.until),
                    "block end moved"
                );
                fx.reply.blocked.push(BlockView::of(&block, now));
                self.index(block);
                Ok(())
            }
            Manual::Allow { key, duration, reason } => {
                let entry = AllowEntry {
                    net: key,
                    reason: reason.clone(),
                    actor: actor.to_owned(),
                    since: now,
                    until: duration.map(|d| now + ms(d)),
                };
                self.add_allow(entry, now, fx);
                fx.reply.allowed.push(net::display(&key));
                let mut covered: Vec<Key> =
                    self.active.keys().filter(|k| k.net().is_some_and(|n| net::overlaps(n, &key))).cloned().collect();
                covered.sort_unstable();
                for k in covered {
                    self.unblock(k, actor, &format!("allowlisted: {reason}"), now, fx);
                }
                Ok(())
            }
            Manual::Disallow { key, reason } => {
                if self.cfg.allow.iter().any(|a| a.net == key)
                    || self.cfg.safety.never_block.iter().any(|p| p.net == key)
                {
                    return Err(OpError::Conflict(format!(
                        "{} is allowlisted in {}: remove it there",
                        net::display(&key),
                        self.cfg.path.display()
                    )));
                }
                let Some(i) = self.stored_allows.iter().position(|e| e.net == key) else {
                    return Err(OpError::NotFound(format!("{} is not on the allowlist", net::display(&key))));
                };
                let entry = self.stored_allows.remove(i);
                self.allow = Allowlist::new(&self.cfg, &self.stored_allows);
                fx.allow_remove.push(key);
                let mut rec = AuditRecord::note(Event::Disallow, now, actor, reason);
                (rec.key, rec.source) = (Some(Key::Net(entry.net)), Origin::Manual);
                fx.write(Write::Audit(rec));
                fx.reply.allowed.push(net::display(&key));
                Ok(())
            }
            Manual::Import { keys, duration, reason, allow_broad } => {
                // Every entry is checked before anything is recorded: one too broad refuses the file.
                for k in &keys {
                    self.cfg.safety.check_breadth(k, allow_broad).map_err(|m| OpError::bad("too_broad", m))?;
                }
                self.import(keys, duration, reason, actor, now, fx)
            }
        }
    }

    fn add_allow(&mut self, entry: AllowEntry, now: Millis, fx: &mut Effects) {
        let mut rec = AuditRecord::note(Event::Allow, now, &entry.actor, entry.reason.clone());
        (rec.key, rec.source) = (Some(Key::Net(entry.net)), Origin::Manual);
        rec.duration_ms = entry.until.map_or(0, |u| u.saturating_sub(now));
        // One entry per network: a new one replaces the old (as the store's key does).
        self.stored_allows.retain(|e| e.net != entry.net);
        self.stored_allows.push(entry.clone());
        self.allow = Allowlist::new(&self.cfg, &self.stored_allows);
        fx.allow_put.push(entry);
        fx.write(Write::Audit(rec));
    }

    /// How a manual block of `key` is applied: the ACL, and the tag for an address; the tag in its
    /// own table for a table key.
    fn manual_actions(&self, key: &Key) -> Result<Actions, OpError> {
        let Some(net) = key.net() else { return Ok(Actions::new(vec![Action::Tag])) };
        let mut a = Vec::new();
        if net::is_host(net) && self.cfg.block.table.is_some() {
            a.push(Action::Tag);
        }
        if self.cfg.block.acl.is_some() {
            a.push(Action::Acl);
        }
        if a.is_empty() {
            return Err(OpError::Conflict(format!(
                "cannot block {key}: a network needs [block] acl in the configuration"
            )));
        }
        Ok(Actions::new(a))
    }

    fn manual_block(
        &mut self,
        key: Key,
        duration: Duration,
        reason: String,
        actor: &str,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        if let Some(why) = key.net().and_then(|n| self.allow.overlaps(n, now)) {
            return Err(OpError::Conflict(format!("{key} is allowlisted ({why}): remove it from the allowlist first")));
        }
        let mut actions: Vec<Action> = self.manual_actions(&key)?.iter().collect();
        // Overriding a block keeps what it did in place (kill is one-shot: nothing to keep).
        if let Some(old) = self.active.get(&key) {
            actions.extend(old.actions.iter().filter(|a| *a != Action::Kill));
        }
        let actions = Actions::new(actions);
        let block = Block {
            level: 0,
            place: Some(self.place(&key, &actions)),
            key: key.clone(),
            nodes: Vec::new(),
            actions,
            rule: MANUAL_RULE.into(),
            reason,
            source: Origin::Manual,
            actor: actor.to_owned(),
            since: now,
            until: now + ms(duration),
            counters: Vec::new(),
            dry_run: false,
        };
        let rec = AuditRecord::of(Event::Block, &block, now);
        fx.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
        fx.durable = true;
        info!(%key, actor, until = %crate::time::rfc3339(block.until), "manual block");
        self.index(block.clone());
        let job = Job::Apply { key, actions: block.actions.clone(), kill: false, place: block.place() };
        fx.reply.blocked.push(BlockView::of(&block, now));
        fx.ask(Some(block), job);
        Ok(())
    }

    /// Releases `key` now, on behalf of `actor`; its audit record says who and why.
    fn unblock(&mut self, key: Key, actor: &str, reason: &str, now: Millis, fx: &mut Effects) {
        let Some(block) = self.active.get(&key).cloned() else { return };
        self.unblocked_by.insert(key.clone(), (actor.to_owned(), reason.to_owned()));
        fx.reply.released.push(key.text());
        if block.dry_run {
            self.finish_release(&block, Event::WouldRelease, now, fx);
            return;
        }
        self.releasing.insert(key.clone(), None);
        let job = Job::Release { key, actions: block.actions.clone(), place: block.place() };
        fx.ask(Some(block), job);
    }

    fn import(
        &mut self,
        keys: Vec<IpNet>,
        duration: Duration,
        reason: String,
        actor: &str,
        now: Millis,
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        let Some(acl) = self.cfg.block.acl.as_ref().map(|a| a.to_string()) else {
            return Err(OpError::Conflict("an import goes into the ACL: configure [block] acl".into()));
        };
        let actions = Actions::new(vec![Action::Acl]);
        let place = Arc::new(Place::of(&self.cfg.block, &actions));
        let mut fresh = Vec::with_capacity(keys.len());
        for net in keys {
            if let Some(why) = self.allow.overlaps(&net, now) {
                fx.reply.skipped.push((net::display(&net), format!("allowlisted ({why})")));
            } else if self.active.contains_key(&Key::Net(net)) {
                fx.reply.skipped.push((net::display(&net), "already blocked".into()));
            } else {
                let block = Block {
                    key: Key::Net(net),
                    level: 0,
                    actions: actions.clone(),
                    rule: "import".into(),
                    reason: reason.clone(),
                    source: Origin::Manual,
                    actor: actor.to_owned(),
                    since: now,
                    until: now + ms(duration),
                    counters: Vec::new(),
                    dry_run: false,
                    place: Some(place.clone()),
                    nodes: Vec::new(),
                };
                let rec = AuditRecord::of(Event::Block, &block, now);
                fx.reply.blocked.push(BlockView::of(&block, now));
                fx.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
                // Indexed at once: a key twice in the file is blocked once.
                self.index(block);
                fresh.push(net);
            }
        }
        fx.durable = true;
        info!(actor, imported = fresh.len(), skipped = fx.reply.skipped.len(), "import recorded");
        if !fresh.is_empty() {
            let job = Job::ImportAcl { keys: fresh, acl };
            fx.ask(None, job);
        }
        Ok(())
    }
}
