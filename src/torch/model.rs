//! The torch data model: the object tree a checkpoint holds, with tensors as views over
//! storages. Storages are listed once in [`crate::Checkpoint::storages`]; tensors refer to
//! them by index, so tensors that share a storage share one buffer.

use std::sync::Arc;

use crate::torch::dtype::DType;

/// A value of the checkpoint's object tree. Cloning is cheap (shared subtrees).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Object {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in i64.
    Int(i64),
    /// A larger int, as a decimal string.
    BigInt(Arc<str>),
    /// A float.
    Float(f64),
    /// `complex(re, im)`.
    Complex(f64, f64),
    /// A str.
    Str(Arc<str>),
    /// `bytes`.
    Bytes(Arc<[u8]>),
    /// `bytearray`.
    ByteArray(Arc<[u8]>),
    /// A tuple.
    Tuple(Arc<[Object]>),
    /// A list.
    List(Arc<[Object]>),
    /// A set.
    Set(Arc<[Object]>),
    /// A frozenset.
    FrozenSet(Arc<[Object]>),
    /// A dict.
    Dict(Arc<[(Object, Object)]>),
    /// A `collections.OrderedDict`, with its `_metadata` attribute when set (state dicts).
    OrderedDict(Arc<OrderedDict>),
    /// A dense tensor or parameter.
    Tensor(Arc<Tensor>),
    /// A quantized tensor.
    QTensor(Arc<QTensor>),
    /// A sparse tensor.
    SparseTensor(Arc<SparseTensor>),
    /// A bare storage (`torch.save(storage)`): an index into the storages.
    Storage(usize),
    /// `torch.Size`.
    Size(Arc<[i64]>),
    /// A dtype global (`torch.bfloat16`).
    Dtype(DType),
    /// `torch.device`.
    Device(Arc<str>),
    /// A named torch constant that is data (`torch.per_tensor_affine`, `torch.sparse_coo`).
    Named(Arc<str>),
    /// A class or function referenced as a value (never called): `module.name`.
    Global(Arc<str>),
    /// An instance of a class ptfile does not interpret (a pickled `nn.Module`, a user's
    /// class): kept as data, never executed.
    Opaque(Arc<Opaque>),
    /// A TorchScript module (issue: other formats), with its state dict.
    ScriptModule(Arc<ScriptModule>),
    /// A reference back to a container that is still being built (a cyclic structure).
    Cycle,
}

/// An OrderedDict.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OrderedDict {
    /// Items in order.
    pub items: Vec<(Object, Object)>,
    /// The `_metadata` attribute (state dicts carry per-module versions there).
    pub metadata: Option<Object>,
}

/// An object of a class ptfile keeps opaque.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Opaque {
    /// `module.QualName` of the class (or of the function that would have built it).
    pub class: String,
    /// Arguments it would have been built with.
    pub args: Vec<Object>,
    /// Keyword arguments (NEWOBJ_EX).
    pub kwargs: Option<Object>,
    /// The state BUILD would have set (usually the instance `__dict__`).
    pub state: Option<Object>,
    /// Items SETITEMS added (dict subclasses).
    pub items: Vec<(Object, Object)>,
    /// Items APPENDS added (list subclasses).
    pub appends: Vec<Object>,
}

impl Opaque {
    /// Looks up `key` in the state dict (BUILD state that is a dict, or a `(dict, slots)` pair).
    pub fn attr(&self, key: &str) -> Option<&Object> {
        let state = self.state.as_ref()?;
        let dict = match state {
            Object::Tuple(t) if t.len() == 2 => &t[0],
            s => s,
        };
        dict.get(key)
    }
}

/// A dense tensor: a view (offset, shape, stride, in elements) over a storage.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Sizes.
    pub shape: Vec<i64>,
    /// Strides in elements.
    pub stride: Vec<i64>,
    /// Offset of the first element in the storage, in elements.
    pub storage_offset: i64,
    /// requires_grad.
    pub requires_grad: bool,
    /// Whether it is an `nn.Parameter`.
    pub is_parameter: bool,
    /// Index into the checkpoint's storages; None for tensors without storage (`meta`).
    pub storage: Option<usize>,
    /// Device for tensors without a storage (`meta`); tensors with one live where it does.
    pub device: Option<String>,
    /// Metadata torch attaches (`{'conj': True}`, `{'neg': True}`), when present.
    pub metadata: Option<Object>,
}

/// Row-major (contiguous) strides of `shape`, in elements (a dimension of size 0 counts as
/// 1, as torch's `contiguous()` strides do; products saturate).
pub(crate) fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut st = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        st[d] = st[d + 1].saturating_mul(shape[d + 1].max(1));
    }
    st
}

