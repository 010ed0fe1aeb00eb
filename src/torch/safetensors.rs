//! The `.safetensors` reader: the header parsed and validated by the `safetensors` crate
//! (offsets contiguous and in bounds, sizes matching shapes), each tensor a contiguous view
//! over a storage of its own at its byte range, in the order `safetensors.torch.load_file`
//! returns them (a dict in file order); `__metadata__` kept as a note.

use crate::error::{Error, Result};
use crate::format::source::Source;
use crate::torch::checkpoint::{ArchiveInfo, ByteOrder, Checkpoint, Format};
use crate::torch::dtype::DType;
use crate::torch::interpret::StorageTable;
use crate::torch::model::{Object, Storage, Tensor};

const HINT: &str = "the file is damaged or not a safetensors file";

/// Whether `bytes` starts like a safetensors file: a little-endian u64 header length that
/// fits the file, then a JSON object.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(n) = bytes.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(n.try_into().unwrap_or([0; 8]));
    n >= 2 && n <= bytes.len() as u64 - 8 && bytes.get(8) == Some(&b'{')
}

/// Opens a safetensors file.
pub(crate) fn open(source: Source) -> Result<Checkpoint> {
    let bytes = source.bytes();
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(format!("invalid safetensors header: {e}"), "header", HINT))?;
    let data_start = 8u64 + n as u64;
    let mut names: Vec<(String, &safetensors::tensor::TensorInfo)> =
        meta.tensors().into_iter().collect();
    // File order (ties between empty tensors by name), as load_file gives them.
    names.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    let by_offset: Vec<usize> = (0..names.len()).collect();
    let mut storage_of = vec![0usize; names.len()];
    let mut table = StorageTable::default();
    for (k, &i) in by_offset.iter().enumerate() {
        let (name, info) = &names[i];
        let dtype = dtype_of(info.dtype, name)?;
        let (s, e) = info.data_offsets;
        let nbytes = (e - s) as u64;
        let idx = table.intern(format!("safetensors/{k}"), || Storage {
            key: k.to_string(),
            dtype,
            location: "cpu".into(),
            nbytes,
            data: Some((data_start + s as u64, nbytes)),
            typed: true,
        });
        storage_of[i] = idx;
    }
    let mut items = Vec::with_capacity(names.len());
    for (i, (name, info)) in names.iter().enumerate() {
        let dtype = dtype_of(info.dtype, name)?;
        let shape: Vec<i64> = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::invalid(
                    format!("tensor {name} has a dimension past i64"),
                    name.as_str(),
                )
            })?;
        let stride = crate::torch::model::contiguous_strides(&shape);
        let t = Tensor {
            dtype,
            shape,
            stride,
            storage_offset: 0,
            requires_grad: false,
            is_parameter: false,
            storage: Some(storage_of[i]),
            device: None,
            metadata: None,
        };
        items.push((Object::Str(name.as_str().into()), Object::Tensor(t.into())));
    }
    let mut notes = Vec::new();
    if let Some(m) = meta.metadata() {
        let mut kv: Vec<_> = m.iter().collect();
        kv.sort();
        for (k, v) in kv.into_iter().take(64) {
            let v: String = v.chars().take(200).collect();
            notes.push(format!("metadata: {k} = {v}"));
        }
    }
    let records = vec![("header".to_string(), n as u64)];
    let mut ckpt = Checkpoint::assemble(
        Format::Safetensors,
        Object::Dict(items.into()),
        table,
        ByteOrder::Little,
        0,
        ArchiveInfo::default(),
        records,
        source,
    )?;
    ckpt.notes = notes;
    Ok(ckpt)
}

fn dtype_of(d: safetensors::Dtype, name: &str) -> Result<DType> {
    let st = format!("{d:?}");
    DType::from_safetensors(&st).ok_or_else(|| Error::Unsupported {
        what: format!("safetensors dtype {st} of tensor {name}"),
        location: name.to_string(),
        hint: "ptfile reads the safetensors dtypes that torch has".into(),
    })
}
