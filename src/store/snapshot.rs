//! Open breakers of the in-process store across restarts: a snapshot file under the quarantine
//! folder, written durably (temporary file, fsync, rename, fsync of the folder) when a breaker
//! opens, is tripped or reset, every `EVERY` while anything changed, and at shutdown; read at
//! start. After a crash the held messages themselves are the fallback: each names the storm
//! that held it, its keys and its rule, so a storm with mail held after the snapshot was
//! written (or with no snapshot at all) is opened again from its first hold for `block_for`.
//! Mail held before the snapshot does not count: the snapshot already says whether its storm
//! was still open (an administrator may have reset it).

use super::{MAX_MEMBERS, StormSnapshot};
use crate::breaker::{Limits, Rule};
use crate::engine::Engine;
use crate::quarantine::HeldMeta;
use crate::service::Shutdown;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The snapshot's file name in the quarantine folder.
pub const FILE: &str = "breakers.json";
/// Longest time between two writes while breakers change.
pub const EVERY: Duration = Duration::from_secs(10);
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    version: u32,
    written_at_ms: u64,
    storms: Vec<StormSnapshot>,
}

/// Where the snapshot of a quarantine folder lives.
pub fn path(quarantine_dir: &Path) -> PathBuf {
    quarantine_dir.join(FILE)
}

/// Writes the storms durably; a crash leaves the old file or the new one, never half of one.
pub fn write(path: &Path, storms: &[StormSnapshot], now_ms: u64) -> io::Result<()> {
    let file = SnapshotFile {
        version: VERSION,
        written_at_ms: now_ms,
        storms: storms.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    write_bytes(path, &bytes)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(named)?;
    f.write_all(bytes).map_err(named)?;
    f.sync_all().map_err(named)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(named)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(named)?;
    }
    Ok(())
}

/// When a snapshot file was written and its storms; `None` when there is no file. Errors name
/// the file.
pub fn read(path: &Path) -> io::Result<Option<(u64, Vec<StormSnapshot>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a breaker snapshot: {e}", path.display()),
        )
    })?;
    if file.version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: snapshot version {} unknown",
                path.display(),
                file.version
            ),
        ));
    }
    Ok(Some((file.written_at_ms, file.storms)))
}

/// Storms rebuilt from messages held after `since_ms`: each storm with such held mail (by the
/// records' `thread`, rules that keep a breaker only) is open from its first hold for the block
/// of `limits`, with the held messages' keys joined to it. Counts and senders are not known:
/// they start at zero.
pub fn from_held(
    held: &[HeldMeta],
    limits: &Limits,
    since_ms: u64,
    now_ms: u64,
) -> Vec<StormSnapshot> {
    let now_s = (now_ms / 1000).min(u64::from(u32::MAX)) as u32;
    let mut storms: BTreeMap<&str, StormSnapshot> = BTreeMap::new();
    for meta in held.iter().filter(|m| m.received_at_ms > since_ms) {
        let Some(rule) = Rule::from_name(&meta.breaker).filter(|r| *r != Rule::AutoReply) else {
            continue;
        };
        let held_s = (meta.received_at_ms / 1000).min(u64::from(u32::MAX)) as u32;
        let storm = storms
            .entry(meta.thread.as_str())
            .or_insert_with(|| StormSnapshot {
                label: meta.thread.clone(),
                members: Vec::new(),
                open_window_s: limits.window_s,
                expires: 0,
                opened_at: held_s,
                until: 0,
                strikes: 0,
                rule: rule as u8,
                window_head: 0,
                window_counts: vec![0; crate::breaker::WINDOW_BUCKETS],
                senders: Vec::new(),
            });
        storm.opened_at = storm.opened_at.min(held_s);
        for key in &meta.keys {
            if *key != storm.label
                && storm.members.len() < MAX_MEMBERS
                && !storm.members.contains(key)
            {
                storm.members.push(key.clone());
            }
        }
    }
    storms
        .into_values()
        .filter_map(|mut s| {
            s.until = s.opened_at.saturating_add(limits.block_s);
            s.expires = s.until.saturating_add(limits.window_s.saturating_mul(2));
            (s.until > now_s).then_some(s)
        })
        .collect()
}

