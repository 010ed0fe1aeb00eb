//! Model directories: Hugging Face repositories of `.bin` and `.safetensors` shards written by
//! huggingface_hub (`save_torch_state_dict`, tied weights included), opened as one checkpoint
//! by `inspect`, `load`, `convert` and the library, equal to torch's description of the
//! consolidated state dict (every shard loaded, in shard order; safetensors' tied aliases
//! restored); bad directories and indexes are errors naming the file and what is wrong.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ptfile::{Checkpoint, Format};

const MAKE: &str = r#"
import sys, os, json, glob, torch, safetensors.torch as st
sys.path.insert(0, sys.argv[2])
import describe
from huggingface_hub import save_torch_state_dict
torch.manual_seed(0)
emb = torch.randn(64, 1024)
sd = {
    "model.embed.weight": emb,
    "model.layers.0.weight": torch.randn(256, 256),
    "model.layers.0.bias": torch.randn(256).to(torch.bfloat16),
    "model.layers.1.weight": torch.randn(256, 256).half(),
    "model.norm.weight": torch.randn(1024, dtype=torch.float64),
    "lm_head.weight": emb,
}
for kind, safe in [("bin", False), ("st", True)]:
    d = os.path.join(sys.argv[1], kind)
    os.makedirs(d)
    save_torch_state_dict(sd, d, max_shard_size="300KB", safe_serialization=safe)
    index = json.load(open(glob.glob(os.path.join(d, "*.index.json"))[0]))
    consolidated = {}
    for shard in sorted(set(index["weight_map"].values())):
        p = os.path.join(d, shard)
        part = st.load_file(p) if safe else torch.load(p, weights_only=True)
        consolidated.update(part)
    for alias, target in index["metadata"].items():
        if isinstance(target, str) and target in consolidated and alias not in consolidated:
            consolidated[alias] = consolidated[target]
    with open(os.path.join(sys.argv[1], kind + ".json"), "w") as f:
        json.dump(describe.describe(consolidated, {}), f)
print("ok")
"#;

