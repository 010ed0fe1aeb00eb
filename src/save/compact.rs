//! Which bytes of each storage get written: the whole storage, or with `--compact` only the
//! range its views touch (first to last element any view reaches), so that a 5-element view
//! of a 999-element storage writes 5 elements, as `clone()` before `torch.save` would.

use crate::error::{Error, Result};
use crate::torch::model::{Object, Storage, Tensor};

/// The byte range of an input storage that is written as the output storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First byte (a multiple of every viewing dtype's element size).
    pub start: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Deepest nesting the writer follows (the reader accepts 512 levels by default).
pub(crate) const MAX_DEPTH: usize = crate::torch::model::MAX_TREE_DEPTH;

/// A view of a storage met in the object tree.
pub(crate) enum View<'a> {
    /// A tensor viewing its storage.
    Tensor(&'a Tensor),
    /// A bare storage object (`torch.save(storage)`): all of it.
    Whole(usize),
}

/// Calls `f` for every storage view in `o` (tensors, the parts of quantized and sparse
/// tensors, bare storages).
pub(crate) fn for_each_view<'a>(
    o: &'a Object,
    depth: usize,
    f: &mut dyn FnMut(View<'a>) -> Result<()>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Unsupported {
            what: format!("objects nested deeper than {MAX_DEPTH} levels"),
            location: "the object to save".into(),
            hint: "flatten the structure".into(),
        });
    }
    match o {
        Object::Tensor(t) => f(View::Tensor(t)),
        Object::QTensor(q) => {
            f(View::Tensor(&q.int_repr))?;
            for t in [&q.scales, &q.zero_points].into_iter().flatten() {
                f(View::Tensor(t))?;
            }
            Ok(())
        }
        Object::SparseTensor(s) => {
            for t in &s.parts {
                f(View::Tensor(t))?;
            }
            Ok(())
        }
        Object::Storage(i) => f(View::Whole(*i)),
        Object::Tuple(xs) | Object::List(xs) | Object::Set(xs) | Object::FrozenSet(xs) => {
            for x in xs.iter() {
                for_each_view(x, depth + 1, f)?;
            }
            Ok(())
        }
        Object::Dict(items) => {
            for (k, v) in items.iter() {
                for_each_view(k, depth + 1, f)?;
                for_each_view(v, depth + 1, f)?;
            }
            Ok(())
        }
        Object::OrderedDict(d) => {
            for (k, v) in &d.items {
                for_each_view(k, depth + 1, f)?;
                for_each_view(v, depth + 1, f)?;
            }
            if let Some(m) = &d.metadata {
                for_each_view(m, depth + 1, f)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The byte range `[lo, hi)` a tensor's elements occupy in its storage; None when it has no
/// elements.
pub(crate) fn byte_range(t: &Tensor) -> Option<(u64, u64)> {
    if t.shape.contains(&0) {
        return None;
    }
    let es = t.dtype.element_size() as u64;
    let mut last = t.storage_offset.max(0) as u64;
    for (&s, &st) in t.shape.iter().zip(&t.stride) {
        last += (s.max(1) as u64 - 1) * st.max(0) as u64;
    }
    Some((t.storage_offset.max(0) as u64 * es, (last + 1) * es))
}

/// The window of every storage: whole storages, or with `compact` the used ranges.
pub(crate) fn windows(root: &Object, storages: &[Storage], compact: bool) -> Result<Vec<Window>> {
    let whole: Vec<Window> = storages
        .iter()
        .map(|s| Window {
            start: 0,
            len: s.nbytes,
        })
        .collect();
    if !compact {
        return Ok(whole);
    }
    // (lo, hi, largest element size) per storage.
    let mut used: Vec<Option<(u64, u64)>> = vec![None; storages.len()];
    let mut unit: Vec<u64> = vec![1; storages.len()];
    for_each_view(root, 0, &mut |v| {
        let (i, range, es) = match v {
            View::Tensor(t) => match t.storage {
                Some(i) => (i, byte_range(t), t.dtype.element_size() as u64),
                None => return Ok(()),
            },
            View::Whole(i) => (i, Some((0, storages.get(i).map_or(0, |s| s.nbytes))), 1),
        };
        if i >= storages.len() {
            return Err(Error::Usage(format!(
                "a tensor refers to storage {i}, but there are {} storages",
                storages.len()
            )));
        }
        unit[i] = unit[i].max(es);
        if let Some((lo, hi)) = range {
            used[i] = Some(match used[i] {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
        Ok(())
    })?;
    Ok(storages
        .iter()
        .enumerate()
        .map(|(i, s)| match used[i] {
            None => Window { start: 0, len: 0 },
            Some((lo, hi)) => {
                let start = lo / unit[i] * unit[i];
                let end = hi.div_ceil(unit[i]).saturating_mul(unit[i]).min(s.nbytes);
                Window {
                    start,
                    len: end.saturating_sub(start),
                }
            }
        })
        .collect())
}
