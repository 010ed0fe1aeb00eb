//! Files that change while the command reads them. `torch.save` rewrites a checkpoint in place
//! (it truncates, then writes): a command reading it meanwhile sees a mix of two versions or,
//! through the memory map, a bus error. Every command notes each file's size and modification
//! time before it starts and compares them when it ends (a difference turns the result into
//! `Error::Changed`), and a bus error becomes that same message and exit code 1, not a signal.

use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// The files of a checkpoint as they were when the command started (the library's
/// [`ptfile::FileWatch`]), kept open so that the bus-error handler can look at them.
pub struct Watch {
    files: ptfile::FileWatch,
    _open: Vec<std::fs::File>,
}

/// Most files the bus-error handler can name.
const SLOTS: usize = 64;
/// Longest path the handler prints.
const PATH_MAX: usize = 512;

struct Slot {
    fd: AtomicI32,
    size: AtomicU64,
    len: AtomicUsize,
    path: [AtomicU8; PATH_MAX],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    fd: AtomicI32::new(-1),
    size: AtomicU64::new(0),
    len: AtomicUsize::new(0),
    path: [const { AtomicU8::new(0) }; PATH_MAX],
};

static WATCHED: [Slot; SLOTS] = [EMPTY; SLOTS];
static USED: AtomicUsize = AtomicUsize::new(0);

/// Notes the state of `path` (a file, or the files of a model directory).
pub fn watch(path: &Path) -> Watch {
    let files = ptfile::FileWatch::new(path);
    let mut open = Vec::new();
    for (p, size) in files.files() {
        if let Ok(f) = std::fs::File::open(p) {
            register(&f, p, size);
            open.push(f);
        }
    }
    Watch { files, _open: open }
}

impl Watch {
    /// The first file whose size or modification time is no longer what it was.
    pub fn changed(&self) -> Option<ptfile::Error> {
        self.files.changed()
    }
}

fn register(f: &std::fs::File, p: &Path, size: u64) {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let i = USED.fetch_add(1, Ordering::SeqCst);
        let Some(slot) = WATCHED.get(i) else { return };
        let bytes = p.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(PATH_MAX);
        for (k, &b) in bytes[..n].iter().enumerate() {
            slot.path[k].store(b, Ordering::Relaxed);
        }
        slot.size.store(size, Ordering::Relaxed);
        slot.len.store(n, Ordering::Relaxed);
        slot.fd.store(f.as_raw_fd(), Ordering::Release);
    }
    #[cfg(not(unix))]
    let _ = (f, p, size);
}

/// Installs the bus-error handler (once, at start).
pub fn install() {
    #[cfg(unix)]
    // SAFETY: `on_bus_error` only calls async-signal-safe functions (fstat, write, _exit) and
    // reads atomics; the sigaction struct is fully initialized (zeroed, then its fields set).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_bus_error as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Writes `b` to stderr (async-signal-safe).
#[cfg(unix)]
fn put(b: &[u8]) {
    // SAFETY: `b` is a valid buffer of `b.len()` bytes; write(2) is async-signal-safe.
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

#[cfg(unix)]
fn put_u64(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&buf[i..]);
}

#[cfg(unix)]
extern "C" fn on_bus_error(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    let used = USED.load(Ordering::SeqCst).min(SLOTS);
    for slot in &WATCHED[..used] {
        let fd = slot.fd.load(Ordering::Acquire);
        if fd < 0 {
            continue;
        }
        // SAFETY: `st` is a valid, writable stat buffer; fstat is async-signal-safe.
        let now = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstat(fd, &mut st) == 0).then_some(st.st_size as u64)
        };
        let was = slot.size.load(Ordering::Relaxed);
        if now.is_some_and(|n| n >= was) {
            continue;
        }
        put(b"ptfile: ");
        let mut path = [0u8; PATH_MAX];
        let n = slot.len.load(Ordering::Relaxed).min(PATH_MAX);
        for (k, b) in path[..n].iter_mut().enumerate() {
            *b = slot.path[k].load(Ordering::Relaxed);
        }
        put(&path[..n]);
        put(b": the file changed while being read: size ");
        put_u64(was);
        put(b" -> ");
        put_u64(now.unwrap_or(0));
        put(b"; run again once the writer has finished (writers should save to a new file and rename it into place)\n");
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(1) };
    }
    put(b"ptfile: a mapped file shrank while being read (bus error): the file changed while being read; run again once the writer has finished\n");
    // SAFETY: as above.
    unsafe { libc::_exit(1) };
}
