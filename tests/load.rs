//! The registry, map_location and CPU fallback, through the public API.

use std::sync::Arc;

use ptfile::{Checkpoint, CpuMode, Loader, MapLocation, Registry};
use ptfile_backend::{
    Availability, Backend, BackendError, BackendRegistration, DeviceStorage, HostStorage,
    StorageDesc,
};

fn fx(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A backend linked in at link time, as a backend crate would do.
struct Linked;
impl Backend for Linked {
    fn device_type(&self) -> &str {
        "linkeddev"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 1 }
    }
    fn materialize(
        &self,
        _: Option<usize>,
        _: &StorageDesc<'_>,
        b: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        Ok(Box::new(HostStorage::new("linkeddev".into(), b.to_vec())))
    }
}
fn make_linked() -> Arc<dyn Backend> {
    Arc::new(Linked)
}
ptfile_backend::inventory::submit! { BackendRegistration { priority: 40, make: make_linked } }

#[test]
fn gpu_tags_fall_back_to_cpu_with_reasons() {
    for f in [
        "cuda_state_dict.pt",
        "cuda_mixed.pt",
        "cuda_multi_gpu.pt",
        "cuda_views.pt",
        "custom_ipu.pt",
        "cuda_bf16_transformer.pt",
    ] {
        let l = Loader::new().load(fx(f)).unwrap();
        for r in &l.report.storages {
            assert_eq!(r.device, "cpu", "{f}");
            if r.saved_location == "cpu" {
                assert!(r.fallback.is_none(), "{f}: cpu storage fell back");
            } else {
                let why = r.fallback.as_deref().unwrap_or("");
                assert!(!why.is_empty(), "{f}: {} has no reason", r.saved_location);
                if r.saved_location.starts_with("cuda") && !cfg!(feature = "cuda") {
                    assert!(why.contains("--features cuda"), "{why}");
                }
            }
        }
    }
}

#[test]
fn strict_mode_refuses_naming_the_device() {
    let e = Loader::new()
        .strict(true)
        .load(fx("cuda_mixed.pt"))
        .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("cuda:0") && m.contains("map_location"), "{m}");
    assert_eq!(e.exit_code(), 1);
    // Mapped to the CPU, strict mode loads it.
    let l = Loader::new()
        .strict(true)
        .map_location(MapLocation::to("cpu"))
        .load(fx("cuda_mixed.pt"))
        .unwrap();
    assert!(l.report.fallbacks().next().is_none());
}

#[test]
fn map_location_forms() {
    let l = Loader::new()
        .map_location(MapLocation::table([("cuda:1", "cuda:0")]))
        .load(fx("cuda_multi_gpu.pt"))
        .unwrap();
    let locs: Vec<_> = l
        .report
        .storages
        .iter()
        .map(|r| (r.saved_location.as_str(), r.location.as_str()))
        .collect();
    assert!(locs.contains(&("cuda:1", "cuda:0")), "{locs:?}");
    let l = Loader::new()
        .map_location(MapLocation::func(|s, loc| {
            (loc == "cuda:1" && s.nbytes > 0).then(|| "cpu".to_string())
        }))
        .load(fx("cuda_multi_gpu.pt"))
        .unwrap();
    for r in &l.report.storages {
        if r.saved_location == "cuda:1" {
            assert_eq!(r.location, "cpu");
            assert!(r.fallback.is_none());
        } else {
            assert_eq!(r.location, r.saved_location);
        }
    }
    assert!(MapLocation::parse_specs(&["cuda:0", "cpu"]).is_err());
}

