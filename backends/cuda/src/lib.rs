//! # ptfile-cuda: storages straight into CUDA device memory
//!
//! The `cuda` backend of ptfile. It talks to the CUDA driver API through
//! [cudarc](https://docs.rs/cudarc), loading `libcuda` at run time, so it builds without the
//! CUDA toolkit and, on a machine without the NVIDIA driver, reports itself
//! [`Availability::Unavailable`] (storages then fall back to another backend).
//!
//! [`Backend::materialize_many`] streams the storages' host bytes through a small ring of
//! pinned (page-locked) staging buffers: while slot *k* is being copied to the device
//! asynchronously, slot *k+1* is filled, with `pread` from the checkpoint file when the loader
//! says where the bytes lie (`StorageDesc::file`), else from the given slice. Small storages
//! share a slot, large ones are chunked across slots, and host memory stays bounded by the
//! ring ([`RingConfig`], default 4 x 16 MiB). The storages of a batch share one device
//! allocation ([`CudaBackend::with_shared_allocations`]); [`CudaStorage::device_ptr`] gives
//! each one's address.
#![warn(missing_docs)]

pub mod plan;

use std::any::Any;
use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use ptfile_backend::{
    Availability, Backend, BackendError, BackendExt, Capabilities, DeviceStorage, StorageDesc,
};

use crate::plan::{plan_uploads, run_pipeline, HostSource, Segment, Stager};

/// Default number of staging slots in the ring.
pub const DEFAULT_SLOTS: usize = 4;
/// Default size of one staging slot (16 MiB).
pub const DEFAULT_SLOT_BYTES: usize = 16 << 20;
/// Default upper bound on the threads that fill staging slots (each reads at most one slot's
/// share at a time; several are needed to keep up with a PCIe 5 link).
pub const DEFAULT_COPY_THREADS: usize = 8;
/// Environment variable: number of staging slots (a positive integer).
pub const ENV_SLOTS: &str = "PTFILE_CUDA_RING_SLOTS";
/// Environment variable: size of one staging slot in MiB (a positive integer).
pub const ENV_SLOT_MIB: &str = "PTFILE_CUDA_RING_SLOT_MIB";
/// Environment variable: size of one staging slot in KiB (a positive integer); wins over
/// [`ENV_SLOT_MIB`]. Small rings are for tests and experiments.
pub const ENV_SLOT_KIB: &str = "PTFILE_CUDA_RING_SLOT_KIB";
/// Environment variable: `0` gives every storage its own device allocation
/// ([`CudaBackend::with_shared_allocations`]).
pub const ENV_SHARED: &str = "PTFILE_CUDA_SHARED_ALLOCATIONS";
/// Environment variable: most threads filling one staging slot (a positive integer).
pub const ENV_COPY_THREADS: &str = "PTFILE_CUDA_COPY_THREADS";

/// Why the backend is unavailable when `libcuda` cannot be loaded.
pub const NO_DRIVER: &str = "CUDA driver not found (libcuda.so could not be loaded): install the NVIDIA driver or map storages to cpu";
/// Why the backend is unavailable when the driver sees no device.
pub const NO_DEVICE: &str = "no CUDA device present";

/// Every driver entry point this crate calls, as cudarc resolves it. The probe checks them all
/// so that a too-old driver is reported unavailable instead of failing later.
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuStreamCreate",
    "cuStreamSynchronize",
    "cuStreamDestroy_v2",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemHostAlloc",
    "cuMemFreeHost",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
];

/// Size of the pinned staging ring used by [`Backend::materialize_many`].
///
/// Host memory used by an upload is at most `slots * slot_bytes` (slots are allocated on first
/// use and kept for later uploads; see [`CudaBackend::release_staging`]).
///
/// Fields may be added: build one with [`RingConfig::new`], or from [`RingConfig::default`]
/// with the `with_*` methods.
///
/// ```
/// use ptfile_cuda::RingConfig;
/// let ring = RingConfig::default().with_slots(2).with_slot_bytes(8 << 20);
/// assert_eq!((ring.slots, ring.slot_bytes), (2, 8 << 20));
/// assert_eq!(RingConfig::new(3, 1000, 2).copy_threads, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingConfig {
    /// Number of staging slots; copies of up to this many slots are in flight at once.
    pub slots: usize,
    /// Bytes per staging slot.
    pub slot_bytes: usize,
    /// Most threads used to fill one slot from host memory (a slot is split between threads
    /// only when each gets at least 1 MiB).
    pub copy_threads: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            slots: DEFAULT_SLOTS,
            slot_bytes: DEFAULT_SLOT_BYTES,
            copy_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(DEFAULT_COPY_THREADS),
        }
    }
}

