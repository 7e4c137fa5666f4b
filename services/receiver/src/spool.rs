//! The local spool that holds events while Kafka is away: append-only segment files of
//! records framed with length and CRC, fsynced before the sender gets its 2xx, drained in
//! order. Recovery keeps every whole record and cuts a torn tail, so a crash never loops.
//!
//! Layout: `segment-<20-digit id>.log` files, oldest first, `drain.checkpoint` naming the
//! position up to which records are known to be in Kafka, `spool.lock`, locked by the
//! one process that owns the spool, and `quarantine.log`, the records Kafka refused for
//! good (framed as in a segment, each with its reason as a header). A frame is
//! `[payload length: u32 LE][CRC-32 of payload: u32 LE][payload]`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;

const FRAME_HEADER_BYTES: u64 = 8;
/// Larger lengths can only come from a torn or corrupt frame.
const MAX_PAYLOAD_BYTES: u32 = 256 << 20;
const CHECKPOINT: &str = "drain.checkpoint";
/// Records Kafka refuses for good, moved out of the drain's way; see [`Spool::quarantine`].
pub const QUARANTINE: &str = "quarantine.log";
/// The header a quarantined record gets: why Kafka refused it.
pub const QUARANTINE_REASON_HEADER: &str = "bridge_quarantine_reason";
/// Locked (`flock`, exclusive) for as long as a process has the spool open.
pub const LOCK_FILE: &str = "spool.lock";
/// How often an open retries a lock another process holds.
const LOCK_RETRY: Duration = Duration::from_secs(1);
/// Free space the filesystem keeps beyond the frame being written; see [`room_on_filesystem`].
pub const FILESYSTEM_RESERVE_BYTES: u64 = 1 << 20;
/// How many appends one fsync covers at most (group commit).
const MAX_GROUP: usize = 1024;

/// One Kafka record as it will be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl SpoolRecord {
    fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(
            self.topic.len() + self.key.len() + self.value.len() + 64 * self.headers.len() + 16,
        );
        let mut put = |bytes: &[u8]| {
            payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            payload.extend_from_slice(bytes);
        };
        put(self.topic.as_bytes());
        put(&self.key);
        put(&self.value);
        for (name, value) in &self.headers {
            put(name.as_bytes());
            put(value);
        }
        let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_BYTES as usize);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    fn decode(mut payload: &[u8]) -> Option<Self> {
        let mut take = || -> Option<Vec<u8>> {
            let length = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
            let bytes = payload.get(4..4 + length)?.to_vec();
            payload = &payload[4 + length..];
            Some(bytes)
        };
        let topic = String::from_utf8(take()?).ok()?;
        let key = take()?;
        let value = take()?;
        let mut headers = Vec::new();
        while let Some(name) = take() {
            headers.push((String::from_utf8(name).ok()?, take()?));
        }
        Some(Self {
            topic,
            key,
            headers,
            value,
        })
    }
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    #[error("writing the spool failed: {0}")]
    Io(String),
}

/// The spool cannot take the next event: an append was refused for lack of room, and an
/// event of that size would still not fit. Cleared once draining has freed enough room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolFull {
    /// Bytes of segment files on disk (drained records count until their segment is deleted).
    pub used_bytes: u64,
    pub max_bytes: u64,
    /// The smallest frame refused since the spool last had room.
    pub refused_bytes: u64,
    /// Bytes free on the filesystem holding the spool, when that (not `max_bytes`) refused
    /// the frame.
    pub filesystem_free: Option<u64>,
}

impl std::fmt::Display for SpoolFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} bytes used, a {}-byte event does not fit",
            self.used_bytes, self.max_bytes, self.refused_bytes
        )?;
        if let Some(free) = self.filesystem_free {
            write!(
                f,
                " (the filesystem holding the spool has {free} bytes free, and {FILESYSTEM_RESERVE_BYTES} stay in reserve)"
            )?;
        }
        Ok(())
    }
}

/// What recovery found on start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    pub torn_bytes: u64,
}

