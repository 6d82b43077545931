//! The other real MTAs, run by the scripts in `scripts/peers/` (see its README.md): a private
//! Exim 4 (a sending MTA in front of the proxy, or the proxy's upstream), Sendmail 8.17 with
//! stormbreaker as its milter, a Postfix that offers STARTTLS and SASL AUTH (the upstream of
//! the submission path), a test CA, and a TCP tap that logs what each side sent in which
//! segment. Each server lives in a folder of its own under /var/tmp; dropping its value stops
//! it and removes the folder, and [`Peer::stop_at_exit`] does the same at process exit for the
//! ones a module keeps in a static.

use super::wait::wait_port;
use super::{KillOnDrop, at_exit, free_port, require_tool, scratch_dir};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};

/// `scripts/peers/NAME`.
pub fn script(name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "scripts/peers", name]
        .iter()
        .collect()
}

/// Runs `scripts/peers/NAME ARGS...` with `env`; its stdout, or a panic with its stderr.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(script(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/peers/{name} {args:?} failed (run scripts/peers/install.sh as root first): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server started by a peer script in its own folder: `SCRIPT stop DIR` stops it.
pub struct Peer {
    script: &'static str,
    /// The server's folder (config, spool or queue, logs).
    pub dir: PathBuf,
    /// Where it accepts SMTP, on 127.0.0.1.
    pub port: u16,
}

