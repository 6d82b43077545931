//! The quarantine folder: held messages written durably, listed, read, deleted and purged.
//!
//! ```text
//! DIR/tmp/<id>/message        being written (locked by its writer), or being deleted
//! DIR/held/<id>/message       a held message (see record.rs for the format)
//! DIR/held/<id>/journal       its release journal, once a release was tried
//! DIR/released/<id>/...       released to every recipient; kept until retention for --force
//! DIR/audit.log
//! ```
//! A message enters `held/` by renaming its whole folder after the file and the folder are
//! fsynced, and leaves it by renaming the folder away: a crash at any point leaves a complete held
//! message or none. All calls block (std::fs); async callers use spawn_blocking.

use crate::envelope::Envelope;
use crate::quarantine::audit;
use crate::quarantine::journal::Journal;
use crate::quarantine::record::{self, HeldMeta, HeldSummary, TRAILER_LEN, Torn, Trailer};
use crate::verdict::Hold;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MESSAGE: &str = "message";
const JOURNAL: &str = "journal";
/// A temporary folder with no message file yet is left alone this long (its writer may be
/// between mkdir and create).
const EMPTY_TMP_GRACE: Duration = Duration::from_secs(600);

/// The id of a held message, e.g. `20261123091448-3fa9c2d1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldId(pub String);

impl fmt::Display for HeldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a message still waits in the quarantine or was released to every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Held,
    Released,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("no held message with id {0:?}")]
    UnknownId(String),
    #[error("{0:?} is not a quarantine id (letters, digits and '-' only)")]
    BadId(String),
    #[error("held message {0} is damaged: {1}")]
    Torn(String, Torn),
    #[error("held message {0} is being released or deleted by another process")]
    Busy(String),
    #[error("quarantine: {0}")]
    Io(#[from] io::Error),
}

/// Which held messages `list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// A storm id or any key of the held message, as its record has it (see
    /// `fingerprint::normalize_key` for what an administrator typed).
    pub thread: Option<String>,
    pub list: Option<String>,
    /// Envelope sender, compared without regard to case.
    pub sender: Option<String>,
    /// Only messages received at or after this Unix time in milliseconds.
    pub since_ms: Option<u64>,
}

impl ListFilter {
    pub fn matches(&self, meta: &HeldMeta) -> bool {
        self.thread
            .as_ref()
            .is_none_or(|t| *t == meta.thread || meta.keys.iter().any(|k| k == t))
            && self.list.as_ref().is_none_or(|l| {
                meta.list
                    .as_ref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(l))
            })
            && self
                .sender
                .as_ref()
                .is_none_or(|s| meta.envelope.mail_from.eq_ignore_ascii_case(s))
            && self.since_ms.is_none_or(|t| meta.received_at_ms >= t)
    }
}

/// What a scan of `held/` found.
#[derive(Debug, Default)]
pub struct Scan {
    pub held: Vec<HeldMeta>,
    /// Files that are not complete held messages: reported, never listed.
    pub torn: Vec<(PathBuf, Torn)>,
}

/// One message read back: metadata, exact bytes, release journal.
#[derive(Debug, Clone)]
pub struct HeldMessage {
    pub meta: HeldMeta,
    pub state: State,
    pub content: Vec<u8>,
    pub journal: Journal,
}

/// The quarantine folder. Cheap to clone and share between tasks.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dirs: Arc<Dirs>,
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    tmp: PathBuf,
    held: PathBuf,
    released: PathBuf,
}

impl Quarantine {
    /// Creates the folder tree if needed, removes what crashed writers left in `tmp/`, and logs
    /// any damaged held message.
    pub fn open(dir: &Path) -> io::Result<Quarantine> {
        let dirs = Dirs {
            root: dir.to_path_buf(),
            tmp: dir.join("tmp"),
            held: dir.join("held"),
            released: dir.join("released"),
        };
        for d in [&dirs.tmp, &dirs.held, &dirs.released] {
            private_dir()
                .recursive(true)
                .create(d)
                .map_err(|e| with_path(e, d))?;
        }
        let q = Quarantine {
            dirs: Arc::new(dirs),
        };
        q.clean_tmp()?;
        for (path, why) in q.scan()?.torn {
            tracing::error!(path = %path.display(), %why, "damaged file in the quarantine: not a held message");
        }
        Ok(q)
    }

    pub fn dir(&self) -> &Path {
        &self.dirs.root
    }

