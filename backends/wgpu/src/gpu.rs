//! The wgpu instance, the adapters (enumerated once) and one device + queue per adapter
//! (created on first use), plus the small blocking and error-capturing helpers around them.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use ptfile_backend::BackendError;

/// The reason reported when no adapter exists.
pub(crate) const NO_ADAPTER: &str = "no wgpu adapter found (install a Vulkan driver such as \
                                     mesa-vulkan-drivers, or map storages to cpu)";

/// How long one wait for the GPU may take before it is reported as a driver error.
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything enumerated once per process.
pub(crate) struct Adapters {
    /// Kept alive for the lifetime of the process (adapters and devices refer to it).
    _instance: wgpu::Instance,
    pub(crate) slots: Vec<AdapterSlot>,
}

/// One adapter, its description and its lazily created device.
pub(crate) struct AdapterSlot {
    index: usize,
    adapter: wgpu::Adapter,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    gpu: OnceLock<Result<Arc<Gpu>, String>>,
}

static ADAPTERS: OnceLock<Result<Adapters, String>> = OnceLock::new();

/// The process-wide adapter list (or why there is none). Enumerated on the first call.
pub(crate) fn adapters() -> Result<&'static Adapters, &'static str> {
    ADAPTERS
        .get_or_init(|| catch("wgpu adapter enumeration", enumerate).and_then(|r| r))
        .as_ref()
        .map_err(String::as_str)
}

fn enumerate() -> Result<Adapters, String> {
    // Vulkan, Metal and DX12 (those compiled in); WGPU_BACKEND=vulkan|metal|dx12 narrows it.
    let backends = wgpu::Backends::PRIMARY.with_env();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // Release-build defaults whatever the build profile (no validation layers unless asked
    // for with WGPU_VALIDATION=1 / WGPU_DEBUG=1).
    desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL.with_env();
    let instance = wgpu::Instance::new(desc);
    let adapters = block_on(instance.enumerate_adapters(backends));
    let slots = adapters
        .into_iter()
        .enumerate()
        .map(|(index, adapter)| AdapterSlot {
            index,
            info: adapter.get_info(),
            limits: adapter.limits(),
            adapter,
            gpu: OnceLock::new(),
        })
        .collect();
    Ok(Adapters {
        _instance: instance,
        slots,
    })
}

impl AdapterSlot {
    /// `"<name> (<backend>)"`, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub(crate) fn describe(&self) -> String {
        format!("{} ({})", self.info.name, backend_name(self.info.backend))
    }

    /// The device and queue of this adapter, created on the first call.
    pub(crate) fn gpu(&self) -> Result<Arc<Gpu>, BackendError> {
        self.gpu
            .get_or_init(|| catch("wgpu device creation", || self.create_gpu()).and_then(|r| r))
            .clone()
            .map_err(|reason| BackendError::Unavailable {
                device: location(self.index),
                reason,
            })
    }

    fn create_gpu(&self) -> Result<Arc<Gpu>, String> {
        // The adapter's own limits, not the WebGPU defaults: max_buffer_size and
        // max_storage_buffer_binding_size are what make large storages fit.
        let desc = wgpu::DeviceDescriptor {
            label: Some("ptfile"),
            required_features: wgpu::Features::empty(),
            required_limits: self.limits.clone(),
            // Loading checkpoints: favour tight memory use over sub-allocation speed.
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        };
        let (device, queue) = block_on(self.adapter.request_device(&desc)).map_err(|e| {
            format!(
                "requesting a device on adapter {} ({}) failed: {e}",
                self.index,
                self.describe()
            )
        })?;
        let state = Arc::new(DeviceState::default());
        // wgpu's default handler panics on errors nobody captured; ptfile captures its own
        // errors with error scopes and records any stray one instead of panicking.
        let sink = Arc::clone(&state);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            *lock(&sink.uncaptured) = Some(e.to_string());
        }));
        let sink = Arc::clone(&state);
        device.set_device_lost_callback(move |reason, message| {
            *lock(&sink.lost) = Some(format!("device lost ({reason:?}): {message}"));
        });
        Ok(Arc::new(Gpu {
            index: self.index,
            name: self.describe(),
            max_buffer_size: device.limits().max_buffer_size,
            max_storage_buffer_binding_size: device.limits().max_storage_buffer_binding_size,
            device: Arc::new(device),
            queue: Arc::new(queue),
            state,
            uploads: Mutex::new(UploadState::default()),
        }))
    }
}

/// Shared, callback-written device state.
#[derive(Default)]
pub(crate) struct DeviceState {
    lost: Mutex<Option<String>>,
    uncaptured: Mutex<Option<String>>,
}

