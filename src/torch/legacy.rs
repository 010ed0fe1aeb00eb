//! The legacy stream format (torch < 1.6, `_use_new_zipfile_serialization=False`) and the
//! tar format of torch 0.1.
//!
//! **Stream** (PYTORCH_FORMAT.md §3.1): five pickles back to back (magic number, protocol
//! version 1001, `sys_info`, the object, the sorted list of storage keys), then for each key
//! a little-endian u64 element count and the storage's bytes. Storage persistent ids are
//! `('storage', StorageClass, root_key, location, numel, view_metadata)`.
//!
//! **Tar** (§3.2): a tar archive with members `storages` (storage table and bytes), `tensors`
//! (tensor metadata), `pickle` (the object, whose persistent ids are keys of those tables) and
//! `sys_info`.
//!
//! Every pickle goes through [`crate::torch::interpret::interpret`] (which refuses attack globals),
//! every length and count read from the file is checked against the bytes that remain, and
//! storage bytes stay in the map: only their ranges are recorded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::pickle;
use crate::format::source::Source;
use crate::format::tar::{looks_like_tar, tar_members, TarMember};
use crate::torch::checkpoint::{ArchiveInfo, ByteOrder, Checkpoint, Format, OpenOptions};
use crate::torch::dtype::DType;
use crate::torch::interpret::{
    interpret, storage_class_dtype, storage_nbytes, type_name, PersistentLoad, StorageTable,
};
use crate::torch::model::{Object, Storage, Tensor};

/// The legacy format's magic number, `0x1950a86a20f9469cfc6c`, in decimal.
const MAGIC_DECIMAL: &str = "119547037146038801333356";
/// The magic number as torch pickles it (protocol 2).
const MAGIC_PICKLE: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
/// The only protocol version torch ever wrote.
const PROTOCOL_VERSION: i64 = 1001;
/// Most dimensions of a tensor in the tar `tensors` table.
const MAX_NDIM: i32 = 64;

const HINT_LEGACY: &str = "the file is damaged or truncated; copy or download it again";
const HINT_NOT_CKPT: &str =
    "torch.load reads zip checkpoints, legacy torch.save streams and torch 0.1 tar files only";

