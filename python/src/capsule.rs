//! DLPack capsules (`"dltensor_versioned"`) over ptfile's exported tensors.
//!
//! The capsule is made with the raw `PyCapsule_New`, not PyO3's `PyCapsule::new_with_destructor`:
//! a consumer (`torch.from_dlpack`) that takes the tensor renames the capsule
//! `"used_dltensor_versioned"` and calls the tensor's deleter itself when its own tensor dies,
//! so the capsule's destructor must free the tensor only while the capsule still has the
//! unused name (nobody took it). PyO3's destructor would free the contents whatever the name,
//! under the consumer's feet.

use std::ffi::{c_void, CStr};

use ptfile::dlpack::{DLManagedTensorVersioned, DlpackTensor};
use pyo3::ffi;
use pyo3::prelude::*;

/// The name of an unconsumed versioned DLPack capsule.
pub const NAME: &CStr = c"dltensor_versioned";

/// Frees the tensor of a capsule nobody consumed.
unsafe extern "C" fn destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed. `PyCapsule_IsValid` checks
    // the name without raising; a consumed capsule has been renamed ("used_...") and its
    // tensor belongs to the consumer, so it is left alone.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) != 1 {
            return;
        }
        let p =
            ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()).cast::<DLManagedTensorVersioned>();
        if p.is_null() {
            ffi::PyErr_Clear();
            return;
        }
        if let Some(deleter) = (*p).deleter {
            deleter(p);
        }
    }
}

/// A capsule owning `t` until a consumer takes it.
pub fn new(py: Python<'_>, t: DlpackTensor) -> PyResult<Py<PyAny>> {
    let raw = t.into_raw();
    // SAFETY: `raw` is a live managed tensor we own (from `into_raw`); the capsule takes that
    // ownership. On failure no capsule exists, so we call the deleter ourselves.
    unsafe {
        let cap = ffi::PyCapsule_New(raw.cast::<c_void>(), NAME.as_ptr(), Some(destructor));
        if cap.is_null() {
            if let Some(deleter) = (*raw).deleter {
                deleter(raw);
            }
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, cap).unbind())
    }
}
