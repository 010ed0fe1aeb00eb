//! safetensors export: the tensors of a (nested) dict as one flat dict, keys joined with `.`
//! (`model.layer.weight`; list items by index), written with the `safetensors` crate.
//!
//! Each key gets its own copy of its elements in row-major order: non-contiguous views are
//! made contiguous, and tensors that shared a storage are written separately (safetensors
//! has no sharing, and `safetensors.torch.save_file` refuses shared tensors; each key here is
//! independent). The `__metadata__` holds `{"format": "pt"}`, as Hugging Face tools write.
//! Values that are not tensors follow [`NonTensors`]: an error naming them (default), strings
//! in `__metadata__` (their Python repr), or left out. A dtype that safetensors lacks
//! (complex32, complex128, quantized, bits) is an error naming the tensors.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::torch::dtype::DType;
use crate::torch::model::{key_text, Object, Tensor};

use super::atomic;
use super::compact::MAX_DEPTH;
use super::{NonTensors, SaveOptions, StorageSource, Written};

/// How many names an error lists before "and N more".
const LIST: usize = 8;

fn list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LIST)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST {
        s.push_str(&format!(" and {} more", names.len() - LIST));
    }
    s
}

/// The safetensors dtype of a torch dtype, through the one dtype table's names.
pub(crate) fn st_dtype(d: DType) -> Option<safetensors::Dtype> {
    let name = d.safetensors_name()?;
    serde_json::from_value(serde_json::Value::String(name.into())).ok()
}

struct Flat<'a> {
    tensors: Vec<(String, &'a Tensor)>,
    others: Vec<(String, &'a Object)>,
    refused: Vec<String>,
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn has_tensor(o: &Object, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    match o {
        Object::Tensor(_)
        | Object::QTensor(_)
        | Object::SparseTensor(_)
        | Object::Opaque(_)
        | Object::ScriptModule(_)
        | Object::Storage(_) => true,
        Object::Tuple(xs) | Object::List(xs) | Object::Set(xs) | Object::FrozenSet(xs) => {
            xs.iter().any(|x| has_tensor(x, depth + 1))
        }
        Object::Dict(d) => d.iter().any(|(_, v)| has_tensor(v, depth + 1)),
        Object::OrderedDict(d) => d.items.iter().any(|(_, v)| has_tensor(v, depth + 1)),
        _ => false,
    }
}

fn flatten<'a>(o: &'a Object, path: String, depth: usize, out: &mut Flat<'a>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Unsupported {
            what: format!("objects nested deeper than {MAX_DEPTH} levels"),
            location: path,
            hint: "flatten the structure".into(),
        });
    }
    let place = |p: &str| {
        if p.is_empty() {
            "the root object".to_string()
        } else {
            format!("key {p}")
        }
    };
    match o {
        Object::Tensor(t) => out.tensors.push((path, t)),
        Object::Dict(_) | Object::OrderedDict(_) | Object::Tuple(_) | Object::List(_)
            if depth == 0 || has_tensor(o, depth) =>
        {
            let items: Vec<(String, &Object)> = match o {
                Object::Dict(d) => d.iter().map(|(k, v)| (key_text(k), v)).collect(),
                Object::OrderedDict(d) => d.items.iter().map(|(k, v)| (key_text(k), v)).collect(),
                Object::Tuple(xs) | Object::List(xs) => xs
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
                _ => unreachable!(),
            };
            for (k, v) in items {
                flatten(v, join(&path, &k), depth + 1, out)?;
            }
        }
        Object::QTensor(_) => out
            .refused
            .push(format!("{} (quantized tensor)", place(&path))),
        Object::SparseTensor(s) => {
            out.refused
                .push(format!("{} ({} tensor)", place(&path), s.layout))
        }
        Object::Opaque(op) => {
            return Err(Error::Unsupported {
                what: format!(
                    "cannot save an object of class {}: only tensors and plain containers",
                    op.class
                ),
                location: place(&path),
                hint: "convert to a state dict (model.state_dict()) first".into(),
            })
        }
        Object::ScriptModule(_) | Object::Storage(_) | Object::Cycle => out.refused.push(format!(
            "{} ({})",
            place(&path),
            crate::torch::interpret::type_name(o)
        )),
        _ => out.others.push((path, o)),
    }
    Ok(())
}

