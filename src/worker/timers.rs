//! A worker's timers: one min-heap of deadlines that sets the poll timeout.
//!
//! Every client connection has at most one deadline at a time (its phase decides
//! what it means: header timeout, request timeout, idle timeout...). Deadlines move
//! on every bit of progress, so pushing a heap entry each time would grow the heap
//! without bound. Instead re-arming is lazy: an entry is pushed only when the new
//! deadline is *earlier* than the one already queued for the connection. When an
//! entry pops, the worker compares it with the connection's current deadline: gone
//! or a different generation, drop it; moved later, push it again; else fire.
//! That keeps about one entry per connection.
//!
//! Idle pooled backend connections have deadlines too (`backend_idle_timeout`), in
//! the same heap, told apart by [`Slot`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Which slab a timer entry's key refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Client,
    Backend,
}

/// A queued deadline for connection `key` of `generation` in the `slot` slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub at: Instant,
    pub slot: Slot,
    pub key: usize,
    pub generation: u32,
}

impl Entry {
    /// True when this popped entry still speaks for its connection: same generation
    /// (the slot was not reused) and the entry `arm` last queued (not one superseded
    /// by an earlier deadline). Then `queued` is cleared, since nothing is queued now.
    pub fn claim(&self, generation: u32, queued: &mut Option<Instant>) -> bool {
        let current = generation == self.generation && *queued == Some(self.at);
        if current {
            *queued = None;
        }
        current
    }
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Timers {
    pub fn push(&mut self, entry: Entry) {
        self.heap.push(Reverse(entry));
    }

    /// Queues `deadline` for a connection, lazily: only when it is earlier than the
    /// entry already queued for it (`queued`, which this updates). A later deadline
    /// is found when the earlier entry pops.
    pub fn arm(
        &mut self,
        slot: Slot,
        key: usize,
        generation: u32,
        deadline: Option<Instant>,
        queued: &mut Option<Instant>,
    ) {
        if let Some(at) = deadline {
            if queued.is_none_or(|earliest| at < earliest) {
                *queued = Some(at);
                self.push(Entry {
                    at,
                    slot,
                    key,
                    generation,
                });
            }
        }
    }

    /// The earliest queued deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// Removes and returns one entry that is due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(entry)) if entry.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn arm_pushes_only_earlier_deadlines() {
        let now = Instant::now();
        let mut timers = Timers::default();
        let mut queued = None;
        let at = |ms| Some(now + Duration::from_millis(ms));
        timers.arm(Slot::Client, 1, 0, at(50), &mut queued);
        timers.arm(Slot::Client, 1, 0, at(80), &mut queued); // later: left for re-arm
        timers.arm(Slot::Client, 1, 0, at(20), &mut queued); // earlier: queued
        timers.arm(Slot::Client, 1, 0, None, &mut queued);
        assert_eq!(queued, at(20));
        assert_eq!(timers.heap.len(), 2);
        assert_eq!(timers.next_deadline(), at(20));
    }

    #[test]
    fn only_the_current_entry_claims_its_connection() {
        let now = Instant::now();
        let mut timers = Timers::default();
        let mut queued = None;
        timers.arm(Slot::Client, 4, 9, Some(now), &mut queued);
        let entry = timers.pop_due(now).expect("due");
        assert!(
            !entry.claim(10, &mut queued),
            "a reused slot has another generation"
        );
        assert!(entry.claim(9, &mut queued));
        assert_eq!(queued, None);
        assert!(!entry.claim(9, &mut queued), "claimed once");
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let now = Instant::now();
        let mut timers = Timers::default();
        let at = |ms| now + Duration::from_millis(ms);
        for (ms, key) in [(30, 3), (10, 1), (20, 2)] {
            timers.push(Entry {
                at: at(ms),
                slot: Slot::Client,
                key,
                generation: 0,
            });
        }
        assert_eq!(timers.next_deadline(), Some(at(10)));
        assert_eq!(timers.pop_due(now), None);
        let keys: Vec<_> = std::iter::from_fn(|| timers.pop_due(at(25)))
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, [1, 2]);
        assert_eq!(timers.next_deadline(), Some(at(30)));
    }
}
