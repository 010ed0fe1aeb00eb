//! The `torch.save` zip checkpoint reader: byte order, metadata records, `data.pkl`, and the
//! storage records its persistent ids name (`data/<key>`).

use crate::error::{Error, Result};
use crate::format::pickle;
use crate::format::zip::Archive;
use crate::torch::checkpoint::{
    ArchiveInfo, ByteOrder, Checkpoint, Format, LoadEndianness, OpenOptions,
};
use crate::torch::dtype::DType;
use crate::torch::interpret::{
    interpret, storage_class_dtype, storage_nbytes, type_name, PersistentLoad, StorageTable,
    MAX_LOCATION,
};
use crate::torch::model::{Object, Storage};

/// Largest pickle record read into memory.
const MAX_PICKLE: u64 = 1 << 32;

/// The persistent ids of `torch.save` zip files and TorchScript archives:
/// `('storage', StorageClass, key, location, numel)`, data in `<dir>/<key>`.
pub struct ZipPersistentLoad {
    /// Record folder: `data` (data.pkl) or `constants` (TorchScript constants.pkl).
    pub dir: &'static str,
}

impl PersistentLoad for ZipPersistentLoad {
    fn load(&mut self, pid: &Object, table: &mut StorageTable, at: &str) -> Result<Object> {
        let items = match pid {
            Object::Tuple(t) => t.clone(),
            other => {
                return Err(Error::invalid(
                    format!(
                        "persistent id is a {}, expected ('storage', type, key, location, numel)",
                        type_name(other)
                    ),
                    at,
                ))
            }
        };
        if items.len() != 5 || items[0].as_str() != Some("storage") {
            return Err(Error::invalid(
                format!(
                    "persistent id has {} items, expected ('storage', type, key, location, numel)",
                    items.len()
                ),
                at,
            ));
        }
        let dtype = storage_class_dtype(&items[1], at)?;
        let key = match &items[2] {
            Object::Str(s) if s.len() > MAX_LOCATION => {
                return Err(Error::invalid(
                    format!("storage key longer than {MAX_LOCATION} bytes"),
                    at,
                ))
            }
            Object::Str(s) => s.to_string(),
            Object::Int(i) => i.to_string(),
            other => {
                return Err(Error::invalid(
                    format!("storage key is a {}", type_name(other)),
                    at,
                ))
            }
        };
        if key.is_empty()
            || key.contains('/')
            || key.contains('\\')
            || key.contains("..")
            || key.contains('\0')
        {
            return Err(Error::invalid(
                format!("storage key {key:?} is not a plain name"),
                at,
            ));
        }
        let location = items[3]
            .as_str()
            .ok_or_else(|| Error::invalid("storage location is not a str", at))?;
        if location.len() > MAX_LOCATION || key.len() > MAX_LOCATION {
            return Err(Error::invalid(
                format!("storage key or location longer than {MAX_LOCATION} bytes"),
                at,
            ));
        }
        let location = location.to_string();
        let numel = items[4]
            .as_int()
            .ok_or_else(|| Error::invalid("storage size is not an int", at))?;
        let nbytes = storage_nbytes(numel, dtype, at)?;
        let record = format!("{}/{}", self.dir, key);
        let idx = table.intern(record, || Storage {
            key,
            dtype: dtype.unwrap_or(DType::UINT8),
            location,
            nbytes,
            data: None,
            typed: dtype.is_some(),
        });
        Ok(Object::Storage(idx))
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
        if rec.method != crate::format::zip::Method::Stored {
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

/// Opens a `torch.save` zip checkpoint.
pub(crate) fn open(archive: Archive, opts: &OpenOptions) -> Result<Checkpoint> {
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
