//! The checkpoint types: what an open checkpoint holds (format, object tree, storages, byte
//! order, archive metadata) and each storage's bytes. The readers live beside it.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::format::pickle::Limits;
use crate::format::source::Source;
use crate::torch::interpret::{InterpretOptions, StorageTable};
use crate::torch::model::{Object, Storage};

/// Byte order of the storages in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Little endian (what every common machine writes).
    Little,
    /// Big endian (s390x, ...).
    Big,
}

/// What to assume when a zip file has no `byteorder` record, mirroring torch's
/// `set_default_load_endianness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LoadEndianness {
    /// torch's default (None): little endian.
    #[default]
    Default,
    /// The host's order, no swap.
    Native,
    /// Little endian.
    Little,
    /// Big endian.
    Big,
}

/// The container a checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `torch.save` zip (torch >= 1.6).
    Zip,
    /// `torch.jit.save` archive.
    TorchScript,
    /// The legacy stream format (torch < 1.6, `_use_new_zipfile_serialization=False`).
    Legacy,
    /// The tar format of torch 0.1.
    Tar,
    /// A `.safetensors` file.
    Safetensors,
    /// A model directory of shards named by an index (Hugging Face).
    Sharded,
    /// A `torch.distributed.checkpoint` directory.
    Dcp,
}

impl Format {
    /// Lower-case name, as in the fixtures' manifests.
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TorchScript => "torchscript",
            Format::Legacy => "legacy",
            Format::Tar => "tar",
            Format::Safetensors => "safetensors",
            Format::Sharded => "sharded",
            Format::Dcp => "dcp",
        }
    }
}

/// Options for opening a checkpoint.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Pickle limits.
    pub limits: Limits,
    /// Interpreter limits.
    pub interpret: InterpretOptions,
    /// Byte order to assume when a zip file has no `byteorder` record.
    pub endianness: LoadEndianness,
}

/// Metadata records of a zip checkpoint.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ArchiveInfo {
    /// The folder records are under.
    pub prefix: String,
    /// `version` (or `.data/version`).
    pub version: Option<String>,
    /// `.format_version`.
    pub format_version: Option<String>,
    /// `.storage_alignment`.
    pub storage_alignment: Option<String>,
    /// `.data/serialization_id`.
    pub serialization_id: Option<String>,
    /// The `byteorder` record as written (None when absent).
    pub byteorder_record: Option<String>,
}

/// An open checkpoint: the object tree, the storages its tensors view, and the bytes.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The container.
    pub format: Format,
    /// The object `torch.load` would return.
    pub root: Object,
    /// Every storage, in first-encounter order.
    pub storages: Vec<Storage>,
    /// Byte order of storage bytes in the file.
    pub byteorder: ByteOrder,
    /// Pickle protocol of the main pickle.
    pub protocol: u8,
    /// Zip metadata (empty for legacy files).
    pub info: ArchiveInfo,
    /// Records of a zip container (names and sizes), for listing.
    pub records: Vec<(String, u64)>,
    /// Human-readable notes from the container reader (TorchScript code files, version
    /// warnings), printed by `ptfile inspect`.
    pub notes: Vec<String>,
    source: Source,
    /// More sources, for checkpoints made of several files (a sharded directory): storage `i`
    /// lives in `extra_sources[storage_source[i] - 1]` when `storage_source[i] > 0`, else in
    /// `source`. Empty for single files.
    extra_sources: Vec<Source>,
    storage_source: Vec<u32>,
    /// Tensors by name, built on first use of [`Checkpoint::tensor`].
    pub(crate) tensor_index: std::sync::OnceLock<std::sync::Arc<crate::torch::walk::TensorIndex>>,
}

