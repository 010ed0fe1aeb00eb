//! The legacy stream format (`torch.save(..., _use_new_zipfile_serialization=False)`,
//! PYTORCH_FORMAT.md §3.1): magic, protocol version and sys_info pickles, the object pickle
//! with 6-tuple persistent ids, the sorted storage keys, then each storage as a u64 element
//! count and its little-endian bytes.

use std::io::Write;

use crate::error::Result;
use crate::format::pickle::PickleWriter;

use super::pickler;
use super::{io_err, StorageSource, Written};

/// `0x1950a86a20f9469cfc6c`, little-endian.
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

fn small_pickle(f: impl FnOnce(&mut PickleWriter)) -> Vec<u8> {
    let mut w = PickleWriter::new();
    f(&mut w);
    w.finish()
}

/// Writes the pickled object `p` (pickled with [`pickler::PidStyle::Legacy`]) in the legacy
/// format.
pub(crate) fn write(
    p: &pickler::Pickled,
    src: &dyn StorageSource,
    out: &mut dyn Write,
    what: &str,
) -> Result<Written> {
    let mut keys: Vec<usize> = (0..p.storages.len()).collect();
    keys.sort_by(|&a, &b| p.storages[a].key.cmp(&p.storages[b].key));

    let magic = small_pickle(|w| w.bigint(&MAGIC));
    let version = small_pickle(|w| w.int(PROTOCOL_VERSION));
    let sys_info = small_pickle(|w| {
        w.empty_dict();
        w.mark();
        w.str("protocol_version");
        w.int(PROTOCOL_VERSION);
        w.str("little_endian");
        w.bool(true);
        w.str("type_sizes");
        w.empty_dict();
        w.mark();
        for (k, v) in [("short", 2), ("int", 4), ("long", 4)] {
            w.str(k);
            w.int(v);
        }
        w.setitems();
        w.setitems();
    });
    let key_list = small_pickle(|w| {
        w.empty_list();
        if !keys.is_empty() {
            w.mark();
            for &k in &keys {
                w.str(&p.storages[k].key);
            }
            w.appends();
        }
    });
    let mut bytes = 0u64;
    for part in [&magic, &version, &sys_info, &p.bytes, &key_list] {
        out.write_all(part).map_err(|e| io_err(what, e))?;
        bytes += part.len() as u64;
    }
    for &k in &keys {
        let s = &p.storages[k];
        let data = src.storage_bytes(s.input)?;
        let slice = super::window_slice(&data, s, what)?;
        out.write_all(&s.numel.to_le_bytes())
            .map_err(|e| io_err(what, e))?;
        out.write_all(slice).map_err(|e| io_err(what, e))?;
        bytes += 8 + slice.len() as u64;
    }
    out.flush().map_err(|e| io_err(what, e))?;
    Ok(Written {
        storages: p.storages.len(),
        bytes,
    })
}
