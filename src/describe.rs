//! Describing a checkpoint: the JSON description schema of the fixtures (what `torch.load`
//! returns: the tree, every tensor's sha256 and small values, every storage) and the human
//! summary of `ptfile inspect`.
//!
//! Storage bytes come through [`StorageBytes`], so the same code describes a file (bytes from
//! the map) and a load (bytes read back from each device).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoint;
use crate::dtype::{float8_to_f64, DType, Kind, Part};
use crate::error::{Error, Result};
use crate::model::{Object, Tensor};

/// Where a description reads storage bytes from.
pub trait StorageBytes {
    /// Little-endian bytes of storage `i`.
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
    /// The device storage `i` lives on (the saved location for a file).
    fn storage_device(&self, i: usize) -> String;
    /// Extra keys for storage `i` in the `storages` list.
    fn storage_extra(&self, i: usize) -> Map<String, Value> {
        let _ = i;
        Map::new()
    }
}

impl StorageBytes for Checkpoint {
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Checkpoint::storage_bytes(self, i)
    }
    fn storage_device(&self, i: usize) -> String {
        self.storages[i].location.clone()
    }
    fn storage_extra(&self, i: usize) -> Map<String, Value> {
        let s = &self.storages[i];
        let mut m = Map::new();
        m.insert("key".into(), json!(s.key));
        m.insert("dtype".into(), json!(s.dtype.name()));
        m
    }
}

/// Options of a description.
#[derive(Debug, Clone)]
pub struct DescribeOptions {
    /// Most nodes the description may have; a shared structure that would expand beyond it is
    /// refused rather than printed (a memo bomb cannot make the output explode).
    pub max_nodes: usize,
    /// Tensors with at most this many elements get `values`.
    pub max_values: u64,
    /// Most entries the human listing prints (the totals still cover everything).
    pub max_listed: usize,
}

impl Default for DescribeOptions {
    fn default() -> Self {
        DescribeOptions {
            max_nodes: 250_000,
            max_values: 64,
            max_listed: 2_000,
        }
    }
}

/// Describes a checkpoint from the file's bytes.
pub fn describe(ckpt: &Checkpoint) -> Result<Value> {
    describe_with(ckpt, &ckpt.root, ckpt, &DescribeOptions::default())
}

/// Describes `root` (an object of `ckpt`) with storage bytes from `bytes`.
pub fn describe_with(
    ckpt: &Checkpoint,
    root: &Object,
    bytes: &dyn StorageBytes,
    opts: &DescribeOptions,
) -> Result<Value> {
    if let Some((u, e)) = crate::model::is_amplified(root) {
        return Err(Error::Unsupported {
            what: format!(
                "the object tree shares structure: its {u} objects expand to {e} nodes when written out (a memo bomb)"
            ),
            location: "data.pkl".into(),
            hint: "refusing to print it; the tensors can still be loaded through the library".into(),
        });
    }
    let mut d = Describer {
        ckpt,
        bytes,
        opts,
        nodes: 0,
        depth: 0,
        used: vec![false; ckpt.storages.len()],
        text_bytes: 0,
        hashed: 0,
        hash_budget: ckpt
            .total_storage_bytes()
            .saturating_mul(4)
            .saturating_add(256 << 20),
        digests: std::collections::HashMap::new(),
    };
    let root_v = d.node(root)?;
    let mut storages = Vec::new();
    for (i, s) in ckpt.storages.iter().enumerate() {
        if !d.used[i] {
            continue;
        }
        let b = bytes.storage_bytes(i)?;
        let mut m = Map::new();
        m.insert("id".into(), json!(i));
        m.insert("device".into(), json!(bytes.storage_device(i)));
        m.insert("nbytes".into(), json!(s.nbytes));
        m.insert("sha256".into(), json!(hex(&Sha256::digest(&b[..]))));
        m.extend(bytes.storage_extra(i));
        storages.push(Value::Object(m));
    }
    Ok(json!({
        "format": ckpt.format.name(),
        "byteorder": match ckpt.byteorder { crate::ByteOrder::Little => "little", crate::ByteOrder::Big => "big" },
        "pickle_protocol": ckpt.protocol,
        "root": root_v,
        "storages": storages,
    }))
}

/// Views may expand their storage (stride 0) by at most this many bytes beyond 4x its size
/// before ptfile declines to hash them.
const MAX_EXPANDED_HASH: u64 = 64 << 20;

struct Describer<'a> {
    ckpt: &'a Checkpoint,
    bytes: &'a dyn StorageBytes,
    opts: &'a DescribeOptions,
    nodes: usize,
    depth: usize,
    used: Vec<bool>,
    /// Bytes of str/bytes values written so far, and the most allowed.
    text_bytes: u64,
    /// Bytes of tensor elements hashed so far, and the most allowed.
    hashed: u64,
    hash_budget: u64,
    /// Digests by tensor (a tensor referenced many times is hashed once).
    digests: std::collections::HashMap<usize, (Value, Option<Value>, Option<String>)>,
}

/// Most bytes of str and bytes values a description writes (a memoized 8 MB string
/// referenced a thousand times must not become 8 GB of output).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn float_json(v: f64) -> Value {
    if v.is_nan() {
        json!("nan")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "inf" } else { "-inf" })
    } else if v == 0.0 && v.is_sign_negative() {
        json!("-0.0")
    } else {
        json!(v)
    }
}

