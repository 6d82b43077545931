//! A sliding window of counts in `WINDOW_BUCKETS` buckets: fixed size per thread (20 bytes),
//! O(1) to add and to read, and expressible in Redis as a hash of bucket number -> count.
//! The window slides a bucket at a time, so it spans between (n-1)/n and all of the window.

/// Buckets per window.
pub const WINDOW_BUCKETS: usize = 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    counts: [u16; WINDOW_BUCKETS],
    /// Bucket number (time / bucket width) of the newest bucket.
    head: u32,
}

/// Width of one bucket in seconds for a window of `window_s` seconds (at least 1).
pub fn bucket_width(window_s: u32) -> u32 {
    (window_s / WINDOW_BUCKETS as u32).max(1)
}

impl Window {
    /// Moves the window to `now_s`, dropping buckets that fell out of it.
    fn advance(&mut self, now_s: u32, window_s: u32) {
        self.advance_to(now_s / bucket_width(window_s));
    }

    /// Moves the newest bucket to bucket number `bucket`.
    fn advance_to(&mut self, bucket: u32) {
        if bucket <= self.head {
            return;
        }
        let gap = bucket - self.head;
        if gap as usize >= WINDOW_BUCKETS {
            self.counts = [0; WINDOW_BUCKETS];
        } else {
            for b in self.head + 1..=bucket {
                self.counts[b as usize % WINDOW_BUCKETS] = 0;
            }
        }
        self.head = bucket;
    }

    /// Counts one event at `now_s`; returns the total in the window. An event older than the
    /// newest bucket (a clock step back) counts in the newest bucket.
    pub fn add(&mut self, now_s: u32, window_s: u32) -> u32 {
        self.advance(now_s, window_s);
        let slot = &mut self.counts[self.head as usize % WINDOW_BUCKETS];
        *slot = slot.saturating_add(1);
        self.total(window_s)
    }

    /// Total at `now_s` without recording anything.
    pub fn count(&self, now_s: u32, window_s: u32) -> u32 {
        let mut w = *self;
        w.advance(now_s, window_s);
        w.total(window_s)
    }

    /// Adds another window's counts (a storm merged into this one). Both are read as windows of
    /// `window_s`: they are brought to the newer head, then added bucket by bucket.
    pub fn merge(&mut self, other: &Window) {
        let head = self.head.max(other.head);
        self.advance_to(head);
        let mut other = *other;
        other.advance_to(head);
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// The newest bucket's number and the bucket counts, for snapshots and Redis.
    pub fn parts(&self) -> (u32, [u16; WINDOW_BUCKETS]) {
        (self.head, self.counts)
    }

    pub fn from_parts(head: u32, counts: [u16; WINDOW_BUCKETS]) -> Window {
        Window { counts, head }
    }

    /// Sum of the buckets the window spans (fewer than all for windows under
    /// `WINDOW_BUCKETS` seconds).
    fn total(&self, window_s: u32) -> u32 {
        let span = (window_s / bucket_width(window_s)).clamp(1, WINDOW_BUCKETS as u32);
        (0..span)
            .map(|back| self.head.wrapping_sub(back) as usize % WINDOW_BUCKETS)
            .map(|i| u32::from(self.counts[i]))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u32 = 3600;
    const T0: u32 = 1_700_000_000 / 450 * 450; // aligned to a bucket of a 1h window

    #[test]
    fn counts_within_the_window() {
        let mut w = Window::default();
        for i in 0..10 {
            assert_eq!(w.add(T0 + i * 60, HOUR), i + 1);
        }
        assert_eq!(w.count(T0 + 600, HOUR), 10);
    }

    #[test]
    fn old_buckets_slide_out_one_at_a_time() {
        let mut w = Window::default();
        w.add(T0, HOUR); // bucket 0
        w.add(T0 + 450, HOUR); // bucket 1
        w.add(T0 + 900, HOUR); // bucket 2
        assert_eq!(w.count(T0 + HOUR - 1, HOUR), 3);
        assert_eq!(w.count(T0 + HOUR, HOUR), 2); // bucket 0 out
        assert_eq!(w.count(T0 + HOUR + 450, HOUR), 1);
        assert_eq!(w.count(T0 + HOUR + 900, HOUR), 0);
    }

    #[test]
    fn a_long_gap_clears_everything() {
        let mut w = Window::default();
        for _ in 0..5 {
            w.add(T0, HOUR);
        }
        assert_eq!(w.add(T0 + 10 * HOUR, HOUR), 1);
    }

    #[test]
    fn count_does_not_change_the_window() {
        let mut w = Window::default();
        w.add(T0, HOUR);
        assert_eq!(w.count(T0 + 2 * HOUR, HOUR), 0);
        assert_eq!(w.count(T0, HOUR), 1);
    }

    #[test]
    fn clock_stepping_back_counts_in_the_newest_bucket() {
        let mut w = Window::default();
        w.add(T0 + 1000, HOUR);
        assert_eq!(w.add(T0, HOUR), 2);
    }

    #[test]
    fn tiny_windows_use_one_second_buckets() {
        assert_eq!(bucket_width(3), 1);
        let mut w = Window::default();
        w.add(T0, 3);
        w.add(T0 + 7, 3);
        assert_eq!(w.count(T0 + 7, 3), 1);
    }

    #[test]
    fn merging_aligns_the_heads_and_adds() {
        let mut a = Window::default();
        a.add(T0, HOUR); // bucket 0
        a.add(T0 + 450, HOUR); // bucket 1
        let mut b = Window::default();
        b.add(T0 + 450, HOUR);
        b.add(T0 + 900, HOUR); // bucket 2
        b.add(T0 + 900, HOUR);
        a.merge(&b);
        assert_eq!(a.count(T0 + 900, HOUR), 5);
        // Buckets too old for the merged window are dropped, not added.
        let mut old = Window::default();
        old.add(T0, HOUR);
        let mut new = Window::default();
        new.add(T0 + 2 * HOUR, HOUR);
        new.merge(&old);
        assert_eq!(new.count(T0 + 2 * HOUR, HOUR), 1);
        let (head, counts) = new.parts();
        assert_eq!(Window::from_parts(head, counts), new);
    }

    #[test]
    fn counts_saturate() {
        let mut w = Window::default();
        for _ in 0..70_000 {
            w.add(T0, HOUR);
        }
        assert_eq!(w.count(T0, HOUR), u32::from(u16::MAX));
    }
}
