//! A private Postfix instance for the integration tests, the one every test crate uses: its own
//! config, queue and log in a folder under /var/tmp (Postfix's `maillog_file` must be under
//! /var), listening on a free 127.0.0.1 port and relaying everything to another port.
//! Dropping it stops Postfix and removes the folder.
#![allow(dead_code)] // each test crate uses a part of this

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    /// The instance's folder: conf/, queue/, data/ and maillog.
    pub dir: PathBuf,
    pub port: u16,
}

impl Postfix {
    /// Starts an instance relaying to 127.0.0.1:`relay_port`; `extra` is appended to main.cf
    /// (milters, XCLIENT hosts, restrictions, timeouts).
    pub fn start(relay_port: u16, extra: &str) -> Postfix {
        assert!(
            std::path::Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run the README's test command (.ci/run), which installs it"
        );
        let dir = tempfile::Builder::new()
            .prefix("sb-postfix.")
            .tempdir_in("/var/tmp")
            .expect("a folder under /var/tmp")
            .keep();
        // Postfix's daemons run as other users: they must traverse it.
        set_mode(&dir, 0o755);
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        run(Command::new("chown")
            .arg("postfix:postfix")
            .arg(dir.join("data")));
        let port = free_port();
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             command_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = postfix.test\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             alias_maps =\n\
             alias_database =\n\
             local_header_rewrite_clients =\n\
             disable_mime_output_conversion = yes\n\
             smtp_tls_security_level = none\n\
             smtp_host_lookup = native\n\
             maillog_file = {d}/maillog\n\
             {extra}\n"
        );
        std::fs::write(dir.join("conf/main.cf"), main_cf).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("master.cf");
        let master: String = master
            .lines()
            .map(|line| {
                if line.starts_with("smtp ") && line.contains(" inet ") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        std::fs::write(dir.join("conf/master.cf"), master).unwrap();
        let postfix = Postfix { dir, port };
        run(Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(postfix.conf())
            .arg("start"));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "Postfix did not listen on {port}; see {}",
                postfix.maillog_path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        postfix
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.join("conf")
    }

    pub fn maillog_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.maillog_path()).unwrap_or_default()
    }

    /// `postqueue -j`: one JSON object per queued message.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.conf())
            .arg("-j"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("postqueue -j line is JSON"))
        .collect()
    }

    /// Queue ids in the hold queue.
    pub fn held(&self) -> Vec<String> {
        self.queue()
            .into_iter()
            .filter(|m| m["queue_name"] == "hold")
            .filter_map(|m| m["queue_id"].as_str().map(str::to_string))
            .collect()
    }

    /// `postsuper -H ID`: release a held message (to the deferred queue), then `postqueue -f`
    /// so it goes out now rather than at the next queue run.
    pub fn release(&self, queue_id: &str) {
        run(Command::new("/usr/sbin/postsuper")
            .arg("-c")
            .arg(self.conf())
            .args(["-H", queue_id]));
        run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.conf())
            .arg("-f"));
    }
}

/// Stops an instance and removes its folder (for `Drop`, and for instances kept in statics).
pub fn stop(dir: &std::path::Path) {
    let _ = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(dir.join("conf"))
        .arg("stop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

/// A port nothing listens on right now (every support module's, through this one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
