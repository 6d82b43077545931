//! What the policy file asks of the machine, checked before `run` needs it: files that must
//! load, folders that must be usable. `check-config` runs this too, so an administrator learns
//! of a bad lists file or an unwritable spool before the service does.

use super::schema::*;
use std::path::Path;

impl Config {
    /// Checks the files and folders the configuration names. Read-only, except for a probe
    /// file created and removed in the quarantine folder.
    pub fn check_environment(&self) -> Result<(), (String, String)> {
        if let Some(path) = &self.policy.lists_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                (
                    "policy.lists_file".to_string(),
                    format!("{}: {e}", path.display()),
                )
            })?;
            let mut table = crate::fingerprint::ListTable::default();
            table.add_file_text(&text).map_err(|(line, msg)| {
                (
                    "policy.lists_file".to_string(),
                    format!("{}:{line}: {msg}", path.display()),
                )
            })?;
        }
        for (i, source) in self.list_sources.iter().enumerate() {
            check_list_source(source)
                .map_err(|(leaf, e)| (format!("list_sources[{i}].{leaf}"), e))?;
        }
        writable_dir(&self.quarantine.dir).map_err(|e| ("quarantine.dir".to_string(), e))?;
        if let Some(listen) = &self.milter.listen
            && let Some(path) = unix_socket_path(listen)
        {
            let folder = path.parent().unwrap_or(Path::new("/"));
            if !folder.is_dir() {
                return Err((
                    "milter.listen".into(),
                    format!("the folder {} does not exist", folder.display()),
                ));
            }
        }
        // The account `run` switches to must exist here.
        crate::service::privileges::Account::resolve(&self.service)?;
        if let Some(path) = &self.admin.token_file {
            crate::admin::auth::Tokens::load(path)
                .map_err(|e| ("admin.token_file".to_string(), e))?;
        }
        for (i, peer) in self.admin.peers.iter().enumerate() {
            if let Some(path) = &peer.token_file {
                crate::admin::auth::Tokens::load(path)
                    .map_err(|e| (format!("admin.peers[{i}].token_file"), e))?;
            }
        }
        if let Some(socket) = self.log.socket_path() {
            use std::os::unix::fs::FileTypeExt;
            let is_socket = std::fs::metadata(&socket).map(|m| m.file_type().is_socket());
            match is_socket {
                Ok(true) => {}
                Ok(false) => {
                    return Err((
                        "log.output".into(),
                        format!("{} is not a socket", socket.display()),
                    ));
                }
                Err(e) => {
                    return Err((
                        "log.output".into(),
                        format!(
                            "{}: {e} (is the {} daemon running? set log.socket for another path)",
                            socket.display(),
                            match self.log.output {
                                LogOutput::Journald => "journald",
                                _ => "syslog",
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The files a list source names. What the source answers is not checked here: a source that
/// fails at run time keeps its last lists and mail flows.
fn check_list_source(source: &ListSourceConfig) -> Result<(), (&'static str, String)> {
    if let Some(dir) = &source.config_dir
        && !dir.join("main.cf").is_file()
    {
        return Err((
            "config_dir",
            format!(
                "{}: no main.cf in it (a Postfix configuration folder)",
                dir.display()
            ),
        ));
    }
    for map in &source.maps {
        let path = map.trim();
        if path.starts_with('/') {
            std::fs::metadata(path).map_err(|e| ("maps", format!("{path}: {e}")))?;
        }
    }
    if let Some(file) = &source.password_file {
        std::fs::read_to_string(file)
            .map_err(|e| ("password_file", format!("{}: {e}", file.display())))?;
    }
    if let Some(ca) = &source.tls_ca {
        crate::tls::client_config(Some(ca)).map_err(|e| ("tls_ca", e))?;
    }
    Ok(())
}

/// The path of a milter listen address that is a unix socket (`unix:PATH`, `local:PATH`, or
/// a path).
pub fn unix_socket_path(listen: &str) -> Option<&Path> {
    listen
        .strip_prefix("unix:")
        .or_else(|| listen.strip_prefix("local:"))
        .or_else(|| listen.contains('/').then_some(listen))
        .map(Path::new)
}

/// `dir` is a folder we can write in, or can be created under a folder we can write in.
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .ok_or_else(|| format!("{}: no existing parent folder", dir.display()))?;
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a folder", existing.display()));
    }
    let probe = existing.join(format!(".stormbreaker-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("{}: cannot write there: {e}", existing.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