/// A device and queue on one adapter.
pub(crate) struct Gpu {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) max_buffer_size: u64,
    pub(crate) max_storage_buffer_binding_size: u64,
    pub(crate) device: Arc<wgpu::Device>,
    pub(crate) queue: Arc<wgpu::Queue>,
    state: Arc<DeviceState>,
    uploads: Mutex<UploadState>,
}

/// Upload bookkeeping shared by every thread uploading to one device.
#[derive(Default)]
struct UploadState {
    /// Bytes written with `write_buffer` since the last submit (their staging memory is alive).
    pending: u64,
    /// The last upload submission not yet waited for.
    in_flight: Option<wgpu::SubmissionIndex>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("max_buffer_size", &self.max_buffer_size)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// `wgpu:N`.
    pub(crate) fn location(&self) -> String {
        location(self.index)
    }

    /// Fails when the device has been lost.
    pub(crate) fn check_alive(&self) -> Result<(), BackendError> {
        match lock(&self.state.lost).as_ref() {
            Some(reason) => Err(self.driver(reason.clone())),
            None => Ok(()),
        }
    }

    /// The last error no error scope captured (for example from other code using the device).
    pub(crate) fn last_uncaptured_error(&self) -> Option<String> {
        lock(&self.state.uncaptured).clone()
    }

    pub(crate) fn driver(&self, message: String) -> BackendError {
        BackendError::Driver {
            device: self.location(),
            message,
        }
    }

    /// Blocks until `index` (or, with `None`, the latest submission) has finished.
    pub(crate) fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<(), BackendError> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: Some(WAIT_TIMEOUT),
            })
            .map(|_| ())
            .map_err(|e| self.driver(format!("waiting for the queue failed: {e}")))?;
        self.check_alive()
    }

    /// Counts `len` bytes just written with `write_buffer`. Once a chunk's worth is pending,
    /// submits them and waits for the previous upload submission, so at most about two chunks
    /// of staging memory are alive per device however much is uploaded.
    pub(crate) fn account_upload(&self, len: u64, chunk: u64) -> Result<(), BackendError> {
        let mut st = lock(&self.uploads);
        st.pending += len;
        if st.pending < chunk {
            return Ok(());
        }
        st.pending = 0;
        let submission = self.queue.submit([]);
        match st.in_flight.replace(submission) {
            Some(previous) => self.wait(Some(previous)),
            None => Ok(()),
        }
    }

    /// Submits any pending upload and waits until every upload has reached its buffer.
    pub(crate) fn synchronize(&self) -> Result<(), BackendError> {
        let mut st = lock(&self.uploads);
        st.pending = 0;
        st.in_flight = None;
        let submission = self.queue.submit([]);
        self.wait(Some(submission))
    }

    /// Captures the out-of-memory, validation and internal errors of the work this thread
    /// does on the device until [`Scopes::finish`].
    pub(crate) fn scopes(&self) -> Scopes {
        Scopes {
            oom: self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            validation: self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            internal: self.device.push_error_scope(wgpu::ErrorFilter::Internal),
        }
    }
}

/// Nested error scopes (out-of-memory outermost).
pub(crate) struct Scopes {
    oom: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
    internal: wgpu::ErrorScopeGuard,
}

impl Scopes {
    /// Pops the scopes (innermost first) and turns the first captured error into a
    /// [`BackendError`]: out of memory wins over validation over internal errors.
    pub(crate) fn finish(self, gpu: &Gpu, what: &str, bytes: u64) -> Result<(), BackendError> {
        let internal = block_on(self.internal.pop());
        let validation = block_on(self.validation.pop());
        let oom = block_on(self.oom.pop());
        match oom.or(validation).or(internal) {
            None => Ok(()),
            Some(wgpu::Error::OutOfMemory { source }) => Err(BackendError::OutOfMemory {
                device: gpu.location(),
                bytes,
                reason: format!("{what}: the driver is out of memory ({source})"),
            }),
            Some(e) => Err(gpu.driver(format!("{what}: {e}"))),
        }
    }
}

/// `wgpu:N`.
pub(crate) fn location(index: usize) -> String {
    format!("wgpu:{index}")
}

/// The display name of a wgpu backend.
pub(crate) fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        wgpu::Backend::Noop => "noop",
    }
}

/// Locks a mutex, ignoring poisoning (the data are plain strings).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f`, turning a panic inside wgpu or the driver into an error message.
pub(crate) fn catch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|p| format!("{what}: wgpu panicked: {}", panic_message(p.as_ref())))
}

fn panic_message(p: &(dyn Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Drives a future to completion on this thread. wgpu's native futures are ready at once or
/// woken by device polls, so this parks with a short timeout rather than relying on wakes.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park_timeout(Duration::from_millis(1)),
        }
    }
}