impl RingConfig {
    /// `slots` staging slots of `slot_bytes` bytes, each filled by up to `copy_threads` threads
    /// (values of 0 count as 1).
    pub fn new(slots: usize, slot_bytes: usize, copy_threads: usize) -> Self {
        RingConfig {
            slots,
            slot_bytes,
            copy_threads,
        }
    }

    /// With [`RingConfig::slots`] set.
    pub fn with_slots(mut self, slots: usize) -> Self {
        self.slots = slots;
        self
    }

    /// With [`RingConfig::slot_bytes`] set.
    pub fn with_slot_bytes(mut self, slot_bytes: usize) -> Self {
        self.slot_bytes = slot_bytes;
        self
    }

    /// With [`RingConfig::copy_threads`] set.
    pub fn with_copy_threads(mut self, copy_threads: usize) -> Self {
        self.copy_threads = copy_threads;
        self
    }

    /// The defaults, overridden by [`ENV_SLOTS`], [`ENV_SLOT_MIB`], [`ENV_SLOT_KIB`] and
    /// [`ENV_COPY_THREADS`] where those hold positive integers (other values are ignored).
    pub fn from_env() -> Self {
        fn var(name: &str) -> Option<usize> {
            std::env::var(name)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
        }
        let mut config = RingConfig::default();
        if let Some(n) = var(ENV_SLOTS) {
            config.slots = n;
        }
        if let Some(mib) = var(ENV_SLOT_MIB) {
            config.slot_bytes = mib.saturating_mul(1 << 20);
        }
        if let Some(kib) = var(ENV_SLOT_KIB) {
            config.slot_bytes = kib.saturating_mul(1 << 10);
        }
        if let Some(n) = var(ENV_COPY_THREADS) {
            config.copy_threads = n;
        }
        config
    }

    /// The same configuration with every field at least 1.
    fn normalized(self) -> Self {
        RingConfig {
            slots: self.slots.max(1),
            slot_bytes: self.slot_bytes.max(1),
            copy_threads: self.copy_threads.max(1),
        }
    }
}

/// The CUDA backend. [`backend`] makes one configured from the environment.
pub struct CudaBackend {
    ring: RingConfig,
    shared: bool,
    devices: Mutex<Vec<Option<Arc<Device>>>>,
}

