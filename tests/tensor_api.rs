//! The tensor API against PyTorch's own descriptions: every tensor of every fixture (zip,
//! legacy, TorchScript, whole modules, real published files, big-endian, views, conj/neg),
//! read by name with `Checkpoint::tensor` / `tensors`, on the file and on a `Loaded` from the
//! CPU (owned and mapped) and from wgpu, has torch's dtype, shape, strides, offset, sha256 of
//! its row-major little-endian elements and values.

mod common;

use std::path::Path;

use common::described::*;

use half::{bf16, f16};
use ptfile::{Checkpoint, CpuMode, DType, Error, Loader, MapLocation, TensorView};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Whether `got` (an element widened to f64) is the described `want`: bit-equal once `want`
/// is rounded to the element's type with `round` (JSON parsing may be an ulp off in f64).
fn same_float(got: f64, want: f64, round: fn(f64) -> f64) -> bool {
    let w = round(want);
    (got.is_nan() && w.is_nan())
        || (got == w && got.is_sign_negative() == w.is_sign_negative())
        || (got.is_finite() && (got - w).abs() <= w.abs() * 4.0 * f64::EPSILON && got != 0.0)
}

/// Compares `to_vec` of the dtype's own Rust type with the described values; returns
/// whether the dtype has a Rust element type.
fn check_values(t: &TensorView<'_>, want: &[Value], at: &str) -> bool {
    macro_rules! floats {
        ($ty:ty, $conv:expr, $round:expr) => {{
            let got: Vec<$ty> = t.to_vec().unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(got.len(), want.len(), "{at}");
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let g: f64 = $conv(*g);
                assert!(same_float(g, float_of(w), $round), "{at}[{k}]: {g} vs {w}");
            }
        }};
    }
    macro_rules! ints {
        ($ty:ty) => {{
            let got: Vec<$ty> = t.to_vec().unwrap_or_else(|e| panic!("{at}: {e}"));
            let want: Vec<i128> = want
                .iter()
                .map(|w| {
                    w.as_i64()
                        .map(i128::from)
                        .unwrap_or_else(|| w.as_u64().unwrap() as i128)
                })
                .collect();
            let got: Vec<i128> = got.iter().map(|&g| g as i128).collect();
            assert_eq!(got, want, "{at}");
        }};
    }
    match t.dtype().name() {
        "float32" => floats!(f32, |g: f32| g as f64, |w| w as f32 as f64),
        "float64" => floats!(f64, |g: f64| g, |w| w),
        "float16" => floats!(f16, |g: f16| g.to_f64(), |w| f16::from_f64(w).to_f64()),
        "bfloat16" => floats!(bf16, |g: bf16| g.to_f64(), |w| bf16::from_f64(w).to_f64()),
        "int8" => ints!(i8),
        "int16" => ints!(i16),
        "int32" => ints!(i32),
        "int64" => ints!(i64),
        "uint8" => ints!(u8),
        "uint16" => ints!(u16),
        "uint32" => ints!(u32),
        "bool" => {
            let got: Vec<bool> = t.to_vec().unwrap();
            let want: Vec<bool> = want.iter().map(|w| w.as_bool().unwrap()).collect();
            assert_eq!(got, want, "{at}");
        }
        _ => return false,
    }
    true
}

/// Checks every described tensor through `get` (a name lookup on a file or a load);
/// returns how many were checked.
fn check_against<'a>(
    file: &Path,
    desc: &Value,
    get: impl Fn(&str) -> ptfile::Result<TensorView<'a>>,
    names: &[String],
) -> usize {
    let mut tensors = Vec::new();
    described_tensors(&desc["root"], "", &mut tensors);
    let mut checked = 0;
    for (name, d) in &tensors {
        let at = format!("{} {name}", file.display());
        assert!(
            names.contains(name),
            "{at}: not among the names tensors() yields"
        );
        let t = get(name).unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(t.name(), name);
        assert_eq!(t.dtype().name(), d["dtype"].as_str().unwrap(), "{at}");
        let ints = |v: &Value| -> Vec<i64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        };
        assert_eq!(t.shape(), &ints(&d["shape"])[..], "{at}");
        assert_eq!(t.strides(), &ints(&d["stride"])[..], "{at}");
        assert_eq!(
            t.storage_offset(),
            d["storage_offset"].as_i64().unwrap(),
            "{at}"
        );
        let numel: i64 = t.shape().iter().product();
        assert_eq!(t.numel() as i64, numel, "{at}");
        if d.get("storage").is_none_or(|s| s.is_null()) {
            // No storage (meta): no values either.
            assert!(
                matches!(t.to_bytes(), Err(Error::View { .. })) || numel == 0,
                "{at}"
            );
            continue;
        }
        let bytes = t.to_bytes().unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(bytes.len(), t.numel() * t.dtype().element_size(), "{at}");
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            d["sha256"].as_str().unwrap(),
            "{at}"
        );
        if let Some(want) = d.get("values").and_then(|v| v.as_array()) {
            check_values(&t, want, &at);
        }
        checked += 1;
    }
    checked
}

