//! Durable storage on a real disk: one append-only file of records per node,
//! framed with [`crate::env::record`] (checksummed, chained batches, one per
//! sync), so the recovery code is the one the simulator exercises.
//!
//! Appends go to an in-memory batch; [`FileStorage::sync`] seals it, writes
//! it and fsyncs. Concurrent syncs are batched (group commit): a sync that
//! waited behind another one returns at once when that one already made its
//! records durable, so one fsync serves many callers. One lock covers the
//! write and the fsync, so a batch is only written once the previous one is
//! durable: what lets recovery tell a torn tail from corruption.
//!
//! Opening recovers the log: a torn tail past the last sync is truncated;
//! any other damage refuses to open, with the file, the byte offset and
//! what the operator can do. So does a log that ends before its sync
//! watermark (`node-<id>.synced`, see [`record::Watermark`]): synced
//! batches cut or zeroed from its end, which the file alone cannot tell
//! from a shorter log. The watermark is rewritten in place after each
//! fsync returns (one small write, not fsynced; compaction fsyncs it).
//! A directory is tied to one member of one
//! cluster by its [`Identity`] file: a directory without one (wiped, or
//! never initialized) or with another member's is refused, unless the
//! caller explicitly initializes a new member ([`FileStorage::init`]).
//!
//! After a failed write or fsync the storage refuses everything: what the
//! kernel kept of the failed write is unknown, and retrying an fsync can
//! report success for data that was dropped (the "fsyncgate" lesson). The
//! node must restart and recover from what the file holds.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::identity::Identity;
use crate::env::record::{self, Batch, Chain, Watermark};
use crate::env::{EnvError, NodeId};

/// One node's record log in a data directory.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    dir: PathBuf,
    /// Appended records not yet written, and how many appends ever.
    pending: Mutex<Pending>,
    /// Held for the whole of a write+fsync, a rewrite or a load, so file
    /// operations never interleave (and batches reach the disk in order).
    file: Mutex<FileState>,
    /// Mirrors `FileState::poisoned` for `append`, which must not wait
    /// behind an fsync holding the file lock.
    poisoned: AtomicBool,
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    appended: u64,
}

struct FileState {
    file: File,
    /// The sync watermark, rewritten in place after each fsync.
    watermark: File,
    /// Appends (by count) known durable.
    durable: u64,
    /// Where the next batch continues the file's checksum chain.
    chain: Chain,
    /// Set by a failed write or fsync; every later call fails with it.
    poisoned: Option<String>,
}

/// What an operator can do about a member whose data cannot be used.
const RECOVER_ADVICE: &str = "the node refuses to start rather than lose or invent acknowledged writes. \
    Keep the file for inspection; then either restore this member's data directory from a backup, \
    or wipe it, start the member again as a new one (`ringfence node --join`) and replace the old one \
    (`ringfence member replace`) so that it catches up from its peers, while the other members hold a \
    majority without it";

