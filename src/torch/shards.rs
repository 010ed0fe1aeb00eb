//! Model directories: a Hugging Face repository's weights (`model.safetensors`,
//! `pytorch_model.bin`, or shards named by `model.safetensors.index.json` /
//! `pytorch_model.bin.index.json` and their variants), found as transformers finds them,
//! validated as huggingface_hub validates them, opened in parallel and presented as one
//! checkpoint whose storages keep their shard of origin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::torch::checkpoint::{Checkpoint, Format, OpenOptions};
use crate::torch::model::{Object, Tensor};

/// Largest index file read (huggingface_hub's `MAX_INDEX_FILE_SIZE`).
const MAX_INDEX: u64 = 10 << 20;
/// Most shards an index may name.
const MAX_SHARDS: usize = 100_000;

/// The weights files transformers looks for in a directory, in its order of preference.
const NAMES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// Whether `path` names an index file (`*.index.json`, `*.index.<variant>.json`).
pub(crate) fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") && n.contains(".index."))
}

/// Opens a model directory.
pub(crate) fn open_dir(dir: &Path, opts: &OpenOptions) -> Result<Checkpoint> {
    for name in NAMES {
        let p = dir.join(name);
        if p.is_file() {
            return if is_index(&p) {
                open_index(&p, opts)
            } else {
                Checkpoint::open_with(&p, opts)
            };
        }
    }
    // A variant (`model.safetensors.index.fp16.json`): one index, or the choice is the user's.
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_index(Path::new(n)))
        .collect();
    found.sort();
    match found.len() {
        1 => open_index(&dir.join(&found[0]), opts),
        0 => Err(Error::format(
            format!("no weights found in directory {}", dir.display()),
            dir.display().to_string(),
            "expected model.safetensors, pytorch_model.bin or an *.index.json naming shards",
        )),
        _ => Err(Error::Usage(format!(
            "directory {} has several indexes ({}): pass the one to open",
            dir.display(),
            found.join(", ")
        ))),
    }
}

/// Checks a shard name as huggingface_hub does: relative, inside the directory, with the
/// index's extension.
fn check_shard_name(name: &str, ext: &str, index: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(
            format!("the index names shard {name:?}, which {why}"),
            index.to_string(),
        ))
    };
    if name.is_empty() || name.len() > 4096 {
        return bad("is empty or too long");
    }
    if let Some(why) = leaves_dir(name) {
        return bad(why);
    }
    if !name.ends_with(ext) {
        return bad(&format!("does not end in {ext} as the index's shards must"));
    }
    Ok(())
}

/// Why a file name from an index or a metadata file would not be a plain name inside the
/// checkpoint's directory (absolute, a drive, `..`, a NUL byte), as huggingface_hub refuses
/// shard names; None when it is one.
pub(crate) fn leaves_dir(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if name.starts_with('/') || name.starts_with('\\') {
        Some("is an absolute path")
    } else if b.len() >= 2 && b[1] == b':' {
        Some("has a drive letter")
    } else if name.split(['/', '\\']).any(|c| c == "..") {
        Some("leaves the directory (`..`)")
    } else if name.contains('\0') {
        Some("holds a NUL byte")
    } else {
        None
    }
}

/// The error of a shard, with the shard named in it (the kind is kept).
fn in_shard(e: Error, shard: &str) -> Error {
    match e {
        Error::Unsafe {
            global,
            record,
            offset,
        } => Error::Unsafe {
            global,
            record: format!("{shard}: {record}"),
            offset,
        },
        Error::Pickle { record, source } => Error::Pickle {
            record: format!("{shard}: {record}"),
            source,
        },
        Error::Format {
            what,
            location,
            hint,
        } => Error::Format {
            what,
            location: format!("{shard}: {location}"),
            hint,
        },
        Error::Invalid { what, location } => Error::Invalid {
            what,
            location: format!("{shard}: {location}"),
        },
        Error::Unsupported {
            what,
            location,
            hint,
        } => Error::Unsupported {
            what,
            location: format!("{shard}: {location}"),
            hint,
        },
        other => other,
    }
}

