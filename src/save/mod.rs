//! Writing checkpoints that `torch.load` reads back identically.
//!
//! - [`SaveFormat::Zip`]: the `torch.save` zip format of torch 2.x, byte layout included
//!   (PYTORCH_FORMAT.md §1.2, §2): `data.pkl` at pickle protocol 2 with torch's opcodes and
//!   globals, `.format_version`, `.storage_alignment`, `byteorder`, one `data/<key>` record per
//!   storage (keys in first-encounter order, every record's data 64-byte aligned), `version`
//!   and `.data/serialization_id`. Loads with `weights_only=True` and with `mmap=True`.
//! - [`SaveFormat::Legacy`]: the stream format of `_use_new_zipfile_serialization=False`.
//! - [`SaveFormat::Safetensors`]: a flat tensor dict for `safetensors` (see
//!   [`NonTensors`] for what happens to other values).
//!
//! What is saved is an object tree ([`Object`]) whose tensors view storages given by a
//! [`StorageSource`]: an open [`Checkpoint`] (convert, edit and re-save), or a [`StateDict`]
//! built from your own buffers:
//!
//! ```no_run
//! use ptfile::save::{StateDict, TensorData};
//!
//! let weight = vec![0.5f32; 6];
//! let bias = [half::bf16::from_f32(1.0); 3];
//! let mut sd = StateDict::new();
//! sd.insert("fc.weight", TensorData::from_slice(&weight, &[3, 2])?.parameter(true))?;
//! sd.insert("fc.bias", TensorData::from_slice(&bias, &[3])?)?;
//! sd.save("model.pt")?; // torch.load("model.pt") gives the same OrderedDict
//! # Ok::<(), ptfile::Error>(())
//! ```
//!
//! Every write is atomic: the file is written under a temporary name in the destination's
//! folder, flushed to disk ([`SaveOptions::sync`]) and renamed over the destination; on any
//! error the temporary file is removed and an existing destination is left untouched.
//!
//! Objects that are not data (a pickled `nn.Module`, a user's class) cannot be saved: the
//! error names the class and the key path, and says to save a state dict instead.

mod atomic;
mod compact;
mod dcp;
mod legacy;
mod pickler;
mod safetensors;
mod state_dict;
mod zip;

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::device::map_location::MapLocation;
use crate::error::{Error, Result};
use crate::torch::checkpoint::Checkpoint;
use crate::torch::model::{Object, Storage};

pub use state_dict::{Element, StateDict, TensorData};

/// A location tagger: the location to save `storage` under, or None for no opinion (then the
/// storage's own location is used). Consulted before [`SaveOptions::map_location`], like a
/// tagger of torch's `register_package`.
pub type Tagger = dyn Fn(&Storage) -> Option<String> + Send + Sync;

/// The file format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// `torch.save` zip format (torch >= 1.6; what torch 2.x writes).
    Zip,
    /// The legacy stream format (`_use_new_zipfile_serialization=False`).
    Legacy,
    /// A safetensors file (flat tensor dict).
    Safetensors,
    /// A `torch.distributed.checkpoint` directory (FileSystemWriter's layout, one rank).
    Dcp,
}

impl SaveFormat {
    /// The format a path asks for: safetensors for `*.safetensors`, else zip.
    pub fn for_path(path: &Path) -> SaveFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("safetensors") => SaveFormat::Safetensors,
            _ => SaveFormat::Zip,
        }
    }

    /// Parses `zip`, `legacy` or `safetensors`.
    pub fn parse(name: &str) -> Result<SaveFormat> {
        match name.to_ascii_lowercase().as_str() {
            "zip" => Ok(SaveFormat::Zip),
            "legacy" => Ok(SaveFormat::Legacy),
            "safetensors" => Ok(SaveFormat::Safetensors),
            "dcp" => Ok(SaveFormat::Dcp),
            other => Err(Error::Usage(format!(
                "unknown output format {other:?}: expected zip, legacy, safetensors or dcp"
            ))),
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SaveFormat::Zip => "zip",
            SaveFormat::Legacy => "legacy",
            SaveFormat::Safetensors => "safetensors",
            SaveFormat::Dcp => "dcp",
        }
    }
}

/// What a safetensors export does with values that are not tensors (ints, strings, lists of
/// numbers in a training checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonTensors {
    /// Refuse the export, naming the key paths of the values (the default: a safetensors
    /// file holds only tensors, and silently dropping data would lose it).
    #[default]
    Error,
    /// Keep each as a string in `__metadata__` under its key path (its Python `repr`, a
    /// str as is).
    Metadata,
    /// Leave them out.
    Skip,
}

