//! The in-process state store: one table of key id -> entry (a storm, a link to a storm, or the
//! record of a decided message) under one lock, bounded by TTL expiry and a hard cap.
//!
//! One lock, not one per key: a decision touches several entries at once (a message's keys, the
//! storms they join, its copy record), each step takes about a microsecond, and mail arrives at
//! thousands per second at most, so contention is negligible and every step is atomic as the
//! Redis script's is. A queue of ids in insertion order drives expiry and the cap: every
//! observation examines two ids at its front (expired entries are dropped, live ones go to the
//! back), and beyond `max_threads` the front entry is forgotten, skipping (a few times) those
//! whose breaker is open, so a flood of unique threads cannot push an open breaker out.

use super::{
    BreakerStatus, Counter, MAX_LINK_HOPS, MAX_MEMBERS, ObserveRequest, Observed, StateStore,
    StoreError, StormSnapshot, to_secs,
};
use crate::breaker::{Circuit, Limits, Phase, Rule, Senders, StormState, Window};
use crate::fingerprint::ThreadKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Ids examined for expiry per observation.
const SWEEP_PER_OBSERVE: usize = 2;
/// Open breakers skipped per eviction before one is evicted anyway.
const EVICTION_SKIPS: usize = 4;

/// Key ids are already well-mixed 64-bit hashes: use them as they are.
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

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A storm, kept at the id of the key that started it.
#[derive(Debug)]
struct Storm {
    state: StormState,
    /// The starting key's label: the storm's name.
    label: Box<str>,
    /// Labels of other keys joined to it, at most `MAX_MEMBERS` (a boxed slice: most storms
    /// have one key or two, and a million of them are tracked at once).
    members: Box<[Box<str>]>,
    /// The window its breaker last opened with (its half-open time).
    open_window: u32,
}

impl Storm {
    fn new(label: &str) -> Storm {
        Storm {
            state: StormState::default(),
            label: label.into(),
            members: Box::default(),
            open_window: 0,
        }
    }

    fn add_member(&mut self, label: &str) {
        if *self.label != *label
            && self.members.len() < MAX_MEMBERS
            && !self.members.iter().any(|m| **m == *label)
        {
            let mut members = std::mem::take(&mut self.members).into_vec();
            members.push(label.into());
            self.members = members.into_boxed_slice();
        }
    }
}

#[derive(Debug)]
enum Entry {
    Storm(Box<Storm>),
    /// A key joined to the storm at `storm`, until `expires` (Unix seconds).
    Link {
        storm: u64,
        expires: u32,
    },
}

impl Entry {
    fn expired(&self, now_s: u32) -> bool {
        match self {
            Entry::Storm(s) => s.state.expired(now_s),
            Entry::Link { expires, .. } => now_s >= *expires,
        }
    }
}

/// A decided message: its copies get these outcomes until `expires`. The first (usually the
/// only) outcome is kept inline: one is recorded per wide message.
#[derive(Debug)]
struct Seen {
    expires: u32,
    first: Observed,
    more: Vec<Observed>,
}

#[derive(Default)]
struct Inner {
    entries: IdMap<Entry>,
    /// Every id in `entries` exactly once, oldest (or least recently examined) first.
    order: VecDeque<u64>,
    /// Storms whose breaker opened; pruned when they close, merge or are forgotten.
    opened: HashSet<u64, BuildHasherDefault<IdHasher>>,
    /// Decided messages, and their ids in the order they were recorded, which is the order
    /// they expire in (every record lives `copies_window`; a shorter one may wait a little).
    seen: IdMap<Seen>,
    seen_order: VecDeque<(u64, u32)>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_threads: usize,
    evictions: AtomicU64,
}

