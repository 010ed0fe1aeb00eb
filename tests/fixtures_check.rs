//! `ptfile inspect --json` and `ptfile load --json` against the checkpoints torch 2.15 wrote
//! (tests/fixtures), compared with the descriptions torch itself gave, by
//! tests/tools/check_fixtures.py. Needs only `python3` (no torch).
//!
//! Fixtures in [`NOT_YET_SUPPORTED`] are left out of the assertion. Shrink the list as support
//! lands: the tests print a note for every listed fixture that already passes.

mod common;

use common::*;

/// Fixtures the reader does not handle yet, by name: none (every format is read). Add a name
/// here only while its support is being built; the tests print a note for each listed fixture
/// that passes already.
const NOT_YET_SUPPORTED: &[&str] = &[];

/// Where storages saved with these tags land when loaded on a machine without the device:
/// the CPU fallback. Passed to compare_description.py as `--device-map FROM=TO`.
const CPU_FALLBACK: &[&str] = &["cuda:0=cpu", "cuda:1=cpu", "ipu=cpu"];

fn supported_and_unsupported() -> (Vec<String>, Vec<String>) {
    let all = fixture_names(&fixtures_dir());
    assert!(
        all.len() >= 30,
        "expected the torch fixtures in {}, found {:?}",
        fixtures_dir().display(),
        all
    );
    for name in NOT_YET_SUPPORTED {
        assert!(
            all.iter().any(|n| n == name),
            "NOT_YET_SUPPORTED names {name:?}, which is not a fixture in {}",
            fixtures_dir().display()
        );
    }
    all.into_iter()
        .partition(|n| !NOT_YET_SUPPORTED.contains(&n.as_str()))
}

/// Runs check_fixtures.py on the supported fixtures (asserting they all pass), then on the
/// unsupported ones (reporting those that pass already).
fn check(args: &[&str], extra: &[&str], envs: &[(&str, &str)]) {
    let (supported, unsupported) = supported_and_unsupported();
    let python = system_python();
    let cmd = ptfile_cmd(args);
    let dir = fixtures_dir();
    let run = check_fixtures(&python, &cmd, &[&dir], Some(&supported), extra, envs);
    let passed = run.passed_names();
    assert!(
        run.ok() && passed.len() == supported.len(),
        "`{cmd}` disagrees with torch on {} of {} fixtures ({}):\n{}",
        run.failures().len(),
        supported.len(),
        run.summary(),
        run.report()
    );

    let run = check_fixtures(&python, &cmd, &[&dir], Some(&unsupported), extra, envs);
    let now_pass = run.passed_names();
    for name in &now_pass {
        println!("note: {name} is in NOT_YET_SUPPORTED but passes now: remove it from the list");
    }
    println!(
        "{} fixtures checked, {} not yet supported ({} of them pass already)",
        supported.len(),
        unsupported.len(),
        now_pass.len()
    );
}

#[test]
fn inspect_matches_torch() {
    check(&["inspect", "--json"], &[], &[]);
}

#[test]
fn load_matches_torch_with_cpu_fallback() {
    // Every storage must land on the CPU: the cuda/ipu tags of cuda_* and custom_ipu fall back.
    // CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a machine with one too.
    let mut extra = Vec::new();
    for m in CPU_FALLBACK {
        extra.push("--device-map");
        extra.push(m);
    }
    check(
        &["load", "--json"],
        &extra,
        &[("CUDA_VISIBLE_DEVICES", ""), ("HIP_VISIBLE_DEVICES", "")],
    );
}

