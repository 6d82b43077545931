//! A private Postfix instance: its own config, queue and log in a folder under /var/tmp,
//! listening on a free 127.0.0.1 port and relaying everything to another port. Its main.cf is
//! `postfix-main.cf` beside this file, which `benches/lib.sh` fills in too. Dropping it stops
//! Postfix and removes the folder.

use super::wait::wait_for;
use super::{at_exit, free_port, set_mode};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MAIN_CF: &str = include_str!("postfix-main.cf");
const MILTER_CF: &str = include_str!("postfix-milter.cf");

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
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run scripts/test.sh as root, which installs it"
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
        let main_cf = MAIN_CF
            .replace("@DIR@", &dir.display().to_string())
            .replace("@RELAY_PORT@", &relay_port.to_string());
        std::fs::write(dir.join("conf/main.cf"), format!("{main_cf}{extra}\n")).unwrap();
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
        assert!(
            wait_for(|| TcpStream::connect(("127.0.0.1", port)).is_ok()).is_some(),
            "Postfix did not listen on {port}; see {}",
            postfix.maillog_path().display()
        );
        postfix
    }

    /// For an instance kept in a static: stop it when the test process exits.
    pub fn stop_at_exit(&self) {
        let dir = self.dir.clone();
        at_exit(move || stop(&dir));
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
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop(&self.dir);
    }
}

/// main.cf lines that make Postfix ask stormbreaker at `milter` (`inet:127.0.0.1:PORT` or
/// `unix:/path`), from `postfix-milter.cf`.
pub fn milter_main_cf(milter: &str) -> String {
    MILTER_CF.replace("@MILTER@", milter)
}

/// Stops an instance and removes its folder.
fn stop(dir: &Path) {
    let _ = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(dir.join("conf"))
        .arg("stop")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
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
