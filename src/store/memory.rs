//! The in-process state store: a `DashMap` of thread key -> `ThreadState` (100 bytes), bounded
//! by TTL expiry and a hard cap. A queue of keys in insertion order drives both: every
//! observation examines two keys at its front (expired ones are dropped, live ones go to the
//! back), and beyond `max_threads` the front key is forgotten, skipping (a few times) keys whose
//! breaker is open, so a flood of unique threads cannot push an open breaker out.

use super::{BreakerStatus, ObserveRequest, StateStore, StoreError, to_secs};
use crate::breaker::{Limits, Outcome, Phase, ThreadState};
use crate::fingerprint::ThreadKey;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Keys examined for expiry per observation.
const SWEEP_PER_OBSERVE: usize = 2;
/// Open breakers skipped per eviction before one is evicted anyway.
const EVICTION_SKIPS: usize = 4;

/// Thread key ids are already well-mixed 64-bit hashes: use them as they are.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<V> = DashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// What is remembered of a breaker that opened, for `open_breakers`.
struct OpenInfo {
    label: Box<str>,
    window_s: u32,
}

pub struct MemoryStore {
    threads: IdMap<ThreadState>,
    /// Every key in `threads` exactly once, oldest (or least recently examined) first.
    order: Mutex<VecDeque<u64>>,
    /// Labels of keys whose breaker opened; pruned when they close or are forgotten.
    opened: IdMap<OpenInfo>,
    len: AtomicUsize,
    max_threads: usize,
    evictions: AtomicU64,
}

