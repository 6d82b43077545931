//! Sliding windows and circuit breakers: pure, time passed in, one `StormState` per storm.
//!
//! A storm is what the keys of one thread (Thread-Index GUID, References root, In-Reply-To,
//! subject) add up to once they are seen on the same messages (`store` joins them); a "me too"
//! or wave breaker is a storm of its own single key. `StormState::observe` is the whole per-storm
//! step of a decision; store backends apply it atomically (the in-process store under its lock,
//! Redis in one Lua script). For one wide message counted in a storm, at `now`:
//! 1. The breaker's phase is read (an expired half-open closes here).
//! 2. The message is counted in the storm's window and its sender recorded.
//! 3. Open: the message is held. Half-open: it passes, and the one that brings the distinct
//!    senders since the block ended to `half_open_trip(trip)` passes and re-opens with a doubled
//!    block. Closed: the message that brings the distinct senders in the window to `trip` passes
//!    and opens the breaker (so at most `trip` people get through); so does one that brings
//!    distinct senders within `fast_window` to `fast_senders` when the audience is very large.
//!
//! People make a storm: one sender's own messages count once per window, so a desk posting
//! updates to its own thread never trips it; the window's message count is kept for reports.

pub mod circuit;
pub mod senders;
pub mod window;

pub use circuit::{Circuit, Phase, Rule, block_after, half_open_trip};
pub use senders::{MAX_SENDER_THRESHOLD, MIN_SENDER_SLOTS, Senders};
pub use window::{WINDOW_BUCKETS, Window};

/// Thresholds for one observation, already resolved from the policy and the list overrides.
/// Durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct senders in the window that open the breaker.
    pub trip: u32,
    pub window_s: u32,
    pub block_s: u32,
    pub max_block_s: u32,
    /// Distinct senders within `fast_window_s` that open the breaker; 0 = no fast trip.
    pub fast_senders: u32,
    pub fast_window_s: u32,
}

impl Limits {
    /// How long a key stays joined to its storm after it was last seen: as long as any storm
    /// state it could join may live (a block of `max_block_s` and two windows after it).
    pub fn link_s(&self) -> u32 {
        self.max_block_s
            .max(self.block_s)
            .saturating_add(self.window_s.saturating_mul(2))
    }
}

/// What one observation found and did for one storm.
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
    /// The storm's id: the id of the key that started it (its label is the storm's name).
    pub storm: u64,
    /// This is another copy of a message already decided (same Message-ID and sender, split
    /// over several transactions): the outcome is the first copy's, nothing was counted.
    pub copy: bool,
}

impl Outcome {
    /// The outcome another copy of the same message gets: the same, except that it opens
    /// nothing (the first copy's alert went out) and counts as a copy.
    pub fn as_copy(&self) -> Outcome {
        Outcome {
            opened: false,
            copy: true,
            ..*self
        }
    }
}

/// Everything kept per storm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StormState {
    pub window: Window,
    pub senders: Senders,
    pub circuit: Circuit,
    /// Unix seconds after which this state holds nothing worth keeping.
    pub expires: u32,
}

