//! `torch.distributed.checkpoint` directories written by torch itself (tests/python/make_dcp.py:
//! one process with nesting, views, 0-d, empty and non-tensor values; one file per item;
//! zstd-compressed items (the ZStandard extension); two
//! gloo ranks with uneven DTensor shards; per-rank metadata without collectives): ptfile's
//! description of each equals torch's description of what `dcp_to_torch_save` makes of it,
//! through `inspect`, `load` and `convert`; damaged or hostile directories are errors naming
//! what is wrong, and nothing in them runs.

mod common;

use std::process::Command;

use common::*;
use ptfile::{Checkpoint, Format};

#[test]
fn dcp_directories_read_as_dcp_to_torch_save_gives_them() {
    let Some(py) = present_or_skip("torch", torch_python()) else {
        return;
    };
    let tmp = TempDir::new("dcp");
    let root = tmp.path().join("ckpts");
    let script = repo_root().join("tests/python/make_dcp.py");
    let o = Command::new(&py).arg(&script).arg(&root).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(names.len(), 5, "{names:?}");
    for name in &names {
        let expected = &root.join(format!("{name}.json"));
        let dir = root.join(name);
        let o = ptfile_on(&["inspect", "--json"], &dir);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        common::described::compare_descriptions(&py, expected, &o.stdout, tmp.path(), name);
        let o = ptfile_on(&["load", "--json", "--map-location", "cpu"], &dir);
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        common::described::compare_descriptions(&py, expected, &o.stdout, tmp.path(), name);
        let out = tmp.path().join(format!("{name}.pt"));
        let o = Command::new(ptfile_bin())
            .arg("convert")
            .arg(&dir)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = ptfile_on(&["inspect", "--json"], &out);
        // torch reads the converted file as the consolidated state dict too.
        let t = Command::new(&py)
            .arg(repo_root().join("tests/python/describe.py"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
        common::described::compare_descriptions(&py, expected, &t.stdout, tmp.path(), name);
        common::described::compare_descriptions(&py, expected, &o.stdout, tmp.path(), name);
    }
    // The library: one checkpoint, tensors by their dotted names, uneven shards reassembled.
    let ckpt = Checkpoint::open(root.join("sharded")).unwrap();
    assert_eq!(ckpt.format, Format::Dcp);
    let row = ckpt.tensor("row").unwrap();
    assert_eq!(row.shape(), &[5, 4]);
    assert_eq!(
        row.to_vec::<f32>().unwrap(),
        (0..20).map(|x| x as f32).collect::<Vec<_>>()
    );
    let col = ckpt.tensor("col").unwrap();
    assert_eq!(col.to_vec::<i32>().unwrap(), (0..12).collect::<Vec<_>>());
    let single = Checkpoint::open(root.join("single")).unwrap();
    assert_eq!(single.tensor("model.layers.0").unwrap().shape(), &[3, 2]);

    // Damaged and hostile copies.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let o = Command::new(&py)
        .arg(&script)
        .arg("--hostile")
        .arg(root.join("single"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cases: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let needles = [
        ("past_eof", "runs past the end of the file"),
        ("zstd_bomb", "expands past"),
        ("escape", "not a plain name inside the checkpoint directory"),
        (
            "absolute",
            "not a plain name inside the checkpoint directory",
        ),
        ("transform", "stream.rot13/1"),
        ("overlap", "overlap"),
        ("outside", "runs past the tensor's size"),
        ("rce", "system"),
    ];
    for (case, needle) in needles {
        let dir = cases[case].as_str().unwrap();
        for cmd in [&["inspect"][..], &["load"], &["convert"]] {
            let mut c = Command::new(ptfile_bin());
            c.args(cmd).arg(dir);
            if cmd[0] == "convert" {
                c.arg(tmp.path().join("never.pt"));
            }
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{case} {cmd:?}: {err}");
            assert!(err.contains(needle), "{case} {cmd:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{case}: {err}");
        }
    }
    assert!(!bad.join("PWNED").exists(), "the hostile metadata ran");
    assert!(!tmp.path().join("never.pt").exists());
    let e = Checkpoint::open(cases["rce"].as_str().unwrap()).unwrap_err();
    assert!(matches!(e, ptfile::Error::Unsafe { .. }), "{e}");
}

#[test]
fn dcp_classes_stay_refused_outside_dcp_metadata() {
    // A plain pickle naming DCP's Metadata class is not a checkpoint's business: ordinary
    // files keep refusing torch.distributed and pathlib globals.
    let p = b"\x80\x02ctorch.distributed.checkpoint.metadata\nMetadata\n)\x81.".to_vec();
    let dir = TempDir::new("dcp-refuse");
    let f = dir.path().join("x.pt");
    let mut zip = Vec::new();
    {
        // Wrap in a torch.save zip with ptfile's own writer: a dict holding the pickle bytes
        // would not name the global, so write the pickle as data.pkl by hand.
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(&mut zip));
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", o).unwrap();
        w.write_all(&p).unwrap();
        w.start_file("archive/version", o).unwrap();
        w.write_all(b"3\n").unwrap();
        w.finish().unwrap();
    }
    std::fs::write(&f, &zip).unwrap();
    let e = Checkpoint::open(&f).unwrap_err();
    assert!(matches!(e, ptfile::Error::Unsafe { .. }), "{e}");
}

#[test]
fn ptfile_written_dcp_loads_in_torch_on_one_and_two_ranks() {
    let Some(py) = present_or_skip("torch", torch_python()) else {
        return;
    };
    let tmp = TempDir::new("dcp-write");
    let src = tmp.path().join("src.pt");
    let make = r#"
import sys, torch
torch.manual_seed(0)
sd = {
    "model": {"w": torch.randn(5, 4), "b": torch.randn(7).to(torch.bfloat16),
              "emb": torch.arange(30).reshape(10, 3), "h": torch.randn(3, 2).half().t()},
    "layers": [torch.randn(4), torch.randn(6, 2)],
    "scalar": torch.tensor(2.5),
    "step": 5,
    "name": "run-1",
    "groups": [{"lr": 0.1, "params": [0, 1]}],
}
torch.save(sd, sys.argv[1])
"#;
    let o = Command::new(&py)
        .args(["-c", make])
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for source in [src.clone(), fixtures_dir().join("training_checkpoint.pt")] {
        let dir = tmp.path().join(format!(
            "dcp-{}",
            source.file_stem().unwrap().to_string_lossy()
        ));
        let o = Command::new(ptfile_bin())
            .args(["convert", "--format", "dcp"])
            .arg(&source)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(dir.join(".metadata").is_file() && dir.join("__0_0.distcp").is_file());
        assert!(!dir.join(".metadata.tmp").exists());
        let o = Command::new(&py)
            .arg(repo_root().join("tests/python/check_dcp_load.py"))
            .arg(&source)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok"),
            "{}: {}{}",
            source.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // Writing over it again leaves one checkpoint: the new data file, the old removed.
        let o = Command::new(ptfile_bin())
            .args(["convert", "--format", "dcp"])
            .arg(&source)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let data: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".distcp"))
            .collect();
        assert_eq!(data, ["__0_1.distcp"], "{data:?}");
        // ptfile reads its own DCP back: the same tensors as the source.
        let back = Checkpoint::open(&dir).unwrap();
        let orig = Checkpoint::open(&source).unwrap();
        for (name, t) in orig.tensors() {
            let b = back.tensor(&name).unwrap();
            assert_eq!(b.to_bytes().unwrap(), t.to_bytes().unwrap(), "{name}");
            assert_eq!(b.shape(), t.shape(), "{name}");
        }
    }
}