impl FileStorage {
    /// Opens member `identity.member`'s existing log in `dir` and recovers
    /// it (see the module docs). Refuses a directory the member was never
    /// initialized in, or another member's or cluster's.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Self, EnvError> {
        let id = identity.member;
        let id_path = Identity::path(dir, id);
        match Identity::read(&id_path)? {
            Some(found) if found == *identity => {}
            Some(found) => {
                return Err(EnvError::Storage(format!(
                    "{}: this directory belongs to {found}, not {identity}; start the node on its own data directory",
                    id_path.display()
                )))
            }
            None => {
                return Err(EnvError::Storage(format!(
                    "{}: no identity file: {} holds no data of {identity} (wiped, or never initialized). \
                     A member that lost its data has lost its votes and acknowledged entries; \
                     start it with `ringfence node --join` (NodeConfig::init) as a new member and \
                     replace the old one (`ringfence member replace`), while the other members hold \
                     a majority without it",
                    id_path.display(),
                    dir.display()
                )))
            }
        }
        Self::recover(dir, id)
    }

    /// Initializes member `identity.member`'s storage in `dir` if the
    /// directory holds nothing of it yet (writing its identity file and an
    /// empty log), then opens it. A directory already initialized for this
    /// member just opens; a log without an identity file, or another
    /// member's or cluster's identity, is refused as by [`open`](Self::open).
    pub fn init(dir: &Path, identity: &Identity) -> Result<Self, EnvError> {
        let id_path = Identity::path(dir, identity.member);
        let log = log_path(dir, identity.member);
        if Identity::read(&id_path)?.is_none() {
            if log.exists() {
                return Err(EnvError::Storage(format!(
                    "{}: a log without an identity file (written by an older version, or its identity was lost); \
                     refusing to adopt it as {identity}",
                    log.display()
                )));
            }
            fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
            File::create(&log).map_err(|e| io_error(&log, "create", e))?;
            let watermark = watermark_path(dir, identity.member);
            File::create(&watermark)
                .and_then(|file| {
                    file.write_all_at(&Watermark::default().encode(), 0)?;
                    file.sync_all()
                })
                .map_err(|e| io_error(&watermark, "create", e))?;
            identity.write(&id_path)?;
            fsync_dir(dir)?;
            tracing::info!(dir = %dir.display(), %identity, "initialized a new member's storage");
        }
        Self::open(dir, identity)
    }

    /// Recovers `node-<id>.log` in `dir`: drops a torn tail, refuses
    /// corruption and a log that ends before its watermark. A temporary
    /// file left by a rewrite that crashed before its rename is removed:
    /// the old log is still the valid one.
    fn recover(dir: &Path, id: NodeId) -> Result<Self, EnvError> {
        let path = log_path(dir, id);
        let (watermark_file, watermark) = open_watermark(&watermark_path(dir, id))?;
        let tmp = temp_path(&path);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|e| io_error(&tmp, "remove stale temp file", e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| io_error(&path, "open (the member's identity file exists, its log does not)", e))?;
        let bytes = fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
        let recovered = record::recover(&bytes, watermark, None).map_err(|e| unusable(&path, e))?;
        if recovered.valid_len < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                offset = recovered.valid_len,
                dropped = bytes.len() - recovered.valid_len,
                "truncating a torn write after the last sync"
            );
            file.set_len(recovered.valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error(&path, "truncate torn tail", e))?;
        }
        let recovered_mark = Watermark::of(recovered.chain);
        if recovered_mark > watermark {
            // Batches written before a crash, whole but never synced (or
            // a watermark whose write-back a power loss lost): sync them
            // and mark them, so damage to them later is not taken for a
            // torn write.
            file.sync_all()
                .and_then(|()| watermark_file.write_all_at(&recovered_mark.encode(), 0))
                .and_then(|()| watermark_file.sync_data())
                .map_err(|e| io_error(&path, "sync and mark the recovered log", e))?;
        }
        Ok(FileStorage {
            inner: Arc::new(Inner {
                path,
                dir: dir.to_path_buf(),
                pending: Mutex::new(Pending::default()),
                file: Mutex::new(FileState {
                    file,
                    watermark: watermark_file,
                    durable: 0,
                    chain: recovered.chain,
                    poisoned: None,
                }),
                poisoned: AtomicBool::new(false),
            }),
        })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Every record on disk, then those appended but not yet synced.
    /// Blocking: meant for startup.
    pub fn load(&self) -> Result<Vec<Vec<u8>>, EnvError> {
        let _state = self.inner.lock_file()?;
        let path = &self.inner.path;
        let bytes = fs::read(path).map_err(|e| io_error(path, "read", e))?;
        let mut records = decode(path, &bytes)?.records;
        records.extend(self.inner.pending.lock().expect("pending lock").batch.records());
        Ok(records)
    }

    /// Buffers one record; durable only once a later [`sync`](Self::sync)
    /// returns.
    pub fn append(&self, payload: &[u8]) -> Result<(), EnvError> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            // The reason is with the file state; the next sync reports it.
            return Err(EnvError::Storage(format!(
                "{}: storage stopped after a failed write",
                self.inner.path.display()
            )));
        }
        let mut pending = self.inner.pending.lock().expect("pending lock");
        pending
            .batch
            .push(payload)
            .map_err(|e| EnvError::Storage(e.to_string()))?;
        pending.appended += 1;
        Ok(())
    }

    /// Makes every record appended before the call durable.
    ///
    /// On a multi-thread runtime the fsync runs on the calling worker
    /// (`block_in_place` moves its other tasks away), which is shorter for
    /// a commit than a hop to a blocking thread and back; a current-thread
    /// runtime cannot lend its only worker, so there it is such a hop.
    pub async fn sync(&self) -> Result<(), EnvError> {
        let target = self.inner.pending.lock().expect("pending lock").appended;
        if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(|| self.inner.sync_to(target));
        }
        let inner = self.inner.clone();
        blocking(move || inner.sync_to(target)).await
    }

    /// Atomically and durably replaces the log with `records`, including
    /// anything appended and not yet synced: write a temporary file, fsync
    /// it, rename it over the log, fsync the directory.
    pub async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), EnvError> {
        let inner = self.inner.clone();
        blocking(move || inner.rewrite(&records)).await
    }
}

/// Opens the sync watermark for rewriting in place, with what it says.
/// Refuses a missing or unreadable one: without it a log cut at a batch
/// boundary would pass for a shorter log.
fn open_watermark(path: &Path) -> Result<(File, Watermark), EnvError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
        EnvError::Storage(format!(
            "{}: cannot open the sync watermark ({e}), which says how much of the log was synced; {RECOVER_ADVICE}",
            path.display()
        ))
    })?;
    let mut bytes = [0; Watermark::BYTES + 1];
    let len = file.read_at(&mut bytes, 0).map_err(|e| io_error(path, "read", e))?;
    let mark = Watermark::decode(&bytes[..len]).map_err(|why| unusable(path, why))?;
    Ok((file, mark))
}