/// Options of [`save`].
#[derive(Clone)]
pub struct SaveOptions {
    /// The format; None picks it from the path ([`SaveFormat::for_path`]).
    pub format: Option<SaveFormat>,
    /// Location tags to write: each storage's tag (from [`Self::tagger`], else the storage's
    /// own location) goes through this map. `AsSaved` keeps them.
    pub map_location: MapLocation,
    /// A tagger consulted before `map_location`.
    pub tagger: Option<Arc<Tagger>>,
    /// Write each storage only over the byte range its views use, adjusting their offsets
    /// (views that shared a storage still share the compacted one).
    pub compact: bool,
    /// The zip folder records live in; None: the file name without its extension, as torch
    /// does for a path (`archive` when that is empty or not ASCII).
    pub archive_name: Option<String>,
    /// Flush the file (and its folder) to disk before the rename (default true).
    pub sync: bool,
    /// safetensors export: what to do with non-tensor values.
    pub non_tensors: NonTensors,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            format: None,
            map_location: MapLocation::AsSaved,
            tagger: None,
            compact: false,
            archive_name: None,
            sync: true,
            non_tensors: NonTensors::Error,
        }
    }
}

impl std::fmt::Debug for SaveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveOptions")
            .field("format", &self.format)
            .field("map_location", &self.map_location)
            .field("tagger", &self.tagger.as_ref().map(|_| ".."))
            .field("compact", &self.compact)
            .field("archive_name", &self.archive_name)
            .field("sync", &self.sync)
            .field("non_tensors", &self.non_tensors)
            .finish()
    }
}

/// The storages an object tree's tensors view, with their bytes.
pub trait StorageSource {
    /// The storages ([`crate::torch::model::Tensor::storage`] indexes this list).
    fn storages(&self) -> &[Storage];
    /// The bytes of storage `i`, little-endian, `storages()[i].nbytes` long.
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>>;
}

impl StorageSource for Checkpoint {
    fn storages(&self) -> &[Storage] {
        &self.storages
    }
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        Checkpoint::storage_bytes(self, i)
    }
}

/// What a save wrote.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: SaveFormat,
    /// Storages (zip, legacy) or tensors (safetensors) written.
    pub storages: usize,
    /// Size of the file in bytes.
    pub bytes: u64,
}

pub(crate) struct Written {
    pub storages: usize,
    pub bytes: u64,
}

pub(crate) fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::Write {
        path: PathBuf::from(what),
        what: e.to_string(),
        source: Some(e),
    }
}

/// The bytes of an output storage within its input storage's bytes.
pub(crate) fn window_slice<'b>(
    data: &'b [u8],
    s: &pickler::OutStorage,
    what: &str,
) -> Result<&'b [u8]> {
    let end = s.start.checked_add(s.len);
    end.and_then(|e| data.get(s.start as usize..e as usize))
        .ok_or_else(|| Error::Write {
            path: PathBuf::from(what),
            source: None,
            what: format!(
                "storage {} has {} bytes, fewer than the {} its tensors need from byte {}",
                s.input,
                data.len(),
                s.len,
                s.start
            ),
        })
}

/// The zip folder torch would use for `path`: the file name without its last extension
/// (`ckpt/model.pt` -> `model`), or `archive` when that is empty or not ASCII.
pub fn archive_name_for(path: &Path) -> String {
    let s = path.to_string_lossy();
    let base = s.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = match base.rfind('.') {
        Some(i) => &base[..i],
        None => base,
    };
    if stem.is_empty() || !stem.is_ascii() || !path.to_str().is_some_and(|p| p.is_ascii()) {
        "archive".into()
    } else {
        stem.to_string()
    }
}

/// Refuses a tree that shares structure so much that writing it out would multiply it
/// ([`crate::torch::model::is_amplified`]: a pickle memo bomb). torch's pickler memoizes containers
/// by identity and would write such a tree once; this writer writes containers out in full
/// (strings and globals alone are memoized), so it stops before doing any work.
fn refuse_amplified(root: &Object, what: &str) -> Result<()> {
    match crate::torch::model::is_amplified(root) {
        Some((u, e)) => Err(Error::Unsupported {
            what: format!(
                "the object tree shares structure: its {u} objects expand to {} nodes when written out (a memo bomb)",
                if e == u64::MAX { "more than 10^19".to_string() } else { e.to_string() }
            ),
            location: what.into(),
            hint: "save the tensors (a state dict) instead of the shared structure".into(),
        }),
        None => Ok(()),
    }
}

/// Saves `root`, whose tensors view the storages of `src`, to `path` (atomically).
///
/// The object pickle is built in memory before the temporary file is created, so the
/// expensive part of a save that fails leaves no file behind at all.
pub fn save(
    root: &Object,
    src: &dyn StorageSource,
    path: impl AsRef<Path>,
    opts: &SaveOptions,
) -> Result<SaveReport> {
    let path = path.as_ref();
    let format = opts.format.unwrap_or_else(|| SaveFormat::for_path(path));
    let what = path.display().to_string();
    refuse_amplified(root, &what)?;
    let written = match format {
        SaveFormat::Safetensors => safetensors::save(root, src, path, opts)?,
        SaveFormat::Dcp => dcp::save(root, src, path, opts)?,
        SaveFormat::Zip | SaveFormat::Legacy => {
            let prefix = opts
                .archive_name
                .clone()
                .unwrap_or_else(|| archive_name_for(path));
            check_prefix(format, &prefix)?;
            let style = match format {
                SaveFormat::Zip => pickler::PidStyle::Zip,
                _ => pickler::PidStyle::Legacy,
            };
            let windows = compact::windows(root, src.storages(), opts.compact)?;
            let p = pickler::pickle(root, src, opts, style, &windows)?;
            atomic::write(path, opts.sync, |w| match format {
                SaveFormat::Zip => write_zip(&p, src, &prefix, w, &what),
                _ => legacy::write(&p, src, w, &what),
            })?
        }
    };
    Ok(SaveReport {
        path: path.to_path_buf(),
        format,
        storages: written.storages,
        bytes: written.bytes,
    })
}

