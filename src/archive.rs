//! The zip container of `torch.save` and `torch.jit.save`, read through one memory map.
//!
//! Records are located by offset (from each record's local header, as torch does) and
//! borrowed, never copied. A deflated record (TorchScript `code/` files) can only be read
//! through [`Archive::read_bounded`], which stops at a caller-given size.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

use crate::error::{Error, Result};
use crate::source::Source;

/// How a record is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Stored as is (everything torch.save writes).
    Stored,
    /// Deflated.
    Deflated,
    /// Another zip method (not readable).
    Other(u16),
}

/// One record of the archive.
#[derive(Debug, Clone)]
pub struct Record {
    /// Name without the archive prefix (`data.pkl`, `data/0`).
    pub name: String,
    /// Byte offset of the data in the file.
    pub offset: u64,
    /// Size of the data as stored.
    pub compressed_size: u64,
    /// Size once inflated (equal to `compressed_size` when stored).
    pub size: u64,
    /// Storage method.
    pub method: Method,
    /// CRC-32 from the central directory (torch may write 0).
    pub crc32: u32,
}

/// A zip-format checkpoint container.
#[derive(Debug, Clone)]
pub struct Archive {
    source: Source,
    prefix: String,
    records: Vec<Record>,
    index: HashMap<String, usize>,
}

const HINT_ZIP: &str = "the file is damaged or not a PyTorch zip checkpoint";

/// Whether `bytes` start like a zip file.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