fn int_json(v: i64) -> Value {
    if v.unsigned_abs() >= 1 << 53 {
        json!(v.to_string())
    } else {
        json!(v)
    }
}

impl Describer<'_> {
    fn bump(&mut self) -> Result<()> {
        self.nodes += 1;
        if self.nodes > self.opts.max_nodes {
            return Err(Error::Unsupported {
                what: format!(
                    "the object tree expands to more than {} nodes when written out (shared structure)",
                    self.opts.max_nodes
                ),
                location: "data.pkl".into(),
                hint: "if the file is trusted, raise the limit (`ptfile inspect --max-nodes N`, DescribeOptions::max_nodes)".into(),
            });
        }
        Ok(())
    }

    fn text(&mut self, n: usize) -> Result<()> {
        self.text_bytes = self.text_bytes.saturating_add(n as u64);
        if self.text_bytes > MAX_TEXT_BYTES {
            return Err(Error::Unsupported {
                what: format!(
                    "the description would hold more than {MAX_TEXT_BYTES} bytes of strings (a memoized string reused many times)"
                ),
                location: "data.pkl".into(),
                hint: "read the object tree through the library instead".into(),
            });
        }
        Ok(())
    }

    /// Whether hashing `view_bytes` more bytes of a view of a `nbytes` storage is within the
    /// budgets: a stride-0 view may not multiply its storage, and the whole description hashes
    /// at most 4x the storage bytes plus 256 MiB. Err is the note saying why not.
    fn may_hash(&mut self, view_bytes: u64, nbytes: u64) -> std::result::Result<(), String> {
        if view_bytes > nbytes.saturating_mul(4).saturating_add(MAX_EXPANDED_HASH) {
            return Err(format!(
                "not hashed: the view repeats {nbytes} storage bytes as {view_bytes} bytes"
            ));
        }
        if self.hashed.saturating_add(view_bytes) > self.hash_budget {
            return Err(format!(
                "not hashed: the description already hashed {} bytes (views repeat their storages)",
                self.hashed
            ));
        }
        self.hashed += view_bytes;
        Ok(())
    }

    fn items(&mut self, xs: &[Object]) -> Result<Vec<Value>> {
        xs.iter().map(|x| self.node(x)).collect()
    }

    fn pairs(&mut self, xs: &[(Object, Object)]) -> Result<Vec<Value>> {
        xs.iter()
            .map(|(k, v)| Ok(json!([self.node(k)?, self.node(v)?])))
            .collect()
    }

    fn node(&mut self, o: &Object) -> Result<Value> {
        self.depth += 1;
        let r = if self.depth > crate::model::MAX_TREE_DEPTH {
            Err(Error::Unsupported {
                what: format!(
                    "the object tree is nested deeper than {} levels",
                    crate::model::MAX_TREE_DEPTH
                ),
                location: "data.pkl".into(),
                hint: "read it through the library instead".into(),
            })
        } else {
            self.node_inner(o)
        };
        self.depth -= 1;
        r
    }

    fn node_inner(&mut self, o: &Object) -> Result<Value> {
        self.bump()?;
        Ok(match o {
            Object::None => json!({"type": "none"}),
            Object::Bool(b) => json!({"type": "bool", "value": b}),
            Object::Int(i) => json!({"type": "int", "value": int_json(*i)}),
            Object::BigInt(s) => json!({"type": "int", "value": s.to_string()}),
            Object::Float(f) => json!({"type": "float", "value": float_json(*f)}),
            Object::Complex(re, im) => {
                json!({"type": "complex", "value": [float_json(*re), float_json(*im)]})
            }
            Object::Str(s) => {
                self.text(s.len())?;
                json!({"type": "str", "value": s.to_string()})
            }
            Object::Bytes(b) => {
                self.text(b.len() * 2)?;
                json!({"type": "bytes", "hex": hex(b)})
            }
            Object::ByteArray(b) => {
                self.text(b.len() * 2)?;
                json!({"type": "bytearray", "hex": hex(b)})
            }
            Object::Tuple(xs) => json!({"type": "tuple", "items": self.items(xs)?}),
            Object::List(xs) => json!({"type": "list", "items": self.items(xs)?}),
            Object::Set(xs) => json!({"type": "set", "items": self.items(xs)?}),
            Object::FrozenSet(xs) => json!({"type": "frozenset", "items": self.items(xs)?}),
            Object::Dict(xs) => json!({"type": "dict", "items": self.pairs(xs)?}),
            Object::OrderedDict(d) => {
                let mut m = Map::new();
                m.insert("type".into(), json!("ordered_dict"));
                m.insert("items".into(), json!(self.pairs(&d.items)?));
                if let Some(md) = &d.metadata {
                    m.insert("metadata".into(), self.node(md)?);
                }
                Value::Object(m)
            }
            Object::Tensor(t) => self.tensor(t, Arc::as_ptr(t) as usize)?,
            Object::QTensor(q) => self.qtensor(q)?,
            Object::SparseTensor(s) => self.sparse(s)?,
            Object::Storage(i) => {
                self.used[*i] = true;
                let s = &self.ckpt.storages[*i];
                json!({"type": "storage", "storage": i, "dtype": s.dtype.name(), "nbytes": s.nbytes,
                       "device": self.bytes.storage_device(*i)})
            }
            Object::Size(s) => json!({"type": "size", "value": s.to_vec()}),
            Object::Dtype(d) => json!({"type": "dtype", "value": d.name()}),
            Object::Device(d) => json!({"type": "device", "value": d.to_string()}),
            Object::Named(n) => json!({"type": "constant", "value": n.to_string()}),
            Object::Global(g) => json!({"type": "class", "value": g.to_string()}),
            Object::Opaque(op) => {
                let mut m = Map::new();
                m.insert("type".into(), json!("object"));
                m.insert("class".into(), json!(op.class));
                if let Some(sd) = crate::modules::module_state_dict(o) {
                    let mut v = self.state_dict(&sd.items)?;
                    let md: Vec<Value> = sd
                        .versions
                        .iter()
                        .map(|(k, ver)| {
                            json!([{"type": "str", "value": k},
                                   {"type": "dict", "items": [[{"type": "str", "value": "version"},
                                                               {"type": "int", "value": ver}]]}])
                        })
                        .collect();
                    v["metadata"] = json!({"type": "ordered_dict", "items": md});
                    m.insert("state_dict".into(), v);
                }
                Value::Object(m)
            }
            Object::ScriptModule(sm) => {
                let mut m = Map::new();
                m.insert("type".into(), json!("script_module"));
                m.insert("class".into(), json!(sm.class));
                let mut sd = self.state_dict(&sm.state_dict)?;
                if let Some(md) = &sm.metadata {
                    sd["metadata"] = self.node(md)?;
                }
                m.insert("state_dict".into(), sd);
                Value::Object(m)
            }
            Object::Cycle => json!({"type": "cycle"}),
        })
    }

    fn state_dict(&mut self, sd: &[(String, Object)]) -> Result<Value> {
        let mut items = Vec::with_capacity(sd.len());
        for (k, v) in sd {
            self.bump()?;
            items.push(json!([{"type": "str", "value": k}, self.node(v)?]));
        }
        Ok(json!({"type": "ordered_dict", "items": items}))
    }

    fn tensor(&mut self, t: &Tensor, id: usize) -> Result<Value> {
        let mut m = Map::new();
        m.insert(
            "type".into(),
            json!(if t.is_parameter {
                "parameter"
            } else {
                "tensor"
            }),
        );
        m.insert("dtype".into(), json!(t.dtype.name()));
        m.insert("shape".into(), json!(t.shape));
        m.insert("stride".into(), json!(t.stride));
        m.insert("storage_offset".into(), json!(t.storage_offset));
        m.insert("requires_grad".into(), json!(t.requires_grad));
        match t.storage {
            None => {
                m.insert(
                    "device".into(),
                    json!(t.device.clone().unwrap_or_else(|| "meta".into())),
                );
            }
            Some(si) => {
                self.used[si] = true;
                m.insert("device".into(), json!(self.bytes.storage_device(si)));
                m.insert("storage".into(), json!(si));
                let (sha, values, note) = match self.digests.get(&id) {
                    Some(d) => d.clone(),
                    None => {
                        let nbytes = self.ckpt.storages[si].nbytes;
                        let view_bytes = t.numel().saturating_mul(t.dtype.element_size() as u64);
                        // A stride-0 view repeating a small storage billions of times, or
                        // views hashed over and over: say so instead of spending the time.
                        let d = match self.may_hash(view_bytes, nbytes) {
                            Err(note) => (Value::Null, None, Some(note)),
                            Ok(()) => {
                                let bytes = self.bytes.storage_bytes(si)?;
                                let (sha, values) = tensor_digest(t, &bytes, self.opts.max_values);
                                (json!(sha), values, None)
                            }
                        };
                        self.digests.insert(id, d.clone());
                        d
                    }
                };
                m.insert("sha256".into(), sha);
                if let Some(v) = values {
                    m.insert("values".into(), v);
                }
                if let Some(n) = note {
                    m.insert("note".into(), json!(n));
                }
            }
        }
        Ok(Value::Object(m))
    }

    fn qtensor(&mut self, q: &crate::model::QTensor) -> Result<Value> {
        let t = &q.int_repr;
        let need = |t: &Tensor| {
            t.storage
                .ok_or_else(|| Error::invalid("quantized tensor part has no storage", "qtensor"))
        };
        let si = need(t)?;
        self.used[si] = true;
        let small = t.numel() <= self.opts.max_values;
        let view_bytes = t.numel().saturating_mul(t.dtype.element_size() as u64);
        let sha = match self.may_hash(view_bytes, self.ckpt.storages[si].nbytes) {
            Ok(()) => {
                let bytes = self.bytes.storage_bytes(si)?;
                json!(tensor_digest(t, &bytes, 0).0)
            }
            Err(_) => Value::Null,
        };
        // Elements are only needed for the dequantized values of small tensors.
        let (mut ints, mut scales, mut zps) = (Vec::new(), Vec::new(), Vec::new());
        if small {
            ints = tensor_elements_i64(t, &self.bytes.storage_bytes(si)?);
            // Per-channel parameters: one per channel, so at most as many as elements.
            for (p, is_scale) in [(&q.scales, true), (&q.zero_points, false)] {
                let Some(p) = p else { continue };
                if p.numel() > self.opts.max_values.max(64) * 64 {
                    return Err(Error::invalid(
                        "per-channel quantizer parameters larger than the tensor",
                        "qtensor",
                    ));
                }
                let b = self.bytes.storage_bytes(need(p)?)?;
                if is_scale {
                    scales = tensor_elements_f64(p, &b);
                } else {
                    zps = tensor_elements_i64(p, &b);
                }
            }
        }
        let mut deq = Vec::new();
        if small {
            let axis = q.axis.unwrap_or(0).max(0) as usize;
            for (flat, &v) in ints.iter().enumerate() {
                let (scale, zp) = match (q.scale, q.zero_point) {
                    (Some(s), Some(z)) => (s, z),
                    _ => {
                        let ch = channel_of(flat, &t.shape, axis);
                        (
                            scales.get(ch).copied().unwrap_or(1.0),
                            zps.get(ch).copied().unwrap_or(0),
                        )
                    }
                };
                // torch dequantizes in float32.
                let x = (v.wrapping_sub(zp) as f32) * (scale as f32);
                deq.push(float_json(x as f64));
            }
        }
        let mut m = Map::new();
        m.insert("type".into(), json!("qtensor"));
        m.insert("dtype".into(), json!(t.dtype.name()));
        m.insert("shape".into(), json!(t.shape));
        m.insert("qscheme".into(), json!(q.qscheme));
        m.insert("int_repr_sha256".into(), sha);
        m.insert("device".into(), json!(self.bytes.storage_device(si)));
        if t.numel() <= self.opts.max_values {
            m.insert("dequant_values".into(), json!(deq));
        }
        Ok(Value::Object(m))
    }

    fn sparse(&mut self, s: &crate::model::SparseTensor) -> Result<Value> {
        let dense = crate::sparse::to_dense(s, self.ckpt, self.bytes)?;
        let mut m = Map::new();
        m.insert("type".into(), json!("sparse_tensor"));
        m.insert("layout".into(), json!(s.layout));
        m.insert(
            "dtype".into(),
            json!(s.parts.last().map(|t| t.dtype.name()).unwrap_or("float32")),
        );
        m.insert("shape".into(), json!(s.shape));
        m.insert("dense_sha256".into(), json!(hex(&Sha256::digest(&dense))));
        for p in &s.parts {
            if let Some(i) = p.storage {
                self.used[i] = true;
            }
        }
        Ok(Value::Object(m))
    }
}

