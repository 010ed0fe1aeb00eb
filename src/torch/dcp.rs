//! `torch.distributed.checkpoint` directories (FileSystemWriter): the `.metadata` pickle (or
//! the per-rank `__N.metadata` files, merged), read with an allowlist of exactly DCP's
//! classes in that one context; the `.distcp` files as rows of complete `torch.save`
//! archives at each item's offset and length; tensors reassembled from their chunks; the
//! original nesting restored from `planner_data`, as `dcp_to_torch_save` gives it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::pickle;
use crate::format::source::Source;
use crate::torch::checkpoint::{ArchiveInfo, ByteOrder, Checkpoint, Format, OpenOptions};
use crate::torch::dtype::DType;
use crate::torch::interpret::{interpret, StorageTable};
use crate::torch::legacy::NoPersistentIds;
use crate::torch::model::{Object, Storage, Tensor};

/// Largest `.metadata` read (the metadata of very large models runs to hundreds of MiB).
const MAX_METADATA: u64 = 1 << 30;
/// Largest tensor reassembled from chunks in host memory.
const MAX_ASSEMBLED: u64 = 64 << 30;
/// Deepest key path of `planner_data`.
const MAX_PATH_DEPTH: usize = 64;

/// Whether `dir` holds a DCP checkpoint.
pub(crate) fn is_dcp_dir(dir: &Path) -> bool {
    dir.join(".metadata").is_file() || !rank_metadata(dir).is_empty()
}

/// The per-rank metadata files (`__0.metadata`, ...), sorted.
fn rank_metadata(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("__") && n.ends_with(".metadata"))
        })
        .collect();
    v.sort();
    v
}

/// One chunk of a tensor: its box in the full tensor.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    offsets: Vec<i64>,
    sizes: Vec<i64>,
}

/// What the metadata says of one key.
#[derive(Debug)]
enum Item {
    Tensor {
        dtype: DType,
        size: Vec<i64>,
        requires_grad: bool,
        chunks: Vec<Chunk>,
    },
    Bytes,
}

/// Where an item's bytes are: `length` bytes at `offset` of `relative_path`.
#[derive(Debug, Clone)]
struct StorageInfo {
    relative_path: String,
    offset: u64,
    length: u64,
    transforms: Vec<String>,
}

/// The parsed metadata of one or more files, merged.
#[derive(Default)]
struct Meta {
    order: Vec<String>,
    items: HashMap<String, Item>,
    planner: HashMap<String, Vec<Object>>,
    storage: HashMap<(String, Option<Vec<i64>>), StorageInfo>,
}

fn bad(what: impl Into<String>, at: &str) -> Error {
    Error::invalid(what, at)
}

/// The opaque object's attribute `k` (BUILD state dict).
fn attr<'o>(o: &'o Object, k: &str) -> Option<&'o Object> {
    match o {
        Object::Opaque(op) => op.attr(k),
        _ => None,
    }
}

fn class_of(o: &Object) -> &str {
    match o {
        Object::Opaque(op) => op.class.rsplit('.').next().unwrap_or(""),
        _ => "",
    }
}

fn ints(o: Option<&Object>, what: &str, at: &str) -> Result<Vec<i64>> {
    match o {
        Some(Object::Size(s)) => Ok(s.to_vec()),
        Some(Object::Tuple(xs)) | Some(Object::List(xs)) => xs
            .iter()
            .map(|x| {
                x.as_int()
                    .ok_or_else(|| bad(format!("{what} holds a non-integer"), at))
            })
            .collect(),
        _ => Err(bad(format!("{what} is missing or not a size"), at)),
    }
}

fn items_of(o: &Object) -> Option<&[(Object, Object)]> {
    match o {
        Object::Dict(d) => Some(d),
        Object::OrderedDict(d) => Some(&d.items),
        _ => None,
    }
}

