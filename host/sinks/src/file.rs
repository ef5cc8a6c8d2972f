//! The `file` sink: records appended to a file, one per line, fsynced on flush, rotated by size.
//!
//! Rotation renames the full file to `NAME.000001`, `NAME.000002`, … (numbered in the order they
//! were written) and starts a new `NAME`, so a reader replays `NAME.*` in order and then `NAME`.
//!
//! A batch is written whole or not at all: when writing fails part way (a full disk), whatever
//! of the batch reached the files is cut off again (and a rotation it caused undone), so the
//! retried batch starts at a record boundary and no record is written twice or torn.
//!
//! Every few MiB the kernel is asked to start writing what was appended (`sync_file_range`,
//! as PostgreSQL's `wal_writer_flush_after` does), so that the fsync of a flush finds most of
//! the data on disk already and the writer does not stall for a whole interval's worth of
//! writeback at once. A range whose writeback started a round earlier is then dropped from
//! the page cache (`POSIX_FADV_DONTNEED`, which leaves dirty pages alone): a sink writes far
//! more than anyone rereads soon, and recycling a few MiB of cache pages is much cheaper than
//! taking fresh ones for every write (on the VMs measured, a 2 GB snapshot spent a quarter of
//! its CPU copying into new page-cache pages, against a twentieth with them recycled).
//! Durability still comes only from that fsync, and the fsync runs in the
//! background ([`Sink::begin_flush`]) on a second descriptor of the same file, so records keep
//! being appended while it waits for the disk.
//!
//! Files are created readable by their owner only (mode 0600, narrowed further by the umask):
//! records hold whole rows of the source database, which its own access rules protected. A
//! file that already exists keeps the mode it has.
//!
//! A failed fsync is fatal, not retried: Linux may mark the pages it could not write as clean,
//! so a second fsync can succeed without the data ever reaching the disk (PostgreSQL stops on
//! it for the same reason). Nothing written since the last good flush is acknowledged, so a
//! restart writes it again.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use walflow_config::sinks::FileSinkConfig;

use super::{PendingFlush, Sink, SinkBatch, SinkError};

/// Appends encoded records to a file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    size: u64,
    max_bytes: Option<u64>,
    separator: Vec<u8>,
    /// How far writeback was started and the page cache dropped.
    writeback: Writeback,
}