impl Checkpoint {
    /// Assembles a checkpoint; container readers call this after filling storage data ranges.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        format: Format,
        root: Object,
        table: StorageTable,
        byteorder: ByteOrder,
        protocol: u8,
        info: ArchiveInfo,
        records: Vec<(String, u64)>,
        source: Source,
    ) -> Result<Checkpoint> {
        for s in &table.storages {
            match s.data {
                None => {
                    return Err(Error::invalid(
                        format!("storage {:?} has no data", s.key),
                        format!("storage {:?}", s.key),
                    ))
                }
                Some((off, len)) => {
                    if len < s.nbytes || source.slice(off, s.nbytes).is_none() {
                        return Err(Error::invalid(
                            format!(
                                "storage {:?} needs {} bytes but its data has {len}",
                                s.key, s.nbytes
                            ),
                            format!("storage {:?} at byte offset {off}", s.key),
                        ));
                    }
                }
            }
        }
        Ok(Checkpoint {
            format,
            root,
            storages: table.storages,
            byteorder,
            protocol,
            info,
            records,
            notes: Vec::new(),
            source,
            extra_sources: Vec::new(),
            storage_source: Vec::new(),
            tensor_index: Default::default(),
        })
    }

    /// One checkpoint made of several (the shards of a directory): `root` names tensors whose
    /// storage indices are those of the shards' storages laid end to end, in `shards` order.
    /// Every shard must have the same byte order.
    pub(crate) fn from_shards(
        format: Format,
        root: Object,
        shards: Vec<Checkpoint>,
        records: Vec<(String, u64)>,
    ) -> Result<Checkpoint> {
        let mut it = shards.into_iter();
        let Some(first) = it.next() else {
            return Err(Error::invalid("no shards", "directory"));
        };
        let byteorder = first.byteorder;
        let mut storages = first.storages;
        let mut storage_source = vec![0u32; storages.len()];
        let mut extra_sources = Vec::new();
        for shard in it {
            if shard.byteorder != byteorder {
                return Err(Error::Unsupported {
                    what: "shards of different byte orders".into(),
                    location: "directory".into(),
                    hint: "re-save the shards with one byte order".into(),
                });
            }
            extra_sources.push(shard.source);
            let k = extra_sources.len() as u32;
            storage_source.extend(std::iter::repeat_n(k, shard.storages.len()));
            storages.extend(shard.storages);
        }
        Ok(Checkpoint {
            format,
            root,
            storages,
            byteorder,
            protocol: first.protocol,
            info: ArchiveInfo::default(),
            records,
            notes: first.notes,
            source: first.source,
            extra_sources,
            storage_source,
            tensor_index: Default::default(),
        })
    }

    /// The source (file) storage `i`'s bytes are in.
    pub fn storage_source(&self, i: usize) -> &Source {
        match self.storage_source.get(i) {
            Some(&k) if k > 0 => self
                .extra_sources
                .get(k as usize - 1)
                .unwrap_or(&self.source),
            _ => &self.source,
        }
    }

    /// The raw bytes of storage `i` as they are in the file (in the file's byte order).
    pub fn raw_storage_bytes(&self, i: usize) -> Result<&[u8]> {
        let s = self
            .storages
            .get(i)
            .ok_or_else(|| Error::Usage(format!("no storage {i}")))?;
        let (off, _) = s
            .data
            .ok_or_else(|| Error::invalid("storage has no data", format!("storage {:?}", s.key)))?;
        self.storage_source(i).slice(off, s.nbytes).ok_or_else(|| {
            Error::invalid("storage data past the end", format!("storage {:?}", s.key))
        })
    }

    /// The bytes of storage `i` in little-endian order: borrowed from the map when the file is
    /// little endian, byte-swapped into owned memory when it is big endian.
    pub fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let raw = self.raw_storage_bytes(i)?;
        if self.byteorder == ByteOrder::Little {
            return Ok(Cow::Borrowed(raw));
        }
        let unit = self.storages[i].swap_unit();
        let mut v = raw.to_vec();
        swap_in_place(&mut v, unit);
        Ok(Cow::Owned(v))
    }

    /// The underlying bytes (of the first file, for a checkpoint made of several; see
    /// [`Checkpoint::storage_source`]).
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Total bytes of all storages.
    pub fn total_storage_bytes(&self) -> u64 {
        self.storages.iter().map(|s| s.nbytes).sum()
    }
}

/// Reverses each `unit`-byte group of `v` (byte-order swap).
pub(crate) fn swap_in_place(v: &mut [u8], unit: usize) {
    if unit > 1 {
        for c in v.chunks_exact_mut(unit) {
            c.reverse();
        }
    }
}