/// Opens a non-zip checkpoint: a torch 0.1 tar file or a legacy stream.
pub fn open(source: Source, opts: &OpenOptions) -> Result<Checkpoint> {
    let bytes = source.bytes();
    if looks_like_tar(bytes) {
        return open_tar(source, opts);
    }
    open_stream(source, opts)
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by both formats
// ---------------------------------------------------------------------------------------------

/// A persistent-id handler for pickles that must not have any (the legacy stream's metadata
/// pickles, DCP's `.metadata`).
pub(crate) struct NoPersistentIds;

impl PersistentLoad for NoPersistentIds {
    fn load(&mut self, _pid: &Object, _table: &mut StorageTable, at: &str) -> Result<Object> {
        Err(Error::invalid(
            "unexpected persistent id in a metadata pickle",
            at,
        ))
    }
}

/// One pickle of a multi-pickle stream, parsed at `bytes[pos..]`.
fn parse_at(bytes: &[u8], pos: usize, what: &str, opts: &OpenOptions) -> Result<pickle::Pickle> {
    let rest = bytes.get(pos..).unwrap_or(&[]);
    if rest.is_empty() {
        return Err(Error::format(
            format!("the file ends before the {what} pickle"),
            format!("byte offset {pos}"),
            HINT_LEGACY,
        ));
    }
    pickle::parse(rest, &opts.limits).map_err(|source| Error::Pickle {
        record: format!("{what} pickle at byte offset {pos}"),
        source,
    })
}

/// Parses and interprets a pickle that holds plain data (no persistent ids).
fn value_at(bytes: &[u8], pos: usize, what: &str, opts: &OpenOptions) -> Result<(Object, usize)> {
    let p = parse_at(bytes, pos, what, opts)?;
    let record = format!("{what} pickle at byte offset {pos}");
    let mut scratch = StorageTable::default();
    let o = interpret(
        &p,
        &record,
        &mut NoPersistentIds,
        &mut scratch,
        &opts.interpret,
    )?;
    Ok((o, p.consumed))
}

fn read_u64(bytes: &[u8], pos: usize, what: &str) -> Result<u64> {
    let b = pos
        .checked_add(8)
        .and_then(|end| bytes.get(pos..end))
        .ok_or_else(|| {
            Error::format(
                format!("the file ends inside {what}"),
                format!("byte offset {pos}"),
                HINT_LEGACY,
            )
        })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn read_i64(bytes: &[u8], pos: usize, what: &str) -> Result<i64> {
    read_u64(bytes, pos, what).map(|v| v as i64)
}

/// Longest storage key or location tag accepted (torch writes short ones: `"0"`,
/// `"94388423548768"`, `"cuda:0"`); a longer one is refused before it is copied, so each
/// persistent id costs O(1) however long the strings the file shares between them.
const MAX_TAG: usize = crate::torch::interpret::MAX_LOCATION;

/// The length in bytes of a str, bytes or big int (0 for other objects).
fn raw_len(o: &Object) -> usize {
    match o {
        Object::Str(s) | Object::BigInt(s) => s.len(),
        Object::Bytes(b) => b.len(),
        _ => 0,
    }
}

/// Refuses a key or location longer than [`MAX_TAG`] bytes.
fn check_tag(o: &Object, what: &str, at: &str) -> Result<()> {
    let n = raw_len(o);
    if n > MAX_TAG {
        return Err(Error::invalid(
            format!("{what} is {n} bytes long (more than {MAX_TAG})"),
            at,
        ));
    }
    Ok(())
}

/// A storage key as torch's loaders compare it: the text of a str, or an int's decimal form
/// (borrowed where the file holds it as text).
fn key_of(o: &Object) -> Option<Cow<'_, str>> {
    match o {
        Object::Str(s) => Some(Cow::Borrowed(s)),
        Object::Int(i) => Some(Cow::Owned(i.to_string())),
        Object::BigInt(s) => Some(Cow::Borrowed(s)),
        Object::Bytes(b) => Some(String::from_utf8_lossy(b)),
        _ => None,
    }
}

/// A key as the tar loader uses it (`int(saved_id)`): the decimal form of the integer
/// (None for text longer than [`MAX_TAG`], which is no plausible int).
fn int_key(o: &Object) -> Option<String> {
    if raw_len(o) > MAX_TAG {
        return None;
    }
    match o {
        Object::Int(i) => Some(i.to_string()),
        Object::BigInt(s) => Some(s.to_string()),
        Object::Str(s) => s.trim().parse::<i128>().ok().map(|i| i.to_string()),
        Object::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<i128>().ok())
            .map(|i| i.to_string()),
        _ => None,
    }
}

/// Whether `o` is a str or bytes (what [`text_of`] reads), without copying it.
fn text_of_kind(o: &Object) -> Option<()> {
    matches!(o, Object::Str(_) | Object::Bytes(_)).then_some(())
}

/// The text of a str or bytes (borrowed for a str).
fn text_of(o: &Object) -> Option<Cow<'_, str>> {
    match o {
        Object::Str(s) => Some(Cow::Borrowed(s)),
        Object::Bytes(b) => Some(String::from_utf8_lossy(b)),
        _ => None,
    }
}

