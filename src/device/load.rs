//! Loading: every storage of a checkpoint materialized on the device a user asks for, through
//! the registry, with torch's `map_location` and a fallback to the CPU that is recorded in a
//! report (or, in strict mode, refused with torch's kind of message).
//!
//! A [`Loader`] is the context carried into the load (like serde's `DeserializeSeed`):
//!
//! ```
//! use ptfile::{Loader, MapLocation};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cuda_multi_gpu.pt");
//!
//! // As saved (cuda storages fall back to the CPU when no GPU is here):
//! let loaded = Loader::new().load(path)?;
//! // Everything to the CPU:
//! let loaded = Loader::new().map_location(MapLocation::to("cpu")).load(path)?;
//! assert!(loaded.report.fallbacks().next().is_none());
//! // A table old -> new:
//! let loaded = Loader::new()
//!     .map_location(MapLocation::table([("cuda:1", "cuda:0")]))
//!     .load(path)?;
//! assert!(loaded.report.storages.iter().all(|r| r.location != "cuda:1"));
//! // A function of (storage, saved location); None keeps the saved location:
//! let loaded = Loader::new()
//!     .map_location(MapLocation::func(|s, loc| (s.nbytes < 1024).then(|| "cpu".to_string())))
//!     .load(path)?;
//! for r in &loaded.report.storages {
//!     println!("{} {} -> {} ({:?})", r.key, r.saved_location, r.device, r.fallback);
//! }
//! // Strict mode refuses what it cannot place, as torch does:
//! if !cfg!(feature = "cuda") {
//!     assert!(Loader::new().strict(true).load(path).is_err());
//! }
//! # Ok::<(), ptfile::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ptfile_backend::{BackendError, DeviceStorage, FileSpan, StorageDesc};
use serde_json::{json, Map, Value};

use crate::describe::StorageBytes;
use crate::device::cpu::MappedStorage;
use crate::device::device_map::DeviceMap;
use crate::device::map_location::MapLocation;
use crate::device::registry::Registry;
use crate::error::{Error, Result};
use crate::torch::checkpoint::{ByteOrder, Checkpoint, LoadEndianness, OpenOptions};

/// How CPU storages are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CpuMode {
    /// Owned, writable copies (torch.load's default).
    #[default]
    Owned,
    /// Borrowed from the read-only memory map where the bytes allow it (little-endian file),
    /// like torch.load(mmap=True); no copy is made.
    Mapped,
}

/// The load context.
#[derive(Clone)]
pub struct Loader {
    registry: Arc<Registry>,
    map_location: MapLocation,
    strict: bool,
    cpu_mode: CpuMode,
    open: OpenOptions,
    device_map: DeviceMap,
}

impl Default for Loader {
    fn default() -> Self {
        Loader::new()
    }
}

/// What happened to one storage.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StorageReport {
    /// Its key in the file.
    pub key: String,
    /// The location saved in the file.
    pub saved_location: String,
    /// The location after map_location.
    pub location: String,
    /// Where it lives now.
    pub device: String,
    /// Its size.
    pub nbytes: u64,
    /// Why it is on the CPU instead of `location`, when it fell back.
    pub fallback: Option<String>,
}

/// What a load did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoadReport {
    /// One entry per storage, in the checkpoint's order.
    pub storages: Vec<StorageReport>,
}

impl LoadReport {
    /// Bytes by device, in first-seen order.
    pub fn bytes_by_device(&self) -> Vec<(String, u64, usize)> {
        let mut v: Vec<(String, u64, usize)> = Vec::new();
        for s in &self.storages {
            match v.iter_mut().find(|(d, _, _)| *d == s.device) {
                Some(e) => {
                    e.1 += s.nbytes;
                    e.2 += 1;
                }
                None => v.push((s.device.clone(), s.nbytes, 1)),
            }
        }
        v
    }
    /// The storages that fell back, with their reasons.
    pub fn fallbacks(&self) -> impl Iterator<Item = &StorageReport> {
        self.storages.iter().filter(|s| s.fallback.is_some())
    }
}

/// A loaded checkpoint: the object tree (tensors refer to storages by index) with every
/// storage on its device. Storages shared by several tensors were materialized once.
pub struct Loaded {
    /// The checkpoint (object tree, storage metadata).
    pub checkpoint: Checkpoint,
    storages: Vec<Arc<dyn DeviceStorage>>,
    /// Where each storage went and why.
    pub report: LoadReport,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("storages", &self.storages.len())
            .field("report", &self.report)
            .finish()
    }
}

