//! Helpers shared by the integration tests that drive the `ptfile` binary against descriptions
//! written by PyTorch (tests/fixtures) or by `tests/python/gen_random.py`.
//!
//! Each test crate includes this with `mod common;`; not every crate uses every helper.
//!
//! Skips follow one rule ([`skip_or_fail`]): a test that finds something missing (a torch venv,
//! a wgpu adapter, a C compiler for the fake CUDA driver, a GPU) prints `skipped: ...` and
//! passes on a developer's machine, but fails, saying what is missing and how to set it up,
//! when the run requires it: `CI=true` requires everything scripts/setup-test-env.sh provides
//! (`torch`, `wgpu`, `python3`, `cc`), `PTFILE_REQUIRE=torch,wgpu,...` (or `all`) names needs
//! one by one, and `PTFILE_EXPECT_CUDA` requires a CUDA device. A missing `python3` always
//! fails the fixture checks.
#![allow(dead_code)]

pub mod described;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where Cargo.toml, tests/ and .venv/ are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `ptfile` binary cargo built for this test run.
pub fn ptfile_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ptfile"))
}

/// tests/fixtures: checkpoints written by torch 2.15 with their descriptions.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("tests").join("fixtures")
}

/// tests/tools/check_fixtures.py (a copy of shared/tools, so a clone tests on its own).
pub fn check_fixtures_py() -> PathBuf {
    repo_root()
        .join("tests")
        .join("tools")
        .join("check_fixtures.py")
}

