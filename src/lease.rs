//! The leader's lease: how long this controller may still act on HAProxy. A controller on sled
//! always may; one on PostgreSQL may until a little before the database would let another take
//! the lead (the lease is renewed by each heartbeat its session answers, and ends on its own
//! when they stop: a process paused by SIGSTOP finds its lease over when it resumes, before it
//! sends anything). Actuators ask [`Lease::valid`] before every job; a job refused for it fails
//! with [`crate::client::ClientError::NotLeader`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether, and until when, this controller may act. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lease(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Milliseconds since `origin` until which acting is allowed; `u64::MAX` for always.
    until: AtomicU64,
    origin: Instant,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease::always()
    }
}

impl Lease {
    /// A lease that never ends (the embedded store: one controller).
    pub fn always() -> Lease {
        Lease(Arc::new(Inner { until: AtomicU64::new(u64::MAX), origin: Instant::now() }))
    }

    /// A lease that has ended until it is renewed.
    pub fn ended() -> Lease {
        Lease(Arc::new(Inner { until: AtomicU64::new(0), origin: Instant::now() }))
    }

    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0.origin).as_millis() as u64
    }

    /// Acting is allowed until `asked + length`: `asked` is when the heartbeat that renews it was
    /// sent (not when its answer came), so the lease never outlives the database's view of it.
    pub fn renew(&self, asked: Instant, length: Duration) {
        self.0.until.store(self.at(asked + length), Ordering::SeqCst);
    }

    /// Ends the lease now.
    pub fn end(&self) {
        self.0.until.store(0, Ordering::SeqCst);
    }

    /// Whether acting is allowed now.
    pub fn valid(&self) -> bool {
        let until = self.0.until.load(Ordering::SeqCst);
        until == u64::MAX || self.at(Instant::now()) < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_from_when_it_was_asked_and_ends_on_its_own() {
        let l = Lease::ended();
        assert!(!l.valid());
        l.renew(Instant::now(), Duration::from_secs(60));
        assert!(l.valid());
        // Renewed by a heartbeat sent long ago: already over.
        l.renew(Instant::now() - Duration::from_secs(5), Duration::from_secs(3));
        assert!(!l.valid());
        l.renew(Instant::now(), Duration::from_secs(60));
        l.end();
        assert!(!l.valid());
        assert!(Lease::always().valid());
    }
}
