//! ndarray hand-off (feature `ndarray`): [`TensorView::to_ndarray`], a row-major
//! `ndarray::ArrayD` copy of any tensor, and [`TensorView::as_array_view`], an
//! `ndarray::ArrayViewD` borrowed in place with the tensor's own strides when its storage
//! bytes allow it. `ptfile::ndarray` is the ndarray crate these types come from.
//!
//! ```
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! let ckpt = ptfile::Checkpoint::open(path)?;
//! let w = ckpt.tensor("l0.weight")?;
//! let owned: ndarray::ArrayD<f32> = w.to_ndarray()?; // always works
//! let view = w.as_array_view::<f32>()?; // zero-copy over the file map
//! assert_eq!(view, owned);
//! assert_eq!(view.shape(), &[w.shape()[0] as usize, w.shape()[1] as usize]);
//! # Ok::<(), ptfile::Error>(())
//! ```

use ::ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};

use crate::error::{Error, Result};
use crate::torch::elements::Resolver;
use crate::torch::tensor::{Element, TensorView};

/// The number of storage elements from a view's first element to its last, inclusive (the
/// span its shape and strides reach); 0 for an empty view. None when a stride is negative
/// or the span overflows.
pub(crate) fn element_span(shape: &[i64], strides: &[i64]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    let mut last = 0usize;
    for (&n, &s) in shape.iter().zip(strides) {
        let n = usize::try_from(n).ok()?;
        let s = usize::try_from(s).ok()?;
        last = last.checked_add((n - 1).checked_mul(s)?)?;
    }
    last.checked_add(1)
}

fn dims(v: &[i64]) -> Option<Vec<usize>> {
    v.iter().map(|&x| usize::try_from(x).ok()).collect()
}

impl<'a> TensorView<'a> {
    /// The elements type-checked against `T` (the dtype's own Rust type); the error is the
    /// one [`TensorView::to_vec`] gives, naming both dtypes.
    fn check_element<T: Element>(&self) -> Result<()> {
        if T::dtype() == self.dtype() {
            return Ok(());
        }
        // as_slice checks the type before anything else: its error is the mismatch.
        self.as_slice::<T>().map(|_| ())
    }

    fn ndarray_err(&self, what: impl Into<String>) -> Error {
        Error::View {
            name: self.name().to_string(),
            what: what.into(),
        }
    }

    /// The tensor as an owned `ndarray::ArrayD<T>` in row-major (standard) layout, copied
    /// through [`TensorView::to_vec`]: every layout works (strided views, unaligned legacy
    /// storages, big-endian files, conj/neg views, device memory). `T` must be the dtype's
    /// own Rust type (`f32` for float32, [`half::bf16`] for bfloat16, ...); another is an
    /// error naming both, never a cast.
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        let values = self.to_vec::<T>()?;
        let shape = dims(self.shape())
            .ok_or_else(|| self.ndarray_err(format!("its shape {:?} is negative", self.shape())))?;
        ArrayD::from_shape_vec(IxDyn(&shape), values)
            .map_err(|e| self.ndarray_err(format!("ndarray refused shape {shape:?}: {e}")))
    }

    /// The tensor borrowed in place as an `ndarray::ArrayViewD<T>`, without a copy, with the
    /// view's own shape and strides (a transposed, sliced, expanded or overlapping view stays
    /// as torch strides it; an empty one has ndarray's own strides). Only when
    /// its storage bytes are host memory (the file map, a CPU load), little-endian, aligned
    /// for `T`, and the view has no conj/neg bit; otherwise an error that says why and to use
    /// [`TensorView::to_ndarray`], which copies. A dtype other than `T`'s is an error naming
    /// both.
    pub fn as_array_view<T: Element>(&self) -> Result<ArrayViewD<'a, T>> {
        self.check_element::<T>()?;
        let use_copy = "; use to_ndarray, which copies";
        let (shape, strides) = match (dims(self.shape()), dims(self.strides())) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(self.ndarray_err(format!(
                    "its shape {:?} or strides {:?} are negative{use_copy}",
                    self.shape(),
                    self.strides()
                )))
            }
        };
        let layout = IxDyn(&shape).strides(IxDyn(&strides));
        let span = element_span(self.shape(), self.strides())
            .ok_or_else(|| self.ndarray_err("its strides reach past the address space"))?;
        if span == 0 {
            // No elements: ndarray wants a slice reaching the strides' span even then, so an
            // empty tensor gets ndarray's default strides.
            return ArrayViewD::from_shape(IxDyn(&shape), &[])
                .map_err(|e| self.ndarray_err(format!("ndarray refused an empty view: {e}")));
        }
        let t = self.tensor();
        let Some(i) = t.storage else {
            return Err(self.ndarray_err(format!(
                "it has no storage (a tensor on {}): it has a shape and dtype but no values",
                t.device.as_deref().unwrap_or("meta")
            )));
        };
        if Resolver::new(t).is_some() {
            return Err(self.ndarray_err(format!(
                "it is a conjugate or negative view: its values differ from its storage's{use_copy}"
            )));
        }
        if cfg!(target_endian = "big") {
            return Err(self.ndarray_err(format!(
                "this machine is big-endian and storages are little-endian{use_copy}"
            )));
        }
        let Some(all) = self.src.borrowed(i) else {
            return Err(self.ndarray_err(format!(
                "its storage on {} is not little-endian host memory{use_copy}",
                self.src.place(i)
            )));
        };
        let es = self.dtype().element_size();
        let start = usize::try_from(self.storage_offset())
            .ok()
            .and_then(|o| o.checked_mul(es));
        let bytes = start
            .and_then(|s| Some(s..s.checked_add(span.checked_mul(es)?)?))
            .and_then(|r| all.get(r))
            .ok_or_else(|| self.ndarray_err("its elements lie outside its storage"))?;
        let elems = T::cast(bytes).ok_or_else(|| {
            self.ndarray_err(format!(
                "its data at address {:#x} is not aligned to {} bytes (legacy files place storages at any offset){use_copy}",
                bytes.as_ptr() as usize,
                std::mem::align_of::<T>()
            ))
        })?;
        ArrayViewD::from_shape(layout, elems).map_err(|e| {
            self.ndarray_err(format!(
                "ndarray refused shape {shape:?} with strides {strides:?}: {e}{use_copy}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::element_span;

    #[test]
    fn spans_cover_the_last_element() {
        assert_eq!(element_span(&[], &[]), Some(1));
        assert_eq!(element_span(&[2, 3], &[3, 1]), Some(6));
        assert_eq!(element_span(&[3, 2], &[1, 3]), Some(6));
        assert_eq!(element_span(&[2, 2], &[10, 2]), Some(13));
        assert_eq!(element_span(&[4, 3], &[0, 1]), Some(3));
        assert_eq!(element_span(&[0, 3], &[3, 1]), Some(0));
        assert_eq!(element_span(&[2], &[-1]), None);
    }
}
