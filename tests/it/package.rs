//! The Debian package: `packaging/build-deb.sh` builds it with cargo-deb from the binaries this
//! test run was built with, `dpkg -i` installs it on this machine (the tests run as root), and
//! then what systemd would do is done by hand, since systemd is not PID 1 here:
//! `systemd-analyze verify` judges the installed unit, and the unit's ExecStart runs as its
//! User=/Group= with its capabilities (setpriv), under a NOTIFY_SOCKET this test listens on,
//! the unit's ExecReload reloads it and SIGTERM (systemd's KillSignal) stops it.

use crate::support::wait::{PATIENCE, wait_for};
use crate::support::{at_exit, scratch_dir, set_mode, sink::Sink};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const UNIT: &str = "/usr/lib/systemd/system/stormbreaker.service";
const USER: &str = "stormbreaker";

/// The package built and installed, once for the module.
struct Installed {
    deb: PathBuf,
    uid: u32,
    gid: u32,
}

fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg -i`, waiting while another dpkg or apt (a peer being installed) holds the lock.
fn dpkg(args: &[&str]) {
    let start = Instant::now();
    loop {
        let out = Command::new("dpkg").args(args).output().expect("dpkg");
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("lock") || start.elapsed() > PATIENCE {
            panic!("dpkg {args:?}: {}\n{err}", out.status);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn id(flag: &str) -> u32 {
    text(&run(Command::new("id").args([flag, USER])))
        .trim()
        .parse()
        .unwrap()
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        assert!(
            running_as_root(),
            "the package tests install a .deb and switch users: run them as root (CI does)"
        );
        // The profile that built the binaries of this test run (cargo test: dev).
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_stormbreaker"));
        let profile = match bin
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => panic!("no profile folder in {}", bin.display()),
        };
        let out_dir = scratch_dir("sb-deb.");
        run(Command::new(root_dir().join("packaging/build-deb.sh"))
            .args(["--profile", &profile, "--no-build", "--fast", "--output"])
            .arg(out_dir.path()));
        let deb = std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("a .deb in the output folder");
        let was_installed = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", "stormbreaker"])
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"install ok installed"));
        dpkg(&["-i", deb.to_str().unwrap()]);
        if !was_installed {
            // Leave the machine as found: this also runs the package's prerm and postrm.
            at_exit(|| {
                let _ = Command::new("dpkg")
                    .args(["--purge", "stormbreaker"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            });
        }
        // Kept for the other tests of this module; a static is never dropped.
        let out_path = out_dir.path().to_path_buf();
        std::mem::forget(out_dir);
        at_exit(move || {
            let _ = std::fs::remove_dir_all(out_path);
        });
        Installed {
            deb,
            uid: id("-u"),
            gid: id("-g"),
        }
    })
}

fn running_as_root() -> bool {
    text(&run(Command::new("id").arg("-u"))).trim() == "0"
}

/// A port below 1024 that nothing listens on (binding it needs root, which this test has).
fn free_low_port() -> u16 {
    let start = 600 + rand::random::<u16>() % 300;
    (start..1000)
        .chain(600..start)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below 1024")
}

/// The unit's `[Service]` settings, each key with its values in order.
fn service_section(unit: &str) -> HashMap<String, Vec<String>> {
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("key=value");
            settings
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    settings
}

fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("the unit should set {key} once: {other:?}"),
    }
}

/// A command line of the unit, split as systemd splits one without quotes.
fn words(line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'', '\\', ';']),
        "{line}: quoting is not handled here"
    );
    line.split_whitespace().map(str::to_string).collect()
}

/// `CAP_NET_BIND_SERVICE CAP_X` as setpriv names them: `-all,+net_bind_service,+x`.
fn setpriv_caps(unit_caps: &str) -> String {
    let mut caps = String::from("-all");
    for cap in unit_caps.split_whitespace() {
        caps.push_str(",+");
        caps.push_str(&cap.trim_start_matches("CAP_").to_lowercase());
    }
    caps
}

/// READY=1 and the rest, as the service manager hears them.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    heard: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // systemd's own socket is writable by every service user.
        set_mode(&path, 0o777);
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket {
            socket,
            path,
            heard: Vec::new(),
        }
    }

    /// The next datagram, as its lines.
    fn next(&mut self) -> Vec<String> {
        let mut buf = vec![0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("nothing on NOTIFY_SOCKET ({e}); heard {:?}", self.heard));
        let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.heard.push(datagram.clone());
        datagram.lines().map(str::to_string).collect()
    }
}

/// The lines of `status` (from /proc/PID/status) starting with `key`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .to_string()
}

/// The SMTP greeting on 127.0.0.1:`port`.
fn greeting(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// A policy for a proxy on `port` in front of `upstream`, its spool in `dir`/spool (owned by
/// the service user, as the package makes /var/spool/stormbreaker), plus `extra`.
fn policy(dir: &Path, port: u16, upstream: u16, extra: &str) -> PathBuf {
    let spool = dir.join("spool");
    std::fs::create_dir(&spool).unwrap();
    let package = installed();
    std::os::unix::fs::chown(&spool, Some(package.uid), Some(package.gid)).unwrap();
    set_mode(&spool, 0o750);
    let path = dir.join("stormbreaker.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"sb.test\"\n\
             [upstream]\naddress = \"127.0.0.1:{upstream}\"\n\
             [quarantine]\ndir = \"{q}\"\n[log]\nformat = \"json\"\n{extra}\n",
            q = spool.join("quarantine").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_deb_holds_the_binary_unit_policy_man_pages_logrotate_file_and_scripts() {
    let deb = &installed().deb;
    let files = text(&run(Command::new("dpkg-deb").arg("-c").arg(deb)));
    for (path, mode) in [
        ("./usr/bin/stormbreaker", "-rwxr-xr-x"),
        (
            "./usr/lib/systemd/system/stormbreaker.service",
            "-rw-r--r--",
        ),
        ("./etc/stormbreaker/stormbreaker.toml", "-rw-r-----"),
        ("./etc/logrotate.d/stormbreaker", "-rw-r--r--"),
        ("./usr/share/man/man1/stormbreaker.1.gz", "-rw-r--r--"),
        ("./usr/share/man/man1/stormbreaker-run.1.gz", "-rw-r--r--"),
        (
            "./usr/share/man/man1/stormbreaker-quarantine-release.1.gz",
            "-rw-r--r--",
        ),
    ] {
        assert!(
            files
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the package:\n{files}"
        );
    }
    // Only the service's binary: the man page writer is a build tool.
    assert!(!files.contains("stormbreaker-man\n"), "{files}");

    let info = text(&run(Command::new("dpkg-deb").arg("-I").arg(deb)));
    for needle in [
        "Package: stormbreaker",
        "adduser",
        "libc6",
        " postinst",
        " postrm",
    ] {
        assert!(
            info.contains(needle),
            "{needle} not in dpkg-deb -I:\n{info}"
        );
    }
    let control = scratch_dir("sb-deb-control.");
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb)
        .arg(control.path().join("DEBIAN")));
    let conffiles =
        std::fs::read_to_string(control.path().join("DEBIAN/conffiles")).unwrap_or_default();
    for path in [
        "/etc/stormbreaker/stormbreaker.toml",
        "/etc/logrotate.d/stormbreaker",
    ] {
        assert!(
            conffiles.lines().any(|l| l == path),
            "{path} is not a conffile (an upgrade would overwrite the administrator's edits): \
             {conffiles:?}"
        );
    }
}

#[test]
fn the_installed_package_has_its_user_spool_policy_man_pages_and_a_unit_systemd_accepts() {
    let package = installed();
    assert_ne!(package.uid, 0);
    for (path, mode, uid) in [
        ("/var/spool/stormbreaker", 0o750, package.uid),
        ("/var/spool/stormbreaker/quarantine", 0o750, package.uid),
        ("/etc/stormbreaker", 0o750, 0),
        ("/etc/stormbreaker/stormbreaker.toml", 0o640, 0),
    ] {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.mode() & 0o7777, mode, "{path}");
        assert_eq!((meta.uid(), meta.gid()), (uid, package.gid), "{path}");
    }
    let shell = text(&run(Command::new("getent").args(["passwd", USER])));
    assert!(shell.trim_end().ends_with("/usr/sbin/nologin"), "{shell}");

    // The man page is roff rendered from the command line definition, where man finds it.
    let page = text(&run(Command::new("sh")
        .arg("-c")
        .arg("zcat /usr/share/man/man1/stormbreaker-run.1.gz")));
    assert!(page.contains(".TH stormbreaker-run 1"), "{page}");
    assert!(
        page.contains("/etc/stormbreaker/stormbreaker.toml"),
        "{page}"
    );

    // systemd's own judgement: unknown keys, wrong values and a missing binary all fail it.
    let verify = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{complaints}",
        verify.status
    );

    // The installed policy as it stands validates for the service user: it can read it and
    // write to the spool.
    let check = run(Command::new("setpriv")
        .args(["--reuid", USER, "--regid", USER, "--init-groups"])
        .args(["/usr/bin/stormbreaker", "check-config"]));
    assert!(
        text(&check).contains("/etc/stormbreaker/stormbreaker.toml: ok"),
        "{}",
        text(&check)
    );
}

#[test]
fn the_units_start_reload_and_stop_tell_systemd_ready_reloading_ready_stopping() {
    let package = installed();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let service = service_section(&unit);
    assert_eq!(one(&service, "Type"), "notify");
    assert!(
        one(&service, "LimitNOFILE").parse::<u32>().unwrap() >= 65536,
        "LimitNOFILE"
    );
    assert_eq!(one(&service, "User"), USER);
    assert_eq!(one(&service, "Group"), USER);

    let dir = scratch_dir("sb-unit.");
    let sink = Sink::start();
    let port = free_low_port();
    let policy = policy(dir.path(), port, sink.port(), "");
    let mut notify = NotifySocket::bind(dir.path());

    // ExecStart as written, but for the policy file: this test's, not the machine's.
    let mut exec = words(one(&service, "ExecStart"));
    let config_at = exec.iter().position(|w| w == "--config").expect("--config") + 1;
    assert_eq!(exec[config_at], "/etc/stormbreaker/stormbreaker.toml");
    exec[config_at] = policy.display().to_string();
    let caps = setpriv_caps(one(&service, "AmbientCapabilities"));
    let bounding = setpriv_caps(one(&service, "CapabilityBoundingSet"));
    assert_eq!(one(&service, "NoNewPrivileges"), "yes");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new("setpriv")
        .arg(format!("--reuid={}", one(&service, "User")))
        .arg(format!("--regid={}", one(&service, "Group")))
        .arg("--init-groups")
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set={bounding}"))
        .arg("--no-new-privs")
        .args(&exec)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("setpriv");
    // setpriv execs the binary: the pid is the service's (systemd's $MAINPID).
    let mut service_process = crate::support::KillOnDrop(child);
    let pid = service_process.0.id();
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();

    let first = notify.next();
    assert!(
        first.contains(&"READY=1".to_string()),
        "{first:?}\n{}",
        log()
    );
    assert!(
        first
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains(&port.to_string())),
        "{first:?}"
    );
    // Ready means ready: the port below 1024 is bound and answers, by the unit's user.
    assert!(greeting(port).starts_with("220 "), "{}", log());
    let uid = package.uid;
    assert_eq!(
        proc_status(pid, "Uid:"),
        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")
    );

    // ExecReload, $MAINPID as systemd fills it in: RELOADING=1, then READY=1 again.
    let reload: Vec<String> = words(one(&service, "ExecReload"))
        .into_iter()
        .map(|w| w.replace("$MAINPID", &pid.to_string()))
        .collect();
    let reload_once = |notify: &mut NotifySocket| {
        run(Command::new(&reload[0]).args(&reload[1..]));
        let reloading = notify.next();
        assert!(
            reloading.contains(&"RELOADING=1".to_string()),
            "{reloading:?}"
        );
        // systemd 253's Type=notify-reload wants the time the reload began.
        assert!(
            reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
            "{reloading:?}"
        );
        let ready = notify.next();
        assert!(
            ready.contains(&"READY=1".to_string()),
            "{ready:?}\n{}",
            log()
        );
        ready
    };
    let ready = reload_once(&mut notify);
    assert!(
        ready.iter().any(|l| l.contains("policy reloaded")),
        "{ready:?}"
    );
    // A policy file that no longer validates: refused, and the service stays ready.
    std::fs::write(&policy, "[proxy\n").unwrap();
    let ready = reload_once(&mut notify);
    assert!(ready.iter().any(|l| l.contains("refused")), "{ready:?}");
    assert!(greeting(port).starts_with("220 "), "{}", log());

    // systemd's default KillSignal.
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let stopping = notify.next();
    assert!(stopping.contains(&"STOPPING=1".to_string()), "{stopping:?}");
    let status = wait_for(|| service_process.0.try_wait().unwrap()).expect("it stops");
    assert!(status.success(), "{status}\n{}", log());
}

#[test]
fn run_started_as_root_binds_a_port_below_1024_then_becomes_the_service_user() {
    // Outside systemd (an init script, a container): [service] user does what User= does.
    let package = installed();
    let dir = scratch_dir("sb-drop.");
    let sink = Sink::start();
    let port = free_low_port();
    let policy = policy(
        dir.path(),
        port,
        sink.port(),
        &format!("[service]\nuser = \"{USER}\"\n"),
    );
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut sb = crate::support::KillOnDrop(
        crate::support::stormbreaker::command()
            .args(["run", "--config"])
            .arg(&policy)
            .env_remove("NOTIFY_SOCKET")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(
        wait_for(|| {
            if let Some(status) = sb.0.try_wait().unwrap() {
                panic!("stormbreaker exited with {status}: {}", log());
            }
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .is_some(),
        "{}",
        log()
    );
    assert!(greeting(port).starts_with("220 "), "{}", log());
    let pid = sb.0.id();
    let (uid, gid) = (package.uid, package.gid);
    assert_eq!(
        proc_status(pid, "Uid:"),
        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")
    );
    assert_eq!(
        proc_status(pid, "Gid:"),
        format!("Gid:\t{gid}\t{gid}\t{gid}\t{gid}")
    );
    // No capability left: not even the one to bind another low port.
    assert_eq!(proc_status(pid, "CapEff:"), "CapEff:\t0000000000000000");
    assert_eq!(proc_status(pid, "CapPrm:"), "CapPrm:\t0000000000000000");
    // What it created after the switch is the service user's: the quarantine folder.
    let quarantine = dir.path().join("spool/quarantine");
    let meta = std::fs::metadata(&quarantine).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", log());
    assert!(
        log().contains("now running as the service user"),
        "{}",
        log()
    );
}

#[test]
fn the_logrotate_file_rotates_the_audit_log_as_the_service_user() {
    let package = installed();
    let dir = scratch_dir("sb-logrotate.");
    // The installed file, pointed at a spool of this test's.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::os::unix::fs::chown(&spool, Some(package.uid), Some(package.gid)).unwrap();
    set_mode(&spool, 0o750);
    let audit = spool.join("audit.log");
    std::fs::write(&audit, "{\"action\":\"hold\"}\n").unwrap();
    std::os::unix::fs::chown(&audit, Some(package.uid), Some(package.gid)).unwrap();
    set_mode(&audit, 0o600);
    let installed_conf = std::fs::read_to_string("/etc/logrotate.d/stormbreaker").unwrap();
    assert!(
        installed_conf.contains("/var/spool/stormbreaker/quarantine/audit.log {"),
        "{installed_conf}"
    );
    let conf = dir.path().join("stormbreaker.logrotate");
    std::fs::write(
        &conf,
        installed_conf.replace(
            "/var/spool/stormbreaker/quarantine/audit.log",
            &audit.display().to_string(),
        ),
    )
    .unwrap();
    run(Command::new("logrotate")
        .arg("--force")
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg(&conf));
    let rotated = std::fs::read_to_string(spool.join("audit.log.1")).unwrap();
    assert!(rotated.contains("hold"), "{rotated}");
    let fresh = std::fs::metadata(&audit).unwrap();
    assert_eq!(fresh.len(), 0);
    assert_eq!(fresh.mode() & 0o777, 0o600);
    assert_eq!((fresh.uid(), fresh.gid()), (package.uid, package.gid));
}