struct State {
    /// Durable length of each segment file, oldest first.
    segments: BTreeMap<u64, u64>,
    /// Everything before this is in Kafka.
    drained: Position,
    undrained_records: u64,
    /// The segment appends go to; a new one after each start.
    tail: Option<(u64, File)>,
    next_segment: u64,
    /// The writer has bytes in flight on the tail segment, which must not be deleted.
    writing: bool,
    /// The smallest frame refused for lack of room since the spool last had room for it.
    refused: Option<u64>,
    /// Free bytes on the filesystem at the last refusal, when the filesystem refused.
    refused_by_filesystem: Option<u64>,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Appends handed to the writer and not yet written.
    pending: AtomicU64,
    /// Whether the spool is full (see `SpoolFull`); changes are what readiness follows.
    full: watch::Sender<bool>,
    metrics: Metrics,
    /// Records in `quarantine.log`.
    quarantined: AtomicU64,
    /// Bytes the filesystem holding `dir` has free (statvfs; a fake in tests).
    filesystem_free: fn(&Path) -> std::io::Result<u64>,
    /// Holds `spool.lock` for the life of the spool: one process per spool.
    _lock: File,
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The sending side of the writer: appends are written in the order they are handed over.
#[derive(Clone)]
pub struct SpoolWriter(mpsc::UnboundedSender<Append>);

impl SpoolWriter {
    /// Hands a record to the writer; the receiver resolves once it is fsynced.
    pub fn append(
        &self,
        spool: &Spool,
        record: &SpoolRecord,
    ) -> oneshot::Receiver<Result<(), SpoolError>> {
        let (done, receiver) = oneshot::channel();
        spool.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(append)) = self.0.send(Append {
            frame: record.encode(),
            done,
        }) {
            spool.pending.fetch_sub(1, Ordering::SeqCst);
            let _ = append
                .done
                .send(Err(SpoolError::Io("the spool writer has stopped".into())));
        }
        receiver
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("segment-{id:020}.log"))
}

fn io_error(context: &str, error: std::io::Error) -> SpoolError {
    SpoolError::Io(format!("{context}: {error}"))
}

/// Whether the filesystem can take `bytes` more (the frames being written) and still keep
/// `FILESYSTEM_RESERVE_BYTES` free. The reserve is room for what is written besides frames
/// (the drain checkpoint and its temporary copy, a new segment's inode, directory entry and
/// extent blocks, the last partial block of each file); frames are counted exactly, so a
/// segment never grows by a frame this refused. Refusing here turns a write that would
/// fail (ENOSPC) half-way through a frame into a 503 before anything is written.
pub fn room_on_filesystem(free_bytes: u64, bytes: u64) -> bool {
    bytes.saturating_add(FILESYSTEM_RESERVE_BYTES) <= free_bytes
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`
/// (`f_bavail * f_frsize`: root's reserved blocks are not counted on).
fn statvfs_free(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` points to
    // writable memory of the struct's size; it is read only after statvfs reported success,
    // which means it filled the struct in.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Takes the spool's lock, waiting as long as another process holds it (a Pod still
/// terminating, a drain Job). While it waits, `keep_waiting` is asked before each retry;
/// `false` gives up with `ErrorKind::Interrupted`.
fn lock_spool(dir: &Path, mut keep_waiting: impl FnMut(&Path) -> bool) -> std::io::Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let mut waited = false;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                if !std::mem::replace(&mut waited, true) {
                    tracing::warn!(
                        lock = %path.display(),
                        "another process has this spool open (a receiver still stopping, or a drain); waiting until it lets go"
                    );
                }
                if !keep_waiting(&path) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        format!("stopped while waiting for the lock on {}", path.display()),
                    ));
                }
                std::thread::sleep(LOCK_RETRY);
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(error),
        }
    }
    if waited {
        tracing::info!(lock = %path.display(), waited = ?started.elapsed(), "took the spool's lock");
    }
    Ok(file)
}

