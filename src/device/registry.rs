//! The device registry: a priority-ordered list of taggers and deserializers, mirroring
//! `torch.serialization.register_package(priority, tagger, deserializer)`.
//!
//! Lower priority numbers run first (torch: cpu 10, cuda 20). A deserializer answers `None`
//! for storages that are not its own, and the next entry is asked. Backends
//! ([`ptfile_backend::Backend`]) are entries too: they claim the locations of their device
//! type and report why they cannot serve one (no driver, no device, index out of range), which
//! becomes the CPU-fallback reason of the load report.
//!
//! ```
//! use std::sync::Arc;
//! use ptfile::registry::Registry;
//! use ptfile_backend::{HostStorage, DeviceStorage};
//!
//! let mut reg = Registry::default();
//! // torch's own example: a device called `ipu`, here simulated in host memory.
//! reg.register_package(
//!     11,
//!     |s: &dyn DeviceStorage| s.location().starts_with("ipu").then(|| "ipu".to_string()),
//!     |_desc, bytes: &[u8], location: &str| {
//!         location.starts_with("ipu").then(|| {
//!             Ok(Box::new(HostStorage::new("ipu".into(), bytes.to_vec())) as Box<dyn DeviceStorage>)
//!         })
//!     },
//! );
//! assert!(reg.device_types().contains(&"cpu".to_string()));
//! ```

use std::sync::Arc;

use ptfile_backend::{
    linked_backends, Availability, Backend, BackendError, BackendExt, DeviceStorage, HostStorage,
    Location, StorageDesc,
};

use crate::error::{Error, Result};

/// A tagger: the location of a device storage, or None when it is not this entry's.
pub type Tagger = dyn Fn(&dyn DeviceStorage) -> Option<String> + Send + Sync;

/// A deserializer: materializes `bytes` (a storage described by the desc) at a location, or
/// None when the location is not this entry's.
pub type Deserializer = dyn Fn(
        &StorageDesc<'_>,
        &[u8],
        &str,
    ) -> Option<std::result::Result<Box<dyn DeviceStorage>, BackendError>>
    + Send
    + Sync;

/// What an entry is.
#[derive(Clone)]
pub enum EntryKind {
    /// A backend serving one device type.
    Backend(Arc<dyn Backend>),
    /// A torch-style package: a tagger and a deserializer.
    Package {
        /// The tagger.
        tagger: Arc<Tagger>,
        /// The deserializer.
        deserializer: Arc<Deserializer>,
    },
}

/// One registry entry.
#[derive(Clone)]
pub struct Entry {
    /// Lower runs first.
    pub priority: i32,
    /// What it is.
    pub kind: EntryKind,
}

/// The built-in CPU backend: storages in host memory (owned copies).
#[derive(Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn device_type(&self) -> &str {
        "cpu"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 1 }
    }
    fn materialize(
        &self,
        _index: Option<usize>,
        _desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> std::result::Result<Box<dyn DeviceStorage>, BackendError> {
        Ok(Box::new(HostStorage::new("cpu".into(), bytes.to_vec())))
    }
    fn capabilities(&self) -> ptfile_backend::Capabilities {
        ptfile_backend::Capabilities {
            host_visible: true,
            ..Default::default()
        }
    }
    fn describe_device(&self, _index: usize) -> Option<String> {
        Some("host memory".into())
    }
}

/// The priority-ordered registry.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Default for Registry {
    /// The CPU backend (10), the backends compiled in by features (cuda 20, wgpu 30), and
    /// those linked in with `inventory::submit!`.
    fn default() -> Self {
        let mut r = Registry::empty();
        let _ = r.register_backend(10, Arc::new(CpuBackend));
        #[cfg(feature = "cuda")]
        {
            let _ = r.register_backend(20, ptfile_cuda::backend());
        }
        #[cfg(feature = "wgpu")]
        {
            let _ = r.register_backend(30, ptfile_wgpu::backend());
        }
        for reg in linked_backends() {
            // A linked backend for a type already present is skipped (explicit wins).
            let _ = r.register_backend(reg.priority, (reg.make)());
        }
        r
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Backend(b) => format!("{}:{}", e.priority, b.device_type()),
                EntryKind::Package { .. } => format!("{}:package", e.priority),
            })
            .collect();
        write!(f, "Registry[{}]", names.join(", "))
    }
}

/// What the registry did with one storage.
pub struct Restored {
    /// The storage on its device.
    pub storage: Box<dyn DeviceStorage>,
    /// Why it is not where it was mapped to, if it fell back to the CPU.
    pub fallback: Option<String>,
}

/// Why no entry could serve a location.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The reason, in words.
    pub reason: String,
}

impl Registry {
    /// A registry with no entries at all (not even the CPU).
    pub fn empty() -> Registry {
        Registry {
            entries: Vec::new(),
        }
    }

    /// Builder form of [`Registry::register_backend`].
    pub fn with(mut self, priority: i32, backend: Arc<dyn Backend>) -> Result<Registry> {
        self.register_backend(priority, backend)?;
        Ok(self)
    }

