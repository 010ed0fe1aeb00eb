//! One error type for the library: each variant says what failed, where, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong reading, loading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read (CLI exit code 2).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The container (zip, legacy stream, tar) is damaged or not a checkpoint.
    #[error("{what} (at {location}); {hint}")]
    Format {
        /// What is wrong.
        what: String,
        /// Where: a record name, byte offset, ...
        location: String,
        /// What the user can do.
        hint: &'static str,
    },
    /// The pickle is malformed or exceeds a limit.
    #[error("{record}: {source}; the file is damaged or not a PyTorch checkpoint")]
    Pickle {
        /// Which pickle (record name).
        record: String,
        /// The pickle error, with its byte offset.
        source: crate::format::pickle::PickleError,
    },
    /// The checkpoint names something only an attack would: refused, nothing was run.
    #[error("refusing {record}: it references {global} at pickle byte offset {offset}, which could execute code when loaded; nothing was run. Do not load this file with torch.load(weights_only=False)")]
    Unsafe {
        /// The global (`os.system`).
        global: String,
        /// Which pickle.
        record: String,
        /// Byte offset of the opcode.
        offset: u64,
    },
    /// The checkpoint is well-formed but its contents are inconsistent (a view past its
    /// storage, a missing record).
    #[error("{what} (at {location}); the file is damaged or was not written by torch.save")]
    Invalid {
        /// What is wrong.
        what: String,
        /// Where: tensor key path, storage key, ...
        location: String,
    },
    /// Valid but not supported by this version of ptfile.
    #[error("unsupported: {what} (at {location}); {hint}")]
    Unsupported {
        /// What.
        what: String,
        /// Where.
        location: String,
        /// What to do.
        hint: String,
    },
    /// A storage could not be put where it was asked to go, in strict mode or without a fallback.
    #[error("{0}")]
    Device(String),
    /// A storage could not be placed on the device map_location chose, and strict mode (or a
    /// failure of the CPU itself) forbids falling back. `source` is the backend's own error
    /// when a backend refused (out of memory differs from a missing driver); `None` when no
    /// backend serves the location at all.
    #[error("cannot deserialize storage {key:?} (saved on {saved_location}) on {location}: {reason}. Use map_location (e.g. --map-location cpu or --map-location {saved_location}=cpu) to map storages to an existing device, or drop strict mode to fall back to the CPU")]
    Placement {
        /// The storage's key.
        key: String,
        /// Its saved location tag.
        saved_location: String,
        /// Where map_location sent it.
        location: String,
        /// Why it could not go there.
        reason: String,
        /// The backend's error, when a backend refused.
        #[source]
        source: Option<Box<ptfile_backend::BackendError>>,
    },
    /// The file changed (was truncated, rewritten or grown) while it was being read: what was
    /// read may mix two versions, so nothing of it is used.
    #[error("{}: the file changed while being read: {what}; run again once the writer has finished (writers should save to a new file and rename it into place)", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
        /// What changed (`size 123 -> 0`).
        what: String,
    },
    /// No tensor has the name asked for; `close` lists a few names that do exist.
    #[error("no tensor named {name:?}{}", suggestions(close))]
    NoTensor {
        /// The name asked for.
        name: String,
        /// Close names, best first (at most 5).
        close: Vec<String>,
    },
    /// A tensor's elements were asked for as a Rust type other than its dtype (ptfile never
    /// casts silently).
    #[error("tensor {name:?} is {dtype}, not {requested}: ask for its own element type (to_vec::<{rust}>()) and convert explicitly")]
    DTypeMismatch {
        /// The tensor's name.
        name: String,
        /// Its dtype (`float32`).
        dtype: String,
        /// The dtype of the Rust type asked for.
        requested: String,
        /// The Rust type matching the tensor's dtype, or `?` when none does.
        rust: &'static str,
    },
    /// A tensor's data cannot be given in the form asked for (a borrowed slice of a view that
    /// is not contiguous, aligned and little-endian; a tensor without storage).
    #[error("tensor {name:?}: {what}")]
    View {
        /// The tensor's name.
        name: String,
        /// What is not possible, and what to use instead.
        what: String,
    },
    /// A usage error of the API or CLI (bad map_location, unknown device name) (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Writing a checkpoint failed.
    #[error("cannot write {path}: {what}")]
    Write {
        /// The output path.
        path: PathBuf,
        /// What failed.
        what: String,
        /// The OS error, when one caused it.
        #[source]
        source: Option<std::io::Error>,
    },
}

impl Error {
    /// The CLI exit code for this error: 2 for an unreadable path or a usage error, 1 for an
    /// invalid, unsafe or unsupported checkpoint.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. }
            | Error::Usage(_)
            | Error::NoTensor { .. }
            | Error::DTypeMismatch { .. }
            | Error::View { .. } => 2,
            _ => 1,
        }
    }

    /// The message as one bounded line, as the CLI prints it and the Python package raises it:
    /// control characters escaped, a message over 2000 characters cut in the middle (file
    /// names and keys can be anything).
    pub fn one_line(&self) -> String {
        one_line(&self.to_string())
    }

    pub(crate) fn invalid(what: impl Into<String>, location: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            location: location.into(),
        }
    }

    pub(crate) fn format(
        what: impl Into<String>,
        location: impl Into<String>,
        hint: &'static str,
    ) -> Error {
        Error::Format {
            what: what.into(),
            location: location.into(),
            hint,
        }
    }
}

/// `msg` as one bounded line (see [`Error::one_line`]).
pub fn one_line(msg: &str) -> String {
    let mut s = String::with_capacity(msg.len().min(4096));
    for c in msg.chars() {
        match c {
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push(' '),
            c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => s.push(c),
        }
    }
    const MAX: usize = 2000;
    let n = s.chars().count();
    if n > MAX {
        let head: String = s.chars().take(1200).collect();
        let tail: String = s.chars().skip(n - 600).collect();
        s = format!("{head} [... {} characters cut ...] {tail}", n - 1800);
    }
    s
}

fn suggestions(close: &[String]) -> String {
    if close.is_empty() {
        String::new()
    } else {
        format!("; close names: {}", close.join(", "))
    }
}

impl From<crate::format::FormatError> for Error {
    fn from(e: crate::format::FormatError) -> Error {
        use crate::format::FormatError as F;
        match e {
            F::Io { path, source } => Error::Io { path, source },
            F::Format {
                what,
                location,
                hint,
            } => Error::Format {
                what,
                location,
                hint,
            },
            F::Invalid { what, location } => Error::Invalid { what, location },
            F::Unsupported {
                what,
                location,
                hint,
            } => Error::Unsupported {
                what,
                location,
                hint,
            },
            // (FormatError is non_exhaustive for users; every variant is matched here)
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