impl Archive {
    /// Reads the central directory of a zip in `source`.
    pub fn open(source: Source) -> Result<Archive> {
        let bytes = source.bytes();
        if !is_zip(bytes) {
            return Err(Error::format(
                "not a zip archive (no PK\\x03\\x04 signature)",
                "byte 0",
                HINT_ZIP,
            ));
        }
        let mut za = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
            Error::format(format!("invalid zip: {e}"), "central directory", HINT_ZIP)
        })?;
        let n = za.len();
        let mut records = Vec::with_capacity(n.min(1 << 16));
        let mut index = HashMap::new();
        let mut prefix: Option<String> = None;
        for i in 0..n {
            let f = za.by_index_raw(i).map_err(|e| {
                Error::format(
                    format!("invalid zip entry {i}: {e}"),
                    "central directory",
                    HINT_ZIP,
                )
            })?;
            let full = String::from_utf8_lossy(f.name_raw()).into_owned();
            let header = f.header_start();
            let csize = f.compressed_size();
            let size = f.size();
            let crc32 = f.crc32();
            let method = match f.compression() {
                zip::CompressionMethod::Stored => Method::Stored,
                zip::CompressionMethod::Deflated => Method::Deflated,
                #[allow(deprecated)]
                other => Method::Other(other.to_u16()),
            };
            drop(f);
            let p = match &prefix {
                Some(p) => p.clone(),
                None => {
                    let p = match full.split_once('/') {
                        Some((p, _)) => p.to_string(),
                        None => {
                            return Err(Error::format(
                                format!("first record {full:?} is not in a subdirectory"),
                                "central directory entry 0",
                                HINT_ZIP,
                            ))
                        }
                    };
                    prefix = Some(p.clone());
                    p
                }
            };
            let Some(name) = full
                .strip_prefix(p.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                return Err(Error::format(
                    format!("record {full:?} is not under the archive folder {p:?}"),
                    format!("central directory entry {i}"),
                    HINT_ZIP,
                ));
            };
            let offset = data_offset(bytes, header).ok_or_else(|| {
                Error::format(
                    format!("local header of {full:?} is damaged or past the end"),
                    format!("byte offset {header}"),
                    HINT_ZIP,
                )
            })?;
            if offset
                .checked_add(csize)
                .is_none_or(|end| end > bytes.len() as u64)
            {
                return Err(Error::format(
                    format!("record {full:?} ({csize} bytes) extends past the end of the file"),
                    format!("byte offset {offset}"),
                    "the file is truncated; download or copy it again",
                ));
            }
            if method == Method::Stored && csize != size {
                return Err(Error::format(
                    format!("stored record {full:?} has sizes {csize} and {size}"),
                    format!("central directory entry {i}"),
                    HINT_ZIP,
                ));
            }
            if index.insert(name.to_string(), records.len()).is_some() {
                return Err(Error::format(
                    format!("duplicate record {full:?}"),
                    format!("central directory entry {i}"),
                    HINT_ZIP,
                ));
            }
            records.push(Record {
                name: name.to_string(),
                offset,
                compressed_size: csize,
                size,
                method,
                crc32,
            });
        }
        let prefix = prefix
            .ok_or_else(|| Error::format("empty zip archive", "central directory", HINT_ZIP))?;
        Ok(Archive {
            source,
            prefix,
            records,
            index,
        })
    }

    /// Reads an archive from owned bytes.
    pub fn from_bytes(data: Vec<u8>) -> Result<Archive> {
        Archive::open(Source::from_vec(data))
    }

    /// The folder every record is under (the file stem, or `archive`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every record, in central-directory order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The record named `name` (without the prefix).
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.index.get(name).map(|&i| &self.records[i])
    }

    /// The underlying bytes.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The bytes of a stored record, borrowed from the map.
    pub fn stored_bytes(&self, rec: &Record) -> Result<&[u8]> {
        if rec.method != Method::Stored {
            return Err(Error::Unsupported {
                what: format!("record {:?} is compressed ({:?})", rec.name, rec.method),
                location: format!("{}/{}", self.prefix, rec.name),
                hint: "torch writes tensor data stored; re-save the checkpoint with torch.save"
                    .into(),
            });
        }
        self.source
            .slice(rec.offset, rec.compressed_size)
            .ok_or_else(|| Error::format("record past the end", rec.name.clone(), HINT_ZIP))
    }

    /// A record's bytes: borrowed when stored, inflated when deflated, in both cases refusing
    /// more than `max` bytes (a deflate bomb costs at most `max`).
    pub fn read_bounded(&self, rec: &Record, max: u64) -> Result<Cow<'_, [u8]>> {
        let too_big = || Error::Invalid {
            what: format!(
                "record {:?} is larger than the {max}-byte limit for metadata records",
                rec.name
            ),
            location: format!("{}/{}", self.prefix, rec.name),
        };
        match rec.method {
            Method::Stored => {
                if rec.size > max {
                    return Err(too_big());
                }
                Ok(Cow::Borrowed(self.stored_bytes(rec)?))
            }
            Method::Deflated => {
                let raw = self
                    .source
                    .slice(rec.offset, rec.compressed_size)
                    .ok_or_else(|| {
                        Error::format("record past the end", rec.name.clone(), HINT_ZIP)
                    })?;
                let mut out = Vec::new();
                let mut dec = flate2::read::DeflateDecoder::new(raw).take(max + 1);
                dec.read_to_end(&mut out).map_err(|e| {
                    Error::format(
                        format!("cannot inflate {:?}: {e}", rec.name),
                        format!("byte offset {}", rec.offset),
                        HINT_ZIP,
                    )
                })?;
                if out.len() as u64 > max {
                    return Err(too_big());
                }
                Ok(Cow::Owned(out))
            }
            Method::Other(m) => Err(Error::Unsupported {
                what: format!("record {:?} uses zip compression method {m}", rec.name),
                location: format!("{}/{}", self.prefix, rec.name),
                hint: "only stored and deflated records are readable".into(),
            }),
        }
    }

    /// A small text record (`byteorder`, `version`), trimmed; None when absent.
    pub fn text(&self, name: &str) -> Result<Option<String>> {
        let Some(rec) = self.record(name) else {
            return Ok(None);
        };
        let b = self.read_bounded(rec, 4096)?;
        Ok(Some(String::from_utf8_lossy(&b).trim().to_string()))
    }
}

/// Data offset of the record whose local header is at `header`: `header + 30 + name_len +
/// extra_len`, both lengths from the local header (as torch computes it).
fn data_offset(bytes: &[u8], header: u64) -> Option<u64> {
    let h = usize::try_from(header).ok()?;
    let lh = bytes.get(h..h.checked_add(30)?)?;
    if &lh[..4] != b"PK\x03\x04" {
        return None;
    }
    let n = u16::from_le_bytes([lh[26], lh[27]]) as u64;
    let e = u16::from_le_bytes([lh[28], lh[29]]) as u64;
    let off = header.checked_add(30 + n + e)?;
    (off <= bytes.len() as u64).then_some(off)
}
