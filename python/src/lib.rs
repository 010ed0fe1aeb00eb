//! `ptfile._native`: the Rust half of the `ptfile` Python package (`python/ptfile/`).
//!
//! `load` opens and loads a checkpoint with the library (the GIL released, on a thread with
//! a large stack), and hands back a `Handle`: its storages as DLPack capsules (ptfile's own
//! buffers, zero-copy) or file offsets (for `mmap=True`), and `Handle::build`, which turns
//! the object tree into Python objects with the hooks of `ptfile/_build.py`. `inspect`,
//! `convert` and `save` are the library's describe and writers.

mod capsule;
mod errors;
mod store;
mod tree;

use std::path::PathBuf;

use ptfile::{Checkpoint, CpuMode, Format, Loader, MapLocation};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList, PyString, PyTuple};

use errors::IntoPy;

/// Stack of the thread that opens and loads: nesting is bounded by the library's limits, but
/// the interpreter recurses, and the caller's thread may have a small stack.
const STACK: usize = 64 << 20;

/// A job for a worker thread.
type Job = Box<dyn FnOnce() + Send>;

/// Idle worker threads (each with a `STACK`-byte stack), kept between calls: starting a thread
/// with a large stack costs 25-200 us, a good part of an mmap=True load.
static IDLE: std::sync::Mutex<Vec<std::sync::mpsc::Sender<Job>>> =
    std::sync::Mutex::new(Vec::new());

fn start_worker() -> std::io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("ptfile".into())
        .stack_size(STACK)
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                // A panic fails this job (its reply channel closes), not the worker.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
    Ok(tx)
}

/// Runs `f` on a worker thread with `STACK` bytes of stack (an idle one, or a new one when all
/// are busy: concurrent loads from several Python threads run in parallel) and waits for it.
fn on_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ptfile::Error> + Send + 'static,
) -> Result<T, ptfile::Error> {
    let idle = IDLE.lock().ok().and_then(|mut v| v.pop());
    let worker = match idle {
        Some(w) => w,
        None => start_worker().map_err(|e| {
            ptfile::Error::Device(format!("cannot start the ptfile worker thread: {e}"))
        })?,
    };
    let (reply, result) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(f());
    });
    if worker.send(job).is_err() {
        return Err(ptfile::Error::Device(
            "internal error: the ptfile worker thread is gone; please report it".into(),
        ));
    }
    let r = result.recv().unwrap_or_else(|_| {
        Err(ptfile::Error::Device(
            "internal error: the ptfile worker thread failed; please report it with the file"
                .into(),
        ))
    });
    if let Ok(mut v) = IDLE.lock() {
        v.push(worker);
    }
    r
}

/// A loaded checkpoint: the object tree with every storage where the loader put it.
#[pyclass(module = "ptfile._native", frozen)]
struct Handle {
    loaded: ptfile::Loaded,
    file: String,
    /// Whether CPU storages may be taken from the file itself (`mmap=True`): a single
    /// little-endian file whose storages lie verbatim at their offsets.
    mappable: bool,
}

fn map_location(spec: Option<&Bound<'_, PyAny>>) -> PyResult<MapLocation> {
    let Some(spec) = spec else {
        return Ok(MapLocation::AsSaved);
    };
    if spec.is_none() {
        return Ok(MapLocation::AsSaved);
    }
    if let Ok(s) = spec.cast::<PyString>() {
        return Ok(MapLocation::to(s.to_cow()?.into_owned()));
    }
    let pairs: Vec<(String, String)> = spec.extract()?;
    Ok(MapLocation::table(pairs))
}

/// Opens and loads `path`: `map` is None (as saved), a location, or a list of (old, new)
/// pairs; `mmap` keeps CPU storages in the file (where the format allows it).
#[pyfunction]
#[pyo3(signature = (path, map=None, strict=false, mmap=false))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    map: Option<&Bound<'_, PyAny>>,
    strict: bool,
    mmap: bool,
) -> PyResult<Handle> {
    let map = map_location(map)?;
    let file = path.display().to_string();
    let (loaded, mappable) = py
        .detach(move || {
            on_big_stack(move || {
                // A file rewritten while it is read (torch.save truncates, then writes) is an
                // error, not a mix of two versions.
                let watch = ptfile::FileWatch::new(&path);
                let ckpt = Checkpoint::open(&path)?;
                let mappable = file_backed(&ckpt);
                let loader =
                    Loader::new()
                        .map_location(map)
                        .strict(strict)
                        .cpu_mode(if mmap && mappable {
                            CpuMode::Mapped
                        } else {
                            CpuMode::Owned
                        });
                let loaded = loader.load_checkpoint(ckpt);
                if let Some(e) = watch.changed() {
                    return Err(e);
                }
                Ok((loaded?, mappable))
            })
        })
        .py_err(py)?;
    Ok(Handle {
        loaded,
        file,
        mappable,
    })
}

/// Whether every storage of `ckpt` lies verbatim (little endian) at its offset in one mapped
/// file: what `torch.UntypedStorage.from_file` slices need.
fn file_backed(ckpt: &Checkpoint) -> bool {
    matches!(
        ckpt.format,
        Format::Zip | Format::TorchScript | Format::Safetensors
    ) && ckpt.byteorder == ptfile::ByteOrder::Little
        && ckpt.source().is_mapped()
        && (0..ckpt.storages.len()).all(|i| std::ptr::eq(ckpt.storage_source(i), ckpt.source()))
}