/// What a file that is not a checkpoint seems to be, for the error message.
fn sniff(bytes: &[u8]) -> String {
    let starts = |p: &[u8]| bytes.starts_with(p);
    if starts(b"\x89PNG\r\n\x1a\n") {
        return "it is a PNG image".into();
    }
    if starts(b"\xff\xd8\xff") {
        return "it is a JPEG image".into();
    }
    if starts(b"\x1f\x8b") {
        return "it is gzip-compressed data (decompress it first)".into();
    }
    if starts(b"\x93NUMPY") {
        return "it is a NumPy .npy array".into();
    }
    if starts(b"\x89HDF\r\n\x1a\n") {
        return "it is an HDF5 file".into();
    }
    if starts(b"\x7fELF") {
        return "it is an ELF executable or library".into();
    }
    if starts(b"version https://git-lfs") {
        return "it is a Git LFS pointer, not the file itself (run `git lfs pull`)".into();
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        if n > 1 && n <= bytes.len() as u64 - 8 {
            return "it looks like a safetensors file (load it with a safetensors reader)".into();
        }
    }
    let head = &bytes[..bytes.len().min(4096)];
    if let Ok(text) = std::str::from_utf8(head) {
        let t = text.trim_start();
        if t.starts_with('<') {
            return "it is HTML or XML text (a failed download?)".into();
        }
        if t.starts_with('{') || t.starts_with('[') {
            return "it is JSON text".into();
        }
        if text
            .chars()
            .all(|c| !c.is_control() || c.is_ascii_whitespace())
        {
            return "it is text".into();
        }
    }
    if bytes.first() == Some(&0x80) {
        return "it starts like a Python pickle but not with torch's legacy magic number (a plain pickle, not a torch.save file)".into();
    }
    format!(
        "it starts with bytes {} (neither a zip, a tar nor a legacy torch.save stream)",
        bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn not_checkpoint(bytes: &[u8]) -> Error {
    Error::format(
        format!("not a PyTorch checkpoint: {}", sniff(bytes)),
        "byte 0",
        HINT_NOT_CKPT,
    )
}

// ---------------------------------------------------------------------------------------------
// The legacy stream
// ---------------------------------------------------------------------------------------------

/// What a legacy storage persistent id named.
#[derive(Debug, Clone)]
struct RootStorage {
    /// Index in the storage table.
    index: usize,
    /// Element size of the pid's storage class (1 for untyped storages).
    elem_size: u64,
    /// Bytes the pid declared (`numel * elem_size`).
    nbytes: u64,
}

/// A storage that is a slice of a root storage (`view_metadata`).
#[derive(Debug, Clone)]
struct ViewStorage {
    index: usize,
    root_key: String,
    offset_bytes: u64,
}

/// Persistent ids of the legacy stream format.
#[derive(Default)]
struct StreamPersistentLoad {
    roots: HashMap<String, RootStorage>,
    views: HashMap<String, ViewStorage>,
    /// Whether a `torch.storage.UntypedStorage` id was seen (torch.load cannot read those
    /// back from a legacy stream).
    untyped: bool,
}

impl PersistentLoad for StreamPersistentLoad {
    fn load(&mut self, pid: &Object, table: &mut StorageTable, at: &str) -> Result<Object> {
        let items = match pid {
            Object::Tuple(t) => t.clone(),
            other => {
                return Err(Error::invalid(
                    format!(
                        "persistent id is a {}, expected ('storage', type, key, location, numel, view_metadata)",
                        type_name(other)
                    ),
                    at,
                ))
            }
        };
        // The kind is a short word: a longer str is neither (and is not copied).
        let kind = items.first().filter(|k| raw_len(k) <= 16).and_then(text_of);
        match kind.as_deref() {
            // ('module', ModuleClass, source_file, source): torch returns the class.
            Some("module") => {
                return Ok(items.get(1).cloned().unwrap_or(Object::None));
            }
            Some("storage") => {}
            _ => {
                return Err(Error::invalid(
                    "persistent id is neither ('storage', ...) nor ('module', ...)",
                    at,
                ))
            }
        }
        if items.len() < 6 {
            return Err(Error::invalid(
                format!(
                    "storage persistent id has {} items, expected ('storage', type, root_key, location, numel, view_metadata)",
                    items.len()
                ),
                at,
            ));
        }
        let dtype = storage_class_dtype(&items[1], at)?;
        check_tag(&items[2], "storage key", at)?;
        let root_key = key_of(&items[2]).ok_or_else(|| {
            Error::invalid(format!("storage key is a {}", type_name(&items[2])), at)
        })?;
        check_tag(&items[3], "storage location", at)?;
        if text_of_kind(&items[3]).is_none() {
            return Err(Error::invalid("storage location is not a str", at));
        }
        let numel = items[4]
            .as_int()
            .ok_or_else(|| Error::invalid("storage size is not an int", at))?;
        let nbytes = storage_nbytes(numel, dtype, at)?;
        let elem_size = dtype.map(|d| d.element_size()).unwrap_or(1) as u64;
        self.untyped |= dtype.is_none();
        let root = match self.roots.get(root_key.as_ref()) {
            // torch keeps the first storage of a key; later ids only refer to it.
            Some(r) => r.clone(),
            None => {
                let location = text_of(&items[3]).unwrap_or_default().into_owned();
                let index = table.intern(format!("legacy/{root_key}"), || Storage {
                    key: root_key.to_string(),
                    dtype: dtype.unwrap_or(DType::UINT8),
                    location,
                    nbytes,
                    data: None,
                    typed: dtype.is_some(),
                });
                let r = RootStorage {
                    index,
                    elem_size,
                    nbytes,
                };
                self.roots.insert(root_key.to_string(), r.clone());
                r
            }
        };
        match &items[5] {
            Object::None => Ok(Object::Storage(root.index)),
            Object::Tuple(v) | Object::List(v) if v.len() == 3 => {
                check_tag(&v[0], "storage view key", at)?;
                let view_key =
                    key_of(&v[0]).ok_or_else(|| Error::invalid("view key is not a str", at))?;
                if let Some(view) = self.views.get(view_key.as_ref()) {
                    return Ok(Object::Storage(view.index));
                }
                let view_key = view_key.into_owned();
                let (offset, size) = match (v[1].as_int(), v[2].as_int()) {
                    (Some(o), Some(s)) if o >= 0 && s >= 0 => (o as u64, s as u64),
                    _ => {
                        return Err(Error::invalid(
                            "storage view (view_key, offset, size) has a negative or non-int offset or size",
                            at,
                        ))
                    }
                };
                let es = root.elem_size;
                let (offset_bytes, size_bytes) = match (offset.checked_mul(es), size.checked_mul(es)) {
                    (Some(o), Some(s)) if o.checked_add(s).is_some_and(|end| end <= root.nbytes) => (o, s),
                    _ => {
                        return Err(Error::invalid(
                            format!(
                                "storage view {view_key:?} (elements {offset}..{offset}+{size}) lies outside its root storage {root_key:?} of {} bytes",
                                root.nbytes
                            ),
                            at,
                        ))
                    }
                };
                let rs = &table.storages[root.index];
                let (r_dtype, r_typed) = (rs.dtype, rs.typed);
                let r_location = rs.location.clone();
                let index = table.intern(format!("legacy-view/{view_key}"), || Storage {
                    key: view_key.clone(),
                    dtype: r_dtype,
                    location: r_location,
                    nbytes: size_bytes,
                    data: None,
                    typed: r_typed,
                });
                self.views.insert(
                    view_key,
                    ViewStorage {
                        index,
                        root_key: root_key.into_owned(),
                        offset_bytes,
                    },
                );
                Ok(Object::Storage(index))
            }
            other => Err(Error::invalid(
                format!(
                    "storage view metadata is a {}, expected None or (view_key, offset, size)",
                    type_name(other)
                ),
                at,
            )),
        }
    }
}

fn open_stream(source: Source, opts: &OpenOptions) -> Result<Checkpoint> {
    let bytes = source.bytes();
    let mut notes = Vec::new();

    // 1. The magic number.
    if bytes.len() < MAGIC_PICKLE.len() && MAGIC_PICKLE.starts_with(bytes) {
        return Err(Error::format(
            "legacy torch.save file truncated inside its magic number",
            format!("byte offset {}", bytes.len()),
            HINT_LEGACY,
        ));
    }
    let magic = match parse_at(bytes, 0, "magic number", opts) {
        Ok(p) => p,
        Err(_) => return Err(not_checkpoint(bytes)),
    };
    let magic_ok = matches!(magic.node(magic.root), pickle::Node::BigInt(b) if pickle::bigint_to_decimal(b) == MAGIC_DECIMAL);
    if !magic_ok {
        return Err(not_checkpoint(bytes));
    }
    let mut pos = magic.consumed;

    // 2. The protocol version.
    let (version, used) = value_at(bytes, pos, "protocol version", opts)?;
    match version {
        Object::Int(PROTOCOL_VERSION) => {}
        Object::Int(n) => {
            return Err(Error::format(
                format!("invalid protocol version: {n} (torch's legacy format is version {PROTOCOL_VERSION})"),
                format!("byte offset {pos}"),
                "the file was written by an unknown torch serializer",
            ))
        }
        other => {
            return Err(Error::format(
                format!(
                    "invalid protocol version: a {} where the int {PROTOCOL_VERSION} belongs",
                    type_name(&other)
                ),
                format!("byte offset {pos}"),
                HINT_LEGACY,
            ))
        }
    }
    pos += used;

    // 3. sys_info. torch ignores it when loading; storage bytes are little endian whatever
    // the writer's host was (THPStorage_writeFileRaw converts them), so it only informs.
    let (sys_info, used) = value_at(bytes, pos, "sys_info", opts)?;
    pos += used;
    notes.push(format!(
        "legacy torch.save stream (protocol version {PROTOCOL_VERSION}; written by torch < 1.6 or with _use_new_zipfile_serialization=False)"
    ));
    if let Some(Object::Bool(false)) = sys_info.get("little_endian") {
        notes.push(
            "sys_info: written on a big-endian host; storage bytes are little endian in this format all the same, as torch reads them"
                .into(),
        );
    }

    // 4. The object.
    let obj_pos = pos;
    let p = parse_at(bytes, pos, "object", opts)?;
    let record = format!("object pickle at byte offset {obj_pos}");
    let mut table = StorageTable::default();
    let mut pl = StreamPersistentLoad::default();
    let root = interpret(&p, &record, &mut pl, &mut table, &opts.interpret)?;
    let protocol = p.protocol;
    pos += p.consumed;
    if pl.untyped {
        notes.push(
            "note: torch.load cannot read this file back (an UntypedStorage in a legacy stream: \"type object 'torch.storage.UntypedStorage' has no attribute 'dtype'\"); ptfile reads its bytes with the dtypes the tensors give"
                .into(),
        );
    }

    // 5. The sorted storage keys, then each storage's count and bytes.
    let keys_pos = pos;
    let (keys, used) = value_at(bytes, pos, "storage keys", opts)?;
    pos += used;
    let keys: &[Object] = match &keys {
        Object::List(xs) | Object::Tuple(xs) => xs,
        other => {
            return Err(Error::invalid(
                format!(
                    "storage keys pickle is a {}, expected a list of str",
                    type_name(other)
                ),
                format!("byte offset {keys_pos}"),
            ))
        }
    };
    let big_endian_host = matches!(sys_info.get("little_endian"), Some(Object::Bool(false)));
    let mut filled = vec![false; table.storages.len()];
    let keys_at = format!("storage keys pickle at byte offset {keys_pos}");
    for k in keys {
        // Each listed key is checked (and its storage filled) before the next is read, and a
        // key listed twice is refused: the work is bounded by the storages, not the list.
        check_tag(k, "storage key", &keys_at)?;
        let key = key_of(k).ok_or_else(|| {
            Error::invalid(
                format!("storage key list holds a {}", type_name(k)),
                keys_at.clone(),
            )
        })?;
        let key = key.as_ref();
        let root = pl.roots.get(key).cloned().ok_or_else(|| {
            Error::invalid(
                format!("storage key {key:?} is listed after the pickle but no tensor or storage in it uses that key"),
                format!("storage keys pickle at byte offset {keys_pos}"),
            )
        })?;
        let at = format!("storage {key:?} at byte offset {pos}");
        let raw = read_u64(bytes, pos, &format!("the element count of storage {key:?}"))?;
        let expected_count = root.nbytes / root.elem_size.max(1);
        // Writers before torch 1.x wrote the count in host order; accept a big-endian count
        // from a big-endian host.
        let count =
            if raw != expected_count && big_endian_host && raw.swap_bytes() == expected_count {
                raw.swap_bytes()
            } else {
                raw
            };
        let got = count.checked_mul(root.elem_size);
        if got != Some(root.nbytes) {
            return Err(Error::invalid(
                format!(
                    "storage has wrong byte size: expected {} got {}",
                    root.nbytes,
                    got.map(|g| g.to_string())
                        .unwrap_or_else(|| format!("{count} elements of {} bytes", root.elem_size))
                ),
                at,
            ));
        }
        let start = pos as u64 + 8;
        if source.slice(start, root.nbytes).is_none() {
            return Err(Error::format(
                format!(
                    "storage {key:?} needs {} bytes but the file ends after {}",
                    root.nbytes,
                    (bytes.len() as u64).saturating_sub(start)
                ),
                at,
                HINT_LEGACY,
            ));
        }
        if filled[root.index] {
            return Err(Error::invalid(
                format!("storage key {key:?} is listed twice"),
                at,
            ));
        }
        filled[root.index] = true;
        table.storages[root.index].data = Some((start, root.nbytes));
        pos = usize::try_from(start + root.nbytes)
            .map_err(|_| Error::invalid("offset overflow", at.clone()))?;
    }
    fill_views(&mut table, &pl)?;
    if let Some(missing) = table.storages.iter().find(|s| s.data.is_none()) {
        return Err(Error::invalid(
            format!(
                "storage {:?} is used by the pickle but its bytes are not in the file",
                missing.key
            ),
            format!("storage data after byte offset {keys_pos}"),
        ));
    }
    let mut ckpt = Checkpoint::assemble(
        Format::Legacy,
        root,
        table,
        ByteOrder::Little,
        protocol,
        ArchiveInfo::default(),
        Vec::new(),
        source,
    )?;
    ckpt.notes = notes;
    Ok(ckpt)
}

/// Points each view storage at its slice of the root's bytes.
fn fill_views(table: &mut StorageTable, pl: &StreamPersistentLoad) -> Result<()> {
    for (view_key, v) in &pl.views {
        let root = &pl.roots[&v.root_key];
        let Some((off, _)) = table.storages[root.index].data else {
            continue;
        };
        let nbytes = table.storages[v.index].nbytes;
        table.storages[v.index].data = off.checked_add(v.offset_bytes).map(|o| (o, nbytes));
        if table.storages[v.index].data.is_none() {
            return Err(Error::invalid(
                "storage view offset overflows",
                format!("view {view_key:?}"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tar format of torch 0.1
// ---------------------------------------------------------------------------------------------

/// Persistent ids of the tar format's `pickle` member: str (or int) keys into the storage and
/// tensor tables; a tuple (a module class with its source) gives its first item.
struct TarPersistentLoad {
    storages: HashMap<String, usize>,
    tensors: HashMap<String, Arc<Tensor>>,
}

impl PersistentLoad for TarPersistentLoad {
    fn load(&mut self, pid: &Object, _table: &mut StorageTable, at: &str) -> Result<Object> {
        if let Object::Tuple(t) = pid {
            return Ok(t.first().cloned().unwrap_or(Object::None));
        }
        let key = int_key(pid).ok_or_else(|| {
            Error::invalid(
                format!(
                    "persistent id is a {}, expected a storage or tensor key",
                    type_name(pid)
                ),
                at,
            )
        })?;
        if let Some(t) = self.tensors.get(&key) {
            return Ok(Object::Tensor(t.clone()));
        }
        if let Some(&i) = self.storages.get(&key) {
            return Ok(Object::Storage(i));
        }
        Err(Error::invalid(
            format!("persistent id {key} names no storage or tensor of the file"),
            at,
        ))
    }
}

/// Checks that a view lies within a storage of `n_elems` elements.
fn check_view(shape: &[i64], stride: &[i64], offset: i64, n_elems: u64, at: &str) -> Result<()> {
    let bad = |what: String| Err(Error::invalid(what, at));
    if offset < 0 {
        return bad(format!("negative storage offset {offset}"));
    }
    let mut numel: u64 = 1;
    for (&s, &st) in shape.iter().zip(stride) {
        if s < 0 || st < 0 {
            return bad(format!("negative size or stride in {shape:?} / {stride:?}"));
        }
        numel = match numel.checked_mul(s as u64) {
            Some(n) if n <= i64::MAX as u64 => n,
            _ => return bad(format!("shape {shape:?} has more than 2^63 elements")),
        };
    }
    if numel == 0 {
        return Ok(());
    }
    let mut last = offset as u64;
    for (&s, &st) in shape.iter().zip(stride) {
        last = match ((s - 1) as u64)
            .checked_mul(st as u64)
            .and_then(|x| x.checked_add(last))
        {
            Some(l) => l,
            None => {
                return bad(format!(
                    "view of shape {shape:?} and strides {stride:?} overflows"
                ))
            }
        };
    }
    if last >= n_elems {
        return bad(format!(
            "tensor view (offset {offset}, shape {shape:?}, strides {stride:?}) reaches element {last} of a storage of {n_elems} elements"
        ));
    }
    Ok(())
}

fn open_tar(source: Source, opts: &OpenOptions) -> Result<Checkpoint> {
    let bytes = source.bytes();
    let members = tar_members(bytes)?;
    let find = |name: &str| {
        members
            .iter()
            .find(|m| m.name == name || m.name == format!("./{name}"))
    };
    let Some(storages_m) = find("storages") else {
        return Err(Error::format(
            format!(
                "not a PyTorch checkpoint: a tar archive without a 'storages' member (members: {})",
                members
                    .iter()
                    .take(10)
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "byte 0",
            HINT_NOT_CKPT,
        ));
    };
    let missing = |name: &str| {
        Error::format(
            format!("torch 0.1 tar checkpoint without a '{name}' member"),
            "tar members",
            HINT_LEGACY,
        )
    };
    let tensors_m = find("tensors").ok_or_else(|| missing("tensors"))?.clone();
    let pickle_m = find("pickle").ok_or_else(|| missing("pickle"))?.clone();
    let storages_m = storages_m.clone();

    // Each member is read as its own slice: no read can run past the member.
    let member =
        |m: &TarMember| -> &[u8] { &bytes[m.offset as usize..(m.offset + m.size) as usize] };

    // `storages`: pickle(n); n x {pickle((key, location, storage_type)), u64 count, bytes};
    // pickle([(view_key, root_key, offset, numel), ...]).
    let sb = member(&storages_m);
    let mut table = StorageTable::default();
    let mut storages: HashMap<String, usize> = HashMap::new();
    let mut pos = 0usize;
    let at = |pos: usize| {
        format!(
            "tar member 'storages', byte offset {}",
            storages_m.offset + pos as u64
        )
    };
    let (n, used) = value_at(sb, pos, "storage count", opts)?;
    pos += used;
    let n = n
        .as_int()
        .filter(|&n| n >= 0 && (n as u64) <= sb.len() as u64 / 9)
        .ok_or_else(|| Error::invalid("storage count is not a plausible int", at(0)))?;
    for _ in 0..n {
        let (entry, used) = value_at(sb, pos, "storage header", opts)?;
        let here = at(pos);
        pos += used;
        let [key, location, stype] = entry.as_seq().unwrap_or(&[]) else {
            return Err(Error::invalid(
                "storage header is not a (key, location, storage_type) tuple",
                here,
            ));
        };
        let key = int_key(key)
            .ok_or_else(|| Error::invalid("storage key is not an int", here.clone()))?;
        check_tag(location, "storage location", &here)?;
        let location = text_of(location)
            .ok_or_else(|| Error::invalid("storage location is not a str", here.clone()))?
            .into_owned();
        let dtype = storage_class_dtype(stype, &here)?;
        let es = dtype.map(|d| d.element_size()).unwrap_or(1) as u64;
        let count = read_u64(sb, pos, &format!("the element count of storage {key}"))?;
        let nbytes = count.checked_mul(es).ok_or_else(|| {
            Error::invalid(
                format!("storage {key} of {count} elements overflows"),
                here.clone(),
            )
        })?;
        let start = pos as u64 + 8;
        if start
            .checked_add(nbytes)
            .is_none_or(|end| end > sb.len() as u64)
        {
            return Err(Error::format(
                format!(
                    "storage {key} needs {nbytes} bytes but the 'storages' member ends after {}",
                    (sb.len() as u64).saturating_sub(start)
                ),
                here,
                HINT_LEGACY,
            ));
        }
        if storages.contains_key(&key) {
            return Err(Error::invalid(
                format!("storage key {key} appears twice"),
                here,
            ));
        }
        let idx = table.intern(format!("tar/{key}"), || Storage {
            key: key.clone(),
            dtype: dtype.unwrap_or(DType::UINT8),
            location,
            nbytes,
            data: Some((storages_m.offset + start, nbytes)),
            typed: dtype.is_some(),
        });
        storages.insert(key, idx);
        pos = (start + nbytes) as usize;
    }
    let (views, _) = value_at(sb, pos, "storage views", opts)?;
    let view_list: &[Object] = match &views {
        Object::List(v) | Object::Tuple(v) => v,
        other => {
            return Err(Error::invalid(
                format!(
                    "storage view table is a {}, expected a list",
                    type_name(other)
                ),
                at(pos),
            ))
        }
    };
    let mut view_index: HashMap<String, usize> = HashMap::new();
    for v in view_list {
        let here = at(pos);
        let [target, root, offset, numel] = v.as_seq().unwrap_or(&[]) else {
            return Err(Error::invalid(
                "storage view is not a (view_key, root_key, offset, numel) tuple",
                here,
            ));
        };
        let (Some(target), Some(root)) = (int_key(target), int_key(root)) else {
            return Err(Error::invalid("storage view keys are not ints", here));
        };
        let &ri = storages.get(&root).ok_or_else(|| {
            Error::invalid(
                format!("storage view names unknown root storage {root}"),
                here.clone(),
            )
        })?;
        let rs = &table.storages[ri];
        let (r_dtype, r_typed, r_nbytes, r_data) = (rs.dtype, rs.typed, rs.nbytes, rs.data);
        let es = r_dtype.element_size() as u64;
        let (Some(offset), Some(numel)) = (offset.as_int(), numel.as_int()) else {
            return Err(Error::invalid(
                "storage view offset or size is not an int",
                here,
            ));
        };
        let range = (offset >= 0 && numel >= 0)
            .then(|| {
                Some((
                    (offset as u64).checked_mul(es)?,
                    (numel as u64).checked_mul(es)?,
                ))
            })
            .flatten()
            .filter(|(o, s)| o.checked_add(*s).is_some_and(|e| e <= r_nbytes));
        let Some((ob, sbytes)) = range else {
            return Err(Error::invalid(
                format!(
                    "storage view {target} lies outside root storage {root} of {r_nbytes} bytes"
                ),
                here,
            ));
        };
        let (roff, _) = r_data.unwrap_or((0, 0));
        // A view key met before keeps its first storage (the location is copied only for a
        // new one).
        let idx = match view_index.get(&target) {
            Some(&i) => i,
            None => {
                let location = table.storages[ri].location.clone();
                let i = table.intern(format!("tar-view/{target}"), || Storage {
                    key: target.clone(),
                    dtype: r_dtype,
                    location,
                    nbytes: sbytes,
                    data: Some((roff + ob, sbytes)),
                    typed: r_typed,
                });
                view_index.insert(target.clone(), i);
                i
            }
        };
        storages.insert(target, idx);
    }

    // `tensors`: pickle(n); n x {pickle((key, storage_key, tensor_type)), i32 ndim, 4 bytes,
    // ndim x i64 sizes, ndim x i64 strides, i64 storage_offset}.
    let tb = member(&tensors_m);
    let tat = |pos: usize| {
        format!(
            "tar member 'tensors', byte offset {}",
            tensors_m.offset + pos as u64
        )
    };
    let mut tensors: HashMap<String, Arc<Tensor>> = HashMap::new();
    let mut pos = 0usize;
    let (n, used) = value_at(tb, pos, "tensor count", opts)?;
    pos += used;
    let n = n
        .as_int()
        .filter(|&n| n >= 0 && (n as u64) <= tb.len() as u64 / 16)
        .ok_or_else(|| Error::invalid("tensor count is not a plausible int", tat(0)))?;
    for _ in 0..n {
        let (entry, used) = value_at(tb, pos, "tensor header", opts)?;
        let here = tat(pos);
        pos += used;
        let [key, skey, _ttype] = entry.as_seq().unwrap_or(&[]) else {
            return Err(Error::invalid(
                "tensor header is not a (key, storage_key, tensor_type) tuple",
                here,
            ));
        };
        let key =
            int_key(key).ok_or_else(|| Error::invalid("tensor key is not an int", here.clone()))?;
        let skey =
            int_key(skey).ok_or_else(|| Error::invalid("tensor has no storage", here.clone()))?;
        let &si = storages.get(&skey).ok_or_else(|| {
            Error::invalid(
                format!("tensor {key} names unknown storage {skey}"),
                here.clone(),
            )
        })?;
        let nd_bytes = tb.get(pos..pos + 4).ok_or_else(|| {
            Error::format(
                "the file ends inside a tensor's metadata",
                here.clone(),
                HINT_LEGACY,
            )
        })?;
        let ndim = i32::from_le_bytes([nd_bytes[0], nd_bytes[1], nd_bytes[2], nd_bytes[3]]);
        if !(0..=MAX_NDIM).contains(&ndim) {
            return Err(Error::invalid(
                format!("tensor {key} has {ndim} dimensions"),
                here,
            ));
        }
        pos += 8;
        let mut dims = Vec::with_capacity(2 * ndim as usize + 1);
        for i in 0..(2 * ndim as usize + 1) {
            dims.push(read_i64(tb, pos + 8 * i, "a tensor's metadata")?);
        }
        pos += 8 * dims.len();
        let storage_offset = dims.pop().unwrap_or(0);
        let stride = dims.split_off(ndim as usize);
        let shape = dims;
        let st = &table.storages[si];
        let n_elems = st.nbytes / st.dtype.element_size().max(1) as u64;
        check_view(&shape, &stride, storage_offset, n_elems, &here)?;
        tensors.insert(
            key,
            Arc::new(Tensor {
                dtype: st.dtype,
                shape,
                stride,
                storage_offset,
                requires_grad: false,
                is_parameter: false,
                storage: Some(si),
                device: None,
                metadata: None,
            }),
        );
    }

    // `pickle`: the object.
    let pb = member(&pickle_m);
    let p = parse_at(pb, 0, "tar member 'pickle'", opts)?;
    let mut pl = TarPersistentLoad { storages, tensors };
    let root = interpret(
        &p,
        "tar member 'pickle'",
        &mut pl,
        &mut table,
        &opts.interpret,
    )?;
    let records = members.iter().map(|m| (m.name.clone(), m.size)).collect();
    let mut ckpt = Checkpoint::assemble(
        Format::Tar,
        root,
        table,
        ByteOrder::Little,
        p.protocol,
        ArchiveInfo::default(),
        records,
        source,
    )?;
    ckpt.notes = vec![format!(
        "torch 0.1 tar checkpoint (members: {})",
        members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    Ok(ckpt)
}
