//! What the daemon knows of the clients HAProxy tracks, and what its circuit breaker makes of it,
//! shared between the pollers (which count), the controller (which decides) and the API (which
//! shows). Every `show table` answer starts with the table's `used:` count, so the population
//! costs no extra command: each poll records it per (target, table). The breaker's state is kept
//! here as a snapshot with the reason it opened, for `/healthz` and `explain`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::ops::view::BreakerView;
use crate::time::Millis;

/// The latest population counts, and the breaker's state.
#[derive(Default)]
pub struct Census {
    used: Mutex<HashMap<(String, String), u64>>,
    breaker: Mutex<Option<BreakerView>>,
}

impl Census {
    /// Records that `table` on `target` tracked `used` entries when last read.
    pub fn record(&self, target: &str, table: &str, used: u64) {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).insert((target.to_owned(), table.to_owned()), used);
    }

    /// The tracked clients: for each table, its entries added up across the targets (each sees
    /// its own clients), and the largest of the tables (one client has an entry in each). `None`
    /// until a poll has answered.
    pub fn population(&self) -> Option<u64> {
        let map = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_table: HashMap<&str, u64> = HashMap::new();
        for ((_, table), n) in map.iter() {
            *by_table.entry(table).or_default() += n;
        }
        by_table.into_values().max()
    }

    pub(super) fn set_breaker(&self, at: Option<(Millis, String)>) {
        let view = at.map(|(t, reason)| BreakerView { open_since: crate::time::rfc3339(t), reason });
        *self.breaker.lock().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// The breaker's state: `None` while it is closed.
    pub fn breaker(&self) -> Option<BreakerView> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn population_adds_targets_up_and_takes_the_largest_table() {
        let c = Census::default();
        assert_eq!(c.population(), None);
        c.record("lb1", "ft_web", 1_000);
        c.record("lb2", "ft_web", 500);
        c.record("lb1", "ft_api", 1_200);
        assert_eq!(c.population(), Some(1_500));
        c.record("lb1", "ft_web", 100);
        assert_eq!(c.population(), Some(1_200), "the latest count replaces the earlier one");
    }
}
