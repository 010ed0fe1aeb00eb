//! Random checkpoints written by torch itself (tests/python/gen_random.py) must read back in
//! `ptfile` exactly as `torch.load` sees them (tests/python/describe.py), compared by
//! tests/tools/check_fixtures.py.
//!
//! Needs a Python with torch: `PTFILE_PYTHON`, else `.venv/bin/python` (scripts/setup-test-env.sh
//! makes it). Without one the tests print "skipped: no torch" and pass, except under `CI=true`,
//! `PTFILE_REQUIRE=torch` or an explicit `PTFILE_PYTHON`, where that fails them
//! (tests/common/mod.rs, `skip_or_fail`).
//!
//! Each run uses a fixed seed and one varying seed, printed for reproduction:
//! `PTFILE_INTEROP_SEED=N cargo test --test interop_read` reruns seed N (and the fixed one).
//! `PTFILE_INTEROP_COUNT` sets the files per seed (default 20). `PTFILE_KEEP_TMP=1` keeps the
//! files; on a failure they are kept anyway and their folder is printed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

/// Always generated: a failure here reproduces on every run.
const FIXED_SEED: u64 = 20_240_601;
const DEFAULT_COUNT: u32 = 20;

/// dtypes gen_random.py must not use (passed as --exclude-dtypes). Empty: ptfile reads every
/// storage dtype torch 2.15 has. Add a name here only with an issue that tracks it.
const EXCLUDED_DTYPES: &[&str] = &[];

/// File variants of gen_random.py ("zip", "legacy", "big") that ptfile does not read yet, as
/// NOT_YET_SUPPORTED in tests/fixtures_check.rs. Empty this when the legacy format lands.
const NOT_YET_SUPPORTED_FORMATS: &[&str] = &[];
const ALL_FORMATS: &[&str] = &["zip", "legacy", "big"];

fn varying_seed() -> u64 {
    if let Some(s) = std::env::var_os("PTFILE_INTEROP_SEED") {
        let s = s.to_string_lossy();
        return s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PTFILE_INTEROP_SEED={s:?} is not a number"));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    ((nanos as u64) ^ (u64::from(std::process::id()) << 20)) % 1_000_000_000
}

fn count() -> u32 {
    std::env::var("PTFILE_INTEROP_COUNT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_COUNT)
}

fn gen_random(python: &Path, dir: &Path, seed: u64, count: u32, exotic: bool) {
    let script = repo_root()
        .join("tests")
        .join("python")
        .join("gen_random.py");
    let mut c = Command::new(python);
    c.arg(&script)
        .arg(dir)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--count")
        .arg(count.to_string());
    if exotic {
        c.arg("--exotic");
    }
    if !EXCLUDED_DTYPES.is_empty() {
        c.arg("--exclude-dtypes").arg(EXCLUDED_DTYPES.join(","));
    }
    let formats: Vec<&str> = ALL_FORMATS
        .iter()
        .copied()
        .filter(|f| !NOT_YET_SUPPORTED_FORMATS.contains(f))
        .collect();
    c.arg("--formats").arg(formats.join(","));
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "gen_random.py --seed {seed} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// One test: the files are generated once (a few seconds of torch), then read by
/// `ptfile inspect --json` and by `ptfile load --json`.
#[test]
fn random_torch_checkpoints_read_back() {
    let Some(python) = present_or_skip("torch", torch_python()) else {
        return;
    };
    let mut tmp = TempDir::new("interop");
    let seeds = [FIXED_SEED, varying_seed()];
    let n = count();
    println!(
        "interop: {n} files per seed, seeds {} (fixed) and {} (varying; reproduce with \
         PTFILE_INTEROP_SEED={} cargo test --test interop_read)",
        seeds[0], seeds[1], seeds[1]
    );
    let mut dirs = Vec::new();
    for seed in seeds {
        let dir = tmp.path().join(format!("seed-{seed}"));
        gen_random(&python, &dir, seed, n, false);
        dirs.push(dir);
    }
    // Half as many again with --exotic: conjugate and negative views (whose resolved bits
    // follow torch's kernels, NaN payloads and signed zeros included), bits*, float4.
    let exotic = (n / 2).max(1);
    let dir = tmp.path().join(format!("exotic-{}", seeds[1]));
    gen_random(&python, &dir, seeds[1], exotic, true);
    dirs.push(dir);
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let expected = n as usize * seeds.len() + exotic as usize;

    // `load`: gen_random.py writes only CPU storages, so nothing falls back; any GPU is hidden
    // all the same so that every storage lands on the CPU.
    let hide_gpus = [("CUDA_VISIBLE_DEVICES", ""), ("HIP_VISIBLE_DEVICES", "")];
    let mut problems = Vec::new();
    for (args, envs) in [
        (&["inspect", "--json"][..], &[][..]),
        (&["load", "--json"][..], &hide_gpus[..]),
    ] {
        let cmd = ptfile_cmd(args);
        let run = check_fixtures(&python, &cmd, &dirs, None, &[], envs);
        println!("{cmd}: {}", run.summary());
        if !(run.ok() && run.passed_names().len() == expected) {
            problems.push(format!(
                "`{cmd}` disagrees with torch on {} of {expected} random checkpoints ({}):\n{}",
                run.failures().len(),
                run.summary(),
                run.report()
            ));
        }
    }
    if !problems.is_empty() {
        tmp.keep();
        panic!(
            "seeds {seeds:?}; files kept in {} (regenerate one with: python \
             tests/python/gen_random.py OUT --seed SEED --count {n} --only INDEX)\n{}",
            tmp.path().display(),
            problems.join("\n")
        );
    }
}