/// Opens the shards an index names and merges them.
pub(crate) fn open_index(index: &Path, opts: &OpenOptions) -> Result<Checkpoint> {
    let io = |source| Error::Io {
        path: index.to_path_buf(),
        source,
    };
    let at = index.display().to_string();
    let len = std::fs::metadata(index).map_err(io)?.len();
    if len > MAX_INDEX {
        return Err(Error::invalid(
            format!("index of {len} bytes, over the {MAX_INDEX}-byte limit"),
            at,
        ));
    }
    let text = std::fs::read(index).map_err(io)?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| {
        Error::format(
            format!("index is not JSON: {e}"),
            at.clone(),
            "the index is damaged",
        )
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::invalid("index has no weight_map object", at.clone()))?;
    let name = index.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = if name.contains(".safetensors") {
        ".safetensors"
    } else {
        ".bin"
    };
    let mut shard_of: Vec<(&str, &str)> = Vec::with_capacity(map.len());
    for (k, s) in map {
        let s = s.as_str().ok_or_else(|| {
            Error::invalid(
                format!("weight_map entry {k:?} is not a file name"),
                at.clone(),
            )
        })?;
        check_shard_name(s, ext, &at)?;
        shard_of.push((k, s));
    }
    let mut shards: Vec<&str> = shard_of.iter().map(|x| x.1).collect();
    shards.sort_unstable();
    shards.dedup();
    if shards.len() > MAX_SHARDS {
        return Err(Error::invalid(
            format!("index names {} shards", shards.len()),
            at,
        ));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let opened = open_parallel(dir, &shards, opts)?;

    // Merge in shard order, each shard's tensors in its own order.
    let mut base = 0usize;
    let mut items: Vec<(Object, Object)> = Vec::new();
    let mut where_: HashMap<String, &str> = HashMap::new();
    let mut records = Vec::with_capacity(shards.len());
    let mut notes = Vec::new();
    for (shard, ckpt) in shards.iter().zip(&opened) {
        records.push((
            shard.to_string(),
            ckpt.storages.iter().map(|s| s.nbytes).sum::<u64>(),
        ));
        for (k, t) in ckpt.root.tensors(usize::MAX) {
            if let Some(other) = where_.insert(k.clone(), shard) {
                return Err(Error::invalid(
                    format!("tensor {k} is in two shards, {other} and {shard}"),
                    at,
                ));
            }
            let mut t: Tensor = (*t).clone();
            t.storage = t.storage.map(|i| i + base);
            items.push((Object::Str(k.as_str().into()), Object::Tensor(Arc::new(t))));
        }
        base += ckpt.storages.len();
    }
    for (k, s) in &shard_of {
        match where_.get(*k) {
            Some(found) if found == s => {}
            Some(found) => {
                return Err(Error::invalid(
                    format!("the index puts {k} in {s}, but it is in {found}"),
                    at,
                ))
            }
            None => {
                return Err(Error::invalid(
                    format!("tensor {k} is missing from its shard {s}"),
                    format!("{at}: {s}"),
                ))
            }
        }
    }
    let extra = where_.len() - shard_of.len().min(where_.len());
    if extra > 0 {
        notes.push(format!(
            "{extra} tensors of the shards are not in the index (kept)"
        ));
    }
    // Tied weights of a safetensors index: `metadata` names an alias for a kept tensor.
    if let Some(meta) = v.get("metadata").and_then(|m| m.as_object()) {
        let by_name: HashMap<&str, usize> = items
            .iter()
            .enumerate()
            .filter_map(|(i, (k, _))| k.as_str().map(|k| (k, i)))
            .collect();
        let mut aliases = Vec::new();
        for (alias, target) in meta {
            let Some(target) = target.as_str() else {
                continue;
            };
            if where_.contains_key(alias.as_str()) {
                continue;
            }
            if let Some(&i) = by_name.get(target) {
                aliases.push((Object::Str(alias.as_str().into()), items[i].1.clone()));
                notes.push(format!("tied: {alias} = {target}"));
            }
        }
        items.extend(aliases);
    }
    let mut ckpt =
        Checkpoint::from_shards(Format::Sharded, Object::Dict(items.into()), opened, records)?;
    ckpt.notes.extend(notes);
    Ok(ckpt)
}

/// Opens every shard, several at a time; the first error (naming its shard) wins.
fn open_parallel(dir: &Path, shards: &[&str], opts: &OpenOptions) -> Result<Vec<Checkpoint>> {
    let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(paths.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<Checkpoint>>> = (0..paths.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(p) = paths.get(i) else { break };
                let r = if p.is_dir() {
                    // (a shard is a file: no directory nesting, however the names are made)
                    Err(Error::invalid(
                        format!("shard {} is a directory, not a file", shards[i]),
                        p.display().to_string(),
                    ))
                } else {
                    Checkpoint::open_with(p, opts).map_err(|e| in_shard(e, shards[i]))
                };
                if let Ok(mut g) = results.lock() {
                    g[i] = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(Error::invalid(
                    "a shard reader failed",
                    shards.get(i).copied().unwrap_or("?"),
                ))
            })
        })
        .collect()
}
