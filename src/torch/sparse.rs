//! Sparse tensors: the dense equivalent (for descriptions and conversion), computed with
//! bounds-checked indices.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::torch::elements::{elements_i64, for_each_element};
use crate::torch::model::SparseTensor;

/// Largest dense equivalent built, in bytes (and largest values or index tensor read).
const MAX_DENSE: u64 = 256 << 20;
/// Most elements of one component tensor (each costs a slice or an i64 while converting).
const MAX_PART_ELEMS: u64 = 8 << 20;

/// The dense equivalent of `s` as little-endian bytes (row-major).
/// `bytes(i)` gives the little-endian bytes of storage `i`.
pub fn to_dense<'b>(
    s: &SparseTensor,
    bytes: &dyn Fn(usize) -> Result<Cow<'b, [u8]>>,
) -> Result<Vec<u8>> {
    let values = s
        .parts
        .last()
        .ok_or_else(|| Error::invalid("sparse tensor without values", &s.layout))?;
    let es = values.dtype.element_size();
    let too_large = |what: &str| Error::Unsupported {
        what: format!(
            "{what} of sparse tensor of shape {:?} is too large",
            s.shape
        ),
        location: s.layout.clone(),
        hint: "read its component tensors instead".into(),
    };
    // Every part must have data, of a readable size.
    for p in &s.parts {
        if p.storage.is_none() {
            return Err(Error::invalid(
                "sparse tensor part without storage (meta?)",
                s.layout.clone(),
            ));
        }
        if p.numel() > MAX_PART_ELEMS
            || p.numel().saturating_mul(p.dtype.element_size() as u64) > MAX_DENSE
        {
            return Err(too_large("a component tensor"));
        }
    }
    let numel = s
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(0) as u64));
    let total = numel
        .and_then(|n| n.checked_mul(es as u64))
        .filter(|&t| t <= MAX_DENSE)
        .ok_or_else(|| too_large("the dense equivalent"))?;
    let mut dense = vec![0u8; total as usize];
    let vb = bytes(values.storage.unwrap_or(0))?;
    let bad = || Error::invalid("sparse index out of range", s.layout.clone());
    // Each value's bytes, row-major over the values tensor.
    let mut vals: Vec<&[u8]> = Vec::new();
    let mut missing = false;
    for_each_element(values, |o| match vb.get(o..o.saturating_add(es)) {
        Some(b) => vals.push(b),
        None => missing = true,
    });
    if missing {
        return Err(bad());
    }
    // Row-major strides of the dense shape (the product was checked above, so none overflows).
    let strides: Vec<u64> = {
        let mut st = vec![1u64; s.shape.len()];
        for d in (0..s.shape.len().saturating_sub(1)).rev() {
            st[d] = st[d + 1].saturating_mul(s.shape[d + 1].max(0) as u64);
        }
        st
    };
    let mut put = |flat_elem: u64, block: usize, acc: bool| -> Result<()> {
        let v = vals.get(block).ok_or_else(bad)?;
        let o = usize::try_from(flat_elem.saturating_mul(es as u64)).unwrap_or(usize::MAX);
        let dst = dense.get_mut(o..o.saturating_add(es)).ok_or_else(bad)?;
        if acc && values.dtype.kind() == crate::torch::dtype::Kind::Float && es == 4 {
            let a = f32::from_le_bytes([dst[0], dst[1], dst[2], dst[3]]);
            let b = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            dst.copy_from_slice(&(a + b).to_le_bytes());
        } else {
            dst.copy_from_slice(v);
        }
        Ok(())
    };
    let layout = s.layout.trim_start_matches("torch.");
    match layout {
        "sparse_coo" => {
            let idx_t = &s.parts[0];
            let ib = bytes(idx_t.storage.unwrap_or(0))?;
            let idx = elements_i64(idx_t, &ib);
            let ndim = idx_t.shape.first().copied().unwrap_or(0).max(0) as usize;
            let nnz = idx_t.shape.get(1).copied().unwrap_or(0).max(0) as usize;
            if ndim > s.shape.len() {
                return Err(bad());
            }
            let dense_block = vals.len() / nnz.max(1);
            for j in 0..nnz {
                let mut flat = 0u64;
                for (d, (&size, &stride)) in s.shape.iter().zip(&strides).take(ndim).enumerate() {
                    let i = *idx.get(d * nnz + j).ok_or_else(bad)?;
                    if i < 0 || i >= size {
                        return Err(bad());
                    }
                    flat += i as u64 * stride;
                }
                for k in 0..dense_block {
                    put(flat + k as u64, j * dense_block + k, true)?;
                }
            }
        }
        "sparse_csr" | "sparse_csc" if s.shape.len() == 2 => {
            let (ct, pt) = (&s.parts[0], &s.parts[1]);
            let cb = bytes(ct.storage.unwrap_or(0))?;
            let pb = bytes(pt.storage.unwrap_or(0))?;
            let comp = elements_i64(ct, &cb);
            let plain = elements_i64(pt, &pb);
            let csr = layout == "sparse_csr";
            for r in 0..comp.len().saturating_sub(1) {
                let (a, b) = (comp[r], comp[r + 1]);
                if a < 0 || b < a || b as usize > plain.len() {
                    return Err(bad());
                }
                for (k, &c) in plain.iter().enumerate().take(b as usize).skip(a as usize) {
                    let (row, col) = if csr { (r as i64, c) } else { (c, r as i64) };
                    if row < 0 || col < 0 || row >= s.shape[0] || col >= s.shape[1] {
                        return Err(bad());
                    }
                    put(row as u64 * strides[0] + col as u64, k, false)?;
                }
            }
        }
        other => {
            return Err(Error::Unsupported {
                what: format!("dense equivalent of {other} tensors"),
                location: s.layout.clone(),
                hint: "COO, CSR and CSC are supported".into(),
            })
        }
    }
    Ok(dense)
}