impl Default for CudaBackend {
    fn default() -> Self {
        CudaBackend::new()
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ring", &self.ring)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// A backend with the ring from [`RingConfig::from_env`]. Probes nothing.
    pub fn new() -> Self {
        CudaBackend::with_ring(RingConfig::from_env())
    }

    /// A backend with the given staging ring (zero fields are raised to 1). Probes nothing.
    pub fn with_ring(ring: RingConfig) -> Self {
        CudaBackend {
            ring: ring.normalized(),
            shared: std::env::var(ENV_SHARED).map_or(true, |v| v.trim() != "0"),
            devices: Mutex::new(Vec::new()),
        }
    }

    /// Whether the storages of one batch share one device allocation (the default; one
    /// `cuMemAlloc` instead of one per storage, which is much of a load's fixed cost when a
    /// checkpoint has many tensors) or get one each (memory of a dropped storage is then
    /// returned at once). A shared allocation is freed when its last storage is dropped. If
    /// the shared allocation cannot be made, storages are allocated one by one. The
    /// environment variable [`ENV_SHARED`] set to `0` turns sharing off.
    pub fn with_shared_allocations(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// The staging ring this backend uses.
    pub fn ring_config(&self) -> RingConfig {
        self.ring
    }

    /// Frees the pinned staging buffers kept from earlier uploads (they are allocated again on
    /// the next upload). Waits for uploads in progress.
    pub fn release_staging(&self) {
        let devices: Vec<Arc<Device>> = lock(&self.devices).iter().flatten().cloned().collect();
        for device in devices {
            drop(lock(&device.ring).take());
        }
    }

    /// The device state for `ordinal`, opening its primary context on first use.
    fn device(&self, ordinal: usize) -> Result<Arc<Device>, BackendError> {
        let mut devices = lock(&self.devices);
        if let Some(Some(device)) = devices.get(ordinal) {
            return Ok(Arc::clone(device));
        }
        let device = Arc::new(Device {
            ctx: Context::open(ordinal)?,
            ring: Mutex::new(None),
        });
        if devices.len() <= ordinal {
            devices.resize(ordinal + 1, None);
        }
        if let Some(entry) = devices.get_mut(ordinal) {
            *entry = Some(Arc::clone(&device));
        }
        Ok(device)
    }

    /// Copies the batch's bytes into the allocations `dsts` (pointer and size per storage; size
    /// 0 for storages that need no copy). Bytes whose file span is known are read from the
    /// file (`pread`) rather than through the slice, so a mapped checkpoint's pages never
    /// become resident in this process. Errors are driver messages.
    fn upload(
        &self,
        device: &Device,
        dsts: &[(u64, usize)],
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Result<(), String> {
        let sizes: Vec<usize> = dsts.iter().map(|&(_, n)| n).collect();
        let plan = plan_uploads(&sizes, self.ring.slot_bytes);
        if plan.is_empty() {
            return Ok(());
        }
        let mut guard = lock(&device.ring);
        if guard.is_none() {
            *guard = Some(
                Ring::new(&device.ctx, self.ring.slot_bytes)
                    .map_err(|e| format!("cannot create a copy stream: {}", describe(e)))?,
            );
        }
        let Some(ring) = guard.as_mut() else {
            return Err("staging ring missing".to_string());
        };
        let slots = ring.ensure_slots(self.ring.slots.min(plan.len()));
        if slots == 0 {
            // No pinned memory at all: copy synchronously from the host bytes.
            drop(guard);
            return upload_pageable(dsts, items);
        }
        let sources: Vec<HostSource<'_>> = items.iter().map(host_source).collect();
        let mut stager = RingStager { ring, slots, dsts };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_pipeline(&plan, &sources, &mut stager, self.ring.copy_threads)
        }));
        if !matches!(outcome, Ok(Ok(()))) {
            // The stream may hold failed or unfinished copies from the slots: drop the ring
            // (its `Drop` synchronizes first) so the next batch starts from a fresh one. This
            // is what lets `RingStager::staging` assume that no copy reads a slot it hands out.
            drop(guard.take());
        }
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Locks a mutex, ignoring poisoning (no code here panics while holding one).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `CUDA_ERROR_NAME (description)` for a driver error.
fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(text) => format!("{name} ({})", text.to_string_lossy()),
        Err(_) => name,
    }
}

fn driver_error(device: &str, what: &str, e: DriverError) -> BackendError {
    BackendError::Driver {
        device: device.to_string(),
        message: format!("{what} failed: {}", describe(e)),
    }
}

/// The process-wide driver probe, run once.
fn probe() -> Availability {
    static PROBE: OnceLock<Availability> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // cudarc panics when it cannot load libcuda or a symbol; probe_driver checks both
            // first, and any panic that still happens is contained here.
            std::panic::catch_unwind(probe_driver)
                .unwrap_or_else(|_| Availability::Unavailable(NO_DRIVER.to_string()))
        })
        .clone()
}

fn probe_driver() -> Availability {
    // SAFETY: is_culib_present only dlopens the candidate library names and closes them again;
    // loading the NVIDIA driver library runs no user-visible initialisation.
    if !unsafe { sys::is_culib_present() } {
        return Availability::Unavailable(NO_DRIVER.to_string());
    }
    // SAFETY: the library was just found, so culib() loads it instead of panicking (a panic,
    // should it vanish in between, is caught by the caller).
    let lib = unsafe { sys::culib() };
    for name in REQUIRED_SYMBOLS {
        // SAFETY: the symbol is only looked up, never called or dereferenced, so the pointer
        // type it is read as does not matter.
        let found = unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_ok();
        if !found {
            return Availability::Unavailable(format!(
                "the CUDA driver is too old (libcuda lacks {name}): update the NVIDIA driver or map storages to cpu"
            ));
        }
    }
    if let Err(e) = result::init() {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            return Availability::Unavailable(NO_DEVICE.to_string());
        }
        if e.0 == sys::CUresult::CUDA_ERROR_STUB_LIBRARY {
            return Availability::Unavailable(
                "the libcuda.so found is the CUDA toolkit's stub, not the driver: remove the \
                 toolkit's stubs directory from LD_LIBRARY_PATH (the driver's libcuda.so.1 is \
                 used then) or map storages to cpu"
                    .to_string(),
            );
        }
        return Availability::Unavailable(format!(
            "the CUDA driver failed to initialize (cuInit: {})",
            describe(e)
        ));
    }
    match result::device::get_count() {
        Ok(n) if n > 0 => Availability::Available {
            devices: usize::try_from(n).unwrap_or(0),
        },
        Ok(_) => Availability::Unavailable(NO_DEVICE.to_string()),
        Err(e) => Availability::Unavailable(format!(
            "cannot count CUDA devices (cuDeviceGetCount: {})",
            describe(e)
        )),
    }
}

