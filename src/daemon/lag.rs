//! Which target has not confirmed what: the fleet's view of every block and release sent. A
//! decision is complete when every target has confirmed it; until then the key counts as
//! unconfirmed on the targets that have not (still queued, HAProxy down, or refused), which the
//! API (`/healthz`, `/v1/blocks`), the metrics (`stickwarden_unconfirmed{target}`) and `check` show.
//! A later job for the same key that a target confirms (a retry, a re-apply, a repair by the
//! reconciler) clears it there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::key::Key;

use crate::metrics::Metrics;

#[derive(Default)]
struct TargetLag {
    /// Keys with jobs sent and not answered yet, with how many.
    pending: HashMap<Key, u32>,
    /// Keys whose last answered job failed.
    failed: HashSet<Key>,
}

impl TargetLag {
    fn count(&self) -> usize {
        self.pending.len() + self.failed.iter().filter(|k| !self.pending.contains_key(k)).count()
    }

    fn has(&self, key: &Key) -> bool {
        self.pending.contains_key(key) || self.failed.contains(key)
    }
}

/// Shared between the controller (which records) and the API (which reads).
pub struct Lag {
    targets: Mutex<HashMap<String, TargetLag>>,
    metrics: Arc<Metrics>,
}

impl Lag {
    pub fn new(targets: impl IntoIterator<Item = String>, metrics: Arc<Metrics>) -> Lag {
        let targets = targets.into_iter().map(|t| (t, TargetLag::default())).collect();
        let lag = Lag { targets: Mutex::new(targets), metrics };
        for name in lag.lock().keys() {
            lag.metrics.unconfirmed.get_or_create(&Metrics::target(name)).set(0);
        }
        lag
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TargetLag>> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut TargetLag)) {
        let mut all = self.lock();
        let t = all.entry(target.to_owned()).or_default();
        f(t);
        self.metrics.unconfirmed.get_or_create(&Metrics::target(target)).set(t.count() as i64);
    }

    /// Jobs for `keys` were queued to `target`.
    pub fn sent(&self, target: &str, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        self.update(target, |t| {
            for k in keys {
                *t.pending.entry(k.clone()).or_default() += 1;
            }
        });
    }

    /// `target` answered the jobs for `keys`: confirmed (`ok`) or not.
    pub fn answered(&self, target: &str, keys: &[Key], ok: bool) {
        self.answered_but(target, keys, |_| !ok);
    }

    /// `target` answered the job for `keys`, refusing those for which `refused` is true.
    pub fn answered_but(&self, target: &str, keys: &[Key], refused: impl Fn(&Key) -> bool) {
        if keys.is_empty() {
            return;
        }
        self.update(target, |t| {
            for k in keys {
                let ok = !refused(k);
                if let Some(n) = t.pending.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        t.pending.remove(k);
                    }
                }
                if ok {
                    t.failed.remove(k);
                } else {
                    t.failed.insert(k.clone());
                }
            }
            // A re-apply of every block leaves maps sized for all of them: given back once empty.
            if t.pending.is_empty() && t.pending.capacity() > 1024 {
                t.pending = HashMap::new();
            }
            if t.failed.is_empty() && t.failed.capacity() > 1024 {
                t.failed = HashSet::new();
            }
        });
    }

    /// How many keys each target has not confirmed, by target name.
    pub fn unconfirmed(&self) -> HashMap<String, usize> {
        self.lock().iter().map(|(n, t)| (n.clone(), t.count())).collect()
    }

    /// Every key some target has not confirmed, with those targets (sorted): a snapshot, for
    /// listings.
    pub fn lagging(&self) -> HashMap<Key, Vec<String>> {
        let mut out: HashMap<Key, Vec<String>> = HashMap::new();
        for (name, t) in self.lock().iter() {
            for k in t.pending.keys().chain(t.failed.iter()) {
                let names = out.entry(k.clone()).or_default();
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        out.values_mut().for_each(|v| v.sort());
        out
    }

    /// The targets that have not confirmed the last job for `key`, sorted.
    pub fn lagging_on(&self, key: &Key) -> Vec<String> {
        let mut v: Vec<String> = self.lock().iter().filter(|(_, t)| t.has(key)).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_unconfirmed_until_its_last_job_is_confirmed() {
        let lag = Lag::new(["a".to_owned(), "b".to_owned()], Arc::new(Metrics::new()));
        let k = Key::Net("10.0.0.1/32".parse().unwrap());
        lag.sent("a", std::slice::from_ref(&k));
        lag.sent("b", std::slice::from_ref(&k));
        lag.answered("a", std::slice::from_ref(&k), true);
        assert_eq!(lag.lagging_on(&k), ["b"]);
        assert_eq!(lag.lagging(), [(k.clone(), vec!["b".to_owned()])].into());
        lag.answered("b", std::slice::from_ref(&k), false);
        assert_eq!(lag.unconfirmed()["b"], 1);
        // Block then release queued; the block's answer does not clear the pending release.
        lag.sent("b", std::slice::from_ref(&k));
        lag.sent("b", std::slice::from_ref(&k));
        lag.answered("b", std::slice::from_ref(&k), true);
        assert_eq!(lag.lagging_on(&k), ["b"]);
        lag.answered("b", std::slice::from_ref(&k), true);
        assert!(lag.lagging_on(&k).is_empty());
        assert_eq!(lag.unconfirmed().values().sum::<usize>(), 0);
    }

    #[test]
    fn a_job_of_many_keys_leaves_only_its_refused_keys_unconfirmed() {
        let lag = Lag::new(["a".to_owned()], Arc::new(Metrics::new()));
        let keys: Vec<Key> =
            ["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"].map(|k| Key::Net(k.parse().unwrap())).to_vec();
        lag.sent("a", &keys);
        assert_eq!(lag.unconfirmed()["a"], 3);
        lag.answered_but("a", &keys, |k| *k == keys[1]);
        assert_eq!(lag.lagging_on(&keys[1]), ["a"]);
        assert!(lag.lagging_on(&keys[0]).is_empty() && lag.lagging_on(&keys[2]).is_empty());
        assert_eq!(lag.unconfirmed()["a"], 1);
    }
}