impl Tensor {
    /// A dense tensor of `dtype` viewing storage `storage` (an index into the storages it is
    /// saved with; None for a tensor without storage) with `shape`, `stride` and
    /// `storage_offset` in elements; not a parameter, no grad, no metadata. For trees built to
    /// be saved ([`crate::save::save`]).
    pub fn new(
        dtype: DType,
        shape: Vec<i64>,
        stride: Vec<i64>,
        storage_offset: i64,
        storage: Option<usize>,
    ) -> Tensor {
        Tensor {
            dtype,
            shape,
            stride,
            storage_offset,
            requires_grad: false,
            is_parameter: false,
            storage,
            device: None,
            metadata: None,
        }
    }
    /// Number of elements (product of the shape). Validated not to overflow at open time.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&s| s.max(0) as u64).product()
    }
    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1i64;
        for (s, st) in self.shape.iter().zip(&self.stride).rev() {
            if *s != 1 && *st != expect {
                return false;
            }
            expect = expect.saturating_mul(*s);
        }
        true
    }
}

/// A quantized tensor (`_rebuild_qtensor`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QTensor {
    /// The integer representation, as a dense tensor of the quantized dtype.
    pub int_repr: Tensor,
    /// `torch.per_tensor_affine`, `torch.per_channel_affine`, ...
    pub qscheme: String,
    /// Per-tensor scale.
    pub scale: Option<f64>,
    /// Per-tensor zero point.
    pub zero_point: Option<i64>,
    /// Per-channel scales (float64 tensor).
    pub scales: Option<Arc<Tensor>>,
    /// Per-channel zero points (int64 tensor).
    pub zero_points: Option<Arc<Tensor>>,
    /// Per-channel axis.
    pub axis: Option<i64>,
}

/// A sparse tensor (`_rebuild_sparse_tensor`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SparseTensor {
    /// `torch.sparse_coo`, `torch.sparse_csr`, ...
    pub layout: String,
    /// The dense shape.
    pub shape: Vec<i64>,
    /// The component tensors: COO (indices, values); compressed (compressed, plain, values).
    pub parts: Vec<Arc<Tensor>>,
}

/// A TorchScript module: its class and its state dict by dotted name.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScriptModule {
    /// The module's class (`__torch__.MyModule`).
    pub class: String,
    /// Parameters and buffers by dotted name, as `torch.jit.load(f).state_dict()` gives them.
    pub state_dict: Vec<(String, Object)>,
    /// The state dict's `_metadata` (`{prefix: {'version': 1}}` per module), when known.
    pub metadata: Option<Object>,
}

/// A storage: one record of raw bytes that tensors view.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Storage {
    /// The key (`"0"`; in legacy files the saved pointer-like key).
    pub key: String,
    /// The dtype of its elements (for untyped storages, the dtype of the first tensor viewing
    /// it, else uint8).
    pub dtype: DType,
    /// The location tag saved in the file (`cpu`, `cuda:0`, `ipu`).
    pub location: String,
    /// Size in bytes.
    pub nbytes: u64,
    /// Where its bytes are in the file: (offset, length); set by the container reader.
    pub data: Option<(u64, u64)>,
    /// Whether the file named a typed storage class (else dtype came from a tensor, and, as
    /// in torch, the bytes are never byte-swapped).
    pub typed: bool,
}

impl Storage {
    /// A typed storage `key` of `nbytes` bytes of `dtype` elements at `location`, its bytes
    /// held by whoever saves it ([`crate::save::StorageSource`]).
    pub fn new(
        key: impl Into<String>,
        dtype: DType,
        location: impl Into<String>,
        nbytes: u64,
    ) -> Storage {
        Storage {
            key: key.into(),
            dtype,
            location: location.into(),
            nbytes,
            data: None,
            typed: true,
        }
    }
    /// The size of the units a byte-order swap reverses: the element (each half of a complex
    /// element) for typed storages; 1 (no swap) for untyped ones, as torch does.
    pub fn swap_unit(&self) -> usize {
        if self.typed {
            self.dtype.swap_unit()
        } else {
            1
        }
    }
}

