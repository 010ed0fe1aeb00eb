//! The zip container exactly as `torch.save` writes it (PYTORCH_FORMAT.md §1.2): stored
//! records whose data start at a multiple of the alignment (an `FB` extra field of `Z`
//! padding), data descriptors, a central directory, and always a zip64 end record and
//! locator before the classic end record.
//!
//! The `zip` crate cannot produce this layout (it has no way to align with a padding field
//! or to write the zip64 records unconditionally), so the ~200 lines are here.

use std::io::Write;

/// Sizes at or above this need zip64 fields (miniz uses `>=`).
const U32_LIMIT: u64 = 0xFFFF_FFFF;

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;

/// Bit 3 (sizes in a data descriptor) and bit 11 (UTF-8 names).
const FLAGS_WITH_DESCRIPTOR: u16 = 0x0808;
/// Empty records have no descriptor.
const FLAGS_EMPTY: u16 = 0x0800;

struct Entry {
    name: Vec<u8>,
    flags: u16,
    crc: u32,
    size: u64,
    header_offset: u64,
}

/// Writes a torch zip archive record by record to `W`.
pub(crate) struct ZipWriter<W: Write> {
    w: W,
    cursor: u64,
    prefix: String,
    alignment: u64,
    entries: Vec<Entry>,
    name_hash: u64,
    crc_hash: u64,
}

/// `c10::hash_combine`.
fn hash_combine(seed: u64, value: u64) -> u64 {
    seed ^ (value
        .wrapping_add(0x9e37_79b9)
        .wrapping_add(seed << 6)
        .wrapping_add(seed >> 2))
}