impl Spool {
    /// Opens the spool in `dir`, recovering what an earlier process left there. Waits
    /// while another process has it open, and holds it until dropped.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        metrics: Metrics,
    ) -> std::io::Result<(Self, Recovery)> {
        Self::open_waiting(dir, max_bytes, segment_bytes, metrics, |_| true)
    }

    /// [`Spool::open`], asking `keep_waiting` (with the lock file's path) before each retry
    /// while another process holds the lock; `false` gives up (`ErrorKind::Interrupted`).
    /// A blocking call: run it off the async runtime.
    pub fn open_waiting(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        metrics: Metrics,
        keep_waiting: impl FnMut(&Path) -> bool,
    ) -> std::io::Result<(Self, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_spool(dir, keep_waiting)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_prefix("segment-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        let checkpoint = read_checkpoint(dir);
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        for &id in &ids {
            let path = segment_path(dir, id);
            if id < checkpoint.segment {
                remove_file_logged(&path);
                continue;
            }
            let from = if id == checkpoint.segment {
                checkpoint.offset
            } else {
                0
            };
            let scan = scan_segment(&path, from)?;
            if scan.valid_len < scan.file_len {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = scan.valid_len,
                    dropped_bytes = scan.file_len - scan.valid_len,
                    "the spool segment ends in a torn record (a crash during a write); keeping every whole record and cutting the rest"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(scan.valid_len)?;
                file.sync_all()?;
                recovery.torn_bytes += scan.file_len - scan.valid_len;
            }
            if scan.valid_len == 0 {
                remove_file_logged(&path);
                continue;
            }
            recovery.records += scan.records_after;
            segments.insert(id, scan.valid_len);
        }
        let drained = match segments.first_key_value() {
            Some((&first, _)) if checkpoint.segment < first => Position {
                segment: first,
                offset: 0,
            },
            Some(_) => Position {
                segment: checkpoint.segment,
                offset: checkpoint
                    .offset
                    .min(segments.get(&checkpoint.segment).copied().unwrap_or(0)),
            },
            None => Position::default(),
        };
        // New segments sort after every old one and after the checkpoint's, or a later
        // recovery would take them for drained.
        let quarantined = match scan_segment(&dir.join(QUARANTINE), 0) {
            Ok(scan) => scan.records_after,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error),
        };
        let next_segment = ids
            .last()
            .map_or(0, |last| last + 1)
            .max(checkpoint.segment + 1);
        let spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            state: Mutex::new(State {
                segments,
                drained,
                undrained_records: recovery.records,
                tail: None,
                next_segment,
                writing: false,
                refused: None,
                refused_by_filesystem: None,
            }),
            pending: AtomicU64::new(0),
            full: watch::Sender::new(false),
            metrics,
            quarantined: AtomicU64::new(quarantined),
            filesystem_free: statvfs_free,
            _lock: lock,
        };
        spool.update_gauges(&spool.lock());
        Ok((spool, recovery))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, state: &State) {
        self.metrics
            .spool_bytes
            .set(state.segments.values().sum::<u64>() as i64);
        self.metrics
            .spool_records
            .set(state.undrained_records as i64);
    }

    /// Whether every record ever appended is in Kafka (nothing written, nothing pending).
    /// Only meaningful while appends are held off by the caller.
    pub fn is_empty(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0 && self.lock().undrained_records == 0
    }

    pub fn undrained_records(&self) -> u64 {
        self.lock().undrained_records
    }

    /// Records not yet in Kafka, and bytes of segment files on disk.
    pub fn usage(&self) -> (u64, u64) {
        let state = self.lock();
        (state.undrained_records, state.segments.values().sum())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in `quarantine.log`: refused by Kafka for good, kept for a person.
    pub fn quarantined_records(&self) -> u64 {
        self.quarantined.load(Ordering::SeqCst)
    }

    /// Moves a record that Kafka refuses for good (larger than the topic takes, not
    /// authorized) out of the drain's way: appends it, with `reason` as the header
    /// [`QUARANTINE_REASON_HEADER`], to `quarantine.log` and fsyncs it. Only then may the
    /// drain commit past it; an `Err` leaves it in the spool to be tried again. The file
    /// is outside `maxBytes` and is never deleted by the receiver.
    pub fn quarantine(&self, record: &SpoolRecord, reason: &str) -> std::io::Result<()> {
        let mut record = record.clone();
        record.headers.push((
            QUARANTINE_REASON_HEADER.to_owned(),
            reason.as_bytes().to_vec(),
        ));
        let path = self.dir.join(QUARANTINE);
        let created = !path.exists();
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.write_all(&record.encode())?;
        file.sync_data()?;
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        self.quarantined.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Free bytes on the filesystem, or `None` (logged) when statvfs fails: then only
    /// `max_bytes` limits the spool, and a failing write answers 503 as before.
    fn free_on_filesystem(&self) -> Option<u64> {
        match (self.filesystem_free)(&self.dir) {
            Ok(free) => Some(free),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot ask the filesystem for its free space");
                None
            }
        }
    }

    /// `Some` while the spool refuses events for lack of room (see `SpoolFull`).
    pub fn full(&self) -> Option<SpoolFull> {
        let state = self.lock();
        state.refused.map(|refused_bytes| SpoolFull {
            used_bytes: state.segments.values().sum(),
            max_bytes: self.max_bytes,
            refused_bytes,
            filesystem_free: state.refused_by_filesystem,
        })
    }

    /// Changes of `full().is_some()`.
    pub fn subscribe_full(&self) -> watch::Receiver<bool> {
        self.full.subscribe()
    }

    /// Notes a refused frame, or clears the mark once a frame of the refused size fits
    /// again; tells subscribers when that flips.
    fn update_full(&self, state: &mut State, refused_now: Option<u64>) {
        if let Some(size) = refused_now {
            state.refused = Some(state.refused.map_or(size, |earlier| earlier.min(size)));
        } else if let Some(refused) = state.refused {
            let used: u64 = state.segments.values().sum();
            let filesystem = self
                .free_on_filesystem()
                .is_none_or(|free| room_on_filesystem(free, refused));
            if used + refused <= self.max_bytes && filesystem {
                state.refused = None;
                state.refused_by_filesystem = None;
            }
        }
        let full = state.refused.is_some();
        self.full.send_if_modified(|was| {
            if *was == full {
                return false;
            }
            if full {
                tracing::warn!(
                    max_bytes = self.max_bytes,
                    "the spool is full: events that cannot reach Kafka are refused with 503"
                );
            } else {
                tracing::info!("the spool has room again");
            }
            *was = full;
            true
        });
    }

    /// Starts the writer thread: it takes appends in order, writes each group with one
    /// write and one fsync, and answers each append.
    pub fn start_writer(self: &std::sync::Arc<Self>) -> SpoolWriter {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Append>();
        let spool = self.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                while let Some(first) = receiver.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match receiver.try_recv() {
                            Ok(append) => group.push(append),
                            Err(_) => break,
                        }
                    }
                    spool.write_group(group);
                }
            })
            .expect("starting the spool writer thread");
        SpoolWriter(sender)
    }

    fn write_group(&self, group: Vec<Append>) {
        let count = group.len() as u64;
        let mut accepted = Vec::with_capacity(group.len());
        let mut bytes = Vec::new();
        // Once per group: the group is one write, so its frames are counted together.
        let free = self.free_on_filesystem();
        let prepared = {
            let mut state = self.lock();
            let mut on_disk: u64 = state.segments.values().sum();
            let mut refused = Vec::new();
            let mut smallest_refused: Option<u64> = None;
            for append in group {
                let size = append.frame.len() as u64;
                let over_budget = on_disk + size > self.max_bytes;
                let filesystem_short =
                    free.is_some_and(|free| !room_on_filesystem(free, bytes.len() as u64 + size));
                if over_budget || filesystem_short {
                    if filesystem_short && !over_budget {
                        state.refused_by_filesystem = free;
                    }
                    smallest_refused = Some(smallest_refused.map_or(size, |r| r.min(size)));
                    refused.push(append.done);
                    continue;
                }
                on_disk += size;
                bytes.extend_from_slice(&append.frame);
                accepted.push(append.done);
            }
            if smallest_refused.is_some() {
                // Marked full before the senders hear 503, so readiness is never behind them.
                self.update_full(&mut state, smallest_refused);
            }
            for done in refused {
                let _ = done.send(Err(SpoolError::Full));
            }
            if accepted.is_empty() {
                Ok(None)
            } else {
                self.tail_for_write(&mut state).map(Some)
            }
        };
        let result = match prepared {
            Ok(None) => Ok(()),
            Ok(Some((segment, start, mut file))) => {
                let written = file
                    .write_all(&bytes)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_error("appending to the spool", e));
                let mut state = self.lock();
                state.writing = false;
                match &written {
                    Ok(()) => {
                        *state.segments.entry(segment).or_default() = start + bytes.len() as u64;
                        state.undrained_records += accepted.len() as u64;
                        self.metrics.spooled.inc_by(accepted.len() as u64);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the spool write failed; the senders get 503");
                        let _ = file.set_len(start);
                    }
                }
                self.update_gauges(&state);
                written
            }
            Err(error) => {
                tracing::error!(%error, "cannot open a spool segment; the senders get 503");
                Err(error)
            }
        };
        self.pending.fetch_sub(count, Ordering::SeqCst);
        for done in accepted {
            let _ = done.send(result.clone());
        }
    }

    /// The tail segment to append to (a new one when there is none or it is full), marked
    /// as being written.
    fn tail_for_write(&self, state: &mut State) -> Result<(u64, u64, File), SpoolError> {
        let full = match &state.tail {
            Some((id, _)) => state.segments.get(id).copied().unwrap_or(0) >= self.segment_bytes,
            None => true,
        };
        if full {
            let id = state.next_segment;
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error(&format!("creating {}", path.display()), e))?;
            // The new name must survive a crash as well as the bytes in it.
            File::open(&self.dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| io_error("syncing the spool directory", e))?;
            state.next_segment += 1;
            state.segments.insert(id, 0);
            state.tail = Some((id, file));
        }
        let (id, file) = state.tail.as_ref().expect("a tail segment exists");
        let file = file
            .try_clone()
            .map_err(|e| io_error("reopening the spool segment", e))?;
        state.writing = true;
        Ok((*id, state.segments[id], file))
    }

    /// Up to `max_records` records after the drained position, each with the position just
    /// past it. A record that fails its CRC here (the disk changed under us) ends its
    /// segment: it comes back as `None`, is logged, and draining goes on with the next segment.
    pub fn read_batch(
        &self,
        max_records: usize,
        max_bytes: u64,
    ) -> Vec<(Option<SpoolRecord>, Position)> {
        let (drained, segments) = {
            let state = self.lock();
            let segments: Vec<(u64, u64)> = state
                .segments
                .range(state.drained.segment..)
                .map(|(id, len)| (*id, *len))
                .collect();
            (state.drained, segments)
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (id, len) in segments {
            let mut offset = if id == drained.segment {
                drained.offset
            } else {
                0
            };
            if offset >= len {
                continue;
            }
            let path = segment_path(&self.dir, id);
            let file = match File::open(&path)
                .and_then(|mut f| f.seek(SeekFrom::Start(offset)).map(|_| f))
            {
                Ok(file) => file,
                Err(error) => {
                    tracing::error!(segment = %path.display(), %error, "cannot read a spool segment");
                    return batch;
                }
            };
            let mut reader = BufReader::new(file.take(len - offset));
            while offset < len && batch.len() < max_records && bytes < max_bytes {
                match read_frame(&mut reader) {
                    Some((record, size)) => {
                        offset += size;
                        bytes += size;
                        batch.push((
                            Some(record),
                            Position {
                                segment: id,
                                offset,
                            },
                        ));
                    }
                    None => {
                        tracing::error!(segment = %path.display(), offset, "a spool record changed on disk after it was written; skipping the rest of its segment");
                        self.metrics.spool_corrupt.inc();
                        batch.push((
                            None,
                            Position {
                                segment: id,
                                offset: len,
                            },
                        ));
                        break;
                    }
                }
            }
            if batch.len() >= max_records || bytes >= max_bytes {
                break;
            }
        }
        batch
    }

    /// Records up to `position` are in Kafka: moves the checkpoint, deletes drained segments.
    pub fn commit(&self, position: Position, records: u64) {
        let mut state = self.lock();
        if position <= state.drained {
            return;
        }
        state.drained = position;
        state.undrained_records = state.undrained_records.saturating_sub(records);
        let tail_id = state.tail.as_ref().map(|(id, _)| *id);
        let removable: Vec<u64> = state
            .segments
            .iter()
            .filter(|(id, len)| {
                **id < position.segment || (**id == position.segment && position.offset >= **len)
            })
            .map(|(id, _)| *id)
            .filter(|id| Some(*id) != tail_id || !state.writing)
            .collect();
        for id in removable {
            if Some(id) == tail_id {
                state.tail = None;
            }
            state.segments.remove(&id);
            remove_file_logged(&segment_path(&self.dir, id));
        }
        self.update_full(&mut state, None);
        if let Err(error) = write_checkpoint(&self.dir, position) {
            // Only costs duplicates after a restart: those records are sent again.
            tracing::warn!(%error, "cannot write the spool checkpoint");
        }
        self.update_gauges(&state);
    }
}

