//! Per-partition commit watermarks.
//!
//! Jobs finish out of order, so a partition's committable offset is the lowest offset that was
//! fetched and is not yet recorded in the database, or one past the highest offset seen when
//! nothing is in flight. Committing only that offset means a crash re-delivers work but never
//! skips it.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset fetched.
    next: i64,
    /// The last offset handed to a commit, so unchanged watermarks are not committed again.
    committed: i64,
}

/// Offsets in flight for every assigned partition of one topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<i32, PartitionState>,
}

impl OffsetTracker {
    /// Records that `offset` was fetched and is now in the pipeline.
    pub fn track(&mut self, partition: i32, offset: i64) {
        let state = self.partitions.entry(partition).or_default();
        state.in_flight.insert(offset);
        state.next = state.next.max(offset + 1);
    }

    /// Records that the result of `offset` is durable. Unknown partitions are ignored: their
    /// assignment was revoked while the job was in flight.
    pub fn complete(&mut self, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.in_flight.remove(&offset);
        }
    }

    /// Forgets partitions that were revoked, returning their final watermarks.
    pub fn revoke(&mut self, partitions: &[i32]) -> Vec<(i32, i64)> {
        let mut finals = Vec::new();
        for partition in partitions {
            if let Some(state) = self.partitions.remove(partition)
                && let Some(offset) = watermark(&state)
            {
                finals.push((*partition, offset));
            }
        }
        finals
    }

    /// Returns the watermarks that moved since the last call, and remembers them as committed.
    pub fn take_committable(&mut self) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(offset) = watermark(state) {
                state.committed = offset;
                moved.push((*partition, offset));
            }
        }
        moved
    }

    /// Number of jobs fetched and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }
}

fn watermark(state: &PartitionState) -> Option<i64> {
    let offset = state.in_flight.first().copied().unwrap_or(state.next);
    (offset > state.committed).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_lowest_offset() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.track(0, offset);
        }
        t.complete(0, 11);
        t.complete(0, 12);
        assert_eq!(t.take_committable(), vec![(0, 10)]);
        t.complete(0, 10);
        assert_eq!(t.take_committable(), vec![(0, 13)]);
        assert_eq!(
            t.take_committable(),
            vec![],
            "an unchanged watermark is not committed again"
        );
        t.complete(0, 13);
        t.complete(0, 14);
        assert_eq!(t.take_committable(), vec![(0, 15)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.track(0, 5);
        t.track(1, 7);
        t.complete(1, 7);
        assert_eq!(t.take_committable(), vec![(0, 5), (1, 8)]);
    }

    #[test]
    fn revoked_partition_ignores_late_completions() {
        let mut t = OffsetTracker::default();
        t.track(2, 3);
        t.track(2, 4);
        t.complete(2, 4);
        assert_eq!(t.revoke(&[2]), vec![(2, 3)]);
        t.complete(2, 3);
        assert_eq!(t.take_committable(), vec![]);
        assert_eq!(t.in_flight(), 0);
    }
}
