//! The device registry: a priority-ordered list of taggers and deserializers, mirroring
//! `torch.serialization.register_package(priority, tagger, deserializer)`.
//!
//! Lower priority numbers run first (torch: cpu 10, cuda 20). A deserializer answers `None`
//! for storages that are not its own, and the next entry is asked. Backends
//! ([`ptfile_backend::Backend`]) are entries too: they claim the locations of their device
//! type and report why they cannot serve one (no driver, no device, index out of range), which
//! becomes the CPU-fallback reason of the load report.
//!
//! Entries of equal priority are asked in the order they were registered (the sort is stable):
//! in [`Registry::default`], the CPU first, then the backends compiled in by features, then the
//! linked ones in the order the linker collected them (unspecified: give linked backends
//! distinct priorities where their order matters).
//!
//! One device type has one backend. [`Registry::register_backend`] refuses a second one,
//! except that a backend registered explicitly replaces a *linked* backend of its type (the
//! application's own choice wins over whatever happens to be linked in). Two linked backends
//! for one type, or a linked backend for a type the build already serves (`cpu`, or `cuda`
//! with the `cuda` feature), are a conflict: [`Registry::try_default`] refuses them, naming
//! both; [`Registry::default`] keeps the first and records the conflict
//! ([`Registry::conflicts`]).
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
#[non_exhaustive]
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
#[non_exhaustive]
pub struct Entry {
    /// Lower runs first; equal priorities run in registration order.
    pub priority: i32,
    /// What it is.
    pub kind: EntryKind,
    /// How it got here: it decides whether a second backend of its type may replace it.
    origin: Origin,
}

/// How a backend entry got into a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// ptfile's own CPU backend.
    Cpu,
    /// A backend crate compiled in by this ptfile feature.
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
    Feature(&'static str),
    /// Linked in with `inventory::submit!` ([`ptfile_backend::BackendRegistration`]).
    Linked,
    /// Registered by the application at run time (packages too).
    Explicit,
}

impl Entry {
    /// Who this backend entry is, for a message naming two of them.
    fn who(&self) -> String {
        let EntryKind::Backend(b) = &self.kind else {
            return format!("a package (priority {})", self.priority);
        };
        let how = match self.origin {
            Origin::Cpu => "built in".to_string(),
            Origin::Feature(feature) => format!("compiled in by ptfile's `{feature}` feature"),
            Origin::Linked => "linked in with inventory::submit!".to_string(),
            Origin::Explicit => "registered at run time".to_string(),
        };
        format!("`{}` (priority {}, {how})", b.backend_name(), self.priority)
    }
}

/// A linked backend that [`Registry::default`] left out: a second backend for a device type
/// that already has one, or one whose device type is not a valid name. The message names both
/// backends (their Rust type names, priorities and how they got into the registry).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conflict {
    /// The device type (as the left-out backend gives it).
    pub device_type: String,
    /// What happened and what to do, in words.
    pub message: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Conflict {}

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
    /// Owned buffers (huge pages for large storages) filled in parallel, with `pread` from
    /// the file where the bytes lie there verbatim.
    fn materialize_many(
        &self,
        _index: Option<usize>,
        items: &[(StorageDesc<'_>, &[u8])],
    ) -> Vec<std::result::Result<Box<dyn DeviceStorage>, BackendError>> {
        crate::device::cpu::materialize_many(items)
    }
    fn capabilities(&self) -> ptfile_backend::Capabilities {
        ptfile_backend::Capabilities::default()
            .with_host_visible(true)
            .with_batched(true)
    }
    fn describe_device(&self, _index: usize) -> Option<String> {
        Some("host memory".into())
    }
}

/// The priority-ordered registry.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<Entry>,
    conflicts: Vec<Conflict>,
}

impl Default for Registry {
    /// The CPU backend (10), the backends compiled in by features (cuda 20, wgpu 30), and
    /// those linked in with `inventory::submit!`. A linked backend that conflicts with one
    /// already present (same device type) or has an invalid device type is left out and
    /// recorded in [`Registry::conflicts`]; [`Registry::try_default`] makes that an error.
    fn default() -> Self {
        Registry::with_linked(linked_backends().map(|reg| (reg.priority, (reg.make)())))
    }
}

