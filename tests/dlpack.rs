//! DLPack export (feature `dlpack`): every tensor of every fixture as a versioned DLPack
//! tensor whose memory, read through its own pointers (data, byte offset, shape, strides in
//! elements), holds torch's values; the owner stays alive after the checkpoint is dropped;
//! every deleter runs exactly once.
#![cfg(feature = "dlpack")]

use std::path::PathBuf;

use ptfile::dlpack::{self, DlpackTensor, FLAG_IS_COPIED, FLAG_READ_ONLY};
use ptfile::{Checkpoint, CpuMode, Loader, MapLocation};

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pt" || e == "ptc"))
        .collect();
    v.sort();
    v
}

/// The row-major bytes of a CPU DLPack tensor, read through its own fields.
fn row_major(t: &DlpackTensor) -> Vec<u8> {
    let d = &t.as_raw().dl_tensor;
    assert_eq!(d.device.device_type, dlpack::DEVICE_CPU);
    let nd = d.ndim as usize;
    // SAFETY (test): shape and strides point to `ndim` values owned by the tensor.
    let (shape, strides) = unsafe {
        (
            std::slice::from_raw_parts(d.shape, nd).to_vec(),
            std::slice::from_raw_parts(d.strides, nd).to_vec(),
        )
    };
    let es = (d.dtype.bits as usize).div_ceil(8) * d.dtype.lanes as usize;
    let n: i64 = shape.iter().product();
    let mut out = Vec::with_capacity(n as usize * es);
    if n == 0 {
        return out;
    }
    let mut idx = vec![0i64; nd];
    loop {
        let off: i64 = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        let at = d.byte_offset as usize + off as usize * es;
        // SAFETY (test): the producer promises the element lies in its memory.
        let el = unsafe { std::slice::from_raw_parts((d.data as *const u8).add(at), es) };
        out.extend_from_slice(el);
        let mut k = nd;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[test]
fn every_tensor_exports_its_values_and_every_deleter_runs_once() {
    let before = dlpack::live_tensors();
    let mut exported = 0;
    let mut kept = Vec::new();
    for file in fixtures() {
        let ckpt = Checkpoint::open(&file).unwrap();
        for (name, t) in ckpt.tensors() {
            if t.tensor().storage.is_none() {
                continue;
            }
            let Ok(d) = t.to_dlpack() else {
                // Only the dtypes DLPack lacks refuse.
                assert!(
                    dlpack::dl_dtype(t.dtype()).is_err(),
                    "{} {name}: {:?}",
                    file.display(),
                    t.to_dlpack().err()
                );
                continue;
            };
            let want = t.to_bytes().unwrap();
            assert_eq!(row_major(&d), &want[..], "{} {name}", file.display());
            let raw = d.as_raw();
            assert_eq!(raw.version.major, 1);
            assert_eq!(
                &raw.dl_tensor.dtype.bits,
                &((t.dtype().element_size() * 8) as u8)
            );
            if raw.flags & FLAG_IS_COPIED == 0 {
                assert_ne!(raw.flags & FLAG_READ_ONLY, 0, "the file map is read-only");
            }
            exported += 1;
            if exported % 7 == 0 {
                kept.push((d, want.into_owned()));
            }
        }
        // The checkpoint is dropped here; the kept tensors hold the map.
    }
    assert!(exported > 150, "{exported}");
    for (d, want) in &kept {
        assert_eq!(&row_major(d), want);
    }
    // Given away and deleted by "the consumer".
    let (d, _) = kept.pop().unwrap();
    let raw = d.into_raw();
    // SAFETY (test): we own `raw` now and call its deleter once, as a consumer would.
    unsafe { ((*raw).deleter.unwrap())(raw) };
    drop(kept);
    assert_eq!(
        dlpack::live_tensors(),
        before,
        "a deleter did not run, or ran twice"
    );

    // Loaded storages: owned (writable) and mapped (read-only), and whole storages.
    for mode in [CpuMode::Owned, CpuMode::Mapped] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_views.pt");
        let loaded = Loader::new()
            .map_location(MapLocation::to("cpu"))
            .cpu_mode(mode)
            .load(&path)
            .unwrap();
        let mut ts = Vec::new();
        for (name, t) in loaded.tensors() {
            let d = t.to_dlpack().unwrap();
            assert_eq!(row_major(&d), &t.to_bytes().unwrap()[..], "{name}");
            let ro = d.as_raw().flags & FLAG_READ_ONLY != 0;
            assert_eq!(ro, mode == CpuMode::Mapped, "{name}");
            ts.push(d);
        }
        let s = loaded.storage_to_dlpack(0).unwrap();
        let n = loaded.storage(0).unwrap().nbytes();
        assert_eq!(
            row_major(&s),
            loaded.storage(0).unwrap().host_bytes().unwrap()
        );
        assert_eq!(row_major(&s).len(), n);
        drop(loaded);
        // The storages outlive the load.
        for d in &ts {
            let _ = row_major(d);
        }
        drop((ts, s));
    }
    assert_eq!(dlpack::live_tensors(), before);
}