struct Scan {
    file_len: u64,
    valid_len: u64,
    records_after: u64,
}

/// Reads frames from the start of a segment; stops at the first one that is torn or fails its CRC.
fn scan_segment(path: &Path, count_from: u64) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut valid_len = 0;
    let mut records_after = 0;
    while let Some((_, size)) = read_frame(&mut reader) {
        if valid_len >= count_from {
            records_after += 1;
        }
        valid_len += size;
    }
    Ok(Scan {
        file_len,
        valid_len,
        records_after,
    })
}

/// How many whole records `bytes` starts with, and the length they take: recovery's parser,
/// public for the fuzz target.
#[doc(hidden)]
pub fn whole_records(mut bytes: &[u8]) -> (u64, u64) {
    let (mut records, mut length) = (0, 0);
    while let Some((_, size)) = read_frame(&mut bytes) {
        records += 1;
        length += size;
    }
    (records, length)
}

fn read_frame(reader: &mut impl Read) -> Option<(SpoolRecord, u64)> {
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    reader.read_exact(&mut header).ok()?;
    let length = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if length > MAX_PAYLOAD_BYTES {
        return None;
    }
    let mut payload = vec![0; length as usize];
    reader.read_exact(&mut payload).ok()?;
    if crc32fast::hash(&payload) != crc {
        return None;
    }
    let record = SpoolRecord::decode(&payload)?;
    Some((record, FRAME_HEADER_BYTES + u64::from(length)))
}