/// Parses one metadata file into `meta`.
fn parse_metadata(path: &Path, opts: &OpenOptions, meta: &mut Meta) -> Result<()> {
    let at = path.display().to_string();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_METADATA {
        return Err(bad(format!("metadata of {len} bytes"), &at));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let p = pickle::parse(&bytes, &opts.limits).map_err(|source| Error::Pickle {
        record: at.clone(),
        source,
    })?;
    let mut iopts = opts.interpret.clone();
    iopts.dcp_metadata = true;
    let mut table = StorageTable::default();
    let root = interpret(&p, &at, &mut NoPersistentIds, &mut table, &iopts)?;
    if class_of(&root) != "Metadata" {
        return Err(bad("the metadata pickle is not a DCP Metadata object", &at));
    }
    let sdm = attr(&root, "state_dict_metadata")
        .and_then(items_of)
        .ok_or_else(|| bad("Metadata has no state_dict_metadata", &at))?;
    for (k, v) in sdm {
        let k = k
            .as_str()
            .ok_or_else(|| bad("a state_dict_metadata key is not a str", &at))?
            .to_string();
        let item = match class_of(v) {
            "BytesStorageMetadata" => Item::Bytes,
            "TensorStorageMetadata" => {
                let props = attr(v, "properties");
                let (dtype, requires_grad) = match props {
                    Some(Object::Opaque(op)) => match &op.state {
                        Some(Object::Tuple(t)) => (
                            match t.first() {
                                Some(Object::Dtype(d)) => *d,
                                _ => {
                                    return Err(bad(
                                        format!("{k}: properties without a dtype"),
                                        &at,
                                    ))
                                }
                            },
                            matches!(t.get(2), Some(Object::Bool(true))),
                        ),
                        Some(s) => match attr(&Object::Opaque(op.clone()), "dtype").or(Some(s)) {
                            Some(Object::Dtype(d)) => (*d, false),
                            _ => return Err(bad(format!("{k}: properties without a dtype"), &at)),
                        },
                        None => return Err(bad(format!("{k}: properties without a dtype"), &at)),
                    },
                    _ => {
                        return Err(bad(
                            format!("{k}: TensorStorageMetadata without properties"),
                            &at,
                        ))
                    }
                };
                let size = ints(attr(v, "size"), &format!("{k}: size"), &at)?;
                let mut chunks = Vec::new();
                for c in attr(v, "chunks").and_then(|c| c.as_seq()).unwrap_or(&[]) {
                    chunks.push(Chunk {
                        offsets: ints(attr(c, "offsets"), &format!("{k}: chunk offsets"), &at)?,
                        sizes: ints(attr(c, "sizes"), &format!("{k}: chunk sizes"), &at)?,
                    });
                }
                Item::Tensor {
                    dtype,
                    size,
                    requires_grad,
                    chunks,
                }
            }
            other => {
                return Err(bad(
                    format!("{k}: unknown storage metadata class {other:?}"),
                    &at,
                ))
            }
        };
        match (meta.items.get_mut(&k), item) {
            (None, item) => {
                meta.order.push(k.clone());
                meta.items.insert(k, item);
            }
            (Some(Item::Tensor { chunks, .. }), Item::Tensor { chunks: more, .. }) => {
                for c in more {
                    if !chunks.contains(&c) {
                        chunks.push(c);
                    }
                }
            }
            (Some(_), _) => {}
        }
    }
    if let Some(pd) = attr(&root, "planner_data").and_then(items_of) {
        for (k, v) in pd {
            if let (Some(k), Some(path)) = (k.as_str(), v.as_seq()) {
                if path.len() > MAX_PATH_DEPTH {
                    return Err(bad(
                        format!("{k}: planner path deeper than {MAX_PATH_DEPTH}"),
                        &at,
                    ));
                }
                meta.planner.insert(k.to_string(), path.to_vec());
            }
        }
    }
    let sd = attr(&root, "storage_data")
        .and_then(items_of)
        .ok_or_else(|| bad("Metadata has no storage_data", &at))?;
    for (idx, info) in sd {
        let fqn = attr(idx, "fqn")
            .and_then(|f| f.as_str())
            .ok_or_else(|| bad("a MetadataIndex without fqn", &at))?
            .to_string();
        let offset = match attr(idx, "offset") {
            None | Some(Object::None) => None,
            o => Some(ints(o, &format!("{fqn}: index offset"), &at)?),
        };
        let rel = attr(info, "relative_path")
            .and_then(|r| r.as_str())
            .ok_or_else(|| bad(format!("{fqn}: storage info without relative_path"), &at))?;
        check_relative(rel, &at)?;
        let num = |k: &str| -> Result<u64> {
            attr(info, k)
                .and_then(|v| v.as_int())
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| {
                    bad(
                        format!("{fqn}: storage info {k} is missing or negative"),
                        &at,
                    )
                })
        };
        let transforms = attr(info, "transform_descriptors")
            .and_then(|t| t.as_seq())
            .map(|t| {
                t.iter()
                    .filter_map(|d| d.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        meta.storage.insert(
            (fqn.clone(), offset),
            StorageInfo {
                relative_path: rel.to_string(),
                offset: num("offset")?,
                length: num("length")?,
                transforms,
            },
        );
    }
    Ok(())
}

/// A data file name must stay in the checkpoint's directory.
fn check_relative(rel: &str, at: &str) -> Result<()> {
    let why = if rel.is_empty() {
        Some("is empty")
    } else {
        crate::torch::shards::leaves_dir(rel)
    };
    match why {
        Some(why) => Err(bad(
            format!(
                "data file {rel:?} is not a plain name inside the checkpoint directory: it {why}"
            ),
            at,
        )),
        None => Ok(()),
    }
}

/// Opens a DCP directory.
pub(crate) fn open_dir(dir: &Path, opts: &OpenOptions) -> Result<Checkpoint> {
    let global = dir.join(".metadata");
    let files = if global.is_file() {
        vec![global]
    } else {
        rank_metadata(dir)
    };
    let mut meta = Meta::default();
    for f in &files {
        parse_metadata(f, opts, &mut meta)?;
    }
    let at = files
        .first()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    let mut sources: HashMap<String, Source> = HashMap::new();
    let mut shards: Vec<Checkpoint> = Vec::new();
    let mut leaves: Vec<(String, Object)> = Vec::new();
    let mut records = Vec::new();
    for key in &meta.order {
        let item = &meta.items[key];
        let obj = match item {
            Item::Bytes => {
                let info = meta
                    .storage
                    .get(&(key.clone(), None))
                    .ok_or_else(|| bad(format!("{key}: no storage for its bytes"), &at))?;
                let inner = open_item(dir, info, key, MAX_BYTES_ITEM, opts, &mut sources)?;
                records.push((
                    format!("{} @ {}", info.relative_path, info.offset),
                    info.length,
                ));
                // Bytes items hold plain values; tensors inside are kept with their storages.
                let base: usize = shards.iter().map(|s| s.storages.len()).sum();
                let root = reindex(&inner.root, base);
                shards.push(inner);
                root
            }
            Item::Tensor {
                dtype,
                size,
                requires_grad,
                chunks,
            } => {
                let base: usize = shards.iter().map(|s| s.storages.len()).sum();
                let (t, parts) = tensor_of(
                    dir,
                    key,
                    *dtype,
                    size,
                    *requires_grad,
                    chunks,
                    &meta,
                    opts,
                    &mut sources,
                    base,
                    &at,
                )?;
                for (name, n) in parts
                    .iter()
                    .map(|p| (p.records[0].0.clone(), p.records[0].1))
                {
                    records.push((name, n));
                }
                shards.extend(parts);
                Object::Tensor(Arc::new(t))
            }
        };
        leaves.push((key.clone(), obj));
    }
    let root = nest(leaves, &meta.planner, &at)?;
    if shards.is_empty() {
        // Only a metadata file and no items: an empty state dict.
        let table = StorageTable::default();
        return Checkpoint::assemble(
            Format::Dcp,
            root,
            table,
            ByteOrder::Little,
            4,
            ArchiveInfo::default(),
            records,
            Source::from_vec(Vec::new()),
        );
    }
    Checkpoint::from_shards(Format::Dcp, root, shards, records)
}

/// The transform descriptor of torch's ZStandard extension.
const ZSTD: &str = "stream.zstd/1";
/// Largest decompressed bytes item (non-tensor values).
const MAX_BYTES_ITEM: u64 = 256 << 20;
/// Room for the archive around a tensor chunk's bytes (records, pickle, alignment).
const ARCHIVE_SLACK: u64 = 16 << 20;

/// Decompresses the zstd frames of an item, refusing more than `limit` bytes of output (a
/// small item cannot expand into unbounded memory).
fn unzstd(mut input: &[u8], limit: u64, key: &str, at: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    while !input.is_empty() {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| {
            Error::format(
                format!("{key}: zstd item: {e}"),
                at.to_string(),
                "the item is damaged",
            )
        })?;
        let room = limit.saturating_sub(out.len() as u64);
        let n = (&mut dec)
            .take(room.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::format(
                    format!("{key}: zstd item: {e}"),
                    at.to_string(),
                    "the item is damaged",
                )
            })?;
        if out.len() as u64 > limit {
            return Err(Error::invalid(
                format!("{key}: zstd item expands past {limit} bytes"),
                at.to_string(),
            ));
        }
        if n == 0 {
            break;
        }
    }
    Ok(out)
}

/// The torch.save archive of one item.
fn open_item(
    dir: &Path,
    info: &StorageInfo,
    key: &str,
    limit: u64,
    opts: &OpenOptions,
    sources: &mut HashMap<String, Source>,
) -> Result<Checkpoint> {
    let zstd = match &info.transforms[..] {
        [] => false,
        [t] if t == ZSTD => true,
        ts => {
            let t = ts.iter().find(|t| *t != ZSTD).unwrap_or(&ts[0]);
            return Err(Error::Unsupported {
                what: format!("{key}: transform {t:?} of its item"),
                location: info.relative_path.clone(),
                hint:
                    "ptfile reads items saved plain or with the ZStandard extension (stream.zstd/1)"
                        .into(),
            });
        }
    };
    let src = match sources.get(&info.relative_path) {
        Some(s) => s.clone(),
        None => {
            let s = Source::open(&dir.join(&info.relative_path))?;
            sources.insert(info.relative_path.clone(), s.clone());
            s
        }
    };
    let sub = src.sub(info.offset, info.length).ok_or_else(|| {
        bad(
            format!(
                "{key}: item of {} bytes at offset {} runs past the end of the file ({} bytes)",
                info.length,
                info.offset,
                src.len()
            ),
            &info.relative_path,
        )
    })?;
    let sub = if zstd {
        Source::from_vec(unzstd(sub.bytes(), limit, key, &info.relative_path)?)
    } else {
        sub
    };
    let mut c = Checkpoint::from_source(sub, opts).map_err(|e| match e {
        Error::Unsafe { global, offset, .. } => Error::Unsafe {
            global,
            record: format!("{} (item {key})", info.relative_path),
            offset,
        },
        other => other,
    })?;
    c.records = vec![(
        format!("{} @ {}", info.relative_path, info.offset),
        info.length,
    )];
    Ok(c)
}

/// The objects of an item's tree with storage indices moved by `base`.
fn reindex(o: &Object, base: usize) -> Object {
    match o {
        Object::Tensor(t) => {
            let mut t = (**t).clone();
            t.storage = t.storage.map(|i| i + base);
            Object::Tensor(Arc::new(t))
        }
        other => other.clone(),
    }
}

/// The full tensor of `key`: the one chunk's tensor as it is when it covers the whole tensor
/// contiguously (its bytes stay in the file), else a contiguous tensor assembled from every
/// chunk. Returns the tensor (storage index from `base`) and the checkpoints that hold its
/// storage.
#[allow(clippy::too_many_arguments)]
fn tensor_of(
    dir: &Path,
    key: &str,
    dtype: DType,
    size: &[i64],
    requires_grad: bool,
    chunks: &[Chunk],
    meta: &Meta,
    opts: &OpenOptions,
    sources: &mut HashMap<String, Source>,
    base: usize,
    at: &str,
) -> Result<(Tensor, Vec<Checkpoint>)> {
    let nd = size.len();
    if size.iter().any(|&s| s < 0) {
        return Err(bad(format!("{key}: negative size {size:?}"), at));
    }
    let numel = size
        .iter()
        .try_fold(1u64, |a, &s| a.checked_mul(s as u64))
        .filter(|n| n.saturating_mul(dtype.element_size() as u64) <= MAX_ASSEMBLED)
        .ok_or_else(|| bad(format!("{key}: size {size:?} is too large"), at))?;
    // Chunks lie inside the tensor and do not overlap; together they cover it.
    let mut volume = 0u64;
    for (i, c) in chunks.iter().enumerate() {
        if c.offsets.len() != nd || c.sizes.len() != nd {
            return Err(bad(
                format!("{key}: chunk {i} has the wrong number of dimensions"),
                at,
            ));
        }
        for d in 0..nd {
            let (o, s) = (c.offsets[d], c.sizes[d]);
            if o < 0 || s < 0 || o.checked_add(s).is_none_or(|e| e > size[d]) {
                return Err(bad(
                    format!(
                        "{key}: chunk at {:?} of sizes {:?} runs past the tensor's size {size:?}",
                        c.offsets, c.sizes
                    ),
                    at,
                ));
            }
        }
        for other in &chunks[..i] {
            let overlap = (0..nd).all(|d| {
                c.offsets[d] < other.offsets[d] + other.sizes[d]
                    && other.offsets[d] < c.offsets[d] + c.sizes[d]
            });
            if overlap && c.sizes.iter().all(|&s| s > 0) && other.sizes.iter().all(|&s| s > 0) {
                return Err(bad(
                    format!(
                        "{key}: chunks at {:?} and {:?} overlap",
                        other.offsets, c.offsets
                    ),
                    at,
                ));
            }
        }
        volume += c.sizes.iter().map(|&s| s as u64).product::<u64>();
    }
    if volume != numel && numel > 0 {
        return Err(bad(
            format!("{key}: its chunks cover {volume} of its {numel} elements"),
            at,
        ));
    }
    // Open each chunk's archive; its root is the chunk's tensor.
    let mut parts: Vec<(Chunk, Checkpoint, Arc<Tensor>)> = Vec::with_capacity(chunks.len());
    for c in chunks {
        let info = meta
            .storage
            .get(&(key.to_string(), Some(c.offsets.clone())))
            .ok_or_else(|| {
                bad(
                    format!("{key}: no storage for its chunk at {:?}", c.offsets),
                    at,
                )
            })?;
        let chunk_bytes = c
            .sizes
            .iter()
            .map(|&s| s as u64)
            .product::<u64>()
            .saturating_mul(dtype.element_size() as u64);
        let inner = open_item(
            dir,
            info,
            key,
            chunk_bytes.saturating_add(ARCHIVE_SLACK),
            opts,
            sources,
        )?;
        let t = match &inner.root {
            Object::Tensor(t) => t.clone(),
            _ => {
                return Err(bad(
                    format!("{key}: its item is not a tensor"),
                    &info.relative_path,
                ))
            }
        };
        if t.dtype != dtype || t.shape != c.sizes {
            return Err(bad(
                format!(
                    "{key}: item holds a {} tensor of shape {:?}, the metadata says {dtype} {:?}",
                    t.dtype, t.shape, c.sizes
                ),
                &info.relative_path,
            ));
        }
        // A chunk's bytes are really in its archive (no stride-0 view of a few bytes posing as
        // a large chunk): what is assembled is bounded by the files' own sizes.
        let held = t
            .storage
            .and_then(|i| inner.storages.get(i))
            .map_or(0, |s| s.nbytes);
        if held < chunk_bytes {
            return Err(bad(
                format!(
                    "{key}: its chunk at {:?} needs {chunk_bytes} bytes, its item's storage has {held}",
                    c.offsets
                ),
                &info.relative_path,
            ));
        }
        parts.push((c.clone(), inner, t));
    }
    let stride = crate::torch::model::contiguous_strides(size);
    let whole = |t: &Tensor| t.is_contiguous() && t.storage.is_some();
    if let [(c, _, t)] = &parts[..] {
        if c.offsets.iter().all(|&o| o == 0) && whole(t) {
            let mut t = (**t).clone();
            t.storage = t.storage.map(|i| i + base);
            t.requires_grad = requires_grad;
            t.stride = stride;
            let (_, inner, _) = parts.pop().unwrap_or_else(|| unreachable!());
            return Ok((t, vec![inner]));
        }
    }
    // Assemble: each chunk's row-major elements into its box of the full tensor.
    let es = dtype.element_size();
    let mut out = vec![0u8; numel as usize * es];
    for (c, inner, t) in &parts {
        let view = crate::torch::tensor::TensorView::new(key.into(), t.clone(), inner);
        let bytes = view.to_bytes()?;
        let n: u64 = c.sizes.iter().map(|&s| s as u64).product();
        if n == 0 {
            continue;
        }
        // Rows of the chunk's last dimension are contiguous in both.
        let row = c.sizes.last().copied().unwrap_or(1).max(1) as usize * es;
        let rows = n as usize * es / row;
        let mut idx = vec![0i64; nd.saturating_sub(1)];
        for r in 0..rows {
            let mut flat: i64 = 0;
            for d in 0..nd {
                let i = if d + 1 < nd { idx[d] } else { 0 };
                flat += (c.offsets[d] + i) * stride[d];
            }
            let dst = flat as usize * es;
            out[dst..dst + row].copy_from_slice(&bytes[r * row..(r + 1) * row]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < c.sizes[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    let nbytes = out.len() as u64;
    let mut table = StorageTable::default();
    table.intern(format!("assembled/{key}"), || Storage {
        key: key.to_string(),
        dtype,
        location: "cpu".into(),
        nbytes,
        data: Some((0, nbytes)),
        typed: true,
    });
    let mut held = Checkpoint::assemble(
        Format::Dcp,
        Object::None,
        table,
        ByteOrder::Little,
        4,
        ArchiveInfo::default(),
        Vec::new(),
        Source::from_vec(out),
    )?;
    held.records = vec![(
        format!("{key} (assembled from {} chunks)", parts.len()),
        nbytes,
    )];
    let t = Tensor {
        dtype,
        shape: size.to_vec(),
        stride,
        storage_offset: 0,
        requires_grad,
        is_parameter: false,
        storage: Some(base),
        device: None,
        metadata: None,
    };
    Ok((t, vec![held]))
}

/// A tree under construction: dicts in insertion order, lists by index.
enum Node {
    Leaf(Object),
    Dict(Vec<(String, Node)>),
    List(Vec<Option<Node>>),
}

/// Rebuilds the original nesting from `planner_data` paths (dict keys as str, list indices as
/// int), as `dcp_to_torch_save` does; keys without a path stay at the top.
fn nest(
    leaves: Vec<(String, Object)>,
    planner: &HashMap<String, Vec<Object>>,
    at: &str,
) -> Result<Object> {
    let mut root = Node::Dict(Vec::new());
    let n_leaves = leaves.len();
    for (key, obj) in leaves {
        let path = planner
            .get(&key)
            .cloned()
            .unwrap_or_else(|| vec![Object::Str(key.as_str().into())]);
        let mut node = &mut root;
        for (depth, part) in path.iter().enumerate() {
            let last = depth + 1 == path.len();
            let next_is_list = path
                .get(depth + 1)
                .is_some_and(|p| p.as_int().is_some() && !matches!(p, Object::Bool(_)));
            let fresh = || {
                if next_is_list {
                    Node::List(Vec::new())
                } else {
                    Node::Dict(Vec::new())
                }
            };
            node = match (node, part) {
                (Node::Dict(items), Object::Str(k)) => {
                    let pos = match items.iter().position(|(n, _)| n == &**k) {
                        Some(p) => p,
                        None => {
                            items.push((k.to_string(), fresh()));
                            items.len() - 1
                        }
                    };
                    &mut items[pos].1
                }
                (Node::List(xs), Object::Int(i)) => {
                    let i = usize::try_from(*i)
                        .ok()
                        // Every element of a list DCP entered is a key of its own, so no
                        // index reaches the number of keys (sparse indices cost nothing).
                        .filter(|&i| i < n_leaves)
                        .ok_or_else(|| bad(format!("{key}: list index {i} in its path"), at))?;
                    if xs.len() <= i {
                        xs.resize_with(i + 1, || None);
                    }
                    xs[i].get_or_insert_with(fresh)
                }
                _ => {
                    return Err(bad(
                        format!("{key}: its planner path does not fit the tree"),
                        at,
                    ))
                }
            };
            if last {
                *node = Node::Leaf(obj.clone());
            }
        }
    }
    fn build(n: Node) -> Object {
        match n {
            Node::Leaf(o) => o,
            Node::Dict(items) => Object::Dict(
                items
                    .into_iter()
                    .map(|(k, v)| (Object::Str(k.into()), build(v)))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            Node::List(xs) => Object::List(
                xs.into_iter()
                    .map(|x| x.map(build).unwrap_or(Object::None))
                    .collect::<Vec<_>>()
                    .into(),
            ),
        }
    }
    Ok(build(root))
}
