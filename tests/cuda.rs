//! The cuda backend (`--features cuda`) end to end: on a real GPU where the driver finds one,
//! and always on the fake driver of tests/fake_cuda, a libcuda in host memory that runs queued
//! copies only when they are waited for. [`under_fake_driver`] runs this test binary again with
//! the fake on `LD_LIBRARY_PATH` (the driver is loaded once per process, so it cannot be
//! swapped in place) and requires the device tests to pass there rather than skip.
//! Needs `--features cuda,conformance` (the conformance suite runs on the device too), as the
//! test command builds.
#![cfg(all(feature = "cuda", feature = "conformance"))]

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::*;
use ptfile_backend::{Availability, Backend, BackendError, BackendExt, StorageDesc};
use ptfile_cuda::{CudaBackend, CudaStorage, RingConfig};

/// Set by [`under_fake_driver`] for the run it starts: the backend must be available there.
const EXPECT: &str = "PTFILE_EXPECT_CUDA";

/// The device count, or `None` after printing why the test skips (a panic when [`EXPECT`] is
/// set, since a skip would then hide a failure).
fn devices_or_skip(backend: &dyn Backend) -> Option<usize> {
    let availability = backend.availability();
    match availability.reason() {
        None => Some(availability.devices()),
        Some(reason) if std::env::var_os(EXPECT).is_some() => {
            panic!("{EXPECT} is set but the cuda backend is unavailable: {reason}")
        }
        Some(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

fn desc(key: &str, nbytes: usize) -> StorageDesc<'_> {
    StorageDesc::new(key, "uint8", 1, nbytes, "cuda:0")
}

/// Deterministic test bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// Uploads storages of `sizes` to `cuda:index` in one batch and checks every byte read back.
fn round_trip(b: &CudaBackend, index: usize, sizes: &[usize]) {
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u8))
        .collect();
    let keys: Vec<String> = (0..sizes.len()).map(|i| i.to_string()).collect();
    let items: Vec<(StorageDesc<'_>, &[u8])> = data
        .iter()
        .zip(&keys)
        .map(|(d, k)| (desc(k, d.len()), d.as_slice()))
        .collect();
    let out = b.materialize_many(Some(index), &items);
    assert_eq!(out.len(), sizes.len());
    for (i, (r, want)) in out.iter().zip(&data).enumerate() {
        let s = r.as_ref().unwrap_or_else(|e| panic!("storage {i}: {e}"));
        assert_eq!(s.location(), format!("cuda:{index}"));
        assert_eq!(s.nbytes(), want.len());
        let cuda = s.as_any().downcast_ref::<CudaStorage>().unwrap();
        assert_eq!(cuda.ordinal(), index);
        assert_eq!(cuda.device_ptr() == 0, want.is_empty());
        assert_eq!(
            cuda.device_ptr() % 256,
            0,
            "storage {i} is not 256-byte aligned"
        );
        let back = b.read_back(s.as_ref()).unwrap();
        assert!(back == *want, "storage {i} ({} bytes) differs", want.len());
    }
}

#[test]
fn round_trips() {
    let b = CudaBackend::default();
    let Some(count) = devices_or_skip(&b) else {
        return;
    };
    println!("device 0: {:?}", b.describe_device(0));
    assert!(b.describe_device(0).is_some());
    assert!(b.describe_device(count).is_none());

    // Default ring: small storages coalesced, one larger than a slot, empty ones.
    let mib = 1 << 20;
    let sizes = [
        0,
        1,
        3,
        4096,
        0,
        100_000,
        16 * mib,
        16 * mib + 1,
        40 * mib + 7,
        5,
    ];
    round_trip(&b, 0, &sizes);
    // One allocation per storage instead of one per batch.
    let separate = CudaBackend::default().with_shared_allocations(false);
    round_trip(&separate, 0, &sizes);

    // Storages of a batch share an allocation: each stays readable while any other is
    // dropped, and they lie back to back at 512-byte steps.
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(1000 + i, i as u8)).collect();
    let items: Vec<(StorageDesc<'_>, &[u8])> = data
        .iter()
        .map(|d| (desc("s", d.len()), d.as_slice()))
        .collect();
    let mut out: Vec<_> = b
        .materialize_many(Some(0), &items)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ptr = |s: &dyn ptfile_backend::DeviceStorage| {
        s.as_any()
            .downcast_ref::<CudaStorage>()
            .unwrap()
            .device_ptr()
    };
    assert_eq!(ptr(out[1].as_ref()) - ptr(out[0].as_ref()), 1024);
    let last = out.pop().unwrap();
    out.remove(0);
    drop(out);
    assert_eq!(b.read_back(last.as_ref()).unwrap(), data[3]);

    // A tiny ring so that chunking and slot reuse happen many times over, and a storage far
    // larger than the whole ring.
    let tiny = CudaBackend::with_ring(RingConfig::new(3, 1000, 2));
    round_trip(&tiny, 0, &[999, 1000, 1001, 0, 1, 3000, 12_345, 7]);
    tiny.release_staging();
    round_trip(&tiny, 0, &[2500]);

    // Slots of 2 MiB filled by 4 threads each (pieces of at least 1 MiB are split off).
    let threaded = CudaBackend::with_ring(RingConfig::new(2, 2 * mib, 4));
    round_trip(&threaded, 0, &[3 * mib + 5, 1, 2 * mib, 7 * mib]);

    // Single materialize goes through the same path.
    let data = pattern(12345, 9);
    let s = b
        .materialize(Some(0), &desc("x", data.len()), &data)
        .unwrap();
    assert_eq!(b.read_back(s.as_ref()).unwrap(), data);

    // Errors, not panics.
    assert!(matches!(
        b.materialize(Some(count), &desc("x", 1), &data[..1]),
        Err(BackendError::NoSuchDevice { .. })
    ));
    assert!(s.read_to_host(&mut [0u8; 3]).is_err());
}

/// Storages read from the checkpoint file (`pread` into the staging ring) rather than through
/// the mapped slice land byte for byte.
#[test]
fn round_trips_from_file_spans() {
    let b = CudaBackend::with_ring(RingConfig::new(2, 4096, 2));
    if devices_or_skip(&b).is_none() {
        return;
    }
    let sizes = [10_000usize, 0, 1, 4096, 70_001];
    let data: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, 40 + i as u8))
        .collect();
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cuda-spans-{}.bin", std::process::id()));
    let mut all = b"some header".to_vec();
    let mut offsets = Vec::new();
    for d in &data {
        offsets.push(all.len() as u64);
        all.extend_from_slice(d);
    }
    std::fs::write(&path, &all).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // The slices differ from the file on purpose: the file must be what is read.
    let decoys: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xEE; n]).collect();
    let items: Vec<(StorageDesc<'_>, &[u8])> = decoys
        .iter()
        .zip(&offsets)
        .map(|(d, &offset)| {
            let mut dsc = desc("f", d.len());
            dsc.file = Some(ptfile_backend::FileSpan {
                file: &file,
                offset,
            });
            (dsc, d.as_slice())
        })
        .collect();
    let out = b.materialize_many(Some(0), &items);
    for (r, want) in out.iter().zip(&data) {
        let s = r.as_ref().unwrap();
        assert!(b.read_back(s.as_ref()).unwrap() == *want);
    }
    drop(out);
    std::fs::remove_file(&path).unwrap();
}

