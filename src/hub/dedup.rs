//! Duplicate detection per device: the `seq` numbers a device sent recently, so a reading
//! resent after a lost `accepted` (a reconnect, a hub restart) is dropped, not stored twice.
//!
//! Part of the hub stage: a [`Room`](crate::hub::room::Room) keeps one [`SeqWindow`] per
//! device (bounded by `limits`) and checks every reading under its lock before stamping it.

/// How far back duplicate detection remembers a device's sequence numbers.
pub(crate) const SEQ_WINDOW: u64 = 4096;

/// The sequence numbers a device sent recently: the highest, and a bitmap of the
/// `SEQ_WINDOW` below it.
pub(crate) struct SeqWindow {
    high: Option<u64>,
    bits: Box<[u64; (SEQ_WINDOW / 64) as usize]>,
}

impl Default for SeqWindow {
    fn default() -> Self {
        SeqWindow {
            high: None,
            bits: Box::new([0; (SEQ_WINDOW / 64) as usize]),
        }
    }
}

impl SeqWindow {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.bits[w] |= b;
    }

    fn clear_all(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
    }

    /// Forgets `seq` (a reading refused after its seq was recorded).
    pub(crate) fn remove(&mut self, seq: u64) {
        if self.high.is_some_and(|h| seq <= h && h - seq < SEQ_WINDOW) {
            let (w, b) = Self::bit(seq);
            self.bits[w] &= !b;
        }
    }

    /// The highest seq and the bitmap, little-endian (what the store keeps); `None` for
    /// an empty window.
    pub(crate) fn to_parts(&self) -> Option<(u64, Vec<u8>)> {
        let high = self.high?;
        Some((
            high,
            self.bits.iter().flat_map(|w| w.to_le_bytes()).collect(),
        ))
    }

    /// The window [`SeqWindow::to_parts`] gave; `None` if `bits` is not one.
    pub(crate) fn from_parts(high: u64, bits: &[u8]) -> Option<SeqWindow> {
        if bits.len() != (SEQ_WINDOW / 8) as usize {
            return None;
        }
        let mut w = SeqWindow::default();
        for (word, bytes) in w.bits.iter_mut().zip(bits.chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().ok()?);
        }
        w.high = Some(high);
        Some(w)
    }

    /// Records `seq`; false if it was already seen within the window.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        let Some(high) = self.high else {
            self.high = Some(seq);
            self.set(seq);
            return true;
        };
        if seq > high {
            if seq - high >= SEQ_WINDOW {
                self.clear_all();
            } else {
                for s in high + 1..=seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.high = Some(seq);
            self.set(seq);
            return true;
        }
        if high - seq >= SEQ_WINDOW {
            // Far below anything remembered: the device restarted its counter.
            self.clear_all();
            self.high = Some(seq);
            self.set(seq);
            return true;
        }
        let (w, b) = Self::bit(seq);
        if self.bits[w] & b != 0 {
            return false;
        }
        self.bits[w] |= b;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_drops_repeats_and_accepts_restarts() {
        let mut w = SeqWindow::default();
        assert!(w.insert(1));
        assert!(w.insert(2));
        assert!(!w.insert(1));
        assert!(w.insert(5));
        assert!(w.insert(3), "a gap filled late is new");
        assert!(!w.insert(3));
        assert!(w.insert(10_000));
        assert!(!w.insert(10_000));
        assert!(w.insert(9_000), "inside the window and never seen");
        assert!(w.insert(1), "far below the window: a restarted counter");
        assert!(w.insert(2));
        assert!(!w.insert(2));
        let (high, bits) = w.to_parts().expect("not empty");
        let mut back = SeqWindow::from_parts(high, &bits).expect("a window");
        assert!(!back.insert(2) && !back.insert(1) && back.insert(3));
        assert!(SeqWindow::from_parts(1, &bits[1..]).is_none());
        assert!(SeqWindow::default().to_parts().is_none());
    }
}
