//! Sets of device `seq`s as the hub names them: inclusive ranges `[[first, last], ...]`,
//! ascending and disjoint. `accepted` lists exactly the readings it covers this way, and
//! `store_unavailable` those it does not, so a device never infers anything from a
//! highest seq.

use serde::{Deserialize, Serialize};

/// Ascending, disjoint, inclusive ranges of seqs (`[[451, 454], [460, 460]]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeqRanges(pub Vec<[u64; 2]>);

impl SeqRanges {
    /// Adds `seq`, merging it with the last range when it follows on. Seqs added out of
    /// order are kept in place too (a batch's seqs need not ascend).
    pub fn insert(&mut self, seq: u64) {
        if let Some(last) = self.0.last_mut() {
            if last[1].checked_add(1) == Some(seq) {
                last[1] = seq;
                return;
            }
            if (last[0]..=last[1]).contains(&seq) {
                return;
            }
        }
        let at = self.0.partition_point(|r| r[1] < seq);
        if let Some(r) = self.0.get(at) {
            if r[0] <= seq {
                return;
            }
        }
        self.0.insert(at, [seq, seq]);
        self.merge_around(at);
    }

    /// Joins the range at `at` with its neighbours where they touch.
    fn merge_around(&mut self, at: usize) {
        if at + 1 < self.0.len() && self.0[at][1] + 1 == self.0[at + 1][0] {
            self.0[at][1] = self.0[at + 1][1];
            self.0.remove(at + 1);
        }
        if at > 0 && self.0[at - 1][1] + 1 == self.0[at][0] {
            self.0[at - 1][1] = self.0[at][1];
            self.0.remove(at);
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let at = self.0.partition_point(|r| r[1] < seq);
        self.0.get(at).is_some_and(|r| r[0] <= seq)
    }

    /// The highest seq, if any.
    pub fn max(&self) -> Option<u64> {
        self.0.last().map(|r| r[1])
    }

    /// How many seqs the set holds.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|r| r[1] - r[0] + 1).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every seq, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|r| r[0]..=r[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_merge_into_ranges_in_any_order() {
        let mut s = SeqRanges::default();
        for seq in [5, 6, 7, 10, 9, 1, 8, 7] {
            s.insert(seq);
        }
        assert_eq!(s.0, vec![[1, 1], [5, 10]]);
        assert!(s.contains(8) && !s.contains(4) && !s.contains(11));
        assert_eq!((s.len(), s.max()), (7, Some(10)));
        assert_eq!(serde_json::to_string(&s).unwrap(), "[[1,1],[5,10]]");
        let mut top = SeqRanges::default();
        top.insert(u64::MAX);
        top.insert(u64::MAX - 1);
        assert_eq!(top.0, vec![[u64::MAX - 1, u64::MAX]]);
    }
}
