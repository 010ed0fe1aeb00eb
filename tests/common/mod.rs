//! Helpers shared by the integration tests that drive the `ptfile` binary against descriptions
//! written by PyTorch (tests/fixtures) or by `tests/python/gen_random.py`.
//!
//! Each test crate includes this with `mod common;`; not every crate uses every helper.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

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
        panic!(
            "cannot run {} {}: {e} (the fixture checks need Python 3 on PATH; \
             PTFILE_SYSTEM_PYTHON overrides it)",
            python.display(),
            check_fixtures_py().display()
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
        let name = json_string_field(&text, "name").unwrap_or_else(|| stem.to_string());
        let file = json_string_field(&text, "file").unwrap_or_else(|| format!("{name}.pt"));
        if dir.join(&file).exists() {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// The value of a top-level `"key": "string"` in a description file, without a JSON parser
/// (the test crates have no dev-dependencies). Good enough for the info keys the fixtures'
/// writer emits first ("name", "file", "format"), which hold no escapes.
pub fn json_string_field(text: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let at = text.find(&pat)? + pat.len();
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// A directory under the system temp dir, removed on drop unless `keep()` was called or
/// `PTFILE_KEEP_TMP` is set.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("ptfile-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir {
            path,
            keep: std::env::var_os("PTFILE_KEEP_TMP").is_some(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leave the directory in place (for a failure to be looked at).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
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

/// [`fake_cuda_dir`], or `None` after printing why it is skipped; panics under CI (`CI` set),
/// where a C compiler is part of the set-up.
pub fn fake_cuda_or_skip() -> Option<PathBuf> {
    match fake_cuda_dir() {
        Ok(dir) => Some(dir),
        Err(why) if std::env::var_os("CI").is_some() => panic!("fake CUDA driver: {why}"),
        Err(why) => {
            println!("skipped: no fake CUDA driver: {why}");
            None
        }
    }
}
