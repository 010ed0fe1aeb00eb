//! The tar container (torch 0.1 checkpoints): the regular files of an archive with their
//! data ranges, POSIX ustar, GNU long names and base-256 sizes, and PAX headers; every header
//! checksummed and every size checked against the bytes that remain.

use super::{FormatError as Error, Result};

/// Most members a tar checkpoint may have (torch writes four).
const MAX_TAR_MEMBERS: usize = 4096;

const HINT_LEGACY: &str = "the file is damaged or truncated; copy or download it again";

/// One regular file of a tar archive.
#[derive(Debug, Clone)]
pub struct TarMember {
    /// The member's path.
    pub name: String,
    /// Byte offset of its data.
    pub offset: u64,
    /// Size of its data in bytes.
    pub size: u64,
}

fn octal(field: &[u8]) -> Option<u64> {
    // GNU base-256 for large values.
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// Whether the 512-byte block is a tar header with a valid checksum (as Python's tarfile
/// checks it: unsigned or signed sum, with the checksum field counted as spaces).
fn valid_tar_header(h: &[u8]) -> bool {
    if h.len() < 512 || h.iter().all(|&b| b == 0) {
        return false;
    }
    let Some(stored) = octal(&h[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h[..512].iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    stored == unsigned || stored as i64 == signed
}

/// Whether `bytes` starts with a valid tar header.
pub fn looks_like_tar(bytes: &[u8]) -> bool {
    bytes.len() >= 512 && valid_tar_header(&bytes[..512])
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The regular files of a tar archive, with their data ranges (bounded, checked).
pub fn tar_members(bytes: &[u8]) -> Result<Vec<TarMember>> {
    let len = bytes.len() as u64;
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let mut next_name: Option<String> = None;
    let mut next_size: Option<u64> = None;
    let mut blocks = 0usize;
    while pos + 512 <= len {
        blocks += 1;
        if blocks > MAX_TAR_MEMBERS * 3 {
            return Err(Error::Unsupported {
                what: format!("a tar file with more than {MAX_TAR_MEMBERS} members"),
                location: format!("byte offset {pos}"),
                hint: "torch 0.1 tar checkpoints have four members".into(),
            });
        }
        let h = &bytes[pos as usize..pos as usize + 512];
        if h.iter().all(|&b| b == 0) {
            break; // end-of-archive marker
        }
        if !valid_tar_header(h) {
            return Err(Error::format(
                "damaged tar header (bad checksum)",
                format!("byte offset {pos}"),
                HINT_LEGACY,
            ));
        }
        let typeflag = h[156];
        let header_size = octal(&h[124..136]).ok_or_else(|| {
            Error::format(
                "tar header with an invalid size field",
                format!("byte offset {pos}"),
                HINT_LEGACY,
            )
        })?;
        let size = if matches!(typeflag, b'0' | 0 | b'7') {
            next_size.take().unwrap_or(header_size)
        } else {
            header_size
        };
        let data = pos + 512;
        if data.checked_add(size).is_none_or(|end| end > len) {
            return Err(Error::format(
                format!("tar member of {size} bytes extends past the end of the file"),
                format!("byte offset {pos}"),
                HINT_LEGACY,
            ));
        }
        let body = &bytes[data as usize..(data + size) as usize];
        let mut name = cstr(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match typeflag {
            b'x' => {
                // PAX extended header for the next member: "LEN key=value\n" records.
                let (path, psize) = pax_records(body);
                if path.is_some() {
                    next_name = path;
                }
                if psize.is_some() {
                    next_size = psize;
                }
            }
            b'L' => next_name = Some(cstr(body)),
            b'0' | 0 | b'7' => {
                let name = next_name.take().unwrap_or(name);
                out.push(TarMember {
                    name,
                    offset: data,
                    size,
                });
                if out.len() > MAX_TAR_MEMBERS {
                    return Err(Error::Unsupported {
                        what: format!("a tar file with more than {MAX_TAR_MEMBERS} members"),
                        location: format!("byte offset {pos}"),
                        hint: "torch 0.1 tar checkpoints have four members".into(),
                    });
                }
            }
            _ => {
                next_name = None;
                next_size = None;
            }
        }
        let padded = size.div_ceil(512).saturating_mul(512);
        pos = data.saturating_add(padded);
    }
    Ok(out)
}

fn pax_records(body: &[u8]) -> (Option<String>, Option<u64>) {
    let mut path = None;
    let mut size = None;
    let mut rest = body;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(n) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if n <= sp + 1 || n > rest.len() {
            break;
        }
        let rec = &rest[sp + 1..n];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|&b| b == b'=') {
            let (k, v) = (&rec[..eq], &rec[eq + 1..]);
            match k {
                b"path" => path = Some(String::from_utf8_lossy(v).into_owned()),
                b"size" => size = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        rest = &rest[n..];
    }
    (path, size)
}
