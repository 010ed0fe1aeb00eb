//! The ndarray hand-off (`--features ndarray`) against PyTorch's own descriptions: every
//! tensor of every fixture (tests/fixtures, tests/data) as `to_ndarray` has torch's shape,
//! sha256 of its row-major little-endian elements and values; `as_array_view` borrows in
//! place with torch's strides (transposed and sliced views stay strided) or says to use
//! `to_ndarray` (misaligned legacy storages, big-endian files, conj/neg views, device memory).
#![cfg(feature = "ndarray")]

mod common;

use std::path::Path;

use common::described::*;

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD};
use ptfile::{Checkpoint, CpuMode, Element, Error, Loader, MapLocation, TensorView};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// An element type's values as a description compares them.
trait Described: Element + PartialEq + std::fmt::Debug {
    /// Whether this element is the described `want`.
    fn is(self, want: &Value) -> bool;
}

macro_rules! described_float {
    ($($t:ty => $to:expr, $round:expr);*) => {$(
        impl Described for $t {
            fn is(self, want: &Value) -> bool {
                let g: f64 = $to(self);
                let w: f64 = $round(float_of(want));
                (g.is_nan() && w.is_nan())
                    || (g == w && g.is_sign_negative() == w.is_sign_negative())
                    || (g.is_finite() && g != 0.0 && (g - w).abs() <= w.abs() * 4.0 * f64::EPSILON)
            }
        }
    )*};
}

described_float!(
    f32 => |g: f32| g as f64, |w: f64| w as f32 as f64;
    f64 => |g: f64| g, |w: f64| w;
    f16 => |g: f16| g.to_f64(), |w: f64| f16::from_f64(w).to_f64();
    bf16 => |g: bf16| g.to_f64(), |w: f64| bf16::from_f64(w).to_f64()
);

macro_rules! described_int {
    ($($t:ty),*) => {$(
        impl Described for $t {
            fn is(self, want: &Value) -> bool {
                let w = want
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| want.as_u64().map(i128::from));
                w == Some(self as i128)
            }
        }
    )*};
}

described_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Described for bool {
    fn is(self, want: &Value) -> bool {
        want.as_bool() == Some(self)
    }
}

/// What one tensor showed.
#[derive(Default)]
struct Seen {
    /// Tensors compared through to_ndarray.
    copied: usize,
    /// Borrowed by as_array_view.
    borrowed: usize,
    /// Borrowed and not contiguous (strides kept).
    borrowed_strided: usize,
    /// Refused by as_array_view, with the reason.
    refused: Vec<String>,
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Checks one tensor of element type `T` against its description.
fn check_as<T: Described>(t: &TensorView<'_>, d: &Value, at: &str, seen: &mut Seen) {
    let shape = usizes(&d["shape"]);
    let owned: ArrayD<T> = t.to_ndarray().unwrap_or_else(|e| panic!("{at}: {e}"));
    assert_eq!(owned.shape(), &shape[..], "{at}");
    assert!(owned.is_standard_layout(), "{at}");
    let elems = owned.as_slice().unwrap();
    assert_eq!(
        hex(&Sha256::digest(T::as_bytes(elems))),
        d["sha256"].as_str().unwrap(),
        "{at}: sha256 of to_ndarray's elements"
    );
    if let Some(want) = d.get("values").and_then(|v| v.as_array()) {
        assert_eq!(elems.len(), want.len(), "{at}");
        for (k, (g, w)) in elems.iter().zip(want).enumerate() {
            assert!(g.is(w), "{at}[{k}]: {g:?} vs {w}");
        }
    }
    seen.copied += 1;

    match t.as_array_view::<T>() {
        Ok(view) => {
            let view: ArrayViewD<'_, T> = view;
            assert_eq!(view.shape(), &shape[..], "{at}");
            if !owned.is_empty() {
                let strides: Vec<isize> = d["stride"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap() as isize)
                    .collect();
                assert_eq!(
                    view.strides(),
                    &strides[..],
                    "{at}: as_array_view's strides"
                );
                // The view is the storage itself: its first element's address is in the
                // bytes the file (or load) holds, and it reads as the copy.
                for (k, (a, b)) in view.iter().zip(owned.iter()).enumerate() {
                    assert!(
                        a == b || a.is(&Value::String("nan".into())),
                        "{at}[{k}]: {a:?} vs {b:?}"
                    );
                }
                if !t.is_contiguous() {
                    seen.borrowed_strided += 1;
                }
            }
            seen.borrowed += 1;
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("to_ndarray"), "{at}: {msg}");
            assert!(matches!(e, Error::View { .. }), "{at}: {msg}");
            seen.refused.push(format!("{at}: {msg}"));
        }
    }
}

