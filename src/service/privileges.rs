//! Whom the process runs as. `run` started as root binds its ports, then becomes `[service]
//! user` and `group` for good; started as that user already (systemd's `User=`), it checks
//! and goes on. The quarantine commands run by root act as the owner of the quarantine
//! folder, so that what they write there stays the service's.

use crate::config::ServiceConfig;
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;
use std::path::Path;

/// The account of `[service]`, looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub uid: Uid,
    pub group: String,
    pub gid: Gid,
}

/// What [`become_account`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The process already ran as the account.
    Already,
    /// It ran as root and now runs as the account, with no way back.
    Dropped,
}

impl Account {
    /// The account `[service]` names, or None when `user` is unset. Errors name the key.
    pub fn resolve(config: &ServiceConfig) -> Result<Option<Account>, (String, String)> {
        let Some(name) = &config.user else {
            return Ok(None);
        };
        let key = |k: &str| k.to_string();
        let user = User::from_name(name)
            .map_err(|e| (key("service.user"), format!("{name}: {e}")))?
            .ok_or_else(|| {
                (
                    key("service.user"),
                    format!(
                        "there is no user {name:?} on this machine (the package creates \
                         `stormbreaker`; else: adduser --system --group {name})"
                    ),
                )
            })?;
        if user.uid.is_root() {
            return Err((key("service.user"), format!("{name} is root (uid 0)")));
        }
        let (group, gid) = match &config.group {
            Some(group) => {
                let found = Group::from_name(group)
                    .map_err(|e| (key("service.group"), format!("{group}: {e}")))?
                    .ok_or_else(|| {
                        (
                            key("service.group"),
                            format!("there is no group {group:?} on this machine"),
                        )
                    })?;
                if found.gid.as_raw() == 0 {
                    return Err((key("service.group"), format!("{group} is gid 0")));
                }
                (group.clone(), found.gid)
            }
            None => {
                let name = Group::from_gid(user.gid)
                    .ok()
                    .flatten()
                    .map_or_else(|| user.gid.to_string(), |g| g.name);
                (name, user.gid)
            }
        };
        Ok(Some(Account {
            user: name.clone(),
            uid: user.uid,
            group,
            gid,
        }))
    }
}

/// Makes the process run as `account`: a no-op when it already does; from root, supplementary
/// groups, then group, then user, real, effective and saved alike (glibc applies each to every
/// thread), checked afterwards by trying to get root back. Anyone else is refused.
pub fn become_account(account: &Account) -> Result<Switch, String> {
    use nix::unistd::{getegid, geteuid, getuid};
    let (uid, euid) = (getuid(), geteuid());
    if uid == account.uid && euid == account.uid {
        if getegid() != account.gid {
            return Err(format!(
                "started as user {} with group {}, but [service] group is {} ({}): start it \
                 with that group (systemd: Group={})",
                account.user,
                getegid(),
                account.group,
                account.gid,
                account.group
            ));
        }
        return Ok(Switch::Already);
    }
    if !euid.is_root() {
        return Err(format!(
            "started as uid {euid}, but [service] user is {user}: start it as root (it \
             switches to {user} once its ports are bound) or as {user} (systemd: User={user})",
            user = account.user
        ));
    }
    let name = CString::new(account.user.as_str())
        .map_err(|_| format!("{:?} is not a user name", account.user))?;
    switch_ids(Some(&name), account.uid, account.gid)?;
    Ok(Switch::Dropped)
}

/// Run as root, acts as the owner of `dir` (or of its nearest existing parent) when that is
/// not root: the quarantine commands then create and move held messages as the service does.
/// Returns the name (or uid) switched to.
pub fn become_owner_of(dir: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let mut existing = dir;
    let meta = loop {
        match std::fs::metadata(existing) {
            Ok(meta) => break meta,
            Err(_) => match existing.parent() {
                Some(parent) => existing = parent,
                None => return Ok(None),
            },
        }
    };
    let uid = Uid::from_raw(meta.uid());
    if uid.is_root() {
        return Ok(None);
    }
    // The owner's own groups when it is a known user; else the folder's group alone.
    let (name, gid) = match User::from_uid(uid).ok().flatten() {
        Some(user) => (Some(user.name), user.gid),
        None => (None, Gid::from_raw(meta.gid())),
    };
    let cname = name.as_deref().and_then(|n| CString::new(n).ok());
    switch_ids(cname.as_deref(), uid, gid).map_err(|e| {
        format!(
            "acting as {}, the owner of {}: {e}",
            name.as_deref().unwrap_or("its owner"),
            existing.display()
        )
    })?;
    Ok(Some(name.unwrap_or_else(|| uid.to_string())))
}

/// From root to `uid`/`gid` for good. With a user name, its supplementary groups from
/// /etc/group (as systemd's User= and login do); without, none.
fn switch_ids(name: Option<&std::ffi::CStr>, uid: Uid, gid: Gid) -> Result<(), String> {
    use nix::unistd::{geteuid, getuid, initgroups, setgroups, setresgid, setresuid, setuid};
    match name {
        Some(name) => initgroups(name, gid).map_err(|e| format!("initgroups: {e}"))?,
        None => setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?,
    }
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
    // Nothing of root may be left: not the ids, not the way back.
    if getuid().is_root() || geteuid().is_root() || setuid(Uid::from_raw(0)).is_ok() {
        return Err("still able to act as root after switching; refusing to run".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_or_group_is_named_with_its_key() {
        let (key, message) = Account::resolve(&ServiceConfig {
            user: Some("no-such-user-sb".into()),
            group: None,
        })
        .unwrap_err();
        assert_eq!(key, "service.user");
        assert!(message.contains("no-such-user-sb"), "{message}");
        let (key, _) = Account::resolve(&ServiceConfig {
            user: Some("nobody".into()),
            group: Some("no-such-group-sb".into()),
        })
        .unwrap_err();
        assert_eq!(key, "service.group");
        assert_eq!(Account::resolve(&ServiceConfig::default()), Ok(None));
    }

    #[test]
    fn an_existing_user_resolves_with_its_primary_group() {
        let account = Account::resolve(&ServiceConfig {
            user: Some("nobody".into()),
            group: None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(account.user, "nobody");
        assert!(!account.uid.is_root());
        assert_eq!(account.gid, User::from_name("nobody").unwrap().unwrap().gid);
    }
}