impl Registry {
    /// The default registry, with `linked` as the linked backends.
    fn with_linked(linked: impl Iterator<Item = (i32, Arc<dyn Backend>)>) -> Registry {
        let mut r = Registry::empty();
        #[allow(unused_mut)] // (without the cuda and wgpu features)
        let mut builtin: Vec<(i32, Arc<dyn Backend>, Origin)> =
            vec![(10, Arc::new(CpuBackend), Origin::Cpu)];
        #[cfg(feature = "cuda")]
        builtin.push((20, ptfile_cuda::backend(), Origin::Feature("cuda")));
        #[cfg(feature = "wgpu")]
        builtin.push((30, ptfile_wgpu::backend(), Origin::Feature("wgpu")));
        let linked = linked.map(|(priority, backend)| (priority, backend, Origin::Linked));
        for (priority, backend, origin) in builtin.into_iter().chain(linked) {
            if let Err(c) = r.insert(priority, backend, origin) {
                r.conflicts.push(c);
            }
        }
        r
    }

    /// The registry, or the error of [`Registry::try_default`] when it has conflicts.
    fn without_conflicts(self) -> Result<Registry> {
        if self.conflicts.is_empty() {
            return Ok(self);
        }
        Err(Error::Usage(
            self.conflicts
                .iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ))
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
        write!(f, "Registry[{}]", names.join(", "))?;
        if !self.conflicts.is_empty() {
            write!(f, " ({} conflicts)", self.conflicts.len())?;
        }
        Ok(())
    }
}

/// Why no entry could serve a location.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    /// The reason, in words.
    pub(crate) reason: String,
}