fn channel_of(flat: usize, shape: &[i64], axis: usize) -> usize {
    let mut rem = flat;
    let mut ch = 0;
    for (d, &s) in shape.iter().enumerate().rev() {
        let s = s.max(1) as usize;
        if d == axis {
            ch = rem % s;
        }
        rem /= s;
    }
    ch
}

/// Calls `f` with the byte offset (in the storage) of each element of `t`, row-major.
/// Offsets were validated against the storage when the checkpoint was opened.
pub fn for_each_element(t: &Tensor, mut f: impl FnMut(usize)) {
    let es = t.dtype.element_size();
    let n = t.numel();
    if n == 0 {
        return;
    }
    let nd = t.shape.len();
    let mut idx = vec![0i64; nd];
    // i128: a stride on a dimension of size 1 is never used but may be i64::MAX, so the
    // intermediate sums must not overflow. Offsets actually visited were validated at open.
    let mut off = t.storage_offset as i128;
    loop {
        f(usize::try_from(off)
            .unwrap_or(usize::MAX)
            .saturating_mul(es));
        // Advance the multi-index (last dimension fastest).
        let mut d = nd;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            off += t.stride[d] as i128;
            if idx[d] < t.shape[d] {
                break;
            }
            off -= t.stride[d] as i128 * t.shape[d] as i128;
            idx[d] = 0;
        }
    }
}