/// How many appended bytes make the sink start their writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl FileSink {
    /// Builds the sink from its `[[sinks]]` settings: `path` (required), `max_bytes` (rotation).
    pub fn from_config(config: &FileSinkConfig, base: &Path) -> Result<FileSink, SinkError> {
        if config.max_bytes == Some(0) {
            return Err(SinkError::Fatal(
                "`max_bytes` of a file sink must be a positive integer".into(),
            ));
        }
        FileSink::open(base.join(&config.path), config.max_bytes)
    }

    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: PathBuf, max_bytes: Option<u64>) -> Result<FileSink, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| cannot_write(&path, e))?;
        }
        let mut sink = FileSink {
            name: format!("file:{}", path.display()),
            path,
            writer: None,
            size: 0,
            max_bytes,
            separator: b"\n".to_vec(),
            writeback: Writeback::default(),
        };
        sink.reopen()?;
        Ok(sink)
    }

    fn reopen(&mut self) -> Result<(), SinkError> {
        trim_torn_tail(&self.path).map_err(|e| cannot_write(&self.path, e))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| cannot_write(&self.path, e))?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.writeback = Writeback::from(self.size);
        self.writer = Some(BufWriter::with_capacity(1 << 20, file));
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, SinkError> {
        if self.writer.is_none() {
            self.reopen()?;
        }
        self.writer
            .as_mut()
            .ok_or_else(|| SinkError::Fatal("file sink is closed".into()))
    }

    fn sync(&mut self) -> Result<(), SinkError> {
        let path = self.path.clone();
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(|e| retryable(&path, e))?;
            w.get_ref()
                .sync_data()
                .map_err(|e| fsync_failed(&path, e))?;
        }
        Ok(())
    }

    /// Writes out the buffer and fsyncs the file on the blocking pool, through a descriptor of
    /// its own so that appending (and rotating) can go on meanwhile.
    fn sync_in_background(&mut self) -> Result<PendingFlush, SinkError> {
        let path = self.path.clone();
        let Some(w) = self.writer.as_mut() else {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        };
        w.flush().map_err(|e| retryable(&path, e))?;
        let file = w.get_ref().try_clone().map_err(|e| retryable(&path, e))?;
        let syncing = tokio::task::spawn_blocking(move || file.sync_data());
        Ok(Box::pin(async move {
            match syncing.await {
                Ok(done) => done.map_err(|e| fsync_failed(&path, e)),
                Err(e) => Err(SinkError::Fatal(format!(
                    "fsync of {} panicked: {e}",
                    path.display()
                ))),
            }
        }))
    }

    /// Renames the full file away and starts a new one; returns the rotated file's name.
    fn rotate(&mut self) -> Result<PathBuf, SinkError> {
        self.sync()?;
        self.writer = None;
        let next = next_rotation_number(&self.path);
        let target = rotated_path(&self.path, next);
        std::fs::rename(&self.path, &target).map_err(|e| retryable(&self.path, e))?;
        sync_dir(&self.path);
        tracing::info!(file = %target.display(), "rotated file sink");
        self.reopen()?;
        Ok(target)
    }

    /// Starts writing back what reached the file since the last call, once that is
    /// [`WRITEBACK_EVERY`] bytes or more.
    fn start_writeback(&mut self) {
        let Some(w) = self.writer.as_ref() else {
            return;
        };
        let in_file = self.size.saturating_sub(w.buffer().len() as u64);
        self.writeback.advance(w.get_ref(), in_file);
    }

    /// Appends a batch's records, noting each file it rotated away in `rotated`.
    fn append(
        &mut self,
        batch: SinkBatch<'_>,
        rotated: &mut Vec<PathBuf>,
    ) -> Result<(), SinkError> {
        let path = self.path.clone();
        for record in batch.records {
            if let Some(max) = self.max_bytes
                && self.size > 0
                && self.size + record.payload.len() as u64 + 1 > max
            {
                rotated.push(self.rotate()?);
            }
            let sep = self.separator.clone();
            let w = self.writer()?;
            w.write_all(&record.payload)
                .map_err(|e| retryable(&path, e))?;
            w.write_all(&sep).map_err(|e| retryable(&path, e))?;
            self.size += record.payload.len() as u64 + sep.len() as u64;
        }
        Ok(())
    }

    /// Undoes a batch that failed part way: drops what of it is still buffered, deletes the
    /// files it started, moves the file it began in back, and cuts that at `start`.
    fn roll_back(&mut self, start: u64, rotated: Vec<PathBuf>) -> std::io::Result<()> {
        if let Some(writer) = self.writer.take() {
            // `into_parts` hands the buffer back instead of writing it out.
            let (_file, _unwritten) = writer.into_parts();
        }
        if let Some((first, later)) = rotated.split_first() {
            for file in later.iter().chain([&self.path]) {
                match std::fs::remove_file(file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(first, &self.path)?;
            sync_dir(&self.path);
        }
        let file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(start)?;
        file.sync_data()?;
        self.size = start;
        self.writeback.cut(start);
        Ok(())
    }
}

/// Offsets into the file of the writeback started and the page cache dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Writeback {
    /// Writeback was started up to here.
    started: u64,
    /// Up to here it was started a round before: it has had a round's time to reach the disk.
    settled: u64,
    /// The page cache was dropped up to here.
    dropped: u64,
}

impl From<u64> for Writeback {
    /// Everything up to `offset` is taken as handled (a reopened file's existing contents).
    fn from(offset: u64) -> Writeback {
        Writeback {
            started: offset,
            settled: offset,
            dropped: offset,
        }
    }
}

impl Writeback {
    /// With `in_file` bytes in the file: starts the writeback of what was appended since the
    /// last start once that is [`WRITEBACK_EVERY`], and drops the range settled since the last
    /// drop from the page cache.
    fn advance(&mut self, file: &File, in_file: u64) {
        if in_file < self.started + WRITEBACK_EVERY {
            return;
        }
        writeback(file, self.started, in_file - self.started);
        if self.settled > self.dropped {
            drop_cached(file, self.dropped, self.settled - self.dropped);
            self.dropped = self.settled;
        }
        self.settled = self.started;
        self.started = in_file;
    }

