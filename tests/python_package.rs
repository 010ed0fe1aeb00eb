//! The Python package (`python/`, issue "A Python package"): builds the wheel with maturin,
//! installs it for the test Python (torch's venv), and runs its pytest suite (`python/tests`:
//! every fixture against torch.load, the serialization notes' examples, the hostile corpus,
//! map_location, mmap, DLPack ownership, save round trips).
//!
//! Needs the torch Python (`PTFILE_PYTHON`, else `.venv/bin/python`) with maturin and pytest
//! (scripts/setup-test-env.sh installs both). Without them the test prints "skipped: ..." and
//! passes, except under `CI=true`, `PTFILE_REQUIRE=torch` or an explicit `PTFILE_PYTHON`, where
//! that fails it (tests/common/mod.rs, `skip_or_fail`).
//!
//! The wheel is built as `pip install ./python` builds it (release) in its own target folder
//! (`target/tmp/python-package`: maturin's environment differs from cargo's, and sharing
//! `target/` would rebuild pyo3 on every switch) and installed with `pip install --target`
//! there, so the venv itself is not changed. Built with `--features cuda` when these tests are (`PTFILE_PY_FEATURES` overrides
//! the wheel's features; `PTFILE_PYTEST_ARGS` adds pytest arguments, e.g. `-k hostile`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Whether `python -m MODULE --version` works.
fn has_module(python: &Path, module: &str) -> Result<(), String> {
    let o = Command::new(python)
        .args(["-m", module, "--version"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} has no {module} ({}): pip install maturin pytest into it (scripts/setup-test-env.sh does)",
            python.display(),
            last_line(&o.stderr)
        ))
    }
}

#[test]
fn python_package() {
    let Some(python) = present_or_skip("torch", torch_python()) else {
        return;
    };
    for module in ["maturin", "pytest"] {
        if let Err(why) = has_module(&python, module) {
            // Part of the test environment, as torch is: a failure wherever torch is required.
            skip_or_fail("torch", &why);
            return;
        }
    }
    let root = repo_root();
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-package");
    let wheels = work.join("wheels");
    let site = work.join("site");
    let _ = std::fs::remove_dir_all(&wheels);
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(&wheels).expect("wheel folder");

    // 1. The wheel.
    let features = std::env::var("PTFILE_PY_FEATURES")
        .unwrap_or_else(|_| if cfg!(feature = "cuda") { "cuda" } else { "" }.into());
    let mut build = Command::new(&python);
    build
        .args(["-m", "maturin", "build", "--release", "--quiet", "-m"])
        .arg(root.join("python").join("Cargo.toml"))
        .arg("-i")
        .arg(&python)
        .arg("-o")
        .arg(&wheels)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env_remove("CARGO_INCREMENTAL");
    if !features.is_empty() {
        build.args(["--features", &features]);
    }
    let o = run(&mut build, "maturin build");
    assert!(
        o.status.success(),
        "maturin build failed:\n{}",
        tail(&text(&o), 60)
    );
    let wheel = std::fs::read_dir(&wheels)
        .expect("wheel folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .unwrap_or_else(|| panic!("maturin wrote no wheel into {}", wheels.display()));
    let name = wheel.file_name().unwrap_or_default().to_string_lossy();
    assert!(
        name.starts_with("ptfile-") && name.contains("-abi3-"),
        "not an abi3 ptfile wheel: {name}"
    );
    println!("built {name} (features: {features:?})");

    // 2. Installed where only this test looks.
    let o = run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-index",
                "--target",
            ])
            .arg(&site)
            .arg(&wheel),
        "pip install",
    );
    assert!(o.status.success(), "pip install failed:\n{}", text(&o));
    let o = run(
        Command::new(&python)
            .args(["-c", "import ptfile; print(ptfile.__file__)"])
            .env("PYTHONPATH", &site)
            .current_dir(&work),
        "import ptfile",
    );
    let where_ = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        o.status.success() && Path::new(&where_).starts_with(&site),
        "the installed ptfile does not import from {}: {where_}\n{}",
        site.display(),
        text(&o)
    );

    // 3. pytest, from a folder where the source tree cannot shadow the installed package.
    let cwd = TempDir::new("pytest");
    let mut pytest = Command::new(&python);
    pytest
        .args(["-B", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(root.join("python").join("tests"))
        .env("PYTHONPATH", &site)
        .env("PTFILE_REPO", &root)
        .env("PTFILE_BIN", ptfile_bin())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(cwd.path());
    if let Ok(extra) = std::env::var("PTFILE_PYTEST_ARGS") {
        pytest.args(extra.split_whitespace());
    }
    let o = run(&mut pytest, "pytest");
    let out = text(&o);
    println!("{out}");
    assert!(
        o.status.success(),
        "pytest failed ({}):\n{}",
        o.status,
        tail(&out, 80)
    );
}