/// sha256 of the tensor's elements in row-major order (little-endian), and its values when it
/// has at most `max_values` elements.
pub fn tensor_digest(t: &Tensor, bytes: &[u8], max_values: u64) -> (String, Option<Value>) {
    let es = t.dtype.element_size();
    let resolver = Resolver::new(t);
    let xform = resolver.is_some();
    let mut h = Sha256::new();
    let n = t.numel();
    if t.is_contiguous() && !xform {
        let start = (t.storage_offset as usize).saturating_mul(es);
        let end = start.saturating_add((n as usize).saturating_mul(es));
        if let Some(b) = bytes.get(start..end) {
            h.update(b);
        }
    } else {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut i = 0u64;
        for_each_element(t, |o| {
            if let Some(b) = bytes.get(o..o.saturating_add(es)) {
                let at = buf.len();
                buf.extend_from_slice(b);
                if let Some(r) = &resolver {
                    r.apply(&mut buf[at..], i, o / es.max(1));
                }
            }
            i += 1;
            if buf.len() >= 64 * 1024 {
                h.update(&buf);
                buf.clear();
            }
        });
        h.update(&buf);
    }
    let sha = hex(&h.finalize());
    if n > max_values {
        return (sha, None);
    }
    let mut vals = Vec::with_capacity(n as usize);
    let mut ok = true;
    let mut el = vec![0u8; es];
    let mut i = 0u64;
    for_each_element(t, |o| {
        match bytes.get(o..o.saturating_add(es)) {
            Some(b) => {
                el.copy_from_slice(b);
                if let Some(r) = &resolver {
                    r.apply(&mut el, i, o / es.max(1));
                }
                match element_json(t.dtype, &el) {
                    Some(v) => vals.push(v),
                    None => ok = false,
                }
            }
            None => ok = false,
        }
        i += 1;
    });
    (sha, Some(if ok { Value::Array(vals) } else { Value::Null }))
}

