//! The one harness of the integration tests: real peers on free 127.0.0.1 ports, each stopped
//! when its value is dropped (also when a test panics), or at process exit for the peers shared
//! by the whole suite.
//!
//! - `postfix`: private Postfix instances (main.cf from `postfix-main.cf`, shared with the
//!   benches), and [`relay`], the one most tests send through.
//! - `sink`: the recording sink every message ends at, and misbehaving upstreams.
//! - `stormbreaker`: the real binary as proxy, milter or administrator's command.
//! - `redis`: redis-server processes; `redis_modes`: a Redis Cluster, a Sentinel set and a
//!   TLS-only server.
//! - `peers`: the other real MTAs of `scripts/peers/` (Exim, Sendmail, Postfix with SASL), a
//!   test CA and a TCP tap.
//! - `slapd`: private OpenLDAP servers (list sizes from LDAP groups).
//! - `clients`: swaks, Python's smtplib, raw sockets for crafted bytes.
//! - `storm`: a reply-all storm sent through a proxy.
//! - `http`: plain HTTP/1.1 requests to the admin API, and Python's helpers for it.
//! - `logs`: log lines of in-process library code, captured per test thread.
//! - `wait`: the one way to wait for something asynchronous.

pub mod clients;
pub mod http;
pub mod logs;
pub mod peers;
pub mod postfix;
pub mod redis;
pub mod redis_modes;
pub mod sink;
pub mod slapd;
pub mod storm;
pub mod stormbreaker;
pub mod wait;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, Once, OnceLock};

pub use postfix::Postfix;
pub use sink::Sink;
pub use wait::wait_for;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `name` with a random suffix: what a test puts in its messages so that it finds its own
/// among everything the shared peers have seen.
pub fn token(name: &str) -> String {
    format!("{name}-{}", rand::random::<u32>())
}

/// A new folder under /var/tmp that other users can traverse (Postfix's daemons, which also
/// connect to a milter's unix socket, run as other users), and under /var as Postfix's
/// `maillog_file` must be. Removed on drop.
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("a folder under /var/tmp");
    set_mode(dir.path(), 0o755);
    dir
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Panics, naming the way to install it, when `name` is not on the PATH.
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: run scripts/test.sh as root, which installs it"
    );
}

/// A child process killed (and reaped) when this value is dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The runtime the in-process peers (the recording sinks) run on: its own threads, so they
/// serve while a test blocks or runs its own runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Cleanups for peers kept in statics (never dropped): run when the test process exits.
static CLEANUP: Mutex<Vec<Box<dyn FnOnce() + Send>>> = Mutex::new(Vec::new());

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn run_cleanup() {
    let tasks: Vec<_> = CLEANUP
        .lock()
        .map(|mut v| v.drain(..).collect())
        .unwrap_or_default();
    for task in tasks {
        task();
    }
}

/// Runs `task` when the test process exits (for peers shared by the whole suite).
pub fn at_exit(task: impl FnOnce() + Send + 'static) {
    static REGISTER: Once = Once::new();
    // SAFETY: atexit only stores the function pointer; run_cleanup is a plain extern "C" fn.
    REGISTER.call_once(|| unsafe {
        atexit(run_cleanup);
    });
    if let Ok(mut v) = CLEANUP.lock() {
        v.push(Box::new(task));
    }
}

/// The Postfix most tests send through and the sink it relays to, shared by the suite.
pub struct Relay {
    pub sink: Sink,
    pub postfix: Postfix,
}

/// Started once, at first use: a Postfix that takes XCLIENT from loopback (the proxy passes
/// each client's name and address) and refuses `refused@corp.test` (a recipient Postfix says
/// no to), relaying everything else to one recording sink. Tests find their own messages there
/// by a [`token`].
pub fn relay() -> &'static Relay {
    static RELAY: OnceLock<Relay> = OnceLock::new();
    RELAY.get_or_init(|| {
        let sink = Sink::start();
        let postfix = Postfix::start(
            sink.port(),
            "smtpd_authorized_xclient_hosts = 127.0.0.0/8\n\
             smtpd_recipient_restrictions = check_recipient_access inline:{ {refused@corp.test = 550 5.1.1 no such user here} }, permit_mynetworks, reject",
        );
        postfix.stop_at_exit();
        Relay { sink, postfix }
    })
}
