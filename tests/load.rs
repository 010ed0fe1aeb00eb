//! The registry, map_location and CPU fallback, through the public API.
//!
//! Where storages land depends on the build and the host: with `--features cuda` on a machine
//! with a GPU, `cuda:N` storages go to the device. The tests ask the registry what this host
//! has ([`cuda_devices`]) and assert what must happen there, so they hold on a GPU host as on
//! a CPU-only one; [`device_decisions_hold_on_the_fake_driver`] reruns them on the fake
//! driver of tests/fake_cuda with one and two devices, so the GPU branches run everywhere.

mod common;

use std::ops::Range;
use std::sync::Arc;

use ptfile::{Checkpoint, CpuMode, Loaded, Loader, MapLocation, Registry};
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

/// The CUDA devices the default registry's cuda backend has: 0 without `--features cuda`,
/// without a driver or without a GPU. With `PTFILE_EXPECT_CUDA` set (a GPU machine, or the
/// fake driver of [`device_decisions_hold_on_the_fake_driver`]) it must have one.
fn cuda_devices() -> usize {
    let registry = Registry::default();
    let Some(cuda) = registry.backend("cuda") else {
        assert!(
            !common::required("cuda"),
            "a CUDA device is required (PTFILE_EXPECT_CUDA) but this build has no cuda backend: \
             build with --features cuda"
        );
        println!("cuda devices: 0 (no cuda backend compiled in)");
        return 0;
    };
    let availability = cuda.availability();
    if let Availability::Unavailable(why) = &availability {
        assert!(
            !common::required("cuda"),
            "a CUDA device is required (PTFILE_EXPECT_CUDA) but the cuda backend has none: {why}"
        );
    }
    let devices = availability.devices();
    println!("cuda devices: {devices}");
    devices
}

/// Where a storage saved at `location` must land when loaded without map_location on a host
/// with `cuda` CUDA devices: `Ok(device)`, or `Err(what the fallback reason must contain)`.
/// Only `cpu` and `cuda:N` have backends in the default registry of this test (the linked
/// `linkeddev` aside); every other device type falls back naming its type.
fn expected_landing(location: &str, cuda: usize) -> Result<String, String> {
    if location == "cpu" {
        return Ok("cpu".into());
    }
    let Some(rest) = location.strip_prefix("cuda") else {
        let device_type = location.split(':').next().unwrap_or(location);
        return Err(format!("`{device_type}`"));
    };
    let index: usize = match rest.strip_prefix(':') {
        Some(n) => n
            .parse()
            .unwrap_or_else(|_| panic!("bad location {location:?}")),
        None => 0,
    };
    let registry = Registry::default();
    match registry.backend("cuda") {
        None => Err("--features cuda".into()),
        Some(b) => match b.availability() {
            Availability::Unavailable(reason) => Err(reason),
            _ if index < cuda => Ok(format!("cuda:{index}")),
            _ => Err(format!(
                "{location} requested, {cuda} device{} present",
                if cuda == 1 { "" } else { "s" }
            )),
        },
    }
}