/// The conjugate and negative bits torch saves in a tensor's metadata (`{'conj': True}`,
/// `{'neg': True}`): the tensor's values are the storage's, conjugated or negated.
fn view_bits(t: &Tensor) -> (bool, bool) {
    let flag = |k: &str| {
        t.metadata
            .as_ref()
            .and_then(|m| m.get(k))
            .is_some_and(|v| matches!(v, Object::Bool(true)))
    };
    (flag("conj"), flag("neg"))
}

/// Applies a tensor's conjugate / negative bits to its elements with the bits torch's own
/// `resolve_conj()` and `resolve_neg()` give on an x86-64 CPU with AVX2, NaN payloads and
/// signed zeros included. Those kernels run a vectorized loop over runs of elements that are
/// contiguous in memory, two vectors per step, and finish each run with scalar code, and the
/// two paths differ: vectorized float16 / bfloat16 negation flips the sign bit where the
/// scalar one goes through float32 (quieting a NaN; bfloat16 turns it into 0x7fc0);
/// vectorized complex64 / complex128 negation computes `0 - x` (a NaN keeps its sign and is
/// quieted, a zero becomes +0) where the scalar one flips the sign bit; complex32 is always
/// scalar, through float32. float32 / float64 and every conjugation of complex64 / complex128
/// flip the sign bit; integers negate in two's complement. (Tensors over 32 768 elements are
/// split between threads, each with its own scalar tail; that split is not modelled.)
struct Resolver {
    dtype: DType,
    conj: bool,
    neg: bool,
    /// Elements per vectorized step of the negation kernel (0: never vectorized).
    step: u64,
    runs: Runs,
}

/// How the elements fall into contiguous runs in the kernel's loop.
enum Runs {
    /// Non-overlapping and dense: one run of `n` elements in memory order, starting at the
    /// storage offset.
    Dense { n: u64, base: u64 },
    /// Runs of `m` consecutive elements in row-major order (the inner dimensions that are
    /// contiguous in memory).
    Rows { m: u64 },
    /// No contiguous inner dimension: every element takes the scalar path.
    Scalar,
}

impl Resolver {
    /// The resolver for `t`, or `None` when it has neither bit set.
    fn new(t: &Tensor) -> Option<Resolver> {
        let (conj, neg) = view_bits(t);
        if !conj && !neg {
            return None;
        }
        Some(Resolver {
            dtype: t.dtype,
            conj,
            neg,
            step: vector_step(t.dtype),
            runs: runs_of(t),
        })
    }

    /// Resolves element number `index` (row-major) found at element offset `at` of the storage.
    fn apply(&self, el: &mut [u8], index: u64, at: usize) {
        let step = self.step.max(1);
        let vector = self.step > 0
            && match self.runs {
                Runs::Dense { n, base } => (at as u64).wrapping_sub(base) < n - n % step,
                Runs::Rows { m } => index % m < m - m % step,
                Runs::Scalar => false,
            };
        match self.dtype.kind() {
            Kind::Complex(part) => {
                let h = el.len() / 2;
                let (re, im) = el.split_at_mut(h);
                // With both bits, torch resolves them in one kernel: negation, then the
                // conjugate's sign flip.
                if self.neg {
                    negate(part, re, vector);
                    negate(part, im, vector);
                }
                if self.conj {
                    negate(part, im, false);
                }
            }
            Kind::Float if self.neg => {
                let part = match el.len() {
                    2 => Part::F16,
                    4 => Part::F32,
                    _ => Part::F64,
                };
                negate(part, el, vector);
            }
            Kind::BFloat if self.neg => negate(Part::BF16, el, vector),
            Kind::Float8(_) if self.neg => flip_sign(el),
            Kind::Int | Kind::UInt if self.neg => {
                // Two's-complement negation: invert and add one.
                let mut carry = 1u16;
                for b in el.iter_mut() {
                    let v = (!*b) as u16 + carry;
                    *b = v as u8;
                    carry = v >> 8;
                }
            }
            _ => {}
        }
    }
}

/// Elements per step of the vectorized negation kernel for `dtype`: two AVX2 (256-bit)
/// vectors; 0 where the scalar and vectorized paths agree or there is no vectorized path.
fn vector_step(dtype: DType) -> u64 {
    match (dtype.kind(), dtype.element_size()) {
        (Kind::Float, 2) | (Kind::BFloat, _) => 32,
        (Kind::Complex(Part::F32), _) => 8,
        (Kind::Complex(Part::F64), _) => 4,
        _ => 0,
    }
}

/// The contiguous runs of `t`'s elements (dimensions of size 1 do not count).
fn runs_of(t: &Tensor) -> Runs {
    let dims: Vec<(u64, i64)> = t
        .shape
        .iter()
        .zip(&t.stride)
        .filter(|(&size, _)| size > 1)
        .map(|(&size, &stride)| (size as u64, stride))
        .collect();
    let n: u64 = dims.iter().map(|d| d.0).product();
    let mut by_stride = dims.clone();
    by_stride.sort_by_key(|d| d.1);
    let mut expect = 1i128;
    let mut dense = true;
    for &(size, stride) in &by_stride {
        dense &= stride as i128 == expect;
        expect = expect.saturating_mul(size as i128);
    }
    if dense {
        return Runs::Dense {
            n,
            base: t.storage_offset.max(0) as u64,
        };
    }
    // Otherwise the result is row-major and the loop's inner run is the trailing dimensions
    // that are contiguous in the source as well.
    let mut m = 1u64;
    for &(size, stride) in dims.iter().rev() {
        if stride as i128 != m as i128 {
            break;
        }
        m = m.saturating_mul(size);
    }
    if m > 1 {
        Runs::Rows { m }
    } else {
        Runs::Scalar
    }
}

