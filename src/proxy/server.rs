//! The proxy listener: accepts clients within the connection limits (in all, and per client
//! address), runs a session for each, and on shutdown stops accepting, lets sessions finish up
//! to the grace time, then stops them.

use crate::admin::metric;
use crate::proxy::session::{Session, Shared, Signals};
use crate::reply;
use crate::service::Shutdown;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Read once: changing these needs a restart (a reload says so).
    let config = shared.config.load_full();
    let max = config.proxy.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = Signals {
        draining: shutdown.clone(),
        stop: stop_rx,
    };
    let grace = config.proxy.shutdown_grace;
    let ids = SessionIds::new();
    let per_client = Arc::new(PerClient::new(config.proxy.max_connections_per_client));
    let pool_shared = shared.clone();
    let pool_shutdown = shutdown.clone();
    let idle_closer = tokio::spawn(async move { pool_shared.pool.close_idle(pool_shutdown).await });

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    metrics::counter!(metric::CONNECTIONS_REFUSED).increment(1);
                    tracing::warn!(client = %peer, limit = max, "connection limit reached; 421");
                    refuse(stream, reply::TOO_MANY_CONNECTIONS);
                    continue;
                };
                let Some(client_slot) = per_client.enter(peer.ip()) else {
                    metrics::counter!(metric::CONNECTIONS_REFUSED).increment(1);
                    tracing::warn!(client = %peer, limit = per_client.limit, "per-client connection limit reached; 421");
                    refuse(stream, reply::TOO_MANY_CONNECTIONS_FROM_CLIENT);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let session = Session::new(shared.clone(), stream, peer, ids.next(), signals.clone());
                metrics::counter!(metric::SESSIONS).increment(1);
                metrics::gauge!(metric::SESSIONS_ACTIVE).increment(1);
                // Boxed: the session's future is a few KiB, and spawning moves it more than
                // once (perf showed those copies at ~5% of the proxy's CPU).
                tokio::spawn(Box::pin(async move {
                    session.run().await;
                    metrics::gauge!(metric::SESSIONS_ACTIVE).decrement(1);
                    drop(client_slot);
                    drop(permit);
                }));
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let in_flight = max - slots.available_permits();
    tracing::info!(sessions = in_flight, grace = ?grace, "proxy stopped accepting; draining");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let left = max - slots.available_permits();
        tracing::warn!(
            sessions = left,
            "grace time over; closing remaining sessions with 421"
        );
        let _ = stop_tx.send(true);
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), slots.acquire_many(all)).await;
    }
    let _ = idle_closer.await;
    shared.pool.close_all().await;
    tracing::info!("proxy stopped");
    Ok(())
}

/// Answers a connection that is over a limit, without a session.
fn refuse(mut stream: tokio::net::TcpStream, text: &'static str) {
    tokio::spawn(async move {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
}

/// Sessions open per client address, so one host cannot take every slot (and, through the
/// proxy, every smtpd process of the MTA behind it, which sees only the proxy's address).
struct PerClient {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's place in [`PerClient`]; leaving it when dropped.
struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        PerClient {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        if self.limit > 0 {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(ip).or_insert(0);
            if *n >= self.limit {
                return None;
            }
            *n += 1;
        }
        Some(ClientSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if self.table.limit == 0 {
            return;
        }
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Short session ids, unique within a process and unlikely to repeat across restarts.
struct SessionIds {
    prefix: u32,
    next: AtomicU64,
}

impl SessionIds {
    fn new() -> Self {
        SessionIds {
            prefix: rand::random::<u32>() & 0xffff,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{:04x}{:06x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}