/// The retained primary context of one device. Storages and rings hold it, so it outlives
/// every allocation made in it.
#[derive(Debug)]
struct Context {
    ordinal: usize,
    dev: sys::CUdevice,
    raw: sys::CUcontext,
}

// SAFETY: a CUDA context handle may be used from any thread (the driver API is thread-safe);
// every use makes it current on the using thread first (`Current`).
unsafe impl Send for Context {}
// SAFETY: as above; the handle itself is never mutated after creation.
unsafe impl Sync for Context {}

impl Context {
    fn open(ordinal: usize) -> Result<Arc<Context>, BackendError> {
        let location = format!("cuda:{ordinal}");
        let index = c_int::try_from(ordinal).map_err(|_| BackendError::NoSuchDevice {
            device: "cuda".to_string(),
            index: ordinal,
            count: probe().devices(),
        })?;
        let dev =
            result::device::get(index).map_err(|e| driver_error(&location, "cuDeviceGet", e))?;
        // SAFETY: `dev` was just returned by cuDeviceGet after a successful cuInit.
        let raw = unsafe { result::primary_ctx::retain(dev) }
            .map_err(|e| driver_error(&location, "cuDevicePrimaryCtxRetain", e))?;
        Ok(Arc::new(Context { ordinal, dev, raw }))
    }