/// libstdc++'s `std::_Hash_bytes` (what `std::hash<std::string>` is on 64-bit Linux).
fn std_hash_bytes(b: &[u8]) -> u64 {
    const MUL: u64 = (0xc6a4_a793u64 << 32) + 0x5bd1_e995;
    const SEED: u64 = 0xc70f_6907;
    fn shift_mix(v: u64) -> u64 {
        v ^ (v >> 47)
    }
    let len = b.len();
    let aligned = len & !7;
    let mut hash = SEED ^ (len as u64).wrapping_mul(MUL);
    for chunk in b[..aligned].chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let data = shift_mix(u64::from_le_bytes(a).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    if len & 7 != 0 {
        let mut data = 0u64;
        for &c in b[aligned..].iter().rev() {
            data = (data << 8) + c as u64;
        }
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

/// Where the data of a record whose local header starts at `cursor` begin, before padding
/// (torch's `detail::getOffset`): header, name, the 4 bytes of the FB field, and the zip64
/// extra field when the size or the header offset needs it.
fn unpadded_start(cursor: u64, full_name_len: usize, size: u64) -> u64 {
    let mut start = cursor + 30 + full_name_len as u64 + 4;
    if size >= U32_LIMIT || cursor >= U32_LIMIT {
        start += 4;
        if size >= U32_LIMIT {
            start += 16;
        }
        if cursor >= U32_LIMIT {
            start += 8;
        }
    }
    start
}

impl<W: Write> ZipWriter<W> {
    /// Starts an archive whose records live under `prefix/`.
    pub(crate) fn new(w: W, prefix: &str, alignment: u64) -> Self {
        ZipWriter {
            w,
            cursor: 0,
            prefix: prefix.to_string(),
            alignment: alignment.max(1),
            entries: Vec::new(),
            name_hash: 0,
            crc_hash: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.cursor += b.len() as u64;
        Ok(())
    }

    /// Where the data of the next record (`name`, `size` bytes) will start.
    #[cfg(test)]
    pub(crate) fn next_data_offset(&self, name: &str, size: u64) -> u64 {
        let full = self.prefix.len() + 1 + name.len();
        let start = unpadded_start(self.cursor, full, size);
        start.div_ceil(self.alignment) * self.alignment
    }

    /// Adds one stored record, `data` given as consecutive chunks (their lengths add up to the
    /// record's size). Returns the byte offset of the record's data in the archive.
    pub(crate) fn add(&mut self, name: &str, chunks: &[&[u8]]) -> std::io::Result<u64> {
        let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let full = format!("{}/{}", self.prefix, name);
        let header_offset = self.cursor;
        let start = unpadded_start(header_offset, full.len(), size);
        let pad = (self.alignment - start % self.alignment) % self.alignment;
        let pad = u16::try_from(pad).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "alignment above 65535 bytes",
            )
        })?;
        let zip64 = size >= U32_LIMIT || header_offset >= U32_LIMIT;
        let flags = if size == 0 {
            FLAGS_EMPTY
        } else {
            FLAGS_WITH_DESCRIPTOR
        };

        let mut extra = Vec::with_capacity(32 + pad as usize);
        if zip64 {
            let mut fields = Vec::new();
            if size >= U32_LIMIT {
                fields.extend_from_slice(&size.to_le_bytes());
                fields.extend_from_slice(&size.to_le_bytes());
            }
            if header_offset >= U32_LIMIT {
                fields.extend_from_slice(&header_offset.to_le_bytes());
            }
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(fields.len() as u16).to_le_bytes());
            extra.extend_from_slice(&fields);
        }
        extra.extend_from_slice(b"FB");
        extra.extend_from_slice(&pad.to_le_bytes());
        extra.resize(extra.len() + pad as usize, b'Z');

        let mut h = Vec::with_capacity(30 + full.len() + extra.len());
        h.extend_from_slice(&LOCAL_HEADER_SIG.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // version needed (stored)
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        h.extend_from_slice(&[0u8; 4]); // time, date
        h.extend_from_slice(&[0u8; 12]); // crc, sizes: in the descriptor
        h.extend_from_slice(&(full.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(full.as_bytes());
        h.extend_from_slice(&extra);
        self.put(&h)?;
        let data_offset = self.cursor;
        debug_assert_eq!(data_offset % self.alignment, 0);

        let mut crc = crc32fast::Hasher::new();
        for c in chunks {
            crc.update(c);
            self.put(c)?;
        }
        let crc = crc.finalize();
        if size > 0 {
            let mut d = Vec::with_capacity(24);
            d.extend_from_slice(&DESCRIPTOR_SIG.to_le_bytes());
            d.extend_from_slice(&crc.to_le_bytes());
            if zip64 {
                d.extend_from_slice(&size.to_le_bytes());
                d.extend_from_slice(&size.to_le_bytes());
            } else {
                d.extend_from_slice(&(size as u32).to_le_bytes());
                d.extend_from_slice(&(size as u32).to_le_bytes());
            }
            self.put(&d)?;
            self.crc_hash = hash_combine(self.crc_hash, crc as u64);
        }
        self.name_hash = hash_combine(self.name_hash, std_hash_bytes(name.as_bytes()));
        self.entries.push(Entry {
            name: full.into_bytes(),
            flags,
            crc,
            size,
            header_offset,
        });
        Ok(data_offset)
    }

    /// The 40-digit `.data/serialization_id` for the records written so far: 20 digits of a
    /// combined hash of the record names, 20 of the combined CRC-32s (torch's recipe; torch
    /// combines names in hash-set order, so the digits differ from torch's for the same file).
    pub(crate) fn serialization_id(&self) -> String {
        format!("{:020}{:020}", self.name_hash, self.crc_hash)
    }

    /// Writes the central directory and the end records; returns the writer.
    pub(crate) fn finish(mut self) -> std::io::Result<W> {
        let cd_offset = self.cursor;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let needs64 = e.size >= U32_LIMIT || e.header_offset >= U32_LIMIT;
            let mut extra = Vec::new();
            if needs64 {
                let mut fields = Vec::new();
                if e.size >= U32_LIMIT {
                    fields.extend_from_slice(&e.size.to_le_bytes());
                    fields.extend_from_slice(&e.size.to_le_bytes());
                }
                if e.header_offset >= U32_LIMIT {
                    fields.extend_from_slice(&e.header_offset.to_le_bytes());
                }
                extra.extend_from_slice(&1u16.to_le_bytes());
                extra.extend_from_slice(&(fields.len() as u16).to_le_bytes());
                extra.extend_from_slice(&fields);
            }
            let size32 = e.size.min(U32_LIMIT) as u32;
            let mut c = Vec::with_capacity(46 + e.name.len() + extra.len());
            c.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // made by
            c.extend_from_slice(&0u16.to_le_bytes()); // version needed
            c.extend_from_slice(&e.flags.to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // method
            c.extend_from_slice(&[0u8; 4]); // time, date
            c.extend_from_slice(&e.crc.to_le_bytes());
            c.extend_from_slice(&size32.to_le_bytes());
            c.extend_from_slice(&size32.to_le_bytes());
            c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            c.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // comment
            c.extend_from_slice(&0u16.to_le_bytes()); // disk
            c.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            c.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            c.extend_from_slice(&(e.header_offset.min(U32_LIMIT) as u32).to_le_bytes());
            c.extend_from_slice(&e.name);
            c.extend_from_slice(&extra);
            self.put(&c)?;
        }
        let cd_size = self.cursor - cd_offset;
        let n = entries.len() as u64;
        let eocd64_offset = self.cursor;

        let mut t = Vec::with_capacity(56 + 20 + 22);
        t.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
        t.extend_from_slice(&44u64.to_le_bytes());
        t.extend_from_slice(&0x031eu16.to_le_bytes()); // made by
        t.extend_from_slice(&0x2du16.to_le_bytes()); // version needed 4.5
        t.extend_from_slice(&0u32.to_le_bytes()); // this disk
        t.extend_from_slice(&0u32.to_le_bytes()); // disk of the central directory
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&n.to_le_bytes());
        t.extend_from_slice(&cd_size.to_le_bytes());
        t.extend_from_slice(&cd_offset.to_le_bytes());

        t.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&eocd64_offset.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());

        let n16 = n.min(0xFFFF) as u16;
        t.extend_from_slice(&EOCD_SIG.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&n16.to_le_bytes());
        t.extend_from_slice(&n16.to_le_bytes());
        t.extend_from_slice(&(cd_size.min(U32_LIMIT) as u32).to_le_bytes());
        t.extend_from_slice(&(cd_offset.min(U32_LIMIT) as u32).to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.put(&t)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_record_layout_matches_torch() {
        // PYTORCH_FORMAT.md §1.2: `model/data.pkl` at cursor 0 pads 16 bytes, data at 64.
        let mut z = ZipWriter::new(Vec::new(), "model", 64);
        assert_eq!(z.next_data_offset("data.pkl", 3), 64);
        let off = z.add("data.pkl", &[b"abc"]).unwrap();
        assert_eq!(off, 64);
        let out = z.finish().unwrap();
        assert_eq!(&out[..8], &[0x50, 0x4b, 0x03, 0x04, 0, 0, 0x08, 0x08]);
        assert_eq!(&out[26..30], &[14, 0, 20, 0]);
        assert_eq!(&out[30..44], b"model/data.pkl");
        assert_eq!(&out[44..48], &[b'F', b'B', 16, 0]);
        assert!(out[48..64].iter().all(|&b| b == b'Z'));
        assert_eq!(&out[64..67], b"abc");
        // descriptor
        assert_eq!(&out[67..71], &[0x50, 0x4b, 0x07, 0x08]);
        assert_eq!(&out[71..75], &crc32fast::hash(b"abc").to_le_bytes());
    }

    #[test]
    fn unpadded_start_zip64() {
        assert_eq!(unpadded_start(0, 14, 10), 48);
        assert_eq!(unpadded_start(0, 14, U32_LIMIT), 48 + 4 + 16);
        assert_eq!(unpadded_start(U32_LIMIT, 14, 1), U32_LIMIT + 48 + 4 + 8);
        assert_eq!(
            unpadded_start(U32_LIMIT, 14, U32_LIMIT),
            U32_LIMIT + 48 + 4 + 24
        );
    }

    #[test]
    fn std_hash_matches_libstdcxx() {
        // Known values of std::hash<std::string> from libstdc++ on x86-64.
        assert_eq!(std_hash_bytes(b""), 6142509188972423790);
        assert_eq!(std_hash_bytes(b"a"), 4993892634952068459);
        assert_eq!(std_hash_bytes(b"data.pkl"), 4941642132189851806);
        assert_eq!(std_hash_bytes(b"abcdefghij"), 18042067762304121004);
    }
}