    fn sort(&mut self) {
        self.entries.sort_by_key(|e| e.priority);
    }

    /// Adds a backend at `priority`. A second backend for the same device type is an error
    /// listing the registered ones.
    pub fn register_backend(&mut self, priority: i32, backend: Arc<dyn Backend>) -> Result<()> {
        let ty = backend.device_type().to_string();
        if self.backend(&ty).is_some() {
            return Err(Error::Usage(format!(
                "a backend for device type `{ty}` is already registered (registered: {})",
                self.device_types().join(", ")
            )));
        }
        if Location::parse(&ty)
            .map(|l| l.index.is_some())
            .unwrap_or(true)
        {
            return Err(Error::Usage(format!(
                "`{ty}` is not a valid device type name"
            )));
        }
        self.entries.push(Entry {
            priority,
            kind: EntryKind::Backend(backend),
        });
        self.sort();
        Ok(())
    }

    /// Adds a torch-style package: `tagger` names the location of a storage (or None),
    /// `deserializer` materializes a storage for a location (or None: not mine).
    pub fn register_package<T, D>(&mut self, priority: i32, tagger: T, deserializer: D)
    where
        T: Fn(&dyn DeviceStorage) -> Option<String> + Send + Sync + 'static,
        D: Fn(
                &StorageDesc<'_>,
                &[u8],
                &str,
            ) -> Option<std::result::Result<Box<dyn DeviceStorage>, BackendError>>
            + Send
            + Sync
            + 'static,
    {
        self.entries.push(Entry {
            priority,
            kind: EntryKind::Package {
                tagger: Arc::new(tagger),
                deserializer: Arc::new(deserializer),
            },
        });
        self.sort();
    }

    /// Entries in the order they are asked.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The device types of the registered backends, in priority order.
    pub fn device_types(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::Backend(b) => Some(b.device_type().to_string()),
                _ => None,
            })
            .collect()
    }

    /// The backend for a device type.
    pub fn backend(&self, device_type: &str) -> Option<&Arc<dyn Backend>> {
        self.entries.iter().find_map(|e| match &e.kind {
            EntryKind::Backend(b) if b.device_type() == device_type => Some(b),
            _ => None,
        })
    }

    /// The backend for a device type, or an error listing the known ones.
    pub fn require_backend(&self, device_type: &str) -> Result<&Arc<dyn Backend>> {
        self.backend(device_type).ok_or_else(|| {
            Error::Usage(format!(
                "unknown device type `{device_type}` (known: {})",
                self.device_types().join(", ")
            ))
        })
    }

    /// torch's `location_tag`: the first tag an entry gives a device storage.
    pub fn location_tag(&self, storage: &dyn DeviceStorage) -> Option<String> {
        for e in &self.entries {
            let tag = match &e.kind {
                EntryKind::Package { tagger, .. } => tagger(storage),
                EntryKind::Backend(b) => {
                    let loc = storage.location();
                    let ty = loc.split(':').next().unwrap_or("");
                    (ty == b.device_type()).then_some(loc)
                }
            };
            if tag.is_some() {
                return tag;
            }
        }
        None
    }

    /// How `location` is served, without materializing: the package entries to ask first and
    /// the backend (entry and device index) that serves it, or the reason none can. Only an
    /// unparsable location is an error.
    pub fn route(&self, location: &str) -> std::result::Result<Route, Refusal> {
        let loc = Location::parse(location).map_err(|reason| Refusal { reason })?;
        let mut packages = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            match &e.kind {
                EntryKind::Package { .. } => packages.push(i),
                EntryKind::Backend(b) if b.device_type() == loc.device_type => {
                    let backend = b
                        .check_index(loc.index)
                        .map(|idx| (i, idx))
                        .map_err(|e| backend_reason(&e, location));
                    return Ok(Route { packages, backend });
                }
                _ => {}
            }
        }
        Ok(Route {
            packages,
            backend: Err(not_compiled_reason(&loc.device_type, &self.device_types())),
        })
    }

    /// The backend of entry `i`.
    pub fn entry_backend(&self, i: usize) -> Option<&Arc<dyn Backend>> {
        match &self.entries.get(i)?.kind {
            EntryKind::Backend(b) => Some(b),
            EntryKind::Package { .. } => None,
        }
    }

    /// Asks the package entries of `route` for a storage; None when none claims it.
    pub fn restore_by_package(
        &self,
        route: &Route,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
        location: &str,
    ) -> Option<std::result::Result<Box<dyn DeviceStorage>, Refusal>> {
        for &i in &route.packages {
            if let EntryKind::Package { deserializer, .. } = &self.entries[i].kind {
                if let Some(r) = deserializer(desc, bytes, location) {
                    return Some(r.map_err(|e| Refusal {
                        reason: e.to_string(),
                    }));
                }
            }
        }
        None
    }

    /// Materializes one storage at `location`: package entries ahead of the location's
    /// backend are asked first; the backend then serves it. The error is the reason to fall
    /// back (or to refuse, in strict mode).
    pub fn restore(
        &self,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
        location: &str,
    ) -> std::result::Result<Box<dyn DeviceStorage>, Refusal> {
        let route = self.route(location)?;
        if let Some(r) = self.restore_by_package(&route, desc, bytes, location) {
            return r;
        }
        let (i, idx) = route.backend.map_err(|reason| Refusal { reason })?;
        let b = self.entry_backend(i).ok_or_else(|| Refusal {
            reason: format!("no registry entry accepted location {location}"),
        })?;
        b.materialize(Some(idx), desc, bytes).map_err(|e| Refusal {
            reason: backend_reason(&e, location),
        })
    }
}

