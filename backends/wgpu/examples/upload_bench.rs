//! Upload / read-back rate on a wgpu adapter.
//!
//! ```text
//! cargo run --release -p ptfile-wgpu --example upload_bench -- [MiB] [adapter] [repeats] [chunks]
//! ```
//! Defaults: 256 MiB on adapter 0, 5 repeats per chunk size, chunk sizes `8,16,32,64` (MiB);
//! prints the best and median rates per chunk size, then a batch of 4096 small storages
//! through `materialize_many` and 512 through `materialize` one at a time (fewer when the
//! size is under 64 MiB).

use std::time::{Duration, Instant};

use ptfile_backend::{Backend, StorageDesc};
use ptfile_wgpu::WgpuBackend;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let mib = arg(0, 256);
    let adapter = arg(1, 0);
    let repeats = arg(2, 5).max(1);
    let chunk_list: Vec<u64> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![8, 16, 32, 64]);

    let probe = WgpuBackend::new();
    if let ptfile_backend::Availability::Unavailable(reason) = probe.availability() {
        println!("skipped: {reason}");
        return;
    }
    let name = probe.describe_device(adapter).unwrap_or_else(|| "?".into());
    println!("adapter wgpu:{adapter}: {name}");

    let n = mib << 20;
    let bytes: Vec<u8> = (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let desc = StorageDesc::new("bench", "uint8", 1, n, "cpu");
    let gbps = |bytes: usize, t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;

    for chunk_mib in chunk_list {
        let b = WgpuBackend::new().with_chunk_size(chunk_mib << 20);
        let mut up = Vec::new();
        let mut down = Vec::new();
        // One warm-up round (device creation, first-touch of driver memory).
        let _ = b.materialize(Some(adapter), &desc, &bytes);
        for _ in 0..repeats {
            let t = Instant::now();
            let s = match b.materialize(Some(adapter), &desc, &bytes) {
                Ok(s) => s,
                Err(e) => {
                    println!("upload failed: {e}");
                    return;
                }
            };
            // materialize may return with the last chunk queued; count its completion too.
            let _ = b.synchronize(adapter);
            up.push(t.elapsed());
            let mut back = vec![0u8; n];
            let t = Instant::now();
            if let Err(e) = s.read_to_host(&mut back) {
                println!("read-back failed: {e}");
                return;
            }
            down.push(t.elapsed());
            assert!(back == bytes, "read-back differs");
        }
        up.sort();
        down.sort();
        println!(
            "{mib} MiB, {chunk_mib} MiB chunks: upload best {:.2} GB/s, median {:.2} GB/s; \
             read-back best {:.2} GB/s, median {:.2} GB/s",
            gbps(n, up[0]),
            gbps(n, up[up.len() / 2]),
            gbps(n, down[0]),
            gbps(n, down[down.len() / 2]),
        );
    }

    // Many small storages: one materialize_many call (one submit per chunk, 16 MiB).
    let count = (n / (16 << 10)).min(4096);
    let small = 16 << 10;
    let keys: Vec<String> = (0..count).map(|i| i.to_string()).collect();
    let items: Vec<(StorageDesc<'_>, &[u8])> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                StorageDesc::new(k, desc.dtype, desc.element_size, small, desc.saved_location),
                &bytes[i * small..(i + 1) * small],
            )
        })
        .collect();
    let b = WgpuBackend::new();
    let sync = || {
        let _ = b.synchronize(adapter);
    };
    let t = Instant::now();
    let out = b.materialize_many(Some(adapter), &items);
    sync();
    let el = t.elapsed();
    let ok = out.iter().filter(|r| r.is_ok()).count();
    println!(
        "{count} x {} KiB via materialize_many: {:.2} GB/s ({ok} ok, {:.1} us per storage)",
        small >> 10,
        gbps(count * small, el),
        el.as_secs_f64() * 1e6 / count as f64
    );
    let t = Instant::now();
    let one_by_one = items.len().min(512);
    for (d, b_) in items.iter().take(one_by_one) {
        let _ = b.materialize(Some(adapter), d, b_);
    }
    sync();
    let el = t.elapsed();
    println!(
        "{one_by_one} x {} KiB via materialize one by one: {:.2} GB/s ({:.1} us per storage)",
        small >> 10,
        gbps(one_by_one * small, el),
        el.as_secs_f64() * 1e6 / one_by_one.max(1) as f64
    );
}