impl Peer {
    fn start(
        script: &'static str,
        prefix: &str,
        args: impl FnOnce(&Path, u16) -> Vec<String>,
        env: &[(&str, &str)],
    ) -> Peer {
        let dir = scratch_dir(prefix).keep();
        let port = free_port();
        let args = args(&dir, port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Constructed first, so that a failed start still stops what it may have left running.
        let peer = Peer { script, dir, port };
        run(script, &args, env);
        peer
    }

    /// For a server kept in a static: stopped (with every other one kept so, in parallel)
    /// when the test process exits.
    pub fn stop_at_exit(&self) {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| at_exit(stop_kept));
        if let Ok(mut kept) = KEPT.lock() {
            kept.push((self.script, self.dir.clone()));
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `SCRIPT COMMAND DIR ARGS...`: its stdout.
    fn ask(&self, command: &str, args: &[&str]) -> String {
        let dir = self.dir.display().to_string();
        run(self.script, &[&[command, &dir], args].concat(), &[])
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        stop(self.script, &self.dir);
    }
}

fn stop(script_name: &str, dir: &Path) {
    let _ = Command::new(script(script_name))
        .arg("stop")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

/// Servers kept in statics, stopped at exit.
static KEPT: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());

/// Stops every kept server at once: Exim and Postfix each take about 2 s to exit.
fn stop_kept() {
    let kept: Vec<_> = KEPT
        .lock()
        .map(|mut v| v.drain(..).collect())
        .unwrap_or_default();
    let stopping: Vec<(Option<Child>, &PathBuf)> = kept
        .iter()
        .map(|(name, dir)| {
            let child = Command::new(script(name))
                .arg("stop")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok();
            (child, dir)
        })
        .collect();
    for (child, dir) in stopping {
        if let Some(mut child) = child {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A private Exim 4.96 that accepts anything on `port` and relays all of it to one port
/// (`exim.sh`): the sending MTA in front of the proxy, or the proxy's upstream.
pub struct Exim(pub Peer);

impl Exim {
    /// Each message delivered as it arrives, one connection per message, which Exim ends with
    /// `.\r\nQUIT\r\n` in one write.
    pub fn start(relay_port: u16) -> Exim {
        Self::start_with(relay_port, &[])
    }

    /// With environment for `exim.sh start`: `EXIM_QUEUE_SMTP=1` (deliveries by queue runs,
    /// several messages per connection), `EXIM_MAIN_CONF`.
    pub fn start_with(relay_port: u16, env: &[(&str, &str)]) -> Exim {
        Exim(Peer::start(
            "exim.sh",
            "sb-exim.",
            |dir, port| {
                vec![
                    "start".into(),
                    dir.display().to_string(),
                    port.to_string(),
                    relay_port.to_string(),
                ]
            },
            env,
        ))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Messages in its queue, being delivered or waiting (`exim -bpc`).
    pub fn queue(&self) -> usize {
        let out = self.0.ask("queue", &[]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("exim -bpc said {out:?}"))
    }

    /// Mainlog lines of failed (`**`) and deferred (`==`) deliveries.
    pub fn failures(&self) -> String {
        self.0.ask("failures", &[])
    }

    pub fn mainlog(&self) -> String {
        std::fs::read_to_string(self.0.path("log/mainlog")).unwrap_or_default()
    }
}

/// A private Sendmail 8.17 that asks a milter and relays what it accepts to one port
/// (`sendmail.sh`); quarantined messages stay in its queue as `hf` files.
pub struct Sendmail(pub Peer);

impl Sendmail {
    /// `milter`: a port, an absolute socket path, or "none".
    pub fn start(relay_port: u16, milter: &str) -> Sendmail {
        Sendmail(Peer::start(
            "sendmail.sh",
            "sb-sendmail.",
            |dir, port| {
                vec![
                    "start".into(),
                    dir.display().to_string(),
                    port.to_string(),
                    relay_port.to_string(),
                    milter.into(),
                ]
            },
            &[],
        ))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// Queue ids of the quarantined (held) messages.
    pub fn held_ids(&self) -> Vec<String> {
        self.0
            .ask("held-ids", &[])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `sendmail -bp -qQ`: the quarantine as Sendmail lists it, with each reason.
    pub fn held(&self) -> String {
        self.0.ask("held", &[])
    }
}

/// A private Postfix 3.7 that offers STARTTLS (a certificate from its own test CA) and, inside
/// TLS only, SASL AUTH PLAIN, LOGIN and CRAM-MD5 for one user; it relays only for
/// authenticated clients (`postfix-sasl.sh`).
pub struct PostfixSasl(pub Peer);

impl PostfixSasl {
    /// `main_cf`: more main.cf lines (`POSTFIX_MAIN_CF`), the last definition winning.
    pub fn start(relay_port: u16, user: &str, password: &str, main_cf: &str) -> PostfixSasl {
        PostfixSasl(Peer::start(
            "postfix-sasl.sh",
            "sb-postfix-sasl.",
            |dir, port| {
                vec![
                    "start".into(),
                    dir.display().to_string(),
                    port.to_string(),
                    relay_port.to_string(),
                    user.into(),
                    password.into(),
                ]
            },
            &[("POSTFIX_MAIN_CF", main_cf)],
        ))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The CA its STARTTLS certificate chains to.
    pub fn ca(&self) -> PathBuf {
        self.0.dir.join("tls/ca.crt")
    }

    /// Its queue, one JSON object a line (`postqueue -j`): empty when all went out.
    pub fn queue(&self) -> String {
        self.0.ask("queue", &[])
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.0.path("maillog")).unwrap_or_default()
    }
}

/// A test CA and a server certificate it signed (`ca.sh`), in a folder removed on drop.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    /// The server certificate names 127.0.0.1, localhost and `names`.
    pub fn new(names: &[&str]) -> TestCa {
        require_tool("openssl");
        let dir = scratch_dir("sb-ca.");
        let path = dir.path().display().to_string();
        run("ca.sh", &[&[path.as_str()], names].concat(), &[]);
        TestCa { dir }
    }

    /// For one kept in a static: its folder is removed when the test process exits.
    pub fn remove_at_exit(&self) {
        let dir = self.dir.path().to_path_buf();
        at_exit(move || {
            let _ = std::fs::remove_dir_all(dir);
        });
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server's certificate followed by the CA's.
    pub fn chain(&self) -> PathBuf {
        self.dir.path().join("server-chain.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// `[proxy]` keys that serve this certificate.
    pub fn proxy_keys(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            self.chain().display(),
            self.key().display()
        )
    }
}

/// One segment as the tap read it.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The tap's connection number, from 1.
    pub conn: u32,
    /// `C>S` (client to server) or `S>C`.
    pub direction: String,
    pub bytes: Vec<u8>,
}

/// `tap.py`: a TCP relay from its own port to `target` that logs every segment read in each
/// direction, to show what a client really sends in one write.
pub struct Tap {
    _process: KillOnDrop,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Tap {
    pub fn start(target: u16) -> Tap {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("python3")
            .arg(script("tap.py"))
            .arg(port.to_string())
            .arg(target.to_string())
            .arg(log.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let process = KillOnDrop(child);
        assert!(wait_port(port), "tap.py did not listen");
        Tap {
            _process: process,
            port,
            log,
        }
    }

    /// Every segment so far, in the order read (the start-up probe's connection included).
    pub fn chunks(&self) -> Vec<Chunk> {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(parse_chunk)
            .collect()
    }
}

/// `TIME CONN DIRECTION REPR` -> a chunk; `open` lines and `<closed>` ends are left out.
fn parse_chunk(line: &str) -> Option<Chunk> {
    let mut fields = line.splitn(4, ' ');
    let (_time, conn, direction, repr) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if direction == "open" || repr == "b'<closed>'" {
        return None;
    }
    Some(Chunk {
        conn: conn.parse().ok()?,
        direction: direction.to_string(),
        bytes: python_bytes(repr)?,
    })
}

/// The bytes of a Python `repr(bytes)`: `b'...'` or `b"..."` with `\\`, `\'`, `\"`, `\t`,
/// `\n`, `\r` and `\xNN` escapes (all that repr writes).
fn python_bytes(repr: &str) -> Option<Vec<u8>> {
    let inner = repr
        .strip_prefix("b'")
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| repr.strip_prefix("b\"").and_then(|r| r.strip_suffix('"')))?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

#[test]
fn python_bytes_reprs_decode() {
    assert_eq!(python_bytes(r"b'.\r\nQUIT\r\n'").unwrap(), b".\r\nQUIT\r\n");
    assert_eq!(
        python_bytes(r#"b"it's \\ \x00\xff""#).unwrap(),
        b"it's \\ \x00\xff"
    );
    assert_eq!(python_bytes(r"b'\''").unwrap(), b"'");
    assert!(python_bytes("nope").is_none());
}
