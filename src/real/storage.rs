//! Durable storage on a real disk: one append-only file of records per node,
//! framed with [`crate::env::record`] (length + crc32 per record), so the
//! recovery code is the one the simulator exercises.
//!
//! Appends go to an in-memory buffer; [`FileStorage::sync`] writes the buffer
//! and fsyncs on a blocking thread. Concurrent syncs are batched (group
//! commit): a sync that waited behind another one returns at once when that
//! one already made its records durable, so one fsync serves many callers.
//!
//! After a failed write or fsync the storage refuses everything: what the
//! kernel kept of the failed write is unknown, and retrying an fsync can
//! report success for data that was dropped (the "fsyncgate" lesson). The
//! node must restart and recover from what `load` finds.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::env::{record, EnvError, NodeId};

/// One node's record log in a data directory.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    dir: PathBuf,
    /// Appended records not yet written, framed, and how many appends ever.
    pending: Mutex<Pending>,
    /// Held for the whole of a write+fsync, a rewrite or a load, so file
    /// operations never interleave.
    file: Mutex<FileState>,
    /// Mirrors `FileState::poisoned` for `append`, which must not wait
    /// behind an fsync holding the file lock.
    poisoned: AtomicBool,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    appended: u64,
}

struct FileState {
    file: File,
    /// Appends (by count) known durable.
    durable: u64,
    /// Set by a failed write or fsync; every later call fails with it.
    poisoned: Option<String>,
}

impl FileStorage {
    /// Opens (creating if needed) `node-<id>.log` in `dir`. A temporary file
    /// left by a rewrite that crashed before its rename is removed: the old
    /// log is still the valid one.
    pub fn open(dir: &Path, id: NodeId) -> Result<Self, EnvError> {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
        let path = dir.join(format!("node-{id}.log"));
        let tmp = temp_path(&path);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|e| io_error(&tmp, "remove stale temp file", e))?;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| io_error(&path, "open", e))?;
        if !existed {
            // The new file's directory entry must itself survive a crash.
            fsync_dir(dir)?;
        }
        Ok(FileStorage {
            inner: Arc::new(Inner {
                path,
                dir: dir.to_path_buf(),
                pending: Mutex::new(Pending::default()),
                file: Mutex::new(FileState {
                    file,
                    durable: 0,
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
    ///
    /// A torn last record (a crash interrupted an unsynced write) is dropped
    /// and truncated from the file; any other damage is an error naming the
    /// file and the byte offset. Blocking: meant for startup.
    pub fn load(&self) -> Result<Vec<Vec<u8>>, EnvError> {
        let state = self.inner.lock_file()?;
        let path = &self.inner.path;
        let bytes = fs::read(path).map_err(|e| io_error(path, "read", e))?;
        let recovered = record::decode(&bytes).map_err(|e| {
            EnvError::Storage(format!(
                "{}: corrupt record at byte offset {}: {}",
                path.display(),
                e.offset,
                e.reason
            ))
        })?;
        if recovered.valid_len < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                offset = recovered.valid_len,
                dropped = bytes.len() - recovered.valid_len,
                "truncating a torn record at the end of the log"
            );
            state
                .file
                .set_len(recovered.valid_len as u64)
                .and_then(|()| state.file.sync_all())
                .map_err(|e| io_error(path, "truncate torn tail", e))?;
        }
        let mut records = recovered.records;
        let pending = self.inner.pending.lock().expect("pending lock");
        records.extend(
            record::decode(&pending.bytes)
                .expect("pending records are framed by this process")
                .records,
        );
        Ok(records)
    }

    /// Buffers one record; durable only once a later [`sync`](Self::sync)
    /// returns.
    pub fn append(&self, payload: &[u8]) -> Result<(), EnvError> {
        if payload.len() > record::MAX_RECORD_BYTES {
            return Err(EnvError::Storage(format!(
                "record of {} bytes exceeds the {}-byte limit",
                payload.len(),
                record::MAX_RECORD_BYTES
            )));
        }
        if self.inner.poisoned.load(Ordering::Acquire) {
            // The reason is with the file state; the next sync reports it.
            return Err(EnvError::Storage(format!(
                "{}: storage stopped after a failed write",
                self.inner.path.display()
            )));
        }
        let mut pending = self.inner.pending.lock().expect("pending lock");
        record::encode(payload, &mut pending.bytes);
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
        let (bytes, appended) = {
            let mut pending = self.pending.lock().expect("pending lock");
            (std::mem::take(&mut pending.bytes), pending.appended)
        };
        let result = (&state.file).write_all(&bytes).and_then(|()| state.file.sync_data());
        match result {
            Ok(()) => {
                state.durable = appended;
                Ok(())
            }
            Err(e) => Err(self.poison(&mut state, io_error(&self.path, "write and fsync", e))),
        }
    }

    fn rewrite(&self, records: &[Vec<u8>]) -> Result<(), EnvError> {
        let mut state = self.lock_file()?;
        let mut bytes = Vec::with_capacity(records.iter().map(|r| r.len() + 8).sum());
        for r in records {
            if r.len() > record::MAX_RECORD_BYTES {
                return Err(EnvError::Storage(format!(
                    "record of {} bytes exceeds the {}-byte limit",
                    r.len(),
                    record::MAX_RECORD_BYTES
                )));
            }
            record::encode(r, &mut bytes);
        }
        let appended = {
            let mut pending = self.pending.lock().expect("pending lock");
            pending.bytes.clear();
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
            });
        match swapped {
            Ok(file) => {
                let old = std::mem::replace(&mut state.file, file);
                state.durable = appended;
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
