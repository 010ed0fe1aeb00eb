//! The torch layer: interprets a parsed pickle ([`crate::format::pickle::Pickle`]) as torch's
//! unpickler would, without calling anything. Globals resolve against torch's own rebuild
//! functions and types; unknown classes stay opaque; attack globals refuse the file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::pickle::{bigint_to_decimal, Call, CallKind, Node, NodeId, Pickle};
use crate::torch::denylist;
use crate::torch::dtype::DType;
use crate::torch::model::{Object, Opaque, OrderedDict, QTensor, SparseTensor, Storage, Tensor};

/// The storages of a checkpoint, deduplicated by record.
#[derive(Debug, Default, Clone)]
pub struct StorageTable {
    /// Storages in first-encounter order.
    pub storages: Vec<Storage>,
    by_record: HashMap<String, usize>,
}

impl StorageTable {
    /// Index of the storage for `record`, adding it when new.
    pub fn intern(&mut self, record: String, make: impl FnOnce() -> Storage) -> usize {
        if let Some(&i) = self.by_record.get(&record) {
            return i;
        }
        let i = self.storages.len();
        self.storages.push(make());
        self.by_record.insert(record, i);
        i
    }
    /// Record names with their storage index.
    pub fn records(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_record.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Turns a persistent id into an object (usually [`Object::Storage`]). Containers differ:
/// zip files name `data/<key>` records, legacy files list storages after the pickle.
pub trait PersistentLoad {
    /// Interprets one persistent id (already converted to objects).
    fn load(&mut self, pid: &Object, table: &mut StorageTable, at: &str) -> Result<Object>;
}

/// Longest storage key or location accepted (torch writes `"0"` and `"cuda:0"`).
pub const MAX_LOCATION: usize = 1024;

/// Parses the storage class of a persistent id: a typed storage gives its dtype, an untyped
/// one None.
pub fn storage_class_dtype(cls: &Object, at: &str) -> Result<Option<DType>> {
    let name = match cls {
        Object::Global(g) => g.to_string(),
        other => {
            return Err(Error::invalid(
                format!("storage type in persistent id is a {}", type_name(other)),
                at,
            ))
        }
    };
    let short = name.rsplit('.').next().unwrap_or(&name);
    if short == "UntypedStorage" || short == "TypedStorage" {
        return Ok(None);
    }
    if let Some(d) = DType::from_storage_class(short) {
        if !d.is_shell() {
            return Ok(Some(d));
        }
    }
    Err(Error::invalid(
        format!("unknown storage type {name}"),
        at.to_string(),
    ))
}

/// `numel * element_size`, checked.
pub fn storage_nbytes(numel: i64, dtype: Option<DType>, at: &str) -> Result<u64> {
    if numel < 0 {
        return Err(Error::invalid(format!("negative storage size {numel}"), at));
    }
    let es = dtype.map(|d| d.element_size()).unwrap_or(1) as u64;
    (numel as u64)
        .checked_mul(es)
        .ok_or_else(|| Error::invalid(format!("storage size {numel} x {es} bytes overflows"), at))
}

/// Options of the interpreter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InterpretOptions {
    /// Deepest nesting of containers accepted.
    pub max_depth: usize,
    /// Reading a `torch.distributed.checkpoint` `.metadata` pickle: its own classes (and
    /// `pathlib` paths) are data there, and only there.
    pub(crate) dcp_metadata: bool,
}

impl Default for InterpretOptions {
    fn default() -> Self {
        InterpretOptions {
            max_depth: 256,
            dcp_metadata: false,
        }
    }
}

/// The globals a `torch.distributed.checkpoint` `.metadata` pickle names (torch 2.15), kept
/// as opaque data in that one context; every other global is judged as anywhere.
const DCP_GLOBALS: &[(&str, &str)] = &[
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    (
        "torch.distributed.checkpoint.metadata",
        "TensorStorageMetadata",
    ),
    (
        "torch.distributed.checkpoint.metadata",
        "ChunkStorageMetadata",
    ),
    (
        "torch.distributed.checkpoint.metadata",
        "BytesStorageMetadata",
    ),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    (
        "torch.distributed.checkpoint.metadata",
        "_MEM_FORMAT_ENCODING",
    ),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
];

/// Scans every global of a pickle and refuses the file if one may only serve an attack.
/// With `dcp`, the DCP metadata classes ([`DCP_GLOBALS`]) are data.
fn check_globals(p: &Pickle, record: &str, dcp: bool) -> Result<()> {
    for n in p.nodes() {
        match n {
            Node::Global(g)
                if denylist::denied(&g.module, &g.name)
                    && !(dcp && DCP_GLOBALS.contains(&(&*g.module, &*g.name))) =>
            {
                return Err(Error::Unsafe {
                    global: format!("{}.{}", g.module, g.name),
                    record: record.to_string(),
                    offset: g.offset,
                });
            }
            Node::Ext { code, offset } => {
                return Err(Error::Unsafe {
                    global: format!("copyreg extension code {code} (EXT opcode)"),
                    record: record.to_string(),
                    offset: *offset,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Interprets `pickle` (from `record`) into an object tree, adding storages to `table`.
pub fn interpret(
    pickle: &Pickle,
    record: &str,
    pl: &mut dyn PersistentLoad,
    table: &mut StorageTable,
    opts: &InterpretOptions,
) -> Result<Object> {
    check_globals(pickle, record, opts.dcp_metadata)?;
    let mut it = Interp {
        p: pickle,
        record,
        pl,
        table,
        shared: shared_nodes(pickle),
        cache: HashMap::new(),
        max_seen: 0,
        in_progress: HashSet::new(),
        path: Vec::new(),
        max_depth: opts.max_depth,
        copied: 0,
        max_copied: 10_000_000,
    };
    it.conv(pickle.root, 0)
}

/// Which nodes are referenced more than once (through the memo). Only those need a cache
/// (so that shared objects stay shared) and cycle detection (a cycle must pass through one).
fn shared_nodes(p: &Pickle) -> Vec<bool> {
    let mut count = vec![0u8; p.len()];
    let mut see = |id: NodeId| {
        if let Some(c) = count.get_mut(id as usize) {
            *c = c.saturating_add(1);
        }
    };
    see(p.root);
    for n in p.nodes() {
        match n {
            Node::Tuple(xs) | Node::List(xs) | Node::Set(xs) | Node::FrozenSet(xs) => {
                xs.iter().copied().for_each(&mut see)
            }
            Node::Dict(ps) => ps.iter().for_each(|&(k, v)| {
                see(k);
                see(v)
            }),
            Node::Call(c) => {
                see(c.callable);
                see(c.args);
                c.kwargs.into_iter().for_each(&mut see);
                c.states.iter().copied().for_each(&mut see);
                c.items.iter().for_each(|&(k, v)| {
                    see(k);
                    see(v)
                });
                c.appends.iter().copied().for_each(&mut see);
            }
            Node::PersId(x) => see(*x),
            _ => {}
        }
    }
    count.into_iter().map(|c| c > 1).collect()
}

/// One step of the key path to the object being interpreted (formatted only for errors).
enum PathSeg {
    Index(usize),
    Key(Object),
}

struct Interp<'a> {
    p: &'a Pickle,
    record: &'a str,
    pl: &'a mut dyn PersistentLoad,
    table: &'a mut StorageTable,
    shared: Vec<bool>,
    /// Converted shared nodes, with the height of their subtree (in conversion depth).
    cache: HashMap<NodeId, (Object, usize)>,
    /// Deepest conversion depth reached so far (heights of cached subtrees count).
    max_seen: usize,
    in_progress: HashSet<NodeId>,
    path: Vec<PathSeg>,
    max_depth: usize,
    copied: usize,
    max_copied: usize,
}

/// A Python-ish name for an object's type, for messages.
pub fn type_name(o: &Object) -> &'static str {
    match o {
        Object::None => "None",
        Object::Bool(_) => "bool",
        Object::Int(_) | Object::BigInt(_) => "int",
        Object::Float(_) => "float",
        Object::Complex(..) => "complex",
        Object::Str(_) => "str",
        Object::Bytes(_) => "bytes",
        Object::ByteArray(_) => "bytearray",
        Object::Tuple(_) => "tuple",
        Object::List(_) => "list",
        Object::Set(_) => "set",
        Object::FrozenSet(_) => "frozenset",
        Object::Dict(_) => "dict",
        Object::OrderedDict(_) => "OrderedDict",
        Object::Tensor(_) => "tensor",
        Object::QTensor(_) => "quantized tensor",
        Object::SparseTensor(_) => "sparse tensor",
        Object::Storage(_) => "storage",
        Object::Size(_) => "torch.Size",
        Object::Dtype(_) => "dtype",
        Object::Device(_) => "device",
        Object::Named(_) => "constant",
        Object::Global(_) => "class",
        Object::Opaque(_) => "object",
        Object::ScriptModule(_) => "script module",
        Object::Cycle => "cyclic reference",
    }
}

impl Interp<'_> {
    fn at(&self) -> String {
        let mut s = self.record.to_string();
        if !self.path.is_empty() {
            s.push_str(", key ");
            let segs: Vec<String> = self
                .path
                .iter()
                .map(|p| match p {
                    PathSeg::Index(i) => i.to_string(),
                    PathSeg::Key(k) => crate::torch::model::key_text(k),
                })
                .collect();
            s.push_str(&segs.join("."));
        }
        s
    }

    fn invalid(&self, what: impl Into<String>) -> Error {
        Error::invalid(what, self.at())
    }

    fn conv_all(&mut self, ids: &[NodeId], depth: usize) -> Result<Vec<Object>> {
        let mut v = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            self.path.push(PathSeg::Index(i));
            let r = self.conv(id, depth + 1);
            self.path.pop();
            v.push(r?);
        }
        Ok(v)
    }

    fn conv_pairs(
        &mut self,
        pairs: &[(NodeId, NodeId)],
        depth: usize,
    ) -> Result<Vec<(Object, Object)>> {
        let mut v = Vec::with_capacity(pairs.len());
        for &(k, val) in pairs {
            let k = self.conv(k, depth + 1)?;
            self.path.push(PathSeg::Key(k.clone()));
            let r = self.conv(val, depth + 1);
            self.path.pop();
            v.push((k, r?));
        }
        Ok(v)
    }

    fn conv(&mut self, id: NodeId, depth: usize) -> Result<Object> {
        if depth > self.max_depth {
            return Err(self.invalid(format!(
                "objects nested deeper than {} levels",
                self.max_depth
            )));
        }
        let node = self.p.node(id);
        match node {
            Node::None => return Ok(Object::None),
            Node::Bool(b) => return Ok(Object::Bool(*b)),
            Node::Int(i) => return Ok(Object::Int(*i)),
            Node::Float(f) => return Ok(Object::Float(*f)),
            _ => {}
        }
        self.max_seen = self.max_seen.max(depth);
        if !self.shared.get(id as usize).copied().unwrap_or(true) {
            return self.conv_uncached(node, depth);
        }
        if let Some((o, height)) = self.cache.get(&id) {
            // A shared subtree reused deeper than it was built: the nesting it brings counts,
            // so memoized subtrees cannot stack past the limit.
            let reach = depth + height;
            if reach > self.max_depth {
                return Err(self.invalid(format!(
                    "objects nested deeper than {} levels (through shared subtrees)",
                    self.max_depth
                )));
            }
            let o = o.clone();
            self.max_seen = self.max_seen.max(reach);
            return Ok(o);
        }
        if !self.in_progress.insert(id) {
            return Ok(Object::Cycle);
        }
        let before = self.max_seen;
        self.max_seen = depth;
        let r = self.conv_uncached(node, depth);
        let height = self.max_seen - depth;
        self.max_seen = before.max(self.max_seen);
        self.in_progress.remove(&id);
        let o = r?;
        self.cache.insert(id, (o.clone(), height));
        Ok(o)
    }

    fn conv_uncached(&mut self, node: &Node, depth: usize) -> Result<Object> {
        Ok(match node {
            Node::None => Object::None,
            Node::Bool(b) => Object::Bool(*b),
            Node::Int(i) => Object::Int(*i),
            Node::Float(f) => Object::Float(*f),
            Node::BigInt(b) => Object::BigInt(bigint_to_decimal(b).into()),
            Node::Str(s) => Object::Str(Arc::from(&**s)),
            // Python 3 decodes py2 str with encoding='utf-8' by default (torch.load).
            Node::ByteStr(b) => Object::Str(String::from_utf8_lossy(b).into()),
            Node::Bytes(b) => Object::Bytes(Arc::from(&**b)),
            Node::ByteArray(b) => Object::ByteArray(Arc::from(&**b)),
            Node::Tuple(xs) => Object::Tuple(self.conv_all(xs, depth)?.into()),
            Node::List(xs) => Object::List(self.conv_all(xs, depth)?.into()),
            Node::Set(xs) => Object::Set(self.conv_all(xs, depth)?.into()),
            Node::FrozenSet(xs) => Object::FrozenSet(self.conv_all(xs, depth)?.into()),
            Node::Dict(pairs) => Object::Dict(self.conv_pairs(pairs, depth)?.into()),
            Node::Global(g) => global_value(&g.module, &g.name),
            Node::PersId(pid) => {
                let pid = self.conv(*pid, depth + 1)?;
                let at = self.at();
                self.pl.load(&pid, self.table, &at)?
            }
            Node::Ext { code, offset } => {
                return Err(Error::Unsafe {
                    global: format!("copyreg extension code {code} (EXT opcode)"),
                    record: self.record.to_string(),
                    offset: *offset,
                })
            }
            Node::Call(call) => self.call(call, depth)?,
        })
    }

    fn global_name(&self, id: NodeId) -> Option<(String, String)> {
        match self.p.node(id) {
            Node::Global(g) => Some((
                denylist::canonical_module(&g.module).to_string(),
                g.name.to_string(),
            )),
            _ => None,
        }
    }

    fn args(&mut self, call: &Call, depth: usize) -> Result<Vec<Object>> {
        match self.p.node(call.args) {
            Node::Tuple(xs) => {
                let xs = xs.clone();
                self.conv_all(&xs, depth)
            }
            other => Err(self.invalid(format!(
                "call arguments are a {}, not a tuple",
                crate::format::pickle::kind_name(other)
            ))),
        }
    }

    fn call(&mut self, call: &Call, depth: usize) -> Result<Object> {
        if depth > self.max_depth {
            return Err(self.invalid(format!(
                "objects nested deeper than {} levels",
                self.max_depth
            )));
        }
        let Some((module, name)) = self.global_name(call.callable) else {
            // A class given by a persistent id (the legacy format's ('module', cls, ...)).
            if let Node::PersId(_) = self.p.node(call.callable) {
                if let Object::Global(g) = self.conv(call.callable, depth + 1)? {
                    return self.opaque(g.to_string(), call, depth);
                }
            }
            // Calling something that is not a global (a value built earlier): keep it opaque.
            return self.opaque("<call>".to_string(), call, depth);
        };
        let qual = format!("{module}.{name}");
        let simple_reduce = call.kind == CallKind::Reduce;
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2")
            | ("torch._utils", "_rebuild_tensor_v3")
            | ("torch._utils", "_rebuild_tensor") => {
                let args = self.args(call, depth)?;
                let t = self.rebuild_tensor(&name, &args)?;
                let t = self.apply_tensor_state(t, call, depth)?;
                Ok(Object::Tensor(Arc::new(t)))
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                let args = self.args(call, depth)?;
                if args.len() < 3 {
                    return Err(
                        self.invalid(format!("{name} needs 3 arguments, got {}", args.len()))
                    );
                }
                let mut t = match &args[0] {
                    Object::Tensor(t) => (**t).clone(),
                    other => {
                        return Err(self.invalid(format!(
                            "{name} of a {}, expected a tensor",
                            type_name(other)
                        )))
                    }
                };
                t.is_parameter = true;
                t.requires_grad = self.bool_arg(&args[1], "requires_grad")?;
                Ok(Object::Tensor(Arc::new(t)))
            }
            ("torch._utils", "_rebuild_meta_tensor_no_storage") => {
                let args = self.args(call, depth)?;
                if args.len() < 4 {
                    return Err(self.invalid(format!(
                        "_rebuild_meta_tensor_no_storage needs 4 arguments, got {}",
                        args.len()
                    )));
                }
                let dtype = match &args[0] {
                    Object::Dtype(d) => *d,
                    _ => return Err(self.invalid("meta tensor dtype is not a dtype")),
                };
                let shape = self.int_list(&args[1], "size")?;
                let stride = self.int_list(&args[2], "stride")?;
                self.check_shape(&shape, &stride)?;
                Ok(Object::Tensor(Arc::new(Tensor {
                    dtype,
                    shape,
                    stride,
                    storage_offset: 0,
                    requires_grad: self.bool_arg(&args[3], "requires_grad")?,
                    is_parameter: false,
                    storage: None,
                    device: Some("meta".into()),
                    metadata: None,
                })))
            }
            ("torch._utils", "_rebuild_qtensor") => {
                let args = self.args(call, depth)?;
                self.rebuild_qtensor(&args)
            }
            ("torch._utils", "_rebuild_sparse_tensor") => {
                let args = self.args(call, depth)?;
                self.rebuild_sparse(&args)
            }
            ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._utils", "_rebuild_from_type_v2") => {
                // (func, new_type, args, state): rebuild with func(*args); the subclass and
                // its Python attributes are kept only as far as Parameter goes.
                let (func, ty, inner) = match self.p.node(call.args) {
                    Node::Tuple(xs) if xs.len() >= 3 => (xs[0], xs[1], xs[2]),
                    _ => {
                        return Err(
                            self.invalid("_rebuild_from_type_v2 needs (func, type, args, state)")
                        )
                    }
                };
                let inner_call = Call {
                    kind: CallKind::Reduce,
                    callable: func,
                    args: inner,
                    kwargs: None,
                    states: Vec::new(),
                    items: Vec::new(),
                    appends: Vec::new(),
                };
                let o = self.call(&inner_call, depth + 1)?;
                let is_param = matches!(self.global_name(ty), Some((m, n)) if m == "torch.nn.parameter" && n == "Parameter");
                match (o, is_param) {
                    (Object::Tensor(t), true) => {
                        let mut t = (*t).clone();
                        t.is_parameter = true;
                        Ok(Object::Tensor(Arc::new(t)))
                    }
                    (o, _) => Ok(o),
                }
            }
            ("collections", "OrderedDict") => {
                let args = self.args(call, depth)?;
                let mut items = Vec::new();
                if let Some(first) = args.first() {
                    items.extend(self.pairs_from(first)?);
                }
                items.extend(self.conv_pairs(&call.items, depth)?);
                let mut metadata = None;
                for &s in &call.states {
                    let st = self.conv(s, depth + 1)?;
                    if let Some(m) = st.get("_metadata") {
                        metadata = Some(m.clone());
                    }
                }
                Ok(Object::OrderedDict(Arc::new(OrderedDict {
                    items,
                    metadata,
                })))
            }
            ("torch", "Size") if simple_reduce => {
                let args = self.args(call, depth)?;
                let dims = match args.first() {
                    Some(a) => self.int_list(a, "torch.Size")?,
                    None => Vec::new(),
                };
                Ok(Object::Size(dims.into()))
            }
            ("torch", "device") if simple_reduce => {
                let args = self.args(call, depth)?;
                let ty = args
                    .first()
                    .and_then(|a| a.as_str())
                    .ok_or_else(|| self.invalid("torch.device needs a str"))?;
                let s = match args.get(1).and_then(|a| a.as_int()) {
                    Some(i) => format!("{ty}:{i}"),
                    None => ty.to_string(),
                };
                Ok(Object::Device(s.into()))
            }
            ("builtins", "set") | ("builtins", "frozenset") if simple_reduce => {
                let args = self.args(call, depth)?;
                let items: Vec<Object> = match args.first() {
                    Some(Object::List(x))
                    | Some(Object::Tuple(x))
                    | Some(Object::Set(x))
                    | Some(Object::FrozenSet(x)) => {
                        self.charge(x.len())?;
                        x.to_vec()
                    }
                    None => Vec::new(),
                    Some(o) => return Err(self.invalid(format!("{name}() of a {}", type_name(o)))),
                };
                Ok(if name == "set" {
                    Object::Set(items.into())
                } else {
                    Object::FrozenSet(items.into())
                })
            }
            ("builtins", "complex") if simple_reduce => {
                let args = self.args(call, depth)?;
                let num = |o: Option<&Object>| match o {
                    Some(Object::Float(f)) => Some(*f),
                    Some(Object::Int(i)) => Some(*i as f64),
                    Some(Object::Bool(b)) => Some(*b as i64 as f64),
                    None => Some(0.0),
                    _ => None,
                };
                match (num(args.first()), num(args.get(1))) {
                    (Some(re), Some(im)) => Ok(Object::Complex(re, im)),
                    _ => Err(self.invalid("complex() of non-numbers")),
                }
            }
            ("builtins", "bytearray") | ("builtins", "bytes") if simple_reduce => {
                let args = self.args(call, depth)?;
                let b = match args.first() {
                    None => Vec::new(),
                    Some(Object::Bytes(b)) | Some(Object::ByteArray(b)) => {
                        self.charge(b.len() / 8)?;
                        b.to_vec()
                    }
                    Some(Object::Str(s)) => latin1(s).ok_or_else(|| {
                        self.invalid("bytearray() of a str with characters past U+00FF")
                    })?,
                    Some(Object::List(xs)) => xs
                        .iter()
                        .map(|x| x.as_int().and_then(|v| u8::try_from(v).ok()))
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| self.invalid("bytearray() of a list with non-byte items"))?,
                    Some(o) => {
                        return Err(self.invalid(format!("bytearray() of a {}", type_name(o))))
                    }
                };
                Ok(if name == "bytes" {
                    Object::Bytes(b.into())
                } else {
                    Object::ByteArray(b.into())
                })
            }
            ("_codecs", "encode") if simple_reduce => {
                let args = self.args(call, depth)?;
                let s = args
                    .first()
                    .and_then(|a| a.as_str())
                    .ok_or_else(|| self.invalid("_codecs.encode needs a str"))?;
                let enc = args.get(1).and_then(|a| a.as_str()).unwrap_or("utf-8");
                let b = match enc.to_ascii_lowercase().replace('_', "-").as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => latin1(s)
                        .ok_or_else(|| self.invalid("latin1 text with characters past U+00FF"))?,
                    "utf-8" | "utf8" => s.as_bytes().to_vec(),
                    "ascii" => {
                        if !s.is_ascii() {
                            return Err(self.invalid("ascii text with non-ASCII characters"));
                        }
                        s.as_bytes().to_vec()
                    }
                    other => {
                        return Err(self.invalid(format!(
                            "_codecs.encode with unsupported encoding {other:?}"
                        )))
                    }
                };
                Ok(Object::Bytes(b.into()))
            }
            ("torch.serialization", "_get_layout") if simple_reduce => {
                let args = self.args(call, depth)?;
                let s = args
                    .first()
                    .and_then(|a| a.as_str())
                    .ok_or_else(|| self.invalid("_get_layout needs a str"))?;
                Ok(Object::Named(s.into()))
            }
            ("torch.jit._pickle", "restore_type_tag") => {
                let args = self.args(call, depth)?;
                Ok(args.into_iter().next().unwrap_or(Object::None))
            }
            ("torch.jit._pickle", n) if n.starts_with("build_") => {
                let args = self.args(call, depth)?;
                Ok(args.into_iter().next().unwrap_or(Object::None))
            }
            _ => self.opaque(qual, call, depth),
        }
    }

    fn opaque(&mut self, class: String, call: &Call, depth: usize) -> Result<Object> {
        let args = self.args(call, depth)?;
        // copyreg._reconstructor(cls, base, state) and __newobj__ carry the real class first.
        let (class, args) = match (class.as_str(), args.first()) {
            ("copyreg._reconstructor", Some(Object::Global(c))) => {
                (c.to_string(), args[1..].to_vec())
            }
            ("copyreg.__newobj__", Some(Object::Global(c))) => (c.to_string(), args[1..].to_vec()),
            // numpy arrays: _reconstruct(numpy.ndarray, shape, dtype code) then BUILD.
            (
                "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct",
                Some(Object::Global(c)),
            ) => (c.to_string(), args),
            // numpy dtypes are instances of one class per kind (numpy >= 1.25).
            ("numpy.dtype", Some(Object::Str(code))) => match numpy_types(code) {
                Some((c, _)) => (format!("numpy.dtypes.{c}"), args),
                None => (class, args),
            },
            // numpy scalars: scalar(dtype, raw bytes). float64 and complex128 are Python float
            // and complex subclasses, so they are those values; others are numpy.<type>.
            ("numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar", Some(dtype)) => {
                if let Some(value) = numpy_python_scalar(dtype, args.get(1)) {
                    return Ok(value);
                }
                match numpy_dtype_code(dtype)
                    .and_then(numpy_types)
                    .and_then(|t| t.1)
                {
                    Some(t) => (format!("numpy.{t}"), args),
                    None => (class, args),
                }
            }
            _ => (class, args),
        };
        let kwargs = match call.kwargs {
            Some(k) => Some(self.conv(k, depth + 1)?),
            None => None,
        };
        let mut state = None;
        for &s in &call.states {
            state = Some(self.conv(s, depth + 1)?);
        }
        let items = self.conv_pairs(&call.items, depth)?;
        let appends = self.conv_all(&call.appends, depth)?;
        Ok(Object::Opaque(Arc::new(Opaque {
            class,
            args,
            kwargs,
            state,
            items,
            appends,
        })))
    }

    /// Charges `n` copied items against the copy budget: a memoized container handed to
    /// many constructors (`OrderedDict(d)`, `set(x)`) must not cost its size each time.
    fn charge(&mut self, n: usize) -> Result<()> {
        self.copied = self.copied.saturating_add(n);
        if self.copied > self.max_copied {
            return Err(self.invalid(format!(
                "constructors copy more than {} items in all (a memoized container reused many times)",
                self.max_copied
            )));
        }
        Ok(())
    }

    fn pairs_from(&mut self, o: &Object) -> Result<Vec<(Object, Object)>> {
        let n = match o {
            Object::List(xs) | Object::Tuple(xs) => xs.len(),
            Object::Dict(d) => d.len(),
            Object::OrderedDict(d) => d.items.len(),
            _ => 0,
        };
        self.charge(n)?;
        match o {
            Object::List(xs) | Object::Tuple(xs) => xs
                .iter()
                .map(|x| match x.as_seq() {
                    Some([k, v]) => {
                        // Keys of dicts the pickle builds itself are checked by the pickle
                        // machine, at their opcode; these come from OrderedDict's argument.
                        if let Some(t) = self.unhashable(k)? {
                            return Err(self.invalid(format!(
                                "TypeError: unhashable type: '{t}' (a {t} used as an \
                                 OrderedDict key; torch.load refuses the file the same way)"
                            )));
                        }
                        Ok((k.clone(), v.clone()))
                    }
                    _ => Err(self.invalid("OrderedDict item is not a (key, value) pair")),
                })
                .collect(),
            Object::Dict(d) => Ok(d.to_vec()),
            Object::OrderedDict(d) => Ok(d.items.clone()),
            other => Err(self.invalid(format!("OrderedDict() of a {}", type_name(other)))),
        }
    }

    /// Python's type name of `o` when Python cannot hash it (a list, dict, set, bytearray,
    /// OrderedDict, or a tuple holding one). The tuples looked into are charged to the copy
    /// budget, so a key shared many times cannot make this quadratic.
    fn unhashable(&mut self, o: &Object) -> Result<Option<&'static str>> {
        Ok(match o {
            Object::List(_) => Some("list"),
            Object::Dict(_) => Some("dict"),
            Object::Set(_) => Some("set"),
            Object::ByteArray(_) => Some("bytearray"),
            Object::OrderedDict(_) => Some("collections.OrderedDict"),
            Object::Tuple(xs) => {
                self.charge(xs.len())?;
                for x in xs.iter() {
                    if let Some(t) = self.unhashable(x)? {
                        return Ok(Some(t));
                    }
                }
                None
            }
            _ => None,
        })
    }

    fn bool_arg(&self, o: &Object, what: &str) -> Result<bool> {
        match o {
            Object::Bool(b) => Ok(*b),
            Object::Int(i) => Ok(*i != 0),
            Object::None => Ok(false),
            other => {
                Err(self.invalid(format!("{what} is a {}, expected a bool", type_name(other))))
            }
        }
    }

    fn int_list(&self, o: &Object, what: &str) -> Result<Vec<i64>> {
        let xs: &[Object] = match o {
            Object::Tuple(x) | Object::List(x) => x,
            Object::Size(s) => return Ok(s.to_vec()),
            other => {
                return Err(self.invalid(format!(
                    "{what} is a {}, expected a tuple of ints",
                    type_name(other)
                )))
            }
        };
        if xs.len() > 64 {
            return Err(self.invalid(format!("{what} has {} dimensions (more than 64)", xs.len())));
        }
        xs.iter()
            .map(|x| {
                x.as_int().ok_or_else(|| {
                    self.invalid(format!("{what} holds a {}, expected ints", type_name(x)))
                })
            })
            .collect()
    }

    fn check_shape(&self, shape: &[i64], stride: &[i64]) -> Result<()> {
        if shape.len() != stride.len() {
            return Err(self.invalid(format!(
                "tensor has {} sizes but {} strides",
                shape.len(),
                stride.len()
            )));
        }
        let mut numel: u64 = 1;
        for (&s, &st) in shape.iter().zip(stride) {
            if s < 0 {
                return Err(self.invalid(format!("negative size {s} in shape {shape:?}")));
            }
            if st < 0 {
                return Err(self.invalid(format!("negative stride {st} in strides {stride:?}")));
            }
            numel = numel
                .checked_mul(s as u64)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    self.invalid(format!("shape {shape:?} has more than 2^63 elements"))
                })?;
        }
        Ok(())
    }

    /// Checks a view (offset, shape, stride) lies within a storage of `n_elems` elements.
    fn check_view(
        &self,
        shape: &[i64],
        stride: &[i64],
        offset: i64,
        n_elems: u64,
        key: &str,
    ) -> Result<()> {
        self.check_shape(shape, stride)?;
        if offset < 0 {
            return Err(self.invalid(format!("negative storage offset {offset}")));
        }
        if shape.contains(&0) {
            return Ok(());
        }
        let mut last: u64 = offset as u64;
        for (&s, &st) in shape.iter().zip(stride) {
            let span = ((s - 1) as u64).checked_mul(st as u64);
            last = span.and_then(|sp| last.checked_add(sp)).ok_or_else(|| {
                self.invalid(format!(
                    "view of shape {shape:?} and strides {stride:?} overflows"
                ))
            })?;
        }
        if last >= n_elems {
            return Err(self.invalid(format!(
                "tensor view (offset {offset}, shape {shape:?}, strides {stride:?}) reaches element {last} of storage {key:?}, which has {n_elems} elements"
            )));
        }
        Ok(())
    }

    fn rebuild_tensor(&mut self, fname: &str, args: &[Object]) -> Result<Tensor> {
        let need = match fname {
            "_rebuild_tensor" => 4,
            "_rebuild_tensor_v2" => 6,
            _ => 7,
        };
        // The optional last argument is the metadata dict (v2, v3).
        let most = if need == 4 { 4 } else { need + 1 };
        if args.len() < need || args.len() > most {
            return Err(self.invalid(format!(
                "{fname} takes {need} to {most} arguments, got {}",
                args.len()
            )));
        }
        let sidx = match &args[0] {
            Object::Storage(i) => *i,
            other => {
                return Err(self.invalid(format!(
                    "{fname} of a {}, expected a storage",
                    type_name(other)
                )))
            }
        };
        let storage_offset = args[1]
            .as_int()
            .ok_or_else(|| self.invalid("storage offset is not an int"))?;
        let shape = self.int_list(&args[2], "size")?;
        let stride = self.int_list(&args[3], "stride")?;
        let requires_grad = if need >= 6 {
            self.bool_arg(&args[4], "requires_grad")?
        } else {
            false
        };
        let st = self.table.storages[sidx].clone();
        let dtype = if fname == "_rebuild_tensor_v3" {
            match &args[6] {
                Object::Dtype(d) => *d,
                other => {
                    return Err(self.invalid(format!(
                        "_rebuild_tensor_v3 dtype is a {}",
                        type_name(other)
                    )))
                }
            }
        } else {
            st.dtype
        };
        if dtype.is_shell() {
            return Err(self.invalid(format!("tensor of shell dtype {dtype} cannot hold data")));
        }
        if st.typed && st.dtype != dtype && st.dtype.element_size() != dtype.element_size() {
            return Err(self.invalid(format!(
                "tensor of dtype {dtype} views storage {:?} of dtype {}",
                st.key, st.dtype
            )));
        }
        let n_elems = st.nbytes / dtype.element_size() as u64;
        self.check_view(&shape, &stride, storage_offset, n_elems, &st.key)?;
        if !st.typed && st.dtype == DType::UINT8 {
            // Untyped storages take their element type from the first tensor viewing them
            // (they stay untyped: torch never byte-swaps them).
            self.table.storages[sidx].dtype = dtype;
        }
        let metadata = match args.get(need) {
            Some(Object::None) | None => None,
            Some(m) => Some(m.clone()),
        };
        Ok(Tensor {
            dtype,
            shape,
            stride,
            storage_offset,
            requires_grad,
            is_parameter: false,
            storage: Some(sidx),
            device: None,
            metadata,
        })
    }

    /// BUILD on a tensor (old files set requires_grad and hooks that way).
    fn apply_tensor_state(&mut self, mut t: Tensor, call: &Call, depth: usize) -> Result<Tensor> {
        for &s in &call.states {
            if let Object::Tuple(xs) = self.conv(s, depth + 1)? {
                if let Some(Object::Bool(rg)) = xs.get(1) {
                    t.requires_grad = *rg;
                }
            }
        }
        Ok(t)
    }

    fn rebuild_qtensor(&mut self, args: &[Object]) -> Result<Object> {
        if args.len() < 5 {
            return Err(self.invalid(format!(
                "_rebuild_qtensor needs 7 arguments, got {}",
                args.len()
            )));
        }
        let sidx = match &args[0] {
            Object::Storage(i) => *i,
            o => return Err(self.invalid(format!("_rebuild_qtensor of a {}", type_name(o)))),
        };
        let storage_offset = args[1]
            .as_int()
            .ok_or_else(|| self.invalid("storage offset is not an int"))?;
        let shape = self.int_list(&args[2], "size")?;
        let stride = self.int_list(&args[3], "stride")?;
        let st = self.table.storages[sidx].clone();
        let n_elems = st.nbytes / st.dtype.element_size() as u64;
        self.check_view(&shape, &stride, storage_offset, n_elems, &st.key)?;
        let params = args[4]
            .as_seq()
            .ok_or_else(|| self.invalid("quantizer parameters are not a tuple"))?;
        let qscheme = match params.first() {
            Some(Object::Named(n)) => n.to_string(),
            Some(Object::Global(g)) => g.to_string(),
            _ => return Err(self.invalid("quantizer parameters do not start with a qscheme")),
        };
        let mut q = QTensor {
            int_repr: Tensor {
                dtype: st.dtype,
                shape,
                stride,
                storage_offset,
                requires_grad: false,
                is_parameter: false,
                storage: Some(sidx),
                device: None,
                metadata: None,
            },
            qscheme: qscheme.clone(),
            scale: None,
            zero_point: None,
            scales: None,
            zero_points: None,
            axis: None,
        };
        let num = |o: Option<&Object>| match o {
            Some(Object::Float(f)) => Some(*f),
            Some(Object::Int(i)) => Some(*i as f64),
            _ => None,
        };
        if qscheme.ends_with("per_tensor_affine") || qscheme.ends_with("per_tensor_symmetric") {
            q.scale = num(params.get(1));
            q.zero_point = params.get(2).and_then(|z| z.as_int());
            if q.scale.is_none() || q.zero_point.is_none() {
                return Err(self.invalid("per-tensor quantizer needs (qscheme, scale, zero_point)"));
            }
        } else if qscheme.contains("per_channel") {
            q.scales = params.get(1).and_then(|t| t.as_tensor()).cloned();
            q.zero_points = params.get(2).and_then(|t| t.as_tensor()).cloned();
            q.axis = params.get(3).and_then(|a| a.as_int());
            if q.scales.is_none() || q.zero_points.is_none() || q.axis.is_none() {
                return Err(self
                    .invalid("per-channel quantizer needs (qscheme, scales, zero_points, axis)"));
            }
        } else {
            return Err(Error::Unsupported {
                what: format!("quantization scheme {qscheme}"),
                location: self.at(),
                hint: "per-tensor and per-channel affine tensors are supported".into(),
            });
        }
        Ok(Object::QTensor(Arc::new(q)))
    }

    fn rebuild_sparse(&mut self, args: &[Object]) -> Result<Object> {
        let layout = match args.first() {
            Some(Object::Named(n)) => n.to_string(),
            Some(Object::Global(g)) => g.to_string(),
            _ => return Err(self.invalid("_rebuild_sparse_tensor needs a layout")),
        };
        let data = args
            .get(1)
            .and_then(|d| d.as_seq())
            .ok_or_else(|| self.invalid("_rebuild_sparse_tensor data is not a tuple"))?;
        let tensors: Vec<Arc<Tensor>> =
            data.iter().filter_map(|x| x.as_tensor().cloned()).collect();
        let shape_obj = if layout.ends_with("sparse_coo") {
            data.get(2)
        } else {
            data.get(3)
        };
        let shape = match shape_obj {
            Some(o) => self.int_list(o, "sparse size")?,
            None => return Err(self.invalid("_rebuild_sparse_tensor data has no size")),
        };
        let need = if layout.ends_with("sparse_coo") { 2 } else { 3 };
        if tensors.len() < need {
            return Err(self.invalid(format!("{layout} tensor needs {need} component tensors")));
        }
        Ok(Object::SparseTensor(Arc::new(SparseTensor {
            layout,
            shape,
            parts: tensors,
        })))
    }
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(c as u32).ok()).collect()
}