impl MemoryStore {
    /// A store that tracks at most `max_threads` thread entries (storms and the keys linked to
    /// them) and, apart, at most `max_threads` records of decided messages (short-lived: they
    /// only make the copies of a split message one decision).
    pub fn new(max_threads: usize) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            max_threads: max_threads.max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Thread entries tracked now: storms and linked keys (what `max_threads` bounds).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries forgotten because the table was full.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a half-updated storm: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// The storm a key belongs to at `now_s`, following links.
    fn resolve(&self, id: u64, now_s: u32) -> Option<u64> {
        let mut id = id;
        for _ in 0..=MAX_LINK_HOPS {
            match self.entries.get(&id)? {
                Entry::Storm(s) => return (!s.state.expired(now_s)).then_some(id),
                Entry::Link { storm, expires } => {
                    if now_s >= *expires {
                        return None;
                    }
                    id = *storm;
                }
            }
        }
        None
    }

    fn storm(&self, id: u64) -> Option<&Storm> {
        match self.entries.get(&id) {
            Some(Entry::Storm(s)) => Some(s),
            _ => None,
        }
    }

    fn storm_mut(&mut self, id: u64) -> &mut Storm {
        match self.entries.get_mut(&id) {
            Some(Entry::Storm(s)) => s,
            _ => unreachable!("resolved storms are storm entries"),
        }
    }

    /// Sets an id's entry, queueing it when new.
    fn put(&mut self, id: u64, entry: Entry) {
        if self.entries.insert(id, entry).is_none() {
            self.order.push_back(id);
        }
    }

    /// Step 2 and 3 of the contract for one counter.
    fn observe_counter(&mut self, c: &Counter<'_>, req: &ObserveRequest<'_>, now: u32) -> Observed {
        let link_expires = now.saturating_add(c.limits.link_s());
        // A message has at most four thread keys: the storms they resolve to fit on the stack.
        let mut found = [0u64; 8];
        let mut spilled = Vec::new();
        let mut n = 0;
        for key in c.keys {
            if let Some(s) = self.resolve(key.id, now)
                && !found[..n].contains(&s)
                && !spilled.contains(&s)
            {
                if n < found.len() {
                    found[n] = s;
                    n += 1;
                } else {
                    spilled.push(s);
                }
            }
        }
        let storms: &[u64] = if spilled.is_empty() {
            &found[..n]
        } else {
            spilled.splice(0..0, found);
            &spilled
        };
        let fresh = storms.is_empty();
        let survivor = if fresh {
            let first = &c.keys[0];
            self.put(first.id, Entry::Storm(Box::new(Storm::new(&first.label))));
            first.id
        } else {
            let rank = |id: u64| {
                self.storm(id)
                    .map_or(0, |s| s.state.circuit.peek(now, c.limits.window_s).rank())
            };
            let mut best = storms[0];
            let mut best_rank = rank(best);
            for &s in &storms[1..] {
                let r = rank(s);
                if r > best_rank {
                    best = s;
                    best_rank = r;
                }
            }
            best
        };
        for &other in storms {
            if other == survivor {
                continue;
            }
            let link = Entry::Link {
                storm: survivor,
                expires: link_expires,
            };
            let Some(Entry::Storm(absorbed)) = self.entries.insert(other, link) else {
                continue;
            };
            self.opened.remove(&other);
            let storm = self.storm_mut(survivor);
            storm.state.merge(&absorbed.state, req.sender_cap);
            storm.add_member(&absorbed.label);
            for m in &absorbed.members {
                storm.add_member(m);
            }
        }
        for key in c.keys {
            if key.id == survivor {
                continue;
            }
            // A key already joined keeps its place among the members, unless the storm is
            // new (an earlier one expired while its links lived on). An expired link is no
            // link (the sweep may have dropped it already, Redis keeps it a while).
            let joined = match self.entries.get_mut(&key.id) {
                Some(Entry::Link { storm, expires }) if *storm == survivor && now < *expires => {
                    *expires = (*expires).max(link_expires);
                    true
                }
                _ => {
                    self.put(
                        key.id,
                        Entry::Link {
                            storm: survivor,
                            expires: link_expires,
                        },
                    );
                    false
                }
            };
            if fresh || !joined {
                self.storm_mut(survivor).add_member(&key.label);
            }
        }
        let storm = self.storm_mut(survivor);
        let mut outcome =
            storm
                .state
                .observe(req.sender, c.rule, req.fast, &c.limits, req.sender_cap, now);
        outcome.storm = survivor;
        if outcome.opened {
            storm.open_window = c.limits.window_s;
        }
        let storm_label = (outcome.held || outcome.opened).then(|| Arc::from(&*storm.label));
        if outcome.opened {
            self.opened.insert(survivor);
        }
        Observed {
            outcome,
            storm_label,
        }
    }

