//! The zip container of `torch.save` and `torch.jit.save`, read through one memory map.
//!
//! Records are located by offset (from each record's local header, as torch does) and
//! borrowed, never copied. A deflated record (TorchScript `code/` files) can only be read
//! through [`Archive::read_bounded`], which stops at a caller-given size.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

use super::source::Source;
use super::{FormatError as Error, Result};

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

/// Most bytes ever inflated from one record (torch stores tensor data and data.pkl
/// uncompressed; only TorchScript code is deflated, and it is small).
pub const MAX_INFLATE: u64 = 256 << 20;

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
        let entries = central_directory(bytes)?;
        let n = entries.len();
        let mut records = Vec::with_capacity(n);
        let mut index = HashMap::new();
        let mut prefix: Option<String> = None;
        for (i, e) in entries.into_iter().enumerate() {
            let CdEntry {
                name: full,
                header,
                csize,
                size,
                crc32,
                method,
            } = e;
            let method = match method {
                0 => Method::Stored,
                8 => Method::Deflated,
                m => Method::Other(m),
            };
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

    /// (name, size) of every record, for listings.
    pub fn listing(&self) -> Vec<(String, u64)> {
        self.records
            .iter()
            .map(|r| (r.name.clone(), r.size))
            .collect()
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
    /// more than `max` bytes; inflating stops at [`MAX_INFLATE`] whatever `max` says (a
    /// deflate bomb costs at most that much memory).
    pub fn read_bounded(&self, rec: &Record, max: u64) -> Result<Cow<'_, [u8]>> {
        let max = if rec.method == Method::Stored {
            max
        } else {
            max.min(MAX_INFLATE)
        };
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

/// One central-directory entry.
struct CdEntry {
    name: String,
    header: u64,
    csize: u64,
    size: u64,
    crc32: u32,
    method: u16,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Most central-directory entries accepted (torch writes one per storage plus a few).
const MAX_ENTRIES: u64 = 10_000_000;

/// Reads the central directory: the end record is found from the end of the file (never by
/// scanning the data), zip64 records are followed when present (torch always writes them),
/// and every offset and count is checked against the file before use.
fn central_directory(b: &[u8]) -> Result<Vec<CdEntry>> {
    let bad = |what: String, at: String| Error::format(what, at, HINT_ZIP);
    let len = b.len();
    // The classic end record: 22 bytes plus a comment of at most 65535 bytes.
    let lo = len.saturating_sub(22 + 0xffff);
    let mut eocd = None;
    let mut at = len.saturating_sub(22);
    while at >= lo && len >= 22 {
        if &b[at..at + 4] == b"PK\x05\x06" {
            let comment = u16_at(b, at + 20).unwrap_or(0) as usize;
            if at + 22 + comment <= len {
                eocd = Some(at);
                break;
            }
        }
        if at == 0 {
            break;
        }
        at -= 1;
    }
    let eocd = eocd.ok_or_else(|| {
        bad(
            "no end-of-central-directory record (the file is truncated or not a zip)".into(),
            format!("last {} bytes", len - lo),
        )
    })?;
    let field = |o: usize| u32_at(b, eocd + o).unwrap_or(0) as u64;
    let mut count = u16_at(b, eocd + 10).unwrap_or(0) as u64;
    let mut cd_size = field(12);
    let mut cd_off = field(16);
    let disk = u16_at(b, eocd + 4).unwrap_or(0);
    if disk != 0 {
        return Err(Error::Unsupported {
            what: "a multi-disk zip archive".into(),
            location: format!("byte offset {eocd}"),
            hint: "join the parts into one file".into(),
        });
    }
    let mut cd_end_limit = eocd as u64;
    // zip64: a locator 20 bytes before the classic end record.
    if eocd >= 20 && &b[eocd - 20..eocd - 16] == b"PK\x06\x07" {
        let z64 = u64_at(b, eocd - 20 + 8).unwrap_or(u64::MAX);
        let z = usize::try_from(z64)
            .ok()
            .filter(|&z| z.checked_add(56).is_some_and(|e| e <= eocd - 20))
            .filter(|&z| &b[z..z + 4] == b"PK\x06\x06")
            .ok_or_else(|| {
                bad(
                    format!("zip64 end record offset {z64} is invalid"),
                    format!("zip64 locator at byte offset {}", eocd - 20),
                )
            })?;
        count = u64_at(b, z + 32).unwrap_or(0);
        cd_size = u64_at(b, z + 40).unwrap_or(0);
        cd_off = u64_at(b, z + 48).unwrap_or(0);
        cd_end_limit = z as u64;
    }
    let cd_end = cd_off
        .checked_add(cd_size)
        .filter(|&e| e <= cd_end_limit)
        .ok_or_else(|| {
            bad(
                format!("central directory ({cd_size} bytes at offset {cd_off}) lies past its end record"),
                format!("end record at byte offset {eocd}"),
            )
        })?;
    if count > cd_size / 46 || count > MAX_ENTRIES {
        return Err(bad(
            format!("central directory claims {count} entries in {cd_size} bytes"),
            format!("byte offset {cd_off}"),
        ));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut p = cd_off as usize;
    for i in 0..count {
        let h = b
            .get(p..p + 46)
            .filter(|h| &h[..4] == b"PK\x01\x02" && (p + 46) as u64 <= cd_end)
            .ok_or_else(|| {
                bad(
                    format!("central directory entry {i} is damaged"),
                    format!("byte offset {p}"),
                )
            })?;
        let method = u16::from_le_bytes([h[10], h[11]]);
        let crc32 = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        let mut csize = u32::from_le_bytes([h[20], h[21], h[22], h[23]]) as u64;
        let mut size = u32::from_le_bytes([h[24], h[25], h[26], h[27]]) as u64;
        let n = u16::from_le_bytes([h[28], h[29]]) as usize;
        let x = u16::from_le_bytes([h[30], h[31]]) as usize;
        let c = u16::from_le_bytes([h[32], h[33]]) as usize;
        let mut header = u32::from_le_bytes([h[42], h[43], h[44], h[45]]) as u64;
        let name_at = p + 46;
        let next = name_at + n + x + c;
        if next as u64 > cd_end {
            return Err(bad(
                format!("central directory entry {i} runs past the directory"),
                format!("byte offset {p}"),
            ));
        }
        let name = String::from_utf8_lossy(&b[name_at..name_at + n]).into_owned();
        // zip64 extended information: the 0xFFFFFFFF fields, in order.
        let mut e = name_at + n;
        let extra_end = e + x;
        while e + 4 <= extra_end {
            let id = u16_at(b, e).unwrap_or(0);
            let sz = u16_at(b, e + 2).unwrap_or(0) as usize;
            let body = e + 4;
            if body + sz > extra_end {
                break;
            }
            if id == 1 {
                let mut q = body;
                let mut take = |v: &mut u64| {
                    if *v == 0xffff_ffff && q + 8 <= body + sz {
                        *v = u64_at(b, q).unwrap_or(*v);
                        q += 8;
                    }
                };
                take(&mut size);
                take(&mut csize);
                take(&mut header);
            }
            e = body + sz;
        }
        out.push(CdEntry {
            name,
            header,
            csize,
            size,
            crc32,
            method,
        });
        p = next;
    }
    Ok(out)
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
