//! The candle hand-off (`--features candle`):
//!
//! - a candle-nn model (`Embedding` -> `LayerNorm` -> `Linear` -> relu -> `Linear`) built with
//!   `ptfile::candle::var_builder` from a checkpoint torch writes at test time gives, for a
//!   fixed input, the output torch computes for the same weights: float32 weights nested
//!   under `state_dict` (with a transposed view), and bfloat16 weights in the legacy format
//!   read into a float32 model;
//! - `ptfile::candle::load` reads every fixture whose dtypes candle has (tests/fixtures,
//!   tests/data) with torch's sha256 and values, and refuses the others naming the key and
//!   the dtype;
//! - `candle_core::pickle::read_all` is measured on the same files by the same rule (the
//!   counts the README quotes are printed by `candle_pickle_and_ptfile_side_by_side`).
#![cfg(feature = "candle")]

mod common;

use std::path::Path;

use common::described::*;
use std::process::Command;

use candle_core::{CpuStorage, DType as CDType, Device, Module, Storage, Tensor};
use half::{bf16, f16};
use ptfile::candle::{candle_dtype, Options};
use ptfile::dtype::{float8_to_f64, Float8};
use ptfile::{Checkpoint, DType};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The described tensors that have values (a storage).
fn valued_tensors(desc: &Value) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    described_tensors(&desc["root"], "", &mut all);
    all.retain(|(_, d)| d.get("storage").is_some_and(|s| !s.is_null()));
    all
}

fn float8_of(torch: &str) -> Option<Float8> {
    Some(match torch {
        "float8_e5m2" => Float8::E5M2,
        "float8_e4m3fn" => Float8::E4M3FN,
        "float8_e5m2fnuz" => Float8::E5M2FNUZ,
        "float8_e4m3fnuz" => Float8::E4M3FNUZ,
        "float8_e8m0fnu" => Float8::E8M0FNU,
        _ => return None,
    })
}

/// A CPU candle tensor's elements, row-major, as the bytes of its own dtype.
fn candle_raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap().contiguous().unwrap();
    let (storage, layout) = t.storage_and_layout();
    let (start, n) = (layout.start_offset(), t.elem_count());
    let Storage::Cpu(s) = &*storage else {
        panic!("not a CPU tensor")
    };
    fn pod<T: bytemuck::Pod>(v: &[T], start: usize, n: usize) -> Vec<u8> {
        bytemuck::cast_slice(&v[start..start + n]).to_vec()
    }
    match s {
        CpuStorage::U8(v) => pod(v, start, n),
        CpuStorage::U32(v) => pod(v, start, n),
        CpuStorage::I16(v) => pod(v, start, n),
        CpuStorage::I32(v) => pod(v, start, n),
        CpuStorage::I64(v) => pod(v, start, n),
        CpuStorage::BF16(v) => pod(v, start, n),
        CpuStorage::F16(v) => pod(v, start, n),
        CpuStorage::F32(v) => pod(v, start, n),
        CpuStorage::F64(v) => pod(v, start, n),
        CpuStorage::F8E4M3(v) => v[start..start + n].iter().map(|x| x.to_bits()).collect(),
        CpuStorage::F8E8M0(v)
        | CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v) => v[start..start + n].to_vec(),
    }
}

/// A candle tensor's elements as torch's row-major little-endian bytes of `torch` (the
/// dtype it was saved as), undoing ptfile's documented conversions; None when the tensor's
/// candle dtype is not the one ptfile gives `torch` (then it is not torch's tensor).
fn torch_bytes(t: &Tensor, torch: &str) -> Option<Vec<u8>> {
    let dtype = DType::from_name(torch)?;
    if candle_dtype(dtype).ok()? != t.dtype() {
        return None;
    }
    let raw = candle_raw_bytes(t);
    Some(match torch {
        "bool" => raw,
        "int8" => raw
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as i8 as u8)
            .collect(),
        "uint16" => raw
            .chunks_exact(4)
            .flat_map(|b| (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u16).to_le_bytes())
            .collect(),
        "uint64" => raw,
        t8 if t.dtype() == CDType::F16 && float8_of(t8).is_some() => {
            let f = float8_of(t8).unwrap();
            raw.chunks_exact(2)
                .map(|b| {
                    let h = u16::from_le_bytes([b[0], b[1]]);
                    (0..=255u8)
                        .find(|&c| f16::from_f64(float8_to_f64(f, c)).to_bits() == h)
                        .expect("an f16 no float8 gives")
                })
                .collect()
        }
        _ => raw,
    })
}

