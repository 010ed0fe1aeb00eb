//! Build a state dict from Rust buffers and save it so that `torch.load` reads it.
//!
//! ```text
//! cargo run --example save_state_dict -- model.pt
//! python -c "import torch; print(torch.load('model.pt'))"
//! ```
//!
//! With `--bench MIB OUT` it times saving MIB MiB of bfloat16 tensors instead (used by
//! `benches/save_vs_torch.py`, which compares with `torch.save`) and prints one JSON line.

use std::error::Error;
use std::time::Instant;

use half::bf16;
use ptfile::save::{SaveOptions, StateDict, TensorData};

/// Element `j` of bench tensor `k`: reproducible in Python (see benches/save_vs_torch.py).
fn bench_bits(j: usize, k: usize) -> u16 {
    ((j + k) as u16) & 0x7f7f
}

/// Eight tensors, MIB MiB in all.
fn bench(mib: usize, out: &str) -> Result<(), Box<dyn Error>> {
    let per = mib * (1 << 20) / 2 / 8;
    let bufs: Vec<Vec<bf16>> = (0..8)
        .map(|k| {
            (0..per)
                .map(|j| bf16::from_bits(bench_bits(j, k)))
                .collect()
        })
        .collect();
    let mut sd = StateDict::new();
    for (k, b) in bufs.iter().enumerate() {
        sd.insert(
            format!("layers.{k}.weight"),
            TensorData::from_slice(b, &[per / 1024, 1024])?,
        )?;
    }
    let mut results = Vec::new();
    for sync in [false, true] {
        let opts = SaveOptions {
            sync,
            ..SaveOptions::default()
        };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let _ = std::fs::remove_file(out);
            let t = Instant::now();
            sd.save_with(out, &opts)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        results.push(best);
    }
    println!(
        "{{\"bytes\": {}, \"seconds\": {:.6}, \"seconds_sync\": {:.6}}}",
        mib << 20,
        results[0],
        results[1]
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bench") {
        let mib: usize = args.get(1).ok_or("--bench MIB OUT")?.parse()?;
        return bench(mib, args.get(2).ok_or("--bench MIB OUT")?);
    }
    let out = args.first().map(String::as_str).unwrap_or("model.pt");

    // Owned and borrowed buffers, any shape; the element type gives the dtype.
    let weight: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
    let bias = [
        bf16::from_f32(0.5),
        bf16::from_f32(-1.0),
        bf16::from_f32(2.0),
    ];
    // Raw bytes for dtypes without a Rust type (float8 here).
    let fp8 = [0x38u8, 0x40, 0x44, 0x48];
    let mut sd = StateDict::new();
    sd.insert(
        "linear.weight",
        TensorData::from_vec(weight, &[3, 4])?.parameter(true),
    )?;
    sd.insert(
        "linear.bias",
        TensorData::from_slice(&bias, &[3])?.parameter(true),
    )?;
    sd.insert("steps", TensorData::from_vec(vec![1000i64], &[])?)?;
    // Tagged for the GPU: torch.load puts it on cuda:0 unless told otherwise.
    let f8 = ptfile::DType::from_name("float8_e4m3fn").ok_or("float8_e4m3fn")?;
    sd.insert(
        "scales",
        TensorData::from_bytes(f8, &fp8[..], &[4])?.location("cuda:0"),
    )?;

    let report = sd.save(out)?;
    println!(
        "wrote {} ({} storages, {} bytes); load it with torch.load({out:?}, map_location=\"cpu\")",
        report.path.display(),
        report.storages,
        report.bytes
    );
    Ok(())
}
