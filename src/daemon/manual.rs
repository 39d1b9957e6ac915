//! Operator actions, carried out by the controller so that it stays the only writer of blocks:
//! block (overriding any automatic decision), unblock (with an optional grace period), allowlist
//! additions and removals (releasing the blocks they cover), and bulk imports into the ACL. Each
//! is recorded and flushed before HAProxy is touched; the caller gets receivers that resolve with
//! HAProxy's refusals, if any, once the controller has recorded the outcome.

use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::oneshot;
use tracing::info;

use super::controller::Controller;
use crate::actuator::Job;
use crate::allowlist::Allowlist;
use crate::net;
use crate::ops::{BlockView, Manual, OpError, Outcome};
use crate::rules::{Action, Actions};
use crate::store::{AllowEntry, AuditRecord, Block, Event, Origin, Place, Write};
use crate::time::{ms, now_ms, Millis};

/// What the controller answers to an operator action: what it decided, and one receiver per
/// HAProxy job, resolving with the refusals (empty when every target confirmed).
pub struct ManualReply {
    pub outcome: Outcome,
    pub pending: Vec<oneshot::Receiver<Vec<String>>>,
}

/// The rule name of manual blocks.
pub const MANUAL_RULE: &str = "manual";

impl Controller {
    pub async fn manual(&mut self, op: Manual, actor: &str) -> Result<ManualReply, OpError> {
        let now = now_ms();
        let mut reply = ManualReply { outcome: Outcome::default(), pending: Vec::new() };
        match op {
            Manual::Block { key, duration, reason, allow_broad } => {
                self.cfg.safety.check_breadth(&key, allow_broad).map_err(|m| OpError::bad("too_broad", m))?;
                self.manual_block(key, duration, reason, actor, now, &mut reply).await?
            }
            Manual::Unblock { key, reason, grace } => {
                if !self.active.contains_key(&key) {
                    return Err(OpError::NotFound(format!("{} is not blocked", net::display(&key))));
                }
                if let Some(g) = grace {
                    let entry = AllowEntry {
                        net: key,
                        reason: format!("grace after unblock: {reason}"),
                        actor: actor.to_owned(),
                        since: now,
                        until: Some(now + ms(g)),
                    };
                    self.add_allow(entry, now).await?;
                }
                self.unblock(key, actor, &reason, &mut reply).await?;
            }
            Manual::Extend { key, duration, reason } => {
                let Some(old) = self.active.get(&key).cloned() else {
                    return Err(OpError::NotFound(format!("{} is not blocked", net::display(&key))));
                };
                if self.releasing.contains_key(&key) {
                    return Err(OpError::Conflict(format!("the block of {} is being released", net::display(&key))));
                }
                let block = Block { until: now + ms(duration), ..old.clone() };
                let mut rec = AuditRecord::of(Event::ExpiryChanged, &block, now);
                (rec.actor, rec.reason, rec.source) = (actor.to_owned(), reason, Origin::Manual);
                rec.duration_ms = ms(duration);
                self.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
                self.flush().await?;
                info!(
                    key = %net::display(&key),
                    actor,
                    was = %crate::time::rfc3339(old.until),
                    until = %crate::time::rfc3339(block.until),
                    "block end moved"
                );
                reply.outcome.blocked.push(BlockView::of(&block, now));
                self.index(block);
            }
            Manual::Allow { key, duration, reason } => {
                let entry = AllowEntry {
                    net: key,
                    reason: reason.clone(),
                    actor: actor.to_owned(),
                    since: now,
                    until: duration.map(|d| now + ms(d)),
                };
                self.add_allow(entry, now).await?;
                reply.outcome.allowed.push(net::display(&key));
                let covered: Vec<IpNet> = self.active.keys().filter(|k| net::overlaps(k, &key)).copied().collect();
                for k in covered {
                    self.unblock(k, actor, &format!("allowlisted: {reason}"), &mut reply).await?;
                }
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
                let Some(entry) = self.on_store(move |s| s.remove_allow(&key)).await? else {
                    return Err(OpError::NotFound(format!("{} is not on the allowlist", net::display(&key))));
                };
                let mut rec = AuditRecord::note(Event::Disallow, now, actor, reason);
                (rec.key, rec.source) = (Some(entry.net), Origin::Manual);
                self.write(Write::Audit(rec));
                self.reload_allowlist().await?;
                reply.outcome.allowed.push(net::display(&key));
            }
            Manual::Import { keys, duration, reason, allow_broad } => {
                // Every entry is checked before anything is recorded: one too broad refuses the file.
                for k in &keys {
                    self.cfg.safety.check_breadth(k, allow_broad).map_err(|m| OpError::bad("too_broad", m))?;
                }
                self.import(keys, duration, reason, actor, now, &mut reply).await?
            }
        }
        Ok(reply)
    }

    async fn add_allow(&mut self, entry: AllowEntry, now: Millis) -> Result<(), OpError> {
        let mut rec = AuditRecord::note(Event::Allow, now, &entry.actor, entry.reason.clone());
        (rec.key, rec.source) = (Some(entry.net), Origin::Manual);
        rec.duration_ms = entry.until.map_or(0, |u| u.saturating_sub(now));
        self.on_store(move |s| s.put_allow(&entry)).await?;
        self.write(Write::Audit(rec));
        self.reload_allowlist().await
    }