/// Checks a tensor whose dtype has a Rust element type; false for the others (complex,
/// float8, quantized: to_ndarray cannot hold them).
fn check_tensor(t: &TensorView<'_>, d: &Value, at: &str, seen: &mut Seen) -> bool {
    match t.dtype().name() {
        "float32" => check_as::<f32>(t, d, at, seen),
        "float64" => check_as::<f64>(t, d, at, seen),
        "float16" => check_as::<f16>(t, d, at, seen),
        "bfloat16" => check_as::<bf16>(t, d, at, seen),
        "int8" => check_as::<i8>(t, d, at, seen),
        "int16" => check_as::<i16>(t, d, at, seen),
        "int32" => check_as::<i32>(t, d, at, seen),
        "int64" => check_as::<i64>(t, d, at, seen),
        "uint8" => check_as::<u8>(t, d, at, seen),
        "uint16" => check_as::<u16>(t, d, at, seen),
        "uint32" => check_as::<u32>(t, d, at, seen),
        "uint64" => check_as::<u64>(t, d, at, seen),
        "bool" => check_as::<bool>(t, d, at, seen),
        _ => return false,
    }
    true
}

/// Checks every described tensor with storage of `file` through `get`.
fn check_file<'a>(
    file: &Path,
    desc: &Value,
    get: impl Fn(&str) -> ptfile::Result<TensorView<'a>>,
    seen: &mut Seen,
) {
    let mut tensors = Vec::new();
    described_tensors(&desc["root"], "", &mut tensors);
    for (name, d) in &tensors {
        if d.get("storage").is_none_or(|s| s.is_null()) {
            continue; // meta: no values
        }
        let at = format!("{} {name}", file.display());
        let t = get(name).unwrap_or_else(|e| panic!("{at}: {e}"));
        check_tensor(&t, d, &at, seen);
    }
}

#[test]
fn every_described_tensor_as_ndarray_is_torchs() {
    let mut seen = Seen::default();
    for (file, desc) in described_files() {
        let ckpt = Checkpoint::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        check_file(&file, &desc, |n| ckpt.tensor(n), &mut seen);
    }
    println!(
        "{} tensors copied, {} borrowed ({} strided), {} refused to borrow",
        seen.copied,
        seen.borrowed,
        seen.borrowed_strided,
        seen.refused.len()
    );
    assert!(seen.copied >= 200, "{} tensors", seen.copied);
    assert!(seen.borrowed >= 100, "{} borrowed", seen.borrowed);
    assert!(
        seen.borrowed_strided >= 3,
        "{} strided views borrowed",
        seen.borrowed_strided
    );
    // Every refusal has a reason as_slice would give too (layout, byte order, bits).
    for r in &seen.refused {
        assert!(
            r.contains("aligned") || r.contains("little-endian") || r.contains("conjugate"),
            "{r}"
        );
    }
}

