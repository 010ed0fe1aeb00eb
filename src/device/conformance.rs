//! The conformance suite every backend runs, built-in or a user's (`--features conformance`).
//!
//! It loads real checkpoints written by PyTorch (embedded in the crate) onto the backend's
//! device and reads every storage back: every dtype, empty storages, views sharing a storage,
//! a big-endian source, remaps from a GPU tag to the device and from the device's tag to the
//! CPU. Where the hardware is absent it reports itself skipped with the backend's reason.
//!
//! ```
//! use std::sync::Arc;
//! let report = ptfile::conformance::run(Arc::new(ptfile::registry::CpuBackend), 10);
//! assert!(report.ok(), "{report}");
//! ```

use std::fmt;
use std::sync::Arc;

use ptfile_backend::{Availability, Backend, StorageDesc};

use crate::device::load::Loader;
use crate::device::map_location::MapLocation;
use crate::device::registry::{CpuBackend, Registry};
use crate::torch::checkpoint::Checkpoint;

/// The files the suite loads: (name, bytes, what it checks).
const FILES: &[(&str, &[u8], &str)] = &[
    (
        "dtypes_all",
        include_bytes!("../../tests/fixtures/dtypes_all.pt"),
        "every dtype",
    ),
    (
        "layouts",
        include_bytes!("../../tests/fixtures/layouts.pt"),
        "views sharing a storage, 0-d, empty, stride 0",
    ),
    (
        "seed_views",
        include_bytes!("../../tests/fixtures/seed_views.pt"),
        "two views of one storage",
    ),
    (
        "byteorder_big",
        include_bytes!("../../tests/fixtures/byteorder_big.pt"),
        "big-endian source",
    ),
    (
        "cuda_multi_gpu",
        include_bytes!("../../tests/fixtures/cuda_multi_gpu.pt"),
        "cuda:0 and cuda:1 tags remapped",
    ),
    (
        "custom_ipu",
        include_bytes!("../../tests/fixtures/custom_ipu.pt"),
        "a custom-device tag remapped",
    ),
];

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct ConformanceReport {
    /// The backend's device type.
    pub device_type: String,
    /// Checks that passed.
    pub passed: Vec<String>,
    /// Checks that failed, with what went wrong.
    pub failed: Vec<(String, String)>,
    /// Set when the hardware is absent: the backend's reason.
    pub skipped: Option<String>,
}

impl ConformanceReport {
    /// No failures (a skipped run is ok).
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.skipped {
            return write!(f, "{}: skipped: {r}", self.device_type);
        }
        writeln!(
            f,
            "{}: {} passed, {} failed",
            self.device_type,
            self.passed.len(),
            self.failed.len()
        )?;
        for (c, e) in &self.failed {
            writeln!(f, "  FAIL {c}: {e}")?;
        }
        Ok(())
    }
}

/// Runs the suite on `backend`, registered at `priority` beside the CPU.
pub fn run(backend: Arc<dyn Backend>, priority: i32) -> ConformanceReport {
    let ty = backend.device_type().to_string();
    let mut rep = ConformanceReport {
        device_type: ty.clone(),
        ..Default::default()
    };
    if let Availability::Unavailable(reason) = backend.availability() {
        rep.skipped = Some(reason);
        return rep;
    }
    let registry = if ty == "cpu" {
        Registry::empty().with(priority, backend.clone())
    } else {
        Registry::empty()
            .with(10, Arc::new(CpuBackend))
            .and_then(|r| r.with(priority, backend.clone()))
    };
    let registry = match registry {
        Ok(r) => Arc::new(r),
        Err(e) => {
            rep.failed.push(("register".into(), e.to_string()));
            return rep;
        }
    };
    let target = format!("{ty}:0");
    // Direct materialization: empty, odd sizes, a batch.
    let sizes = [0usize, 1, 3, 4, 5, 4096, 65_537];
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).collect())
        .collect();
    let descs: Vec<StorageDesc<'_>> = sizes
        .iter()
        .map(|&n| StorageDesc::new("k", "uint8", 1, n, "cpu"))
        .collect();
    let items: Vec<(StorageDesc<'_>, &[u8])> = descs
        .iter()
        .cloned()
        .zip(data.iter().map(|d| &d[..]))
        .collect();
    for (k, r) in backend
        .materialize_many(Some(0), &items)
        .into_iter()
        .enumerate()
    {
        let name = format!("materialize_many {} bytes", sizes[k]);
        match r.and_then(|s| {
            let mut b = vec![0u8; s.nbytes()];
            s.read_to_host(&mut b).map(|_| b)
        }) {
            Ok(b) if b == data[k] => rep.passed.push(name),
            Ok(_) => rep.failed.push((name, "read-back differs".into())),
            Err(e) => rep.failed.push((name, e.to_string())),
        }
    }
    for (name, bytes, what) in FILES {
        let check = format!("{name} ({what}) -> {target}");
        match check_file(bytes, &registry, MapLocation::to(target.clone()), &target) {
            Ok(()) => rep.passed.push(check),
            Err(e) => rep.failed.push((check, e)),
        }
    }
    // From the device's tag back to the CPU: load onto the device, then remap its tag to cpu.
    let check = format!("{target} -> cpu by table");
    let table = MapLocation::table([("cuda:0", target.as_str()), ("cuda:1", "cpu")]);
    match check_file(FILES[4].1, &registry, table, "") {
        Ok(()) => rep.passed.push(check),
        Err(e) => rep.failed.push((check, e)),
    }
    rep
}

/// Loads `bytes` with `map`, and checks every storage landed where mapped (`expect` when
/// non-empty) without fallback, with bytes equal to the file's, and that views still share.
fn check_file(
    bytes: &[u8],
    registry: &Arc<Registry>,
    map: MapLocation,
    expect: &str,
) -> Result<(), String> {
    let reference = Checkpoint::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    let ckpt = Checkpoint::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    let loaded = Loader::new()
        .registry(registry.clone())
        .map_location(map)
        .strict(true)
        .load_checkpoint(ckpt)
        .map_err(|e| e.to_string())?;
    if loaded.report.storages.len() != reference.storages.len() {
        return Err("storage count changed".into());
    }
    for (i, r) in loaded.report.storages.iter().enumerate() {
        if !expect.is_empty()
            && r.device != expect
            && !(expect.ends_with(":0") && r.device == expect.trim_end_matches(":0"))
        {
            return Err(format!(
                "storage {} on {}, expected {expect}",
                r.key, r.device
            ));
        }
        if r.fallback.is_some() {
            return Err(format!("storage {} fell back: {:?}", r.key, r.fallback));
        }
        let want = reference.storage_bytes(i).map_err(|e| e.to_string())?;
        let s = loaded.storage(i).ok_or("missing storage")?;
        let mut got = vec![0u8; s.nbytes()];
        s.read_to_host(&mut got).map_err(|e| e.to_string())?;
        if got[..] != want[..] {
            return Err(format!("storage {} read back differs from the file", r.key));
        }
    }
    // Descriptions (values, hashes, sharing) equal apart from devices.
    let mut a = crate::describe::describe(&reference).map_err(|e| e.to_string())?;
    let mut b = loaded.describe().map_err(|e| e.to_string())?;
    strip_devices(&mut a);
    strip_devices(&mut b);
    if a["root"] != b["root"] {
        return Err("described tensors differ after loading".into());
    }
    Ok(())
}

fn strip_devices(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("device");
            for x in m.values_mut() {
                strip_devices(x);
            }
        }
        serde_json::Value::Array(xs) => xs.iter_mut().for_each(strip_devices),
        _ => {}
    }
}