/// One tensor as safetensors sees it; elements are gathered when the crate asks for them,
/// so that at most one non-contiguous tensor is copied at a time.
struct StView<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    tensor: &'a Tensor,
    bytes: &'a [u8],
    len: usize,
}

impl safetensors::View for &StView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self.tensor;
        let es = t.dtype.element_size();
        if self.len == 0 {
            return Cow::Borrowed(&[]);
        }
        if t.is_contiguous() {
            let start = t.storage_offset as usize * es;
            return Cow::Borrowed(&self.bytes[start..start + self.len]);
        }
        let mut v = Vec::with_capacity(self.len);
        crate::torch::elements::for_each_element(t, |o| {
            v.extend_from_slice(&self.bytes[o..o + es])
        });
        Cow::Owned(v)
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Most bytes of `__metadata__` written for non-tensor values.
const MAX_METADATA: u64 = 64 << 20;

/// Whether `repr(o)` fits in `left` bytes (an estimate from above, computed without building
/// it: a memoized string referenced many times must not be written out many times).
fn repr_fits(o: &Object, left: &mut u64) -> bool {
    let cost = match o {
        Object::Str(s) => 2 * s.len() as u64 + 2,
        Object::Bytes(b) | Object::ByteArray(b) => 4 * b.len() as u64 + 16,
        _ => 32,
    };
    if cost > *left {
        return false;
    }
    *left -= cost;
    match o {
        Object::Tuple(xs) | Object::List(xs) | Object::Set(xs) | Object::FrozenSet(xs) => {
            xs.iter().all(|x| repr_fits(x, left))
        }
        Object::Dict(d) => d
            .iter()
            .all(|(k, v)| repr_fits(k, left) && repr_fits(v, left)),
        Object::OrderedDict(d) => d
            .items
            .iter()
            .all(|(k, v)| repr_fits(k, left) && repr_fits(v, left)),
        _ => true,
    }
}