/// Whether a candle tensor is the described tensor `d`: dtype (as ptfile maps it), shape,
/// sha256 of torch's bytes, and the described values. Err says how it differs.
fn matches(t: &Tensor, d: &Value) -> Result<(), String> {
    let torch = d["dtype"].as_str().unwrap();
    let shape: Vec<usize> = d["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    if t.dims() != &shape[..] {
        return Err(format!("shape {:?}, torch's {shape:?}", t.dims()));
    }
    let Some(bytes) = torch_bytes(t, torch) else {
        return Err(format!("candle dtype {:?} for torch {torch}", t.dtype()));
    };
    let sha = hex(&Sha256::digest(&bytes));
    if sha != d["sha256"].as_str().unwrap() {
        return Err(format!("sha256 {sha}, torch's {}", d["sha256"]));
    }
    let Some(want) = d.get("values").and_then(|v| v.as_array()) else {
        return Ok(());
    };
    let flat = t.flatten_all().unwrap();
    let dtype = DType::from_name(torch).unwrap();
    match dtype.kind() {
        ptfile::dtype::Kind::Float
        | ptfile::dtype::Kind::BFloat
        | ptfile::dtype::Kind::Float8(_) => {
            // Through F32 (exact for every float8 and float16): candle 0.11's F8E4M3 -> F64
            // overflows the stack.
            let wide = if flat.dtype() == CDType::F64 {
                flat.clone()
            } else {
                flat.to_dtype(CDType::F32).unwrap()
            };
            let got = wide
                .to_dtype(CDType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let round = |w: f64| match torch {
                "float32" => w as f32 as f64,
                "float16" => f16::from_f64(w).to_f64(),
                "bfloat16" => bf16::from_f64(w).to_f64(),
                _ => w,
            };
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let w = round(float_of(w));
                let same = (g.is_nan() && w.is_nan())
                    || (*g == w && g.is_sign_negative() == w.is_sign_negative())
                    || (g.is_finite()
                        && *g != 0.0
                        && (g - w).abs() <= w.abs() * 4.0 * f64::EPSILON);
                if !same {
                    return Err(format!("[{k}] {g} vs torch's {w}"));
                }
            }
        }
        ptfile::dtype::Kind::Int | ptfile::dtype::Kind::UInt | ptfile::dtype::Kind::Bool => {
            let got = flat
                .to_dtype(CDType::I64)
                .unwrap()
                .to_vec1::<i64>()
                .unwrap();
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let w = w
                    .as_i64()
                    .or_else(|| w.as_bool().map(i64::from))
                    .unwrap_or_else(|| panic!("int {w}"));
                if *g != w {
                    return Err(format!("[{k}] {g} vs torch's {w}"));
                }
            }
        }
        _ => return Err(format!("values of {torch}")),
    }
    if got_len(&flat) != want.len() {
        return Err(format!("{} values, torch's {}", got_len(&flat), want.len()));
    }
    Ok(())
}

fn got_len(t: &Tensor) -> usize {
    t.elem_count()
}

/// Whether every tensor of the checkpoint has a candle form (what `load` needs), or the
/// first that has none, as (name, dtype).
fn first_refused(file: &Path) -> Option<(String, String)> {
    let ckpt = Checkpoint::open(file).unwrap();
    for (name, t) in ckpt.tensors() {
        let no_values = t.tensor().storage.is_none() && t.numel() > 0;
        // uint64 becomes I64 only when every value fits.
        let too_big = t.dtype() == DType::UINT64
            && t.to_vec::<u64>()
                .unwrap()
                .iter()
                .any(|&x| x > i64::MAX as u64);
        if candle_dtype(t.dtype()).is_err() || no_values || too_big {
            return Some((name, t.dtype().to_string()));
        }
    }
    None
}