/// Flips the sign bit of a little-endian float.
fn flip_sign(x: &mut [u8]) {
    if let Some(last) = x.last_mut() {
        *last ^= 0x80;
    }
}

/// Negates one little-endian float of `part`'s format as torch's CPU kernels do on the
/// vectorized path (`vector`) or the scalar one (see [`Resolver`]).
fn negate(part: Part, x: &mut [u8], vector: bool) {
    let half = |x: &[u8]| -> Option<u16> { Some(u16::from_le_bytes([*x.first()?, *x.get(1)?])) };
    let store16 = |x: &mut [u8], v: u16| x.copy_from_slice(&v.to_le_bytes());
    match (part, vector) {
        // Through float32: a NaN is quieted with its payload kept, then the sign flips.
        (Part::F16, false) => {
            if let Some(mut v) = half(x) {
                if v & 0x7c00 == 0x7c00 && v & 0x03ff != 0 {
                    v |= 0x0200;
                }
                store16(x, v ^ 0x8000);
            }
        }
        // Through float32 and back with round-to-nearest-even: a NaN becomes 0x7fc0.
        (Part::BF16, false) => {
            if let Some(v) = half(x) {
                let nan = v & 0x7f80 == 0x7f80 && v & 0x007f != 0;
                store16(x, if nan { 0x7fc0 } else { v ^ 0x8000 });
            }
        }
        // `0 - x` for complex64 / complex128 lanes.
        (Part::F32, true) => {
            if let Ok(b) = <[u8; 4]>::try_from(&*x) {
                let v = u32::from_le_bytes(b);
                let r = if v & 0x7f80_0000 == 0x7f80_0000 && v & 0x007f_ffff != 0 {
                    v | 0x0040_0000
                } else if v & 0x7fff_ffff == 0 {
                    0
                } else {
                    v ^ 0x8000_0000
                };
                x.copy_from_slice(&r.to_le_bytes());
            }
        }
        (Part::F64, true) => {
            if let Ok(b) = <[u8; 8]>::try_from(&*x) {
                let v = u64::from_le_bytes(b);
                let exp = 0x7ff0_0000_0000_0000u64;
                let r = if v & exp == exp && v & !(exp | 1 << 63) != 0 {
                    v | 0x0008_0000_0000_0000
                } else if v << 1 == 0 {
                    0
                } else {
                    v ^ 1 << 63
                };
                x.copy_from_slice(&r.to_le_bytes());
            }
        }
        _ => flip_sign(x),
    }
}

fn f16(b: &[u8]) -> f64 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f64()
}

fn bf16(b: &[u8]) -> f64 {
    half::bf16::from_le_bytes([b[0], b[1]]).to_f64()
}

fn part(p: Part, b: &[u8]) -> f64 {
    match p {
        Part::F16 => f16(b),
        Part::BF16 => bf16(b),
        Part::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Part::F64 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            f64::from_le_bytes(a)
        }
    }
}

/// One element (little-endian bytes) as a description value; None where torch gives no
/// Python value (uint64, packed and bit types).
pub fn element_json(dtype: DType, b: &[u8]) -> Option<Value> {
    let es = dtype.element_size();
    Some(match dtype.kind() {
        Kind::Float => match es {
            2 => float_json(f16(b)),
            4 => float_json(part(Part::F32, b)),
            _ => float_json(part(Part::F64, b)),
        },
        Kind::BFloat => float_json(bf16(b)),
        Kind::Float8(f) => float_json(float8_to_f64(f, b[0])),
        Kind::Bool => json!(b[0] != 0),
        Kind::Int | Kind::Quantized if es <= 8 => {
            let mut a = [0u8; 8];
            a[..es].copy_from_slice(&b[..es]);
            let shift = 64 - 8 * es as u32;
            json!((i64::from_le_bytes(a) << shift) >> shift)
        }
        Kind::UInt if es < 8 => {
            let mut a = [0u8; 8];
            a[..es].copy_from_slice(&b[..es]);
            json!(u64::from_le_bytes(a))
        }
        Kind::Complex(p) => {
            let h = es / 2;
            json!([float_json(part(p, &b[..h])), float_json(part(p, &b[h..]))])
        }
        _ => return None,
    })
}

fn tensor_elements_i64(t: &Tensor, bytes: &[u8]) -> Vec<i64> {
    let es = t.dtype.element_size();
    let mut v = Vec::new();
    if es > 8 || matches!(t.dtype.kind(), Kind::Complex(_)) {
        return v;
    }
    let unsigned = t.dtype.name().starts_with("qu") || t.dtype.kind() == Kind::UInt;
    for_each_element(t, |o| {
        if let Some(b) = bytes.get(o..o.saturating_add(es)) {
            let mut a = [0u8; 8];
            a[..es].copy_from_slice(b);
            let x = if unsigned {
                i64::from_le_bytes(a)
            } else {
                let shift = 64 - 8 * es as u32;
                (i64::from_le_bytes(a) << shift) >> shift
            };
            v.push(x);
        }
    });
    v
}