impl Loaded {
    /// The device storage with index `i` (as in `Tensor::storage`).
    pub fn storage(&self, i: usize) -> Option<&dyn DeviceStorage> {
        self.storages.get(i).map(|b| &**b)
    }
    /// Mutable access to a storage's host bytes (CPU-owned storages): a write is seen by every
    /// tensor that views the storage, as in torch. None while the storage is shared (an
    /// [`Loaded::shared_storage`] handle is alive) or not writable host memory.
    pub fn host_bytes_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        Arc::get_mut(self.storages.get_mut(i)?)?.host_bytes_mut()
    }
    /// A shared handle to storage `i` that keeps it alive on its device after the `Loaded`
    /// is dropped (for hand-offs such as DLPack, whose consumer frees it later).
    pub fn shared_storage(&self, i: usize) -> Option<Arc<dyn DeviceStorage>> {
        self.storages.get(i).cloned()
    }
    /// All device storages.
    pub fn storages(&self) -> impl Iterator<Item = &dyn DeviceStorage> {
        self.storages.iter().map(|b| &**b)
    }
    /// The JSON description (fixtures' schema) with devices and sha256 read back from where
    /// each storage now lives, plus per storage `key`, `saved_location`, `location`,
    /// `fallback`.
    pub fn describe(&self) -> Result<Value> {
        crate::describe::describe_with(
            &self.checkpoint,
            &self.checkpoint.root,
            self,
            &crate::describe::DescribeOptions::default(),
        )
    }
}

impl StorageBytes for Loaded {
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        // (the bytes a view of the load reads: host memory borrowed, a device read back)
        crate::torch::tensor::ViewSource::le_bytes(self, i)
    }
    fn storage_device(&self, i: usize) -> String {
        self.storages
            .get(i)
            .map(|s| s.location())
            .unwrap_or_default()
    }
    fn storage_extra(&self, i: usize) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(r) = self.report.storages.get(i) {
            m.insert("key".into(), json!(r.key));
            m.insert("saved_location".into(), json!(r.saved_location));
            m.insert("location".into(), json!(r.location));
            m.insert("fallback".into(), json!(r.fallback));
        }
        m
    }
}

/// Bytes per batch handed to a backend when they must be byte-swapped first (bounds the
/// host copies of a big-endian file).
const SWAP_BATCH: u64 = 256 << 20;

impl Loader {
    /// The default registry, storages as saved, CPU fallback, owned CPU copies.
    pub fn new() -> Loader {
        Loader {
            registry: Arc::new(Registry::default()),
            map_location: MapLocation::AsSaved,
            strict: false,
            cpu_mode: CpuMode::Owned,
            open: OpenOptions::default(),
            device_map: DeviceMap::default(),
        }
    }
    /// Spreads the model over several devices ([`DeviceMap`]): where the map names a device
    /// for a storage, it overrides map_location.
    pub fn device_map(mut self, map: DeviceMap) -> Loader {
        self.device_map = map;
        self
    }
    /// The plan the device map makes for `ckpt` (what `load` will apply).
    pub fn plan(&self, ckpt: &Checkpoint) -> Result<crate::device::device_map::Plan> {
        self.device_map.plan(ckpt, &self.registry)
    }
    /// Uses `registry`.
    pub fn registry(mut self, registry: Arc<Registry>) -> Loader {
        self.registry = registry;
        self
    }
    /// Sets map_location.
    pub fn map_location(mut self, m: MapLocation) -> Loader {
        self.map_location = m;
        self
    }
    /// Strict mode: refuse instead of falling back to the CPU (torch's behaviour).
    pub fn strict(mut self, strict: bool) -> Loader {
        self.strict = strict;
        self
    }
    /// How CPU storages are held.
    pub fn cpu_mode(mut self, mode: CpuMode) -> Loader {
        self.cpu_mode = mode;
        self
    }
    /// Byte order assumed for zip files without a `byteorder` record.
    pub fn endianness(mut self, e: LoadEndianness) -> Loader {
        self.open.endianness = e;
        self
    }
    /// Options for opening (limits).
    pub fn open_options(mut self, o: OpenOptions) -> Loader {
        self.open = o;
        self
    }
    /// The registry in use.
    pub fn get_registry(&self) -> &Registry {
        &self.registry
    }

