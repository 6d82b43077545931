//! A private OpenLDAP server (Debian's slapd) on a free 127.0.0.1 port: its own slapd.conf,
//! database and pid file in a scratch folder, suffix `dc=corp,dc=test`, run in the foreground
//! (`-d 0`) so that dropping it kills it.

use super::wait::wait_port;
use super::{KillOnDrop, free_port, require_tool, scratch_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SUFFIX: &str = "dc=corp,dc=test";
pub const ROOT_DN: &str = "cn=admin,dc=corp,dc=test";
pub const ROOT_PASSWORD: &str = "storm-test-secret";

pub struct Slapd {
    _process: KillOnDrop,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Slapd {
    /// Starts slapd with the core, cosine and inetorgperson schemas and an empty suffix entry.
    pub fn start() -> Slapd {
        require_tool("slapd");
        require_tool("ldapadd");
        let dir = scratch_dir("sb-slapd.");
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {d}/slapd.pid\nargsfile {d}/slapd.args\n\
                 database mdb\nmaxsize 104857600\nsuffix \"{SUFFIX}\"\n\
                 rootdn \"{ROOT_DN}\"\nrootpw {ROOT_PASSWORD}\ndirectory {d}/db\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("slapd")
            .args(["-d", "0", "-h"])
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("slapd.log")).unwrap())
            .spawn()
            .expect("spawn slapd");
        let process = KillOnDrop(child);
        assert!(wait_port(port), "slapd did not listen on {port}");
        let slapd = Slapd {
            _process: process,
            port,
            dir,
        };
        slapd.add(&format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: corp\ndc: corp\n\n\
             dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n"
        ));
        slapd
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// A file holding the root password, for a list source's `password_file`.
    pub fn password_file(&self) -> PathBuf {
        let path = self.dir.path().join("bind.pw");
        std::fs::write(&path, format!("{ROOT_PASSWORD}\n")).unwrap();
        path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ldapadd` the entries of an LDIF text, as the root DN.
    pub fn add(&self, ldif: &str) {
        let file = self.dir.path().join("add.ldif");
        std::fs::write(&file, ldif).unwrap();
        let out = Command::new("ldapadd")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                ROOT_DN,
                "-w",
                ROOT_PASSWORD,
                "-f",
            ])
            .arg(&file)
            .output()
            .expect("ldapadd");
        assert!(
            out.status.success(),
            "ldapadd: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An LDIF group entry under ou=groups: `cn`, an optional address, member DNs.
pub fn group(cn: &str, mail: Option<&str>, members: &[String]) -> String {
    let mut out = format!(
        "dn: cn={cn},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\nobjectClass: extensibleObject\ncn: {cn}\n"
    );
    if let Some(mail) = mail {
        out.push_str(&format!("mail: {mail}\n"));
    }
    for m in members {
        out.push_str(&format!("member: {m}\n"));
    }
    out.push('\n');
    out
}

/// The DN of a group made by [`group`].
pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},ou=groups,{SUFFIX}")
}

/// DNs of people `uid=pFIRST..pLAST` (people need no entries: groupOfNames does not check).
pub fn people(range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("uid=p{i},ou=people,{SUFFIX}"))
        .collect()
}
