//! The circuit breaker of one thread key: closed -> open (for the block) -> half-open (for one
//! window after the block) -> closed when quiet, or open again with a doubled block (capped)
//! when the storm resumes.

/// Which rule opened a breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rule {
    /// Wide replies from `trip_replies` distinct senders in the window.
    #[default]
    Replies = 0,
    /// `fast_senders` distinct senders within `fast_window` to a very large audience.
    Fast = 1,
    /// New wide messages with one subject to one audience from `me_too_messages` senders.
    MeToo = 2,
    /// An administrator tripped it.
    Manual = 3,
    /// New threads to one wide audience from `wave_senders` distinct senders in `wave_window`.
    Wave = 4,
    /// An automatic reply (out of office, RFC 3834) to a wide audience: held from the first,
    /// never counted.
    AutoReply = 5,
}

impl Rule {
    /// Every rule, in the order of their numbers.
    pub const ALL: [Rule; 6] = [
        Rule::Replies,
        Rule::Fast,
        Rule::MeToo,
        Rule::Manual,
        Rule::Wave,
        Rule::AutoReply,
    ];

    /// The word used in logs, verdicts and alerts.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Replies => "replies",
            Rule::Fast => "fast",
            Rule::MeToo => "me-too",
            Rule::Manual => "manual",
            Rule::Wave => "wave",
            Rule::AutoReply => "auto-reply",
        }
    }

    /// The rule a name (`Rule::name`) stands for.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn from_u8(v: u8) -> Rule {
        match v {
            1 => Rule::Fast,
            2 => Rule::MeToo,
            3 => Rule::Manual,
            4 => Rule::Wave,
            5 => Rule::AutoReply,
            _ => Rule::Replies,
        }
    }
}

/// Where a breaker stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Closed,
    Open,
    /// After a block, for one window: replies pass, and a resumed storm re-opens it sooner.
    HalfOpen,
}

impl Phase {
    /// Open above half-open above closed: which of several storms a merge keeps.
    pub fn rank(self) -> u8 {
        match self {
            Phase::Closed => 0,
            Phase::HalfOpen => 1,
            Phase::Open => 2,
        }
    }
}

/// Longest run of re-opens remembered (the block stops doubling long before).
const MAX_STRIKES: u8 = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Circuit {
    /// Unix seconds; 0 = never opened (or closed again).
    pub opened_at: u32,
    /// End of the current block, Unix seconds; 0 = closed.
    pub until: u32,
    /// Re-opens in a row; each doubles the block.
    pub strikes: u8,
    pub rule: Rule,
}

/// Distinct senders in half-open that re-open the breaker: half of the threshold (at least 1),
/// because a storm that resumes after its block is no longer a surprise.
pub fn half_open_trip(trip: u32) -> u32 {
    trip.div_ceil(2).max(1)
}

/// Block length after `strikes` re-opens: `block_s * 2^strikes`, at most `max_block_s`.
pub fn block_after(strikes: u8, block_s: u32, max_block_s: u32) -> u32 {
    let doubled = u64::from(block_s) << strikes.min(32);
    doubled.min(u64::from(max_block_s.max(block_s))) as u32
}

impl Circuit {
    /// The phase at `now_s`; a breaker whose half-open time ran out quietly is closed here
    /// (`strikes` forgotten).
    pub fn phase(&mut self, now_s: u32, half_open_s: u32) -> Phase {
        let phase = self.peek(now_s, half_open_s);
        if phase == Phase::Closed && self.until != 0 {
            *self = Circuit::default();
        }
        phase
    }

    /// The phase at `now_s`, changing nothing.
    pub fn peek(&self, now_s: u32, half_open_s: u32) -> Phase {
        if self.until == 0 {
            Phase::Closed
        } else if now_s < self.until {
            Phase::Open
        } else if now_s < self.until.saturating_add(half_open_s) {
            Phase::HalfOpen
        } else {
            Phase::Closed
        }
    }

    /// Opens for the first time (or after closing).
    pub fn open(&mut self, rule: Rule, now_s: u32, block_s: u32) {
        *self = Circuit {
            opened_at: now_s,
            until: now_s.saturating_add(block_s),
            strikes: 0,
            rule,
        };
    }

    /// Re-opens from half-open with a doubled block, capped at `max_block_s`.
    pub fn reopen(&mut self, now_s: u32, block_s: u32, max_block_s: u32) {
        let strikes = self.strikes.saturating_add(1).min(MAX_STRIKES);
        let rule = self.rule;
        *self = Circuit {
            opened_at: now_s,
            until: now_s.saturating_add(block_after(strikes, block_s, max_block_s)),
            strikes,
            rule,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 1_700_000_000;
    const H: u32 = 3600;

    #[test]
    fn new_circuit_is_closed() {
        assert_eq!(Circuit::default().phase(T, H), Phase::Closed);
    }

    #[test]
    fn open_then_half_open_then_closed() {
        let mut c = Circuit::default();
        c.open(Rule::Replies, T, 6 * H);
        assert_eq!(c.phase(T, H), Phase::Open);
        assert_eq!(c.phase(T + 6 * H - 1, H), Phase::Open);
        assert_eq!(c.phase(T + 6 * H, H), Phase::HalfOpen);
        assert_eq!(c.phase(T + 7 * H - 1, H), Phase::HalfOpen);
        assert_eq!(c.phase(T + 7 * H, H), Phase::Closed);
        assert_eq!(c, Circuit::default());
    }

    #[test]
    fn reopen_doubles_the_block_up_to_the_cap() {
        let mut c = Circuit::default();
        c.open(Rule::Fast, T, 6 * H);
        let mut now = T + 6 * H;
        let mut blocks = Vec::new();
        for _ in 0..5 {
            c.reopen(now, 6 * H, 48 * H);
            blocks.push((c.until - now) / H);
            assert_eq!(c.rule, Rule::Fast);
            now = c.until;
        }
        assert_eq!(blocks, [12, 24, 48, 48, 48]);
    }

    #[test]
    fn block_after_never_overflows() {
        assert_eq!(block_after(200, u32::MAX, u32::MAX), u32::MAX);
        assert_eq!(block_after(0, 10, 5), 10); // a cap below the block is the block
        assert_eq!(block_after(3, 10, 1000), 80);
    }

    #[test]
    fn half_open_threshold_is_half_rounded_up() {
        assert_eq!(half_open_trip(10), 5);
        assert_eq!(half_open_trip(3), 2);
        assert_eq!(half_open_trip(1), 1);
        assert_eq!(half_open_trip(0), 1);
    }

    #[test]
    fn rule_round_trips_through_u8() {
        for r in Rule::ALL {
            assert_eq!(Rule::from_u8(r as u8), r);
            assert_eq!(Rule::from_name(r.name()), Some(r));
        }
        assert_eq!(Rule::from_u8(99), Rule::Replies);
    }

    #[test]
    fn open_near_the_end_of_time_saturates() {
        let mut c = Circuit::default();
        c.open(Rule::Manual, u32::MAX - 5, 100);
        assert_eq!(c.until, u32::MAX);
        assert_eq!(c.phase(u32::MAX - 1, H), Phase::Open);
    }
}