/// Every storage of the cuda_* and custom_ipu fixtures lands where this host can serve it: on
/// `cuda:N` when the build has the cuda backend and the host has device N, else on the CPU
/// with a reason that names why (no backend compiled in, the driver's reason, or the device
/// count).
#[test]
fn gpu_tags_fall_back_to_cpu_with_reasons() {
    let cuda = cuda_devices();
    let mut on_device = 0;
    for f in [
        "cuda_state_dict.pt",
        "cuda_mixed.pt",
        "cuda_multi_gpu.pt",
        "cuda_views.pt",
        "custom_ipu.pt",
        "cuda_bf16_transformer.pt",
    ] {
        let l = Loader::new().load(fx(f)).unwrap();
        assert!(!l.report.storages.is_empty(), "{f}");
        for r in &l.report.storages {
            assert_eq!(
                r.location, r.saved_location,
                "{f}: no map_location was given"
            );
            match expected_landing(&r.saved_location, cuda) {
                Ok(device) => {
                    assert_eq!(
                        r.device, device,
                        "{f}: {} on a host with {cuda} CUDA devices",
                        r.saved_location
                    );
                    assert!(
                        r.fallback.is_none(),
                        "{f}: {} fell back: {:?}",
                        r.saved_location,
                        r.fallback
                    );
                    on_device += usize::from(device != "cpu");
                }
                Err(must_name) => {
                    assert_eq!(r.device, "cpu", "{f}: {} must fall back", r.saved_location);
                    let why = r.fallback.as_deref().unwrap_or("");
                    assert!(!why.is_empty(), "{f}: {} has no reason", r.saved_location);
                    assert!(
                        why.contains(&must_name),
                        "{f}: {}: {why:?} does not say {must_name:?}",
                        r.saved_location
                    );
                }
            }
        }
    }
    // Not vacuous on a GPU host: its cuda:0 storages did land on the device.
    assert_eq!(
        on_device > 0,
        cuda > 0,
        "{on_device} storages on a CUDA device, {cuda} devices"
    );
}

/// Strict mode loads a file whose every storage this host can serve and refuses one it cannot,
/// naming the location and map_location: cuda_mixed.pt (cuda:0 + cpu) loads on a GPU host,
/// cuda_multi_gpu.pt needs two GPUs, custom_ipu.pt (no ipu backend) is refused everywhere.
/// Mapped to the CPU, each loads.
#[test]
fn strict_mode_refuses_naming_the_device() {
    let cuda = cuda_devices();
    let mut refused = Vec::new();
    for f in ["cuda_mixed.pt", "cuda_multi_gpu.pt", "custom_ipu.pt"] {
        let c = Checkpoint::open(fx(f)).unwrap();
        let unservable = c
            .storages
            .iter()
            .map(|s| s.location.as_str())
            .find(|loc| expected_landing(loc, cuda).is_err());
        let strict = Loader::new().strict(true).load(fx(f));
        match unservable {
            Some(loc) => {
                let e = match strict {
                    Ok(_) => {
                        panic!("{f}: strict mode loaded {loc} on a host with {cuda} CUDA devices")
                    }
                    Err(e) => e,
                };
                let m = e.to_string();
                assert!(m.contains(loc) && m.contains("map_location"), "{f}: {m}");
                assert_eq!(e.exit_code(), 1, "{f}");
                refused.push(f);
            }
            None => {
                let l = strict.unwrap_or_else(|e| {
                    panic!("{f}: strict mode refused on a host with {cuda} CUDA devices: {e}")
                });
                assert!(l.report.fallbacks().next().is_none(), "{f}");
                for r in &l.report.storages {
                    assert_eq!(
                        Ok(r.device.clone()),
                        expected_landing(&r.saved_location, cuda),
                        "{f}"
                    );
                }
            }
        }
        // Mapped to the CPU, strict mode loads it.
        let l = Loader::new()
            .strict(true)
            .map_location(MapLocation::to("cpu"))
            .load(fx(f))
            .unwrap();
        assert!(l.report.fallbacks().next().is_none(), "{f}");
        assert!(l.report.storages.iter().all(|r| r.device == "cpu"), "{f}");
    }
    let expected: &[&str] = match cuda {
        0 => &["cuda_mixed.pt", "cuda_multi_gpu.pt", "custom_ipu.pt"],
        1 => &["cuda_multi_gpu.pt", "custom_ipu.pt"],
        _ => &["custom_ipu.pt"],
    };
    assert_eq!(
        refused, expected,
        "refused by strict mode with {cuda} CUDA devices"
    );
}