    /// True while dropping the entry would forget an open breaker.
    fn guarding(&self, entry: &Entry, now_s: u32) -> bool {
        match entry {
            Entry::Storm(s) => s.state.guarding(now_s),
            Entry::Link { storm, expires } => {
                now_s < *expires && self.storm(*storm).is_some_and(|s| s.state.guarding(now_s))
            }
        }
    }

    fn forget(&mut self, id: u64) {
        self.entries.remove(&id);
        self.opened.remove(&id);
    }

    /// Drops the records of decided messages that expired (and the oldest beyond `max`).
    fn sweep_seen(&mut self, now_s: u32, max: usize) {
        while let Some(&(id, expires)) = self.seen_order.front() {
            if now_s < expires && self.seen_order.len() <= max {
                return;
            }
            self.seen_order.pop_front();
            // A record written again later (another copy after expiry) has a later expiry:
            // it stays until its own turn comes.
            if self.seen.get(&id).is_some_and(|s| s.expires <= expires) {
                self.seen.remove(&id);
            }
        }
    }

    /// Drops expired entries at the queue's front, moving live ones to the back.
    fn sweep(&mut self, now_s: u32) {
        for _ in 0..SWEEP_PER_OBSERVE {
            let Some(id) = self.order.pop_front() else {
                return;
            };
            match self.entries.get(&id) {
                Some(e) if e.expired(now_s) => self.forget(id),
                Some(_) => self.order.push_back(id),
                None => {}
            }
        }
    }

    /// Forgets entries until the table is within its cap; returns how many.
    fn enforce_cap(&mut self, now_s: u32, max: usize) -> u64 {
        let mut evicted = 0;
        while self.entries.len() > max {
            let mut done = false;
            for attempt in 0..=EVICTION_SKIPS {
                let Some(id) = self.order.pop_front() else {
                    return evicted;
                };
                let Some(entry) = self.entries.get(&id) else {
                    continue;
                };
                if attempt == EVICTION_SKIPS || !self.guarding(entry, now_s) {
                    self.forget(id);
                    evicted += 1;
                    done = true;
                    break;
                }
                self.order.push_back(id);
            }
            if !done {
                return evicted;
            }
        }
        evicted
    }