    fn location(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    /// Makes this context current on the calling thread until the guard drops.
    fn enter(&self) -> Result<Current, BackendError> {
        Current::push(self).map_err(|e| driver_error(&self.location(), "cuCtxPushCurrent", e))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `dev` came from cuDeviceGet and this Context holds exactly one retain of its
        // primary context; nothing uses `raw` after this (all holders of the Arc are gone).
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// A context pushed on the calling thread's context stack; popped on drop, restoring what the
/// thread had current before. Not `Send`: it must be dropped on the thread that pushed it.
struct Current {
    _thread_bound: PhantomData<*const ()>,
}

impl Current {
    fn push(ctx: &Context) -> Result<Current, DriverError> {
        // SAFETY: `ctx.raw` is a primary context retained by `ctx`, which the caller keeps
        // alive for the guard's lifetime.
        unsafe { sys::cuCtxPushCurrent_v2(ctx.raw) }.result()?;
        Ok(Current {
            _thread_bound: PhantomData,
        })
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `push` pushed exactly one context on this thread (the guard is not Send) and
        // this pops exactly that one; `popped` is a valid out-pointer.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Per-device state: the context and the cached staging ring.
struct Device {
    ctx: Arc<Context>,
    ring: Mutex<Option<Ring>>,
}

/// One pinned staging buffer and the event recorded after the copies from it.
struct Slot {
    host: *mut u8,
    event: sys::CUevent,
}

/// The staging ring of one device: a copy stream and up to `RingConfig::slots` slots.
struct Ring {
    ctx: Arc<Context>,
    stream: sys::CUstream,
    slot_bytes: usize,
    slots: Vec<Slot>,
}

// SAFETY: the pinned buffers and driver handles are not tied to a thread; the ring is only
// used under its device's mutex, with its context made current first.
unsafe impl Send for Ring {}

impl Ring {
    /// Creates the copy stream. `ctx` must be current.
    fn new(ctx: &Arc<Context>, slot_bytes: usize) -> Result<Ring, DriverError> {
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)?;
        Ok(Ring {
            ctx: Arc::clone(ctx),
            stream,
            slot_bytes,
            slots: Vec::new(),
        })
    }

    /// Allocates slots until there are `want` (or pinned allocation fails); returns how many
    /// there are. The context must be current.
    fn ensure_slots(&mut self, want: usize) -> usize {
        while self.slots.len() < want {
            let Ok(event) = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            else {
                break;
            };
            // SAFETY: plain page-locked host allocation of `slot_bytes` bytes in the current
            // context; the memory is only accessed through the bounds-checked slices below.
            match unsafe { result::malloc_host(self.slot_bytes, 0) } {
                Ok(host) if !host.is_null() => {
                    // SAFETY: `host` is a fresh allocation of `slot_bytes` writable bytes;
                    // zeroing it once means every slice made over it is initialized memory.
                    unsafe { std::ptr::write_bytes(host.cast::<u8>(), 0, self.slot_bytes) };
                    self.slots.push(Slot {
                        host: host.cast::<u8>(),
                        event,
                    })
                }
                _ => {
                    // SAFETY: the event was just created and never recorded or shared.
                    let _ = unsafe { result::event::destroy(event) };
                    break;
                }
            }
        }
        self.slots.len().min(want)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let _current = self.ctx.enter();
        // SAFETY: the stream was created by `Ring::new` in this context and is destroyed only
        // here; synchronizing first guarantees no copy still reads a staging buffer.
        let _ = unsafe { result::stream::synchronize(self.stream) };
        for slot in self.slots.drain(..) {
            // SAFETY: the event was created in `ensure_slots`, is owned by this ring alone, and
            // the stream (its only user) has been synchronized above.
            let _ = unsafe { result::event::destroy(slot.event) };
            // SAFETY: the buffer came from cuMemHostAlloc in `ensure_slots`, is owned by this
            // ring alone, is freed only here, and no copy reads it any more (stream synced).
            let _ = unsafe { result::free_host(slot.host.cast::<c_void>()) };
        }
        // SAFETY: as above; nothing refers to the stream after this.
        let _ = unsafe { result::stream::destroy(self.stream) };
    }
}

/// The ring seen by the pipeline, for one batch whose device allocations are `dsts`.
struct RingStager<'a> {
    ring: &'a mut Ring,
    slots: usize,
    dsts: &'a [(u64, usize)],
}

impl RingStager<'_> {
    fn slot(&self, slot: usize) -> Result<&Slot, String> {
        self.ring
            .slots
            .get(slot)
            .ok_or_else(|| format!("staging slot {slot} does not exist"))
    }
}

impl Stager for RingStager<'_> {
    fn slots(&self) -> usize {
        self.slots
    }

    fn staging(&mut self, slot: usize) -> Result<&mut [u8], String> {
        let host = self.slot(slot)?.host;
        // SAFETY: `host` points to `slot_bytes` bytes of pinned memory from cuMemHostAlloc,
        // owned by this ring (borrowed mutably here, so no other slice of it exists), and no
        // copy reads it. Within a batch the pipeline asks for a slot only after waiting for the
        // event recorded after the slot's last copies. A batch that succeeds ends with `finish`
        // (the stream synchronized). One that fails or panics may leave copies in flight: then
        // `CudaBackend::upload` drops the whole ring (`drop(guard.take())` after
        // `run_pipeline`), and `Ring::drop` synchronizes the stream before freeing the slots,
        // so a later batch starts from a new ring and never sees a slot with a pending copy.
        Ok(unsafe { std::slice::from_raw_parts_mut(host, self.ring.slot_bytes) })
    }

    fn copy(&mut self, slot: usize, segment: &Segment) -> Result<(), String> {
        let host = self.slot(slot)?.host;
        let &(dst, dst_len) = self
            .dsts
            .get(segment.storage)
            .ok_or_else(|| format!("no device allocation for storage #{}", segment.storage))?;
        let fits_dst = segment
            .offset
            .checked_add(segment.len)
            .is_some_and(|end| end <= dst_len);
        let fits_staging = segment.staging_end() <= self.ring.slot_bytes;
        if !fits_dst || !fits_staging || dst == 0 {
            return Err(format!("staging segment out of bounds: {segment:?}"));
        }
        // SAFETY: `staging_offset + len <= slot_bytes` (checked above), so the offset stays
        // inside the slot's pinned allocation.
        let src = unsafe { host.add(segment.staging_offset) };
        // SAFETY: the destination range lies inside a live device allocation of `dst_len`
        // bytes and the source range inside the slot's pinned buffer (both checked above);
        // the buffer is not written again until the event recorded after this copy completes,
        // and the ring's context is current (entered by materialize_many).
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.saturating_add(segment.offset as u64),
                src.cast::<c_void>(),
                segment.len,
                self.ring.stream,
            )
        }
        .result()
        .map_err(|e| format!("cuMemcpyHtoDAsync failed: {}", describe(e)))
    }

    fn record(&mut self, slot: usize) -> Result<(), String> {
        let event = self.slot(slot)?.event;
        // SAFETY: event and stream are live handles of this ring, in the current context.
        unsafe { result::event::record(event, self.ring.stream) }
            .map_err(|e| format!("cuEventRecord failed: {}", describe(e)))
    }

    fn wait(&mut self, slot: usize) -> Result<(), String> {
        let event = self.slot(slot)?.event;
        // SAFETY: a live event of this ring.
        unsafe { result::event::synchronize(event) }
            .map_err(|e| format!("cuEventSynchronize failed: {}", describe(e)))
    }

    fn finish(&mut self) -> Result<(), String> {
        // SAFETY: the ring's live stream.
        unsafe { result::stream::synchronize(self.ring.stream) }
            .map_err(|e| format!("cuStreamSynchronize failed: {}", describe(e)))
    }
}