#[test]
fn every_described_tensor_reads_as_torch_gives_it() {
    let mut total = 0;
    let mut files = 0;
    for (file, desc) in described_files() {
        let ckpt = Checkpoint::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let names: Vec<String> = ckpt.tensors().map(|(n, _)| n).collect();
        // Every tensor the walk names can be read.
        for (n, t) in ckpt.tensors() {
            assert_eq!(n, t.name());
            if t.tensor().storage.is_some() {
                t.to_bytes()
                    .unwrap_or_else(|e| panic!("{} {n}: {e}", file.display()));
            }
        }
        total += check_against(&file, &desc, |n| ckpt.tensor(n), &names);
        files += 1;
    }
    assert!(
        files >= 45 && total >= 200,
        "{files} files, {total} tensors"
    );
}

#[test]
fn loaded_tensors_read_back_from_the_cpu_owned_and_mapped() {
    for mode in [CpuMode::Owned, CpuMode::Mapped] {
        for (file, desc) in described_files() {
            let loaded = Loader::new()
                .map_location(MapLocation::to("cpu"))
                .cpu_mode(mode)
                .load(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let names: Vec<String> = loaded.tensors().map(|(n, _)| n).collect();
            for (_, t) in loaded.tensors() {
                assert!(
                    t.device() == "cpu" || t.device() == "meta",
                    "{}",
                    t.device()
                );
            }
            check_against(
                &file,
                &desc,
                |n| loaded.tensor(n).map(|t| t.view().clone()),
                &names,
            );
        }
    }
}

#[test]
fn loaded_tensors_read_back_from_wgpu() {
    let registry = ptfile::Registry::default();
    let available = registry
        .backend("wgpu")
        .map(|b| b.availability().devices())
        .unwrap_or(0);
    if available == 0 {
        common::skip_or_fail(
            "wgpu",
            "the loaded-tensor test reads tensors back from wgpu",
        );
        return;
    }
    let mut on_gpu = 0;
    for (file, desc) in described_files() {
        let loaded = Loader::new()
            .map_location(MapLocation::to("wgpu:0"))
            .load(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let names: Vec<String> = loaded.tensors().map(|(n, _)| n).collect();
        for (n, t) in loaded.tensors() {
            if t.device().starts_with("wgpu") {
                on_gpu += 1;
                // Device memory is not host memory: borrowing says so and points to to_vec.
                if t.numel() > 0 && t.dtype() == DType::FLOAT32 {
                    let e = t.as_slice::<f32>().unwrap_err().to_string();
                    assert!(e.contains("to_vec"), "{n}: {e}");
                }
            }
        }
        check_against(
            &file,
            &desc,
            |n| loaded.tensor(n).map(|t| t.view().clone()),
            &names,
        );
    }
    assert!(on_gpu > 100, "{on_gpu} tensors on wgpu");
}

#[test]
fn misaligned_legacy_storages_read_with_to_vec_and_refuse_to_borrow() {
    let ckpt =
        Checkpoint::open(root().join("tests/fixtures/training_checkpoint_legacy.pt")).unwrap();
    let mut misaligned = 0;
    for (name, t) in ckpt.tensors() {
        if t.dtype() != DType::FLOAT32 || t.numel() == 0 || !t.is_contiguous() {
            continue;
        }
        let v: Vec<f32> = t.to_vec().unwrap();
        assert_eq!(v.len(), t.numel());
        match t.as_slice::<f32>() {
            Ok(s) => assert_eq!(s, &v[..], "{name}"),
            Err(e) => {
                misaligned += 1;
                let e = e.to_string();
                assert!(e.contains("aligned") && e.contains("to_vec"), "{e}");
            }
        }
    }
    assert!(misaligned > 0, "no misaligned storage in the legacy file");
}

#[test]
fn borrowing_is_zero_copy_on_an_aligned_zip_file() {
    let ckpt = Checkpoint::open(root().join("tests/fixtures/seed_mymodule_state_dict.pt")).unwrap();
    let map = ckpt.source().bytes().as_ptr_range();
    let t = ckpt.tensor("l0.weight").unwrap();
    let s = t.as_slice::<f32>().unwrap();
    assert!(
        map.contains(&(s.as_ptr() as *const u8)),
        "not borrowed from the file map"
    );
    assert!(matches!(
        t.to_bytes().unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(s, &t.to_vec::<f32>().unwrap()[..]);
}

#[test]
fn wrong_type_unknown_name_and_meta_are_errors_that_say_what_to_do() {
    let ckpt = Checkpoint::open(root().join("tests/fixtures/seed_mymodule_state_dict.pt")).unwrap();
    let t = ckpt.tensor("l0.weight").unwrap();
    let e = t.to_vec::<f64>().unwrap_err();
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("float32") && msg.contains("float64") && msg.contains("f32"),
        "{msg}"
    );
    assert!(t.as_slice::<half::bf16>().is_err());

    let e = ckpt.tensor("l0.wieght").unwrap_err();
    match &e {
        Error::NoTensor { name, close } => {
            assert_eq!(name, "l0.wieght");
            assert_eq!(close.first().map(String::as_str), Some("l0.weight"), "{e}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("l0.weight"));

    let meta = Checkpoint::open(root().join("tests/fixtures/meta.pt")).unwrap();
    let (name, t) = meta.tensors().next().unwrap();
    let e = t
        .to_vec::<f32>()
        .map(|_| ())
        .or_else(|_| t.to_bytes().map(|_| ()));
    assert!(e.is_err() || t.numel() == 0, "{name}");
    let loaded = Loader::new()
        .load(root().join("tests/fixtures/meta.pt"))
        .unwrap();
    let lt = loaded.tensor(&name).unwrap();
    assert_eq!(lt.device(), "meta");
    assert_eq!(lt.storage().nbytes(), 0);
}

#[test]
fn neg_and_conj_views_resolve_as_torch_resolves_them() {
    let Some(py) = common::present_or_skip("torch", common::torch_python()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("views.pt");
    let script = r#"
import sys, json, torch
torch.manual_seed(0)
x = torch.randn(4, 6)
c = torch.randn(3, 5, dtype=torch.complex64)
views = {
    "neg": x._neg_view(),
    "neg_t": x.t()._neg_view(),
    "neg_strided": x[:, ::2]._neg_view(),
    "neg_bf16": x.to(torch.bfloat16)._neg_view(),
    "neg_i64": torch.arange(-5, 7)._neg_view(),
    "conj": c.conj(),
    "conj_t": c.t().conj(),
}
torch.save(views, sys.argv[1])
out = {}
for k, v in views.items():
    r = v.resolve_neg().resolve_conj()
    raw = torch.view_as_real(r) if r.is_complex() else r
    out[k] = {"hex": raw.contiguous().view(torch.uint8).numpy().tobytes().hex(),
              "values": None if r.is_complex() else r.float().flatten().tolist()}
print(json.dumps(out))
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ckpt = Checkpoint::open(&file).unwrap();
    for (name, w) in want.as_object().unwrap() {
        let t = ckpt.tensor(name).unwrap();
        assert_eq!(
            hex(&t.to_bytes().unwrap()),
            w["hex"].as_str().unwrap(),
            "{name}"
        );
        assert!(
            t.as_slice::<u8>().is_err(),
            "{name}: a neg/conj view must not borrow"
        );
        if let Some(vals) = w["values"].as_array() {
            let got: Vec<f64> = match t.dtype().name() {
                "float32" => t
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                "bfloat16" => t
                    .to_vec::<bf16>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_f64())
                    .collect(),
                "int64" => t
                    .to_vec::<i64>()
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                other => panic!("{other}"),
            };
            let vals: Vec<f64> = vals.iter().map(float_of).collect();
            assert_eq!(got, vals, "{name}");
        }
    }
    // The same through a load onto the CPU.
    let loaded = Loader::new()
        .map_location(MapLocation::to("cpu"))
        .load(&file)
        .unwrap();
    for (name, w) in want.as_object().unwrap() {
        let t = loaded.tensor(name).unwrap();
        assert_eq!(
            hex(&t.to_bytes().unwrap()),
            w["hex"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn big_endian_files_read_little_endian_values() {
    let big = Checkpoint::open(root().join("tests/fixtures/byteorder_big.pt")).unwrap();
    assert_eq!(big.byteorder, ptfile::ByteOrder::Big);
    let mut wide = 0;
    for (name, t) in big.tensors() {
        if t.numel() > 0 && t.dtype().element_size() > 1 {
            wide += 1;
            assert!(
                !matches!(t.to_bytes().unwrap(), std::borrow::Cow::Borrowed(_)),
                "{name}"
            );
            if t.dtype() == DType::FLOAT32 {
                let e = t.as_slice::<f32>().unwrap_err().to_string();
                assert!(e.contains("to_vec"), "{e}");
            }
        }
    }
    assert!(wide > 0);
}
