//! The results of one job, by item index, until its caller takes them.

use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) enum Slot<T> {
    Waiting,
    Ready(T),
    Taken,
}

/// Results by item index: a window of slots for jobs whose results are
/// taken by index (`map`, `imap`, `apply_async`), or a queue in arrival
/// order (`imap_unordered`, where a slow item must not hold a window open).
#[derive(Debug)]
pub(crate) enum Results<T> {
    Ordered {
        /// Index of the first slot.
        base: u64,
        slots: VecDeque<Slot<T>>,
        ready: usize,
    },
    Arrival(VecDeque<(u64, T)>),
}

impl<T> Results<T> {
    pub(crate) fn ordered() -> Results<T> {
        Results::Ordered {
            base: 0,
            slots: VecDeque::new(),
            ready: 0,
        }
    }

    pub(crate) fn by_arrival() -> Results<T> {
        Results::Arrival(VecDeque::new())
    }

    /// Stores the result of item `index` (once; a second one is dropped).
    pub(crate) fn insert(&mut self, index: u64, value: T) {
        match self {
            Results::Ordered { base, slots, ready } => {
                let Some(at) = index.checked_sub(*base) else {
                    return;
                };
                let Ok(at) = usize::try_from(at) else {
                    return;
                };
                if at >= slots.len() {
                    slots.resize_with(at + 1, || Slot::Waiting);
                }
                if matches!(slots[at], Slot::Waiting) {
                    slots[at] = Slot::Ready(value);
                    *ready += 1;
                }
            }
            Results::Arrival(queue) => queue.push_back((index, value)),
        }
    }

    pub(crate) fn contains_key(&self, index: u64) -> bool {
        match self {
            Results::Ordered { base, slots, .. } => index
                .checked_sub(*base)
                .and_then(|at| usize::try_from(at).ok())
                .is_some_and(|at| matches!(slots.get(at), Some(Slot::Ready(_)))),
            Results::Arrival(queue) => queue.iter().any(|(i, _)| *i == index),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Results::Ordered { ready, .. } => *ready == 0,
            Results::Arrival(queue) => queue.is_empty(),
        }
    }

    /// Takes the result of item `index`, if it has come.
    pub(crate) fn remove(&mut self, index: u64) -> Option<T> {
        match self {
            Results::Ordered { base, slots, ready } => {
                let at = usize::try_from(index.checked_sub(*base)?).ok()?;
                let slot = slots.get_mut(at)?;
                if !matches!(slot, Slot::Ready(_)) {
                    return None;
                }
                let Slot::Ready(value) = std::mem::replace(slot, Slot::Taken) else {
                    return None;
                };
                *ready -= 1;
                while matches!(slots.front(), Some(Slot::Taken)) {
                    slots.pop_front();
                    *base += 1;
                }
                Some(value)
            }
            Results::Arrival(queue) => {
                let at = queue.iter().position(|(i, _)| *i == index)?;
                queue.remove(at).map(|(_, value)| value)
            }
        }
    }

    /// Takes a result that has come: the first to come, or (ordered) the
    /// lowest index.
    pub(crate) fn pop_first(&mut self) -> Option<(u64, T)> {
        match self {
            Results::Ordered { base, slots, .. } => {
                let at = slots.iter().position(|s| matches!(s, Slot::Ready(_)))?;
                let index = *base + at as u64;
                self.remove(index).map(|value| (index, value))
            }
            Results::Arrival(queue) => queue.pop_front(),
        }
    }

    /// Takes every result that has come, in index order (ordered) or
    /// arrival order.
    pub(crate) fn take_all(&mut self) -> Vec<(u64, T)> {
        match self {
            Results::Ordered { base, slots, ready } => {
                let first = *base;
                let taken = std::mem::take(slots)
                    .into_iter()
                    .enumerate()
                    .filter_map(|(at, slot)| match slot {
                        Slot::Ready(value) => Some((first + at as u64, value)),
                        _ => None,
                    })
                    .collect();
                *ready = 0;
                taken
            }
            Results::Arrival(queue) => std::mem::take(queue).into_iter().collect(),
        }
    }

    /// Drops every result that has come.
    pub(crate) fn clear(&mut self) {
        drop(self.take_all());
    }
}

#[cfg(test)]
mod tests {
    use super::Results;

    #[test]
    fn ordered_takes_by_index_and_slides() {
        let mut r = Results::ordered();
        r.insert(2, "c");
        r.insert(0, "a");
        assert!(r.contains_key(0) && !r.contains_key(1) && r.contains_key(2));
        assert_eq!(r.remove(0), Some("a"));
        assert_eq!(r.remove(1), None);
        r.insert(1, "b");
        r.insert(1, "again");
        assert_eq!(r.remove(1), Some("b"));
        assert_eq!(r.pop_first(), Some((2, "c")));
        assert!(r.is_empty());
        r.insert(0, "stale");
        assert!(r.is_empty());
        r.insert(5, "f");
        r.insert(3, "d");
        assert_eq!(r.take_all(), vec![(3, "d"), (5, "f")]);
        assert!(r.is_empty());
    }

    #[test]
    fn arrival_keeps_the_order_results_came_in() {
        let mut r = Results::by_arrival();
        r.insert(7, "h");
        r.insert(1, "b");
        assert!(r.contains_key(1));
        assert_eq!(r.pop_first(), Some((7, "h")));
        assert_eq!(r.remove(1), Some("b"));
        assert!(r.is_empty());
    }
}