/// What a global means when used as a value (not called).
fn global_value(module: &str, name: &str) -> Object {
    let module = denylist::canonical_module(module);
    if module == "torch" {
        if let Some(d) = DType::from_name(name) {
            return Object::Dtype(d);
        }
        if matches!(
            name,
            "per_tensor_affine"
                | "per_channel_affine"
                | "per_tensor_symmetric"
                | "per_channel_symmetric"
                | "per_channel_affine_float_qparams"
                | "sparse_coo"
                | "sparse_csr"
                | "sparse_csc"
                | "sparse_bsr"
                | "sparse_bsc"
                | "strided"
                | "contiguous_format"
                | "channels_last"
                | "preserve_format"
        ) {
            return Object::Named(format!("torch.{name}").into());
        }
    }
    Object::Global(format!("{module}.{name}").into())
}

/// The dtype code (`f8`, `i4`, `U3`, ...) of a pickled `numpy.dtype(code, False, True)`.
fn numpy_dtype_code(dtype: &Object) -> Option<&str> {
    match dtype {
        Object::Opaque(o) if o.class == "numpy.dtype" || o.class.starts_with("numpy.dtypes.") => {
            o.args.first()?.as_str()
        }
        _ => None,
    }
}

/// The byte order of a pickled numpy dtype: its state is `(version, order, ...)`.
fn numpy_dtype_big_endian(dtype: &Object) -> bool {
    let Object::Opaque(o) = dtype else {
        return false;
    };
    match &o.state {
        Some(Object::Tuple(t)) => t.get(1).and_then(Object::as_str) == Some(">"),
        _ => false,
    }
}