impl StormState {
    /// Counts one wide message from `sender` in this storm. `rule` is the rule counting it
    /// (`Replies`, `MeToo` or `Wave`); `fast` says the audience is large enough for the fast
    /// trip; at most `cap` senders are kept (at least every threshold in `limits`).
    pub fn observe(
        &mut self,
        sender: u32,
        rule: Rule,
        fast: bool,
        limits: &Limits,
        cap: u32,
        now_s: u32,
    ) -> Outcome {
        let phase = self.circuit.phase(now_s, limits.window_s);
        let count = self.window.add(now_s, limits.window_s);
        self.senders.record(sender, now_s, cap);
        let senders = self
            .senders
            .distinct_since(now_s.saturating_sub(limits.window_s));
        let mut held = false;
        let mut opened = false;
        match phase {
            Phase::Open => held = true,
            Phase::HalfOpen => {
                if self.senders.distinct_since(self.circuit.until) >= half_open_trip(limits.trip) {
                    self.circuit
                        .reopen(now_s, limits.block_s, limits.max_block_s);
                    opened = true;
                }
            }
            Phase::Closed => {
                if senders >= limits.trip {
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
            storm: 0,
            copy: false,
        }
    }

    /// Opens the breaker by hand for `block_s`, whatever its state.
    pub fn trip(&mut self, now_s: u32, block_s: u32, window_s: u32) {
        self.circuit.open(Rule::Manual, now_s, block_s);
        self.touch(now_s, window_s);
    }

    /// Takes in another storm's counts and senders (the keys of both turned out to be one
    /// thread). The breaker stays this storm's: the store keeps the storm whose breaker is
    /// the most open.
    pub fn merge(&mut self, other: &StormState, cap: u32) {
        self.window.merge(&other.window);
        self.senders.merge(&other.senders, cap);
        self.expires = self.expires.max(other.expires);
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
    const CAP: u32 = 16;

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

    fn step(s: &mut StormState, sender: u32, fast: bool, now: u32) -> Outcome {
        s.observe(sender, Rule::Replies, fast, &limits(), CAP, now)
    }

    /// Feeds `n` replies from distinct senders, `gap` seconds apart.
    fn feed(s: &mut StormState, start: u32, n: u32, gap: u32, fast: bool) -> Vec<Outcome> {
        (0..n)
            .map(|i| step(s, 1000 + i, fast, start + i * gap))
            .collect()
    }

    #[test]
    fn the_tenth_sender_passes_and_opens_the_eleventh_is_held() {
        let mut s = StormState::default();
        let out = feed(&mut s, T, 12, M, false);
        assert!(
            out[..9]
                .iter()
                .all(|o| !o.held && !o.opened && o.phase == Phase::Closed)
        );
        assert!(out[9].opened && !out[9].held);
        assert_eq!(out[9].count, 10);
        assert_eq!(out[9].senders, 10);
        assert_eq!(out[9].rule, Rule::Replies);
        assert_eq!(out[9].until, T + 9 * M + 6 * H);
        assert!(out[10].held && !out[10].opened);
        assert!(out[11].held);
        assert_eq!(out[11].senders, 12);
    }

    #[test]
    fn one_sender_posting_to_its_own_thread_never_trips() {
        // An operations desk posts 30 updates to everyone in one hour: one person, no storm.
        let mut s = StormState::default();
        for i in 0..30 {
            let o = step(&mut s, 7, true, T + i * 2 * M);
            assert!(!o.opened && !o.held, "update {i}");
            assert_eq!(o.senders, 1);
        }
        assert!(s.window.count(T + 59 * M, H) >= 26);
        // Nine colleagues reply to it: with the desk, ten people, which trips.
        let out = feed(&mut s, T + 60 * M, 9, M, false);
        assert!(out[8].opened, "{out:?}");
    }

    #[test]
    fn a_few_people_replying_many_times_do_not_trip() {
        let mut s = StormState::default();
        for i in 0..200u32 {
            let o = step(&mut s, i % 9, false, T + i * 10);
            assert!(!o.opened && !o.held, "reply {i}");
        }
    }

    #[test]
    fn replies_spread_wider_than_the_window_never_trip() {
        let mut s = StormState::default();
        // One reply every 7 minutes: never more than 9 people in an hour.
        let out = feed(&mut s, T, 200, 7 * M, false);
        assert!(out.iter().all(|o| !o.held && !o.opened));
    }

    #[test]
    fn fast_trip_on_distinct_senders_for_huge_audiences_only() {
        let mut s = StormState::default();
        let out = feed(&mut s, T, 6, 20, true);
        assert!(out[4].opened);
        assert_eq!(out[4].rule, Rule::Fast);
        assert!(out[5].held);

        let mut s = StormState::default();
        let out = feed(&mut s, T, 6, 20, false);
        assert!(out.iter().all(|o| !o.opened && !o.held));
    }

    #[test]
    fn half_open_storm_reopens_on_distinct_senders_with_a_doubled_block() {
        let mut s = StormState::default();
        feed(&mut s, T, 10, M, false);
        let opened_until = s.circuit.until;
        // One person alone after the block does not re-open it.
        for i in 0..6 {
            let o = step(&mut s, 77, false, opened_until + M + i);
            assert!(!o.opened && !o.held && o.phase == Phase::HalfOpen);
        }
        // The storm resumes just after the block: the fifth person re-opens it.
        let out = feed(&mut s, opened_until + 2 * M, 7, M, false);
        assert!(out.iter().all(|o| o.phase != Phase::Closed));
        assert!(out[..3].iter().all(|o| !o.held && !o.opened));
        assert!(out[3].opened, "{out:?}");
        assert_eq!(out[3].until - out[3].opened_at, 12 * H);
        assert!(out[4].held && out[5].held);
    }

    #[test]
    fn quiet_thread_closes_after_half_open_and_forgets_strikes() {
        let mut s = StormState::default();
        feed(&mut s, T, 10, M, false);
        let until = s.circuit.until;
        let o = step(&mut s, 1, false, until + H + 1);
        assert_eq!(o.phase, Phase::Closed);
        assert!(!o.held && !o.opened);
        assert_eq!(s.circuit.strikes, 0);
    }

    #[test]
    fn first_and_single_messages_are_never_held() {
        let mut s = StormState::default();
        let o = step(&mut s, 1, true, T);
        assert!(!o.held && !o.opened);
        assert_eq!(o.count, 1);
    }

    #[test]
    fn manual_trip_holds_until_the_block_ends() {
        let mut s = StormState::default();
        s.trip(T, 2 * H, H);
        let o = step(&mut s, 1, false, T + H);
        assert!(o.held);
        assert_eq!(o.rule, Rule::Manual);
        let o = step(&mut s, 1, false, T + 2 * H);
        assert!(!o.held);
        assert_eq!(o.phase, Phase::HalfOpen);
    }

    #[test]
    fn me_too_and_wave_rules_are_reported() {
        for rule in [Rule::MeToo, Rule::Wave] {
            let mut s = StormState::default();
            let l = Limits {
                trip: 3,
                ..limits()
            };
            for i in 0..2 {
                assert!(!s.observe(i, rule, false, &l, CAP, T + i).opened);
            }
            // The same two again: still two people.
            assert!(!s.observe(1, rule, false, &l, CAP, T + 3).opened);
            let o = s.observe(9, rule, false, &l, CAP, T + 5);
            assert!(o.opened);
            assert_eq!(o.rule, rule);
        }
    }

    #[test]
    fn merging_adds_counts_and_senders_and_keeps_the_breaker() {
        let mut a = StormState::default();
        feed(&mut a, T, 10, 1, false);
        assert!(a.guarding(T + 20));
        let mut b = StormState::default();
        for i in 0..4 {
            step(&mut b, 5000 + i, false, T + 30 + i);
        }
        let until = a.circuit.until;
        let a_before = a.clone();
        a.merge(&b, CAP);
        assert_eq!(a.circuit.until, until);
        assert_eq!(a.window.count(T + 40, H), 14);
        assert_eq!(a.senders.distinct_since(T), 14);
        // Merged the other way, the closed storm takes the counts but not the breaker.
        let mut b2 = b.clone();
        b2.merge(&a_before, CAP);
        assert_eq!(b2.circuit, Circuit::default());
        assert_eq!(b2.window.count(T + 40, H), 14);
    }

    #[test]
    fn expiry_covers_the_window_and_the_block() {
        let mut s = StormState::default();
        step(&mut s, 1, false, T);
        assert!(!s.expired(T + H - 1));
        assert!(s.expired(T + H));
        assert!(!s.guarding(T));
        feed(&mut s, T, 10, 1, false);
        assert!(s.guarding(T + 6 * H + H));
        assert!(!s.expired(T + 8 * H - 1));
        assert!(s.expired(T + 8 * H + 10));
    }

    #[test]
    fn copies_open_nothing() {
        let mut s = StormState::default();
        let out = feed(&mut s, T, 10, 1, false);
        let copy = out[9].as_copy();
        assert!(copy.copy && !copy.opened);
        assert_eq!(copy.until, out[9].until);
    }

    #[test]
    fn links_outlive_any_state_they_could_join() {
        let l = limits();
        assert_eq!(l.link_s(), 48 * H + 2 * H);
    }
}
