//! Where breaker state lives. One call per decision (`observe`), so that the Redis backend can
//! run it as a single Lua script (EVALSHA) and the in-process backend under one lock.
//!
//! Contract for every backend (`tests/it/redis/store.rs` holds the two to it), per
//! `ObserveRequest`, atomically:
//! 1. **Copies.** With `message` set and a record of that message still fresh, nothing is
//!    counted: each counter gets the recorded outcome as a copy (`Outcome::as_copy`).
//! 2. **Storms.** For each counter, its keys are resolved to storms: a key is either the key
//!    that started a storm (it holds the storm's state and label) or a link to one (followed,
//!    at most `MAX_LINK_HOPS`); expired states and links resolve to nothing. No storm: one is
//!    started at the first key. Several: the first, in key order, whose breaker is the most
//!    open (open, half-open, closed) keeps its state and takes in the others'
//!    (`StormState::merge`); they become links to it. Every key of the counter is then linked
//!    to the storm for `Limits::link_s` (refreshed each time it is seen), and the storm's
//!    `MAX_MEMBERS` first other keys are kept, by label, for listings and snapshots.
//! 3. `StormState::observe` on the storm; the outcome names the storm (`Outcome::storm`, and
//!    its label when the message is held or opened the breaker).
//! 4. With `message` set, the outcomes are recorded for `message.1` seconds.
//!
//! A storm whose breaker opened is also indexed for `open_breakers`. Manual trips and resets
//! resolve the key the same way (a trip starts a storm at an unknown key; a reset of an unknown
//! key is `None`).

pub mod memory;
pub mod redis;
pub mod redis_link;
pub mod snapshot;

pub use self::redis::RedisStore;
pub use memory::MemoryStore;

use crate::breaker::{Limits, Outcome, Phase, Rule};
use crate::fingerprint::ThreadKey;

/// A state backend failed; the engine then falls back as `state.on_unavailable` says.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store did not answer within {0} ms")]
    Timeout(u64),
    #[error("state store error: {0}")]
    Backend(String),
}

/// Links followed from a key to its storm (merges make chains; each observation shortens the
/// ones it meets).
pub const MAX_LINK_HOPS: usize = 8;
/// Other keys of a storm kept by label (for `breaker list` and snapshots).
pub const MAX_MEMBERS: usize = 8;

/// One breaker a message is counted by: its keys (joined into one storm), rule and limits.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    /// Most specific first; the first starts the storm when none of them belongs to one.
    pub keys: &'a [ThreadKey],
    /// `Replies` for replies, `MeToo` and `Wave` for new messages.
    pub rule: Rule,
    pub limits: Limits,
}

/// One wide message to count.
#[derive(Debug, Clone, Copy)]
pub struct ObserveRequest<'a> {
    pub counters: &'a [Counter<'a>],
    /// 32-bit hash of the sender's address (lowercased).
    pub sender: u32,
    /// The audience reaches `policy.fast_audience`.
    pub fast: bool,
    /// Senders kept per storm: the largest sender threshold of the policy.
    pub sender_cap: u32,
    /// The message's identity (hash of Message-ID and sender) and how many seconds its copies
    /// get its verdict; `None` for a message without a Message-ID.
    pub message: Option<(u64, u32)>,
    pub now_ms: u64,
}

/// What one counter of an observation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub outcome: Outcome,
    /// The storm's name (the label of the key that started it), when the message is held or
    /// opened the breaker.
    pub storm_label: Option<std::sync::Arc<str>>,
}

/// An open (or half-open) breaker, for admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    /// The storm's id: the label of the key that started it, e.g. `subj:quarterly results`.
    pub key: String,
    /// Other keys joined to the storm (at most `MAX_MEMBERS`).
    pub keys: Vec<String>,
    /// Which rule opened it: `replies`, `fast`, `me-too`, `wave` or `manual`.
    pub breaker: &'static str,
    pub phase: Phase,
    pub opened_at_ms: u64,
    pub until_ms: u64,
    /// Messages and distinct senders in the storm's window now.
    pub replies: u32,
    pub senders: u32,
}

/// A storm as a snapshot keeps it (the in-process store's breakers across restarts).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StormSnapshot {
    pub label: String,
    #[serde(default)]
    pub members: Vec<String>,
    /// The window the breaker opened with (for its half-open time and listings).
    pub open_window_s: u32,
    pub expires: u32,
    pub opened_at: u32,
    pub until: u32,
    pub strikes: u8,
    pub rule: u8,
    pub window_head: u32,
    pub window_counts: Vec<u16>,
    /// (sender hash, last seen) pairs.
    pub senders: Vec<(u32, u32)>,
}

/// Breaker state behind a small async interface: in process (`MemoryStore`) or shared (Redis).
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Counts one wide message in each counter's storm; one result per counter, in order.
    async fn observe(&self, request: &ObserveRequest<'_>) -> Result<Vec<Observed>, StoreError>;

    /// Opens the breaker of the key's storm by hand (rule `manual`) for `limits.block_s`,
    /// starting a storm at the key when it has none. Returns the storm's id (label).
    async fn trip(
        &self,
        key: &ThreadKey,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<String, StoreError>;

    /// Closes the breaker of the key's storm and forgets its counts; the storm's id, or `None`
    /// when the key belongs to no storm.
    async fn reset(&self, key: &ThreadKey, now_ms: u64) -> Result<Option<String>, StoreError>;

    /// Breakers open or half-open at `now_ms`, most recently opened first.
    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError>;

    /// Whether the store answers now (`/ready`); the in-process store always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Entries tracked now (for metrics and tests): the in-process store counts its thread
    /// entries (storms and linked keys, what `max_threads` bounds), Redis its thread and
    /// decided-message keys.
    async fn tracked(&self) -> Result<usize, StoreError>;

    /// `memory` or `redis`, for logs.
    fn backend(&self) -> &'static str;

    /// The storms worth keeping across a restart (open or half-open), for a backend that loses
    /// them with the process; `None` for one that keeps its own (Redis).
    fn snapshot(&self, _now_ms: u64) -> Option<Vec<StormSnapshot>> {
        None
    }

    /// Takes storms back from a snapshot (those not yet expired, and not already known);
    /// returns how many were restored.
    fn restore(&self, _storms: &[StormSnapshot], _now_ms: u64) -> usize {
        0
    }
}

/// Unix milliseconds to the seconds the breaker logic counts in (saturating in 2106).
pub fn to_secs(now_ms: u64) -> u32 {
    (now_ms / 1000).min(u64::from(u32::MAX)) as u32
}
