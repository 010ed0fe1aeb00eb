//! `.safetensors` files as input: torch writes them (`safetensors.torch.save_file`, every
//! dtype both have, empty and 0-d tensors, `__metadata__`), and ptfile's description equals
//! torch's description of what `safetensors.torch.load_file` returns; `load` (registry, map
//! location, fallback) and `convert` to `.pt` (read back by torch identically) work on them;
//! damaged headers are errors with exit code 1.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ptfile::{Checkpoint, Format, Loader, MapLocation};

const MAKE: &str = r#"
import sys, json, torch, safetensors.torch as st
sys.path.insert(0, sys.argv[2])
import describe
torch.manual_seed(0)
d = {
    "model.embed.weight": torch.randn(5, 4),
    "model.layers.0.weight": torch.randn(4, 4).to(torch.bfloat16),
    "model.layers.0.bias": torch.randn(4).half(),
    "model.norm.weight": torch.randn(4, dtype=torch.float64),
    "ids": torch.arange(-3, 3, dtype=torch.int64),
    "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    "i16": torch.arange(4, dtype=torch.int16),
    "i8": torch.arange(-2, 2, dtype=torch.int8),
    "u8": torch.arange(7, dtype=torch.uint8),
    "u16": torch.arange(3, dtype=torch.int32).to(torch.uint16),
    "u32": torch.arange(3, dtype=torch.int32).to(torch.uint32),
    "mask": torch.tensor([True, False, True]),
    "f8": torch.randn(6).to(torch.float8_e4m3fn),
    "f8b": torch.randn(6).to(torch.float8_e5m2),
    "c64": torch.randn(3, dtype=torch.complex64),
    "empty": torch.zeros(0, 3),
    "scalar": torch.tensor(2.5),
    "big": torch.randn(300, 7),
}
st.save_file(d, sys.argv[1], metadata={"format": "pt", "note": "made by the test"})
loaded = st.load_file(sys.argv[1])
desc = describe.describe(loaded, {})
print(json.dumps(desc))
"#;

fn make(py: &Path, file: &Path) -> String {
    let o = Command::new(py)
        .args(["-c", MAKE])
        .arg(file)
        .arg(repo_root().join("tests/python"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Compares `actual` with the description Python printed (`expected`, its exact text).
fn compare(py: &Path, expected: &str, actual: &[u8], dir: &Path) {
    let e = dir.join("expected.json");
    std::fs::write(&e, expected).unwrap();
    common::described::compare_descriptions(py, &e, actual, dir, "safetensors");
}

#[test]
fn safetensors_files_read_as_torch_loads_them() {
    let Some(py) = present_or_skip("torch", torch_python()) else {
        return;
    };
    let dir = TempDir::new("st-input");
    let file = dir.path().join("model.safetensors");
    let expected = make(&py, &file);

    // The description (`inspect --json`) equals torch's of load_file's result.
    let o = Command::new(ptfile_bin())
        .args(["inspect", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    compare(&py, &expected, &o.stdout, dir.path());

    // The library: format, tensor API, notes.
    let ckpt = Checkpoint::open(&file).unwrap();
    assert_eq!(ckpt.format, Format::Safetensors);
    assert!(ckpt.notes.iter().any(|n| n.contains("format = pt")));
    let w = ckpt.tensor("model.embed.weight").unwrap();
    assert_eq!(w.shape(), &[5, 4]);
    assert_eq!(w.to_vec::<f32>().unwrap().len(), 20);
    assert!(
        w.as_slice::<f32>().is_ok()
            || w.as_slice::<f32>()
                .unwrap_err()
                .to_string()
                .contains("aligned")
    );

    // A load through the registry: everything to the CPU, and a fallback from a missing GPU.
    let loaded = Loader::new()
        .map_location(MapLocation::to("cuda:7"))
        .load(&file)
        .unwrap();
    for (name, t) in loaded.tensors() {
        assert_eq!(
            t.to_bytes().unwrap(),
            ckpt.tensor(&name).unwrap().to_bytes().unwrap()
        );
    }
    assert!(loaded
        .report
        .storages
        .iter()
        .all(|r| r.device == "cpu" && r.fallback.is_some()));
    let o = Command::new(ptfile_bin())
        .args(["load", "--json", "--map-location", "cpu"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    compare(&py, &expected, &o.stdout, dir.path());

    // convert to .pt: torch reads it back identically.
    let pt = dir.path().join("model.pt");
    let o = Command::new(ptfile_bin())
        .arg("convert")
        .arg(&file)
        .arg(&pt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check = r#"
import sys, torch, safetensors.torch as st
a = torch.load(sys.argv[1], weights_only=True)
b = st.load_file(sys.argv[2])
assert list(a) == list(b), (list(a), list(b))
for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k
print("ok")
"#;
    let o = Command::new(&py)
        .args(["-c", check])
        .arg(&pt)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn damaged_safetensors_files_are_errors() {
    let dir = TempDir::new("st-bad");
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut good = (header.len() as u64).to_le_bytes().to_vec();
    good.extend_from_slice(header);
    good.extend_from_slice(&[0u8; 8]);
    assert!(Checkpoint::from_bytes(good.clone()).is_ok());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("overlong data", [&good[..], &[0u8; 4]].concat()),
        ("offsets past the data", {
            let h = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(h);
            v.extend_from_slice(&[0u8; 8]);
            v
        }),
        ("shape and size disagree", {
            let h = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(h);
            v.extend_from_slice(&[0u8; 8]);
            v
        }),
        ("bad json", {
            let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]"#;
            let mut v = (h.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(h);
            v.extend_from_slice(&[0u8; 8]);
            v
        }),
    ];
    for (what, bytes) in cases {
        assert!(Checkpoint::from_bytes(bytes.clone()).is_err(), "{what}");
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let o = Command::new(ptfile_bin())
            .arg("inspect")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
    }
}