/// Runs the two tests above again in a child process on the fake CUDA driver
/// (tests/fake_cuda), with one device and with two, requiring them to pass there on the GPU
/// branches (`PTFILE_EXPECT_CUDA`): what a real GPU host sees, on every machine with a C
/// compiler.
#[cfg(feature = "cuda")]
#[test]
fn device_decisions_hold_on_the_fake_driver() {
    let Some(dir) = common::fake_cuda_or_skip() else {
        return;
    };
    let tests = [
        "gpu_tags_fall_back_to_cpu_with_reasons",
        "strict_mode_refuses_naming_the_device",
    ];
    for devices in ["1", "2"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(tests)
            .args(["--exact", "--nocapture", "--test-threads", "1"])
            .env("LD_LIBRARY_PATH", &dir)
            .env("FAKE_CUDA_DEVICES", devices)
            .env("PTFILE_EXPECT_CUDA", "1")
            .env_remove("CUDA_VISIBLE_DEVICES")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("--- {devices} fake device(s) ---\n{stdout}");
        let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "on the fake driver with {devices} devices ({}):\n{report}",
            out.status
        );
        let want = format!("test result: ok. {} passed", tests.len());
        assert!(stdout.contains(&want), "expected `{want}`:\n{report}");
        let seen = format!("cuda devices: {devices}");
        assert!(
            stdout.matches(&seen).count() == tests.len(),
            "expected `{seen}` from each test:\n{report}"
        );
    }
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

/// The address range of `bytes`.
fn span(bytes: &[u8]) -> Range<usize> {
    let start = bytes.as_ptr() as usize;
    start..start + bytes.len()
}

/// For every storage of `l`, on the CPU: `Some(true)` when its host bytes are the file map's
/// bytes at the storage's file span (same address and length), `Some(false)` when they lie
/// wholly outside the map (a copy). Empty storages (no address to compare) are left out.
fn borrowed_from_the_map(l: &Loaded) -> Vec<(usize, bool)> {
    let map = l.checkpoint.source();
    assert!(map.is_mapped(), "a file opened from disk is mapped");
    let map = span(map.bytes());
    let mut out = Vec::new();
    for (i, s) in l.checkpoint.storages.iter().enumerate() {
        assert_eq!(l.report.storages[i].device, "cpu");
        let bytes = l
            .storage(i)
            .unwrap()
            .host_bytes()
            .expect("CPU storages have host bytes");
        assert_eq!(bytes.len() as u64, s.nbytes, "storage {i}");
        if bytes.is_empty() {
            continue;
        }
        let (offset, _) = s.data.expect("a storage with bytes has a file span");
        let at = span(bytes);
        let inside = map.contains(&at.start) && at.end <= map.end;
        if inside {
            assert_eq!(
                at.start - map.start,
                offset as usize,
                "storage {i}: not at its file span"
            );
        } else {
            assert!(
                at.end <= map.start || at.start >= map.end,
                "storage {i} overlaps the map partly"
            );
        }
        out.push((i, inside));
    }
    out
}

/// Mapped mode hands out the map's own bytes (no copy) for little-endian files; the default
/// (owned) mode and big-endian files hold copies.
#[test]
fn mapped_mode_borrows_the_file() {
    for f in [
        "seed_share.pt",
        "seed_views.pt",
        "cuda_bf16_transformer.pt",
        "seed_views_legacy.pt",
    ] {
        let load = |mode| {
            Loader::new()
                .cpu_mode(mode)
                .map_location(MapLocation::to("cpu"))
                .load(fx(f))
                .unwrap()
        };
        let c = Checkpoint::open(fx(f)).unwrap();
        let mapped = load(CpuMode::Mapped);
        let owned = load(CpuMode::default());
        for (l, mode) in [(&mapped, "mapped"), (&owned, "owned")] {
            assert_eq!(l.checkpoint.storages.len(), c.storages.len(), "{f}");
            for i in 0..c.storages.len() {
                assert_eq!(
                    l.storage(i).unwrap().host_bytes().unwrap(),
                    &c.storage_bytes(i).unwrap()[..],
                    "{f} ({mode}): storage {i}"
                );
            }
        }
        let m = borrowed_from_the_map(&mapped);
        assert!(!m.is_empty(), "{f}: no storage with bytes");
        assert!(
            m.iter().all(|&(_, inside)| inside),
            "{f}: mapped mode copied storages {m:?}"
        );
        let o = borrowed_from_the_map(&owned);
        assert!(
            o.iter().all(|&(_, inside)| !inside),
            "{f}: owned mode borrowed storages {o:?}"
        );
    }
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
    let b = borrowed_from_the_map(&l);
    assert!(
        !b.is_empty() && b.iter().all(|&(_, inside)| !inside),
        "{b:?}"
    );
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

/// A CPU backend of the user's own, counting what it holds.
struct CountingCpu(std::sync::atomic::AtomicUsize);
impl Backend for CountingCpu {
    fn device_type(&self) -> &str {
        "cpu"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 1 }
    }
    fn materialize(
        &self,
        _index: Option<usize>,
        _desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(HostStorage::new("cpu".into(), bytes.to_vec())))
    }
}