/// Saves an open checkpoint (its root object and storages) to `path`: a conversion.
pub fn save_checkpoint(
    ckpt: &Checkpoint,
    path: impl AsRef<Path>,
    opts: &SaveOptions,
) -> Result<SaveReport> {
    save(&ckpt.root, ckpt, path, opts)
}

/// Writes `root` to a stream in the zip or legacy format (as `torch.save` to a file
/// object: the zip folder is `archive` unless [`SaveOptions::archive_name`] says otherwise).
/// Returns the number of bytes written.
pub fn write_to(
    root: &Object,
    src: &dyn StorageSource,
    out: &mut dyn Write,
    opts: &SaveOptions,
) -> Result<u64> {
    let what = "<stream>";
    let format = opts.format.unwrap_or(SaveFormat::Zip);
    let (style, prefix) = match format {
        SaveFormat::Zip => (
            pickler::PidStyle::Zip,
            opts.archive_name
                .clone()
                .unwrap_or_else(|| "archive".into()),
        ),
        SaveFormat::Legacy => (pickler::PidStyle::Legacy, String::new()),
        SaveFormat::Safetensors | SaveFormat::Dcp => {
            return Err(Error::Usage(format!(
                "{} export needs a path, not a stream",
                format.name()
            )))
        }
    };
    check_prefix(format, &prefix)?;
    refuse_amplified(root, what)?;
    let windows = compact::windows(root, src.storages(), opts.compact)?;
    let p = pickler::pickle(root, src, opts, style, &windows)?;
    let w = match format {
        SaveFormat::Zip => write_zip(&p, src, &prefix, out, what)?,
        _ => legacy::write(&p, src, out, what)?,
    };
    Ok(w.bytes)
}

/// Counts what goes through a writer.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)?;
        self.n += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Refuses a zip folder name torch could not use (the legacy format has none).
fn check_prefix(format: SaveFormat, prefix: &str) -> Result<()> {
    if format == SaveFormat::Zip
        && (prefix.is_empty() || prefix.contains('/') || prefix.contains('\\'))
    {
        return Err(Error::Usage(format!(
            "archive name {prefix:?} must be a non-empty name without slashes"
        )));
    }
    Ok(())
}

/// Writes the zip format around the pickled object `p`.
fn write_zip(
    p: &pickler::Pickled,
    src: &dyn StorageSource,
    prefix: &str,
    out: &mut dyn Write,
    what: &str,
) -> Result<Written> {
    let mut counting = Counting { inner: out, n: 0 };
    let mut z = zip::ZipWriter::new(&mut counting, prefix, 64);
    let e = |e| io_err(what, e);
    z.add("data.pkl", &[&p.bytes]).map_err(e)?;
    z.add(".format_version", &[b"1"]).map_err(e)?;
    z.add(".storage_alignment", &[b"64"]).map_err(e)?;
    z.add("byteorder", &[b"little"]).map_err(e)?;
    for s in &p.storages {
        let data = src.storage_bytes(s.input)?;
        let slice = window_slice(&data, s, what)?;
        z.add(&format!("data/{}", s.key), &[slice]).map_err(e)?;
    }
    z.add("version", &[b"3\n"]).map_err(e)?;
    let id = z.serialization_id();
    z.add(".data/serialization_id", &[id.as_bytes()])
        .map_err(e)?;
    z.finish().map_err(e)?;
    Ok(Written {
        storages: p.storages.len(),
        bytes: counting.n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert_eq!(archive_name_for(Path::new("ckpt/model.pt")), "model");
        assert_eq!(archive_name_for(Path::new("a.b.pt")), "a.b");
        assert_eq!(archive_name_for(Path::new("noext")), "noext");
        assert_eq!(archive_name_for(Path::new(".pt")), "archive");
        assert_eq!(archive_name_for(Path::new("dir/mödel.pt")), "archive");
    }

    #[test]
    fn formats() {
        assert_eq!(
            SaveFormat::for_path(Path::new("x.safetensors")),
            SaveFormat::Safetensors
        );
        assert_eq!(SaveFormat::for_path(Path::new("x.pt")), SaveFormat::Zip);
        assert_eq!(SaveFormat::parse("legacy").unwrap(), SaveFormat::Legacy);
        assert!(SaveFormat::parse("tar").is_err());
    }
}