fn tensor_elements_f64(t: &Tensor, bytes: &[u8]) -> Vec<f64> {
    let es = t.dtype.element_size();
    let mut v = Vec::new();
    for_each_element(t, |o| {
        if let Some(b) = bytes.get(o..o.saturating_add(es)) {
            if let Some(Value::Number(n)) = element_json(t.dtype, b) {
                v.push(n.as_f64().unwrap_or(0.0));
            }
        }
    });
    v
}

/// The elements of `t` as f64 (for dense conversions); non-numeric dtypes give 0.
pub fn elements_f64(t: &Tensor, bytes: &[u8]) -> Vec<f64> {
    tensor_elements_f64(t, bytes)
}

/// The elements of `t` as i64 (index tensors).
pub fn elements_i64(t: &Tensor, bytes: &[u8]) -> Vec<i64> {
    tensor_elements_i64(t, bytes)
}

/// The human summary printed by `ptfile inspect`.
pub fn human(ckpt: &Checkpoint) -> String {
    human_with(ckpt, &DescribeOptions::default())
}

/// The human summary, listing at most `opts.max_nodes` entries.
pub fn human_with(ckpt: &Checkpoint, opts: &DescribeOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "format: {}  pickle protocol: {}  byte order: {}",
        ckpt.format.name(),
        ckpt.protocol,
        match ckpt.byteorder {
            crate::ByteOrder::Little => "little",
            crate::ByteOrder::Big => "big",
        }
    );
    if !ckpt.info.prefix.is_empty() {
        let _ = writeln!(
            s,
            "archive: folder {:?}, version {}, format_version {}, storage_alignment {}",
            ckpt.info.prefix,
            ckpt.info.version.as_deref().unwrap_or("-"),
            ckpt.info.format_version.as_deref().unwrap_or("-"),
            ckpt.info.storage_alignment.as_deref().unwrap_or("-"),
        );
    }
    for n in &ckpt.notes {
        let _ = writeln!(s, "{n}");
    }
    let (leaves, cut) = match crate::model::is_amplified(&ckpt.root) {
        Some((u, e)) => {
            let _ = writeln!(
                s,
                "note: the object tree shares structure ({u} objects expand to {e} nodes): it is not listed by path"
            );
            (Vec::new(), false)
        }
        None => {
            let (l, cut) = ckpt.root.leaves_bounded(opts.max_listed.saturating_mul(4));
            (l, cut)
        }
    };
    let cut = cut || leaves.len() > opts.max_listed;
    let width = leaves
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0)
        .clamp(6, 60);
    let mut n_tensors = 0usize;
    for (k, o) in leaves.iter().take(opts.max_listed) {
        let key = if k.is_empty() { "<root>" } else { k };
        let Object::Tensor(t) = o else {
            let _ = writeln!(s, "  {key:width$}  {}", short_value(o));
            continue;
        };
        n_tensors += 1;
        let loc = match t.storage {
            Some(i) => ckpt.storages[i].location.clone(),
            None => t.device.clone().unwrap_or_else(|| "meta".into()),
        };
        let bytes = t.numel().saturating_mul(t.dtype.element_size() as u64);
        let _ = writeln!(
            s,
            "  {key:width$}  {:<14} {:<18} {:<8} {:>10}{}",
            t.dtype.name(),
            format!("{:?}", t.shape),
            loc,
            human_bytes(bytes),
            if t.is_parameter { "  (parameter)" } else { "" },
        );
    }
    if cut {
        let _ = writeln!(
            s,
            "  ... (listing stopped after {} entries; `--max-nodes N` lists more)",
            opts.max_listed
        );
    }
    let mut by_loc: Vec<(String, u64, usize)> = Vec::new();
    for st in &ckpt.storages {
        match by_loc.iter_mut().find(|(l, _, _)| *l == st.location) {
            Some(e) => {
                e.1 += st.nbytes;
                e.2 += 1;
            }
            None => by_loc.push((st.location.clone(), st.nbytes, 1)),
        }
    }
    let _ = writeln!(
        s,
        "{}{} tensors, {} storages, {} of storage data",
        n_tensors,
        if cut { "+" } else { "" },
        ckpt.storages.len(),
        human_bytes(ckpt.total_storage_bytes())
    );
    for (l, b, n) in by_loc {
        let _ = writeln!(s, "  {l}: {n} storages, {}", human_bytes(b));
    }
    s
}

