//! Distinct senders of a thread: a fixed set of `SENDER_SLOTS` (hash, last seen) pairs, 64 bytes.
//! Exact up to `SENDER_SLOTS` senders at once; beyond, the least recently seen is forgotten, so
//! counts saturate at `SENDER_SLOTS` (thresholds on senders must not exceed it).

pub const SENDER_SLOTS: usize = 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Senders {
    /// (sender hash, last seen in Unix seconds); last seen 0 is an empty slot.
    slots: [(u32, u32); SENDER_SLOTS],
}

impl Senders {
    /// Records `sender` seen at `now_s`.
    pub fn record(&mut self, sender: u32, now_s: u32) {
        let now_s = now_s.max(1);
        if let Some(slot) = self.slots.iter_mut().find(|s| s.1 != 0 && s.0 == sender) {
            slot.1 = slot.1.max(now_s);
            return;
        }
        let oldest = self
            .slots
            .iter_mut()
            .min_by_key(|s| s.1)
            .expect("SENDER_SLOTS > 0");
        *oldest = (sender, now_s);
    }

    /// Distinct senders seen at or after `since_s`.
    pub fn distinct_since(&self, since_s: u32) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.1 != 0 && s.1 >= since_s)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_sender_counts_once() {
        let mut s = Senders::default();
        for t in 0..20 {
            s.record(42, 1000 + t);
        }
        assert_eq!(s.distinct_since(0), 1);
    }

    #[test]
    fn distinct_senders_within_a_window() {
        let mut s = Senders::default();
        s.record(1, 1000);
        s.record(2, 1100);
        s.record(3, 1200);
        assert_eq!(s.distinct_since(1000), 3);
        assert_eq!(s.distinct_since(1100), 2);
        assert_eq!(s.distinct_since(1201), 0);
        // Seen again later: counts in the later window.
        s.record(1, 1300);
        assert_eq!(s.distinct_since(1250), 1);
    }

    #[test]
    fn saturates_and_forgets_the_least_recent() {
        let mut s = Senders::default();
        for i in 0..20u32 {
            s.record(i, 1000 + i);
        }
        assert_eq!(s.distinct_since(0), SENDER_SLOTS as u32);
        assert_eq!(
            s.distinct_since(1000 + 20 - SENDER_SLOTS as u32),
            SENDER_SLOTS as u32
        );
        assert_eq!(s.distinct_since(1019), 1);
    }

    #[test]
    fn time_zero_is_not_an_empty_slot_trap() {
        let mut s = Senders::default();
        s.record(7, 0);
        assert_eq!(s.distinct_since(0), 1);
    }
}