/// Python-like repr of a non-tensor value, for `__metadata__`.
fn repr(o: &Object, top: bool) -> String {
    let seq = |xs: &[Object]| {
        xs.iter()
            .map(|x| repr(x, false))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match o {
        Object::None => "None".into(),
        Object::Bool(b) => if *b { "True" } else { "False" }.into(),
        Object::Int(i) => i.to_string(),
        Object::BigInt(s) => s.to_string(),
        Object::Float(f) => py_float(*f),
        Object::Complex(re, im) => format!(
            "({}{}{}j)",
            py_float(*re),
            if *im < 0.0 { "" } else { "+" },
            py_float(*im)
        ),
        Object::Str(s) if top => s.to_string(),
        Object::Str(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Object::Bytes(b) | Object::ByteArray(b) => {
            let inner: String = b
                .iter()
                .map(|&c| match c {
                    b'\\' => "\\\\".to_string(),
                    b'\'' => "\\'".to_string(),
                    0x20..=0x7e => (c as char).to_string(),
                    _ => format!("\\x{c:02x}"),
                })
                .collect();
            if matches!(o, Object::Bytes(_)) {
                format!("b'{inner}'")
            } else {
                format!("bytearray(b'{inner}')")
            }
        }
        Object::Tuple(xs) if xs.len() == 1 => format!("({},)", repr(&xs[0], false)),
        Object::Tuple(xs) => format!("({})", seq(xs)),
        Object::List(xs) => format!("[{}]", seq(xs)),
        Object::Set(xs) if xs.is_empty() => "set()".into(),
        Object::Set(xs) => format!("{{{}}}", seq(xs)),
        Object::FrozenSet(xs) => format!("frozenset({{{}}})", seq(xs)),
        Object::Dict(d) => format!(
            "{{{}}}",
            d.iter()
                .map(|(k, v)| format!("{}: {}", repr(k, false), repr(v, false)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Object::OrderedDict(d) => format!(
            "OrderedDict({{{}}})",
            d.items
                .iter()
                .map(|(k, v)| format!("{}: {}", repr(k, false), repr(v, false)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Object::Size(s) => format!(
            "torch.Size([{}])",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Object::Dtype(d) => format!("torch.{}", d.name()),
        Object::Device(d) => match d.split_once(':') {
            Some((t, i)) => format!("device(type='{t}', index={i})"),
            None => format!("device(type='{d}')"),
        },
        Object::Named(n) => n.to_string(),
        Object::Global(g) => format!("<class '{g}'>"),
        other => format!("<{}>", crate::torch::interpret::type_name(other)),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents in
/// [-4, 16), else `d.ddde±XX`.
fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{v:e}"); // shortest digits: "-1.5e-5"
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n > exp + 1 {
                format!(
                    "{}.{}",
                    &digits[..(exp + 1) as usize],
                    &digits[(exp + 1) as usize..]
                )
            } else {
                format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { "-" } else { "+" },
            exp.abs()
        )
    }
}

/// Exports `root` to `path` as safetensors (atomically).
pub(crate) fn save(
    root: &Object,
    src: &dyn StorageSource,
    path: &Path,
    opts: &SaveOptions,
) -> Result<Written> {
    if !matches!(root, Object::Dict(_) | Object::OrderedDict(_)) {
        return Err(Error::Unsupported {
            what: format!(
                "safetensors holds a dict of tensors; the object to save is of type {}",
                crate::torch::interpret::type_name(root)
            ),
            location: "the root object".into(),
            hint: "save a dict (a state dict) of tensors".into(),
        });
    }
    let mut flat = Flat {
        tensors: Vec::new(),
        others: Vec::new(),
        refused: Vec::new(),
    };
    flatten(root, String::new(), 0, &mut flat)?;
    if !flat.refused.is_empty() {
        return Err(Error::Unsupported {
            what: format!("safetensors cannot hold {}", list(&flat.refused)),
            location: path.display().to_string(),
            hint: "drop or convert those entries, or write the zip format".into(),
        });
    }
    let mut metadata: HashMap<String, String> = HashMap::new();
    metadata.insert("format".into(), "pt".into());
    match opts.non_tensors {
        NonTensors::Error if !flat.others.is_empty() => {
            let names: Vec<String> = flat
                .others
                .iter()
                .map(|(p, o)| {
                    format!(
                        "{} ({})",
                        if p.is_empty() { "<root>" } else { p },
                        crate::torch::interpret::type_name(o)
                    )
                })
                .collect();
            return Err(Error::Unsupported {
                what: format!("safetensors holds only tensors; not tensors: {}", list(&names)),
                location: path.display().to_string(),
                hint: "keep them as strings in __metadata__ (--non-tensors metadata) or leave them out (--non-tensors skip)".into(),
            });
        }
        NonTensors::Metadata => {
            let mut left = MAX_METADATA;
            for (p, o) in &flat.others {
                if !repr_fits(o, &mut left) {
                    return Err(Error::Unsupported {
                        what: format!(
                            "the non-tensor values would take more than {MAX_METADATA} bytes of __metadata__"
                        ),
                        location: path.display().to_string(),
                        hint: "leave them out (--non-tensors skip)".into(),
                    });
                }
                if metadata.insert(p.clone(), repr(o, true)).is_some() {
                    return Err(Error::Unsupported {
                        what: format!("two entries are both named {p:?} in __metadata__"),
                        location: path.display().to_string(),
                        hint: "rename one of them".into(),
                    });
                }
            }
        }
        _ => {}
    }

    let mut seen = HashSet::new();
    let mut lacking = Vec::new();
    let mut no_data = Vec::new();
    for (name, t) in &flat.tensors {
        if !seen.insert(name.as_str())
            || metadata.contains_key(name.as_str()) && opts.non_tensors == NonTensors::Metadata
        {
            return Err(Error::Unsupported {
                what: format!("two entries flatten to the key {name:?}"),
                location: path.display().to_string(),
                hint: "rename one of them".into(),
            });
        }
        if st_dtype(t.dtype).is_none() {
            lacking.push(format!("{name} ({})", t.dtype));
        }
        if t.storage.is_none() {
            no_data.push(format!(
                "{name} ({} tensor)",
                t.device.as_deref().unwrap_or("meta")
            ));
        }
    }
    if !lacking.is_empty() {
        return Err(Error::Unsupported {
            what: format!("safetensors has no dtype for {}", list(&lacking)),
            location: path.display().to_string(),
            hint: "convert those tensors to a dtype safetensors has, or write the zip format"
                .into(),
        });
    }
    if !no_data.is_empty() {
        return Err(Error::Unsupported {
            what: format!(
                "tensors without data cannot go into safetensors: {}",
                list(&no_data)
            ),
            location: path.display().to_string(),
            hint: "materialize them first, or write the zip format".into(),
        });
    }

    // Storage bytes, each loaded once (borrowed from the map for a checkpoint).
    let mut bufs: HashMap<usize, Cow<'_, [u8]>> = HashMap::new();
    for (_, t) in &flat.tensors {
        if let Some(i) = t.storage {
            if let std::collections::hash_map::Entry::Vacant(e) = bufs.entry(i) {
                e.insert(src.storage_bytes(i)?);
            }
        }
    }
    let mut views = Vec::with_capacity(flat.tensors.len());
    for (name, t) in &flat.tensors {
        let i = t.storage.unwrap_or(0);
        let bytes: &[u8] = bufs.get(&i).map(|b| &b[..]).unwrap_or(&[]);
        if let Some((_, hi)) = super::compact::byte_range(t) {
            if hi > bytes.len() as u64 {
                return Err(Error::Write {
                    path: path.to_path_buf(),
                    source: None,
                    what: format!(
                        "tensor {name} reaches byte {hi} of a storage of {} bytes",
                        bytes.len()
                    ),
                });
            }
        }
        // A view may not multiply its storage (a stride-0 view of one float as 2^40 elements).
        let len = (t.numel() as usize)
            .checked_mul(t.dtype.element_size())
            .filter(|&l| {
                l as u64
                    <= (bytes.len() as u64)
                        .saturating_mul(4)
                        .saturating_add(256 << 20)
            })
            .ok_or_else(|| Error::Write {
                path: path.to_path_buf(),
                source: None,
                what: format!(
                    "tensor {name} is a view that repeats its {}-byte storage far beyond its size; make it contiguous in torch first if that is meant",
                    bytes.len()
                ),
            })?;
        let dtype = st_dtype(t.dtype).expect("checked above");
        let mut shape: Vec<usize> = t.shape.iter().map(|&s| s.max(0) as usize).collect();
        if dtype == safetensors::Dtype::F4 {
            // torch's float4_e2m1fn_x2 packs two values per element; safetensors counts values.
            match shape.last_mut() {
                Some(l) => *l *= 2,
                None => shape.push(2),
            }
        }
        views.push((
            name.clone(),
            StView {
                dtype,
                shape,
                tensor: t,
                bytes,
                len,
            },
        ));
    }
    let tmp = atomic::temp_beside(path)?.into_temp_path();
    let refs = views.iter().map(|(n, v)| (n.as_str(), v));
    safetensors::tensor::serialize_to_file(refs, Some(metadata), &tmp).map_err(|e| {
        Error::Write {
            path: path.to_path_buf(),
            source: None,
            what: format!("safetensors: {e}"),
        }
    })?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| Error::Write {
            path: path.to_path_buf(),
            what: e.to_string(),
            source: Some(e),
        })?;
    let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    atomic::finish_path(tmp, f, path, opts.sync)?;
    Ok(Written {
        storages: views.len(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (v, s) in [
            (0.001, "0.001"),
            (1.0, "1.0"),
            (1e-5, "1e-05"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (123456.0, "123456.0"),
            (0.1, "0.1"),
            (1.5e300, "1.5e+300"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(v), s);
        }
    }

    #[test]
    fn dtype_names_map() {
        assert_eq!(st_dtype(DType::BFLOAT16), Some(safetensors::Dtype::BF16));
        assert_eq!(st_dtype(DType::from_name("complex32").unwrap()), None);
    }
}
