//! Where breaker state lives. One call per decision (`observe`), so that the Redis backend can
//! run it as a single Lua script (EVALSHA) and the in-process backend under per-key locks.
//!
//! Contract for every backend, per key of an `ObserveRequest` (keys are independent; each key's
//! step is atomic): apply `breaker::ThreadState::observe` to the key's state at `now` and return
//! its `Outcome`, in the order of the keys. The state is plain data: a hash per key with 8 window
//! buckets (bucket number -> count), 8 sender slots (sender hash -> last seen), and the circuit
//! fields (opened_at, until, strikes, rule, probe), expiring at `ThreadState::expires`: all of it
//! fits Redis hashes with HINCRBY/HSET/EXPIREAT inside one script, no read-modify-write across
//! calls. Keys whose breaker ever opened are also kept, with their label, in a set for
//! `open_breakers`.

pub mod memory;
pub mod redis;

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

/// One wide message to count under each of its keys.
#[derive(Debug, Clone, Copy)]
pub struct ObserveRequest<'a> {
    pub keys: &'a [ThreadKey],
    /// 32-bit hash of the sender's address (lowercased).
    pub sender: u32,
    /// `Replies` for replies, `MeToo` for new messages counted by subject and audience.
    pub rule: Rule,
    /// The audience reaches `policy.fast_audience`.
    pub fast: bool,
    pub limits: Limits,
    pub now_ms: u64,
}

/// An open (or half-open) breaker, for admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    /// The thread key's label, e.g. `subj:quarterly results`.
    pub key: String,
    /// Which rule opened it: `replies`, `fast`, `me-too` or `manual`.
    pub breaker: &'static str,
    pub phase: Phase,
    pub opened_at_ms: u64,
    pub until_ms: u64,
    /// Messages and distinct senders in the thread's window now.
    pub replies: u32,
    pub senders: u32,
}

/// Breaker state behind a small async interface: in process (`MemoryStore`) or shared (Redis).
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Counts one wide message under each key and returns each key's outcome, in key order.
    async fn observe(&self, request: &ObserveRequest<'_>) -> Result<Vec<Outcome>, StoreError>;

    /// Opens a key's breaker by hand (rule `manual`) for `limits.block_s`.
    async fn trip(&self, key: &ThreadKey, limits: &Limits, now_ms: u64) -> Result<(), StoreError>;

    /// Closes a key's breaker and forgets its counts; true when there was state to reset.
    async fn reset(&self, key: &ThreadKey) -> Result<bool, StoreError>;

    /// Breakers open or half-open at `now_ms`, most recently opened first.
    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError>;

    /// Whether the store answers now (`/ready`); the in-process store always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Thread keys currently tracked (for metrics and tests).
    async fn tracked(&self) -> Result<usize, StoreError>;

    /// `memory` or `redis`, for logs.
    fn backend(&self) -> &'static str;
}

/// Unix milliseconds to the seconds the breaker logic counts in (saturating in 2106).
pub fn to_secs(now_ms: u64) -> u32 {
    (now_ms / 1000).min(u64::from(u32::MAX)) as u32
}