/// numpy's classes for a dtype code: the `numpy.dtypes` class of the dtype (numpy 2 names)
/// and the scalar type of its values where that is a numpy type (float64 and complex128
/// scalars are Python floats and complexes; flexible codes have none).
fn numpy_types(code: &str) -> Option<(&'static str, Option<&'static str>)> {
    const FIXED: &[(&str, &str, Option<&str>)] = &[
        ("b1", "BoolDType", Some("bool")),
        ("i1", "Int8DType", Some("int8")),
        ("i2", "Int16DType", Some("int16")),
        ("i4", "Int32DType", Some("int32")),
        ("i8", "Int64DType", Some("int64")),
        ("u1", "UInt8DType", Some("uint8")),
        ("u2", "UInt16DType", Some("uint16")),
        ("u4", "UInt32DType", Some("uint32")),
        ("u8", "UInt64DType", Some("uint64")),
        ("f2", "Float16DType", Some("float16")),
        ("f4", "Float32DType", Some("float32")),
        ("f8", "Float64DType", None),
        ("f12", "LongDoubleDType", Some("longdouble")),
        ("f16", "LongDoubleDType", Some("longdouble")),
        ("c8", "Complex64DType", Some("complex64")),
        ("c16", "Complex128DType", None),
        ("c24", "CLongDoubleDType", Some("clongdouble")),
        ("c32", "CLongDoubleDType", Some("clongdouble")),
    ];
    if let Some(&(_, dtype, scalar)) = FIXED.iter().find(|e| e.0 == code) {
        return Some((dtype, scalar));
    }
    Some(match code.get(..1)? {
        "O" => ("ObjectDType", None),
        "U" => ("StrDType", None),
        "S" => ("BytesDType", None),
        "V" => ("VoidDType", None),
        "M" => ("DateTime64DType", Some("datetime64")),
        "m" => ("TimeDelta64DType", Some("timedelta64")),
        _ => return None,
    })
}