impl MemoryStore {
    /// A store that tracks at most `max_threads` thread keys.
    pub fn new(max_threads: usize) -> MemoryStore {
        MemoryStore {
            threads: IdMap::default(),
            order: Mutex::new(VecDeque::new()),
            opened: IdMap::default(),
            len: AtomicUsize::new(0),
            max_threads: max_threads.max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys forgotten because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn order(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        // A panic while holding this lock cannot leave the queue inconsistent (push/pop only).
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `step` to the key's state, creating it when absent. Returns the step's result.
    fn with_state<R>(&self, id: u64, step: impl FnOnce(&mut ThreadState) -> R) -> R {
        match self.threads.entry(id) {
            Entry::Occupied(mut e) => step(e.get_mut()),
            Entry::Vacant(e) => {
                let mut state = ThreadState::default();
                let result = step(&mut state);
                e.insert(state);
                // The entry lock is released before the queue lock is taken (no lock order).
                self.len.fetch_add(1, Ordering::Relaxed);
                self.order().push_back(id);
                result
            }
        }
    }

    fn forget(&self, id: u64) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        self.opened.remove(&id);
    }

    /// Drops expired keys at the queue's front, moving live ones to the back.
    fn sweep(&self, now_s: u32) {
        for _ in 0..SWEEP_PER_OBSERVE {
            let Some(id) = self.order().pop_front() else {
                return;
            };
            if self
                .threads
                .remove_if(&id, |_, s| s.expired(now_s))
                .is_some()
            {
                self.forget(id);
            } else if self.threads.contains_key(&id) {
                self.order().push_back(id);
            }
        }
    }

    /// Forgets keys until the table is within its cap.
    fn enforce_cap(&self, now_s: u32) {
        while self.len() > self.max_threads {
            let mut evicted = false;
            for attempt in 0..=EVICTION_SKIPS {
                let Some(id) = self.order().pop_front() else {
                    return;
                };
                let last_chance = attempt == EVICTION_SKIPS;
                let removed = self
                    .threads
                    .remove_if(&id, |_, s| last_chance || !s.guarding(now_s));
                if removed.is_some() {
                    self.forget(id);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    evicted = true;
                    break;
                } else if self.threads.contains_key(&id) {
                    self.order().push_back(id);
                }
            }
            if !evicted {
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn observe(&self, req: &ObserveRequest<'_>) -> Result<Vec<Outcome>, StoreError> {
        let now_s = to_secs(req.now_ms);
        let mut outcomes = Vec::with_capacity(req.keys.len());
        for key in req.keys {
            let outcome = self.with_state(key.id, |s| {
                s.observe(req.sender, req.rule, req.fast, &req.limits, now_s)
            });
            if outcome.opened {
                self.opened.insert(
                    key.id,
                    OpenInfo {
                        label: key.label.clone(),
                        window_s: req.limits.window_s,
                    },
                );
            }
            outcomes.push(outcome);
        }
        self.sweep(now_s);
        self.enforce_cap(now_s);
        Ok(outcomes)
    }

    async fn trip(&self, key: &ThreadKey, limits: &Limits, now_ms: u64) -> Result<(), StoreError> {
        let now_s = to_secs(now_ms);
        self.with_state(key.id, |s| s.trip(now_s, limits.block_s, limits.window_s));
        self.opened.insert(
            key.id,
            OpenInfo {
                label: key.label.clone(),
                window_s: limits.window_s,
            },
        );
        self.enforce_cap(now_s);
        Ok(())
    }

    async fn reset(&self, key: &ThreadKey) -> Result<bool, StoreError> {
        // The entry stays (it expires through the queue like any other), its state is cleared.
        let existed = match self.threads.get_mut(&key.id) {
            Some(mut s) => {
                let expires = s.expires;
                *s = ThreadState {
                    expires,
                    ..ThreadState::default()
                };
                true
            }
            None => false,
        };
        self.opened.remove(&key.id);
        Ok(existed)
    }

    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError> {
        let now_s = to_secs(now_ms);
        let mut open = Vec::new();
        let mut closed = Vec::new();
        for info in self.opened.iter() {
            let id = *info.key();
            let Some(mut state) = self.threads.get(&id).map(|s| *s) else {
                closed.push(id);
                continue;
            };
            let phase = state.circuit.phase(now_s, info.window_s);
            if phase == Phase::Closed {
                closed.push(id);
                continue;
            }
            open.push(BreakerStatus {
                key: info.label.to_string(),
                breaker: state.circuit.rule.name(),
                phase,
                opened_at_ms: u64::from(state.circuit.opened_at) * 1000,
                until_ms: u64::from(state.circuit.until) * 1000,
                replies: state.window.count(now_s, info.window_s),
                senders: state
                    .senders
                    .distinct_since(now_s.saturating_sub(info.window_s)),
            });
        }
        for id in closed {
            self.opened.remove(&id);
        }
        open.sort_by(|a, b| b.opened_at_ms.cmp(&a.opened_at_ms).then(a.key.cmp(&b.key)));
        Ok(open)
    }

    async fn tracked(&self) -> Result<usize, StoreError> {
        Ok(self.len())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Rule;

    const T_MS: u64 = 1_700_000_000_000;
    const H: u32 = 3600;

    fn limits() -> Limits {
        Limits {
            trip: 3,
            window_s: H,
            block_s: 6 * H,
            max_block_s: 48 * H,
            fast_senders: 0,
            fast_window_s: 300,
        }
    }

    async fn observe(
        store: &MemoryStore,
        keys: &[ThreadKey],
        sender: u32,
        now_ms: u64,
    ) -> Vec<Outcome> {
        store
            .observe(&ObserveRequest {
                keys,
                sender,
                rule: Rule::Replies,
                fast: false,
                limits: limits(),
                now_ms,
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn counts_per_key_and_opens_at_the_threshold() {
        let store = MemoryStore::new(100);
        let a = ThreadKey::new("mid:a@x");
        let s = ThreadKey::new("subj:hello");
        observe(&store, &[a.clone(), s.clone()], 1, T_MS).await;
        observe(&store, std::slice::from_ref(&s), 2, T_MS + 1000).await;
        let out = observe(&store, &[a.clone(), s.clone()], 3, T_MS + 2000).await;
        assert_eq!(out[0].count, 2);
        assert!(!out[0].opened);
        assert_eq!(out[1].count, 3);
        assert!(out[1].opened);
        assert_eq!(store.len(), 2);
        let open = store.open_breakers(T_MS + 3000).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].key, "subj:hello");
        assert_eq!(open[0].breaker, "replies");
        assert_eq!(open[0].replies, 3);
        assert_eq!(open[0].senders, 3);
        assert_eq!(open[0].phase, Phase::Open);
        let out = observe(&store, &[a.clone(), s.clone()], 4, T_MS + 4000).await;
        assert!(!out[0].held && out[1].held);
    }

    #[tokio::test]
    async fn manual_trip_and_reset() {
        let store = MemoryStore::new(100);
        let k = ThreadKey::new("subj:x");
        store.trip(&k, &limits(), T_MS).await.unwrap();
        let out = observe(&store, std::slice::from_ref(&k), 1, T_MS + 1000).await;
        assert!(out[0].held);
        assert_eq!(out[0].rule, Rule::Manual);
        assert_eq!(
            store.open_breakers(T_MS).await.unwrap()[0].breaker,
            "manual"
        );
        assert!(store.reset(&k).await.unwrap());
        assert!(store.open_breakers(T_MS).await.unwrap().is_empty());
        let out = observe(&store, std::slice::from_ref(&k), 1, T_MS + 2000).await;
        assert!(!out[0].held);
        assert_eq!(out[0].count, 1);
        assert!(
            !store
                .reset(&ThreadKey::new("subj:never seen"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn expired_keys_are_swept() {
        let store = MemoryStore::new(1000);
        for i in 0..10 {
            observe(&store, &[ThreadKey::new(&format!("mid:{i}@x"))], 1, T_MS).await;
        }
        assert_eq!(store.len(), 10);
        // Two hours later every key is expired; each observation sweeps two.
        for _ in 0..10 {
            observe(
                &store,
                &[ThreadKey::new("mid:live@x")],
                1,
                T_MS + 2 * 3_600_000,
            )
            .await;
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.evictions(), 0);
    }

    #[tokio::test]
    async fn cap_holds_under_a_flood_and_open_breakers_survive() {
        let store = MemoryStore::new(50);
        let storm = ThreadKey::new("subj:storm");
        for sender in 0..3 {
            observe(&store, std::slice::from_ref(&storm), sender, T_MS).await;
        }
        for i in 0..10_000 {
            observe(
                &store,
                &[ThreadKey::new(&format!("mid:{i}@flood"))],
                9,
                T_MS + 1000,
            )
            .await;
            assert!(store.len() <= 50);
        }
        assert!(store.evictions() >= 9_950);
        let out = observe(&store, std::slice::from_ref(&storm), 7, T_MS + 2000).await;
        assert!(out[0].held, "the open breaker was evicted by the flood");
    }

    #[tokio::test]
    async fn closed_breakers_drop_out_of_the_open_list() {
        let store = MemoryStore::new(100);
        let k = ThreadKey::new("subj:x");
        store.trip(&k, &limits(), T_MS).await.unwrap();
        let after = T_MS + u64::from(6 * H + H + 1) * 1000;
        assert!(store.open_breakers(after).await.unwrap().is_empty());
        assert!(store.opened.is_empty());
    }
}
