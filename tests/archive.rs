//! ptfile's own zip reader against the zip crate, on every zip fixture, and on damage.

use ptfile::format::zip::{Archive, Method};

fn fixtures() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pt" | "ptc")))
        .collect();
    v.sort();
    v
}

#[test]
fn entries_agree_with_the_zip_crate() {
    let mut checked = 0;
    for p in fixtures() {
        let bytes = std::fs::read(&p).unwrap();
        if !bytes.starts_with(b"PK\x03\x04") {
            continue;
        }
        let ours =
            Archive::from_bytes(bytes.clone()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // The zip crate refuses none of these at 9.0.4.
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
        assert_eq!(z.len(), ours.records().len(), "{}", p.display());
        for (i, r) in ours.records().iter().enumerate() {
            let f = z.by_index_raw(i).unwrap();
            assert_eq!(f.name().unwrap(), format!("{}/{}", ours.prefix(), r.name));
            assert_eq!(f.size(), r.size);
            assert_eq!(f.compressed_size(), r.compressed_size);
            assert_eq!(f.crc32(), r.crc32);
            assert_eq!(
                f.data_start(),
                Some(r.offset),
                "{}: {}",
                p.display(),
                r.name
            );
            if r.method == Method::Stored
                && r.name.starts_with("data/")
                && ours.record(".storage_alignment").is_some()
                // (the byteorder_* fixtures were rewritten with Python's zipfile, unaligned)
                && !p.to_string_lossy().contains("byteorder_")
            {
                assert_eq!(r.offset % 64, 0, "torch aligns data records to 64 bytes");
            }
        }
        checked += 1;
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn seventy_six_byte_first_entry_is_read() {
    // A 21-character stem: the first central-directory entry is exactly 76 bytes.
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cuda_bf16_transformer.pt");
    let a = Archive::from_bytes(std::fs::read(p).unwrap()).unwrap();
    assert_eq!(a.prefix(), "cuda_bf16_transformer");
    assert!(a.record("data.pkl").is_some());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_tensor_dict.pt"),
    )
    .unwrap();
    for cut in 0..bytes.len() {
        let r = ptfile::Checkpoint::from_bytes(bytes[..cut].to_vec());
        assert!(r.is_err(), "truncated at {cut} should not open");
    }
    // Every single-byte corruption of the directory tail either opens or errors, never panics.
    for i in bytes.len().saturating_sub(300)..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = ptfile::Checkpoint::from_bytes(b).map(|c| ptfile::describe::describe(&c));
    }
}