fn read_checkpoint(dir: &Path) -> Position {
    let Ok(text) = std::fs::read_to_string(dir.join(CHECKPOINT)) else {
        return Position::default();
    };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Position { segment, offset },
        _ => {
            tracing::warn!(
                "the spool checkpoint is unreadable; draining from the oldest segment (may send duplicates)"
            );
            Position::default()
        }
    }
}

fn write_checkpoint(dir: &Path, position: Position) -> std::io::Result<()> {
    let temporary = dir.join(format!("{CHECKPOINT}.tmp"));
    std::fs::write(
        &temporary,
        format!("{} {}\n", position.segment, position.offset),
    )?;
    std::fs::rename(temporary, dir.join(CHECKPOINT))
}

fn remove_file_logged(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), %error, "cannot delete a drained spool segment");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hook-receiver-spool-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(key: &str, n: u32) -> SpoolRecord {
        SpoolRecord {
            topic: "t".into(),
            key: key.as_bytes().to_vec(),
            headers: vec![("ce_id".into(), format!("{key}-{n}").into_bytes())],
            value: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Arc<Spool>, SpoolWriter, Recovery) {
        let (spool, recovery) =
            Spool::open(dir, max_bytes, segment_bytes, Metrics::default()).unwrap();
        let spool = Arc::new(spool);
        let writer = spool.start_writer();
        (spool, writer, recovery)
    }

    async fn append_all(
        spool: &Spool,
        writer: &SpoolWriter,
        records: &[SpoolRecord],
    ) -> Vec<Result<(), SpoolError>> {
        let receivers: Vec<_> = records.iter().map(|r| writer.append(spool, r)).collect();
        let mut results = Vec::new();
        for receiver in receivers {
            results.push(receiver.await.unwrap());
        }
        results
    }

    #[test]
    fn records_survive_encoding() {
        let original = record("k", 1);
        let frame = original.encode();
        let (decoded, size) = read_frame(&mut &frame[..]).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(size, frame.len() as u64);
    }

    #[tokio::test]
    async fn appended_records_drain_in_order_across_segments_and_reopen_where_left() {
        let dir = temp_dir("order");
        let (spool, writer, _) = open(&dir, 1 << 20, 200);
        let records: Vec<_> = (0..20)
            .map(|n| record(if n % 2 == 0 { "a" } else { "b" }, n))
            .collect();
        assert!(
            append_all(&spool, &writer, &records)
                .await
                .iter()
                .all(Result::is_ok)
        );
        let first = spool.read_batch(7, u64::MAX);
        let read: Vec<_> = first.iter().map(|(r, _)| r.clone().unwrap()).collect();
        assert_eq!(read, records[..7]);
        spool.commit(first.last().unwrap().1, 7);
        drop((spool, writer));

        let (spool, _writer, recovery) = open(&dir, 1 << 20, 200);
        assert_eq!(
            recovery,
            Recovery {
                records: 13,
                torn_bytes: 0
            }
        );
        let rest: Vec<_> = spool
            .read_batch(100, u64::MAX)
            .into_iter()
            .map(|(r, _)| r.unwrap())
            .collect();
        assert_eq!(rest, records[7..]);
    }

    #[tokio::test]
    async fn records_spooled_after_a_fully_drained_run_survive_the_next_restart() {
        let dir = temp_dir("after-drain");
        let (spool, writer, _) = open(&dir, 1 << 20, 1 << 20);
        append_all(&spool, &writer, &[record("k", 0), record("k", 1)]).await;
        let batch = spool.read_batch(10, u64::MAX);
        spool.commit(batch.last().unwrap().1, 2);
        drop((spool, writer));

        let (spool, writer, _) = open(&dir, 1 << 20, 1 << 20);
        append_all(&spool, &writer, &[record("k", 2)]).await;
        drop((spool, writer));

        let (spool, _writer, recovery) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(recovery.records, 1);
        let read: Vec<_> = spool
            .read_batch(10, u64::MAX)
            .into_iter()
            .map(|(r, _)| r.unwrap())
            .collect();
        assert_eq!(read, vec![record("k", 2)]);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_and_every_whole_record_kept() {
        let dir = temp_dir("torn");
        let (spool, writer, _) = open(&dir, 1 << 20, 1 << 20);
        let records: Vec<_> = (0..5).map(|n| record("k", n)).collect();
        append_all(&spool, &writer, &records).await;
        drop((spool, writer));
        let segment = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let torn = &record("k", 5).encode()[..11];
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(torn)
            .unwrap();

        let (spool, writer, recovery) = open(&dir, 1 << 20, 1 << 20);
        assert_eq!(
            recovery,
            Recovery {
                records: 5,
                torn_bytes: 11
            }
        );
        append_all(&spool, &writer, &[record("k", 6)]).await;
        let read: Vec<_> = spool
            .read_batch(100, u64::MAX)
            .into_iter()
            .map(|(r, _)| r.unwrap())
            .collect();
        assert_eq!(read.len(), 6);
        assert_eq!(read[..5], records[..]);
        assert_eq!(read[5], record("k", 6));
    }

    #[tokio::test]
    async fn quarantined_records_keep_their_reason_and_are_counted_again_on_reopen() {
        let dir = temp_dir("quarantine");
        let (spool, _, _) = open(&dir, 1 << 20, 1 << 16);
        spool
            .quarantine(&record("too-big", 1), "MessageSizeTooLarge")
            .unwrap();
        spool
            .quarantine(&record("denied", 2), "TopicAuthorizationFailed")
            .unwrap();
        assert_eq!(spool.quarantined_records(), 2);
        drop(spool);
        let (spool, _, recovery) = open(&dir, 1 << 20, 1 << 16);
        assert_eq!(spool.quarantined_records(), 2);
        assert_eq!(
            recovery.records, 0,
            "quarantined records are not drained again"
        );
        let bytes = std::fs::read(dir.join(QUARANTINE)).unwrap();
        let (first, _) = read_frame(&mut bytes.as_slice()).unwrap();
        assert_eq!(first.key, record("too-big", 1).key);
        assert_eq!(
            first.headers.last().unwrap(),
            &(
                QUARANTINE_REASON_HEADER.to_owned(),
                b"MessageSizeTooLarge".to_vec()
            )
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_appends_until_drained() {
        let dir = temp_dir("full");
        let frame_len = record("k", 0).encode().len() as u64;
        let (spool, writer, _) = open(&dir, frame_len * 3, frame_len * 2);
        let results = append_all(
            &spool,
            &writer,
            &(0..4).map(|n| record("k", n)).collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(results[3], Err(SpoolError::Full));
        let mut full = spool.subscribe_full();
        assert!(*full.borrow_and_update());
        assert_eq!(
            spool.full(),
            Some(SpoolFull {
                used_bytes: frame_len * 3,
                max_bytes: frame_len * 3,
                refused_bytes: frame_len,
                filesystem_free: None,
            })
        );
        let batch = spool.read_batch(10, u64::MAX);
        assert_eq!(batch.len(), 3);
        spool.commit(batch[0].1, 1);
        assert!(spool.full().is_some(), "nothing deleted yet, so no room");
        spool.commit(batch.last().unwrap().1, 2);
        assert_eq!(spool.full(), None);
        assert!(full.has_changed().unwrap() && !*full.borrow_and_update());
        let again = append_all(&spool, &writer, &[record("k", 9)]).await;
        assert_eq!(again, vec![Ok(())]);
        assert_eq!(spool.undrained_records(), 1);
    }

    #[test]
    fn a_second_open_of_the_same_spool_waits_until_the_first_lets_go() {
        let dir = temp_dir("lock");
        let (first, _) = Spool::open(&dir, 1 << 20, 1 << 20, Metrics::default()).unwrap();
        let (told, waited) = std::sync::mpsc::channel();
        let second = std::thread::spawn({
            let dir = dir.clone();
            move || {
                Spool::open_waiting(&dir, 1 << 20, 1 << 20, Metrics::default(), |lock| {
                    let _ = told.send(lock.to_owned());
                    true
                })
                .map(|_| ())
            }
        });
        let lock = waited.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(lock, dir.join(LOCK_FILE));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !second.is_finished(),
            "the second open waits while the first holds the spool"
        );

        drop(first);
        second.join().unwrap().unwrap();
    }

    #[test]
    fn the_filesystem_must_keep_the_reserve_after_the_frame() {
        let frame = 1000;
        assert!(room_on_filesystem(FILESYSTEM_RESERVE_BYTES + frame, frame));
        assert!(!room_on_filesystem(
            FILESYSTEM_RESERVE_BYTES + frame - 1,
            frame
        ));
        assert!(!room_on_filesystem(FILESYSTEM_RESERVE_BYTES, 1));
        assert!(!room_on_filesystem(0, 0));
        assert!(!room_on_filesystem(u64::MAX - 1, u64::MAX), "no overflow");
    }

    /// A spool far from `maxBytes` on a filesystem short of room refuses with `Full` (the
    /// sender's 503), writes nothing, and says why; it takes events again once there is room.
    #[tokio::test]
    async fn a_filesystem_short_of_room_refuses_appends_before_anything_is_written() {
        static FREE: AtomicU64 = AtomicU64::new(0);
        let dir = temp_dir("filesystem");
        let (mut spool, _) = Spool::open(&dir, 1 << 30, 1 << 20, Metrics::default()).unwrap();
        spool.filesystem_free = |_| Ok(FREE.load(Ordering::SeqCst));
        let spool = Arc::new(spool);
        let writer = spool.start_writer();
        let frame_len = record("k", 0).encode().len() as u64;
        FREE.store(FILESYSTEM_RESERVE_BYTES + frame_len - 1, Ordering::SeqCst);

        let refused = append_all(&spool, &writer, &[record("k", 0)]).await;
        assert_eq!(refused, vec![Err(SpoolError::Full)]);
        let full = spool.full().expect("marked full");
        assert_eq!(
            full.filesystem_free,
            Some(FILESYSTEM_RESERVE_BYTES + frame_len - 1)
        );
        assert!(
            full.to_string()
                .contains("the filesystem holding the spool has"),
            "{full}"
        );
        assert_eq!(spool.usage(), (0, 0), "nothing was written");

        FREE.store(FILESYSTEM_RESERVE_BYTES + frame_len, Ordering::SeqCst);
        let again = append_all(&spool, &writer, &[record("k", 1)]).await;
        assert_eq!(again, vec![Ok(())]);
        assert_eq!(spool.usage().0, 1);
    }
}
