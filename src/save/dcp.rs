//! Writing `torch.distributed.checkpoint` directories as FileSystemWriter does on one process:
//! `__0_0.distcp` holding one complete `torch.save` archive per item (each tensor whole and
//! contiguous, each non-tensor value as its own archive), and `.metadata`, the pickle of DCP's
//! `Metadata` that `torch.distributed.checkpoint.load` reads (into a plain state dict, or into
//! sharded DTensors on several ranks). Both files go to temporary names and are renamed into
//! place, the metadata last; the data file has a name no file of the directory has, so a
//! checkpoint already there stays whole until the new metadata replaces its own, and its
//! data files are removed after.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::pickle::PickleWriter;
use crate::save::{io_err, write_to, SaveFormat, SaveOptions, StorageSource, Written};
use crate::torch::model::{Object, Storage, Tensor};
use crate::torch::tensor::gather;

const META: &str = "torch.distributed.checkpoint.metadata";
/// Data files are `__0_N.distcp`, N the first number no file of the directory has.
fn data_file_name(dir: &Path) -> String {
    (0u32..)
        .map(|n| format!("__0_{n}.distcp"))
        .find(|f| !dir.join(f).exists() && !dir.join(format!("{f}.tmp")).exists())
        .unwrap_or_else(|| "__0_0.distcp".into())
}

/// One path component of a flattened key: a dict key or a list index.
#[derive(Debug, Clone)]
enum Part {
    Key(String),
    Index(usize),
}

/// What one written item is.
enum Kind {
    Tensor {
        dtype: crate::torch::dtype::DType,
        shape: Vec<i64>,
    },
    Bytes,
}

struct Item {
    fqn: String,
    path: Vec<Part>,
    kind: Kind,
    offset: u64,
    length: u64,
}

/// One tensor's bytes as a storage source of its own.
struct One {
    storage: Vec<Storage>,
    bytes: Vec<u8>,
}

impl StorageSource for One {
    fn storages(&self) -> &[Storage] {
        &self.storage
    }
    fn storage_bytes(&self, _i: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self.bytes))
    }
}

/// The leaves DCP's flattening yields: dicts are entered (keys as `str(key)`), lists and
/// tuples when a tensor is inside them; anything else is a leaf.
fn flatten(o: &Object, path: &mut Vec<Part>, out: &mut Vec<(Vec<Part>, Object)>) -> Result<()> {
    if path.len() > 256 {
        return Err(Error::Usage(
            "the state dict nests deeper than 256 levels".into(),
        ));
    }
    let items: Option<&[(Object, Object)]> = match o {
        Object::Dict(d) => Some(d),
        Object::OrderedDict(d) => Some(&d.items),
        _ => None,
    };
    if let Some(items) = items {
        for (k, v) in items {
            // DCP flattens with `str(key)`.
            let k = match k {
                Object::Str(s) => s.to_string(),
                Object::Int(i) => i.to_string(),
                Object::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                _ => {
                    return Err(Error::Usage(format!(
                    "a dict key at {} is not a str, int or bool, which a DCP key path cannot hold",
                    fqn_of(path)
                )))
                }
            };
            path.push(Part::Key(k));
            flatten(v, path, out)?;
            path.pop();
        }
        return Ok(());
    }
    if let Object::List(xs) | Object::Tuple(xs) = o {
        // Entered only when a tensor is somewhere inside, as torch's traversal does.
        if holds_tensor(o, 0) {
            for (i, v) in xs.iter().enumerate() {
                path.push(Part::Index(i));
                flatten(v, path, out)?;
                path.pop();
            }
            return Ok(());
        }
    }
    out.push((path.clone(), o.clone()));
    Ok(())
}

/// Whether a tensor is inside `o` (through dicts, lists and tuples).
fn holds_tensor(o: &Object, depth: usize) -> bool {
    if depth > 256 {
        return false;
    }
    match o {
        Object::Tensor(_) => true,
        Object::List(xs) | Object::Tuple(xs) => xs.iter().any(|x| holds_tensor(x, depth + 1)),
        Object::Dict(d) => d.iter().any(|(_, v)| holds_tensor(v, depth + 1)),
        Object::OrderedDict(d) => d.items.iter().any(|(_, v)| holds_tensor(v, depth + 1)),
        _ => false,
    }
}

