//! Load a checkpoint onto a device and print, for every tensor, the handle a compute library
//! needs: the CUDA device pointer (`--features cuda`), the wgpu buffer (`--features wgpu`), or
//! the host address, with the tensor's byte offset inside its storage.
//!
//! ```text
//! cargo run --features wgpu --example device_handles -- tests/fixtures/seed_mymodule_state_dict.pt wgpu:0
//! cargo run --features cuda --example device_handles -- model.pt cuda:0
//! ```

use ptfile::{Loader, MapLocation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: device_handles FILE [DEVICE]")?;
    let device = args.next().unwrap_or_else(|| "cpu".into());
    let loaded = Loader::new()
        .map_location(MapLocation::to(&device))
        .load(&path)?;
    for (name, t) in loaded.tensors() {
        let offset = t.storage_offset() as u64 * t.dtype().element_size() as u64;
        let storage = t.storage();
        let handle = handle(storage, offset);
        println!(
            "{name}: {} {:?} on {}: {handle}",
            t.dtype(),
            t.shape(),
            t.device()
        );
    }
    for r in loaded.report.fallbacks() {
        println!(
            "storage {} fell back to the CPU: {}",
            r.key,
            r.fallback.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// How to reach a tensor `offset` bytes into `storage` on its device.
fn handle(storage: &dyn ptfile::backend::DeviceStorage, offset: u64) -> String {
    #[cfg(feature = "cuda")]
    if let Some(s) = storage.as_any().downcast_ref::<ptfile_cuda::CudaStorage>() {
        return format!(
            "CUdeviceptr {:#x} on device {} (storage at {:#x})",
            s.device_ptr() + offset,
            s.ordinal(),
            s.device_ptr()
        );
    }
    #[cfg(feature = "wgpu")]
    if let Some(s) = storage.as_any().downcast_ref::<ptfile_wgpu::WgpuStorage>() {
        let buffer: &ptfile_wgpu::wgpu::Buffer = s.buffer();
        return format!(
            "wgpu::Buffer of {} bytes on adapter {}, tensor at byte offset {offset}",
            buffer.size(),
            s.adapter_index()
        );
    }
    match storage.host_bytes() {
        Some(b) => format!(
            "host memory at {:#x}",
            b.as_ptr() as usize + offset as usize
        ),
        None => format!(
            "{} ({} bytes, no host view)",
            storage.location(),
            storage.nbytes()
        ),
    }
}
