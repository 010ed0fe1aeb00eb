//! ptfile backend for `cuda` (being written).
use std::sync::Arc;
use ptfile_backend::{Availability, Backend, BackendError, DeviceStorage, StorageDesc};

struct Pending;
impl Backend for Pending {
    fn device_type(&self) -> &str { "cuda" }
    fn availability(&self) -> Availability { Availability::Unavailable("the cuda backend is not written yet".into()) }
    fn materialize(&self, _: Option<usize>, _: &StorageDesc<'_>, _: &[u8]) -> Result<Box<dyn DeviceStorage>, BackendError> {
        Err(BackendError::Unavailable { device: "cuda".into(), reason: "the cuda backend is not written yet".into() })
    }
}
/// The backend, for the registry.
pub fn backend() -> Arc<dyn Backend> { Arc::new(Pending) }
