//! `ptfile bench`: time opening (metadata only) and loading (every storage materialized).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ptfile::Checkpoint;

/// Arguments of `ptfile bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Where storages go (as for `ptfile load`).
    #[arg(long = "map-location", value_name = "SPEC")]
    pub map_location: Vec<String>,
    /// Keep CPU storages in the memory map; every page is touched.
    #[arg(long)]
    pub mmap: bool,
    /// Runs; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The checkpoint file.
    pub file: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: &BenchArgs) -> ptfile::Result<()> {
    let loader = super::load::loader(&args.map_location, false, args.mmap)?;
    let mut best_open = f64::MAX;
    let mut best_load = f64::MAX;
    let mut bytes = 0u64;
    let mut devices = Vec::new();
    let mut checksum = 0u64;
    for _ in 0..args.runs.max(1) {
        let t0 = Instant::now();
        let ckpt = Checkpoint::open(&args.file)?;
        let open_s = t0.elapsed().as_secs_f64();
        bytes = ckpt.total_storage_bytes();
        let loaded = loader.load_checkpoint(ckpt)?;
        if args.mmap {
            // Touch every page so the bytes are really read.
            for s in loaded.storages() {
                if let Some(b) = s.host_bytes() {
                    checksum = checksum
                        .wrapping_add(b.iter().step_by(4096).map(|&x| x as u64).sum::<u64>());
                }
            }
        }
        let load_s = t0.elapsed().as_secs_f64();
        devices = loaded
            .report
            .bytes_by_device()
            .into_iter()
            .map(|(d, _, _)| d)
            .collect();
        best_open = best_open.min(open_s);
        best_load = best_load.min(load_s);
        drop(loaded);
    }
    let gbps = if best_load > 0.0 {
        bytes as f64 / best_load / 1e9
    } else {
        0.0
    };
    let mut out = std::io::stdout().lock();
    let device = devices.join(",");
    if args.json {
        let v = serde_json::json!({
            "bytes": bytes, "open_s": best_open, "load_s": best_load, "gbps": gbps,
            "device": device, "mmap": args.mmap, "runs": args.runs.max(1), "touch": checksum % 2,
        });
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(
            out,
            "{}: open {:.3} ms, load {:.3} s, {:.2} GB/s on {device} (best of {})",
            ptfile::describe::human_bytes(bytes),
            best_open * 1e3,
            best_load,
            gbps,
            args.runs.max(1)
        );
    }
    Ok(())
}
