//! A custom backend for the `ipu` device of torch's own `register_package` example, with its
//! device memory simulated in this process, registered at priority 11 (between torch's cpu 10
//! and cuda 20). Run it on the fixture that torch wrote with an `ipu` tag:
//!
//! ```text
//! cargo run --example custom_backend -- tests/fixtures/custom_ipu.pt
//! ```
//!
//! A backend crate of your own implements the same trait ([`ptfile_backend::Backend`]) and is
//! registered either explicitly, as here, or at link time with
//! `ptfile_backend::inventory::submit! { BackendRegistration { priority, make } }` — then the
//! crate must be linked into the binary (reference it, e.g. `use my_backend as _;`).

use std::any::Any;
use std::sync::{Arc, Mutex};

use ptfile::{Loader, Registry};
use ptfile_backend::{Availability, Backend, BackendError, DeviceStorage, StorageDesc};

/// The simulated device: one arena of bytes, handed out in 64-byte aligned blocks.
#[derive(Default)]
struct IpuMemory {
    arena: Mutex<Vec<u8>>,
}

struct IpuBackend {
    memory: Arc<IpuMemory>,
}

/// A storage: a block of the arena.
#[derive(Debug)]
struct IpuStorage {
    memory: Arc<IpuMemory>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for IpuMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpuMemory")
    }
}

impl Backend for IpuBackend {
    fn device_type(&self) -> &str {
        "ipu"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 1 }
    }
    fn materialize(
        &self,
        _index: Option<usize>,
        desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        let mut arena = self.memory.arena.lock().map_err(|_| BackendError::Driver {
            device: "ipu".into(),
            message: "arena poisoned".into(),
        })?;
        let offset = arena.len().div_ceil(64) * 64;
        arena.resize(offset, 0);
        arena.extend_from_slice(bytes);
        println!(
            "ipu: storage {:?} ({} bytes of {}) at device offset {offset}",
            desc.key,
            bytes.len(),
            desc.dtype
        );
        Ok(Box::new(IpuStorage {
            memory: self.memory.clone(),
            offset,
            len: bytes.len(),
        }))
    }
    fn describe_device(&self, _index: usize) -> Option<String> {
        Some("simulated IPU".into())
    }
}

impl DeviceStorage for IpuStorage {
    fn location(&self) -> String {
        "ipu".into()
    }
    fn nbytes(&self) -> usize {
        self.len
    }
    fn read_to_host(&self, dst: &mut [u8]) -> Result<(), BackendError> {
        let arena = self.memory.arena.lock().map_err(|_| BackendError::Driver {
            device: "ipu".into(),
            message: "arena poisoned".into(),
        })?;
        let src = arena
            .get(self.offset..self.offset + self.len)
            .ok_or(BackendError::Driver {
                device: "ipu".into(),
                message: "storage outside the arena".into(),
            })?;
        if dst.len() != src.len() {
            return Err(BackendError::Driver {
                device: "ipu".into(),
                message: "size mismatch".into(),
            });
        }
        dst.copy_from_slice(src);
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/fixtures/custom_ipu.pt".into());
    let registry = Registry::default().with(
        11,
        Arc::new(IpuBackend {
            memory: Arc::default(),
        }),
    )?;
    let loaded = Loader::new().registry(Arc::new(registry)).load(&path)?;
    println!(
        "{:<6} {:<10} {:<10} {:<8} {:>8}  fallback",
        "key", "saved", "mapped", "device", "bytes"
    );
    for r in &loaded.report.storages {
        println!(
            "{:<6} {:<10} {:<10} {:<8} {:>8}  {}",
            r.key,
            r.saved_location,
            r.location,
            r.device,
            r.nbytes,
            r.fallback.as_deref().unwrap_or("-")
        );
    }
    // Read the ipu storages back to show they live in the simulated device.
    for (i, s) in loaded.storages().enumerate() {
        if s.location() == "ipu" {
            let mut b = vec![0u8; s.nbytes()];
            s.read_to_host(&mut b)?;
            println!(
                "storage {i} read back from ipu: {} bytes, first {:02x?}",
                b.len(),
                &b[..b.len().min(8)]
            );
        }
    }
    Ok(())
}
