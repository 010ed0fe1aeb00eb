//! The container and encoding layer: the byte source (one file map), the pickle machine and
//! the zip reader. Nothing here knows torch: it yields records and values, and imports
//! nothing else of the crate (its errors are its own; [`crate::Error`] wraps them).

use std::path::PathBuf;

pub mod pickle;
pub mod source;
pub(crate) mod tar;
pub mod zip;

/// What the container layer reports: the same kinds, fields and messages as the matching
/// variants of [`crate::Error`], which every one converts into.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The container is damaged or not what it claims to be.
    #[error("{what} (at {location}); {hint}")]
    Format {
        /// What is wrong.
        what: String,
        /// Where: a record name, byte offset, ...
        location: String,
        /// What the user can do.
        hint: &'static str,
    },
    /// A well-formed record the container layer declines (too large to hold).
    #[error("{what} (at {location}); the file is damaged or was not written by torch.save")]
    Invalid {
        /// What is wrong.
        what: String,
        /// Where.
        location: String,
    },
    /// Valid but not supported (a compression method torch never writes, ...).
    #[error("unsupported: {what} (at {location}); {hint}")]
    Unsupported {
        /// What.
        what: String,
        /// Where.
        location: String,
        /// What to do.
        hint: String,
    },
}

impl FormatError {
    pub(crate) fn format(
        what: impl Into<String>,
        location: impl Into<String>,
        hint: &'static str,
    ) -> FormatError {
        FormatError::Format {
            what: what.into(),
            location: location.into(),
            hint,
        }
    }
}

/// Result of the container layer.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