    /// Opens and loads a file.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Loaded> {
        let ckpt = Checkpoint::open_with(path, &self.open)?;
        self.load_checkpoint(ckpt)
    }

    /// Loads an open checkpoint.
    pub fn load_checkpoint(&self, ckpt: Checkpoint) -> Result<Loaded> {
        self.load_with_progress(ckpt, &mut |_| {})
    }

    /// Loads an open checkpoint, calling `progress` with the bytes materialized so far.
    pub fn load_with_progress(
        &self,
        ckpt: Checkpoint,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Loaded> {
        let n = ckpt.storages.len();
        let plan = self.plan(&ckpt)?;
        let mut slots: Vec<Option<Box<dyn DeviceStorage>>> = (0..n).map(|_| None).collect();
        let mut reports: Vec<StorageReport> = ckpt
            .storages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let location = match &plan.storages[i] {
                    Some(d) => d.clone(),
                    None => self.map_location.apply(s, &s.location),
                };
                StorageReport {
                    key: s.key.clone(),
                    saved_location: s.location.clone(),
                    location,
                    device: String::new(),
                    nbytes: s.nbytes,
                    fallback: None,
                }
            })
            .collect();
        // Two linked backends for one device type: refuse loads that need that type (the
        // registry kept the first; which one the user meant is not ours to guess).
        if let Some(c) = self.registry.conflicts().iter().find(|c| {
            reports
                .iter()
                .any(|r| r.location.split(':').next() == Some(c.device_type.as_str()))
        }) {
            return Err(Error::Usage(c.to_string()));
        }
        // Route every storage; batch those a backend serves directly.
        let mut batches: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        let mut single: Vec<(usize, crate::device::registry::Route)> = Vec::new();
        let mut fallback: Vec<(usize, String, Option<BackendError>)> = Vec::new();
        for (i, rep) in reports.iter().enumerate() {
            match self.registry.route(&rep.location) {
                Err(refusal) => fallback.push((i, refusal.reason, None)),
                Ok(route) if !route.packages.is_empty() => single.push((i, route)),
                Ok(route) => match route.backend {
                    Ok(key) => batches.entry(key).or_default().push(i),
                    Err(reason) => fallback.push((i, reason, None)),
                },
            }
        }
        if self.strict && !fallback.is_empty() {
            let (i, reason, source) = fallback.swap_remove(0);
            return Err(placement(&reports[i], reason, source));
        }
        let mut done = 0u64;
        for (i, route) in single {
            let bytes = ckpt.storage_bytes(i)?;
            let s = &ckpt.storages[i];
            let desc = desc_of(&ckpt, i);
            let loc = reports[i].location.clone();
            let r = match self
                .registry
                .restore_by_package(&route, &desc, &bytes, &loc)
            {
                Some(r) => r.map_err(|e| e.reason),
                None => match route.backend {
                    Ok((e, idx)) => match self.registry.entry_backend(e) {
                        Some(b) => b
                            .materialize(Some(idx), &desc, &bytes)
                            .map_err(|e| e.to_string()),
                        None => Err(format!("no registry entry accepted location {loc}")),
                    },
                    Err(reason) => Err(reason),
                },
            };
            match r {
                Ok(st) => slots[i] = Some(st),
                Err(reason) => fallback.push((i, reason, None)),
            }
            done += s.nbytes;
            progress(done);
        }
        for ((entry, idx), members) in batches {
            let Some(backend) = self.registry.entry_backend(entry).cloned() else {
                continue;
            };
            if backend.device_type() == "cpu" && self.maps(&ckpt) {
                for &i in &members {
                    slots[i] = Some(Box::new(MappedStorage::of(&ckpt, i)?));
                    done += ckpt.storages[i].nbytes;
                }
                progress(done);
                continue;
            }
            for group in groups(&ckpt, &members) {
                let bytes: Vec<Cow<'_, [u8]>> = group
                    .iter()
                    .map(|&i| ckpt.storage_bytes(i))
                    .collect::<Result<_>>()?;
                let items: Vec<(StorageDesc<'_>, &[u8])> = group
                    .iter()
                    .zip(&bytes)
                    .map(|(&i, b)| (desc_of(&ckpt, i), &b[..]))
                    .collect();
                let results = backend.materialize_many(Some(idx), &items);
                for (&i, r) in group.iter().zip(results) {
                    match r {
                        Ok(st) => slots[i] = Some(st),
                        // The CPU is where storages fall back to: its failure is final.
                        Err(e) if backend.device_type() == "cpu" => {
                            return Err(placement(&reports[i], e.to_string(), Some(e)));
                        }
                        Err(e) => {
                            let reason = match &e {
                                BackendError::Unavailable { reason, .. } => reason.clone(),
                                other => other.to_string(),
                            };
                            fallback.push((i, reason, Some(e)));
                        }
                    }
                    done += ckpt.storages[i].nbytes;
                }
                progress(done);
            }
        }
        if self.strict && !fallback.is_empty() {
            let (i, reason, source) = fallback.swap_remove(0);
            return Err(placement(&reports[i], reason, source));
        }
        // Fall back to the CPU, through the registry's CPU backend (a user's own when one is
        // registered), or borrowed from the map in mapped mode.
        fallback.sort_by_key(|f| f.0);
        let which: Vec<usize> = fallback.iter().map(|f| f.0).collect();
        for (i, st) in self.cpu_storages(&ckpt, &which)? {
            slots[i] = Some(st);
        }
        for (i, reason, _) in fallback {
            reports[i].fallback = Some(reason);
        }
        let storages: Vec<Arc<dyn DeviceStorage>> = slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.map(Arc::from)
                    .ok_or_else(|| Error::Device(format!("storage {i} was not materialized")))
            })
            .collect::<Result<_>>()?;
        for (r, s) in reports.iter_mut().zip(&storages) {
            r.device = s.location();
        }
        Ok(Loaded {
            checkpoint: ckpt,
            storages,
            report: LoadReport { storages: reports },
        })
    }

    /// Whether CPU storages borrow the file's map: mapped mode and a little-endian file.
    fn maps(&self, ckpt: &Checkpoint) -> bool {
        self.cpu_mode == CpuMode::Mapped && ckpt.byteorder == ByteOrder::Little
    }

    /// CPU storages for `which` (the fallback): borrowed from the map (mapped mode,
    /// little-endian file) or materialized by the registry's CPU backend (the built-in one
    /// when the registry has none).
    fn cpu_storages(
        &self,
        ckpt: &Checkpoint,
        which: &[usize],
    ) -> Result<Vec<(usize, Box<dyn DeviceStorage>)>> {
        if self.maps(ckpt) {
            return which
                .iter()
                .map(|&i| {
                    Ok((
                        i,
                        Box::new(MappedStorage::of(ckpt, i)?) as Box<dyn DeviceStorage>,
                    ))
                })
                .collect();
        }
        let builtin: Arc<dyn ptfile_backend::Backend> =
            Arc::new(crate::device::registry::CpuBackend);
        let backend = self.registry.backend("cpu").unwrap_or(&builtin);
        let mut out = Vec::with_capacity(which.len());
        for group in groups(ckpt, which) {
            let bytes: Vec<Cow<'_, [u8]>> = group
                .iter()
                .map(|&i| ckpt.storage_bytes(i))
                .collect::<Result<_>>()?;
            let items: Vec<(StorageDesc<'_>, &[u8])> = group
                .iter()
                .zip(&bytes)
                .map(|(&i, b)| (desc_of(ckpt, i), &b[..]))
                .collect();
            for (&i, r) in group.iter().zip(backend.materialize_many(Some(0), &items)) {
                let st = r.map_err(|e| {
                    let s = &ckpt.storages[i];
                    Error::Placement {
                        key: s.key.clone(),
                        saved_location: s.location.clone(),
                        location: "cpu".into(),
                        reason: format!("falling back to the CPU failed: {e}"),
                        source: Some(Box::new(e)),
                    }
                })?;
                out.push((i, st));
            }
        }
        Ok(out)
    }
}

