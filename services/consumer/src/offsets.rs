//! Which offset of a partition may be committed: the first one whose event is not yet done.
//! Events finish out of order (parallel keys, retries), but a commit must never skip one.

use std::collections::BTreeSet;

/// The records of one partition that were received and are not yet done, and from them
/// the offset a commit may carry (the next offset to read after a restart).
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    /// One past the highest offset received.
    end: Option<i64>,
}

impl OffsetTracker {
    /// Records that the event at `offset` was handed out for processing. `false` when it
    /// was handed out before: within one assignment a partition only moves forward, but
    /// librdkafka hands out again what it had queued when a partition was paused.
    pub fn received(&mut self, offset: i64) -> bool {
        if self.end.is_some_and(|end| offset < end) {
            return false;
        }
        self.pending.insert(offset);
        self.end = Some(offset + 1);
        true
    }

    /// Records that the event at `offset` is done; returns the committable offset when it
    /// moved forward because of it.
    pub fn completed(&mut self, offset: i64) -> Option<i64> {
        let before = self.committable();
        if !self.pending.remove(&offset) {
            return None;
        }
        let after = self.committable();
        (after != before).then_some(after).flatten()
    }

    /// The offset to commit: every record below it is done. Offsets never received (gaps
    /// left by compaction or transaction markers) do not hold it back.
    pub fn committable(&self) -> Option<i64> {
        self.pending.first().copied().or(self.end)
    }

    /// How many received records are not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_committable_before_anything_is_received() {
        assert_eq!(OffsetTracker::default().committable(), None);
    }

    #[test]
    fn a_finished_later_offset_waits_for_the_earlier_one() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..13 {
            tracker.received(offset);
        }
        assert_eq!(tracker.completed(11), None);
        assert_eq!(tracker.completed(12), None);
        assert_eq!(tracker.committable(), Some(10));
        assert_eq!(tracker.completed(10), Some(13));
        assert_eq!(tracker.pending(), 0);
    }

    #[test]
    fn the_commit_advances_one_contiguous_run_at_a_time() {
        let mut tracker = OffsetTracker::default();
        for offset in 0..5 {
            tracker.received(offset);
        }
        assert_eq!(tracker.completed(0), Some(1));
        assert_eq!(tracker.completed(2), None);
        assert_eq!(tracker.completed(1), Some(3));
        assert_eq!(tracker.committable(), Some(3));
    }

    #[test]
    fn gaps_between_received_offsets_do_not_block_the_commit() {
        let mut tracker = OffsetTracker::default();
        tracker.received(4);
        tracker.received(9);
        assert_eq!(tracker.completed(4), Some(9));
        assert_eq!(tracker.completed(9), Some(10));
    }

    #[test]
    fn an_offset_received_again_is_refused_whether_done_or_not() {
        let mut tracker = OffsetTracker::default();
        assert!(tracker.received(5));
        assert!(tracker.received(6));
        tracker.completed(5);
        assert!(!tracker.received(5));
        assert!(!tracker.received(6));
        assert_eq!(tracker.pending(), 1);
        assert!(tracker.received(7));
    }

    #[test]
    fn completing_an_unknown_offset_changes_nothing() {
        let mut tracker = OffsetTracker::default();
        tracker.received(1);
        assert_eq!(tracker.completed(7), None);
        assert_eq!(tracker.committable(), Some(1));
    }
}