/// Where the pipeline reads a storage from: its file span when known (on unix), else its bytes.
fn host_source<'a>((desc, bytes): &(StorageDesc<'a>, &'a [u8])) -> HostSource<'a> {
    #[cfg(unix)]
    if let Some(span) = desc.file {
        return HostSource::File {
            file: span.file,
            offset: span.offset,
            len: bytes.len(),
        };
    }
    let _ = desc;
    HostSource::Bytes(bytes)
}

/// Fallback when no pinned memory can be had: synchronous copies from pageable memory.
fn upload_pageable(
    dsts: &[(u64, usize)],
    items: &[(StorageDesc<'_>, &[u8])],
) -> Result<(), String> {
    for (&(dst, len), &(_, src)) in dsts.iter().zip(items) {
        if len == 0 {
            continue;
        }
        let Some(src) = src.get(..len) else {
            return Err("host bytes shorter than the allocation".to_string());
        };
        // SAFETY: `dst` is a live device allocation of `len` bytes and `src` exactly `len`
        // readable host bytes; the copy is synchronous, so `src` outlives it.
        unsafe { result::memcpy_htod_sync(dst, src) }
            .map_err(|e| format!("cuMemcpyHtoD failed: {}", describe(e)))?;
    }
    // From pageable memory cuMemcpyHtoD may return before the DMA is done (the bytes are in
    // the driver's staging memory): wait for the legacy stream it ran on.
    // SAFETY: the null handle names the current context's legacy default stream.
    unsafe { result::stream::synchronize(std::ptr::null_mut()) }
        .map_err(|e| format!("cuStreamSynchronize failed: {}", describe(e)))
}

/// Alignment of storages within a shared device allocation, relative to its base (as torch's
/// caching allocator); `cuMemAlloc` aligns the base itself to at least 256 bytes.
pub const SHARED_ALIGNMENT: usize = 512;

/// One device allocation (`cuMemAlloc`), freed when the last storage in it is dropped.
#[derive(Debug)]
struct Allocation {
    ctx: Arc<Context>,
    ptr: sys::CUdeviceptr,
}

impl Allocation {
    /// Allocates `nbytes` (> 0, uninitialized) on the context's device, which must be current.
    fn new(ctx: &Arc<Context>, nbytes: usize) -> Result<Arc<Allocation>, BackendError> {
        // SAFETY: plain device allocation in the current context; the memory is written by
        // the upload before any storage in it is handed out.
        let ptr = unsafe { result::malloc_sync(nbytes) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                BackendError::OutOfMemory {
                    device: ctx.location(),
                    bytes: nbytes as u64,
                    reason: describe(e),
                }
            } else {
                driver_error(&ctx.location(), "cuMemAlloc", e)
            }
        })?;
        Ok(Arc::new(Allocation {
            ctx: Arc::clone(ctx),
            ptr,
        }))
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let _current = self.ctx.enter();
        // SAFETY: `ptr` was returned by cuMemAlloc in this context, is freed only here (the
        // last storage in it is gone), and no copy is pending on it (uploads are synchronized
        // before storages are returned).
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A storage in CUDA device memory: its own `cuMemAlloc` allocation, or a range, at a
/// 512-byte offset, of one allocation shared with the other storages of its batch (see
/// [`CudaBackend::with_shared_allocations`]). Device memory is freed when the last storage
/// using the allocation is dropped.
///
/// The memory belongs to the device's primary context, the one the CUDA runtime API (and so
/// most Rust and C++ GPU code) uses, so [`device_ptr`](CudaStorage::device_ptr) can be handed
/// to kernels and libraries directly. A 0-byte storage owns no memory and its pointer is 0.
#[derive(Debug)]
pub struct CudaStorage {
    ctx: Arc<Context>,
    alloc: Option<Arc<Allocation>>,
    offset: usize,
    nbytes: usize,
}

impl CudaStorage {
    /// A storage of `nbytes` in an allocation of its own. The context must be current.
    fn alloc(ctx: &Arc<Context>, nbytes: usize) -> Result<CudaStorage, BackendError> {
        let alloc = if nbytes == 0 {
            None
        } else {
            Some(Allocation::new(ctx, nbytes)?)
        };
        Ok(CudaStorage {
            ctx: Arc::clone(ctx),
            alloc,
            offset: 0,
            nbytes,
        })
    }

    /// Storages of `sizes` bytes in one allocation, each at a [`SHARED_ALIGNMENT`]-aligned
    /// offset; `None` when the total overflows or the allocation fails (the caller then
    /// allocates them one by one). The context must be current.
    fn alloc_shared(ctx: &Arc<Context>, sizes: &[usize]) -> Option<Vec<CudaStorage>> {
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut total = 0usize;
        for &n in sizes {
            offsets.push(total);
            if n > 0 {
                total = total.checked_add(n.checked_next_multiple_of(SHARED_ALIGNMENT)?)?;
            }
        }
        let alloc = if total == 0 {
            None
        } else {
            Some(Allocation::new(ctx, total).ok()?)
        };
        Some(
            sizes
                .iter()
                .zip(offsets)
                .map(|(&nbytes, offset)| CudaStorage {
                    ctx: Arc::clone(ctx),
                    alloc: alloc.clone().filter(|_| nbytes > 0),
                    offset,
                    nbytes,
                })
                .collect(),
        )
    }

    /// The device address of the first byte (a `CUdeviceptr`), valid while the storage lives;
    /// 0 for a 0-byte storage.
    pub fn device_ptr(&self) -> u64 {
        self.alloc
            .as_ref()
            .map_or(0, |a| a.ptr.saturating_add(self.offset as u64))
    }

    /// The CUDA device ordinal the storage lives on.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal
    }
}

impl DeviceStorage for CudaStorage {
    fn location(&self) -> String {
        self.ctx.location()
    }

    fn nbytes(&self) -> usize {
        self.nbytes
    }

    fn read_to_host(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        if dst.len() != self.nbytes {
            return Err(BackendError::Driver {
                device: self.location(),
                message: format!(
                    "read_to_host: destination has {} bytes, storage has {}",
                    dst.len(),
                    self.nbytes
                ),
            });
        }
        if self.nbytes == 0 {
            return Ok(());
        }
        let _current = self.ctx.enter()?;
        // SAFETY: `device_ptr()` starts this storage's `nbytes` bytes inside its live
        // allocation, `dst` has exactly `nbytes` writable bytes, and the copy is synchronous
        // (the upload that wrote the storage was synchronized before it was returned).
        unsafe { result::memcpy_dtoh_sync(dst, self.device_ptr()) }
            .map_err(|e| driver_error(&self.location(), "cuMemcpyDtoH", e))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Backend for CudaBackend {
    fn device_type(&self) -> &str {
        "cuda"
    }

    fn availability(&self) -> Availability {
        probe()
    }

    fn materialize(
        &self,
        index: Option<usize>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        self.materialize_via_batch(index, desc, bytes)
    }

    /// Uploads the whole batch through the pinned staging ring; each storage is sized by its
    /// host bytes. A storage whose allocation fails gets that error and the others proceed; a
    /// copy failure fails every storage that had bytes to copy.
    fn materialize_many(
        &self,
        index: Option<usize>,
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Vec<Result<Box<dyn DeviceStorage>, BackendError>> {
        let fail_all = |e: BackendError| items.iter().map(|_| Err(e.clone())).collect();
        let ordinal = match self.check_index(index) {
            Ok(i) => i,
            Err(e) => return fail_all(e),
        };
        let device = match self.device(ordinal) {
            Ok(d) => d,
            Err(e) => return fail_all(e),
        };
        let _current = match device.ctx.enter() {
            Ok(c) => c,
            Err(e) => return fail_all(e),
        };
        let sizes: Vec<usize> = items.iter().map(|(_, bytes)| bytes.len()).collect();
        let shared = match self.shared {
            true if sizes.len() > 1 => CudaStorage::alloc_shared(&device.ctx, &sizes),
            _ => None,
        };
        let mut storages: Vec<Result<CudaStorage, BackendError>> = match shared {
            Some(storages) => storages.into_iter().map(Ok).collect(),
            None => sizes
                .iter()
                .map(|&n| CudaStorage::alloc(&device.ctx, n))
                .collect(),
        };
        let dsts: Vec<(u64, usize)> = storages
            .iter()
            .map(|s| match s {
                Ok(s) => (s.device_ptr(), s.nbytes),
                Err(_) => (0, 0),
            })
            .collect();
        if let Err(message) = self.upload(&device, &dsts, items) {
            for storage in storages.iter_mut() {
                if matches!(storage, Ok(s) if s.nbytes > 0) {
                    *storage = Err(BackendError::Driver {
                        device: device.ctx.location(),
                        message: message.clone(),
                    });
                }
            }
        }
        storages
            .into_iter()
            .map(|r| r.map(|s| Box::new(s) as Box<dyn DeviceStorage>))
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default().with_batched(true)
    }

    fn describe_device(&self, index: usize) -> Option<String> {
        if index >= self.availability().devices() {
            return None;
        }
        let dev = result::device::get(c_int::try_from(index).ok()?).ok()?;
        let mut name = [0 as c_char; 256];
        // SAFETY: `name` is writable for its full length, which is what the driver is told;
        // it writes a nul-terminated string of at most that many bytes.
        unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, dev) }
            .result()
            .ok()?;
        let bytes: Vec<u8> = name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The process's CUDA backend for the registry, with its ring sized from the environment
/// ([`RingConfig::from_env`], read on the first call). Every call returns the same backend,
/// so loads made through different registries share its device contexts and staging ring
/// instead of creating them again. Creating it probes nothing; the driver is probed on first
/// use.
pub fn backend() -> Arc<dyn Backend> {
    static SHARED: OnceLock<Arc<CudaBackend>> = OnceLock::new();
    SHARED.get_or_init(|| Arc::new(CudaBackend::new())).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptfile_backend::BackendExt;

    fn desc(key: &str, nbytes: usize) -> StorageDesc<'_> {
        StorageDesc::new(key, "uint8", 1, nbytes, "cuda:0")
    }

    #[test]
    fn backend_is_cuda_and_batched() {
        let b = backend();
        assert_eq!(b.device_type(), "cuda");
        assert!(b.capabilities().batched);
        assert!(!b.capabilities().host_visible);
    }

    #[test]
    fn availability_never_panics_and_is_cached() {
        let b = CudaBackend::with_ring(RingConfig::default());
        let first = b.availability();
        println!("availability: {first:?}");
        assert_eq!(first, b.availability());
        if let Availability::Unavailable(reason) = &first {
            assert!(!reason.is_empty());
            assert_eq!(b.device_count(), 0);
        }
    }

    #[test]
    fn unavailable_backend_fails_every_item_without_panicking() {
        let b = CudaBackend::default();
        if b.is_available() {
            println!("skipped: a CUDA device is present");
            return;
        }
        let data = [1u8, 2, 3];
        let items = [(desc("0", 3), &data[..]), (desc("1", 0), &data[..0])];
        let out = b.materialize_many(Some(0), &items);
        assert_eq!(out.len(), 2);
        for r in &out {
            assert!(matches!(r, Err(BackendError::Unavailable { .. })));
        }
        assert!(b.materialize(None, &desc("0", 3), &data).is_err());
        assert_eq!(b.describe_device(0), None);
    }

    #[test]
    fn ring_config_is_normalized() {
        let b = CudaBackend::with_ring(RingConfig {
            slots: 0,
            slot_bytes: 0,
            copy_threads: 0,
        });
        assert_eq!(
            b.ring_config(),
            RingConfig {
                slots: 1,
                slot_bytes: 1,
                copy_threads: 1
            }
        );
        let d = RingConfig::default();
        assert_eq!((d.slots, d.slot_bytes), (4, 16 << 20));
        assert!(d.copy_threads >= 1);
    }

    // The device tests (round trips, file spans, several devices, conformance) are in the
    // workspace's tests/cuda.rs, which also runs them on a fake driver without a GPU.
}