/// A one-line summary of a non-tensor value for the human listing.
fn short_value(o: &Object) -> String {
    let text = match o {
        Object::None => "None".to_string(),
        Object::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Object::Int(i) => i.to_string(),
        Object::BigInt(b) => b.to_string(),
        Object::Float(f) => f.to_string(),
        Object::Complex(re, im) => format!("({re}{im:+}j)"),
        Object::Str(v) => format!("{:?}", v.chars().take(121).collect::<String>()),
        Object::Bytes(b) | Object::ByteArray(b) => format!("{} bytes", b.len()),
        Object::Size(d) => format!("torch.Size({d:?})"),
        Object::Dtype(d) => format!("torch.{d}"),
        Object::Device(d) => format!("device({d:?})"),
        Object::Named(n) | Object::Global(n) => n.to_string(),
        Object::Set(x) | Object::FrozenSet(x) => format!("set of {}", x.len()),
        Object::QTensor(q) => format!(
            "quantized {} {:?} ({})",
            q.int_repr.dtype, q.int_repr.shape, q.qscheme
        ),
        Object::SparseTensor(t) => format!("{} {:?}", t.layout, t.shape),
        Object::Storage(i) => format!("storage {i}"),
        Object::Opaque(op) => format!("<{}>", op.class),
        Object::Cycle => "<cycle>".to_string(),
        other => crate::interpret::type_name(other).to_string(),
    };
    // Bounded and on one line whatever the file holds.
    let mut t: String = text
        .chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 120 {
        t.push_str("...");
    }
    t
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A contiguous 1-D tensor of `dtype` made of `input`, resolved, as words of `W` bytes.
    fn resolved<const W: usize>(dtype: &str, input: &[u64], conj: bool, neg: bool) -> Vec<u64> {
        let dtype = DType::from_name(dtype).unwrap();
        let mut bytes: Vec<u8> = input
            .iter()
            .flat_map(|w| w.to_le_bytes()[..W].to_vec())
            .collect();
        let size = dtype.element_size();
        let n = (bytes.len() / size) as u64;
        let r = Resolver {
            dtype,
            conj,
            neg,
            step: vector_step(dtype),
            runs: Runs::Dense { n, base: 0 },
        };
        for (i, el) in bytes.chunks_mut(size).enumerate() {
            r.apply(el, i as u64, i);
        }
        bytes
            .chunks(W)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..W].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect()
    }

    fn words(dtype: &str, input: &[u16], conj: bool, neg: bool) -> Vec<u16> {
        let input: Vec<u64> = input.iter().map(|&w| w as u64).collect();
        resolved::<2>(dtype, &input, conj, neg)
            .into_iter()
            .map(|w| w as u16)
            .collect()
    }

    /// The bits torch 2.15 gives (resolve_conj / resolve_neg on x86-64), NaN payloads included.
    #[test]
    fn conj_and_neg_bits_match_torch() {
        let input = [0x7c01, 0x7c01, 0xfc01, 0x7e00, 0x3c00, 0x7d00];
        assert_eq!(
            words("complex32", &input, true, false),
            [0x7c01, 0xfe01, 0xfc01, 0xfe00, 0x3c00, 0xff00]
        );
        assert_eq!(
            words("complex32", &input, false, true),
            [0xfe01, 0xfe01, 0x7e01, 0xfe00, 0xbc00, 0xff00]
        );
        assert_eq!(
            words("complex32", &input, true, true),
            [0xfe01, 0x7e01, 0x7e01, 0x7e00, 0xbc00, 0x7f00]
        );
        assert_eq!(
            words("float16", &[0x7c01, 0x7e01, 0x3c00], false, true),
            [0xfe01, 0xfe01, 0xbc00]
        );
        assert_eq!(
            words("bfloat16", &[0x7f81, 0x7fc1, 0x3f80], false, true),
            [0x7fc0, 0x7fc0, 0xbf80]
        );
        // float32: the sign bit alone, signalling NaNs included.
        assert_eq!(
            words("float32", &[0x0001, 0x7f80, 0x0000, 0x3f80], false, true),
            [0x0001, 0xff80, 0x0000, 0xbf80]
        );
        assert_eq!(
            words("complex64", &[0x0001, 0x7f80, 0x0001, 0x7f80], true, false),
            [0x0001, 0x7f80, 0x0001, 0xff80]
        );
        assert_eq!(words("int16", &[1, 0x8000], false, true), [0xffff, 0x8000]);
    }

    /// Long enough for torch's vectorized loop: its lanes and its scalar tail differ.
    #[test]
    fn vectorized_negation_matches_torch() {
        // complex64, 20 elements: 16 through `0 - x`, the last 4 by sign flips.
        let pattern = [
            0x7f80_0001u64,
            0x7fc0_0001,
            0xffc0_0001,
            0,
            0x8000_0000,
            0x3f80_0000,
            0xff80_0001,
            0x8000_0000,
        ];
        let input: Vec<u64> = pattern.iter().cycle().take(40).copied().collect();
        let out = resolved::<4>("complex64", &input, false, true);
        let lanes = [
            0x7fc0_0001,
            0x7fc0_0001,
            0xffc0_0001,
            0,
            0,
            0xbf80_0000,
            0xffc0_0001,
            0,
        ];
        assert_eq!(out[..8], lanes);
        let tail = [
            0xff80_0001u64,
            0xffc0_0001,
            0x7fc0_0001,
            0x8000_0000,
            0,
            0xbf80_0000,
            0x7f80_0001,
            0,
        ];
        assert_eq!(out[32..], tail);
        // float16 / bfloat16, 64 elements: all vectorized, plain sign flips.
        let f16: Vec<u16> = [0x7c01u16, 0, 0x8000, 0x3c00].repeat(16);
        let got = words("float16", &f16, false, true);
        assert_eq!(got[..4], [0xfc01, 0x8000, 0, 0xbc00]);
        let bf16: Vec<u16> = [0x7f81u16, 0, 0x8000, 0x3f80].repeat(16);
        let got = words("bfloat16", &bf16, false, true);
        assert_eq!(got[..4], [0xff81, 0x8000, 0, 0xbf80]);
        // complex128, 8 elements: all vectorized.
        let c128: Vec<u64> =
            [0x7ff0_0000_0000_0001u64, 0, 1 << 63, 0x3ff0_0000_0000_0000].repeat(4);
        let got = resolved::<8>("complex128", &c128, false, true);
        assert_eq!(
            got[..4],
            [0x7ff8_0000_0000_0001, 0, 0, 0xbff0_0000_0000_0000]
        );
    }
}
