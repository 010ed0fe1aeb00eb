//! The ground-truth descriptions of the fixtures (tests/fixtures, tests/data: what torch.load
//! returns, in the schema of shared/fixtures/README.md), walked as the tensor API names
//! tensors, for the tests that read every fixture through an API (tensor_api, ndarray,
//! candle); and the comparison of two descriptions by tests/tools/compare_description.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every (checkpoint, description) pair of tests/fixtures and tests/data.
pub fn described_files() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for dir in ["tests/fixtures", "tests/data"] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for json in entries {
            if json.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let ckpt = ["pt", "ptc", "pth", "bin"]
                .iter()
                .map(|e| json.with_extension(e))
                .find(|p| p.exists());
            let Some(ckpt) = ckpt else { continue };
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            if v.get("root").is_none() {
                continue; // a manifest
            }
            out.push((ckpt, v));
        }
    }
    assert!(out.len() >= 45, "only {} described files", out.len());
    out
}

/// A dict key as ptfile names it in a key path.
pub fn key_text(k: &Value) -> String {
    match k["type"].as_str().unwrap_or("") {
        "str" => k["value"].as_str().unwrap().to_string(),
        "int" => match &k["value"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        },
        "bool" => if k["value"] == true { "True" } else { "False" }.to_string(),
        "none" => "None".into(),
        "tuple" => {
            let parts: Vec<String> = k["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(key_text)
                .collect();
            format!("({})", parts.join(", "))
        }
        _ => "<key>".into(),
    }
}

/// The dense tensors of a description with their key paths, as `tensors()` names them.
pub fn described_tensors(node: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match node["type"].as_str().unwrap_or("") {
        "tensor" | "parameter" => out.push((path.to_string(), node.clone())),
        "dict" | "ordered_dict" => {
            for item in node["items"].as_array().unwrap() {
                described_tensors(&item[1], &join(&key_text(&item[0])), out);
            }
        }
        "list" | "tuple" => {
            for (i, item) in node["items"].as_array().unwrap().iter().enumerate() {
                described_tensors(item, &join(&i.to_string()), out);
            }
        }
        "script_module" | "object" => {
            if let Some(sd) = node.get("state_dict") {
                described_tensors(sd, path, out);
            }
        }
        _ => {}
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A described float value ("nan", "-0.0", ...).
pub fn float_of(v: &Value) -> f64 {
    match v {
        Value::String(s) => match s.as_str() {
            "nan" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            "-0.0" => -0.0,
            other => panic!("float {other}"),
        },
        v => v.as_f64().unwrap(),
    }
}

/// Compares `actual` (a description, as bytes) with the one Python wrote to the file
/// `expected` (floats exact), by compare_description.py; `dir` holds the scratch file.
pub fn compare_descriptions(py: &Path, expected: &Path, actual: &[u8], dir: &Path, what: &str) {
    let a = dir.join("actual.json");
    std::fs::write(&a, actual).unwrap();
    let o = Command::new(py)
        .arg(root().join("tests/tools/compare_description.py"))
        .arg(expected)
        .arg(&a)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what}: descriptions differ:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