fn fqn_of(path: &[Part]) -> String {
    path.iter()
        .map(|p| match p {
            Part::Key(k) => k.clone(),
            Part::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Writes `root` (whose tensors view `src`'s storages) as a DCP directory at `dir`.
pub(crate) fn save(
    root: &Object,
    src: &dyn StorageSource,
    dir: &Path,
    opts: &SaveOptions,
) -> Result<Written> {
    let what = dir.display().to_string();
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Write {
            path: dir.to_path_buf(),
            what: "exists and is not a directory (a DCP checkpoint is a directory)".into(),
            source: None,
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(&what, e))?;
    let mut leaves = Vec::new();
    flatten(root, &mut Vec::new(), &mut leaves)?;
    if leaves.is_empty() {
        return Err(Error::Usage(
            "nothing to save: the state dict is empty".into(),
        ));
    }
    // A fresh data file name: an existing checkpoint here stays whole (its metadata names its
    // own files) until the new metadata is renamed over it.
    let data_name = data_file_name(dir);
    let data_tmp = dir.join(format!("{data_name}.tmp"));
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&data_tmp).map_err(|e| io_err(&what, e))?,
    );
    let mut items = Vec::with_capacity(leaves.len());
    let mut at = 0u64;
    let item_opts = SaveOptions {
        format: Some(SaveFormat::Zip),
        archive_name: Some("archive".into()),
        ..SaveOptions::default()
    };
    // Non-tensor values first, as FileSystemWriter writes them.
    // (The metadata keeps the state dict's order.)
    let (tensors, others): (Vec<_>, Vec<_>) = leaves
        .into_iter()
        .enumerate()
        .partition(|(_, (_, o))| matches!(o, Object::Tensor(_)));
    let mut order = Vec::new();
    for (k, (path, o)) in others.into_iter().chain(tensors) {
        order.push(k);
        let fqn = fqn_of(&path);
        let (n, kind) = match &o {
            Object::Tensor(t) if t.storage.is_some() => {
                let i = t.storage.unwrap_or(0);
                let all = src.storage_bytes(i)?;
                let bytes = gather(t, &all).ok_or_else(|| {
                    Error::invalid(format!("{fqn}: elements outside its storage"), fqn.clone())
                })?;
                let stride = crate::torch::model::contiguous_strides(&t.shape);
                let one = One {
                    storage: vec![Storage {
                        key: "0".into(),
                        dtype: t.dtype,
                        location: "cpu".into(),
                        nbytes: bytes.len() as u64,
                        data: None,
                        typed: true,
                    }],
                    bytes,
                };
                let plain = Tensor {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    stride,
                    storage_offset: 0,
                    requires_grad: false,
                    is_parameter: false,
                    storage: Some(0),
                    device: None,
                    metadata: None,
                };
                let n = write_to(
                    &Object::Tensor(Arc::new(plain)),
                    &one,
                    &mut file,
                    &item_opts,
                )?;
                (
                    n,
                    Kind::Tensor {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                    },
                )
            }
            Object::Tensor(_) => {
                return Err(Error::Usage(format!(
                    "{fqn}: a tensor without storage (meta) cannot be saved to DCP"
                )))
            }
            other => (write_to(other, src, &mut file, &item_opts)?, Kind::Bytes),
        };
        items.push(Item {
            fqn,
            path,
            kind,
            offset: at,
            length: n,
        });
        at += n;
    }
    file.flush().map_err(|e| io_err(&what, e))?;
    let f = file
        .into_inner()
        .map_err(|e| io_err(&what, e.into_error()))?;
    if opts.sync {
        f.sync_all().map_err(|e| io_err(&what, e))?;
    }
    drop(f);
    std::fs::rename(&data_tmp, dir.join(&data_name)).map_err(|e| io_err(&what, e))?;
    let mut sorted: Vec<(usize, Item)> = order.into_iter().zip(items).collect();
    sorted.sort_by_key(|(k, _)| *k);
    let items: Vec<Item> = sorted.into_iter().map(|(_, it)| it).collect();
    let meta = metadata_pickle(&items, &data_name);
    let meta_tmp = dir.join(".metadata.tmp");
    {
        let mut f = std::fs::File::create(&meta_tmp).map_err(|e| io_err(&what, e))?;
        f.write_all(&meta).map_err(|e| io_err(&what, e))?;
        if opts.sync {
            f.sync_all().map_err(|e| io_err(&what, e))?;
        }
    }
    std::fs::rename(&meta_tmp, dir.join(".metadata")).map_err(|e| io_err(&what, e))?;
    if opts.sync {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    // The previous checkpoint's data files (and per-rank metadata) are no longer named.
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale = (n.ends_with(".distcp") && n != data_name)
            || (n.starts_with("__") && n.ends_with(".metadata"));
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(Written {
        storages: items.len(),
        bytes: at + meta.len() as u64,
    })
}

/// A `torch.Size` of `dims`.
fn size(w: &mut PickleWriter, dims: &[i64]) {
    w.global("torch", "Size");
    w.mark();
    for &d in dims {
        w.int(d);
    }
    w.tuple(dims.len(), true);
    w.tuple(1, false);
    w.reduce();
}

/// `cls.__new__(cls)` of a DCP class, its state to follow (then `BUILD`).
fn new(w: &mut PickleWriter, module: &str, class: &str) {
    w.global(module, class);
    w.tuple(0, false);
    w.newobj();
}

/// A dict of str keys whose values `f` writes, as BUILD state.
fn state(w: &mut PickleWriter, fields: &[&str], mut f: impl FnMut(&mut PickleWriter, usize)) {
    w.empty_dict();
    w.mark();
    for (i, k) in fields.iter().enumerate() {
        w.str(k);
        f(w, i);
    }
    w.setitems();
    w.build();
}

fn metadata_pickle(items: &[Item], data_name: &str) -> Vec<u8> {
    let mut w = PickleWriter::new();
    new(&mut w, META, "Metadata");
    state(
        &mut w,
        &[
            "state_dict_metadata",
            "planner_data",
            "storage_data",
            "storage_meta",
            "version",
        ],
        |w, i| match i {
            0 => {
                w.empty_dict();
                w.mark();
                for it in items {
                    w.str(&it.fqn);
                    match &it.kind {
                        Kind::Bytes => state_of_bytes(w),
                        Kind::Tensor { dtype, shape } => tensor_meta(w, *dtype, shape),
                    }
                }
                w.setitems();
            }
            1 => {
                w.empty_dict();
                w.mark();
                for it in items {
                    w.str(&it.fqn);
                    w.mark();
                    for p in &it.path {
                        match p {
                            Part::Key(k) => w.str(k),
                            Part::Index(i) => w.int(*i as i64),
                        }
                    }
                    w.tuple(it.path.len(), true);
                }
                w.setitems();
            }
            2 => {
                w.empty_dict();
                w.mark();
                for it in items {
                    new(w, META, "MetadataIndex");
                    match &it.kind {
                        Kind::Tensor { shape, .. } => {
                            state(w, &["fqn", "offset", "index"], |w, j| match j {
                                0 => w.str(&it.fqn),
                                1 => size(w, &vec![0; shape.len()]),
                                _ => w.int(0),
                            })
                        }
                        Kind::Bytes => state(w, &["fqn", "index"], |w, j| match j {
                            0 => w.str(&it.fqn),
                            _ => w.none(),
                        }),
                    }
                    new(w, "torch.distributed.checkpoint.filesystem", "_StorageInfo");
                    state(w, &["relative_path", "offset", "length"], |w, j| match j {
                        0 => w.str(data_name),
                        1 => w.int(it.offset as i64),
                        _ => w.int(it.length as i64),
                    });
                }
                w.setitems();
            }
            3 => w.none(),
            _ => w.str("1.0.0"),
        },
    );
    w.finish()
}

fn state_of_bytes(w: &mut PickleWriter) {
    new(w, META, "BytesStorageMetadata");
    w.empty_dict();
    w.build();
}

fn tensor_meta(w: &mut PickleWriter, dtype: crate::torch::dtype::DType, shape: &[i64]) {
    new(w, META, "TensorStorageMetadata");
    state(w, &["properties", "size", "chunks"], |w, i| match i {
        0 => {
            new(w, META, "TensorProperties");
            // (dtype, layout, requires_grad, memory format, pin_memory, strides)
            w.mark();
            w.global("torch", dtype.name());
            w.global("torch", "strided");
            w.bool(false);
            w.global(META, "_MEM_FORMAT_ENCODING");
            w.int(0);
            w.tuple(1, false);
            w.reduce();
            w.bool(false);
            let stride = crate::torch::model::contiguous_strides(shape);
            w.mark();
            for s in &stride {
                w.int(*s);
            }
            w.tuple(stride.len(), true);
            w.tuple(6, true);
            w.build();
        }
        1 => size(w, shape),
        _ => {
            w.empty_list();
            new(w, META, "ChunkStorageMetadata");
            state(w, &["offsets", "sizes"], |w, j| match j {
                0 => size(w, &vec![0; shape.len()]),
                _ => size(w, shape),
            });
            w.append();
        }
    });
}
