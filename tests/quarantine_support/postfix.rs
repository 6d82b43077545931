//! Real peers: a recording SMTP sink (sink.py) and a private Postfix instance relaying to it.
//! Both bind to 127.0.0.1 on free ports and are stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until `f` returns Some, or panics naming `what` after a generous limit (a hang guard,
/// not a timing assertion).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One transaction the sink accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_from: String,
    /// Full RCPT TO arguments, e.g. `<a@b> NOTIFY=FAILURE ORCPT=rfc822;a@b`.
    pub rcpts: Vec<String>,
    pub bytes: Vec<u8>,
}

impl Delivered {
    /// The recipient addresses without brackets or parameters.
    pub fn addresses(&self) -> Vec<String> {
        self.rcpts
            .iter()
            .map(|r| {
                let start = r.find('<').map_or(0, |i| i + 1);
                let end = r.find('>').unwrap_or(r.len());
                r[start..end].to_string()
            })
            .collect()
    }
}

pub struct Sink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/quarantine_support/sink.py"
        );
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 for the recording sink");
        wait_for("the sink to listen", || {
            dir.join("ready").exists().then_some(())
        });
        Sink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every transaction recorded so far, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|eml| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap())
                        .unwrap();
                Delivered {
                    mail_from: meta["mail_from"].as_str().unwrap().to_string(),
                    rcpts: meta["rcpts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    bytes: std::fs::read(&eml).unwrap(),
                }
            })
            .collect()
    }

    /// Waits until at least `n` transactions are recorded.
    pub fn wait_delivered(&self, n: usize) -> Vec<Delivered> {
        wait_for(&format!("{n} message(s) at the sink"), || {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
    }

    pub fn set_flag(&self, name: &str, content: &str) {
        std::fs::write(self.dir.join(name), content).unwrap();
    }

    pub fn clear_flag(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postfix instance listening on 127.0.0.1:port and relaying everything to `relay`.
pub struct Postfix {
    pub port: u16,
    conf: PathBuf,
    pub log: PathBuf,
}

impl Postfix {
    pub fn start(dir: &Path, relay: &str) -> Postfix {
        let port = free_port();
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Every folder down to DIR must be traversable by the postfix user.
        let mut p = dir.to_path_buf();
        while p.parent().is_some() {
            let _ = Command::new("chmod").arg("o+x").arg(&p).status();
            p.pop();
        }
        Command::new("chown")
            .args(["postfix:postfix"])
            .arg(&data)
            .status()
            .unwrap();
        let name = format!("sbq-postfix-{port}");
        let log = PathBuf::from(format!("/var/log/{name}.log"));
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             command_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = upstream.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             alias_maps =\n\
             alias_database =\n\
             local_header_rewrite_clients =\n\
             disable_mime_output_conversion = yes\n\
             smtp_tls_security_level = none\n\
             maillog_file = {log}\n\
             syslog_name = {name}\n",
            queue = queue.display(),
            data = data.display(),
            relay_port = relay.rsplit(':').next().unwrap(),
            log = log.display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp ") && l.contains("inet") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(conf.join("master.cf"), master + "\n").unwrap();
        let status = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "postfix start failed; see {}",
            log.display()
        );
        wait_for("postfix to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Postfix { port, conf, log }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .args(["stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The message without the trace headers an MTA put on top (Received and its continuation
/// lines, Return-Path, X-Original-To, Delivered-To).
pub fn strip_trace(bytes: &[u8]) -> &[u8] {
    let mut rest = bytes;
    let mut in_trace = false;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
        let Some(end) = line_end else { return rest };
        let line = &rest[..end];
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        let lower = line.to_ascii_lowercase();
        let trace = [
            &b"received:"[..],
            b"return-path:",
            b"x-original-to:",
            b"delivered-to:",
        ]
        .iter()
        .any(|h| lower.starts_with(h));
        if trace || (continuation && in_trace) {
            in_trace = true;
            rest = &rest[end..];
        } else {
            return rest;
        }
    }
}