/// The exit-code contract of the CLI: 0 ok, 1 invalid checkpoint (one line on stderr),
/// 2 usage error or unreadable path.
#[test]
fn inspect_exit_codes() {
    let bin = ptfile_bin();
    let ok = std::process::Command::new(&bin)
        .args(["inspect", "--json"])
        .arg(fixtures_dir().join("seed_tensor.pt"))
        .output()
        .expect("run ptfile");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "inspect of a valid file: {}",
        last_line(&ok.stderr)
    );

    let tmp = TempDir::new("exit-codes");
    let missing = tmp.path().join("no-such-file.pt");
    let out = std::process::Command::new(&bin)
        .args(["inspect", "--json"])
        .arg(&missing)
        .output()
        .expect("run ptfile");
    assert_eq!(out.status.code(), Some(2), "inspect of a missing path");

    let out = std::process::Command::new(&bin)
        .args(["inspect", "--no-such-option"])
        .output()
        .expect("run ptfile");
    assert_eq!(out.status.code(), Some(2), "usage error");

    // Not a checkpoint: a description JSON file.
    let out = std::process::Command::new(&bin)
        .args(["inspect", "--json"])
        .arg(fixtures_dir().join("seed_tensor.json"))
        .output()
        .expect("run ptfile");
    assert_eq!(out.status.code(), Some(1), "inspect of a non-checkpoint");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr, got {stderr:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an invalid file"
    );
}

/// Every fixture loaded onto the wgpu device (lavapipe in CI) agrees with torch, with hashes and
/// values read back from the GPU buffers. Where no adapter exists it skips, or fails under CI
/// or `PTFILE_REQUIRE=wgpu` (where a wgpu regression must not pass as "no adapter").
#[cfg(feature = "wgpu")]
#[test]
fn load_onto_wgpu_matches_torch() {
    if available_or_skip("wgpu", ptfile_wgpu::backend().availability()).is_none() {
        return;
    }
    let mut extra = Vec::new();
    for m in ["cpu=wgpu:0", "cuda:0=wgpu:0", "cuda:1=wgpu:0", "ipu=wgpu:0"] {
        extra.push("--device-map");
        extra.push(m);
    }
    check(
        &["load", "--json", "--strict", "--map-location", "wgpu:0"],
        &extra,
        &[],
    );
}

/// `--device-map` arguments for check_fixtures.py: every saved location lands on `to`.
#[cfg(feature = "cuda")]
fn all_onto(to: &str) -> Vec<String> {
    ["cpu", "cuda:0", "cuda:1", "ipu"]
        .iter()
        .flat_map(|from| ["--device-map".to_string(), format!("{from}={to}")])
        .collect()
}

/// Every fixture loaded onto cuda:0 of the fake driver (tests/fake_cuda) agrees with torch, with
/// hashes and values read back from "device" memory. The fake runs queued copies only when they
/// are waited for, so a staging buffer reused too early, a missing synchronization or a copy
/// outside an allocation shows here as a wrong hash or an abort.
#[cfg(feature = "cuda")]
#[test]
fn load_onto_fake_cuda_matches_torch() {
    let Some(dir) = fake_cuda_or_skip() else {
        return;
    };
    let extra = all_onto("cuda:0");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let dir = dir.to_string_lossy().into_owned();
    let args = ["load", "--json", "--strict", "--map-location", "cuda:0"];
    check(&args, &extra, &[("LD_LIBRARY_PATH", &dir)]);
    // A tiny ring (3 slots of 4 KiB): every storage above 4 KiB is chunked and slots are
    // reused many times within one load.
    let tiny = [
        ("LD_LIBRARY_PATH", dir.as_str()),
        ("PTFILE_CUDA_RING_SLOTS", "3"),
        ("PTFILE_CUDA_RING_SLOT_KIB", "4"),
    ];
    check(&args, &extra, &tiny);
    // No pinned memory at all: the synchronous pageable path.
    let unpinned = [
        ("LD_LIBRARY_PATH", dir.as_str()),
        ("FAKE_CUDA_PINNED_BYTES", "1"),
    ];
    check(&args, &extra, &unpinned);
}

/// Every fixture loaded onto a real cuda:0 agrees with torch (hashes read back from the GPU).
/// Skips where no CUDA device is present (CI machines have none), unless `PTFILE_EXPECT_CUDA`
/// or `PTFILE_REQUIRE=cuda` says one must be there, as in tests/cuda.rs.
#[cfg(feature = "cuda")]
#[test]
fn load_onto_cuda_matches_torch() {
    if available_or_skip("cuda", ptfile_cuda::backend().availability()).is_none() {
        return;
    }
    let extra = all_onto("cuda:0");
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    check(
        &["load", "--json", "--strict", "--map-location", "cuda:0"],
        &extra,
        &[],
    );
}