impl Object {
    /// For dicts and OrderedDicts with str keys: the value under `key`.
    pub fn get(&self, key: &str) -> Option<&Object> {
        let items: &[(Object, Object)] = match self {
            Object::Dict(d) => d,
            Object::OrderedDict(d) => &d.items,
            _ => return None,
        };
        items
            .iter()
            .find(|(k, _)| matches!(k, Object::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }
    /// The str, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The int, if this is one (bools count, as in Python).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Object::Int(i) => Some(*i),
            Object::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Arc<Tensor>> {
        match self {
            Object::Tensor(t) => Some(t),
            _ => None,
        }
    }
    /// Items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Object]> {
        match self {
            Object::Tuple(t) | Object::List(t) => Some(t),
            _ => None,
        }
    }
}

/// Longest key path [`Object::leaves`] builds before it stops growing.
pub(crate) const MAX_PATH: usize = 512;

/// Longest key-path segment [`key_text`] produces (file keys can be megabytes long).
pub(crate) const MAX_KEY_TEXT: usize = 64;

/// How a dict key prints in a key path: at most [`MAX_KEY_TEXT`] characters (longer keys end
/// in `...`), however large or deeply nested (tuple keys) the key is.
pub(crate) fn key_text(k: &Object) -> String {
    key_text_max(k, MAX_KEY_TEXT)
}

/// Longest name segment [`name_text`] keeps (state-dict names of modules).
pub(crate) const MAX_NAME_TEXT: usize = 256;

/// A key as a state-dict name segment: like [`key_text`], but names up to [`MAX_NAME_TEXT`]
/// characters are kept whole (torch's own attribute names are far shorter).
pub(crate) fn name_text(k: &Object) -> String {
    key_text_max(k, MAX_NAME_TEXT)
}

fn key_text_max(k: &Object, max: usize) -> String {
    fn put(k: &Object, out: &mut String, max: usize) {
        if out.len() > max {
            return;
        }
        match k {
            Object::Str(s) => out.extend(s.chars().take(max + 1)),
            Object::Int(i) => out.push_str(&i.to_string()),
            Object::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Object::None => out.push_str("None"),
            Object::Float(f) => out.push_str(&f.to_string()),
            Object::Tuple(t) => {
                out.push('(');
                for (i, x) in t.iter().enumerate() {
                    if out.len() > max {
                        break;
                    }
                    if i > 0 {
                        out.push_str(", ");
                    }
                    put(x, out, max);
                }
                out.push(')');
            }
            _ => out.push_str("<key>"),
        }
    }
    let mut out = String::new();
    put(k, &mut out, max);
    if out.chars().count() > max {
        out = out.chars().take(max - 3).collect();
        out.push_str("...");
    }
    out
}

/// Deepest object tree that is written out (descriptions, saves). The interpreter limits
/// nesting per pickle path, but shared (memoized) subtrees can stack; walkers refuse beyond
/// this.
pub(crate) const MAX_TREE_DEPTH: usize = 1024;

/// Sizes of an object tree: (distinct objects, nodes once every shared subtree is written out
/// in full). A pickle's memo can share one container many times over, so a small file can
/// describe an exponentially large tree; callers that write the tree out compare the two.
/// Recursion is bounded by the interpreter's nesting limit.
pub(crate) fn expansion(root: &Object) -> (u64, u64) {
    fn ptr(o: &Object) -> Option<usize> {
        Some(match o {
            Object::Tuple(x) | Object::List(x) | Object::Set(x) | Object::FrozenSet(x) => {
                x.as_ptr() as usize
            }
            Object::Dict(d) => d.as_ptr() as usize,
            Object::OrderedDict(d) => Arc::as_ptr(d) as usize,
            Object::Opaque(d) => Arc::as_ptr(d) as usize,
            Object::ScriptModule(d) => Arc::as_ptr(d) as usize,
            _ => return None,
        })
    }
    fn children(o: &Object, f: &mut dyn FnMut(&Object)) {
        match o {
            Object::Tuple(x) | Object::List(x) | Object::Set(x) | Object::FrozenSet(x) => {
                x.iter().for_each(f)
            }
            Object::Dict(d) => d.iter().for_each(|(k, v)| {
                f(k);
                f(v)
            }),
            Object::OrderedDict(d) => {
                d.items.iter().for_each(|(k, v)| {
                    f(k);
                    f(v)
                });
                if let Some(m) = &d.metadata {
                    f(m)
                }
            }
            Object::Opaque(d) => {
                d.args.iter().for_each(&mut *f);
                for x in d
                    .kwargs
                    .iter()
                    .chain(d.state.iter())
                    .chain(d.appends.iter())
                {
                    f(x)
                }
                d.items.iter().for_each(|(k, v)| {
                    f(k);
                    f(v)
                });
            }
            Object::ScriptModule(m) => m.state_dict.iter().for_each(|(_, v)| f(v)),
            _ => {}
        }
    }
    fn walk(
        o: &Object,
        memo: &mut std::collections::HashMap<usize, u64>,
        unique: &mut u64,
        depth: usize,
    ) -> u64 {
        if depth > MAX_TREE_DEPTH {
            // Shared subtrees can stack deeper than the interpreter's limit: too deep to
            // write out, and reported as an infinite expansion.
            return u64::MAX;
        }
        let key = ptr(o);
        if let Some(k) = key {
            if let Some(&n) = memo.get(&k) {
                return n;
            }
        }
        *unique += 1;
        let mut n: u64 = 1;
        children(o, &mut |c| {
            n = n.saturating_add(walk(c, memo, unique, depth + 1))
        });
        if let Some(k) = key {
            memo.insert(k, n);
        }
        n
    }
    let mut memo = std::collections::HashMap::new();
    let mut unique = 0;
    let expanded = walk(root, &mut memo, &mut unique, 0);
    (unique, expanded)
}

/// Whether writing `root` out in full would expand shared structure far beyond the objects
/// it holds (a memo bomb): more than 16 nodes per distinct object and 100 000 in all.
pub(crate) fn is_amplified(root: &Object) -> Option<(u64, u64)> {
    let (u, e) = expansion(root);
    (e > u.saturating_mul(16).saturating_add(100_000)).then_some((u, e))
}
