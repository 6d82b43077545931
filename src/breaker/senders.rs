//! Distinct senders of a storm: (hash, last seen) pairs, at most `cap` of them, where `cap` is
//! the largest sender threshold of the policy (`Engine` passes it). Exact up to `cap` senders at
//! once; beyond, the least recently seen is forgotten, so counts saturate at `cap`, which is at
//! least every threshold they are compared with. Most storms see one or two senders, so the set
//! grows as senders come instead of reserving `cap` slots.

/// The bound on any sender threshold (`trip_replies`, `fast_senders`, `me_too_messages`,
/// `wave_senders`): a storm keeps at most this many senders (8 bytes each).
pub const MAX_SENDER_THRESHOLD: u32 = 100;

/// Senders kept when the policy's thresholds are all lower (the alert shows up to this many).
pub const MIN_SENDER_SLOTS: u32 = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Senders {
    /// (sender hash, last seen in Unix seconds), in the order they were first kept; last seen
    /// is never 0.
    slots: Vec<(u32, u32)>,
}

impl Senders {
    /// Records `sender` seen at `now_s`, keeping at most `cap` senders.
    pub fn record(&mut self, sender: u32, now_s: u32, cap: u32) {
        let now_s = now_s.max(1);
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == sender) {
            slot.1 = slot.1.max(now_s);
            return;
        }
        if self.slots.len() < cap.max(1) as usize {
            // Most storms never see a second sender: no room reserved for one.
            if self.slots.capacity() == 0 {
                self.slots.reserve_exact(1);
            }
            self.slots.push((sender, now_s));
            return;
        }
        // The first of the least recently seen is replaced (redis.lua does the same).
        if let Some(oldest) = self.slots.iter_mut().min_by_key(|s| s.1) {
            *oldest = (sender, now_s);
        }
    }

    /// Distinct senders seen at or after `since_s`.
    pub fn distinct_since(&self, since_s: u32) -> u32 {
        self.slots.iter().filter(|s| s.1 >= since_s).count() as u32
    }

    /// Adds another set's senders (a storm merged into this one), in its order.
    pub fn merge(&mut self, other: &Senders, cap: u32) {
        for &(sender, seen) in &other.slots {
            self.record(sender, seen, cap);
        }
    }

    /// The kept (hash, last seen) pairs, for snapshots and the Redis encoding.
    pub fn slots(&self) -> &[(u32, u32)] {
        &self.slots
    }

    /// A set from kept pairs (a snapshot); pairs with last seen 0 are dropped.
    pub fn from_slots(slots: impl IntoIterator<Item = (u32, u32)>) -> Senders {
        Senders {
            slots: slots.into_iter().filter(|s| s.1 != 0).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u32 = 8;

    #[test]
    fn the_same_sender_counts_once() {
        let mut s = Senders::default();
        for t in 0..20 {
            s.record(42, 1000 + t, CAP);
        }
        assert_eq!(s.distinct_since(0), 1);
        assert_eq!(s.slots().len(), 1);
    }

    #[test]
    fn distinct_senders_within_a_window() {
        let mut s = Senders::default();
        s.record(1, 1000, CAP);
        s.record(2, 1100, CAP);
        s.record(3, 1200, CAP);
        assert_eq!(s.distinct_since(1000), 3);
        assert_eq!(s.distinct_since(1100), 2);
        assert_eq!(s.distinct_since(1201), 0);
        // Seen again later: counts in the later window.
        s.record(1, 1300, CAP);
        assert_eq!(s.distinct_since(1250), 1);
    }

    #[test]
    fn saturates_at_the_cap_and_forgets_the_least_recent() {
        let mut s = Senders::default();
        for i in 0..20u32 {
            s.record(i, 1000 + i, CAP);
        }
        assert_eq!(s.distinct_since(0), CAP);
        assert_eq!(s.distinct_since(1000 + 20 - CAP), CAP);
        assert_eq!(s.distinct_since(1019), 1);
        // A larger cap counts more.
        let mut big = Senders::default();
        for i in 0..150u32 {
            big.record(i, 1000 + i, MAX_SENDER_THRESHOLD);
        }
        assert_eq!(big.distinct_since(0), MAX_SENDER_THRESHOLD);
    }

    #[test]
    fn ties_replace_the_first_least_recent() {
        let mut s = Senders::default();
        for i in 0..3u32 {
            s.record(i, 500, 3);
        }
        s.record(9, 600, 3);
        assert_eq!(s.slots(), &[(9, 600), (1, 500), (2, 500)]);
    }

    #[test]
    fn time_zero_is_not_an_empty_slot_trap() {
        let mut s = Senders::default();
        s.record(7, 0, CAP);
        assert_eq!(s.distinct_since(0), 1);
    }

    #[test]
    fn merging_keeps_the_latest_sighting_and_the_cap() {
        let mut a = Senders::default();
        a.record(1, 100, 4);
        a.record(2, 200, 4);
        let mut b = Senders::default();
        b.record(2, 300, 4);
        b.record(3, 150, 4);
        b.record(4, 250, 4);
        b.record(5, 260, 4);
        a.merge(&b, 4);
        assert_eq!(a.distinct_since(0), 4);
        assert_eq!(a.slots(), &[(5, 260), (2, 300), (3, 150), (4, 250)]);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut s = Senders::default();
        s.record(1, 10, CAP);
        s.record(2, 20, CAP);
        let back = Senders::from_slots(s.slots().iter().copied().chain([(3, 0)]));
        assert_eq!(back, s);
    }
}
