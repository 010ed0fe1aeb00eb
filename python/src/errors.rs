//! ptfile's errors as the package's exceptions (defined in `ptfile/_errors.py`): each variant
//! of `ptfile::Error` maps to one class, and the message is the CLI's, word for word.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The exception class `name` of `ptfile._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || -> PyResult<_> {
        Ok(py.import("ptfile._errors")?.unbind())
    })?;
    Ok(m.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// An error message as the CLI prints it: one bounded line (the library's rule).
pub use ptfile::one_line;

/// An exception of class `name` (`UnsafeError`, `InvalidCheckpoint`, ...) with `msg` (made one
/// line, as the CLI's).
pub fn raise(py: Python<'_>, name: &str, msg: impl Into<String>) -> PyErr {
    let msg = one_line(&msg.into());
    match class(py, name) {
        Ok(c) => PyErr::from_type(c, (msg,)),
        Err(e) => PyRuntimeError::new_err(format!("{msg} (ptfile._errors.{name} missing: {e})")),
    }
}

/// The class for an error of the library.
fn class_name(e: &ptfile::Error) -> &'static str {
    use ptfile::Error as E;
    match e {
        E::Unsafe { .. } => "UnsafeError",
        E::Format { .. } | E::Pickle { .. } | E::Invalid { .. } | E::Changed { .. } => {
            "InvalidCheckpoint"
        }
        E::Unsupported { .. } => "UnsupportedError",
        E::Placement { .. } | E::Device(_) => "PlacementError",
        E::Io { .. } => "ReadError",
        E::Write { .. } => "WriteError",
        E::Usage(_) | E::NoTensor { .. } | E::DTypeMismatch { .. } | E::View { .. } => "UsageError",
        _ => "Error",
    }
}

/// A library error as the package's exception; I/O errors carry `errno` and `filename` as an
/// `OSError` does.
pub fn to_py(py: Python<'_>, e: ptfile::Error) -> PyErr {
    let name = class_name(&e);
    let err = raise(py, name, e.to_string());
    let (errno, filename) = match &e {
        ptfile::Error::Io { path, source } => (source.raw_os_error(), Some(path.clone())),
        ptfile::Error::Write { path, source, .. } => (
            source.as_ref().and_then(|s| s.raw_os_error()),
            Some(path.clone()),
        ),
        _ => (None, None),
    };
    if errno.is_some() || filename.is_some() {
        let v = err.value(py);
        if let Some(n) = errno {
            let _ = v.setattr("errno", n);
        }
        if let Some(p) = filename {
            let _ = v.setattr("filename", p.to_string_lossy().into_owned());
        }
    }
    err
}

/// `Result<T, ptfile::Error>` into `PyResult<T>`.
pub trait IntoPy<T> {
    /// Converts the error, if any.
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, ptfile::Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
