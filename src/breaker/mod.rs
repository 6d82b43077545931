//! Sliding windows and circuit breakers: pure, time passed in, one `ThreadState` per thread key.
//!
//! `ThreadState::observe` is the whole per-key step of a decision; store backends apply it
//! atomically per key (the in-process store under the key's lock, Redis in one Lua script).
//! For one wide message counted under a key, at `now`:
//! 1. The breaker's phase is read (an expired half-open closes here).
//! 2. The message is counted in the key's window and its sender recorded.
//! 3. Open: the message is held. Half-open: it passes and counts toward re-opening; the one that
//!    reaches `half_open_trip(trip)` passes and re-opens with a doubled block. Closed: the message
//!    that reaches `trip` in the window passes and opens the breaker (so at most `trip` get
//!    through); so does one that brings distinct senders within `fast_window` to `fast_senders`
//!    when the audience is very large.

pub mod circuit;
pub mod senders;
pub mod window;

pub use circuit::{Circuit, Phase, Rule, block_after, half_open_trip};
pub use senders::{SENDER_SLOTS, Senders};
pub use window::{WINDOW_BUCKETS, Window};

/// Thresholds for one observation, already resolved from the policy and the list overrides.
/// Durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages in the window that open the breaker.
    pub trip: u32,
    pub window_s: u32,
    pub block_s: u32,
    pub max_block_s: u32,
    /// Distinct senders within `fast_window_s` that open the breaker; 0 = no fast trip.
    pub fast_senders: u32,
    pub fast_window_s: u32,
}

/// What one observation found and did for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Phase before this message.
    pub phase: Phase,
    /// The breaker was open: hold this message.
    pub held: bool,
    /// This message opened (or re-opened) the breaker; it passes, and the alert goes out.
    pub opened: bool,
    /// Rule of the open breaker (meaningful when `held` or `opened`).
    pub rule: Rule,
    /// Messages and distinct senders in the window, this one included.
    pub count: u32,
    pub senders: u32,
    /// Unix seconds of the current block (0 when closed).
    pub opened_at: u32,
    pub until: u32,
}

/// Everything kept per thread key: 100 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub window: Window,
    pub senders: Senders,
    pub circuit: Circuit,
    /// Unix seconds after which this state holds nothing worth keeping.
    pub expires: u32,
}

impl ThreadState {
    /// Counts one wide message from `sender` under this key. `rule` is the rule counting it
    /// (`Replies` or `MeToo`); `fast` says the audience is large enough for the fast trip.
    pub fn observe(
        &mut self,
        sender: u32,
        rule: Rule,
        fast: bool,
        limits: &Limits,
        now_s: u32,
    ) -> Outcome {
        let phase = self.circuit.phase(now_s, limits.window_s);
        let count = self.window.add(now_s, limits.window_s);
        self.senders.record(sender, now_s);
        let senders = self
            .senders
            .distinct_since(now_s.saturating_sub(limits.window_s));
        let mut held = false;
        let mut opened = false;
        match phase {
            Phase::Open => held = true,
            Phase::HalfOpen => {
                self.circuit.probe = self.circuit.probe.saturating_add(1);
                if u32::from(self.circuit.probe) >= half_open_trip(limits.trip) {
                    self.circuit
                        .reopen(now_s, limits.block_s, limits.max_block_s);
                    opened = true;
                }
            }
            Phase::Closed => {
                if count >= limits.trip {
                    self.circuit.open(rule, now_s, limits.block_s);
                    opened = true;
                } else if fast
                    && limits.fast_senders > 0
                    && self
                        .senders
                        .distinct_since(now_s.saturating_sub(limits.fast_window_s))
                        >= limits.fast_senders
                {
                    self.circuit.open(Rule::Fast, now_s, limits.block_s);
                    opened = true;
                }
            }
        }
        self.touch(now_s, limits.window_s);
        Outcome {
            phase,
            held,
            opened,
            rule: self.circuit.rule,
            count,
            senders,
            opened_at: self.circuit.opened_at,
            until: self.circuit.until,
        }
    }

    /// Opens the breaker by hand for `block_s`, whatever its state.
    pub fn trip(&mut self, now_s: u32, block_s: u32, window_s: u32) {
        self.circuit.open(Rule::Manual, now_s, block_s);
        self.touch(now_s, window_s);
    }

    /// Keeps the state until a window after both the last message and the end of the
    /// block's half-open time.
    fn touch(&mut self, now_s: u32, window_s: u32) {
        let quiet = now_s.saturating_add(window_s);
        let block = self
            .circuit
            .until
            .saturating_add(window_s.saturating_mul(2));
        self.expires = self
            .expires
            .max(quiet)
            .max(if self.circuit.until == 0 { 0 } else { block });
    }

    /// True when nothing in this state matters any more at `now_s`.
    pub fn expired(&self, now_s: u32) -> bool {
        now_s >= self.expires
    }