/// How a location is served: package entries to ask first (in priority order), then the
/// backend entry index and device index that serves it, or why none can.
#[derive(Debug, Clone)]
pub struct Route {
    /// Package entries ahead of the backend.
    pub packages: Vec<usize>,
    /// (entry index, device index) of the backend, or the reason it cannot serve.
    pub backend: std::result::Result<(usize, usize), String>,
}

fn backend_reason(e: &BackendError, location: &str) -> String {
    match e {
        BackendError::Unavailable { reason, .. } => reason.clone(),
        BackendError::NoSuchDevice { count, .. } => format!(
            "{location} requested, {count} device{} present",
            if *count == 1 { "" } else { "s" }
        ),
        other => other.to_string(),
    }
}

/// The fallback reason for a device type no backend serves.
pub fn not_compiled_reason(device_type: &str, known: &[String]) -> String {
    match device_type {
        "cuda" => "no CUDA backend compiled in: build with --features cuda".into(),
        "wgpu" => "no wgpu backend compiled in: build with --features wgpu".into(),
        other => format!(
            "no backend registered for device type `{other}` (registered: {})",
            known.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> StorageDesc<'static> {
        StorageDesc {
            key: "0",
            dtype: "float32",
            element_size: 4,
            nbytes: 4,
            saved_location: "cuda:0",
            file: None,
        }
    }

    #[test]
    fn cpu_restores_and_unknown_falls_back_with_reason() {
        let r = Registry::default();
        let s = r
            .restore(&desc(), &[1, 2, 3, 4], "cpu")
            .unwrap_or_else(|e| panic!("{}", e.reason));
        assert_eq!(s.location(), "cpu");
        let e = r
            .restore(&desc(), &[1, 2, 3, 4], "ipu")
            .err()
            .map(|e| e.reason)
            .unwrap_or_default();
        assert!(e.contains("ipu") && e.contains("cpu"), "{e}");
        if r.backend("cuda").is_none() {
            let e = r
                .restore(&desc(), &[0; 4], "cuda:0")
                .err()
                .map(|e| e.reason)
                .unwrap_or_default();
            assert!(e.contains("--features cuda"), "{e}");
        }
        assert!(r.restore(&desc(), &[0; 4], "cpu:1").is_err());
    }

    #[test]
    fn priorities_order_packages_and_duplicates_error() {
        let mut r = Registry::default();
        r.register_package(
            5,
            |_| None,
            |_d, b, loc| {
                (loc == "cpu").then(|| {
                    Ok(Box::new(HostStorage::new(
                        "cpu".into(),
                        b.iter().map(|x| x ^ 0xff).collect(),
                    )) as Box<dyn DeviceStorage>)
                })
            },
        );
        let s = r
            .restore(&desc(), &[0, 1, 2, 3], "cpu")
            .ok()
            .and_then(|s| s.host_bytes().map(|b| b.to_vec()));
        assert_eq!(
            s,
            Some(vec![0xff, 0xfe, 0xfd, 0xfc]),
            "priority 5 runs before cpu at 10"
        );
        let err = r
            .register_backend(1, Arc::new(CpuBackend))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("already registered") && err.contains("cpu"),
            "{err}"
        );
        let err = r
            .require_backend("cdua")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("cdua") && err.contains("cpu"), "{err}");
    }

    #[test]
    fn package_claims_its_device_and_tags() {
        let mut r = Registry::default();
        r.register_package(
            11,
            |s| s.location().starts_with("ipu").then(|| "ipu".to_string()),
            |_d, b, loc| {
                loc.starts_with("ipu").then(|| {
                    Ok(Box::new(HostStorage::new("ipu".into(), b.to_vec()))
                        as Box<dyn DeviceStorage>)
                })
            },
        );
        let s = r.restore(&desc(), &[9; 4], "ipu").ok();
        assert_eq!(s.as_ref().map(|s| s.location()), Some("ipu".to_string()));
        assert_eq!(
            r.location_tag(
                s.as_deref()
                    .unwrap_or(&HostStorage::new("x".into(), vec![]))
            ),
            Some("ipu".into())
        );
        let cpu = HostStorage::new("cpu".into(), vec![]);
        assert_eq!(r.location_tag(&cpu), Some("cpu".into()));
    }
}