#[test]
fn loaded_cpu_tensors_borrow_and_copy_like_the_file() {
    for mode in [CpuMode::Owned, CpuMode::Mapped] {
        let mut seen = Seen::default();
        for (file, desc) in described_files() {
            let loaded = Loader::new()
                .map_location(MapLocation::to("cpu"))
                .cpu_mode(mode)
                .load(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            check_file(
                &file,
                &desc,
                |n| loaded.tensor(n).map(|t| t.view().clone()),
                &mut seen,
            );
        }
        assert!(seen.copied >= 200, "{mode:?}: {} tensors", seen.copied);
        assert!(seen.borrowed >= 100, "{mode:?}: {} borrowed", seen.borrowed);
    }
}

#[test]
fn a_transposed_view_borrows_with_its_strides_zero_copy() {
    // The seed_views fixtures hold transposed and sliced views: each borrowed one has
    // torch's strides and points into the file map.
    let mut found = 0;
    for (file, _) in described_files() {
        let ckpt = Checkpoint::open(&file).unwrap();
        let map = ckpt.source().bytes().as_ptr_range();
        for (name, t) in ckpt.tensors() {
            if t.dtype() != ptfile::DType::FLOAT32 || t.is_contiguous() || t.numel() < 2 {
                continue;
            }
            let Ok(v) = t.as_array_view::<f32>() else {
                continue;
            };
            let strides: Vec<isize> = t.strides().iter().map(|&s| s as isize).collect();
            assert_eq!(v.strides(), &strides[..], "{name}");
            assert!(!v.is_standard_layout(), "{name}");
            let first = v.iter().next().unwrap() as *const f32 as *const u8;
            assert!(
                map.contains(&first),
                "{}: {name} not borrowed from the file map",
                file.display()
            );
            assert_eq!(v.to_owned(), t.to_ndarray::<f32>().unwrap(), "{name}");
            found += 1;
        }
    }
    assert!(found >= 3, "{found} strided float32 views borrowed");
}

#[test]
fn wrong_type_and_unborrowable_layouts_are_errors_that_say_what_to_do() {
    let ckpt = Checkpoint::open(root().join("tests/fixtures/seed_mymodule_state_dict.pt")).unwrap();
    let t = ckpt.tensor("l0.weight").unwrap();
    for e in [
        t.to_ndarray::<f64>().map(|_| ()).unwrap_err(),
        t.as_array_view::<bf16>().map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("float32"), "{msg}");
        assert!(msg.contains("float64") || msg.contains("bfloat16"), "{msg}");
    }

    // A legacy file's storages sit at odd offsets: some refuse to borrow, all copy.
    let legacy =
        Checkpoint::open(root().join("tests/fixtures/training_checkpoint_legacy.pt")).unwrap();
    let mut misaligned = 0;
    for (name, t) in legacy.tensors() {
        if t.dtype() != ptfile::DType::FLOAT32 || t.numel() == 0 {
            continue;
        }
        let owned = t.to_ndarray::<f32>().unwrap();
        match t.as_array_view::<f32>() {
            Ok(v) => assert_eq!(v, owned, "{name}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("aligned") && msg.contains("to_ndarray"),
                    "{msg}"
                );
                misaligned += 1;
            }
        }
    }
    assert!(misaligned > 0, "no misaligned storage in the legacy file");

    // A big-endian file needs swapping: a copy, never a borrow.
    let be = Checkpoint::open(root().join("tests/fixtures/byteorder_big.pt")).unwrap();
    let mut swapped = 0;
    for (name, t) in be.tensors() {
        if t.numel() > 0 && t.dtype() == ptfile::DType::FLOAT32 {
            let e = t.as_array_view::<f32>().unwrap_err().to_string();
            assert!(
                e.contains("little-endian") && e.contains("to_ndarray"),
                "{name}: {e}"
            );
            assert_eq!(t.to_ndarray::<f32>().unwrap().len(), t.numel());
            swapped += 1;
        }
    }
    assert!(swapped > 0, "no float32 tensor in byteorder_big.pt");
}