    /// True while the breaker holds or watches (open or half-open) at `now_s`.
    pub fn guarding(&self, now_s: u32) -> bool {
        self.circuit.until != 0 && !self.expired(now_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 1_700_000_000;
    const M: u32 = 60;
    const H: u32 = 3600;

    fn limits() -> Limits {
        Limits {
            trip: 10,
            window_s: H,
            block_s: 6 * H,
            max_block_s: 48 * H,
            fast_senders: 5,
            fast_window_s: 5 * M,
        }
    }

    /// Feeds `n` replies from distinct senders, `gap` seconds apart; returns (delivered, outcomes).
    fn feed(s: &mut ThreadState, start: u32, n: u32, gap: u32, fast: bool) -> Vec<Outcome> {
        (0..n)
            .map(|i| s.observe(1000 + i, Rule::Replies, fast, &limits(), start + i * gap))
            .collect()
    }

    #[test]
    fn the_tenth_reply_passes_and_opens_the_eleventh_is_held() {
        let mut s = ThreadState::default();
        let out = feed(&mut s, T, 12, M, false);
        assert!(
            out[..9]
                .iter()
                .all(|o| !o.held && !o.opened && o.phase == Phase::Closed)
        );
        assert!(out[9].opened && !out[9].held);
        assert_eq!(out[9].count, 10);
        assert_eq!(out[9].rule, Rule::Replies);
        assert_eq!(out[9].until, T + 9 * M + 6 * H);
        assert!(out[10].held && !out[10].opened);
        assert!(out[11].held);
        assert_eq!(out[11].senders, 12.min(SENDER_SLOTS as u32));
    }

    #[test]
    fn replies_spread_wider_than_the_window_never_trip() {
        let mut s = ThreadState::default();
        // One reply every 7 minutes: never more than 9 in an hour.
        let out = feed(&mut s, T, 200, 7 * M, false);
        assert!(out.iter().all(|o| !o.held && !o.opened));
    }

    #[test]
    fn fast_trip_on_distinct_senders_for_huge_audiences_only() {
        let mut s = ThreadState::default();
        let out = feed(&mut s, T, 6, 20, true);
        assert!(out[4].opened);
        assert_eq!(out[4].rule, Rule::Fast);
        assert!(out[5].held);

        let mut s = ThreadState::default();
        let out = feed(&mut s, T, 6, 20, false);
        assert!(out.iter().all(|o| !o.opened && !o.held));
    }

    #[test]
    fn one_sender_repeating_does_not_fast_trip() {
        let mut s = ThreadState::default();
        for i in 0..9 {
            let o = s.observe(7, Rule::Replies, true, &limits(), T + i);
            assert!(!o.opened, "{i}");
        }
        assert!(s.observe(7, Rule::Replies, true, &limits(), T + 9).opened);
    }

    #[test]
    fn half_open_storm_reopens_with_a_doubled_block() {
        let mut s = ThreadState::default();
        feed(&mut s, T, 10, M, false);
        let opened_until = s.circuit.until;
        // Storm resumes just after the block: 5 pass, the fifth re-opens.
        let out = feed(&mut s, opened_until + M, 7, M, false);
        assert!(out.iter().all(|o| o.phase != Phase::Closed));
        assert!(out[..4].iter().all(|o| !o.held && !o.opened));
        assert!(out[4].opened);
        assert_eq!(out[4].until - out[4].opened_at, 12 * H);
        assert!(out[5].held && out[6].held);
    }

    #[test]
    fn quiet_thread_closes_after_half_open_and_forgets_strikes() {
        let mut s = ThreadState::default();
        feed(&mut s, T, 10, M, false);
        let until = s.circuit.until;
        let o = s.observe(1, Rule::Replies, false, &limits(), until + H + 1);
        assert_eq!(o.phase, Phase::Closed);
        assert!(!o.held && !o.opened);
        assert_eq!(s.circuit.strikes, 0);
    }

    #[test]
    fn first_and_single_messages_are_never_held() {
        let mut s = ThreadState::default();
        let o = s.observe(1, Rule::Replies, true, &limits(), T);
        assert!(!o.held && !o.opened);
        assert_eq!(o.count, 1);
    }

    #[test]
    fn manual_trip_holds_until_the_block_ends() {
        let mut s = ThreadState::default();
        s.trip(T, 2 * H, H);
        let o = s.observe(1, Rule::Replies, false, &limits(), T + H);
        assert!(o.held);
        assert_eq!(o.rule, Rule::Manual);
        let o = s.observe(1, Rule::Replies, false, &limits(), T + 2 * H);
        assert!(!o.held);
        assert_eq!(o.phase, Phase::HalfOpen);
    }

    #[test]
    fn me_too_rule_is_reported() {
        let mut s = ThreadState::default();
        let l = Limits {
            trip: 3,
            ..limits()
        };
        for i in 0..2 {
            assert!(!s.observe(i, Rule::MeToo, false, &l, T + i).opened);
        }
        let o = s.observe(9, Rule::MeToo, false, &l, T + 5);
        assert!(o.opened);
        assert_eq!(o.rule, Rule::MeToo);
    }

    #[test]
    fn expiry_covers_the_window_and_the_block() {
        let mut s = ThreadState::default();
        s.observe(1, Rule::Replies, false, &limits(), T);
        assert!(!s.expired(T + H - 1));
        assert!(s.expired(T + H));
        assert!(!s.guarding(T));
        feed(&mut s, T, 10, 1, false);
        assert!(s.guarding(T + 6 * H + H));
        assert!(!s.expired(T + 8 * H - 1));
        assert!(s.expired(T + 8 * H + 10));
    }

    #[test]
    fn state_fits_in_100_bytes() {
        assert!(std::mem::size_of::<ThreadState>() <= 100);
    }
}