/// Decodes a whole log file; corruption becomes an error naming the file,
/// the offset and what to do.
fn decode(path: &Path, bytes: &[u8]) -> Result<record::Recovered, EnvError> {
    record::decode(bytes).map_err(|e| unusable(path, e))
}

/// Damage in `path` that makes the member's data unusable, with what the
/// operator can do.
fn unusable(path: &Path, why: impl std::fmt::Display) -> EnvError {
    EnvError::Storage(format!("{}: {why}; {RECOVER_ADVICE}", path.display()))
}

fn log_path(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{id}.log"))
}

fn watermark_path(dir: &Path, id: NodeId) -> PathBuf {
    dir.join(format!("node-{id}.synced"))
}

impl Inner {
    fn lock_file(&self) -> Result<MutexGuard<'_, FileState>, EnvError> {
        let state = self.file.lock().expect("file lock");
        match &state.poisoned {
            Some(reason) => Err(EnvError::Storage(reason.clone())),
            None => Ok(state),
        }
    }

    fn sync_to(&self, target: u64) -> Result<(), EnvError> {
        let mut state = self.lock_file()?;
        if state.durable >= target {
            return Ok(()); // a sync that ran while this one waited covered it
        }
        let (mut batch, appended) = {
            let mut pending = self.pending.lock().expect("pending lock");
            (std::mem::take(&mut pending.batch), pending.appended)
        };
        let bytes = batch.seal(&mut state.chain);
        let mark = Watermark::of(state.chain).encode();
        let result = (&state.file)
            .write_all(&bytes)
            .and_then(|()| state.file.sync_data())
            .and_then(|()| state.watermark.write_all_at(&mark, 0));
        match result {
            Ok(()) => {
                state.durable = appended;
                Ok(())
            }
            Err(e) => Err(self.poison(&mut state, io_error(&self.path, "write, fsync and mark synced", e))),
        }
    }

    fn rewrite(&self, records: &[Vec<u8>]) -> Result<(), EnvError> {
        let mut state = self.lock_file()?;
        let (bytes, chain) = record::encode_log(records, state.chain).map_err(|e| EnvError::Storage(e.to_string()))?;
        let appended = {
            let mut pending = self.pending.lock().expect("pending lock");
            pending.batch = Batch::default();
            pending.appended
        };
        let tmp = temp_path(&self.path);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })()
        .map_err(|e| io_error(&tmp, "write temp file", e));
        if let Err(e) = written {
            // The old log is untouched; only the temp file is in doubt.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // From the rename on, a failure leaves it unknown which log the
        // directory holds after a crash: poison rather than guess.
        let swapped = fs::rename(&tmp, &self.path)
            .map_err(|e| io_error(&self.path, "rename temp file over", e))
            .and_then(|()| fsync_dir(&self.dir))
            .and_then(|()| {
                OpenOptions::new()
                    .append(true)
                    .read(true)
                    .open(&self.path)
                    .map_err(|e| io_error(&self.path, "reopen", e))
            })
            .and_then(|file| {
                // Off the commit path: the one place the watermark is fsynced.
                let mark = Watermark::of(chain).encode();
                (state.watermark.write_all_at(&mark, 0))
                    .and_then(|()| state.watermark.sync_data())
                    .map_err(|e| io_error(&self.path, "mark synced after rewrite", e))?;
                Ok(file)
            });
        match swapped {
            Ok(file) => {
                let old = std::mem::replace(&mut state.file, file);
                state.durable = appended;
                state.chain = chain;
                close_in_background(old);
                Ok(())
            }
            Err(e) => Err(self.poison(&mut state, e)),
        }
    }

    fn poison(&self, state: &mut FileState, error: EnvError) -> EnvError {
        let EnvError::Storage(reason) = &error else {
            unreachable!("storage errors only")
        };
        tracing::error!(file = %self.path.display(), %reason, "storage failed; refusing further writes");
        state.poisoned = Some(format!("{reason} (storage stopped after this failure)"));
        self.poisoned.store(true, Ordering::Release);
        error
    }
}

/// Closes the replaced log's handle off the caller's path. Its name now
/// belongs to the new log, so this is the last reference to the old inode,
/// and closing it frees the inode's blocks: measured at 16 ms on this
/// project's machine (ext4 mounted with `discard`), a stall every commit
/// behind a compaction would otherwise wait for.
fn close_in_background(file: File) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(file))),
        Err(_) => drop(file),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("log file name").to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes renames and creations in `dir` durable.
fn fsync_dir(dir: &Path) -> Result<(), EnvError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsync directory", e))
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> EnvError {
    EnvError::Storage(format!("{}: {what}: {e}", path.display()))
}

/// Runs blocking file I/O off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, EnvError> + Send + 'static) -> Result<T, EnvError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EnvError::Storage(format!("storage task failed: {e}")))?
}
