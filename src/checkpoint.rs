//! Opening a checkpoint: format dispatch (as `torch.load` does), metadata parse, and access to
//! each storage's bytes. Opening parses metadata only; storage bytes stay in the map.

use std::borrow::Cow;
use std::path::Path;

use crate::archive::{is_zip, Archive};
use crate::error::{Error, Result};
use crate::interpret::{interpret, InterpretOptions, StorageTable, ZipPersistentLoad};
use crate::model::{Object, Storage};
use crate::pickle::{self, Limits};
use crate::source::Source;

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
pub enum Format {
    /// `torch.save` zip (torch >= 1.6).
    Zip,
    /// `torch.jit.save` archive.
    TorchScript,
    /// The legacy stream format (torch < 1.6, `_use_new_zipfile_serialization=False`).
    Legacy,
    /// The tar format of torch 0.1.
    Tar,
}

impl Format {
    /// Lower-case name, as in the fixtures' manifests.
    pub fn name(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TorchScript => "torchscript",
            Format::Legacy => "legacy",
            Format::Tar => "tar",
        }
    }
}

/// Options for opening a checkpoint.
#[derive(Debug, Clone, Default)]
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
}

const MAX_PICKLE: u64 = 1 << 32;

impl Checkpoint {
    /// Opens a checkpoint file with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        Checkpoint::open_with(path, &OpenOptions::default())
    }

    /// Opens a checkpoint file.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Checkpoint> {
        let source = Source::open(path.as_ref())?;
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
                return crate::torchscript::open(archive, opts);
            }
            return open_zip(archive, opts);
        }
        if bytes.starts_with(b"PYTORCH1") {
            return Err(Error::Unsupported {
                what: "a PyTorch preview-release archive (PYTORCH1)".into(),
                location: "byte 0".into(),
                hint: "re-save it with a current torch".into(),
            });
        }
        crate::legacy::open(source, opts)
    }

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
        })
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
        self.source.slice(off, s.nbytes).ok_or_else(|| {
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

    /// The underlying bytes.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Total bytes of all storages.
    pub fn total_storage_bytes(&self) -> u64 {
        self.storages.iter().map(|s| s.nbytes).sum()
    }
}

/// Reverses each `unit`-byte group of `v` (byte-order swap).
pub fn swap_in_place(v: &mut [u8], unit: usize) {
    if unit > 1 {
        for c in v.chunks_exact_mut(unit) {
            c.reverse();
        }
    }
}

/// Reads the byteorder record per torch's rules.
pub(crate) fn byteorder_of(
    archive: &Archive,
    opts: &OpenOptions,
) -> Result<(ByteOrder, Option<String>)> {
    let rec = archive.text("byteorder")?;
    let bo = match rec.as_deref() {
        Some("little") => ByteOrder::Little,
        Some("big") => ByteOrder::Big,
        Some(other) => {
            return Err(Error::invalid(
                format!("unknown byte order {other:?} (expected little or big)"),
                format!("{}/byteorder", archive.prefix()),
            ))
        }
        None => match opts.endianness {
            LoadEndianness::Default | LoadEndianness::Little => ByteOrder::Little,
            LoadEndianness::Big => ByteOrder::Big,
            LoadEndianness::Native => {
                if cfg!(target_endian = "big") {
                    ByteOrder::Big
                } else {
                    ByteOrder::Little
                }
            }
        },
    };
    Ok((bo, rec))
}

/// Parses one pickle record of an archive.
pub(crate) fn parse_record(
    archive: &Archive,
    name: &str,
    opts: &OpenOptions,
) -> Result<pickle::Pickle> {
    let rec = archive.record(name).ok_or_else(|| {
        Error::format(
            format!("no {name} record"),
            format!("archive folder {:?}", archive.prefix()),
            "the zip is not a torch.save checkpoint",
        )
    })?;
    let bytes = archive.read_bounded(rec, MAX_PICKLE)?;
    pickle::parse(&bytes, &opts.limits).map_err(|source| Error::Pickle {
        record: format!("{}/{}", archive.prefix(), name),
        source,
    })
}

/// Reads the metadata records of a zip archive.
pub(crate) fn archive_info(
    archive: &Archive,
    byteorder_record: Option<String>,
) -> Result<ArchiveInfo> {
    let version = match archive.text(".data/version")? {
        Some(v) => Some(v),
        None => archive.text("version")?,
    };
    Ok(ArchiveInfo {
        prefix: archive.prefix().to_string(),
        version,
        format_version: archive.text(".format_version")?,
        storage_alignment: archive.text(".storage_alignment")?,
        serialization_id: archive.text(".data/serialization_id")?,
        byteorder_record,
    })
}

/// Fills each storage's data range from its record (`data/<key>`, `constants/<key>`).
pub(crate) fn locate_storages(archive: &Archive, table: &mut StorageTable) -> Result<()> {
    let found: Vec<(String, usize)> = table.records().map(|(r, i)| (r.to_string(), i)).collect();
    for (record, i) in found {
        let rec = archive.record(&record).ok_or_else(|| {
            Error::invalid(
                format!(
                    "record {record} of storage {:?} is missing",
                    table.storages[i].key
                ),
                format!("{}/{}", archive.prefix(), record),
            )
        })?;
        if rec.method != crate::archive::Method::Stored {
            return Err(Error::Unsupported {
                what: format!("storage record {record} is compressed"),
                location: format!("{}/{}", archive.prefix(), record),
                hint: "torch writes storages stored; re-save the checkpoint with torch.save".into(),
            });
        }
        table.storages[i].data = Some((rec.offset, rec.size));
    }
    Ok(())
}

fn open_zip(archive: Archive, opts: &OpenOptions) -> Result<Checkpoint> {
    let (byteorder, bo_rec) = byteorder_of(&archive, opts)?;
    let info = archive_info(&archive, bo_rec)?;
    let p = parse_record(&archive, "data.pkl", opts)?;
    let mut table = StorageTable::default();
    let record = format!("{}/data.pkl", archive.prefix());
    let root = interpret(
        &p,
        &record,
        &mut ZipPersistentLoad { dir: "data" },
        &mut table,
        &opts.interpret,
    )?;
    locate_storages(&archive, &mut table)?;
    let records = archive.listing();
    Checkpoint::assemble(
        Format::Zip,
        root,
        table,
        byteorder,
        p.protocol,
        info,
        records,
        archive.source().clone(),
    )
}