/// Whether `read` (a reader of a whole file into named candle tensors) gives every described
/// tensor of `desc` as torch has it; (correct, tensors right, why not).
fn judge(
    desc: &Value,
    read: Result<Vec<(String, Tensor)>, String>,
) -> (bool, usize, Option<String>) {
    let tensors = match read {
        Ok(t) => t,
        Err(e) => return (false, 0, Some(e)),
    };
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let mut right = 0;
    let mut why = None;
    for (name, d) in valued_tensors(desc) {
        match map.get(&name).map(|t| matches(t, &d)) {
            Some(Ok(())) => right += 1,
            Some(Err(e)) => {
                why.get_or_insert(format!("{name}: {e}"));
            }
            None => {
                why.get_or_insert(format!("{name}: missing"));
            }
        }
    }
    (why.is_none(), right, why)
}

#[test]
fn load_reads_every_fixture_whose_dtypes_candle_has() {
    let mut read = 0;
    let mut refused = 0;
    for (file, desc) in described_files() {
        let at = file.display().to_string();
        let got = ptfile::candle::load(&file, &Device::Cpu);
        match first_refused(&file) {
            None => {
                let got = got.unwrap_or_else(|e| panic!("{at}: {e}"));
                let ckpt = Checkpoint::open(&file).unwrap();
                assert_eq!(got.len(), ckpt.tensors().count(), "{at}");
                let (ok, _, why) = judge(&desc, Ok(got.into_iter().collect()));
                assert!(ok, "{at}: {}", why.unwrap_or_default());
                read += 1;
            }
            Some((name, dtype)) => {
                let e = got.map(|_| ()).unwrap_err().to_string();
                assert!(e.contains(&name) && e.contains(&dtype), "{at}: {e}");
                refused += 1;
            }
        }
    }
    println!("ptfile::candle::load: {read} files read, {refused} refused by name and dtype");
    assert!(read >= 40, "{read} files read");
}

#[test]
fn candle_pickle_and_ptfile_side_by_side() {
    let (mut files, mut ptfile_ok, mut candle_ok, mut candle_panics) = (0, 0, 0, 0);
    let (mut tensors, mut ptfile_tensors, mut candle_tensors) = (0, 0, 0);
    let mut candle_failures = Vec::new();
    let mut ptfile_failures = Vec::new();
    for (file, desc) in described_files() {
        let valued = valued_tensors(&desc).len();
        if valued == 0 {
            continue;
        }
        files += 1;
        tensors += valued;
        let ours = ptfile::candle::load(&file, &Device::Cpu)
            .map(|m| m.into_iter().collect())
            .map_err(|e| e.to_string());
        let (ok, _, why) = judge(&desc, ours);
        ptfile_ok += usize::from(ok);
        if !ok {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            ptfile_failures.push(format!("{name}: {}", why.unwrap_or_default()));
        }
        // Per tensor: what ptfile hands to candle one by one (to_tensor), whatever the file's
        // other tensors hold.
        let ckpt = Checkpoint::open(&file).unwrap();
        for (name, d) in valued_tensors(&desc) {
            let t = ckpt.tensor(&name).unwrap();
            if ptfile::candle::to_tensor(&t, &Device::Cpu).is_ok_and(|x| matches(&x, &d).is_ok()) {
                ptfile_tensors += 1;
            }
        }

        let path = file.clone();
        let theirs = std::panic::catch_unwind(move || candle_core::pickle::read_all(&path))
            .unwrap_or_else(|_| {
                candle_panics += 1;
                Err(candle_core::Error::Msg("panicked".into()))
            })
            .map_err(|e| e.to_string());
        let (ok, right, why) = judge(&desc, theirs);
        candle_ok += usize::from(ok);
        candle_tensors += right;
        if !ok {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let why = why.unwrap_or_default();
            candle_failures.push(format!("{name}: {}", why.lines().next().unwrap_or("")));
        }
    }
    println!("files with values: {files} ({tensors} tensors)");
    println!(
        "ptfile::candle::load: {ptfile_ok} of {files} files read correctly; ptfile::candle::to_tensor: {ptfile_tensors} of {tensors} tensors"
    );
    for f in &ptfile_failures {
        println!("  ptfile: {f}");
    }
    println!(
        "candle_core::pickle::read_all: {candle_ok} of {files} files read correctly ({candle_tensors} of {tensors} tensors; {candle_panics} panics)"
    );
    for f in &candle_failures {
        println!("  candle: {f}");
    }
    assert!(ptfile_ok > candle_ok, "{ptfile_ok} vs {candle_ok}");
    assert!(ptfile_tensors > candle_tensors);
}