#[test]
fn views_share_one_buffer_and_writes_show_through() {
    let mut l = Loader::new().load(fx("seed_views.pt")).unwrap();
    let root = l.checkpoint.root.clone();
    let ts = root.tensors(100);
    assert!(ts.len() >= 2);
    let s0 = ts[0].1.storage;
    assert!(
        ts.iter().all(|(_, t)| t.storage == s0),
        "views must share one storage"
    );
    assert_eq!(l.report.storages.len(), 1);
    let idx = s0.unwrap();
    // `loaded_evens *= 2` changes `loaded_numbers`: double every int64 through the storage.
    let before =
        ptfile::describe::describe_with(&l.checkpoint, &root, &l, &Default::default()).unwrap();
    {
        let b = l.host_bytes_mut(idx).unwrap();
        for c in b.chunks_exact_mut(8) {
            let v = i64::from_le_bytes(c.try_into().unwrap()) * 2;
            c.copy_from_slice(&v.to_le_bytes());
        }
    }
    let after =
        ptfile::describe::describe_with(&l.checkpoint, &root, &l, &Default::default()).unwrap();
    let vals = |v: &serde_json::Value, i: usize| -> Vec<i64> {
        v["root"]["items"][i]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    assert_eq!(vals(&after, 1), vec![4, 8, 12, 16]);
    for i in 0..2 {
        assert_eq!(
            vals(&after, i),
            vals(&before, i).iter().map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}

#[test]
fn mapped_mode_borrows_the_file() {
    let l = Loader::new()
        .cpu_mode(CpuMode::Mapped)
        .load(fx("seed_share.pt"))
        .unwrap();
    let c = Checkpoint::open(fx("seed_share.pt")).unwrap();
    let s = l.storage(0).unwrap();
    assert_eq!(s.host_bytes().unwrap(), &c.storage_bytes(0).unwrap()[..]);
    // Big-endian files are swapped into owned memory even in mapped mode.
    let l = Loader::new()
        .cpu_mode(CpuMode::Mapped)
        .load(fx("byteorder_big.pt"))
        .unwrap();
    let c = Checkpoint::open(fx("byteorder_big.pt")).unwrap();
    for i in 0..c.storages.len() {
        assert_eq!(
            l.storage(i).unwrap().host_bytes().unwrap(),
            &c.storage_bytes(i).unwrap()[..]
        );
    }
}

#[test]
fn register_package_serves_ipu_at_priority_11() {
    let mut reg = Registry::default();
    reg.register_package(
        11,
        |s: &dyn DeviceStorage| s.location().starts_with("ipu").then(|| "ipu".to_string()),
        |_d, b: &[u8], loc: &str| {
            loc.starts_with("ipu").then(|| {
                Ok(Box::new(HostStorage::new("ipu".into(), b.to_vec())) as Box<dyn DeviceStorage>)
            })
        },
    );
    let l = Loader::new()
        .registry(Arc::new(reg.clone()))
        .load(fx("custom_ipu.pt"))
        .unwrap();
    let ipu: Vec<_> = l
        .report
        .storages
        .iter()
        .filter(|r| r.saved_location == "ipu")
        .collect();
    assert_eq!(ipu.len(), 1);
    assert_eq!(ipu[0].device, "ipu");
    assert!(ipu[0].fallback.is_none());
    assert_eq!(
        reg.location_tag(l.storage(0).unwrap()).as_deref(),
        Some(l.storage(0).unwrap().location().as_str())
    );
}

#[test]
fn linked_backends_join_the_default_registry() {
    let reg = Registry::default();
    assert!(
        reg.device_types().contains(&"linkeddev".to_string()),
        "{:?}",
        reg.device_types()
    );
    let l = Loader::new()
        .map_location(MapLocation::to("linkeddev"))
        .load(fx("seed_tensor.pt"))
        .unwrap();
    assert_eq!(l.report.storages[0].device, "linkeddev");
}

#[test]
fn device_index_out_of_range_is_a_reason() {
    let reg = Registry::default();
    let l = Loader::new()
        .registry(Arc::new(reg))
        .map_location(MapLocation::to("cpu:3"))
        .load(fx("seed_tensor.pt"))
        .unwrap();
    let why = l.report.storages[0].fallback.clone().unwrap_or_default();
    assert!(why.contains("cpu:3 requested, 1 device present"), "{why}");
}
