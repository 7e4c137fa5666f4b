//! The ordering modes as queues: events of one lane are delivered one after another, lanes
//! run side by side. `key` has a lane per record key, `partition` one per partition,
//! `unordered` none.

use std::collections::{HashMap, VecDeque};

use bridge_api::event_consumer::Ordering;

/// Which events of a partition must be delivered one after another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The whole partition (`ordering: partition`).
    Partition,
    /// One record key (`ordering: key`).
    Key(Vec<u8>),
}

impl Lane {
    /// The lane of a record, or `None` when it may be delivered alongside anything. Records
    /// without a key carry no order relation, so in `key` mode they are not queued.
    pub fn of(ordering: Ordering, key: Option<&[u8]>) -> Option<Lane> {
        match (ordering, key) {
            (Ordering::Partition, _) => Some(Lane::Partition),
            (Ordering::Key, Some(key)) => Some(Lane::Key(key.to_vec())),
            (Ordering::Key, None) | (Ordering::Unordered, _) => None,
        }
    }
}

/// The busy lanes of one partition and what waits in each. A lane is busy while one of its
/// events is being delivered; the events behind it wait here in offset order.
#[derive(Debug)]
pub struct Lanes<T> {
    busy: HashMap<Lane, VecDeque<T>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
        }
    }
}

impl<T> Lanes<T> {
    /// Hands `job` back when it may start now (its lane was idle, and is busy from now on);
    /// otherwise queues it behind the lane's current event.
    pub fn admit(&mut self, lane: Option<&Lane>, job: T) -> Option<T> {
        let Some(lane) = lane else {
            return Some(job);
        };
        match self.busy.get_mut(lane) {
            Some(waiting) => {
                waiting.push_back(job);
                None
            }
            None => {
                self.busy.insert(lane.clone(), VecDeque::new());
                Some(job)
            }
        }
    }

    /// Called when the lane's current event is done: the next one to start, or `None`, and
    /// then the lane is idle.
    pub fn next(&mut self, lane: Option<&Lane>) -> Option<T> {
        let lane = lane?;
        let waiting = self.busy.get_mut(lane)?;
        let next = waiting.pop_front();
        if next.is_none() {
            self.busy.remove(lane);
        }
        next
    }

    /// How many events wait behind busy lanes.
    pub fn waiting(&self) -> usize {
        self.busy.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Option<Lane> {
        Lane::of(Ordering::Key, Some(k.as_bytes()))
    }

    #[test]
    fn events_of_one_key_wait_for_each_other_while_other_keys_start() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit(key("a").as_ref(), 1), Some(1));
        assert_eq!(lanes.admit(key("a").as_ref(), 2), None);
        assert_eq!(lanes.admit(key("b").as_ref(), 3), Some(3));
        assert_eq!(lanes.admit(key("a").as_ref(), 4), None);
        assert_eq!(lanes.waiting(), 2);

        assert_eq!(lanes.next(key("a").as_ref()), Some(2));
        assert_eq!(lanes.next(key("a").as_ref()), Some(4));
        assert_eq!(lanes.next(key("a").as_ref()), None);
        // The lane is idle again: the next event of `a` starts at once.
        assert_eq!(lanes.admit(key("a").as_ref(), 5), Some(5));
    }

    #[test]
    fn partition_ordering_queues_everything_behind_one_lane() {
        let lane = Lane::of(Ordering::Partition, Some(b"a"));
        let other = Lane::of(Ordering::Partition, Some(b"b"));
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit(lane.as_ref(), 1), Some(1));
        assert_eq!(lanes.admit(other.as_ref(), 2), None);
        assert_eq!(lanes.next(lane.as_ref()), Some(2));
    }

    #[test]
    fn unordered_and_keyless_events_never_wait() {
        assert_eq!(Lane::of(Ordering::Unordered, Some(b"a")), None);
        assert_eq!(Lane::of(Ordering::Key, None), None);
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit(None, 1), Some(1));
        assert_eq!(lanes.admit(None, 2), Some(2));
        assert_eq!(lanes.next(None), None::<i32>);
    }
}