/// The error of a storage that cannot go where map_location sent it.
fn placement(r: &StorageReport, reason: String, source: Option<BackendError>) -> Error {
    Error::Placement {
        key: r.key.clone(),
        saved_location: r.saved_location.clone(),
        location: r.location.clone(),
        reason,
        source: source.map(Box::new),
    }
}

/// What a backend is told of storage `i`. Its bytes are at their file offset when the file is
/// mapped and little endian (a big-endian file's bytes are swapped in memory first).
fn desc_of(ckpt: &Checkpoint, i: usize) -> StorageDesc<'_> {
    let s = &ckpt.storages[i];
    let source = ckpt.storage_source(i);
    let file = match (source.file(), s.data) {
        (Some(file), Some((offset, _))) if ckpt.byteorder == ByteOrder::Little => Some(FileSpan {
            file,
            offset: offset + source.file_offset(),
        }),
        _ => None,
    };
    StorageDesc::new(
        &s.key,
        s.dtype.name(),
        s.dtype.element_size(),
        s.nbytes as usize,
        &s.location,
    )
    .with_file(file)
}

/// Splits a batch so that byte-swapped (owned) copies stay bounded; little-endian batches
/// borrow the map and go whole.
fn groups(ckpt: &Checkpoint, members: &[usize]) -> Vec<Vec<usize>> {
    if ckpt.byteorder == ByteOrder::Little {
        return vec![members.to_vec()];
    }
    let mut out = vec![Vec::new()];
    let mut acc = 0u64;
    for &i in members {
        let n = ckpt.storages[i].nbytes;
        if acc > 0 && acc + n > SWAP_BATCH {
            out.push(Vec::new());
            acc = 0;
        }
        acc += n;
        if let Some(last) = out.last_mut() {
            last.push(i);
        }
    }
    out
}