/// A numpy float64 / complex128 scalar as the Python float / complex it is a subclass of.
fn numpy_python_scalar(dtype: &Object, raw: Option<&Object>) -> Option<Object> {
    let code = numpy_dtype_code(dtype)?;
    let bytes: &[u8] = match raw? {
        Object::Bytes(b) => b,
        _ => return None,
    };
    let big = numpy_dtype_big_endian(dtype);
    let f64_at = |at: usize| -> Option<f64> {
        let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if big {
            f64::from_be_bytes(b)
        } else {
            f64::from_le_bytes(b)
        })
    };
    match (code, bytes.len()) {
        ("f8", 8) => Some(Object::Float(f64_at(0)?)),
        ("c16", 16) => Some(Object::Complex(f64_at(0)?, f64_at(8)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pickle::{parse, Limits};

    struct NoStorages;

    impl PersistentLoad for NoStorages {
        fn load(&mut self, _: &Object, _: &mut StorageTable, at: &str) -> Result<Object> {
            Err(Error::invalid("no storages here", at))
        }
    }

    fn run(b: &[u8]) -> Result<Object> {
        let pk = parse(b, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        interpret(
            &pk,
            "data.pkl",
            &mut NoStorages,
            &mut StorageTable::default(),
            &InterpretOptions::default(),
        )
    }

    /// `OrderedDict([(key, value)])`: keys given in the argument are hashed like those of
    /// SETITEMS (which the pickle machine refuses at their opcode).
    #[test]
    fn ordered_dict_argument_keys_must_be_hashable() {
        // OrderedDict([([1, 2], 3)])
        let e = run(b"ccollections\nOrderedDict\n(((K\x01K\x02lK\x03\x86ltR.")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("TypeError: unhashable type: 'list'") && e.contains("data.pkl"),
            "{e}"
        );
        // OrderedDict([((1, [2]), 3)]): the list inside the tuple.
        let e = run(b"ccollections\nOrderedDict\n((K\x01(K\x02l\x86K\x03\x86ltR.")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unhashable type: 'list'"), "{e}");
        // OrderedDict([((1, 2), 3)]) is fine.
        let o = run(b"ccollections\nOrderedDict\n((K\x01K\x02\x86K\x03\x86ltR.").unwrap();
        assert!(
            matches!(&o, Object::OrderedDict(d) if d.items.len() == 1),
            "{o:?}"
        );
    }
}
