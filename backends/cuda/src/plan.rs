//! The staging ring's pure logic, free of driver calls so that it is tested without a GPU.
//!
//! A batch of storages is seen as one byte stream (the storages back to back, in order) cut
//! into windows of `slot_bytes`: each window is one [`Fill`] of a staging slot. Small storages
//! therefore share a slot (coalescing) and a storage larger than a slot spans several fills
//! (chunking). The pipeline then cycles the fills through the ring's slots: it fills a slot
//! from the host bytes, queues one asynchronous copy per segment, records the slot's event,
//! and waits for that event only when the slot comes round again.

/// A contiguous piece of one storage that travels through a staging slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Index of the storage in the batch.
    pub storage: usize,
    /// Offset of the piece within the storage (and within its device allocation).
    pub offset: usize,
    /// Offset of the piece within the staging slot.
    pub staging_offset: usize,
    /// Length of the piece in bytes; never 0.
    pub len: usize,
}

impl Segment {
    /// One past the last staging byte the segment uses.
    pub fn staging_end(&self) -> usize {
        self.staging_offset.saturating_add(self.len)
    }
}

/// One fill of a staging slot: segments packed back to back from staging offset 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fill {
    /// The pieces, in staging order (and in storage order).
    pub segments: Vec<Segment>,
}

impl Fill {
    /// Bytes of the slot this fill uses.
    pub fn len(&self) -> usize {
        self.segments.last().map_or(0, Segment::staging_end)
    }

    /// Whether the fill carries no bytes (a plan never contains one).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

/// Splits a batch of storages (their sizes, in order) into staging-slot fills of at most
/// `slot_bytes` bytes each (a `slot_bytes` of 0 is treated as 1).
///
/// Every byte of every storage appears in exactly one segment, in order; 0-byte storages get
/// no segment; every fill but the last is exactly `slot_bytes` long.
pub fn plan_uploads(sizes: &[usize], slot_bytes: usize) -> Vec<Fill> {
    let slot = slot_bytes.max(1);
    let mut fills = Vec::new();
    let mut current = Fill::default();
    let mut used = 0usize;
    for (storage, &size) in sizes.iter().enumerate() {
        let mut offset = 0usize;
        while offset < size {
            let len = (size - offset).min(slot - used);
            current.segments.push(Segment {
                storage,
                offset,
                staging_offset: used,
                len,
            });
            used += len;
            offset += len;
            if used == slot {
                fills.push(std::mem::take(&mut current));
                used = 0;
            }
        }
    }
    if !current.is_empty() {
        fills.push(current);
    }
    fills
}

/// Where the pipeline reads one storage's host bytes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HostSource<'a> {
    /// A byte slice (owned memory, or a memory map when no file is known).
    Bytes(&'a [u8]),
    /// `len` bytes at `offset` of a file, read with `pread`: from the page cache straight into
    /// the staging buffer, without mapping the file's pages into the process.
    #[cfg(unix)]
    File {
        /// The open file.
        file: &'a std::fs::File,
        /// Offset of the storage's first byte.
        offset: u64,
        /// Length of the storage.
        len: usize,
    },
}

impl HostSource<'_> {
    /// Copies the source's bytes `at..at + dst.len()` into `dst`; `Err` names `storage`.
    fn read(&self, storage: usize, at: usize, dst: &mut [u8]) -> Result<(), String> {
        let short = || {
            format!(
                "staging plan reads bytes {at}..{} of storage #{storage}, which is shorter",
                at.saturating_add(dst.len())
            )
        };
        match *self {
            HostSource::Bytes(bytes) => {
                let src = at
                    .checked_add(dst.len())
                    .and_then(|end| bytes.get(at..end))
                    .ok_or_else(short)?;
                dst.copy_from_slice(src);
                Ok(())
            }
            #[cfg(unix)]
            HostSource::File { file, offset, len } => {
                use std::os::unix::fs::FileExt;
                if at.checked_add(dst.len()).is_none_or(|end| end > len) {
                    return Err(short());
                }
                let pos = offset.checked_add(at as u64).ok_or_else(short)?;
                file.read_exact_at(dst, pos).map_err(|e| {
                    format!("cannot read storage #{storage} from the checkpoint at byte {pos}: {e}")
                })
            }
        }
    }
}

