//! Every other checkpoint torch can load: the legacy stream format, the torch 0.1 tar format
//! and TorchScript archives, through the library API (`Checkpoint::open` + `describe`),
//! compared with what torch itself returns (descriptions written by torch 2.15 through
//! tests/python/describe.py, compared by tests/tools/compare_description.py, which needs only
//! `python3`). Also: damaged, truncated, lying and hostile files give errors, never panics;
//! non-checkpoints are named as such; TorchScript version notes and warnings.
//!
//! Data: tests/fixtures (written by torch) and tests/data (crafted by
//! tests/data/make_formats_data.py, made with torch by tests/data/make_torch_data.py, or
//! shipped by PyPI packages: tests/data/THIRD_PARTY.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use ptfile::describe::describe;
use ptfile::{Checkpoint, Error, Format};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests").join("fixtures").join(name)
}

fn data(name: &str) -> PathBuf {
    root().join("tests").join("data").join(name)
}

fn python() -> String {
    std::env::var("PTFILE_SYSTEM_PYTHON").unwrap_or_else(|_| "python3".into())
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Describes `file` through the library and compares with `expected` (a description torch
/// wrote); panics with the differences.
fn assert_matches_torch(file: &Path, expected: &Path) {
    let ckpt = Checkpoint::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let desc = describe(&ckpt).unwrap_or_else(|e| panic!("{}: describe: {e}", file.display()));
    let tmp = std::env::temp_dir().join(format!(
        "ptfile-formats-{}-{}.json",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, serde_json::to_string(&desc).unwrap()).unwrap();
    let tool = root()
        .join("tests")
        .join("tools")
        .join("compare_description.py");
    let out = Command::new(python())
        .arg(&tool)
        .arg(expected)
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python(), tool.display()));
    let _ = std::fs::remove_file(&tmp);
    assert!(
        out.status.success(),
        "{} differs from what torch returns:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_err(bytes: Vec<u8>) -> Error {
    match Checkpoint::from_bytes(bytes) {
        Ok(c) => panic!("expected an error, opened a {:?} checkpoint", c.format),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Against torch
// ---------------------------------------------------------------------------------------------

#[test]
fn legacy_fixtures_match_torch() {
    for name in [
        "cuda_legacy",
        "dtypes_all_legacy",
        "seed_views_legacy",
        "training_checkpoint_legacy",
    ] {
        let f = fixture(&format!("{name}.pt"));
        assert_eq!(
            Checkpoint::open(&f).unwrap().format,
            Format::Legacy,
            "{name}"
        );
        assert_matches_torch(&f, &fixture(&format!("{name}.json")));
    }
}

#[test]
fn torchscript_fixtures_match_torch() {
    for name in [
        "seed_mymodule_scripted",
        "seed_controlflow_traced",
        "seed_controlflow_scripted",
        "seed_full_div_scripted",
    ] {
        let f = fixture(&format!("{name}.ptc"));
        let ckpt = Checkpoint::open(&f).unwrap();
        assert_eq!(ckpt.format, Format::TorchScript, "{name}");
        assert!(
            matches!(ckpt.root, ptfile::Object::ScriptModule(_)),
            "{name}"
        );
        assert_matches_torch(&f, &fixture(&format!("{name}.json")));
    }
}

#[test]
fn crafted_and_torch_made_files_match_torch() {
    for (file, format) in [
        ("tar_v01.pt", Format::Tar),
        ("legacy_view_metadata.pt", Format::Legacy),
        ("legacy_big_endian_host.pt", Format::Legacy),
        ("whole_module_legacy.pt", Format::Legacy),
        ("full_div_v3.ptc", Format::TorchScript),
        ("scripted_buffers.ptc", Format::TorchScript),
        ("traced_constants.ptc", Format::TorchScript),
        ("numpy_values.pt", Format::Zip),
        ("numpy_values_p4.pt", Format::Zip),
    ] {
        let f = data(file);
        assert_eq!(Checkpoint::open(&f).unwrap().format, format, "{file}");
        let stem = file.rsplit_once('.').unwrap().0;
        assert_matches_torch(&f, &data(&format!("{stem}.json")));
    }
}

/// Two checkpoints that PyPI packages ship (tests/data/THIRD_PARTY.md).
#[test]
fn published_checkpoints_match_torch() {
    for (file, tensors) in [("lpips_v0.1_alex.pth", 5), ("facenet_pnet.pt", 13)] {
        let f = data(file);
        let ckpt = Checkpoint::open(&f).unwrap();
        assert_eq!(ckpt.format, Format::Legacy, "{file}");
        assert_eq!(ckpt.root.tensors(usize::MAX).len(), tensors, "{file}");
        let stem = file.rsplit_once('.').unwrap().0;
        assert_matches_torch(&f, &data(&format!("{stem}.json")));
    }
}

// ---------------------------------------------------------------------------------------------
// What torch itself cannot read back, and notes
// ---------------------------------------------------------------------------------------------

#[test]
fn legacy_untyped_storage_reads_with_the_tensor_dtype() {
    // torch writes UntypedStorage ids for new dtypes in legacy streams but cannot load them.
    let ckpt = Checkpoint::open(data("legacy_untyped.pt")).unwrap();
    let d = describe(&ckpt).unwrap();
    let t = &d["root"]["items"][0];
    assert_eq!(t["dtype"], "float32");
    let vals: Vec<f64> = t["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(vals, vec![0.5, -1.5, 2.5, 1e-3f32 as f64]);
    assert!(ckpt
        .notes
        .iter()
        .any(|n| n.contains("torch.load cannot read this file back")));
}

#[test]
fn big_endian_host_note_and_little_endian_bytes() {
    let ckpt = Checkpoint::open(data("legacy_big_endian_host.pt")).unwrap();
    assert_eq!(ckpt.byteorder, ptfile::ByteOrder::Little);
    assert!(
        ckpt.notes.iter().any(|n| n.contains("big-endian host")),
        "{:?}",
        ckpt.notes
    );
}

#[test]
fn tar_records_and_notes() {
    let ckpt = Checkpoint::open(data("tar_v01.pt")).unwrap();
    let names: Vec<&str> = ckpt.records.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["storages", "tensors", "sys_info", "pickle"]);
    assert!(ckpt.notes[0].contains("tar"));
}

// ---------------------------------------------------------------------------------------------
// TorchScript versions
// ---------------------------------------------------------------------------------------------

#[test]
fn torchscript_lists_code_files_and_version() {
    let ckpt = Checkpoint::open(fixture("seed_mymodule_scripted.ptc")).unwrap();
    let notes = ckpt.notes.join("\n");
    assert!(notes.contains("file format version 3"), "{notes}");
    assert!(notes.contains("never executed"), "{notes}");
    assert!(notes.contains("code/__torch__.py"), "{notes}");
    assert!(
        notes.contains("code/__torch__/torch/nn/modules/linear.py"),
        "{notes}"
    );
    assert!(!notes.contains("warning"), "{notes}");
}

#[test]
fn current_version_archive_has_no_operator_warnings() {
    // torch.jit.save wrote version 5 because the code uses torch.full and torch.div.
    let ckpt = Checkpoint::open(fixture("seed_full_div_scripted.ptc")).unwrap();
    assert_eq!(ckpt.info.version.as_deref(), Some("5"));
    let notes = ckpt.notes.join("\n");
    assert!(notes.contains("file format version 5"), "{notes}");
    assert!(!notes.contains("warning"), "{notes}");
}

#[test]
fn old_version_archive_warns_about_div_and_full() {
    // The same archive with its version record rewritten to 3 (make_formats_data.py).
    let ckpt = Checkpoint::open(data("full_div_v3.ptc")).unwrap();
    let warnings: Vec<&String> = ckpt
        .notes
        .iter()
        .filter(|n| n.starts_with("warning"))
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    let full = warnings
        .iter()
        .find(|w| w.contains("torch.full"))
        .expect("a torch.full warning");
    assert!(full.contains("code/__torch__.py:9:"), "{full}");
    assert!(full.contains("`forward`"), "{full}");
    assert!(full.contains("version 3"), "{full}");
    let div = warnings
        .iter()
        .find(|w| w.contains("torch.div"))
        .expect("a torch.div warning");
    assert!(div.contains("code/__torch__.py:11:"), "{div}");
    assert!(div.contains("torch.div(a, b)"), "{div}");
    // Line 10 passes rounding_mode, which fixes the meaning: no warning for it.
    assert!(
        !warnings.iter().any(|w| w.contains(":10:")),
        "{warnings:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Damaged, lying and hostile files
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_legacy_files_give_errors() {
    for name in ["seed_views_legacy.pt", "cuda_legacy.pt"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for len in 0..bytes.len() {
            let r = Checkpoint::from_bytes(bytes[..len].to_vec());
            assert!(r.is_err(), "{name} cut to {len} bytes opened");
        }
        assert!(Checkpoint::from_bytes(bytes).is_ok());
    }
}

#[test]
fn truncated_tar_gives_errors_not_panics() {
    let bytes = std::fs::read(data("tar_v01.pt")).unwrap();
    let ckpt = Checkpoint::open(data("tar_v01.pt")).unwrap();
    let pickle_end = ckpt.records.iter().map(|(_, s)| *s).sum::<u64>() as usize + 4 * 512;
    for len in (0..bytes.len()).step_by(7) {
        let r = Checkpoint::from_bytes(bytes[..len].to_vec());
        if len < pickle_end {
            assert!(r.is_err(), "tar cut to {len} bytes opened");
        }
    }
}

/// The offset of the u64 element count of the first storage in seed_views_legacy.pt (after
/// the five pickles).
fn first_count_offset(bytes: &[u8]) -> usize {
    // The keys pickle ends with b"a." (APPEND, STOP) right before the data section.
    let key = b"94142867934928";
    let last = bytes.windows(key.len()).rposition(|w| w == key).unwrap();
    last + key.len() + 4 // BINPUT n, APPEND, STOP
}

#[test]
fn lying_legacy_files_give_errors() {
    let good = std::fs::read(fixture("seed_views_legacy.pt")).unwrap();
    let at = first_count_offset(&good);
    assert_eq!(
        &good[at..at + 8],
        &9u64.to_le_bytes(),
        "count of the 9-element storage"
    );

    // An element count that disagrees with the persistent id.
    let mut b = good.clone();
    b[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
    let e = open_err(b).to_string();
    assert!(
        e.contains("storage has wrong byte size: expected 72 got 64"),
        "{e}"
    );

    // A count far past the end of the file.
    let mut b = good.clone();
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = open_err(b).to_string();
    assert!(e.contains("wrong byte size"), "{e}");

    // The protocol version (BININT2 1001 at byte 17).
    let mut b = good.clone();
    assert_eq!(&b[17..20], &[0x4d, 0xe9, 0x03]);
    b[18] = 0xea; // 1002
    let e = open_err(b).to_string();
    assert!(e.contains("invalid protocol version: 1002"), "{e}");

    // The magic number.
    let mut b = good.clone();
    b[5] ^= 0xff;
    let e = open_err(b).to_string();
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");

    // A storage key the pickle never used.
    let mut b = good.clone();
    let key_at = at - 4 - 14;
    b[key_at] = b'8';
    let e = open_err(b).to_string();
    assert!(
        e.contains("no tensor or storage in it uses that key"),
        "{e}"
    );

    // A view past the end of its storage: the shape of the second tensor (BININT1 4) grows.
    let mut b = good.clone();
    let shape = b
        .windows(4)
        .position(|w| w == [0x4b, 0x04, 0x85, 0x71])
        .unwrap();
    b[shape + 1] = 40;
    let e = open_err(b).to_string();
    assert!(e.contains("reaches element"), "{e}");
}

/// A legacy stream around `object` (a protocol-2 pickle) with no storages.
fn legacy_stream(object: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.");
    v.extend_from_slice(b"\x80\x02M\xe9\x03.");
    v.extend_from_slice(b"\x80\x02}q\x00.");
    v.extend_from_slice(object);
    v.extend_from_slice(b"\x80\x02]q\x00.");
    v
}

#[test]
fn minimal_legacy_stream_opens() {
    let ckpt = Checkpoint::from_bytes(legacy_stream(b"\x80\x02K\x07.")).unwrap();
    assert!(matches!(ckpt.root, ptfile::Object::Int(7)));
    assert!(ckpt.storages.is_empty());
}

#[test]
fn attack_globals_are_refused_in_every_format() {
    // Legacy stream: os.system('echo') in the object pickle.
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
    let e = open_err(legacy_stream(evil));
    assert!(matches!(e, Error::Unsafe { .. }), "{e}");

    // Legacy stream: the attack in the storage key list.
    let mut v = legacy_stream(b"\x80\x02K\x07.");
    v.truncate(v.len() - 6);
    v.extend_from_slice(b"\x80\x02csubprocess\nPopen\nq\x00.");
    let e = open_err(v);
    assert!(matches!(e, Error::Unsafe { .. }), "{e}");

    // TorchScript: the module class of data.pkl renamed to a member of `os` (same length).
    let mut b = std::fs::read(fixture("seed_full_div_scripted.ptc")).unwrap();
    let name = b"__torch__\nFullDiv\n";
    let at = b.windows(name.len()).position(|w| w == name).unwrap();
    b[at..at + name.len()].copy_from_slice(b"os\nABCDEFGHIJKLMN\n");
    let e = open_err(b);
    assert!(matches!(e, Error::Unsafe { .. }), "{e}");
}

#[test]
fn tar_lies_give_errors() {
    let good = std::fs::read(data("tar_v01.pt")).unwrap();
    // A damaged header checksum: no longer a tar, and not a legacy stream either.
    let mut b = good.clone();
    b[0] ^= 0x01;
    let e = open_err(b).to_string();
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    // The strided tensor (shape [2], stride [2], offset 1) made to reach past its storage.
    let mut b = good.clone();
    let meta: Vec<u8> = [
        &1i32.to_le_bytes()[..],
        &[0; 4],
        &2i64.to_le_bytes(),
        &2i64.to_le_bytes(),
        &1i64.to_le_bytes(),
    ]
    .concat();
    let at = b
        .windows(meta.len())
        .position(|w| w == meta.as_slice())
        .unwrap();
    b[at + 8..at + 16].copy_from_slice(&9i64.to_le_bytes());
    let e = open_err(b).to_string();
    assert!(e.contains("reaches element"), "{e}");
    // A tar without torch's members.
    let mut t = vec![0u8; 1024 + 512];
    t[..4].copy_from_slice(b"note");
    t[100..107].copy_from_slice(b"0000644");
    t[124..135].copy_from_slice(b"00000000003");
    t[156] = b'0';
    t[257..263].copy_from_slice(b"ustar\0");
    t[263..265].copy_from_slice(b"00");
    t[148..156].copy_from_slice(b"        ");
    let sum: u32 = t[..512].iter().map(|&x| x as u32).sum();
    t[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    t[512..515].copy_from_slice(b"hi\n");
    let e = open_err(t).to_string();
    assert!(e.contains("without a 'storages' member"), "{e}");
}

#[test]
fn non_checkpoints_are_named() {
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01".to_vec();
    let e = open_err(png).to_string();
    assert!(
        e.contains("not a PyTorch checkpoint") && e.contains("PNG"),
        "{e}"
    );
    let e = open_err(b"hello, this is a text file\n".to_vec()).to_string();
    assert!(
        e.contains("not a PyTorch checkpoint") && e.contains("text"),
        "{e}"
    );
    let e = open_err(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n".to_vec())
        .to_string();
    assert!(e.contains("Git LFS"), "{e}");
    // A plain pickle (not a torch.save stream).
    let e = open_err(b"\x80\x02}q\x00.".to_vec()).to_string();
    assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    // Random bytes (a fixed generator, so the test is repeatable).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for n in [1usize, 7, 100, 4096] {
        let bytes: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        if bytes.starts_with(b"PK") || bytes[0] == 0x80 {
            continue;
        }
        let e = open_err(bytes).to_string();
        assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    }
}

/// Random byte flips over every format: errors or checkpoints, never a panic; whatever opens
/// must also describe without panicking. `PTFILE_FORMATS_FUZZ=N` runs N flips per file.
#[test]
fn mutated_files_never_panic() {
    let rounds: usize = std::env::var("PTFILE_FORMATS_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let files = [
        fixture("seed_views_legacy.pt"),
        fixture("training_checkpoint_legacy.pt"),
        data("whole_module_legacy.pt"),
        data("scripted_buffers.ptc"),
        fixture("cuda_legacy.pt"),
        data("tar_v01.pt"),
        data("legacy_view_metadata.pt"),
        fixture("seed_full_div_scripted.ptc"),
        fixture("seed_mymodule_scripted.ptc"),
    ];
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for f in &files {
        let good = std::fs::read(f).unwrap();
        for _ in 0..rounds {
            let mut b = good.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() % b.len() as u64) as usize;
                b[i] = next() as u8;
            }
            if let Ok(c) = Checkpoint::from_bytes(b) {
                let _ = describe(&c);
            }
        }
    }
}
