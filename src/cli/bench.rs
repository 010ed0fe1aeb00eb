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
    // Peak resident-memory growth of each run over the resident set before it (Linux).
    let mut growth: Vec<u64> = Vec::new();
    for _ in 0..args.runs.max(1) {
        let before = rss::reset_peak();
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
        if let (Some(before), Some(peak)) = (before, rss::peak()) {
            growth.push(peak.saturating_sub(before));
        }
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
    // The first run also pays for set-up kept for later runs (a device context, staging
    // buffers); the warm figure is the largest growth of the runs after it.
    let first_growth = growth.first().copied();
    let warm_growth = growth.iter().skip(1).max().copied().or(first_growth);
    if args.json {
        let v = serde_json::json!({
            "bytes": bytes, "open_s": best_open, "load_s": best_load, "gbps": gbps,
            "device": device, "mmap": args.mmap, "runs": args.runs.max(1), "touch": checksum % 2,
            "rss_growth_bytes": warm_growth, "first_rss_growth_bytes": first_growth,
        });
        let _ = writeln!(out, "{v}");
    } else {
        let growth = warm_growth
            .map(|g| format!(", peak RSS growth {}", ptfile::describe::human_bytes(g)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}: open {:.3} ms, load {:.3} s, {:.2} GB/s on {device} (best of {}){growth}",
            ptfile::describe::human_bytes(bytes),
            best_open * 1e3,
            best_load,
            gbps,
            args.runs.max(1)
        );
    }
    Ok(())
}

/// Resident memory of this process, from procfs (Linux; `None` elsewhere).
mod rss {
    /// Resets the peak resident set (`VmHWM`) to the current one and returns the current one
    /// in bytes (`None` where procfs lacks either).
    pub fn reset_peak() -> Option<u64> {
        // Writing 5 to clear_refs resets VmHWM (Linux 4.0 and later).
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        field("VmRSS:")
    }

    /// The peak resident set since the last reset, in bytes.
    pub fn peak() -> Option<u64> {
        field("VmHWM:")
    }

    fn field(name: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    }
}
