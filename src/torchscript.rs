//! TorchScript archives (`torch.jit.save`): the module tree of `data.pkl`, read as data.

use crate::archive::Archive;
use crate::checkpoint::{Checkpoint, OpenOptions};
use crate::error::{Error, Result};

/// Opens a TorchScript archive.
pub fn open(archive: Archive, opts: &OpenOptions) -> Result<Checkpoint> {
    let _ = opts;
    Err(Error::Unsupported {
        what: "TorchScript archive".into(),
        location: format!("{}/constants.pkl", archive.prefix()),
        hint: "read it with torch.jit.load".into(),
    })
}