/// Below this many bytes per thread a staging fill is copied on the calling thread.
pub(crate) const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// The device side of the pipeline: a ring of staging slots, each with an event, and a stream
/// on which copies run in order. Errors are driver messages.
pub(crate) trait Stager {
    /// Number of slots in the ring (at least 1).
    fn slots(&self) -> usize;
    /// The host buffer of `slot`; only called when no copy from it is in flight.
    fn staging(&mut self, slot: usize) -> Result<&mut [u8], String>;
    /// Queues the asynchronous copy of `segment` from `slot` to its storage.
    fn copy(&mut self, slot: usize, segment: &Segment) -> Result<(), String>;
    /// Records `slot`'s event after the copies queued from it.
    fn record(&mut self, slot: usize) -> Result<(), String>;
    /// Blocks until the copies before `slot`'s last recorded event are done.
    fn wait(&mut self, slot: usize) -> Result<(), String>;
    /// Blocks until every queued copy is done.
    fn finish(&mut self) -> Result<(), String>;
}

/// Streams `plan` through the stager's ring: while the copy of slot k runs, slot k+1 is filled
/// from `sources` (the storages' host bytes, indexed like the plan's `storage`). A slot is
/// reused only after waiting for its event, so at most `slots` fills of host memory are used.
/// Fills are split between up to `threads` threads (the caller's and a pool started once for
/// the whole batch).
pub(crate) fn run_pipeline<S: Stager + ?Sized>(
    plan: &[Fill],
    sources: &[HostSource<'_>],
    stager: &mut S,
    threads: usize,
) -> Result<(), String> {
    let slots = stager.slots();
    if slots == 0 {
        return Err("the staging ring has no slots".to_string());
    }
    let largest = plan.iter().map(Fill::len).max().unwrap_or(0);
    let threads = threads.min(largest / PARALLEL_MIN_BYTES).max(1);
    with_pool(threads, sources, |pool| {
        let mut in_flight = vec![false; slots];
        for (k, fill) in plan.iter().enumerate() {
            let slot = k % slots;
            if let Some(busy) = in_flight.get_mut(slot) {
                if *busy {
                    stager.wait(slot)?;
                    *busy = false;
                }
            }
            let buf = stager.staging(slot)?;
            pool.fill(buf, &fill.segments, PARALLEL_MIN_BYTES)?;
            for segment in &fill.segments {
                stager.copy(slot, segment)?;
            }
            stager.record(slot)?;
            if let Some(busy) = in_flight.get_mut(slot) {
                *busy = true;
            }
        }
        stager.finish()
    })
}

/// A piece of a staging buffer for a pool thread to fill, with the fill's segments.
struct Piece {
    ptr: *mut u8,
    len: usize,
    /// Offset of the piece within the fill's staging bytes.
    start: usize,
    segments: *const Segment,
    count: usize,
}

// SAFETY: a Piece stands for a `&mut [u8]` that `Pool::fill` split off a staging buffer (the
// pieces are disjoint, so each byte is written by exactly one thread) and for the `&[Segment]`
// of the same fill, which is only read. What keeps the pointers valid for as long as a worker
// can use them is `with_pool`: its workers are scoped threads, and `std::thread::scope` joins
// every one of them before it returns *or* resumes a panic, while everything the pointers
// refer to outlives that scope. The staging buffers belong to the `Stager` (the ring's pinned
// slots), which `run_pipeline` borrows mutably for its whole call, around the scope; the
// segments belong to the plan, borrowed for the whole call too. On the normal path `fill` also
// waits for every delivered piece's reply before it returns, so a buffer is never handed out
// again while a piece of it is being written. Should `fill` unwind instead (a panic in the
// caller's own `copy_range`), it returns without those replies, nothing touches the buffer on
// the way out, and the scope's join waits for the workers before the borrow of the slot ends.
unsafe impl Send for Piece {}

impl Piece {
    /// Fills the piece.
    ///
    /// # Safety
    /// The buffer and segments the piece was made from are still alive (see `Piece`: the
    /// pool's scope outlives every use) and no other thread uses this piece's range.
    unsafe fn run(&self, sources: &[HostSource<'_>]) -> Result<(), String> {
        // SAFETY: guaranteed by the caller, as documented above.
        let (buf, segments) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.ptr, self.len),
                std::slice::from_raw_parts(self.segments, self.count),
            )
        };
        copy_range(buf, self.start, segments, sources)
    }
}

