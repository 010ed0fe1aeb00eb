//! Opening a checkpoint: the format sniffed and dispatched as `torch.load` does (zip,
//! TorchScript, legacy stream, tar), metadata parsed; storage bytes stay in the map.

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::source::Source;
use crate::format::zip::{is_zip, Archive};
use crate::torch::checkpoint::{Checkpoint, OpenOptions};

impl Checkpoint {
    /// Opens a checkpoint file with default options: the file is mapped read-only and only
    /// its metadata is parsed. The file must not be truncated or rewritten in place while the
    /// checkpoint (or a view of it) is alive: see the crate page, "Files that change while
    /// open".
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Checkpoint::open_with(path, &OpenOptions::default())
    }

    /// Opens a checkpoint file, a model directory (`model.safetensors`, `pytorch_model.bin`,
    /// or the shards an `*.index.json` names, as transformers finds them), or an index file.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Checkpoint> {
        let path = path.as_ref();
        if path.is_dir() {
            if crate::torch::dcp::is_dcp_dir(path) {
                return crate::torch::dcp::open_dir(path, opts);
            }
            return crate::torch::shards::open_dir(path, opts);
        }
        if crate::torch::shards::is_index(path) {
            return crate::torch::shards::open_index(path, opts);
        }
        let source = Source::open(path)?;
        Checkpoint::from_source(source, opts)
    }

    /// Opens a checkpoint held in memory.
    pub fn from_bytes(data: Vec<u8>) -> Result<Checkpoint> {
        Checkpoint::from_source(Source::from_vec(data), &OpenOptions::default())
    }

    /// Opens a checkpoint from a [`Source`].
    pub fn from_source(source: Source, opts: &OpenOptions) -> Result<Checkpoint> {
        let bytes = source.bytes();
        if bytes.is_empty() {
            return Err(Error::format(
                "empty file",
                "byte 0",
                "the file is not a PyTorch checkpoint (it has no bytes)",
            ));
        }
        if is_zip(bytes) {
            let archive = Archive::open(source.clone())?;
            if archive.record("constants.pkl").is_some() {
                return crate::torch::torchscript::open(archive, opts);
            }
            return crate::torch::zip::open(archive, opts);
        }
        if bytes.starts_with(b"PYTORCH1") {
            return Err(Error::Unsupported {
                what: "a PyTorch preview-release archive (PYTORCH1)".into(),
                location: "byte 0".into(),
                hint: "re-save it with a current torch".into(),
            });
        }
        if crate::torch::safetensors::looks_like_safetensors(bytes) {
            return crate::torch::safetensors::open(source);
        }
        crate::torch::legacy::open(source, opts)
    }
}
