//! The legacy stream format (torch < 1.6, `_use_new_zipfile_serialization=False`) and the
//! tar format of torch 0.1.

use crate::checkpoint::{Checkpoint, OpenOptions};
use crate::error::{Error, Result};
use crate::source::Source;

/// Opens a non-zip checkpoint.
pub fn open(source: Source, opts: &OpenOptions) -> Result<Checkpoint> {
    let _ = (&source, opts);
    Err(Error::Unsupported {
        what: "legacy (non-zip) checkpoint".into(),
        location: "byte 0".into(),
        hint: "re-save it with torch.save in a current torch".into(),
    })
}
