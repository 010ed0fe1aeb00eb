//! The world around the file: one `Registry` and several `Loader`s used from 8 threads at
//! once, loading the same and different files onto the CPU (owned and mapped), a simulated
//! device, wgpu and the fake CUDA driver, every result identical to a single-threaded load;
//! and 1 000 open/load/drop cycles that end with resident memory (and the fake driver's
//! device allocations) where they started.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use common::*;
use ptfile::backend::{
    Availability, Backend, BackendError, DeviceStorage, HostStorage, StorageDesc,
};
use ptfile::{CpuMode, Loader, MapLocation, Registry};
use sha2::{Digest, Sha256};

/// A simulated device in host memory.
struct Sim;
impl Backend for Sim {
    fn device_type(&self) -> &str {
        "sim"
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
        Ok(Box::new(HostStorage::new("sim:0".into(), bytes.to_vec())))
    }
}

const FILES: &[&str] = &[
    "seed_mymodule_state_dict.pt",
    "training_checkpoint.pt",
    "training_checkpoint_legacy.pt",
    "dtypes_all.pt",
    "layouts.pt",
    "byteorder_big.pt",
    "seed_views.pt",
    "seed_mymodule_scripted.ptc",
    "cuda_bf16_transformer.pt",
    "seed_mymodule_whole.pt",
];

/// Every tensor's name, device and sha256 of its row-major bytes (read back from the device).
fn fingerprint(loaded: &ptfile::Loaded) -> BTreeMap<String, (String, String)> {
    loaded
        .tensors()
        .filter(|(_, t)| t.tensor().storage.is_some())
        .map(|(n, t)| {
            let h = Sha256::digest(t.to_bytes().unwrap());
            (n, (t.device(), format!("{h:x}")))
        })
        .collect()
}

/// The targets this process can load onto: (map_location, cpu mode).
fn targets(registry: &Registry) -> Vec<(String, CpuMode)> {
    let mut t = vec![
        ("cpu".to_string(), CpuMode::Owned),
        ("cpu".to_string(), CpuMode::Mapped),
        ("sim:0".to_string(), CpuMode::Owned),
    ];
    for ty in ["wgpu", "cuda"] {
        let n = registry
            .backend(ty)
            .map(|b| b.availability().devices())
            .unwrap_or(0);
        if n > 0 {
            t.push((format!("{ty}:0"), CpuMode::Owned));
        } else if ty == "wgpu" {
            skip_or_fail("wgpu", "the concurrency test loads onto wgpu too");
        }
    }
    t
}

#[test]
fn eight_threads_load_what_one_thread_loads() {
    let registry = Arc::new(Registry::default().with(15, Arc::new(Sim)).unwrap());
    let targets = targets(&registry);
    if std::env::var_os("PTFILE_EXPECT_CUDA").is_some() {
        assert!(
            targets.iter().any(|t| t.0 == "cuda:0"),
            "no cuda:0 under the fake driver"
        );
    }
    let loaders: Vec<Arc<Loader>> = targets
        .iter()
        .map(|(loc, mode)| {
            Arc::new(
                Loader::new()
                    .registry(registry.clone())
                    .map_location(MapLocation::to(loc))
                    .cpu_mode(*mode),
            )
        })
        .collect();
    let jobs: Vec<(usize, &str)> = (0..loaders.len())
        .flat_map(|l| FILES.iter().map(move |f| (l, *f)))
        .collect();
    // Single-threaded truth.
    let truth: Vec<_> = jobs
        .iter()
        .map(|&(l, f)| fingerprint(&loaders[l].load(fixtures_dir().join(f)).unwrap()))
        .collect();
    for t in &truth {
        assert!(!t.is_empty());
    }
    // 8 threads, each through every job 3 times in its own order.
    std::thread::scope(|s| {
        for k in 0..8usize {
            let (jobs, truth, loaders, targets) = (&jobs, &truth, &loaders, &targets);
            s.spawn(move || {
                for round in 0..3 {
                    for j in 0..jobs.len() {
                        let i = (j * 7 + k * 13 + round * 5) % jobs.len();
                        let (l, f) = jobs[i];
                        let got = fingerprint(&loaders[l].load(fixtures_dir().join(f)).unwrap());
                        assert_eq!(got, truth[i], "thread {k}: {f} onto {:?}", targets[l]);
                    }
                }
            });
        }
    });
}