#[test]
fn hf_sharded_directories_read_as_their_consolidated_state_dict() {
    let Some(py) = present_or_skip("torch", torch_python()) else {
        return;
    };
    let hub = Command::new(&py)
        .args(["-c", "import huggingface_hub"])
        .status()
        .is_ok_and(|s| s.success());
    if !hub {
        skip_or_fail("torch", "huggingface_hub is not installed in the test venv");
        return;
    }
    let tmp = TempDir::new("model-dirs");
    let o = Command::new(&py)
        .args(["-c", MAKE])
        .arg(tmp.path())
        .arg(repo_root().join("tests/python"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for kind in ["bin", "st"] {
        let want = tmp.path().join(format!("{kind}.json"));
        let dir = tmp.path().join(kind);
        let shards = std::fs::read_dir(&dir).unwrap().count() - 1;
        assert!(shards >= 3, "{kind}: {shards} shards");
        let o = ptfile_on(&["inspect", "--json"], &dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        common::described::compare_descriptions(&py, &want, &o.stdout, tmp.path(), kind);
        let o = ptfile_on(&["load", "--json", "--map-location", "cpu"], &dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        common::described::compare_descriptions(&py, &want, &o.stdout, tmp.path(), kind);

        // The index itself opens the same way; the library sees one checkpoint.
        let index = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".index.json"))
            .unwrap();
        let ckpt = Checkpoint::open(&index).unwrap();
        assert_eq!(ckpt.format, Format::Sharded);
        let (a, b) = (
            ckpt.tensor("model.embed.weight").unwrap(),
            ckpt.tensor("lm_head.weight").unwrap(),
        );
        assert_eq!(
            a.tensor().storage,
            b.tensor().storage,
            "{kind}: tied weights share"
        );
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());

        // convert to one file: torch reads the consolidated state dict.
        let out = tmp.path().join(format!("{kind}.pt"));
        let o = Command::new(ptfile_bin())
            .arg("convert")
            .arg(&dir)
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = ptfile_on(&["inspect", "--json"], &out);
        // torch reads the converted file as the consolidated state dict too.
        let t = Command::new(&py)
            .arg(repo_root().join("tests/python/describe.py"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
        common::described::compare_descriptions(&py, &want, &t.stdout, tmp.path(), kind);
        common::described::compare_descriptions(&py, &want, &o.stdout, tmp.path(), kind);
    }
}

fn write_index(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn bad_directories_and_indexes_are_errors_naming_what_is_wrong() {
    let tmp = TempDir::new("model-dirs-bad");
    let fx = fixtures_dir().join("seed_mymodule_state_dict.pt");
    let bin_index =
        |map: &str| format!(r#"{{"metadata": {{"total_size": 1}}, "weight_map": {map}}}"#);
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "parent",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"a": "../x.bin"}"#),
            "leaves the directory",
        ),
        (
            "absolute",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"a": "/etc/x.bin"}"#),
            "absolute",
        ),
        (
            "drive",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"a": "C:x.bin"}"#),
            "drive letter",
        ),
        (
            "not a string",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"a": 3}"#),
            "not a file name",
        ),
        (
            "wrong extension",
            "model.safetensors.index.json",
            bin_index(r#"{"a": "s.bin"}"#),
            "does not end in .safetensors",
        ),
        (
            "missing shard",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"a": "gone.bin"}"#),
            "gone.bin",
        ),
        (
            "key missing from its shard",
            "pytorch_model.bin.index.json",
            bin_index(r#"{"nope": "s.bin"}"#),
            "nope",
        ),
        (
            "not json",
            "pytorch_model.bin.index.json",
            "{".to_string(),
            "not JSON",
        ),
        (
            "no weight_map",
            "pytorch_model.bin.index.json",
            "{}".to_string(),
            "weight_map",
        ),
    ];
    for (what, name, body, needle) in cases {
        let dir = tmp.path().join(what.replace(' ', "_"));
        write_index(&dir, name, &body);
        std::fs::copy(&fx, dir.join("s.bin")).unwrap();
        let o = ptfile_on(&["inspect"], &dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            matches!(o.status.code(), Some(1) | Some(2)),
            "{what}: {:?} {err}",
            o.status
        );
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
    }
    // A tensor in two shards, named with both.
    let dir = tmp.path().join("twice");
    write_index(
        &dir,
        "pytorch_model.bin.index.json",
        &bin_index(r#"{"l0.weight": "a.bin", "l0.bias": "b.bin"}"#),
    );
    std::fs::copy(&fx, dir.join("a.bin")).unwrap();
    std::fs::copy(&fx, dir.join("b.bin")).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("two shards") && err.contains("a.bin") && err.contains("b.bin"),
        "{err}"
    );
    // An index over the 10 MiB limit.
    let dir = tmp.path().join("huge");
    let big = format!(
        r#"{{"weight_map": {{}}, "pad": "{}"}}"#,
        "x".repeat(11 << 20)
    );
    write_index(&dir, "pytorch_model.bin.index.json", &big);
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("limit"), "{err}");
    // An unsafe shard stays an unsafe error, naming the shard.
    let evil = repo_root().join("tests/hostile/corpus");
    let evil = std::fs::read_dir(&evil)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ce_os_system")
        })
        .expect("a ce_os_system file in the hostile corpus");
    let dir = tmp.path().join("evil");
    write_index(
        &dir,
        "pytorch_model.bin.index.json",
        &bin_index(r#"{"a": "e.bin"}"#),
    );
    std::fs::copy(&evil, dir.join("e.bin")).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    assert!(matches!(e, ptfile::Error::Unsafe { .. }), "{e}");
    assert!(e.to_string().contains("e.bin"), "{e}");
    // An empty directory.
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let o = ptfile_on(&["inspect"], &dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no weights found"));
}