/// The Python that runs the comparison tools: they need only the standard library.
/// `PTFILE_SYSTEM_PYTHON` overrides `python3`.
pub fn system_python() -> PathBuf {
    std::env::var_os("PTFILE_SYSTEM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// What a test may find missing, each with how to provide it. `PTFILE_REQUIRE` names these.
pub const NEEDS: &[(&str, &str)] = &[
    (
        "torch",
        "run scripts/setup-test-env.sh (it makes .venv with torch, numpy and safetensors), or set \
         PTFILE_PYTHON to a Python that imports them",
    ),
    (
        "wgpu",
        "install a Vulkan driver: `apt-get install mesa-vulkan-drivers` (lavapipe, what \
         scripts/setup-test-env.sh installs as root)",
    ),
    (
        "python3",
        "install Python 3 (the fixture checks need only its standard library), or set \
         PTFILE_SYSTEM_PYTHON to one",
    ),
    (
        "cc",
        "install a C compiler (`cc`, or set CC): tests/fake_cuda/libcuda.c is built with it",
    ),
    (
        "cuda",
        "run on a machine with an NVIDIA GPU and its driver (libcuda.so on the loader path)",
    ),
];

/// Needs that `CI` alone requires: everything scripts/setup-test-env.sh provides. A GPU
/// (`cuda`) is required only when asked for: `PTFILE_EXPECT_CUDA` or `PTFILE_REQUIRE=cuda`.
const CI_NEEDS: &[&str] = &["torch", "wgpu", "python3", "cc"];

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false` (CI services set
/// `CI=true`).
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// Whether a missing `need` (a name in [`NEEDS`]) fails the test instead of skipping it: under
/// CI (see [`is_ci`]) for every need but `cuda`, when `PTFILE_REQUIRE` lists it
/// (comma-separated, `all` for every one), for `cuda` when `PTFILE_EXPECT_CUDA` is set, and for
/// `torch` when `PTFILE_PYTHON` is set (a Python named explicitly must work).
pub fn required(need: &str) -> bool {
    assert!(
        NEEDS.iter().any(|(n, _)| *n == need),
        "unknown need {need:?} (known: {})",
        need_names()
    );
    let listed = std::env::var("PTFILE_REQUIRE").unwrap_or_default();
    for item in listed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        assert!(
            item == "all" || NEEDS.iter().any(|(n, _)| *n == item),
            "PTFILE_REQUIRE={listed:?} names {item:?}; known: {}, all",
            need_names()
        );
        if item == need || item == "all" {
            return true;
        }
    }
    match need {
        "cuda" => std::env::var_os("PTFILE_EXPECT_CUDA").is_some(),
        "torch" if std::env::var_os("PTFILE_PYTHON").is_some_and(|p| !p.is_empty()) => true,
        _ => is_ci() && CI_NEEDS.contains(&need),
    }
}

fn need_names() -> String {
    NEEDS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// How to provide `need`.
pub fn setup_hint(need: &str) -> &'static str {
    NEEDS
        .iter()
        .find(|(n, _)| *n == need)
        .map(|(_, hint)| *hint)
        .unwrap_or("")
}

/// The one rule for a test that finds `need` missing (`why` says how): when [`required`] it
/// panics, naming what is missing, why it is required and how to set it up; otherwise it
/// prints `skipped: ...` and the caller returns. Use as `skip_or_fail("torch", &why); return;`.
pub fn skip_or_fail(need: &str, why: &str) {
    let hint = setup_hint(need);
    if required(need) {
        panic!(
            "{need} is required here but missing: {why}\n  required because: {}\n  to set it \
             up: {hint}",
            required_because(need)
        );
    }
    let strict = if CI_NEEDS.contains(&need) {
        format!("CI=true or PTFILE_REQUIRE={need}")
    } else {
        format!("PTFILE_EXPECT_CUDA or PTFILE_REQUIRE={need}")
    };
    println!("skipped: no {need}: {why} (to run this test: {hint}; {strict} makes this a failure)");
}

/// `Some(value)` when `found` is `Ok`; else [`skip_or_fail`] and `None`. For
/// `let Some(x) = present_or_skip("torch", torch_python()) else { return };`.
pub fn present_or_skip<T>(need: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            skip_or_fail(need, &why);
            None
        }
    }
}

/// [`present_or_skip`] for a backend's availability: `Some(device count)` when available.
pub fn available_or_skip(need: &str, availability: ptfile_backend::Availability) -> Option<usize> {
    let found = match availability {
        ptfile_backend::Availability::Unavailable(reason) => Err(reason),
        other if other.devices() == 0 => Err(format!("no devices ({other:?})")),
        other => Ok(other.devices()),
    };
    present_or_skip(need, found)
}

/// Everything that makes `need` [`required`], for the failure message.
fn required_because(need: &str) -> String {
    let mut why = Vec::new();
    let listed = std::env::var("PTFILE_REQUIRE").unwrap_or_default();
    if listed
        .split(',')
        .any(|s| s.trim() == need || s.trim() == "all")
    {
        why.push(format!("PTFILE_REQUIRE={listed}"));
    }
    if is_ci() && CI_NEEDS.contains(&need) {
        why.push(format!(
            "CI={} (under CI a skip would hide a failure)",
            std::env::var("CI").unwrap_or_default()
        ));
    }
    if need == "cuda" && std::env::var_os("PTFILE_EXPECT_CUDA").is_some() {
        why.push("PTFILE_EXPECT_CUDA is set".into());
    }
    if need == "torch" && std::env::var_os("PTFILE_PYTHON").is_some_and(|p| !p.is_empty()) {
        why.push("PTFILE_PYTHON names the Python to use".into());
    }
    why.join("; ")
}

/// A Python that imports torch: `PTFILE_PYTHON`, else `<repo>/.venv/bin/python`
/// (made by scripts/setup-test-env.sh). `Err` says why there is none.
pub fn torch_python() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("PTFILE_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join(".venv").join("bin").join("python"),
    };
    if !candidate.exists() {
        return Err(format!("{} does not exist", candidate.display()));
    }
    let out = Command::new(&candidate)
        .args(["-c", "import torch, numpy"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", candidate.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot import torch: {}",
            candidate.display(),
            last_line(&out.stderr)
        ));
    }
    Ok(candidate)
}

/// Quote one word for check_fixtures.py's `shlex.split` of `--cmd`.
pub fn shell_quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `ptfile ARGS PATH` and returns its output.
pub fn ptfile_on(args: &[&str], path: &Path) -> std::process::Output {
    Command::new(ptfile_bin())
        .args(args)
        .arg(path)
        .output()
        .expect("run ptfile")
}

/// The `--cmd` string for check_fixtures.py: the ptfile binary followed by `args`.
pub fn ptfile_cmd(args: &[&str]) -> String {
    let mut cmd = shell_quote(ptfile_bin().as_os_str());
    for a in args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(OsStr::new(a)));
    }
    cmd
}

/// What one run of check_fixtures.py said.
pub struct CheckRun {
    pub output: Output,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// The fixture lines that start with `FAIL`.
    pub fn failures(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect()
    }

    /// Names of the fixtures that passed (`ok   DIR/NAME`).
    pub fn passed_names(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("ok   "))
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
            .collect()
    }

    /// The closing `N passed, N failed` line.
    pub fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| l.contains(" passed, "))
            .unwrap_or("<no summary line>")
    }

    /// Everything it printed, for an assertion message.
    pub fn report(&self) -> String {
        format!(
            "check_fixtures.py {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.output.status, self.stdout, self.stderr
        )
    }
}

/// Run `python3 tests/tools/check_fixtures.py --cmd CMD [--only NAMES] [EXTRA...] DIRS...`.
/// `envs` are set for check_fixtures.py and so for the program it runs.
pub fn check_fixtures(
    python: &Path,
    cmd: &str,
    dirs: &[&Path],
    only: Option<&[String]>,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> CheckRun {
    let mut c = Command::new(python);
    c.arg(check_fixtures_py()).arg("--cmd").arg(cmd);
    if let Some(names) = only {
        c.arg("--only").arg(names.join(","));
    }
    c.args(extra);
    c.args(dirs);
    c.current_dir(repo_root());
    for (k, v) in envs {
        c.env(k, v);
    }
    let output = c.output().unwrap_or_else(|e| {
        // No skip: without python3 nothing checks the reader against torch's descriptions.
        let need = if python == system_python() {
            "python3"
        } else {
            "torch"
        };
        panic!(
            "cannot run {} {}: {e} ({need} is missing; to set it up: {})",
            python.display(),
            check_fixtures_py().display(),
            setup_hint(need)
        )
    });
    CheckRun {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        output,
    }
}

/// The names of the fixtures in `dir`: every NAME.json (but MANIFEST.json) whose checkpoint
/// (the "file" field, else NAME.pt) sits beside it, as check_fixtures.py selects them.
pub fn fixture_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read_dir entry").path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".json") else {
            continue;
        };
        if file_name == "MANIFEST.json" {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let desc: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let field = |key: &str| desc.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let name = field("name").unwrap_or_else(|| stem.to_string());
        let file = field("file").unwrap_or_else(|| format!("{name}.pt"));
        if dir.join(&file).exists() {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// The string value of a top-level `key` of a description file (a JSON object), if it has one.
pub fn json_string_field(text: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// A directory under the system temp dir (a [`tempfile::TempDir`] named `ptfile-TAG-...`),
/// removed on drop unless `keep()` was called or `PTFILE_KEEP_TMP` is set.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("ptfile-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        dir.disable_cleanup(std::env::var_os("PTFILE_KEEP_TMP").is_some());
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Leave the directory in place (for a failure to be looked at).
    pub fn keep(&mut self) {
        self.0.disable_cleanup(true);
    }
}

/// The last non-empty line of some output.
pub fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// A directory holding `libcuda.so` built from tests/fake_cuda/libcuda.c: a CUDA driver in host
/// memory that runs asynchronous copies only when they are waited for (see the file). Put it on
/// `LD_LIBRARY_PATH` of a child process to run the cuda backend without a GPU. `Err` says why
/// it could not be built (no C compiler); under CI that is a failure, not a skip.
pub fn fake_cuda_dir() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_fake_cuda).clone()
}

fn build_fake_cuda() -> Result<PathBuf, String> {
    let source = repo_root()
        .join("tests")
        .join("fake_cuda")
        .join("libcuda.c");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake_cuda");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Each test process builds its copy once and renames it into place, so tests running at
    // the same time in other processes never load a half-written library.
    let tmp = dir.join(format!("libcuda.so.{}", std::process::id()));
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&tmp)
        .arg(&source)
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cc.to_string_lossy()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed on {}: {}",
            cc.to_string_lossy(),
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, dir.join("libcuda.so")).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// [`fake_cuda_dir`], or `None` after [`skip_or_fail`] (need `cc`: a failure under CI, where a C
/// compiler is part of the set-up).
pub fn fake_cuda_or_skip() -> Option<PathBuf> {
    present_or_skip(
        "cc",
        fake_cuda_dir().map_err(|why| format!("no fake CUDA driver: {why}")),
    )
}
