//! Idle upstream connections kept for the next client session.
//!
//! Opening an upstream session (connect, greeting, EHLO) and closing it (QUIT) cost about as
//! much as relaying a small message, so a connection that carries no client identity goes back
//! here after its client session and serves the next one. A connection that used XCLIENT never
//! comes back: the MTA now takes it for that client (and Postfix refuses a second XCLIENT from
//! a client it does not trust).

use crate::config::UpstreamConfig;
use crate::smtp::client::SmtpClient;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits on keeping and reusing upstream connections (`[upstream] pool_*`, `reuse_*`).
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub size: usize,
    pub idle_time: Duration,
    pub count_limit: u32,
    pub time_limit: Duration,
}

impl PoolLimits {
    pub fn from_config(c: &UpstreamConfig) -> Self {
        PoolLimits {
            size: c.pool_size,
            idle_time: c.pool_idle_time,
            count_limit: c.reuse_count_limit,
            time_limit: c.reuse_time_limit,
        }
    }

    fn may_carry_more(&self, up: &SmtpClient) -> bool {
        up.transactions < self.count_limit && up.opened.elapsed() < self.time_limit
    }
}

struct Idle {
    up: SmtpClient,
    since: Instant,
}

pub struct UpstreamPool {
    limits: PoolLimits,
    idle: Mutex<Vec<Idle>>,
    /// The XCLIENT attributes the upstream at this address offered in its last EHLO to us:
    /// a new connection for an XCLIENT session then says XCLIENT straight after the greeting
    /// (Postfix takes it before EHLO), saving the EHLO round trip the answer would only repeat.
    xclient_offer: Mutex<Option<(String, Vec<String>)>>,
}

impl UpstreamPool {
    pub fn new(limits: PoolLimits) -> Self {
        UpstreamPool {
            limits,
            idle: Mutex::new(Vec::new()),
            xclient_offer: Mutex::new(None),
        }
    }

    /// The XCLIENT attributes `address` offered last time, if it did.
    pub fn known_xclient(&self, address: &str) -> Option<Vec<String>> {
        let offer = self.xclient_offer.lock().unwrap_or_else(|p| p.into_inner());
        offer
            .as_ref()
            .filter(|(at, _)| at == address)
            .map(|(_, attrs)| attrs.clone())
    }

    /// Records what `address` offered in an EHLO to us (nothing: forgets the offer).
    pub fn learn_xclient(&self, address: &str, attrs: &[String]) {
        let mut offer = self.xclient_offer.lock().unwrap_or_else(|p| p.into_inner());
        *offer = (!attrs.is_empty()).then(|| (address.to_string(), attrs.to_vec()));
    }

    /// The most recently used idle connection that still looks open. Stale ones are dropped
    /// (closed) on the way: the upstream already closed them or is about to.
    pub fn take(&self) -> Option<SmtpClient> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.limits.idle_time && entry.up.looks_open() {
                return Some(entry.up);
            }
        }
        None
    }

    /// Whether a connection is waiting idle.
    pub fn has_idle(&self) -> bool {
        !self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Keeps `up` for reuse, or hands it back when the pool is full or `up` has carried enough;
    /// the caller then says QUIT.
    pub fn put(&self, up: SmtpClient) -> Option<SmtpClient> {
        if !self.limits.may_carry_more(&up) {
            return Some(up);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.limits.size {
            return Some(up);
        }
        idle.push(Idle {
            up,
            since: Instant::now(),
        });
        None
    }

    /// Removes the connections idle longer than `pool_idle_time`, for the caller to QUIT.
    pub fn expired(&self) -> Vec<SmtpClient> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let (old, fresh): (Vec<Idle>, Vec<Idle>) = idle
            .drain(..)
            .partition(|e| e.since.elapsed() >= self.limits.idle_time);
        *idle = fresh;
        old.into_iter().map(|e| e.up).collect()
    }

    /// Says QUIT on every idle connection (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<SmtpClient> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.drain(..).map(|e| e.up).collect()
        };
        quit_all(all).await;
    }

    /// Closes expired idle connections every `idle_time / 2` (at least every second) until
    /// shutdown, then all of them.
    pub async fn close_idle(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let every =
            (self.limits.idle_time / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    quit_all(self.expired()).await;
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        self.close_all().await;
    }
}

/// Says QUIT on every connection at once.
async fn quit_all(ups: Vec<SmtpClient>) {
    let mut quits: tokio::task::JoinSet<()> = ups.into_iter().map(SmtpClient::quit).collect();
    while quits.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::{Target, Timeouts};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A minimal SMTP peer for pool bookkeeping: 250 to everything; `BYE` gets 421 and a close
    /// (an MTA timing out an idle session).
    async fn peer() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    w.write_all(b"220 peer\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = match line.as_str() {
                            "BYE" => b"421 4.4.2 idle too long\r\n",
                            "QUIT" => b"221 bye\r\n",
                            _ => b"250 ok\r\n",
                        };
                        let _ = w.write_all(reply).await;
                        if reply[0] != b'2' {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn connect(addr: &str) -> SmtpClient {
        let t = Timeouts {
            connect: Duration::from_secs(5),
            reply: Duration::from_secs(5),
        };
        let target = Target {
            address: addr.to_string(),
            hostname: "test".into(),
            timeouts: t,
            tls: None,
        };
        SmtpClient::connect(&target).await.unwrap()
    }

    fn limits() -> PoolLimits {
        PoolLimits {
            size: 2,
            idle_time: Duration::from_secs(60),
            count_limit: 3,
            time_limit: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn gives_back_the_most_recent_connection_and_keeps_at_most_size() {
        let addr = peer().await;
        let pool = UpstreamPool::new(limits());
        assert!(pool.take().is_none());
        let (a, b, c) = (
            connect(&addr).await,
            connect(&addr).await,
            connect(&addr).await,
        );
        let b_opened = b.opened;
        assert!(pool.put(a).is_none());
        assert!(pool.put(b).is_none());
        assert!(
            pool.put(c).is_some(),
            "a third idle connection is over size 2"
        );
        assert_eq!(pool.take().unwrap().opened, b_opened);
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn refuses_connections_past_their_count_or_age() {
        let addr = peer().await;
        let pool = UpstreamPool::new(limits());
        let mut worn = connect(&addr).await;
        worn.transactions = 3;
        assert!(pool.put(worn).is_some());
        let aged = UpstreamPool::new(PoolLimits {
            time_limit: Duration::ZERO,
            ..limits()
        });
        assert!(aged.put(connect(&addr).await).is_some());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let addr = peer().await;
        let pool = UpstreamPool::new(limits());
        let mut up = connect(&addr).await;
        assert_eq!(up.command(b"BYE\r\n").await.unwrap().code, 421);
        assert!(pool.put(up).is_none());
        // Let the runtime see the end of stream.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let addr = peer().await;
        let pool = UpstreamPool::new(PoolLimits {
            idle_time: Duration::from_millis(20),
            ..limits()
        });
        assert!(pool.put(connect(&addr).await).is_none());
        assert!(pool.expired().is_empty());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(pool.expired().len(), 1);
        assert!(pool.put(connect(&addr).await).is_none());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            pool.take().is_none(),
            "an expired connection is not handed out"
        );
    }
}
