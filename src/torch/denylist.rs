//! Which globals a checkpoint may name. Nothing is ever called, but a file that names
//! something only an attack would (a shell, an interpreter, a file or network API, another
//! unpickler) is refused as a whole, with the global named in the error.

/// Modules whose every member is refused (and their submodules).
const DENY_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "posixpath",
    "ntpath",
    "subprocess",
    "sys",
    "runpy",
    "importlib",
    "imp",
    "pickle",
    "_pickle",
    "cPickle",
    "pickletools",
    "copyreg_unsafe",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shutil",
    "socket",
    "_socket",
    "ssl",
    "http",
    "urllib",
    "urllib2",
    "requests",
    "ftplib",
    "smtplib",
    "telnetlib",
    "webbrowser",
    "ctypes",
    "_ctypes",
    "cffi",
    "pty",
    "code",
    "codeop",
    "commands",
    "popen2",
    "platform",
    "multiprocessing",
    "threading",
    "_thread",
    "thread",
    "asyncio",
    "signal",
    "types",
    "inspect",
    "gc",
    "tempfile",
    "pathlib",
    "io",
    "_io",
    "fileinput",
    "glob",
    "zipimport",
    "pkgutil",
    "bdb",
    "pdb",
    "timeit",
    "trace",
    "cProfile",
    "profile",
    "site",
    "sysconfig",
    "distutils",
    "setuptools",
    "pip",
    "builtins_unsafe",
    "operator",
    "functools",
    "numpy.testing",
    "torch._dynamo",
    "torch._inductor",
    "torch.hub",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch._C",
    "torch.ops",
    "torch.classes",
    "torch._ops",
    "torch.fx",
    "torch.distributed",
    "torch.multiprocessing",
    "torch.utils.collect_env",
    "torch.utils.bottleneck",
    "pydoc",
    "antigravity",
    "idlelib",
    "ensurepip",
    "venv",
    "zipapp",
    "compileall",
    "py_compile",
    "imaplib",
    "poplib",
    "nntplib",
    "xmlrpc",
    "smtpd",
    "cgi",
    "cgitb",
    "wsgiref",
    "mailcap",
    "doctest",
    "unittest",
    "tkinter",
    "turtle",
    "uuid",
    "sqlite3",
    "dbm",
    "shelve",
    "logging",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.ctypeslib",
];

/// Attribute names that only serve code execution, wherever they are reached from.
const DENY_ATTRS: &[&str] = &[
    "system",
    "popen",
    "Popen",
    "exec",
    "eval",
    "execv",
    "execve",
    "execl",
    "spawn",
    "spawnv",
    "call",
    "check_call",
    "check_output",
    "run",
    "getstatusoutput",
    "getoutput",
    "load",
    "loads",
    "__import__",
    "import_module",
    "compile",
    "open",
    "fork",
    "kill",
    "remove",
    "unlink",
    "rmtree",
    "_run_code",
    "_run_module_code",
    "run_path",
    "run_module",
    "pipepager",
    "tempfilepager",
];

/// Single globals that are refused.
const DENY_NAMES: &[(&str, &str)] = &[
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "compile"),
    ("builtins", "execfile"),
    ("builtins", "getattr"),
    ("builtins", "setattr"),
    ("builtins", "delattr"),
    ("builtins", "__import__"),
    ("builtins", "open"),
    ("builtins", "file"),
    ("builtins", "input"),
    ("builtins", "raw_input"),
    ("builtins", "breakpoint"),
    ("builtins", "globals"),
    ("builtins", "locals"),
    ("builtins", "vars"),
    ("builtins", "exit"),
    ("builtins", "quit"),
    ("builtins", "help"),
    ("builtins", "reload"),
    ("builtins", "apply"),
    ("builtins", "memoryview"),
    ("builtins", "type"),
    ("builtins", "object.__reduce_ex__"),
    ("builtins", "classmethod"),
    ("builtins", "staticmethod"),
    ("builtins", "property"),
    ("builtins", "super"),
    ("builtins", "map"),
    ("builtins", "filter"),
    ("builtins", "iter"),
    ("builtins", "next"),
    ("copyreg", "_reconstructor_unsafe"),
    ("torch", "load"),
    ("torch", "save"),
    ("torch", "from_file"),
    ("torch.serialization", "load"),
    ("torch.serialization", "_load"),
    ("torch.serialization", "_legacy_load"),
    ("torch.storage", "_load_from_bytes"),
    ("torch.jit", "load"),
    ("torch.jit", "_load_for_lite_interpreter"),
    ("torch.jit._serialization", "load"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("numpy", "load"),
    ("numpy", "loads"),
    ("numpy", "fromfile"),
    ("numpy.lib.npyio", "load"),
    ("numpy.core.multiarray", "_reconstruct_unsafe"),
    ("pandas", "read_pickle"),
];