#[test]
fn dtypes_candle_lacks_convert_exactly_through_the_var_builder() {
    // dtypes_all.pt holds a uint64 above i64::MAX and complex tensors, so load refuses it
    // (naming the first); a var builder reads only what is asked and converts the rest as
    // documented.
    let file = root().join("tests/fixtures/dtypes_all.pt");
    let e = ptfile::candle::load(&file, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("uint64") && e.contains("i64::MAX"), "{e}");

    let desc: Value =
        serde_json::from_str(&std::fs::read_to_string(file.with_extension("json")).unwrap())
            .unwrap();
    let vb = ptfile::candle::var_builder(&file, CDType::F32, &Device::Cpu).unwrap();
    let ckpt = Checkpoint::open(&file).unwrap();
    let mut converted = 0;
    for (name, d) in valued_tensors(&desc) {
        let dtype = DType::from_name(d["dtype"].as_str().unwrap()).unwrap();
        match candle_dtype(dtype) {
            Ok(cd) => {
                let got = vb.get_unchecked_dtype(&name, cd);
                if dtype == DType::UINT64 {
                    let v: Vec<u64> = ckpt.tensor(&name).unwrap().to_vec().unwrap();
                    if v.iter().any(|&x| x > i64::MAX as u64) {
                        let e = got.unwrap_err().to_string();
                        assert!(e.contains(&name) && e.contains("uint64"), "{e}");
                        continue;
                    }
                }
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                matches(&got, &d).unwrap_or_else(|e| panic!("{name}: {e}"));
                if cd.size_in_bytes() != dtype.element_size() || dtype == DType::BOOL {
                    converted += 1;
                }
            }
            Err(why) => {
                let e = vb
                    .get_unchecked_dtype(&name, CDType::F32)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(&name) && e.contains(dtype.name()) && e.contains(&why),
                    "{e}"
                );
            }
        }
    }
    // bool, int8, uint16, float8_e5m2, float8_e4m3fnuz, float8_e5m2fnuz (uint64 when it fits).
    assert!(converted >= 6, "{converted} converted");

    // A float64 model from float8_e4m3fn weights (candle's own F8E4M3 -> F64 cast overflows
    // the stack; the var builder goes through F32, exactly).
    let w = vb
        .get_unchecked_dtype("float8_e4m3fn", CDType::F64)
        .unwrap();
    assert_eq!(
        w.to_vec1::<f64>().unwrap(),
        vec![0.0, 1.5, -2.25, 0.125, 3.0, 448.0]
    );
}

const TORCH_MODEL: &str = r#"
import json, sys, torch
torch.manual_seed(0)
out = sys.argv[1]
V, D, H, O = 11, 8, 16, 5