#[test]
fn a_cpu_backend_of_your_own_holds_every_cpu_storage_and_the_fallback() {
    let mine = Arc::new(CountingCpu(Default::default()));
    let registry = Registry::default().with(5, mine.clone()).unwrap();
    let loader = Loader::new().registry(Arc::new(registry));
    // cuda_mixed.pt: a cpu storage and a cuda:0 one (which falls back without a GPU, or is
    // remapped to the CPU here).
    let loaded = loader
        .map_location(MapLocation::to("cpu"))
        .load(fx("cuda_mixed.pt"))
        .unwrap();
    let n = loaded.checkpoint.storages.len();
    assert_eq!(mine.0.load(std::sync::atomic::Ordering::SeqCst), n);
    for s in loaded.storages() {
        assert!(s.as_any().downcast_ref::<HostStorage>().is_some(), "{s:?}");
    }
    // The fallback from a device that does not exist goes through it too.
    let before = mine.0.load(std::sync::atomic::Ordering::SeqCst);
    let registry = Registry::default().with(5, mine.clone()).unwrap();
    let loaded = Loader::new()
        .registry(Arc::new(registry))
        .map_location(MapLocation::to("nodev:3"))
        .load(fx("cuda_mixed.pt"))
        .unwrap();
    assert!(loaded.report.storages.iter().all(|r| r.fallback.is_some()));
    assert_eq!(mine.0.load(std::sync::atomic::Ordering::SeqCst) - before, n);
}

/// A device whose allocations always fail.
struct Full;
impl Backend for Full {
    fn device_type(&self) -> &str {
        "fulldev"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 1 }
    }
    fn materialize(
        &self,
        _index: Option<usize>,
        desc: &StorageDesc<'_>,
        _bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        Err(BackendError::OutOfMemory {
            device: "fulldev:0".into(),
            bytes: desc.nbytes as u64,
            reason: "no room".into(),
        })
    }
}

#[test]
fn strict_errors_keep_the_backends_error_kind() {
    let registry = Arc::new(Registry::default().with(12, Arc::new(Full)).unwrap());
    let e = Loader::new()
        .registry(registry.clone())
        .strict(true)
        .map_location(MapLocation::to("fulldev:0"))
        .load(fx("seed_mymodule_state_dict.pt"))
        .unwrap_err();
    match &e {
        ptfile::Error::Placement { source, .. } => assert!(
            matches!(source.as_deref(), Some(BackendError::OutOfMemory { .. })),
            "{source:?}"
        ),
        other => panic!("{other}"),
    }
    assert!(std::error::Error::source(&e).is_some());
    // No backend at all for the location: no backend error to keep.
    let e = Loader::new()
        .strict(true)
        .map_location(MapLocation::to("nodev:0"))
        .load(fx("seed_mymodule_state_dict.pt"))
        .unwrap_err();
    assert!(
        matches!(e, ptfile::Error::Placement { source: None, .. }),
        "{e}"
    );
    // Without strict mode the out-of-memory storages fall back, with the reason.
    let loaded = Loader::new()
        .registry(registry)
        .map_location(MapLocation::to("fulldev:0"))
        .load(fx("seed_mymodule_state_dict.pt"))
        .unwrap();
    assert!(loaded.report.fallbacks().all(|r| r
        .fallback
        .as_deref()
        .unwrap_or("")
        .contains("no room")));
}
