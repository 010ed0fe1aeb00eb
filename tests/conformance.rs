//! The conformance suite on every backend this build has: the CPU, a simulated custom device,
//! and wgpu when compiled in (it reports "skipped" where no adapter exists, a failure under CI
//! or `PTFILE_REQUIRE=wgpu`). The cuda backend conforms in tests/cuda.rs, on a GPU or on the
//! fake driver.
#![cfg(feature = "conformance")]

mod common;

use std::sync::Arc;

use ptfile::conformance::run;
use ptfile_backend::{
    Availability, Backend, BackendError, DeviceStorage, HostStorage, StorageDesc,
};

/// A device simulated in host memory, as a user's custom backend would be.
struct Sim;

impl Backend for Sim {
    fn device_type(&self) -> &str {
        "simdev"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 2 }
    }
    fn materialize(
        &self,
        index: Option<usize>,
        _desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        Ok(Box::new(HostStorage::new(
            format!("simdev:{}", index.unwrap_or(0)),
            bytes.to_vec(),
        )))
    }
}

fn check(b: Arc<dyn Backend>, prio: i32) {
    let r = run(b, prio);
    println!("{r}");
    assert!(r.ok(), "{r}");
    if r.skipped.is_none() {
        assert!(r.passed.len() >= 10, "{r}");
    }
}

#[test]
fn cpu_backend_conforms() {
    check(Arc::new(ptfile::registry::CpuBackend), 10);
}

#[test]
fn simulated_custom_backend_conforms() {
    check(Arc::new(Sim), 11);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_conforms_or_skips() {
    let b = ptfile_wgpu::backend();
    if common::available_or_skip("wgpu", b.availability()).is_none() {
        return;
    }
    let r = run(b, 30);
    println!("{r}");
    assert!(r.skipped.is_none() && r.ok() && r.passed.len() >= 10, "{r}");
}
