//! The server's dictionary: encoded keys and values, kept in the order
//! their keys were first inserted, as a Python `dict` keeps them.

use std::collections::HashMap;

/// Below this many slots a dictionary never compacts: the holes cost less
/// than the rebuild.
const COMPACT_FLOOR: usize = 32;

/// An insertion-ordered map of encoded keys to encoded values.
///
/// Entries live in `slots` in insertion order; `index` finds a key's slot.
/// Removing leaves a hole, and the slots are compacted once holes are more
/// than half of them, so removal stays O(1) amortised and order is kept
/// (re-inserting a removed key puts it last; replacing a value keeps its
/// place).
#[derive(Debug, Default)]
pub(super) struct Dict {
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<(Vec<u8>, Vec<u8>)>>,
}

impl Dict {
    /// The value under `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        let slot = *self.index.get(key)?;
        self.slots[slot].as_ref().map(|(_, v)| v)
    }

    /// Sets `key` to `value`, in place if it is present, else last.
    /// Returns the value it replaced.
    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        if let Some(&slot) = self.index.get(&key)
            && let Some((_, old)) = &mut self.slots[slot]
        {
            return Some(std::mem::replace(old, value));
        }
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Some((key, value)));
        None
    }

    /// The value under `key`, inserting `value` (last) first if there is
    /// none (Python's `setdefault`).
    pub(super) fn get_or_insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<&Vec<u8>> {
        let slot = match self.index.get(&key) {
            Some(&slot) if self.slots[slot].is_some() => slot,
            _ => {
                self.index.insert(key.clone(), self.slots.len());
                self.slots.push(Some((key, value)));
                self.slots.len() - 1
            }
        };
        self.slots[slot].as_ref().map(|(_, v)| v)
    }

    /// Removes the entry inserted last (Python's `popitem`).
    pub(super) fn pop_last(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        while let Some(last) = self.slots.pop() {
            if let Some((key, value)) = last {
                self.index.remove(&key);
                return Some((key, value));
            }
        }
        None
    }

    /// Removes `key`; returns its value.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let slot = self.index.remove(key)?;
        let (_, value) = self.slots[slot].take()?;
        if self.slots.len() > COMPACT_FLOOR && self.index.len() < self.slots.len() / 2 {
            self.compact();
        }
        Some(value)
    }

    pub(super) fn contains_key(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
    }

    /// Every entry, in insertion order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.slots.iter().flatten().map(|(k, v)| (k, v))
    }

    /// Closes the holes, keeping the order.
    fn compact(&mut self) {
        self.slots.retain(Option::is_some);
        for (slot, entry) in self.slots.iter().enumerate() {
            if let Some((key, _)) = entry
                && let Some(at) = self.index.get_mut(key)
            {
                *at = slot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dict;

    fn keys(d: &Dict) -> Vec<u8> {
        d.iter().map(|(k, _)| k[0]).collect()
    }

    #[test]
    fn keys_keep_their_first_insertion_order() {
        let mut d = Dict::default();
        for k in [3u8, 1, 2] {
            assert_eq!(d.insert(vec![k], vec![k]), None);
        }
        assert_eq!(d.insert(vec![1], vec![10]), Some(vec![1]));
        assert_eq!(keys(&d), [3, 1, 2]);
        assert_eq!(d.get(&[1]), Some(&vec![10]));
        assert_eq!(d.remove(&[3]), Some(vec![3]));
        assert_eq!(d.insert(vec![3], vec![30]), None);
        assert_eq!(keys(&d), [1, 2, 3]);
        assert_eq!(d.len(), 3);
        assert!(d.contains_key(&[2]));
        assert_eq!(d.remove(&[9]), None);
        assert_eq!(d.get_or_insert(vec![2], vec![20]), Some(&vec![2]));
        assert_eq!(d.get_or_insert(vec![4], vec![40]), Some(&vec![40]));
        assert_eq!(d.pop_last(), Some((vec![4], vec![40])));
        d.remove(&[3]);
        assert_eq!(d.pop_last(), Some((vec![2], vec![2])), "past the hole");
        assert_eq!(d.pop_last(), Some((vec![1], vec![10])));
        assert_eq!(d.pop_last(), None);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn compaction_keeps_order_and_lookups() {
        let mut d = Dict::default();
        for k in 0..200u8 {
            d.insert(vec![k], vec![k]);
        }
        for k in (0..200u8).filter(|k| k % 5 != 0) {
            assert_eq!(d.remove(&[k]), Some(vec![k]));
        }
        assert!(d.slots.len() < 200, "the holes were never compacted");
        let expected: Vec<u8> = (0..200u8).filter(|k| k % 5 == 0).collect();
        assert_eq!(keys(&d), expected);
        for &k in &expected {
            assert_eq!(d.get(&[k]), Some(&vec![k]));
        }
        assert_eq!(d.len(), expected.len());
        d.insert(vec![7], vec![7]);
        assert_eq!(d.iter().last().map(|(k, _)| k[0]), Some(7));
        d.clear();
        assert_eq!(d.len(), 0);
        assert_eq!(d.iter().count(), 0);
    }
}