/// Threads that fill pieces of staging buffers, alive for one batch (scoped threads).
pub(crate) struct Pool<'p, 'a> {
    workers: Vec<std::sync::mpsc::Sender<Piece>>,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
    sources: &'p [HostSource<'a>],
}

/// Runs `body` with a pool of `threads - 1` helper threads (the caller is the last one).
/// Threads that cannot be started are simply not used.
pub(crate) fn with_pool<'a, R>(
    threads: usize,
    sources: &[HostSource<'a>],
    body: impl FnOnce(&Pool<'_, 'a>) -> R,
) -> R {
    std::thread::scope(|scope| {
        let (reply, done) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for _ in 1..threads.max(1) {
            let (tx, rx) = std::sync::mpsc::channel::<Piece>();
            let reply = reply.clone();
            let spawned = std::thread::Builder::new()
                .name("ptfile-cuda-stage".to_string())
                .spawn_scoped(scope, move || {
                    for piece in rx {
                        let outcome = std::panic::catch_unwind(|| {
                            // SAFETY: `Pool::fill` sent the piece, whose memory outlives
                            // this scoped thread (see `Piece`), to this thread alone.
                            unsafe { piece.run(sources) }
                        })
                        .unwrap_or_else(|_| Err("a staging copy thread failed".to_string()));
                        if reply.send(outcome).is_err() {
                            break;
                        }
                    }
                });
            if spawned.is_ok() {
                workers.push(tx);
            }
        }
        // Only the workers hold reply senders now: should one end without replying, `fill`
        // gets an error instead of waiting for ever.
        drop(reply);
        let pool = Pool {
            workers,
            done,
            sources,
        };
        // Dropping the pool closes the workers' channels, so the scope's threads end.
        body(&pool)
    })
}

impl Pool<'_, '_> {
    /// Copies the bytes of `segments` into `buf` (whose first bytes they fill), split between
    /// the pool's threads and the caller when each gets at least `min_per_thread` bytes.
    pub(crate) fn fill(
        &self,
        buf: &mut [u8],
        segments: &[Segment],
        min_per_thread: usize,
    ) -> Result<(), String> {
        let total = segments.last().map_or(0, Segment::staging_end);
        let buf_len = buf.len();
        let Some(buf) = buf.get_mut(..total) else {
            return Err(format!(
                "staging plan needs {total} bytes, the staging buffer has {buf_len}"
            ));
        };
        let threads = (self.workers.len() + 1)
            .min(total / min_per_thread.max(1))
            .max(1);
        if threads == 1 {
            return copy_range(buf, 0, segments, self.sources);
        }
        let per = total.div_ceil(threads).max(1);
        let mut pieces = buf.chunks_mut(per);
        let first = pieces.next().unwrap_or_default();
        let mut sent = 0;
        let mut outcome = Ok(());
        for ((i, piece), worker) in pieces.enumerate().zip(&self.workers) {
            let job = Piece {
                ptr: piece.as_mut_ptr(),
                len: piece.len(),
                start: (i + 1) * per,
                segments: segments.as_ptr(),
                count: segments.len(),
            };
            match worker.send(job) {
                Ok(()) => sent += 1,
                // The worker is gone (it cannot be, while the pool lives): copy here instead.
                Err(std::sync::mpsc::SendError(job)) => {
                    // SAFETY: the job was not delivered, so this thread is its only user, and
                    // `buf` and `segments` are borrowed for this whole call.
                    outcome = outcome.and(unsafe { job.run(self.sources) });
                }
            }
        }
        outcome = outcome.and(copy_range(first, 0, segments, self.sources));
        // Every delivered piece must be finished before `buf` may be used again.
        for _ in 0..sent {
            let reply = self
                .done
                .recv()
                .unwrap_or_else(|_| Err("a staging copy thread vanished".to_string()));
            outcome = outcome.and(reply);
        }
        outcome
    }
}