    fn status(&self, id: u64, now_s: u32) -> Option<BreakerStatus> {
        let storm = self.storm(id)?;
        let state = &storm.state;
        if state.expired(now_s) {
            return None;
        }
        let phase = state.circuit.peek(now_s, storm.open_window);
        if phase == Phase::Closed {
            return None;
        }
        Some(BreakerStatus {
            key: storm.label.to_string(),
            keys: storm.members.iter().map(|m| m.to_string()).collect(),
            breaker: state.circuit.rule.name(),
            phase,
            opened_at_ms: u64::from(state.circuit.opened_at) * 1000,
            until_ms: u64::from(state.circuit.until) * 1000,
            replies: state.window.count(now_s, storm.open_window),
            senders: state
                .senders
                .distinct_since(now_s.saturating_sub(storm.open_window)),
        })
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    async fn observe(&self, req: &ObserveRequest<'_>) -> Result<Vec<Observed>, StoreError> {
        let now = to_secs(req.now_ms);
        let mut inner = self.lock();
        inner.sweep_seen(now, self.max_threads);
        if let Some((message, _)) = req.message
            && let Some(seen) = inner.seen.get(&message)
            && now < seen.expires
        {
            let copy = |o: &Observed| Observed {
                outcome: o.outcome.as_copy(),
                storm_label: o.storm_label.clone(),
            };
            return Ok(std::iter::once(&seen.first)
                .chain(&seen.more)
                .map(copy)
                .collect());
        }
        let mut out = Vec::with_capacity(req.counters.len());
        for counter in req.counters {
            if counter.keys.is_empty() {
                continue;
            }
            out.push(inner.observe_counter(counter, req, now));
        }
        if let Some((message, ttl)) = req.message
            && let Some(first) = out.first()
        {
            let expires = now.saturating_add(ttl.max(1));
            let record = Seen {
                expires,
                first: first.clone(),
                more: out[1..].to_vec(),
            };
            // A record replaced (its message came again after it expired) leaves its old
            // place in the queue, which `sweep_seen` then passes over.
            inner.seen.insert(message, record);
            inner.seen_order.push_back((message, expires));
        }
        inner.sweep(now);
        let evicted = inner.enforce_cap(now, self.max_threads);
        drop(inner);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn trip(
        &self,
        key: &ThreadKey,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        let now = to_secs(now_ms);
        let mut inner = self.lock();
        let id = match inner.resolve(key.id, now) {
            Some(id) => id,
            None => {
                inner.put(key.id, Entry::Storm(Box::new(Storm::new(&key.label))));
                key.id
            }
        };
        let storm = inner.storm_mut(id);
        storm.state.trip(now, limits.block_s, limits.window_s);
        storm.open_window = limits.window_s;
        let label = storm.label.to_string();
        inner.opened.insert(id);
        let evicted = inner.enforce_cap(now, self.max_threads);
        drop(inner);
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
        Ok(label)
    }

    async fn reset(&self, key: &ThreadKey, now_ms: u64) -> Result<Option<String>, StoreError> {
        let now = to_secs(now_ms);
        let mut inner = self.lock();
        let Some(id) = inner.resolve(key.id, now) else {
            return Ok(None);
        };
        // The storm stays (its keys stay joined to it); its breaker and counts are forgotten.
        let storm = inner.storm_mut(id);
        storm.state = StormState {
            expires: storm.state.expires,
            ..StormState::default()
        };
        let label = storm.label.to_string();
        inner.opened.remove(&id);
        Ok(Some(label))
    }

    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError> {
        let now = to_secs(now_ms);
        let mut inner = self.lock();
        let mut open = Vec::new();
        let mut closed = Vec::new();
        for &id in &inner.opened {
            match inner.status(id, now) {
                Some(status) => open.push(status),
                None => closed.push(id),
            }
        }
        for id in closed {
            inner.opened.remove(&id);
        }
        drop(inner);
        open.sort_by(|a, b| b.opened_at_ms.cmp(&a.opened_at_ms).then(a.key.cmp(&b.key)));
        Ok(open)
    }

    async fn tracked(&self) -> Result<usize, StoreError> {
        Ok(self.len())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn snapshot(&self, now_ms: u64) -> Option<Vec<StormSnapshot>> {
        let now = to_secs(now_ms);
        let inner = self.lock();
        let mut storms: Vec<StormSnapshot> = inner
            .opened
            .iter()
            .filter_map(|id| inner.storm(*id))
            .filter(|s| s.state.guarding(now))
            .map(|s| {
                let (head, counts) = s.state.window.parts();
                StormSnapshot {
                    label: s.label.to_string(),
                    members: s.members.iter().map(|m| m.to_string()).collect(),
                    open_window_s: s.open_window,
                    expires: s.state.expires,
                    opened_at: s.state.circuit.opened_at,
                    until: s.state.circuit.until,
                    strikes: s.state.circuit.strikes,
                    rule: s.state.circuit.rule as u8,
                    window_head: head,
                    window_counts: counts.to_vec(),
                    senders: s.state.senders.slots().to_vec(),
                }
            })
            .collect();
        storms.sort_by(|a, b| a.label.cmp(&b.label));
        Some(storms)
    }

    fn restore(&self, storms: &[StormSnapshot], now_ms: u64) -> usize {
        let now = to_secs(now_ms);
        let mut inner = self.lock();
        let mut restored = 0;
        for snap in storms {
            if now >= snap.expires || snap.until == 0 {
                continue;
            }
            let id = ThreadKey::new(&snap.label).id;
            if inner.resolve(id, now).is_some() {
                continue;
            }
            let mut counts = [0u16; crate::breaker::WINDOW_BUCKETS];
            for (c, v) in counts.iter_mut().zip(&snap.window_counts) {
                *c = *v;
            }
            let mut storm = Storm::new(&snap.label);
            storm.state = StormState {
                window: Window::from_parts(snap.window_head, counts),
                senders: Senders::from_slots(snap.senders.iter().copied()),
                circuit: Circuit {
                    opened_at: snap.opened_at,
                    until: snap.until,
                    strikes: snap.strikes,
                    rule: Rule::from_u8(snap.rule),
                },
                expires: snap.expires,
            };
            storm.open_window = snap.open_window_s.max(1);
            for m in &snap.members {
                storm.add_member(m);
            }
            inner.put(id, Entry::Storm(Box::new(storm)));
            inner.opened.insert(id);
            for m in &snap.members {
                let member = ThreadKey::new(m);
                if member.id != id && inner.resolve(member.id, now).is_none() {
                    inner.put(
                        member.id,
                        Entry::Link {
                            storm: id,
                            expires: snap.expires,
                        },
                    );
                }
            }
            restored += 1;
        }
        restored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_MS: u64 = 1_700_000_000_000;
    const H: u32 = 3600;
    const CAP: u32 = 16;

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

    fn request<'a>(
        counters: &'a [Counter<'a>],
        sender: u32,
        message: Option<(u64, u32)>,
        now_ms: u64,
    ) -> ObserveRequest<'a> {
        ObserveRequest {
            counters,
            sender,
            fast: false,
            sender_cap: CAP,
            message,
            now_ms,
        }
    }

    async fn observe(
        store: &MemoryStore,
        keys: &[ThreadKey],
        sender: u32,
        now_ms: u64,
    ) -> Observed {
        let counters = [Counter {
            keys,
            rule: Rule::Replies,
            limits: limits(),
        }];
        store
            .observe(&request(&counters, sender, None, now_ms))
            .await
            .unwrap()
            .remove(0)
    }

    fn key(label: &str) -> ThreadKey {
        ThreadKey::new(label)
    }

    #[tokio::test]
    async fn keys_seen_together_are_one_storm_with_one_breaker() {
        let store = MemoryStore::new(100);
        let (root, subj, tidx) = (key("mid:a@x"), key("subj:hello"), key("tidx:00ff"));
        // Thunderbird (root + subject), Outlook (GUID + subject), a phone (subject only).
        let o1 = observe(&store, &[root.clone(), subj.clone()], 1, T_MS).await;
        let o2 = observe(&store, &[tidx.clone(), subj.clone()], 2, T_MS + 1000).await;
        let o3 = observe(&store, std::slice::from_ref(&subj), 3, T_MS + 2000).await;
        assert_eq!(o1.outcome.storm, root.id);
        assert_eq!(o2.outcome.storm, root.id);
        assert!(o3.outcome.opened);
        assert_eq!(o3.outcome.senders, 3);
        assert_eq!(o3.storm_label.as_deref(), Some("mid:a@x"));
        let open = store.open_breakers(T_MS + 3000).await.unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].key, "mid:a@x");
        assert_eq!(open[0].keys, ["subj:hello", "tidx:00ff"]);
        assert_eq!(open[0].breaker, "replies");
        assert_eq!(open[0].replies, 3);
        // A reply carrying only the GUID is held by the same breaker.
        let o4 = observe(&store, std::slice::from_ref(&tidx), 4, T_MS + 4000).await;
        assert!(o4.outcome.held);
        assert_eq!(o4.storm_label.as_deref(), Some("mid:a@x"));
        // Reset by any of its keys stops every hold.
        assert_eq!(
            store.reset(&tidx, T_MS + 5000).await.unwrap().as_deref(),
            Some("mid:a@x")
        );
        assert!(store.open_breakers(T_MS + 5000).await.unwrap().is_empty());
        for k in [&root, &subj, &tidx] {
            let o = observe(&store, std::slice::from_ref(k), 9, T_MS + 6000).await;
            assert!(!o.outcome.held, "{k:?}");
        }
    }

    #[tokio::test]
    async fn separate_storms_merge_into_the_open_one() {
        let store = MemoryStore::new(100);
        let (a, b, s) = (key("mid:a@x"), key("mid:b@x"), key("subj:x"));
        for sender in 0..3 {
            observe(&store, std::slice::from_ref(&a), sender, T_MS).await;
        }
        observe(&store, std::slice::from_ref(&b), 10, T_MS).await;
        observe(&store, std::slice::from_ref(&b), 11, T_MS).await;
        // A message joining them: the open storm (a) takes in b's counts.
        let o = observe(&store, &[b.clone(), a.clone(), s.clone()], 12, T_MS + 1000).await;
        assert!(o.outcome.held);
        assert_eq!(o.outcome.storm, a.id);
        assert_eq!(o.outcome.count, 6);
        assert_eq!(o.outcome.senders, 6);
        let open = store.open_breakers(T_MS + 1000).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].keys, ["mid:b@x", "subj:x"]);
        let o = observe(&store, std::slice::from_ref(&b), 13, T_MS + 2000).await;
        assert!(o.outcome.held && o.outcome.storm == a.id);
    }

    #[tokio::test]
    async fn copies_of_a_message_get_its_verdict_and_count_once() {
        let store = MemoryStore::new(100);
        let k = [key("subj:split")];
        let counters = [Counter {
            keys: &k,
            rule: Rule::Replies,
            limits: limits(),
        }];
        for sender in 0..3u32 {
            let message = Some((1000 + u64::from(sender), 600));
            let first = store
                .observe(&request(&counters, sender, message, T_MS))
                .await
                .unwrap();
            let copy = store
                .observe(&request(&counters, sender, message, T_MS + 1000))
                .await
                .unwrap();
            assert!(copy[0].outcome.copy);
            assert!(!copy[0].outcome.opened);
            assert_eq!(copy[0].outcome.held, first[0].outcome.held);
            assert_eq!(copy[0].outcome.count, sender + 1, "counted once");
        }
        // The third opened the breaker; its copy passes too, and a new message is held.
        let held = store
            .observe(&request(&counters, 7, Some((2000, 600)), T_MS + 2000))
            .await
            .unwrap();
        assert!(held[0].outcome.held);
        let copy = store
            .observe(&request(&counters, 7, Some((2000, 600)), T_MS + 3000))
            .await
            .unwrap();
        assert!(copy[0].outcome.held && copy[0].outcome.copy);
        assert_eq!(copy[0].storm_label.as_deref(), Some("subj:split"));
        // After the record's time, a copy is a new message.
        let late = store
            .observe(&request(&counters, 7, Some((2000, 600)), T_MS + 700_000))
            .await
            .unwrap();
        assert!(!late[0].outcome.copy);
    }

    #[tokio::test]
    async fn manual_trip_and_reset() {
        let store = MemoryStore::new(100);
        let k = key("subj:x");
        assert_eq!(store.trip(&k, &limits(), T_MS).await.unwrap(), "subj:x");
        let out = observe(&store, std::slice::from_ref(&k), 1, T_MS + 1000).await;
        assert!(out.outcome.held);
        assert_eq!(out.outcome.rule, Rule::Manual);
        assert_eq!(
            store.open_breakers(T_MS).await.unwrap()[0].breaker,
            "manual"
        );
        assert_eq!(
            store.reset(&k, T_MS).await.unwrap().as_deref(),
            Some("subj:x")
        );
        assert!(store.open_breakers(T_MS).await.unwrap().is_empty());
        let out = observe(&store, std::slice::from_ref(&k), 1, T_MS + 2000).await;
        assert!(!out.outcome.held);
        assert_eq!(out.outcome.count, 1);
        assert_eq!(
            store.reset(&key("subj:never seen"), T_MS).await.unwrap(),
            None
        );
        // A trip of a key joined to a storm trips the storm.
        let (root, subj) = (key("mid:r@x"), key("subj:y"));
        observe(&store, &[root.clone(), subj.clone()], 1, T_MS).await;
        assert_eq!(store.trip(&subj, &limits(), T_MS).await.unwrap(), "mid:r@x");
    }

    #[tokio::test]
    async fn expired_entries_are_swept() {
        let store = MemoryStore::new(1000);
        for i in 0..10 {
            observe(&store, &[key(&format!("mid:{i}@x"))], 1, T_MS).await;
        }
        assert_eq!(store.len(), 10);
        // Two hours later every storm is expired; each observation sweeps two.
        for _ in 0..10 {
            observe(&store, &[key("mid:live@x")], 1, T_MS + 2 * 3_600_000).await;
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.evictions(), 0);
    }

    #[tokio::test]
    async fn cap_holds_under_a_flood_and_open_breakers_survive() {
        let store = MemoryStore::new(50);
        let storm = [key("subj:storm"), key("mid:storm@x")];
        for sender in 0..3 {
            observe(&store, &storm, sender, T_MS).await;
        }
        for i in 0..10_000 {
            observe(&store, &[key(&format!("mid:{i}@flood"))], 9, T_MS + 1000).await;
            assert!(store.len() <= 50);
        }
        assert!(store.evictions() >= 9_950);
        let out = observe(&store, &storm[1..], 7, T_MS + 2000).await;
        assert!(
            out.outcome.held,
            "the open breaker was evicted by the flood"
        );
    }

    #[tokio::test]
    async fn closed_breakers_drop_out_of_the_open_list() {
        let store = MemoryStore::new(100);
        let k = key("subj:x");
        store.trip(&k, &limits(), T_MS).await.unwrap();
        let after = T_MS + u64::from(6 * H + H + 1) * 1000;
        assert!(store.open_breakers(after).await.unwrap().is_empty());
        assert!(store.lock().opened.is_empty());
    }

    #[tokio::test]
    async fn snapshots_bring_open_breakers_and_their_keys_back() {
        let store = MemoryStore::new(100);
        let keys = [key("mid:s@x"), key("subj:snap"), key("tidx:abcd")];
        for sender in 0..3 {
            observe(&store, &keys, sender, T_MS).await;
        }
        observe(&store, &[key("mid:quiet@x")], 1, T_MS).await;
        let snap = store.snapshot(T_MS + 1000).unwrap();
        assert_eq!(snap.len(), 1, "only open breakers");
        let text = serde_json::to_string(&snap).unwrap();
        let back: Vec<StormSnapshot> = serde_json::from_str(&text).unwrap();
        let fresh = MemoryStore::new(100);
        assert_eq!(fresh.restore(&back, T_MS + 2000), 1);
        assert_eq!(fresh.restore(&back, T_MS + 2000), 0, "already there");
        assert_eq!(
            fresh.open_breakers(T_MS + 3000).await.unwrap(),
            store.open_breakers(T_MS + 3000).await.unwrap()
        );
        for k in &keys {
            let o = observe(&fresh, std::slice::from_ref(k), 50, T_MS + 3000).await;
            assert!(o.outcome.held, "{k:?}");
            assert_eq!(o.storm_label.as_deref(), Some("mid:s@x"));
        }
        // Expired snapshots restore nothing.
        let late = T_MS + 100 * 3_600_000;
        assert_eq!(MemoryStore::new(10).restore(&back, late), 0);
    }
}