#[pymethods]
impl Handle {
    /// One tuple per storage: (key, dtype, typed, saved_location, location, device, nbytes,
    /// fallback reason or None, file offset or None).
    fn storages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ckpt = &self.loaded.checkpoint;
        let rows = ckpt
            .storages
            .iter()
            .zip(&self.loaded.report.storages)
            .map(|(s, r)| {
                let offset = if self.mappable {
                    s.data.map(|d| d.0)
                } else {
                    None
                };
                (
                    s.key.as_str(),
                    s.dtype.name(),
                    s.typed,
                    r.saved_location.as_str(),
                    r.location.as_str(),
                    r.device.as_str(),
                    s.nbytes,
                    r.fallback.as_deref(),
                    offset,
                )
                    .into_pyobject(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Storage `i` as a DLPack capsule: one-dimensional uint8 over its whole memory.
    fn capsule(&self, py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
        let t = self.loaded.storage_to_dlpack(i).py_err(py)?;
        capsule::new(py, t)
    }

    /// Storage `i` copied to host memory (a bytearray), for a storage on a device ptfile
    /// reached but torch cannot use (a CUDA device with a CPU-only torch). The GIL is released
    /// while it is read back.
    fn read_to_host<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyByteArray>> {
        let s = self
            .loaded
            .shared_storage(i)
            .ok_or_else(|| errors::raise(py, "UsageError", format!("no storage {i}")))?;
        let mut v = vec![0u8; s.nbytes()];
        let v = py
            .detach(move || s.read_to_host(&mut v).map(|_| v))
            .map_err(|e| {
                errors::raise(
                    py,
                    "PlacementError",
                    format!("reading storage {i} back: {e}"),
                )
            })?;
        Ok(PyByteArray::new(py, &v))
    }

    /// The tensor named `name` (a key path, `l0.weight`) as a DLPack capsule with its own
    /// shape, strides and offset, zero-copy over its storage (a resolved copy for conj/neg
    /// views and big-endian files).
    fn tensor_capsule(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        let t = self
            .loaded
            .tensor(name)
            .and_then(|t| t.to_dlpack())
            .py_err(py)?;
        capsule::new(py, t)
    }

    /// The names of the dense tensors (key paths), in the tree's order.
    fn tensor_names(&self) -> Vec<String> {
        self.loaded.tensors().map(|(n, _)| n).collect()
    }

    /// The container format (`zip`, `legacy`, `tar`, `torchscript`, `safetensors`).
    #[getter]
    fn format(&self) -> &'static str {
        self.loaded.checkpoint.format.name()
    }

    /// The object tree as Python objects: `storages[i]` is the torch storage of storage `i`,
    /// `hooks` the module whose functions build torch values (`ptfile._build`). With
    /// `script_state_dict`, a TorchScript module is its state dict. Returns (object, whether
    /// sparse tensors were built).
    #[pyo3(signature = (storages, hooks, script_state_dict=false))]
    fn build<'py>(
        &self,
        py: Python<'py>,
        storages: Vec<Bound<'py, PyAny>>,
        hooks: &Bound<'py, PyAny>,
        script_state_dict: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let dtypes = self
            .loaded
            .checkpoint
            .storages
            .iter()
            .map(|s| {
                if s.typed {
                    s.dtype
                } else {
                    ptfile::DType::UINT8
                }
            })
            .collect();
        let mut b = tree::Builder::new(
            py,
            self.file.clone(),
            storages,
            dtypes,
            hooks,
            script_state_dict,
        )?;
        let root = b.conv(&self.loaded.checkpoint.root, 0)?;
        (root, b.built_sparse).into_pyobject(py)
    }
}

/// The description of a checkpoint (the fixtures' JSON schema), as a JSON string.
#[pyfunction]
fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(move || {
        on_big_stack(move || {
            let watch = ptfile::FileWatch::new(&path);
            let ckpt = Checkpoint::open(&path)?;
            let v = ptfile::describe::describe(&ckpt);
            if let Some(e) = watch.changed() {
                return Err(e);
            }
            let v = v?;
            serde_json::to_string(&v).map_err(|e| ptfile::Error::Usage(e.to_string()))
        })
    })
    .py_err(py)
}

/// `ptfile convert SRC DST`: `format` None picks it from the path; `map` as for `load`;
/// `non_tensors` is `error`, `metadata` or `skip`.
#[pyfunction]
#[pyo3(signature = (src, dst, format=None, map=None, compact=false, non_tensors="error", sync=true))]
#[allow(clippy::too_many_arguments)]
fn convert(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    format: Option<&str>,
    map: Option<&Bound<'_, PyAny>>,
    compact: bool,
    non_tensors: &str,
    sync: bool,
) -> PyResult<u64> {
    let opts = store::save_options(
        py,
        format,
        &dst,
        map_location(map)?,
        compact,
        non_tensors,
        sync,
    )?;
    py.detach(move || {
        on_big_stack(move || {
            let ckpt = Checkpoint::open(&src)?;
            Ok(ptfile::save::save_checkpoint(&ckpt, &dst, &opts)?.bytes)
        })
    })
    .py_err(py)
}

/// DLPack tensors exported and not yet deleted, in this process (for leak checks).
#[pyfunction]
fn live_tensors() -> usize {
    ptfile::dlpack::live_tensors()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Handle>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(store::save, m)?)?;
    m.add_function(wrap_pyfunction!(live_tensors, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
