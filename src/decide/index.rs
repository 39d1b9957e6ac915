//! The active blocks by key, each key held once: in the block itself. A map from key to block
//! would hold every key twice, which at 100,000 blocks is megabytes of the daemon's memory budget.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::key::Key;
use crate::store::Block;

/// A block, hashed and compared by its key.
#[derive(Debug)]
struct ByKey(Block);

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.key.hash(h);
    }
}

impl Borrow<Key> for ByKey {
    fn borrow(&self) -> &Key {
        &self.0.key
    }
}

/// The active blocks, one per key.
#[derive(Debug, Default)]
pub struct Blocks(HashSet<ByKey>);

impl Blocks {
    pub fn get(&self, key: &Key) -> Option<&Block> {
        self.0.get(key).map(|b| &b.0)
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.0.contains(key)
    }

    /// Puts `b` in, in place of the block of the same key if there was one.
    pub fn insert(&mut self, b: Block) {
        self.0.replace(ByKey(b));
    }

    pub fn remove(&mut self, key: &Key) -> Option<Block> {
        self.0.take(key).map(|b| b.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &Block> {
        self.0.iter().map(|b| &b.0)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.0.iter().map(|b| &b.0.key)
    }
}