    /// The file was cut back to `len` bytes.
    fn cut(&mut self, len: u64) {
        self.started = self.started.min(len);
        self.settled = self.settled.min(len);
        self.dropped = self.dropped.min(len);
    }
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without
/// waiting. Best effort: a failure only means the next fsync has more to do.
#[cfg(target_os = "linux")]
fn writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, which is open for the whole call, and the call
    // takes only plain integers.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "starting file writeback failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn writeback(_file: &File, _offset: u64, _len: u64) {}

/// Drops the clean pages of `len` bytes of `file` from `offset` from the page cache (dirty
/// ones and those still being written stay). Best effort: a failure only leaves them cached.
#[cfg(target_os = "linux")]
fn drop_cached(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor belongs to `file`, which is open for the whole call, and the call
    // takes only plain integers.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::from_raw_os_error(rc), "dropping written file pages from the cache failed");
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_cached(_file: &File, _offset: u64, _len: u64) {}

/// Makes a rename in `path`'s directory durable (best effort).
fn sync_dir(path: &Path) {
    if let Some(d) = path.parent().and_then(|dir| File::open(dir).ok()) {
        let _ = d.sync_all();
    }
}

/// `NAME.000001` for rotation number 1.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n:06}"));
    PathBuf::from(s)
}

/// Every file a file sink at `path` has written, oldest first.
pub fn written_files(path: &Path) -> Vec<PathBuf> {
    let last = next_rotation_number(path);
    let mut files: Vec<PathBuf> = (1..last)
        .map(|n| rotated_path(path, n))
        .filter(|p| p.exists())
        .collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    files
}

fn next_rotation_number(path: &Path) -> u32 {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return 1;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!("{name}.");
    let max = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            n.strip_prefix(&prefix)?.parse::<u32>().ok()
        })
        .max()
        .unwrap_or(0);
    max + 1
}

fn cannot_write(path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Fatal(format!(
        "file sink cannot write {}: {e}; check the path and its permissions",
        path.display()
    ))
}

fn fsync_failed(path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Fatal(format!(
        "file sink could not fsync {}: {e}; the kernel may have dropped what it could not write, so nothing since the last flush is acknowledged: fix the disk and restart (those events are written again)",
        path.display()
    ))
}

fn retryable(path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Retryable(format!("file sink failed writing {}: {e}", path.display()))
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        // Earlier batches go to the file first, so that undoing this one (below) cannot take
        // any of theirs with it. Failing here leaves them buffered for the retry.
        let path = self.path.clone();
        self.writer()?.flush().map_err(|e| retryable(&path, e))?;
        let start = self.size;
        let mut rotated = Vec::new();
        let Err(e) = self.append(batch, &mut rotated) else {
            self.start_writeback();
            return Ok(());
        };
        match self.roll_back(start, rotated) {
            Ok(()) => Err(e),
            Err(undo) => Err(SinkError::Fatal(format!(
                "{e}, and cutting the partly written batch off {} failed too ({undo}); free space or fix the file, then restart (the file may then hold part of the batch twice)",
                path.display()
            ))),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // fsync is blocking; a file sink's flush is rare (once per ack interval), so doing it
        // inline on a worker thread is fine, but let the runtime know.
        tokio::task::block_in_place(|| self.sync())
    }

    fn begin_flush(&mut self) -> Option<PendingFlush> {
        // The fsync runs on the runtime's blocking pool; without a runtime, flush in place.
        tokio::runtime::Handle::try_current().ok()?;
        Some(
            self.sync_in_background()
                .unwrap_or_else(|e| Box::pin(std::future::ready(Err(e)))),
        )
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        tokio::task::block_in_place(|| self.sync())?;
        self.writer = None;
        Ok(())
    }
}