class M(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = torch.nn.Embedding(V, D)
        s.ln = torch.nn.LayerNorm(D)
        s.fc1 = torch.nn.Linear(D, H)
        s.fc2 = torch.nn.Linear(H, O)

    def forward(s, ids):
        return s.fc2(torch.relu(s.fc1(s.ln(s.emb(ids)))))

m = M()
with torch.no_grad():
    m.ln.weight.uniform_(0.5, 1.5)
    m.ln.bias.uniform_(-0.5, 0.5)
ids = torch.tensor([[1, 3, 5, 7], [10, 4, 6, 0]])

def dump(name, model):
    with torch.no_grad():
        y = model(ids)
    json.dump({"ids": ids.tolist(), "shape": list(y.shape), "y": y.flatten().tolist()},
              open(f"{out}/{name}.json", "w"))

# float32 under "state_dict" next to training state; fc2.weight a transposed (strided) view.
sd = m.state_dict()
sd["fc2.weight"] = sd["fc2.weight"].t().contiguous().t()
assert not sd["fc2.weight"].is_contiguous()
torch.save({"state_dict": sd, "epoch": 3}, f"{out}/f32.pt")
dump("f32", m)

# bfloat16 weights in the legacy format; torch's output in float32 from the rounded weights.
mb = M()
mb.load_state_dict(m.state_dict())
mb = mb.to(torch.bfloat16)
torch.save(mb.state_dict(), f"{out}/bf16.pt", _use_new_zipfile_serialization=False)
dump("bf16", mb.float())
"#;

const V: usize = 11;
const D: usize = 8;
const H: usize = 16;
const O: usize = 5;

struct Model {
    emb: candle_nn::Embedding,
    ln: candle_nn::LayerNorm,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

impl Model {
    fn new(vb: candle_nn::VarBuilder<'_>) -> candle_core::Result<Model> {
        Ok(Model {
            emb: candle_nn::embedding(V, D, vb.pp("emb"))?,
            ln: candle_nn::layer_norm(D, 1e-5, vb.pp("ln"))?,
            fc1: candle_nn::linear(D, H, vb.pp("fc1"))?,
            fc2: candle_nn::linear(H, O, vb.pp("fc2"))?,
        })
    }
}

impl Module for Model {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.ln.forward(&self.emb.forward(ids)?)?;
        self.fc2.forward(&self.fc1.forward(&x)?.relu()?)
    }
}

/// torch's input and output for one checkpoint.
fn expected(dir: &Path, name: &str) -> (Tensor, Vec<usize>, Vec<f32>) {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let ids: Vec<Vec<u32>> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let y = v["y"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (Tensor::new(ids, &Device::Cpu).unwrap(), shape, y)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_candle_nn_model_from_a_torch_checkpoint_computes_what_torch_computes() {
    let Some(py) = common::present_or_skip("torch", common::torch_python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&py)
        .arg("-c")
        .arg(TORCH_MODEL)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        py.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = Device::Cpu;

    // float32, nested: the prefix finds it; without it the error names the prefix to set.
    let f32_pt = dir.path().join("f32.pt");
    let bare = ptfile::candle::var_builder(&f32_pt, CDType::F32, &dev).unwrap();
    let e = Model::new(bare)
        .err()
        .expect("found without a prefix")
        .to_string();
    assert!(
        e.contains("state_dict.") && e.contains("prefix(\"state_dict\")"),
        "{e}"
    );
    let vb = ptfile::candle::var_builder_with(
        &f32_pt,
        CDType::F32,
        &dev,
        Options::new().prefix("state_dict"),
    )
    .unwrap();
    assert!(vb.contains_tensor("fc2.weight") && !vb.contains_tensor("epoch"));
    let e = vb.get((3, 3), "fc1.weight").unwrap_err().to_string();
    assert!(
        e.contains("state_dict.fc1.weight") && e.contains("[3, 3]") && e.contains("[16, 8]"),
        "{e}"
    );
    let model = Model::new(vb).unwrap();
    let (ids, shape, want) = expected(dir.path(), "f32");
    let y = model.forward(&ids).unwrap();
    assert_eq!(y.dims(), &shape[..]);
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_diff(&got, &want);
    println!("float32: max |candle - torch| = {d:e}");
    assert!(d <= 1e-5, "float32 output differs from torch's by {d}");

    // The same tensors through load (with the prefix), the strided view made contiguous.
    let all =
        ptfile::candle::load_with(&f32_pt, &dev, &Options::new().prefix("state_dict")).unwrap();
    assert_eq!(all.len(), 7, "{:?}", all.keys().collect::<Vec<_>>());
    assert!(all["fc2.weight"].is_contiguous());

    // bfloat16 legacy checkpoint into a float32 model: converted on the way in.
    let bf16_pt = dir.path().join("bf16.pt");
    let vb = ptfile::candle::var_builder(&bf16_pt, CDType::F32, &dev).unwrap();
    assert_eq!(vb.get((H, D), "fc1.weight").unwrap().dtype(), CDType::F32);
    let raw = vb.get_unchecked_dtype("fc1.weight", CDType::BF16).unwrap();
    assert_eq!(raw.dtype(), CDType::BF16);
    let model = Model::new(vb).unwrap();
    let (ids, shape, want) = expected(dir.path(), "bf16");
    let y = model.forward(&ids).unwrap();
    assert_eq!(y.dims(), &shape[..]);
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = max_diff(&got, &want);
    println!("bfloat16 -> float32: max |candle - torch| = {d:e}");
    assert!(
        d <= 1e-5,
        "bf16 checkpoint output differs from torch's by {d}"
    );
}