/// Copies the bytes of `segments` from `sources` into the staging buffer `buf`, on up to
/// `threads` threads when there are at least `min_per_thread` bytes for each.
#[cfg(test)]
pub(crate) fn fill_staging(
    buf: &mut [u8],
    segments: &[Segment],
    sources: &[HostSource<'_>],
    threads: usize,
    min_per_thread: usize,
) -> Result<(), String> {
    with_pool(threads, sources, |pool| {
        pool.fill(buf, segments, min_per_thread)
    })
}

/// Copies the part of `segments` that falls in staging bytes `start..start + piece.len()`.
fn copy_range(
    piece: &mut [u8],
    start: usize,
    segments: &[Segment],
    sources: &[HostSource<'_>],
) -> Result<(), String> {
    let end = start + piece.len();
    let first = segments.partition_point(|s| s.staging_end() <= start);
    for segment in segments.get(first..).unwrap_or(&[]) {
        if segment.staging_offset >= end {
            break;
        }
        let lo = segment.staging_offset.max(start);
        let hi = segment.staging_end().min(end);
        let src_lo = segment.offset + (lo - segment.staging_offset);
        let source = sources
            .get(segment.storage)
            .ok_or_else(|| format!("no host bytes for storage #{}", segment.storage))?;
        let dst = piece
            .get_mut(lo - start..hi - start)
            .ok_or_else(|| "staging range out of bounds".to_string())?;
        source.read(segment.storage, src_lo, dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every invariant of a plan against the sizes it was made from.
    fn check_plan(sizes: &[usize], slot: usize, plan: &[Fill]) {
        let slot = slot.max(1);
        let mut next = vec![0usize; sizes.len()];
        let mut last_storage = 0usize;
        for (k, fill) in plan.iter().enumerate() {
            assert!(!fill.is_empty(), "fill {k} is empty");
            assert!(fill.len() <= slot, "fill {k} overflows the slot");
            if k + 1 < plan.len() {
                assert_eq!(fill.len(), slot, "fill {k} is not full");
            }
            let mut at = 0;
            for s in &fill.segments {
                assert!(s.len > 0, "empty segment in fill {k}");
                assert_eq!(s.staging_offset, at, "segments in fill {k} not packed");
                assert!(s.storage >= last_storage, "storages out of order");
                assert_eq!(
                    s.offset, next[s.storage],
                    "storage {} not contiguous",
                    s.storage
                );
                next[s.storage] += s.len;
                last_storage = s.storage;
                at += s.len;
            }
        }
        assert_eq!(next, sizes, "every byte of every storage once");
        let total: usize = sizes.iter().sum();
        assert_eq!(plan.len(), total.div_ceil(slot));
    }

    fn plan_checked(sizes: &[usize], slot: usize) -> Vec<Fill> {
        let plan = plan_uploads(sizes, slot);
        check_plan(sizes, slot, &plan);
        plan
    }

    fn seg(storage: usize, offset: usize, staging_offset: usize, len: usize) -> Segment {
        Segment {
            storage,
            offset,
            staging_offset,
            len,
        }
    }

    #[test]
    fn empty_batch_and_zero_byte_storages_need_no_fill() {
        assert!(plan_checked(&[], 16).is_empty());
        assert!(plan_checked(&[0, 0, 0], 16).is_empty());
    }

    #[test]
    fn zero_byte_storages_get_no_segment_between_others() {
        let plan = plan_checked(&[0, 3, 0, 0, 4, 0], 16);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].segments, vec![seg(1, 0, 0, 3), seg(4, 0, 3, 4)]);
    }

    #[test]
    fn small_storages_are_coalesced_into_one_slot() {
        let plan = plan_checked(&[1, 2, 3, 4], 16);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].len(), 10);
        assert_eq!(
            plan[0].segments,
            vec![
                seg(0, 0, 0, 1),
                seg(1, 0, 1, 2),
                seg(2, 0, 3, 3),
                seg(3, 0, 6, 4)
            ]
        );
    }

    #[test]
    fn exact_boundaries() {
        // One storage exactly a slot.
        let plan = plan_checked(&[16], 16);
        assert_eq!(
            plan,
            vec![Fill {
                segments: vec![seg(0, 0, 0, 16)]
            }]
        );
        // Two storages, each exactly a slot: one fill each, no split.
        let plan = plan_checked(&[16, 16], 16);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[1].segments, vec![seg(1, 0, 0, 16)]);
        // Two halves fill one slot exactly; the next storage starts a fresh slot.
        let plan = plan_checked(&[8, 8, 1], 16);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].segments, vec![seg(0, 0, 0, 8), seg(1, 0, 8, 8)]);
        assert_eq!(plan[1].segments, vec![seg(2, 0, 0, 1)]);
        // One byte over a slot.
        let plan = plan_checked(&[17], 16);
        assert_eq!(plan[1].segments, vec![seg(0, 16, 0, 1)]);
        // One byte short, then a storage that straddles the boundary.
        let plan = plan_checked(&[15, 2], 16);
        assert_eq!(plan[0].segments, vec![seg(0, 0, 0, 15), seg(1, 0, 15, 1)]);
        assert_eq!(plan[1].segments, vec![seg(1, 1, 0, 1)]);
    }

    #[test]
    fn storage_larger_than_the_whole_ring_is_chunked() {
        // A ring of 4 slots of 16 bytes holds 64 bytes; this storage is 10 slots and a bit.
        let plan = plan_checked(&[3, 16 * 10 + 5, 2], 16);
        assert_eq!(plan.len(), (3 + 165 + 2usize).div_ceil(16));
        assert_eq!(plan[0].segments[0], seg(0, 0, 0, 3));
        assert_eq!(plan[0].segments[1], seg(1, 0, 3, 13));
        for (k, fill) in plan.iter().enumerate().take(10).skip(1) {
            assert_eq!(fill.segments, vec![seg(1, 13 + (k - 1) * 16, 0, 16)]);
        }
        assert_eq!(plan[10].segments, vec![seg(1, 157, 0, 8), seg(2, 0, 8, 2)]);
    }

    #[test]
    fn zero_slot_size_is_treated_as_one() {
        let plan = plan_checked(&[2, 0, 1], 0);
        assert_eq!(plan.len(), 3);
    }

    #[test]
    fn many_random_plans_hold_their_invariants() {
        let mut rng = Lcg(7);
        for _ in 0..500 {
            let n = rng.below(20);
            let sizes: Vec<usize> = (0..n)
                .map(|_| match rng.below(4) {
                    0 => 0,
                    1 => rng.below(8),
                    2 => rng.below(64),
                    _ => rng.below(400),
                })
                .collect();
            let slot = 1 + rng.below(70);
            plan_checked(&sizes, slot);
        }
    }

    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    fn sources_of(sizes: &[usize], seed: u8) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                (0..n)
                    .map(|j| (j as u8).wrapping_mul(31) ^ (i as u8).wrapping_add(seed))
                    .collect()
            })
            .collect()
    }

    /// A ring whose "DMA" reads the staging buffer as late as possible (when the slot is
    /// waited on, or at the end), so refilling a slot too early corrupts the result.
    struct LazyDevice {
        staging: Vec<Vec<u8>>,
        pending: Vec<Vec<Segment>>,
        recorded: Vec<bool>,
        dst: Vec<Vec<u8>>,
        violations: Vec<String>,
        fail_copy_at: Option<usize>,
        copies: usize,
        max_in_flight: usize,
    }

    impl LazyDevice {
        fn new(slots: usize, slot_bytes: usize, sizes: &[usize]) -> Self {
            LazyDevice {
                staging: vec![vec![0xAA; slot_bytes]; slots],
                pending: vec![Vec::new(); slots],
                recorded: vec![false; slots],
                dst: sizes.iter().map(|&n| vec![0x55; n]).collect(),
                violations: Vec::new(),
                fail_copy_at: None,
                copies: 0,
                max_in_flight: 0,
            }
        }
        fn complete(&mut self, slot: usize) {
            for s in std::mem::take(&mut self.pending[slot]) {
                let src = &self.staging[slot][s.staging_offset..s.staging_end()];
                self.dst[s.storage][s.offset..s.offset + s.len].copy_from_slice(src);
            }
            self.recorded[slot] = false;
        }
    }

    impl Stager for LazyDevice {
        fn slots(&self) -> usize {
            self.staging.len()
        }
        fn staging(&mut self, slot: usize) -> Result<&mut [u8], String> {
            if !self.pending[slot].is_empty() {
                self.violations
                    .push(format!("slot {slot} refilled while its copy is in flight"));
            }
            Ok(&mut self.staging[slot])
        }
        fn copy(&mut self, slot: usize, segment: &Segment) -> Result<(), String> {
            if Some(self.copies) == self.fail_copy_at {
                return Err("simulated copy failure".into());
            }
            self.copies += 1;
            self.pending[slot].push(*segment);
            Ok(())
        }
        fn record(&mut self, slot: usize) -> Result<(), String> {
            self.recorded[slot] = true;
            let in_flight = self.pending.iter().filter(|p| !p.is_empty()).count();
            self.max_in_flight = self.max_in_flight.max(in_flight);
            Ok(())
        }
        fn wait(&mut self, slot: usize) -> Result<(), String> {
            if !self.recorded[slot] {
                self.violations
                    .push(format!("waited on slot {slot} that was never recorded"));
            }
            self.complete(slot);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), String> {
            for slot in 0..self.staging.len() {
                self.complete(slot);
            }
            Ok(())
        }
    }

    fn slices(owned: &[Vec<u8>]) -> Vec<HostSource<'_>> {
        owned.iter().map(|v| HostSource::Bytes(v)).collect()
    }

    /// The storages written back to back into a fresh temporary file after a 7-byte header.
    #[cfg(unix)]
    fn in_file(owned: &[Vec<u8>]) -> (std::fs::File, Vec<(u64, usize)>) {
        use std::io::{Seek, Write};
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ptfile-cuda-plan-{}-{n}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(b"header!").unwrap();
        let mut spans = Vec::new();
        for v in owned {
            spans.push((file.stream_position().unwrap(), v.len()));
            file.write_all(v).unwrap();
        }
        (file, spans)
    }

    fn run_case(sizes: &[usize], slots: usize, slot_bytes: usize, threads: usize) -> LazyDevice {
        let owned = sources_of(sizes, 3);
        let plan = plan_uploads(sizes, slot_bytes);
        let run = |sources: &[HostSource<'_>]| {
            let mut dev = LazyDevice::new(slots, slot_bytes, sizes);
            run_pipeline(&plan, sources, &mut dev, threads).unwrap();
            assert!(dev.violations.is_empty(), "{:?}", dev.violations);
            assert_eq!(dev.dst, owned, "sizes {sizes:?} slots {slots}x{slot_bytes}");
            dev
        };
        #[cfg(unix)]
        {
            let (file, spans) = in_file(&owned);
            let from_file: Vec<HostSource<'_>> = spans
                .iter()
                .map(|&(offset, len)| HostSource::File {
                    file: &file,
                    offset,
                    len,
                })
                .collect();
            run(&from_file);
        }
        run(&slices(&owned))
    }

    #[test]
    fn pipeline_uploads_everything_without_reusing_busy_slots() {
        let dev = run_case(&[0, 5, 100, 0, 16, 1, 333], 3, 16, 1);
        assert_eq!(dev.max_in_flight, 3, "the ring is used in full");
        run_case(&[64], 4, 16, 1);
        run_case(&[1000], 1, 7, 1);
        run_case(&[], 4, 16, 1);
        run_case(&[0, 0], 4, 16, 1);
    }

    #[test]
    fn pipeline_random_batches() {
        let mut rng = Lcg(11);
        for _ in 0..200 {
            let n = rng.below(12);
            let sizes: Vec<usize> = (0..n).map(|_| rng.below(300)).collect();
            let slots = 1 + rng.below(5);
            let slot_bytes = 1 + rng.below(90);
            run_case(&sizes, slots, slot_bytes, 1);
        }
    }

    #[test]
    fn pipeline_reports_copy_failures() {
        let sizes = [40, 40, 40];
        let owned = sources_of(&sizes, 1);
        let sources = slices(&owned);
        let plan = plan_uploads(&sizes, 16);
        let mut dev = LazyDevice::new(2, 16, &sizes);
        dev.fail_copy_at = Some(4);
        let err = run_pipeline(&plan, &sources, &mut dev, 1).unwrap_err();
        assert!(err.contains("simulated"));
    }

    #[test]
    fn pipeline_rejects_a_short_source_instead_of_panicking() {
        let plan = plan_uploads(&[10], 16);
        let short = [0u8; 4];
        let mut dev = LazyDevice::new(1, 16, &[10]);
        assert!(run_pipeline(&plan, &[HostSource::Bytes(&short)], &mut dev, 1).is_err());
        let mut tiny = LazyDevice::new(1, 4, &[10]);
        let src = [0u8; 10];
        assert!(run_pipeline(&plan, &[HostSource::Bytes(&src)], &mut tiny, 1).is_err());
        #[cfg(unix)]
        {
            // A file span that claims more bytes than the file has.
            let (file, _) = in_file(&[vec![1u8; 6]]);
            let past_end = HostSource::File {
                file: &file,
                offset: 7,
                len: 10,
            };
            let mut dev = LazyDevice::new(1, 16, &[10]);
            let err = run_pipeline(&plan, &[past_end], &mut dev, 1).unwrap_err();
            assert!(err.contains("cannot read storage #0"), "{err}");
        }
    }

    #[test]
    fn parallel_fill_matches_sequential_fill() {
        let mut rng = Lcg(5);
        for _ in 0..100 {
            let n = 1 + rng.below(10);
            let sizes: Vec<usize> = (0..n).map(|_| rng.below(200)).collect();
            let slot = 1 + rng.below(500);
            let owned = sources_of(&sizes, 9);
            let sources = slices(&owned);
            for fill in plan_uploads(&sizes, slot) {
                let mut seq = vec![0u8; slot];
                let mut par = vec![0u8; slot];
                fill_staging(&mut seq, &fill.segments, &sources, 1, 1).unwrap();
                let threads = 1 + rng.below(6);
                fill_staging(&mut par, &fill.segments, &sources, threads, 1).unwrap();
                assert_eq!(seq, par);
                for s in &fill.segments {
                    assert_eq!(
                        &seq[s.staging_offset..s.staging_end()],
                        &owned[s.storage][s.offset..s.offset + s.len]
                    );
                }
            }
        }
    }
}