    /// Starts writing a held message.
    pub fn begin(&self) -> io::Result<HoldWriter> {
        loop {
            let id = new_id(crate::now_ms());
            let tmp_dir = self.dirs.tmp.join(&id);
            match private_dir().create(&tmp_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(with_path(e, &tmp_dir)),
            }
            let file = private_file().create_new(true).open(tmp_dir.join(MESSAGE));
            let file = match file.and_then(|f| f.try_lock().map(|()| f).map_err(io::Error::from)) {
                Ok(f) => f,
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp_dir);
                    return Err(with_path(e, &tmp_dir));
                }
            };
            return Ok(HoldWriter {
                store: self.clone(),
                id,
                tmp_dir,
                file: Some(BufWriter::with_capacity(64 * 1024, file)),
                crc: crc32fast::Hasher::new(),
                len: 0,
            });
        }
    }

    /// Held messages matching `filter`, oldest first. Damaged files are logged and left out.
    pub fn list(&self, filter: &ListFilter) -> io::Result<Vec<HeldSummary>> {
        let scan = self.scan()?;
        for (path, why) in &scan.torn {
            tracing::warn!(path = %path.display(), %why, "damaged file in the quarantine: not listed");
        }
        Ok(scan
            .held
            .iter()
            .filter(|m| filter.matches(m))
            .map(HeldMeta::summary)
            .collect())
    }

    /// Every held message's metadata (checked), and what is damaged.
    pub fn scan(&self) -> io::Result<Scan> {
        self.scan_dir(&self.dirs.held)
    }

    /// Every released message's metadata (kept until retention for `release --force`).
    pub fn scan_released(&self) -> io::Result<Scan> {
        self.scan_dir(&self.dirs.released)
    }

    /// How many messages are held and how many released, without reading them (one
    /// directory listing each): for metrics scraped every few seconds.
    pub fn count(&self) -> io::Result<(usize, usize)> {
        let entries = |dir: &Path| -> io::Result<usize> {
            Ok(fs::read_dir(dir)
                .map_err(|e| with_path(e, dir))?
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
                .count())
        };
        Ok((entries(&self.dirs.held)?, entries(&self.dirs.released)?))
    }

    fn scan_dir(&self, dir: &Path) -> io::Result<Scan> {
        let mut scan = Scan::default();
        for entry in fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
            let entry = entry?;
            let path = entry.path().join(MESSAGE);
            match read_meta(&path) {
                Ok(Ok(meta)) if Some(meta.id.as_str()) == entry.file_name().to_str() => {
                    scan.held.push(meta)
                }
                Ok(Ok(meta)) => scan.torn.push((
                    path,
                    Torn::BadMetadata(format!("id {} in a folder of another name", meta.id)),
                )),
                Ok(Err(torn)) => scan.torn.push((path, torn)),
                // Gone between read_dir and open: released or deleted meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => scan.torn.push((
                    entry.path(),
                    Torn::BadMetadata("a stray file, not a message folder".into()),
                )),
                Err(e) => return Err(with_path(e, &path)),
            }
        }
        scan.held
            .sort_by(|a, b| (a.received_at_ms, &a.id).cmp(&(b.received_at_ms, &b.id)));
        Ok(scan)
    }

    /// Reads one message, held or released, with its content checked against the checksum.
    pub fn get(&self, id: &str) -> Result<HeldMessage, QuarantineError> {
        let (dir, state) = self.locate(id)?;
        let path = dir.join(MESSAGE);
        let (meta, content) = match read_whole(&path) {
            Ok(Ok(pair)) => pair,
            Ok(Err(torn)) => return Err(QuarantineError::Torn(id.into(), torn)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(QuarantineError::UnknownId(id.into()));
            }
            Err(e) => return Err(with_path(e, &path).into()),
        };
        let journal = Journal::load(&dir.join(JOURNAL))?;
        Ok(HeldMessage {
            meta,
            state,
            content,
            journal,
        })
    }

    /// Removes a held (or released) message; returns what it was.
    pub fn delete(&self, id: &str, who: &str) -> Result<HeldMeta, QuarantineError> {
        let lock = self.lock(id)?;
        let meta = self.get(id)?.meta;
        self.remove_locked(lock, &meta)?;
        audit::record(self.dir(), who, "delete", &meta, "");
        tracing::info!(id, who, "held message deleted");
        Ok(meta)
    }

    /// Messages (held or released) received longer than `age` before `now_ms`; removed unless
    /// `dry_run`. Each removal is audited with `action`.
    pub fn purge_older_than(
        &self,
        age: Duration,
        now_ms: u64,
        dry_run: bool,
        who: &str,
    ) -> io::Result<Vec<HeldSummary>> {
        self.purge(age, now_ms, dry_run, who, "purge")
    }

    /// Removes what is older than the retention; the server calls this periodically.
    pub fn purge_expired(&self, retention: Duration, now_ms: u64) -> io::Result<Vec<HeldSummary>> {
        let expired = self.purge(retention, now_ms, false, "retention", "expire")?;
        for s in &expired {
            tracing::info!(id = %s.id, received_at = %s.received_at, thread = %s.thread, "held message expired");
        }
        Ok(expired)
    }

    fn purge(
        &self,
        age: Duration,
        now_ms: u64,
        dry_run: bool,
        who: &str,
        action: &str,
    ) -> io::Result<Vec<HeldSummary>> {
        let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
        let mut old = self.scan()?.held;
        old.extend(self.scan_dir(&self.dirs.released)?.held);
        old.retain(|m| m.received_at_ms < cutoff);
        let mut done = Vec::new();
        for meta in old {
            if !dry_run {
                let removed = self
                    .lock(&meta.id)
                    .and_then(|lock| self.remove_locked(lock, &meta));
                match removed {
                    Ok(()) => audit::record(self.dir(), who, action, &meta, ""),
                    Err(QuarantineError::Busy(_) | QuarantineError::UnknownId(_)) => continue,
                    Err(QuarantineError::Io(e)) => return Err(e),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            done.push(meta.summary());
        }
        Ok(done)
    }

    /// The folder of a message and whether it is held or released.
    pub(crate) fn locate(&self, id: &str) -> Result<(PathBuf, State), QuarantineError> {
        check_id(id)?;
        let held = self.dirs.held.join(id);
        if held.is_dir() {
            return Ok((held, State::Held));
        }
        let released = self.dirs.released.join(id);
        if released.is_dir() {
            return Ok((released, State::Released));
        }
        Err(QuarantineError::UnknownId(id.into()))
    }

    pub(crate) fn journal_path(&self, id: &str) -> Result<PathBuf, QuarantineError> {
        Ok(self.locate(id)?.0.join(JOURNAL))
    }

    /// Takes the message's lock (an flock on its file, dropped with the process if it dies), so
    /// that two releases or a release and a delete cannot run on one message at once.
    pub(crate) fn lock(&self, id: &str) -> Result<MessageLock, QuarantineError> {
        let (dir, _) = self.locate(id)?;
        let file = File::open(dir.join(MESSAGE)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QuarantineError::UnknownId(id.into()),
            _ => with_path(e, &dir).into(),
        })?;
        match file.try_lock() {
            Ok(()) => Ok(MessageLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(QuarantineError::Busy(id.into())),
            Err(fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Moves a held message to `released/` once every recipient has it.
    pub(crate) fn mark_released(&self, _lock: &MessageLock, id: &str) -> io::Result<()> {
        let from = self.dirs.held.join(id);
        let to = self.dirs.released.join(id);
        fs::rename(&from, &to).map_err(|e| with_path(e, &from))?;
        sync_dir(&self.dirs.released)?;
        sync_dir(&self.dirs.held)
    }

    /// Renames the message's folder out of sight first, then removes it, so a crash mid-way
    /// leaves nothing that looks held.
    fn remove_locked(&self, lock: MessageLock, meta: &HeldMeta) -> Result<(), QuarantineError> {
        let (dir, _) = self.locate(&meta.id)?;
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let doomed =
            self.dirs
                .tmp
                .join(format!("{}.deleted-{:08x}", meta.id, rand::random::<u32>()));
        fs::rename(&dir, &doomed).map_err(|e| with_path(e, &dir))?;
        sync_dir(&parent)?;
        drop(lock);
        fs::remove_dir_all(&doomed).map_err(|e| with_path(e, &doomed))?;
        Ok(())
    }

    /// Removes folders in `tmp/` whose writer is gone: their message file is not locked.
    fn clean_tmp(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dirs.tmp)? {
            let path = entry?.path();
            let abandoned = match File::open(path.join(MESSAGE)) {
                Ok(f) => f.try_lock().is_ok(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default() > EMPTY_TMP_GRACE)
                    .unwrap_or(true),
                Err(_) => false,
            };
            if abandoned {
                tracing::info!(path = %path.display(), "removing an unfinished quarantine write");
                if let Err(e) = fs::remove_dir_all(&path).or_else(|e| match e.kind() {
                    io::ErrorKind::NotADirectory => fs::remove_file(&path),
                    _ => Err(e),
                }) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove");
                }
            }
        }
        Ok(())
    }
}

/// Holds a message's lock until dropped.
#[derive(Debug)]
pub struct MessageLock {
    _file: File,
}

/// A held message being written. Dropping it without `commit` removes what was written.
#[derive(Debug)]
pub struct HoldWriter {
    store: Quarantine,
    id: String,
    tmp_dir: PathBuf,
    file: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl HoldWriter {
    /// The id this message will have once committed.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends content: the exact bytes received, after dot-unstuffing.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("writer closed"))?;
        file.write_all(bytes)?;
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes the metadata and trailer, fsyncs, and renames the message into `held/`. Only after
    /// this returns Ok may the client hear 250.
    pub fn commit(
        mut self,
        envelope: &Envelope,
        hold: &Hold,
        headers: &[u8],
    ) -> io::Result<HeldId> {
        let mut meta = HeldMeta::new(self.id.clone(), crate::now_ms(), envelope, hold, headers);
        meta.size = self.len;
        let meta_bytes = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let trailer = Trailer {
            content_len: self.len,
            meta_len: u32::try_from(meta_bytes.len())
                .map_err(|_| io::Error::other("metadata larger than 4 GiB"))?,
            content_crc: self.crc.clone().finalize(),
            meta_crc: crc32fast::hash(&meta_bytes),
        };
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("writer closed"))?;
        file.write_all(&meta_bytes)?;
        file.write_all(&trailer.encode())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        sync_dir(&self.tmp_dir)?;
        let target = self.store.dirs.held.join(&self.id);
        fs::rename(&self.tmp_dir, &target).map_err(|e| with_path(e, &target))?;
        // From here on the message is in held/: Drop must not remove anything.
        self.tmp_dir = PathBuf::new();
        sync_dir(&self.store.dirs.held)?;
        drop(file);
        audit::record(self.store.dir(), "proxy", "hold", &meta, &meta.reason);
        Ok(HeldId(meta.id))
    }
}

impl Drop for HoldWriter {
    fn drop(&mut self) {
        if !self.tmp_dir.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// A new id: UTC time to the second, then 32 random bits.
fn new_id(now_ms: u64) -> String {
    let stamp: String = record::rfc3339(now_ms)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{stamp}-{:08x}", rand::random::<u32>())
}

fn check_id(id: &str) -> Result<(), QuarantineError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(QuarantineError::BadId(id.into()));
    }
    Ok(())
}

/// The checked metadata of a message file, without reading its content.
fn read_meta(path: &Path) -> io::Result<Result<HeldMeta, Torn>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < TRAILER_LEN as u64 {
        return Ok(Err(Torn::TooShort(len)));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    file.seek(SeekFrom::Start(len - TRAILER_LEN as u64))?;
    file.read_exact(&mut trailer)?;
    let parsed = match Trailer::decode(&trailer) {
        Ok(t) if t.file_len() == len => t,
        Ok(t) => {
            return Ok(Err(Torn::LengthMismatch {
                file: len,
                expected: t.file_len(),
            }));
        }
        Err(torn) => return Ok(Err(torn)),
    };
    let mut meta = vec![0u8; parsed.meta_len as usize];
    file.seek(SeekFrom::Start(parsed.content_len))?;
    file.read_exact(&mut meta)?;
    Ok(record::check_meta(len, &trailer, &meta))
}

/// Metadata and content, both checked.
fn read_whole(path: &Path) -> io::Result<Result<(HeldMeta, Vec<u8>), Torn>> {
    let meta = match read_meta(path)? {
        Ok(m) => m,
        Err(torn) => return Ok(Err(torn)),
    };
    let mut file = File::open(path)?;
    let mut bytes = vec![0u8; meta.size as usize + TRAILER_LEN];
    file.read_exact(&mut bytes[..meta.size as usize])?;
    file.seek(SeekFrom::End(-(TRAILER_LEN as i64)))?;
    file.read_exact(&mut bytes[meta.size as usize..])?;
    let trailer = match Trailer::decode(&bytes[meta.size as usize..]) {
        Ok(t) => t,
        Err(torn) => return Ok(Err(torn)),
    };
    bytes.truncate(meta.size as usize);
    if crc32fast::hash(&bytes) != trailer.content_crc {
        return Ok(Err(Torn::ContentChecksum));
    }
    Ok(Ok((meta, bytes)))
}

/// Held mail is private: folders 0700, files 0600 (before the umask).
fn private_dir() -> fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = fs::DirBuilder::new();
    b.mode(0o700);
    b
}

pub(crate) fn private_file() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).mode(0o600);
    o
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, dir))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