/// Storages land on the device asked for when there are several.
#[test]
fn second_device() {
    let b = CudaBackend::default();
    let Some(count) = devices_or_skip(&b) else {
        return;
    };
    if count < 2 {
        println!("skipped: one CUDA device");
        return;
    }
    round_trip(&b, 1, &[0, 17, 1 << 20, 3]);
}

#[test]
fn conforms() {
    let b: Arc<dyn Backend> = ptfile_cuda::backend();
    if devices_or_skip(b.as_ref()).is_none() {
        return;
    }
    let r = ptfile::conformance::run(b, 20);
    println!("{r}");
    assert!(r.ok(), "{r}");
    assert!(r.skipped.is_none() && r.passed.len() >= 10, "{r}");
}

/// Runs the device tests above again in a child process on the fake driver (two devices), where
/// they must run, not skip.
#[test]
fn under_fake_driver() {
    let Some(dir) = fake_cuda_or_skip() else {
        return;
    };
    let tests = [
        "round_trips",
        "round_trips_from_file_spans",
        "second_device",
        "conforms",
    ];
    let out = Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--nocapture", "--test-threads", "1"])
        .env("LD_LIBRARY_PATH", &dir)
        .env("FAKE_CUDA_DEVICES", "2")
        .env(EXPECT, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "device tests on the fake driver failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("test result: ok. {} passed", tests.len());
    assert!(stdout.contains(&want), "expected `{want}`:\n{stdout}");
    assert!(
        !stdout.contains("skipped"),
        "a device test skipped:\n{stdout}"
    );
}

/// `ptfile ARGS` with the fake driver and the extra environment `envs`.
fn ptfile_on_fake(dir: &std::path::Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(ptfile_bin());
    cmd.args(args).env("LD_LIBRARY_PATH", dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// What users see from the command line: the CPU fallback with its reason, the strict-mode
/// error (exit 1, one line), out-of-memory per storage, the bench on a device.
#[test]
fn cli_fallback_strict_and_bench_on_fake_driver() {
    let Some(dir) = fake_cuda_or_skip() else {
        return;
    };
    let file = fixtures_dir().join("cuda_bf16_transformer.pt");
    let file = file.to_str().unwrap();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    let ok = ptfile_on_fake(&dir, &[], &["load", "--strict", file]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("cuda:0: 12 storages"), "{}", text(&ok));

    let none = [("FAKE_CUDA_DEVICES", "0")];
    let fell = ptfile_on_fake(&dir, &none, &["load", file]);
    assert!(fell.status.success(), "{}", text(&fell));
    assert!(
        text(&fell).contains("no CUDA device present"),
        "{}",
        text(&fell)
    );
    let strict = ptfile_on_fake(&dir, &none, &["load", "--strict", file]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    let err = String::from_utf8_lossy(&strict.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("no CUDA device present"), "{err}");

    // 40 000 bytes of device memory: the two 16 KiB storages that no longer fit fall back.
    let small = [("FAKE_CUDA_MEM_BYTES", "40000")];
    let oom = ptfile_on_fake(&dir, &small, &["load", file]);
    assert!(oom.status.success(), "{}", text(&oom));
    assert!(
        text(&oom).contains("CUDA_ERROR_OUT_OF_MEMORY"),
        "{}",
        text(&oom)
    );
    let strict = ptfile_on_fake(&dir, &small, &["load", "--strict", file]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));

    let bench = ptfile_on_fake(
        &dir,
        &[],
        &[
            "bench",
            "--json",
            "--runs",
            "2",
            "--map-location",
            "cuda:0",
            file,
        ],
    );
    assert!(bench.status.success(), "{}", text(&bench));
    let out = String::from_utf8_lossy(&bench.stdout);
    assert!(out.contains("\"device\":\"cuda:0\""), "{out}");
}

/// Without any driver (the usual CI machine), `--features cuda` falls back naming the driver
/// and `--strict` exits 1.
#[test]
fn no_driver_falls_back_naming_it() {
    if !matches!(ptfile_cuda::backend().availability(), Availability::Unavailable(r) if r == ptfile_cuda::NO_DRIVER)
    {
        println!("skipped: a CUDA driver is installed");
        return;
    }
    let file = fixtures_dir().join("cuda_state_dict.pt");
    let out = Command::new(ptfile_bin())
        .args(["load"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CUDA driver not found"));
    let out = Command::new(ptfile_bin())
        .args(["load", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CUDA driver not found"));
}
