//! A checkpoint rewritten while a command reads it, as `torch.save` rewrites one in place
//! (truncate, then write): a 512 MiB file is truncated, or overwritten with other content,
//! at varying moments while `inspect --json`, `load`, `load --mmap --json` and `convert` run on
//! it. Every run ends with exit 1 and "the file changed while being read", or with the result
//! of one of the two versions; never a signal, never a mixed result (a convert whose input
//! changed leaves no output).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ptfile::save::{SaveOptions, StateDict, TensorData};

const MIB: usize = 1 << 20;

/// Writes the 512 MiB state dict (8 tensors of 64 MiB), its values from `seed`.
fn write(path: &Path, seed: u32) {
    let data: Vec<Vec<f32>> = (0..8u32)
        .map(|k| {
            (0..(64 * MIB / 4) as u32)
                .map(|i| ((i ^ (k << 20)).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32)
                .collect()
        })
        .collect();
    let mut sd = StateDict::new();
    for (k, d) in data.iter().enumerate() {
        sd.insert(
            format!("w{k}"),
            TensorData::from_slice(d, &[d.len()]).unwrap(),
        )
        .unwrap();
    }
    let opts = SaveOptions {
        sync: false,
        ..SaveOptions::default()
    };
    sd.save_with(path, &opts).unwrap();
}

/// Rewrites `path` in place as torch.save does: truncate, then write `bytes` (or only
/// truncate when `bytes` is None).
fn rewrite_in_place(path: &Path, bytes: Option<&[u8]>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    if let Some(b) = bytes {
        f.write_all(b).unwrap();
    }
}

#[test]
fn a_file_rewritten_while_read_is_an_error_never_a_signal() {
    let tmp = TempDir::new("changing");
    let file = tmp.path().join("big.pt");
    let (a, b) = (tmp.path().join("a.pt"), tmp.path().join("b.pt"));
    write(&a, 1);
    write(&b, 2);
    let (va, vb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let describe = |p: &Path| {
        let o = Command::new(ptfile_bin())
            .args(["inspect", "--json"])
            .arg(p)
            .output()
            .unwrap();
        assert!(o.status.success());
        o.stdout
    };
    let (da, db) = (describe(&a), describe(&b));
    let out = tmp.path().join("out.pt");
    let commands: Vec<Vec<&str>> = vec![
        vec!["inspect", "--json"],
        vec!["load", "--map-location", "cpu"],
        vec!["load", "--mmap", "--json", "--map-location", "cpu"],
        vec!["convert", "--no-sync"],
    ];
    let mut changed = 0;
    let mut runs = 0;
    for cmd in &commands {
        for (k, delay_ms) in [0u64, 30, 80, 160, 300].into_iter().enumerate() {
            let truncate_only = k % 2 == 0;
            std::fs::write(&file, &va).unwrap();
            let _ = std::fs::remove_file(&out);
            let mut c = Command::new(ptfile_bin());
            c.args(cmd).arg(&file);
            if cmd[0] == "convert" {
                c.arg(&out);
            }
            let child = c
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            rewrite_in_place(&file, if truncate_only { None } else { Some(&vb) });
            let o = child.wait_with_output().unwrap();
            runs += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            let what = format!("{cmd:?} after {delay_ms} ms: {:?} {err}", o.status);
            let code = o
                .status
                .code()
                .unwrap_or_else(|| panic!("killed by a signal: {what}"));
            match code {
                0 => {
                    // The command saw one version whole: a's (it finished first) or b's (the
                    // rewrite was done before it began).
                    if cmd[0] == "inspect" {
                        assert!(o.stdout == da || o.stdout == db, "mixed result: {what}");
                    }
                    if cmd[0] == "convert" {
                        let d = describe(&out);
                        assert!(d == da || d == db, "mixed output: {what}");
                    }
                }
                1 => {
                    let began_empty = truncate_only && err.contains("empty file");
                    if !began_empty {
                        changed += 1;
                        assert!(err.contains("the file changed while being read"), "{what}");
                    }
                    assert_eq!(err.trim_end().lines().count(), 1, "{what}");
                    if cmd[0] == "convert" {
                        assert!(!out.exists(), "a convert that failed left output: {what}");
                    }
                }
                _ => panic!("exit {code}: {what}"),
            }
        }
    }
    println!("{changed} of {runs} runs saw the change");
    assert_eq!(runs, commands.len() * 5);
    assert!(
        changed >= commands.len(),
        "only {changed} of {runs} runs saw the change"
    );
}

#[test]
fn file_watch_notices_size_and_content_changes() {
    let tmp = TempDir::new("watch");
    let f = tmp.path().join("x.pt");
    std::fs::write(&f, vec![1u8; 1000]).unwrap();
    let w = ptfile::FileWatch::new(&f);
    assert!(w.changed().is_none());
    std::fs::write(&f, vec![2u8; 10]).unwrap();
    let e = w.changed().expect("a truncation is a change");
    assert!(matches!(e, ptfile::Error::Changed { .. }));
    assert!(e.to_string().contains("size 1000 -> 10"), "{e}");
    assert_eq!(e.exit_code(), 1);
    // A directory: each of its files.
    let d = tmp.path().join("dir");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("a.bin"), b"aaaa").unwrap();
    std::fs::write(d.join("b.bin"), b"bbbb").unwrap();
    let w = ptfile::FileWatch::new(&d);
    assert_eq!(w.files().count(), 2);
    std::fs::remove_file(d.join("b.bin")).unwrap();
    assert!(w.changed().unwrap().to_string().contains("gone"));
}