/// At start: the snapshot's breakers, then those only mail held after it tells of. Returns how
/// many came from each; a snapshot that cannot be read is logged and skipped.
pub fn restore(engine: &Engine, held: &[HeldMeta], path: &Path, now_ms: u64) -> (usize, usize) {
    let (since, from_file) = match read(path) {
        Ok(Some((written_at, storms))) => (written_at, engine.restore(&storms, now_ms)),
        Ok(None) => (0, 0),
        Err(e) => {
            tracing::error!(error = %e, "breaker snapshot not read; rebuilding from held mail");
            (0, 0)
        }
    };
    let rebuilt = from_held(held, &engine.default_limits(), since, now_ms);
    let from_held = engine.restore(&rebuilt, now_ms);
    (from_file, from_held)
}

/// Writes the engine's snapshot now, when it differs from `last`; returns what was written.
pub fn save(engine: &Engine, path: &Path, last: &mut Vec<u8>) -> io::Result<()> {
    let now = crate::now_ms();
    let Some(storms) = engine.snapshot(now) else {
        return Ok(());
    };
    // Compare without the time stamp: an unchanged snapshot is not written again.
    let content = serde_json::to_vec(&storms).map_err(io::Error::other)?;
    if content == *last {
        return Ok(());
    }
    write(path, &storms, now)?;
    *last = content;
    Ok(())
}

/// The snapshot task of `run`: a write soon after each change the engine signals, at most
/// `EVERY` apart otherwise, until shutdown (the service writes the last one itself, after the
/// sessions in flight have finished).
pub async fn run(engine: Arc<Engine>, path: PathBuf, mut shutdown: Shutdown) {
    let changed = engine.changed();
    let mut last = Vec::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let (engine, path, mut written) = (engine.clone(), path.clone(), std::mem::take(&mut last));
        let done = tokio::task::spawn_blocking(move || {
            let r = save(&engine, &path, &mut written);
            (r, written)
        })
        .await;
        match done {
            Ok((Ok(()), written)) => last = written,
            Ok((Err(e), written)) => {
                last = written;
                tracing::error!(error = %e, "breaker snapshot not written");
            }
            Err(e) => tracing::error!(error = %e, "breaker snapshot task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    const T: u64 = 1_800_000_000_000;

    fn limits() -> Limits {
        Limits {
            trip: 10,
            window_s: 3600,
            block_s: 6 * 3600,
            max_block_s: 48 * 3600,
            fast_senders: 0,
            fast_window_s: 300,
        }
    }

    fn meta(thread: &str, breaker: &str, at_ms: u64, keys: &[&str]) -> HeldMeta {
        HeldMeta {
            id: format!("id-{at_ms}"),
            received_at_ms: at_ms,
            envelope: Envelope::to("a@corp.test", &["all@corp.test"]),
            message_id: None,
            subject: None,
            thread: thread.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            list: None,
            audience: 5000,
            breaker: breaker.into(),
            replies: 11,
            senders: 11,
            reason: String::new(),
            size: 0,
        }
    }

    #[test]
    fn snapshots_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert!(read(&path).unwrap().is_none(), "no file, no storms");
        let storms = from_held(
            &[meta("mid:a@x", "replies", T, &["subj:a"])],
            &limits(),
            0,
            T,
        );
        write(&path, &storms, T).unwrap();
        assert_eq!(read(&path).unwrap(), Some((T, storms)));
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{ torn").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains(FILE), "{err}");
    }

    #[test]
    fn held_mail_tells_which_storms_were_open() {
        let held = [
            meta("mid:a@x", "replies", T + 5000, &["mid:a@x", "subj:a"]),
            meta("mid:a@x", "replies", T, &["tidx:00ff", "subj:a"]),
            meta("wave:all@corp.test", "wave", T, &["subj:remove me"]),
            meta("auto-reply:x@y", "auto-reply", T, &[]),
            meta("subj:old", "replies", T - 7 * 3_600_000, &[]),
        ];
        let storms = from_held(&held, &limits(), 0, T + 60_000);
        let labels: Vec<&str> = storms.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["mid:a@x", "wave:all@corp.test"]);
        let a = &storms[0];
        assert_eq!(u64::from(a.opened_at), T / 1000);
        assert_eq!(a.until - a.opened_at, 6 * 3600);
        assert_eq!(a.members, ["subj:a", "tidx:00ff"]);
        assert_eq!(storms[1].rule, Rule::Wave as u8);
        // Mail held before the snapshot was written is the snapshot's business.
        let later = from_held(&held, &limits(), T + 1000, T + 60_000);
        assert_eq!(later.len(), 1);
        assert_eq!(u64::from(later[0].opened_at), (T + 5000) / 1000);
    }
}