impl Registry {
    /// A registry with no entries at all (not even the CPU).
    pub fn empty() -> Registry {
        Registry {
            entries: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    /// [`Registry::default`], or an error ([`Error::Usage`]) naming both backends of every
    /// device type that two backends claim (two linked backends, or a linked one and one
    /// compiled in), and every linked backend whose device type is not a valid name.
    pub fn try_default() -> Result<Registry> {
        Registry::default().without_conflicts()
    }

    /// The linked backends [`Registry::default`] left out, and why (empty for a registry
    /// without conflicts). A later explicit [`Registry::register_backend`] of a conflicting
    /// device type settles its conflict (the explicit backend serves it) and removes it here.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// Builder form of [`Registry::register_backend`].
    pub fn with(mut self, priority: i32, backend: Arc<dyn Backend>) -> Result<Registry> {
        self.register_backend(priority, backend)?;
        Ok(self)
    }

    /// Sorts by priority; stable, so equal priorities keep their registration order.
    fn sort(&mut self) {
        self.entries.sort_by_key(|e| e.priority);
    }

    /// Adds a backend at `priority`; entries of equal priority are asked in registration
    /// order. A second backend for a device type that already has one is an error naming
    /// both, except that a backend registered here replaces a *linked* backend of its type
    /// (the application's explicit choice wins; the linked one's conflicts are settled) and
    /// replaces ptfile's built-in CPU backend: a `cpu` backend of your own (pinned memory, a
    /// pool) then holds every CPU storage, the CPU fallback included.
    pub fn register_backend(&mut self, priority: i32, backend: Arc<dyn Backend>) -> Result<()> {
        let ty = backend.device_type().to_string();
        let linked = self.entries.iter().position(|e| {
            matches!(e.origin, Origin::Linked | Origin::Cpu)
                && matches!(&e.kind, EntryKind::Backend(b) if b.device_type() == ty)
        });
        if let Some(i) = linked {
            self.entries.remove(i);
        }
        self.insert(priority, backend, Origin::Explicit)
            .map_err(|c| Error::Usage(c.message))?;
        self.conflicts.retain(|c| c.device_type != ty);
        Ok(())
    }

    /// Adds a backend entry unless its device type is taken or invalid.
    fn insert(
        &mut self,
        priority: i32,
        backend: Arc<dyn Backend>,
        origin: Origin,
    ) -> std::result::Result<(), Conflict> {
        let ty = backend.device_type().to_string();
        let entry = Entry {
            priority,
            kind: EntryKind::Backend(backend),
            origin,
        };
        if !valid_device_type(&ty) {
            return Err(Conflict {
                message: format!(
                    "backend {} has device type `{ty}`, which is not a valid device type name \
                     (letters, digits, `_` and `-`, without an index); it is not registered",
                    entry.who()
                ),
                device_type: ty,
            });
        }
        let present = self
            .entries
            .iter()
            .find(|e| matches!(&e.kind, EntryKind::Backend(b) if b.device_type() == ty));
        if let Some(present) = present {
            let what_to_do = match (present.origin, origin) {
                (Origin::Linked, Origin::Linked) => "link only one of them, or register the one \
                     to use with Registry::register_backend (it replaces a linked backend)"
                    .to_string(),
                (Origin::Feature(feature), Origin::Linked) => format!(
                    "build ptfile without its `{feature}` feature, or do not link the other \
                     backend"
                ),
                (Origin::Cpu, Origin::Linked) => "the CPU backend is built in: give the \
                     linked backend a device type of its own"
                    .to_string(),
                _ => "register one backend per device type".to_string(),
            };
            return Err(Conflict {
                message: format!(
                    "two backends for device type `{ty}`: a backend for it is already \
                     registered, {}, so {} is not; {what_to_do} (registered types: {})",
                    present.who(),
                    entry.who(),
                    self.device_types().join(", ")
                ),
                device_type: ty,
            });
        }
        self.entries.push(entry);
        self.sort();
        Ok(())
    }

    /// Adds a torch-style package: `tagger` names the location of a storage (or None),
    /// `deserializer` materializes a storage for a location (or None: not mine). Entries of
    /// equal priority are asked in registration order.
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
            origin: Origin::Explicit,
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
    pub(crate) fn route(&self, location: &str) -> std::result::Result<Route, Refusal> {
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
    pub(crate) fn entry_backend(&self, i: usize) -> Option<&Arc<dyn Backend>> {
        match &self.entries.get(i)?.kind {
            EntryKind::Backend(b) => Some(b),
            EntryKind::Package { .. } => None,
        }
    }

    /// Asks the package entries of `route` for a storage; None when none claims it.
    pub(crate) fn restore_by_package(
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
    /// backend are asked first; the backend then serves it. The error ([`Error::Device`]) is
    /// the reason to fall back (or to refuse, in strict mode).
    pub fn restore(
        &self,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
        location: &str,
    ) -> Result<Box<dyn DeviceStorage>> {
        self.restore_or_refuse(desc, bytes, location)
            .map_err(|r| Error::Device(r.reason))
    }

    fn restore_or_refuse(
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
pub(crate) struct Route {
    /// Package entries ahead of the backend.
    pub(crate) packages: Vec<usize>,
    /// (entry index, device index) of the backend, or the reason it cannot serve.
    pub(crate) backend: std::result::Result<(usize, usize), String>,
}

/// A device type name: parses as a location without an index.
fn valid_device_type(ty: &str) -> bool {
    Location::parse(ty).is_ok_and(|l| l.index.is_none())
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
fn not_compiled_reason(device_type: &str, known: &[String]) -> String {
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
        StorageDesc::new("0", "float32", 4, 4, "cuda:0")
    }

    /// A backend of any device type, its bytes in host memory.
    struct Named(&'static str);

    impl Backend for Named {
        fn device_type(&self) -> &str {
            self.0
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
            Ok(Box::new(HostStorage::new(self.0.into(), bytes.to_vec())))
        }
    }

    /// Another backend type, to tell two backends of one device type apart by name.
    struct Other(&'static str);

    impl Backend for Other {
        fn device_type(&self) -> &str {
            self.0
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
            Ok(Box::new(HostStorage::new(
                format!("{}-other", self.0),
                bytes.to_vec(),
            )))
        }
    }

    fn linked(list: Vec<(i32, Arc<dyn Backend>)>) -> Registry {
        Registry::with_linked(list.into_iter())
    }

    #[test]
    fn two_linked_backends_of_one_type_conflict_naming_both() {
        let r = linked(vec![
            (40, Arc::new(Named("npu"))),
            (41, Arc::new(Other("npu"))),
            (42, Arc::new(Named("tpu"))),
        ]);
        // The first is kept and serves; the conflict is recorded, naming both.
        let s = r.restore(&desc(), &[1, 2, 3, 4], "npu").unwrap();
        assert_eq!(s.location(), "npu");
        assert!(r.backend("tpu").is_some());
        assert_eq!(r.conflicts().len(), 1, "{:?}", r.conflicts());
        let c = &r.conflicts()[0];
        assert_eq!(c.device_type, "npu");
        for part in [
            "`npu`",
            "::Named",
            "priority 40",
            "::Other",
            "priority 41",
            "linked",
        ] {
            assert!(c.message.contains(part), "{part}: {c}");
        }
        let err = r.clone().without_conflicts().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(c.message.as_str()));
        assert!(format!("{r:?}").contains("1 conflicts"), "{r:?}");

        // An explicit registration replaces the linked backend and settles the conflict.
        let mut r = r;
        r.register_backend(15, Arc::new(Other("npu"))).unwrap();
        assert!(r.conflicts().is_empty());
        let s = r.restore(&desc(), &[1, 2, 3, 4], "npu").unwrap();
        assert_eq!(s.location(), "npu-other");
        assert_eq!(r.device_types().iter().filter(|t| *t == "npu").count(), 1);
        assert!(r.clone().without_conflicts().is_ok());
        // ... but a second explicit one is refused, naming both.
        let err = r
            .register_backend(16, Arc::new(Named("npu")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("registered at run time") && err.contains("::Named"),
            "{err}"
        );
    }

    #[test]
    fn linked_duplicates_of_built_in_types_and_bad_names_conflict() {
        let r = linked(vec![
            (5, Arc::new(Other("cpu"))),
            (6, Arc::new(Named("bad:0"))),
            (7, Arc::new(Named(""))),
        ]);
        assert_eq!(r.conflicts().len(), 3, "{:?}", r.conflicts());
        let cpu = &r.conflicts()[0].message;
        assert!(
            cpu.contains("CpuBackend") && cpu.contains("built in") && cpu.contains("::Other"),
            "{cpu}"
        );
        assert!(r.conflicts()[1].message.contains("`bad:0`"));
        assert!(r.conflicts()[2].message.contains("not a valid device type"));
        // The built-in CPU stays against a linked one; an explicit CPU replaces it (and
        // settles the linked one's conflict), a second explicit one is an error.
        let s = r.restore(&desc(), &[0; 4], "cpu").unwrap();
        assert_eq!(s.location(), "cpu");
        let mut r = r;
        r.register_backend(1, Arc::new(Other("cpu"))).unwrap();
        assert!(r.register_backend(2, Arc::new(CpuBackend)).is_err());
        let all = r.without_conflicts().err().map(|e| e.to_string()).unwrap();
        assert!(
            all.contains("`bad:0`") && !all.contains("CpuBackend"),
            "{all}"
        );
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_linked_cuda_conflicts_with_the_cuda_feature() {
        let r = linked(vec![(25, Arc::new(Named("cuda")))]);
        let c = &r.conflicts()[0].message;
        assert!(
            c.contains("ptfile_cuda::") && c.contains("`cuda` feature") && c.contains("::Named"),
            "{c}"
        );
    }

    #[test]
    fn equal_priorities_keep_registration_order() {
        let mut r = Registry::empty();
        for tag in [1u8, 2, 3] {
            r.register_package(
                7,
                |_| None,
                move |_d, _b, loc| {
                    (loc == "cpu").then(|| {
                        Ok(Box::new(HostStorage::new("cpu".into(), vec![tag]))
                            as Box<dyn DeviceStorage>)
                    })
                },
            );
        }
        r.register_backend(7, Arc::new(Named("npu"))).unwrap();
        r.register_backend(7, Arc::new(Named("tpu"))).unwrap();
        let s = r.restore(&desc(), &[0], "cpu").unwrap();
        assert_eq!(
            s.host_bytes(),
            Some(&[1u8][..]),
            "the first of equal priority"
        );
        assert_eq!(r.device_types(), ["npu", "tpu"]);
        assert!(r.conflicts().is_empty());
    }

    #[test]
    fn cpu_restores_and_unknown_falls_back_with_reason() {
        let r = Registry::default();
        let s = r
            .restore(&desc(), &[1, 2, 3, 4], "cpu")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.location(), "cpu");
        let e = r
            .restore(&desc(), &[1, 2, 3, 4], "ipu")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ipu") && e.contains("cpu"), "{e}");
        if r.backend("cuda").is_none() {
            let e = r
                .restore(&desc(), &[0; 4], "cuda:0")
                .err()
                .map(|e| e.to_string())
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
        // An explicit CPU backend replaces the built-in one; a second one is an error.
        r.register_backend(1, Arc::new(CpuBackend)).unwrap();
        let err = r
            .register_backend(2, Arc::new(CpuBackend))
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
