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

use crate::error::{Error, Result};
use crate::torch::checkpoint::Checkpoint;
use crate::torch::dtype::{DType, Kind};
use crate::torch::elements::{
    elements_f64, elements_i64, float_value, for_each_element, int_value, part, Resolver,
};
use crate::torch::model::{Object, Tensor};

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
#[non_exhaustive]
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
    if let Some((u, e)) = crate::torch::model::is_amplified(root) {
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
        "byteorder": match ckpt.byteorder { crate::torch::checkpoint::ByteOrder::Little => "little", crate::torch::checkpoint::ByteOrder::Big => "big" },
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
pub(crate) const MAX_TEXT_BYTES: u64 = 256 << 20;

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
        let r = if self.depth > crate::torch::model::MAX_TREE_DEPTH {
            Err(Error::Unsupported {
                what: format!(
                    "the object tree is nested deeper than {} levels",
                    crate::torch::model::MAX_TREE_DEPTH
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
                if let Some(sd) = crate::torch::nn_module::module_state_dict(o) {
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

    fn qtensor(&mut self, q: &crate::torch::model::QTensor) -> Result<Value> {
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
            ints = elements_i64(t, &self.bytes.storage_bytes(si)?);
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
                    scales = elements_f64(p, &b);
                } else {
                    zps = elements_i64(p, &b);
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

    fn sparse(&mut self, s: &crate::torch::model::SparseTensor) -> Result<Value> {
        let dense = crate::torch::sparse::to_dense(s, &|i| self.bytes.storage_bytes(i))?;
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

/// sha256 of the tensor's elements in row-major order (little-endian), and its values when it
/// has at most `max_values` elements.
pub(crate) fn tensor_digest(t: &Tensor, bytes: &[u8], max_values: u64) -> (String, Option<Value>) {
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

/// One element (little-endian bytes) as a description value; None where torch gives no
/// Python value (uint64, packed and bit types).
pub(crate) fn element_json(dtype: DType, b: &[u8]) -> Option<Value> {
    if let Some(f) = float_value(dtype, b) {
        return Some(float_json(f));
    }
    Some(match dtype.kind() {
        Kind::Bool => json!(b[0] != 0),
        Kind::Int | Kind::UInt | Kind::Quantized => {
            json!(int_value(dtype, b)?)
        }
        Kind::Complex(p) => {
            let h = dtype.element_size() / 2;
            json!([float_json(part(p, &b[..h])), float_json(part(p, &b[h..]))])
        }
        _ => return None,
    })
}

mod human;
pub use human::{human, human_bytes, human_with};