/// Runs this test binary's `test` alone in a child process with `envs`.
fn child(test: &str, envs: &[(&str, &str)], fake: Option<&std::path::Path>) -> String {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        test,
        "--exact",
        "--nocapture",
        "--include-ignored",
        "--test-threads",
        "1",
    ]);
    for (k, v) in envs {
        c.env(k, v);
    }
    if let Some(dir) = fake {
        c.env("LD_LIBRARY_PATH", dir).env("PTFILE_EXPECT_CUDA", "1");
    }
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{test} {envs:?}: {}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[cfg(feature = "cuda")]
#[test]
fn eight_threads_on_the_fake_cuda_driver() {
    let Some(dir) = fake_cuda_or_skip() else {
        return;
    };
    child("eight_threads_load_what_one_thread_loads", &[], Some(&dir));
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One mode's cycles (run by [`no_leaks_over_a_thousand_cycles`] in a child process, so that
/// no other test shares the resident memory it measures).
#[test]
#[ignore = "run in a child process by no_leaks_over_a_thousand_cycles"]
fn leak_cycles() {
    let target = std::env::var("LEAK_TARGET").unwrap_or_else(|_| "cpu".into());
    let mode = if std::env::var_os("LEAK_MAPPED").is_some() {
        CpuMode::Mapped
    } else {
        CpuMode::Owned
    };
    let n: usize = std::env::var("LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let loader = Loader::new()
        .map_location(MapLocation::to(&target))
        .cpu_mode(mode);
    let files: Vec<_> = [
        "cuda_bf16_transformer.pt",
        "training_checkpoint.pt",
        "seed_views.pt",
    ]
    .iter()
    .map(|f| fixtures_dir().join(f))
    .collect();
    let cycle = |i: usize| {
        let loaded = loader.load(&files[i % files.len()]).unwrap();
        let on: Vec<String> = loaded
            .report
            .storages
            .iter()
            .map(|r| r.device.clone())
            .collect();
        assert!(
            on.iter()
                .all(|d| d.starts_with(target.split(':').next().unwrap())),
            "{on:?}"
        );
        let t = loaded.tensors().next().unwrap().1;
        let _ = t.to_bytes().unwrap();
    };
    for i in 0..100 {
        cycle(i);
    }
    let before = rss();
    for i in 0..n {
        cycle(i);
    }
    let after = rss();
    let growth = after.saturating_sub(before);
    println!("{target} {mode:?}: {n} cycles, RSS {before} -> {after} ({growth} B growth)");
    assert!(
        growth < 8 << 20,
        "RSS grew by {growth} bytes over {n} cycles onto {target}"
    );
}

#[test]
fn no_leaks_over_a_thousand_cycles() {
    child("leak_cycles", &[("LEAK_TARGET", "cpu")], None);
    child(
        "leak_cycles",
        &[("LEAK_TARGET", "cpu"), ("LEAK_MAPPED", "1")],
        None,
    );
    let wgpu = Registry::default()
        .backend("wgpu")
        .map(|b| b.availability().devices())
        .unwrap_or(0);
    if wgpu > 0 {
        child("leak_cycles", &[("LEAK_TARGET", "wgpu:0")], None);
    } else {
        skip_or_fail("wgpu", "the leak test cycles loads onto wgpu too");
    }
    #[cfg(feature = "cuda")]
    if let Some(dir) = fake_cuda_or_skip() {
        let stats = tempfile::NamedTempFile::new().unwrap();
        let path = stats.path().to_str().unwrap().to_string();
        child(
            "leak_cycles",
            &[("LEAK_TARGET", "cuda:0"), ("FAKE_CUDA_STATS", &path)],
            Some(&dir),
        );
        let s = std::fs::read_to_string(stats.path()).unwrap();
        assert!(
            s.contains("live_device_allocs=0"),
            "device memory left allocated: {s}"
        );
    }
}