/// Python 2 module names that unpickling renames (`fix_imports`).
pub fn canonical_module(module: &str) -> &str {
    match module {
        "__builtin__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "cPickle" => "pickle",
        "__main__" => "__main__",
        m => m,
    }
}

/// Returns Some(reason) when `module.name` may only serve an attack.
pub fn denied(module: &str, name: &str) -> bool {
    let m = canonical_module(module);
    let top = m.split('.').next().unwrap_or(m);
    for d in DENY_MODULES {
        if m == *d || top == *d || m.starts_with(&format!("{d}.")) {
            return true;
        }
    }
    // A dotted name reaches through attributes (`torch.serialization` + `os.system` is
    // `os.system`): every component is checked as a module, the last as an attribute.
    if name.contains('.') {
        let parts: Vec<&str> = name.split('.').collect();
        for (k, part) in parts.iter().enumerate() {
            let as_module = parts[..=k].join(".");
            if DENY_MODULES.iter().any(|d| *d == *part || *d == as_module) {
                return true;
            }
        }
        if let Some(last) = parts.last() {
            if DENY_ATTRS.contains(last) {
                return true;
            }
        }
    }
    let first = name.split('.').next().unwrap_or(name);
    for (dm, dn) in DENY_NAMES {
        if m == *dm && (name == *dn || first == *dn) {
            return true;
        }
    }
    // Dunder attributes are how sandbox escapes reach `__globals__`, `__subclasses__`, ...
    if name
        .split('.')
        .any(|part| part.starts_with("__") && part.ends_with("__") && part.len() > 4)
        && !(m == "torch" || m.starts_with("torch."))
    {
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_attack_globals() {
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("nt", "system"),
            ("subprocess", "Popen"),
            ("builtins", "eval"),
            ("__builtin__", "eval"),
            ("builtins", "getattr"),
            ("builtins", "__import__"),
            ("sys", "modules"),
            ("runpy", "_run_code"),
            ("importlib", "import_module"),
            ("pickle", "loads"),
            ("_pickle", "loads"),
            ("shutil", "rmtree"),
            ("socket", "socket"),
            ("ctypes", "CDLL"),
            ("torch", "load"),
            ("torch.jit", "load"),
            ("torch.serialization", "load"),
            ("os.path", "join"),
            ("builtins", "object.__subclasses__"),
            ("torch.serialization", "os.system"),
            ("torch", "serialization.os.system"),
            ("pydoc", "pipepager"),
            ("collections", "os.system"),
        ] {
            assert!(denied(m, n), "{m}.{n} must be denied");
        }
        for (m, n) in [
            ("torch._utils", "_rebuild_tensor_v2"),
            ("collections", "OrderedDict"),
            ("torch", "FloatStorage"),
            ("__main__", "MyModule"),
            ("torch.nn.modules.linear", "Linear"),
            ("builtins", "set"),
            ("__builtin__", "complex"),
            ("_codecs", "encode"),
            ("numpy.core.multiarray", "_reconstruct"),
        ] {
            assert!(!denied(m, n), "{m}.{n} must be allowed as data");
        }
    }
}