/// Cuts a record that a crash left half written at the end of the file: it was never flushed,
/// so never acknowledged, and it will be written again whole. Appending after it would glue
/// the next record onto it.
fn trim_torn_tail(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                tracing::warn!(path = %path.display(), bytes = len - keep, "cutting a record a crash left half written");
                file.set_len(keep)?;
                file.sync_data()?;
            }
            return Ok(());
        }
        if start == 0 {
            tracing::warn!(path = %path.display(), bytes = len, "cutting a record a crash left half written");
            file.set_len(0)?;
            return file.sync_data();
        }
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_core::sink::EncodedRecord;

    /// Pages of `len` bytes of `file` from `offset` that are in the page cache.
    #[cfg(target_os = "linux")]
    fn resident(file: &File, offset: u64, len: u64) -> usize {
        use std::os::fd::AsRawFd;
        let page = 4096;
        // SAFETY: a read-only shared mapping of an open file, unmapped before returning;
        // `mincore` writes one byte per page into a vector of that many bytes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut pages = vec![0u8; (len as usize).div_ceil(page)];
            assert_eq!(libc::mincore(map, len as usize, pages.as_mut_ptr()), 0);
            libc::munmap(map, len as usize);
            pages.iter().filter(|p| **p & 1 == 1).count()
        }
    }

    /// A range leaves the page cache once the writeback of the range after it has started
    /// (then it has had a round to reach the disk); the newest ones stay.
    #[cfg(target_os = "linux")]
    #[test]
    fn written_ranges_leave_the_page_cache_a_round_later() {
        // Not /tmp, which may be tmpfs (whose pages are the file and never leave).
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target");
        let dir = tempfile::tempdir_in(target).unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        let chunk = vec![b'x'; WRITEBACK_EVERY as usize];
        let mut writeback = Writeback::default();
        for round in 1..=3u64 {
            file.write_all(&chunk).unwrap();
            // Clean pages, so that dropping them is certain rather than timing-dependent.
            file.sync_data().unwrap();
            writeback.advance(&file, round * WRITEBACK_EVERY);
        }
        let step = WRITEBACK_EVERY;
        assert_eq!(
            writeback,
            Writeback {
                started: 3 * step,
                settled: 2 * step,
                dropped: step
            }
        );
        assert_eq!(resident(&file, 0, step), 0, "the oldest range was dropped");
        assert!(
            resident(&file, 2 * step, step) > 0,
            "the newest range stays"
        );
        writeback.cut(step / 2);
        assert_eq!(writeback, Writeback::from(step / 2));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_whole_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        trim_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        trim_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        std::fs::write(&path, b"no newline at all").unwrap();
        trim_torn_tail(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        trim_torn_tail(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn writeback_starts_behind_the_appended_records_and_leaves_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut sink = FileSink::open(path.clone(), None).unwrap();
        let records: Vec<EncodedRecord> = (0..300)
            .map(|i| EncodedRecord {
                topic: "t".into(),
                key: None,
                payload: vec![b'a' + (i % 26) as u8; 64 << 10],
                lsn: walflow_core::event::Lsn(i),
                value: None,
            })
            .collect();
        let batch = SinkBatch {
            records: &records,
            events: &[],
        };
        for _ in 0..2 {
            sink.append(batch, &mut Vec::new()).unwrap();
            sink.start_writeback();
        }
        let in_file = std::fs::metadata(&path).unwrap().len();
        let started = sink.writeback.started;
        assert!(
            started >= WRITEBACK_EVERY && started <= in_file,
            "writeback started up to {started} of {in_file} bytes"
        );
        sink.sync().unwrap();
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 2 * 300 * ((64 << 10) + 1));
        assert!(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .all(|l| l.len() == 64 << 10)
        );
    }

    /// A background flush writes out what was buffered before it began, and appending goes on
    /// while it runs; with rotation in between, the rotated file keeps what it had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_background_flush_covers_what_came_before_and_lets_writing_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut sink = FileSink::open(path.clone(), Some(4096)).unwrap();
        let record = |n: u64| EncodedRecord {
            topic: "t".into(),
            key: None,
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            lsn: walflow_core::event::Lsn(n),
            value: None,
        };
        let first: Vec<EncodedRecord> = (0..10).map(record).collect();
        sink.write(SinkBatch {
            records: &first,
            events: &[],
        })
        .await
        .unwrap();
        let flushing = sink
            .begin_flush()
            .expect("the file sink flushes in the background");
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            (0..10)
                .map(|n: u64| format!("{{\"n\":{n}}}\n").len())
                .sum::<usize>(),
            "the buffer went to the file before the flush began"
        );
        let later: Vec<EncodedRecord> = (10..1000).map(record).collect();
        sink.write(SinkBatch {
            records: &later,
            events: &[],
        })
        .await
        .unwrap();
        flushing.await.unwrap();
        sink.close().await.unwrap();
        let mut numbers = Vec::new();
        for file in written_files(&path) {
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let n: serde_json::Value = serde_json::from_str(line).unwrap();
                numbers.push(n["n"].as_u64().unwrap());
            }
        }
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
    }

    /// Outside a runtime there is no blocking pool for the fsync: the sink says so, and the
    /// caller flushes in place.
    #[test]
    fn without_a_runtime_the_flush_is_left_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path().join("e.jsonl"), None).unwrap();
        assert!(sink.begin_flush().is_none());
    }
}
