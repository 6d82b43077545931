//! `stormbreaker demo`: an Atos-shaped storm through the real proxy, with no MTA.
//!
//! Starts the proxy on loopback in front of the built-in recording sink, with a temporary
//! quarantine and a policy file written to disk, then replays 1 original + 419 reply-alls to a
//! list of 91,053 over SMTP sessions, and prints what happened.

pub mod sink;

use crate::config::Config;
use crate::engine::Engine;
use crate::smtp::client::{SmtpClient, Target, Timeouts};
use base64::Engine as _;
use sink::RecordingSink;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const LIST: &str = "all-staff@atos.demo";
const LIST_SIZE: u64 = 91_053;
const REPLIES: usize = 419;
const SESSIONS: usize = 4;

/// How the proxy answered each message.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    held: usize,
    rejected: usize,
    deferred: usize,
}

pub async fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("stormbreaker-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sink = RecordingSink::start("127.0.0.1:0").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = listener.local_addr()?;
    let config_path = dir.join("policy.toml");
    std::fs::write(&config_path, policy_text(proxy_addr, sink.addr, &dir))?;
    let config = Arc::new(Config::load(&config_path)?);
    let engine = Arc::new(Engine::new(&config)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let quarantine = crate::quarantine::Quarantine::open(&config.quarantine.dir)?;
    let shared = Arc::new(crate::proxy::session::Shared::new(
        config.clone(),
        engine,
        Some(quarantine),
        None,
    )?);
    let server = tokio::spawn(crate::proxy::server::serve(shared, listener, stop_rx));

    println!(
        "stormbreaker demo: proxy on {proxy_addr}, recording sink on {}",
        sink.addr
    );
    println!(
        "replaying 1 original + {REPLIES} reply-alls to {LIST} ({LIST_SIZE} members) over {SESSIONS} SMTP sessions…"
    );
    let started = Instant::now();
    let storm = Storm::new();
    let mut tally = Tally::default();
    // The original goes first, alone, as it did.
    send_all(proxy_addr, vec![storm.original()], &mut tally).await?;
    let mut batches: Vec<Vec<Message>> = vec![Vec::new(); SESSIONS];
    for i in 0..REPLIES {
        batches[i % SESSIONS].push(storm.reply(i));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for batch in batches {
        tasks.spawn(async move {
            let mut t = Tally::default();
            send_all(proxy_addr, batch, &mut t).await.map(|()| t)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let t = done??;
        tally.accepted += t.accepted;
        tally.held += t.held;
        tally.rejected += t.rejected;
        tally.deferred += t.deferred;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    let sent = REPLIES + 1;
    let delivered = sink.count();
    let stopped = sent - delivered;
    println!();
    println!("  sent                 {sent}");
    println!(
        "  delivered            {delivered}  (to {LIST}: {} deliveries)",
        delivered as u64 * LIST_SIZE
    );
    println!("  held in quarantine   {}", tally.held);
    println!(
        "  rejected / deferred  {} / {}",
        tally.rejected, tally.deferred
    );
    println!(
        "  deliveries avoided   {}  ({stopped} messages x {LIST_SIZE} members)",
        stopped as u64 * LIST_SIZE
    );
    println!("  elapsed              {:.2} s", elapsed.as_secs_f64());
    println!("  quarantine           {}", config.quarantine.dir.display());
    println!(
        "  inspect with         stormbreaker quarantine list --config {}",
        config_path.display()
    );
    Ok(())
}

fn policy_text(
    proxy: std::net::SocketAddr,
    sink: std::net::SocketAddr,
    dir: &std::path::Path,
) -> String {
    format!(
        "# Written by `stormbreaker demo`.\n[proxy]\nlisten = \"{proxy}\"\nhostname = \"demo.stormbreaker\"\n\
[upstream]\naddress = \"{sink}\"\n[quarantine]\ndir = \"{q}\"\n\
[policy]\nwide_audience = 2500\ntrip_replies = 10\nwindow = \"60m\"\nblock_for = \"6h\"\naction = \"quarantine\"\n\
[[lists]]\naddress = \"{LIST}\"\nmembers = {LIST_SIZE}\n[log]\nlevel = \"warn\"\n",
        q = dir.join("quarantine").display()
    )
}

#[derive(Clone)]
struct Message {
    from: String,
    content: Vec<u8>,
}

/// The storm: one announcement and the replies of people using different mail clients.
struct Storm {
    thread_index: Vec<u8>,
    message_id: String,
}

impl Storm {
    fn new() -> Storm {
        let mut thread_index = vec![1u8];
        thread_index.extend_from_slice(&rand::random::<[u8; 5]>());
        thread_index.extend_from_slice(&rand::random::<[u8; 16]>());
        Storm {
            thread_index,
            message_id: format!("<{:x}@atos.demo>", rand::random::<u64>()),
        }
    }

    fn original(&self) -> Message {
        let ti = base64::engine::general_purpose::STANDARD.encode(&self.thread_index);
        let content = format!(
            "From: IT Service Desk <servicedesk@atos.demo>\r\nTo: {LIST}\r\n\
Subject: Mandatory security training\r\nThread-Topic: Mandatory security training\r\n\
Thread-Index: {ti}\r\nMessage-ID: {id}\r\nDate: Mon, 23 Nov 2026 17:02:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Please complete the training by Friday.\r\n",
            id = self.message_id
        );
        Message {
            from: "servicedesk@atos.demo".into(),
            content: content.into_bytes(),
        }
    }

    /// Reply `i`, in the style of one of five mail clients.
    fn reply(&self, i: usize) -> Message {
        let from = format!("employee{i:03}@atos.demo");
        let id = format!("<r{i}.{:x}@atos.demo>", rand::random::<u32>());
        let head = match i % 5 {
            // Outlook (English, then German): Thread-Index, Thread-Topic, no References.
            0 | 1 => {
                let mut ti = self.thread_index.clone();
                ti.extend_from_slice(&rand::random::<[u8; 5]>());
                let ti = base64::engine::general_purpose::STANDARD.encode(&ti);
                let prefix = if i.is_multiple_of(5) { "RE" } else { "AW" };
                format!(
                    "Subject: {prefix}: Mandatory security training\r\n\
Thread-Topic: Mandatory security training\r\nThread-Index: {ti}\r\n"
                )
            }
            // Thunderbird and Gmail: In-Reply-To and References.
            2 | 3 => format!(
                "Subject: Re: Mandatory security training\r\nIn-Reply-To: {m}\r\nReferences: {m}\r\n",
                m = self.message_id
            ),
            // A client that keeps only the subject.
            _ => "Subject: Re: Re: Mandatory security training\r\n".to_string(),
        };
        let content = format!(
            "From: Employee {i} <{from}>\r\nTo: {LIST}\r\n{head}Message-ID: {id}\r\n\
Date: Mon, 23 Nov 2026 17:{m:02}:00 +0000\r\n\r\nPlease remove me from this list.\r\n",
            m = 5 + i * 30 / REPLIES
        );
        Message {
            from,
            content: content.into_bytes(),
        }
    }
}

/// Sends messages one after another over one SMTP session, counting the proxy's answers.
async fn send_all(
    proxy: std::net::SocketAddr,
    messages: Vec<Message>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        reply: Duration::from_secs(30),
    };
    let target = Target {
        address: proxy.to_string(),
        hostname: "client.atos.demo".into(),
        timeouts,
        tls: None,
    };
    let mut client = SmtpClient::connect(&target).await?;
    for m in messages {
        let r = client
            .command(format!("MAIL FROM:<{}>\r\n", m.from).as_bytes())
            .await?;
        anyhow::ensure!(r.is_success(), "MAIL refused: {}", r.summary());
        let r = client
            .command(format!("RCPT TO:<{LIST}>\r\n").as_bytes())
            .await?;
        anyhow::ensure!(r.is_success(), "RCPT refused: {}", r.summary());
        let r = client.data(&m.content).await?;
        let text = r.summary();
        match r.code {
            250 if text.contains("held") => tally.held += 1,
            250 => tally.accepted += 1,
            400..=499 => tally.deferred += 1,
            _ => tally.rejected += 1,
        }
    }
    client.quit().await;
    Ok(())
}