    /// Carries out what is queued, then reads the allowlist back from the store.
    async fn reload_allowlist(&mut self) -> Result<(), OpError> {
        self.commit(false).await?;
        let stored = self.on_store(|s| s.allows()).await?;
        self.allow = Allowlist::new(&self.cfg, &stored);
        Ok(())
    }

    /// How a manual block of `key` is applied: the ACL, and the tag for an address.
    fn manual_actions(&self, key: &IpNet) -> Result<Actions, OpError> {
        let mut a = Vec::new();
        if net::is_host(key) && self.cfg.block.table.is_some() {
            a.push(Action::Tag);
        }
        if self.cfg.block.acl.is_some() {
            a.push(Action::Acl);
        }
        if a.is_empty() {
            return Err(OpError::Conflict(format!(
                "cannot block {}: a network needs [block] acl in the configuration",
                net::display(key)
            )));
        }
        Ok(Actions::new(a))
    }

    async fn manual_block(
        &mut self,
        key: IpNet,
        duration: Duration,
        reason: String,
        actor: &str,
        now: Millis,
        reply: &mut ManualReply,
    ) -> Result<(), OpError> {
        if let Some(why) = self.allow.overlaps(&key, now) {
            return Err(OpError::Conflict(format!(
                "{} is allowlisted ({why}): remove it from the allowlist first",
                net::display(&key)
            )));
        }
        let mut actions: Vec<Action> = self.manual_actions(&key)?.iter().collect();
        // Overriding a block keeps what it did in place (kill is one-shot: nothing to keep).
        if let Some(old) = self.active.get(&key) {
            actions.extend(old.actions.iter().filter(|a| *a != Action::Kill));
        }
        let actions = Actions::new(actions);
        let block = Block {
            key,
            level: 0,
            place: Some(std::sync::Arc::new(Place::of(&self.cfg.block, &actions))),
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
        self.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
        self.flush().await?;
        info!(key = %net::display(&key), actor, until = %crate::time::rfc3339(block.until), "manual block");
        self.index(block.clone());
        let (tx, rx) = oneshot::channel();
        let job = Job::Apply { key, actions: block.actions.clone(), kill: false, place: block.place() };
        self.dispatch_notify(Some(&block), job, Some(tx)).await;
        reply.pending.push(rx);
        reply.outcome.blocked.push(BlockView::of(&block, now));
        Ok(())
    }

    /// Releases `key` now, on behalf of `actor`; its audit record says who and why.
    async fn unblock(&mut self, key: IpNet, actor: &str, reason: &str, reply: &mut ManualReply) -> Result<(), OpError> {
        let Some(block) = self.active.get(&key).cloned() else { return Ok(()) };
        self.unblocked_by.insert(key, (actor.to_owned(), reason.to_owned()));
        reply.outcome.released.push(net::display(&key));
        if block.dry_run {
            self.finish_release(&block, Event::WouldRelease, now_ms());
            self.commit(false).await?;
            return Ok(());
        }
        self.releasing.insert(key, None);
        let (tx, rx) = oneshot::channel();
        let job = Job::Release { key, actions: block.actions.clone(), place: block.place() };
        self.dispatch_notify(Some(&block), job, Some(tx)).await;
        reply.pending.push(rx);
        Ok(())
    }

    async fn import(
        &mut self,
        keys: Vec<IpNet>,
        duration: Duration,
        reason: String,
        actor: &str,
        now: Millis,
        reply: &mut ManualReply,
    ) -> Result<(), OpError> {
        if self.cfg.block.acl.is_none() {
            return Err(OpError::Conflict("an import goes into the ACL: configure [block] acl".into()));
        }
        let place = std::sync::Arc::new(Place::of(&self.cfg.block, &Actions::new(vec![Action::Acl])));
        let mut fresh = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(why) = self.allow.overlaps(&key, now) {
                reply.outcome.skipped.push((net::display(&key), format!("allowlisted ({why})")));
            } else if self.active.contains_key(&key) {
                reply.outcome.skipped.push((net::display(&key), "already blocked".into()));
            } else {
                let block = Block {
                    key,
                    level: 0,
                    actions: Actions::new(vec![Action::Acl]),
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
                fresh.push(block);
            }
        }
        let fresh = self
            .on_store(move |s| {
                s.decide_many(&fresh, |b| AuditRecord::of(Event::Block, b, now))?;
                s.flush()?;
                Ok(fresh)
            })
            .await?;
        info!(actor, imported = fresh.len(), skipped = reply.outcome.skipped.len(), "import recorded");
        let keys: Vec<IpNet> = fresh.iter().map(|b| b.key).collect();
        for b in fresh {
            reply.outcome.blocked.push(BlockView::of(&b, now));
            self.index(b);
        }
        if !keys.is_empty() {
            let (tx, rx) = oneshot::channel();
            let acl = self.cfg.block.acl.as_ref().map(|a| a.to_string()).unwrap_or_default();
            self.dispatch_notify(None, Job::ImportAcl { keys, acl }, Some(tx)).await;
            reply.pending.push(rx);
        }
        Ok(())
    }
}
