//! The reconciler's decisions: what a target lacks of the active blocks (put back) and what it
//! holds of ended blocks that stickwarden put there (removed), from what the target was read to
//! hold ([`Actual`]). Address blocks only: what is read is `[block]`'s ACL, tag table and map.

use std::collections::HashMap;

use tracing::warn;

use super::{Actual, Decider, Effects, AUTO_ACTOR, RECONCILE_MARGIN};
use crate::actuator::Job;
use crate::key::Key;
use crate::net;
use crate::rules::{Action, Actions, MapClass};
use crate::store::{AuditRecord, Block, Event, Place, Write};
use crate::time::Millis;

impl Decider {
    /// What `actual` holds that no active block wants, by key, with the actions to remove.
    pub(super) fn leftover_actions(&self, actual: &Actual) -> HashMap<Key, Vec<Action>> {
        let settled = actual.read_at.saturating_sub(RECONCILE_MARGIN);
        let here = self.here();
        let wants = |k: &Key, a: Action| {
            self.active.get(k).is_some_and(|b| !b.dry_run && b.actions.has(a) && b.place().same_for(&here, a))
        };
        let wants_map = |k: &Key| {
            self.active.get(k).is_some_and(|b| {
                !b.dry_run && b.actions.map_class().is_some_and(|c| b.place().same_for(&here, Action::Map(c)))
            })
        };
        let recent = |k: &Key| self.releasing.contains_key(k) || self.released.get(k).is_some_and(|&t| t >= settled);
        let mut leftovers: HashMap<Key, Vec<Action>> = HashMap::new();
        for k in actual.acl.iter().flatten().map(|n| Key::Net(*n)) {
            if !wants(&k, Action::Acl) && !recent(&k) {
                leftovers.entry(k).or_default().push(Action::Acl);
            }
        }
        for k in actual.mapped.iter().flat_map(|m| m.keys()).map(|n| Key::Net(*n)) {
            // Removed by key: the class in the action does not matter.
            if !wants_map(&k) && !recent(&k) {
                leftovers.entry(k).or_default().push(Action::Map(MapClass::Deny));
            }
        }
        for a in actual.tagged.iter().flatten() {
            let k = Key::host(*a);
            if !wants(&k, Action::Tag) && !recent(&k) {
                leftovers.entry(k).or_default().push(Action::Tag);
            }
        }
        leftovers
    }

    /// Where today's `[block]` puts every action.
    fn here(&self) -> Place {
        let every = vec![Action::Tag, Action::Acl, Action::Map(MapClass::Deny)];
        Place::of(&self.cfg.block, &Actions::new(every))
    }

    /// Puts back on `actual.target` what it lacks of the active blocks (those old enough to have
    /// been applied before HAProxy was read, and not being released), and removes what it holds of
    /// keys stickwarden once blocked and no block wants now (`removals`, from [`Decider::leftovers`]
    /// and the store). Each repair is counted and audited; patterns and tags of keys stickwarden
    /// never blocked are left alone.
    pub(super) fn reconcile(&mut self, actual: Actual, removals: Vec<(Key, Actions)>, now: Millis, fx: &mut Effects) {
        let settled = actual.read_at.saturating_sub(RECONCILE_MARGIN);
        // What was read is the places of today's [block]; a block applied elsewhere (the
        // configuration changed since) is compared only where its place is today's.
        let here = self.here();
        let mut repairs: Vec<(Block, Actions)> = Vec::new();
        for b in self.active.values().filter(|b| !b.dry_run && b.since <= settled && b.until > actual.read_at) {
            // What was read is [block]'s places: the address blocks'.
            let Some(key) = b.key.net() else { continue };
            if self.releasing.contains_key(&b.key) {
                continue;
            }
            let place = b.place();
            let mut missing = Vec::new();
            if b.actions.has(Action::Acl)
                && place.same_for(&here, Action::Acl)
                && actual.acl.as_ref().is_some_and(|a| !a.contains(key))
            {
                missing.push(Action::Acl);
            }
            if b.actions.has(Action::Tag)
                && net::is_host(key)
                && place.same_for(&here, Action::Tag)
                && actual.tagged.as_ref().is_some_and(|t| !t.contains(&key.addr()))
            {
                missing.push(Action::Tag);
            }
            if let Some(class) = b.actions.map_class() {
                let held = actual.mapped.as_ref().map(|m| m.get(key).map(String::as_str));
                if place.same_for(&here, Action::Map(class)) && held.is_some_and(|v| v != Some(class.as_str())) {
                    missing.push(Action::Map(class));
                }
            }
            if !missing.is_empty() {
                repairs.push((b.clone(), Actions::new(missing)));
            }
        }
        repairs.sort_unstable_by(|a, b| a.0.key.cmp(&b.0.key));
        if repairs.is_empty() && removals.is_empty() {
            return;
        }
        let target = actual.target.as_str();
        warn!(
            target,
            missing = repairs.len(),
            leftovers = removals.len(),
            "HAProxy differs from the active blocks; repairing"
        );
        // What the actuator remembers of this target is wrong, since HAProxy lost entries.
        fx.send(Some(target), None, Job::Forget);
        for (b, missing) in repairs {
            let mut rec = AuditRecord::of(Event::Repaired, &b, now);
            rec.actions = missing.clone();
            rec.reason = format!("{target}: missing {missing}, put back");
            fx.write(Write::Audit(rec));
            fx.repairs.push(target.to_owned());
            let job = Job::Apply { key: b.key.clone(), place: b.place(), actions: missing, kill: false };
            fx.send(Some(target), Some(&b), job);
        }
        for (key, actions) in removals {
            let reason = format!("{target}: leftover {actions} of an ended block, removed");
            let mut rec = AuditRecord::note(Event::Repaired, now, AUTO_ACTOR, reason);
            (rec.key, rec.actions) = (Some(key.clone()), actions.clone());
            fx.write(Write::Audit(rec));
            fx.repairs.push(target.to_owned());
            let place = self.place(&key, &actions);
            fx.send(Some(target), None, Job::Release { key, actions, place });
        }
    }
}
